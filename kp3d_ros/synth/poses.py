"""The pose library: pose families that span what people do near roads, each with a known share.

A family draws joint angles within the anatomical limits (body.ANATOMICAL_LIMITS_DEG) plus how the
posed body is placed in the world: tipped over (lying, crawling), lifted off the ground (jumping),
on a seat (a bench or kerb, which becomes scene geometry), with an object it pushes or carries, and
the speed it moves at (for the sensor's sweep). Draws whose wrists, elbows or knees pass through the
body are drawn again (``limbs_clear``).

Families and their default shares of Stage I data are in POSE_MIX; ``draw_poses`` samples them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from kp3d_ros.skeleton import JOINT_INDEX, neck, pelvis
from kp3d_ros.synth.body import ANATOMICAL_LIMITS_DEG, DOF_INDEX, DOF_LIMITS_DEG, NUM_DOF, Poses

# Default Stage I share of every family (sums to 1). "random" is uniform within the moderate limits,
# "upright" the walking / standing / waving / turning actions of kp3d_ros.synth.motion.
POSE_MIX: dict[str, float] = {
    "random": 0.10, "upright": 0.12, "run": 0.06, "squat": 0.09, "kneel": 0.08, "sit_ground": 0.06,
    "sit_seat": 0.07, "bend": 0.07, "lie": 0.07, "jump": 0.06, "reach": 0.05, "look_back": 0.04,
    "carry": 0.04, "push": 0.04, "crawl": 0.05,
}
FAMILIES: tuple[str, ...] = tuple(POSE_MIX)
FAMILY_INDEX = {name: i for i, name in enumerate(FAMILIES)}
MAX_TRIES = 6  # draws per sample before the last one is kept despite a limb clash


@dataclass
class PoseDraw:
    """One drawn pose and how to place it."""

    family: str
    angles: np.ndarray  # (NUM_DOF,) radians
    pitch: float = 0.0  # rad about the body's +y axis (lying on the back -pi/2, face down +pi/2)
    roll: float = 0.0  # rad about the body's +x axis (lying on a side)
    lift: float = 0.0  # m the lowest vertex is above the ground (jumping)
    seat: str = ""  # "", "bench" or "kerb": a box under the buttocks
    prop: str = ""  # "", "stroller", "bicycle", "box": an object pushed or carried (background)
    speed: float = 0.0  # m/s along the body's +x axis


class _Angles:
    """Degree-valued joint angles with symmetric helpers; clipped to the anatomical limits on export."""

    def __init__(self, rng: np.random.Generator) -> None:
        self.rng = rng
        self.deg = np.zeros(NUM_DOF)

    def set(self, name: str, value: float) -> None:
        self.deg[DOF_INDEX[name]] = value

    def both(self, name: str, lo: float, hi: float, spread: float = 5.0) -> None:
        """The same range on both sides, each side jittered by ``spread`` degrees."""
        base = self.rng.uniform(lo, hi)
        for side in ("L", "R"):
            self.set(f"{name}.{side}", base + self.rng.normal(0.0, spread))

    def arms_relaxed(self) -> None:
        for side in ("L", "R"):
            self.set(f"shoulder_abd.{side}", self.rng.uniform(-25, 10))
            self.set(f"shoulder_flex.{side}", self.rng.uniform(-15, 40))
            self.set(f"elbow_flex.{side}", self.rng.uniform(5, 70))

    def radians(self) -> np.ndarray:
        lo, hi = ANATOMICAL_LIMITS_DEG[:, 0], ANATOMICAL_LIMITS_DEG[:, 1]
        return np.deg2rad(np.clip(self.deg, lo, hi)).astype(np.float32)


def _side(rng: np.random.Generator) -> tuple[str, str]:
    return ("L", "R") if rng.random() < 0.5 else ("R", "L")


def _squat(a: _Angles) -> PoseDraw:
    """Deep squat or crouch, torso forward, knees apart, arms forward or around the knees."""
    r = a.rng
    depth = r.uniform(0.6, 1.0)
    a.both("hip_flex", 95 * depth, 125 * depth)
    a.both("knee_flex", 115 * depth, 150 * depth)
    a.both("ankle_flex", 15, 35)
    a.both("hip_abd", 10, 35)
    a.set("spine_flex", r.uniform(20, 60))
    a.set("neck_flex", r.uniform(-35, 5))
    a.both("shoulder_flex", 20, 90, 15)
    a.both("elbow_flex", 10, 100, 20)
    a.set("spine_twist", r.normal(0, 8))
    return PoseDraw("squat", a.radians())


def _kneel(a: _Angles) -> PoseDraw:
    """On one knee (the other foot flat), on both knees upright, or sitting back on the heels."""
    r = a.rng
    kind = r.integers(3)
    if kind == 0:
        down, up = _side(r)
        a.set(f"hip_flex.{down}", r.uniform(-5, 25))
        a.set(f"knee_flex.{down}", r.uniform(85, 110))
        a.set(f"ankle_flex.{down}", r.uniform(-40, -15))
        a.set(f"hip_flex.{up}", r.uniform(75, 100))
        a.set(f"knee_flex.{up}", r.uniform(80, 105))
        a.set(f"ankle_flex.{up}", r.uniform(0, 20))
    elif kind == 1:
        a.both("hip_flex", -5, 25)
        a.both("knee_flex", 85, 105)
        a.both("ankle_flex", -40, -20)
    else:
        a.both("hip_flex", 50, 95)
        a.both("knee_flex", 135, 150)
        a.both("ankle_flex", -40, -25)
    a.both("hip_abd", 0, 15)
    a.set("spine_flex", r.uniform(-5, 35))
    a.arms_relaxed()
    return PoseDraw("kneel", a.radians())


def _sit_ground(a: _Angles) -> PoseDraw:
    """Sitting on the ground: legs out straight, or knees up with the feet flat, leaning on the hands or not."""
    r = a.rng
    if r.random() < 0.5:
        a.both("hip_flex", 90, 110, 5)
        a.both("knee_flex", 0, 40, 10)
    else:
        a.both("hip_flex", 105, 125, 5)
        a.both("knee_flex", 100, 140, 8)
    a.both("hip_abd", 5, 40, 8)
    a.both("hip_twist", -10, 30, 8)
    a.set("spine_flex", r.uniform(-10, 35))
    if r.random() < 0.4:  # leaning back on the hands
        a.both("shoulder_flex", -50, -30)
        a.both("elbow_flex", 0, 15)
        a.both("shoulder_abd", 5, 25)
    else:
        a.both("shoulder_flex", 10, 60, 15)
        a.both("elbow_flex", 30, 110, 20)
    return PoseDraw("sit_ground", a.radians())


def _sit_seat(a: _Angles) -> PoseDraw:
    """Sitting on a bench (knees at right angles) or a kerb (knees high)."""
    r = a.rng
    seat = "bench" if r.random() < 0.6 else "kerb"
    if seat == "bench":
        a.both("hip_flex", 80, 100)
        a.both("knee_flex", 70, 110, 10)
    else:
        a.both("hip_flex", 100, 120)
        a.both("knee_flex", 110, 140)
        a.both("ankle_flex", 10, 30)
    a.both("hip_abd", 0, 25)
    a.set("spine_flex", r.uniform(-5, 35))
    a.set("neck_twist", r.uniform(-40, 40))
    a.both("shoulder_flex", 0, 50, 15)
    a.both("elbow_flex", 30, 100, 20)
    return PoseDraw("sit_seat", a.radians(), seat=seat)


def _bend(a: _Angles) -> PoseDraw:
    """Bending over to pick something up: torso down, legs nearly straight, arms reaching down."""
    r = a.rng
    a.set("spine_flex", r.uniform(45, 90))
    a.both("hip_flex", 40, 90)
    a.both("knee_flex", 0, 35, 8)
    a.both("shoulder_flex", 50, 110, 15)
    a.both("elbow_flex", 0, 40, 10)
    a.set("neck_flex", r.uniform(-30, 10))
    a.set("spine_twist", r.normal(0, 10))
    return PoseDraw("bend", a.radians())


def _lie(a: _Angles) -> PoseDraw:
    """Lying on the back, the front or a side, no limb under the body."""
    r = a.rng
    kind = r.integers(3)
    a.both("hip_abd", 0, 25, 5)
    a.both("elbow_flex", 0, 40, 10)
    if kind == 0:  # on the back: legs straight, or knees up with the feet on the ground; arms beside or spread
        hip = r.uniform(0, 45) if r.random() < 0.5 else r.uniform(0, 8)
        for side in ("L", "R"):
            h = max(hip + r.normal(0, 5), 0.0)
            a.set(f"hip_flex.{side}", h)
            a.set(f"knee_flex.{side}", min(2.0 * h + r.normal(0, 8), 100.0))
        a.both("shoulder_flex", 0, 40, 15)
        a.both("shoulder_abd", -20, 100, 25)
        a.set("neck_twist", r.uniform(-45, 45))
        return PoseDraw("lie", a.radians(), pitch=float(-np.pi / 2))
    if kind == 1:  # face down: hips straight, shins up or flat, arms along the body or by the head
        a.both("hip_flex", -15, 0, 4)
        a.both("knee_flex", 0, 90, 20)
        a.both("elbow_flex", 0, 8, 2)
        a.both("shoulder_flex", -25, -12, 3)
        a.both("shoulder_abd", -20, 20, 5)
        a.set("neck_twist", r.choice([-1, 1]) * r.uniform(40, 75))
        return PoseDraw("lie", a.radians(), pitch=float(np.pi / 2))
    # on a side, the legs drawn up a little and the arms in front of the chest
    a.both("hip_flex", 20, 70, 15)
    a.both("knee_flex", 30, 90, 15)
    a.both("hip_abd", 0, 10, 3)
    a.both("shoulder_flex", 50, 100, 15)
    a.both("shoulder_abd", -10, 15, 5)
    a.set("neck_twist", r.uniform(-30, 30))
    return PoseDraw("lie", a.radians(), roll=float(r.choice([-1, 1]) * np.pi / 2))


def _jump(a: _Angles) -> PoseDraw:
    """In the air (feet off the ground, knees tucked or legs straight), or at take-off / landing."""
    r = a.rng
    airborne = r.random() < 0.7
    a.both("hip_flex", 5, 70, 10)
    a.both("knee_flex", 15, 110, 15)
    a.both("ankle_flex", -35, 10)
    a.both("shoulder_flex", 20, 170, 25)
    a.both("shoulder_abd", -10, 60, 15)
    a.both("elbow_flex", 0, 60, 15)
    a.set("spine_flex", r.uniform(-15, 30))
    lift = r.uniform(0.08, 0.45) if airborne else 0.0
    return PoseDraw("jump", a.radians(), lift=lift, speed=r.uniform(0.0, 2.5))


def _reach(a: _Angles) -> PoseDraw:
    """Reaching up with one or both arms, back arched, maybe on tiptoe."""
    r = a.rng
    up, other = _side(r)
    a.set(f"shoulder_flex.{up}", r.uniform(130, 175))
    a.set(f"shoulder_abd.{up}", r.uniform(-30, 0))
    a.set(f"elbow_flex.{up}", r.uniform(0, 35))
    if r.random() < 0.5:
        a.set(f"shoulder_flex.{other}", r.uniform(120, 175))
        a.set(f"shoulder_abd.{other}", r.uniform(-30, 0))
        a.set(f"elbow_flex.{other}", r.uniform(0, 40))
    else:
        a.set(f"shoulder_flex.{other}", r.uniform(-10, 40))
        a.set(f"elbow_flex.{other}", r.uniform(5, 60))
    a.set("spine_flex", r.uniform(-25, 5))
    a.set("neck_flex", r.uniform(-40, -10))
    a.both("ankle_flex", -40, 0)
    return PoseDraw("reach", a.radians())


def _gait_pose(a: _Angles, action: str) -> np.ndarray:
    from kp3d_ros.synth.motion import action_poses

    return np.rad2deg(action_poses(action, np.array([a.rng.random()]), a.rng).angles[0]).astype(np.float64)


def _look_back(a: _Angles) -> PoseDraw:
    """Walking or standing while looking back over a shoulder."""
    r = a.rng
    walking = r.random() < 0.6
    a.deg = _gait_pose(a, "walk" if walking else "stand")
    sign = r.choice([-1, 1])
    a.set("neck_twist", sign * r.uniform(45, 75))
    a.set("spine_twist", sign * r.uniform(15, 45))
    return PoseDraw("look_back", a.radians(), speed=r.uniform(0.8, 1.5) if walking else 0.0)


def _carry(a: _Angles) -> PoseDraw:
    """Walking or standing with a box held in front in both arms."""
    r = a.rng
    walking = r.random() < 0.6
    a.deg = _gait_pose(a, "walk" if walking else "stand")
    a.both("shoulder_flex", 25, 60)
    a.both("shoulder_abd", -5, 15)
    a.both("elbow_flex", 60, 100)
    a.set("spine_flex", r.uniform(-10, 10))
    return PoseDraw("carry", a.radians(), prop="box", speed=r.uniform(0.8, 1.4) if walking else 0.0)


def _push(a: _Angles) -> PoseDraw:
    """Walking behind a stroller or beside a bicycle, hands on it."""
    r = a.rng
    a.deg = _gait_pose(a, "walk")
    prop = "stroller" if r.random() < 0.5 else "bicycle"
    a.both("shoulder_flex", 25, 60)
    a.both("elbow_flex", 20, 60)
    a.both("shoulder_abd", -10, 10)
    a.set("spine_flex", r.uniform(5, 25))
    return PoseDraw("push", a.radians(), prop=prop, speed=r.uniform(0.6, 1.4))


def _crawl(a: _Angles) -> PoseDraw:
    """On hands and knees (children at play): the body tipped face down onto its limbs."""
    r = a.rng
    a.both("hip_flex", 75, 105)
    a.both("knee_flex", 80, 115)
    a.both("ankle_flex", -40, -15)
    a.both("shoulder_flex", 70, 105)
    a.both("elbow_flex", 0, 25)
    a.set("neck_flex", r.uniform(-40, -10))
    return PoseDraw("crawl", a.radians(), pitch=float(np.pi / 2), speed=r.uniform(0.0, 0.5))


def _random(a: _Angles) -> PoseDraw:
    lo, hi = DOF_LIMITS_DEG[:, 0], DOF_LIMITS_DEG[:, 1]
    a.deg = lo + (hi - lo) * a.rng.random(NUM_DOF)
    return PoseDraw("random", a.radians())


def _upright(a: _Angles) -> PoseDraw:
    action = ("walk", "turn", "wave", "stand")[a.rng.integers(4)]
    a.deg = _gait_pose(a, action) + a.rng.normal(0.0, 4.0, NUM_DOF)
    speed = {"walk": a.rng.uniform(1.0, 1.7), "turn": a.rng.uniform(0.4, 0.9)}.get(action, 0.0)
    return PoseDraw("upright", a.radians(), speed=speed)


def _run(a: _Angles) -> PoseDraw:
    a.deg = _gait_pose(a, "run") + a.rng.normal(0.0, 4.0, NUM_DOF)
    return PoseDraw("run", a.radians(), speed=a.rng.uniform(2.5, 3.5))


_DRAW = {"random": _random, "upright": _upright, "run": _run, "squat": _squat, "kneel": _kneel,
         "sit_ground": _sit_ground, "sit_seat": _sit_seat, "bend": _bend, "lie": _lie, "jump": _jump,
         "reach": _reach, "look_back": _look_back, "carry": _carry, "push": _push, "crawl": _crawl}


def draw_family(family: str, rng: np.random.Generator) -> PoseDraw:
    """One pose of ``family`` (one of FAMILIES)."""
    if family not in _DRAW:
        raise ValueError(f"unknown pose family {family!r}; expected one of {FAMILIES}")
    return _DRAW[family](_Angles(rng))


def choose_families(rng: np.random.Generator, n: int, mix: dict[str, float] | None = None) -> list[str]:
    """n family names drawn with the shares of ``mix`` (POSE_MIX by default; shares are normalised)."""
    mix = POSE_MIX if mix is None else mix
    unknown = sorted(set(mix) - set(FAMILIES))
    if unknown:
        raise ValueError(f"unknown pose families {unknown}; expected some of {FAMILIES}")
    names = list(mix)
    weights = np.array([mix[k] for k in names], dtype=np.float64)
    if np.any(weights < 0) or weights.sum() <= 0:
        raise ValueError(f"pose shares must be non-negative with a positive sum, got {mix}")
    return [names[k] for k in rng.choice(len(names), size=n, p=weights / weights.sum())]


def _segment_distance(points: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Distance of points (..., 3) to the segment a-b."""
    ab = b - a
    t = np.clip(((points - a) @ ab) / max(float(ab @ ab), 1e-9), 0.0, 1.0)
    return np.linalg.norm(points - (a + t[..., None] * ab), axis=-1)


