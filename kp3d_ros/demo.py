"""`kp3d demo`: a synthetic scene bag played through the real ROS 2 node, scored against its ground truth.

Steps: write a small synthetic bag (`kp3d synth-bag`, with camera); start kp3d_node in its own process, as
the launch file does, and in this one a replay of the node's input topics and a collector of its outputs,
all in a namespace of the demo's own; play the bag once; then print per-frame latency (the replay's publish
of a cloud -> the node's keypoints received) and accuracy (MPJPE, PCK@10cm after matching people to the
truth), and draw out/demo.png (top and side view: points, predicted skeletons, ground truth). The ground
truth and the points of the picture are read from the bag file (kp3d_ros.core.bagio), not received over
ROS. The demo fails (exit 1) when the outputs of fewer than MIN_PROCESSED of the bag's clouds arrived.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from scipy.optimize import linear_sum_assignment

from kp3d_ros import layouts, skeleton
from kp3d_ros.ros.dds import use_large_message_profile

MATCH_DISTANCE = 1.0  # m, mean joint distance for a predicted person to count as a ground-truth person
PCK_THRESHOLD = 0.10  # m
POINTS_KEPT = 30000  # points per frame kept for the picture
MIN_PROCESSED = 0.9  # share of the bag's clouds the node must process for the demo to pass
POINTS_TOPIC = "/points"
GT_TOPIC = "/kp3d/gt/keypoints"
INPUT_TOPICS = (POINTS_TOPIC, "/camera/image_raw", "/camera/camera_info")  # what the node subscribes to
NODE_START_TIMEOUT_S = 120.0  # for the node's process to load the model and subscribe


@dataclass
class Collected:
    """The node's outputs received over ROS (keyed by header stamp, ns) and the bag's ground truth."""

    predicted: dict[int, dict[int, np.ndarray]] = field(default_factory=dict)
    truth: dict[int, dict[int, np.ndarray]] = field(default_factory=dict)  # read from the bag
    points: dict[int, np.ndarray] = field(default_factory=dict)  # read from the bag, for the picture
    overlay: np.ndarray | None = None


def _stamp_ns(header) -> int:
    return int(header.stamp.sec) * 1_000_000_000 + int(header.stamp.nanosec)


def match_people(predicted: dict[int, np.ndarray], truth: dict[int, np.ndarray],
                 max_distance: float = MATCH_DISTANCE) -> list[tuple[int, int, np.ndarray]]:
    """(predicted id, truth id, per-joint errors (J,)) of pairs matched by mean joint distance (Hungarian)."""
    if not predicted or not truth:
        return []
    pred_ids, true_ids = list(predicted), list(truth)
    pred = np.stack([predicted[i] for i in pred_ids])
    true = np.stack([truth[i] for i in true_ids])
    errors = np.linalg.norm(pred[:, None] - true[None], axis=-1)  # (P, G, J)
    cost = np.nanmean(errors, axis=-1)
    cost = np.where(np.isfinite(cost), cost, 1e6)
    rows, cols = linear_sum_assignment(cost)
    return [(pred_ids[r], true_ids[c], errors[r, c]) for r, c in zip(rows, cols, strict=True)
            if cost[r, c] <= max_distance]


def frame_scores(collected: Collected, stamp: int) -> dict[str, float]:
    truth = collected.truth.get(stamp, {})
    pairs = match_people(collected.predicted.get(stamp, {}), truth)
    errors = np.concatenate([e for _, _, e in pairs]) if pairs else np.zeros(0)
    return {"truth": len(truth), "predicted": len(collected.predicted.get(stamp, {})), "matched": len(pairs),
            "mpjpe": float(np.nanmean(errors)) if errors.size else float("nan"),
            "pck": float(np.mean(errors < PCK_THRESHOLD)) if errors.size else float("nan"), "errors": errors}


def scan_points(bag: Path, stamp: int, keep: int = POINTS_KEPT) -> np.ndarray:
    """Up to `keep` points (a fixed random subset) of the bag's scan with this header stamp; empty if none."""
    from kp3d_ros.core.bagio import iter_scans

    for scan in iter_scans(bag, POINTS_TOPIC, on_error=lambda *_: None):
        if scan.stamp_ns == stamp:
            xyz = scan.points
            if len(xyz) > keep:
                xyz = xyz[np.random.default_rng(0).choice(len(xyz), keep, replace=False)]
            return xyz
    return np.zeros((0, 3), np.float32)


