"""The static world of a synthetic street scene: ground, buildings, parked cars, poles, trees, bushes, bins.

Everything is one triangle mesh in the world frame (REP-103, metres, the sensor above the origin), with a
LiDAR reflectivity and an RGB colour per triangle. Objects are placed at random but kept clear of the
areas given as ``keep_clear`` (the people's paths), so no object stands where a person walks.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class Ground:
    """The ground plane z = height + slope_x * x + slope_y * y."""

    height: float
    slope_x: float = 0.0
    slope_y: float = 0.0

    def z(self, xy: np.ndarray) -> np.ndarray:
        xy = np.asarray(xy, dtype=np.float64)
        return self.height + self.slope_x * xy[..., 0] + self.slope_y * xy[..., 1]


@dataclass
class WorldMesh:
    """One triangle mesh with per-triangle reflectivity (0..1) and colour (RGB 0..1)."""

    vertices: np.ndarray  # (V, 3) float32
    faces: np.ndarray  # (F, 3) int32
    reflectivity: np.ndarray  # (F,) float32
    colours: np.ndarray  # (F, 3) float32

    @staticmethod
    def merge(parts: list[WorldMesh]) -> WorldMesh:
        offsets = np.cumsum([0] + [len(p.vertices) for p in parts[:-1]])
        return WorldMesh(
            np.concatenate([p.vertices for p in parts]).astype(np.float32),
            np.concatenate([p.faces + o for p, o in zip(parts, offsets, strict=True)]).astype(np.int32),
            np.concatenate([p.reflectivity for p in parts]).astype(np.float32),
            np.concatenate([p.colours for p in parts]).astype(np.float32),
        )


def _painted(vertices: np.ndarray, faces: np.ndarray, reflectivity: float, colour) -> WorldMesh:
    n = len(faces)
    return WorldMesh(np.asarray(vertices, np.float32), np.asarray(faces, np.int32),
                     np.full(n, reflectivity, np.float32), np.tile(np.asarray(colour, np.float32), (n, 1)))


_BOX_FACES = np.array([[0, 2, 1], [0, 3, 2], [4, 5, 6], [4, 6, 7], [0, 1, 5], [0, 5, 4],
                       [1, 2, 6], [1, 6, 5], [2, 3, 7], [2, 7, 6], [3, 0, 4], [3, 4, 7]], dtype=np.int32)


def box(center_bottom, size, yaw: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """An upright box (vertices (8, 3), faces (12, 3)) standing on center_bottom, rotated by yaw about z."""
    lx, ly, lz = np.asarray(size, dtype=np.float64) / [2, 2, 1]
    corners = np.array([[-lx, -ly, 0], [lx, -ly, 0], [lx, ly, 0], [-lx, ly, 0]])
    corners = np.concatenate([corners, corners + np.array([0.0, 0.0, lz])])
    c, s = np.cos(yaw), np.sin(yaw)
    rot = np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]])
    return corners @ rot.T + np.asarray(center_bottom, dtype=np.float64), _BOX_FACES.copy()


def cylinder(center_bottom, radius: float, height: float, segments: int = 12) -> tuple[np.ndarray, np.ndarray]:
    """A closed upright cylinder."""
    angle = 2 * np.pi * np.arange(segments) / segments
    ring = np.stack([radius * np.cos(angle), radius * np.sin(angle), np.zeros(segments)], 1)
    vertices = np.concatenate([ring, ring + np.array([0.0, 0.0, height]), [[0, 0, 0], [0, 0, height]]])
    i = np.arange(segments)
    j = (i + 1) % segments
    bottom, top = 2 * segments, 2 * segments + 1
    faces = np.concatenate([
        np.stack([i, j, j + segments], 1), np.stack([i, j + segments, i + segments], 1),
        np.stack([np.full(segments, bottom), j, i], 1), np.stack([np.full(segments, top), i + segments,
                                                                  j + segments], 1)])
    return vertices + np.asarray(center_bottom, dtype=np.float64), faces.astype(np.int32)


def blob(center, radii, rng: np.random.Generator, rings: int = 6, segments: int = 10,
         roughness: float = 0.15) -> tuple[np.ndarray, np.ndarray]:
    """A lumpy ellipsoid (bush, tree crown): a UV sphere with random radial jitter."""
    theta = np.pi * np.arange(1, rings) / rings
    phi = 2 * np.pi * np.arange(segments) / segments
    t, p = np.meshgrid(theta, phi, indexing="ij")
    dirs = np.stack([np.sin(t) * np.cos(p), np.sin(t) * np.sin(p), np.cos(t)], -1).reshape(-1, 3)
    dirs = np.concatenate([dirs, [[0, 0, 1], [0, 0, -1]]])
    scale = 1.0 + roughness * rng.uniform(-1, 1, (len(dirs), 1))
    vertices = dirs * scale * np.asarray(radii) + np.asarray(center, dtype=np.float64)
    faces = []
    for r in range(rings - 2):
        a = r * segments + np.arange(segments)
        b = r * segments + (np.arange(segments) + 1) % segments
        faces += [np.stack([a, b, b + segments], 1), np.stack([a, b + segments, a + segments], 1)]
    north, south = len(dirs) - 2, len(dirs) - 1
    first, last = np.arange(segments), (rings - 2) * segments + np.arange(segments)
    faces += [np.stack([np.full(segments, north), (first + 1) % segments, first], 1),
              np.stack([np.full(segments, south), last, (rings - 2) * segments + (np.arange(segments) + 1) % segments],
                       1)]
    return vertices, np.concatenate(faces).astype(np.int32)


ROAD_HALF_WIDTH = 6.0  # m; the street runs along x through the origin, sidewalks beyond


def ground_mesh(ground: Ground, half_extent: float = 120.0) -> WorldMesh:
    """The ground as a grid of tiles (two triangles each): dark asphalt road for |y| < ROAD_HALF_WIDTH,
    lighter paving beyond."""
    xs = np.arange(-half_extent, half_extent + 1e-6, 10.0)
    ys = np.unique(np.concatenate([xs, [-ROAD_HALF_WIDTH, ROAD_HALF_WIDTH]]))
    nx, ny = len(xs), len(ys)
    gx, gy = np.meshgrid(xs, ys, indexing="ij")
    xy = np.stack([gx.ravel(), gy.ravel()], 1)
    vertices = np.concatenate([xy, ground.z(xy)[:, None]], 1)
    i, j = np.meshgrid(np.arange(nx - 1), np.arange(ny - 1), indexing="ij")
    a = (i * ny + j).ravel()
    faces = np.concatenate([np.stack([a, a + ny, a + ny + 1], 1), np.stack([a, a + ny + 1, a + 1], 1)])
    road = np.tile(np.abs(0.5 * (ys[:-1] + ys[1:]))[None].repeat(nx - 1, 0).ravel() < ROAD_HALF_WIDTH, 2)
    mesh = _painted(vertices, faces, 0.2, (0.55, 0.55, 0.52))
    mesh.reflectivity[road] = 0.1
    mesh.colours[road] = (0.3, 0.3, 0.32)
    return mesh


def _distance_to_polylines(point: np.ndarray, polylines: list[np.ndarray]) -> float:
    """Smallest horizontal distance from a point (2,) to any of the polylines (P, 2)."""
    best = np.inf
    for line in polylines:
        if len(line) == 1:
            best = min(best, float(np.linalg.norm(point - line[0])))
            continue
        a, b = line[:-1], line[1:]
        ab = b - a
        t = np.clip(((point - a) * ab).sum(1) / np.maximum((ab * ab).sum(1), 1e-12), 0, 1)
        best = min(best, float(np.linalg.norm(a + t[:, None] * ab - point, axis=1).min()))
    return best


CAR_COLOURS = ((0.75, 0.1, 0.1), (0.1, 0.2, 0.6), (0.85, 0.85, 0.85), (0.15, 0.15, 0.15), (0.55, 0.57, 0.6),
               (0.9, 0.75, 0.2))


def _car(xy, yaw, z, rng) -> WorldMesh:
    length, width = rng.uniform(4.0, 4.9), rng.uniform(1.7, 1.95)
    colour = CAR_COLOURS[rng.integers(len(CAR_COLOURS))]
    body = box((xy[0], xy[1], z + 0.3), (length, width, 0.8), yaw)
    shift = rng.uniform(-0.4, 0.0) * np.array([np.cos(yaw), np.sin(yaw)])
    cabin = box((xy[0] + shift[0], xy[1] + shift[1], z + 1.1), (0.55 * length, 0.9 * width, 0.55), yaw)
    wheels = box((xy[0], xy[1], z), (0.8 * length, 0.95 * width, 0.3), yaw)
    return WorldMesh.merge([_painted(*body, rng.uniform(0.3, 0.6), colour),
                            _painted(*cabin, 0.08, (0.12, 0.14, 0.18)),
                            _painted(*wheels, 0.05, (0.05, 0.05, 0.05))])


def _pole(xy, z, rng) -> WorldMesh:
    return _painted(*cylinder((xy[0], xy[1], z), rng.uniform(0.06, 0.14), rng.uniform(3.0, 6.0), 8), 0.45,
                    (0.3, 0.3, 0.32))


def _tree(xy, z, rng) -> WorldMesh:
    height = rng.uniform(2.5, 4.0)
    trunk = _painted(*cylinder((xy[0], xy[1], z), rng.uniform(0.12, 0.25), height, 8), 0.25, (0.35, 0.22, 0.1))
    radius = rng.uniform(1.2, 2.2)
    crown = _painted(*blob((xy[0], xy[1], z + height + 0.6 * radius), (radius, radius, 0.8 * radius), rng), 0.2,
                     (0.16, 0.45, 0.12))
    return WorldMesh.merge([trunk, crown])


def bush_shape(xy, z: float, rng: np.random.Generator, radius: tuple[float, float] = (0.4, 0.9)
               ) -> tuple[np.ndarray, np.ndarray]:
    """A bush or a piece of hedge on the ground at height z: a lumpy ellipsoid, up to 1.8 times longer along x."""
    r = rng.uniform(*radius)
    return blob((xy[0], xy[1], z + 0.6 * r), (r * rng.uniform(1.0, 1.8), r, 0.7 * r), rng, roughness=0.25)


def _bush(xy, z, rng) -> WorldMesh:
    return _painted(*bush_shape(xy, z, rng), 0.18, (0.2, 0.5, 0.15))


def _clutter(xy, yaw, z, rng) -> WorldMesh:
    size = (rng.uniform(0.4, 1.6), rng.uniform(0.4, 0.8), rng.uniform(0.4, 1.2))
    colour = rng.uniform(0.2, 0.8, 3)
    return _painted(*box((xy[0], xy[1], z), size, yaw), rng.uniform(0.1, 0.6), colour)


def _building(center_xy, yaw, size, z) -> WorldMesh:
    return _painted(*box((center_xy[0], center_xy[1], z - 0.5), size, yaw), 0.3, (0.72, 0.62, 0.5))


def _street_slots(rng: np.random.Generator, kind: str) -> list[tuple[np.ndarray, float]]:
    """Candidate (xy, yaw) along both kerbs: parked cars, street lights and trees."""
    offset, spacing, jitter = {"car": ((4.4, 5.0), (5.5, 9.0), 0.0), "pole": ((6.3, 6.8), (14.0, 20.0), 0.0),
                               "tree": ((7.5, 8.5), (9.0, 16.0), 1.0)}[kind]
    slots = []
    for side in (1, -1):
        x = -50.0 + rng.uniform(0, spacing[1])
        while x < 50.0:
            y = side * rng.uniform(*offset)
            slots.append((np.array([x + rng.uniform(-jitter, jitter), y]), float(rng.normal(0.0, 0.03))))
            x += rng.uniform(*spacing)
    return slots


def _free(xy: np.ndarray, footprint: float, keep_clear: list[np.ndarray], clearance: float,
          placed: list[tuple[np.ndarray, float]]) -> bool:
    if _distance_to_polylines(xy, keep_clear) < footprint + clearance:
        return False
    return all(np.linalg.norm(xy - q) >= footprint + f for q, f in placed)


# Scattered objects: (kind, count range, footprint radius m, min and max |y| m).
_SCATTERED = (("bush", (6, 12), 1.0, 7.0, 26.0), ("clutter", (6, 12), 0.8, 6.5, 26.0))
_FOOTPRINT = {"car": 2.6, "pole": 0.3, "tree": 1.0}


def build_static_world(rng: np.random.Generator, ground: Ground, keep_clear: list[np.ndarray],
                       clearance: float = 1.0, keep_probability: float = 0.7) -> WorldMesh:
    """A street along x: ground, building rows beyond |y| = 28 m, parked cars at the kerbs, street lights,
    trees, and bushes and clutter on the sidewalks, every object at least ``clearance`` m (plus its
    footprint) from the polylines in ``keep_clear`` (world xy); the road itself stays free."""
    parts = [ground_mesh(ground)]
    for side in (1, -1):
        y = side * rng.uniform(28.0, 34.0)
        for x in np.arange(-60.0, 60.0, 20.0):
            length, depth = rng.uniform(14.0, 19.5), rng.uniform(8.0, 12.0)
            center = np.array([x + rng.uniform(-1.0, 1.0), y + side * depth / 2])
            parts.append(_building(center, 0.0, (length, depth, rng.uniform(6.0, 15.0)), float(ground.z(center))))
    placed: list[tuple[np.ndarray, float]] = []
    makers = {"car": lambda xy, yaw, z: _car(xy, yaw, z, rng), "pole": lambda xy, yaw, z: _pole(xy, z, rng),
              "tree": lambda xy, yaw, z: _tree(xy, z, rng), "bush": lambda xy, yaw, z: _bush(xy, z, rng),
              "clutter": lambda xy, yaw, z: _clutter(xy, yaw, z, rng)}
    for kind, footprint in _FOOTPRINT.items():
        for xy, yaw in _street_slots(rng, kind):
            if rng.random() < keep_probability and _free(xy, footprint, keep_clear, clearance, placed):
                placed.append((xy, footprint))
                parts.append(makers[kind](xy, yaw, float(ground.z(xy))))
    for kind, (lo, hi), footprint, y_min, y_max in _SCATTERED:
        for _ in range(int(rng.integers(lo, hi + 1))):
            for _attempt in range(50):
                xy = np.array([rng.uniform(-40.0, 40.0), rng.choice([-1, 1]) * rng.uniform(y_min, y_max)])
                if _free(xy, footprint, keep_clear, clearance, placed):
                    placed.append((xy, footprint))
                    parts.append(makers[kind](xy, rng.uniform(-np.pi, np.pi), float(ground.z(xy))))
                    break
    return WorldMesh.merge(parts)
