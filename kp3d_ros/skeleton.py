"""The one definition of joints, body parts and limbs (shared/skeleton.md).

Every other module (data generation, losses, markers, metrics, bag topics) imports this one.
Limb endpoints may be derived points (neck, pelvis); they are expressed as fixed weights over the
14 joints so that ``LIMB_PARENT_WEIGHTS @ joints`` gives all parent endpoints at once.
"""

from __future__ import annotations

import functools

import numpy as np

JOINT_NAMES: tuple[str, ...] = (
    "nose",
    "left_shoulder",
    "left_elbow",
    "left_wrist",
    "left_hip",
    "left_knee",
    "left_ankle",
    "right_shoulder",
    "right_elbow",
    "right_wrist",
    "right_hip",
    "right_knee",
    "right_ankle",
    "head_center",
)
NUM_JOINTS = len(JOINT_NAMES)
JOINT_INDEX = {name: i for i, name in enumerate(JOINT_NAMES)}

PART_NAMES: tuple[str, ...] = (
    "background",
    "head",
    "torso",
    "left_upper_arm",
    "left_forearm",
    "left_hand",
    "left_thigh",
    "left_shin",
    "left_foot",
    "right_upper_arm",
    "right_forearm",
    "right_hand",
    "right_thigh",
    "right_shin",
    "right_foot",
)
NUM_CLASSES = len(PART_NAMES)  # 14 body parts + background
NUM_PARTS = NUM_CLASSES - 1
BACKGROUND = 0
PART_INDEX = {name: i for i, name in enumerate(PART_NAMES)}

# anny bone name patterns (fnmatch) per part, default rig.
PART_BONES: dict[str, tuple[str, ...]] = {
    "head": ("neck01", "neck02", "neck03", "head", "eye.L", "eye.R"),
    "torso": (
        "root", "pelvis.L", "pelvis.R", "spine01", "spine02", "spine03", "spine04", "spine05",
        "clavicle.L", "clavicle.R", "shoulder01.L", "shoulder01.R",
    ),
    "left_upper_arm": ("upperarm01.L", "upperarm02.L"),
    "left_forearm": ("lowerarm01.L", "lowerarm02.L"),
    "left_hand": ("wrist.L", "metacarpal*.L", "finger*.L"),
    "left_thigh": ("upperleg01.L", "upperleg02.L"),
    "left_shin": ("lowerleg01.L", "lowerleg02.L"),
    "left_foot": ("foot.L", "toe*.L"),
    "right_upper_arm": ("upperarm01.R", "upperarm02.R"),
    "right_forearm": ("lowerarm01.R", "lowerarm02.R"),
    "right_hand": ("wrist.R", "metacarpal*.R", "finger*.R"),
    "right_thigh": ("upperleg01.R", "upperleg02.R"),
    "right_shin": ("lowerleg01.R", "lowerleg02.R"),
    "right_foot": ("foot.R", "toe*.R"),
}

# Derived points, as weights over joints.
DERIVED_POINTS: dict[str, dict[str, float]] = {
    "neck": {"left_shoulder": 0.5, "right_shoulder": 0.5},
    "pelvis": {"left_hip": 0.5, "right_hip": 0.5},
}

# Limbs: (name, parent point, child point, owned part).
LIMBS: tuple[tuple[str, str, str, str], ...] = (
    ("head", "neck", "head_center", "head"),
    ("torso", "pelvis", "neck", "torso"),
    ("left_upper_arm", "left_shoulder", "left_elbow", "left_upper_arm"),
    ("left_forearm", "left_elbow", "left_wrist", "left_forearm"),
    ("right_upper_arm", "right_shoulder", "right_elbow", "right_upper_arm"),
    ("right_forearm", "right_elbow", "right_wrist", "right_forearm"),
    ("left_thigh", "left_hip", "left_knee", "left_thigh"),
    ("left_shin", "left_knee", "left_ankle", "left_shin"),
    ("right_thigh", "right_hip", "right_knee", "right_thigh"),
    ("right_shin", "right_knee", "right_ankle", "right_shin"),
)
NUM_LIMBS = len(LIMBS)
LIMB_NAMES: tuple[str, ...] = tuple(limb[0] for limb in LIMBS)
# Bones (for lengths): the ten limbs plus shoulder width (left -> right shoulder) and hip width.
BONE_NAMES: tuple[str, ...] = (*LIMB_NAMES, "shoulders", "hips")
LIMB_PART: np.ndarray = np.array([PART_INDEX[limb[3]] for limb in LIMBS], dtype=np.int64)

