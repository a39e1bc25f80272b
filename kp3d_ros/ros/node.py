"""`kp3d_node`: point clouds in, skeletons, keypoints, segmentation, scene flow and diagnostics out.

A managed (lifecycle) node. The subscription callback only keeps the newest cloud (an unprocessed older
one is counted as dropped); a worker thread takes it, runs the ROS-free PerceptionPipeline and publishes.
Nothing queues without bound, and callbacks never wait for inference.
"""

from __future__ import annotations

import array
import gc
import os
import re
import sys
import tempfile
import threading
import time
from typing import Any

import numpy as np
import rclpy
from diagnostic_msgs.msg import DiagnosticArray
from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor, SetParametersResult
from rclpy.executors import ExternalShutdownException, MultiThreadedExecutor
from rclpy.lifecycle import LifecycleNode, LifecycleState, TransitionCallbackReturn
from rclpy.parameter import Parameter
from sensor_msgs.msg import CameraInfo, Image, PointCloud2
from std_msgs.msg import Header
from visualization_msgs.msg import MarkerArray

from kp3d_ros import layouts
from kp3d_ros.core import params as params_module
from kp3d_ros.core.cloud_layout import CloudError
from kp3d_ros.core.params import NODE_NAME, PARAMETERS, ParameterError, ParamSpec
from kp3d_ros.core.timesync import NearestImage
from kp3d_ros.ros.cdr import RawCloud, read_pointcloud2
from kp3d_ros.ros.dds import use_large_message_profile
from kp3d_ros.ros.diagnostics import NodeStats, diagnostic_array
from kp3d_ros.ros.health import assess
from kp3d_ros.ros.markers import markers_cdr_matches, skeleton_markers, skeleton_markers_cdr
from kp3d_ros.ros.memory import return_large_allocations
from kp3d_ros.ros.overlay import OverlayError, overlay_image
from kp3d_ros.ros.pointcloud2 import array_to_cloud, cloud_to_xyz
from kp3d_ros.ros.qos import input_qos, output_qos
from kp3d_ros.ros.spinning import spin_through_destroyed
from kp3d_ros.ros.standard import TF_QOS, TF_TOPIC, body_transforms, detections, optional_messages

LOG_THROTTLE_S = 5.0


def _descriptor(spec: ParamSpec) -> ParameterDescriptor:
    text = spec.description
    if spec.choices:
        text += f" One of: {', '.join(spec.choices)}."
    descriptor = ParameterDescriptor(name=spec.name, description=text, read_only=spec.read_only)
    if spec.min is not None and spec.max is not None:
        if isinstance(spec.default, float):
            descriptor.floating_point_range = [FloatingPointRange(from_value=float(spec.min),
                                                                  to_value=float(spec.max), step=0.0)]
        elif isinstance(spec.default, int) and not isinstance(spec.default, bool):
            descriptor.integer_range = [IntegerRange(from_value=int(spec.min), to_value=int(spec.max), step=0)]
    return descriptor


def _plain(value: Any) -> Any:
    """rclpy gives arrays as array.array; params.validate wants lists."""
    return list(value) if isinstance(value, array.array | tuple) else value


def cloud_error_reason(error: CloudError) -> str:
    """The counter name (malformed_<reason>) of a malformed-cloud error: core.cloud_layout.MALFORMED_REASONS."""
    return getattr(error, "reason", "bad_layout")


def _stamp_ns(header: Header) -> int:
    return int(header.stamp.sec) * 1_000_000_000 + int(header.stamp.nanosec)


class _RecordingLogger:
    """Forwards to the node's logger (logging-style calls) and keeps the info messages.

    The pipeline reports its backend choice through it; the node shows that reason in /diagnostics.
    """

    def __init__(self, logger: Any) -> None:
        self.logger = logger
        self.messages: list[str] = []

    @staticmethod
    def _text(message: Any, args: tuple) -> str:
        return str(message) % args if args else str(message)

    def info(self, message: Any, *args: Any, **_: Any) -> None:
        self.messages.append(self._text(message, args))
        self.logger.info(self.messages[-1])

    def warning(self, message: Any, *args: Any, **_: Any) -> None:
        self.logger.warning(self._text(message, args))

    warn = warning

    def error(self, message: Any, *args: Any, **_: Any) -> None:
        self.logger.error(self._text(message, args))

    def debug(self, message: Any, *args: Any, **_: Any) -> None:
        self.logger.debug(self._text(message, args))


