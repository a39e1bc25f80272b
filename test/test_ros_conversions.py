"""rclpy message conversions: PointCloud2 <-> numpy through real CDR serialization, markers, overlay."""

from __future__ import annotations

import math

import numpy as np
import pytest

pytest.importorskip("rclpy")

from rclpy.serialization import deserialize_message, serialize_message
from sensor_msgs.msg import CameraInfo, Image, PointCloud2, PointField
from std_msgs.msg import Header
from visualization_msgs.msg import Marker

from kp3d_ros import layouts, skeleton
from kp3d_ros.core.cloud_layout import CloudError
from kp3d_ros.ros.markers import skeleton_markers
from kp3d_ros.ros.overlay import OverlayError, image_to_rgb, overlay_image, project
from kp3d_ros.ros.pointcloud2 import array_to_cloud, cloud_to_array, cloud_to_xyz

pytestmark = pytest.mark.ros
EXTRINSICS = [0.0, 0.0, 0.0, -math.pi / 2, 0.0, -math.pi / 2]


def _over_the_wire(msg):
    return deserialize_message(serialize_message(msg), type(msg))


def _raw_cloud(data: bytes, fields, point_step: int, width: int, height: int = 1, row_step: int | None = None,
               bigendian: bool = False) -> PointCloud2:
    msg = PointCloud2(header=Header(frame_id="lidar"), width=width, height=height, point_step=point_step,
                      row_step=row_step if row_step is not None else width * point_step, is_bigendian=bigendian)
    msg.fields = [PointField(name=n, offset=o, datatype=d, count=c) for n, o, d, c in fields]
    msg.data = data
    return msg


def test_xyzi_roundtrip_through_cdr():
    rng = np.random.default_rng(0)
    points = np.zeros(1000, dtype=layouts.XYZI)
    xyz = rng.normal(size=(1000, 3)).astype(np.float32)
    points["x"], points["y"], points["z"] = xyz.T
    points["intensity"] = np.arange(1000)
    msg = _over_the_wire(array_to_cloud(points, Header(frame_id="lidar")))
    assert msg.header.frame_id == "lidar" and msg.width == 1000 and msg.height == 1
    assert [f.name for f in msg.fields] == ["x", "y", "z", "intensity"]
    out, dropped = cloud_to_xyz(msg)
    assert dropped == 0
    np.testing.assert_array_equal(out, xyz)
    np.testing.assert_array_equal(cloud_to_array(msg)["intensity"], points["intensity"])


def test_keypoints_layout_roundtrip():
    joints = np.arange(2 * 14 * 3, dtype=np.float32).reshape(2, 14, 3)
    array = layouts.keypoints_array([(7, joints[0], np.full(14, 0.5)), (9, joints[1], np.ones(14))])
    msg = _over_the_wire(array_to_cloud(array, Header(frame_id="lidar")))
    back = cloud_to_array(msg)
    assert msg.point_step == layouts.KEYPOINTS.itemsize
    np.testing.assert_array_equal(back["track_id"], np.repeat([7, 9], 14))
    people = layouts.people_from_keypoints(np.asarray(back).astype(layouts.KEYPOINTS), 14)
    np.testing.assert_array_equal(people[9], joints[1])


def test_odd_layout_padding_and_organized_rows():
    # z first, x at 8, y at 16, a float64 in between, 28-byte points, rows padded by 12 bytes.
    dtype = np.dtype({"names": ["z", "t", "x", "y"], "formats": ["<f4", "<f8", "<f4", "<f4"],
                      "offsets": [0, 4, 12, 16], "itemsize": 28})
    height, width, pad = 3, 5, 12
    rng = np.random.default_rng(1)
    grid = np.zeros((height, width), dtype=dtype)
    xyz = rng.normal(size=(height, width, 3)).astype(np.float32)
    xyz[1, 2, 0] = np.nan
    grid["x"], grid["y"], grid["z"] = xyz[..., 0], xyz[..., 1], xyz[..., 2]
    rows = b"".join(grid[r].tobytes() + b"\0" * pad for r in range(height))
    fields = [("z", 0, layouts.FLOAT32, 1), ("t", 4, layouts.FLOAT64, 1), ("x", 12, layouts.FLOAT32, 1),
              ("y", 16, layouts.FLOAT32, 1)]
    msg = _over_the_wire(_raw_cloud(rows, fields, 28, width, height, row_step=width * 28 + pad))
    out, dropped = cloud_to_xyz(msg)
    expected = xyz.reshape(-1, 3)
    expected = expected[np.isfinite(expected).all(1)]
    assert dropped == 1
    np.testing.assert_array_equal(out, expected)


