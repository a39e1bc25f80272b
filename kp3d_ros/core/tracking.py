"""Multi-person tracking in x-y: constant-velocity prediction, gated Hungarian association.

A detection unmatched by any track starts a tentative track; after tracking.min_hits detections it
is confirmed and gets the next public id (ids count up from 1 and are never reused). A confirmed
track survives tracking.max_missed frames without a detection, coasting on its velocity; a
tentative one dies at its first miss.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy.optimize import linear_sum_assignment

POSITION_GAIN = 0.8  # weight of the detection in the position update
VELOCITY_GAIN = 0.5  # weight of the newest displacement in the velocity update
MAX_SPEED = 4.0  # m/s, velocities are clipped to this (no person runs faster through a gate)
MAX_GAP_S = 1.0  # s, a longer gap between frames (or time going backwards) resets the tracker
UNMATCHABLE = 1e6


@dataclass
class Track:
    key: int  # internal, unique per track
    position: np.ndarray  # (2,) filtered x, y
    velocity: np.ndarray  # (2,) m/s
    hits: int = 1
    missed: int = 0
    track_id: int = 0  # public id, 0 until confirmed
    matched: bool = True  # matched a detection in the latest frame
    detection: int = -1  # index of that detection, -1 when unmatched

    @property
    def confirmed(self) -> bool:
        return self.track_id > 0


@dataclass
class Tracker:
    gate_distance: float
    max_missed: int
    min_hits: int
    tracks: list[Track] = field(default_factory=list)
    _next_key: int = 1
    _next_id: int = 1
    _last_stamp_ns: int | None = None

    def reset(self) -> None:
        """Forget all tracks (ids keep counting up)."""
        self.tracks = []
        self._last_stamp_ns = None

    def update(self, detections: np.ndarray, stamp_ns: int) -> list[Track]:
        """Advance to stamp_ns with detections (D, 2+) x, y; returns the confirmed tracks seen this frame."""
        detections = np.asarray(detections, dtype=np.float64)
        detections = detections[:, :2] if detections.size else np.zeros((0, 2))
        dt = 0.0 if self._last_stamp_ns is None else (stamp_ns - self._last_stamp_ns) * 1e-9
        if dt < 0 or dt > MAX_GAP_S:
            self.reset()
            dt = 0.0
        self._last_stamp_ns = stamp_ns
        predicted = np.array([t.position + t.velocity * dt for t in self.tracks]).reshape(-1, 2)
        rows, cols = self._associate(predicted, detections)
        for track in self.tracks:
            track.matched, track.detection = False, -1
        for r, c in zip(rows, cols, strict=True):
            self._correct(self.tracks[r], predicted[r], detections[c], dt, int(c))
        for r, track in enumerate(self.tracks):
            if not track.matched:
                track.position = predicted[r]
                track.missed += 1
        self.tracks = [t for t in self.tracks if (t.missed <= self.max_missed if t.confirmed else t.missed == 0)]
        matched_cols = {int(c) for c in cols}
        for c in range(len(detections)):
            if c not in matched_cols:
                self.tracks.append(Track(self._next_key, detections[c].copy(), np.zeros(2), detection=c))
                self._next_key += 1
        for track in self.tracks:
            if not track.confirmed and track.hits >= self.min_hits:
                track.track_id = self._next_id
                self._next_id += 1
        return [t for t in self.tracks if t.confirmed and t.matched]

    def _associate(self, predicted: np.ndarray, detections: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if len(predicted) == 0 or len(detections) == 0:
            return np.zeros(0, int), np.zeros(0, int)
        cost = np.linalg.norm(predicted[:, None, :] - detections[None, :, :], axis=2)
        gated = np.where(cost <= self.gate_distance, cost, UNMATCHABLE)
        rows, cols = linear_sum_assignment(gated)
        ok = gated[rows, cols] < UNMATCHABLE
        return rows[ok], cols[ok]

    @staticmethod
    def _correct(track: Track, predicted: np.ndarray, detection: np.ndarray, dt: float, index: int) -> None:
        if dt > 0:
            displacement = (detection - track.position) / dt
            velocity = displacement if track.hits == 1 else (
                (1 - VELOCITY_GAIN) * track.velocity + VELOCITY_GAIN * displacement)
            speed = float(np.linalg.norm(velocity))
            track.velocity = velocity if speed <= MAX_SPEED else velocity * (MAX_SPEED / speed)
        track.position = predicted + POSITION_GAIN * (detection - predicted)
        track.hits += 1
        track.missed = 0
        track.matched, track.detection = True, index
