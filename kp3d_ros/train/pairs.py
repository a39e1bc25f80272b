"""Frame pairs of one tracked person -> the network's inputs and a losses.PairBatch (Stage II, online adaptation).

Each frame is resampled and centred on its own (model/preprocess rules); a point carried by the flow is
expressed in the other frame's crop coordinates, so the flow loss compares limb coordinates in one frame.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace

import numpy as np
import torch

from kp3d_ros.losses import PairBatch
from kp3d_ros.model.preprocess import SCALE, crop_frame, sample_indices, to_crop_frame


@dataclass
class PairSample:
    """Points at t (M, 3) and t+1 (K, 3) in the LiDAR frame, forward flow of src (M, 3) and backward flow
    of dst (K, 3) (NaN rows: unknown), the track id, and true joints when they exist (reporting only)."""

    src: np.ndarray
    dst: np.ndarray
    forward: np.ndarray
    backward: np.ndarray
    track: int = 0
    joints_t: np.ndarray | None = None
    joints_t1: np.ndarray | None = None
    ground_z_t: float = float("nan")  # ground height under the person (LiDAR frame z), NaN: unknown
    ground_z_t1: float = float("nan")

    def __post_init__(self) -> None:
        for name in ("src", "dst", "forward", "backward"):
            value = np.asarray(getattr(self, name), dtype=np.float32)
            if value.ndim != 2 or value.shape[1] != 3 or len(value) == 0:
                raise ValueError(f"PairSample.{name}: expected a non-empty (M, 3) array, got {value.shape}")
            setattr(self, name, value)
        if len(self.forward) != len(self.src) or len(self.backward) != len(self.dst):
            raise ValueError("PairSample: flow rows must match their points")
        if not (np.isfinite(self.src).all() and np.isfinite(self.dst).all()):
            raise ValueError("PairSample: points must be finite")


@dataclass
class PreparedPairs:
    batch: PairBatch
    centres_t: np.ndarray  # (B, 3)
    centres_t1: np.ndarray
    rotations_t: np.ndarray  # (B, 3, 3) LiDAR -> crop frame
    rotations_t1: np.ndarray
    joints_t: np.ndarray | None  # (B, J, 3) in crop frame t, when every sample has them
    joints_t1: np.ndarray | None


def batch_on(batch: PairBatch, device: torch.device) -> PairBatch:
    """`batch` with its tensors on `device` (the batch itself when they are there already)."""
    moved = {f.name: value.to(device) for f in fields(batch)
             if isinstance(value := getattr(batch, f.name), torch.Tensor) and value.device != device}
    return replace(batch, **moved) if moved else batch


def _resampled(points: np.ndarray, flow: np.ndarray, num_points: int, rng: np.random.Generator):
    idx = sample_indices(len(points), num_points, rng)
    f = flow[idx]
    valid = np.isfinite(f).all(1)
    return points[idx], np.where(valid[:, None], f, 0.0), valid, crop_frame(points)


def collate_pairs(samples: list[PairSample], num_points: int, rng: np.random.Generator) -> PreparedPairs:
    """Stack samples into a PairBatch (float32 tensors) with points in their own crop frames (network units)."""
    if not samples:
        raise ValueError("collate_pairs needs at least one sample")
    pts_t, pts_t1, car_t, car_t1, val_t, val_t1, frame_t, frame_t1, gnd_t, gnd_t1 = ([] for _ in range(10))
    for s in samples:
        p0, f0, v0, frame0 = _resampled(s.src, s.forward, num_points, rng)
        p1, f1, v1, frame1 = _resampled(s.dst, s.backward, num_points, rng)
        pts_t.append(to_crop_frame(p0, *frame0))
        pts_t1.append(to_crop_frame(p1, *frame1))
        car_t.append(to_crop_frame(p0 + f0, *frame1))
        car_t1.append(to_crop_frame(p1 + f1, *frame0))
        val_t.append(v0)
        val_t1.append(v1)
        frame_t.append(frame0)
        frame_t1.append(frame1)
        gnd_t.append((s.ground_z_t - frame0[0][2]) / SCALE)  # the crop frame's rotation is about z
        gnd_t1.append((s.ground_z_t1 - frame1[0][2]) / SCALE)

    def t(arrays: list[np.ndarray]) -> torch.Tensor:
        return torch.from_numpy(np.stack(arrays).astype(np.float32))

    batch = PairBatch(points_t=t(pts_t), points_t1=t(pts_t1), carried_t=t(car_t), carried_t1=t(car_t1),
                      valid_t=torch.from_numpy(np.stack(val_t)), valid_t1=torch.from_numpy(np.stack(val_t1)),
                      track=torch.tensor([s.track for s in samples], dtype=torch.int64),
                      ground_t=torch.tensor(gnd_t, dtype=torch.float32),
                      ground_t1=torch.tensor(gnd_t1, dtype=torch.float32))
    have_joints = all(s.joints_t is not None and s.joints_t1 is not None for s in samples)
    centres_t, rotations_t = (np.stack(a) for a in zip(*frame_t, strict=True))
    centres_t1, rotations_t1 = (np.stack(a) for a in zip(*frame_t1, strict=True))
    joints_t = joints_t1 = None
    if have_joints:
        joints_t = np.stack([to_crop_frame(s.joints_t, *f) for s, f in zip(samples, frame_t, strict=True)])
        joints_t1 = np.stack([to_crop_frame(s.joints_t1, *f) for s, f in zip(samples, frame_t1, strict=True)])
    return PreparedPairs(batch, centres_t, centres_t1, rotations_t, rotations_t1, joints_t, joints_t1)
