"""Checkpoints that load with ``torch.load(weights_only=True)``: a state dict plus plain-type config/meta."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import torch

from kp3d_ros.model.network import KeypointNet, build_model
from kp3d_ros.model.preprocess import CENTRE_RULE, DEFAULT_NUM_POINTS, SCALE, check_input_rule
from kp3d_ros.skeleton import JOINT_NAMES, PART_NAMES

FORMAT = "kp3d-checkpoint-1"


def default_meta(num_points: int = DEFAULT_NUM_POINTS) -> dict:
    """Metadata every model carries: what the input and outputs mean."""
    return {
        "num_points": int(num_points),
        "scale": float(SCALE),
        "centre_rule": CENTRE_RULE,
        "joint_names": list(JOINT_NAMES),
        "part_names": list(PART_NAMES),
    }


def save_checkpoint(path: str | Path, model: KeypointNet, meta: dict | None = None, **extra) -> None:
    """Write weights, network config and meta (plain types only) atomically; `extra` (e.g. optimizer
    state, epoch) is stored alongside for resuming."""
    full_meta = default_meta()
    full_meta.update(meta or {})
    payload = {
        "format": FORMAT,
        "config": model.config.to_dict(),
        "meta": full_meta,
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        **extra,
    }
    write_payload(path, payload)


def write_payload(path: str | Path, payload: dict) -> None:
    """Write a checkpoint payload atomically (a temporary file, then a rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(payload, tmp)
    os.replace(tmp, path)


def load_payload(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    payload = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise ValueError(f"{path} is not a kp3d checkpoint (format {FORMAT})")
    return payload


def load_model(path: str | Path) -> tuple[KeypointNet, dict]:
    """The model in eval mode and its meta (num_points, scale, joint and part names, ...)."""
    payload = load_payload(path)
    model = build_model(payload["config"])
    model.load_state_dict(payload["state_dict"])
    model.eval()
    meta = default_meta()
    meta.update(payload.get("meta", {}))
    check_input_rule(meta, path)
    return model, meta


def state_dict_sha256(state_dict: dict) -> str:
    """A digest of the weights (names, shapes and values), stable across saves."""
    digest = hashlib.sha256()
    for name in sorted(state_dict):
        tensor = state_dict[name].detach().cpu().contiguous()
        digest.update(name.encode())
        digest.update(str(tuple(tensor.shape)).encode())
        digest.update(tensor.numpy().tobytes())
    return digest.hexdigest()
