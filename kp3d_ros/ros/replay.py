"""`kp3d replay BAG`: publish a ROS 2 bag (MCAP, sqlite3 or a bag directory) with its original timing.

Messages are read with `rosbags` and published as the serialized CDR bytes they are stored as
(rclpy's Publisher.publish accepts bytes), so nothing is deserialized on the way. Optionally
publishes /clock from the bag's time line for nodes running with use_sim_time.

Each topic is published with the QoS recorded in the bag (the offered_qos_profiles of its connections,
adapted as `ros2 bag play` does), else best effort for sensor data (PointCloud2, Image, CameraInfo) and
reliable for anything else; always keep-last, so no reader, however slow, can block the replay's
process (a reliable keep-all writer waits for its slowest reader).

A bag of up to PRELOAD_BYTES is read into memory before playback starts: reading it during playback
stalled every thread of the process now and then for 1 to 4 s (seen with the node in the same process:
`kp3d run --bag`, `kp3d demo`), while playing from memory showed none.
"""

from __future__ import annotations

import argparse
import importlib
import itertools
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import rclpy
from rclpy.node import Node
from rclpy.publisher import Publisher
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
from rosbags.interfaces import QosDurability, QosHistory, QosReliability
from rosbags.rosbag2 import Reader, ReaderError
from rosgraph_msgs.msg import Clock

from kp3d_ros.ros.dds import use_large_message_profile
from kp3d_ros.ros.qos import output_qos

PRELOAD_BYTES = 2 << 30  # bags up to 2 GiB on disk are played from memory
SENSOR_TYPES = frozenset({"sensor_msgs/msg/PointCloud2", "sensor_msgs/msg/Image", "sensor_msgs/msg/CameraInfo"})
SENSOR_DEPTH = 5  # keep-last depth of sensor topics without a recorded QoS (rclpy's qos_profile_sensor_data)
DEFAULT_DEPTH = 10  # of other topics without one, and of a recorded keep-all or depth 0 (ros2 bag play's default)


def message_class(type_name: str) -> type:
    """The rclpy message class for a type name such as 'sensor_msgs/msg/PointCloud2'."""
    parts = type_name.split("/")
    if len(parts) == 2:
        parts = [parts[0], "msg", parts[1]]
    if len(parts) != 3:
        raise ValueError(f"not a ROS 2 message type name: {type_name!r}")
    package, kind, name = parts
    try:
        return getattr(importlib.import_module(f"{package}.{kind}"), name)
    except (ImportError, AttributeError) as error:
        raise ValueError(f"message type {type_name} is not available in this Python environment") from error


def _clock_message(stamp_ns: int) -> Clock:
    msg = Clock()
    msg.clock.sec, msg.clock.nanosec = divmod(int(stamp_ns), 1_000_000_000)
    return msg


def bag_connections(bag: Path, topics: Sequence[str] | None = None) -> tuple[list, float]:
    """The bag's connections (only those on `topics`, if given) and its duration in s; ValueError if none."""
    try:
        with Reader(bag) as reader:
            wanted = set(topics) if topics else None
            connections = [c for c in reader.connections if wanted is None or c.topic in wanted]
            duration_s = reader.duration / 1e9
    except (ReaderError, FileNotFoundError) as error:
        raise ValueError(f"cannot read {bag}: {error}") from error
    if not connections:
        raise ValueError(f"{bag}: none of the topics {sorted(wanted or [])} are in the bag")
    return connections, duration_s


