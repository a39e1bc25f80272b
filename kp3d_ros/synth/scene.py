"""Full synthetic LiDAR scenes: people walking among clutter, scanned by a vehicle-mounted sensor.

``SceneSimulator`` builds a static street (kp3d_ros.synth.static_world), scripts N anny people (paths,
actions, phenotypes), and yields one 360-degree scan per frame with per-person ground truth: joints,
the indices and body parts of the person's points, and the true scene flow of those points.

Frames: the world frame has the ground through its origin (z up); the sensor sits ``sensor_height``
above it (parked by default, or driving along +x at ``ego_speed``). Everything a ScanFrame carries is in
the sensor ("lidar") frame, so the ground lies near z = -sensor_height.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from itertools import pairwise

import numpy as np

from kp3d_ros.skeleton import JOINT_NAMES, PART_INDEX
from kp3d_ros.synth.body import CHILD_RANGES, NUM_DOF, Phenotypes, PosedBodies, Poses, get_body_model, yaw_transforms
from kp3d_ros.synth.lidar import PRESETS, LidarPreset, cast, surface_points
from kp3d_ros.synth.motion import action_poses
from kp3d_ros.synth.pose_sequence import PoseSequence, draw_sequence
from kp3d_ros.synth.poses import PoseDraw, draw_family, place
from kp3d_ros.synth.static_world import Ground, WorldMesh, build_static_world

START_NS = 1_767_225_600 * 1_000_000_000  # 2026-01-01T00:00:00Z: the first frame's stamp by default
MIN_RANGE, MAX_RANGE = 4.0, 25.0  # people stay this far from the sensor (horizontal, metres)
TURN_SECONDS = 1.2  # a walker turns around at the end of its path in this time
STATIONARY_ACTIONS = ("stand", "wave", "turn", "bend", "crouch")
# Actions of the people after the crossing pair, in order; then drawn from ACTION_MIX.
SCRIPTED_ACTIONS = ("walk", "wave", "turn", "stand")
ACTION_MIX = {"walk": 0.6, "stand": 0.1, "wave": 0.1, "turn": 0.1, "bend": 0.05, "crouch": 0.05}
ADULTS = {"age": (0.55, 1.0)}  # the phenotype range of a scene's adults
# Poses that people off the road hold (kp3d_ros.synth.poses), for scenes with a pose_share; jumpers jump on the spot.
SCENE_FAMILIES = ("squat", "kneel", "sit_ground", "bend", "lie", "crawl", "reach", "jump")
CAMERA_HALF_FOV = np.deg2rad(30.0)  # the crossing happens in front of the sensor, where the camera looks

_SKIN = PART_INDEX["head"], PART_INDEX["left_hand"], PART_INDEX["right_hand"]
_SHIRT = (PART_INDEX["torso"], PART_INDEX["left_upper_arm"], PART_INDEX["right_upper_arm"],
          PART_INDEX["left_forearm"], PART_INDEX["right_forearm"])
_PANTS = PART_INDEX["left_thigh"], PART_INDEX["right_thigh"], PART_INDEX["left_shin"], PART_INDEX["right_shin"]


@dataclass
class PersonTruth:
    """Ground truth of one person in one scan (sensor frame)."""

    person_id: int
    action: str
    joints: np.ndarray  # (14, 3) float32, also for people the sensor does not see
    point_indices: np.ndarray  # (K,) int64 into ScanFrame.points
    parts: np.ndarray  # (K,) uint8, skeleton.PART_NAMES index of each point
    flow: np.ndarray  # (K, 3) float32, motion of each point's body surface to the next frame (m, world
    # motion in this scan's sensor axes: with a moving vehicle the ego motion is not included)

    @property
    def num_points(self) -> int:
        return len(self.point_indices)


@dataclass
class FrameGeometry:
    """The meshes of one frame in the world frame, for rendering (kp3d_ros.synth.camera)."""

    world: WorldMesh
    people_vertices: np.ndarray  # (N, V, 3) float32
    people_faces: np.ndarray  # (F, 3) int32, shared by all people
    people_colours: np.ndarray  # (N, F, 3) float32


@dataclass
class ScanFrame:
    index: int
    stamp_ns: int
    points: np.ndarray  # (M, 3) float32, sensor frame
    intensity: np.ndarray  # (M,) float32, 0..1
    people: list[PersonTruth]
    sensor_pose: np.ndarray  # (4, 4) float64, the sensor in the world frame
    geometry: FrameGeometry | None = field(default=None, repr=False)

    def person_labels(self) -> np.ndarray:
        """(M,) int64: the person id of each point, -1 for background."""
        labels = np.full(len(self.points), -1, dtype=np.int64)
        for person in self.people:
            labels[person.point_indices] = person.person_id
        return labels


@dataclass
class PersonScript:
    """How one person looks and moves: a phenotype, an action and a root trajectory on the ground."""

    person_id: int
    action: str
    seed: int
    path: np.ndarray  # (P, 2) world xy polyline walked back and forth; (1, 2) for people who stay put
    speed: float = 0.0  # m/s along the path (walkers) or around the circle (turners)
    cycle_hz: float = 0.5  # action cycles per second
    time_offset: float = 0.0  # s, where on its timeline the person is at t = 0
    yaw0: float = 0.0  # heading of people who stay put (rad)
    yaw_rate: float = 0.0  # rad/s, turners only
    phase0: float = 0.0
    pose: PoseDraw | None = None  # a held pose of the pose library (action = its family), else None
    sequence: PoseSequence | None = None  # held poses with transitions (action "sequence"), else None

    @property
    def length(self) -> float:
        return float(np.linalg.norm(np.diff(self.path, axis=0), axis=1).sum()) if len(self.path) > 1 else 0.0

    def _at(self, s: np.ndarray) -> np.ndarray:
        """Point at arc length s along the path."""
        cumulative = np.concatenate([[0.0], np.cumsum(np.linalg.norm(np.diff(self.path, axis=0), axis=1))])
        return np.stack([np.interp(s, cumulative, self.path[:, 0]), np.interp(s, cumulative, self.path[:, 1])], -1)

    def _tangent_yaw(self, s: np.ndarray) -> np.ndarray:
        d = self._at(np.minimum(s + 0.25, self.length)) - self._at(np.maximum(s - 0.25, 0.0))
        return np.arctan2(d[..., 1], d[..., 0])

    def root(self, t: float) -> tuple[np.ndarray, float]:
        """Ground position (2,) and heading (rad) at time t (s)."""
        if self.action == "turn":
            yaw = self.yaw0 + self.yaw_rate * t
            radius = self.speed / self.yaw_rate
            return self.path[0] + radius * np.array([np.sin(yaw), -np.cos(yaw)]), float(yaw)
        if len(self.path) == 1:
            return self.path[0].copy(), self.yaw0
        length = self.length
        walk = length / self.speed
        u = (t + self.time_offset) % (2 * (walk + TURN_SECONDS))
        if u < walk:  # out along the path
            s = u * self.speed
            return self._at(s), float(self._tangent_yaw(s))
        if u < walk + TURN_SECONDS:  # turning round at the far end
            return self._at(length), float(self._tangent_yaw(length) + np.pi * (u - walk) / TURN_SECONDS)
        if u < 2 * walk + TURN_SECONDS:  # back to the start
            s = length - (u - walk - TURN_SECONDS) * self.speed
            return self._at(s), float(self._tangent_yaw(s) + np.pi)
        rest = (u - 2 * walk - TURN_SECONDS) / TURN_SECONDS
        return self._at(0.0), float(self._tangent_yaw(0.0) + np.pi + np.pi * rest)

    def phase(self, t: float) -> float:
        return self.phase0 + self.cycle_hz * t

    def held(self, t: float) -> tuple[PoseDraw | None, str]:
        """The pose held at time t (None for people whose action is a motion) and the action's label then:
        the family held, pose_sequence.TRANSITION between two, or the motion's name."""
        if self.sequence is not None:
            return self.sequence.at(t + self.time_offset)
        return self.pose, self.action


