"""A pinhole camera at the LiDAR that renders synthetic scenes (ray cast per pixel, Lambert shading).

Extrinsics follow the node's ``camera.extrinsics`` parameter (kp3d_ros.core.params): x, y, z, roll,
pitch, yaw of the camera (optical frame: x right, y down, z forward) in the LiDAR frame, rotation
R = Rz(yaw) Ry(pitch) Rx(roll), so a LiDAR point p is at R^T (p - t) in the camera. The default
(0, 0, 0, -pi/2, 0, -pi/2) puts the camera at the LiDAR origin with optical z = LiDAR x (forward),
optical x = -LiDAR y (right) and optical y = -LiDAR z (down).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import open3d as o3d

from kp3d_ros.core.camera_geometry import camera_rotation, project
from kp3d_ros.core.params import SPECS
from kp3d_ros.synth.scene import FrameGeometry
from kp3d_ros.synth.static_world import WorldMesh

DEFAULT_EXTRINSICS: tuple[float, ...] = tuple(SPECS["camera.extrinsics"].default)
SUN = np.array([0.4, 0.3, 0.85]) / np.linalg.norm([0.4, 0.3, 0.85])  # direction towards the light, world frame
SKY_HORIZON, SKY_ZENITH = np.array([0.85, 0.9, 0.95]), np.array([0.45, 0.62, 0.88])
FOG_DISTANCE = 150.0  # m; far surfaces fade towards the horizon colour


@dataclass(frozen=True)
class PinholeCamera:
    width: int = 640
    height: int = 480
    fx: float = 500.0
    fy: float = 500.0
    cx: float = 320.0
    cy: float = 240.0
    extrinsics: tuple[float, ...] = field(default=DEFAULT_EXTRINSICS)
    frame_id: str = "camera"

    @property
    def k(self) -> np.ndarray:
        return np.array([[self.fx, 0.0, self.cx], [0.0, self.fy, self.cy], [0.0, 0.0, 1.0]])

    @property
    def p(self) -> np.ndarray:
        return np.concatenate([self.k, np.zeros((3, 1))], 1)

    @property
    def rotation(self) -> np.ndarray:
        """Camera-to-LiDAR rotation (columns: the optical axes in the LiDAR frame)."""
        return camera_rotation(*self.extrinsics[3:6])

    @property
    def translation(self) -> np.ndarray:
        return np.asarray(self.extrinsics[:3], dtype=np.float64)

    def project(self, points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Pixel coordinates (N, 2) and depths (N,) of LiDAR-frame points; depth <= 0 is behind the camera."""
        return project(points, self.k, self.extrinsics)

    def pixel_rays(self) -> np.ndarray:
        """Unit ray directions (H*W, 3) through the pixel centres, in the LiDAR frame, row-major."""
        u, v = np.meshgrid(np.arange(self.width) + 0.5, np.arange(self.height) + 0.5)
        optical = np.stack([(u - self.cx) / self.fx, (v - self.cy) / self.fy, np.ones_like(u)], -1).reshape(-1, 3)
        rays = optical @ self.rotation.T
        return rays / np.linalg.norm(rays, axis=1, keepdims=True)

    def camera_info(self) -> dict:
        """The sensor_msgs/CameraInfo fields (plumb_bob, no distortion, identity rectification)."""
        return {"width": self.width, "height": self.height, "distortion_model": "plumb_bob",
                "d": np.zeros(5), "k": self.k.ravel(), "r": np.eye(3).ravel(), "p": self.p.ravel()}


def _sky(directions: np.ndarray) -> np.ndarray:
    up = np.sqrt(np.clip(directions[:, 2], 0.0, 1.0))[:, None]
    return ((1 - up) * SKY_HORIZON + up * SKY_ZENITH).astype(np.float32)


def _scene(vertices: np.ndarray, faces: np.ndarray) -> o3d.t.geometry.RaycastingScene:
    scene = o3d.t.geometry.RaycastingScene()
    scene.add_triangles(o3d.core.Tensor(np.ascontiguousarray(vertices, dtype=np.float32)),
                        o3d.core.Tensor(np.ascontiguousarray(faces, dtype=np.uint32)))
    return scene


