"""Real-time per-person scene flow: rigid ICP, then piecewise-rigid (per-patch) ICP.

numpy/scipy only (no ROS, no torch). For one person's points at t (src, M x 3) and at t+1 (dst, K x 3)
the estimator returns a flow vector per src point:

1. translation warm start (the track velocity times dt, else the centroid difference);
2. a few rigid ICP iterations (Kabsch on nearest neighbours, far pairs trimmed) on a point subset;
3. a few piecewise-rigid iterations: src is split into ~8 patches (farthest-point seeds, nearest
   seed), and every patch gets its own rigid transform, all solved at once by a batched Kabsch on
   forward (src -> nearest dst) and backward (dst -> nearest moved src) correspondences. Patches with
   too few correspondences keep their transform. Optional: blending of neighbouring patches'
   transforms (off by default) and k-NN smoothing of the final flow (2 passes by default).

One k-d tree for dst per call, one for the moved points per iteration; the rest is array arithmetic.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy.spatial import cKDTree


def kabsch(src: np.ndarray, dst: np.ndarray, weights: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Rotation R and translation t minimising sum w |R src + t - dst|^2 (proper rotation, det = +1)."""
    w = np.ones(len(src)) if weights is None else weights
    w = w / max(w.sum(), 1e-12)
    cs = w @ src
    cd = w @ dst
    H = (src - cs).T @ ((dst - cd) * w[:, None])
    U, _, Vt = np.linalg.svd(H)
    d = np.sign(np.linalg.det(Vt.T @ U.T))
    D = np.diag([1.0, 1.0, d if d != 0 else 1.0])
    R = Vt.T @ D @ U.T
    return R, cd - R @ cs


