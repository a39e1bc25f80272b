"""Sharded on-disk datasets of labelled synthetic person samples.

Layout: ROOT/meta.json, ROOT/shard_00000.npz ... (points of all samples concatenated, with offsets),
ROOT/DONE once complete. Sample i is drawn from ``np.random.default_rng([seed, i])`` and bodies are
posed in groups aligned to multiples of POSE_BATCH, so the data depend only on the seed, never on
the number of workers. Shards already written are kept (an interrupted run resumes).
"""

from __future__ import annotations

import json
import logging
import multiprocessing as mp
import os
from collections import OrderedDict
from pathlib import Path

import numpy as np
from tqdm import tqdm

from kp3d_ros.synth.lidar import PRESETS
from kp3d_ros.synth.person import DomainConfig, make_person_samples

log = logging.getLogger(__name__)

POSE_BATCH = 64
SHARD_SIZE = 512  # a multiple of POSE_BATCH
PRESET_NAMES = tuple(PRESETS)
_PER_SAMPLE = ("joints", "centre", "distance", "sensor_height", "num_person_points", "phenotype", "inflate",
               "family", "is_person")
# Values of the per-sample fields that datasets written before them lack.
_MISSING = {"family": np.int8(-1), "is_person": np.uint8(1)}


def shard_path(root: Path, shard: int) -> Path:
    return Path(root) / f"shard_{shard:05d}.npz"


def pack_samples(samples: list[dict]) -> dict[str, np.ndarray]:
    """Concatenate samples into flat arrays with offsets."""
    counts = np.array([len(s["points"]) for s in samples], dtype=np.int64)
    packed = {
        "offsets": np.concatenate([[0], np.cumsum(counts)]).astype(np.int64),
        "points": np.concatenate([s["points"] for s in samples]).astype(np.float32).reshape(-1, 3),
        "parts": np.concatenate([s["parts"] for s in samples]).astype(np.uint8),
        "preset_id": np.array([PRESET_NAMES.index(s["preset"]) for s in samples], dtype=np.uint8),
    }
    for key in _PER_SAMPLE:
        packed[key] = np.stack([np.asarray(s.get(key, _MISSING.get(key))) for s in samples])
    return packed


def _write_shard(task: tuple[str, int, int, int, int, dict]) -> int:
    root, shard, start, stop, seed, config_dict = task
    path = shard_path(Path(root), shard)
    if path.exists():
        return stop - start
    from kp3d_ros.synth.body import get_body_model

    bm = get_body_model()
    config = DomainConfig.from_dict(config_dict)
    samples = []
    for group in range(start, stop, POSE_BATCH):
        rngs = [np.random.default_rng([seed, i]) for i in range(group, min(stop, group + POSE_BATCH))]
        samples += make_person_samples(bm, rngs, config)
    tmp = path.with_suffix(".tmp.npz")
    np.savez(tmp, **pack_samples(samples))
    os.replace(tmp, path)
    return stop - start


def _init_worker() -> None:
    import torch

    torch.set_num_threads(1)


def write_dataset(root: str | Path, num_samples: int, seed: int, config: DomainConfig | None = None,
                  workers: int = 1, shard_size: int = SHARD_SIZE, progress: bool = True) -> Path:
    """Generate ``num_samples`` person samples under ``root``; writes root/DONE when complete."""
    if num_samples <= 0 or shard_size <= 0 or shard_size % POSE_BATCH:
        raise ValueError(f"need num_samples > 0 and shard_size a positive multiple of {POSE_BATCH}")
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    config = config or DomainConfig()
    meta = {"num_samples": num_samples, "seed": seed, "shard_size": shard_size, "config": config.to_dict(),
            "preset_names": list(PRESET_NAMES)}
    meta_path = root / "meta.json"
    if meta_path.exists() and json.loads(meta_path.read_text()) != meta:
        raise ValueError(f"{root} holds a different dataset (meta.json differs); use another directory")
    meta_path.write_text(json.dumps(meta, indent=1))
    tasks = [(str(root), k, start, min(num_samples, start + shard_size), seed, config.to_dict())
             for k, start in enumerate(range(0, num_samples, shard_size))]
    bar = tqdm(total=num_samples, desc=f"synth {root.name}", unit="sample", disable=not progress)
    if workers <= 1:
        _init_worker()
        for task in tasks:
            bar.update(_write_shard(task))
    else:
        with mp.get_context("spawn").Pool(workers, initializer=_init_worker) as pool:
            for done in pool.imap_unordered(_write_shard, tasks):
                bar.update(done)
    bar.close()
    (root / "DONE").write_text(json.dumps({"num_samples": num_samples, "num_shards": len(tasks)}) + "\n")
    return root


class ShardedDataset:
    """Read access to a dataset written by ``write_dataset`` (shards loaded on demand, a few kept)."""

    def __init__(self, root: str | Path, cache_shards: int = 8) -> None:
        self.root = Path(root)
        meta_path = self.root / "meta.json"
        if not meta_path.exists():
            raise FileNotFoundError(f"no dataset at {self.root} (meta.json missing)")
        self.meta = json.loads(meta_path.read_text())
        self.complete = (self.root / "DONE").exists()
        self.shard_size = int(self.meta["shard_size"])
        self.num_samples = int(self.meta["num_samples"])
        self.preset_names = list(self.meta["preset_names"])
        self._cache: OrderedDict[int, dict[str, np.ndarray]] = OrderedDict()
        self._cache_shards = cache_shards
        if not self.complete:
            log.warning("dataset %s is incomplete (no DONE file)", self.root)

    def __len__(self) -> int:
        return self.num_samples

    def shard(self, k: int) -> dict[str, np.ndarray]:
        """All arrays of shard k (flat points/parts with offsets, per-sample arrays)."""
        if k not in self._cache:
            with np.load(shard_path(self.root, k)) as data:
                self._cache[k] = {key: data[key] for key in data.files}
            if len(self._cache) > self._cache_shards:
                self._cache.popitem(last=False)
        self._cache.move_to_end(k)
        return self._cache[k]

    def __getitem__(self, index: int) -> dict:
        if not -self.num_samples <= index < self.num_samples:
            raise IndexError(index)
        index %= self.num_samples
        data = self.shard(index // self.shard_size)
        i = index % self.shard_size
        a, b = data["offsets"][i], data["offsets"][i + 1]
        sample = {"points": data["points"][a:b], "parts": data["parts"][a:b].astype(np.int64),
                  "preset": self.preset_names[int(data["preset_id"][i])]}
        for key in _PER_SAMPLE:
            sample[key] = data[key][i] if key in data else _MISSING[key]
        return sample


class ConcatDataset:
    """Several datasets read as one: indices run through the parts in order."""

    def __init__(self, parts: list) -> None:
        if not parts:
            raise ValueError("ConcatDataset needs at least one part")
        self.parts = list(parts)
        self.offsets = np.cumsum([0] + [len(p) for p in self.parts])

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def __getitem__(self, index: int) -> dict:
        if not -len(self) <= index < len(self):
            raise IndexError(index)
        index %= len(self)
        k = int(np.searchsorted(self.offsets, index, side="right") - 1)
        return self.parts[k][index - int(self.offsets[k])]
