"""TensorRT backend: cache keys and fallbacks everywhere; engine execution only with TensorRT and a GPU."""

from __future__ import annotations

import contextlib
import importlib.util
import sys
import types
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from kp3d_ros.backends import tensorrt_backend as trtb
from kp3d_ros.cli import main as kp3d_main

HAS_TRT = importlib.util.find_spec("tensorrt") is not None

DEVICE = trtb.DeviceInfo(index=0, name="Orin", compute_capability="8.7", sm_count=16)
SETTINGS = trtb.build_settings(num_points=128, max_batch=16, fp16=True)
BASE = {"onnx_sha256": "a" * 64, "trt_version": "10.3.0", "device": DEVICE, "settings": SETTINGS}
ROOT = Path(__file__).resolve().parents[1]
SHIPPED = ROOT / "models" / "kp3d_stage1.onnx"


@pytest.mark.parametrize("field,value", [
    ("onnx_sha256", "b" * 64), ("trt_version", "10.4.0"),
    ("device", replace(DEVICE, name="NVIDIA A2")),
    ("device", replace(DEVICE, sm_count=8)),  # Orin NX vs AGX Orin: same name, same capability
    ("device", replace(DEVICE, compute_capability="8.6")),
    ("device", replace(DEVICE, index=1)),
    ("settings", replace(SETTINGS, fp16=False, flags=("REFIT",))),
    ("settings", replace(SETTINGS, max_batch=8)),
    ("settings", replace(SETTINGS, opt_batch=4)),
    ("settings", replace(SETTINGS, workspace_bytes=2 << 30)),
    ("settings", replace(SETTINGS, flags=("REFIT", "FP16", "SPARSE_WEIGHTS"))),
])
def test_cache_key_changes_with_each_component(field, value):
    assert trtb.engine_cache_key(**BASE) == trtb.engine_cache_key(**BASE)
    assert trtb.engine_cache_key(**(BASE | {field: value})) != trtb.engine_cache_key(**BASE)


def test_cache_key_fields():
    fields = trtb.engine_cache_fields(**BASE)
    assert fields == {"onnx_sha256": "a" * 64, "tensorrt": "10.3.0", "gpu": "Orin", "compute_capability": "8.7",
                      "sm_count": 16, "device": 0, "precision": "fp16", "max_batch": 16,
                      "build": SETTINGS.fingerprint()}
    assert SETTINGS.profile() == ((1, 128, 3), (8, 128, 3), (16, 128, 3))
    assert SETTINGS.flags == ("REFIT", "FP16") and trtb.build_settings(128, 16, False).flags == ("REFIT",)
    assert SETTINGS.workspace_bytes == trtb.WORKSPACE_BYTES


def _fake_torch(current: int, count: int):
    """A stand-in for torch with just the torch.cuda queries cuda_device_info makes: no CUDA device can
    exist on the machines this suite runs on."""
    import types

    props = {i: types.SimpleNamespace(name=f"GPU {i}", major=8, minor=6 + i, multi_processor_count=10 * (i + 1))
             for i in range(count)}
    cuda = types.SimpleNamespace(current_device=lambda: current, device_count=lambda: count,
                                 get_device_properties=lambda i: props[i])
    return types.SimpleNamespace(cuda=cuda)


def test_the_cache_key_uses_the_device_actually_used():
    torch = _fake_torch(current=1, count=2)
    assert trtb.cuda_device_info(torch) == trtb.DeviceInfo(1, "GPU 1", "8.7", 20)  # current device, not 0
    assert trtb.cuda_device_info(torch, 0) == trtb.DeviceInfo(0, "GPU 0", "8.6", 10)
    with pytest.raises(trtb.TensorRTError, match="CUDA device 2 does not exist"):
        trtb.cuda_device_info(torch, 2)


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


needs_gpu = pytest.mark.skipif(not HAS_TRT or not _gpu_ready(), reason="needs tensorrt and a CUDA GPU")


def _cpu_reference(model: Path, max_batch: int = 4):
    """ONNX Runtime pinned to CPU: the reference must not itself run on the GPU (or through TensorRT)."""
    from kp3d_ros.backends.onnxruntime_backend import OnnxRuntimeBackend

    reference = OnnxRuntimeBackend(model, max_batch=max_batch, providers=["CPUExecutionProvider"])
    assert reference.active_providers == ["CPUExecutionProvider"]
    return reference


