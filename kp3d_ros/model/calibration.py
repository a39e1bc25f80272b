"""Bone-length calibration: the network's last step, which scales each bone of its skeleton.

Each bone (skeleton.BONE_NAMES: the ten limbs, shoulder and hip width) gets a factor; the skeleton is rebuilt
along a kinematic tree rooted at the pelvis, so every bone keeps its direction and the pelvis stays
where it is. With all factors 1 (the default, and every Stage I model) the output is unchanged. Stage II
sets the factors (`calibrate_bones`) so that the mean bone lengths of its predictions on the unlabelled
target data match the labelled source population's: an inflated surface (bulky clothing) makes the
network see a bigger person, and nothing else in the unlabelled data measures size.

The rebuild is one (J, J) matrix applied to the keypoints: linear, so it works in any frame and unit,
and it exports to ONNX and TensorRT as a matmul.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from kp3d_ros import skeleton as sk

# point -> (its parent point, the bone whose factor scales the segment between them); the root is the pelvis.
TREE: dict[str, tuple[str, str]] = {
    "neck": ("pelvis", "torso"),
    "head_center": ("neck", "head"),
    "nose": ("neck", "head"),
    **{f"{s}_{j}": p for s in ("left", "right") for j, p in (
        ("hip", ("pelvis", "hips")),
        ("knee", (f"{s}_hip", f"{s}_thigh")),
        ("ankle", (f"{s}_knee", f"{s}_shin")),
        ("shoulder", ("neck", "shoulders")),
        ("elbow", (f"{s}_shoulder", f"{s}_upper_arm")),
        ("wrist", (f"{s}_elbow", f"{s}_forearm")))},
}


def tree_matrices() -> tuple[np.ndarray, np.ndarray]:
    """root (J, J) and bones (E, J, J) such that, for factors s (E,), the calibrated joints are
    (root + sum_e s_e bones_e) @ joints: each joint is the pelvis plus the scaled segments on its path."""
    J, E = sk.NUM_JOINTS, len(sk.BONE_NAMES)
    root = np.tile(sk.point_weights("pelvis"), (J, 1))
    bones = np.zeros((E, J, J), np.float32)
    for name, j in sk.JOINT_INDEX.items():
        point = name
        while point != "pelvis":
            parent, bone = TREE[point]
            bones[sk.BONE_NAMES.index(bone), j] += sk.point_weights(point) - sk.point_weights(parent)
            point = parent
    return root.astype(np.float32), bones


class BoneCalibration(nn.Module):
    """keypoints (B, J, 3) -> the same skeleton with each bone scaled by `scale` (E,) about the pelvis."""

    def __init__(self) -> None:
        super().__init__()
        root, bones = tree_matrices()
        self.register_buffer("scale", torch.ones(len(sk.BONE_NAMES)))
        self.register_buffer("root", torch.from_numpy(root), persistent=False)
        self.register_buffer("bones", torch.from_numpy(bones), persistent=False)

    def matrix(self) -> torch.Tensor:
        return self.root + torch.einsum("e,eij->ij", self.scale, self.bones)

    def forward(self, keypoints: torch.Tensor) -> torch.Tensor:
        return self.matrix().to(keypoints.dtype) @ keypoints

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:
        # Checkpoints from before calibration existed have no factors: they are all 1.
        state_dict.setdefault(prefix + "scale", torch.ones_like(self.scale))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


class ImplausibleCalibrationError(ValueError):
    """Factors outside the allowed range: the target's people, or the predictions, do not fit the
    calibration's assumption (the source population's body proportions)."""


def matched_scale(current: torch.Tensor, predicted_lengths: torch.Tensor, population_lengths: torch.Tensor,
                  max_factor: float = 1.0, bounds: tuple[float, float] = (0.7, 1.3)) -> torch.Tensor:
    """Factors that bring the mean predicted bone lengths (E,), measured with the `current` factors, to the
    population's (E,), at most `max_factor` (1: a bone never gets longer than the network predicts it; the
    network shortens the bones it is unsure of, which is what lowers its error, so lengthening them to the
    population's mean would not help). A factor outside `bounds` means something else is wrong:
    ImplausibleCalibrationError."""
    factors = current * population_lengths / predicted_lengths
    if not torch.isfinite(factors).all() or factors.min() < bounds[0] or factors.max() > bounds[1]:
        raise ImplausibleCalibrationError(f"bone calibration factors {factors.tolist()} outside {bounds}: the "
                                          f"predictions or the population lengths are not plausible")
    return factors.clamp(max=max_factor)
