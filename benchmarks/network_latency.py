"""Network latency: ONNX Runtime per person at several batch sizes, and torch eager vs ONNX Runtime.

Run: .venv/bin/python benchmarks/network_latency.py [--model models/kp3d_poses_large.onnx] [--threads 1]
Prints a markdown table (copied into benchmarks/results/network.md).
"""

from __future__ import annotations

import argparse
import os
import platform
import time

import numpy as np
import torch

from kp3d_ros.backends.factory import default_model_path
from kp3d_ros.backends.onnxruntime_backend import OnnxRuntimeBackend
from kp3d_ros.backends.torch_backend import TorchBackend


def median_ms(fn, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return 1000 * float(np.median(times))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default=str(default_model_path()), help="ONNX model (default: the shipped one)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=30)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    ort_backend = OnnxRuntimeBackend(args.model, max_batch=32, threads=args.threads)
    torch_backend = TorchBackend(args.model.replace(".onnx", ".pt"), max_batch=32)
    rng = np.random.default_rng(0)
    print(f"CPU: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, threads={args.threads}, "
          f"N={ort_backend.num_points}, median of {args.repeats}\n")
    print("| batch | ORT ms/batch | ORT ms/person | torch ms/batch | torch / ORT |")
    print("|---|---|---|---|---|")
    for batch in (1, 8, 20):
        x = (rng.normal(size=(batch, ort_backend.num_points, 3)) * 0.3).astype(np.float32)
        ort_ms = median_ms(lambda x=x: ort_backend.infer(x), args.repeats)
        torch_ms = median_ms(lambda x=x: torch_backend.infer(x), args.repeats)
        print(f"| {batch} | {ort_ms:.2f} | {ort_ms / batch:.2f} | {torch_ms:.2f} | {torch_ms / ort_ms:.2f} |")


if __name__ == "__main__":
    main()
