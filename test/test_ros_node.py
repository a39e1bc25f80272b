"""kp3d_node over real rclpy/DDS: a synthetic bag through the node, bad input, latest-only, parameters.

One node (camera enabled, sim time from the bag's /clock) serves the whole module; every test measures
its own counter deltas.
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

rclpy = pytest.importorskip("rclpy")

from rclpy.executors import MultiThreadedExecutor  # noqa: E402
from rclpy.node import Node  # noqa: E402
from rclpy.parameter import Parameter  # noqa: E402
from sensor_msgs.msg import CameraInfo, Image, PointCloud2, PointField  # noqa: E402
from std_msgs.msg import Header  # noqa: E402
from visualization_msgs.msg import Marker, MarkerArray  # noqa: E402
from waiting import Spinner, wait_until  # noqa: E402

from kp3d_ros import cli, layouts, skeleton  # noqa: E402
from kp3d_ros.core.params import load_params  # noqa: E402
from kp3d_ros.ros.pointcloud2 import array_to_cloud, cloud_to_array  # noqa: E402
from kp3d_ros.ros.qos import input_qos, output_qos  # noqa: E402
from kp3d_ros.ros.replay import BagPlayer  # noqa: E402
from kp3d_ros.ros.run import make_node  # noqa: E402

pytestmark = pytest.mark.ros
PELVIS_TOLERANCE = 0.15  # m, median over true people (the model's own accuracy: `kp3d demo`, `kp3d eval`)
MPJPE_TOLERANCE = 0.12  # m, median over true people matched by pelvis within 2 x PELVIS_TOLERANCE


def _stamp_ns(header: Header) -> int:
    return int(header.stamp.sec) * 1_000_000_000 + int(header.stamp.nanosec)


class Probe:
    """A test node that publishes input and records the node's outputs by stamp."""

    def __init__(self) -> None:
        self.node = Node("kp3d_test_probe")
        self.lock = threading.Lock()
        self.skeletons: list[MarkerArray] = []
        self.keypoints: dict[int, np.ndarray] = {}
        self.truth: dict[int, np.ndarray] = {}
        self.overlays: list[Image] = []
        self.diagnostics: list = []
        qos = output_qos(200)
        self.node.create_subscription(MarkerArray, "/kp3d_node/skeletons", self._on_skeletons, qos)
        self.node.create_subscription(PointCloud2, "/kp3d_node/keypoints", self._keypoints_into(self.keypoints), qos)
        self.node.create_subscription(PointCloud2, "/kp3d/gt/keypoints", self._keypoints_into(self.truth),
                                      input_qos("best_effort", 200))  # the replay publishes sensor types best effort
        self.node.create_subscription(Image, "/kp3d_node/overlay", lambda m: self.overlays.append(m), qos)
        from diagnostic_msgs.msg import DiagnosticArray

        self.node.create_subscription(DiagnosticArray, "/diagnostics", lambda m: self.diagnostics.append(m), qos)
        self.points = self.node.create_publisher(PointCloud2, "/points", output_qos(50))
        self.image = self.node.create_publisher(Image, "/camera/image_raw", output_qos(5))
        self.camera_info = self.node.create_publisher(CameraInfo, "/camera/camera_info", output_qos(5))

    def _on_skeletons(self, msg: MarkerArray) -> None:
        with self.lock:
            self.skeletons.append(msg)

    def _keypoints_into(self, target: dict):
        def callback(msg: PointCloud2) -> None:
            with self.lock:
                target[_stamp_ns(msg.header)] = np.asarray(cloud_to_array(msg)).astype(layouts.KEYPOINTS)
        return callback


BAG_ARGS = ["--people", "3", "--seconds", "1.5", "--camera", "--seed", "5"]
BAG_CACHE = Path(__file__).resolve().parents[1] / "data" / "test_bags"  # git-ignored; ~30 s to regenerate


@pytest.fixture(scope="module")
def bag() -> Path:
    """A small synthetic scene bag (kp3d synth-bag), generated once and reused from data/test_bags/."""
    path = BAG_CACHE / ("ros_node_" + "_".join(a.strip("-") for a in BAG_ARGS) + ".mcap")
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_suffix(".partial.mcap")
        assert cli.main(["synth-bag", str(partial), "--overwrite", *BAG_ARGS]) == 0
        partial.rename(path)
    return path