def count_clouds(bag: Path) -> int:
    """Messages on the bag's point cloud topic."""
    from kp3d_ros.ros.replay import bag_connections

    return sum(int(c.msgcount) for c in bag_connections(bag, [POINTS_TOPIC])[0])


def make_bag(path: Path, people: int, seconds: float, seed: int, camera: bool = True) -> int:
    from kp3d_ros import cli

    argv = ["synth-bag", str(path), "--people", str(people), "--seconds", str(seconds), "--seed", str(seed)]
    return cli.main(argv + (["--camera"] if camera else []))


def demo_namespace() -> str:
    """The namespace of this demo's node and topics: unique per process, so that no sensor, recorder or other
    kp3d_node on the ROS domain mixes with the demo (and the demo's clouds reach no one else's node)."""
    return f"/kp3d_demo_{os.getpid()}"


def node_command(overrides: dict[str, Any], namespace: str) -> list[str]:
    """kp3d_node as its own Python process in `namespace`, with these parameters, reading the demo's inputs."""
    command = [sys.executable, "-m", "kp3d_ros.ros.node", "--ros-args", "-r", f"__ns:={namespace}"]
    for name, value in overrides.items():
        command += ["-p", f"{name}:={json.dumps(value)}"]  # JSON values are YAML values
    for name, topic in input_remaps(namespace).items():
        command += ["-r", f"{name}:={topic}"]
    return command


def input_remaps(namespace: str) -> dict[str, str]:
    """The node's input names -> the demo's topics: the launch file's defaults, inside the namespace."""
    from kp3d_ros.ros.run import DEFAULT_REMAPS

    return {name: namespace + topic for name, topic in DEFAULT_REMAPS.items()}


def diagnostics_values(msg, node_name: str) -> dict[str, Any]:
    """The key/values (numbers as float) of the pipeline status of the node `node_name` (fully qualified) in a
    DiagnosticArray; {} if it holds none."""
    for status in msg.status:
        values = {kv.key: kv.value for kv in status.values}
        if status.name.startswith(f"{node_name}:") and "clouds_processed" in values:
            out: dict[str, Any] = {}
            for key, value in values.items():
                try:
                    out[key] = float(value)
                except ValueError:
                    out[key] = value
            return out
    return {}


