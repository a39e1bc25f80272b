"""Start-up faults of `kp3d_node` and `kp3d run`, as real commands: one clear line, a non-zero exit, no traceback."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("rclpy")

pytestmark = pytest.mark.ros
ROOT = Path(__file__).resolve().parents[1]
NODE = [sys.executable, "-m", "kp3d_ros.ros.node"]
RUN = [sys.executable, "-m", "kp3d_ros.cli", "run"]


@pytest.fixture(scope="module")
def bad_models(tmp_path_factory) -> dict[str, Path]:
    """A truncated copy of the shipped model, an empty file and random bytes, all named .onnx."""
    folder = tmp_path_factory.mktemp("models")
    shipped = (ROOT / "models" / "kp3d_stage1.onnx").read_bytes()
    files = {"truncated": shipped[: len(shipped) // 3], "empty": b"",
             "random": bytes(range(256)) * 40 + b"\x07\x12\xff" * 100}
    for name, data in files.items():
        (folder / f"{name}.onnx").write_bytes(data)
    return {name: folder / f"{name}.onnx" for name in files}


def run_command(command: list[str]) -> tuple[int, list[str]]:
    """Exit code and the output lines (stdout and stderr) that are not ROS INFO/DEBUG log lines."""
    done = subprocess.run(command, capture_output=True, text=True, timeout=120, cwd=ROOT)
    lines = [line for line in (done.stdout + done.stderr).splitlines()
             if line.strip() and "[INFO]" not in line and "[DEBUG]" not in line]
    return done.returncode, lines


def assert_one_line(command: list[str], *expected: str) -> str:
    code, lines = run_command(command)
    output = "\n".join(lines)
    assert code != 0, output
    assert "Traceback" not in output, output
    assert len(lines) == 1, output
    for text in expected:
        assert text in lines[0], output
    return lines[0]


@pytest.mark.parametrize("kind", ["truncated", "empty", "random"])
def test_broken_model_through_the_node(bad_models, kind):
    line = assert_one_line([*NODE, "--ros-args", "-p", f"network.model_path:={bad_models[kind]}",
                            "-p", "network.backend:=onnxruntime"], "kp3d_node: cannot start", str(bad_models[kind]))
    assert "not a usable ONNX model" in line


@pytest.mark.parametrize("kind", ["truncated", "empty", "random"])
def test_broken_model_through_kp3d_run(bad_models, kind):
    assert_one_line([*RUN, "--set", f"network.model_path={bad_models[kind]}", "network.backend=onnxruntime",
                     "--duration", "1"], "not a usable ONNX model", str(bad_models[kind]))


def test_missing_params_file(tmp_path):
    missing = tmp_path / "missing.yaml"
    assert_one_line([*NODE, "--ros-args", "--params-file", str(missing)], "parameter file not found", str(missing))
    assert_one_line([*RUN, "--params", str(missing)], "not found", str(missing))


def test_unparsable_params_file_and_argument(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("kp3d_node: [1, 2\n")
    assert_one_line([*NODE, "--ros-args", "--params-file", str(bad)], "cannot initialise ROS", str(bad))
    assert_one_line([*NODE, "--ros-args", "-p", "roi.max_range"], "cannot initialise ROS", "roi.max_range")


def test_non_finite_list_parameter_at_start_up():
    assert_one_line([*NODE, "--ros-args", "-p", "camera.extrinsics:=[0.0,0.0,.nan,0.0,0.0,0.0]"],
                    "invalid parameters", "camera.extrinsics", "finite")
    assert_one_line([*RUN, "--set", "camera.extrinsics=[0, 0, 0, .inf, 0, 0]", "--duration", "1"],
                    "invalid parameters", "camera.extrinsics", "finite")
