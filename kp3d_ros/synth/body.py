"""The anny body model: phenotypes, a compact joint-angle pose space, batched posing, joints and parts.

Body frame (REP-103): the person faces +x, their left is +y, z is up, feet on z = 0, the pelvis
above the origin in the rest pose. Joints follow shared/skeleton.md (coco.pth regressor; head_center
is the midpoint of the ears). Loaded once per process (``get_body_model``).
"""

from __future__ import annotations

import fnmatch
import warnings
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch

from kp3d_ros.skeleton import JOINT_NAMES, PART_BONES, PART_INDEX

PHENOTYPE_LABELS = ("gender", "age", "muscle", "weight", "height", "proportions")
# Full sampled range per phenotype (anny's 0..1 scale; age 0.25 is a small child, 0.67 a young adult).
PHENOTYPE_RANGE = {"gender": (0.0, 1.0), "age": (0.25, 1.0), "muscle": (0.0, 1.0), "weight": (0.0, 1.0),
                   "height": (0.0, 1.0), "proportions": (0.0, 1.0)}
CHILD_RANGES = {"age": (0.25, 0.5), "height": (0.0, 0.55)}  # children: about 0.8 to 1.6 m tall

# anny's rest frame: person faces -y, left is +x, z up.  Body frame = yaw of +90 degrees.
_ANNY_TO_BODY = np.array([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
_X, _Y, _Z = np.eye(3)

# Degrees of freedom: (name, bones sharing the angle, axis kind, axis or None, min deg, max deg,
# anatomical min deg, anatomical max deg). The first range is moderate (uniformly random poses); the
# anatomical one bounds every pose of the pose library (kp3d_ros.synth.poses: deep squats, kneeling,
# reaching up). Axis kinds: "world" = a fixed axis of anny's rest frame (carried by the parents),
# "hinge" = the bone's own local x axis, "twist" = the bone's own local y axis (along the bone).
# Signs make positive angles the anatomical ones: flexion forward, abduction outward.
_DOF_SPEC: list[tuple[str, tuple[str, ...], str, np.ndarray | None, float, float, float, float]] = [
    ("spine_flex", ("spine05", "spine04", "spine03"), "world", _X, -10.0, 40.0, -25.0, 90.0),
    ("spine_lateral", ("spine05", "spine04", "spine03"), "world", _Y, -15.0, 15.0, -30.0, 30.0),
    ("spine_twist", ("spine05", "spine04", "spine03"), "world", _Z, -25.0, 25.0, -45.0, 45.0),
    ("neck_flex", ("neck01", "head"), "world", _X, -20.0, 30.0, -40.0, 50.0),
    ("neck_twist", ("neck01", "head"), "world", _Z, -40.0, 40.0, -75.0, 75.0),
]
for _side, _sign in (("L", 1.0), ("R", -1.0)):
    _DOF_SPEC += [
        (f"hip_flex.{_side}", (f"upperleg01.{_side}",), "world", -_X, -20.0, 60.0, -25.0, 125.0),
        (f"hip_abd.{_side}", (f"upperleg01.{_side}",), "world", -_sign * _Y, -8.0, 25.0, -15.0, 45.0),
        (f"hip_twist.{_side}", (f"upperleg01.{_side}",), "twist", None, -15.0, 15.0, -35.0, 35.0),
        (f"knee_flex.{_side}", (f"lowerleg01.{_side}",), "world", _X, 0.0, 90.0, 0.0, 150.0),
        (f"ankle_flex.{_side}", (f"foot.{_side}",), "world", -_X, -20.0, 20.0, -45.0, 35.0),
        (f"shoulder_flex.{_side}", (f"upperarm01.{_side}",), "world", -_X, -40.0, 100.0, -50.0, 175.0),
        (f"shoulder_abd.{_side}", (f"upperarm01.{_side}",), "world", -_sign * _Y, -30.0, 70.0, -30.0, 120.0),
        (f"shoulder_twist.{_side}", (f"upperarm01.{_side}",), "twist", None, -30.0, 30.0, -60.0, 60.0),
        (f"elbow_flex.{_side}", (f"lowerarm01.{_side}",), "hinge", None, 0.0, 120.0, 0.0, 145.0),
    ]
DOF_NAMES: tuple[str, ...] = tuple(spec[0] for spec in _DOF_SPEC)
DOF_INDEX = {name: i for i, name in enumerate(DOF_NAMES)}
NUM_DOF = len(DOF_NAMES)
DOF_LIMITS_DEG = np.array([[spec[4], spec[5]] for spec in _DOF_SPEC], dtype=np.float32)  # (D, 2), moderate
ANATOMICAL_LIMITS_DEG = np.array([[spec[6], spec[7]] for spec in _DOF_SPEC], dtype=np.float32)  # (D, 2)


@dataclass
class Phenotypes:
    """Phenotype values (n, 6) in PHENOTYPE_LABELS order, anny's 0..1 scale."""

    values: np.ndarray

    def __len__(self) -> int:
        return len(self.values)

    def __getitem__(self, index) -> Phenotypes:
        return Phenotypes(np.atleast_2d(self.values[index]))

    def summary(self, i: int) -> dict[str, float]:
        return {label: float(v) for label, v in zip(PHENOTYPE_LABELS, self.values[i], strict=True)}


@dataclass
class Poses:
    """Joint angles (n, NUM_DOF) in radians, see DOF_NAMES."""

    angles: np.ndarray

    def __len__(self) -> int:
        return len(self.angles)

    def __getitem__(self, index) -> Poses:
        return Poses(np.atleast_2d(self.angles[index]))

    @staticmethod
    def zeros(n: int) -> Poses:
        return Poses(np.zeros((n, NUM_DOF), dtype=np.float32))


@dataclass
class PosedBodies:
    vertices: np.ndarray  # (B, V, 3) float32, metres
    joints: np.ndarray  # (B, 14, 3) float32


def _axis_angle_matrices(axes: np.ndarray, angles: np.ndarray) -> np.ndarray:
    """Rotation matrices (..., 3, 3) from unit axes (..., 3) and angles (...) by Rodrigues."""
    x, y, z = axes[..., 0], axes[..., 1], axes[..., 2]
    zero = np.zeros_like(x)
    k = np.stack([zero, -z, y, z, zero, -x, -y, x, zero], axis=-1).reshape(*axes.shape[:-1], 3, 3)
    s, c = np.sin(angles)[..., None, None], np.cos(angles)[..., None, None]
    return np.eye(3) + s * k + (1.0 - c) * (k @ k)


def _match_bone_parts(bone_labels: list[str], bone_parents: np.ndarray) -> np.ndarray:
    """Part index of every bone; bones not listed in PART_BONES take the part of their nearest listed ancestor."""
    parts = np.zeros(len(bone_labels), dtype=np.uint8)
    for b, label in enumerate(bone_labels):
        for part, patterns in PART_BONES.items():
            if any(fnmatch.fnmatchcase(label, p) for p in patterns):
                parts[b] = PART_INDEX[part]
                break
    for b in range(len(bone_labels)):  # parents come before children in anny's bone order
        if parts[b] == 0:
            parent = int(bone_parents[b])
            parts[b] = parts[parent] if parent >= 0 else PART_INDEX["torso"]
    return parts


class BodyModel:
    """Batched, gradient-free posing of anny bodies with project joints and part labels."""

    def __init__(self) -> None:
        import anny
        from anny.keypoints import _load_keypoint_data

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = anny.create_fullbody_model(rig="default", triangulate_faces=True)
        model.set_skinning_method("lbs")
        model = model.to(torch.float32)  # about 3x faster than anny's float64 on CPU
        self._model = model
        self.bone_labels: list[str] = list(model.bone_labels)
        self.faces = model.faces.cpu().numpy().astype(np.int32)
        num_vertices = model.template_vertices.shape[0]

        parents = np.asarray(model.bone_parents, dtype=np.int64)
        bone_parts = _match_bone_parts(self.bone_labels, parents)
        vbi = model.vertex_bone_indices.cpu().numpy()
        vbw = model.vertex_bone_weights.cpu().numpy()
        strongest = vbi[np.arange(num_vertices), vbw.argmax(1)]
        self.vertex_parts = bone_parts[strongest].astype(np.uint8)
        fp = self.vertex_parts[self.faces]  # (F, 3): majority vote, ties go to the first vertex
        majority = np.where(fp[:, 1] == fp[:, 2], fp[:, 1], fp[:, 0])
        self.face_parts = majority.astype(np.uint8)

        path = anny.paths.get_anny_root_dir() / "data" / "keypoints" / "coco.pth"
        labels = [n for n in JOINT_NAMES if n != "head_center"] + ["left_ear", "right_ear"]
        weights, _ = _load_keypoint_data(model, path, labels)
        weights = weights.cpu().numpy()
        head_center = 0.5 * (weights[-2] + weights[-1])
        self.joint_regressor = np.concatenate([weights[:-2], head_center[None]], 0).astype(np.float32)  # (14, V)
        self._regressor_t = torch.from_numpy(self.joint_regressor)

        with torch.no_grad():
            rest = model(phenotype_kwargs={k: torch.full((1,), 0.5) for k in PHENOTYPE_LABELS})
        self._rest_rot = rest["rest_bone_poses"][0, :, :3, :3].cpu().numpy()  # (bones, 3, 3)
        self._build_dof_tables()

    @property
    def num_vertices(self) -> int:
        return len(self.vertex_parts)

    def _build_dof_tables(self) -> None:
        """Per (dof, bone) entry: the bone index, and the rotation axis in the bone's local frame."""
        bones, dofs, axes, shares = [], [], [], []
        for d, (_, bone_names, kind, axis, *_) in enumerate(_DOF_SPEC):
            for name in bone_names:
                b = self.bone_labels.index(name)
                rot = self._rest_rot[b]
                if kind == "world":
                    local = rot.T @ axis
                elif kind == "hinge":
                    local = _X.copy()
                else:
                    local = _Y.copy()
                bones.append(b)
                dofs.append(d)
                axes.append(local / np.linalg.norm(local))
                shares.append(1.0 / len(bone_names))
        self._entry_bone = np.array(bones)
        self._entry_dof = np.array(dofs)
        self._entry_axis = np.array(axes)
        self._entry_share = np.array(shares)
        self._posed_bones = np.unique(self._entry_bone)

    def sample_phenotypes(self, rng: np.random.Generator, n: int,
                          ranges: dict[str, tuple[float, float]] | None = None) -> Phenotypes:
        """Uniform phenotypes within PHENOTYPE_RANGE, optionally narrowed per label by ``ranges``."""
        ranges = {**PHENOTYPE_RANGE, **(ranges or {})}
        lo = np.array([ranges[k][0] for k in PHENOTYPE_LABELS])
        hi = np.array([ranges[k][1] for k in PHENOTYPE_LABELS])
        return Phenotypes((lo + (hi - lo) * rng.random((n, len(PHENOTYPE_LABELS)))).astype(np.float32))

    def random_poses(self, rng: np.random.Generator, n: int, action_share: float = 0.5) -> Poses:
        """Random poses: a share from animated actions at random phases (with jitter), the rest
        uniform within moderate joint limits."""
        from kp3d_ros.synth.motion import ACTIONS, action_poses

        lo, hi = np.deg2rad(DOF_LIMITS_DEG[:, 0]), np.deg2rad(DOF_LIMITS_DEG[:, 1])
        angles = lo + (hi - lo) * rng.random((n, NUM_DOF))
        from_action = rng.random(n) < action_share
        for i in np.flatnonzero(from_action):
            action = ACTIONS[rng.integers(len(ACTIONS))]
            pose = action_poses(action, np.array([rng.random()]), rng).angles[0]
            angles[i] = np.clip(pose + rng.normal(0.0, 0.08, NUM_DOF), lo - 0.2, hi + 0.2)
        return Poses(angles.astype(np.float32))

    def _pose_tensor(self, poses: Poses) -> torch.Tensor:
        """anny local-bone delta transforms (B, bones, 4, 4) for joint angles."""
        angles = np.asarray(poses.angles, dtype=np.float64)
        n = len(angles)
        entry_angles = angles[:, self._entry_dof] * self._entry_share  # (B, E)
        rots = _axis_angle_matrices(np.broadcast_to(self._entry_axis, (n, *self._entry_axis.shape)), entry_angles)
        per_bone = np.tile(np.eye(3), (n, len(self.bone_labels), 1, 1))
        for e, b in enumerate(self._entry_bone):  # entries of one bone compose in DOF order
            per_bone[:, b] = per_bone[:, b] @ rots[:, e]
        transforms = np.tile(np.eye(4), (n, len(self.bone_labels), 1, 1))
        transforms[:, :, :3, :3] = per_bone
        return torch.from_numpy(transforms.astype(np.float32))

    def pose(self, phenotypes: Phenotypes, poses: Poses, root_transforms: np.ndarray | None = None,
             batch_size: int = 64) -> PosedBodies:
        """Posed vertices (B, V, 3) and joints (B, 14, 3): body frame, feet on z = 0, then root_transforms."""
        n = len(phenotypes)
        if len(poses) != n:
            raise ValueError(f"{n} phenotypes but {len(poses)} poses")
        vertices = np.empty((n, self.num_vertices, 3), dtype=np.float32)
        joints = np.empty((n, len(JOINT_NAMES), 3), dtype=np.float32)
        to_body = torch.from_numpy(_ANNY_TO_BODY.astype(np.float32))
        for start in range(0, n, batch_size):
            sl = slice(start, min(n, start + batch_size))
            values = torch.from_numpy(np.asarray(phenotypes.values[sl], dtype=np.float32))
            kwargs = {k: values[:, i] for i, k in enumerate(PHENOTYPE_LABELS)}
            with torch.no_grad():
                out = self._model(pose_parameters=self._pose_tensor(poses[sl]), phenotype_kwargs=kwargs)
                v = out["vertices"] @ to_body.T
                j = torch.einsum("kv,bvd->bkd", self._regressor_t, v)
                floor = v[..., 2].amin(1)[:, None]
                v[..., 2] -= floor
                j[..., 2] -= floor
            vertices[sl] = v.numpy()
            joints[sl] = j.numpy()
        if root_transforms is not None:
            rt = np.asarray(root_transforms, dtype=np.float32)
            if rt.shape != (n, 4, 4):
                raise ValueError(f"root_transforms must be ({n}, 4, 4), got {rt.shape}")
            vertices = np.einsum("bij,bvj->bvi", rt[:, :3, :3], vertices) + rt[:, None, :3, 3]
            joints = np.einsum("bij,bvj->bvi", rt[:, :3, :3], joints) + rt[:, None, :3, 3]
        return PosedBodies(vertices.astype(np.float32), joints.astype(np.float32))


@lru_cache(maxsize=1)
def get_body_model() -> BodyModel:
    """The process-wide body model (first call loads anny, about a second with a warm cache)."""
    torch.set_num_threads(max(1, min(2, torch.get_num_threads())))
    return BodyModel()


def yaw_transforms(yaw: np.ndarray, translation: np.ndarray) -> np.ndarray:
    """Homogeneous transforms (B, 4, 4): rotation about z by yaw (B,), then translation (B, 3)."""
    yaw = np.asarray(yaw, dtype=np.float64)
    c, s = np.cos(yaw), np.sin(yaw)
    t = np.tile(np.eye(4), (len(yaw), 1, 1))
    t[:, 0, 0], t[:, 0, 1], t[:, 1, 0], t[:, 1, 1] = c, -s, s, c
    t[:, :3, 3] = translation
    return t
