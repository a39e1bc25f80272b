"""One labelled synthetic person sample: a posed anny body on the ground seen by a LiDAR preset.

The sample holds every return inside the person crop (kp3d_ros.core.crop) in the sensor frame:
body returns labelled with their part, ground / clutter / occluder / carried-object returns as
background (0), and the 14 true joints.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np

from kp3d_ros.core.crop import CROP_RADIUS, crop_indices
from kp3d_ros.skeleton import BACKGROUND, JOINT_INDEX, NUM_JOINTS, PART_INDEX, pelvis
from kp3d_ros.synth.body import CHILD_RANGES, BodyModel, Phenotypes, Poses, yaw_transforms
from kp3d_ros.synth.lidar import (
    NO_EFFECTS,
    PRESETS,
    Mesh,
    SensorEffects,
    box_mesh,
    cast,
    front_faces,
    ground_quad,
    sweep_times,
)
from kp3d_ros.synth.poses import FAMILY_INDEX, MAX_TRIES, PoseDraw, choose_families, draw_family, limbs_clear, place
from kp3d_ros.synth.static_world import blob, bush_shape

GROUND_MARGIN = 0.1  # m below the ground kept in a crop
ADULT_AGE = (0.5, 1.0)
SWEEP_PERIOD_S = 0.1  # a 10 Hz sensor: the time one turn of the sweep takes
NO_FAMILY = -1  # the family index of a legacy pose or a sample without a person


@dataclass
class DomainConfig:
    """What the synthetic world looks like; other helpers shift the domain with these options."""

    presets: tuple[str, ...] = ("waymo_top", "hdl64e", "vlp32c", "os1_64")
    distance_range: tuple[float, float] = (3.0, 30.0)
    sensor_height_range: tuple[float, float] = (1.6, 2.2)
    range_noise_std: float | None = None  # None: the preset's own
    dropout: float | None = None
    inflate_range: tuple[float, float] = (0.0, 0.0)  # m pushed out along normals (loose clothing)
    carry_object: float = 0.1  # probability of a box held near a hand
    occluder: float = 0.15  # probability of an occluding box / pole between sensor and person
    clutter: float = 0.3  # probability of clutter objects next to the person
    phenotype_ranges: dict[str, tuple[float, float]] = field(default_factory=dict)
    action_share: float = 0.5  # share of poses taken from animated actions (without pose_mix)
    min_person_points: int = 10
    pose_mix: dict[str, float] = field(default_factory=dict)  # family -> share (poses.POSE_MIX); {}: legacy
    child_share: float = 0.0  # share of children (CHILD_RANGES); the rest are adults (ADULT_AGE) if > 0
    negative_share: float = 0.0  # share of crops of clutter alone (no person; every point background)
    sensor_effects: float = 0.0  # probability of beam divergence, mixed returns, dropout and sweep motion
    ego_speed_range: tuple[float, float] = (0.0, 12.0)  # m/s of the vehicle, for the sweep motion

    def to_dict(self) -> dict:
        return asdict(self)

    @staticmethod
    def from_dict(d: dict) -> DomainConfig:
        d = dict(d)
        for key in ("presets", "distance_range", "sensor_height_range", "inflate_range", "ego_speed_range"):
            if key in d:
                d[key] = tuple(d[key])
        d["phenotype_ranges"] = {k: tuple(v) for k, v in d.get("phenotype_ranges", {}).items()}
        d["pose_mix"] = {k: float(v) for k, v in d.get("pose_mix", {}).items()}
        return DomainConfig(**d)


def vertex_normals(vertices: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """Area-weighted unit vertex normals (V, 3)."""
    tri = vertices[faces]
    fn = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
    normals = np.stack([np.bincount(faces.ravel(), np.repeat(fn[:, k], 3), len(vertices)) for k in range(3)], -1)
    return normals / np.maximum(np.linalg.norm(normals, axis=1, keepdims=True), 1e-9)


def inflate(vertices: np.ndarray, faces: np.ndarray, amount: float) -> np.ndarray:
    """Vertices pushed out along their normals by ``amount`` metres."""
    if amount == 0:
        return vertices
    return (vertices + amount * vertex_normals(vertices, faces)).astype(np.float32)


def _clutter_meshes(rng: np.random.Generator, centre: np.ndarray, sensor_xy_dir: np.ndarray) -> list[Mesh]:
    """One to three boxes / poles beside or behind the person, partly inside the crop."""
    meshes = []
    for _ in range(rng.integers(1, 4)):
        angle = rng.uniform(0, 2 * np.pi)
        dist = rng.uniform(0.6, 1.6)
        xy = centre + dist * np.array([np.cos(angle), np.sin(angle)])
        if rng.random() < 0.4:  # pole
            size = (rng.uniform(0.05, 0.2),) * 2 + (rng.uniform(1.5, 3.0),)
        else:
            size = (rng.uniform(0.2, 1.2), rng.uniform(0.2, 1.2), rng.uniform(0.3, 1.5))
        meshes.append(box_mesh((xy[0], xy[1], size[2] / 2), size, rng.uniform(0, np.pi)))
    return meshes


def _occluder_mesh(rng: np.random.Generator, centre: np.ndarray) -> Mesh:
    """A low box or a pole on the line of sight, between the sensor (origin) and the person."""
    frac = rng.uniform(0.3, 0.85)
    side = np.array([-centre[1], centre[0]]) / max(np.linalg.norm(centre), 1e-6)
    xy = frac * centre + rng.uniform(-0.5, 0.5) * side
    if rng.random() < 0.3:
        size = (0.15, 0.15, rng.uniform(1.5, 3.0))
    else:
        size = (rng.uniform(0.3, 1.5), rng.uniform(0.3, 1.5), rng.uniform(0.5, 1.3))
    return box_mesh((xy[0], xy[1], size[2] / 2), size, rng.uniform(0, np.pi))


def _carried_mesh(rng: np.random.Generator, joints: np.ndarray) -> Mesh:
    """A box (bag, parcel) just below and beside one wrist."""
    wrist = joints[JOINT_INDEX[rng.choice(["left_wrist", "right_wrist"])]]
    size = rng.uniform(0.15, 0.45, 3)
    centre = wrist + np.array([0.0, 0.0, -size[2] / 2 - 0.03]) + rng.normal(0, 0.03, 3)
    return box_mesh(centre, size, rng.uniform(0, np.pi))


def draw_phenotype(bm: BodyModel, rng: np.random.Generator, config: DomainConfig) -> Phenotypes:
    """A child (config.child_share) or an adult phenotype; the legacy draw when child_share is 0."""
    if config.child_share <= 0:
        return bm.sample_phenotypes(rng, 1, config.phenotype_ranges)
    child = rng.random() < config.child_share
    ranges = {**config.phenotype_ranges, **(CHILD_RANGES if child else {"age": ADULT_AGE})}
    return bm.sample_phenotypes(rng, 1, ranges)


def draw_body_params(bm: BodyModel, rng: np.random.Generator, config: DomainConfig
                     ) -> tuple[Phenotypes, Poses, PoseDraw | None]:
    """Phenotype and pose of one person; with a pose_mix, also the pose family's draw (else None)."""
    phenotype = draw_phenotype(bm, rng, config)
    if not config.pose_mix:
        return phenotype, bm.random_poses(rng, 1, config.action_share), None
    draw = draw_family(choose_families(rng, 1, config.pose_mix)[0], rng)
    return phenotype, Poses(draw.angles[None]), draw