def _stop_process(process: subprocess.Popen, timeout_s: float = 10.0) -> None:
    """Ctrl-C (the node shuts down cleanly), then kill if it has not exited in time."""
    if process.poll() is None:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def play_through_node(bag: Path, overrides: dict[str, Any], rate: float, timeout_s: float = 120.0):
    """kp3d_node in its own process, as the launch file runs it; the replay of its inputs and a collector of its
    outputs in this one, so that nothing here can hold the node up.

    Latency is measured here, from the replay's publish of a cloud to the arrival of the node's keypoints for
    it. Returns (Collected with the bag's ground truth, the node's last /diagnostics values, frames as
    (stamp ns, latency ms, people), backend); raises RuntimeError when the node does not start.
    """
    import rclpy
    from diagnostic_msgs.msg import DiagnosticArray
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.node import Node
    from rclpy.serialization import deserialize_message
    from sensor_msgs.msg import Image, PointCloud2

    from kp3d_ros.core.bagio import read_keypoints
    from kp3d_ros.ros.cdr import header_stamp_ns
    from kp3d_ros.ros.overlay import image_to_rgb
    from kp3d_ros.ros.pointcloud2 import cloud_to_array
    from kp3d_ros.ros.qos import output_qos
    from kp3d_ros.ros.replay import BagPlayer
    from kp3d_ros.ros.run import DEFAULT_REMAPS, spin_until

    collected = Collected(truth=read_keypoints(bag, GT_TOPIC))
    sent: dict[int, float] = {}  # cloud header stamp -> monotonic s of its publish
    received: list[tuple[float, bytes]] = []  # (monotonic s, CDR) of the node's ~/keypoints
    overlay: list[bytes] = []  # its newest ~/overlay
    diagnostics: list[tuple[float, Any]] = []  # (monotonic s, DiagnosticArray), newest only

    def on_publish(topic: str, data: bytes, at: float) -> None:
        if topic == POINTS_TOPIC:
            sent[header_stamp_ns(data)] = at

    def on_overlay(data: bytes) -> None:
        overlay[:] = [data]

    namespace = demo_namespace()
    node_name = f"{namespace}/kp3d_node"

    def on_diagnostics(msg) -> None:
        if diagnostics_values(msg, node_name):
            diagnostics[:] = [(time.monotonic(), msg)]

    use_large_message_profile()
    rclpy.init()
    executor = SingleThreadedExecutor()
    nodes, process = [], None
    try:
        collector = Node("kp3d_demo_collector", namespace=namespace)
        replay = Node("kp3d_demo_replay", namespace=namespace)
        nodes += [collector, replay]
        # raw: the callbacks only keep the bytes; they are deserialized after the run
        keypoints_topic = f"{node_name}/keypoints"
        collector.create_subscription(
            PointCloud2, keypoints_topic, lambda data: received.append((time.monotonic(), data)),
            output_qos(100), raw=True)
        collector.create_subscription(Image, f"{node_name}/overlay", on_overlay, output_qos(2), raw=True)
        collector.create_subscription(DiagnosticArray, "/diagnostics", on_diagnostics, output_qos(10))
        for n in nodes:
            executor.add_node(n)
        remaps = input_remaps(namespace)
        player = BagPlayer(replay, bag, rate=rate, topics=INPUT_TOPICS, start_delay=0.5, on_publish=on_publish,
                           remap={topic: remaps[name] for name, topic in DEFAULT_REMAPS.items()})
        process = subprocess.Popen(node_command(overrides, namespace))

        def ready() -> bool:  # the node has started (model loaded, warmed up) and both sides have matched
            if process.poll() is not None:
                raise RuntimeError(f"kp3d_node exited with code {process.returncode} before it was ready")
            return (player.publishers[POINTS_TOPIC].get_subscription_count() > 0
                    and collector.count_publishers(keypoints_topic) > 0)

        if not spin_until(executor, ready, NODE_START_TIMEOUT_S):
            raise RuntimeError(f"kp3d_node was not ready after {NODE_START_TIMEOUT_S:.0f} s")
        player.start()
        spin_until(executor, player.finished.is_set, timeout_s)
        idle = {"count": -1, "since": time.monotonic()}

        def settled() -> bool:  # no new output for 0.5 s
            if len(received) != idle["count"]:
                idle["count"], idle["since"] = len(received), time.monotonic()
            return time.monotonic() - idle["since"] > 0.5

        spin_until(executor, settled, 10.0)
        after = time.monotonic()
        spin_until(executor, lambda: bool(diagnostics) and diagnostics[0][0] > after, 5.0)  # counts after the end
        if process.poll() is not None:
            print(f"kp3d demo: kp3d_node exited with code {process.returncode} during the playback", file=sys.stderr)
    finally:
        for n in nodes:
            executor.remove_node(n)
        executor.shutdown()
        for n in nodes:
            n.destroy_node()
        if rclpy.ok():
            rclpy.shutdown()
        if process is not None:
            _stop_process(process)
    frames = []
    for at, data in received:
        msg = deserialize_message(data, PointCloud2)
        stamp = _stamp_ns(msg.header)
        array = np.asarray(cloud_to_array(msg)).astype(layouts.KEYPOINTS)
        collected.predicted[stamp] = layouts.people_from_keypoints(array, skeleton.NUM_JOINTS)
        latency = 1e3 * (at - sent[stamp]) if stamp in sent else float("nan")
        frames.append((stamp, latency, len(collected.predicted[stamp])))
    if overlay:
        collected.overlay = image_to_rgb(deserialize_message(overlay[0], Image))
    stats = diagnostics_values(diagnostics[0][1], node_name) if diagnostics else {}
    return collected, stats, frames, str(stats.get("backend", "unknown"))


