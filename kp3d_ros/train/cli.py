"""`kp3d train stage1|stage2 ...`: dispatch to the stage's module (imported only when used)."""

from __future__ import annotations

import argparse
import importlib

STAGES = {
    "stage1": ("kp3d_ros.train.stage1", "supervised warm-up on synthetic people"),
    "stage2": ("kp3d_ros.train.stage2", "unsupervised refinement on unlabelled sequences"),
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("stage", choices=sorted(STAGES), help="; ".join(f"{k}: {v[1]}" for k, v in STAGES.items()))
    parser.add_argument("stage_args", nargs=argparse.REMAINDER, help="arguments of the stage (see --help of it)")


def main(args: argparse.Namespace) -> int:
    module_name, help_text = STAGES[args.stage]
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        print(f"error: {args.stage} is not available ({exc})")
        return 1
    parser = argparse.ArgumentParser(prog=f"kp3d train {args.stage}", description=help_text)
    module.add_arguments(parser)
    return int(module.main(parser.parse_args(args.stage_args)) or 0)