def draw_effects(rng: np.random.Generator, probability: float) -> SensorEffects | None:
    """Random real-sensor effects with the given probability, else None."""
    if probability <= 0 or rng.random() >= probability:
        return None
    return SensorEffects(divergence_mrad=rng.uniform(1.0, 4.0), mixed_probability=rng.uniform(0.3, 0.9),
                         range_dropout=rng.uniform(0.0, 0.15), incidence_dropout=rng.uniform(0.0, 0.5))


def _seat_mesh(rng: np.random.Generator, vertices: np.ndarray, joints: np.ndarray, vertex_parts: np.ndarray,
               kind: str) -> Mesh:
    """A bench or kerb (body frame) whose top is under the buttocks."""
    seat_parts = [PART_INDEX[p] for p in ("torso", "left_thigh", "right_thigh")]
    p = pelvis(joints)
    near = np.isin(vertex_parts, seat_parts) & (np.abs(vertices[:, 0] - p[0]) < 0.2)
    top = float(vertices[near, 2].min()) if near.any() else float(p[2] - 0.1)
    length = rng.uniform(1.2, 2.5) if kind == "bench" else rng.uniform(2.5, 4.0)
    depth = rng.uniform(0.35, 0.5) if kind == "bench" else rng.uniform(0.25, 0.4)
    return box_mesh((p[0] - 0.5 * depth + 0.1, p[1], 0.5 * top), (depth, length, max(top, 0.05)), 0.0)


