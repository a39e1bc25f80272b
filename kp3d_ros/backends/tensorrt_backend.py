"""Native TensorRT 10 backend: engine built from the ONNX model, cached on disk, refittable.

Written against the TensorRT 10 Python API and never run on a GPU in this project (no GPU machine has
been lent yet): `scripts/gpu_check.sh` is the check to run on the first one.

- TensorRT older than 10 is refused with a clear reason (`OnnxParserRefitter`, named-tensor I/O).
- The engine cache file is keyed by the ONNX file's sha256, the TensorRT version, the GPU (name,
  compute capability, SM count, device index) and a fingerprint of the build settings (precision,
  profile, workspace, flags); any mismatch means another file name, so a stale engine is never loaded
  (an unreadable one is rebuilt). A cache directory that cannot be written only costs a warning: the
  engine stays in memory and is rebuilt at the next start.
- A freshly built engine is compared with ONNX Runtime on CPU (keypoints and part logits) on a fixed
  probe batch; beyond KEYPOINT_TOLERANCE / LOGIT_TOLERANCE it is refused (or, with check="warn",
  logged) before it is cached.
- Refit never touches the engine that serves inference: a second copy is deserialised from the plan,
  refitted from the re-exported ONNX model (its initializers first matched to the shipped model's
  names and checked against the engine's refittable weights), compared with the torch model on the
  probe batch, and swapped in under the inference lock only when all of that succeeded.

Networks are explicit-batch (create_network(0)), I/O goes through named tensors (set_input_shape,
set_tensor_address, execute_async_v3). FP16 uses the weakly-typed BuilderFlag.FP16, which TensorRT
10.12 deprecates and TensorRT 11 removes: there an FP16 build fails with a clear error. Device buffers
are torch CUDA tensors; each engine copy runs on its own CUDA stream.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from kp3d_ros.backends.base import Backend, NetworkOutput
from kp3d_ros.backends.onnxruntime_backend import check_crops
from kp3d_ros.core.params import defaults as _param_defaults
from kp3d_ros.model.export import DEFAULT_OPSET, INPUT_NAME, OUTPUT_NAMES, read_metadata
from kp3d_ros.model.preprocess import check_input_rule
from kp3d_ros.resources import user_cache_dir

LOG = logging.getLogger(__name__)
MIN_TENSORRT_MAJOR = 10
WORKSPACE_BYTES = 1 << 30
OPT_BATCH = 8  # the profile's optimum batch (capped at max_batch)
_DEFAULTS = _param_defaults()
DEFAULT_MAX_BATCH: int = _DEFAULTS["network.max_people"]
DEFAULT_FP16: bool = _DEFAULTS["network.fp16"]

# An engine (fresh build, or refitted copy) against its reference (ONNX Runtime on CPU, or the torch model)
# on the probe batch, as max |difference|. Keypoints are in network units, metres (preprocess.SCALE = 1):
# 5 mm. A CPU simulation of FP16 gives about 1e-3 on keypoints and 1e-2 to 2e-2 on logits; TensorRT's
# FP32 engines use TF32 math by default (the same 10-bit mantissa), so one tolerance serves both.
KEYPOINT_TOLERANCE = 5e-3
LOGIT_TOLERANCE = 5e-2
PROBE_BATCH = 4
PROBE_SEED = 0
CHECK_POLICIES = ("refuse", "warn")


class TensorRTError(RuntimeError):
    """TensorRT is missing or too old, or building / loading / running / refitting an engine failed."""


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def precision_name(fp16: bool) -> str:
    return "fp16" if fp16 else "fp32"


# --- version ---------------------------------------------------------------------------------------------


def tensorrt_major(version: str) -> int | None:
    """The major version of a TensorRT version string ('10.3.0', '10.0.0b6', '8.6.1.post1'), or None."""
    match = re.match(r"\s*(\d+)", str(version))
    return int(match.group(1)) if match else None


def check_tensorrt_version(version: str) -> tuple[bool, str]:
    """(usable, reason): this backend needs the TensorRT 10 Python API."""
    major = tensorrt_major(version)
    if major is None:
        return False, f"tensorrt reports an unreadable version {version!r}; the TensorRT backend needs TensorRT 10+"
    if major < MIN_TENSORRT_MAJOR:
        return False, (f"tensorrt {version} is too old: the TensorRT backend needs TensorRT {MIN_TENSORRT_MAJOR} "
                       "or later (OnnxParserRefitter, named-tensor I/O with execute_async_v3)")
    return True, f"tensorrt {version}"


def import_tensorrt() -> Any:
    """The tensorrt module, checked to be TensorRT 10 or later; TensorRTError otherwise."""
    try:
        import tensorrt as trt
    except ImportError as exc:
        raise TensorRTError(f"tensorrt is not installed ({exc})") from exc
    except Exception as exc:  # a broken install: missing libnvinfer (OSError), a half-initialised module, ...
        raise TensorRTError(f"tensorrt is installed but fails to import ({type(exc).__name__}: {exc})") from exc
    ok, reason = check_tensorrt_version(getattr(trt, "__version__", "unknown"))
    if not ok:
        raise TensorRTError(reason)
    return trt


# --- device and build settings: the cache key --------------------------------------------------------------


@dataclass(frozen=True)
class DeviceInfo:
    """The CUDA device an engine is built for and runs on."""

    index: int
    name: str
    compute_capability: str  # "major.minor", e.g. "8.7" on every Jetson Orin module
    sm_count: int

    def describe(self) -> str:
        return f"cuda:{self.index} {self.name} (sm_{self.compute_capability.replace('.', '')}, {self.sm_count} SMs)"


def cuda_device_info(torch: Any, index: int | None = None) -> DeviceInfo:
    """Properties of CUDA device `index` (None: torch's current device)."""
    index = torch.cuda.current_device() if index is None else int(index)
    count = torch.cuda.device_count()
    if not 0 <= index < count:
        raise TensorRTError(f"CUDA device {index} does not exist ({count} visible)")
    props = torch.cuda.get_device_properties(index)
    return DeviceInfo(index, str(props.name), f"{props.major}.{props.minor}", int(props.multi_processor_count))


@dataclass(frozen=True)
class BuildSettings:
    """Everything build_serialized_engine configures; its fingerprint goes into the cache key."""

    num_points: int
    max_batch: int
    opt_batch: int
    fp16: bool
    workspace_bytes: int = WORKSPACE_BYTES
    flags: tuple[str, ...] = ("REFIT",)

    @property
    def precision(self) -> str:
        return precision_name(self.fp16)

    def profile(self) -> tuple[tuple[int, int, int], ...]:
        """(min, opt, max) input shapes of the one optimisation profile."""
        return tuple((b, self.num_points, 3) for b in (1, self.opt_batch, self.max_batch))

    def fingerprint(self) -> str:
        fields = asdict(self) | {"profile": self.profile(), "input": INPUT_NAME}
        return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:16]


