"""Standard messages where the ROS distribution has them: vision_msgs detections and body TF frames.

Both message packages are optional and found at run time: ``vision_msgs`` (Detection3DArray, the 4.x API
of Humble to Kilted) and ``tf2_msgs`` (TFMessage on /tf, which is what tf2_ros's TransformBroadcaster
publishes; tf2_ros itself needs the compiled tf2 library, the messages do not).
"""

from __future__ import annotations

import importlib
import math
from types import ModuleType

import numpy as np
from geometry_msgs.msg import Point, Pose, PoseWithCovariance, Quaternion, TransformStamped, Vector3
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
from std_msgs.msg import Header

from kp3d_ros import skeleton

CLASS_ID = "person"
TF_TOPIC = "/tf"
TF_QOS = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=100, reliability=ReliabilityPolicy.RELIABLE,
                    durability=DurabilityPolicy.VOLATILE)  # tf2_ros.TransformBroadcaster's profile


def optional_messages(package: str, message: str) -> ModuleType | None:
    """``<package>.msg``, or None when that message package is not installed or its ``message`` type cannot be
    used (a package whose compiled type support does not load would fail configure otherwise)."""
    try:
        module = importlib.import_module(f"{package}.msg")
        meta = getattr(module, message).__class__
        meta.__import_type_support__()  # logs (does not raise) when the compiled part is missing
    except Exception:  # ImportError, AttributeError, ...: treated as not installed
        return None
    return module if getattr(meta, "_TYPE_SUPPORT", None) is not None else None


def body_frame(track_id: int) -> str:
    """The TF frame of a person (REP-155 naming)."""
    return f"body_{track_id}"


def heading(joints: np.ndarray) -> float:
    """Yaw (rad) of the person's forward direction, from the hip line (x forward, y to the person's left)."""
    left = joints[skeleton.JOINT_INDEX["left_hip"]] - joints[skeleton.JOINT_INDEX["right_hip"]]
    if not np.isfinite(left[:2]).all() or np.hypot(left[0], left[1]) < 1e-6:
        return 0.0
    return math.atan2(-float(left[0]), float(left[1]))  # forward = left x up


def _yaw_quaternion(yaw: float) -> Quaternion:
    return Quaternion(x=0.0, y=0.0, z=math.sin(yaw / 2), w=math.cos(yaw / 2))


def _box(person) -> tuple[np.ndarray, np.ndarray]:
    """Axis-aligned box (centre, size) of a person's body points (parts > 0), else of the joints."""
    points = np.asarray(person.points, dtype=np.float64).reshape(-1, 3)
    body = points[np.asarray(person.parts) > 0] if len(points) else points
    if len(body) < 3:
        body = np.asarray(person.joints, dtype=np.float64)
    lo, hi = body.min(axis=0), body.max(axis=0)
    return (lo + hi) / 2, hi - lo


def detections(vision_msgs: ModuleType, header: Header, people: list) -> object:
    """A vision_msgs/Detection3DArray: one Detection3D per person (finite joints) with its box, track id
    (``id``) and one ``person`` hypothesis scored with the mean joint confidence, posed at the pelvis."""
    out = vision_msgs.Detection3DArray(header=header)
    for person in people:
        joints = np.asarray(person.joints, dtype=np.float64)
        if not np.isfinite(joints).all():
            continue
        centre, size = _box(person)
        pelvis = skeleton.pelvis(joints)
        orientation = _yaw_quaternion(heading(joints))
        hypothesis = vision_msgs.ObjectHypothesisWithPose(
            hypothesis=vision_msgs.ObjectHypothesis(class_id=CLASS_ID, score=float(np.mean(person.confidence))),
            pose=PoseWithCovariance(pose=Pose(position=Point(x=pelvis[0], y=pelvis[1], z=pelvis[2]),
                                              orientation=orientation)))
        box = vision_msgs.BoundingBox3D(center=Pose(position=Point(x=centre[0], y=centre[1], z=centre[2])),
                                        size=Vector3(x=size[0], y=size[1], z=size[2]))
        out.detections.append(vision_msgs.Detection3D(header=header, results=[hypothesis], bbox=box,
                                                      id=str(person.track_id)))
    return out


def body_transforms(header: Header, people: list) -> list[TransformStamped]:
    """One transform per person (finite joints): cloud frame -> body_<track_id>, at the pelvis, facing
    the person's forward direction, z up."""
    out = []
    for person in people:
        joints = np.asarray(person.joints, dtype=np.float64)
        if not np.isfinite(joints).all():
            continue
        pelvis = skeleton.pelvis(joints)
        transform = TransformStamped(header=header, child_frame_id=body_frame(person.track_id))
        transform.transform.translation = Vector3(x=pelvis[0], y=pelvis[1], z=pelvis[2])
        transform.transform.rotation = _yaw_quaternion(heading(joints))
        out.append(transform)
    return out
