"""`kp3d`: one command line for the project's tools.

Each subcommand lives in its own module exposing ``add_arguments(parser)`` and ``main(args) -> int``;
modules are imported only when their subcommand runs, so `kp3d --help` stays fast and a tool that
needs ROS does not load it for the others.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# name -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "synth": ("kp3d_ros.synth.cli", "generate a sharded synthetic data set of labelled LiDAR people"),
    "synth-bag": ("kp3d_ros.synth.bag", "write a ROS 2 bag (MCAP) of a synthetic scene with ground truth"),
    "train": ("kp3d_ros.train.cli", "train the network: stage1 (synthetic, supervised) or stage2 (unlabelled)"),
    "eval": ("kp3d_ros.train.evaluate", "evaluate a model on a data set or on a bag with ground truth"),
    "export": ("kp3d_ros.model.export", "export a torch checkpoint to ONNX, checked against torch"),
    "build-engine": ("kp3d_ros.backends.tensorrt_cli", "build the TensorRT engine for an ONNX model and exit"),
    "bench": ("kp3d_ros.bench", "latency per stage and end to end, per backend"),
    "infer": ("kp3d_ros.infer", "run the pipeline core over a bag without ROS transport, to JSON lines"),
    "replay": ("kp3d_ros.ros.replay", "publish a ROS 2 bag with its original timing"),
    "run": ("kp3d_ros.ros.run", "the node (and optionally replay) in one process, like the launch file"),
    "demo": ("kp3d_ros.demo", "the built-in demo: a synthetic bag through the real ROS 2 node"),
    "flow-bench": ("kp3d_ros.flow_bench", "scene flow accuracy and runtime against ground truth"),
}


def build_parser() -> tuple[argparse.ArgumentParser, argparse._SubParsersAction]:
    parser = argparse.ArgumentParser(prog="kp3d", description="3D human keypoints from LiDAR.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (_, help_text) in COMMANDS.items():
        sub.add_parser(name, help=help_text, add_help=False)
    return parser, sub


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser, _ = build_parser()
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        parser.print_help()
        return 0 if not argv or argv[0] in ("-h", "--help") else 2
    name, rest = argv[0], argv[1:]
    module = importlib.import_module(COMMANDS[name][0])
    sub_parser = argparse.ArgumentParser(prog=f"kp3d {name}", description=COMMANDS[name][1])
    module.add_arguments(sub_parser)
    args = sub_parser.parse_args(rest)
    return int(module.main(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