# Joint-to-part pairs for the joint-to-part loss (head_center with head is the documented one).
JOINT_PART_PAIRS: tuple[tuple[str, str], ...] = (("head_center", "head"),)


def point_weights(name: str) -> np.ndarray:
    """Weights over the 14 joints that give a named joint or derived point."""
    weights = np.zeros(NUM_JOINTS, dtype=np.float32)
    if name in JOINT_INDEX:
        weights[JOINT_INDEX[name]] = 1.0
    else:
        for joint, w in DERIVED_POINTS[name].items():
            weights[JOINT_INDEX[joint]] = w
    return weights


LIMB_PARENT_WEIGHTS: np.ndarray = np.stack([point_weights(limb[1]) for limb in LIMBS])  # (L, J)
LIMB_CHILD_WEIGHTS: np.ndarray = np.stack([point_weights(limb[2]) for limb in LIMBS])  # (L, J)


def limb_endpoints(joints: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Parent and child endpoints (..., L, 3) of every limb from joints (..., J, 3)."""
    return LIMB_PARENT_WEIGHTS @ joints, LIMB_CHILD_WEIGHTS @ joints


def neck(joints: np.ndarray) -> np.ndarray:
    return joints[..., [JOINT_INDEX["left_shoulder"], JOINT_INDEX["right_shoulder"]], :].mean(-2)


def pelvis(joints: np.ndarray) -> np.ndarray:
    return joints[..., [JOINT_INDEX["left_hip"], JOINT_INDEX["right_hip"]], :].mean(-2)


# Drawing: the ten limbs plus these joint-to-joint lines.
_EXTRA_DRAW_EDGES = (
    ("left_shoulder", "right_shoulder"),
    ("left_hip", "right_hip"),
    ("left_shoulder", "left_hip"),
    ("right_shoulder", "right_hip"),
    ("nose", "head_center"),
)

SIDE_COLOURS: dict[str, tuple[float, float, float]] = {
    "left": (0.12, 0.47, 0.95),  # blue
    "right": (1.0, 0.55, 0.0),  # orange
    "centre": (0.1, 0.8, 0.2),  # green
}


def _side(name: str) -> str:
    if name.startswith("left"):
        return "left"
    if name.startswith("right"):
        return "right"
    return "centre"


def _draw_edges() -> tuple[tuple[str, str], ...]:
    limbs = tuple((limb[1], limb[2]) for limb in LIMBS)
    return limbs + _EXTRA_DRAW_EDGES


DRAW_EDGES: tuple[tuple[str, str], ...] = _draw_edges()


def edge_colour(a: str, b: str) -> tuple[float, float, float]:
    """Left side blue, right side orange, centre line (and left-right links) green."""
    sa, sb = _side(a), _side(b)
    return SIDE_COLOURS[sa if sa == sb else "centre"]


def joint_colour(joint: int) -> tuple[float, float, float]:
    return SIDE_COLOURS[_side(JOINT_NAMES[joint])]


def draw_segments(joints: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Line segments (E, 2, 3) for drawing one skeleton, and their colours (E, 3)."""
    starts, ends, colours = _draw_tables()
    return np.stack([starts @ joints, ends @ joints], axis=1), colours.copy()


@functools.cache
def _draw_tables() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The joint weights of every drawing edge's two ends (E, J) and the edges' colours (E, 3), built once."""
    starts = np.stack([point_weights(a) for a, _ in DRAW_EDGES])
    ends = np.stack([point_weights(b) for _, b in DRAW_EDGES])
    return starts, ends, np.array([edge_colour(a, b) for a, b in DRAW_EDGES], dtype=np.float32)


# Left/right mirror permutations (for flip augmentation and symmetric metrics).
JOINT_MIRROR: np.ndarray = np.array(
    [JOINT_INDEX[n.replace("left", "#").replace("right", "left").replace("#", "right")]
     for n in JOINT_NAMES], dtype=np.int64)
PART_MIRROR: np.ndarray = np.array(
    [PART_INDEX[n.replace("left", "#").replace("right", "left").replace("#", "right")]
     for n in PART_NAMES], dtype=np.int64)
