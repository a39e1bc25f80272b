"""Region of interest: horizontal range band and height band around the sensor, in the LiDAR frame."""

from __future__ import annotations

import numpy as np


def roi_mask(points: np.ndarray, min_range: float, max_range: float, z_min: float, z_max: float) -> np.ndarray:
    """Boolean mask of the points (M, 3) inside the ROI; non-finite points are always outside.

    Range is horizontal (x-y) distance from the sensor, so the ground far from the sensor is kept.
    """
    x, y, z = points[:, 0], points[:, 1], points[:, 2]
    r2 = x * x + y * y
    mask = r2 >= min_range * min_range
    mask &= r2 <= max_range * max_range
    mask &= z >= z_min
    mask &= z <= z_max
    return mask


def count_nonfinite(points: np.ndarray) -> int:
    """Number of points (M, 3) with a NaN or infinite coordinate."""
    if np.isfinite(points.reshape(-1)).all():
        return 0
    finite = np.isfinite(points[:, 0]) & np.isfinite(points[:, 1]) & np.isfinite(points[:, 2])
    return int(finite.size - np.count_nonzero(finite))