@pytest.fixture(scope="module")
def shared_engines(tmp_path_factory) -> Path:
    """One engine cache for the gpu tests that need no cold build (each build takes a while)."""
    return tmp_path_factory.mktemp("engines")


def _perturbed_state(scale: float = 0.02, seed: int = 0) -> dict:
    import torch

    from kp3d_ros.model.checkpoint import load_model

    net, _ = load_model(SHIPPED.with_suffix(".pt"))
    generator = torch.Generator().manual_seed(seed)
    return {k: v + scale * torch.randn(v.shape, generator=generator) if v.is_floating_point() else v
            for k, v in net.state_dict().items()}


@pytest.mark.gpu
@needs_gpu
def test_engine_matches_onnxruntime_and_caches(tmp_path):
    backend = trtb.TensorRTBackend(SHIPPED, max_batch=4, fp16=False, cache_dir=tmp_path)
    assert backend.engine_source == "built" and backend.engine_path.is_file()
    assert backend.build_check is not None and not trtb.tolerance_failures(backend.build_check)
    reference = _cpu_reference(SHIPPED)
    x = (np.random.default_rng(0).normal(size=(3, backend.num_points, 3)) * 0.3).astype(np.float32)
    np.testing.assert_allclose(backend.infer(x).keypoints, reference.infer(x).keypoints, atol=2e-3)
    written = backend.engine_path.stat().st_mtime_ns
    again = trtb.TensorRTBackend(SHIPPED, max_batch=4, fp16=False, cache_dir=tmp_path)
    # the second start loaded the plan: no build, no build-time check, the file untouched
    assert again.engine_path == backend.engine_path and again.engine_source == "cache"
    assert again.build_check is None and again.engine_path.stat().st_mtime_ns == written
    np.testing.assert_array_equal(again.infer(x).keypoints, backend.infer(x).keypoints)


@pytest.mark.gpu
@needs_gpu
def test_fp16_engine_is_within_tolerance_of_onnxruntime_on_cpu(tmp_path):
    backend = trtb.TensorRTBackend(SHIPPED, max_batch=8, fp16=True, cache_dir=tmp_path, check="refuse")
    assert backend.engine_source == "built" and backend.settings.flags == ("REFIT", "FP16")
    assert backend.build_check["keypoints"] <= trtb.KEYPOINT_TOLERANCE
    assert backend.build_check["logits"] <= trtb.LOGIT_TOLERANCE
    x = trtb.probe_batch(backend.num_points, 8, seed=5)  # another batch than the build-time check's
    diff = trtb.output_differences(backend.infer(x), _cpu_reference(SHIPPED, 8).infer(x))
    assert not trtb.tolerance_failures(diff), diff


@pytest.mark.gpu
@needs_gpu
def test_refit_follows_new_weights_like_onnxruntime(shared_engines):
    backend = trtb.TensorRTBackend(SHIPPED, max_batch=4, fp16=False, cache_dir=shared_engines)
    assert backend.engine.refittable
    reference = _cpu_reference(SHIPPED)
    state = _perturbed_state()
    x = (np.random.default_rng(1).normal(size=(2, backend.num_points, 3)) * 0.3).astype(np.float32)
    before, serving = backend.infer(x).keypoints, backend.engine
    backend.update_weights(state)
    reference.update_weights(state)
    after = backend.infer(x).keypoints
    assert backend.engine is not serving  # the refitted copy was swapped in
    assert not trtb.tolerance_failures(backend.last_refit["probe"]), backend.last_refit
    assert np.abs(after - before).max() > 1e-3
    np.testing.assert_allclose(after, reference.infer(x).keypoints, atol=2e-3)


