"""`kp3d build-engine MODEL.onnx [--fp16 | --no-fp16] [--max-batch B] [--cache-dir DIR] [--device I]
[--check refuse|warn]`: build (or find) the cached TensorRT engine for a model and exit.

The defaults are the node's (network.fp16, network.max_people, network.engine_cache_dir), so an engine
built with them is the one the node looks up; the node itself can do the same with network.build_only.
"""

from __future__ import annotations

import argparse
import logging

from kp3d_ros.backends.tensorrt_backend import (
    CHECK_POLICIES,
    KEYPOINT_TOLERANCE,
    LOGIT_TOLERANCE,
    TensorRTBackend,
    TensorRTError,
    tensorrt_status,
)
from kp3d_ros.core.params import defaults


def add_arguments(parser: argparse.ArgumentParser) -> None:
    node = defaults()
    parser.add_argument("model", help="ONNX model written by `kp3d export`")
    parser.add_argument("--fp16", action=argparse.BooleanOptionalAction, default=node["network.fp16"],
                        help="allow FP16 kernels (default: network.fp16 = %(default)s)")
    parser.add_argument("--max-batch", type=int, default=node["network.max_people"],
                        help="largest batch, people per call (default: network.max_people = %(default)s)")
    parser.add_argument("--cache-dir", default=node["network.engine_cache_dir"] or None,
                        help="engine cache directory (default: network.engine_cache_dir; empty: "
                             "$XDG_CACHE_HOME/kp3d_ros/engines, or ~/.cache/kp3d_ros/engines)")
    parser.add_argument("--device", type=int, default=None, help="CUDA device index (default: torch's current device)")
    parser.add_argument("--check", choices=CHECK_POLICIES, default="refuse",
                        help=f"a new engine beyond {KEYPOINT_TOLERANCE:g} (keypoints) / {LOGIT_TOLERANCE:g} (logits) "
                             "of ONNX Runtime on CPU: refuse it, or warn and keep it (default: %(default)s)")


def main(args: argparse.Namespace) -> int:
    ok, reason = tensorrt_status(args.device)
    if not ok:
        print(f"error: cannot build a TensorRT engine: {reason}")
        return 1
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        backend = TensorRTBackend(args.model, args.max_batch, args.fp16, args.cache_dir, device=args.device,
                                  check=args.check)
    except (TensorRTError, FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}")
        return 1
    source = "loaded from the cache" if backend.engine_source == "cache" else "built"
    check = backend.build_check
    checked = (f"; vs ONNX Runtime on CPU: keypoints {check['keypoints']:.2g}, logits {check['logits']:.2g}"
               if check else "")
    print(f"engine ready: {backend.engine_path} ({source}, {backend.settings.precision}{checked}; {reason})")
    return 0
