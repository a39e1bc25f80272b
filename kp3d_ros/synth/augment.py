"""Stage I augmentations (method.md) on one sample dict: points (M,3), parts (M,), joints (14,3), centre (3,).

Every function returns a new sample and keeps points and parts aligned; joints move with the
points under geometric changes. ``centre`` is the crop centre on the ground (x, y, ground z).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from kp3d_ros.core.crop import CROP_HEIGHT, CROP_RADIUS
from kp3d_ros.skeleton import BACKGROUND


@dataclass
class AugmentConfig:
    strip_ground: bool = False  # the node removes ground before cropping
    ground_threshold: float = 0.08  # m above the ground that counts as ground when stripping
    ground_points: float = 0.3  # probability of adding a synthetic ground disc
    clutter_points: float = 0.3  # probability of adding background clutter points
    noise_std: float = 0.01  # m, Gaussian jitter on every point
    scale_range: tuple[float, float] = (0.9, 1.1)
    keep_range: tuple[float, float] = (0.5, 1.0)  # downsampling: fraction of points kept
    random_crop: float = 0.2  # probability of an off-centre, narrower crop
    drop_part: float = 0.15  # probability of removing one body part
    random_yaw: bool = True


def _take(sample: dict, index: np.ndarray) -> dict:
    out = dict(sample)
    out["points"] = sample["points"][index]
    out["parts"] = sample["parts"][index]
    return out


def _append(sample: dict, points: np.ndarray) -> dict:
    out = dict(sample)
    out["points"] = np.concatenate([sample["points"], points.astype(np.float32)])
    out["parts"] = np.concatenate([sample["parts"], np.full(len(points), BACKGROUND, dtype=sample["parts"].dtype)])
    return out


def _disc(rng: np.random.Generator, n: int, radius: float) -> np.ndarray:
    r = radius * np.sqrt(rng.random(n))
    a = rng.uniform(0, 2 * np.pi, n)
    return np.stack([r * np.cos(a), r * np.sin(a)], -1)


def strip_ground(sample: dict, threshold: float = 0.08) -> dict:
    """Remove every point less than ``threshold`` above the ground (whatever its label), as the node does."""
    return _take(sample, np.flatnonzero(sample["points"][:, 2] >= sample["centre"][2] + threshold))


def add_ground_points(sample: dict, rng: np.random.Generator, max_points: int = 150) -> dict:
    """A disc of ground returns (background) under the crop."""
    n = int(rng.integers(10, max_points))
    xy = sample["centre"][:2] + _disc(rng, n, CROP_RADIUS)
    z = sample["centre"][2] + rng.normal(0.0, 0.02, n)
    return _append(sample, np.concatenate([xy, z[:, None]], 1))


def add_clutter_points(sample: dict, rng: np.random.Generator, max_points: int = 60) -> dict:
    """Background clutter: scattered points and a small blob inside the crop cylinder."""
    n = int(rng.integers(5, max_points))
    xy = sample["centre"][:2] + _disc(rng, n, CROP_RADIUS)
    z = sample["centre"][2] + rng.uniform(0.0, CROP_HEIGHT * 0.8, n)
    scattered = np.concatenate([xy, z[:, None]], 1)
    blob_centre = np.append(sample["centre"][:2] + _disc(rng, 1, CROP_RADIUS)[0],
                            sample["centre"][2] + rng.uniform(0.2, 1.5))
    blob = blob_centre + rng.normal(0.0, rng.uniform(0.03, 0.15), (int(rng.integers(5, 40)), 3))
    return _append(sample, np.concatenate([scattered, blob]))


def add_noise(sample: dict, rng: np.random.Generator, std: float) -> dict:
    out = dict(sample)
    out["points"] = (sample["points"] + rng.normal(0.0, std, sample["points"].shape)).astype(np.float32)
    return out


def scale(sample: dict, factor: float) -> dict:
    """Scale points and joints about the crop centre (on the ground)."""
    out = dict(sample)
    c = sample["centre"].astype(np.float32)
    out["points"] = ((sample["points"] - c) * factor + c).astype(np.float32)
    out["joints"] = ((sample["joints"] - c) * factor + c).astype(np.float32)
    return out


def downsample(sample: dict, rng: np.random.Generator, keep: float) -> dict:
    n = len(sample["points"])
    return _take(sample, np.sort(rng.choice(n, size=round(n * keep), replace=False)))


def random_crop(sample: dict, rng: np.random.Generator, max_shift: float = 0.25,
                radius_range: tuple[float, float] = (0.6, CROP_RADIUS)) -> dict:
    """Keep the points within a narrower cylinder around a shifted centre (imperfect detection)."""
    centre = sample["centre"][:2] + _disc(rng, 1, max_shift)[0]
    radius = rng.uniform(*radius_range)
    d2 = ((sample["points"][:, :2] - centre) ** 2).sum(1)
    return _take(sample, np.flatnonzero(d2 <= radius * radius))


def drop_part(sample: dict, rng: np.random.Generator) -> dict:
    """Remove all points of one body part that the sample contains."""
    present = np.unique(sample["parts"][sample["parts"] != BACKGROUND])
    if len(present) <= 1:
        return sample
    part = rng.choice(present)
    return _take(sample, np.flatnonzero(sample["parts"] != part))


def rotate_yaw(sample: dict, angle: float) -> dict:
    """Rotate points and joints about the vertical axis through the crop centre."""
    c, s = np.cos(angle), np.sin(angle)
    rot = np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]], dtype=np.float32)
    centre = sample["centre"].astype(np.float32)
    out = dict(sample)
    out["points"] = ((sample["points"] - centre) @ rot.T + centre).astype(np.float32)
    out["joints"] = ((sample["joints"] - centre) @ rot.T + centre).astype(np.float32)
    return out


def augment(sample: dict, rng: np.random.Generator, config: AugmentConfig | None = None) -> dict:
    """All augmentations in a fixed order, each drawn with the config's probability / range."""
    config = config or AugmentConfig()
    if config.strip_ground:
        sample = strip_ground(sample, config.ground_threshold)
    elif rng.random() < config.ground_points:
        sample = add_ground_points(sample, rng)
    if rng.random() < config.clutter_points:
        sample = add_clutter_points(sample, rng)
    if rng.random() < config.drop_part:
        sample = drop_part(sample, rng)
    if rng.random() < config.random_crop:
        sample = random_crop(sample, rng)
    if config.keep_range[0] < 1.0:
        sample = downsample(sample, rng, rng.uniform(*config.keep_range))
    if config.random_yaw:
        sample = rotate_yaw(sample, rng.uniform(-np.pi, np.pi))
    sample = scale(sample, rng.uniform(*config.scale_range))
    if config.noise_std > 0:
        sample = add_noise(sample, rng, config.noise_std)
    return sample
