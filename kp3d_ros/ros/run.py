"""`kp3d run`: the node, and optionally a bag replay, in one process (what the launch file does)."""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import rclpy
from rclpy.executors import MultiThreadedExecutor
from rclpy.node import Node
from rclpy.parameter import Parameter

from kp3d_ros.core import params as params_module
from kp3d_ros.core.params import ParameterError, parse_overrides
from kp3d_ros.resources import find_share_file
from kp3d_ros.ros.dds import use_large_message_profile
from kp3d_ros.ros.memory import return_large_allocations
from kp3d_ros.ros.node import Kp3dNode, create_node
from kp3d_ros.ros.replay import BagPlayer
from kp3d_ros.ros.spinning import spin_once_through_destroyed


def default_params_file() -> Path | None:
    """config/kp3d.yaml of the source tree or the installed package, else None."""
    try:
        return find_share_file("config", "kp3d.yaml")
    except FileNotFoundError:
        return None


def node_overrides(params: dict[str, Any], use_sim_time: bool = False) -> list[Parameter]:
    """rclpy parameter overrides for the node from a validated parameter dict."""
    overrides = [Parameter(name, value=value) for name, value in params.items()]
    overrides.append(Parameter("use_sim_time", value=bool(use_sim_time)))
    return overrides


# The node's input topics as the launch file maps them by default.
DEFAULT_REMAPS = {"points": "/points", "image": "/camera/image_raw", "camera_info": "/camera/camera_info"}


def make_node(params: dict[str, Any], use_sim_time: bool = False, remaps: dict[str, str] | None = None,
              **node_kwargs: Any) -> Kp3dNode | None:
    """The kp3d node with these parameters, its inputs remapped like the launch file's defaults.

    With lifecycle.autostart (the default) the node is configured and active (processing) when returned; with it
    false the node is unconfigured, for a lifecycle manager. None when the node cannot start (printed why).
    """
    cli_args = ["--ros-args"]
    for name, topic in {**DEFAULT_REMAPS, **(remaps or {})}.items():
        cli_args += ["-r", f"{name}:={topic}"]
    return create_node(parameter_overrides=node_overrides(params, use_sim_time), cli_args=cli_args, **node_kwargs)


def spin_until(executor: MultiThreadedExecutor, done: Callable[[], bool], timeout_s: float | None = None) -> bool:
    """Spin until done() (True) or the timeout passes (False)."""
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    while not done():
        if deadline is not None and time.monotonic() >= deadline:
            return False
        spin_once_through_destroyed(executor, 0.05)
    return True


def print_summary(node: Kp3dNode) -> None:
    stats = node.stats.snapshot()
    print(f"processed {stats['clouds_processed']} of {stats['clouds_received']} clouds "
          f"(dropped for a newer one: {stats['clouds_dropped_newer_arrived']}, "
          f"lost before the callback: {stats['clouds_lost_before_callback']}, "
          f"malformed: {stats['clouds_malformed']}); "
          f"end-to-end latency median {stats['latency_end_to_end_median_ms']:.1f} ms, "
          f"p99 {stats['latency_end_to_end_p99_ms']:.1f} ms; backend {node.backend_name()}")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--params", type=Path, default=default_params_file(),
                        help="node parameter YAML (default: config/kp3d.yaml)")
    parser.add_argument("--backend", choices=params_module.SPECS["network.backend"].choices,
                        help="override network.backend")
    parser.add_argument("--set", action="extend", nargs="+", default=[], metavar="NAME=VALUE",
                        help="override parameters (YAML values), e.g. --set camera.enabled=true")
    parser.add_argument("--bag", type=Path, help="also replay this bag into the node")
    parser.add_argument("--rate", type=float, default=1.0, help="replay speed factor")
    parser.add_argument("--loop", action="store_true", help="replay the bag in a loop")
    parser.add_argument("--use-sim-time", action="store_true", help="node uses /clock (the replay publishes it)")
    parser.add_argument("--points", default=DEFAULT_REMAPS["points"], help="input PointCloud2 topic")
    parser.add_argument("--image", default=DEFAULT_REMAPS["image"], help="camera image topic (camera.enabled)")
    parser.add_argument("--camera-info", default=DEFAULT_REMAPS["camera_info"], help="camera info topic")
    parser.add_argument("--duration", type=float, help="stop after this many seconds (default: end of bag or Ctrl-C)")
    parser.add_argument("--unconfigured", action="store_true",
                        help="leave the node unconfigured for an external lifecycle manager (lifecycle.autostart "
                             "false); default: configure and activate it")


def main(args: argparse.Namespace) -> int:
    try:
        overrides = parse_overrides(args.set)
        if args.backend:
            overrides["network.backend"] = args.backend
        if args.unconfigured:
            overrides["lifecycle.autostart"] = False
        params = params_module.load_params(args.params, overrides)
    except ParameterError as error:
        print(f"kp3d run: invalid parameters: {error}", file=sys.stderr)
        return 2
    use_large_message_profile()
    return_large_allocations()
    rclpy.init()
    executor = MultiThreadedExecutor(num_threads=2)
    nodes: list[Node] = []
    try:
        remaps = {"points": args.points, "image": args.image, "camera_info": args.camera_info}
        node = make_node(params, args.use_sim_time, remaps)
        if node is None:
            return 1
        nodes.append(node)
        if node.build_only:  # network.build_only: the node built the engine (or had nothing to build)
            return 0
        executor.add_node(node)
        if node.lifecycle_state() != "active":
            print(f"kp3d run: {node.get_fully_qualified_name()} is {node.lifecycle_state()}; it processes clouds "
                  f"once a lifecycle manager configures and activates it", flush=True)
        player = None
        if args.bag is not None:
            replay_node = Node("kp3d_replay")
            nodes.append(replay_node)
            executor.add_node(replay_node)
            player = BagPlayer(replay_node, args.bag, args.rate, args.loop, clock=args.use_sim_time)
            points_pub = player.publishers.get(args.points)
            if points_pub is not None:  # the node is in this process: discovery takes milliseconds
                spin_until(executor, lambda: points_pub.get_subscription_count() > 0, 5.0)
                spin_until(executor, lambda: False, 0.5)  # and the subscriber's side of the match
            player.start()

        def finished() -> bool:
            return player is not None and not args.loop and player.finished.is_set()

        try:
            spin_until(executor, finished, args.duration)
            if player is not None and finished():
                spin_until(executor, lambda: False, 1.0)  # let the last frame through
        except KeyboardInterrupt:
            pass
        if player is not None:
            player.stop()
        print_summary(node)
        return 0
    except (ValueError, OSError) as error:
        print(f"kp3d run: {error}", file=sys.stderr)
        return 2
    finally:
        executor.shutdown()
        for n in nodes:
            n.destroy_node()
        if rclpy.ok():
            rclpy.shutdown()