def replay_qos(connections: Sequence) -> tuple[QoSProfile, str]:
    """(QoS to publish one topic with, where it came from: 'recorded', 'sensor default' or 'default').

    From the profiles recorded for the topic's connections, as `ros2 bag play` adapts them: reliable
    and transient-local only if every recorded publisher offered it. History is always keep-last (a
    recorded keep-all or depth 0 becomes DEFAULT_DEPTH), so that a slow reader can never block publish().
    """
    offered = [q for c in connections for q in (getattr(getattr(c, "ext", None), "offered_qos_profiles", None) or [])]
    if offered:
        reliable = all(q.reliability == QosReliability.RELIABLE for q in offered)
        transient = all(q.durability == QosDurability.TRANSIENT_LOCAL for q in offered)
        depths = [int(q.depth) for q in offered if q.history != QosHistory.KEEP_ALL and int(q.depth) > 0]
        return QoSProfile(
            history=HistoryPolicy.KEEP_LAST, depth=max(depths) if len(depths) == len(offered) else DEFAULT_DEPTH,
            reliability=ReliabilityPolicy.RELIABLE if reliable else ReliabilityPolicy.BEST_EFFORT,
            durability=DurabilityPolicy.TRANSIENT_LOCAL if transient else DurabilityPolicy.VOLATILE), "recorded"
    if any(c.msgtype in SENSOR_TYPES for c in connections):
        return QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=SENSOR_DEPTH,
                          reliability=ReliabilityPolicy.BEST_EFFORT,
                          durability=DurabilityPolicy.VOLATILE), "sensor default"
    return output_qos(DEFAULT_DEPTH), "default"


def bag_size(bag: Path) -> int:
    """Bytes on disk of a bag file or bag directory."""
    if bag.is_dir():
        return sum(f.stat().st_size for f in bag.rglob("*") if f.is_file())
    return bag.stat().st_size


class BagPlayer:
    """Plays a bag on a node's publishers from a background thread (start, wait, stop)."""

    def __init__(self, node: Node, bag: str | Path, rate: float = 1.0, loop: bool = False, clock: bool = False,
                 topics: Sequence[str] | None = None, start_delay: float = 0.0,
                 wait_for_subscribers: float = 0.0,
                 on_publish: Callable[[str, bytes, float], None] | None = None,
                 remap: dict[str, str] | None = None) -> None:
        """on_publish(bag topic, CDR bytes, monotonic s) is called from the replay thread after each publish;
        remap publishes a bag topic under another name (publishers stay keyed by the bag's topic)."""
        if rate <= 0.0:
            raise ValueError(f"rate must be positive, got {rate}")
        self.node, self.bag, self.rate, self.loop = node, Path(bag), float(rate), loop
        self.start_delay = float(start_delay)
        self.wait_for_subscribers = float(wait_for_subscribers)
        self.on_publish = on_publish
        self.published = 0
        self.loops_done = 0
        self.finished = threading.Event()
        self.error: str | None = None  # why playback failed; None when it ended normally or was shut down
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.connections, self.duration_s = bag_connections(self.bag, topics)
        self.publishers: dict[str, Publisher] = {}
        self.qos_sources: dict[str, str] = {}  # topic -> 'recorded', 'sensor default' or 'default'
        for conn in self.connections:
            if conn.topic not in self.publishers:
                qos, self.qos_sources[conn.topic] = replay_qos([c for c in self.connections if c.topic == conn.topic])
                name = (remap or {}).get(conn.topic, conn.topic)
                self.publishers[conn.topic] = node.create_publisher(message_class(conn.msgtype), name, qos)
        self.clock_pub = node.create_publisher(Clock, "/clock", output_qos(1)) if clock else None
        self._preload = bag_size(self.bag) <= PRELOAD_BYTES
        self._messages: list[tuple[str, int, bytes]] | None = None  # (topic, stamp ns, CDR) once preloaded

    def topics(self) -> list[str]:
        return sorted(self.publishers)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._play, name="kp3d_replay", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5.0)

    def wait(self, timeout: float | None = None) -> bool:
        """True once playback has finished (never, with loop, unless stopped)."""
        return self.finished.wait(timeout)

    def _has_subscribers(self) -> bool:
        return any(p.get_subscription_count() > 0 for p in self.publishers.values())

    def _play(self) -> None:
        try:
            deadline = time.monotonic() + self.wait_for_subscribers
            while not self._has_subscribers() and time.monotonic() < deadline:
                if self._stop.wait(0.05):
                    return
            if self._stop.wait(self.start_delay):
                return
            while not self._stop.is_set():
                self._play_once()
                self.loops_done += 1
                if not self.loop:
                    break
        except Exception as error:  # report, don't kill the process from a thread
            if self._stop.is_set() or not self.node.context.ok():
                return  # ROS shut down (Ctrl-C) while a message was being published: not a failure
            self.error = f"{type(error).__name__}: {error}"
            self.node.get_logger().error(f"replay of {self.bag} failed: {self.error}")
        finally:
            self.finished.set()

    def _read(self):
        """(topic, stamp ns, CDR bytes) in bag order: from memory when the bag is small enough, else streamed."""
        if self._preload and self._messages is None:
            with Reader(self.bag) as reader:
                self._messages = [(conn.topic, stamp, bytes(raw))
                                  for conn, stamp, raw in reader.messages(connections=self.connections)]
        if self._messages is not None:
            yield from self._messages
            return
        with Reader(self.bag) as reader:
            for conn, stamp, raw in reader.messages(connections=self.connections):
                yield conn.topic, stamp, bytes(raw)

    def _play_once(self) -> None:
        messages = self._read()
        first = next(messages, None)  # a preloading bag is read here, before the clock starts
        if first is None:
            return
        wall_start, bag_start = time.monotonic(), first[1]
        for topic, stamp_ns, raw in itertools.chain([first], messages):
            due = wall_start + (stamp_ns - bag_start) / 1e9 / self.rate
            if self._stop.wait(max(0.0, due - time.monotonic())):
                return
            if self.clock_pub is not None:
                self.clock_pub.publish(_clock_message(stamp_ns))
            self.publishers[topic].publish(raw)
            self.published += 1
            if self.on_publish is not None:
                self.on_publish(topic, raw, time.monotonic())


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("bag", type=Path, help="ROS 2 bag: .mcap, .db3 or a bag directory")
    parser.add_argument("--rate", type=float, default=1.0, help="playback speed factor (default 1)")
    parser.add_argument("--loop", action="store_true", help="start again at the end")
    parser.add_argument("--clock", action="store_true", help="publish /clock from the bag time (use_sim_time)")
    parser.add_argument("--topics", nargs="+", help="only these topics (default: all)")
    parser.add_argument("--wait-for-subscribers", type=float, default=10.0, metavar="S",
                        help="wait up to S seconds for a subscriber on any of the bag's topics (default 10)")
    parser.add_argument("--start-delay", type=float, default=0.5,
                        help="then wait this long before the first message, so matching completes (default 0.5)")


