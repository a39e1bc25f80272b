"""Per-joint confidence in [0, 1] from the network's outputs (numpy).

A joint is trusted when the segmentation sees the body parts that meet at it, and when the predicted
joint lies near those parts' points:
- support_j = 1 - exp(-m_j / SUPPORT_POINTS), m_j = expected number of points (sum of softmax
  probabilities) in the parts adjacent to joint j (JOINT_PARTS); ~0 when that body region is unseen;
- proximity_j = exp(-(d_j / PROXIMITY_M)^2), d_j = distance from the joint to the nearest input point
  whose most likely part is adjacent to j (0 if there is none); 1 when no points are given;
- confidence_j = support_j * proximity_j.
"""

from __future__ import annotations

import numpy as np

from kp3d_ros.skeleton import JOINT_NAMES, NUM_CLASSES, PART_INDEX

SUPPORT_POINTS = 6.0
PROXIMITY_M = 0.25

# Parts that meet at (or contain) each joint.
JOINT_PARTS: dict[str, tuple[str, ...]] = {
    "nose": ("head",),
    "head_center": ("head",),
}
for _side in ("left", "right"):
    JOINT_PARTS |= {
        f"{_side}_shoulder": ("torso", f"{_side}_upper_arm"),
        f"{_side}_elbow": (f"{_side}_upper_arm", f"{_side}_forearm"),
        f"{_side}_wrist": (f"{_side}_forearm", f"{_side}_hand"),
        f"{_side}_hip": ("torso", f"{_side}_thigh"),
        f"{_side}_knee": (f"{_side}_thigh", f"{_side}_shin"),
        f"{_side}_ankle": (f"{_side}_shin", f"{_side}_foot"),
    }
JOINT_PART_MASK = np.zeros((len(JOINT_NAMES), NUM_CLASSES), dtype=np.float32)  # (J, C)
for _j, _name in enumerate(JOINT_NAMES):
    JOINT_PART_MASK[_j, [PART_INDEX[p] for p in JOINT_PARTS[_name]]] = 1.0


def softmax(logits: np.ndarray, axis: int = -1) -> np.ndarray:
    z = logits - logits.max(axis=axis, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=axis, keepdims=True)


def joint_confidence(keypoints: np.ndarray, logits: np.ndarray, points: np.ndarray | None = None) -> np.ndarray:
    """Confidence (B, J) in [0, 1] for keypoints (B, J, 3), logits (B, N, C) and, optionally, the
    network input points (B, N, 3) in the same frame as the keypoints."""
    probs = softmax(np.asarray(logits, np.float32))
    mass = probs @ JOINT_PART_MASK.T  # (B, N, J): probability that point i supports joint j
    support = 1.0 - np.exp(-mass.sum(1) / SUPPORT_POINTS)  # (B, J)
    if points is None:
        return support.astype(np.float32)
    labels = probs.argmax(-1)  # (B, N)
    supports = JOINT_PART_MASK.T[labels] > 0  # (B, N, J)
    dist = np.linalg.norm(points[:, :, None, :] - keypoints[:, None, :, :], axis=-1)  # (B, N, J)
    nearest = np.where(supports, dist, np.inf).min(1)  # (B, J)
    proximity = np.where(np.isfinite(nearest), np.exp(-((nearest / PROXIMITY_M) ** 2)), 0.0)
    return np.clip(support * proximity, 0.0, 1.0).astype(np.float32)