def kabsch_batched(src: np.ndarray, dst: np.ndarray, group: np.ndarray, weights: np.ndarray,
                   groups: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-group Kabsch: rotations (G, 3, 3) and translations (G, 3) for points labelled by group (M,)."""
    wsum = np.bincount(group, weights, minlength=groups)
    safe = np.maximum(wsum, 1e-12)[:, None]
    cs = np.stack([np.bincount(group, weights * src[:, a], minlength=groups) for a in range(3)], 1) / safe
    cd = np.stack([np.bincount(group, weights * dst[:, a], minlength=groups) for a in range(3)], 1) / safe
    s0 = src - cs[group]
    d0 = (dst - cd[group]) * weights[:, None]
    outer = (s0[:, :, None] * d0[:, None, :]).reshape(len(src), 9)
    H = np.stack([np.bincount(group, outer[:, c], minlength=groups) for c in range(9)], 1).reshape(groups, 3, 3)
    U, _, Vt = np.linalg.svd(H)
    V = np.swapaxes(Vt, 1, 2)
    det = np.sign(np.linalg.det(V @ np.swapaxes(U, 1, 2)))
    det[det == 0] = 1.0
    D = np.broadcast_to(np.eye(3), (groups, 3, 3)).copy()
    D[:, 2, 2] = det
    R = V @ D @ np.swapaxes(U, 1, 2)
    t = cd - np.einsum("gij,gj->gi", R, cs)
    return R, t


def farthest_point_seeds(points: np.ndarray, count: int) -> np.ndarray:
    """Indices of `count` well spread points (farthest point sampling from the point nearest the mean)."""
    count = min(count, len(points))
    chosen = np.empty(count, dtype=np.int64)
    chosen[0] = int(np.argmin(((points - points.mean(0)) ** 2).sum(1)))
    dist = ((points - points[chosen[0]]) ** 2).sum(1)
    for i in range(1, count):
        chosen[i] = int(np.argmax(dist))
        dist = np.minimum(dist, ((points - points[chosen[i]]) ** 2).sum(1))
    return chosen


def _checked_cloud(name: str, cloud: np.ndarray) -> np.ndarray:
    cloud = np.asarray(cloud)
    if cloud.ndim != 2 or cloud.shape[1] < 3:
        raise ValueError(f"{name}: expected shape (M, 3), got {cloud.shape}")
    cloud = cloud[:, :3].astype(np.float64)
    if len(cloud) == 0:
        raise ValueError(f"{name} is empty")
    if not np.isfinite(cloud).all():
        raise ValueError(f"{name} has non-finite coordinates")
    return cloud


class FlowEstimator:
    """Scene flow between two point clouds of one person (see the module docstring).

    iterations: piecewise-rigid iterations (0: rigid only); rigid_iterations: global ICP iterations;
    patches / min_patch_points: patch count and fewest correspondences to update a patch; backward:
    use dst -> src correspondences too; blend: patches blended per point; smoothing_steps / neighbours:
    k-NN averaging passes of the final flow; max_distance (m): farther correspondences are ignored;
    rigid_points: subset size used by the global ICP.
    """

    def __init__(self, iterations: int = 5, rigid_iterations: int = 10, neighbours: int = 8,
                 smoothing_steps: int = 2, max_distance: float = 0.3, rigid_points: int = 384,
                 patches: int = 8, min_patch_points: int = 12, backward: bool = True, blend: int = 1,
                 seed: int = 0) -> None:
        if iterations < 0 or rigid_iterations < 0:
            raise ValueError("iterations must be >= 0")
        if neighbours < 1:
            raise ValueError("neighbours must be >= 1")
        if max_distance <= 0:
            raise ValueError("max_distance must be positive")
        self.iterations = int(iterations)
        self.rigid_iterations = int(rigid_iterations)
        self.neighbours = int(neighbours)
        self.smoothing_steps = int(smoothing_steps)
        self.max_distance = float(max_distance)
        self.rigid_points = int(rigid_points)
        self.patches = int(patches)
        self.min_patch_points = int(min_patch_points)
        self.backward = bool(backward)
        self.blend = max(1, int(blend))
        self._rng = np.random.default_rng(seed)

    # -- stages ---------------------------------------------------------------------------------
    def _rigid(self, src: np.ndarray, dst: np.ndarray, dst_tree: cKDTree,
               t0: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Rotation and translation of src after ICP started from translation t0."""
        R = np.eye(3)
        t = t0.copy()
        sub = src
        if len(src) > self.rigid_points:
            sub = src[self._rng.choice(len(src), self.rigid_points, replace=False)]
        for _ in range(self.rigid_iterations):
            moved = sub @ R.T + t
            dist, idx = dst_tree.query(moved, k=1)
            # trim: pairs beyond max_distance or beyond 3x the median distance do not vote
            limit = min(self.max_distance, 3.0 * float(np.median(dist)) + 1e-3)
            keep = dist <= limit
            if keep.sum() < 3:
                break
            R, t = kabsch(sub[keep], dst[idx[keep]])
        return R, t

    def _patch_rigid(self, src: np.ndarray, R: np.ndarray, t: np.ndarray, dst: np.ndarray,
                     dst_tree: cKDTree) -> np.ndarray:
        """Flow (M, 3) after per-patch ICP started from the global transform (R, t), smoothed on src's k-NN graph."""
        M = len(src)
        P = max(1, min(self.patches, M // max(self.min_patch_points, 1)))
        seeds = farthest_point_seeds(src, P)
        kb = min(self.blend, P)
        seed_dist, near = cKDTree(src[seeds]).query(src, k=kb)
        seed_dist, near = seed_dist.reshape(M, kb), near.reshape(M, kb)
        label = near[:, 0]
        Rs = np.repeat(R[None], P, axis=0)
        ts = np.repeat(t[None], P, axis=0)
        for _ in range(self.iterations):
            current = np.einsum("mij,mj->mi", Rs[label], src) + ts[label]
            d_f, i_f = dst_tree.query(current, k=1)
            pairs_src, pairs_dst, pairs_label, dists = [src], [dst[i_f]], [label], [d_f]
            if self.backward:
                d_b, i_b = cKDTree(current).query(dst, k=1)
                pairs_src.append(src[i_b])
                pairs_dst.append(dst)
                pairs_label.append(label[i_b])
                dists.append(d_b)
            ps, pd = np.concatenate(pairs_src), np.concatenate(pairs_dst)
            pl, dist = np.concatenate(pairs_label), np.concatenate(dists)
            limit = min(self.max_distance, 3.0 * float(np.median(dist)) + 1e-3)
            w = (dist <= limit).astype(np.float64)
            R_new, t_new = kabsch_batched(ps, pd, pl, w, P)
            enough = np.bincount(pl, w, minlength=P) >= self.min_patch_points
            Rs[enough], ts[enough] = R_new[enough], t_new[enough]
        # blend the transforms of each point's nearest patches (soft boundaries between patches)
        sigma = max(float(np.median(seed_dist[:, -1])), 1e-3) if kb > 1 else 1.0
        w = np.exp(-((seed_dist - seed_dist[:, :1]) / sigma) ** 2)
        w /= w.sum(1, keepdims=True)
        moved = np.einsum("mkij,mj->mki", Rs[near], src) + ts[near]
        flow = (w[..., None] * moved).sum(1) - src
        if self.smoothing_steps > 0:
            k = min(self.neighbours + 1, M)
            _, graph = cKDTree(src).query(src, k=k)
            graph = graph.reshape(M, k)
            for _ in range(self.smoothing_steps):
                flow = flow[graph].mean(1)
        return flow

    # -- public API -----------------------------------------------------------------------------
    def estimate(self, src: np.ndarray, dst: np.ndarray, init_translation: np.ndarray | None = None) -> np.ndarray:
        """Forward flow (M, 3) float32 for every src point (M, 3) towards dst (K, 3)."""
        src = _checked_cloud("src", src)
        dst = _checked_cloud("dst", dst)
        if init_translation is None:
            t0 = dst.mean(0) - src.mean(0)
        else:
            t0 = np.asarray(init_translation, dtype=np.float64).reshape(3)
            if not np.isfinite(t0).all():
                t0 = dst.mean(0) - src.mean(0)
        dst_tree = cKDTree(dst)
        R, t = self._rigid(src, dst, dst_tree, t0) if self.rigid_iterations else (np.eye(3), t0)
        if self.iterations == 0:
            return (src @ R.T + t - src).astype(np.float32)
        return self._patch_rigid(src, R, t, dst, dst_tree).astype(np.float32)

    def estimate_pair(self, src: np.ndarray, dst: np.ndarray,
                      init_translation: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Forward flow of src (M, 3) and backward flow of dst (K, 3)."""
        back_init = None if init_translation is None else -np.asarray(init_translation, dtype=np.float64)
        return self.estimate(src, dst, init_translation), self.estimate(dst, src, back_init)

    def estimate_many(self, pairs: Sequence[tuple]) -> list[np.ndarray]:
        """Forward flow for each (src, dst) or (src, dst, init_translation) pair, e.g. one per track."""
        out = []
        for pair in pairs:
            src, dst = pair[0], pair[1]
            init = pair[2] if len(pair) > 2 else None
            out.append(self.estimate(src, dst, init))
        return out


def nearest_neighbour_flow(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Baseline: each src point flows to its nearest dst point."""
    src = _checked_cloud("src", src)
    dst = _checked_cloud("dst", dst)
    _, idx = cKDTree(dst).query(src, k=1)
    return (dst[idx] - src).astype(np.float32)


def flow_metrics(pred: np.ndarray, true: np.ndarray) -> dict[str, float]:
    """EPE3D (m), Acc3DS, Acc3DR, Outliers (shared/method.md definitions) over the valid points."""
    pred = np.asarray(pred, dtype=np.float64)
    true = np.asarray(true, dtype=np.float64)
    valid = np.isfinite(true).all(1) & np.isfinite(pred).all(1)
    if not valid.any():
        raise ValueError("no point with finite predicted and true flow")
    err = np.linalg.norm(pred[valid] - true[valid], axis=1)
    rel = err / np.maximum(np.linalg.norm(true[valid], axis=1), 1e-9)
    return {
        "epe3d": float(err.mean()),
        "acc3ds": float(((err < 0.05) | (rel < 0.05)).mean()),
        "acc3dr": float(((err < 0.1) | (rel < 0.1)).mean()),
        "outliers": float(((err > 0.3) | (rel > 0.1)).mean()),
    }