def limbs_clear(joints: np.ndarray) -> bool:
    """False when a forearm or a knee passes through the torso, or the knees or ankles overlap.

    The torso is a capsule from the pelvis to the neck of radius 0.3 x shoulder width (about 12 cm on
    an adult); the forearm is tested at its elbow, middle and wrist, which must stay outside 60 % of
    that radius (a hand may rest on the belly, not inside it).
    """
    j = JOINT_INDEX
    width = float(np.linalg.norm(joints[j["left_shoulder"]] - joints[j["right_shoulder"]]))
    radius = 0.3 * width
    a, b = pelvis(joints), neck(joints)
    tests = []
    for side in ("left", "right"):
        elbow, wrist = joints[j[f"{side}_elbow"]], joints[j[f"{side}_wrist"]]
        tests += [elbow, 0.5 * (elbow + wrist), wrist]
    arm_clear = bool(np.all(_segment_distance(np.array(tests), a, b) > 0.6 * radius))
    knees_apart = np.linalg.norm(joints[j["left_knee"]] - joints[j["right_knee"]]) > 0.25 * width
    ankles_apart = np.linalg.norm(joints[j["left_ankle"]] - joints[j["right_ankle"]]) > 0.15 * width
    knees_out = bool(np.all(_segment_distance(joints[[j["left_knee"], j["right_knee"]]], a, b) > 0.5 * radius))
    return arm_clear and bool(knees_apart) and bool(ankles_apart) and knees_out


