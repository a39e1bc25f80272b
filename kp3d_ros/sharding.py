"""Deterministic shares of a list of inputs (bags, sequences) and manifest files listing them.

A share is the round-robin slice ``items[index::count]``: every input lands in exactly one share, the
shares differ in size by at most one, and any process computes every share alone (no coordination),
so Slurm arrays, Kubernetes jobs and torchrun ranks all split a manifest the same way.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")


def parse_shard(spec: str) -> tuple[int, int]:
    """'I/N' -> (I, N) with 0 <= I < N; a ValueError with a one-line reason otherwise."""
    head, sep, tail = str(spec).partition("/")
    try:
        index, count = int(head), int(tail)
    except ValueError:
        index = count = -1
    if not sep or count < 1 or not 0 <= index < count:
        raise ValueError(f"--shard expects I/N with 0 <= I < N (e.g. 0/4), got {spec!r}")
    return index, count


def shard_from_environment() -> tuple[int, int]:
    """(RANK, WORLD_SIZE) as torchrun sets them, (0, 1) outside torchrun."""
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


def share(items: Sequence[T], index: int, count: int) -> list[T]:
    """Share `index` of `count` of `items` (round robin, in the items' order)."""
    if count < 1 or not 0 <= index < count:
        raise ValueError(f"share {index} of {count} does not exist")
    return list(items[index::count])


def read_manifest(path: str | Path) -> list[Path]:
    """The inputs a manifest lists: one path per line (blank lines and '#' comments skipped), relative
    paths taken from the manifest's directory. Every entry must exist and appear once."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"manifest not found: {path}")
    entries: list[tuple[int, Path]] = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        text = line.split("#", 1)[0].strip()
        if text:
            entry = Path(text).expanduser()
            entries.append((number, entry if entry.is_absolute() else path.parent / entry))
    if not entries:
        raise ValueError(f"manifest {path} lists no inputs")
    missing = [f"line {n}: {p}" for n, p in entries if not p.exists()]
    if missing:
        more = f" (and {len(missing) - 3} more)" if len(missing) > 3 else ""
        raise FileNotFoundError(f"manifest {path}: {len(missing)} entries not found: {'; '.join(missing[:3])}{more}")
    seen: dict[Path, int] = {}
    for number, entry in entries:
        first = seen.setdefault(entry.resolve(), number)
        if first != number:
            raise ValueError(f"manifest {path}: line {number} repeats line {first} ({entry})")
    return [entry for _, entry in entries]