@pytest.mark.gpu
@needs_gpu
def test_a_refit_whose_probe_fails_keeps_the_serving_engine(shared_engines):
    backend = trtb.TensorRTBackend(SHIPPED, max_batch=4, fp16=False, cache_dir=shared_engines)
    x = trtb.probe_batch(backend.num_points, 2, seed=3)
    before, serving = backend.infer(x), backend.engine
    state = _perturbed_state()
    state["vote_head.2.bias"] = state["vote_head.2.bias"] * float("nan")  # the probe cannot pass
    with pytest.raises(trtb.TensorRTError):  # the probe's "rolled back", or TensorRT refusing NaN weights
        backend.update_weights(state)
    assert backend.engine is serving
    np.testing.assert_array_equal(backend.infer(x).keypoints, before.keypoints)


@pytest.mark.gpu
@needs_gpu
def test_a_refit_does_not_stall_inference(shared_engines):
    import threading
    import time

    backend = trtb.TensorRTBackend(SHIPPED, max_batch=4, fp16=False, cache_dir=shared_engines)
    x = trtb.probe_batch(backend.num_points, 4)
    done, latencies = threading.Event(), []

    def perceive():
        while not done.is_set():
            start = time.perf_counter()
            backend.infer(x)
            latencies.append(time.perf_counter() - start)

    thread = threading.Thread(target=perceive)
    thread.start()
    try:
        backend.update_weights(_perturbed_state())
    finally:
        done.set()
        thread.join()
    assert len(latencies) > 10
    assert max(latencies) < 0.05, f"an inference took {max(latencies) * 1000:.1f} ms during the refit"


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
# TensorRT cannot be installed on the machines this suite runs on (no NVIDIA GPU, no CUDA), so these tests
# use a small fake `tensorrt` module with only the calls the backend makes; everything else is real.


def _fake_tensorrt(parse_ok: bool = True, build_ok: bool = True, inputs=("points",), has_fp16: bool = True,
                   version: str = "10.0.0-fake"):
    """A minimal module with the TensorRT 10 calls the backend makes; it records them."""
    calls: list = []
    trt = types.ModuleType("tensorrt")
    trt.__version__ = version
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
            calls.append(("build",))
            return b"serialized engine" if build_ok else None

    class Engine:
        """What deserialize_cuda_engine returns: the model's named float32 I/O tensors."""

        names = ("points", "keypoints", "logits")
        num_io_tensors = 3
        refittable = True

        def get_tensor_name(self, index):
            return self.names[index]

        def get_tensor_mode(self, name):
            return "input" if name == "points" else "output"

        def get_tensor_dtype(self, name):
            return "float"

        def create_execution_context(self):
            calls.append(("context",))
            return types.SimpleNamespace()

    class Runtime:
        def __init__(self, logger):
            self.logger = logger

        def deserialize_cuda_engine(self, plan):
            calls.append(("deserialize", bytes(plan)))
            return Engine() if bytes(plan) == b"serialized engine" else None

    trt.Logger, trt.Builder, trt.OnnxParser, trt.Runtime = Logger, Builder, OnnxParser, Runtime
    flags = {"REFIT": "REFIT"} | ({"FP16": "FP16"} if has_fp16 else {})
    trt.BuilderFlag = types.SimpleNamespace(**flags)
    trt.MemoryPoolType = types.SimpleNamespace(WORKSPACE="WORKSPACE")
    trt.TensorIOMode = types.SimpleNamespace(INPUT="input", OUTPUT="output")
    trt.DataType = types.SimpleNamespace(FLOAT="float")
    return trt


@pytest.fixture
def fake_trt(monkeypatch):
    def install(**kwargs):
        trt = _fake_tensorrt(**kwargs)
        monkeypatch.setitem(sys.modules, "tensorrt", trt)
        monkeypatch.setattr(trtb, "_TRT_LOGGER", None)
        return trt
    return install


def test_build_makes_a_refittable_explicit_batch_engine_with_a_batch_profile(fake_trt):
    trt = fake_trt()
    assert trtb.build_serialized_engine(b"onnx", 128, 20, fp16=True) == b"serialized engine"
    assert ("create_network", 0) in trt.calls and ("parse", b"onnx") in trt.calls
    assert ("flag", "REFIT") in trt.calls and ("flag", "FP16") in trt.calls
    assert ("set_shape", "points", (1, 128, 3), (8, 128, 3), (20, 128, 3)) in trt.calls
    assert ("pool", "WORKSPACE", trtb.WORKSPACE_BYTES) in trt.calls
    trt = fake_trt()
    trtb.build_serialized_engine(b"onnx", 64, 1, fp16=False)
    assert ("flag", "FP16") not in trt.calls
    assert ("set_shape", "points", (1, 64, 3), (1, 64, 3), (1, 64, 3)) in trt.calls


