"""preprocess.nearest_index / point_parts: the exact nearest sampled point for every crop point, cheaply."""

from __future__ import annotations

import time

import numpy as np

from kp3d_ros.model import preprocess


def _brute_force(queries: np.ndarray, refs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Nearest index in float64 (first on ties) and the gap between the best and second-best squared distance."""
    d = ((queries.astype(np.float64)[:, None] - refs.astype(np.float64)[None]) ** 2).sum(-1)
    order = np.sort(d, axis=1)
    gap = order[:, 1] - order[:, 0] if d.shape[1] > 1 else np.full(len(d), np.inf)
    return d.argmin(1), gap


def _dense_crop(rng: np.random.Generator, count: int) -> np.ndarray:
    angle = rng.uniform(0, 2 * np.pi, count)
    radius = 0.2 + rng.normal(0, 0.02, count)
    return np.stack([6 + radius * np.cos(angle), radius * np.sin(angle), rng.uniform(-0.9, 0.9, count)],
                    1).astype(np.float32)


def test_nearest_index_is_the_exact_nearest_point():
    rng = np.random.default_rng(3)
    for count, refs_count, chunk in [(1800, 128, 512), (50, 7, 8), (3000, 128, 4096), (1, 1, 512)]:
        crop = _dense_crop(rng, count)
        refs = crop[rng.choice(count, size=min(refs_count, count), replace=False)]
        found = preprocess.nearest_index(crop, refs, chunk=chunk)
        expected, gap = _brute_force(crop, refs)
        clear = gap > 1e-9  # float32 distances cannot split closer near-ties (those must still be as near)
        assert found.dtype == np.int64 and found.shape == (count,)
        np.testing.assert_array_equal(found[clear], expected[clear])
        chosen = ((crop.astype(np.float64) - refs[found]) ** 2).sum(1)
        best = ((crop.astype(np.float64) - refs[expected]) ** 2).sum(1)
        assert np.all(chosen - best <= 1e-9)


def test_exact_ties_take_the_lowest_index_and_empty_queries():
    refs = np.array([[1.0, 0.0, 0.0], [0.0, 0.0, 0.0], [1.0, 0.0, 0.0], [-1.0, 0.0, 0.0]], np.float32)
    queries = np.array([[1.0, 0.0, 0.0], [0.0, 0.0, 0.0], [2.0, 0.0, 0.0]], np.float32)
    np.testing.assert_array_equal(preprocess.nearest_index(queries, refs), [0, 1, 0])
    assert preprocess.nearest_index(np.zeros((0, 3), np.float32), refs).shape == (0,)


def test_point_parts_of_dense_crops_match_brute_force_and_are_fast():
    rng = np.random.default_rng(4)
    crops = [_dense_crop(rng, 1800) for _ in range(5)]
    batch = preprocess.prepare_batch(crops, 128, rng)
    logits = rng.normal(size=(5, 128, 16)).astype(np.float32)
    parts = preprocess.point_parts(logits, batch.indices, batch.counts, crops)
    for b, crop in enumerate(crops):
        sampled = batch.indices[b]
        hit = np.zeros(len(crop), bool)
        hit[sampled] = True
        nearest, _ = _brute_force(crop[~hit], crop[sampled])
        np.testing.assert_array_equal(parts[b][~hit], logits[b, nearest].argmax(1))
        np.testing.assert_array_equal(parts[b][sampled], logits[b].argmax(1))  # N <= M: each sampled once
    times = []
    for _ in range(5):
        start = time.perf_counter()
        preprocess.point_parts(logits, batch.indices, batch.counts, crops)
        times.append(time.perf_counter() - start)
    assert min(times) < 0.025  # ~2 ms on an idle core (benchmarks/point_parts_lookup.py); a wide margin for CI
