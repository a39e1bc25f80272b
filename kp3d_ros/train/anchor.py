"""The labelled synthetic anchor of Stage II and of online adaptation (a Stage I batch in every step).

``source.data`` is a `kp3d synth` root with a train/ split, or ``cache``: a small labelled split generated once,
on this machine, into the user's cache (kp3d_ros.resources.user_cache_dir: ~/.cache/kp3d_ros/anchor) and reused
by every later run. Nothing is downloaded. The split depends only on its name, size and seed.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import multiprocessing as mp
import os
from pathlib import Path

from kp3d_ros.resources import user_cache_dir

log = logging.getLogger(__name__)

CACHE = "cache"  # the value of source.data that asks for the cached anchor
DEFAULT_SAMPLES = 2048  # about 7 MB of labelled crops
DEFAULT_SPLIT = "stage1"  # a kp3d_ros.synth.cli.SPLIT_CONFIGS name: the source model's own training domain
DEFAULT_SEED = 1


def cached_anchor_root(split: str = DEFAULT_SPLIT, samples: int = DEFAULT_SAMPLES, seed: int = DEFAULT_SEED) -> Path:
    """Where the cached anchor of this split, size and seed lives (a root whose train/ is the data)."""
    return user_cache_dir("anchor") / f"{split}-seed{seed}-n{samples}"


def ensure_cached_anchor(split: str = DEFAULT_SPLIT, samples: int = DEFAULT_SAMPLES, seed: int = DEFAULT_SEED,
                         progress: bool = False) -> Path:
    """The cached anchor's root, generated first when it is not complete (about 30 s per 1,000 samples on one
    core, plus the body model's first load). The generation runs in a child process at the lowest priority, so
    that the caller's threads (the node's perception) keep the interpreter; concurrent callers wait for one
    another; an interrupted generation goes on from its written shards."""
    from kp3d_ros.synth.cli import SPLIT_CONFIGS

    if split not in SPLIT_CONFIGS:
        raise ValueError(f"source.cache_split must be one of {sorted(SPLIT_CONFIGS)}, got {split!r}")
    if samples <= 0:
        raise ValueError(f"source.cache_samples must be positive, got {samples}")
    root = cached_anchor_root(split, samples, seed)
    if (root / "train" / "DONE").is_file():
        return root
    root.mkdir(parents=True, exist_ok=True)
    with open(root / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        if not (root / "train" / "DONE").is_file():
            log.info(f"generating the labelled anchor ({samples} samples of {split}, seed {seed}) into {root}")
            child = mp.get_context("spawn").Process(target=_generate, args=(str(root / "train"), samples, seed,
                                                                            split, progress), daemon=True)
            child.start()
            child.join()
            if child.exitcode != 0 or not (root / "train" / "DONE").is_file():
                raise OSError(f"generating the labelled anchor into {root} failed (exit code {child.exitcode})")
    return root


def _generate(root: str, samples: int, seed: int, split: str, progress: bool) -> None:
    from kp3d_ros.synth.cli import SPLIT_CONFIGS
    from kp3d_ros.synth.dataset import write_dataset
    from kp3d_ros.synth.person import DomainConfig

    with contextlib.suppress(OSError):
        os.nice(19)
    write_dataset(root, samples, seed, DomainConfig.from_dict(SPLIT_CONFIGS[split]), workers=1, progress=progress)


def resolve_source_data(source: dict) -> Path:
    """The root of source.data: the path as given, or the cached anchor (generated when needed) for ``cache``."""
    if str(source["data"]) != CACHE:
        return Path(source["data"])
    return ensure_cached_anchor(str(source.get("cache_split", DEFAULT_SPLIT)),
                                int(source.get("cache_samples", DEFAULT_SAMPLES)),
                                int(source.get("cache_seed", DEFAULT_SEED)))
