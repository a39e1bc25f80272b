"""`kp3d bench`: latency per stage and end to end, per backend and number of people.

Stages: decode (PointCloud2 bytes -> xyz through core.cloud_layout), the pipeline's own stages (roi,
ground, candidates, tracking, crops, network, flow, smoothing), publish (packing keypoints,
segmentation and scene flow into their layouts and PointCloud2 messages, plus the RViz markers when
the ROS message packages import) and end_to_end (their sum). Scenes come from the synthetic scene
simulator (kp3d_ros.synth.scene, a ray-cast street with anny people), each scan randomly subsampled
to --points; with --scene simple, a documented stand-in: a gently sloped ground plane, vertical
cylinders for people walking straight lines and boxes for clutter. Every backend runs on the same
frames with the same random seed.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import sys
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path

import numpy as np

from kp3d_ros import layouts
from kp3d_ros.core.cloud_layout import xyz_from_layout
from kp3d_ros.core.params import load_params
from kp3d_ros.core.pipeline import STAGES, FrameResult, PerceptionPipeline, make_flow_estimator

Frame = tuple[int, np.ndarray]  # stamp_ns, points (M, 3) float32
REPORT_STAGES = ("decode", *STAGES[:-1], "publish", "end_to_end")
PERIOD_NS = 100_000_000  # 10 Hz


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--backends", default="onnxruntime,torch",
                        help="comma-separated backends; 'none' times the pipeline without the network")
    parser.add_argument("--people", default="1,5,20", help="comma-separated numbers of people per scene")
    parser.add_argument("--points", type=int, default=100_000, help="points per scan (subsampled to this)")
    parser.add_argument("--frames", type=int, default=30, help="timed frames per scene")
    parser.add_argument("--warmup", type=int, default=3, help="untimed frames first (tracks need min_hits)")
    parser.add_argument("--scene", choices=("synth", "simple"), default="synth",
                        help="synth: the ray-cast scene simulator; simple: ground plane + cylinders + boxes")
    parser.add_argument("--params", default=None, help="node parameter YAML")
    parser.add_argument("--threads", type=int, default=2, help="CPU threads of the backend")
    parser.add_argument("--no-flow", action="store_true", help="disable scene flow (flow.enabled false)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cache", default=None, help="directory to keep generated scenes in (reused when present)")
    parser.add_argument("--out", default=None, help="write the results as JSON here")


# -- scenes ------------------------------------------------------------------------------------------
def simple_scene_frames(num_people: int, num_points: int, num_frames: int, seed: int = 0) -> list[Frame]:
    """Stand-in scene: ground z = -1.9 + 0.03 x (uniform points within 40 m), people as cylinders
    (radius 0.25 m, 1.75 m tall, 400 points) walking straight at 1.2 m/s, ten parked cars as solid
    4 x 1.8 x 1.5 m boxes (300 points each)."""
    rng = np.random.default_rng(seed)
    starts = rng.uniform(-15, 15, (num_people, 2))
    headings = rng.uniform(-np.pi, np.pi, num_people)
    boxes = rng.uniform(-30, 30, (10, 2))
    frames = []
    for k in range(num_frames):
        t = k * PERIOD_NS * 1e-9
        centres = starts + 1.2 * t * np.stack([np.cos(headings), np.sin(headings)], 1)
        parts = []
        for c in centres:
            a = rng.uniform(0, 2 * np.pi, 400)
            ground = -1.9 + 0.03 * c[0]
            parts.append(np.column_stack([c[0] + 0.25 * np.cos(a), c[1] + 0.25 * np.sin(a),
                                          ground + rng.uniform(0, 1.75, 400)]))
        for b in boxes:
            low = np.array([b[0] - 2.0, b[1] - 0.9, -1.9 + 0.03 * b[0]])
            parts.append(low + rng.uniform(0, 1, (300, 3)) * [4.0, 1.8, 1.5])
        used = sum(len(p) for p in parts)
        r = 40.0 * np.sqrt(rng.uniform(0.0007, 1, max(num_points - used, 0)))
        a = rng.uniform(0, 2 * np.pi, len(r))
        x, y = r * np.cos(a), r * np.sin(a)
        parts.append(np.column_stack([x, y, -1.9 + 0.03 * x + rng.normal(0, 0.02, len(r))]))
        frames.append((k * PERIOD_NS, np.concatenate(parts).astype(np.float32)))
    return frames


def synth_scene_frames(num_people: int, num_points: int, num_frames: int, seed: int = 0) -> list[Frame]:
    """Scans of kp3d_ros.synth.scene.SceneSimulator, each randomly subsampled to num_points."""
    from kp3d_ros.synth.scene import SceneSimulator

    rng = np.random.default_rng(seed)
    frames = []
    for scan in SceneSimulator(num_people, seed=seed).frames(num_frames):
        points = scan.points
        if len(points) > num_points:
            points = points[np.sort(rng.choice(len(points), num_points, replace=False))]
        frames.append((scan.stamp_ns, np.ascontiguousarray(points, dtype=np.float32)))
    return frames


def cached_frames(make: Callable[..., list[Frame]], cache: str | None, scene: str, people: int, points: int,
                  count: int, seed: int) -> list[Frame]:
    """make(people, points, count, seed), kept as an .npz file under cache when a cache directory is given."""
    if cache is None:
        return make(people, points, count, seed)
    path = Path(cache) / f"{scene}_people{people}_points{points}_frames{count}_seed{seed}.npz"
    if path.is_file():
        with np.load(path) as data:
            return [(int(s), data[f"points{i}"]) for i, s in enumerate(data["stamps"])]
    frames = make(people, points, count, seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    arrays = {f"points{i}": f[1] for i, f in enumerate(frames)}
    np.savez(path, stamps=np.array([f[0] for f in frames], np.int64), **arrays)
    return frames


def pack_xyzi(points: np.ndarray) -> tuple[bytes, tuple]:
    """A scan as PointCloud2 payload bytes and layout (fields, point_step, row_step, width, height, bigendian)."""
    cloud = np.zeros(len(points), dtype=layouts.XYZI)
    cloud["x"], cloud["y"], cloud["z"] = points[:, 0], points[:, 1], points[:, 2]
    step = layouts.XYZI.itemsize
    return cloud.tobytes(), (layouts.fields_of(layouts.XYZI), step, step * len(points), len(points), 1, False)


# -- publishing --------------------------------------------------------------------------------------
def make_publisher() -> tuple[Callable[[FrameResult], None], str]:
    """(pack(result), description): the node's output packing, with ROS messages when they import."""
    try:
        from std_msgs.msg import Header

        from kp3d_ros.ros.markers import skeleton_markers
        from kp3d_ros.ros.node import scene_flow_array, segmentation_array
        from kp3d_ros.ros.pointcloud2 import array_to_cloud
    except ImportError as exc:
        def pack_layouts(result: FrameResult) -> None:
            layouts.keypoints_array([(p.track_id, p.joints, p.confidence) for p in result.people])

        return pack_layouts, f"keypoint layout packing only (ROS message packages unavailable: {exc})"

    header = Header(frame_id="lidar")

    def pack(result: FrameResult) -> None:
        people = result.people
        array_to_cloud(layouts.keypoints_array([(p.track_id, p.joints, p.confidence) for p in people]), header)
        array_to_cloud(segmentation_array(people), header)
        array_to_cloud(scene_flow_array(people), header)
        skeleton_markers(header, [(p.track_id, p.joints) for p in people])

    return pack, "keypoints + segmentation + scene flow PointCloud2 messages and skeleton markers (node code)"


