"""`kp3d build-engine MODEL.onnx [--fp16] [--max-batch B] [--cache-dir DIR]`: build (or find) the cached
TensorRT engine for a model and exit."""

from __future__ import annotations

import argparse
import logging

from kp3d_ros.backends.tensorrt_backend import TensorRTBackend, TensorRTError, tensorrt_status


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", help="ONNX model written by `kp3d export`")
    parser.add_argument("--fp16", action="store_true", help="allow FP16 kernels")
    parser.add_argument("--max-batch", type=int, default=16, help="largest batch (people per call)")
    parser.add_argument("--cache-dir", help="engine cache directory (default ~/.cache/kp3d_ros/engines)")


def main(args: argparse.Namespace) -> int:
    ok, reason = tensorrt_status()
    if not ok:
        print(f"error: cannot build a TensorRT engine: {reason}")
        return 1
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        backend = TensorRTBackend(args.model, args.max_batch, args.fp16, args.cache_dir)
    except (TensorRTError, FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}")
        return 1
    print(f"engine ready: {backend.engine_path} ({reason})")
    return 0
