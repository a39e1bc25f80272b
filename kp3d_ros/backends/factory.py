"""Pick and build an inference backend; find the shipped model."""

from __future__ import annotations

import logging
from pathlib import Path

from kp3d_ros.backends.base import Backend
from kp3d_ros.core.params import defaults as _param_defaults

_DEFAULTS = _param_defaults()  # the node's defaults, so an engine built with defaults is the one the node uses
BACKENDS = ("auto", "onnxruntime", "tensorrt", "torch")
MODEL_FILE = "kp3d_poses_large.onnx"
PACKAGE = "kp3d_ros"


def default_model_path(name: str = MODEL_FILE) -> Path:
    """The shipped model: <source tree>/models/NAME, else the installed share/kp3d_ros/models/NAME
    (through ament_index when it is importable, else relative to the installed package)."""
    package_dir = Path(__file__).resolve().parents[1]
    candidates = [package_dir.parent / "models" / name]
    try:
        from ament_index_python.packages import get_package_share_directory

        candidates.append(Path(get_package_share_directory(PACKAGE)) / "models" / name)
    except (ImportError, LookupError, OSError, ValueError):  # not installed through ament / no AMENT_PREFIX_PATH
        pass
    # pip/colcon install: <prefix>/lib/pythonX.Y/site-packages/kp3d_ros -> <prefix>/share/kp3d_ros
    for parent in package_dir.parents:
        candidates.append(parent / "share" / PACKAGE / "models" / name)
    for path in candidates:
        if path.is_file():
            return path
    raise FileNotFoundError(f"{name} not found; looked in: {', '.join(str(c) for c in candidates[:3])}, ...")


def _checkpoint_for(model_path: Path) -> Path:
    """The torch backend needs a .pt checkpoint: the given one, or the .pt next to an .onnx file."""
    return model_path if model_path.suffix == ".pt" else model_path.with_suffix(".pt")


def _onnx_path(model_path: str | Path | None) -> tuple[Path, Path]:
    """(given path or the shipped model, the ONNX file for it: a .pt checkpoint's sibling .onnx)."""
    path = Path(model_path) if model_path else default_model_path()
    return path, (path.with_suffix(".onnx") if path.suffix == ".pt" else path)


def create_backend(name: str = "auto", model_path: str | Path | None = None,
                   max_batch: int = _DEFAULTS["network.max_people"], threads: int = _DEFAULTS["network.threads"],
                   fp16: bool = _DEFAULTS["network.fp16"], engine_cache_dir: str | Path | None = None,
                   logger: logging.Logger | None = None, cuda_device: int | None = None) -> tuple[Backend, str]:
    """(backend, reason). 'auto' takes TensorRT when TensorRT 10+ imports and the CUDA device exists, else
    ONNX Runtime; any failure while TensorRT starts (a missing or broken install, an old version, a failed
    build, a refused FP16 engine, whatever the exception) falls back to ONNX Runtime, and the reason says
    which was chosen and why, for the log. 'tensorrt' raises instead. Unknown names raise ValueError.
    cuda_device: the CUDA device index for TensorRT (None: torch's current device).
    The defaults are the node's (network.max_people, network.threads, network.fp16)."""
    if name not in BACKENDS:
        raise ValueError(f"unknown backend {name!r}; choose one of {', '.join(BACKENDS)}")
    path, onnx_path = _onnx_path(model_path)
    if name in ("auto", "tensorrt"):
        from kp3d_ros.backends.tensorrt_backend import TensorRTBackend, TensorRTError, tensorrt_status

        ok, status = tensorrt_status(cuda_device)
        if ok:
            try:
                backend = TensorRTBackend(onnx_path, max_batch, fp16, engine_cache_dir, logger, device=cuda_device)
                return backend, (f"TensorRT ({status}, {'fp16' if fp16 else 'fp32'}, engine {backend.engine_path}, "
                                 f"{backend.engine_source})")
            except Exception as exc:  # auto never crashes on TensorRT: AttributeError, TypeError, OSError, ...
                if name == "tensorrt":
                    raise
                status = f"TensorRT failed: {type(exc).__name__}: {exc}"
        elif name == "tensorrt":
            raise TensorRTError(f"TensorRT backend requested but unavailable: {status}")
        from kp3d_ros.backends.onnxruntime_backend import OnnxRuntimeBackend

        backend = OnnxRuntimeBackend(onnx_path, max_batch, threads)
        return backend, f"ONNX Runtime {backend.active_providers} (auto: {status})"
    if name == "onnxruntime":
        from kp3d_ros.backends.onnxruntime_backend import OnnxRuntimeBackend

        backend = OnnxRuntimeBackend(onnx_path, max_batch, threads)
        return backend, f"ONNX Runtime {backend.active_providers} (requested)"
    from kp3d_ros.backends.torch_backend import TorchBackend

    backend = TorchBackend(_checkpoint_for(path), max_batch, threads)
    return backend, f"torch eager on {backend.device} (requested)"


def build_engine_only(params: dict, logger: logging.Logger | None = None) -> str:
    """network.build_only: build (or load) the TensorRT engine that the node with these parameters would use
    and return a line for the log saying where it is. Other backends, and auto without TensorRT and a GPU,
    have nothing to build: the line says so. Raises like create_backend when the engine cannot be built
    (also for auto: a build-only run that cannot build the engine has failed)."""
    params = {**_DEFAULTS, **params}
    name = params["network.backend"]
    if name not in BACKENDS:
        raise ValueError(f"unknown backend {name!r}; choose one of {', '.join(BACKENDS)}")
    if name not in ("auto", "tensorrt"):
        return f"network.build_only: backend {name} has no engine to build; nothing to do"
    from kp3d_ros.backends.tensorrt_backend import TensorRTBackend, TensorRTError, tensorrt_status

    ok, status = tensorrt_status()
    if not ok:
        if name == "tensorrt":
            raise TensorRTError(f"TensorRT backend requested but unavailable: {status}")
        return f"network.build_only: auto would run ONNX Runtime ({status}); no TensorRT engine to build"
    _, onnx_path = _onnx_path(params["network.model_path"] or None)
    backend = TensorRTBackend(onnx_path, params["network.max_people"], params["network.fp16"],
                              params["network.engine_cache_dir"] or None, logger)
    return (f"network.build_only: TensorRT engine ready at {backend.engine_path} ({status}, "
            f"{'fp16' if backend.fp16 else 'fp32'}, batch 1..{backend.max_batch}, {backend.engine_source})")
