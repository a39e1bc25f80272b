"""A tiny on-disk Stage I data set (random labelled crops in the `kp3d synth` layout), written in
milliseconds, for training tests that need real files but not realistic people."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from kp3d_ros.skeleton import JOINT_NAMES, NUM_CLASSES
from kp3d_ros.synth.dataset import PRESET_NAMES, pack_samples, shard_path


def random_sample(rng: np.random.Generator, is_person: bool = True) -> dict:
    """One labelled crop: 40-90 points around a person-sized box, joints inside it, random parts (a crop of
    clutter alone when not is_person: its joints count in no loss)."""
    n = int(rng.integers(40, 90))
    centre = np.array([rng.uniform(4, 12), rng.uniform(-3, 3), -0.9])
    points = centre + rng.uniform([-0.3, -0.3, -0.9], [0.3, 0.3, 0.9], size=(n, 3))
    joints = centre + rng.uniform([-0.2, -0.2, -0.8], [0.2, 0.2, 0.8], size=(len(JOINT_NAMES), 3))
    return {"points": points.astype(np.float32), "parts": rng.integers(0, NUM_CLASSES, n),
            "preset": PRESET_NAMES[0], "joints": joints.astype(np.float32), "centre": centre.astype(np.float32),
            "distance": np.float32(np.hypot(*centre[:2])), "sensor_height": np.float32(1.8),
            "num_person_points": np.int32(n), "phenotype": np.zeros(4, np.float32), "inflate": np.float32(0.0),
            "family": np.int8(-1), "is_person": np.uint8(is_person)}


def write_split(root: Path, num: int, seed: int) -> Path:
    """`num` random samples in one shard at `root` (meta.json, shard_00000.npz, DONE); every 5th is a
    crop of clutter alone."""
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    np.savez(shard_path(root, 0), **pack_samples([random_sample(rng, i % 5 != 4) for i in range(num)]))
    meta = {"num_samples": num, "seed": seed, "shard_size": num, "config": {}, "preset_names": list(PRESET_NAMES)}
    (root / "meta.json").write_text(json.dumps(meta))
    (root / "DONE").write_text(json.dumps({"num_samples": num, "num_shards": 1}) + "\n")
    return root


def write_stage1_data(root: Path, train: int = 64, val: int = 16) -> Path:
    """A data root with train/ and val/ splits."""
    write_split(root / "train", train, seed=1)
    write_split(root / "val", val, seed=2)
    return root


TINY_MODEL = {"dim": 16, "depth": 1, "heads": 2, "mlp_ratio": 2}
