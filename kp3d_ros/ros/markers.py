"""RViz markers for skeletons: DELETEALL, then per person limbs, joints and a track-id label."""

from __future__ import annotations

import functools
from collections.abc import Sequence

import numpy as np
from builtin_interfaces.msg import Duration
from geometry_msgs.msg import Point
from std_msgs.msg import ColorRGBA, Header
from visualization_msgs.msg import Marker, MarkerArray

from kp3d_ros import skeleton
from kp3d_ros.ros.cdr import CdrWriter

LIMB_WIDTH = 0.04  # m
JOINT_DIAMETER = 0.08  # m
TEXT_HEIGHT = 0.25  # m
TEXT_ABOVE_HEAD = 0.3  # m above head_center
NAMESPACES = ("limbs", "joints", "track_ids")

_JOINT_COLOURS = np.array([skeleton.joint_colour(j) for j in range(skeleton.NUM_JOINTS)], dtype=np.float32)


def _points(xyz: np.ndarray) -> list[Point]:
    return [Point(x=x, y=y, z=z) for x, y, z in np.asarray(xyz, dtype=np.float64).tolist()]


def _colours(rgb: np.ndarray, alpha: float = 1.0) -> list[ColorRGBA]:
    return [ColorRGBA(r=r, g=g, b=b, a=alpha) for r, g, b in np.asarray(rgb, dtype=np.float64).tolist()]


def _marker(header: Header, namespace: str, marker_id: int, kind: int, lifetime_s: float) -> Marker:
    marker = Marker(header=header, ns=namespace, id=marker_id, type=kind, action=Marker.ADD)
    marker.pose.orientation.w = 1.0
    marker.lifetime = Duration(sec=int(lifetime_s), nanosec=int((lifetime_s % 1.0) * 1e9))
    return marker


def person_markers(header: Header, track_id: int, joints: np.ndarray, lifetime_s: float = 0.0) -> list[Marker]:
    """LINE_LIST of the drawing edges, SPHERE_LIST of the joints, TEXT_VIEW_FACING track id."""
    segments, edge_colours = skeleton.draw_segments(np.asarray(joints, dtype=np.float32))
    limbs = _marker(header, NAMESPACES[0], track_id, Marker.LINE_LIST, lifetime_s)
    limbs.scale.x = LIMB_WIDTH
    limbs.points = _points(segments.reshape(-1, 3))
    limbs.colors = _colours(np.repeat(edge_colours, 2, axis=0))
    limbs.color = ColorRGBA(r=1.0, g=1.0, b=1.0, a=1.0)

    spheres = _marker(header, NAMESPACES[1], track_id, Marker.SPHERE_LIST, lifetime_s)
    spheres.scale.x = spheres.scale.y = spheres.scale.z = JOINT_DIAMETER
    spheres.points = _points(joints)
    spheres.colors = _colours(_JOINT_COLOURS)
    spheres.color = ColorRGBA(r=1.0, g=1.0, b=1.0, a=1.0)

    label = _marker(header, NAMESPACES[2], track_id, Marker.TEXT_VIEW_FACING, lifetime_s)
    head = np.asarray(joints[skeleton.JOINT_INDEX["head_center"]], dtype=np.float64)
    label.pose.position = Point(x=head[0], y=head[1], z=head[2] + TEXT_ABOVE_HEAD)
    label.scale.z = TEXT_HEIGHT
    label.color = ColorRGBA(r=1.0, g=1.0, b=1.0, a=1.0)
    label.text = str(track_id)
    return [limbs, spheres, label]


def skeleton_markers(header: Header, people: Sequence[tuple[int, np.ndarray]],
                     lifetime_s: float = 0.0) -> MarkerArray:
    """A DELETEALL marker first (clears last frame's people), then the markers of each (track_id, joints)."""
    clear = Marker(header=header, action=Marker.DELETEALL)
    markers = [clear]
    for track_id, joints in people:
        if np.isfinite(joints).all():
            markers.extend(person_markers(header, int(track_id), joints, lifetime_s))
    return MarkerArray(markers=markers)


# -- the same MarkerArray as CDR bytes, without building ~100 message objects per person -------------------
_F64, _F32 = np.dtype("<f8"), np.dtype("<f4")
_WHITE = np.ones(4, _F32).tobytes()