# -- measuring ---------------------------------------------------------------------------------------
def run_frames(pipeline: PerceptionPipeline, frames: list[Frame], warmup: int,
               publish: Callable[[FrameResult], None]) -> tuple[dict[str, list[float]], list[int]]:
    """Per-stage milliseconds of every timed frame, and the people found per frame."""
    samples: dict[str, list[float]] = {s: [] for s in REPORT_STAGES}
    people = []
    packed = [pack_xyzi(points) for _, points in frames]
    for index, ((stamp, _), (data, layout)) in enumerate(zip(frames, packed, strict=True)):
        t0 = time.perf_counter()
        xyz, _ = xyz_from_layout(data, *layout)
        t1 = time.perf_counter()
        result = pipeline.process(xyz, stamp)
        t2 = time.perf_counter()
        publish(result)
        t3 = time.perf_counter()
        if index < warmup:
            continue
        samples["decode"].append((t1 - t0) * 1e3)
        for stage in STAGES[:-1]:
            samples[stage].append(result.timings_ms[stage])
        samples["publish"].append((t3 - t2) * 1e3)
        samples["end_to_end"].append((t3 - t0) * 1e3)
        people.append(len(result.people))
    return samples, people


def traced_peak_mb(pipeline: PerceptionPipeline, frames: list[Frame]) -> float:
    """Peak Python/numpy allocation (tracemalloc) while processing a few frames, MB."""
    tracemalloc.start()
    for stamp, points in frames:
        pipeline.process(points, stamp)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return peak / 2**20


def summarize(samples: dict[str, list[float]]) -> dict[str, dict[str, float]]:
    out = {}
    for stage, values in samples.items():
        v = np.asarray(values, dtype=np.float64)
        if len(v):
            out[stage] = {"median": float(np.median(v)), "p90": float(np.percentile(v, 90)),
                          "p99": float(np.percentile(v, 99)), "mean": float(v.mean())}
    return out