def test_big_endian_cloud():
    big = np.dtype([("x", ">f4"), ("y", ">f4"), ("z", ">f4"), ("intensity", ">f4")])
    points = np.zeros(4, dtype=big)
    points["x"], points["y"], points["z"] = [1, 2, 3, 4], [5, 6, 7, 8], [-1, -2, -3, np.inf]
    fields = [(n, 4 * i, layouts.FLOAT32, 1) for i, n in enumerate("xyz")] + [("intensity", 12, layouts.FLOAT32, 1)]
    msg = _over_the_wire(_raw_cloud(points.tobytes(), fields, 16, 4, bigendian=True))
    out, dropped = cloud_to_xyz(msg)
    assert dropped == 1
    np.testing.assert_array_equal(out, [[1, 5, -1], [2, 6, -2], [3, 7, -3]])


def test_malformed_clouds_raise_cloud_error():
    fields = [(n, 4 * i, layouts.FLOAT32, 1) for i, n in enumerate("xy")]
    with pytest.raises(CloudError, match="no field"):
        cloud_to_xyz(_raw_cloud(b"\0" * 80, fields, 8, 10))
    fields.append(("z", 8, layouts.FLOAT32, 1))
    with pytest.raises(CloudError, match="bytes"):
        cloud_to_xyz(_raw_cloud(b"\0" * 100, fields, 12, 10))  # truncated: needs 120
    with pytest.raises(CloudError, match="point_step"):
        cloud_to_xyz(_raw_cloud(b"\0" * 80, fields, 8, 10))  # z does not fit in 8-byte points


def test_skeleton_markers_structure():
    joints = np.random.default_rng(2).normal(size=(14, 3)).astype(np.float32)
    header = Header(frame_id="lidar")
    header.stamp.sec = 12
    array = skeleton_markers(header, [(3, joints), (5, joints + 1.0), (6, np.full((14, 3), np.nan))])
    markers = array.markers
    assert markers[0].action == Marker.DELETEALL
    assert len(markers) == 1 + 2 * 3  # the NaN person is not drawn
    lines, spheres, text = markers[1:4]
    assert lines.type == Marker.LINE_LIST and len(lines.points) == 2 * len(skeleton.DRAW_EDGES)
    assert len(lines.colors) == len(lines.points)
    assert spheres.type == Marker.SPHERE_LIST and len(spheres.points) == 14 and len(spheres.colors) == 14
    assert text.type == Marker.TEXT_VIEW_FACING and text.text == "3"
    head = joints[skeleton.JOINT_INDEX["head_center"]]
    assert text.pose.position.z > head[2] and text.pose.position.x == pytest.approx(head[0])
    assert all(m.header.frame_id == "lidar" and m.header.stamp.sec == 12 for m in markers[1:])
    # left-side limb blue, right-side limb orange
    left = skeleton.DRAW_EDGES.index(("left_shoulder", "left_elbow"))
    right = skeleton.DRAW_EDGES.index(("right_shoulder", "right_elbow"))
    assert lines.colors[2 * left].b > 0.9 and lines.colors[2 * right].r > 0.9
    _over_the_wire(array)


def _camera(width: int = 64, height: int = 48, encoding: str = "rgb8") -> tuple[Image, CameraInfo]:
    channels = 1 if encoding == "mono8" else 3
    image = Image(header=Header(frame_id="camera"), width=width, height=height, encoding=encoding,
                  step=width * channels)
    image.data = bytes(width * height * channels)
    info = CameraInfo(width=width, height=height)
    info.k = [50.0, 0.0, width / 2, 0.0, 50.0, height / 2, 0.0, 0.0, 1.0]
    return image, info


def test_projection_follows_optical_axes():
    _, info = _camera()
    k = np.asarray(info.k).reshape(3, 3)
    pixels, front = project(np.array([[5.0, 0.0, 0.0], [5.0, 1.0, 0.5], [-5.0, 0.0, 0.0]]), k, EXTRINSICS)
    assert front.tolist() == [True, True, False]
    np.testing.assert_allclose(pixels[0], [32, 24])
    assert pixels[1][0] < 32 and pixels[1][1] < 24  # left of and above the centre


