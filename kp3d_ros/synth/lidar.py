"""Rotating multi-beam LiDAR simulation by ray casting triangle meshes (Open3D RaycastingScene).

Rays leave the sensor origin on a grid of beam elevations x azimuth steps; each return keeps which
mesh and triangle it hit and where on the triangle (barycentric), so labels and true scene flow
can be looked up afterwards. Azimuth 0 is the sensor's +x axis, counter-clockwise (REP-103).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np
import open3d as o3d

Mesh = tuple[np.ndarray, np.ndarray]  # vertices (V, 3), faces (F, 3)

# Velodyne VLP-32C beam elevations (datasheet, degrees).
_VLP32C = [-25.0, -15.639, -11.31, -8.843, -7.254, -6.148, -5.333, -4.667, -4.0, -3.667, -3.333, -3.0,
           -2.667, -2.333, -2.0, -1.667, -1.333, -1.0, -0.667, -0.333, 0.0, 0.333, 0.667, 1.0, 1.333, 1.667,
           2.333, 3.333, 4.667, 7.0, 10.333, 15.0]


@dataclass(frozen=True)
class LidarPreset:
    name: str
    elevations_deg: np.ndarray = field(repr=False)
    azimuth_resolution_deg: float
    min_range: float = 0.5
    max_range: float = 100.0
    range_noise_std: float = 0.02
    dropout: float = 0.02

    @property
    def num_beams(self) -> int:
        return len(self.elevations_deg)

    @staticmethod
    def custom(elevations_deg, azimuth_resolution_deg: float, name: str = "custom", **kwargs) -> LidarPreset:
        elevations = np.sort(np.asarray(elevations_deg, dtype=np.float64))
        if elevations.ndim != 1 or len(elevations) == 0 or azimuth_resolution_deg <= 0:
            raise ValueError("need a non-empty 1-D list of elevations and a positive azimuth resolution")
        return LidarPreset(name, elevations, float(azimuth_resolution_deg), **kwargs)

    def with_noise(self, range_noise_std: float | None = None, dropout: float | None = None) -> LidarPreset:
        return replace(self, range_noise_std=self.range_noise_std if range_noise_std is None else range_noise_std,
                       dropout=self.dropout if dropout is None else dropout)


def _waymo_top_elevations() -> np.ndarray:
    """64 beams from +2.4 to -17.6 degrees, denser near the horizon (the published vertical FOV)."""
    u = np.linspace(0.0, 1.0, 64)
    return np.sort(2.4 - 20.0 * (0.6 * u + 0.4 * u * u))


PRESETS: dict[str, LidarPreset] = {
    "waymo_top": LidarPreset.custom(_waymo_top_elevations(), 0.14, "waymo_top", max_range=75.0,
                                    range_noise_std=0.02, dropout=0.02),
    "hdl64e": LidarPreset.custom(np.concatenate([np.linspace(2.0, -8.33, 32), np.linspace(-8.83, -24.9, 32)]),
                                 0.1728, "hdl64e", max_range=120.0, range_noise_std=0.02, dropout=0.03),
    "vlp32c": LidarPreset.custom(_VLP32C, 0.2, "vlp32c", max_range=200.0, range_noise_std=0.03, dropout=0.03),
    "vlp16": LidarPreset.custom(np.arange(-15.0, 15.1, 2.0), 0.2, "vlp16", max_range=100.0,
                                range_noise_std=0.03, dropout=0.03),
    "os1_64": LidarPreset.custom(np.linspace(-22.5, 22.5, 64), 360.0 / 1024, "os1_64", max_range=120.0,
                                 range_noise_std=0.03, dropout=0.04),
    # Ouster OS1-128: 128 beams over the same 45 degree vertical FOV, 2048 columns (held out from Stage I training)
    "os1_128": LidarPreset.custom(np.linspace(-22.5, 22.5, 128), 360.0 / 2048, "os1_128", max_range=120.0,
                                  range_noise_std=0.03, dropout=0.04),
}


@dataclass(frozen=True)
class SensorEffects:
    """What real LiDARs do that a perfect ray cast does not (all off by default).

    - Beam divergence: each beam is a cone of ``divergence_mrad`` (full angle), cast as a centre ray and
      four rays on its rim. The return is reported along the centre direction at the range of the
      nearest rim or centre hit, so thin things are hit more often and silhouettes grow by the footprint.
    - Mixed returns: where the footprint spans surfaces more than ``mixed_min_gap`` apart in range, with
      probability ``mixed_probability`` the return lies between them (the mean of the hit ranges) and
      belongs to no surface (mesh_id -1).
    - Dropout on top of the preset's: ``range_dropout`` x (range / 50 m)^2, plus ``incidence_dropout`` x
      (1 - |cos incidence|)^2 at grazing angles.
    Motion during the sweep is applied by the caller from each return's azimuth (``sweep_times``).
    """

    divergence_mrad: float = 0.0
    mixed_probability: float = 0.0
    mixed_min_gap: float = 0.1
    range_dropout: float = 0.0
    incidence_dropout: float = 0.0


NO_EFFECTS = SensorEffects()
_RIM = np.array([[1.0, 0.0], [-1.0, 0.0], [0.0, 1.0], [0.0, -1.0]])  # (azimuth, elevation) unit offsets


def _footprint_rays(dirs: np.ndarray, half_angle: float) -> np.ndarray:
    """(R, 5, 3) unit directions: each ray and four rays on a cone of ``half_angle`` (rad) around it."""
    up = np.array([0.0, 0.0, 1.0])
    side = np.cross(up, dirs)
    side /= np.maximum(np.linalg.norm(side, axis=1, keepdims=True), 1e-9)
    lift = np.cross(dirs, side)
    rim = dirs[:, None] + half_angle * (_RIM[None, :, :1] * side[:, None] + _RIM[None, :, 1:] * lift[:, None])
    rays = np.concatenate([dirs[:, None], rim], 1)
    return rays / np.linalg.norm(rays, axis=-1, keepdims=True)


def sweep_times(points: np.ndarray, period_s: float, reference_azimuth: float) -> np.ndarray:
    """Time (s) of each return relative to when the sweep passes ``reference_azimuth`` (rad), for a
    sensor turning counter-clockwise once per ``period_s``: in [-period_s / 2, period_s / 2)."""
    azimuth = np.arctan2(points[:, 1], points[:, 0])
    turn = np.mod(azimuth - reference_azimuth + np.pi, 2 * np.pi) - np.pi
    return (turn / (2 * np.pi) * period_s).astype(np.float32)


@dataclass
class Hits:
    points: np.ndarray  # (M, 3) float32, sensor frame
    mesh_id: np.ndarray  # (M,) int64, index into the scene_meshes list
    triangle_id: np.ndarray  # (M,) int64
    barycentric: np.ndarray  # (M, 2) float32, Open3D primitive_uvs (weights of vertices 1 and 2)
    ranges: np.ndarray  # (M,) float32, noisy range
    beam: np.ndarray  # (M,) int64, beam (elevation) index

    def __len__(self) -> int:
        return len(self.points)


def sensor_pose(sensor: float | np.ndarray) -> np.ndarray:
    """4x4 pose of the sensor in the world: a height above z = 0, or a given pose."""
    if np.ndim(sensor) == 0:
        pose = np.eye(4)
        pose[2, 3] = float(sensor)
        return pose
    pose = np.asarray(sensor, dtype=np.float64)
    if pose.shape != (4, 4):
        raise ValueError(f"sensor pose must be a height or a 4x4 matrix, got shape {pose.shape}")
    return pose


def azimuth_grid(preset: LidarPreset, window: tuple[float, float] | None, offset: float = 0.0) -> np.ndarray:
    """Azimuths (rad) of the firing grid in [window[0], window[1]] (wrapping allowed), or all of them."""
    res = np.deg2rad(preset.azimuth_resolution_deg)
    if window is None:
        return -np.pi + offset + res * np.arange(round(2 * np.pi / res))
    lo, hi = window
    if hi < lo:
        hi += 2 * np.pi
    first = np.ceil((lo - offset) / res)
    return offset + res * np.arange(first, np.floor((hi - offset) / res) + 1)


def ray_directions(preset: LidarPreset, azimuths: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Unit directions (B*A, 3) in the sensor frame, beam-major, and the beam index of each."""
    elev = np.deg2rad(preset.elevations_deg)[:, None]
    az = azimuths[None, :]
    dirs = np.stack(np.broadcast_arrays(np.cos(elev) * np.cos(az), np.cos(elev) * np.sin(az), np.sin(elev)), -1)
    beams = np.repeat(np.arange(len(elev)), len(azimuths))
    return dirs.reshape(-1, 3), beams