def build_settings(num_points: int, max_batch: int, fp16: bool) -> BuildSettings:
    """The settings an engine for batch 1..max_batch at N points is built with."""
    flags = ("REFIT", "FP16") if fp16 else ("REFIT",)
    return BuildSettings(int(num_points), int(max_batch), max(1, min(OPT_BATCH, int(max_batch))), bool(fp16),
                         WORKSPACE_BYTES, flags)


def engine_cache_fields(onnx_sha256: str, trt_version: str, device: DeviceInfo, settings: BuildSettings) -> dict:
    """What an engine depends on, as the dict the cache key digests."""
    return {"onnx_sha256": onnx_sha256, "tensorrt": trt_version, "gpu": device.name,
            "compute_capability": device.compute_capability, "sm_count": device.sm_count, "device": device.index,
            "precision": settings.precision, "max_batch": settings.max_batch, "build": settings.fingerprint()}


def engine_cache_key(onnx_sha256: str, trt_version: str, device: DeviceInfo, settings: BuildSettings) -> str:
    """A short digest of everything an engine depends on."""
    fields = engine_cache_fields(onnx_sha256, trt_version, device, settings)
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:20]


def default_cache_dir() -> Path:
    """The engines folder of the user's cache (kp3d_ros.resources.user_cache_dir): $XDG_CACHE_HOME/kp3d_ros/engines,
    or ~/.cache/kp3d_ros/engines when XDG_CACHE_HOME is unset or empty ($KP3D_ROS_CACHE_DIR/engines when set)."""
    return user_cache_dir("engines")