def test_the_build_uses_the_settings_the_cache_key_fingerprints(fake_trt):
    for fp16, max_batch in ((True, 20), (False, 3)):
        trt = fake_trt()
        trtb.build_serialized_engine(b"onnx", 96, max_batch, fp16=fp16)
        settings = trtb.build_settings(96, max_batch, fp16)
        assert [c[1] for c in trt.calls if c[0] == "flag"] == list(settings.flags)
        assert [c[2:] for c in trt.calls if c[0] == "set_shape"] == [settings.profile()]
        assert [c[2] for c in trt.calls if c[0] == "pool"] == [settings.workspace_bytes]


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"parse_ok": False}, "could not parse the ONNX model: In node 3"),
    ({"build_ok": False}, "failed to build the engine"),
    ({"inputs": ("x",)}, "inputs are"),
    ({"has_fp16": False}, "no BuilderFlag.FP16"),
    ({"version": "8.6.1"}, "too old: the TensorRT backend needs TensorRT 10"),
])
def test_a_failed_build_is_a_clear_error(fake_trt, kwargs, match):
    fake_trt(**kwargs)
    with pytest.raises(trtb.TensorRTError, match=match):
        trtb.build_serialized_engine(b"onnx", 128, 4, fp16=True)


def test_a_zero_batch_limit_is_a_clear_error(fake_trt):
    fake_trt()
    with pytest.raises(trtb.TensorRTError, match="max_batch must be >= 1"):
        trtb.build_serialized_engine(b"onnx", 128, 0, fp16=False)


# --- item 5: the TensorRT version ----------------------------------------------------------------------------


@pytest.mark.parametrize(("version", "ok"), [("10.0.0b6", True), ("10.3.0", True), ("10.13.3.9", True),
                                              ("11.0.0", True), ("8.6.1.post1", False), ("9.3.0", False),
                                              ("", False), ("unknown", False)])
def test_tensorrt_version_check(version, ok):
    usable, reason = trtb.check_tensorrt_version(version)
    assert usable is ok
    if not ok:
        assert "TensorRT 10" in reason


def test_tensorrt_8_is_refused_with_a_clear_reason(fake_trt):
    fake_trt(version="8.6.1")
    ok, reason = trtb.tensorrt_status()
    assert not ok and "tensorrt 8.6.1 is too old" in reason and "TensorRT 10 or later" in reason
    with pytest.raises(trtb.TensorRTError, match="too old"):
        trtb.TensorRTBackend(SHIPPED)


# --- items 6 and 8: the engine cache -------------------------------------------------------------------------


class _PlanRuntime:
    """Stands in for tensorrt.Runtime (TensorRT cannot be installed here): deserialises b"plan" only."""

    def __init__(self):
        self.loaded: list[bytes] = []

    def deserialize_cuda_engine(self, plan: bytes):
        self.loaded.append(plan)
        return types.SimpleNamespace(plan=plan) if plan == b"plan" else None


class _CountingBuild:
    def __init__(self):
        self.count = 0

    def __call__(self) -> bytes:
        self.count += 1
        return b"plan"


def test_a_cache_write_failure_warns_and_keeps_the_engine_in_memory(tmp_path, caplog):
    blocker = tmp_path / "not_a_directory"
    blocker.write_text("a file where the cache directory should be")
    path = blocker / "engines" / "m-key.engine"
    assert not trtb.write_cached_plan(path, b"plan")  # NotADirectoryError, an OSError: no exception
    assert "cannot write the TensorRT engine cache" in caplog.text and "kept in memory" in caplog.text
    build = _CountingBuild()
    engine, plan, source = trtb.load_or_build_engine(_PlanRuntime(), path, build)
    assert engine.plan == plan == b"plan" and source == "built" and build.count == 1
    assert not path.exists() and list(tmp_path.iterdir()) == [blocker]  # no temporary file left either