def _prop_meshes(rng: np.random.Generator, joints: np.ndarray, kind: str) -> list[Mesh]:
    """A carried box, a stroller pushed in front, or a bicycle pushed beside (body frame)."""
    hands = 0.5 * (joints[JOINT_INDEX["left_wrist"]] + joints[JOINT_INDEX["right_wrist"]])
    if kind == "box":
        size = rng.uniform(0.25, 0.45, 3)
        return [box_mesh(hands + np.array([0.5 * size[0] - 0.05, 0.0, 0.02]), size, rng.normal(0, 0.1))]
    if kind == "stroller":
        front = hands[0] + rng.uniform(0.1, 0.2)
        top = max(float(hands[2]) - 0.05, 0.6)
        return [box_mesh((front + 0.3, hands[1], top - 0.25), (0.6, 0.5, 0.5), 0.0),
                box_mesh((front + 0.35, hands[1], 0.2), (0.7, 0.45, 0.05), 0.0),
                box_mesh((front + 0.05, hands[1], top - 0.05), (0.1, 0.5, 0.04), 0.0)]
    side = rng.choice([-1.0, 1.0]) * rng.uniform(0.35, 0.5)
    x = hands[0] - 0.3
    return [box_mesh((x, side, 0.65), (1.1, 0.05, 0.08), 0.2),
            box_mesh((x + 0.55, side, 0.35), (0.66, 0.04, 0.66), 0.0),
            box_mesh((x - 0.55, side, 0.35), (0.66, 0.04, 0.66), 0.0),
            box_mesh((x + 0.45, side, float(hands[2]) - 0.02), (0.06, 0.5, 0.04), 0.0)]


def _negative_meshes(rng: np.random.Generator, target: np.ndarray) -> list[Mesh]:
    """Clutter that a person detector must reject: a pole, a trunk, a bush of boxes, a bin, a wall, a car's
    side, a bicycle without a rider, an empty bench, a rounded bush or hedge (the street scene's shape) or a low
    rounded heap on the ground (a sack, a pile of leaves: as low and long as a lying person), sometimes two of
    them, in the crop at ``target``."""
    meshes: list[Mesh] = []
    for _ in range(1 + int(rng.random() < 0.3)):
        kind = rng.integers(10)
        xy = target + rng.normal(0.0, 0.25, 2)
        yaw = rng.uniform(0, np.pi)
        if kind == 0:  # pole or sign post
            h = rng.uniform(1.0, 3.5)
            meshes.append(box_mesh((*xy, h / 2), (rng.uniform(0.05, 0.2),) * 2 + (h,), yaw))
        elif kind == 1:  # tree trunk
            h = rng.uniform(1.5, 4.0)
            meshes.append(box_mesh((*xy, h / 2), (rng.uniform(0.2, 0.5),) * 2 + (h,), yaw))
        elif kind == 2:  # bush: a few boxes
            for _ in range(rng.integers(3, 9)):
                size = rng.uniform(0.2, 0.7, 3)
                c = xy + rng.normal(0.0, 0.3, 2)
                meshes.append(box_mesh((*c, rng.uniform(0.2, 1.0)), size, rng.uniform(0, np.pi)))
        elif kind == 3:  # bin or post box
            size = (rng.uniform(0.4, 0.8), rng.uniform(0.4, 0.8), rng.uniform(0.8, 1.3))
            meshes.append(box_mesh((*xy, size[2] / 2), size, yaw))
        elif kind == 4:  # wall or fence through the crop
            h = rng.uniform(0.8, 2.5)
            meshes.append(box_mesh((*xy, h / 2), (rng.uniform(3.0, 6.0), rng.uniform(0.1, 0.3), h), yaw))
        elif kind == 5:  # the side of a car, its edge in the crop
            d = np.array([np.cos(yaw), np.sin(yaw)])
            c = xy + d * rng.uniform(1.5, 2.5)
            meshes.append(box_mesh((*c, 0.8), (4.5, 1.8, rng.uniform(1.3, 1.7)), yaw))
        elif kind == 6:  # a bicycle without a rider
            meshes += [(m[0] @ _yaw(yaw).T + np.array([*xy, 0.0]), m[1])
                       for m in _prop_meshes(rng, np.tile([0.3, 0.0, 1.0], (NUM_JOINTS, 1)), "bicycle")]
        elif kind == 7:  # an empty bench with a back
            meshes.append(box_mesh((*xy, 0.22), (0.45, 1.8, 0.44), yaw))
            back = xy + 0.25 * np.array([np.cos(yaw), np.sin(yaw)])
            meshes.append(box_mesh((*back, 0.65), (0.06, 1.8, 0.45), yaw))
        elif kind == 8:  # a rounded bush or a piece of hedge, as in the street scene
            meshes.append(_yawed(bush_shape(xy, 0.0, rng, radius=(0.3, 0.9)), yaw, xy))
        else:  # a low rounded heap lying on the ground
            radii = (rng.uniform(0.3, 0.9), rng.uniform(0.15, 0.4), rng.uniform(0.1, 0.25))
            meshes.append(_yawed(blob((*xy, 0.6 * radii[2]), radii, rng, roughness=0.3), yaw, xy))
    return [(np.asarray(v, np.float32), np.asarray(f, np.int32)) for v, f in meshes]


