"""Camera overlay: skeletons (LiDAR frame) projected into the camera image with its CameraInfo K and D."""

from __future__ import annotations

import array
from collections.abc import Sequence

import numpy as np
from sensor_msgs.msg import CameraInfo, Image

from kp3d_ros import skeleton
from kp3d_ros.core import camera_geometry

SUPPORTED_ENCODINGS = ("rgb8", "bgr8", "mono8")
MIN_DEPTH = 0.1  # m; points closer to (or behind) the camera are not drawn
LINE_RADIUS = 1  # pixels either side of a line
JOINT_RADIUS = 3  # pixels
FIELD_MARGIN = 0.5  # with distortion, points beyond the image by more than this share of its size are not drawn


class OverlayError(ValueError):
    """The image or camera info cannot be used; ``reason`` is the node's overlay_error_<reason> counter."""

    def __init__(self, message: str, reason: str = "bad_image") -> None:
        super().__init__(message)
        self.reason = reason


def project(points: np.ndarray, k: np.ndarray, extrinsics: Sequence[float], distortion: np.ndarray | None = None,
            size: tuple[int, int] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Pixel coordinates (N, 2) of LiDAR-frame points and a mask of those that can be drawn: in front of the
    camera and, with distortion and the image size (width, height), not far outside the image, where the
    distortion polynomial no longer describes the lens (it can fold such points back into the picture)."""
    pixels, depth = camera_geometry.project(points, k, extrinsics, distortion)
    drawable = depth > MIN_DEPTH
    if distortion is not None and size is not None:
        pinhole, _ = camera_geometry.project(points, k, extrinsics)
        for axis, extent in enumerate(size):
            drawable &= (pinhole[:, axis] > -FIELD_MARGIN * extent) & (pinhole[:, axis] < (1 + FIELD_MARGIN) * extent)
    return pixels, drawable


def image_to_rgb(msg: Image) -> np.ndarray:
    """An (H, W, 3) uint8 RGB copy of an rgb8, bgr8 or mono8 image; OverlayError otherwise."""
    if msg.encoding not in SUPPORTED_ENCODINGS:
        raise OverlayError(f"unsupported image encoding '{msg.encoding}' (supported: {', '.join(SUPPORTED_ENCODINGS)})",
                           "unsupported_encoding")
    channels = 1 if msg.encoding == "mono8" else 3
    height, width, step = int(msg.height), int(msg.width), int(msg.step)
    if step < width * channels or len(msg.data) < step * height:
        raise OverlayError(f"image data ({len(msg.data)} bytes, step {step}) too small for {width}x{height} "
                           f"{msg.encoding}")
    rows = np.frombuffer(msg.data, dtype=np.uint8)[: step * height].reshape(height, step)
    pixels = rows[:, : width * channels].reshape(height, width, channels)
    if channels == 1:
        return np.repeat(pixels, 3, axis=2)
    return pixels[:, :, ::-1].copy() if msg.encoding == "bgr8" else pixels.copy()


def _paint(rgb: np.ndarray, uv: np.ndarray, colour: np.ndarray, radius: int) -> None:
    height, width = rgb.shape[:2]
    offsets = np.arange(-radius, radius + 1)
    du, dv = np.meshgrid(offsets, offsets)
    cols = (np.round(uv[:, 0])[:, None] + du.reshape(1, -1)).astype(np.int64).reshape(-1)
    rows = (np.round(uv[:, 1])[:, None] + dv.reshape(1, -1)).astype(np.int64).reshape(-1)
    inside = (cols >= 0) & (cols < width) & (rows >= 0) & (rows < height)
    rgb[rows[inside], cols[inside]] = colour


def draw_skeleton(rgb: np.ndarray, joints: np.ndarray, k: np.ndarray, extrinsics: Sequence[float],
                  distortion: np.ndarray | None = None) -> None:
    """Draw one skeleton's edges and joints into rgb (in place), skipping parts behind the camera.

    With distortion, each edge is drawn straight between its distorted end points (edges are short)."""
    size = (rgb.shape[1], rgb.shape[0])
    segments, colours = skeleton.draw_segments(np.asarray(joints, dtype=np.float64))
    pixels, front = project(segments.reshape(-1, 3), k, extrinsics, distortion, size)
    pixels, front = pixels.reshape(-1, 2, 2), front.reshape(-1, 2).all(axis=1)
    colours_u8 = (np.asarray(colours) * 255).astype(np.uint8)
    limit = 4 * max(rgb.shape[:2])
    for (start, end), colour, visible in zip(pixels, colours_u8, front, strict=True):
        if not visible or np.abs(np.concatenate([start, end])).max() > limit:
            continue
        steps = int(np.ceil(np.abs(end - start).max())) + 1
        t = np.linspace(0.0, 1.0, steps)[:, None]
        _paint(rgb, start + t * (end - start), colour, LINE_RADIUS)
    joint_pixels, joint_front = project(joints, k, extrinsics, distortion, size)
    for j in np.flatnonzero(joint_front):
        colour = (np.asarray(skeleton.joint_colour(int(j))) * 255).astype(np.uint8)
        _paint(rgb, joint_pixels[j : j + 1], colour, JOINT_RADIUS)


def overlay_image(image: Image, info: CameraInfo, people: Sequence[tuple[int, np.ndarray]],
                  extrinsics: Sequence[float]) -> Image:
    """An rgb8 copy of the image (same header) with every person's skeleton drawn on it, through the camera
    model of the CameraInfo (K, and D for plumb_bob or rational_polynomial)."""
    k = np.asarray(info.k, dtype=np.float64).reshape(3, 3)
    if not np.isfinite(k).all() or k[0, 0] <= 0 or k[1, 1] <= 0:
        raise OverlayError("camera_info has no valid intrinsics K (fx, fy must be positive)")
    try:
        distortion = camera_geometry.distortion_coefficients(info.distortion_model, info.d)
    except ValueError as error:
        raise OverlayError(f"camera_info: {error}", "unsupported_distortion") from error
    rgb = image_to_rgb(image)
    for _, joints in people:
        if np.isfinite(joints).all():
            draw_skeleton(rgb, joints, k, extrinsics, distortion)
    out = Image(header=image.header, height=rgb.shape[0], width=rgb.shape[1], encoding="rgb8", is_bigendian=0,
                step=rgb.shape[1] * 3)
    out.data = array.array("B", rgb.tobytes())
    return out
