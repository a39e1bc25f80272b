"""Bag replay: raw CDR from rosbags to rclpy subscribers, original timing scaled by rate, /clock, loop, and each
topic's QoS (recorded in the bag, else best effort for sensor data)."""

from __future__ import annotations

import time

import numpy as np
import pytest

rclpy = pytest.importorskip("rclpy")

from rclpy.executors import SingleThreadedExecutor  # noqa: E402
from rclpy.node import Node  # noqa: E402
from rclpy.qos import DurabilityPolicy, HistoryPolicy, ReliabilityPolicy  # noqa: E402
from rclpy.serialization import serialize_message  # noqa: E402
from rosbags.interfaces import Qos, QosDurability, QosHistory, QosLiveliness, QosReliability, QosTime  # noqa: E402
from rosbags.rosbag2 import StoragePlugin, Writer  # noqa: E402
from rosgraph_msgs.msg import Clock  # noqa: E402
from sensor_msgs.msg import PointCloud2  # noqa: E402
from std_msgs.msg import Header  # noqa: E402

from kp3d_ros import layouts  # noqa: E402
from kp3d_ros.ros.pointcloud2 import array_to_cloud, cloud_to_xyz  # noqa: E402
from kp3d_ros.ros.qos import input_qos, output_qos  # noqa: E402
from kp3d_ros.ros.replay import DEFAULT_DEPTH, SENSOR_DEPTH, BagPlayer, cli_main, message_class  # noqa: E402
from kp3d_ros.ros.run import spin_until  # noqa: E402

pytestmark = pytest.mark.ros
START_NS = 1_700_000_000_000_000_000
PERIOD_NS = 100_000_000  # 10 Hz
FRAMES = 8


def _write_bag(path, storage: StoragePlugin) -> None:
    """FRAMES clouds whose x holds the frame index, written as rclpy-serialized CDR."""
    with Writer(path, version=8, storage_plugin=storage) as writer:
        from rosbags.typesys import Stores, get_typestore

        connection = writer.add_connection("/points", "sensor_msgs/msg/PointCloud2",
                                           typestore=get_typestore(Stores.ROS2_HUMBLE))
        for i in range(FRAMES):
            stamp = START_NS + i * PERIOD_NS
            points = np.zeros(100, dtype=layouts.XYZI)
            points["x"] = i
            header = Header(frame_id="lidar")
            header.stamp.sec, header.stamp.nanosec = divmod(stamp, 1_000_000_000)
            writer.write(connection, stamp, serialize_message(array_to_cloud(points, header)))


@pytest.fixture(scope="module")
def ros():
    rclpy.init()
    try:
        node = Node("kp3d_test_replay_probe")
        executor = SingleThreadedExecutor()
        executor.add_node(node)
        yield node, executor
        executor.shutdown()
        node.destroy_node()
    finally:
        rclpy.try_shutdown()


def test_message_class_lookup():
    assert message_class("sensor_msgs/msg/PointCloud2") is PointCloud2
    assert message_class("rosgraph_msgs/Clock") is Clock
    with pytest.raises(ValueError, match="not available"):
        message_class("no_such_msgs/msg/Thing")


@pytest.mark.parametrize("storage", [StoragePlugin.SQLITE3, StoragePlugin.MCAP])
def test_replay_timing_rate_and_clock(ros, tmp_path, storage):
    node, executor = ros
    bag = tmp_path / "bag"
    _write_bag(bag, storage)
    received: list[tuple[float, int, int]] = []  # (arrival, header stamp, frame index from the data)
    clocks: list[int] = []

    def on_cloud(msg: PointCloud2) -> None:
        xyz, _ = cloud_to_xyz(msg)
        stamp = msg.header.stamp.sec * 1_000_000_000 + msg.header.stamp.nanosec
        received.append((time.monotonic(), stamp, int(xyz[0, 0])))

    sub = node.create_subscription(PointCloud2, "/points", on_cloud, input_qos("best_effort", 20))
    clock_sub = node.create_subscription(
        Clock, "/clock", lambda m: clocks.append(m.clock.sec * 1_000_000_000 + m.clock.nanosec), output_qos(20))
    player_node = Node("kp3d_test_player")
    executor.add_node(player_node)
    try:
        player = BagPlayer(player_node, bag, rate=2.0, clock=True)
        assert player.qos_sources == {"/points": "sensor default"}  # no QoS recorded: sensor data, best effort
        assert player.publishers["/points"].qos_profile.reliability == ReliabilityPolicy.BEST_EFFORT
        assert spin_until(executor, lambda: player.publishers["/points"].get_subscription_count() > 0
                          and player.clock_pub.get_subscription_count() > 0, 5.0)
        spin_until(executor, lambda: False, 0.3)
        player.start()
        assert spin_until(executor, lambda: len(received) == FRAMES and player.finished.is_set(), 10.0)
        spin_until(executor, lambda: len(clocks) >= FRAMES, 2.0)
    finally:
        executor.remove_node(player_node)
        player_node.destroy_node()
        node.destroy_subscription(sub)
        node.destroy_subscription(clock_sub)
    assert [r[2] for r in received] == list(range(FRAMES))
    assert [r[1] for r in received] == [START_NS + i * PERIOD_NS for i in range(FRAMES)]
    span = received[-1][0] - received[0][0]
    assert 0.7 * (FRAMES - 1) * 0.05 <= span <= 0.35 + (FRAMES - 1) * 0.05  # 10 Hz at rate 2: 50 ms apart
    assert clocks[:FRAMES] == [START_NS + i * PERIOD_NS for i in range(FRAMES)]