def engine_cache_path(cache_dir: str | Path | None, model_path: str | Path, key: str) -> Path:
    """<cache_dir>/<model stem>-<key>.engine"""
    return Path(cache_dir or default_cache_dir()) / f"{Path(model_path).stem}-{key}.engine"


def tensorrt_status(device: int | None = None) -> tuple[bool, str]:
    """(usable, reason): TensorRT 10+ imports, torch has CUDA, and the CUDA device exists. Never raises."""
    try:
        trt = import_tensorrt()
    except TensorRTError as exc:
        return False, str(exc)
    try:
        import torch
    except ImportError:
        return False, "torch is not installed (the TensorRT backend keeps its buffers in torch CUDA tensors)"
    try:
        if not torch.cuda.is_available():
            return False, f"tensorrt {trt.__version__} imports but no CUDA GPU is visible to torch"
        info = cuda_device_info(torch, device)
    except Exception as exc:  # a CUDA driver problem, a bad device index
        return False, f"tensorrt {trt.__version__} imports but the CUDA device cannot be used ({exc})"
    return True, f"tensorrt {trt.__version__} on {info.describe()}"


# --- engine cache ----------------------------------------------------------------------------------------


def read_cached_plan(path: Path, log: logging.Logger = LOG) -> bytes | None:
    """The cached serialised engine, or None when there is none or it cannot be read."""
    if not path.is_file():
        return None
    try:
        return path.read_bytes()
    except OSError as exc:
        log.warning("cannot read the cached TensorRT engine %s (%s); rebuilding", path, exc)
        return None


def write_cached_plan(path: Path, plan: bytes, log: logging.Logger = LOG) -> bool:
    """Write the serialised engine atomically; on an OSError (read-only or full cache directory) warn and
    return False: the caller keeps the engine in memory."""
    tmp = path.with_name(f"{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")  # no clash between builders
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_bytes(plan)
        os.replace(tmp, path)
    except OSError as exc:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        log.warning("cannot write the TensorRT engine cache %s (%s); the engine is kept in memory only and "
                    "will be rebuilt at the next start", path, exc)
        return False
    return True


def load_or_build_engine(runtime: Any, path: Path, build: Callable[[], bytes], log: logging.Logger = LOG,
                         accept: Callable[[Any], None] | None = None) -> tuple[Any, bytes, str]:
    """(engine, plan, source): the cached plan deserialised (source "cache"), else a new build (source
    "built") that `accept` may refuse by raising before it is cached. `runtime` is a tensorrt.Runtime."""
    plan = read_cached_plan(path, log)
    if plan is not None:
        engine = runtime.deserialize_cuda_engine(plan)
        if engine is not None:
            log.info("loaded TensorRT engine %s", path)
            return engine, plan, "cache"
        log.warning("cached engine %s could not be loaded; rebuilding", path)
    plan = build()
    engine = runtime.deserialize_cuda_engine(plan)
    if engine is None:
        raise TensorRTError("TensorRT built an engine it cannot deserialise")
    if accept is not None:
        accept(engine)
    if write_cached_plan(path, plan, log):
        log.info("cached TensorRT engine at %s", path)
    return engine, plan, "built"


# --- build -----------------------------------------------------------------------------------------------

_TRT_LOGGER = None


def _trt_logger(trt: Any) -> Any:
    """One process-wide TensorRT logger: TensorRT requires the logger given to a Builder, Runtime or
    Refitter to stay valid until everything created through it is released."""
    global _TRT_LOGGER
    if _TRT_LOGGER is None:
        _TRT_LOGGER = trt.Logger(trt.Logger.WARNING)
    return _TRT_LOGGER


def _errors(source: Any) -> str:
    """The errors an OnnxParser / OnnxParserRefitter collected (num_errors, get_error(i))."""
    return "; ".join(str(source.get_error(i)) for i in range(source.num_errors)) or "no details"