def test_overlay_draws_in_every_supported_encoding():
    joints = np.zeros((14, 3), dtype=np.float32)
    joints[:, 0] = 6.0
    joints[:, 2] = np.linspace(-0.9, 0.8, 14)
    for encoding in ("rgb8", "bgr8", "mono8"):
        image, info = _camera(encoding=encoding)
        out = _over_the_wire(overlay_image(image, info, [(1, joints)], EXTRINSICS))
        assert out.encoding == "rgb8" and out.header.frame_id == "camera"
        assert image_to_rgb(out).any()
    image, info = _camera()
    image.encoding = "yuv422"
    with pytest.raises(OverlayError, match="encoding"):
        overlay_image(image, info, [(1, joints)], EXTRINSICS)
    image, info = _camera()
    info.k = [0.0] * 9
    with pytest.raises(OverlayError, match="intrinsics"):
        overlay_image(image, info, [(1, joints)], EXTRINSICS)


def test_header_stamp_read_from_cdr_bytes():
    from kp3d_ros.ros.cdr import header_stamp_ns

    cloud = _raw_cloud(bytes(16), [("x", 0, PointField.FLOAT32, 1)], 16, 1)
    cloud.header.stamp.sec, cloud.header.stamp.nanosec = 1_700_000_000, 999_999_999
    image = Image(header=Header(frame_id="camera"))
    image.header.stamp.sec = 12
    assert header_stamp_ns(serialize_message(cloud)) == 1_700_000_000_999_999_999
    assert header_stamp_ns(serialize_message(image)) == 12_000_000_000
    for garbage in (b"", b"\x00\x01\x00", b"\x07\x07\x00\x00" + bytes(8)):
        with pytest.raises(ValueError):
            header_stamp_ns(garbage)


@pytest.mark.parametrize("frame_id", ["", "l", "ab", "lidar", "os_sensor_top_front"])  # every string alignment
def test_pointcloud2_read_from_cdr_equals_rclpy(frame_id):
    from kp3d_ros.ros.cdr import read_pointcloud2

    rng = np.random.default_rng(3)
    fields = [("x", 0, PointField.FLOAT32, 1), ("y", 4, PointField.FLOAT32, 1), ("z", 8, PointField.FLOAT32, 1),
              ("ring", 12, PointField.UINT16, 1), ("t", 16, PointField.FLOAT64, 1)]
    clouds = [_raw_cloud(rng.bytes(24 * 6 * 2), fields, 24, 6, height=2),
              _raw_cloud(rng.bytes(24 * 7), fields, 24, 7, bigendian=True),
              _raw_cloud(b"", fields, 24, 0)]
    for cloud in clouds:
        cloud.header.frame_id, cloud.is_dense = frame_id, True
        cloud.header.stamp.sec, cloud.header.stamp.nanosec = 42, 7
        data = serialize_message(cloud)
        raw, expected = read_pointcloud2(data), deserialize_message(data, PointCloud2)
        assert raw.header == expected.header
        assert (raw.height, raw.width, raw.point_step, raw.row_step, raw.is_bigendian, raw.is_dense) == (
            expected.height, expected.width, expected.point_step, expected.row_step, expected.is_bigendian,
            expected.is_dense)
        assert [(f.name, f.offset, f.datatype, f.count) for f in expected.fields] == list(raw.fields)
        assert bytes(raw.data) == bytes(expected.data)
        assert np.array_equal(cloud_to_array(raw), cloud_to_array(expected))


def test_pointcloud2_cdr_cut_short_or_foreign_is_an_error():
    from kp3d_ros.ros.cdr import read_pointcloud2

    data = serialize_message(_raw_cloud(bytes(16 * 4), [("x", 0, PointField.FLOAT32, 1)], 16, 4))
    for bad in (data[:-2], data[:30], data[:5], b"\x09\x09" + data[2:], b"\x00\x07" + data[2:],  # XCDR2
                data[:32] + (10**6).to_bytes(4, "little") + data[36:]):  # a field count that cannot fit
        with pytest.raises(ValueError):
            read_pointcloud2(bad)
    assert read_pointcloud2(data).width == 4


