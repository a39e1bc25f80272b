"""Training configs: YAML files over built-in defaults (Stage I and Stage II share this)."""

from __future__ import annotations

import copy
from pathlib import Path

import yaml


def merge(base: dict, override: dict) -> dict:
    """A copy of `base` (sharing nothing with it) with `override`'s entries on top; nested dicts are merged
    key by key."""
    out = copy.deepcopy(base)
    for k, v in (override or {}).items():
        out[k] = merge(base[k], v) if isinstance(v, dict) and isinstance(base.get(k), dict) else v
    return out


def load_config(path: str | Path | None, defaults: dict) -> dict:
    """The YAML file at `path` over `defaults` (just the defaults without a path)."""
    if not path:
        return merge(defaults, {})
    with open(path) as f:
        return merge(defaults, yaml.safe_load(f) or {})
