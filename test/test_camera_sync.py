"""Camera and LiDAR in time (core.timesync) and the CameraInfo camera models (core.camera_geometry).

The projections are checked against values worked out by hand from the OpenCV / ROS camera model
formulas, not against the code's own output.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from kp3d_ros.core import camera_geometry
from kp3d_ros.core.timesync import NearestImage

MS = 1_000_000
K = np.array([[500.0, 0.0, 320.0], [0.0, 400.0, 240.0], [0.0, 0.0, 1.0]])
OPTICAL = [0.0, 0.0, 0.0, 0.0, 0.0, 0.0]  # the LiDAR frame is the camera's optical frame


def test_nearest_image_within_the_offset_is_paired():
    sync = NearestImage(max_offset_ns=30 * MS, capacity=5)
    for stamp in (0, 140, 290):
        sync.add_image(stamp * MS, f"image{stamp}")
    sync.add_cloud(100 * MS, "cloud100", now_ns=0)  # nearest 140: 40 ms > 30 ms
    sync.add_cloud(270 * MS, "cloud270", now_ns=0)  # nearest 290: 20 ms
    pairs = sync.ready(now_ns=0)
    assert [(p.cloud, p.image, p.offset_ns) for p in pairs] == [("cloud100", None, 40 * MS),
                                                                  ("cloud270", "image290", 20 * MS)]


def test_a_cloud_waits_for_a_later_image_until_its_deadline():
    sync = NearestImage(max_offset_ns=30 * MS, capacity=5, wait_ns=100 * MS)
    sync.add_image(0, "image0")
    sync.add_cloud(90 * MS, "cloud90", now_ns=0)
    assert sync.ready(now_ns=10 * MS) == []  # no image at or after 90 ms yet: a nearer one may come
    sync.add_image(100 * MS, "image100")
    [pair] = sync.ready(now_ns=20 * MS)
    assert pair.image == "image100" and pair.offset_ns == 10 * MS
    sync.add_cloud(300 * MS, "cloud300", now_ns=30 * MS)  # the camera stopped
    assert sync.ready(now_ns=129 * MS) == []
    [pair] = sync.ready(now_ns=130 * MS)
    assert pair.cloud == "cloud300" and pair.image is None


def test_buffer_and_waiting_clouds_are_bounded():
    sync = NearestImage(max_offset_ns=10 * MS, capacity=3, max_pending=2)
    for stamp in range(10):
        sync.add_image(stamp * 100 * MS, stamp)
    assert [image for _, image in sync.images] == [7, 8, 9]
    for stamp in (950, 960, 970):
        sync.add_cloud(stamp * MS, stamp, now_ns=0)
    pairs = sync.ready(now_ns=0)  # the oldest is decided for the bound, the others still wait
    assert [p.cloud for p in pairs] == [950] and len(sync.pending) == 2
    sync.add_image(500 * MS, "restart")  # stamps went back: a restarted camera
    assert [image for _, image in sync.images] == ["restart"]


def test_pinhole_projection_of_known_points():
    points = np.array([[0.0, 0.0, 2.0], [1.0, -0.5, 2.0], [0.2, 0.3, -1.0]])
    pixels, depth = camera_geometry.project(points, K, OPTICAL)
    assert pixels[0] == pytest.approx([320.0, 240.0])
    assert pixels[1] == pytest.approx([320 + 500 * 0.5, 240 - 400 * 0.25])  # 570, 140
    assert depth.tolist() == [2.0, 2.0, -1.0]


def test_plumb_bob_projection_of_known_points():
    # x' = 0.5, y' = 0.25 (r^2 = 0.3125) with k1 = 0.1, k2 = -0.05, p1 = 0.01, p2 = 0.02, k3 = 0.001
    d = camera_geometry.distortion_coefficients("plumb_bob", [0.1, -0.05, 0.01, 0.02, 0.001])
    r2 = 0.3125
    radial = 1 + 0.1 * r2 - 0.05 * r2**2 + 0.001 * r2**3  # 1 + 0.03125 - 0.0048828 + 0.0000305
    xd = 0.5 * radial + 2 * 0.01 * 0.5 * 0.25 + 0.02 * (r2 + 2 * 0.25)
    yd = 0.25 * radial + 0.01 * (r2 + 2 * 0.0625) + 2 * 0.02 * 0.5 * 0.25
    assert radial == pytest.approx(1.0263977, abs=1e-7)
    assert (xd, yd) == pytest.approx((0.5319489, 0.2659744), abs=1e-7)
    pixels, _ = camera_geometry.project(np.array([[1.0, 0.5, 2.0]]), K, OPTICAL, d)
    assert pixels[0] == pytest.approx([585.97443, 346.38977], abs=1e-4)
    # the image centre does not move, and zero coefficients are a pinhole camera
    assert camera_geometry.project(np.array([[0.0, 0.0, 3.0]]), K, OPTICAL, d)[0][0] == pytest.approx([320, 240])
    assert camera_geometry.distortion_coefficients("plumb_bob", [0.0] * 5) is None


def test_rational_polynomial_projection_of_known_points():
    # x' = 0.4, y' = -0.3 (r^2 = 0.25), k1 = 0.2, k4 = 0.1, k5 = 0.05; the rest 0
    d = camera_geometry.distortion_coefficients("rational_polynomial", [0.2, 0.0, 0.0, 0.0, 0.0, 0.1, 0.05, 0.0])
    radial = (1 + 0.2 * 0.25) / (1 + 0.1 * 0.25 + 0.05 * 0.0625)  # 1.05 / 1.028125 = 1.021277
    pixels, _ = camera_geometry.project(np.array([[0.8, -0.6, 2.0]]), K, OPTICAL, d)
    assert radial == pytest.approx(1.021277, abs=1e-6)
    assert pixels[0] == pytest.approx([320 + 500 * 0.4 * radial, 240 - 400 * 0.3 * radial], abs=1e-6)
    # with k4..k6 zero it is plumb_bob
    same = camera_geometry.distortion_coefficients("rational_polynomial", [0.1, 0.02, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0])
    bob = camera_geometry.distortion_coefficients("plumb_bob", [0.1, 0.02, 0.0, 0.0, 0.0])
    point = np.array([[0.3, 0.1, 1.5]])
    assert camera_geometry.project(point, K, OPTICAL, same)[0] == pytest.approx(
        camera_geometry.project(point, K, OPTICAL, bob)[0])


def test_unsupported_or_incomplete_distortion_is_refused():
    with pytest.raises(ValueError, match="unsupported distortion model 'equidistant'"):
        camera_geometry.distortion_coefficients("equidistant", [0.1, 0.0, 0.0, 0.0])
    with pytest.raises(ValueError, match="needs 8"):
        camera_geometry.distortion_coefficients("rational_polynomial", [0.1, 0.0, 0.0, 0.0, 0.0])
    with pytest.raises(ValueError, match="finite"):
        camera_geometry.distortion_coefficients("plumb_bob", [math.nan, 0.0, 0.0, 0.0, 0.0])
    assert camera_geometry.distortion_coefficients("", []) is None