@pytest.fixture(scope="module")
def ros():
    rclpy.init()
    try:
        params = load_params(overrides={"camera.enabled": True})
        node = make_node(params, use_sim_time=True)
        assert node is not None, "kp3d_node did not start (see its log above)"
        probe = Probe()
        player_node = Node("kp3d_test_replay")
        executor = MultiThreadedExecutor(num_threads=3)
        for n in (node, probe.node, player_node):
            executor.add_node(n)
        spinner = Spinner(executor)
        spinner.start()
        yield node, probe, player_node
        spinner.stop()
        executor.shutdown()
        for n in (node, probe.node, player_node):
            n.destroy_node()
    finally:
        # A failed start must not leave the context initialised for the next module's rclpy.init().
        rclpy.try_shutdown()




def _idle(node, quiet_s: float = 0.5, timeout: float = 20.0) -> None:
    """Wait until the node has finished everything it received."""
    def done() -> bool:
        stats = node.stats
        return stats.received == stats.processed + stats.dropped + sum(stats.malformed.values())
    assert wait_until(done, timeout)
    time.sleep(quiet_s)


def test_bag_through_node_gives_skeletons_near_truth(ros, bag):
    node, probe, player_node = ros
    topics = ["/points", "/kp3d/gt/keypoints", "/camera/image_raw", "/camera/camera_info"]
    # half speed: this process also runs the replay, the probe and pytest on two cores; a slow frame here
    # must not cost the test its skeletons (node latency is measured by benchmarks/node_soak.py)
    player = BagPlayer(player_node, bag, rate=0.5, clock=True, topics=topics, start_delay=0.3)
    assert player.topics() == sorted(topics)
    assert wait_until(lambda: all(p.get_subscription_count() > 0 for p in player.publishers.values()))
    player.start()
    assert player.wait(30)
    _idle(node)
    with probe.lock:
        skeletons, keypoints, truth = list(probe.skeletons), dict(probe.keypoints), dict(probe.truth)
    assert len(truth) >= 12 and len(skeletons) >= 3  # slow frames in this busy process cost some (see above)
    cloud_stamps = set(truth)  # the bag's ground truth shares the clouds' stamps
    pelvis_errors, mpjpes, people_seen = [], [], 0
    for msg in skeletons:
        markers = msg.markers
        assert markers[0].action == Marker.DELETEALL
        stamp = _stamp_ns(markers[0].header)
        assert stamp in cloud_stamps and markers[0].header.frame_id == "lidar"
        people = (len(markers) - 1) // 3
        assert len(markers) == 1 + 3 * people
        kinds = [m.type for m in markers[1:]]
        assert kinds == [Marker.LINE_LIST, Marker.SPHERE_LIST, Marker.TEXT_VIEW_FACING] * people
        assert all(_stamp_ns(m.header) == stamp for m in markers)
        assert len(keypoints[stamp]) == skeleton.NUM_JOINTS * people
        people_seen = max(people_seen, people)
        predicted = layouts.people_from_keypoints(keypoints[stamp], skeleton.NUM_JOINTS)
        true = layouts.people_from_keypoints(truth[stamp], skeleton.NUM_JOINTS)
        if predicted:  # each true person: distance to the nearest predicted pelvis, and that person's MPJPE
            predicted_joints = np.stack(list(predicted.values()))
            predicted_pelvis = np.stack([skeleton.pelvis(j) for j in predicted_joints])
            for joints in true.values():
                distance = np.linalg.norm(predicted_pelvis - skeleton.pelvis(joints), axis=1)
                pelvis_errors.append(distance.min())
                if distance.min() < 2 * PELVIS_TOLERANCE:
                    mpjpes.append(np.linalg.norm(predicted_joints[distance.argmin()] - joints, axis=1).mean())
    assert people_seen >= 2
    found = np.mean(np.array(pelvis_errors) < 2 * PELVIS_TOLERANCE)
    print(f"true people with a predicted pelvis within {2 * PELVIS_TOLERANCE} m: {found:.2f}, median distance "
          f"{np.median(pelvis_errors):.2f} m")
    print(f"MPJPE of matched people: median {np.median(mpjpes):.3f} m over {len(mpjpes)}")
    assert found >= 0.5 and np.median(pelvis_errors) < PELVIS_TOLERANCE
    assert np.median(mpjpes) < MPJPE_TOLERANCE
    # camera overlay came with the bag's images
    assert probe.overlays and probe.overlays[-1].encoding == "rgb8"
    # use_sim_time: the node's clock follows the bag's /clock
    bag_start, bag_end = min(truth) / 1e9, max(truth) / 1e9
    assert bag_start - 1.0 <= node.get_clock().now().nanoseconds / 1e9 <= bag_end + 1.0


