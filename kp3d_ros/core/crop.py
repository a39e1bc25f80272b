"""The one definition of a person crop: the points around a person that the network sees.

Used alike by the synthetic data (training samples), the node (per-track crops) and Stage II.
"""

from __future__ import annotations

import numpy as np

CROP_RADIUS = 0.9  # m, horizontal distance from the person's vertical axis
CROP_BELOW = 0.3  # m, below the person's lowest point kept (feet, some ground)
CROP_HEIGHT = 2.6  # m, total height of the crop cylinder


def crop_indices(points: np.ndarray, centre_xy: np.ndarray, z_min: float, radius: float = CROP_RADIUS,
                 height: float = CROP_HEIGHT) -> np.ndarray:
    """Indices of points (M, 3) inside the vertical cylinder at centre_xy from z_min up by height."""
    dx = points[:, 0] - centre_xy[0]
    dy = points[:, 1] - centre_xy[1]
    inside = (dx * dx + dy * dy <= radius * radius) & (points[:, 2] >= z_min) & (points[:, 2] <= z_min + height)
    return np.flatnonzero(inside)
