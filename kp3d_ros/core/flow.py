"""Real-time per-person scene flow: rigid ICP, then piecewise-rigid (per-patch) ICP.

numpy/scipy only (no ROS, no torch). For one person's points at t (src, M x 3) and at t+1 (dst, K x 3)
the estimator returns a flow vector per src point:

1. translation warm start (the track velocity times dt, else the centroid difference);
2. a few rigid ICP iterations (Kabsch on nearest neighbours, far pairs trimmed) on a point subset;
3. a few piecewise-rigid iterations: src is split into ~8 patches (farthest-point seeds, nearest
   seed), and every patch gets its own rigid transform, all solved at once by a batched Kabsch on
   forward (src -> nearest dst) and backward (dst -> nearest moved src) correspondences. Patches with
   too few correspondences keep their transform. Then k-NN smoothing of the final flow (2 passes).

Several people are solved at once (estimate_many): their clouds are packed into one array, shifted
far apart, so one k-d tree query and one batched Kabsch per iteration serve everyone. One k-d tree for
dst per call, one for the moved points per iteration; the rest is array arithmetic.
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


def group_median(values: np.ndarray, group: np.ndarray, groups: int) -> np.ndarray:
    """Median of `values` per group label (groups,); NaN for an empty group."""
    order = np.lexsort((values, group))
    counts = np.bincount(group, minlength=groups)
    starts = np.cumsum(counts) - counts
    low = np.minimum(starts + (counts - 1) // 2, len(values) - 1)
    high = np.minimum(starts + counts // 2, len(values) - 1)
    sorted_values = values[order]
    return np.where(counts > 0, 0.5 * (sorted_values[low] + sorted_values[high]), np.nan)


class _Packed:
    """Several clouds in one array, each shifted far apart along x for k-d tree queries, so that one tree
    and one query serve every cloud: a nearest neighbour is always found in the point's own cloud."""

    def __init__(self, clouds: Sequence[np.ndarray], spacing: float) -> None:
        self.points = np.concatenate(clouds)
        self.sizes = np.array([len(c) for c in clouds])
        self.group = np.repeat(np.arange(len(clouds)), self.sizes)
        self.shift = np.zeros((len(clouds), 3))
        self.shift[:, 0] = spacing * np.arange(len(clouds))

    def split(self, values: np.ndarray) -> list[np.ndarray]:
        return np.split(values, np.cumsum(self.sizes)[:-1])


