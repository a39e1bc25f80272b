"""Person candidates: connected components of occupied x-y voxels of the non-ground points.

The non-ground points up to a person's height above the local ground are projected onto a dense
x-y grid of detection.voxel_size cells; 8-connected components of occupied cells (scipy.ndimage.label)
are clusters, kept when their point count, height above ground, base and width fit a person.
Linear in the number of points; no neighbour search.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

HEAD_ROOM = 0.3  # m above detection.max_height still projected (so a too-tall object is seen as too tall)
EIGHT_CONNECTED = np.ones((3, 3), dtype=bool)


@dataclass(frozen=True)
class Candidates:
    """C person candidates, sorted by point count (largest first)."""

    centres: np.ndarray  # (C, 2) mean x, y of the cluster's points
    heights: np.ndarray  # (C,) highest point above the local ground
    bases: np.ndarray  # (C,) lowest point above the local ground
    widths: np.ndarray  # (C,) larger side of the x-y bounding box of occupied cells
    counts: np.ndarray  # (C,) points

    def __len__(self) -> int:
        return len(self.counts)


def _empty() -> Candidates:
    return Candidates(np.zeros((0, 2), np.float32), *(np.zeros(0, np.float32) for _ in range(3)),
                      np.zeros(0, np.int64))


def _box_sides(labels: np.ndarray, num: int) -> np.ndarray:
    """Larger side, in cells, of each label's bounding box (labels 1..num)."""
    cx, cy = np.nonzero(labels)
    lab = labels[cx, cy].astype(np.intp)
    low_x, low_y = np.full(num + 1, labels.shape[0]), np.full(num + 1, labels.shape[1])
    high_x, high_y = np.zeros(num + 1, np.int64), np.zeros(num + 1, np.int64)
    np.minimum.at(low_x, lab, cx)
    np.minimum.at(low_y, lab, cy)
    np.maximum.at(high_x, lab, cx)
    np.maximum.at(high_y, lab, cy)
    return np.maximum(high_x - low_x, high_y - low_y)[1:].astype(np.float32) + 1.0


def find_candidates(points: np.ndarray, height_above: np.ndarray, extent: float, voxel_size: float,
                    min_points: int, min_height: float, max_height: float, max_width: float,
                    max_base: float, min_width: float = 0.0) -> Candidates:
    """Person candidates among non-ground points (M, 3) with their heights above ground (M,)."""
    band = height_above <= max_height + HEAD_ROOM
    xy = points[band, :2]
    h = height_above[band]
    if len(xy) == 0:
        return _empty()
    n = int(np.ceil(2.0 * extent / voxel_size))
    scale = 1.0 / voxel_size
    ix = ((xy[:, 0] + np.float32(extent)) * np.float32(scale)).astype(np.intp)
    iy = ((xy[:, 1] + np.float32(extent)) * np.float32(scale)).astype(np.intp)
    np.clip(ix, 0, n - 1, out=ix)
    np.clip(iy, 0, n - 1, out=iy)
    flat = ix * n + iy
    occupied = np.bincount(flat, minlength=n * n).reshape(n, n) > 0
    labels, num = ndimage.label(occupied, structure=EIGHT_CONNECTED)
    if num == 0:
        return _empty()
    point_label = labels.reshape(-1)[flat].astype(np.intp)  # 1..num (intp: the fast path of ufunc.at)
    counts = np.bincount(point_label, minlength=num + 1)[1:]
    sum_x = np.bincount(point_label, weights=xy[:, 0], minlength=num + 1)[1:]
    sum_y = np.bincount(point_label, weights=xy[:, 1], minlength=num + 1)[1:]
    top = np.full(num + 1, -np.inf, np.float32)
    np.maximum.at(top, point_label, h.astype(np.float32, copy=False))
    base = np.full(num + 1, np.inf, np.float32)
    np.minimum.at(base, point_label, h.astype(np.float32, copy=False))
    widths = _box_sides(labels, num) * voxel_size
    top, base = top[1:], base[1:]
    keep = ((counts >= min_points) & (top >= min_height) & (top <= max_height) & (widths <= max_width)
            & (widths >= min_width) & (base <= max_base))
    order = np.flatnonzero(keep)
    order = order[np.argsort(-counts[order], kind="stable")]
    centres = np.stack([sum_x[order] / counts[order], sum_y[order] / counts[order]], axis=1).astype(np.float32)
    return Candidates(centres, top[order], base[order], widths[order], counts[order])
