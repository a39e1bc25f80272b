"""Metrics with known answers."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from kp3d_ros import metrics


@pytest.fixture
def poses() -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.normal(size=(5, 14, 3)) * 0.4 + [8.0, 2.0, -1.0]


def test_identity_gives_zero_errors(poses):
    assert metrics.mpjpe(poses, poses) == pytest.approx(0.0)
    assert metrics.n_mpjpe(poses, poses) == pytest.approx(0.0, abs=1e-9)
    assert metrics.pa_mpjpe(poses, poses) == pytest.approx(0.0, abs=1e-9)
    assert metrics.pck(poses, poses)[0.05] == 1.0


def test_mpjpe_of_a_constant_offset(poses):
    shifted = poses + np.array([0.036, 0.048, 0.0])  # 6 cm
    assert metrics.mpjpe(shifted, poses) == pytest.approx(0.06)
    assert metrics.pck(shifted, poses) == {0.05: 0.0, 0.10: 1.0, 0.20: 1.0}
    summary = metrics.keypoint_summary(shifted, poses)
    assert summary["mpjpe_cm"] == pytest.approx(6.0)
    assert summary["n_mpjpe_cm"] == pytest.approx(0.0, abs=1e-6)


def test_scaled_prediction_has_zero_n_mpjpe_but_not_mpjpe(poses):
    centre = poses.mean(1, keepdims=True)
    scaled = (poses - centre) * 1.3 + centre + [0.2, 0.0, 0.0]
    assert metrics.mpjpe(scaled, poses) > 0.05
    assert metrics.n_mpjpe(scaled, poses) == pytest.approx(0.0, abs=1e-9)


def test_similarity_transform_has_zero_pa_mpjpe(poses):
    rot = Rotation.from_euler("zyx", [50, 20, -30], degrees=True).as_matrix()
    moved = 0.8 * poses @ rot.T + [1.0, -2.0, 0.5]
    assert metrics.mpjpe(moved, poses) > 0.5
    assert metrics.n_mpjpe(moved, poses) > 0.01  # rotation is not removed by scaling
    assert metrics.pa_mpjpe(moved, poses) == pytest.approx(0.0, abs=1e-9)


def test_pa_mpjpe_does_not_use_reflections(poses):
    mirrored = poses * [1.0, -1.0, 1.0]
    assert metrics.pa_mpjpe(mirrored, poses) > 0.01


def test_pem_penalises_missed_and_false_people(poses):
    gt = [poses[:2]]
    exact = metrics.pem([poses[:2]], gt)
    assert exact["pem"] == pytest.approx(0.0) and exact["matched"] == 2
    # One person found exactly (in the other order), one missed: half the keypoints cost 0.25 m.
    missed = metrics.pem([poses[1:2]], gt)
    assert missed["pem"] == pytest.approx(0.125) and missed["missed"] == 1
    # A false person adds penalised keypoints too.
    false = metrics.pem([poses[:3]], gt)
    assert false["pem"] == pytest.approx(0.25 / 3) and false["false"] == 1
    # Nothing predicted in an empty frame costs nothing.
    assert metrics.pem([np.zeros((0, 14, 3))], [np.zeros((0, 14, 3))])["pem"] == 0.0


def test_pem_matches_by_hungarian_not_order(poses):
    gt = poses[:2]
    pred = gt[::-1] + np.array([0.1, 0.0, 0.0])
    assert metrics.pem([pred], [gt])["pem"] == pytest.approx(0.1)


def test_segmentation_scores():
    gt = np.array([0, 0, 1, 1, 2, 2])
    pred = np.array([0, 0, 1, 2, 2, 2])
    conf = metrics.confusion_matrix(pred, gt, 15)
    scores = metrics.segmentation_scores(conf)
    assert scores["accuracy"] == pytest.approx(5 / 6)
    # IoU: class 0 = 1, class 1 = 1/2, class 2 = 2/3; absent classes are left out of the mean.
    assert scores["miou"] == pytest.approx((1 + 0.5 + 2 / 3) / 3)
    with pytest.raises(ValueError):
        metrics.confusion_matrix(np.array([15]), np.array([0]), 15)


def test_binned_errors():
    rows = metrics.binned_errors([1.0, 2.0, 3.0, 4.0], [10, 50, 150, 400], [0, 100, 200, np.inf])
    assert [r["count"] for r in rows] == [2, 1, 1]
    assert rows[0]["mean"] == pytest.approx(1.5) and rows[2]["mean"] == 4.0
    assert np.isnan(metrics.binned_errors([1.0], [5], [10, 20])[0]["mean"])


def test_shape_mismatch_is_a_clear_error(poses):
    with pytest.raises(ValueError):
        metrics.mpjpe(poses[:, :13], poses)