def _rotation(pitch: float, roll: float) -> np.ndarray:
    """Rotation about the body's +x axis by roll, then about +y by pitch."""
    cr, sr, cp, sp = np.cos(roll), np.sin(roll), np.cos(pitch), np.sin(pitch)
    about_x = np.array([[1.0, 0.0, 0.0], [0.0, cr, -sr], [0.0, sr, cr]])
    about_y = np.array([[cp, 0.0, sp], [0.0, 1.0, 0.0], [-sp, 0.0, cp]])
    return about_y @ about_x


def place(vertices: np.ndarray, joints: np.ndarray, draw: PoseDraw) -> tuple[np.ndarray, np.ndarray]:
    """A posed body (body frame, feet on z = 0) tipped by the draw's roll and pitch about its pelvis,
    its lowest vertex put at the draw's lift, the pelvis kept over the same ground point."""
    if draw.pitch == 0.0 and draw.roll == 0.0 and draw.lift == 0.0:
        return vertices, joints
    centre = pelvis(joints).astype(np.float64)
    rot = _rotation(draw.pitch, draw.roll)
    v = (vertices - centre) @ rot.T + centre
    j = (joints - centre) @ rot.T + centre
    floor = v[:, 2].min() - draw.lift
    shift = np.array([centre[0] - pelvis(j)[0], centre[1] - pelvis(j)[1], -floor])
    return (v + shift).astype(np.float32), (j + shift).astype(np.float32)


def draw_poses(rng: np.random.Generator, families: list[str]) -> tuple[list[PoseDraw], Poses]:
    """One PoseDraw per family name and their angles as Poses (limb clashes are checked by the caller)."""
    draws = [draw_family(f, rng) for f in families]
    return draws, Poses(np.stack([d.angles for d in draws]).astype(np.float32))