def _draw_view(ax, points: np.ndarray, predicted: dict, truth: dict, axes: tuple[int, int], title: str,
               box: tuple[np.ndarray, np.ndarray]) -> None:
    """Points (grey), truth (dashed black) and predictions (side colours, track id) inside box (lo, hi)."""
    lo, hi = box
    inside = np.all((points >= lo) & (points <= hi), axis=1)
    ax.scatter(points[inside, axes[0]], points[inside, axes[1]], s=0.5, c="0.65", linewidths=0)
    for joints in truth.values():
        segments, _ = skeleton.draw_segments(joints)
        for seg in segments:
            ax.plot(seg[:, axes[0]], seg[:, axes[1]], color="black", lw=1.0, ls="--", alpha=0.8)
    for track_id, joints in predicted.items():
        head = joints[skeleton.JOINT_INDEX["head_center"]]
        if not np.isfinite(joints).all() or np.any(head < lo) or np.any(head > hi):
            continue
        segments, colours = skeleton.draw_segments(joints)
        for seg, colour in zip(segments, colours, strict=True):
            ax.plot(seg[:, axes[0]], seg[:, axes[1]], color=colour, lw=2.0)
        ax.text(head[axes[0]], head[axes[1]] + 0.25, str(track_id), fontsize=8, ha="center")
    ax.set_xlim(lo[axes[0]], hi[axes[0]])
    ax.set_ylim(lo[axes[1]], hi[axes[1]])
    ax.set_title(title, fontsize=10)
    ax.set_aspect("equal")
    ax.set_xlabel("xyz"[axes[0]] + " (m)")
    ax.set_ylabel("xyz"[axes[1]] + " (m)")


