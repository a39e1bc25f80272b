"""Camera geometry shared by the node's overlay and the synthetic camera (numpy only).

Extrinsics are (x, y, z, roll, pitch, yaw) of the camera in the LiDAR frame; the rotation built from
them takes the camera's optical axes (x right, y down, z forward) to LiDAR axes. Lens distortion follows
the CameraInfo models: ``plumb_bob`` (D = k1, k2, p1, p2, k3) and ``rational_polynomial`` (D = k1, k2,
p1, p2, k3, k4, k5, k6), the OpenCV formulas.
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


DISTORTION_MODELS = {"plumb_bob": 5, "rational_polynomial": 8}  # model: number of coefficients used


def distortion_coefficients(model: str, d: Sequence[float]) -> np.ndarray | None:
    """The 8 coefficients (k1, k2, p1, p2, k3, k4, k5, k6) of a CameraInfo model, None for no distortion.

    An empty model or all-zero D is no distortion; ValueError for an unknown model or too few coefficients.
    """
    d = np.asarray(d, dtype=np.float64).reshape(-1)
    if not model or model == "none" or not np.any(d):
        return None
    if model not in DISTORTION_MODELS:
        raise ValueError(f"unsupported distortion model '{model}' (supported: {', '.join(DISTORTION_MODELS)})")
    needed = DISTORTION_MODELS[model]
    if d.size < needed or not np.isfinite(d[:needed]).all():
        raise ValueError(f"distortion model {model} needs {needed} finite coefficients, got {d.size}")
    out = np.zeros(8)
    out[:needed] = d[:needed]
    return out


def distort(xn: np.ndarray, yn: np.ndarray, coefficients: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Distorted normalised image coordinates (x/z, y/z) with coefficients from distortion_coefficients."""
    k1, k2, p1, p2, k3, k4, k5, k6 = coefficients
    r2 = xn * xn + yn * yn
    radial = (1 + r2 * (k1 + r2 * (k2 + r2 * k3))) / (1 + r2 * (k4 + r2 * (k5 + r2 * k6)))
    xd = xn * radial + 2 * p1 * xn * yn + p2 * (r2 + 2 * xn * xn)
    yd = yn * radial + p1 * (r2 + 2 * yn * yn) + 2 * p2 * xn * yn
    return xd, yd


def project(points: np.ndarray, k: np.ndarray, extrinsics: Sequence[float],
            distortion: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Pixel coordinates (N, 2) and depths (N,) of LiDAR-frame points; depth <= 0 is behind the camera.

    ``distortion``: coefficients from distortion_coefficients (None: a pinhole camera).
    """
    rotation = camera_rotation(*extrinsics[3:6])
    in_camera = (np.asarray(points, dtype=np.float64) - np.asarray(extrinsics[:3], dtype=np.float64)) @ rotation
    depth = in_camera[:, 2]
    safe = np.where(np.abs(depth) > 1e-9, depth, 1e-9)
    if distortion is None:
        return (in_camera @ np.asarray(k).T)[:, :2] / safe[:, None], depth
    xd, yd = distort(in_camera[:, 0] / safe, in_camera[:, 1] / safe, distortion)
    normalised = np.stack([xd, yd, np.ones_like(xd)], axis=1)
    return (normalised @ np.asarray(k, dtype=np.float64).T)[:, :2], depth
