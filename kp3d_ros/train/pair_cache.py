"""Stage II pairs of one bag on disk (`pairs_cache`), so that a restarted, resumed or repeated job loads
what it extracted instead of running detection, tracking and flow over the bag again.

One file per bag, `<cache dir>/<bag stem>-<key>.npz`, written atomically. The key is a digest of the
bag (absolute path, size, modification time), the topic and the flow settings, so a changed bag or
flow method never loads a stale file.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np

from kp3d_ros.train.pairs import PairSample

FORMAT = 1


def cache_file(cache_dir: str | Path, bag: str | Path, topic: str, flow: dict) -> Path:
    """Where the pairs of `bag` extracted with these settings live."""
    bag = Path(bag).resolve()
    stat = bag.stat()
    identity = {"format": FORMAT, "bag": str(bag), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns,
                "topic": topic, "flow": {k: flow[k] for k in ("method", "iterations")}}
    key = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]
    return Path(cache_dir) / f"{bag.stem}-{key}.npz"


def save_tracks(path: Path, tracks: list[list[PairSample]]) -> None:
    """Write the pairs of one bag's tracks (PairSamples without joints), atomically."""
    pairs = [p for track in tracks for p in track]
    arrays = {"track_sizes": np.array([len(t) for t in tracks], np.int64),
              "src_sizes": np.array([len(p.src) for p in pairs], np.int64),
              "dst_sizes": np.array([len(p.dst) for p in pairs], np.int64),
              "track": np.array([p.track for p in pairs], np.int64),
              "ground": np.array([[p.ground_z_t, p.ground_z_t1] for p in pairs], np.float64).reshape(-1, 2)}
    for name in ("src", "dst", "forward", "backward"):
        arrays[name] = np.concatenate([getattr(p, name) for p in pairs]) if pairs else np.zeros((0, 3), np.float32)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp.npz")
    np.savez(tmp, **arrays)
    os.replace(tmp, path)


def load_tracks(path: Path) -> list[list[PairSample]]:
    """The tracks save_tracks wrote, pair for pair."""
    with np.load(path) as data:
        a = {key: data[key] for key in data.files}
    src_ends, dst_ends = np.cumsum(a["src_sizes"]), np.cumsum(a["dst_sizes"])
    pairs = []
    for i in range(len(a["track"])):
        s0, s1 = src_ends[i] - a["src_sizes"][i], src_ends[i]
        d0, d1 = dst_ends[i] - a["dst_sizes"][i], dst_ends[i]
        pairs.append(PairSample(a["src"][s0:s1], a["dst"][d0:d1], a["forward"][s0:s1], a["backward"][d0:d1],
                                int(a["track"][i]), ground_z_t=float(a["ground"][i, 0]),
                                ground_z_t1=float(a["ground"][i, 1])))
    ends = np.cumsum(a["track_sizes"])
    return [pairs[end - size:end] for size, end in zip(a["track_sizes"], ends, strict=True)]
