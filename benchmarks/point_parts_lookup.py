"""Time preprocess.point_parts (parts back to every crop point) for dense crops, optionally under load.

Run: .venv/bin/python benchmarks/point_parts_lookup.py [--crops 5] [--points 1800] [--busy 2]
     [--preprocess OLD_FILE]
--busy N runs N threads of numpy work beside the timed calls (as the node's DDS, flow and ONNX Runtime
threads do); --preprocess times point_parts from another copy of kp3d_ros/model/preprocess.py, e.g.
`git show REV:kp3d_ros/model/preprocess.py > /tmp/old_preprocess.py`, for a before/after figure.
"""

from __future__ import annotations

import argparse
import importlib.util
import threading
import time
from pathlib import Path
from types import ModuleType

import numpy as np

from kp3d_ros.model import preprocess

NUM_PARTS = 16


def load_module(path: Path | None) -> ModuleType:
    """The package's preprocess module, or the one in `path`."""
    if path is None:
        return preprocess
    spec = importlib.util.spec_from_file_location("preprocess_under_test", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def dense_crop(rng: np.random.Generator, count: int) -> np.ndarray:
    """A person-sized cylinder surface of `count` points 6 m ahead (about 1,800 for a close person)."""
    angle = rng.uniform(0.0, 2.0 * np.pi, count)
    radius = 0.2 + rng.normal(0.0, 0.02, count)
    height = rng.uniform(-0.9, 0.9, count)
    return np.stack([6.0 + radius * np.cos(angle), radius * np.sin(angle), height], 1).astype(np.float32)


def busy(stop: threading.Event) -> None:
    """numpy work until stopped (element-wise, so it does not itself use BLAS threads)."""
    a = np.random.default_rng(1).normal(size=200_000)
    while not stop.is_set():
        np.sin(a).sum()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--crops", type=int, default=5)
    parser.add_argument("--points", type=int, default=1800)
    parser.add_argument("--num-points", type=int, default=preprocess.DEFAULT_NUM_POINTS,
                        help="network points per crop (the model's N)")
    parser.add_argument("--repeats", type=int, default=200)
    parser.add_argument("--busy", type=int, default=0, help="threads of numpy work running beside")
    parser.add_argument("--preprocess", type=Path, help="time point_parts from this file instead")
    args = parser.parse_args()
    module = load_module(args.preprocess)
    rng = np.random.default_rng(0)
    crops = [dense_crop(rng, args.points) for _ in range(args.crops)]
    batch = preprocess.prepare_batch(crops, args.num_points, rng)
    logits = rng.normal(size=(args.crops, args.num_points, NUM_PARTS)).astype(np.float32)
    stop = threading.Event()
    workers = [threading.Thread(target=busy, args=(stop,), daemon=True) for _ in range(args.busy)]
    for worker in workers:
        worker.start()
    try:
        module.point_parts(logits, batch.indices, batch.counts, crops)
        times = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            module.point_parts(logits, batch.indices, batch.counts, crops)
            times.append(1000.0 * (time.perf_counter() - start))
    finally:
        stop.set()
    median, p99 = np.percentile(times, [50, 99])
    source = args.preprocess or "kp3d_ros/model/preprocess.py"
    print(f"point_parts, {args.crops} crops of {args.points} points (N = {args.num_points}), {args.busy} busy "
          f"threads, {source}: median {median:.2f} ms, p99 {p99:.2f} ms, max {max(times):.2f} ms")


if __name__ == "__main__":
    main()
