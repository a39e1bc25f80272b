"""The one definition of the node's parameters: names, defaults, ranges, descriptions.

The ROS node declares exactly these (with descriptors), the YAML in config/ lists exactly these, and
the offline tools (`kp3d infer`, `kp3d bench`, `kp3d run`) read the same YAML through ``load_params``.
Names use ROS's dotted form ("detection.voxel_size").
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

NODE_NAME = "kp3d_node"


@dataclass(frozen=True)
class ParamSpec:
    name: str
    default: Any
    description: str
    min: float | None = None
    max: float | None = None
    choices: tuple[str, ...] | None = None
    read_only: bool = False


class ParameterError(ValueError):
    """A parameter value is missing, of the wrong type or out of range."""


P = ParamSpec
PARAMETERS: tuple[ParamSpec, ...] = (
    # Lifecycle
    P("lifecycle.autostart", True,
      "At start the node configures and activates itself (a failed start exits non-zero); false: it stays "
      "unconfigured until a lifecycle manager drives it through its lifecycle services.", read_only=True),
    # Input
    P("qos.reliability", "best_effort", "Reliability of the point cloud and image subscriptions.",
      choices=("best_effort", "reliable"), read_only=True),
    P("qos.depth", 1, "History depth of the subscriptions (keep last).", 1, 10, read_only=True),
    # Region of interest, in the LiDAR frame
    P("roi.min_range", 1.0, "Points closer than this (m) are dropped (the vehicle itself).", 0.0, 50.0),
    P("roi.max_range", 40.0, "Points farther than this (m) are dropped.", 1.0, 300.0),
    P("roi.z_min", -3.0, "Lowest z (m) kept, LiDAR frame.", -20.0, 20.0),
    P("roi.z_max", 1.5, "Highest z (m) kept, LiDAR frame.", -20.0, 20.0),
    P("input.max_points", 400000, "Clouds with more points are dropped and counted as malformed.",
      1000, 10000000),
    # Ground removal
    P("ground.cell_size", 2.0, "Grid cell (m) for the local ground height estimate.", 0.2, 10.0),
    P("ground.clearance", 0.2, "Points up to this height (m) above the local ground are ground.", 0.02, 1.0),
    # Person candidates
    P("detection.voxel_size", 0.2, "Grid cell (m) for connected-component clustering.", 0.05, 1.0),
    P("detection.min_points", 20, "Fewest points of a person candidate.", 3, 100000),
    P("detection.min_height", 0.3, "Lowest height (m) of a person candidate (0.3: a crouching child, a person lying "
      "down).", 0.1, 3.0),
    P("detection.max_height", 2.3, "Highest height (m) of a person candidate.", 0.5, 4.0),
    P("detection.max_width", 1.6, "Widest horizontal extent (m) of a person candidate.", 0.3, 5.0),
    P("detection.max_lying_width", 2.4,
      "Widest horizontal extent (m) of a cluster no higher than 1.3 m in which the split above 0.5 m finds nobody "
      "(a person lying down, up to 2 m long) that is kept whole as a candidate; other clusters wider than "
      "detection.max_width are split above 0.5 m; at or below detection.max_width: none.", 0.0, 5.0),
    P("detection.min_width", 0.3, "Narrowest horizontal extent (m) of a person candidate (rejects poles and posts; "
      "wider clutter is left to detection.min_body_share).",
      0.0, 3.0),
    P("detection.max_base", 1.5, "Highest lowest point (m above the local ground) of a person candidate (legs hidden).",
      0.0, 3.0),
    P("detection.min_body_share", 0.5,
      "Lowest share of a track's non-ground crop points within detection.body_core_radius of its axis that the "
      "network labels as a body part; tracks below are not published (clutter the geometric filter let "
      "through). 0 publishes every track.", 0.0, 1.0),
    P("detection.body_share_smoothing", 0.5,
      "Weight of a track's past in the body share that detection.min_body_share tests: the exponential average "
      "s = w * s_before + (1 - w) * share, started at the track's first share (no delay for a person whose first "
      "share passes; one whose first shares are low, coming out of occlusion, is accepted later, and after 3 "
      "rejections only checked every detection.recheck_interval frames); 0 tests each frame's share alone. "
      "Clutter the network is unsure of crosses a threshold now and then, people rarely drop below it.", 0.0, 0.95),
    P("detection.body_core_radius", 0.5,
      "Radius (m) around a track's axis of the crop points that decide detection.min_body_share (farther ones, "
      "such as a car beside the person, are rightly background).", 0.1, 2.0),
    P("detection.recheck_interval", 10,
      "A track the network rejected in 3 frames in a row (static clutter) goes through the network again only when "
      "its cluster's height, width or points change, or else every this many frames; 1 checks every track in every "
      "frame.", 1, 100),
    P("crop.include_ground", True,
      "Person crops take ground points too (feet and some ground, like the training crops); false: non-ground only."),
    # Tracking
    P("tracking.gate_distance", 1.2, "Largest distance (m) between a track's prediction and a detection.",
      0.1, 10.0),
    P("tracking.max_missed", 5, "Frames a track survives without a detection.", 0, 100),
    P("tracking.min_hits", 2, "Detections before a track is published.", 1, 100),
    # Network
    P("network.backend", "auto", "Inference backend; auto picks TensorRT with a GPU, else ONNX Runtime.",
      choices=("auto", "onnxruntime", "tensorrt", "torch"), read_only=True),
    P("network.model_path", "", "ONNX model (or torch checkpoint for backend torch); empty: the shipped model.",
      read_only=True),
    P("network.max_people", 20, "Largest batch of people per frame (TensorRT profile maximum).", 1, 256,
      read_only=True),
    P("network.fp16", False, "TensorRT: build the engine in FP16.", read_only=True),
    P("network.engine_cache_dir", "", "TensorRT engine cache directory; empty: $XDG_CACHE_HOME/kp3d_ros/engines "
      "(~/.cache/kp3d_ros/engines when XDG_CACHE_HOME is unset).", read_only=True),
    P("network.build_only", False,
      "Build (or load) the TensorRT engine for these network settings, log where it is and exit with code 0 "
      "without subscribing. With backend onnxruntime or torch, or auto without TensorRT and a GPU, there is "
      "nothing to build: the node says so and exits with code 0; a failed build exits non-zero.", read_only=True),
    P("network.threads", 2, "CPU threads for ONNX Runtime / torch.", 1, 64, read_only=True),
    P("cpu.blas_threads", 1, "Threads numpy's BLAS may use in this process (0: the library's default, one per "
      "core). The pipeline's matrix products are small: more BLAS threads only compete with ONNX Runtime and "
      "DDS for the cores.", 0, 64, read_only=True),
    # Scene flow
    P("flow.enabled", True, "Estimate per-track scene flow between consecutive frames."),
    P("flow.concurrent", True, "Estimate the flow of the tracks that were people in the previous frame on a second "
      "thread while the network runs (the network releases Python's lock); false: one after the other."),
    P("flow.iterations", 5, "Iterations of the real-time flow estimator.", 1, 50),
    P("flow.max_points", 128, "Points per track given to the flow estimator (a random subset of the person's "
      "non-ground crop points); every crop point takes the flow of its nearest subset point.", 16, 100000),
    # Smoothing
    P("smoothing.enabled", True, "Exponential smoothing of each track's keypoints over time."),
    P("smoothing.alpha", 0.6, "Weight of the newest keypoints (1 = no smoothing).", 0.01, 1.0),
    # Camera overlay
    P("camera.enabled", False, "Subscribe to image and camera_info and publish ~/overlay.", read_only=True),
    P("camera.extrinsics", [0.0, 0.0, 0.0, -math.pi / 2, 0.0, -math.pi / 2],
      "LiDAR-to-camera transform: x, y, z (m), roll, pitch, yaw (rad) of the camera in the LiDAR frame."),
    P("camera.max_offset_s", 0.05,
      "Largest time (s) between a cloud's stamp and the stamp of the image its overlay is drawn on; a cloud with "
      "no image that close gets no overlay (counted in overlay_skipped_no_image_in_time).", 0.001, 1.0),
    P("camera.buffer_size", 10, "Images kept (newest first) to pick the one nearest in time to each cloud.",
      1, 100, read_only=True),
    # Standard messages
    P("output.detections", True,
      "Publish ~/detections (vision_msgs/Detection3DArray) when the vision_msgs package is installed.",
      read_only=True),
    P("output.body_frames", False,
      "Broadcast a TF frame body_<track_id> per person (REP-155 naming) on /tf when tf2_msgs is installed.",
      read_only=True),
    # Online adaptation
    P("adaptation.enabled", False, "Fine-tune the network online with the unsupervised Stage II losses.",
      read_only=True),
    P("adaptation.paused", False,
      "Hold online adaptation at run time: no samples are queued, no steps are taken, and the backend keeps the "
      "weights it runs (adapted or source); false goes on from there."),
    P("adaptation.yield_to_perception", True,
      "The adapter's training and scoring wait before every torch operation (and every layer's backward) while a "
      "frame is processed, so that they run between frames (false: beside them, at a lower thread priority "
      "only).", read_only=True),
    P("adaptation.learning_rate", 1e-5, "Learning rate of online adaptation.", 1e-8, 1e-2),
    P("adaptation.buffer_size", 256, "Samples (frame pairs per track) kept for adaptation.", 8, 100000,
      read_only=True),
    P("adaptation.batch_size", 8, "Samples per adaptation step.", 1, 256),
    P("adaptation.min_interval_s", 5.0, "Shortest time (s) between two weight swaps.", 0.0, 3600.0),
    P("adaptation.source_tolerance", 0.05,
      "Largest relative rise of the held-back loss above the frozen source model's before the adapter "
      "refuses a candidate and resets to the source weights.", 0.0, 10.0),
    P("adaptation.deploy_on_signals", True,
      "Put a candidate into the backend only when it is below both the frozen source model and the weights in use "
      "on every label-free signal of Stage II's selection (augmentation gap, bone jitter, left/right mismatch, on "
      "the held-back pairs); otherwise training goes on and the backend keeps its weights. False: the loss and "
      "plausibility guards alone decide."),
    P("adaptation.deploy_standard_errors", 3.5,
      "With adaptation.deploy_on_signals: by how many standard errors of the paired per-crop difference a "
      "candidate's augmentation gap must be below the source model's. A swap is considered every "
      "adaptation.min_interval_s, so chance passes add up: 3.5 keeps the chance of any in 200 checks near 5 %.",
      0.0, 10.0),
    P("adaptation.checkpoint_dir", "", "Where adapted weights are saved; empty: no checkpoints.",
      read_only=True),
    P("adaptation.recipe", "",
      "A Stage II config (e.g. config/stage2_anchored.yaml) whose loss weights and labelled source anchor "
      "(source.data, source.weight) every adaptation step uses; empty: method.md's weights, no anchor.",
      read_only=True),
    P("adaptation.anchor_data", "cache",
      "Where adaptation.recipe's labelled anchor comes from: 'cache' (source.cache_samples crops generated once "
      "into the user's cache, about 7 MB and a minute on first use, by a low-priority child process before the first "
      "step), a `kp3d synth` root, or empty for the recipe's own source.data.", read_only=True),
    P("adaptation.resume", True,
      "At start, continue from the adapted weights saved in adaptation.checkpoint_dir when they were adapted from "
      "this same model (checked by its file's SHA-256); false starts from the model and discards them.",
      read_only=True),
    # Diagnostics
    P("diagnostics.period_s", 1.0, "Period (s) of /diagnostics messages.", 0.1, 60.0),
    P("diagnostics.frame_budget_ms", 100.0,
      "End-to-end time budget (ms, cloud arrival to markers published) of a frame: WARN when a frame in the last "
      "5 s took longer.", 1.0, 10000.0),
    P("diagnostics.budget_error_frames", 5, "ERROR when this many frames in a row exceed the frame budget.",
      1, 1000),
    P("diagnostics.stale_input_s", 1.0, "WARN when no cloud has arrived for this long (s) while active.",
      0.1, 600.0),
    P("diagnostics.min_input_rate_hz", 5.0,
      "WARN when clouds arrive, but at fewer per second than this (last 5 s); 0 turns the check off.",
      0.0, 1000.0),
)
del P

SPECS: dict[str, ParamSpec] = {spec.name: spec for spec in PARAMETERS}


_EXPONENT_NUMBER = re.compile(r"^[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+$")


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """NAME=VALUE strings (values parsed as YAML, as on the command line of `kp3d run --set`) to a dict."""
    overrides = {}
    for item in items:
        name, sep, text = item.partition("=")
        if not sep:
            raise ParameterError(f"--set expects NAME=VALUE, got {item!r}")
        overrides[name.strip()] = yaml.safe_load(text)
    return overrides


def defaults() -> dict[str, Any]:
    return {spec.name: spec.default for spec in PARAMETERS}


def _finite_number(value: Any) -> bool:
    """An int or float (not a bool, not a string such as "nan") with a finite value."""
    return not isinstance(value, bool) and isinstance(value, int | float) and math.isfinite(value)


def validate(name: str, value: Any) -> Any:
    """Return the value converted to the parameter's type, or raise ParameterError saying why."""
    if name not in SPECS:
        raise ParameterError(f"unknown parameter '{name}'")
    spec = SPECS[name]
    kind = type(spec.default)
    if kind is bool:
        if not isinstance(value, bool):
            raise ParameterError(f"{name} must be true or false, got {value!r}")
    elif kind is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ParameterError(f"{name} must be an integer, got {value!r}")
    elif kind is float:
        if isinstance(value, str) and _EXPONENT_NUMBER.match(value.strip()):
            value = float(value)  # YAML 1.1 (files, --set) reads 1e-4, without a dot, as a string
        if not _finite_number(value):
            raise ParameterError(f"{name} must be a finite number, got {value!r}")
        value = float(value)
    elif kind is str:
        if not isinstance(value, str):
            raise ParameterError(f"{name} must be a string, got {value!r}")
    elif kind is list:
        if (not isinstance(value, list | tuple) or len(value) != len(spec.default)
                or not all(_finite_number(v) for v in value)):
            raise ParameterError(f"{name} must be a list of {len(spec.default)} finite numbers, got {value!r}")
        value = [float(v) for v in value]
    if (spec.min is not None and value < spec.min) or (spec.max is not None and value > spec.max):
        raise ParameterError(f"{name} = {value} is outside [{spec.min}, {spec.max}]")
    if spec.choices is not None and value not in spec.choices:
        raise ParameterError(f"{name} = {value!r} is not one of {', '.join(spec.choices)}")
    return value


def _flatten(tree: dict, prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(_flatten(value, name + "."))
        else:
            flat[name] = value
    return flat


def load_params(path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """Defaults, updated from a ROS 2 parameter YAML (``kp3d_node: ros__parameters: ...``) and overrides.

    Every value is validated; unknown names and bad values raise ParameterError.
    """
    params = defaults()
    given: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ParameterError(f"parameter file not found: {path}")
        tree = yaml.safe_load(path.read_text()) or {}
        section = tree.get(NODE_NAME, tree.get(f"/{NODE_NAME}", tree.get("/**", {})))
        given.update(_flatten(section.get("ros__parameters", {})))
    given.update(overrides or {})
    given.pop("use_sim_time", None)
    for name, value in given.items():
        params[name] = validate(name, value)
    if params["roi.min_range"] >= params["roi.max_range"]:
        raise ParameterError("roi.min_range must be below roi.max_range")
    if params["roi.z_min"] >= params["roi.z_max"]:
        raise ParameterError("roi.z_min must be below roi.z_max")
    if params["detection.min_height"] >= params["detection.max_height"]:
        raise ParameterError("detection.min_height must be below detection.max_height")
    return params