def _shade(scene, origin: np.ndarray, directions: np.ndarray, face_colours: np.ndarray):
    """Cast rays; colours (R, 3) float32 of the hit faces (Lambert, sun, fog) or the sky, and hit distances."""
    rays = np.concatenate([np.broadcast_to(origin, directions.shape), directions], 1).astype(np.float32)
    result = scene.cast_rays(o3d.core.Tensor(rays))
    t_hit = result["t_hit"].numpy()
    hit = np.isfinite(t_hit)
    colours = _sky(directions)
    normals = result["primitive_normals"].numpy()[hit]
    d = directions[hit]
    facing = np.abs(normals @ SUN.astype(np.float32))  # two-sided: triangle winding does not matter
    facing = np.where((normals * d).sum(1) * (normals @ SUN.astype(np.float32)) < 0, facing, 0.0)
    light = 0.35 + 0.65 * facing
    fog = np.exp(-t_hit[hit] / FOG_DISTANCE)[:, None]
    colours[hit] = fog * face_colours[result["primitive_ids"].numpy()[hit]] * light[:, None] + (1 - fog) * SKY_HORIZON
    return colours, t_hit


class SceneRenderer:
    """Renders frames of one scene: the static world is cast once per sensor pose and cached, so for a
    parked vehicle each frame only casts the pixels around the people against the people's meshes."""

    def __init__(self, camera: PinholeCamera, world: WorldMesh) -> None:
        self.camera, self.world = camera, world
        self._rays = camera.pixel_rays().astype(np.float32)
        self._world_scene = _scene(world.vertices, world.faces)
        self._cached_pose: np.ndarray | None = None
        self._background: tuple[np.ndarray, np.ndarray] | None = None

    def _pixels_around(self, vertices: np.ndarray, pose: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Flat indices of the pixels inside the image boxes of the people (plus a 2 pixel margin), and
        which people are in view."""
        cam = self.camera
        masks = np.zeros((cam.height, cam.width), dtype=bool)
        in_view = np.zeros(len(vertices), dtype=bool)
        for i, person in enumerate(vertices):
            pixels, depth = cam.project((person - pose[:3, 3]) @ pose[:3, :3])
            pixels = pixels[depth > 0.1]
            if len(pixels) == 0:
                continue
            u0, v0 = np.maximum(np.floor(pixels.min(0)).astype(int) - 2, 0)
            u1, v1 = np.minimum(np.ceil(pixels.max(0)).astype(int) + 3, [cam.width, cam.height])
            if u1 > u0 and v1 > v0:
                masks[v0:v1, u0:u1] = in_view[i] = True
        return np.flatnonzero(masks), np.flatnonzero(in_view)

    def render(self, geometry: FrameGeometry, sensor_pose: np.ndarray) -> np.ndarray:
        """An RGB image (H, W, 3) uint8 of the frame seen from the camera on the sensor."""
        pose = np.asarray(sensor_pose, dtype=np.float64)
        directions = self._rays @ pose[:3, :3].T.astype(np.float32)
        origin = pose[:3, :3] @ self.camera.translation + pose[:3, 3]
        if self._cached_pose is None or not np.array_equal(pose, self._cached_pose):
            self._background = _shade(self._world_scene, origin, directions, self.world.colours)
            self._cached_pose = pose.copy()
        colours, depth = (a.copy() for a in self._background)
        pixels, visible = self._pixels_around(geometry.people_vertices, pose)
        if len(pixels):
            vertices = geometry.people_vertices[visible]
            n, num_vertices = vertices.shape[:2]
            faces = (geometry.people_faces[None] + (num_vertices * np.arange(n))[:, None, None]).reshape(-1, 3)
            scene = _scene(vertices.reshape(-1, 3), faces)
            colours_of_faces = geometry.people_colours[visible].reshape(-1, 3)
            people, t_people = _shade(scene, origin, directions[pixels], colours_of_faces)
            nearer = t_people < depth[pixels]
            colours[pixels[nearer]] = people[nearer]
        image = (np.clip(colours, 0, 1) * 255).astype(np.uint8)
        return image.reshape(self.camera.height, self.camera.width, 3)


def render(camera: PinholeCamera, geometry: FrameGeometry, sensor_pose: np.ndarray) -> np.ndarray:
    """One image without caching (see SceneRenderer for sequences)."""
    return SceneRenderer(camera, geometry.world).render(geometry, sensor_pose)