def test_the_second_start_loads_the_plan_instead_of_building(tmp_path):
    path, build = tmp_path / "engines" / "m-key.engine", _CountingBuild()
    first = trtb.load_or_build_engine(_PlanRuntime(), path, build)
    assert first[2] == "built" and build.count == 1 and path.read_bytes() == b"plan"
    second = trtb.load_or_build_engine(_PlanRuntime(), path, build)
    assert second[2] == "cache" and build.count == 1  # loaded, not rebuilt
    path.write_bytes(b"corrupt")
    third = trtb.load_or_build_engine(_PlanRuntime(), path, build)
    assert third[2] == "built" and build.count == 2 and path.read_bytes() == b"plan"


def test_a_refused_engine_is_not_cached(tmp_path):
    path = tmp_path / "m-key.engine"

    def refuse(engine):
        raise trtb.TensorRTError("the new fp16 engine differs from ONNX Runtime on CPU")

    with pytest.raises(trtb.TensorRTError, match="differs"):
        trtb.load_or_build_engine(_PlanRuntime(), path, _CountingBuild(), accept=refuse)
    assert not path.exists()


def test_tolerances():
    assert pytest.approx(0.005) == trtb.KEYPOINT_TOLERANCE  # 5 mm: network units are metres
    assert trtb.tolerance_failures({"keypoints": 1e-3, "logits": 2e-2}) == []
    assert len(trtb.tolerance_failures({"keypoints": 6e-3, "logits": 2e-2})) == 1
    assert len(trtb.tolerance_failures({"keypoints": float("nan"), "logits": 0.1})) == 2


# --- item 2: which weights a refit from a re-export gives the engine -----------------------------------------


@pytest.fixture(scope="module")
def shipped_checkpoint():
    from kp3d_ros.model.checkpoint import load_model
    from kp3d_ros.model.export import read_metadata

    model, meta = load_model(SHIPPED.with_suffix(".pt"))
    opset = int(read_metadata(SHIPPED)["opset"])
    return model, int(meta["num_points"]), opset


def _reexport(shipped_checkpoint, change=None) -> bytes:
    """The shipped checkpoint re-exported as the backend's refit does, optionally with changed weights."""
    import copy

    from kp3d_ros.model.export import export_onnx_bytes

    model, num_points, opset = shipped_checkpoint
    model = copy.deepcopy(model)
    if change:
        state = model.state_dict()
        change(state)
        model.load_state_dict(state)
    return export_onnx_bytes(model, num_points, opset=opset)


def test_a_reexport_names_its_initializers_like_the_shipped_onnx(shipped_checkpoint):
    shipped = trtb.onnx_initializers(SHIPPED)
    data = _reexport(shipped_checkpoint)
    assert set(trtb.onnx_initializers(data)) == set(shipped)
    assert sum(name.startswith("onnx::MatMul_") for name in shipped) == 18  # torch-numbered folded weights
    aligned = trtb.align_to_shipped(SHIPPED.read_bytes(), data)
    assert aligned.problems == [] and aligned.renamed == {}
    assert all(np.array_equal(aligned.weights[n], shipped[n]) for n in shipped)
    report = trtb.check_refit(shipped, aligned, refittable=list(shipped))
    assert report.ok and report.refit == sorted(shipped) and report.not_initializers == []


def test_adapted_weights_keep_the_initializer_names(shipped_checkpoint):
    import torch

    def adapt(state):
        generator = torch.Generator().manual_seed(0)
        for value in state.values():
            if value.is_floating_point():
                value.add_(0.01 * torch.randn(value.shape, generator=generator))

    shipped = trtb.onnx_initializers(SHIPPED)
    aligned = trtb.align_to_shipped(SHIPPED.read_bytes(), _reexport(shipped_checkpoint, adapt))
    assert aligned.problems == [] and aligned.renamed == {} and set(aligned.weights) == set(shipped)
    assert trtb.check_refit(shipped, aligned, refittable=list(shipped)).ok


