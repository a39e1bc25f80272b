"""Person candidates: connected components of occupied x-y voxels of the non-ground points.

The non-ground points up to a person's height above the local ground are projected onto a dense
x-y grid of detection.voxel_size cells; 8-connected components of occupied cells (scipy.ndimage.label)
are clusters, kept when their point count, height above ground, base and width fit a person.
A cluster that fits but for being too wide (people walking side by side, a person beside a car or a
bush) is split once: its points above SPLIT_MIN_HEIGHT, where bodies are apart even when feet touch
and where low clutter ends, are clustered again, and those clusters are judged alike. A wide cluster no
higher than LYING_MAX_TOP and no wider than ``max_lying_width`` in which that split finds nobody is kept
whole: a person lying down is up to 2 m long, with few points above SPLIT_MIN_HEIGHT (low clutter kept
this way is left to the network's body-share gate).
Linear in the number of points; no neighbour search.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

HEAD_ROOM = 0.3  # m above detection.max_height still projected (so a too-tall object is seen as too tall)
SPLIT_MAX_WIDTH = 3.5  # m: wider clusters (cars, walls) are not split
SPLIT_MIN_HEIGHT = 0.5  # m above the ground: the points a wide cluster is split on
LYING_MAX_TOP = 1.3  # m above the ground: a wide cluster this low may be a person lying down (an arm raised)
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


def _box_sides(labels: np.ndarray, occupied: np.ndarray, num: int) -> np.ndarray:
    """Larger side, in cells, of each label's bounding box (labels 1..num of the occupied cells)."""
    cells = np.flatnonzero(occupied)  # a boolean grid's nonzero: far cheaper than the int labels'
    cx, cy = np.divmod(cells, labels.shape[1])
    lab = labels.reshape(-1)[cells].astype(np.intp)
    low_x, low_y = np.full(num + 1, labels.shape[0]), np.full(num + 1, labels.shape[1])
    high_x, high_y = np.zeros(num + 1, np.int64), np.zeros(num + 1, np.int64)
    np.minimum.at(low_x, lab, cx)
    np.minimum.at(low_y, lab, cy)
    np.maximum.at(high_x, lab, cx)
    np.maximum.at(high_y, lab, cy)
    return np.maximum(high_x - low_x, high_y - low_y)[1:].astype(np.float32) + 1.0


def find_candidates(points: np.ndarray, height_above: np.ndarray, extent: float, voxel_size: float,
                    min_points: int, min_height: float, max_height: float, max_width: float,
                    max_base: float, min_width: float = 0.0, split: bool = True,
                    max_lying_width: float = 0.0) -> Candidates:
    """Person candidates among non-ground points (M, 3) with their heights above ground (M,).
    ``max_lying_width`` > max_width keeps wide, low clusters (top <= LYING_MAX_TOP) in which the split finds
    nobody whole; 0: none."""
    band = height_above <= max_height + HEAD_ROOM
    xy = np.compress(band, points[:, :2], axis=0)  # np.compress: a few times faster than boolean row indexing
    h = np.compress(band, height_above)
    if len(xy) == 0:
        return _empty()
    n = int(np.ceil(2.0 * extent / voxel_size))
    scale = np.float32(1.0 / voxel_size)

    def cells(xy: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Grid cell (ix, iy) of x-y positions (K, 2) on the full 2 * extent grid."""
        ix = ((xy[:, 0] + np.float32(extent)) * scale).astype(np.intp)
        iy = ((xy[:, 1] + np.float32(extent)) * scale).astype(np.intp)
        return np.clip(ix, 0, n - 1, out=ix), np.clip(iy, 0, n - 1, out=iy)

    ix, iy = cells(xy)
    origin = (ix.min(), iy.min())
    ix -= origin[0]  # the grid spans only the occupied cells' bounding box
    iy -= origin[1]
    nx, ny = int(ix.max()) + 1, int(iy.max()) + 1
    flat = ix * ny + iy
    occupied = np.bincount(flat, minlength=nx * ny).reshape(nx, ny) > 0
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
    widths = _box_sides(labels, occupied, num) * voxel_size
    top, base = top[1:], base[1:]
    fits = (counts >= min_points) & (top >= min_height) & (top <= max_height) & (base <= max_base)
    keep = fits & (widths <= max_width) & (widths >= min_width)
    wide = fits & (widths > max_width) & (widths <= SPLIT_MAX_WIDTH)
    lying = wide & (top <= LYING_MAX_TOP) & (widths <= max_lying_width)
    parts = _empty()
    if split and wide.any():
        upper = wide[point_label - 1] & (h >= SPLIT_MIN_HEIGHT)
        band_index = np.flatnonzero(band)[upper]
        parts = find_candidates(points[band_index], height_above[band_index], extent, voxel_size, min_points,
                                min_height, max_height, max_width, max_base, min_width, split=False)
        # a wide cluster the split found someone in is not kept whole (two children side by side)
        cx, cy = cells(parts.centres)
        cx, cy = cx - origin[0], cy - origin[1]
        inside = (cx >= 0) & (cx < nx) & (cy >= 0) & (cy < ny)
        hit = labels[cx[inside], cy[inside]]
        lying[hit[hit > 0] - 1] = False
    order = np.flatnonzero(keep | lying)
    centres = np.stack([sum_x[order] / counts[order], sum_y[order] / counts[order]], axis=1).astype(np.float32)
    found = _concatenated(Candidates(centres, top[order], base[order], widths[order], counts[order]), parts)
    order = np.argsort(-found.counts, kind="stable")
    return Candidates(found.centres[order], found.heights[order], found.bases[order], found.widths[order],
                      found.counts[order])


def _concatenated(a: Candidates, b: Candidates) -> Candidates:
    return Candidates(np.concatenate([a.centres, b.centres]), np.concatenate([a.heights, b.heights]),
                      np.concatenate([a.bases, b.bases]), np.concatenate([a.widths, b.widths]),
                      np.concatenate([a.counts, b.counts]))