def _yawed(mesh: tuple[np.ndarray, np.ndarray], angle: float, about_xy: np.ndarray) -> Mesh:
    """``mesh`` turned by ``angle`` about the vertical axis through ``about_xy``."""
    vertices, faces = mesh
    pivot = np.array([*about_xy, 0.0])
    return (vertices - pivot) @ _yaw(angle).T + pivot, faces


def _yaw(angle: float) -> np.ndarray:
    c, s = np.cos(angle), np.sin(angle)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


def _in_sensor_frame(meshes: list[Mesh], transform: np.ndarray) -> list[Mesh]:
    return [((v @ transform[:3, :3].T + transform[:3, 3]).astype(np.float32), f) for v, f in meshes]


def render_person(bm: BodyModel, rng: np.random.Generator, config: DomainConfig, body_vertices: np.ndarray,
                  body_joints: np.ndarray, phenotype: np.ndarray, draw: PoseDraw | None = None,
                  negative: bool = False) -> dict:
    """Place one posed body (body frame) in a random scene, cast a preset, and crop the person sample.

    With ``draw`` the body gets the family's seat or prop and sweep motion at its speed; with
    ``negative`` the crop holds clutter alone (no body; parts all background, joints zero).
    """
    preset = PRESETS[config.presets[rng.integers(len(config.presets))]]
    height = rng.uniform(*config.sensor_height_range)
    distance = rng.uniform(*config.distance_range)
    bearing = rng.uniform(-np.pi, np.pi)
    yaw = rng.uniform(-np.pi, np.pi)
    centre_body = pelvis(body_joints)[:2]
    c, s = np.cos(yaw), np.sin(yaw)
    target = distance * np.array([np.cos(bearing), np.sin(bearing)])
    # Root translation that puts the pelvis (after the yaw) at the target.
    offset = target - np.array([c * centre_body[0] - s * centre_body[1], s * centre_body[0] + c * centre_body[1]])
    transform = yaw_transforms(np.array([yaw]), np.array([[offset[0], offset[1], 0.0]]))[0]
    amount = rng.uniform(*config.inflate_range)
    verts = inflate(body_vertices, bm.faces, amount) if amount else body_vertices
    verts = (verts @ transform[:3, :3].T + transform[:3, 3]).astype(np.float32)
    joints = (body_joints @ transform[:3, :3].T + transform[:3, 3]).astype(np.float32)

    visible = None if negative else front_faces(verts, bm.faces, np.array([0.0, 0.0, height]))
    meshes: list[Mesh] = [] if negative else [(verts, bm.faces[visible])]
    half = CROP_RADIUS + 0.5
    meshes.append(ground_quad((target[0] - half, target[0] + half), (target[1] - half, target[1] + half)))
    if negative:
        meshes += _negative_meshes(rng, target)
    elif draw is not None:
        if draw.seat:
            meshes += _in_sensor_frame([_seat_mesh(rng, body_vertices, body_joints, bm.vertex_parts, draw.seat)],
                                       transform)
        if draw.prop:
            meshes += _in_sensor_frame(_prop_meshes(rng, body_joints, draw.prop), transform)
    if rng.random() < config.clutter:
        meshes += _clutter_meshes(rng, target, target / distance)
    if rng.random() < config.occluder:
        meshes.append(_occluder_mesh(rng, target))
    if not negative and rng.random() < config.carry_object:
        meshes.append(_carried_mesh(rng, joints))

    effects = draw_effects(rng, config.sensor_effects)
    spread = np.arctan2(CROP_RADIUS + 0.2, distance)
    hits = cast(meshes, preset, height, rng, azimuth_window=(bearing - spread, bearing + spread),
                range_noise_std=config.range_noise_std, dropout=config.dropout, effects=effects or NO_EFFECTS)
    points = hits.points
    is_hit_body = np.zeros(len(hits), bool) if negative else hits.mesh_id == 0
    if effects is not None:  # motion during the sweep: each return where its surface was when the beam fired
        ego = np.array([rng.uniform(*config.ego_speed_range), 0.0, 0.0])
        speed = draw.speed if draw is not None and not negative else 0.0
        person_velocity = speed * np.array([c, s, 0.0])
        times = sweep_times(points, SWEEP_PERIOD_S, bearing)[:, None]
        points = (points + times * (np.where(is_hit_body[:, None], person_velocity, 0.0) - ego)).astype(np.float32)
    centre = target
    keep = crop_indices(points, centre, -height - GROUND_MARGIN)
    is_body = is_hit_body[keep]
    triangles = np.zeros(len(keep), int) if visible is None else visible[np.where(is_body, hits.triangle_id[keep], 0)]
    parts = np.where(is_body, bm.face_parts[triangles], BACKGROUND).astype(np.int64)
    joints_sensor = joints - np.array([0.0, 0.0, height], dtype=np.float32)
    if negative:
        joints_sensor = np.zeros_like(joints_sensor)
    family = NO_FAMILY if negative or draw is None else FAMILY_INDEX[draw.family]
    return {
        "points": points[keep],
        "parts": parts,
        "joints": joints_sensor.astype(np.float32),
        "centre": np.array([centre[0], centre[1], -height], dtype=np.float32),
        "distance": np.float32(distance),
        "preset": preset.name,
        "sensor_height": np.float32(height),
        "num_person_points": int(is_body.sum()),
        "phenotype": np.asarray(phenotype, dtype=np.float32),
        "inflate": np.float32(amount),
        "family": np.int8(family),
        "is_person": np.uint8(not negative),
    }