def build_serialized_engine(onnx_bytes: bytes, num_points: int, max_batch: int, fp16: bool) -> bytes:
    """Parse the ONNX model and build a refittable engine with build_settings(num_points, max_batch, fp16);
    TensorRTError on failure."""
    try:
        trt = import_tensorrt()
    except TensorRTError as exc:
        raise TensorRTError(f"cannot build an engine: {exc}") from exc
    if max_batch < 1:
        raise TensorRTError(f"max_batch must be >= 1, got {max_batch}")
    settings = build_settings(num_points, max_batch, fp16)
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
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, settings.workspace_bytes)
    for flag_name in settings.flags:  # REFIT: weights can be replaced later without a rebuild
        flag = getattr(trt.BuilderFlag, flag_name, None)
        if flag is None:
            raise TensorRTError(f"tensorrt {trt.__version__} has no BuilderFlag.{flag_name}"
                                + (" (removed in TensorRT 11); set network.fp16 to false" if flag_name == "FP16"
                                   else ""))
        config.set_flag(flag)
    profile = builder.create_optimization_profile()
    try:  # the Python binding raises when the min/opt/max shapes are inconsistent
        profile.set_shape(INPUT_NAME, *settings.profile())
    except (RuntimeError, ValueError, TypeError) as exc:
        raise TensorRTError(f"bad optimisation profile for {INPUT_NAME} (N={num_points}, "
                            f"batch 1..{max_batch}): {exc}") from exc
    if config.add_optimization_profile(profile) < 0:
        raise TensorRTError("TensorRT rejected the optimisation profile")
    serialized = builder.build_serialized_network(network, config)  # IHostMemory, or None on failure
    if serialized is None:
        raise TensorRTError(f"TensorRT failed to build the engine ({settings.precision}, batch 1..{max_batch}); "
                            "see the TensorRT log above")
    return bytes(serialized)


# --- refit: which weights a re-export gives the engine --------------------------------------------------


def _node_key(node: Any, position: int) -> str:
    return node.name or f"#{position}:{node.op_type}"


def _aliases(graph: Any) -> dict[str, str]:
    """Outputs of Identity nodes that read an initializer (how torch's export merges equal initializers)
    -> that initializer."""
    names = {i.name for i in graph.initializer}
    return {node.output[0]: node.input[0] for node in graph.node
            if node.op_type == "Identity" and len(node.input) == 1 and node.input[0] in names}


def _is_alias(node: Any, aliases: dict[str, str]) -> bool:
    return node.op_type == "Identity" and len(node.output) == 1 and node.output[0] in aliases


def _initializer_slots(graph: Any) -> dict[tuple[str, int], str]:
    """(consumer node, input slot) -> the initializer it reads (directly or through an alias), for the
    graph's top-level nodes."""
    names, aliases = {i.name for i in graph.initializer}, _aliases(graph)
    slots = {}
    for k, node in enumerate(graph.node):
        if _is_alias(node, aliases):
            continue
        for s, name in enumerate(node.input):
            name = aliases.get(name, name)
            if name in names:
                slots[(_node_key(node, k), s)] = name
    return slots


def onnx_initializers(model: str | Path | bytes) -> dict[str, np.ndarray]:
    """name -> value of every initializer of an ONNX file (path) or serialised model (bytes)."""
    import onnx
    from onnx import numpy_helper

    proto = onnx.load_from_string(model) if isinstance(model, bytes) else onnx.load(str(model))
    return {i.name: numpy_helper.to_array(i) for i in proto.graph.initializer}


@dataclass
class AlignedExport:
    """A re-export with its initializers renamed to the shipped model's (matched by the node input they feed)."""

    onnx_bytes: bytes
    weights: dict[str, np.ndarray]  # shipped initializer name -> the re-export's value
    renamed: dict[str, str]  # re-export name -> shipped name, where they differed
    problems: list[str] = field(default_factory=list)


