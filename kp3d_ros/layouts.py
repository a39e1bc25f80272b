"""The one definition of the project's point-cloud message layouts (ROS-free).

Each layout is a packed numpy structured dtype; its fields map one to one onto
sensor_msgs/PointField entries (see ``kp3d_ros.ros.pointcloud2``). The keypoint layout is used
by the node's ``~/keypoints`` output and by the ground truth written into bags.
"""

from __future__ import annotations

import numpy as np

# sensor_msgs/PointField datatype codes.
INT8, UINT8, INT16, UINT16, INT32, UINT32, FLOAT32, FLOAT64 = range(1, 9)

DATATYPE_TO_DTYPE: dict[int, np.dtype] = {
    INT8: np.dtype("i1"),
    UINT8: np.dtype("u1"),
    INT16: np.dtype("i2"),
    UINT16: np.dtype("u2"),
    INT32: np.dtype("i4"),
    UINT32: np.dtype("u4"),
    FLOAT32: np.dtype("f4"),
    FLOAT64: np.dtype("f8"),
}
DTYPE_TO_DATATYPE: dict[str, int] = {dt.str[1:]: code for code, dt in DATATYPE_TO_DTYPE.items()}

XYZ = np.dtype([("x", "<f4"), ("y", "<f4"), ("z", "<f4")])
XYZI = np.dtype([("x", "<f4"), ("y", "<f4"), ("z", "<f4"), ("intensity", "<f4")])

# Keypoints: one point per joint per person.
KEYPOINTS = np.dtype(
    [
        ("x", "<f4"),
        ("y", "<f4"),
        ("z", "<f4"),
        ("track_id", "<u4"),
        ("joint", "u1"),
        ("confidence", "<f4"),
    ]
)

# Segmentation: every point of every person with its predicted part (skeleton.PART_NAMES index).
SEGMENTATION = np.dtype(
    [("x", "<f4"), ("y", "<f4"), ("z", "<f4"), ("track_id", "<u4"), ("part", "u1")]
)

# Scene flow: every point of every tracked person with its motion over one frame period (m per frame). The node
# publishes each point's motion since the previous scan (it cannot see the next one); the synthetic ground truth
# in bags (kp3d synth-bag) gives each return's motion to the next scan.
SCENE_FLOW = np.dtype(
    [
        ("x", "<f4"),
        ("y", "<f4"),
        ("z", "<f4"),
        ("vx", "<f4"),
        ("vy", "<f4"),
        ("vz", "<f4"),
        ("track_id", "<u4"),
    ]
)


def fields_of(dtype: np.dtype) -> list[tuple[str, int, int, int]]:
    """(name, offset, PointField datatype, count) for each field of a packed dtype."""
    out = []
    for name in dtype.names:
        field_dtype, offset = dtype.fields[name][:2]
        out.append((name, offset, DTYPE_TO_DATATYPE[field_dtype.base.str[1:]], 1))
    return out


def keypoints_array(people: list[tuple[int, np.ndarray, np.ndarray]]) -> np.ndarray:
    """Pack [(track_id, joints (J, 3), confidence (J,))] into the KEYPOINTS layout."""
    if not people:
        return np.zeros(0, dtype=KEYPOINTS)
    joints = np.concatenate([p[1] for p in people]).astype(np.float32)
    num_joints = people[0][1].shape[0]
    out = np.zeros(len(joints), dtype=KEYPOINTS)
    out["x"], out["y"], out["z"] = joints[:, 0], joints[:, 1], joints[:, 2]
    out["track_id"] = np.repeat([p[0] for p in people], num_joints)
    out["joint"] = np.tile(np.arange(num_joints), len(people))
    out["confidence"] = np.concatenate([p[2] for p in people])
    return out


def people_from_keypoints(array: np.ndarray, num_joints: int) -> dict[int, np.ndarray]:
    """Unpack a KEYPOINTS array into {track_id: joints (J, 3)}; missing joints are NaN."""
    people: dict[int, np.ndarray] = {}
    for tid in np.unique(array["track_id"]):
        rows = array[array["track_id"] == tid]
        joints = np.full((num_joints, 3), np.nan, dtype=np.float32)
        joints[rows["joint"]] = np.stack([rows["x"], rows["y"], rows["z"]], axis=1)
        people[int(tid)] = joints
    return people