def _pose_checked(bm: BodyModel, rngs: list[np.random.Generator], config: DomainConfig):
    """Phenotypes, posed bodies and draws for one sample per rng; pose-family draws whose limbs clash are
    drawn again (up to MAX_TRIES), and tipped, lifted or seated as their family says."""
    params = [draw_body_params(bm, rng, config) for rng in rngs]
    phen = Phenotypes(np.concatenate([p[0].values for p in params]))
    poses = Poses(np.concatenate([p[1].angles for p in params]))
    draws = [p[2] for p in params]
    bodies = bm.pose(phen, poses)
    vertices, joints = bodies.vertices, bodies.joints
    if config.pose_mix:
        for _ in range(MAX_TRIES - 1):
            clash = [i for i in range(len(rngs)) if not limbs_clear(joints[i])]
            if not clash:
                break
            for i in clash:
                draws[i] = draw_family(draws[i].family, rngs[i])
                poses.angles[i] = draws[i].angles
            again = bm.pose(phen[clash], poses[clash])
            vertices[clash], joints[clash] = again.vertices, again.joints
        for i, draw in enumerate(draws):
            vertices[i], joints[i] = place(vertices[i], joints[i], draw)
    return phen, vertices, joints, draws


def make_person_samples(bm: BodyModel, rngs: list[np.random.Generator], config: DomainConfig) -> list[dict]:
    """One sample per rng; bodies posed in one batch. A sample with too few person points is re-placed;
    a share config.negative_share of the samples are crops of clutter alone."""
    phen, vertices, joints, draws = _pose_checked(bm, rngs, config)
    samples = []
    for i, rng in enumerate(rngs):
        negative = config.negative_share > 0 and rng.random() < config.negative_share
        for _ in range(8):
            sample = render_person(bm, rng, config, vertices[i], joints[i], phen.values[i], draws[i], negative)
            enough = len(sample["points"]) if negative else sample["num_person_points"]
            if enough >= config.min_person_points:
                break
        samples.append(sample)
    return samples