def align_to_shipped(shipped: bytes, reexport: bytes) -> AlignedExport:
    """Give the re-export's initializers the shipped model's names. torch names folded constants
    ('onnx::MatMul_351') by a counter that changes between torch versions, and its eval-mode export
    merges initializers with equal values; both are undone by matching each initializer to the shipped
    initializer that feeds the same node input. Whatever cannot be matched is listed in `problems`."""
    import onnx
    from onnx import numpy_helper

    ship_proto, re_proto = onnx.load_from_string(shipped), onnx.load_from_string(reexport)
    ship_slots = _initializer_slots(ship_proto.graph)
    re_values = {i.name: numpy_helper.to_array(i) for i in re_proto.graph.initializer}
    re_aliases = _aliases(re_proto.graph)
    ship_shapes = {i.name: tuple(i.dims) for i in ship_proto.graph.initializer}
    weights: dict[str, np.ndarray] = {}
    renamed: dict[str, str] = {}
    problems: list[str] = []
    for k, node in enumerate(re_proto.graph.node):
        if _is_alias(node, re_aliases):
            continue
        for s, read in enumerate(node.input):
            name = re_aliases.get(read, read)
            if name not in re_values:
                continue
            slot = (_node_key(node, k), s)
            target = ship_slots.get(slot)
            if target is None:
                problems.append(f"re-export initializer {name} feeds {slot[0]} input {s}, which reads no "
                                "initializer in the shipped model")
                continue
            value = re_values[name]
            if tuple(value.shape) != ship_shapes[target]:
                problems.append(f"{target}: shape {tuple(value.shape)} in the re-export, {ship_shapes[target]} "
                                "shipped")
                continue
            if target in weights and not np.array_equal(weights[target], value):
                problems.append(f"{target} gets two different values from the re-export (the engine shares "
                                "one weight where the re-export has two)")
                continue
            weights[target] = value
            if name != target:
                renamed[name] = target
            node.input[s] = target
    for name in sorted(set(ship_shapes) - set(weights)):
        problems.append(f"shipped initializer {name} has no counterpart in the re-export")
    # every reader of an alias now reads its own initializer (or the alignment has problems and is refused)
    kept_nodes = [n for n in re_proto.graph.node if not _is_alias(n, re_aliases)]
    del re_proto.graph.node[:]
    re_proto.graph.node.extend(kept_nodes)
    del re_proto.graph.initializer[:]
    re_proto.graph.initializer.extend(numpy_helper.from_array(weights[n], n) for n in ship_shapes if n in weights)
    return AlignedExport(re_proto.SerializeToString(), weights, renamed, problems)


@dataclass
class RefitCheck:
    """What a refit from an aligned re-export would do to an engine with the given refittable weights."""

    refit: list[str]  # initializers the refit sets
    frozen_changed: list[str]  # initializers the engine cannot refit (folded at build time) whose value changed
    not_initializers: list[str]  # refittable engine weights no initializer provides: they keep the plan's values
    problems: list[str]

    @property
    def ok(self) -> bool:
        return not self.problems


def check_refit(shipped: dict[str, np.ndarray], aligned: AlignedExport, refittable: Iterable[str]) -> RefitCheck:
    """Compare an aligned re-export with the shipped initializers and the engine's get_all_weights():
    onnx-tensorrt silently skips initializers the engine does not list as refittable, so a changed value
    there (new bone factors in calibration.scale when TensorRT folded it) would be dropped."""
    refittable = set(refittable)
    problems = list(aligned.problems)
    frozen_changed = sorted(n for n, v in aligned.weights.items()
                            if n not in refittable and n in shipped and not np.array_equal(v, shipped[n]))
    for name in frozen_changed:
        problems.append(f"{name} changed but the engine cannot refit it (TensorRT folded it at build time); "
                        "rebuild the engine from a new export instead")
    return RefitCheck(sorted(refittable & set(aligned.weights)), frozen_changed,
                      sorted(refittable - set(aligned.weights)), problems)


def probe_batch(num_points: int, batch: int = PROBE_BATCH, seed: int = PROBE_SEED) -> np.ndarray:
    """Fixed person-sized crops (B, N, 3) for comparing an engine with its reference."""
    rng = np.random.default_rng(seed)
    return (rng.normal(size=(batch, num_points, 3)) * [0.25, 0.25, 0.5]).astype(np.float32)


def output_differences(got: NetworkOutput, reference: NetworkOutput) -> dict[str, float]:
    """max |got - reference| for keypoints and logits."""
    return {"keypoints": float(np.abs(got.keypoints - reference.keypoints).max()),
            "logits": float(np.abs(got.logits - reference.logits).max())}


def tolerance_failures(diff: dict[str, float]) -> list[str]:
    """The outputs beyond KEYPOINT_TOLERANCE / LOGIT_TOLERANCE, described."""
    limits = {"keypoints": KEYPOINT_TOLERANCE, "logits": LOGIT_TOLERANCE}
    return [f"{k} differ by {diff[k]:.3g} (> {limits[k]:g})" for k in limits if not diff[k] <= limits[k]]