def draw_picture(path: Path, collected: Collected, stamp: int, title: str) -> None:
    """Top view and side view around the true people, and a front view of the best-matched person."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    points = collected.points.get(stamp, np.zeros((0, 3), np.float32))
    predicted, truth = collected.predicted.get(stamp, {}), collected.truth.get(stamp, {})
    people = np.concatenate(list(truth.values()) or [np.zeros((1, 3), np.float32)])
    lo, hi = people.min(0) - np.array([2.0, 2.0, 0.5]), people.max(0) + np.array([2.0, 2.0, 0.8])
    lo[2] = min(lo[2], -2.0)
    fig, (top, side, close) = plt.subplots(1, 3, figsize=(18, 6), gridspec_kw={"width_ratios": [1.2, 1.2, 0.6]})
    _draw_view(top, points, predicted, truth, (0, 1), "top view (x forward, y left)", (lo, hi))
    _draw_view(side, points, predicted, truth, (0, 2), "side view (x forward, z up)", (lo, hi))
    pairs = match_people(predicted, truth)
    if pairs:
        pred_id, true_id, errors = min(pairs, key=lambda p: np.nanmean(p[2]))
        centre = skeleton.pelvis(truth[true_id])
        box = (centre - np.array([1.2, 1.2, 1.4]), centre + np.array([1.2, 1.2, 1.3]))
        _draw_view(close, points, {pred_id: predicted[pred_id]}, {true_id: truth[true_id]}, (1, 2),
                   f"track {pred_id}, seen from behind the sensor: MPJPE {100 * np.nanmean(errors):.0f} cm", box)
        close.invert_xaxis()  # y left: looking forward from the sensor, +y is on the left
    else:
        close.set_axis_off()
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", type=Path, default=Path("out"), help="output folder (bag, demo.png)")
    parser.add_argument("--people", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--seed", type=int, default=3)
    parser.add_argument("--rate", type=float, default=1.0, help="replay speed factor")
    parser.add_argument("--backend", default="auto", help="network.backend")
    parser.add_argument("--bag", type=Path, help="use this bag instead of generating one")
    parser.add_argument("--regenerate", action="store_true",
                        help="write the synthetic bag even if out/ has one made with the same settings")


def main(args: argparse.Namespace) -> int:
    from kp3d_ros.core.params import ParameterError, load_params

    args.out.mkdir(parents=True, exist_ok=True)
    bag = args.bag or args.out / "demo.mcap"
    settings = f"people={args.people} seconds={args.seconds} seed={args.seed} camera=1"
    stamp_file = bag.with_name(bag.name + ".settings")
    reuse = bag.exists() and stamp_file.exists() and stamp_file.read_text() == settings and not args.regenerate
    if args.bag is None and reuse:
        print(f"reusing {bag} ({settings}; --regenerate writes it again)")
    elif args.bag is None:
        start = time.monotonic()
        stamp_file.unlink(missing_ok=True)
        if bag.exists():
            bag.unlink()
        print(f"writing a synthetic bag: {args.people} people, {args.seconds} s -> {bag}")
        if make_bag(bag, args.people, args.seconds, args.seed) != 0 or not bag.exists():
            print("kp3d demo: synth-bag failed", file=sys.stderr)
            return 1
        stamp_file.write_text(settings)
        print(f"  done in {time.monotonic() - start:.1f} s")
    overrides = {"network.backend": args.backend, "camera.enabled": True}
    try:
        load_params(overrides=overrides)
    except ParameterError as error:
        print(f"kp3d demo: invalid parameters: {error}", file=sys.stderr)
        return 2
    print(f"playing it through kp3d_node (its own process, in the namespace {demo_namespace()}) ...")
    from rclpy.executors import ExternalShutdownException

    try:
        collected, stats, frames, backend = play_through_node(bag, overrides, args.rate)
    except RuntimeError as error:  # rclpy's RCLError is one too
        print(f"kp3d demo: {error}", file=sys.stderr)
        return 1
    except (KeyboardInterrupt, ExternalShutdownException):
        print("kp3d demo: interrupted", file=sys.stderr)
        return 130

    print(f"\nbackend: {backend}")
    print(f"{'t (s)':>8} {'latency ms':>11} {'people':>7} {'truth':>6} {'matched':>8} {'MPJPE cm':>9} {'PCK@10cm':>9}")
    all_errors, start_stamp = [], min(collected.truth, default=0)
    for stamp, latency, _ in frames:
        scores = frame_scores(collected, stamp)
        all_errors.append(scores["errors"])
        print(f"{(stamp - start_stamp) / 1e9:8.2f} {latency:11.1f} {scores['predicted']:7d} {scores['truth']:6d} "
              f"{scores['matched']:8d} {100 * scores['mpjpe']:9.1f} {scores['pck']:9.2f}")
    errors = np.concatenate(all_errors) if all_errors else np.zeros(0)
    latencies = np.array([f[1] for f in frames if np.isfinite(f[1])])
    truth_people = sum(len(collected.truth.get(s, {})) for s, _, _ in frames)
    matched = sum(frame_scores(collected, s)["matched"] for s, _, _ in frames)
    clouds = count_clouds(bag)
    processed = len({stamp for stamp, _, _ in frames})  # clouds whose output reached this process

    def count(key: str) -> str:
        return str(int(stats[key])) if isinstance(stats.get(key), float) else "?"

    print(f"\nclouds in bag {clouds}, outputs received for {processed}; the node's /diagnostics: received "
          f"{count('clouds_received')}, processed {count('clouds_processed')}, dropped for a newer one "
          f"{count('clouds_dropped_newer_arrived')}, lost before the callback {count('clouds_lost_before_callback')},"
          f" malformed {count('clouds_malformed')}")
    if latencies.size:
        print(f"end-to-end latency (cloud published -> keypoints received): median {np.median(latencies):.1f} ms, "
              f"p99 {np.percentile(latencies, 99):.1f} ms, max {latencies.max():.1f} ms")
        if isinstance(stats.get("latency_end_to_end_median_ms"), float):
            print(f"in the node (cloud arrival -> markers published): median "
                  f"{stats['latency_end_to_end_median_ms']:.1f} ms, p99 {stats['latency_end_to_end_p99_ms']:.1f} ms")
        stages = [(k[len("latency_"):-len("_median_ms")], v) for k, v in stats.items()
                  if k.startswith("latency_") and k.endswith("_median_ms") and "end_to_end" not in k
                  and isinstance(v, float)]
        print("pipeline stages, median ms: " + ", ".join(f"{name} {ms:.1f}" for name, ms in stages))
    print(f"people found: {matched} of {truth_people} ground-truth people in processed frames")
    if errors.size:
        print(f"accuracy over matched people: MPJPE {100 * np.nanmean(errors):.1f} cm, "
              f"PCK@10cm {np.mean(errors < PCK_THRESHOLD):.2f}")
    if frames:
        best = max(frames, key=lambda f: (frame_scores(collected, f[0])["matched"], f[0]))[0]
        collected.points[best] = scan_points(bag, best)
        picture = args.out / "demo.png"
        draw_picture(picture, collected, best,
                     f"kp3d demo, t = {(best - start_stamp) / 1e9:.1f} s: predicted skeletons (person's left blue, "
                     "right orange, centre green), ground truth dashed black, LiDAR points grey")
        print(f"picture: {picture}")
    if collected.overlay is not None:
        from PIL import Image as PilImage

        PilImage.fromarray(collected.overlay).save(args.out / "demo_overlay.png")
        print(f"camera overlay: {args.out / 'demo_overlay.png'}")
    if processed < MIN_PROCESSED * clouds:
        print(f"kp3d demo: FAILED: outputs for {processed} of {clouds} clouds "
              f"({100 * processed / max(clouds, 1):.0f} %, at least {100 * MIN_PROCESSED:.0f} % needed)",
              file=sys.stderr)
        return 1
    return 0
