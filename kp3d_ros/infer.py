"""`kp3d infer BAG --out PRED.jsonl`: the perception core over every LiDAR scan of a bag, without ROS.

One JSON line per scan, in bag order:
{"stamp_ns": int, "frame_id": str, "people": [{"track_id": int, "keypoints": [[x, y, z] x 14],
"confidence": [c x 14]}]}, joints in skeleton.JOINT_NAMES order, in the LiDAR frame.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from kp3d_ros.core.bagio import BagError, iter_scans
from kp3d_ros.core.cloud_layout import CloudError
from kp3d_ros.core.params import ParameterError, load_params
from kp3d_ros.core.pipeline import STAGES, FrameResult, PerceptionPipeline


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("bag", help="ROS 2 bag directory (MCAP or sqlite3)")
    parser.add_argument("--out", required=True, help="output JSON lines file")
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


def main(args: argparse.Namespace) -> int:
    overrides = {}
    if args.backend:
        overrides["network.backend"] = args.backend
    if args.model:
        overrides["network.model_path"] = str(args.model)
    if args.threads:
        overrides["network.threads"] = args.threads
    try:
        params = load_params(args.params, overrides)
        if not Path(args.bag).exists():
            raise BagError(f"bag not found: {args.bag}")
        pipeline = PerceptionPipeline.from_params(params)
    except (ParameterError, BagError, FileNotFoundError, RuntimeError, ValueError) as exc:
        print(f"kp3d infer: {exc}", file=sys.stderr)
        return 2
    malformed: list[str] = []

    def skip(stamp: int, error: CloudError) -> None:
        malformed.append(f"{stamp}: {error}")
        print(f"kp3d infer: skipping malformed cloud at {stamp}: {error}", file=sys.stderr)

    out_path = Path(args.out)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    totals: dict[str, list[float]] = {s: [] for s in STAGES}
    frames = people = dropped = 0
    start = time.perf_counter()
    try:
        with out_path.open("w") as out:
            for scan in iter_scans(args.bag, args.topic, on_error=skip):
                result = pipeline.process(scan.points, scan.stamp_ns)
                out.write(json.dumps(frame_record(result, scan.frame_id)) + "\n")
                frames += 1
                people += len(result.people)
                dropped += scan.num_dropped_nonfinite
                for stage in STAGES:
                    totals[stage].append(result.timings_ms[stage])
    except BagError as exc:
        print(f"kp3d infer: {exc}", file=sys.stderr)
        return 2
    wall = time.perf_counter() - start
    medians = ", ".join(f"{s} {np.median(v):.1f}" for s, v in totals.items() if v)
    print(f"kp3d infer: {frames} frames, {people} person detections, {dropped} non-finite points dropped, "
          f"{len(malformed)} malformed clouds skipped, {wall:.1f} s -> {out_path}")
    if frames:
        print(f"median ms per stage: {medians}")
    return 0
