"""Tracker: stable ids when people cross, birth after min_hits, death after max_missed."""

from __future__ import annotations

import numpy as np
import pytest

from kp3d_ros.core.tracking import Tracker

DT_NS = 100_000_000  # 10 Hz


def positions(t: float) -> np.ndarray:
    """Two people crossing in an X at t = 2 s, 1.2 m/s each, paths at right angles."""
    a = np.array([10.0 - 2.4 + 1.2 * t, 0.0])
    b = np.array([10.0, -2.4 + 1.2 * t])
    return np.stack([a, b])


@pytest.mark.parametrize("when_close", ["separate", "undetected", "one_blob"])
def test_ids_stable_when_two_people_cross(when_close):
    rng = np.random.default_rng(0)
    tracker = Tracker(gate_distance=1.2, max_missed=5, min_hits=2)
    owner: dict[int, int] = {}  # track id -> person index
    for k in range(41):
        truth = positions(k * 0.1)
        dets = truth + rng.normal(0, 0.03, truth.shape)
        if np.linalg.norm(truth[0] - truth[1]) < 0.45:  # their clusters touch: one blob, for ~0.4 s
            if when_close == "undetected":  # the blob is rejected (too wide)
                dets = dets[:0]
            elif when_close == "one_blob":  # the blob is taken for one person
                dets = dets.mean(0, keepdims=True)
        order = rng.permutation(len(dets))
        seen = tracker.update(dets[order], k * DT_NS)
        if np.linalg.norm(truth[0] - truth[1]) < 0.3:
            continue  # both at the crossing point: nothing to tell apart
        for track in seen:
            person = int(np.argmin(np.linalg.norm(truth - track.position, axis=1)))
            assert owner.setdefault(track.track_id, person) == person, f"frame {k}: id {track.track_id} swapped"
    assert sorted(owner) == [1, 2]


def test_birth_after_min_hits_and_death_after_max_missed():
    tracker = Tracker(gate_distance=1.0, max_missed=3, min_hits=3)
    here = np.array([[5.0, 5.0]])
    assert tracker.update(here, 0) == []
    assert tracker.update(here, DT_NS) == []
    seen = tracker.update(here, 2 * DT_NS)
    assert [t.track_id for t in seen] == [1]
    for k in range(3, 6):  # three missed frames: still alive, not reported
        assert tracker.update(np.zeros((0, 2)), k * DT_NS) == []
        assert len(tracker.tracks) == 1
    assert tracker.update(np.zeros((0, 2)), 6 * DT_NS) == []
    assert tracker.tracks == []
    # A tentative track dies at its first miss; a far detection starts a new track, new ids count up.
    tracker.update(here, 7 * DT_NS)
    tracker.update(np.zeros((0, 2)), 8 * DT_NS)
    assert tracker.tracks == []
    for k in range(9, 12):
        seen = tracker.update(here, k * DT_NS)
    assert [t.track_id for t in seen] == [2]


def test_gating_rejects_far_detection_and_time_jump_resets():
    tracker = Tracker(gate_distance=1.0, max_missed=5, min_hits=1)
    first = tracker.update(np.array([[0.0, 0.0]]), 0)
    assert [t.track_id for t in first] == [1]
    moved = tracker.update(np.array([[3.0, 0.0]]), DT_NS)  # 3 m in 0.1 s: a new person, not the same
    assert [t.track_id for t in moved] == [2]
    assert len(tracker.tracks) == 2
    tracker.update(np.array([[3.0, 0.0]]), 0)  # time went backwards (bag loop): start over
    assert [t.hits for t in tracker.tracks] == [1]


def test_constant_velocity_coasting_reacquires_after_occlusion():
    tracker = Tracker(gate_distance=0.5, max_missed=5, min_hits=2)
    ids = set()
    for k in range(30):
        p = np.array([[1.5 * k * 0.1, 2.0]])
        occluded = 10 <= k < 14  # 4 frames hidden, moves 0.6 m meanwhile (more than the gate)
        seen = tracker.update(p[:0] if occluded else p, k * DT_NS)
        ids |= {t.track_id for t in seen}
    assert ids == {1}
