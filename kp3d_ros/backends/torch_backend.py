"""torch backend: the checkpoint run eagerly (reference, and the model online adaptation trains)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from kp3d_ros.backends.base import Backend, NetworkOutput
from kp3d_ros.backends.onnxruntime_backend import check_crops
from kp3d_ros.model.checkpoint import load_model


class TorchBackend(Backend):
    name = "torch"

    def __init__(self, checkpoint: str | Path, max_batch: int = 16, threads: int | None = None,
                 device: str = "cpu"):
        if threads:
            torch.set_num_threads(int(threads))
        self.model, self.meta = load_model(checkpoint)
        self.device = torch.device(device)
        self.model.to(self.device).eval()
        self._max_batch = int(max_batch)
        self._num_points = int(self.meta["num_points"])

    def infer(self, crops: np.ndarray) -> NetworkOutput:
        crops = check_crops(crops, self._num_points, self._max_batch)
        with torch.no_grad():
            keypoints, logits = self.model(torch.from_numpy(crops).to(self.device))
        return NetworkOutput(keypoints.cpu().numpy(), logits.cpu().numpy())

    def update_weights(self, state_dict: dict) -> None:
        self.model.load_state_dict(state_dict)
        self.model.eval()
