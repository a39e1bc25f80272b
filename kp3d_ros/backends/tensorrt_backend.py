"""Native TensorRT 10 backend: engine built from the ONNX model, cached on disk, refittable.

The engine cache file is keyed by the ONNX file's sha256, the TensorRT version, the GPU name, the
precision and the largest batch (the optimisation profile covers batch 1..max_batch at fixed N);
any mismatch means another file name, so a stale engine is never loaded (an unreadable one is
rebuilt). Device buffers are torch CUDA tensors, the work runs on one CUDA stream.
The pure-Python parts (key, path, availability) work without TensorRT.

Written against the TensorRT 10 Python API: networks are always explicit-batch (create_network(0);
NetworkDefinitionCreationFlag.EXPLICIT_BATCH is deprecated and ignored), I/O goes through named
tensors (set_input_shape, set_tensor_address, execute_async_v3), and weights are refitted from a
re-exported ONNX model (Refitter + OnnxParserRefitter, then refit_cuda_engine). FP16 uses the
weakly-typed BuilderFlag.FP16, which TensorRT 10.12 deprecates and TensorRT 11 removes: there an FP16
build fails with a clear error and an FP32 build still works.
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
from kp3d_ros.core.params import defaults as _param_defaults
from kp3d_ros.model.export import DEFAULT_OPSET, INPUT_NAME, OUTPUT_NAMES, read_metadata
from kp3d_ros.model.preprocess import check_input_rule

LOG = logging.getLogger(__name__)
WORKSPACE_BYTES = 1 << 30
_DEFAULTS = _param_defaults()
DEFAULT_MAX_BATCH: int = _DEFAULTS["network.max_people"]
DEFAULT_FP16: bool = _DEFAULTS["network.fp16"]


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
    """$XDG_CACHE_HOME/kp3d_ros/engines, or ~/.cache/kp3d_ros/engines when XDG_CACHE_HOME is unset or empty."""
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


_TRT_LOGGER = None


def _trt_logger(trt):
    """One process-wide TensorRT logger: TensorRT requires the logger given to a Builder, Runtime or
    Refitter to stay valid until everything created through it is released."""
    global _TRT_LOGGER
    if _TRT_LOGGER is None:
        _TRT_LOGGER = trt.Logger(trt.Logger.WARNING)
    return _TRT_LOGGER


def _errors(source) -> str:
    """The errors an OnnxParser / OnnxParserRefitter collected (num_errors, get_error(i))."""
    return "; ".join(str(source.get_error(i)) for i in range(source.num_errors)) or "no details"


def build_serialized_engine(onnx_bytes: bytes, num_points: int, max_batch: int, fp16: bool) -> bytes:
    """Parse the ONNX model and build a refittable engine for batch 1..max_batch; TensorRTError on failure."""
    try:
        import tensorrt as trt
    except ImportError as exc:
        raise TensorRTError(f"cannot build an engine: tensorrt is not installed ({exc})") from exc
    if max_batch < 1:
        raise TensorRTError(f"max_batch must be >= 1, got {max_batch}")
    logger = _trt_logger(trt)
    builder = trt.Builder(logger)
    network = builder.create_network(0)  # TensorRT 10: every network is explicit-batch
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(onnx_bytes):
        raise TensorRTError(f"TensorRT could not parse the ONNX model: {_errors(parser)}")
    inputs = [network.get_input(i).name for i in range(network.num_inputs)]
    if inputs != [INPUT_NAME]:
        raise TensorRTError(f"the ONNX model's inputs are {inputs}; expected exactly [{INPUT_NAME!r}] "
                            "(export it with `kp3d export`)")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, WORKSPACE_BYTES)
    config.set_flag(trt.BuilderFlag.REFIT)  # weights can be replaced later without a rebuild
    if fp16:
        fp16_flag = getattr(trt.BuilderFlag, "FP16", None)
        if fp16_flag is None:
            raise TensorRTError(f"tensorrt {trt.__version__} has no BuilderFlag.FP16 (removed in TensorRT 11); "
                                "set network.fp16 to false")
        config.set_flag(fp16_flag)
    profile = builder.create_optimization_profile()
    opt = max(1, min(8, max_batch))
    try:  # the Python binding raises when the min/opt/max shapes are inconsistent
        profile.set_shape(INPUT_NAME, (1, num_points, 3), (opt, num_points, 3), (max_batch, num_points, 3))
    except (RuntimeError, ValueError, TypeError) as exc:
        raise TensorRTError(f"bad optimisation profile for {INPUT_NAME} (N={num_points}, "
                            f"batch 1..{max_batch}): {exc}") from exc
    if config.add_optimization_profile(profile) < 0:
        raise TensorRTError("TensorRT rejected the optimisation profile")
    serialized = builder.build_serialized_network(network, config)  # IHostMemory, or None on failure
    if serialized is None:
        raise TensorRTError(f"TensorRT failed to build the engine ({precision_name(fp16)}, batch 1..{max_batch}); "
                            "see the TensorRT log above")
    return bytes(serialized)


class TensorRTBackend(Backend):
    name = "tensorrt"

    def __init__(self, model_path: str | Path, max_batch: int = DEFAULT_MAX_BATCH, fp16: bool = DEFAULT_FP16,
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
        if int(max_batch) < 1:
            raise ValueError("max_batch must be >= 1")
        meta = read_metadata(self.model_path)
        check_input_rule(meta, self.model_path)
        if "num_points" not in meta:
            raise TensorRTError(f"{self.model_path} has no num_points metadata (export it with `kp3d export`)")
        self.metadata = meta
        self._num_points = int(meta["num_points"])
        self._max_batch = int(max_batch)
        self.fp16 = bool(fp16)
        key = engine_cache_key(file_sha256(self.model_path), trt.__version__, torch.cuda.get_device_name(0),
                               precision_name(self.fp16), self._max_batch)
        self.engine_path = engine_cache_path(cache_dir, self.model_path, key)
        self._trt_log = _trt_logger(trt)
        self._runtime = trt.Runtime(self._trt_log)  # kept: it must outlive the engine
        self._lock = threading.Lock()
        self.engine = self._load_or_build()
        self._check_io()
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
        tmp = self.engine_path.with_name(f"{self.engine_path.name}.{os.getpid()}.tmp")  # no clash between builders
        tmp.write_bytes(data)
        os.replace(tmp, self.engine_path)
        engine = self._runtime.deserialize_cuda_engine(data)
        if engine is None:
            raise TensorRTError("TensorRT built an engine it cannot deserialise")
        self.log.info("cached TensorRT engine at %s", self.engine_path)
        return engine

    def _check_io(self) -> None:
        """The engine has exactly our named float32 input and outputs."""
        trt, engine = self._trt, self.engine
        modes = {engine.get_tensor_name(i): engine.get_tensor_mode(engine.get_tensor_name(i))
                 for i in range(engine.num_io_tensors)}
        expected = {INPUT_NAME: trt.TensorIOMode.INPUT, **{n: trt.TensorIOMode.OUTPUT for n in OUTPUT_NAMES}}
        if modes != expected:
            raise TensorRTError(f"engine I/O tensors {sorted(modes)} do not match the model's "
                                f"{INPUT_NAME!r} -> {list(OUTPUT_NAMES)}")
        for name in expected:
            dtype = engine.get_tensor_dtype(name)
            if dtype != trt.DataType.FLOAT:
                raise TensorRTError(f"engine tensor {name} is {dtype}, expected float32")

    def _allocate(self) -> None:
        torch = self._torch
        B, N = self._max_batch, self._num_points
        self._stream = torch.cuda.Stream()
        self._input = torch.empty((B, N, 3), dtype=torch.float32, device="cuda")
        if not self.context.set_input_shape(INPUT_NAME, (B, N, 3)):
            raise TensorRTError(f"the engine does not accept input shape {(B, N, 3)}")
        self._outputs = {}
        for name in OUTPUT_NAMES:  # shapes at the largest batch, resolved by the context
            shape = tuple(self.context.get_tensor_shape(name))
            if len(shape) < 1 or shape[0] != B or any(d < 0 for d in shape):
                raise TensorRTError(f"output {name} has shape {shape} at batch {B}")
            self._outputs[name] = torch.empty(shape, dtype=torch.float32, device="cuda")

    # --- Backend -------------------------------------------------------------------------------
    def infer(self, crops: np.ndarray) -> NetworkOutput:
        crops = check_crops(crops, self._num_points, self._max_batch)
        if not crops.flags.writeable:  # torch.from_numpy wants a writable array
            crops = crops.copy()
        torch = self._torch
        B = len(crops)
        context = self.context
        with self._lock, torch.cuda.stream(self._stream):
            inp = self._input[:B]
            inp.copy_(torch.from_numpy(crops))  # on self._stream, synchronous for the host
            if not context.set_input_shape(INPUT_NAME, (B, self._num_points, 3)):
                raise TensorRTError(f"the engine rejected input shape {(B, self._num_points, 3)}")
            addresses = {INPUT_NAME: inp.data_ptr(), **{n: b[:B].data_ptr() for n, b in self._outputs.items()}}
            for name, address in addresses.items():
                if not context.set_tensor_address(name, address):
                    raise TensorRTError(f"TensorRT rejected the address of tensor {name}")
            if not context.execute_async_v3(self._stream.cuda_stream):
                raise TensorRTError("TensorRT execution failed")
            self._stream.synchronize()
            keypoints, logits = (self._outputs[n][:B].cpu().numpy() for n in OUTPUT_NAMES)
        return NetworkOutput(keypoints, logits)

    def warm_up(self) -> None:
        for batch in sorted({1, self._max_batch}):
            self.infer(np.zeros((batch, self._num_points, 3), dtype=np.float32))

    def update_weights(self, state_dict: dict) -> None:
        """Refit the engine in place from the state dict, exported to ONNX in memory with the model's opset.

        The ONNX refitter matches weights by initializer name, so the re-export must name them as the
        engine's ONNX file does (same network config and opset; torch versions can rename folded constants).
        """
        from kp3d_ros.model.export import export_onnx_bytes
        from kp3d_ros.model.network import build_model

        if "network_config" not in self.metadata:
            raise TensorRTError(f"{self.model_path} has no network_config metadata; cannot rebuild it for new weights")
        if not self.engine.refittable:
            raise TensorRTError(f"engine {self.engine_path} was not built refittable")
        model = build_model(json.loads(self.metadata["network_config"]))
        model.load_state_dict(state_dict)
        opset = int(self.metadata.get("opset", DEFAULT_OPSET))
        onnx_bytes = export_onnx_bytes(model, self._num_points, opset=opset)
        trt = self._trt
        with self._lock:
            self._stream.synchronize()  # no inference in flight while the weights change
            refitter = trt.Refitter(self.engine, self._trt_log)
            parser_refitter = trt.OnnxParserRefitter(refitter, self._trt_log)
            # refit_from_bytes only hands the ONNX weights to the refitter; refit_cuda_engine applies them
            # (both objects stay alive until then).
            if not parser_refitter.refit_from_bytes(onnx_bytes):
                raise TensorRTError(f"TensorRT refit from ONNX failed: {_errors(parser_refitter)}")
            missing = refitter.get_missing_weights()
            if missing:
                raise TensorRTError(f"TensorRT refit is missing weights {list(missing)[:10]} (the re-exported ONNX "
                                    f"names its weights differently from {self.model_path.name}?)")
            if not refitter.refit_cuda_engine():
                raise TensorRTError("TensorRT refit_cuda_engine failed (see the TensorRT log above)")