def markdown(runs: list[dict]) -> str:
    head = "| backend | people | found | " + " | ".join(REPORT_STAGES) + " | e2e p90 | e2e p99 | fps | peak RSS MB |"
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in runs:
        s = r["stages_ms"]
        cells = [f"{s[st]['median']:.1f}" if st in s else "-" for st in REPORT_STAGES]
        e2e = s["end_to_end"]
        lines.append(f"| {r['backend']} | {r['people']} | {r['mean_people_found']:.1f} | " + " | ".join(cells)
                     + f" | {e2e['p90']:.1f} | {e2e['p99']:.1f} | {r['throughput_fps']:.1f} | "
                     f"{r['peak_rss_mb']:.0f} |")
    return "\n".join(lines)


def ratios(runs: list[dict]) -> list[dict]:
    """torch eager / ONNX Runtime median ratios on the same frames."""
    by = {(r["backend"], r["people"]): r for r in runs}
    out = []
    for (backend, people), ort in by.items():
        torch_run = by.get(("torch", people))
        if backend != "onnxruntime" or torch_run is None:
            continue
        out.append({"people": people,
                    "network_torch_over_ort": torch_run["stages_ms"]["network"]["median"]
                    / max(ort["stages_ms"]["network"]["median"], 1e-9),
                    "end_to_end_torch_over_ort": torch_run["stages_ms"]["end_to_end"]["median"]
                    / max(ort["stages_ms"]["end_to_end"]["median"], 1e-9)})
    return out


def main(args: argparse.Namespace) -> int:
    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    counts = [int(n) for n in args.people.split(",") if n.strip()]
    overrides = {"network.threads": args.threads}
    if args.no_flow:
        overrides["flow.enabled"] = False
    params = load_params(args.params, overrides)
    make_scene = synth_scene_frames if args.scene == "synth" else simple_scene_frames
    publish, publish_desc = make_publisher()
    print(f"publish stage: {publish_desc}", file=sys.stderr)
    runs = []
    for count in counts:
        t = time.perf_counter()
        frames = cached_frames(make_scene, args.cache, args.scene, count, args.points, args.warmup + args.frames,
                               args.seed)
        print(f"scene with {count} people: {len(frames)} frames of ~{len(frames[0][1])} points "
              f"({time.perf_counter() - t:.1f} s to generate)", file=sys.stderr)
        for name in backends:
            try:
                if name == "none":  # the core stages alone: no network
                    pipeline = PerceptionPipeline(params, None, make_flow_estimator(params))
                    pipeline.backend_reason = "none (network stage skipped)"
                else:
                    pipeline = PerceptionPipeline.from_params({**params, "network.backend": name})
            except (RuntimeError, ValueError, ImportError, FileNotFoundError) as exc:
                print(f"backend {name}: skipped ({exc})", file=sys.stderr)
                continue
            if pipeline.backend is not None:
                pipeline.backend.warm_up()
            samples, found = run_frames(pipeline, frames, args.warmup, publish)
            pipeline.reset()
            peak_traced = traced_peak_mb(pipeline, frames[: min(len(frames), args.warmup + 2)])
            stages = summarize(samples)
            run = {"backend": name, "backend_reason": pipeline.backend_reason, "people": count,
                   "points": int(np.median([len(p) for _, p in frames])), "frames": len(samples["end_to_end"]),
                   "mean_people_found": float(np.mean(found)) if found else 0.0, "stages_ms": stages,
                   "throughput_fps": 1e3 / stages["end_to_end"]["mean"],
                   "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                   "peak_traced_mb": peak_traced}
            runs.append(run)
            print(f"{name}, {count} people: end to end median {stages['end_to_end']['median']:.1f} ms, "
                  f"p99 {stages['end_to_end']['p99']:.1f} ms", file=sys.stderr)
    result = {"config": {"points": args.points, "frames": args.frames, "warmup": args.warmup, "scene": args.scene,
                         "threads": args.threads, "flow": not args.no_flow, "publish": publish_desc,
                         "machine": f"{platform.processor() or platform.machine()}, {_cpu_count()} CPUs",
                         "python": platform.python_version()},
              "runs": runs, "torch_over_onnxruntime": ratios(runs)}
    print(markdown(runs))
    for r in result["torch_over_onnxruntime"]:
        print(f"torch / ONNX Runtime, {r['people']} people: network x{r['network_torch_over_ort']:.2f}, "
              f"end to end x{r['end_to_end_torch_over_ort']:.2f}")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=1))
    return 0 if runs else 1


def _cpu_count() -> int:
    import os

    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