def _set_weights_by_name(trt: Any, refitter: Any, weights: dict[str, np.ndarray], names: Iterable[str]) -> list:
    """set_named_weights for each name; returns the arrays, which must outlive refit_cuda_engine."""
    kept = []
    for name in names:
        array = np.ascontiguousarray(weights[name])
        with contextlib.suppress(AttributeError, TypeError):  # get_weights_prototype: TensorRT 10.0+
            wanted = trt.nptype(refitter.get_weights_prototype(name).dtype)
            if array.dtype != wanted:
                array = np.ascontiguousarray(array.astype(wanted))
        kept.append(array)
        if not refitter.set_named_weights(name, trt.Weights(array)):
            raise TensorRTError(f"TensorRT refused new values for weight {name} (shape {array.shape}, {array.dtype})")
    return kept


# --- backend ---------------------------------------------------------------------------------------------


class _EngineRunner:
    """One engine with its own execution context, CUDA stream and device buffers for batch 1..max_batch.
    Not thread-safe: the backend serialises calls."""

    def __init__(self, trt: Any, torch: Any, engine: Any, num_points: int, max_batch: int, device: int):
        self.trt, self.torch, self.engine = trt, torch, engine
        self.num_points, self.max_batch, self.device = num_points, max_batch, device
        self._check_io()
        with torch.cuda.device(device):
            self.context = engine.create_execution_context()
            if self.context is None:
                raise TensorRTError("TensorRT could not create an execution context (GPU memory?)")
            self.stream = torch.cuda.Stream(device=device)
            B, N = max_batch, num_points
            self.input = torch.empty((B, N, 3), dtype=torch.float32, device=f"cuda:{device}")
            if not self.context.set_input_shape(INPUT_NAME, (B, N, 3)):
                raise TensorRTError(f"the engine does not accept input shape {(B, N, 3)}")
            self.outputs = {}
            for name in OUTPUT_NAMES:  # shapes at the largest batch, resolved by the context
                shape = tuple(self.context.get_tensor_shape(name))
                if len(shape) < 1 or shape[0] != B or any(d < 0 for d in shape):
                    raise TensorRTError(f"output {name} has shape {shape} at batch {B}")
                self.outputs[name] = torch.empty(shape, dtype=torch.float32, device=f"cuda:{device}")

    def _check_io(self) -> None:
        """The engine has exactly our named float32 input and outputs."""
        trt, engine = self.trt, self.engine
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

    def run(self, crops: np.ndarray) -> NetworkOutput:
        """Crops already checked: (B, N, 3) float32 contiguous and writable, 1 <= B <= max_batch."""
        torch, context = self.torch, self.context
        B, N = len(crops), self.num_points
        with torch.cuda.device(self.device), torch.cuda.stream(self.stream):
            inp = self.input[:B]
            inp.copy_(torch.from_numpy(crops))  # on self.stream, synchronous for the host
            if not context.set_input_shape(INPUT_NAME, (B, N, 3)):
                raise TensorRTError(f"the engine rejected input shape {(B, N, 3)}")
            addresses = {INPUT_NAME: inp.data_ptr(), **{n: b[:B].data_ptr() for n, b in self.outputs.items()}}
            for name, address in addresses.items():
                if not context.set_tensor_address(name, address):
                    raise TensorRTError(f"TensorRT rejected the address of tensor {name}")
            if not context.execute_async_v3(self.stream.cuda_stream):
                raise TensorRTError("TensorRT execution failed")
            self.stream.synchronize()
            keypoints, logits = (self.outputs[n][:B].cpu().numpy() for n in OUTPUT_NAMES)
        return NetworkOutput(keypoints, logits)