def test_merged_equal_initializers_are_split_back_to_the_shipped_names(shipped_checkpoint):
    import onnxruntime as ort
    import torch

    def equal_norms(state):  # torch's eval-mode export merges initializers with equal values
        state["blocks.0.norm2.weight"].copy_(state["blocks.0.norm1.weight"])
        state["blocks.0.norm2.bias"].copy_(state["blocks.0.norm1.bias"])

    data = _reexport(shipped_checkpoint, equal_norms)
    shipped = trtb.onnx_initializers(SHIPPED)
    assert set(shipped) - set(trtb.onnx_initializers(data)) == {"blocks.0.norm2.weight", "blocks.0.norm2.bias"}
    aligned = trtb.align_to_shipped(SHIPPED.read_bytes(), data)
    assert aligned.problems == [] and set(aligned.weights) == set(shipped)
    assert set(trtb.onnx_initializers(aligned.onnx_bytes)) == set(shipped)
    np.testing.assert_array_equal(aligned.weights["blocks.0.norm2.weight"], aligned.weights["blocks.0.norm1.weight"])
    # the rewired graph still computes the changed network
    model, num_points, _ = shipped_checkpoint
    changed = __import__("copy").deepcopy(model)
    state = changed.state_dict()
    equal_norms(state)
    changed.load_state_dict(state)
    x = trtb.probe_batch(num_points, 2)
    session = ort.InferenceSession(aligned.onnx_bytes, providers=["CPUExecutionProvider"])
    keypoints, _ = session.run(None, {"points": x})
    with torch.no_grad():
        np.testing.assert_allclose(keypoints, changed(torch.from_numpy(x))[0].numpy(), atol=1e-4)


def test_torch_renumbered_initializers_are_renamed_to_the_shipped_names(shipped_checkpoint):
    import onnx

    proto = onnx.load_from_string(_reexport(shipped_checkpoint))
    for initializer in proto.graph.initializer:  # another torch version numbers its folded constants otherwise
        if initializer.name.startswith("onnx::MatMul_"):
            new = initializer.name.replace("onnx::MatMul_", "onnx::MatMul_9")
            for node in proto.graph.node:
                node.input[:] = [new if i == initializer.name else i for i in node.input]
            initializer.name = new
    aligned = trtb.align_to_shipped(SHIPPED.read_bytes(), proto.SerializeToString())
    assert aligned.problems == [] and len(aligned.renamed) == 18
    assert all(v == k.replace("onnx::MatMul_9", "onnx::MatMul_") for k, v in aligned.renamed.items())
    assert set(trtb.onnx_initializers(aligned.onnx_bytes)) == set(trtb.onnx_initializers(SHIPPED))


def test_another_architecture_cannot_refit_the_engine():
    from kp3d_ros.model.export import export_onnx_bytes
    from kp3d_ros.model.network import build_model

    other = export_onnx_bytes(build_model({"dim": 64, "depth": 2, "heads": 4, "mlp_ratio": 2}), 128)
    aligned = trtb.align_to_shipped(SHIPPED.read_bytes(), other)
    assert any("no counterpart in the re-export" in p for p in aligned.problems)
    assert not trtb.check_refit(trtb.onnx_initializers(SHIPPED), aligned, []).ok


def test_a_changed_weight_the_engine_cannot_refit_refuses_the_refit(shipped_checkpoint):
    shipped = trtb.onnx_initializers(SHIPPED)
    folded = [n for n in shipped if n != "calibration.scale"]  # as when TensorRT folds the calibration
    same = trtb.align_to_shipped(SHIPPED.read_bytes(), _reexport(shipped_checkpoint))
    assert trtb.check_refit(shipped, same, folded).ok  # unchanged factors: nothing is lost

    def new_factors(state):
        state["calibration.scale"].mul_(0.95)

    calibrated = trtb.align_to_shipped(SHIPPED.read_bytes(), _reexport(shipped_checkpoint, new_factors))
    report = trtb.check_refit(shipped, calibrated, folded)
    assert not report.ok and report.frozen_changed == ["calibration.scale"]
    assert "calibration.scale changed but the engine cannot refit it" in report.problems[0]
    extra = trtb.check_refit(shipped, same, [*shipped, "tmp_weight_1"])
    assert extra.ok and extra.not_initializers == ["tmp_weight_1"]


