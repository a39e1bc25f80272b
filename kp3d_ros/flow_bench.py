"""`kp3d flow-bench`: scene flow accuracy and runtime against the synthetic ground-truth flow.

For consecutive frames (t, t+1) of synthetic sequences, each method estimates the forward flow of the
person's points at t (body returns only, as the node's non-ground points) towards the person's points
at t+1. Reported per method: EPE3D, Acc3DS, Acc3DR, Outliers (shared/method.md), runtime per pair, and
the keypoint error of carrying the true joints of frame t with the estimated flow (each joint moves by
the mean flow of its 8 nearest body points) against the true joints at t+1 ("carried-joint error").
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
from scipy.spatial import cKDTree

from kp3d_ros.core.flow import FlowEstimator, flow_metrics, nearest_neighbour_flow

JOINT_NEIGHBOURS = 8


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", default="", help="SequenceDataset directory (default: generate sequences)")
    parser.add_argument("--sequences", type=int, default=8, help="sequences to use (default 8)")
    parser.add_argument("--frames", type=int, default=6, help="frames per generated sequence (default 6)")
    parser.add_argument("--preset", default="waymo_top", help="LiDAR preset of generated sequences")
    parser.add_argument("--distance", type=float, nargs=2, default=(4.0, 12.0), help="distance range (m)")
    parser.add_argument("--min-points", type=int, default=30, help="skip pairs with fewer body points")
    parser.add_argument("--offline-pairs", type=int, default=6,
                        help="pairs for the (slow) offline optimiser; 0 skips it")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="", help="write the markdown table here")


def _sequences(args: argparse.Namespace) -> list[list]:
    if args.data:
        from kp3d_ros.synth.sequence import SequenceDataset

        data = SequenceDataset(args.data)
        return [data[i] for i in range(min(args.sequences, len(data)))]
    import torch

    from kp3d_ros.synth.lidar import PRESETS
    from kp3d_ros.synth.motion import ACTIONS
    from kp3d_ros.synth.sequence import make_sequence

    torch.set_num_threads(1)
    if args.preset not in PRESETS:
        raise SystemExit(f"unknown preset {args.preset!r}; choose from {', '.join(PRESETS)}")
    out = []
    for i in range(args.sequences):
        rng = np.random.default_rng([args.seed, i])
        action = ("walk", "run", "turn", "wave")[i % 4] if "walk" in ACTIONS else ACTIONS[i % len(ACTIONS)]
        out.append(make_sequence(rng, action, args.frames, PRESETS[args.preset], rng.uniform(*args.distance)))
    return out


def _pairs(sequences: list[list], min_points: int) -> list[dict]:
    """Body points, true flow, warm-start translation and true joints for every usable pair."""
    pairs = []
    for frames in sequences:
        previous_centroid = None
        for t in range(len(frames) - 1):
            a, b = frames[t], frames[t + 1]
            body_a, body_b = a.parts > 0, b.parts > 0
            src, dst = a.points[body_a], b.points[body_b]
            centroid = src.mean(0) if len(src) else None
            if len(src) >= min_points and len(dst) >= min_points and np.isfinite(a.flow[body_a]).all():
                # the node warm-starts with the track velocity; here: the last centroid motion
                init = None if previous_centroid is None else centroid - previous_centroid
                pairs.append({"src": src, "dst": dst, "flow": a.flow[body_a], "init": init,
                              "joints": a.joints, "joints_next": b.joints})
            previous_centroid = centroid
    return pairs


def carried_joint_error(src: np.ndarray, flow: np.ndarray, joints: np.ndarray, joints_next: np.ndarray) -> float:
    """Mean distance (m) between joints moved by their nearest points' mean flow and the next true joints."""
    k = min(JOINT_NEIGHBOURS, len(src))
    _, idx = cKDTree(src).query(joints, k=k)
    idx = idx.reshape(len(joints), k)
    moved = joints + flow[idx].mean(1)
    return float(np.linalg.norm(moved - joints_next, axis=1).mean())


def _evaluate(name: str, pairs: list[dict], method) -> dict:
    rows, times, cpu = [], [], []
    for p in pairs:
        start, start_cpu = time.perf_counter(), time.thread_time()
        flow = method(p)
        times.append(time.perf_counter() - start)
        cpu.append(time.thread_time() - start_cpu)
        m = flow_metrics(flow, p["flow"])
        m["joint_error"] = carried_joint_error(p["src"], flow, p["joints"], p["joints_next"])
        rows.append(m)
    summary = {k: float(np.mean([r[k] for r in rows])) for k in rows[0]}
    summary.update(name=name, pairs=len(pairs), ms=1e3 * float(np.median(times)), cpu_ms=1e3 * float(np.median(cpu)),
                   points=float(np.mean([len(p["src"]) for p in pairs])))
    return summary


