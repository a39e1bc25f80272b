"""Animated actions: smooth periodic joint angles and root trajectories (10 Hz frames by default).

Phases are gait/cycle fractions (any real number; one unit = one cycle). Per call the rng draws the
person's style (amplitudes, arm carriage), so two calls with the same phases differ plausibly.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from kp3d_ros.synth.body import DOF_INDEX, NUM_DOF, Poses

ACTIONS = ("walk", "run", "turn", "wave", "bend", "crouch", "stand")

# Root speed (m/s) and cycle frequency (cycles/s) ranges per action.
_SPEED = {"walk": (1.0, 1.7), "run": (2.5, 3.5), "turn": (0.4, 0.9), "wave": (0.0, 0.0), "bend": (0.0, 0.0),
          "crouch": (0.0, 0.0), "stand": (0.0, 0.3)}
_CYCLE_HZ = {"walk": (0.8, 1.0), "run": (1.3, 1.6), "turn": (0.6, 0.8), "wave": (0.8, 1.5), "bend": (0.15, 0.3),
             "crouch": (0.15, 0.3), "stand": (0.1, 0.3)}


@dataclass
class Motion:
    poses: Poses  # (T, NUM_DOF)
    yaw: np.ndarray  # (T,) heading of the body (rad)
    xy: np.ndarray  # (T, 2) root position on the ground (m)


def _set(angles: np.ndarray, name: str, degrees: np.ndarray | float) -> None:
    angles[:, DOF_INDEX[name]] = np.deg2rad(degrees)


def _gait(angles: np.ndarray, phases: np.ndarray, hip_amp: float, knee_amp: float, arm_amp: float,
          elbow: float, lean: float) -> None:
    """Alternating legs and counter-swinging arms; left leg forward at phase 0.25."""
    for side, shift in (("L", 0.0), ("R", 0.5)):
        w = 2 * np.pi * (phases + shift)
        _set(angles, f"hip_flex.{side}", 0.3 * hip_amp + hip_amp * np.sin(w))
        _set(angles, f"knee_flex.{side}", 5 + knee_amp * np.clip(np.sin(w + 0.6 * np.pi), 0, None) ** 1.5)
        _set(angles, f"ankle_flex.{side}", 8 * np.sin(w + 0.3 * np.pi))
        _set(angles, f"shoulder_flex.{side}", -arm_amp * np.sin(w))
        _set(angles, f"elbow_flex.{side}", elbow + 0.3 * elbow * np.sin(w) ** 2)
    _set(angles, "spine_flex", lean)
    _set(angles, "spine_twist", 0.15 * hip_amp * np.sin(2 * np.pi * phases))


def action_poses(action: str, phases: np.ndarray, rng: np.random.Generator) -> Poses:
    """Joint angles (T, NUM_DOF) of ``action`` at cycle ``phases`` (T,), style drawn from rng."""
    if action not in ACTIONS:
        raise ValueError(f"unknown action {action!r}; expected one of {ACTIONS}")
    phases = np.asarray(phases, dtype=np.float64).reshape(-1)
    t = len(phases)
    angles = np.zeros((t, NUM_DOF))
    style = rng.uniform(0.8, 1.2)
    arm_rest = rng.uniform(-28, -15)
    for side in ("L", "R"):
        _set(angles, f"shoulder_abd.{side}", arm_rest + rng.normal(0, 3))
        _set(angles, f"elbow_flex.{side}", rng.uniform(5, 25))
    profile = 0.5 - 0.5 * np.cos(2 * np.pi * phases)  # 0 -> 1 -> 0 over one cycle
    if action == "walk":
        _gait(angles, phases, 22 * style, 50 * style, 18 * style, 15, rng.uniform(0, 6))
    elif action == "run":
        _gait(angles, phases, 38 * style, 85 * style, 35 * style, 80, rng.uniform(5, 15))
    elif action == "turn":
        _gait(angles, phases, 12 * style, 30 * style, 10 * style, 15, 3)
        _set(angles, "neck_twist", rng.choice([-1, 1]) * rng.uniform(10, 30))
    elif action == "wave":
        side = rng.choice(["L", "R"])
        _set(angles, f"shoulder_abd.{side}", rng.uniform(40, 65) + 10 * np.sin(2 * np.pi * phases))
        _set(angles, f"shoulder_flex.{side}", rng.uniform(10, 50))
        _set(angles, f"elbow_flex.{side}", 70 + 30 * style * np.sin(2 * np.pi * phases))
        _set(angles, "neck_twist", rng.uniform(-25, 25))
    elif action == "bend":
        depth = rng.uniform(30, 70)
        _set(angles, "spine_flex", depth * profile)
        for side in ("L", "R"):
            _set(angles, f"hip_flex.{side}", 0.4 * depth * profile)
            _set(angles, f"knee_flex.{side}", 10 * profile)
            _set(angles, f"shoulder_flex.{side}", 0.8 * depth * profile)
        _set(angles, "neck_flex", -10 * profile)
    elif action == "crouch":
        depth = rng.uniform(0.6, 1.0)
        _set(angles, "spine_flex", 25 * depth * profile)
        for side in ("L", "R"):
            _set(angles, f"hip_flex.{side}", 85 * depth * profile)
            _set(angles, f"knee_flex.{side}", 115 * depth * profile)
            _set(angles, f"ankle_flex.{side}", 25 * depth * profile)
            _set(angles, f"shoulder_flex.{side}", 35 * depth * profile)
    else:  # stand: idle sway, arms in a random rest carriage
        _set(angles, "spine_lateral", 3 * np.sin(2 * np.pi * phases))
        _set(angles, "neck_twist", rng.uniform(-30, 30) + 5 * np.sin(2 * np.pi * phases))
        for side in ("L", "R"):
            _set(angles, f"shoulder_flex.{side}", rng.uniform(-10, 40))
            _set(angles, f"elbow_flex.{side}", rng.uniform(5, 100))
            _set(angles, f"hip_abd.{side}", rng.uniform(0, 8))
    return Poses(angles.astype(np.float32))


def action_motion(action: str, num_frames: int, rng: np.random.Generator, rate_hz: float = 10.0,
                  start_xy: np.ndarray | None = None, heading: float | None = None) -> Motion:
    """Poses and root trajectory of ``num_frames`` frames of ``action`` sampled at ``rate_hz``."""
    dt = 1.0 / rate_hz
    cycle_hz = rng.uniform(*_CYCLE_HZ[action])
    phases = rng.random() + cycle_hz * dt * np.arange(num_frames)
    speed = rng.uniform(*_SPEED[action])
    heading = rng.uniform(-np.pi, np.pi) if heading is None else heading
    yaw_rate = rng.choice([-1, 1]) * rng.uniform(0.8, 1.6) if action == "turn" else rng.normal(0, 0.1)
    yaw = heading + yaw_rate * dt * np.arange(num_frames)
    steps = speed * dt * np.stack([np.cos(yaw), np.sin(yaw)], -1)
    xy = np.zeros(2) if start_xy is None else np.asarray(start_xy, dtype=np.float64)
    xy = xy + np.concatenate([np.zeros((1, 2)), np.cumsum(steps[:-1], 0)], 0)
    return Motion(action_poses(action, phases, rng), yaw, xy)
