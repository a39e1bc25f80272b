"""The inference backend contract shared by ONNX Runtime, TensorRT and torch."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class NetworkOutput:
    """Network outputs for a batch of B person crops of N points each."""

    keypoints: np.ndarray  # (B, J, 3) float32, in the crop's normalised frame
    logits: np.ndarray  # (B, N, NUM_CLASSES) float32, per-point part logits


class Backend(ABC):
    """Runs the keypoint and segmentation network on normalised crops (B, N, 3) float32."""

    name: str = "abstract"
    _num_points: int  # set by each backend's constructor
    _max_batch: int

    @property
    def num_points(self) -> int:
        """Points per crop N that the network takes."""
        return self._num_points

    @property
    def max_batch(self) -> int:
        """Largest batch one call accepts; callers split larger batches."""
        return self._max_batch

    @abstractmethod
    def infer(self, crops: np.ndarray) -> NetworkOutput:
        """Run the network on crops (B, N, 3), 1 <= B <= max_batch."""

    def warm_up(self) -> None:
        """Run once on zeros so the first real frame does not pay for lazy initialisation."""
        self.infer(np.zeros((1, self.num_points, 3), dtype=np.float32))

    def infer_all(self, crops: np.ndarray) -> NetworkOutput:
        """Run any number of crops, split into chunks of at most max_batch."""
        if len(crops) <= self.max_batch:
            return self.infer(crops)
        parts = [self.infer(crops[i : i + self.max_batch]) for i in range(0, len(crops), self.max_batch)]
        return NetworkOutput(
            np.concatenate([p.keypoints for p in parts]), np.concatenate([p.logits for p in parts])
        )

    def update_weights(self, state_dict: dict) -> None:
        """Swap in new network weights (online adaptation). Backends that cannot raise."""
        raise NotImplementedError(f"backend {self.name} cannot update weights")