def cast(scene_meshes: list[Mesh], preset: LidarPreset, sensor: float | np.ndarray, rng: np.random.Generator,
         azimuth_window: tuple[float, float] | None = None, noise: bool = True,
         range_noise_std: float | None = None, dropout: float | None = None,
         effects: SensorEffects = NO_EFFECTS) -> Hits:
    """Cast one scan (or the part of it in ``azimuth_window``, radians in the sensor frame) at world meshes.

    Returns the returns in the sensor frame. Range noise and dropout come from the preset unless given;
    ``effects`` adds beam divergence, mixed returns and range / incidence dependent dropout.
    """
    pose = sensor_pose(sensor)
    scene = o3d.t.geometry.RaycastingScene()
    for vertices, faces in scene_meshes:
        scene.add_triangles(o3d.core.Tensor(np.ascontiguousarray(vertices, dtype=np.float32)),
                            o3d.core.Tensor(np.ascontiguousarray(faces, dtype=np.uint32)))
    offset = rng.uniform(0.0, np.deg2rad(preset.azimuth_resolution_deg))
    dirs, beams = ray_directions(preset, azimuth_grid(preset, azimuth_window, offset))
    footprint = effects.divergence_mrad > 0
    beam_dirs = dirs @ pose[:3, :3].T  # world frame
    world_dirs = (_footprint_rays(dirs, 0.5e-3 * effects.divergence_mrad).reshape(-1, 3) @ pose[:3, :3].T
                  if footprint else beam_dirs)
    rays = np.concatenate([np.broadcast_to(pose[:3, 3], world_dirs.shape), world_dirs], 1).astype(np.float32)
    result = {k: v.numpy() for k, v in scene.cast_rays(o3d.core.Tensor(rays)).items()}
    t_hit, mesh_id = result["t_hit"], result["geometry_ids"].astype(np.int64)
    triangle, bary = result["primitive_ids"].astype(np.int64), result["primitive_uvs"]
    normal = result["primitive_normals"]
    if footprint:
        t_hit, mesh_id, triangle, bary, normal = _resolve_footprints(
            t_hit.reshape(len(dirs), -1), mesh_id.reshape(len(dirs), -1), triangle.reshape(len(dirs), -1),
            bary.reshape(len(dirs), -1, 2), normal.reshape(len(dirs), -1, 3), effects, rng)
    keep = np.isfinite(t_hit) & (t_hit >= preset.min_range) & (t_hit <= preset.max_range)
    drop = np.full(len(keep), preset.dropout if dropout is None else dropout)
    if effects.range_dropout > 0:
        drop = drop + effects.range_dropout * np.minimum(np.nan_to_num(t_hit, posinf=50.0) / 50.0, 1.0) ** 2
    if effects.incidence_dropout > 0:
        cos = np.abs(np.einsum("ri,ri->r", normal, beam_dirs))
        drop = drop + effects.incidence_dropout * (1.0 - np.nan_to_num(cos, nan=1.0)) ** 2
    if noise and np.any(drop > 0):
        keep &= rng.random(len(keep)) >= drop
    idx = np.flatnonzero(keep)
    r = t_hit[idx].astype(np.float64)
    std = preset.range_noise_std if range_noise_std is None else range_noise_std
    if noise and std > 0:
        r = r + rng.normal(0.0, std, len(r))
    return Hits(
        points=(dirs[idx] * r[:, None]).astype(np.float32),
        mesh_id=mesh_id[idx],
        triangle_id=triangle[idx],
        barycentric=bary[idx].astype(np.float32),
        ranges=r.astype(np.float32),
        beam=beams[idx],
    )


