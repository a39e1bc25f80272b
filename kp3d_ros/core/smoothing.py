"""Per-track exponential smoothing of keypoints, relative to the track's centre.

Smoothing the pose relative to the moving track centre (not in the LiDAR frame) removes jitter
without making a walking person's skeleton lag behind their points.
"""

from __future__ import annotations

import numpy as np


class KeypointSmoother:
    """s_t = alpha * y_t + (1 - alpha) * s_{t-1} on joints minus track centre, and on confidences."""

    def __init__(self, alpha: float) -> None:
        if not 0.0 < alpha <= 1.0:
            raise ValueError(f"smoothing alpha must be in (0, 1], got {alpha}")
        self.alpha = float(alpha)
        self._state: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    def smooth(self, track_id: int, joints: np.ndarray, confidence: np.ndarray,
               centre: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Smoothed (joints (J, 3), confidence (J,)) for this track; the first frame passes through."""
        relative = joints - centre
        previous = self._state.get(track_id)
        if previous is not None and np.isfinite(previous[0]).all():
            relative = self.alpha * relative + (1.0 - self.alpha) * previous[0]
            confidence = self.alpha * confidence + (1.0 - self.alpha) * previous[1]
        self._state[track_id] = (relative, confidence)
        return (relative + centre).astype(np.float32), np.asarray(confidence, dtype=np.float32)

    def keep_only(self, track_ids: set[int] | list[int]) -> None:
        """Forget tracks not in track_ids (dead tracks)."""
        alive = set(track_ids)
        for tid in [t for t in self._state if t not in alive]:
            del self._state[tid]

    def reset(self) -> None:
        self._state.clear()