class FlowEstimator:
    """Scene flow between two point clouds of one person (see the module docstring); estimate_many()
    solves several people at once (one k-d tree query and one batched Kabsch per iteration for all).

    iterations: piecewise-rigid iterations (0: rigid only); rigid_iterations: global ICP iterations;
    patches / min_patch_points: patch count and fewest correspondences to update a patch; backward:
    use dst -> src correspondences too; smoothing_steps / neighbours: k-NN averaging passes of the final
    flow; max_distance (m): farther correspondences are ignored; rigid_points: subset size used by the
    global ICP.
    """

    def __init__(self, iterations: int = 5, rigid_iterations: int = 10, neighbours: int = 8,
                 smoothing_steps: int = 2, max_distance: float = 0.3, rigid_points: int = 384,
                 patches: int = 8, min_patch_points: int = 12, backward: bool = True, seed: int = 0) -> None:
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
        self.converged = 1e-4  # rigid ICP stops once no rotation entry or translation (m) changes by more
        self._rng = np.random.default_rng(seed)

    # -- stages ---------------------------------------------------------------------------------
    def _trim_weights(self, dist: np.ndarray, person: np.ndarray, people: int) -> np.ndarray:
        """1 for pairs within max_distance and within 3x their person's median distance, else 0."""
        limit = np.minimum(self.max_distance, 3.0 * group_median(dist, person, people) + 1e-3)
        return (dist <= limit[person]).astype(np.float64)

    def _rigid(self, src: _Packed, dst: _Packed, dst_tree: cKDTree, t0: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Per person, rotation (G, 3, 3) and translation (G, 3) of src after trimmed ICP from translation t0."""
        G = len(src.sizes)
        R = np.repeat(np.eye(3)[None], G, axis=0)
        t = t0.copy()
        starts = np.cumsum(src.sizes) - src.sizes
        chosen = [start + (self._rng.choice(size, self.rigid_points, replace=False) if size > self.rigid_points
                           else np.arange(size)) for start, size in zip(starts, src.sizes, strict=True)]
        sub_idx = np.concatenate(chosen)
        sub, group = src.points[sub_idx], src.group[sub_idx]
        for _ in range(self.rigid_iterations):
            moved = np.einsum("mij,mj->mi", R[group], sub) + t[group]
            dist, idx = dst_tree.query(moved + src.shift[group], k=1)
            w = self._trim_weights(dist, group, G)
            R_new, t_new = kabsch_batched(sub, dst.points[idx], group, w, G)
            ok = np.bincount(group, w, minlength=G) >= 3
            change = max(np.abs(R_new[ok] - R[ok]).max(initial=0.0), np.abs(t_new[ok] - t[ok]).max(initial=0.0))
            R[ok], t[ok] = R_new[ok], t_new[ok]
            if change < self.converged:
                break
        return R, t

    def _patches(self, src: _Packed) -> tuple[np.ndarray, np.ndarray]:
        """Patch label per src point (M,) and the person of each patch (P,): farthest-point seeds per
        person (at most `patches`, at least min_patch_points points per patch), points to the nearest seed."""
        seeds, seed_person = [], []
        for g, cloud in enumerate(src.split(src.points)):
            count = max(1, min(self.patches, len(cloud) // max(self.min_patch_points, 1)))
            seeds.append(cloud[farthest_point_seeds(cloud, count)] + src.shift[g])
            seed_person.append(np.full(count, g))
        _, label = cKDTree(np.concatenate(seeds)).query(src.points + src.shift[src.group], k=1)
        return label, np.concatenate(seed_person)

    def _patch_rigid(self, src: _Packed, R: np.ndarray, t: np.ndarray, dst: _Packed, dst_tree: cKDTree) -> np.ndarray:
        """Flow (M, 3) after per-patch ICP started from each person's transform, smoothed on src's k-NN graph."""
        G = len(src.sizes)
        label, patch_person = self._patches(src)
        P = len(patch_person)
        Rs, ts = R[patch_person].copy(), t[patch_person].copy()
        src_shifted = src.points + src.shift[src.group]
        dst_shifted = dst.points + dst.shift[dst.group]
        for _ in range(self.iterations):
            current = np.einsum("mij,mj->mi", Rs[label], src.points) + ts[label]
            d_f, i_f = dst_tree.query(current + src.shift[src.group], k=1)
            pairs_src, pairs_dst, pairs_label, dists = [src.points], [dst.points[i_f]], [label], [d_f]
            if self.backward:
                d_b, i_b = cKDTree(current + src.shift[src.group]).query(dst_shifted, k=1)
                pairs_src.append(src.points[i_b])
                pairs_dst.append(dst.points)
                pairs_label.append(label[i_b])
                dists.append(d_b)
            ps, pd = np.concatenate(pairs_src), np.concatenate(pairs_dst)
            pl, dist = np.concatenate(pairs_label), np.concatenate(dists)
            w = self._trim_weights(dist, patch_person[pl], G)
            R_new, t_new = kabsch_batched(ps, pd, pl, w, P)
            enough = np.bincount(pl, w, minlength=P) >= self.min_patch_points
            Rs[enough], ts[enough] = R_new[enough], t_new[enough]
        flow = np.einsum("mij,mj->mi", Rs[label], src.points) + ts[label] - src.points
        if self.smoothing_steps > 0:
            # k nearest neighbours within the point's own person (missing ones, in small clouds, are skipped)
            _, graph = cKDTree(src_shifted).query(src_shifted, k=self.neighbours + 1,
                                                   distance_upper_bound=0.25 * src.shift[1, 0] if G > 1 else np.inf)
            graph = graph.reshape(len(src_shifted), -1)
            valid = graph < len(src_shifted)
            graph = np.where(valid, graph, 0)
            count = valid.sum(1, keepdims=True)
            for _ in range(self.smoothing_steps):
                flow = (flow[graph] * valid[..., None]).sum(1) / count
        return flow

    # -- public API -----------------------------------------------------------------------------
    def estimate(self, src: np.ndarray, dst: np.ndarray, init_translation: np.ndarray | None = None) -> np.ndarray:
        """Forward flow (M, 3) float32 for every src point (M, 3) towards dst (K, 3)."""
        return self.estimate_many([(src, dst, init_translation)])[0]

    def estimate_pair(self, src: np.ndarray, dst: np.ndarray,
                      init_translation: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Forward flow of src (M, 3) and backward flow of dst (K, 3)."""
        back_init = None if init_translation is None else -np.asarray(init_translation, dtype=np.float64)
        forward, backward = self.estimate_many([(src, dst, init_translation), (dst, src, back_init)])
        return forward, backward

    def estimate_many(self, pairs: Sequence[tuple]) -> list[np.ndarray]:
        """Forward flow for each (src, dst) or (src, dst, init_translation) pair, e.g. one per track, all
        solved together."""
        if not pairs:
            return []
        srcs = [_checked_cloud("src", pair[0]) for pair in pairs]
        dsts = [_checked_cloud("dst", pair[1]) for pair in pairs]
        t0 = np.empty((len(pairs), 3))
        for g, pair in enumerate(pairs):
            init = pair[2] if len(pair) > 2 else None
            t0[g] = dsts[g].mean(0) - srcs[g].mean(0)
            if init is not None:
                init = np.asarray(init, dtype=np.float64).reshape(3)
                if np.isfinite(init).all():
                    t0[g] = init
        extent = max(max(np.abs(c).max() for c in srcs), max(np.abs(c).max() for c in dsts))
        spacing = 4.0 * (extent + np.abs(t0).max() + self.max_distance) + 10.0
        src, dst = _Packed(srcs, spacing), _Packed(dsts, spacing)
        dst_tree = cKDTree(dst.points + dst.shift[dst.group])
        G = len(pairs)
        if self.rigid_iterations:
            R, t = self._rigid(src, dst, dst_tree, t0)
        else:
            R, t = np.repeat(np.eye(3)[None], G, axis=0), t0
        if self.iterations == 0:
            flow = np.einsum("mij,mj->mi", R[src.group], src.points) + t[src.group] - src.points
        else:
            flow = self._patch_rigid(src, R, t, dst, dst_tree)
        return [f.astype(np.float32) for f in src.split(flow)]


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
