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


_OUTER_ROW, _OUTER_COL = np.repeat(np.arange(3), 3), np.tile(np.arange(3), 3)  # entries of a 3x3 outer product


def kabsch_batched(src: np.ndarray, dst: np.ndarray, group: np.ndarray, weights: np.ndarray,
                   groups: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-group Kabsch: rotations (G, 3, 3) and translations (G, 3) for points labelled by group (M,).

    All weighted sums come from one matrix product: a (G, M) matrix holding each point's weight in its
    group's row times the moments [1, src, dst, src dst^T] of every point; the cross-covariance is then the
    raw second moment minus the product of the means (float64 is ample for metre-scale coordinates)."""
    count = len(src)
    moments = np.empty((16, count))  # one row per moment: long contiguous rows keep the products cheap
    moments[0] = 1.0
    moments[1:4] = src.T
    moments[4:7] = dst.T
    np.multiply(moments[1:4][_OUTER_ROW], moments[4:7][_OUTER_COL], out=moments[7:])
    membership = np.zeros((groups, count))
    membership[group, np.arange(count)] = weights
    sums = membership @ moments.T
    wsum = np.maximum(sums[:, :1], 1e-12)
    cs, cd = sums[:, 1:4] / wsum, sums[:, 4:7] / wsum
    H = sums[:, 7:].reshape(groups, 3, 3) - (wsum * cs)[:, :, None] * cd[:, None, :]
    U, _, Vt = np.linalg.svd(H)
    V, Ut = Vt.transpose(0, 2, 1), U.transpose(0, 2, 1)
    R = V @ Ut
    flip = np.linalg.det(R) < 0  # a reflection: V diag(1, 1, -1) U^T instead (the least significant axis turned)
    R[flip] -= 2.0 * V[flip, :, 2, None] * Ut[flip, None, 2, :]
    return R, cd - (R @ cs[:, :, None])[:, :, 0]


def farthest_point_seeds(points: np.ndarray, count: int) -> np.ndarray:
    """Indices (G, count) of well spread points in each of G padded clouds (G, N, 3): farthest point sampling
    from the point nearest the cloud's mean. Padding must repeat a real point (as _padded does); the first
    k seeds of a run are the seeds of a run with count k."""
    G, N, _ = points.shape
    rows = np.arange(G)
    count = min(count, N)
    chosen = np.empty((G, count), dtype=np.int64)
    chosen[:, 0] = ((points - points.mean(1, keepdims=True)) ** 2).sum(2).argmin(1)
    dist = ((points - points[rows, chosen[:, 0]][:, None]) ** 2).sum(2)
    for i in range(1, count):
        chosen[:, i] = dist.argmax(1)
        dist = np.minimum(dist, ((points - points[rows, chosen[:, i]][:, None]) ** 2).sum(2))
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


def _padded(sizes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For clouds of these sizes packed one after another: (G, largest size) indices into the packed array
    (the cloud's last point repeated where it is shorter) and the mask of the real entries."""
    starts = np.cumsum(sizes) - sizes
    column = np.arange(sizes.max())
    valid = column[None] < sizes[:, None]
    return np.minimum(starts[:, None] + column[None], starts[:, None] + sizes[:, None] - 1), valid


BRUTE_FORCE_POINTS = 256  # clouds up to this size are matched by a distance matrix, larger ones by k-d trees


class _Nearest:
    """Nearest neighbours from query clouds (packed with sizes `query_sizes`) to the reference clouds `ref`
    and back, cloud g only with cloud g. Small clouds (the node's <= flow.max_points) use batched float32
    matrix products, centred per cloud: the nearest r of q minimises |r|^2 - 2 q.r = [q, 1] . [-2 r, |r|^2],
    and back the same with the roles swapped. Larger clouds use a k-d tree over the far-apart shifted
    clouds. Distances are recomputed exactly (float64) either way."""

    FAR = 1.0e4  # padding rows sit this far away (m), so they are never anyone's nearest point

    def __init__(self, query_sizes: np.ndarray, ref: _Packed) -> None:
        self.ref = ref
        self.q_shift = ref.shift[np.repeat(np.arange(len(query_sizes)), query_sizes)]
        self.brute = max(query_sizes.max(), ref.sizes.max()) <= BRUTE_FORCE_POINTS
        if self.brute:
            self.q_index, self.q_valid = _padded(query_sizes)
            self.r_index, self.r_valid = _padded(ref.sizes)
            self.rows = np.arange(len(ref.sizes))[:, None]
            self.centre = np.stack([c.mean(0) for c in ref.split(ref.points)])[:, None, :]
            r = self._centred(ref.points, self.r_index, self.r_valid, self.FAR)
            self.r_ones = _with_ones(r)
            self.r_scores = np.ascontiguousarray(np.concatenate([-2.0 * r, (r * r).sum(-1, keepdims=True)], -1)
                                                 .transpose(0, 2, 1)).astype(np.float32)
        else:
            self.tree = cKDTree(ref.points + ref.shift[ref.group])

    def _centred(self, points: np.ndarray, index: np.ndarray, valid: np.ndarray, far: float) -> np.ndarray:
        return np.where(valid[..., None], points[index] - self.centre, far)

    def forward(self, query: np.ndarray, centred: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Distance and reference index of each query point's nearest reference point (same cloud);
        `centred`: the padded, centred query when the caller has it already."""
        if self.brute:
            q = self._centred(query, self.q_index, self.q_valid, -self.FAR) if centred is None else centred
            idx = self.r_index[self.rows, (_with_ones(q) @ self.r_scores).argmin(2)][self.q_valid]
        else:
            _, idx = self.tree.query(query + self.q_shift, k=1)
        return np.linalg.norm(query - self.ref.points[idx], axis=1), idx

    def both(self, query: np.ndarray) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
        """forward(query), and for each reference point the distance and index of its nearest query point."""
        if self.brute:
            q = self._centred(query, self.q_index, self.q_valid, -self.FAR)
            forward = self.forward(query, q)
            q_scores = np.concatenate([-2.0 * q, (q * q).sum(-1, keepdims=True)], -1).transpose(0, 2, 1)
            back = self.q_index[self.rows, (self.r_ones @ np.ascontiguousarray(q_scores, np.float32)).argmin(2)]
            back = back[self.r_valid]
        else:
            forward = self.forward(query)
            _, back = cKDTree(query + self.q_shift).query(self.ref.points + self.ref.shift[self.ref.group], k=1)
        return forward, (np.linalg.norm(self.ref.points - query[back], axis=1), back)


def _neighbour_graph(clouds: _Packed, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Each point's k nearest points of its own cloud, itself included: indices (M, k) into the packed points
    and the mask of real ones (a cloud with fewer than k points has fewer neighbours). A k-d tree: for the
    node's clouds it is as fast as a distance matrix."""
    size = len(clouds.points)
    shifted = clouds.points + clouds.shift[clouds.group]
    bound = 0.25 * clouds.shift[1, 0] if len(clouds.sizes) > 1 else np.inf
    _, graph = cKDTree(shifted).query(shifted, k=k, distance_upper_bound=bound)
    graph = graph.reshape(size, -1)
    found = graph < size
    return np.where(found, graph, 0), found


def _with_ones(points: np.ndarray) -> np.ndarray:
    """(..., 3) float64 -> (..., 4) float32 with a last column of ones."""
    out = np.ones((*points.shape[:-1], 4), np.float32)
    out[..., :3] = points
    return out


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

    def _rigid(self, src: _Packed, dst: _Packed, t0: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Per person, rotation (G, 3, 3) and translation (G, 3) of src after trimmed ICP from translation t0."""
        G = len(src.sizes)
        R = np.repeat(np.eye(3)[None], G, axis=0)
        t = t0.copy()
        starts = np.cumsum(src.sizes) - src.sizes
        chosen = [start + (self._rng.choice(size, self.rigid_points, replace=False) if size > self.rigid_points
                           else np.arange(size)) for start, size in zip(starts, src.sizes, strict=True)]
        sub_idx = np.concatenate(chosen)
        sub, group = src.points[sub_idx], src.group[sub_idx]
        nearest = _Nearest(np.minimum(src.sizes, self.rigid_points), dst)
        for _ in range(self.rigid_iterations):
            moved = np.einsum("mij,mj->mi", R[group], sub) + t[group]
            dist, idx = nearest.forward(moved)
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
        index, valid = _padded(src.sizes)
        padded = src.points[index]
        counts = np.clip(src.sizes // max(self.min_patch_points, 1), 1, max(self.patches, 1))
        seeds = padded[np.arange(len(counts))[:, None], farthest_point_seeds(padded, int(counts.max()))]
        dist = ((padded[:, :, None, :] - seeds[:, None, :, :]) ** 2).sum(3)  # (G, N, seeds)
        dist = np.where(np.arange(seeds.shape[1])[None, None, :] < counts[:, None, None], dist, np.inf)
        first = np.cumsum(counts) - counts
        label = (dist.argmin(2) + first[:, None])[valid]
        return label, np.repeat(np.arange(len(counts)), counts)

    def _patch_rigid(self, src: _Packed, R: np.ndarray, t: np.ndarray, dst: _Packed) -> np.ndarray:
        """Flow (M, 3) after per-patch ICP started from each person's transform, smoothed on src's k-NN graph."""
        G = len(src.sizes)
        label, patch_person = self._patches(src)
        P = len(patch_person)
        Rs, ts = R[patch_person].copy(), t[patch_person].copy()
        nearest = _Nearest(src.sizes, dst)
        for _ in range(self.iterations):
            current = np.einsum("mij,mj->mi", Rs[label], src.points) + ts[label]
            if self.backward:
                (d_f, i_f), (d_b, i_b) = nearest.both(current)
                ps, pd = np.concatenate([src.points, src.points[i_b]]), np.concatenate([dst.points[i_f], dst.points])
                pl, dist = np.concatenate([label, label[i_b]]), np.concatenate([d_f, d_b])
            else:
                (dist, i_f), ps, pl = nearest.forward(current), src.points, label
                pd = dst.points[i_f]
            w = self._trim_weights(dist, patch_person[pl], G)
            R_new, t_new = kabsch_batched(ps, pd, pl, w, P)
            enough = np.bincount(pl, w, minlength=P) >= self.min_patch_points
            Rs[enough], ts[enough] = R_new[enough], t_new[enough]
        flow = np.einsum("mij,mj->mi", Rs[label], src.points) + ts[label] - src.points
        if self.smoothing_steps > 0:
            graph, valid = _neighbour_graph(src, self.neighbours + 1)
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
        G = len(pairs)
        if self.rigid_iterations:
            R, t = self._rigid(src, dst, t0)
        else:
            R, t = np.repeat(np.eye(3)[None], G, axis=0), t0
        if self.iterations == 0:
            flow = np.einsum("mij,mj->mi", R[src.group], src.points) + t[src.group] - src.points
        else:
            flow = self._patch_rigid(src, R, t, dst)
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
