"""Pinhole camera geometry shared by the node's overlay and the synthetic camera (numpy only).

Extrinsics are (x, y, z, roll, pitch, yaw) of the camera in the LiDAR frame; the rotation built from
them takes the camera's optical axes (x right, y down, z forward) to LiDAR axes.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def camera_rotation(roll: float, pitch: float, yaw: float) -> np.ndarray:
    """Rz(yaw) @ Ry(pitch) @ Rx(roll): the camera's optical axes expressed in the LiDAR frame."""
    cr, sr, cp, sp, cy, sy = np.cos(roll), np.sin(roll), np.cos(pitch), np.sin(pitch), np.cos(yaw), np.sin(yaw)
    rx = np.array([[1, 0, 0], [0, cr, -sr], [0, sr, cr]])
    ry = np.array([[cp, 0, sp], [0, 1, 0], [-sp, 0, cp]])
    rz = np.array([[cy, -sy, 0], [sy, cy, 0], [0, 0, 1]])
    return rz @ ry @ rx


def project(points: np.ndarray, k: np.ndarray, extrinsics: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    """Pixel coordinates (N, 2) and depths (N,) of LiDAR-frame points; depth <= 0 is behind the camera."""
    rotation = camera_rotation(*extrinsics[3:6])
    in_camera = (np.asarray(points, dtype=np.float64) - np.asarray(extrinsics[:3], dtype=np.float64)) @ rotation
    depth = in_camera[:, 2]
    safe = np.where(np.abs(depth) > 1e-9, depth, 1e-9)
    return (in_camera @ np.asarray(k).T)[:, :2] / safe[:, None], depth