def _resolve_footprints(t_hit: np.ndarray, mesh_id: np.ndarray, triangle: np.ndarray, bary: np.ndarray,
                        normal: np.ndarray, effects: SensorEffects, rng: np.random.Generator):
    """One return per beam from its footprint's rays (R, K): the nearest hit, or a mixed return."""
    rows = np.arange(len(t_hit))
    hit = np.isfinite(t_hit)
    nearest = np.argmin(np.where(hit, t_hit, np.inf), axis=1)
    t_near = t_hit[rows, nearest]
    far = np.where(hit, t_hit, -np.inf).max(1)
    spans = hit.any(1) & (far - t_near > effects.mixed_min_gap)
    mixed = spans & (rng.random(len(t_hit)) < effects.mixed_probability)
    t_out = t_near.copy()
    t_out[mixed] = np.nanmean(np.where(hit, t_hit, np.nan)[mixed], axis=1)
    mesh_out = mesh_id[rows, nearest].copy()
    mesh_out[mixed] = -1
    return (t_out, mesh_out, triangle[rows, nearest], bary[rows, nearest], normal[rows, nearest])


def surface_points(vertices: np.ndarray, faces: np.ndarray, triangle_id: np.ndarray,
                   barycentric: np.ndarray) -> np.ndarray:
    """Points on a mesh given triangles and Open3D barycentric (u, v): (1-u-v) a + u b + v c."""
    tri = vertices[faces[triangle_id]]  # (M, 3, 3)
    u, v = barycentric[:, :1], barycentric[:, 1:2]
    return ((1.0 - u - v) * tri[:, 0] + u * tri[:, 1] + v * tri[:, 2]).astype(np.float32)


