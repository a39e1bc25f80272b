"""TensorRT backend: cache keys and fallbacks everywhere; engine execution only with TensorRT and a GPU."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

from kp3d_ros.backends import tensorrt_backend as trtb
from kp3d_ros.cli import main as kp3d_main

HAS_TRT = importlib.util.find_spec("tensorrt") is not None

BASE = {"onnx_sha256": "a" * 64, "trt_version": "10.3.0", "gpu_name": "NVIDIA A2", "precision": "fp16",
        "max_batch": 16}


@pytest.mark.parametrize("field,value", [("onnx_sha256", "b" * 64), ("trt_version", "10.4.0"),
                                         ("gpu_name", "Orin"), ("precision", "fp32"), ("max_batch", 8)])
def test_cache_key_changes_with_each_component(field, value):
    assert trtb.engine_cache_key(**BASE) == trtb.engine_cache_key(**BASE)
    assert trtb.engine_cache_key(**(BASE | {field: value})) != trtb.engine_cache_key(**BASE)


def test_cache_path(tmp_path, monkeypatch):
    key = trtb.engine_cache_key(**BASE)
    assert trtb.engine_cache_path(tmp_path, "models/kp3d_stage1.onnx", key) == tmp_path / f"kp3d_stage1-{key}.engine"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert trtb.default_cache_dir() == tmp_path / "kp3d_ros" / "engines"


def test_file_sha256(tmp_path):
    f = tmp_path / "x"
    f.write_bytes(b"abc")
    assert trtb.file_sha256(f) == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"


@pytest.mark.skipif(HAS_TRT, reason="tensorrt is installed")
def test_without_tensorrt_errors_are_clear(capsys):
    ok, reason = trtb.tensorrt_status()
    assert not ok and "tensorrt is not installed" in reason
    with pytest.raises(trtb.TensorRTError, match="unavailable"):
        trtb.TensorRTBackend("models/kp3d_stage1.onnx")
    with pytest.raises(trtb.TensorRTError, match="not installed"):
        trtb.build_serialized_engine(b"", 256, 4, True)
    assert kp3d_main(["build-engine", "models/kp3d_stage1.onnx"]) == 1
    assert "tensorrt is not installed" in capsys.readouterr().out


def _gpu_ready() -> bool:
    return trtb.tensorrt_status()[0]


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_TRT or not _gpu_ready(), reason="needs tensorrt and a CUDA GPU")
def test_engine_matches_onnxruntime_and_caches(tmp_path):
    from kp3d_ros.backends.onnxruntime_backend import OnnxRuntimeBackend

    model = Path(__file__).resolve().parents[1] / "models" / "kp3d_stage1.onnx"
    backend = trtb.TensorRTBackend(model, max_batch=4, fp16=False, cache_dir=tmp_path)
    assert backend.engine_path.is_file()
    reference = OnnxRuntimeBackend(model, max_batch=4)
    x = (np.random.default_rng(0).normal(size=(3, backend.num_points, 3)) * 0.3).astype(np.float32)
    np.testing.assert_allclose(backend.infer(x).keypoints, reference.infer(x).keypoints, atol=2e-3)
    again = trtb.TensorRTBackend(model, max_batch=4, fp16=False, cache_dir=tmp_path)
    assert again.engine_path == backend.engine_path


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_TRT or not _gpu_ready(), reason="needs tensorrt and a CUDA GPU")
def test_refit_follows_new_weights_like_onnxruntime(tmp_path):
    import torch

    from kp3d_ros.backends.onnxruntime_backend import OnnxRuntimeBackend
    from kp3d_ros.model.checkpoint import load_model

    model = Path(__file__).resolve().parents[1] / "models" / "kp3d_stage1.onnx"
    backend = trtb.TensorRTBackend(model, max_batch=4, fp16=False, cache_dir=tmp_path)
    assert backend.engine.refittable
    reference = OnnxRuntimeBackend(model, max_batch=4)
    net, _ = load_model(model.with_suffix(".pt"))
    torch.manual_seed(0)
    state = {k: v + 0.02 * torch.randn_like(v) if v.is_floating_point() else v for k, v in net.state_dict().items()}
    x = (np.random.default_rng(1).normal(size=(2, backend.num_points, 3)) * 0.3).astype(np.float32)
    before = backend.infer(x).keypoints
    backend.update_weights(state)
    reference.update_weights(state)
    after = backend.infer(x).keypoints
    assert np.abs(after - before).max() > 1e-3
    np.testing.assert_allclose(after, reference.infer(x).keypoints, atol=2e-3)


# --- the node's defaults are the engine's defaults -----------------------------------------------------------


def test_engine_defaults_are_the_node_defaults():
    import argparse
    import inspect

    from kp3d_ros.backends import factory, tensorrt_cli
    from kp3d_ros.core.params import defaults

    node = defaults()
    create = inspect.signature(factory.create_backend).parameters
    assert create["max_batch"].default == node["network.max_people"]
    assert create["fp16"].default == node["network.fp16"]
    assert create["threads"].default == node["network.threads"]
    backend = inspect.signature(trtb.TensorRTBackend).parameters
    assert backend["max_batch"].default == node["network.max_people"]
    assert backend["fp16"].default == node["network.fp16"]
    parser = argparse.ArgumentParser()
    tensorrt_cli.add_arguments(parser)
    args = parser.parse_args(["m.onnx"])
    assert args.max_batch == node["network.max_people"] and args.fp16 == node["network.fp16"]
    assert args.cache_dir == (node["network.engine_cache_dir"] or None)
    assert parser.parse_args(["m.onnx", "--fp16"]).fp16 and not parser.parse_args(["m.onnx", "--no-fp16"]).fp16


def test_default_cache_dir_without_xdg(tmp_path, monkeypatch):
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert trtb.default_cache_dir() == tmp_path / ".cache" / "kp3d_ros" / "engines"


# --- network.build_only without TensorRT ---------------------------------------------------------------------


@pytest.mark.parametrize("backend", ["onnxruntime", "torch"])
def test_build_only_has_nothing_to_build_for_other_backends(backend):
    from kp3d_ros.backends.factory import build_engine_only

    assert "nothing to do" in build_engine_only({"network.backend": backend, "network.build_only": True})


@pytest.mark.skipif(HAS_TRT, reason="tensorrt is installed")
def test_build_only_without_tensorrt():
    from kp3d_ros.backends.factory import build_engine_only

    message = build_engine_only({"network.backend": "auto"})
    assert "no TensorRT engine to build" in message and "tensorrt is not installed" in message
    with pytest.raises(trtb.TensorRTError, match="unavailable"):
        build_engine_only({"network.backend": "tensorrt"})


# --- the engine build against a stand-in for the TensorRT 10 Python API ---------------------------------------


def _fake_tensorrt(parse_ok: bool = True, build_ok: bool = True, inputs=("points",), has_fp16: bool = True):
    """A minimal module with the TensorRT 10 calls build_serialized_engine makes; it records them."""
    import types

    calls: list = []
    trt = types.ModuleType("tensorrt")
    trt.__version__ = "10.0.0-fake"
    trt.calls = calls

    class Logger:
        WARNING = "warning"

        def __init__(self, level):
            self.level = level

    class Network:
        num_inputs = len(inputs)

        def get_input(self, index):
            return types.SimpleNamespace(name=inputs[index])

    class OnnxParser:
        def __init__(self, network, logger):
            self.num_errors = 0 if parse_ok else 1

        def parse(self, data):
            calls.append(("parse", bytes(data)))
            return parse_ok

        def get_error(self, index):
            return "In node 3 (Foo): UNSUPPORTED_NODE"

    class Profile:
        def set_shape(self, name, lo, opt, hi):
            if not all(a <= b <= c for a, b, c in zip(lo, opt, hi, strict=True)):
                raise RuntimeError("Shape provided for min is inconsistent with other shapes.")
            calls.append(("set_shape", name, tuple(lo), tuple(opt), tuple(hi)))

    class Config:
        def set_memory_pool_limit(self, pool, size):
            calls.append(("pool", pool, size))

        def set_flag(self, flag):
            calls.append(("flag", flag))

        def add_optimization_profile(self, profile):
            return 0

    class Builder:
        def __init__(self, logger):
            self.logger = logger

        def create_network(self, flags=0):
            calls.append(("create_network", flags))
            return Network()

        def create_builder_config(self):
            return Config()

        def create_optimization_profile(self):
            return Profile()

        def build_serialized_network(self, network, config):
            return b"serialized engine" if build_ok else None

    trt.Logger, trt.Builder, trt.OnnxParser = Logger, Builder, OnnxParser
    flags = {"REFIT": "REFIT"} | ({"FP16": "FP16"} if has_fp16 else {})
    trt.BuilderFlag = types.SimpleNamespace(**flags)
    trt.MemoryPoolType = types.SimpleNamespace(WORKSPACE="WORKSPACE")
    return trt


@pytest.fixture
def fake_trt(monkeypatch):
    def install(**kwargs):
        trt = _fake_tensorrt(**kwargs)
        monkeypatch.setitem(__import__("sys").modules, "tensorrt", trt)
        monkeypatch.setattr(trtb, "_TRT_LOGGER", None)
        return trt
    return install


def test_build_makes_a_refittable_explicit_batch_engine_with_a_batch_profile(fake_trt):
    trt = fake_trt()
    assert trtb.build_serialized_engine(b"onnx", 128, 20, fp16=True) == b"serialized engine"
    assert ("create_network", 0) in trt.calls and ("parse", b"onnx") in trt.calls
    assert ("flag", "REFIT") in trt.calls and ("flag", "FP16") in trt.calls
    assert ("set_shape", "points", (1, 128, 3), (8, 128, 3), (20, 128, 3)) in trt.calls
    trt = fake_trt()
    trtb.build_serialized_engine(b"onnx", 64, 1, fp16=False)
    assert ("flag", "FP16") not in trt.calls
    assert ("set_shape", "points", (1, 64, 3), (1, 64, 3), (1, 64, 3)) in trt.calls


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"parse_ok": False}, "could not parse the ONNX model: In node 3"),
    ({"build_ok": False}, "failed to build the engine"),
    ({"inputs": ("x",)}, "inputs are"),
    ({"has_fp16": False}, "no BuilderFlag.FP16"),
])
def test_a_failed_build_is_a_clear_error(fake_trt, kwargs, match):
    fake_trt(**kwargs)
    with pytest.raises(trtb.TensorRTError, match=match):
        trtb.build_serialized_engine(b"onnx", 128, 4, fp16=True)


def test_a_zero_batch_limit_is_a_clear_error(fake_trt):
    fake_trt()
    with pytest.raises(trtb.TensorRTError, match="max_batch must be >= 1"):
        trtb.build_serialized_engine(b"onnx", 128, 0, fp16=False)
