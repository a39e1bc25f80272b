"""Command-line parsing shared by the kp3d commands: repeated options must accumulate."""

import argparse

import pytest

from kp3d_ros.ros import run as node_run
from kp3d_ros.train import evaluate, stage1, stage2


@pytest.mark.parametrize(("module", "required"), [(stage2, []), (node_run, []),
                                                (evaluate, ["--model", "m.onnx", "--bag", "b.mcap"])])
def test_repeated_set_options_accumulate(module, required: list[str]) -> None:
    parser = argparse.ArgumentParser()
    module.add_arguments(parser)
    args = parser.parse_args([*required, "--set", "a=1", "b=2", "--set", "c=3"])
    assert args.set == ["a=1", "b=2", "c=3"]
    assert parser.parse_args(required).set == []


def test_stage1_init_and_lr_options() -> None:
    parser = argparse.ArgumentParser()
    stage1.add_arguments(parser)
    args = parser.parse_args(["--init", "models/kp3d_stage1.pt", "--lr", "5e-4"])
    assert args.init == "models/kp3d_stage1.pt" and args.lr == 5e-4
