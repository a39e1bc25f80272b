"""Keypoint and segmentation metrics (numpy). Distances in the input unit (metres); *_cm results in cm.

- MPJPE: mean per-joint position error.
- N-MPJPE: both poses centred on their joint mean, then the prediction scaled to the truth by least
  squares (the mean removes translation, like root-relative evaluation, without favouring a joint).
- PA-MPJPE: after Procrustes alignment (rotation, translation, scale; Umeyama, no reflection).
- PCK@t: share of joints with error below t.
- PEM (Waymo): per frame, people matched by the Hungarian method on mean joint distance; matched
  keypoint errors plus `penalty` (0.25 m) for every keypoint of an unmatched person (missed or false),
  averaged over all of those keypoints.
- Segmentation: accuracy and mIoU over the classes present in truth or prediction.
"""

from __future__ import annotations

import itertools

import numpy as np
from scipy.optimize import linear_sum_assignment

PCK_THRESHOLDS = (0.05, 0.10, 0.20)
PEM_PENALTY = 0.25


def joint_errors(pred: np.ndarray, gt: np.ndarray) -> np.ndarray:
    """Euclidean error per person and joint (P, J) for poses (P, J, 3)."""
    pred, gt = np.asarray(pred, np.float64), np.asarray(gt, np.float64)
    if pred.shape != gt.shape or pred.shape[-1] != 3:
        raise ValueError(f"pose shapes differ or are not (..., J, 3): {pred.shape} vs {gt.shape}")
    return np.linalg.norm(pred - gt, axis=-1)


def mpjpe(pred: np.ndarray, gt: np.ndarray) -> float:
    return float(joint_errors(pred, gt).mean())


