"""Scene flow: the real-time estimator and the offline optimiser against known flow on an articulated toy."""

from __future__ import annotations

import time

import numpy as np
import pytest

from kp3d_ros.core.flow import FlowEstimator, flow_metrics, kabsch, kabsch_batched, nearest_neighbour_flow


def _rot(axis: np.ndarray, angle: float) -> np.ndarray:
    axis = axis / np.linalg.norm(axis)
    K = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    return np.eye(3) + np.sin(angle) * K + (1 - np.cos(angle)) * K @ K


# Toy person: torso, one leg and one arm as cylinders hanging from pivots (radius, length, pivot).
_SEGMENTS = ((0.15, 0.6, (0.0, 0.0, 1.6)), (0.07, 0.85, (0.0, 0.1, 0.95)), (0.05, 0.6, (0.0, 0.22, 1.45)))


def _surface(rng: np.random.Generator, n: int, angles: np.ndarray, origin: np.ndarray):
    """n points on the posed toy, their outward normals and the pose-independent parameters."""
    seg = rng.integers(0, len(_SEGMENTS), n)
    th, h = rng.uniform(0, 2 * np.pi, n), rng.uniform(0, 1, n)
    r = np.array([s[0] for s in _SEGMENTS])[seg]
    length = np.array([s[1] for s in _SEGMENTS])[seg]
    pivot = np.array([s[2] for s in _SEGMENTS])[seg]
    return (seg, th, h, r, length, pivot), _place((seg, th, h, r, length, pivot), angles, origin)


def _place(params, angles: np.ndarray, origin: np.ndarray):
    seg, th, h, r, length, pivot = params
    local = np.stack([r * np.cos(th), r * np.sin(th), -h * length], 1)
    normal = np.stack([np.cos(th), np.sin(th), np.zeros_like(th)], 1)
    points, normals = np.empty_like(local), np.empty_like(local)
    for s in range(len(_SEGMENTS)):
        m = seg == s
        R = _rot(np.array([0.0, 1.0, 0.0]), angles[s])
        points[m] = local[m] @ R.T + pivot[m] + origin
        normals[m] = normal[m] @ R.T
    return points, normals


def toy_pair(rng: np.random.Generator, n: int = 2400, move: float = 0.12, swing: float = 0.3, noise: float = 0.01):
    """(src, dst, true forward flow of src, true translation): the toy moved by `move` m with limbs
    swinging up to `swing` rad, seen from the origin (only surfaces facing it), resampled, noisy."""
    a0 = np.r_[0.0, rng.uniform(-0.4, 0.4, 2)]
    a1 = a0 + np.r_[0.0, rng.uniform(-swing, swing, 2)]
    heading = rng.uniform(0, 2 * np.pi)
    d = move * np.array([np.cos(heading), np.sin(heading), 0.0])
    o0 = np.array([6.0, rng.uniform(-2, 2), -1.9])
    params, (src, n_src) = _surface(rng, n, a0, o0)
    tgt, _ = _place(params, a1, o0 + d)
    _, (dst, n_dst) = _surface(rng, n, a1, o0 + d)
    vis_s = (n_src * -src).sum(1) > 0
    vis_d = (n_dst * -dst).sum(1) > 0
    src_v = src[vis_s] + rng.normal(0, noise, (vis_s.sum(), 3))
    dst_v = dst[vis_d] + rng.normal(0, noise, (vis_d.sum(), 3))
    return src_v, dst_v, (tgt - src)[vis_s], d


def test_kabsch_recovers_rigid_motion():
    rng = np.random.default_rng(1)
    src = rng.normal(size=(100, 3))
    R = _rot(np.array([0.3, 1.0, 0.2]), 0.7)
    R_est, t_est = kabsch(src, src @ R.T + [1.0, 2.0, 3.0])
    assert np.allclose(R_est, R, atol=1e-9) and np.allclose(t_est, [1.0, 2.0, 3.0], atol=1e-9)
    group = np.repeat([0, 1], 50)
    R2 = _rot(np.array([1.0, 0.0, 0.0]), -0.4)
    dst = np.where(group[:, None] == 0, src @ R.T, src @ R2.T + 0.5)
    Rs, ts = kabsch_batched(src, dst, group, np.ones(100), 2)
    assert np.allclose(Rs[0], R, atol=1e-9) and np.allclose(Rs[1], R2, atol=1e-9)
    assert np.allclose(ts[1], 0.5, atol=1e-9)


def test_kabsch_batched_returns_rotations_for_mirrored_data():
    rng = np.random.default_rng(6)
    src = rng.normal(size=(90, 3)) * [1.0, 0.5, 0.2]
    group = np.repeat([0, 1, 2], 30)
    dst = src * [-1.0, 1.0, 1.0]  # a reflection: the best proper rotation is not V U^T
    dst[group == 1] = src[group == 1] @ _rot(np.array([0.0, 0.0, 1.0]), 0.5).T  # a plain rotation
    Rs, ts = kabsch_batched(src, dst, group, np.ones(90), 3)
    assert np.allclose(np.linalg.det(Rs), 1.0)
    for g in range(3):
        R, t = kabsch(src[group == g], dst[group == g])
        assert np.allclose(Rs[g], R, atol=1e-9) and np.allclose(ts[g], t, atol=1e-9)