def main(args: argparse.Namespace) -> int:
    if not args.bag.exists():
        print(f"kp3d replay: no such bag: {args.bag}", file=sys.stderr)
        return 2
    try:
        for type_name in {c.msgtype for c in bag_connections(args.bag, args.topics)[0]}:
            message_class(type_name)
    except ValueError as error:
        print(f"kp3d replay: {error}", file=sys.stderr)
        return 2
    use_large_message_profile()
    rclpy.init(args=["kp3d_replay", *getattr(args, "ros_args", [])])
    node = Node("kp3d_replay")
    player = BagPlayer(node, args.bag, args.rate, args.loop, args.clock, args.topics, args.start_delay,
                       args.wait_for_subscribers)
    print(f"replaying {args.bag} ({player.duration_s:.1f} s) at rate {args.rate}{', looping' if args.loop else ''}")
    for topic in player.topics():
        qos = player.publishers[topic].qos_profile
        print(f"  {topic}: {qos.reliability.name.lower()}, keep last {qos.depth} ({player.qos_sources[topic]})")
    player.start()
    try:
        while not player.wait(0.2):
            pass
        time.sleep(0.5)  # let reliable subscribers fetch the last messages before the process exits
    except KeyboardInterrupt:
        pass
    finally:
        player.stop()
        node.destroy_node()
        if rclpy.ok():
            rclpy.shutdown()
    print(f"published {player.published} messages")
    return 0


def cli_main(argv: list[str] | None = None) -> int:
    """Console script `kp3d_replay BAG [options] [--ros-args ...]` (what the launch file runs)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    ros_args = argv[argv.index("--ros-args"):] if "--ros-args" in argv else []
    argv = argv[: len(argv) - len(ros_args)]
    parser = argparse.ArgumentParser(prog="kp3d_replay", description=__doc__.splitlines()[0])
    add_arguments(parser)
    args = parser.parse_args(argv)
    args.ros_args = ros_args
    return main(args)


if __name__ == "__main__":
    sys.exit(cli_main())
