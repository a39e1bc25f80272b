"""Sequences of held poses with transitions between them: a person squats, stands up, kneels, lies down.

A PoseSequence holds each PoseDraw of the pose library for a while, then blends into the next over
``blend_s`` seconds (joint angles, tipping and lift eased together, so lying down is a tipping over
that ends on the ground), and starts again after the last. Frames inside a blend are labelled
TRANSITION.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from kp3d_ros.synth.poses import PoseDraw, draw_family

TRANSITION = "transition"  # the label of a frame between two held poses
HOLD_RANGE_S = (1.5, 4.0)  # how long each pose is held
BLEND_RANGE_S = (0.8, 1.6)  # how long the change from one pose to the next takes


def blend(a: PoseDraw, b: PoseDraw, weight: float) -> PoseDraw:
    """The pose `weight` (0..1) of the way from a to b, eased in and out; a's family below one half, b's above.

    Angles, pitch, roll and lift are interpolated; the seat, prop and speed are the nearer pose's.
    """
    w = float(np.clip(weight, 0.0, 1.0))
    w = w * w * (3.0 - 2.0 * w)  # smoothstep: no jump in speed where a hold starts or ends
    near = a if w < 0.5 else b
    return replace(near, angles=((1.0 - w) * a.angles + w * b.angles).astype(a.angles.dtype),
                   pitch=(1.0 - w) * a.pitch + w * b.pitch, roll=(1.0 - w) * a.roll + w * b.roll,
                   lift=(1.0 - w) * a.lift + w * b.lift)


@dataclass
class PoseSequence:
    """Held poses in a loop: draws[i] for holds_s[i] seconds, then a blend_s blend into draws[i + 1]."""

    draws: list[PoseDraw]
    holds_s: list[float]
    blend_s: float

    def __post_init__(self) -> None:
        if not self.draws or len(self.draws) != len(self.holds_s):
            raise ValueError("a pose sequence needs one hold time per pose, and at least one pose")
        if self.blend_s <= 0 or min(self.holds_s) <= 0:
            raise ValueError("hold and blend times must be positive")

    @property
    def period_s(self) -> float:
        return float(sum(self.holds_s)) + self.blend_s * len(self.draws)

    def at(self, t: float) -> tuple[PoseDraw, str]:
        """The pose at time t (s) and its label: the held pose's family, or TRANSITION."""
        u = float(t) % self.period_s
        for i, hold in enumerate(self.holds_s):
            if u < hold:
                return self.draws[i], self.draws[i].family
            u -= hold
            if u < self.blend_s:
                return blend(self.draws[i], self.draws[(i + 1) % len(self.draws)], u / self.blend_s), TRANSITION
            u -= self.blend_s
        return self.draws[0], self.draws[0].family  # float rounding at the period's end


def draw_sequence(families: list[str], rng: np.random.Generator) -> PoseSequence:
    """A sequence through these families (in order), each drawn from the pose library, with random times."""
    draws = [draw_family(family, rng) for family in families]
    holds = [float(rng.uniform(*HOLD_RANGE_S)) for _ in families]
    return PoseSequence(draws, holds, float(rng.uniform(*BLEND_RANGE_S)))
