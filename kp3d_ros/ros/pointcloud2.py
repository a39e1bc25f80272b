"""sensor_msgs/PointCloud2 <-> numpy, for rclpy messages (the layout logic is in core.cloud_layout)."""

from __future__ import annotations

import array

import numpy as np
from sensor_msgs.msg import PointCloud2, PointField
from std_msgs.msg import Header

from kp3d_ros.core.cloud_layout import CloudError, structured_view, xyz_from_layout
from kp3d_ros.layouts import fields_of

__all__ = ["CloudError", "array_to_cloud", "cloud_fields", "cloud_to_array", "cloud_to_xyz"]


def cloud_fields(msg: PointCloud2) -> list[tuple[str, int, int, int]]:
    """The message's fields as (name, offset, datatype, count) tuples."""
    return [(f.name, int(f.offset), int(f.datatype), int(f.count)) for f in msg.fields]


def _layout(msg: PointCloud2) -> tuple:
    return (cloud_fields(msg), int(msg.point_step), int(msg.row_step), int(msg.width), int(msg.height),
            bool(msg.is_bigendian))


def cloud_to_xyz(msg: PointCloud2) -> tuple[np.ndarray, int]:
    """Finite points (M, 3) float32 and the count of non-finite points dropped; CloudError if malformed.

    Reads straight from ``msg.data`` (no copy of the message bytes before the xyz gather).
    """
    return xyz_from_layout(np.frombuffer(msg.data, dtype=np.uint8), *_layout(msg))


def cloud_to_array(msg: PointCloud2) -> np.ndarray:
    """A zero-copy structured view of every point with every field (message byte order)."""
    return structured_view(np.frombuffer(msg.data, dtype=np.uint8), *_layout(msg))


def array_to_cloud(points: np.ndarray, header: Header) -> PointCloud2:
    """An unorganized (height 1) little-endian PointCloud2 from a packed structured array."""
    points = np.ascontiguousarray(points)
    msg = PointCloud2()
    msg.header = header
    msg.height = 1
    msg.width = int(points.shape[0])
    msg.fields = [PointField(name=name, offset=offset, datatype=datatype, count=count)
                  for name, offset, datatype, count in fields_of(points.dtype)]
    msg.is_bigendian = False
    msg.point_step = int(points.dtype.itemsize)
    msg.row_step = msg.point_step * msg.width
    data = array.array("B")
    data.frombytes(points.reshape(-1).view(np.uint8))
    msg.data = data
    msg.is_dense = True
    return msg
