"""ONNX Runtime backend: CUDA / TensorRT execution providers when the installed build has them, else CPU."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from kp3d_ros.backends.base import Backend, NetworkOutput
from kp3d_ros.model.export import INPUT_NAME, OUTPUT_NAMES, read_metadata
from kp3d_ros.model.preprocess import check_input_rule

PREFERRED_PROVIDERS = ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")


def default_providers() -> list[str]:
    """The preferred providers this onnxruntime build offers, fastest first (CPU always last)."""
    import onnxruntime as ort

    available = set(ort.get_available_providers())
    return [p for p in PREFERRED_PROVIDERS if p in available] or ["CPUExecutionProvider"]


def check_crops(crops: np.ndarray, num_points: int, max_batch: int) -> np.ndarray:
    """Validated (B, N, 3) float32 contiguous crops, 1 <= B <= max_batch; ValueError otherwise."""
    crops = np.asarray(crops)
    if crops.ndim != 3 or crops.shape[1:] != (num_points, 3):
        raise ValueError(f"crops must have shape (B, {num_points}, 3), got {crops.shape}")
    if not 1 <= len(crops) <= max_batch:
        raise ValueError(f"batch of {len(crops)} crops is outside 1..{max_batch} (use infer_all to split)")
    return np.ascontiguousarray(crops, dtype=np.float32)


class OnnxRuntimeBackend(Backend):
    name = "onnxruntime"

    def __init__(self, model_path: str | Path, max_batch: int = 16, threads: int = 1,
                 providers: list | None = None):
        import onnxruntime as ort

        self._ort = ort
        path = Path(model_path)
        if not path.is_file():
            raise FileNotFoundError(f"ONNX model not found: {path}")
        if max_batch < 1:
            raise ValueError("max_batch must be >= 1")
        self.model_path = path
        self._max_batch = int(max_batch)
        self._weight_template = None  # the graph with unfolded initializers, for update_weights
        self.threads = int(threads)
        self.providers = list(providers) if providers else default_providers()
        try:
            self._session = self._make_session(path.read_bytes())
        except Exception as error:  # ONNX Runtime's own types (InvalidProtobuf, InvalidArgument, Fail, ...)
            detail = " ".join(str(error).split()) or type(error).__name__
            raise ValueError(f"{path} is not a usable ONNX model: {detail}") from error
        meta = self._session.get_modelmeta().custom_metadata_map
        check_input_rule(meta, path)
        self.metadata = dict(meta)
        if "num_points" in meta:
            self._num_points = int(meta["num_points"])
        else:  # models without our metadata: the input's fixed second dimension
            dim = self._session.get_inputs()[0].shape[1]
            if not isinstance(dim, int):
                raise ValueError(f"{path}: no num_points metadata and no fixed point dimension")
            self._num_points = dim

    def _make_session(self, model_bytes: bytes):
        options = self._ort.SessionOptions()
        options.intra_op_num_threads = self.threads
        options.inter_op_num_threads = 1
        options.graph_optimization_level = self._ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3
        # Idle intra-op threads sleep instead of spinning: the rest of the pipeline shares these cores.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        return self._ort.InferenceSession(model_bytes, sess_options=options, providers=self.providers)

    @property
    def active_providers(self) -> list[str]:
        return self._session.get_providers()

    def infer(self, crops: np.ndarray) -> NetworkOutput:
        crops = check_crops(crops, self._num_points, self._max_batch)
        session = self._session  # one reference for the whole call (update_weights swaps it)
        keypoints, logits = session.run(list(OUTPUT_NAMES), {INPUT_NAME: crops})
        return NetworkOutput(keypoints, logits)

    def prepare_weight_updates(self) -> None:
        """Export the weight template once (about 0.1 s): later update_weights calls only swap its initializers."""
        if self._weight_template is not None:
            return
        import onnx
        import torch

        from kp3d_ros.model.export import export_onnx_bytes
        from kp3d_ros.model.network import build_model

        if "network_config" not in self.metadata:
            raise ValueError(f"{self.model_path} has no network_config metadata; cannot rebuild it for new weights")
        model = build_model(json.loads(self.metadata["network_config"]))
        generator = torch.Generator().manual_seed(0)
        with torch.no_grad():  # distinct values: the exporter shares equal initializers (fresh LayerNorms)
            for tensor in model.state_dict().values():
                tensor.copy_(torch.randn(tensor.shape, generator=generator))
        meta = {"joint_names": json.loads(self.metadata.get("joint_names", "[]")) or None,
                "part_names": json.loads(self.metadata.get("part_names", "[]")) or None}
        meta = {k: v for k, v in meta.items() if v}
        template = export_onnx_bytes(model, self._num_points, meta, fold_constants=False)
        self._weight_template = onnx.load_from_string(template)

    def update_weights(self, state_dict: dict) -> None:
        """Put `state_dict` into the weight template (prepare_weight_updates) and swap in a new session built
        from it (in-flight calls finish on the old one)."""
        from kp3d_ros.model.export import with_weights

        self.prepare_weight_updates()
        data = with_weights(self._weight_template, state_dict)
        new_session = self._make_session(data)
        self._session = new_session
        self.metadata = read_metadata(data)
