"""ROI, ground removal on a tilted plane, person candidates, smoothing."""

from __future__ import annotations

import numpy as np

from kp3d_ros.core.candidates import find_candidates
from kp3d_ros.core.ground import segment_ground
from kp3d_ros.core.roi import count_nonfinite, roi_mask
from kp3d_ros.core.smoothing import KeypointSmoother

SENSOR_HEIGHT = 1.9


def tilted_ground(rng, n: int, slope=(0.08, -0.05), extent: float = 20.0) -> np.ndarray:
    xy = rng.uniform(-extent, extent, size=(n, 2))
    z = -SENSOR_HEIGHT + slope[0] * xy[:, 0] + slope[1] * xy[:, 1] + rng.normal(0, 0.015, n)
    return np.column_stack([xy, z]).astype(np.float32)


def person(rng, x: float, y: float, ground_z: float, n: int = 300, height: float = 1.75) -> np.ndarray:
    """Points on a vertical cylinder of radius 0.25 standing at (x, y) on ground_z."""
    angle = rng.uniform(0, 2 * np.pi, n)
    z = ground_z + rng.uniform(0.0, height, n)
    return np.column_stack([x + 0.25 * np.cos(angle), y + 0.25 * np.sin(angle), z]).astype(np.float32)


def box_points(rng, x, y, ground_z, size, n=600) -> np.ndarray:
    low = np.array([x - size[0] / 2, y - size[1] / 2, ground_z])
    return (low + rng.uniform(0, 1, (n, 3)) * size).astype(np.float32)


def ground_z(x, y, slope=(0.08, -0.05)):
    return -SENSOR_HEIGHT + slope[0] * x + slope[1] * y


def test_roi_mask_and_nonfinite():
    pts = np.array([[0.5, 0, 0], [5, 0, 0], [50, 0, 0], [5, 0, -5], [np.nan, 0, 0], [5, np.inf, 0]], np.float32)
    assert roi_mask(pts, 1.0, 40.0, -3.0, 1.5).tolist() == [False, True, False, False, False, False]
    assert count_nonfinite(pts) == 2


def test_ground_removal_on_tilted_plane_with_objects():
    rng = np.random.default_rng(1)
    ground = tilted_ground(rng, 40000)
    people = [person(rng, x, y, ground_z(x, y)) for x, y in [(6, 3), (-10, 8), (15, -12)]]
    car = box_points(rng, 8, -6, ground_z(8, -6), (4.0, 1.8, 1.5))
    objects = np.concatenate([*people, car])
    cloud = np.concatenate([ground, objects])
    seg = segment_ground(cloud, cell_size=2.0, clearance=0.2, extent=40.0)
    is_ground = seg.is_ground
    assert is_ground[: len(ground)].mean() > 0.99
    truth_above = objects[:, 2] - ground_z(objects[:, 0], objects[:, 1])
    # Object points clearly above the clearance are never ground; near the feet some are.
    assert not is_ground[len(ground):][truth_above > 0.3].any()
    # The height above ground follows the slope: error within a few centimetres.
    err = seg.height_above[len(ground):] - truth_above
    assert np.abs(np.median(err)) < 0.06
    np.testing.assert_allclose(seg.grid.height_at(np.array([[6.0, 3.0]])), ground_z(6, 3), atol=0.08)


def test_ground_under_car_covered_cell_is_interpolated():
    rng = np.random.default_rng(2)
    ground = tilted_ground(rng, 30000, slope=(0, 0))
    keep = ~((np.abs(ground[:, 0] - 9) < 2.5) & (np.abs(ground[:, 1] - 9) < 2.5))  # hidden under a van
    van = box_points(rng, 9, 9, -SENSOR_HEIGHT + 0.7, (5.0, 5.0, 1.8), n=3000)  # trailer body 0.7 m up
    seg = segment_ground(np.concatenate([ground[keep], van]), 2.0, 0.2, 40.0)
    assert not seg.is_ground[keep.sum():].any()


def candidates_of(cloud, **kw):
    seg = segment_ground(cloud, 2.0, 0.2, 40.0)
    above = ~seg.is_ground
    args = dict(extent=40.0, voxel_size=0.2, min_points=20, min_height=0.8, max_height=2.3, max_width=1.6,
                max_base=1.0)
    args.update(kw)
    return find_candidates(cloud[above], seg.height_above[above], **args)


def test_candidates_separate_two_people_one_metre_apart():
    rng = np.random.default_rng(3)
    g = tilted_ground(rng, 30000)
    cloud = np.concatenate([g, person(rng, 10, 0, ground_z(10, 0)), person(rng, 10, 1.0, ground_z(10, 1.0))])
    found = candidates_of(cloud)
    assert len(found) == 2
    centres = found.centres[np.argsort(found.centres[:, 1])]
    np.testing.assert_allclose(centres, [[10, 0], [10, 1]], atol=0.1)
    assert (found.heights > 1.5).all() and (found.heights < 1.9).all()