def _qos(reliability: QosReliability, durability: QosDurability = QosDurability.VOLATILE,
         history: QosHistory = QosHistory.KEEP_LAST, depth: int = 7) -> Qos:
    zero = QosTime(0, 0)
    return Qos(history, depth, reliability, durability, zero, zero, QosLiveliness.AUTOMATIC, zero, False)


def test_replay_publishes_with_the_recorded_qos_else_sensor_defaults(ros, tmp_path):
    """Recorded profiles win (adapted as ros2 bag play does, never keep-all); without: best effort for sensor types."""
    from rosbags.typesys import Stores, get_typestore

    store = get_typestore(Stores.ROS2_KILTED)
    recorded = {
        "/reliable": ("sensor_msgs/msg/PointCloud2", [_qos(QosReliability.RELIABLE, QosDurability.TRANSIENT_LOCAL)]),
        "/mixed": ("sensor_msgs/msg/PointCloud2", [_qos(QosReliability.RELIABLE), _qos(QosReliability.BEST_EFFORT)]),
        "/keep_all": ("std_msgs/msg/String", [_qos(QosReliability.RELIABLE, history=QosHistory.KEEP_ALL, depth=0)]),
        "/image": ("sensor_msgs/msg/Image", []),
        "/info": ("sensor_msgs/msg/CameraInfo", []),
        "/text": ("std_msgs/msg/String", []),
    }
    bag = tmp_path / "qos_bag"
    with Writer(bag, version=9, storage_plugin=StoragePlugin.MCAP) as writer:
        for topic, (msgtype, profiles) in recorded.items():
            for profile in profiles or [None]:  # /mixed: two recorded publishers, two connections
                writer.add_connection(topic, msgtype, typestore=store, offered_qos_profiles=[p for p in [profile] if p])
    player_node = Node("kp3d_test_qos_player")
    try:
        player = BagPlayer(player_node, bag)
        qos = {topic: player.publishers[topic].qos_profile for topic in recorded}
    finally:
        player_node.destroy_node()
    assert qos["/mixed"].reliability == ReliabilityPolicy.BEST_EFFORT  # one recorded publisher was best effort
    assert player.qos_sources == {"/reliable": "recorded", "/mixed": "recorded", "/keep_all": "recorded",
                                  "/image": "sensor default", "/info": "sensor default", "/text": "default"}
    assert (qos["/reliable"].reliability, qos["/reliable"].durability, qos["/reliable"].depth) == (
        ReliabilityPolicy.RELIABLE, DurabilityPolicy.TRANSIENT_LOCAL, 7)
    assert all(q.history == HistoryPolicy.KEEP_LAST for q in qos.values())  # nothing can block the replay
    assert qos["/keep_all"].reliability == ReliabilityPolicy.RELIABLE and qos["/keep_all"].depth == DEFAULT_DEPTH
    for topic in ("/image", "/info"):
        assert qos[topic].reliability == ReliabilityPolicy.BEST_EFFORT and qos[topic].depth == SENSOR_DEPTH
    assert qos["/text"].reliability == ReliabilityPolicy.RELIABLE and qos["/text"].depth == DEFAULT_DEPTH


def test_replay_loops_until_stopped(ros, tmp_path):
    _, executor = ros
    bag = tmp_path / "bag"
    _write_bag(bag, StoragePlugin.SQLITE3)
    player_node = Node("kp3d_test_looper")
    executor.add_node(player_node)
    try:
        player = BagPlayer(player_node, bag, rate=8.0, loop=True)
        player.start()
        assert spin_until(executor, lambda: player.loops_done >= 2, 10.0)
        assert not player.finished.is_set()
        player.stop()
        assert player.finished.is_set() and player.published >= 2 * FRAMES
    finally:
        executor.remove_node(player_node)
        player_node.destroy_node()


def test_replay_shut_down_while_playing_is_not_a_failure(tmp_path):
    """Ctrl-C shuts the context down under a publishing replay thread: it ends quietly, without an error."""
    bag = tmp_path / "bag"
    _write_bag(bag, StoragePlugin.SQLITE3)
    context = rclpy.Context()
    rclpy.init(context=context)
    node = Node("kp3d_test_shutdown_replay", context=context)
    player = BagPlayer(node, bag, rate=50.0, loop=True, wait_for_subscribers=0.0)
    player.start()
    deadline = time.monotonic() + 10.0
    while player.published < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert player.published >= 2
    rclpy.shutdown(context=context)
    assert player.finished.wait(5.0)
    assert player.error is None
    player.stop()
    node.destroy_node()


def test_replay_cli_rejects_missing_bag_and_unknown_topics(tmp_path):
    assert cli_main([str(tmp_path / "missing.mcap")]) == 2
    bag = tmp_path / "bag"
    _write_bag(bag, StoragePlugin.SQLITE3)
    assert cli_main([str(bag), "--topics", "/nothing", "--ros-args", "-r", "__node:=x"]) == 2
