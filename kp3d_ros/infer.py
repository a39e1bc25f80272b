"""`kp3d infer BAG --out PRED.jsonl`: the perception core over every LiDAR scan of a bag, without ROS.

One JSON line per scan, in bag order:
{"stamp_ns": int, "frame_id": str, "people": [{"track_id": int, "keypoints": [[x, y, z] x 14],
"confidence": [c x 14]}]}, joints in skeleton.JOINT_NAMES order, in the LiDAR frame.

Many bags: `kp3d infer --manifest BAGS.txt --out-dir PRED [--shard I/N]` processes share I of N of the
manifest's bags (kp3d_ros.sharding.share_by_size; default: torchrun's RANK/WORLD_SIZE, else all), each bag
whole (tracking needs its frames in order) into PRED/<bag name>.jsonl, written atomically. The shards
of N jobs (Slurm array tasks, Kubernetes job indices, torchrun ranks) together give one file per bag;
a bag whose file exists is skipped, so a job that was stopped can simply be run again.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from kp3d_ros.core.bagio import BagError, iter_scans
from kp3d_ros.core.cloud_layout import CloudError
from kp3d_ros.core.params import ParameterError, load_params
from kp3d_ros.core.pipeline import STAGES, FrameResult, PerceptionPipeline
from kp3d_ros.sharding import parse_shard, read_manifest, shard_from_environment, share_by_size, size_on_disk


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("bag", nargs="?", help="ROS 2 bag directory (MCAP or sqlite3); or --manifest")
    parser.add_argument("--out", help="output JSON lines file (with BAG)")
    parser.add_argument("--manifest", help="a file listing bags, one path a line (with --out-dir)")
    parser.add_argument("--out-dir", help="with --manifest: one <bag name>.jsonl per bag")
    parser.add_argument("--shard", help="I/N: only share I of N of the manifest's bags "
                                        "(default: torchrun's RANK/WORLD_SIZE, else all)")
    parser.add_argument("--topic", default="/points", help="PointCloud2 topic (default /points)")
    parser.add_argument("--backend", default=None, choices=("auto", "onnxruntime", "tensorrt", "torch"),
                        help="inference backend (default: network.backend of the parameters)")
    parser.add_argument("--params", default=None, help="node parameter YAML (e.g. config/kp3d.yaml)")
    parser.add_argument("--model", default=None, help="ONNX model (or .pt for --backend torch)")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads of the backend")


def frame_record(result: FrameResult, frame_id: str) -> dict:
    """The JSON object of one frame."""
    return {
        "stamp_ns": int(result.stamp_ns),
        "frame_id": frame_id,
        "people": [
            {"track_id": int(p.track_id),
             "keypoints": np.round(p.joints.astype(np.float64), 4).tolist(),
             "confidence": np.round(p.confidence.astype(np.float64), 4).tolist()}
            for p in result.people
        ],
    }


@dataclass
class BagSummary:
    frames: int = 0
    people: int = 0
    dropped: int = 0
    malformed: int = 0
    wall_s: float = 0.0


def infer_bag(pipeline: PerceptionPipeline, bag: str | Path, out_path: Path, topic: str,
              totals: dict[str, list[float]]) -> BagSummary:
    """Every scan of `bag` through `pipeline` into `out_path` (a temporary file, renamed when complete);
    per-stage times are appended to `totals`. Raises BagError."""
    summary = BagSummary()

    def skip(stamp: int, error: CloudError) -> None:
        summary.malformed += 1
        print(f"kp3d infer: skipping malformed cloud at {stamp}: {error}", file=sys.stderr)

    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_path.with_name(out_path.name + ".tmp")
    start = time.perf_counter()
    try:
        with tmp.open("w") as out:
            for scan in iter_scans(bag, topic, on_error=skip):
                result = pipeline.process(scan.points, scan.stamp_ns)
                out.write(json.dumps(frame_record(result, scan.frame_id)) + "\n")
                summary.frames += 1
                summary.people += len(result.people)
                summary.dropped += scan.num_dropped_nonfinite
                for stage in STAGES:
                    totals[stage].append(result.timings_ms[stage])
        os.replace(tmp, out_path)
    finally:
        tmp.unlink(missing_ok=True)
    summary.wall_s = time.perf_counter() - start
    return summary


def output_names(bags: list[Path]) -> list[str]:
    """<bag name>.jsonl for each bag; two bags of one name are refused (their outputs would collide)."""
    names = [f"{Path(bag).stem}.jsonl" for bag in bags]
    first: dict[str, Path] = {}
    for bag, name in zip(bags, names, strict=True):
        if first.setdefault(name, bag) != bag:
            raise ValueError(f"bags {first[name]} and {bag} would both write {name}; rename one")
    return names


def _plan(args: argparse.Namespace) -> list[tuple[Path, Path]]:
    """(bag, output) pairs this process runs; a ValueError / FileNotFoundError on bad arguments."""
    if args.manifest:
        if args.bag or args.out:
            raise ValueError("give BAG with --out, or --manifest with --out-dir, not both")
        if not args.out_dir:
            raise ValueError("--manifest needs --out-dir")
        index, count = parse_shard(args.shard) if args.shard else shard_from_environment()
        bags = read_manifest(args.manifest)
        outputs = [Path(args.out_dir) / name for name in output_names(bags)]
        return share_by_size(list(zip(bags, outputs, strict=True)), [size_on_disk(b) for b in bags], index, count)
    if args.shard or args.out_dir:
        raise ValueError("--shard and --out-dir go with --manifest")
    if not args.bag or not args.out:
        raise ValueError("give BAG with --out, or --manifest with --out-dir")
    if not Path(args.bag).exists():
        raise BagError(f"bag not found: {args.bag}")
    return [(Path(args.bag), Path(args.out))]


def main(args: argparse.Namespace) -> int:
    overrides = {}
    if args.backend:
        overrides["network.backend"] = args.backend
    if args.model:
        overrides["network.model_path"] = str(args.model)
    if args.threads:
        overrides["network.threads"] = args.threads
    try:
        plan = _plan(args)
        params = load_params(args.params, overrides)
        pipeline = PerceptionPipeline.from_params(params)
    except (ParameterError, BagError, FileNotFoundError, RuntimeError, ValueError) as exc:
        print(f"kp3d infer: {exc}", file=sys.stderr)
        return 2
    totals: dict[str, list[float]] = {s: [] for s in STAGES}
    done, failed = BagSummary(), 0
    for number, (bag, out_path) in enumerate(plan):
        if args.manifest and out_path.exists():
            print(f"kp3d infer: {out_path} exists, skipping {bag}")
            continue
        if number:  # every bag starts with fresh tracks, as a run on that bag alone
            pipeline = PerceptionPipeline.from_params(params)
        try:
            summary = infer_bag(pipeline, bag, out_path, args.topic, totals)
        except BagError as exc:
            print(f"kp3d infer: {exc}", file=sys.stderr)
            if not args.manifest:
                return 2
            failed += 1  # the other bags of the shard still run
            continue
        print(f"kp3d infer: {summary.frames} frames, {summary.people} person detections, {summary.dropped} "
              f"non-finite points dropped, {summary.malformed} malformed clouds skipped, {summary.wall_s:.1f} s "
              f"-> {out_path}")
        for name in ("frames", "people", "dropped", "malformed", "wall_s"):
            setattr(done, name, getattr(done, name) + getattr(summary, name))
    if args.manifest:
        print(f"kp3d infer: {len(plan)} bags in this shard, {failed} failed, {done.frames} frames in "
              f"{done.wall_s:.1f} s")
    if done.frames:
        print("median ms per stage: " + ", ".join(f"{s} {np.median(v):.1f}" for s, v in totals.items() if v))
    return 2 if failed else 0
