"""Reading ROS 2 bags (MCAP or sqlite3) without ROS, through `rosbags`: LiDAR scans and keypoint ground truth.

PointCloud2 payloads go through kp3d_ros.core.cloud_layout, the same layout parsing the node uses.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from rosbags.highlevel import AnyReader, AnyReaderError
from rosbags.typesys import Stores, get_typestore

from kp3d_ros.core.cloud_layout import CloudError, structured_view, xyz_from_layout
from kp3d_ros.layouts import KEYPOINTS, people_from_keypoints
from kp3d_ros.skeleton import NUM_JOINTS

POINTCLOUD2 = "sensor_msgs/msg/PointCloud2"


class BagError(ValueError):
    """The bag is missing or unreadable, or lacks the requested topic."""


@dataclass(frozen=True)
class Scan:
    stamp_ns: int  # header stamp
    frame_id: str
    points: np.ndarray  # (M, 3) float32, finite
    num_dropped_nonfinite: int


def _layout(msg: Any) -> tuple:
    fields = [(f.name, int(f.offset), int(f.datatype), int(f.count)) for f in msg.fields]
    return fields, int(msg.point_step), int(msg.row_step), int(msg.width), int(msg.height), bool(msg.is_bigendian)


def stamp_ns(msg: Any) -> int:
    return int(msg.header.stamp.sec) * 1_000_000_000 + int(msg.header.stamp.nanosec)


def cloud_xyz(msg: Any) -> tuple[np.ndarray, int]:
    """(points (M, 3) float32, non-finite points dropped) of a rosbags PointCloud2 message."""
    return xyz_from_layout(np.asarray(msg.data, dtype=np.uint8), *_layout(msg))


def cloud_view(msg: Any) -> np.ndarray:
    """A structured view of every field of a rosbags PointCloud2 message."""
    return structured_view(np.asarray(msg.data, dtype=np.uint8), *_layout(msg))


def _open(path: str | Path) -> AnyReader:
    path = Path(path)
    if not path.exists():
        raise BagError(f"bag not found: {path}")
    try:
        return AnyReader([path], default_typestore=get_typestore(Stores.ROS2_KILTED))
    except AnyReaderError as exc:
        raise BagError(f"cannot open bag {path}: {exc}") from exc


def list_topics(path: str | Path) -> dict[str, str]:
    """{topic: message type} of a bag."""
    with _open(path) as reader:
        return {c.topic: c.msgtype for c in reader.connections}


def _messages(path: str | Path, topic: str, msgtype: str = POINTCLOUD2) -> Iterator[tuple[int, Any]]:
    """(log time ns, deserialized message) of one topic, in bag order."""
    with _open(path) as reader:
        connections = [c for c in reader.connections if c.topic == topic]
        if not connections:
            available = ", ".join(f"{c.topic} ({c.msgtype})" for c in reader.connections) or "none"
            raise BagError(f"topic {topic} not in bag {path}; topics: {available}")
        wrong = [c.msgtype for c in connections if c.msgtype != msgtype]
        if wrong:
            raise BagError(f"topic {topic} carries {wrong[0]}, expected {msgtype}")
        for connection, log_ns, raw in reader.messages(connections=connections):
            yield log_ns, reader.deserialize(raw, connection.msgtype)


def iter_scans(path: str | Path, topic: str = "/points", on_error: Any = None) -> Iterator[Scan]:
    """Every LiDAR scan of a PointCloud2 topic in bag order.

    A malformed cloud raises CloudError, or, when on_error (a callable taking the stamp and the error)
    is given, is reported to it and skipped.
    """
    for _, msg in _messages(path, topic):
        try:
            points, dropped = cloud_xyz(msg)
        except CloudError as exc:
            if on_error is None:
                raise
            on_error(stamp_ns(msg), exc)
            continue
        yield Scan(stamp_ns(msg), str(msg.header.frame_id), points, dropped)


def read_keypoints(path: str | Path, topic: str) -> dict[int, dict[int, np.ndarray]]:
    """Ground truth of a KEYPOINTS-layout PointCloud2 topic: {stamp_ns: {track_id: joints (14, 3)}}."""
    out: dict[int, dict[int, np.ndarray]] = {}
    names = set(KEYPOINTS.names)
    for _, msg in _messages(path, topic):
        view = cloud_view(msg).reshape(-1)
        if not names <= set(view.dtype.names or ()):
            raise BagError(f"topic {topic} is not in the KEYPOINTS layout (fields {view.dtype.names})")
        array = np.zeros(len(view), dtype=KEYPOINTS)
        for name in KEYPOINTS.names:
            array[name] = view[name]
        out[stamp_ns(msg)] = people_from_keypoints(array, NUM_JOINTS)
    return out


def read_point_counts(path: str | Path, topic: str) -> dict[int, dict[int, int]]:
    """Points per person of a SEGMENTATION-layout PointCloud2 topic: {stamp_ns: {track_id: count}}."""
    out: dict[int, dict[int, int]] = {}
    for _, msg in _messages(path, topic):
        view = cloud_view(msg).reshape(-1)
        if "track_id" not in (view.dtype.names or ()):
            raise BagError(f"topic {topic} has no track_id field (fields {view.dtype.names})")
        ids, counts = np.unique(np.asarray(view["track_id"]), return_counts=True)
        out[stamp_ns(msg)] = {int(i): int(c) for i, c in zip(ids, counts, strict=True)}
    return out