def _xyz_cloud(stamp_sec: int, count: int = 3000, seed: int = 0) -> PointCloud2:
    """A ground plane with one person-sized box of points at 6 m."""
    rng = np.random.default_rng(seed)
    xyz = np.empty((count, 3), np.float32)
    xyz[:, :2] = rng.uniform(-15, 15, size=(count, 2))
    xyz[:, 2] = -1.9
    box = count // 4
    xyz[:box] = rng.uniform([6.0, -0.25, -1.9], [6.4, 0.25, -0.15], size=(box, 3))
    points = np.zeros(count, dtype=layouts.XYZ)
    points["x"], points["y"], points["z"] = xyz.T
    header = Header(frame_id="lidar")
    header.stamp.sec = stamp_sec
    return array_to_cloud(points, header)


def _connected(probe) -> None:
    assert wait_until(lambda: probe.points.get_subscription_count() > 0 and probe.image.get_subscription_count() > 0)


def test_malformed_clouds_are_counted_and_node_keeps_running(ros):
    node, probe, _ = ros
    _connected(probe)
    _idle(node, quiet_s=0.0)
    good = _xyz_cloud(1000)
    missing = _xyz_cloud(1001)
    missing.fields = [f for f in missing.fields if f.name != "z"]
    truncated = _xyz_cloud(1002)
    truncated.data = truncated.data[: len(truncated.data) // 2]
    wrong_step = _xyz_cloud(1003)
    wrong_step.point_step = 8
    empty = array_to_cloud(np.zeros(0, layouts.XYZ), Header(frame_id="lidar"))
    nan = _xyz_cloud(1004)
    nan.data = np.full(len(nan.data) // 4, np.nan, np.float32).tobytes()
    huge = array_to_cloud(np.zeros(2_000_000, layouts.XYZ), Header(frame_id="lidar"))
    bad_field = _xyz_cloud(1005)
    bad_field.fields = [PointField(name=f.name, offset=f.offset, datatype=layouts.FLOAT64 if f.name == "x" else
                                   f.datatype, count=1) for f in bad_field.fields]
    expected = {"missing_fields": missing, "truncated_data": truncated, "bad_layout": wrong_step, "empty": empty,
                "all_nonfinite": nan, "too_many_points": huge, "wrong_field_type": bad_field}
    for reason, msg in expected.items():
        before = node.stats.malformed[reason]
        probe.points.publish(msg)
        assert wait_until(lambda r=reason, b=before: node.stats.malformed[r] == b + 1), reason
    # the node is still alive: a good cloud is processed
    processed = node.stats.processed
    probe.points.publish(good)
    assert wait_until(lambda: node.stats.processed == processed + 1)
    # unsupported image encoding: counted, overlay skipped, node alive
    before = node.stats.overlay_errors["unsupported_encoding"]
    image = Image(header=Header(frame_id="camera"), width=4, height=2, encoding="yuv422", step=8)
    image.header.stamp.sec = 1006  # the next cloud's stamp: the overlay pairs them
    image.data = bytes(16)
    info = CameraInfo(width=4, height=2, k=[2.0, 0.0, 2.0, 0.0, 2.0, 1.0, 0.0, 0.0, 1.0])
    probe.camera_info.publish(info)
    probe.image.publish(image)
    assert wait_until(lambda: node._sync.images and node._sync.images[-1][1].encoding == "yuv422")
    assert wait_until(lambda: node._camera_info is not None)
    probe.points.publish(_xyz_cloud(1006))
    assert wait_until(lambda: node.stats.overlay_errors["unsupported_encoding"] > before)
    # every counter is in /diagnostics
    count = len(probe.diagnostics)
    node.publish_diagnostics()
    assert wait_until(lambda: len(probe.diagnostics) > count)
    values = {kv.key: kv.value for kv in probe.diagnostics[-1].status[0].values}
    for reason in expected:
        assert int(values[f"malformed_{reason}"]) >= 1
    assert int(values["overlay_error_unsupported_encoding"]) >= 1
    for key in ("input_rate_hz", "output_rate_hz", "latency_end_to_end_median_ms", "latency_end_to_end_p99_ms",
                "latency_network_median_ms", "clouds_dropped_newer_arrived", "backend", "backend_reason"):
        assert key in values
    assert values["backend"] == node.backend_name() and values["backend_reason"]


def test_burst_keeps_only_the_newest_cloud(ros):
    node, probe, _ = ros
    _connected(probe)
    _idle(node, quiet_s=0.0)
    dropped, processed = node.stats.dropped, node.stats.processed
    count = len(probe.skeletons)
    stamps = list(range(2000, 2030))
    clouds = [_xyz_cloud(s, count=150000, seed=s) for s in stamps]
    for cloud in clouds:  # faster than the node can process, slower than DDS delivers
        probe.points.publish(cloud)
        time.sleep(0.003)
    _idle(node)
    with probe.lock:
        published = [_stamp_ns(m.markers[0].header) // 1_000_000_000 for m in probe.skeletons[count:]]
    assert published[-1] == stamps[-1]  # the newest cloud is always processed
    assert node.stats.processed - processed < len(stamps)
    assert node.stats.dropped > dropped
    assert published == sorted(published)


def test_parameter_changes_are_validated(ros):
    node, _, _ = ros
    result = node.set_parameters([Parameter("roi.max_range", value=1000.0)])[0]
    assert not result.successful
    result = node.set_parameters([Parameter("roi.min_range", value=45.0)])[0]  # above roi.max_range
    assert not result.successful and "min_range" in result.reason
    result = node.set_parameters([Parameter("network.backend", value="torch")])[0]  # read-only
    assert not result.successful
    result = node.set_parameters([Parameter("smoothing.alpha", value=0.5)])[0]
    assert result.successful
    assert node.params["smoothing.alpha"] == 0.5 and node.pipeline.params["smoothing.alpha"] == 0.5
    node.set_parameters([Parameter("smoothing.alpha", value=0.6)])
    assert node.set_parameters([Parameter("diagnostics.period_s", value=0.5)])[0].successful
    assert node.diagnostics_timer.timer_period_ns == 500_000_000


def test_node_exits_nonzero_on_bad_parameters():
    command = [sys.executable, "-m", "kp3d_ros.ros.node", "--ros-args", "-p", "roi.max_range:=1000.0"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=60)
    assert done.returncode != 0
    assert "roi.max_range" in done.stderr


def test_node_build_only_exits_zero_without_subscribing():
    command = [sys.executable, "-m", "kp3d_ros.ros.node", "--ros-args", "-p", "network.build_only:=true",
               "-p", "network.backend:=onnxruntime"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=60)
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    assert "nothing to do" in output and "subscribed" not in output


def _discard(client_node: Node, target: str):
    """Call target's ~/discard_adaptation (std_srvs/Trigger) and return the response."""
    from std_srvs.srv import Trigger

    client = client_node.create_client(Trigger, f"{target}/discard_adaptation")
    try:
        assert wait_until(client.service_is_ready, 10.0), f"no {target}/discard_adaptation service"
        future = client.call_async(Trigger.Request())
        assert wait_until(future.done, 30.0)
        return future.result()
    finally:
        client_node.destroy_client(client)


def test_adaptation_state_in_diagnostics_and_discard_service(ros):
    main_node, probe, player_node = ros
    pytest.importorskip("torch")
    pytest.importorskip("std_srvs")
    node = make_node(load_params(overrides={"adaptation.enabled": True}), namespace="adapt")
    assert node is not None and node.adapter is not None
    adapter = node.adapter
    main_node.executor.add_node(node)
    try:
        count = len(probe.diagnostics)
        node.publish_diagnostics()
        assert wait_until(lambda: any(m.status[0].name == "/adapt/kp3d_node: pipeline"
                                      for m in probe.diagnostics[count:]))
        message = next(m for m in probe.diagnostics[count:] if m.status[0].name.startswith("/adapt/"))
        values = {kv.key: kv.value for kv in message.status[0].values}
        assert values["adaptation_running"] == "True" and "adaptation_steps" in values
        assert values["adaptation_discards"] == "0" and values["adaptation_paused"] == "False"

        from rclpy.parameter import Parameter

        assert node.set_parameters([Parameter("adaptation.paused", value=True)])[0].successful
        assert adapter.paused and adapter.state()["paused"]  # a run-time change reaches the adapter
        assert node.set_parameters([Parameter("adaptation.paused", value=False)])[0].successful
        assert not adapter.paused

        response = _discard(player_node, "/adapt/kp3d_node")
        assert response.success and "source" in response.message
        assert adapter.state()["discards"] == 1 and adapter.state()["on_source"]
        refused = _discard(player_node, f"/{main_node.get_name()}")  # adaptation is off there
        assert not refused.success and "not running" in refused.message
    finally:
        main_node.executor.remove_node(node)
        node.destroy_node()
    assert node.adapter is None and not adapter.state()["running"]  # shutdown stopped and released it
