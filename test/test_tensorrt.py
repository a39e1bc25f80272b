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