def test_candidates_merge_one_person_and_reject_car_and_pole():
    rng = np.random.default_rng(4)
    g = tilted_ground(rng, 30000)
    # One person seen as two vertical halves with a gap in height (occluded waist): still one candidate.
    body = person(rng, -5, 5, ground_z(-5, 5), n=600)
    gz = ground_z(-5, 5)
    body = body[(body[:, 2] < gz + 0.7) | (body[:, 2] > gz + 1.1)]
    car = box_points(rng, 12, -3, ground_z(12, -3), (4.0, 1.8, 1.5))
    pole = box_points(rng, -8, -8, ground_z(-8, -8), (0.15, 0.15, 4.0), n=300)
    found = candidates_of(np.concatenate([g, body, car, pole]))
    assert len(found) == 1
    np.testing.assert_allclose(found.centres[0], [-5, 5], atol=0.1)
    assert found.counts[0] > 300


def test_candidates_min_points():
    rng = np.random.default_rng(5)
    cloud = np.concatenate([tilted_ground(rng, 20000), person(rng, 20, 5, ground_z(20, 5), n=15)])
    assert len(candidates_of(cloud)) == 0
    assert len(candidates_of(cloud, min_points=10)) == 1


def test_smoother_follows_translation_without_lag_and_reduces_jitter():
    rng = np.random.default_rng(6)
    smoother = KeypointSmoother(alpha=0.5)
    pose = rng.normal(size=(14, 3)).astype(np.float32)
    errors_raw, errors_smooth = [], []
    for t in range(30):
        centre = np.array([0.15 * t, 0.0, -1.9], np.float32)
        noisy = pose + centre + rng.normal(0, 0.05, size=(14, 3)).astype(np.float32)
        out, conf = smoother.smooth(7, noisy, np.full(14, 0.8, np.float32), centre)
        if t > 5:
            errors_raw.append(np.abs(noisy - pose - centre).mean())
            errors_smooth.append(np.abs(out - pose - centre).mean())
    assert np.mean(errors_smooth) < 0.75 * np.mean(errors_raw)
    assert conf.shape == (14,) and np.allclose(conf, 0.8)
    smoother.keep_only([])
    out, _ = smoother.smooth(7, pose, np.ones(14, np.float32), np.zeros(3, np.float32))
    np.testing.assert_allclose(out, pose)  # state of a dead track is gone


def test_candidates_split_people_joined_by_low_clutter():
    """Two people 1 m apart whose feet are joined by a low box (a bench, a kerb bush): one 2 m wide cluster on
    the ground grid, rejected as too wide, then split into both people above SPLIT_MIN_HEIGHT."""
    rng = np.random.default_rng(6)
    gz = ground_z(8, 0)
    low_box = box_points(rng, 8, 0.5, gz, (0.6, 2.0, 0.3), n=800)
    cloud = np.concatenate([tilted_ground(rng, 30000), person(rng, 8, 0, gz), person(rng, 8, 1.0, gz), low_box])
    found = candidates_of(cloud)
    assert len(found) == 2
    np.testing.assert_allclose(found.centres[np.argsort(found.centres[:, 1])], [[8, 0], [8, 1.0]], atol=0.15)
    assert len(candidates_of(cloud, split=False)) == 0  # what the ground grid alone gives


def test_candidates_keep_a_person_lying_down_whole():
    """A 1.9 m person lying on the ground (a 0.4 m high cluster 2 m wide on the grid) is one candidate when
    max_lying_width allows it, and none otherwise (it has no points above SPLIT_MIN_HEIGHT to split on); a low
    wall 3 m long stays out either way."""
    rng = np.random.default_rng(7)
    gz = ground_z(6, -2)
    lying = box_points(rng, 6, -2, gz + 0.05, (1.9, 0.45, 0.35), n=500)
    wall = box_points(rng, -6, 6, ground_z(-6, 6), (3.0, 0.3, 0.6), n=800)
    cloud = np.concatenate([tilted_ground(rng, 30000), lying, wall])
    assert len(candidates_of(cloud, min_height=0.3)) == 0
    found = candidates_of(cloud, min_height=0.3, max_lying_width=2.4)
    assert len(found) == 1
    np.testing.assert_allclose(found.centres[0], [6, -2], atol=0.2)
    assert found.widths[0] > 1.6 and found.heights[0] < 0.6


def test_candidates_do_not_keep_two_children_side_by_side_whole():
    """Two 1.2 m children 1 m apart joined by a low box: too wide, split into both, and not also kept whole as
    one lying person (their tops are below LYING_MAX_TOP)."""
    rng = np.random.default_rng(8)
    gz = ground_z(8, 0)
    low_box = box_points(rng, 8, 0.5, gz, (0.6, 2.0, 0.3), n=800)
    cloud = np.concatenate([tilted_ground(rng, 30000), person(rng, 8, 0, gz, height=1.2),
                            person(rng, 8, 1.0, gz, height=1.2), low_box])
    found = candidates_of(cloud, min_height=0.3, max_lying_width=2.4)
    assert len(found) == 2
    np.testing.assert_allclose(found.centres[np.argsort(found.centres[:, 1])], [[8, 0], [8, 1.0]], atol=0.15)
