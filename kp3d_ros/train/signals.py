"""Label-free signals of a model's error on unlabelled crops (lower is better for each).

- ``augment_gap``: mean joint distance (cm) between the predictions on two random subsamplings of each
  crop. A model that fits its input's geometry gives the same skeleton for either subsample.
- ``bone_jitter``: per track, the standard deviation of each bone's predicted length over the frames,
  relative to its mean, averaged over bones and tracks (a person's bones do not change length).
- ``left_right``: the mean relative length mismatch of mirrored bones (``losses.skeleton_plausibility``).

None of them is a Stage II loss, so a round does not lower them by minimising its own objective
(benchmarks/results/adaptation_signal_stage2.md). Both Stage II's selection (``train.selection``) and the
label-free signal study (``benchmarks/adaptation_signal.py``) use these definitions.
"""

from __future__ import annotations

import numpy as np
import torch

from kp3d_ros import losses
from kp3d_ros.model.preprocess import prepare_batch, restore_keypoints

GEOMETRIC = ("augment_gap", "bone_jitter", "left_right")
BATCH = 64
SUBSAMPLING_SEEDS = (0, 1)  # the same two subsamplings for every candidate (common random numbers)


def predict_joints(model: torch.nn.Module, crops: list[np.ndarray], num_points: int, seed: int) -> np.ndarray:
    """Joints (N, J, 3) in the LiDAR frame for every crop (one random subsampling per seed), in eval mode."""
    rng = np.random.default_rng(seed)
    was_training = model.training
    model.eval()
    out = []
    with torch.no_grad():
        for s in range(0, len(crops), BATCH):
            batch = prepare_batch(crops[s:s + BATCH], num_points, rng)
            out.append(restore_keypoints(model(torch.from_numpy(batch.points))[0].numpy(), batch))
    model.train(was_training)
    return np.concatenate(out) if out else np.zeros((0, 0, 3), np.float32)


def bone_jitter(joints: np.ndarray, tracks: np.ndarray) -> float:
    """Mean over tracks with at least two frames of the relative std of each bone's length; NaN without any."""
    lengths = losses.bone_lengths(torch.from_numpy(np.asarray(joints, np.float32))).numpy()
    values = []
    for track in np.unique(tracks):
        own = lengths[tracks == track]
        if len(own) >= 2:
            values.append((own.std(0) / np.maximum(own.mean(0), 1e-6)).mean())
    return float(np.mean(values)) if values else float("nan")


def geometric_signals(model: torch.nn.Module, crops: list[np.ndarray], tracks: np.ndarray,
                      num_points: int) -> tuple[dict[str, float], np.ndarray, np.ndarray]:
    """The three label-free signals of `model` on `crops` (tracks: each crop's track id); the joints of the
    first subsampling (N, J, 3), for callers that also compare models or score against labels; and each
    crop's own augmentation gap (N,) in cm, for paired comparisons of two models on the same crops."""
    if not crops:
        return {name: float("nan") for name in GEOMETRIC}, np.zeros((0, 0, 3), np.float32), np.zeros(0)
    joints = predict_joints(model, crops, num_points, SUBSAMPLING_SEEDS[0])
    again = predict_joints(model, crops, num_points, SUBSAMPLING_SEEDS[1])
    gaps = np.linalg.norm(joints - again, axis=-1).mean(1) * 100
    plausibility = losses.skeleton_plausibility(torch.from_numpy(joints.astype(np.float32)))
    return {
        "augment_gap": float(gaps.mean()),
        "bone_jitter": bone_jitter(joints, np.asarray(tracks)),
        "left_right": plausibility["left_right_mismatch"],
    }, joints, gaps


def clearly_lower(candidate: np.ndarray, reference: np.ndarray, standard_errors: float = 2.0) -> bool:
    """Whether per-item values of a candidate (N,) are lower than a reference's on the same items by more than
    `standard_errors` standard errors of the paired mean difference (about 97.5 % one-sided at 2)."""
    difference = np.asarray(candidate, np.float64) - np.asarray(reference, np.float64)
    if len(difference) < 2 or not np.isfinite(difference).all():
        return False
    return bool(difference.mean() + standard_errors * difference.std(ddof=1) / np.sqrt(len(difference)) < 0)
