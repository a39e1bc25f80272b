"""Deterministic shares of a list of inputs (bags, sequences) and manifest files listing them.

Every input lands in exactly one share, and any process computes every share alone (no coordination),
so Slurm arrays, Kubernetes jobs and torchrun ranks all split a manifest the same way. Inputs of one
size (sequences) are shared round robin (``share``); bags, whose lengths vary, by their size on disk
(``share_by_size``).
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


def share_by_size(items: Sequence[T], sizes: Sequence[int], index: int, count: int) -> list[T]:
    """Share `index` of `count` with the shares' total sizes balanced: from the largest item down (ties in
    list order), each goes to the share with the smallest total so far (ties: the lower share). The
    share's items come back in list order."""
    if count < 1 or not 0 <= index < count:
        raise ValueError(f"share {index} of {count} does not exist")
    if len(sizes) != len(items):
        raise ValueError(f"{len(items)} items but {len(sizes)} sizes")
    totals = [0] * count
    owner = [0] * len(items)
    for i in sorted(range(len(items)), key=lambda i: (-sizes[i], i)):
        owner[i] = min(range(count), key=lambda k: (totals[k], k))
        totals[owner[i]] += sizes[i]
    return [item for item, k in zip(items, owner, strict=True) if k == index]


def size_on_disk(path: str | Path) -> int:
    """Bytes of a file, or of every file under a directory (a bag directory)."""
    path = Path(path)
    if path.is_dir():
        return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    return path.stat().st_size


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