def box_mesh(centre, size, yaw: float = 0.0) -> Mesh:
    """Closed box (8 vertices, 12 triangles) with its centre, full size (3,) and yaw about z."""
    corners = np.array([[x, y, z] for x in (-0.5, 0.5) for y in (-0.5, 0.5) for z in (-0.5, 0.5)])
    c, s = np.cos(yaw), np.sin(yaw)
    rot = np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])
    vertices = (corners * np.asarray(size)) @ rot.T + np.asarray(centre)
    faces = np.array([[0, 2, 1], [1, 2, 3], [4, 5, 6], [5, 7, 6], [0, 1, 4], [1, 5, 4],
                      [2, 6, 3], [3, 6, 7], [0, 4, 2], [2, 4, 6], [1, 3, 5], [3, 7, 5]])
    tri = vertices[faces]
    normals = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
    inward = np.einsum("fi,fi->f", normals, tri.mean(1) - np.asarray(centre)) < 0
    faces[inward] = faces[inward][:, ::-1]  # outward normals, as front_faces expects
    return vertices.astype(np.float32), faces.astype(np.int32)


def ground_quad(x_range: tuple[float, float], y_range: tuple[float, float], z: float = 0.0) -> Mesh:
    """A horizontal rectangle at height z (two triangles)."""
    (x0, x1), (y0, y1) = x_range, y_range
    vertices = np.array([[x0, y0, z], [x1, y0, z], [x1, y1, z], [x0, y1, z]], dtype=np.float32)
    return vertices, np.array([[0, 1, 2], [0, 2, 3]], dtype=np.int32)


def front_faces(vertices: np.ndarray, faces: np.ndarray, origin: np.ndarray) -> np.ndarray:
    """Indices of the triangles facing ``origin``: the only ones a first hit on a closed mesh can be.

    Casting at these alone halves the ray-casting scene's build time for bodies.
    """
    tri = vertices[faces]
    normals = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
    return np.flatnonzero(np.einsum("fi,fi->f", normals, tri[:, 0] - np.asarray(origin, dtype=np.float32)) < 0)