# --- item 5: backend auto falls back to ONNX Runtime on every TensorRT failure --------------------------------


def _break_import(tmp_path: Path, monkeypatch, error: str) -> None:
    """A `tensorrt` package whose import raises `error` (a broken install: missing libnvinfer, ...)."""
    package = tmp_path / "site" / "tensorrt"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text(f"raise {error}\n")
    monkeypatch.delitem(sys.modules, "tensorrt", raising=False)
    monkeypatch.syspath_prepend(str(tmp_path / "site"))


def _fake_cuda(monkeypatch) -> None:
    """torch here is the CPU build and no GPU exists: fake just the torch.cuda queries and the device context
    so that the backend gets past tensorrt_status into the (fake) TensorRT calls."""
    import torch

    props = types.SimpleNamespace(name="Fake GPU", major=8, minor=7, multi_processor_count=16)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda index: props)
    monkeypatch.setattr(torch.cuda, "device", lambda index: contextlib.nullcontext())


def _no_builder(trt):
    del trt.Builder  # AttributeError: module 'tensorrt' has no attribute 'Builder'


def _runtime_type_error(trt):
    def runtime(logger):
        raise TypeError("__init__(): incompatible constructor arguments")
    trt.Runtime = runtime


def _deserialize_raises(trt):
    def deserialize(self, plan):
        raise RuntimeError("Serialization assertion failed")
    trt.Runtime.deserialize_cuda_engine = deserialize


FAILURES = {
    "not installed": ("import", "ImportError('No module named tensorrt')", "not installed"),
    "missing libnvinfer": ("import", "OSError('libnvinfer.so.10: cannot open shared object file')",
                           "fails to import (OSError"),
    "half-initialised module": ("import", "AttributeError('partially initialized module')",
                                "fails to import (AttributeError"),
    "TensorRT 8": ("version", "8.6.1", "too old"),
    "no CUDA GPU": ("trt", None, "no CUDA GPU"),
    "missing Builder": ("cuda", _no_builder, "AttributeError"),
    "Runtime TypeError": ("cuda", _runtime_type_error, "TypeError"),
    "build fails": ("cuda", lambda trt: setattr(trt.Builder, "build_serialized_network", lambda *a: None),
                    "failed to build"),
    "deserialise raises": ("cuda", _deserialize_raises, "Serialization assertion"),
    # the whole fake build succeeds; then the CPU build of torch cannot make CUDA streams and buffers
    "no CUDA in torch": ("cuda", lambda trt: None, "TensorRT failed"),
}


@pytest.mark.parametrize("failure", list(FAILURES))
def test_auto_falls_back_to_onnxruntime_on_every_tensorrt_failure(failure, tmp_path, monkeypatch):
    from kp3d_ros.backends.factory import create_backend
    from kp3d_ros.backends.onnxruntime_backend import OnnxRuntimeBackend

    kind, detail, reason = FAILURES[failure]
    monkeypatch.setattr(trtb, "_TRT_LOGGER", None)
    if kind == "import":
        _break_import(tmp_path, monkeypatch, detail)
    else:
        trt = _fake_tensorrt(version=detail if kind == "version" else "10.3.0")
        if kind == "cuda":
            detail(trt)
            _fake_cuda(monkeypatch)
        monkeypatch.setitem(sys.modules, "tensorrt", trt)
    cache = tmp_path / "engines"
    backend, why = create_backend("auto", SHIPPED, max_batch=2, engine_cache_dir=cache)
    assert isinstance(backend, OnnxRuntimeBackend) and why.startswith("ONNX Runtime")
    assert "auto:" in why and reason in why, why
    assert backend.infer(np.zeros((1, backend.num_points, 3), np.float32)).keypoints.shape[0] == 1
    assert not any(cache.glob("*.engine"))  # nothing half-built was cached
    if failure == "no CUDA in torch":  # it got as far as the execution context of the built engine
        assert ("build",) in trt.calls and ("context",) in trt.calls
    with pytest.raises(Exception):  # noqa: B017 - whatever failed, `backend: tensorrt` must not start
        create_backend("tensorrt", SHIPPED, max_batch=2, engine_cache_dir=cache)