class Kp3dNode(LifecycleNode):
    """The ROS 2 shell around kp3d_ros.core.pipeline.PerceptionPipeline: a managed (lifecycle) node.

    unconfigured: parameters declared, /diagnostics only. configure: validate the parameters, load the
    model (or build the TensorRT engine), warm up, create the output publishers. activate: subscribe, publish.
    deactivate: unsubscribe, keep the model. cleanup: free the model. shutdown: from every state.
    """

    def __init__(self, **node_kwargs: Any) -> None:
        super().__init__(NODE_NAME, **node_kwargs)
        self._declare_errors = self._declare_parameters()
        self.params: dict[str, Any] | None = None  # the validated parameters, while configured
        self.stats = NodeStats()
        self.pipeline: Any = None
        self.adapter: Any = None
        self.build_only = False
        self.configure_error = ""  # why the last configure failed ("" after a successful one)
        self.engine_state = "not loaded"
        self.log_transition_failures = True  # create_node prints an autostart failure itself, in one line
        self._last_log: dict[str, float] = {}
        self._pipeline_log = _RecordingLogger(self.get_logger())
        self._lock = threading.Lock()  # the newest cloud, the image buffer
        self._frame_lock = threading.Lock()  # held while a frame is processed and published
        self._latest: tuple[RawCloud, int] | None = None  # (cloud, arrival monotonic ns)
        self._camera_info: CameraInfo | None = None
        self._sync: NearestImage | None = None
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._worker: threading.Thread | None = None
        self._inputs: list[Any] = []  # subscriptions, while active
        self._outputs: dict[str, Any] = {}  # lifecycle publishers, while configured
        self._markers_as_bytes = False  # set at configure (markers_cdr_matches)
        self._active = False
        self._active_since: float | None = None
        self.vision_msgs = optional_messages("vision_msgs", "Detection3DArray")
        self.tf_msgs = optional_messages("tf2_msgs", "TFMessage")
        self.diagnostics_pub = self.create_publisher(DiagnosticArray, "/diagnostics", output_qos(10))
        self.diagnostics_timer = self.create_timer(self._declared("diagnostics.period_s"), self.publish_diagnostics)
        self.add_on_set_parameters_callback(self._on_set_parameters)
        self.discard_service = self._create_discard_service()

    # Parameters ---------------------------------------------------------------------------------

    def _declare_parameters(self) -> dict[str, str]:
        """Declare every parameter; an override rclpy refuses (type, range) is kept as an error for configure,
        and the parameter is declared with its default so that the node lives on."""
        errors = {}
        for spec in PARAMETERS:
            try:
                self.declare_parameter(spec.name, spec.default, _descriptor(spec))
            except Exception as error:  # rclpy raises several types for a bad override
                errors[spec.name] = f"{spec.name}: {' '.join(str(error).split())}"
                self.declare_parameter(spec.name, spec.default, _descriptor(spec), ignore_override=True)
        return errors

    def _declared(self, name: str) -> Any:
        """A declared value if it is valid on its own, else the default (before configure validates all)."""
        try:
            return params_module.validate(name, _plain(self.get_parameter(name).value))
        except ParameterError:
            return params_module.SPECS[name].default

    def _load_params(self) -> dict[str, Any]:
        if self._declare_errors:
            raise ParameterError("; ".join(self._declare_errors.values()))
        given = {spec.name: _plain(self.get_parameter(spec.name).value) for spec in PARAMETERS}
        return params_module.load_params(overrides=given)

    def _on_set_parameters(self, changes: list[Parameter]) -> SetParametersResult:
        try:
            merged = dict(self.params or params_module.defaults())
            for change in changes:
                if change.name == "use_sim_time":
                    continue
                merged[change.name] = params_module.validate(change.name, _plain(change.value))
            if self.params is not None:  # configured: the pairs must agree now (configure checks them otherwise)
                merged = params_module.load_params(overrides=merged)
        except ParameterError as error:
            return SetParametersResult(successful=False, reason=str(error))
        for change in changes:
            self._declare_errors.pop(change.name, None)
        if self.params is not None:
            self.params = merged
            update = getattr(self.pipeline, "update_params", None)
            if update is not None:
                update(merged)
            if self.adapter is not None:
                self.adapter.params = merged
            if self._sync is not None:
                self._sync.max_offset_ns = int(merged["camera.max_offset_s"] * 1e9)
        if any(change.name == "diagnostics.period_s" for change in changes):
            self.destroy_timer(self.diagnostics_timer)
            period = next(c.value for c in changes if c.name == "diagnostics.period_s")
            self.diagnostics_timer = self.create_timer(float(period), self.publish_diagnostics)
        return SetParametersResult(successful=True)

    # Online adaptation ----------------------------------------------------------------------------

    def _create_discard_service(self) -> Any:
        """~/discard_adaptation (std_srvs/Trigger), in a callback group of its own so that a discard (which
        waits for the adapter's current step) never holds up the clouds; None where std_srvs is missing."""
        try:
            from rclpy.callback_groups import MutuallyExclusiveCallbackGroup
            from std_srvs.srv import Trigger
        except ImportError:
            self.get_logger().info("std_srvs is not installed: no ~/discard_adaptation service")
            return None
        return self.create_service(Trigger, "~/discard_adaptation", self._on_discard_adaptation,
                                   callback_group=MutuallyExclusiveCallbackGroup())

    def _on_discard_adaptation(self, request: Any, response: Any) -> Any:
        """Back to the source model: the adapted weights in the backend and in adaptation.checkpoint_dir go."""
        adapter = self.adapter
        if adapter is None:
            response.success = False
            response.message = ("online adaptation is not running (adaptation.enabled is false, or the node is "
                                "not configured)")
            return response
        response.success, response.message = adapter.discard(timeout=10.0)
        self.get_logger().info(f"~/discard_adaptation: {response.message}")
        return response

    # Lifecycle ------------------------------------------------------------------------------------

    def lifecycle_state(self) -> str:
        """The current state's label: unconfigured, inactive, active, finalized, or a transition state."""
        return str(self._state_machine.current_state[1])

    def _failed(self, what: str, error: BaseException) -> TransitionCallbackReturn:
        if isinstance(error, ParameterError):
            self.configure_error = f"invalid parameters: {' '.join(str(error).split())}"
        else:
            self.configure_error = f"cannot start the pipeline: {one_line(error)}"
        if self.log_transition_failures:
            self.get_logger().error(f"{what} failed: {self.configure_error}")
        self._release()
        return TransitionCallbackReturn.FAILURE

    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        try:
            params = self._load_params()
            self.build_only = bool(params["network.build_only"])
            if self.build_only:  # build (or load) the engine; there is nothing to activate
                from kp3d_ros.backends.factory import build_engine_only

                self.get_logger().info(build_engine_only(params, logger=self._pipeline_log))
                self.params, self.configure_error, self.engine_state = params, "", "built (network.build_only)"
                return TransitionCallbackReturn.SUCCESS
            from kp3d_ros.core.pipeline import PerceptionPipeline

            self.pipeline = PerceptionPipeline.from_params(params, logger=self._pipeline_log)
            started = time.perf_counter()
            self.pipeline.backend.warm_up()
            self.engine_state = f"loaded, warmed up in {1000 * (time.perf_counter() - started):.0f} ms"
            self.params = params
            self.adapter = self._create_adapter()
            self._create_outputs(params)
        except Exception as error:  # any fault: stay unconfigured, alive, and say why
            return self._failed("configure", error)
        self.configure_error = ""
        self._stop.clear()
        self._worker = threading.Thread(target=self._work, name="kp3d_worker", daemon=True)
        self._worker.start()
        # Everything loaded so far (torch, ONNX Runtime, SciPy, the model) lives as long as the configuration: move
        # it out of the garbage collector's view: a full collection scanned it for ~120 ms with every thread
        # stopped (measured in the node's test process). Cleanup unfreezes it.
        gc.collect()
        gc.freeze()
        self.get_logger().info(f"configured: backend {self.backend_name()} ({self.backend_reason()}), "
                               f"engine {self.engine_state}")
        return TransitionCallbackReturn.SUCCESS

    def _create_outputs(self, params: dict[str, Any]) -> None:
        # Skeleton markers go out as CDR bytes written from the arrays (0.3 against 1.5 ms for 5 people) where this
        # distribution's Marker reads them back as the message objects would be (checked once per process).
        self._markers_as_bytes = markers_cdr_matches()
        publish = self.create_lifecycle_publisher
        self._outputs = {
            "skeletons": publish(MarkerArray, "~/skeletons", output_qos()),
            "keypoints": publish(PointCloud2, "~/keypoints", output_qos()),
            "segmentation": publish(PointCloud2, "~/segmentation", output_qos()),
            "scene_flow": publish(PointCloud2, "~/scene_flow", output_qos()),
        }
        if params["camera.enabled"]:
            self._outputs["overlay"] = publish(Image, "~/overlay", output_qos())
            self._sync = NearestImage(int(params["camera.max_offset_s"] * 1e9), params["camera.buffer_size"])
        if params["output.detections"] and self.vision_msgs is not None:
            self._outputs["detections"] = publish(self.vision_msgs.Detection3DArray, "~/detections", output_qos())
        if params["output.body_frames"] and self.tf_msgs is not None:
            self._outputs["tf"] = publish(self.tf_msgs.TFMessage, TF_TOPIC, TF_QOS)

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        if self.build_only:
            self.get_logger().error("network.build_only is set: nothing to activate")
            return TransitionCallbackReturn.FAILURE
        qos = input_qos(self.params["qos.reliability"], self.params["qos.depth"])
        # raw: the cloud is read from its CDR bytes (ros/cdr.py); rclpy's deserialization copied every point with
        # the GIL held (5.5 ms for a 2.4 MB cloud on this project's CPU, 0.03 ms read from the bytes)
        self.cloud_sub = self.create_subscription(PointCloud2, "points", self._on_cloud, qos, raw=True)
        self._inputs = [self.cloud_sub]
        if self.params["camera.enabled"]:
            self._inputs.append(self.create_subscription(Image, "image", self._on_image, qos))
            self._inputs.append(self.create_subscription(CameraInfo, "camera_info", self._on_camera_info, qos))
        self._active, self._active_since = True, time.monotonic()
        self.get_logger().info(f"active: subscribed to {self.cloud_sub.topic_name}")
        return super().on_activate(state)

    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._stop_inputs()
        return super().on_deactivate(state)

    def on_cleanup(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._release()
        return TransitionCallbackReturn.SUCCESS

    def on_shutdown(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._stop_inputs()
        self._release()
        return TransitionCallbackReturn.SUCCESS

    def on_error(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._stop_inputs()
        self._release()
        return TransitionCallbackReturn.SUCCESS  # back to unconfigured

    def _stop_inputs(self) -> None:
        """Unsubscribe, and wait for the frame in progress: nothing is published after this."""
        for subscription in self._inputs:
            self.destroy_subscription(subscription)
        self._inputs, self.cloud_sub = [], None
        with self._frame_lock:
            self._active, self._active_since = False, None
            with self._lock:
                self._latest = None
                if self._sync is not None:
                    self._sync.clear()

    def _release(self) -> None:
        """Stop the worker and free the publishers, the pipeline (model) and the adapter."""
        self._stop.set()
        self._wake.set()
        if self._worker is not None and self._worker.is_alive() and self._worker is not threading.current_thread():
            self._worker.join(timeout=5.0)
        self._worker = None
        for publisher in self._outputs.values():
            self.destroy_lifecycle_publisher(publisher)
        self._outputs, self._sync, self._camera_info = {}, None, None
        if self.adapter is not None:
            self.adapter.close()
        if self.pipeline is not None:
            self.pipeline.close()
        self.pipeline, self.adapter, self.params, self.build_only = None, None, None, False
        self.engine_state = "not loaded"
        gc.unfreeze()
        gc.collect()

    # Helpers --------------------------------------------------------------------------------------

    def _create_adapter(self) -> Any:
        if not self.params["adaptation.enabled"]:
            return None
        try:
            from kp3d_ros.adaptation import OnlineAdapter

            adapter = OnlineAdapter.from_params(self.params, self.pipeline, logger=_RecordingLogger(self.get_logger()))
        except Exception as error:  # adaptation is optional: run without it, say why
            self.get_logger().error(f"online adaptation disabled: {error}")
            return None
        self.pipeline.adapter = adapter
        return adapter

    def backend_name(self) -> str:
        if self.pipeline is None:
            return "none"
        backend = getattr(self.pipeline, "backend", None)
        return str(getattr(backend, "name", type(backend).__name__))

    def backend_reason(self) -> str:
        if self.pipeline is None:
            return ""
        reason = getattr(self.pipeline, "backend_reason", None)
        if reason is None:  # the pipeline logs "backend: NAME (REASON)" when it builds the backend
            reason = next((m.partition("(")[2].rpartition(")")[0] for m in self._pipeline_log.messages
                           if m.startswith("backend:")), "")
        return str(reason)

    def _warn(self, key: str, text: str) -> None:
        """A warning at most once per LOG_THROTTLE_S for each key."""
        now = time.monotonic()
        if now - self._last_log.get(key, -1e9) >= LOG_THROTTLE_S:
            self._last_log[key] = now
            self.get_logger().warning(text)

    def _malformed(self, reason: str, text: str) -> None:
        self.stats.on_malformed(reason)
        self._warn(f"malformed/{reason}", f"skipping cloud ({reason}): {text}")

    # Callbacks ------------------------------------------------------------------------------------

    def _on_cloud(self, data: bytes) -> None:
        arrival = time.monotonic_ns()
        try:
            msg = read_pointcloud2(data)
        except ValueError as error:
            self.stats.on_input()
            self._malformed("bad_serialization", str(error))
            return
        self.stats.on_input(_stamp_ns(msg.header))
        gate = getattr(self.adapter, "gate", None)
        with self._lock:
            if self._latest is not None:
                self.stats.on_dropped()
            self._latest = (msg, arrival)
            if gate is not None:  # the adapter waits from a cloud's arrival until its outputs are published
                gate.frame_started()
        self._wake.set()

    def _on_image(self, msg: Image) -> None:
        with self._lock:
            if self._sync is not None:
                self._sync.add_image(_stamp_ns(msg.header), msg)
        self._wake.set()  # clouds waiting for a later image may now have their pair

    def _on_camera_info(self, msg: CameraInfo) -> None:
        self._camera_info = msg

    def _work(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(timeout=0.1)
            with self._lock:
                latest, self._latest = self._latest, None
                self._wake.clear()
            with self._frame_lock:
                if not self._active or self._stop.is_set():
                    self._frame_done()
                    continue
                try:
                    if latest is not None:
                        self.process(*latest)
                    self._publish_overlays()
                except Exception as error:  # keep the node alive; the frame is lost and counted
                    self._malformed("processing_error", f"{type(error).__name__}: {error}")
                finally:
                    self._frame_done()

    def _frame_done(self) -> None:
        """Let the online adapter go on when no cloud waits to be processed."""
        gate = getattr(self.adapter, "gate", None)
        with self._lock:
            if gate is not None and self._latest is None:
                gate.frame_finished()

    # Processing -----------------------------------------------------------------------------------

    def _to_xyz(self, msg: RawCloud) -> tuple[np.ndarray, int] | None:
        count = int(msg.width) * int(msg.height)
        if count > self.params["input.max_points"]:
            self._malformed("too_many_points", f"{count} points > input.max_points {self.params['input.max_points']}")
            return None
        try:
            xyz, nonfinite = cloud_to_xyz(msg)
        except CloudError as error:
            self._malformed(cloud_error_reason(error), str(error))
            return None
        if xyz.shape[0] == 0:
            reason = "all_nonfinite" if nonfinite else "empty"
            self._malformed(reason, f"no finite points ({nonfinite} non-finite)")
            return None
        return xyz, nonfinite

    def process(self, msg: RawCloud, arrival_ns: int) -> None:
        """Run the pipeline on one cloud and publish every output (markers first)."""
        converted = self._to_xyz(msg)
        if converted is None:
            return
        xyz, nonfinite = converted
        result = self.pipeline.process(xyz, _stamp_ns(msg.header))
        people = [(p.track_id, p.joints) for p in result.people]
        out = self._outputs
        out["skeletons"].publish(skeleton_markers_cdr(msg.header, people) if self._markers_as_bytes
                                 else skeleton_markers(msg.header, people))
        end_to_end_ms = (time.monotonic_ns() - arrival_ns) / 1e6
        keypoints = layouts.keypoints_array([(p.track_id, p.joints, p.confidence) for p in result.people])
        out["keypoints"].publish(array_to_cloud(keypoints, msg.header))
        out["segmentation"].publish(array_to_cloud(segmentation_array(result.people), msg.header))
        out["scene_flow"].publish(array_to_cloud(scene_flow_array(result.people), msg.header))
        if "detections" in out:
            out["detections"].publish(detections(self.vision_msgs, msg.header, result.people))
        if "tf" in out and result.people:
            out["tf"].publish(self.tf_msgs.TFMessage(transforms=body_transforms(msg.header, result.people)))
        if self._sync is not None:
            with self._lock:
                self._sync.add_cloud(_stamp_ns(msg.header), people, time.monotonic_ns())
        self.stats.on_output(_stamp_ns(msg.header), end_to_end_ms, dict(result.timings_ms), len(people), nonfinite,
                             self.params["diagnostics.frame_budget_ms"])

    def _publish_overlays(self) -> None:
        """An overlay for each cloud whose image pairing is decided: on the image nearest in time to the cloud,
        within camera.max_offset_s; a cloud without such an image is counted (overlay_skipped_no_image_in_time)."""
        if self._sync is None:
            return
        with self._lock:
            pairings = self._sync.ready(time.monotonic_ns())
        for pairing in pairings:
            if pairing.image is None:
                self.stats.on_overlay(None)
                continue
            info = self._camera_info
            if info is None:
                self.stats.on_overlay_error("missing_camera_info")
                self._warn("overlay/info", "no camera_info received yet: ~/overlay not published")
                continue
            try:
                overlay = overlay_image(pairing.image, info, pairing.cloud, self.params["camera.extrinsics"])
            except OverlayError as error:
                self.stats.on_overlay_error(error.reason)
                self._warn(f"overlay/{error.reason}", f"no overlay: {error}")
                continue
            self._outputs["overlay"].publish(overlay)
            self.stats.on_overlay(pairing.offset_ns)

    def _standard_outputs(self) -> dict[str, str]:
        """What the node does with the optional standard messages (for /diagnostics)."""
        params = self.params or {name: self._declared(name) for name in ("output.detections", "output.body_frames")}
        detections_state = ("unavailable: vision_msgs not installed" if self.vision_msgs is None else
                            "on (~/detections)" if params["output.detections"] else "off (output.detections)")
        frames_state = ("unavailable: tf2_msgs not installed" if self.tf_msgs is None else
                        "on (/tf)" if params["output.body_frames"] else "off (output.body_frames)")
        return {"detections": detections_state, "body_frames": frames_state}

    def publish_diagnostics(self) -> None:
        state = self.lifecycle_state()
        extra: dict[str, Any] = {"lifecycle_state": state, "configure_error": self.configure_error,
                                 "backend": self.backend_name(), "backend_reason": self.backend_reason(),
                                 "engine_state": self.engine_state, **self._standard_outputs(),
                                 "skeleton_markers": "CDR bytes" if self._markers_as_bytes else "message objects",
                                 "seconds_active": 0.0 if self._active_since is None else
                                 time.monotonic() - self._active_since}
        if self.adapter is not None:
            try:
                extra.update({f"adaptation_{k}": v for k, v in self.adapter.state().items()})
            except Exception as error:  # diagnostics must not take the node down
                extra["adaptation_error"] = str(error)
        values = {**self.stats.snapshot(), **extra}
        params = self.params or {spec.name: self._declared(spec.name) for spec in PARAMETERS}
        level, message = assess(values, params, state, self.configure_error)
        stamp = self.get_clock().now().to_msg()
        self.diagnostics_pub.publish(diagnostic_array(stamp, self.get_fully_qualified_name(), values, level, message))

    def destroy_node(self) -> None:
        # After Ctrl-C the context is shut down and rcl has begun the shutdown transition itself: release directly
        if self.context.ok() and self.lifecycle_state() in ("unconfigured", "inactive", "active"):
            try:
                self.trigger_shutdown()
            except Exception as error:  # the node is destroyed anyway; say why it skipped the transition
                self.get_logger().warning(f"shutdown transition failed: {one_line(error)}")
        self._stop_inputs()
        self._release()
        super().destroy_node()


def segmentation_array(people: list) -> np.ndarray:
    """Every person's points with track id and part, in layouts.SEGMENTATION."""
    if not people:
        return np.zeros(0, dtype=layouts.SEGMENTATION)
    points = np.concatenate([p.points for p in people]).astype(np.float32).reshape(-1, 3)
    out = np.zeros(points.shape[0], dtype=layouts.SEGMENTATION)
    out["x"], out["y"], out["z"] = points[:, 0], points[:, 1], points[:, 2]
    out["track_id"] = np.concatenate([np.full(len(p.points), p.track_id) for p in people])
    out["part"] = np.concatenate([np.asarray(p.parts) for p in people])
    return out


def scene_flow_array(people: list) -> np.ndarray:
    """Points and flow of the people that have a flow estimate, in layouts.SCENE_FLOW."""
    moving = [p for p in people if p.flow is not None]
    if not moving:
        return np.zeros(0, dtype=layouts.SCENE_FLOW)
    points = np.concatenate([p.points for p in moving]).astype(np.float32).reshape(-1, 3)
    flow = np.concatenate([p.flow for p in moving]).astype(np.float32).reshape(-1, 3)
    out = np.zeros(points.shape[0], dtype=layouts.SCENE_FLOW)
    out["x"], out["y"], out["z"] = points[:, 0], points[:, 1], points[:, 2]
    out["vx"], out["vy"], out["vz"] = flow[:, 0], flow[:, 1], flow[:, 2]
    out["track_id"] = np.concatenate([np.full(len(p.points), p.track_id) for p in moving])
    return out


def one_line(error: BaseException) -> str:
    """'Type: message' on one line (ROS and ONNX Runtime messages carry newlines and C source locations)."""
    text = " ".join(str(error).split())
    text = re.sub(r"\s*(, at /\S+:\d+)+", "", text).strip()  # rcl's ", at /project/src/parse.c:835" trail
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


def create_node(**node_kwargs: Any) -> Kp3dNode | None:
    """The node; with lifecycle.autostart (the default) configured and active.

    None after printing one line saying why it cannot start (bad parameters, a missing or broken model, no
    backend, any other start-up fault). With network.build_only the node is configured only (nothing to run).
    """
    try:
        node = Kp3dNode(**node_kwargs)
    except Exception as error:  # rclpy could not create the node at all
        print(f"{NODE_NAME}: cannot start: {one_line(error)}", file=sys.stderr)
        return None
    if not node._declared("lifecycle.autostart"):
        return node
    # The states, not the trigger_*() return values, decide (older rclpy releases return None from them).
    node.log_transition_failures = False
    node.trigger_configure()
    node.log_transition_failures = True
    if node.lifecycle_state() == "inactive" and not node.build_only:
        node.trigger_activate()
    if node.lifecycle_state() == "active" or (node.build_only and node.lifecycle_state() == "inactive"):
        return node
    print(f"{NODE_NAME}: {node.configure_error or 'activation failed'}", file=sys.stderr)
    node.destroy_node()
    return None


def _params_files(argv: list[str]) -> list[str]:
    """The files of every --params-file in the --ros-args sections of argv."""
    files, in_ros, i = [], False, 0
    while i < len(argv):
        arg = argv[i]
        if arg == "--ros-args":
            in_ros = True
        elif arg == "--":
            in_ros = False
        elif in_ros and arg == "--params-file" and i + 1 < len(argv):
            files.append(argv[i + 1])
            i += 1
        i += 1
    return files


def init_ros(argv: list[str]) -> str | None:
    """rclpy.init(argv), or the reason it failed as one line (None on success).

    A missing parameter file is named before rcl sees it. rcl logs its own error line to stderr before it
    raises; that output is held back while rclpy initialises and printed only when initialisation succeeds.
    """
    for path in _params_files(argv):
        if not os.path.isfile(path):
            return f"parameter file not found: {path}"
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as held:
        os.dup2(held.fileno(), 2)
        try:
            rclpy.init(args=argv)
            error = None
        except Exception as caught:  # rclpy raises RCLError (and others) for a bad params file or argument
            error = caught
        finally:
            os.dup2(saved, 2)
            os.close(saved)
        if error is not None:
            return f"cannot initialise ROS: {one_line(error)}"
        held.seek(0)
        sys.stderr.write(held.read().decode(errors="replace"))
    return None


def main(argv: list[str] | None = None) -> int:
    """Console script `kp3d_node` (ROS arguments such as --ros-args --params-file FILE are honoured)."""
    use_large_message_profile()
    return_large_allocations()
    failure = init_ros(sys.argv if argv is None else argv)
    if failure is not None:
        print(f"{NODE_NAME}: {failure}", file=sys.stderr)
        return 1
    node = create_node()
    if node is None:
        rclpy.shutdown()
        return 1
    if node.build_only:  # network.build_only: the engine is built (or there is nothing to build); done
        node.destroy_node()
        rclpy.try_shutdown()
        return 0
    executor = MultiThreadedExecutor(num_threads=2)
    executor.add_node(node)
    try:
        spin_through_destroyed(executor, lambda: node.get_logger().warning(
            "an entity destroyed by a lifecycle transition was still in the executor's wait set; spinning on"))
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        executor.shutdown()
        node.destroy_node()
        if rclpy.ok():
            rclpy.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
