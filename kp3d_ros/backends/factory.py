"""Pick and build an inference backend; find the shipped model."""

from __future__ import annotations

import logging
from pathlib import Path

from kp3d_ros.backends.base import Backend

BACKENDS = ("auto", "onnxruntime", "tensorrt", "torch")
MODEL_FILE = "kp3d_stage1.onnx"
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


def create_backend(name: str = "auto", model_path: str | Path | None = None, max_batch: int = 16,
                   threads: int = 1, fp16: bool = True, engine_cache_dir: str | Path | None = None,
                   logger: logging.Logger | None = None) -> tuple[Backend, str]:
    """(backend, reason). 'auto' takes TensorRT when it imports and a CUDA GPU exists, else ONNX Runtime;
    the reason says which was chosen and why, for the log. Unknown names raise ValueError."""
    if name not in BACKENDS:
        raise ValueError(f"unknown backend {name!r}; choose one of {', '.join(BACKENDS)}")
    path = Path(model_path) if model_path else default_model_path()
    onnx_path = path.with_suffix(".onnx") if path.suffix == ".pt" else path
    if name in ("auto", "tensorrt"):
        from kp3d_ros.backends.tensorrt_backend import TensorRTBackend, TensorRTError, tensorrt_status

        ok, status = tensorrt_status()
        if ok:
            try:
                backend = TensorRTBackend(onnx_path, max_batch, fp16, engine_cache_dir, logger)
                return backend, f"TensorRT ({status}, {'fp16' if fp16 else 'fp32'}, engine {backend.engine_path})"
            except (TensorRTError, RuntimeError) as exc:
                if name == "tensorrt":
                    raise
                status = f"TensorRT failed: {exc}"
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
