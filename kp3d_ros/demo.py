"""`kp3d demo`: a synthetic scene bag played through the real ROS 2 node, scored against its ground truth.

Steps: write a small synthetic bag (`kp3d synth-bag`, with camera), start kp3d_node, a replay of the
node's input topics and a collector of the node's outputs in this process, play the bag once, then
print per-frame end-to-end latency (cloud arrival -> markers published) and accuracy (MPJPE, PCK@10cm
after matching people to the truth), and draw out/demo.png (top and side view: points, predicted
skeletons, ground truth). The ground truth and the points of the picture are read from the bag file
(kp3d_ros.core.bagio), not received over ROS. The demo fails (exit 1) when the node processed fewer
than MIN_PROCESSED of the bag's clouds.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

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


def play_through_node(bag: Path, params: dict, rate: float, timeout_s: float = 120.0):
    """Node + replay of its inputs + collector of its outputs in one process.

    Returns (Collected with the bag's ground truth, node stats snapshot, frames, backend).
    """
    import rclpy
    from rclpy.executors import MultiThreadedExecutor
    from rclpy.node import Node
    from rclpy.serialization import deserialize_message
    from sensor_msgs.msg import Image, PointCloud2

    from kp3d_ros.core.bagio import read_keypoints
    from kp3d_ros.ros.overlay import image_to_rgb
    from kp3d_ros.ros.pointcloud2 import cloud_to_array
    from kp3d_ros.ros.qos import output_qos
    from kp3d_ros.ros.replay import BagPlayer
    from kp3d_ros.ros.run import make_node, spin_until

    collected = Collected(truth=read_keypoints(bag, GT_TOPIC))

    raw_keypoints: list[bytes] = []  # the node's ~/keypoints, deserialized after the run
    raw_overlay: list[bytes] = []  # its newest ~/overlay

    def on_keypoints(data: bytes) -> None:
        raw_keypoints.append(data)

    def on_overlay(data: bytes) -> None:
        raw_overlay[:] = [data]

    use_large_message_profile()
    rclpy.init()
    executor = MultiThreadedExecutor(num_threads=3)
    nodes = []
    try:
        node = make_node(params)
        if node is None:
            raise RuntimeError("kp3d_node could not start (see above)")
        collector = Node("kp3d_demo_collector")
        replay = Node("kp3d_demo_replay")
        nodes += [node, collector, replay]
        qos = output_qos(100)
        # raw: the callbacks only keep the bytes, so that nothing in this process competes with the node for the
        # interpreter while the bag plays (deserializing every overlay image cost the node frames)
        collector.create_subscription(PointCloud2, "/kp3d_node/keypoints", on_keypoints, qos, raw=True)
        collector.create_subscription(Image, "/kp3d_node/overlay", on_overlay, output_qos(2), raw=True)
        for n in nodes:
            executor.add_node(n)
        player = BagPlayer(replay, bag, rate=rate, topics=INPUT_TOPICS, start_delay=0.5)
        spin_until(executor, lambda: all(p.get_subscription_count() > 0 for p in player.publishers.values()), 10.0)
        player.start()
        spin_until(executor, player.finished.is_set, timeout_s)
        idle = {"count": -1, "since": time.monotonic()}

        def settled() -> bool:  # the node has published nothing new for 0.5 s
            count = node.stats.processed
            if count != idle["count"]:
                idle["count"], idle["since"] = count, time.monotonic()
            return time.monotonic() - idle["since"] > 0.5

        spin_until(executor, settled, 10.0)
        stats, frames, backend = node.stats.snapshot(), node.stats.recent_frames(), node.backend_name()
    finally:
        for n in nodes:
            executor.remove_node(n)
        executor.shutdown()
        for n in nodes:
            n.destroy_node()
        if rclpy.ok():
            rclpy.shutdown()
    for data in raw_keypoints:
        msg = deserialize_message(data, PointCloud2)
        array = np.asarray(cloud_to_array(msg)).astype(layouts.KEYPOINTS)
        collected.predicted[_stamp_ns(msg.header)] = layouts.people_from_keypoints(array, skeleton.NUM_JOINTS)
    if raw_overlay:
        collected.overlay = image_to_rgb(deserialize_message(raw_overlay[0], Image))
    return collected, stats, frames, backend


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
    from kp3d_ros.core.params import load_params

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
    params = load_params(overrides={"network.backend": args.backend, "camera.enabled": True})
    print("playing it through kp3d_node ...")
    collected, stats, frames, backend = play_through_node(bag, params, args.rate)

    print(f"\nbackend: {backend}")
    print(f"{'t (s)':>8} {'latency ms':>11} {'people':>7} {'truth':>6} {'matched':>8} {'MPJPE cm':>9} {'PCK@10cm':>9}")
    all_errors, start_stamp = [], min(collected.truth, default=0)
    for stamp, latency, _ in frames:
        scores = frame_scores(collected, stamp)
        all_errors.append(scores["errors"])
        print(f"{(stamp - start_stamp) / 1e9:8.2f} {latency:11.1f} {scores['predicted']:7d} {scores['truth']:6d} "
              f"{scores['matched']:8d} {100 * scores['mpjpe']:9.1f} {scores['pck']:9.2f}")
    errors = np.concatenate(all_errors) if all_errors else np.zeros(0)
    latencies = np.array([f[1] for f in frames])
    truth_people = sum(len(collected.truth.get(s, {})) for s, _, _ in frames)
    matched = sum(frame_scores(collected, s)["matched"] for s, _, _ in frames)
    clouds = count_clouds(bag)
    print(f"\nclouds in bag {clouds}, received {stats['clouds_received']}, processed {stats['clouds_processed']}, "
          f"dropped for a newer one {stats['clouds_dropped_newer_arrived']}, "
          f"lost before the callback {stats.get('clouds_lost_before_callback', 0)}, "
          f"malformed {stats['clouds_malformed']}")
    if latencies.size:
        print(f"end-to-end latency (arrival -> markers): median {np.median(latencies):.1f} ms, "
              f"p99 {np.percentile(latencies, 99):.1f} ms, max {latencies.max():.1f} ms")
        stages = [(k[len("latency_"):-len("_median_ms")], v) for k, v in stats.items()
                  if k.startswith("latency_") and k.endswith("_median_ms") and "end_to_end" not in k]
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
    processed = int(stats["clouds_processed"])
    if processed < MIN_PROCESSED * clouds:
        print(f"kp3d demo: FAILED: the node processed {processed} of {clouds} clouds "
              f"({100 * processed / max(clouds, 1):.0f} %, at least {100 * MIN_PROCESSED:.0f} % needed)",
              file=sys.stderr)
        return 1
    return 0