def test_overlay_follows_the_camera_info_distortion():
    """A person's joints all at one point: the dot lands where the plumb_bob model puts it, worked out by hand
    (optical x' = 0.6, y' = 0.4, k1 = -0.3: radial 1 - 0.3 * 0.52 = 0.844, so u = 100 + 100 * 0.5064 and
    v = 75 + 100 * 0.3376), not at the pinhole position (160, 115)."""
    joints = np.tile(np.array([2.0, -1.2, -0.8], dtype=np.float32), (14, 1))  # LiDAR frame: optical (0.6, 0.4) * 2
    image, info = _camera(width=200, height=150)
    info.k = [100.0, 0.0, 100.0, 0.0, 100.0, 75.0, 0.0, 0.0, 1.0]
    info.distortion_model, info.d = "plumb_bob", [-0.3, 0.0, 0.0, 0.0, 0.0]

    def dot_centre(info):
        rgb = image_to_rgb(_over_the_wire(overlay_image(image, info, [(1, joints)], EXTRINSICS)))
        rows, cols = np.nonzero(rgb.any(axis=2))
        return cols.mean(), rows.mean()

    u, v = dot_centre(info)
    assert (u, v) == pytest.approx((150.64, 108.76), abs=1.0)
    info.d = [0.0] * 5
    assert dot_centre(info) == pytest.approx((160.0, 115.0), abs=1.0)
    info.distortion_model, info.d = "equidistant", [0.1, 0.0, 0.0, 0.0]
    with pytest.raises(OverlayError, match="unsupported distortion model") as raised:
        overlay_image(image, info, [(1, joints)], EXTRINSICS)
    assert raised.value.reason == "unsupported_distortion"


def test_pointcloud2_read_from_big_endian_cdr():
    """Plain CDR in big-endian byte order (encapsulation 0x0000), written here field by field."""
    import struct

    from kp3d_ros.ros.cdr import read_pointcloud2

    def string(text: str) -> bytes:
        raw = text.encode() + b"\x00"
        return struct.pack(">I", len(raw)) + raw

    def pad(body: bytes, align: int) -> bytes:
        return body + bytes(-len(body) % align)

    points = np.arange(6, dtype=">f4").tobytes()  # two points x y z, big-endian floats
    body = struct.pack(">iI", 7, 9) + string("abc")  # stamp, frame_id: 4 + 4 + 8 bytes
    body = pad(body, 4) + struct.pack(">II", 1, 2) + struct.pack(">I", 3)  # height, width, 3 fields
    for name, offset in (("x", 0), ("y", 4), ("z", 8)):
        body = pad(body, 4) + string(name)
        body = pad(body, 4) + struct.pack(">I", offset) + bytes([PointField.FLOAT32])
        body = pad(body, 4) + struct.pack(">I", 1)
    body += b"\x01"  # is_bigendian
    body = pad(body, 4) + struct.pack(">II", 12, 24) + struct.pack(">I", len(points)) + points + b"\x01"
    cloud = read_pointcloud2(b"\x00\x00\x00\x00" + body)
    assert (cloud.header.stamp.sec, cloud.header.stamp.nanosec, cloud.header.frame_id) == (7, 9, "abc")
    assert [f.name for f in cloud.fields] == ["x", "y", "z"] and cloud.width == 2 and cloud.is_dense
    np.testing.assert_array_equal(cloud_to_xyz(cloud)[0], np.arange(6, dtype=np.float32).reshape(2, 3))


def test_skeleton_markers_as_cdr_bytes_read_back_as_the_message_objects():
    """The node publishes skeleton markers as CDR bytes written from the arrays; rclpy must read them back as
    exactly the MarkerArray that skeleton_markers builds (no people, several, a non-finite one left out, a
    lifetime), and the start-up check that decides it must pass on this distribution."""
    from rclpy.serialization import deserialize_message
    from visualization_msgs.msg import MarkerArray

    from kp3d_ros.ros.markers import markers_cdr_matches, skeleton_markers, skeleton_markers_cdr
    from kp3d_ros.skeleton import NUM_JOINTS

    rng = np.random.default_rng(4)
    header = Header(frame_id="os_sensor")
    header.stamp.sec, header.stamp.nanosec = 1_700_000_000, 999_999_999
    broken = np.full((NUM_JOINTS, 3), np.nan, np.float32)
    for people, lifetime in (([], 0.0), ([(1, rng.normal(0, 2, (NUM_JOINTS, 3)))], 0.0),
                             ([(k, rng.normal(k, 1, (NUM_JOINTS, 3)).astype(np.float32)) for k in range(6)]
                              + [(99, broken)], 1.5)):
        read = deserialize_message(skeleton_markers_cdr(header, people, lifetime), MarkerArray)
        assert read == skeleton_markers(header, people, lifetime)
    assert len(read.markers) == 1 + 3 * 6  # the non-finite person has no markers
    assert markers_cdr_matches()