def _unit(vectors: np.ndarray) -> np.ndarray:
    return (vectors / np.maximum(np.linalg.norm(vectors, axis=-1, keepdims=True), 1e-12)).astype(np.float32)


def _polar(radius: float, azimuth: float) -> np.ndarray:
    return radius * np.array([np.cos(azimuth), np.sin(azimuth)])


def _segment_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Smallest distance between two polylines (sampled every 0.25 m)."""
    def dense(line):
        if len(line) == 1:
            return line
        steps = [np.linspace(p, q, max(2, int(np.linalg.norm(q - p) / 0.25) + 1)) for p, q in pairwise(line)]
        return np.concatenate(steps)
    da, db = dense(a), dense(b)
    return float(np.sqrt(((da[:, None] - db[None]) ** 2).sum(-1)).min())


def _in_range(path: np.ndarray) -> bool:
    r = np.linalg.norm(path, axis=1)
    return bool(np.all((r >= MIN_RANGE) & (r <= MAX_RANGE)))


def _crossing_pair(rng: np.random.Generator) -> list[PersonScript]:
    """Two walkers on straight paths that cross in front of the sensor, passing the crossing point
    0.8 s apart (their closest approach is well under a metre)."""
    for _ in range(200):
        centre = _polar(rng.uniform(8.0, 14.0), rng.uniform(-CAMERA_HALF_FOV, CAMERA_HALF_FOV))
        heading_a = rng.uniform(-np.pi, np.pi)
        heading_b = heading_a + rng.choice([-1, 1]) * rng.uniform(np.pi / 3, 2 * np.pi / 3)
        scripts = []
        for k, heading in enumerate((heading_a, heading_b)):
            speed = rng.uniform(1.1, 1.5)
            before = speed * (2.5 + 0.8 * k)  # metres to walk to the crossing point
            after = rng.uniform(3.0, 6.0)
            direction = np.array([np.cos(heading), np.sin(heading)])
            path = np.stack([centre - before * direction, centre + after * direction])
            scripts.append(PersonScript(k, "walk", int(rng.integers(2**31)), path, speed,
                                        float(np.clip(0.55 + 0.3 * speed, 0.8, 1.05)), 0.0,
                                        phase0=float(rng.random())))
        if all(_in_range(s.path) for s in scripts):
            return scripts
    raise RuntimeError("could not place two crossing walkers")


def _walker_path(rng: np.random.Generator) -> np.ndarray:
    length = rng.uniform(6.0, 14.0)
    start = _polar(rng.uniform(MIN_RANGE + 1, MAX_RANGE - 1), rng.uniform(-np.pi, np.pi))
    heading = rng.uniform(-np.pi, np.pi)
    if rng.random() < 0.5:  # straight
        return np.stack([start, start + length * np.array([np.cos(heading), np.sin(heading)])])
    radius = rng.uniform(5.0, 15.0) * rng.choice([-1, 1])  # an arc of a circle, either way round
    s = np.linspace(0.0, length, 16)
    yaw = heading + s / radius
    return start + radius * np.stack([np.sin(yaw) - np.sin(heading), -np.cos(yaw) + np.cos(heading)], -1)


def _sequence_families(rng: np.random.Generator) -> list[str]:
    """Two different SCENE_FAMILIES with standing up between them, e.g. squat, upright, kneel; the loop then goes
    from the second straight back to the first (kneel to squat)."""
    first, second = rng.choice(len(SCENE_FAMILIES), 2, replace=False)
    return [SCENE_FAMILIES[first], "upright", SCENE_FAMILIES[second]]


def script_people(num_people: int, rng: np.random.Generator, min_gap: float = 1.5,
                  pose_share: float = 0.0, transitions: bool = False) -> list[PersonScript]:
    """Scripts for num_people people: a crossing pair of walkers first (if num_people >= 2), then
    SCRIPTED_ACTIONS, then a random mix of walkers and people staying put, all between MIN_RANGE and
    MAX_RANGE and kept min_gap apart. With pose_share > 0, each person after the crossing pair holds a
    pose of SCENE_FAMILIES with that probability instead; with transitions, that person goes through a
    sequence of two such poses, standing up in between (pose_sequence.PoseSequence)."""
    scripts = _crossing_pair(rng) if num_people >= 2 else []
    actions, weights = list(ACTION_MIX), np.array(list(ACTION_MIX.values()))
    while len(scripts) < num_people:
        pose, sequence = None, None
        if pose_share > 0 and len(scripts) >= 2 and rng.random() < pose_share:
            if transitions:
                sequence = draw_sequence(_sequence_families(rng), rng)
                action = "sequence"
            else:
                pose = draw_family(SCENE_FAMILIES[rng.integers(len(SCENE_FAMILIES))], rng)
                action = pose.family
        elif num_people == 1:
            action = "walk"
        elif len(scripts) - 2 < len(SCRIPTED_ACTIONS):
            action = SCRIPTED_ACTIONS[len(scripts) - 2]
        else:
            action = str(rng.choice(actions, p=weights / weights.sum()))
        for _ in range(500):
            if action == "walk":
                path = _walker_path(rng)
            else:
                path = _polar(rng.uniform(MIN_RANGE + 1.5, MAX_RANGE - 1.5), rng.uniform(-np.pi, np.pi))[None]
            if _in_range(path) and all(_segment_distance(path, s.path) >= min_gap + (1.0 if s.action == "turn" else 0)
                                       for s in scripts):
                break
        else:
            raise RuntimeError(f"could not place person {len(scripts)} among {num_people} people; use fewer")
        speed = rng.uniform(1.0, 1.6) if action == "walk" else (rng.uniform(0.4, 0.8) if action == "turn" else 0.0)
        toward_sensor = float(np.arctan2(-path[0, 1], -path[0, 0]))
        cycle_hz = {"walk": float(np.clip(0.55 + 0.3 * speed, 0.8, 1.05)), "turn": 0.7, "wave": 1.1,
                    "stand": 0.2, "bend": 0.2, "crouch": 0.2}.get(action, 0.8)
        holds = pose is not None or sequence is not None
        yaw0 = toward_sensor + (rng.uniform(-np.pi, np.pi) if holds else rng.uniform(-1.5, 1.5))
        scripts.append(PersonScript(
            len(scripts), action, int(rng.integers(2**31)), path, speed, cycle_hz,
            time_offset=float(rng.uniform(0, 30)), yaw0=yaw0,
            yaw_rate=float(rng.choice([-1, 1]) * rng.uniform(0.6, 1.0)), phase0=float(rng.random()), pose=pose,
            sequence=sequence))
    return scripts


class SceneSimulator:
    """A synthetic street scene scanned by a rotating LiDAR; ``frames(n)`` yields ScanFrames."""

    def __init__(self, num_people: int, preset: str | LidarPreset = "waymo_top", seed: int = 0,
                 rate_hz: float = 10.0, sensor_height: float = 1.9, ground_slope: float = 0.0,
                 ego_speed: float = 0.0, start_ns: int = START_NS, noise: bool = True,
                 keep_geometry: bool = False, pose_share: float = 0.0, child_share: float = 0.0,
                 transitions: bool = False) -> None:
        if num_people < 0:
            raise ValueError(f"num_people must be >= 0, got {num_people}")
        if rate_hz <= 0:
            raise ValueError(f"rate_hz must be positive, got {rate_hz}")
        if isinstance(preset, str):
            if preset not in PRESETS:
                raise ValueError(f"unknown LiDAR preset {preset!r}; expected one of {', '.join(PRESETS)}")
            preset = PRESETS[preset]
        self.preset, self.rate_hz, self.sensor_height = preset, float(rate_hz), float(sensor_height)
        self.ego_speed, self.start_ns, self.noise, self.keep_geometry = float(ego_speed), int(start_ns), noise, \
            keep_geometry
        self.rng = np.random.default_rng(seed)
        slope_dir = self.rng.uniform(-np.pi, np.pi)
        self.ground = Ground(0.0, ground_slope * np.cos(slope_dir), ground_slope * np.sin(slope_dir))
        self.people = script_people(num_people, self.rng, pose_share=pose_share, transitions=transitions)
        self.world = build_static_world(self.rng, self.ground, [s.path for s in self.people])
        corners = self.world.vertices[self.world.faces]
        self.world_normals = _unit(np.cross(corners[:, 1] - corners[:, 0], corners[:, 2] - corners[:, 0]))
        self.body = get_body_model()
        if child_share > 0:
            children = self.rng.random(num_people) < child_share
            values = [self.body.sample_phenotypes(self.rng, 1, CHILD_RANGES if c else ADULTS).values
                      for c in children]
            self.phenotypes = Phenotypes(np.concatenate(values) if values else np.zeros((0, 6), np.float32))
        else:
            self.phenotypes = self.body.sample_phenotypes(self.rng, num_people,
                                                          ranges=ADULTS if num_people else None)
        self._dress(num_people)

    def _dress(self, num_people: int) -> None:
        """Per person and triangle: LiDAR reflectivity and camera colour (skin, shirt, trousers, shoes)."""
        parts = self.body.face_parts
        num_faces = len(parts)
        self.people_reflectivity = np.full((num_people, num_faces), 0.3, dtype=np.float32)
        self.people_colours = np.zeros((num_people, num_faces, 3), dtype=np.float32)
        for i in range(num_people):
            skin = np.array([0.95, 0.8, 0.65]) * self.rng.uniform(0.45, 1.0)
            shirt, pants = self.rng.uniform(0.1, 0.9, 3), self.rng.uniform(0.05, 0.5, 3)
            refl_shirt, refl_pants = self.rng.uniform(0.15, 0.6), self.rng.uniform(0.1, 0.4)
            self.people_colours[i] = (0.15, 0.12, 0.1)  # shoes
            for group, colour, refl in ((_SKIN, skin, 0.35), (_SHIRT, shirt, refl_shirt), (_PANTS, pants, refl_pants)):
                mask = np.isin(parts, group)
                self.people_colours[i, mask] = colour
                self.people_reflectivity[i, mask] = refl

    def sensor_pose(self, t: float) -> np.ndarray:
        pose = np.eye(4)
        pose[0, 3] = self.ego_speed * t
        pose[2, 3] = self.sensor_height + float(self.ground.z(pose[:2, 3]))
        return pose

    def pose_people(self, t: float):
        """Posed bodies (world frame) of all people at time t: the moving ones in one batched call, those
        holding a pose in another, in their body frame, to be tipped and lifted before they are moved."""
        n = len(self.people)
        roots = [s.root(t) for s in self.people]
        xy = np.array([r[0] for r in roots]).reshape(n, 2)
        translation = np.concatenate([xy, self.ground.z(xy)[:, None]], 1)
        transforms = yaw_transforms(np.array([r[1] for r in roots]), translation)
        draws = [s.held(t)[0] for s in self.people]
        angles = [d.angles if d is not None else
                  action_poses(s.action, np.array([s.phase(t)]), np.random.default_rng(s.seed)).angles[0]
                  for s, d in zip(self.people, draws, strict=True)]
        poses = Poses(np.array(angles, dtype=np.float32).reshape(n, NUM_DOF))
        held = [i for i, d in enumerate(draws) if d is not None]
        moving = [i for i, d in enumerate(draws) if d is None]
        posed = PosedBodies(np.empty((n, self.body.num_vertices, 3), np.float32),
                            np.empty((n, len(JOINT_NAMES), 3), np.float32))
        if moving:
            bodies = self.body.pose(self.phenotypes[moving], poses[moving], transforms[moving])
            posed.vertices[moving], posed.joints[moving] = bodies.vertices, bodies.joints
        if held:  # tipped, lifted (a jumper's lift follows its cycle) and then moved like everyone else
            local = self.body.pose(self.phenotypes[held], poses[held])
            for k, i in enumerate(held):
                draw = draws[i]
                lift = draw.lift * max(0.0, float(np.sin(2 * np.pi * self.people[i].phase(t))))
                v, j = place(local.vertices[k], local.joints[k], replace(draw, lift=lift))
                rot, shift = transforms[i, :3, :3].astype(np.float32), transforms[i, :3, 3].astype(np.float32)
                posed.vertices[i], posed.joints[i] = v @ rot.T + shift, j @ rot.T + shift
        return posed

    def _intensity(self, hits, people_vertices: np.ndarray, pose: np.ndarray) -> np.ndarray:
        """Reflectivity of the hit triangle, dimmed at grazing incidence, with a little noise."""
        directions = hits.points / np.maximum(np.linalg.norm(hits.points, axis=1, keepdims=True), 1e-6)
        directions = directions @ pose[:3, :3].T
        normals = np.empty((len(hits), 3), dtype=np.float32)
        refl = np.empty(len(hits), dtype=np.float32)
        on_world = hits.mesh_id == 0
        normals[on_world] = self.world_normals[hits.triangle_id[on_world]]
        refl[on_world] = self.world.reflectivity[hits.triangle_id[on_world]]
        on_people = np.flatnonzero(~on_world)
        person, tri = hits.mesh_id[on_people] - 1, hits.triangle_id[on_people]
        corners = people_vertices[person[:, None], self.body.faces[tri]]  # (K, 3, 3)
        normals[on_people] = _unit(np.cross(corners[:, 1] - corners[:, 0], corners[:, 2] - corners[:, 0]))
        refl[on_people] = self.people_reflectivity[person, tri]
        value = refl * (0.3 + 0.7 * np.abs((normals * directions).sum(1)))
        if self.noise:
            value += self.rng.normal(0.0, 0.02, len(value)).astype(np.float32)
        return np.clip(value, 0.0, 1.0).astype(np.float32)

    def frames(self, num_frames: int) -> Iterator[ScanFrame]:
        """Scans 0 .. num_frames-1 at rate_hz (the people are posed one frame ahead for the true flow)."""
        dt = 1.0 / self.rate_hz
        faces = self.body.faces
        posed_next = self.pose_people(0.0)
        for index in range(num_frames):
            t = index * dt
            posed, posed_next = posed_next, self.pose_people(t + dt)
            pose = self.sensor_pose(t)
            meshes = [(self.world.vertices, self.world.faces)] + [(v, faces) for v in posed.vertices]
            hits = cast(meshes, self.preset, pose, self.rng, noise=self.noise)
            intensity = self._intensity(hits, posed.vertices, pose)
            rotation, origin = pose[:3, :3], pose[:3, 3]
            people = []
            for i, script in enumerate(self.people):
                sel = np.flatnonzero(hits.mesh_id == i + 1)
                tri, bary = hits.triangle_id[sel], hits.barycentric[sel]
                flow = surface_points(posed_next.vertices[i], faces, tri, bary) - \
                    surface_points(posed.vertices[i], faces, tri, bary)
                people.append(PersonTruth(
                    script.person_id, script.held(t)[1],
                    ((posed.joints[i] - origin) @ rotation).astype(np.float32),
                    sel.astype(np.int64), self.body.face_parts[tri].astype(np.uint8),
                    (flow @ rotation).astype(np.float32)))
            geometry = None
            if self.keep_geometry:
                geometry = FrameGeometry(self.world, posed.vertices, faces, self.people_colours)
            yield ScanFrame(index, self.start_ns + round(index * 1e9 / self.rate_hz), hits.points, intensity,
                            people, pose, geometry)
