"""RViz markers for skeletons: DELETEALL, then per person limbs, joints and a track-id label."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from builtin_interfaces.msg import Duration
from geometry_msgs.msg import Point
from std_msgs.msg import ColorRGBA, Header
from visualization_msgs.msg import Marker, MarkerArray

from kp3d_ros import skeleton

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
