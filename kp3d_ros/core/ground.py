"""Ground removal: a grid of local ground planes from per-cell minimum heights.

Each ground.cell_size cell gets a plane: its slope from the neighbouring cells' minimum heights
(central differences, so a sloped ground is followed) and its height from the lowest point after
removing that slope. Cells whose minimum sits far above all their neighbours (entirely covered by
an object) and empty cells take the plane of the nearest good cell. A point is ground when it is
at most ground.clearance above its cell's plane.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

MAX_SLOPE = 0.2  # steepest ground slope followed (rise over run)
STEP_MARGIN = 0.2  # m, a cell minimum this much (plus the slope allowance) above every neighbour is an object


@dataclass(frozen=True)
class GroundGrid:
    """Per-cell ground planes z = height + slope_x * (x - cx) + slope_y * (y - cy) over a square extent."""

    origin: np.ndarray  # (2,) x, y of the grid's lower corner
    cell_size: float
    height: np.ndarray  # (nx, ny) ground z at each cell centre
    slope_x: np.ndarray  # (nx, ny)
    slope_y: np.ndarray  # (nx, ny)

    def cells(self, xy: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Cell indices (ix, iy) of points (M, 2+), clipped to the grid."""
        nx, ny = self.height.shape
        ix = ((xy[:, 0] - self.origin[0]) * np.float32(1.0 / self.cell_size)).astype(np.intp)
        iy = ((xy[:, 1] - self.origin[1]) * np.float32(1.0 / self.cell_size)).astype(np.intp)
        np.clip(ix, 0, nx - 1, out=ix)
        np.clip(iy, 0, ny - 1, out=iy)
        return ix, iy

    def height_at(self, xy: np.ndarray) -> np.ndarray:
        """Ground z under points (M, 2+)."""
        xy = np.asarray(xy, dtype=np.float32).reshape(-1, xy.shape[-1])
        ix, iy = self.cells(xy)
        cx = self.origin[0] + (ix + 0.5) * self.cell_size
        cy = self.origin[1] + (iy + 0.5) * self.cell_size
        return self.height[ix, iy] + self.slope_x[ix, iy] * (xy[:, 0] - cx) + self.slope_y[ix, iy] * (xy[:, 1] - cy)


@dataclass(frozen=True)
class GroundSegmentation:
    is_ground: np.ndarray  # (M,) bool
    height_above: np.ndarray  # (M,) float32, z minus the local ground
    grid: GroundGrid
    cell: np.ndarray  # (M,) intp, flat grid cell (ix * ny + iy) of each point


def _cell_minimum(flat: np.ndarray, values: np.ndarray, num_cells: int) -> np.ndarray:
    out = np.full(num_cells, np.inf, dtype=np.float32)
    np.minimum.at(out, flat, values)
    return out


def _fill_from_nearest(grid: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Copy each invalid cell's value from its nearest valid cell."""
    if valid.all():
        return grid
    nearest = ndimage.distance_transform_edt(~valid, return_distances=False, return_indices=True)
    return grid[nearest[0], nearest[1]]


def segment_ground(points: np.ndarray, cell_size: float, clearance: float, extent: float,
                   default_height: float = -1.9) -> GroundSegmentation:
    """Split points (M, 3) inside [-extent, extent]^2 (x-y) into ground and the rest.

    default_height is the ground z used when no cell has any point.
    """
    n = int(np.ceil(2.0 * extent / cell_size))
    origin = np.array([-extent, -extent], dtype=np.float32)
    grid = GroundGrid(origin, float(cell_size), np.full((n, n), default_height, np.float32),
                      np.zeros((n, n), np.float32), np.zeros((n, n), np.float32))
    if len(points) == 0:
        return GroundSegmentation(np.zeros(0, bool), np.zeros(0, np.float32), grid, np.zeros(0, np.intp))
    ix, iy = grid.cells(points)
    flat = ix * n + iy
    z = points[:, 2]
    lowest = _cell_minimum(flat, z, n * n).reshape(n, n)
    occupied = np.isfinite(lowest)
    # A cell far above all its occupied neighbours is an object standing on unseen ground.
    neighbour_low = ndimage.minimum_filter(lowest, size=3, mode="constant", cval=np.inf)
    with np.errstate(invalid="ignore"):
        valid = occupied & (lowest - neighbour_low <= MAX_SLOPE * cell_size + STEP_MARGIN)
    if not valid.any():
        valid = occupied
    filled = _fill_from_nearest(lowest, valid)
    slope_x, slope_y = np.gradient(filled, cell_size)
    np.clip(slope_x, -MAX_SLOPE, MAX_SLOPE, out=slope_x)
    np.clip(slope_y, -MAX_SLOPE, MAX_SLOPE, out=slope_y)
    slope_x = slope_x.astype(np.float32)
    slope_y = slope_y.astype(np.float32)
    # Remove each cell's slope, then its lowest point is the ground height at the cell centre.
    size = np.float32(cell_size)
    cx = origin[0] + (ix.astype(np.float32) + np.float32(0.5)) * size  # float32 throughout: ufunc.at fast path
    cy = origin[1] + (iy.astype(np.float32) + np.float32(0.5)) * size
    sx = slope_x.reshape(-1)[flat]
    sy = slope_y.reshape(-1)[flat]
    detrended = z - sx * (points[:, 0] - cx) - sy * (points[:, 1] - cy)
    height = _cell_minimum(flat, detrended, n * n).reshape(n, n)
    height = _fill_from_nearest(height, valid & np.isfinite(height)).astype(np.float32)
    grid = GroundGrid(origin, float(cell_size), height, slope_x, slope_y)
    height_above = detrended - height.reshape(-1)[flat]
    return GroundSegmentation(height_above <= clearance, height_above, grid, flat)