def node_input(pairs: list[dict], max_points: int = 128, seed: int = 0) -> list[dict]:
    """The pairs as the node gives them to the estimator: at most flow.max_points random points of each cloud."""
    rng = np.random.default_rng(seed)
    out = []
    for p in pairs:
        keep = rng.choice(len(p["src"]), min(max_points, len(p["src"])), replace=False)
        keep_dst = rng.choice(len(p["dst"]), min(max_points, len(p["dst"])), replace=False)
        out.append({**p, "src": p["src"][keep], "flow": p["flow"][keep], "dst": p["dst"][keep_dst]})
    return out


def _evaluate_batched(name: str, pairs: list[dict], estimator: FlowEstimator, per_call: int) -> dict:
    """As _evaluate, with `per_call` pairs solved in each estimate_many call (the node solves all its tracks in
    one); the time columns are per pair (a call's time over its pairs)."""
    flows, times, cpu = [], [], []
    for start in range(0, len(pairs), per_call):
        chunk = pairs[start:start + per_call]
        t0, c0 = time.perf_counter(), time.thread_time()
        flows += estimator.estimate_many([(p["src"], p["dst"], p["init"]) for p in chunk])
        times += [(time.perf_counter() - t0) / len(chunk)] * len(chunk)
        cpu += [(time.thread_time() - c0) / len(chunk)] * len(chunk)
    done = iter(range(len(pairs)))
    summary = _evaluate(name, pairs, lambda p: flows[next(done)])
    summary.update(ms=1e3 * float(np.median(times)), cpu_ms=1e3 * float(np.median(cpu)))
    return summary


def run_bench(pairs: list[dict], offline_pairs: int) -> list[dict]:
    realtime = FlowEstimator()
    rigid = FlowEstimator(iterations=0)
    results = [
        _evaluate("zero flow (static)", pairs, lambda p: np.zeros_like(p["src"])),
        _evaluate("nearest neighbour", pairs, lambda p: nearest_neighbour_flow(p["src"], p["dst"])),
        _evaluate("rigid ICP only (real-time, iterations=0)", pairs,
                  lambda p: rigid.estimate(p["src"], p["dst"], p["init"])),
        _evaluate("real-time FlowEstimator (default)", pairs,
                  lambda p: realtime.estimate(p["src"], p["dst"], p["init"])),
        _evaluate_batched("real-time FlowEstimator, node input (128 points a cloud, 5 pairs a call)",
                          node_input(pairs), realtime, per_call=5),
    ]
    if offline_pairs > 0:
        import torch

        from kp3d_ros.flow_offline import NeuralFlowOptimizer

        torch.set_num_threads(1)
        subset = pairs[:: max(1, len(pairs) // offline_pairs)][:offline_pairs]
        cold, warm = NeuralFlowOptimizer(), NeuralFlowOptimizer(iterations=150)
        results.append(_evaluate("real-time FlowEstimator, same subset", subset,
                                 lambda p: realtime.estimate(p["src"], p["dst"], p["init"])))
        results.append(_evaluate("offline NSFP-style, cold", subset,
                                 lambda p: cold.estimate(p["src"], p["dst"])))
        results.append(_evaluate("offline NSFP-style, warm-started from real-time", subset,
                                 lambda p: warm.estimate(p["src"], p["dst"],
                                                         realtime.estimate(p["src"], p["dst"], p["init"]))))
    return results


def to_markdown(results: list[dict]) -> str:
    lines = ["| method | pairs | points | EPE3D (cm) | Acc3DS | Acc3DR | Outliers | carried-joint error (cm) "
             "| runtime (ms, median wall) | CPU time (ms, median) |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        lines.append(f"| {r['name']} | {r['pairs']} | {r['points']:.0f} | {100 * r['epe3d']:.2f} | "
                     f"{r['acc3ds']:.3f} | {r['acc3dr']:.3f} | {r['outliers']:.3f} | "
                     f"{100 * r['joint_error']:.2f} | {r['ms']:.1f} | {r['cpu_ms']:.1f} |")
    return "\n".join(lines) + "\n"


def main(args: argparse.Namespace) -> int:
    sequences = _sequences(args)
    pairs = _pairs(sequences, args.min_points)
    if not pairs:
        print("no usable frame pairs (too few body points); try --min-points lower or closer --distance")
        return 1
    motion = np.mean([np.linalg.norm(p["flow"], axis=1).mean() for p in pairs])
    print(f"{len(pairs)} pairs from {len(sequences)} sequences, mean true motion {100 * motion:.1f} cm per frame")
    table = to_markdown(run_bench(pairs, args.offline_pairs))
    print(table)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(table)
    return 0
