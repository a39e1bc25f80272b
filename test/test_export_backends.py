"""ONNX export parity and the backend contract on ONNX Runtime and torch."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from kp3d_ros.backends.factory import create_backend, default_model_path
from kp3d_ros.backends.onnxruntime_backend import OnnxRuntimeBackend
from kp3d_ros.backends.torch_backend import TorchBackend
from kp3d_ros.cli import main as kp3d_main
from kp3d_ros.model.checkpoint import save_checkpoint
from kp3d_ros.model.export import check_parity, export_onnx_bytes, read_metadata
from kp3d_ros.model.network import build_model
from kp3d_ros.skeleton import JOINT_NAMES, NUM_CLASSES

N = 64


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    torch.manual_seed(0)
    model = build_model({"dim": 32, "depth": 1, "heads": 2}).eval()
    root = tmp_path_factory.mktemp("model")
    ckpt, onnx_path = root / "m.pt", root / "m.onnx"
    save_checkpoint(ckpt, model, {"num_points": N})
    assert kp3d_main(["export", str(ckpt), "--out", str(onnx_path)]) == 0
    return model, ckpt, onnx_path


def crops(batch: int, seed: int = 0) -> np.ndarray:
    return (np.random.default_rng(seed).normal(size=(batch, N, 3)) * 0.3).astype(np.float32)


def test_export_metadata(exported):
    _, _, onnx_path = exported
    meta = read_metadata(onnx_path)
    assert int(meta["num_points"]) == N and int(meta["opset"]) >= 17
    assert json.loads(meta["joint_names"]) == list(JOINT_NAMES)
    assert len(json.loads(meta["part_names"])) == NUM_CLASSES
    assert len(meta["weights_sha256"]) == 64 and "mean" in meta["centre_rule"]


def test_parity_check_fails_on_a_wrong_graph(exported):
    model, _, _ = exported
    other = build_model({"dim": 32, "depth": 1, "heads": 2})
    data = export_onnx_bytes(other, N)
    assert check_parity(other, data, N) < 1e-4
    with pytest.raises(RuntimeError, match="differs from torch"):
        check_parity(model, data, N)


def test_export_cli_reports_missing_checkpoint(tmp_path, capsys):
    assert kp3d_main(["export", str(tmp_path / "none.pt"), "--out", str(tmp_path / "x.onnx")]) == 1
    assert "not found" in capsys.readouterr().out


def test_onnxruntime_matches_torch_and_splits_batches(exported):
    _, ckpt, onnx_path = exported
    ort_backend = OnnxRuntimeBackend(onnx_path, max_batch=4, threads=1)
    torch_backend = TorchBackend(ckpt, max_batch=4)
    assert ort_backend.num_points == N == torch_backend.num_points
    x = crops(10)
    a, b = ort_backend.infer_all(x), torch_backend.infer_all(x)
    assert a.keypoints.shape == (10, 14, 3) and a.logits.shape == (10, N, NUM_CLASSES)
    np.testing.assert_allclose(a.keypoints, b.keypoints, atol=1e-4)
    np.testing.assert_allclose(a.logits, b.logits, atol=1e-4)
    np.testing.assert_allclose(ort_backend.infer(x[4:8]).keypoints, a.keypoints[4:8], atol=1e-5)
    with pytest.raises(ValueError, match=r"outside 1\.\.4"):
        ort_backend.infer(x[:5])
    with pytest.raises(ValueError, match="shape"):
        ort_backend.infer(x[:, :10])


def test_update_weights_changes_outputs(exported):
    _, ckpt, onnx_path = exported
    ort_backend = OnnxRuntimeBackend(onnx_path, max_batch=2)
    torch_backend = TorchBackend(ckpt, max_batch=2)
    x = crops(2, seed=3)
    before = ort_backend.infer(x).keypoints
    new_state = {k: v + 0.05 * torch.randn_like(v) for k, v in torch_backend.model.state_dict().items()}
    ort_backend.update_weights(new_state)
    torch_backend.update_weights(new_state)
    after = ort_backend.infer(x).keypoints
    assert np.abs(after - before).max() > 1e-3
    np.testing.assert_allclose(after, torch_backend.infer(x).keypoints, atol=1e-4)


def test_update_weights_puts_any_weights_into_the_same_graph_and_refuses_others(exported):
    """The weight template takes equal-valued tensors too (a fresh model's LayerNorms, which an export would
    share as one initializer); wrong names or shapes are a clear error and the running session stays."""
    _, ckpt, onnx_path = exported
    ort_backend = OnnxRuntimeBackend(onnx_path, max_batch=2)
    torch_backend = TorchBackend(ckpt, max_batch=2)
    x = crops(2, seed=4)
    torch.manual_seed(1)
    fresh = build_model({"dim": 32, "depth": 1, "heads": 2}).state_dict()
    ort_backend.update_weights(fresh)
    torch_backend.update_weights(fresh)
    np.testing.assert_allclose(ort_backend.infer(x).keypoints, torch_backend.infer(x).keypoints, atol=1e-4)
    assert read_metadata(onnx_path)["weights_sha256"] != ort_backend.metadata["weights_sha256"]
    before = ort_backend.infer(x).keypoints
    with pytest.raises(ValueError, match="do not match the graph"):
        ort_backend.update_weights({k: v for k, v in fresh.items() if not k.startswith("embed")})
    with pytest.raises(ValueError, match="shape"):
        ort_backend.update_weights({k: (v[:1] if k == "norm.weight" else v) for k, v in fresh.items()})
    np.testing.assert_array_equal(ort_backend.infer(x).keypoints, before)


def test_factory_falls_back_to_onnxruntime_with_a_reason(exported):
    _, _, onnx_path = exported
    backend, reason = create_backend("auto", onnx_path, max_batch=3)
    try:
        import tensorrt  # noqa: F401

        pytest.skip("tensorrt is installed here")
    except ImportError:
        pass
    assert isinstance(backend, OnnxRuntimeBackend) and backend.max_batch == 3
    assert "ONNX Runtime" in reason and "tensorrt is not installed" in reason
    torch_backend, reason = create_backend("torch", onnx_path)  # finds the .pt next to the .onnx
    assert isinstance(torch_backend, TorchBackend) and "torch" in reason
    with pytest.raises(ValueError, match="unknown backend"):
        create_backend("cuda", onnx_path)


def test_missing_model_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="not found"):
        OnnxRuntimeBackend(tmp_path / "nope.onnx")


def test_shipped_model_is_found_and_runs():
    path = default_model_path()
    backend = OnnxRuntimeBackend(path, max_batch=2)
    backend.warm_up()
    out = backend.infer(np.zeros((2, backend.num_points, 3), np.float32))
    assert np.isfinite(out.keypoints).all()


def test_evaluation_summary_on_a_toy_dataset(exported):
    from kp3d_ros.train.evaluate import predict_dataset, summarise, to_markdown

    _, ckpt, _ = exported
    rng = np.random.default_rng(5)
    data = []
    for m in (30, 150, 0, 90):
        pts = (rng.normal(size=(m, 3)) * 0.3 + [6.0, 1.0, -1.0]).astype(np.float32)
        data.append({"points": pts, "parts": rng.integers(0, NUM_CLASSES, m), "distance": 6.1,
                     "joints": (rng.normal(size=(14, 3)) * 0.3 + [6.0, 1.0, -1.0]).astype(np.float32),
                     "num_person_points": m, "preset": "hdl64e"})
    backend = TorchBackend(ckpt, max_batch=2)
    pred = predict_dataset(backend, data, np.arange(len(data)), batch=2)
    assert pred["pred"].shape == (3, 14, 3)  # the empty sample is skipped
    assert pred["conf"].sum() == 30 + 150 + 90  # every original point scored
    summary = summarise(pred)
    assert summary["overall"]["people"] == 3 and summary["ge100_points"]["people"] == 1
    assert [r["count"] for r in summary["by_points"]][:5] == [0, 1, 1, 1, 0]
    assert "| all | 3 |" in to_markdown(summary)