class TensorRTBackend(Backend):
    name = "tensorrt"

    def __init__(self, model_path: str | Path, max_batch: int = DEFAULT_MAX_BATCH, fp16: bool = DEFAULT_FP16,
                 cache_dir: str | Path | None = None, logger: logging.Logger | None = None,
                 device: int | None = None, check: str = "refuse"):
        """device: CUDA device index (None: torch's current device). check: what a fresh engine beyond
        KEYPOINT_TOLERANCE / LOGIT_TOLERANCE of ONNX Runtime on CPU gets, "refuse" (TensorRTError) or "warn"."""
        if check not in CHECK_POLICIES:
            raise ValueError(f"check must be one of {CHECK_POLICIES}, got {check!r}")
        ok, reason = tensorrt_status(device)
        if not ok:
            raise TensorRTError(f"TensorRT backend unavailable: {reason}")
        trt = import_tensorrt()
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
        self.check = check
        self.device = cuda_device_info(torch, device)
        self.settings = build_settings(self._num_points, self._max_batch, self.fp16)
        self._onnx_bytes = self.model_path.read_bytes()
        key = engine_cache_key(hashlib.sha256(self._onnx_bytes).hexdigest(), trt.__version__, self.device,
                               self.settings)
        self.engine_path = engine_cache_path(cache_dir, self.model_path, key)
        self.build_check: dict[str, float] | None = None  # engine vs ONNX Runtime (CPU), when built here
        self.last_refit: dict[str, Any] | None = None
        self._trt_log = _trt_logger(trt)
        self._lock = threading.Lock()  # held by inference and by the swap after a refit, nothing else
        self._refit_lock = threading.Lock()  # one refit at a time
        self._runner: _EngineRunner | None = None
        with torch.cuda.device(self.device.index):
            self._runtime = trt.Runtime(self._trt_log)  # kept: it must outlive the engines
            self.log.info("TensorRT engine %s (%s, batch 1..%d, %s)", self.engine_path.name, self.settings.precision,
                          self._max_batch, self.device.describe())
            engine, self._plan, self.engine_source = load_or_build_engine(
                self._runtime, self.engine_path, self._build, self.log, accept=self._accept_new_engine)
        if self._runner is None:  # loaded from the cache
            self._runner = _EngineRunner(trt, torch, engine, self._num_points, self._max_batch, self.device.index)
        self.warm_up()

    @property
    def engine(self) -> Any:
        """The engine serving inference now (a refit replaces it)."""
        return self._runner.engine

    @property
    def context(self) -> Any:
        return self._runner.context

    # --- engine --------------------------------------------------------------------------------
    def _build(self) -> bytes:
        self.log.info("building TensorRT engine (%s, batch 1..%d); this can take minutes",
                      self.settings.precision, self._max_batch)
        return build_serialized_engine(self._onnx_bytes, self._num_points, self._max_batch, self.fp16)

    def _accept_new_engine(self, engine: Any) -> None:
        """A fresh build against ONNX Runtime on CPU on the probe batch; refused (or warned about) beyond
        the tolerances, before it is cached."""
        from kp3d_ros.backends.onnxruntime_backend import OnnxRuntimeBackend

        runner = _EngineRunner(self._trt, self._torch, engine, self._num_points, self._max_batch, self.device.index)
        x = probe_batch(self._num_points, min(PROBE_BATCH, self._max_batch))
        reference = OnnxRuntimeBackend(self.model_path, max_batch=len(x), providers=["CPUExecutionProvider"])
        self.build_check = output_differences(runner.run(x), reference.infer(x))
        failures = tolerance_failures(self.build_check)
        if failures:
            message = (f"the new {self.settings.precision} engine differs from ONNX Runtime on CPU: "
                       f"{'; '.join(failures)}")
            if self.check == "refuse":
                hint = "; set network.fp16 to false" if self.fp16 else ""
                raise TensorRTError(f"{message}; engine refused{hint}")
            self.log.warning("%s (kept: check=warn)", message)
        else:
            self.log.info("new %s engine vs ONNX Runtime on CPU: keypoints %.2g, logits %.2g (tolerances %g, %g)",
                          self.settings.precision, self.build_check["keypoints"], self.build_check["logits"],
                          KEYPOINT_TOLERANCE, LOGIT_TOLERANCE)
        self._runner = runner

    # --- Backend -------------------------------------------------------------------------------
    def infer(self, crops: np.ndarray) -> NetworkOutput:
        crops = check_crops(crops, self._num_points, self._max_batch)
        if not crops.flags.writeable:  # torch.from_numpy wants a writable array
            crops = crops.copy()
        with self._lock:
            return self._runner.run(crops)

    def warm_up(self) -> None:
        for batch in sorted({1, self._max_batch}):
            self.infer(np.zeros((batch, self._num_points, 3), dtype=np.float32))

    def update_weights(self, state_dict: dict) -> None:
        """Refit a second copy of the engine to the state dict and swap it in; the serving engine is never
        touched, so any failure (TensorRTError) leaves inference on the previous weights.

        Off the inference lock: export to ONNX in memory with the model's opset, match its initializers to
        the shipped model's, deserialise a copy from the plan, check the re-export against the copy's
        refittable weights, refit (refit_from_bytes, else set_named_weights per weight), run the probe
        batch against the torch model. Under the lock: the swap only.
        """
        if "network_config" not in self.metadata:
            raise TensorRTError(f"{self.model_path} has no network_config metadata; cannot rebuild it for new weights")
        with self._refit_lock:
            self._update_weights(state_dict)

    def _update_weights(self, state_dict: dict) -> None:
        import torch

        from kp3d_ros.model.export import export_onnx_bytes
        from kp3d_ros.model.network import build_model

        start = time.perf_counter()
        model = build_model(json.loads(self.metadata["network_config"]))
        model.load_state_dict(state_dict)
        model.eval()
        opset = int(self.metadata.get("opset", DEFAULT_OPSET))
        aligned = align_to_shipped(self._onnx_bytes, export_onnx_bytes(model, self._num_points, opset=opset))
        if aligned.renamed:
            self.log.info("refit: %d re-exported initializers renamed to the shipped model's (%s)",
                          len(aligned.renamed), ", ".join(f"{a}->{b}" for a, b in list(aligned.renamed.items())[:4]))
        trt = self._trt
        with self._torch.cuda.device(self.device.index):
            engine = self._runtime.deserialize_cuda_engine(self._plan)
            if engine is None:
                raise TensorRTError("cannot deserialise a second copy of the engine for the refit")
            if not engine.refittable:
                raise TensorRTError(f"engine {self.engine_path} was not built refittable")
            refitter = trt.Refitter(engine, self._trt_log)
            report = check_refit(onnx_initializers(self._onnx_bytes), aligned, refitter.get_all_weights())
            if not report.ok:
                raise TensorRTError("refit refused, the engine keeps its weights: " + "; ".join(report.problems[:5]))
            if report.not_initializers:
                self.log.info("refit: %d refittable engine weights come from no initializer and keep the "
                              "plan's values (%s)", len(report.not_initializers),
                              ", ".join(report.not_initializers[:4]))
            self._refit(refitter, aligned, report.refit)
            runner = _EngineRunner(trt, self._torch, engine, self._num_points, self._max_batch, self.device.index)
            x = probe_batch(self._num_points, min(PROBE_BATCH, self._max_batch))
            with torch.no_grad():
                keypoints, logits = (t.numpy() for t in model(torch.from_numpy(x)))
            diff = output_differences(runner.run(x), NetworkOutput(keypoints, logits))
        failures = tolerance_failures(diff)
        if failures:
            raise TensorRTError(f"refitted engine differs from the torch model: {'; '.join(failures)}; "
                                "rolled back, the engine keeps its weights")
        with self._lock:
            self._runner = runner
        self.last_refit = {"probe": diff, "weights": len(report.refit), "renamed": len(aligned.renamed),
                           "seconds": time.perf_counter() - start}
        self.log.info("refit: swapped in the refitted engine (probe vs torch: keypoints %.2g, logits %.2g; %.2f s)",
                      diff["keypoints"], diff["logits"], self.last_refit["seconds"])

    def _refit(self, refitter: Any, aligned: AlignedExport, names: list[str]) -> None:
        """Refit the copy: the whole ONNX model at once, or weight by weight when that reports failure
        (refit_from_bytes also fails when the number of weights it refitted differs from the number it
        expected, with nothing missing: seen on TensorRT 10.11)."""
        trt = self._trt
        parser_refitter = trt.OnnxParserRefitter(refitter, self._trt_log)
        kept: list = []
        # refit_from_bytes only hands the ONNX weights to the refitter; refit_cuda_engine applies them
        # (both objects stay alive until then).
        if not parser_refitter.refit_from_bytes(aligned.onnx_bytes):
            self.log.warning("refit: refit_from_bytes reported failure (%s; missing weights: %s); setting the %d "
                             "refittable weights one by one with set_named_weights", _errors(parser_refitter),
                             list(refitter.get_missing_weights())[:10], len(names))
            kept = _set_weights_by_name(trt, refitter, aligned.weights, names)
        missing = list(refitter.get_missing_weights())
        if missing:
            raise TensorRTError(f"TensorRT refit is missing weights {missing[:10]}")
        if not refitter.refit_cuda_engine():
            raise TensorRTError("TensorRT refit_cuda_engine failed (see the TensorRT log above)")
        del kept
