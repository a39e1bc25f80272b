"""`kp3d_node`: point clouds in, skeletons, keypoints, segmentation, scene flow and diagnostics out.

The subscription callback only keeps the newest cloud (an unprocessed older one is counted as
dropped); a worker thread takes it, runs the ROS-free PerceptionPipeline and publishes. Nothing
queues without bound, and callbacks never wait for inference.
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
from rclpy.node import Node
from rclpy.parameter import Parameter
from sensor_msgs.msg import CameraInfo, Image, PointCloud2
from std_msgs.msg import Header
from visualization_msgs.msg import MarkerArray

from kp3d_ros import layouts
from kp3d_ros.core import params as params_module
from kp3d_ros.core.cloud_layout import CloudError
from kp3d_ros.core.params import NODE_NAME, PARAMETERS, ParameterError, ParamSpec
from kp3d_ros.ros.dds import use_large_message_profile
from kp3d_ros.ros.diagnostics import NodeStats, diagnostic_array
from kp3d_ros.ros.markers import skeleton_markers
from kp3d_ros.ros.overlay import OverlayError, overlay_image
from kp3d_ros.ros.pointcloud2 import array_to_cloud, cloud_to_xyz
from kp3d_ros.ros.qos import input_qos, output_qos

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


class Kp3dNode(Node):
    """The ROS 2 shell around kp3d_ros.core.pipeline.PerceptionPipeline."""

    def __init__(self, **node_kwargs: Any) -> None:
        super().__init__(NODE_NAME, **node_kwargs)
        self.params = self._declare_and_load()
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._worker: threading.Thread | None = None
        self.adapter = None
        self.build_only = bool(self.params["network.build_only"])
        if self.build_only:  # build (or load) the engine, then the caller exits: no pipeline, no topics
            from kp3d_ros.backends.factory import build_engine_only

            self.get_logger().info(build_engine_only(self.params, logger=_RecordingLogger(self.get_logger())))
            return
        self.stats = NodeStats()
        self._last_log: dict[str, float] = {}
        from kp3d_ros.core.pipeline import PerceptionPipeline

        self._pipeline_log = _RecordingLogger(self.get_logger())
        self.pipeline = PerceptionPipeline.from_params(self.params, logger=self._pipeline_log)
        self.adapter = self._create_adapter()
        self._lock = threading.Lock()
        self._latest: tuple[PointCloud2, int] | None = None  # (message, arrival monotonic ns)
        self._image: Image | None = None
        self._camera_info: CameraInfo | None = None

        qos = input_qos(self.params["qos.reliability"], self.params["qos.depth"])
        self.cloud_sub = self.create_subscription(PointCloud2, "points", self._on_cloud, qos)
        if self.params["camera.enabled"]:
            self.create_subscription(Image, "image", self._on_image, qos)
            self.create_subscription(CameraInfo, "camera_info", self._on_camera_info, qos)
            self.overlay_pub = self.create_publisher(Image, "~/overlay", output_qos())
        self.skeletons_pub = self.create_publisher(MarkerArray, "~/skeletons", output_qos())
        self.keypoints_pub = self.create_publisher(PointCloud2, "~/keypoints", output_qos())
        self.segmentation_pub = self.create_publisher(PointCloud2, "~/segmentation", output_qos())
        self.flow_pub = self.create_publisher(PointCloud2, "~/scene_flow", output_qos())
        self.diagnostics_pub = self.create_publisher(DiagnosticArray, "/diagnostics", output_qos(10))
        self.diagnostics_timer = self.create_timer(self.params["diagnostics.period_s"], self.publish_diagnostics)
        self.add_on_set_parameters_callback(self._on_set_parameters)

        # Everything loaded so far (torch, ONNX Runtime, SciPy, the model) lives as long as the node: move it
        # out of the garbage collector's view: a full collection scanned it for ~120 ms with every thread
        # stopped (measured in the node's test process).
        gc.collect()
        gc.freeze()
        self._worker = threading.Thread(target=self._work, name="kp3d_worker", daemon=True)
        self._worker.start()
        self.get_logger().info(
            f"kp3d_node ready: backend {self.backend_name()} ({self.backend_reason()}), "
            f"subscribed to {self.cloud_sub.topic_name}")

    # Parameters ---------------------------------------------------------------------------------

    def _declare_and_load(self) -> dict[str, Any]:
        for spec in PARAMETERS:
            try:
                self.declare_parameter(spec.name, spec.default, _descriptor(spec))
            except Exception as error:  # rclpy raises several types for a bad override
                raise ParameterError(f"{spec.name}: {error}") from error
        given = {spec.name: _plain(self.get_parameter(spec.name).value) for spec in PARAMETERS}
        return params_module.load_params(overrides=given)

    def _on_set_parameters(self, changes: list[Parameter]) -> SetParametersResult:
        try:
            merged = dict(self.params)
            for change in changes:
                if change.name == "use_sim_time":
                    continue
                merged[change.name] = params_module.validate(change.name, _plain(change.value))
            merged = params_module.load_params(overrides=merged)
        except ParameterError as error:
            return SetParametersResult(successful=False, reason=str(error))
        self.params = merged
        update = getattr(self.pipeline, "update_params", None)
        if update is not None:
            update(merged)
        if self.adapter is not None:
            self.adapter.params = merged
        if any(change.name == "diagnostics.period_s" for change in changes):
            self.destroy_timer(self.diagnostics_timer)
            self.diagnostics_timer = self.create_timer(merged["diagnostics.period_s"], self.publish_diagnostics)
        return SetParametersResult(successful=True)

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
        backend = getattr(self.pipeline, "backend", None)
        return str(getattr(backend, "name", type(backend).__name__))

    def backend_reason(self) -> str:
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

    def _on_cloud(self, msg: PointCloud2) -> None:
        arrival = time.monotonic_ns()
        self.stats.on_input(_stamp_ns(msg.header))
        with self._lock:
            if self._latest is not None:
                self.stats.on_dropped()
            self._latest = (msg, arrival)
        self._wake.set()

    def _on_image(self, msg: Image) -> None:
        self._image = msg

    def _on_camera_info(self, msg: CameraInfo) -> None:
        self._camera_info = msg

    def _work(self) -> None:
        while not self._stop.is_set():
            if not self._wake.wait(timeout=0.1):
                continue
            with self._lock:
                latest, self._latest = self._latest, None
                self._wake.clear()
            if latest is None:
                continue
            try:
                self.process(*latest)
            except Exception as error:  # keep the node alive; the frame is lost and counted
                self._malformed("processing_error", f"{type(error).__name__}: {error}")

    # Processing -----------------------------------------------------------------------------------

    def _to_xyz(self, msg: PointCloud2) -> tuple[np.ndarray, int] | None:
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

    def process(self, msg: PointCloud2, arrival_ns: int) -> None:
        """Run the pipeline on one cloud and publish every output (markers first)."""
        converted = self._to_xyz(msg)
        if converted is None:
            return
        xyz, nonfinite = converted
        result = self.pipeline.process(xyz, _stamp_ns(msg.header))
        people = [(p.track_id, p.joints) for p in result.people]
        self.skeletons_pub.publish(skeleton_markers(msg.header, people))
        end_to_end_ms = (time.monotonic_ns() - arrival_ns) / 1e6
        keypoints = layouts.keypoints_array([(p.track_id, p.joints, p.confidence) for p in result.people])
        self.keypoints_pub.publish(array_to_cloud(keypoints, msg.header))
        self.segmentation_pub.publish(array_to_cloud(segmentation_array(result.people), msg.header))
        self.flow_pub.publish(array_to_cloud(scene_flow_array(result.people), msg.header))
        if self.params["camera.enabled"]:
            self._publish_overlay(people)
        self.stats.on_output(_stamp_ns(msg.header), end_to_end_ms, dict(result.timings_ms), len(people), nonfinite)

    def _publish_overlay(self, people: list[tuple[int, np.ndarray]]) -> None:
        image, info = self._image, self._camera_info
        if image is None:
            return
        if info is None:
            self.stats.on_overlay_error("missing_camera_info")
            self._warn("overlay/info", "no camera_info received yet: ~/overlay not published")
            return
        try:
            self.overlay_pub.publish(overlay_image(image, info, people, self.params["camera.extrinsics"]))
        except OverlayError as error:
            reason = "unsupported_encoding" if "encoding" in str(error) else "bad_image"
            self.stats.on_overlay_error(reason)
            self._warn(f"overlay/{reason}", f"no overlay: {error}")

    def publish_diagnostics(self) -> None:
        extra: dict[str, Any] = {"backend": self.backend_name(), "backend_reason": self.backend_reason()}
        if self.adapter is not None:
            try:
                extra.update({f"adaptation_{k}": v for k, v in self.adapter.state().items()})
            except Exception as error:  # diagnostics must not take the node down
                extra["adaptation_error"] = str(error)
        stamp = self.get_clock().now().to_msg()
        self.diagnostics_pub.publish(diagnostic_array(stamp, self.get_fully_qualified_name(), self.stats.snapshot(),
                                                      extra))

    def destroy_node(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._worker is not None and self._worker.is_alive():
            self._worker.join(timeout=5.0)
        if self.adapter is not None:
            self.adapter.close()
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
    """The node, or None after printing one line saying why it cannot start (bad parameters, a missing or
    broken model, no backend, any other start-up fault)."""
    try:
        return Kp3dNode(**node_kwargs)
    except ParameterError as error:
        print(f"{NODE_NAME}: invalid parameters: {' '.join(str(error).split())}", file=sys.stderr)
    except Exception as error:  # any other start-up fault: one line, no traceback (backends have own types)
        print(f"{NODE_NAME}: cannot start the pipeline: {one_line(error)}", file=sys.stderr)
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
        executor.spin()
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