def test_small_clouds_match_the_k_d_tree_path(monkeypatch):
    """Clouds of up to flow.BRUTE_FORCE_POINTS (the node's) are matched by distance matrices, larger ones by
    k-d trees: both give the same flow."""
    import kp3d_ros.core.flow as flow_module

    rng = np.random.default_rng(7)
    pairs, truths = [], []
    for _ in range(4):
        src, dst, true, d = toy_pair(rng)
        keep, keep_dst = rng.choice(len(src), 120, replace=False), rng.choice(len(dst), 100, replace=False)
        pairs.append((src[keep], dst[keep_dst], d))
        truths.append(true[keep])
    matrix = FlowEstimator(seed=1).estimate_many(pairs)
    monkeypatch.setattr(flow_module, "BRUTE_FORCE_POINTS", 0)
    trees = FlowEstimator(seed=1).estimate_many(pairs)
    for a, b, true in zip(matrix, trees, truths, strict=True):
        assert np.abs(a - b).max() < 1e-4
        assert flow_metrics(a, true)["epe3d"] < 0.06


def test_realtime_flow_beats_nearest_neighbour_and_is_fast():
    rng = np.random.default_rng(0)
    pairs = [toy_pair(rng) for _ in range(6)]
    est = FlowEstimator()
    est.estimate(pairs[0][0], pairs[0][1])  # warm caches
    nn_epe, rt_epe, times = [], [], []
    for src, dst, true, d in pairs:
        assert 500 <= len(src) <= 2000
        nn_epe.append(flow_metrics(nearest_neighbour_flow(src, dst), true)["epe3d"])
        start = time.perf_counter()
        flow = est.estimate(src, dst, init_translation=d)
        times.append(time.perf_counter() - start)
        assert flow.shape == src.shape and flow.dtype == np.float32
        rt_epe.append(flow_metrics(flow, true)["epe3d"])
    assert np.mean(rt_epe) < 0.05
    assert np.mean(rt_epe) < 0.6 * np.mean(nn_epe)
    # A bound that only catches a pathological slow-down: the measured figure is kp3d flow-bench's (about 20 ms
    # here when idle); 0.05 s failed once with two training runs on the 2-core machine (54 ms median).
    assert np.median(times) < 0.2


def test_pure_translation_is_exact_without_noise():
    rng = np.random.default_rng(3)
    src, _, _, _ = toy_pair(rng, noise=0.0)
    shift = np.array([0.15, -0.05, 0.0])
    flow = FlowEstimator().estimate(src, src + shift, init_translation=None)
    assert np.abs(flow - shift).max() < 1e-3


def test_estimate_many_and_pair():
    rng = np.random.default_rng(4)
    pairs = [toy_pair(rng)[:2] for _ in range(3)]
    est = FlowEstimator(iterations=2)
    flows = est.estimate_many(pairs)
    assert [f.shape for f in flows] == [p[0].shape for p in pairs]
    fwd, bwd = est.estimate_pair(*pairs[0], init_translation=np.zeros(3))
    assert fwd.shape == pairs[0][0].shape and bwd.shape == pairs[0][1].shape


def test_bad_input_raises_clear_errors():
    est = FlowEstimator()
    good = np.zeros((10, 3))
    with pytest.raises(ValueError, match="empty"):
        est.estimate(np.zeros((0, 3)), good)
    with pytest.raises(ValueError, match="non-finite"):
        est.estimate(np.full((10, 3), np.nan), good)
    with pytest.raises(ValueError, match="shape"):
        est.estimate(np.zeros(10), good)
    # a non-finite warm start falls back to the centroid difference instead of failing
    assert np.isfinite(est.estimate(good + 1.0, good, init_translation=np.array([np.nan, 0, 0]))).all()
    # tiny clouds still work
    assert est.estimate(np.ones((2, 3)), np.ones((1, 3))).shape == (2, 3)


def test_offline_optimiser_reduces_chamfer_and_caches(tmp_path):
    torch = pytest.importorskip("torch")
    torch.set_num_threads(1)
    from kp3d_ros.flow_offline import FlowCache, NeuralFlowOptimizer, truncated_chamfer

    rng = np.random.default_rng(5)
    src, dst, _, d = toy_pair(rng, n=800)
    init = np.tile(d, (len(src), 1)).astype(np.float32)
    opt = NeuralFlowOptimizer(iterations=60)
    flow = opt.estimate(src, dst, init)
    t = lambda x: torch.from_numpy(np.asarray(x, dtype=np.float32))  # noqa: E731
    assert float(truncated_chamfer(t(src + flow), t(dst), 0.3)) < float(truncated_chamfer(t(src + init), t(dst), 0.3))
    cache = FlowCache(tmp_path, "nsfp-test")
    calls = []
    first = cache.get_or_compute(src, dst, lambda a, b: calls.append(1) or flow)
    second = cache.get_or_compute(src, dst, lambda a, b: calls.append(1) or flow)
    assert len(calls) == 1 and np.array_equal(first, second)