def _write_marker(w: CdrWriter, header: Header, namespace: str, marker_id: int, kind: int, action: int,
                  position: np.ndarray, scale: np.ndarray, colour: bytes, lifetime_s: float,
                  points: np.ndarray | None = None, colours: np.ndarray | None = None, text: str = "") -> None:
    """One visualization_msgs/Marker in the field order of Jazzy and later (checked against rclpy at start)."""
    w.header(int(header.stamp.sec), int(header.stamp.nanosec), header.frame_id)
    w.string(namespace)
    w.int32(marker_id)
    w.int32(kind)
    w.int32(action)
    w.float64s(np.concatenate([position, [0.0, 0.0, 0.0, 1.0]]).astype(_F64).tobytes())  # pose, identity rotation
    w.float64s(np.asarray(scale, _F64).tobytes())
    w.float32s(colour)
    w.int32(int(lifetime_s))
    w.uint32(int((lifetime_s % 1.0) * 1e9))
    w.boolean(False)  # frame_locked
    w.uint32(0 if points is None else len(points))
    if points is not None and len(points):
        w.float64s(np.ascontiguousarray(points, _F64).tobytes())
    w.uint32(0 if colours is None else len(colours))
    if colours is not None and len(colours):
        w.float32s(np.ascontiguousarray(colours, _F32).tobytes())
    w.string("")  # texture_resource
    w.header(0, 0, "")  # texture: sensor_msgs/CompressedImage
    w.string("")
    w.uint32(0)
    w.uint32(0)  # uv_coordinates
    w.string(text)
    w.string("")  # mesh_resource
    w.string("")  # mesh_file: filename, data
    w.uint32(0)
    w.boolean(False)  # mesh_use_embedded_materials


def skeleton_markers_cdr(header: Header, people: Sequence[tuple[int, np.ndarray]], lifetime_s: float = 0.0) -> bytes:
    """skeleton_markers(header, people, lifetime_s) serialized (plain little-endian CDR), built from the arrays
    directly; rclpy reads them back as that message where Marker has Jazzy's fields (``markers_cdr_matches``)."""
    visible = [(int(t), np.asarray(j)) for t, j in people if np.isfinite(j).all()]
    w = CdrWriter()
    w.uint32(1 + 3 * len(visible))
    zeros = np.zeros(3)
    _write_marker(w, header, "", 0, Marker.ARROW, Marker.DELETEALL, zeros, zeros, bytes(16), 0.0)
    joint_colours = np.column_stack([_JOINT_COLOURS, np.ones(len(_JOINT_COLOURS), np.float32)])
    for track_id, joints in visible:
        segments, edge_colours = skeleton.draw_segments(joints.astype(np.float32))  # as person_markers does
        line_colours = np.column_stack([np.repeat(edge_colours, 2, axis=0), np.ones(2 * len(edge_colours), np.float32)])
        _write_marker(w, header, NAMESPACES[0], track_id, Marker.LINE_LIST, Marker.ADD, zeros,
                      np.array([LIMB_WIDTH, 0.0, 0.0]), _WHITE, lifetime_s, segments.reshape(-1, 3), line_colours)
        _write_marker(w, header, NAMESPACES[1], track_id, Marker.SPHERE_LIST, Marker.ADD, zeros,
                      np.full(3, JOINT_DIAMETER), _WHITE, lifetime_s, joints, joint_colours)
        head = joints[skeleton.JOINT_INDEX["head_center"]].astype(np.float64) + np.array([0.0, 0.0, TEXT_ABOVE_HEAD])
        _write_marker(w, header, NAMESPACES[2], track_id, Marker.TEXT_VIEW_FACING, Marker.ADD, head,
                      np.array([0.0, 0.0, TEXT_HEIGHT]), _WHITE, lifetime_s, text=str(track_id))
    return w.bytes()


@functools.cache
def markers_cdr_matches() -> bool:
    """Whether rclpy reads skeleton_markers_cdr's bytes back as the message skeleton_markers builds, for this
    distribution's Marker (field order and alignment; CDR padding bytes are not compared: rclpy leaves them
    uninitialised), on a sample of two people, once per process; the node publishes the bytes only then."""
    from rclpy.serialization import deserialize_message

    header = Header(frame_id="lidar")
    header.stamp.sec, header.stamp.nanosec = 12, 345_000_000
    rng = np.random.default_rng(0)
    people = [(3, rng.normal(0, 1, (skeleton.NUM_JOINTS, 3)).astype(np.float32)),
              (17, rng.normal(5, 1, (skeleton.NUM_JOINTS, 3)).astype(np.float32))]
    try:
        return deserialize_message(skeleton_markers_cdr(header, people, 0.25), MarkerArray) == skeleton_markers(
            header, people, 0.25)
    except Exception:  # a Marker without these fields, or any other difference: publish message objects
        return False
