"""One labelled synthetic person sample: a posed anny body on the ground seen by a LiDAR preset.

The sample holds every return inside the person crop (kp3d_ros.core.crop) in the sensor frame:
body returns labelled with their part, ground / clutter / occluder / carried-object returns as
background (0), and the 14 true joints.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np

from kp3d_ros.core.crop import CROP_RADIUS, crop_indices
from kp3d_ros.skeleton import BACKGROUND, JOINT_INDEX, pelvis
from kp3d_ros.synth.body import BodyModel, Phenotypes, Poses, yaw_transforms
from kp3d_ros.synth.lidar import PRESETS, Mesh, box_mesh, cast, front_faces, ground_quad

GROUND_MARGIN = 0.1  # m below the ground kept in a crop


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
    action_share: float = 0.5  # share of poses taken from animated actions
    min_person_points: int = 10

    def to_dict(self) -> dict:
        return asdict(self)

    @staticmethod
    def from_dict(d: dict) -> DomainConfig:
        d = dict(d)
        for key in ("presets", "distance_range", "sensor_height_range", "inflate_range"):
            if key in d:
                d[key] = tuple(d[key])
        d["phenotype_ranges"] = {k: tuple(v) for k, v in d.get("phenotype_ranges", {}).items()}
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


def draw_body_params(bm: BodyModel, rng: np.random.Generator, config: DomainConfig) -> tuple[Phenotypes, Poses]:
    return bm.sample_phenotypes(rng, 1, config.phenotype_ranges), bm.random_poses(rng, 1, config.action_share)


def render_person(bm: BodyModel, rng: np.random.Generator, config: DomainConfig, body_vertices: np.ndarray,
                  body_joints: np.ndarray, phenotype: np.ndarray) -> dict:
    """Place one posed body (body frame) in a random scene, cast a preset, and crop the person sample."""
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

    visible = front_faces(verts, bm.faces, np.array([0.0, 0.0, height]))
    meshes: list[Mesh] = [(verts, bm.faces[visible])]
    half = CROP_RADIUS + 0.5
    meshes.append(ground_quad((target[0] - half, target[0] + half), (target[1] - half, target[1] + half)))
    if rng.random() < config.clutter:
        meshes += _clutter_meshes(rng, target, target / distance)
    if rng.random() < config.occluder:
        meshes.append(_occluder_mesh(rng, target))
    if rng.random() < config.carry_object:
        meshes.append(_carried_mesh(rng, joints))

    spread = np.arctan2(CROP_RADIUS + 0.2, distance)
    hits = cast(meshes, preset, height, rng, azimuth_window=(bearing - spread, bearing + spread),
                range_noise_std=config.range_noise_std, dropout=config.dropout)
    centre = target
    keep = crop_indices(hits.points, centre, -height - GROUND_MARGIN)
    is_body = hits.mesh_id[keep] == 0
    triangles = visible[np.where(is_body, hits.triangle_id[keep], 0)]
    parts = np.where(is_body, bm.face_parts[triangles], BACKGROUND).astype(np.int64)
    joints_sensor = joints - np.array([0.0, 0.0, height], dtype=np.float32)
    return {
        "points": hits.points[keep],
        "parts": parts,
        "joints": joints_sensor.astype(np.float32),
        "centre": np.array([centre[0], centre[1], -height], dtype=np.float32),
        "distance": np.float32(distance),
        "preset": preset.name,
        "sensor_height": np.float32(height),
        "num_person_points": int(is_body.sum()),
        "phenotype": np.asarray(phenotype, dtype=np.float32),
        "inflate": np.float32(amount),
    }


def make_person_samples(bm: BodyModel, rngs: list[np.random.Generator], config: DomainConfig) -> list[dict]:
    """One sample per rng; bodies posed in one batch. A sample with too few person points is re-placed."""
    params = [draw_body_params(bm, rng, config) for rng in rngs]
    phen = Phenotypes(np.concatenate([p[0].values for p in params]))
    poses = Poses(np.concatenate([p[1].angles for p in params]))
    bodies = bm.pose(phen, poses)
    samples = []
    for i, rng in enumerate(rngs):
        for _ in range(8):
            sample = render_person(bm, rng, config, bodies.vertices[i], bodies.joints[i], phen.values[i])
            if sample["num_person_points"] >= config.min_person_points:
                break
        samples.append(sample)
    return samples
