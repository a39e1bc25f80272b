"""Native TensorRT 10 backend: engine built from the ONNX model, cached on disk, refittable.

The engine cache file is keyed by the ONNX file's sha256, the TensorRT version, the GPU name, the
precision and the largest batch (the optimisation profile covers batch 1..max_batch at fixed N);
any mismatch means another file name, so a stale engine is never loaded (an unreadable one is
rebuilt). Device buffers are torch CUDA tensors, the work runs on one CUDA stream.
The pure-Python parts (key, path, availability) work without TensorRT.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
from pathlib import Path

import numpy as np

from kp3d_ros.backends.base import Backend, NetworkOutput
from kp3d_ros.backends.onnxruntime_backend import check_crops
from kp3d_ros.model.export import INPUT_NAME, OUTPUT_NAMES, read_metadata

LOG = logging.getLogger(__name__)
WORKSPACE_BYTES = 1 << 30


class TensorRTError(RuntimeError):
    """TensorRT is missing, or building / loading / running / refitting an engine failed."""


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def precision_name(fp16: bool) -> str:
    return "fp16" if fp16 else "fp32"


def engine_cache_key(onnx_sha256: str, trt_version: str, gpu_name: str, precision: str, max_batch: int) -> str:
    """A short digest of everything an engine depends on."""
    fields = {"onnx_sha256": onnx_sha256, "tensorrt": trt_version, "gpu": gpu_name, "precision": precision,
              "max_batch": int(max_batch)}
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:20]


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "kp3d_ros" / "engines"


def engine_cache_path(cache_dir: str | Path | None, model_path: str | Path, key: str) -> Path:
    """<cache_dir>/<model stem>-<key>.engine"""
    return Path(cache_dir or default_cache_dir()) / f"{Path(model_path).stem}-{key}.engine"


def tensorrt_status() -> tuple[bool, str]:
    """(usable, reason): TensorRT imports, torch has CUDA, and a GPU is visible."""
    try:
        import tensorrt as trt
    except ImportError as exc:
        return False, f"tensorrt is not installed ({exc})"
    try:
        import torch
    except ImportError:
        return False, "torch is not installed (the TensorRT backend keeps its buffers in torch CUDA tensors)"
    if not torch.cuda.is_available():
        return False, f"tensorrt {trt.__version__} imports but no CUDA GPU is visible to torch"
    return True, f"tensorrt {trt.__version__} on {torch.cuda.get_device_name(0)}"


def _trt_logger(trt):
    return trt.Logger(trt.Logger.WARNING)


def build_serialized_engine(onnx_bytes: bytes, num_points: int, max_batch: int, fp16: bool) -> bytes:
    """Parse the ONNX model and build a refittable engine for batch 1..max_batch; TensorRTError on failure."""
    try:
        import tensorrt as trt
    except ImportError as exc:
        raise TensorRTError(f"cannot build an engine: tensorrt is not installed ({exc})") from exc
    logger = _trt_logger(trt)
    builder = trt.Builder(logger)
    network = builder.create_network(0)  # TensorRT 10: explicit batch is the only mode
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(onnx_bytes):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise TensorRTError(f"TensorRT could not parse the ONNX model: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, WORKSPACE_BYTES)
    config.set_flag(trt.BuilderFlag.REFIT)
    if fp16:
        config.set_flag(trt.BuilderFlag.FP16)
    profile = builder.create_optimization_profile()
    opt = max(1, min(8, max_batch))
    profile.set_shape(INPUT_NAME, (1, num_points, 3), (opt, num_points, 3), (max_batch, num_points, 3))
    config.add_optimization_profile(profile)
    serialized = builder.build_serialized_network(network, config)  # IHostMemory or None
    if serialized is None:
        raise TensorRTError("TensorRT failed to build the engine (see the TensorRT log above)")
    return bytes(serialized)


class TensorRTBackend(Backend):
    name = "tensorrt"

    def __init__(self, model_path: str | Path, max_batch: int = 16, fp16: bool = True,
                 cache_dir: str | Path | None = None, logger: logging.Logger | None = None):
        ok, reason = tensorrt_status()
        if not ok:
            raise TensorRTError(f"TensorRT backend unavailable: {reason}")
        import tensorrt as trt
        import torch

        self._trt, self._torch = trt, torch
        self.log = logger or LOG
        self.model_path = Path(model_path)
        if not self.model_path.is_file():
            raise FileNotFoundError(f"ONNX model not found: {self.model_path}")
        meta = read_metadata(self.model_path)
        if "num_points" not in meta:
            raise TensorRTError(f"{self.model_path} has no num_points metadata (export it with `kp3d export`)")
        self.metadata = meta
        self._num_points = int(meta["num_points"])
        self._max_batch = int(max_batch)
        self.fp16 = fp16
        key = engine_cache_key(file_sha256(self.model_path), trt.__version__, torch.cuda.get_device_name(0),
                               precision_name(fp16), self._max_batch)
        self.engine_path = engine_cache_path(cache_dir, self.model_path, key)
        self._trt_log = _trt_logger(trt)
        self._runtime = trt.Runtime(self._trt_log)
        self._lock = threading.Lock()
        self.engine = self._load_or_build()
        self.context = self.engine.create_execution_context()
        if self.context is None:
            raise TensorRTError("TensorRT could not create an execution context (GPU memory?)")
        self._allocate()
        self.warm_up()

    # --- engine --------------------------------------------------------------------------------
    def _load_or_build(self):
        if self.engine_path.is_file():
            engine = self._runtime.deserialize_cuda_engine(self.engine_path.read_bytes())
            if engine is not None:
                self.log.info("loaded TensorRT engine %s", self.engine_path)
                return engine
            self.log.warning("cached engine %s could not be loaded; rebuilding", self.engine_path)
        self.log.info("building TensorRT engine (%s, batch 1..%d); this can take minutes",
                      precision_name(self.fp16), self._max_batch)
        data = build_serialized_engine(self.model_path.read_bytes(), self._num_points, self._max_batch, self.fp16)
        self.engine_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.engine_path.with_suffix(".tmp")
        tmp.write_bytes(data)
        os.replace(tmp, self.engine_path)
        engine = self._runtime.deserialize_cuda_engine(data)
        if engine is None:
            raise TensorRTError("TensorRT built an engine it cannot deserialise")
        self.log.info("cached TensorRT engine at %s", self.engine_path)
        return engine

    def _allocate(self) -> None:
        torch = self._torch
        B, N = self._max_batch, self._num_points
        self._stream = torch.cuda.Stream()
        self._input = torch.empty((B, N, 3), dtype=torch.float32, device="cuda")
        self._outputs = {}
        for name in OUTPUT_NAMES:
            shape = tuple(self.engine.get_tensor_shape(name))[1:]
            if any(d < 0 for d in shape):
                raise TensorRTError(f"output {name} has a dynamic non-batch shape {shape}")
            self._outputs[name] = torch.empty((B, *shape), dtype=torch.float32, device="cuda")

    # --- Backend -------------------------------------------------------------------------------
    @property
    def num_points(self) -> int:
        return self._num_points

    @property
    def max_batch(self) -> int:
        return self._max_batch

    def infer(self, crops: np.ndarray) -> NetworkOutput:
        crops = check_crops(crops, self._num_points, self._max_batch)
        torch = self._torch
        B = len(crops)
        with self._lock, torch.cuda.stream(self._stream):
            inp = self._input[:B]
            inp.copy_(torch.from_numpy(crops), non_blocking=False)
            self.context.set_input_shape(INPUT_NAME, (B, self._num_points, 3))
            self.context.set_tensor_address(INPUT_NAME, inp.data_ptr())
            for name, buf in self._outputs.items():
                self.context.set_tensor_address(name, buf[:B].data_ptr())
            if not self.context.execute_async_v3(self._stream.cuda_stream):
                raise TensorRTError("TensorRT execution failed")
            self._stream.synchronize()
            keypoints, logits = (self._outputs[n][:B].cpu().numpy() for n in OUTPUT_NAMES)
        return NetworkOutput(keypoints, logits)

    def warm_up(self) -> None:
        for batch in sorted({1, self._max_batch}):
            self.infer(np.zeros((batch, self._num_points, 3), dtype=np.float32))

    def update_weights(self, state_dict: dict) -> None:
        """Refit the engine in place from the state dict (exported to ONNX in memory)."""
        import json as _json

        from kp3d_ros.model.export import export_onnx_bytes
        from kp3d_ros.model.network import build_model

        model = build_model(_json.loads(self.metadata["network_config"]))
        model.load_state_dict(state_dict)
        onnx_bytes = export_onnx_bytes(model, self._num_points)
        trt = self._trt
        with self._lock:
            self._stream.synchronize()
            refitter = trt.Refitter(self.engine, self._trt_log)
            parser_refitter = trt.OnnxParserRefitter(refitter, self._trt_log)
            if not parser_refitter.refit_from_bytes(onnx_bytes):
                errors = "; ".join(str(parser_refitter.get_error(i)) for i in range(parser_refitter.num_errors))
                raise TensorRTError(f"TensorRT refit from ONNX failed: {errors}")
            if not refitter.refit_cuda_engine():
                raise TensorRTError(f"TensorRT refit failed; missing weights: {refitter.get_missing_weights()}")