def scale_aligned(pred: np.ndarray, gt: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean-centred prediction scaled to the mean-centred truth by least squares, and that truth."""
    pred, gt = np.asarray(pred, np.float64), np.asarray(gt, np.float64)
    p = pred - pred.mean(-2, keepdims=True)
    g = gt - gt.mean(-2, keepdims=True)
    scale = (p * g).sum((-2, -1)) / np.maximum((p * p).sum((-2, -1)), 1e-12)
    return p * scale[..., None, None], g


def n_mpjpe(pred: np.ndarray, gt: np.ndarray) -> float:
    p, g = scale_aligned(pred, gt)
    return mpjpe(p, g)


def procrustes_aligned(pred: np.ndarray, gt: np.ndarray) -> np.ndarray:
    """Prediction (P, J, 3) after the similarity transform that best maps it onto gt (Umeyama)."""
    pred, gt = np.asarray(pred, np.float64), np.asarray(gt, np.float64)
    mu_p, mu_g = pred.mean(-2, keepdims=True), gt.mean(-2, keepdims=True)
    p, g = pred - mu_p, gt - mu_g
    cov = np.swapaxes(g, -1, -2) @ p  # (P, 3, 3)
    u, s, vt = np.linalg.svd(cov)
    sign = np.sign(np.linalg.det(u @ vt))
    d = np.ones_like(s)
    d[..., -1] = sign
    rot = u @ (d[..., :, None] * vt)  # maps p to g: g ~ scale * p @ rot.T
    var_p = (p * p).sum((-2, -1))
    scale = (s * d).sum(-1) / np.maximum(var_p, 1e-12)
    return scale[..., None, None] * (p @ np.swapaxes(rot, -1, -2)) + mu_g


def pa_mpjpe(pred: np.ndarray, gt: np.ndarray) -> float:
    return mpjpe(procrustes_aligned(pred, gt), gt)


def pck(pred: np.ndarray, gt: np.ndarray, thresholds=PCK_THRESHOLDS) -> dict[float, float]:
    err = joint_errors(pred, gt)
    return {t: float((err < t).mean()) for t in thresholds}


def pem(pred_frames: list[np.ndarray], gt_frames: list[np.ndarray], penalty: float = PEM_PENALTY,
        max_match_distance: float | None = None) -> dict[str, float]:
    """Waymo PEM over frames; each frame has predicted (P, J, 3) and true (G, J, 3) people.

    Pairs farther apart than `max_match_distance` (mean joint distance, if given) stay unmatched."""
    if len(pred_frames) != len(gt_frames):
        raise ValueError("pred_frames and gt_frames must have the same number of frames")
    total, count, matched, missed, false = 0.0, 0, 0, 0, 0
    for pred, gt in zip(pred_frames, gt_frames, strict=True):
        pred, gt = np.asarray(pred, np.float64), np.asarray(gt, np.float64)
        J = gt.shape[1] if gt.size else (pred.shape[1] if pred.size else 0)
        rows, cols = np.array([], int), np.array([], int)
        if len(pred) and len(gt):
            cost = np.linalg.norm(pred[:, None] - gt[None], axis=-1).mean(-1)  # (P, G)
            rows, cols = linear_sum_assignment(cost)
            if max_match_distance is not None:
                keep = cost[rows, cols] <= max_match_distance
                rows, cols = rows[keep], cols[keep]
        if len(rows):
            total += float(np.linalg.norm(pred[rows] - gt[cols], axis=-1).sum())
            count += len(rows) * J
        n_missed, n_false = len(gt) - len(cols), len(pred) - len(rows)
        total += penalty * J * (n_missed + n_false)
        count += J * (n_missed + n_false)
        matched, missed, false = matched + len(rows), missed + n_missed, false + n_false
    value = total / count if count else 0.0
    return {"pem": value, "pem_cm": 100.0 * value, "matched": matched, "missed": missed, "false": false}


def per_joint_errors(pred: np.ndarray, gt: np.ndarray) -> np.ndarray:
    """Mean error per joint (J,)."""
    return joint_errors(pred, gt).mean(0)


def binned_errors(person_errors: np.ndarray, values: np.ndarray, edges) -> list[dict]:
    """Mean of per-person errors in bins of `values` (e.g. number of points, distance): rows with
    lo, hi, count and mean (NaN for empty bins); the last bin is open-ended when edges end in inf."""
    person_errors, values = np.asarray(person_errors, float), np.asarray(values, float)
    rows = []
    for lo, hi in itertools.pairwise(edges):
        sel = (values >= lo) & (values < hi)
        rows.append({"lo": lo, "hi": hi, "count": int(sel.sum()),
                     "mean": float(person_errors[sel].mean()) if sel.any() else float("nan")})
    return rows


def confusion_matrix(pred: np.ndarray, gt: np.ndarray, num_classes: int) -> np.ndarray:
    pred, gt = np.asarray(pred).ravel().astype(np.int64), np.asarray(gt).ravel().astype(np.int64)
    if pred.shape != gt.shape:
        raise ValueError("segmentation prediction and truth differ in size")
    if len(gt) and (min(pred.min(), gt.min()) < 0 or max(pred.max(), gt.max()) >= num_classes):
        raise ValueError(f"class index outside 0..{num_classes - 1}")
    return np.bincount(gt * num_classes + pred, minlength=num_classes**2).reshape(num_classes, num_classes)


def segmentation_scores(conf: np.ndarray) -> dict:
    """Accuracy, mIoU (over classes present in truth or prediction) and per-class IoU (NaN if absent)."""
    conf = np.asarray(conf, np.float64)
    tp = np.diag(conf)
    union = conf.sum(0) + conf.sum(1) - tp
    iou = np.where(union > 0, tp / np.maximum(union, 1), np.nan)
    total = conf.sum()
    return {"accuracy": float(tp.sum() / total) if total else float("nan"),
            "miou": float(np.nanmean(iou)) if np.isfinite(iou).any() else float("nan"),
            "iou": iou}


def keypoint_summary(pred: np.ndarray, gt: np.ndarray) -> dict[str, float]:
    """The headline keypoint numbers in cm (and PCK as fractions) for poses (P, J, 3) in metres."""
    out = {"people": len(gt), "mpjpe_cm": 100 * mpjpe(pred, gt), "n_mpjpe_cm": 100 * n_mpjpe(pred, gt),
           "pa_mpjpe_cm": 100 * pa_mpjpe(pred, gt)}
    for t, v in pck(pred, gt).items():
        out[f"pck@{round(t * 100)}cm"] = v
    return out
