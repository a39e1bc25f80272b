"""Animated single-person sequences at 10 Hz with the true scene flow of every return.

A return's true forward flow is where the same surface point (triangle id + barycentric
coordinates) lies in the next frame's mesh minus where it lies now; static meshes (ground,
clutter) have zero flow. The backward flow of a frame's returns goes to the previous frame.
Flow of the last frame (forward) and the first frame (backward) is NaN.

On disk: ROOT/meta.json, ROOT/seq_00000.npz ... (all frames of a shard's sequences concatenated),
ROOT/DONE. Sequence i comes from ``np.random.default_rng([seed, i])``.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from kp3d_ros.core.crop import CROP_RADIUS, crop_indices
from kp3d_ros.skeleton import BACKGROUND, pelvis
from kp3d_ros.synth.body import BodyModel, Phenotypes, get_body_model, yaw_transforms
from kp3d_ros.synth.lidar import PRESETS, LidarPreset, Mesh, cast, front_faces, ground_quad, surface_points
from kp3d_ros.synth.motion import ACTIONS, action_motion
from kp3d_ros.synth.person import GROUND_MARGIN, DomainConfig, _clutter_meshes, inflate

RATE_HZ = 10.0
ACTION_WEIGHTS = np.array([0.3, 0.15, 0.15, 0.1, 0.1, 0.1, 0.1])  # in ACTIONS order
SEQ_SHARD_SIZE = 32
_FRAME_KEYS = ("joints", "centre")


@dataclass
class SequenceFrame:
    points: np.ndarray  # (M, 3) float32, sensor frame
    parts: np.ndarray  # (M,) int64
    joints: np.ndarray  # (14, 3) float32
    flow: np.ndarray  # (M, 3) float32, forward true flow (NaN rows on the last frame)
    backward_flow: np.ndarray  # (M, 3) float32, to the previous frame (NaN rows on the first frame)
    centre: np.ndarray  # (3,) crop centre: pelvis xy, ground z


def _frame_meshes(bm: BodyModel, vertices: np.ndarray, sensor_origin: np.ndarray,
                  static: list[Mesh]) -> tuple[list[Mesh], np.ndarray]:
    visible = front_faces(vertices, bm.faces, sensor_origin)
    return [(vertices, bm.faces[visible]), *static], visible


def make_sequence(rng: np.random.Generator, action: str, num_frames: int, preset: LidarPreset, distance: float,
                  config: DomainConfig | None = None, bm: BodyModel | None = None) -> list[SequenceFrame]:
    """One person doing ``action`` for ``num_frames`` frames, starting ``distance`` m from a static sensor.

    The scene has the ground and (with probability config.clutter) static clutter; occluders and
    carried objects of the config are not simulated here.
    """
    if num_frames < 2:
        raise ValueError("a sequence needs at least 2 frames")
    config = config or DomainConfig()
    bm = bm or get_body_model()
    height = rng.uniform(*config.sensor_height_range)
    bearing = rng.uniform(-np.pi, np.pi)
    start = distance * np.array([np.cos(bearing), np.sin(bearing)])
    motion = action_motion(action, num_frames, rng, RATE_HZ, start_xy=start)
    phen = Phenotypes(np.repeat(bm.sample_phenotypes(rng, 1, config.phenotype_ranges).values, num_frames, 0))
    local = bm.pose(phen, motion.poses)
    # Keep the pelvis on the trajectory: root offset so that the rest-pose pelvis xy sits at motion.xy.
    pel0 = pelvis(local.joints[0])[:2]
    c, s = np.cos(motion.yaw), np.sin(motion.yaw)
    shift = np.stack([c * pel0[0] - s * pel0[1], s * pel0[0] + c * pel0[1]], -1)
    transforms = yaw_transforms(motion.yaw, np.c_[motion.xy - shift, np.zeros(num_frames)])
    amount = rng.uniform(*config.inflate_range)
    verts = local.vertices
    if amount:
        verts = np.stack([inflate(v, bm.faces, amount) for v in verts])
    verts = (np.einsum("tij,tvj->tvi", transforms[:, :3, :3], verts) + transforms[:, None, :3, 3]).astype(np.float32)
    joints = (np.einsum("tij,tkj->tki", transforms[:, :3, :3], local.joints) + transforms[:, None, :3, 3])
    lo, hi = motion.xy.min(0) - CROP_RADIUS - 0.5, motion.xy.max(0) + CROP_RADIUS + 0.5
    static: list[Mesh] = [ground_quad((lo[0], hi[0]), (lo[1], hi[1]))]
    if rng.random() < config.clutter:
        static += _clutter_meshes(rng, motion.xy.mean(0), start / distance)
    origin = np.array([0.0, 0.0, height])
    offset = np.array([0.0, 0.0, height], dtype=np.float32)

    hits, visibles, centres, keeps = [], [], [], []
    for t in range(num_frames):
        meshes, visible = _frame_meshes(bm, verts[t], origin, static)
        centre = pelvis(joints[t])[:2]
        az = np.arctan2(centre[1], centre[0])
        spread = np.arctan2(CROP_RADIUS + 0.2, max(np.linalg.norm(centre), 1.0))
        h = cast(meshes, preset, height, rng, azimuth_window=(az - spread, az + spread),
                 range_noise_std=config.range_noise_std, dropout=config.dropout)
        hits.append(h)
        visibles.append(visible)
        centres.append(centre)
        keeps.append(crop_indices(h.points, centre, -height - GROUND_MARGIN))

    frames = []
    for t in range(num_frames):
        h, keep = hits[t], keeps[t]
        is_body = h.mesh_id[keep] == 0
        tri = visibles[t][np.where(is_body, h.triangle_id[keep], 0)]
        bary = h.barycentric[keep]
        here = surface_points(verts[t], bm.faces, tri, bary)
        flows = []
        for other in (t + 1, t - 1):
            flow = np.full((len(keep), 3), np.nan, dtype=np.float32)
            if 0 <= other < num_frames:
                flow[:] = 0.0
                moved = surface_points(verts[other], bm.faces, tri, bary) - here
                flow[is_body] = moved[is_body]
            flows.append(flow)
        frames.append(SequenceFrame(
            points=h.points[keep],
            parts=np.where(is_body, bm.face_parts[tri], BACKGROUND).astype(np.int64),
            joints=(joints[t] - offset).astype(np.float32),
            flow=flows[0], backward_flow=flows[1],
            centre=np.array([centres[t][0], centres[t][1], -height], dtype=np.float32)))
    return frames


def _seq_path(root: Path, shard: int) -> Path:
    return Path(root) / f"seq_{shard:05d}.npz"


def _write_seq_shard(task: tuple[str, int, int, int, int, int, dict]) -> int:
    root, shard, start, stop, frames_per, seed, config_dict = task
    path = _seq_path(Path(root), shard)
    if path.exists():
        return stop - start
    import torch

    torch.set_num_threads(1)
    bm = get_body_model()
    config = DomainConfig.from_dict(config_dict)
    all_frames, actions, presets, distances = [], [], [], []
    for i in range(start, stop):
        rng = np.random.default_rng([seed, i])
        action = ACTIONS[rng.choice(len(ACTIONS), p=ACTION_WEIGHTS)]
        preset = config.presets[rng.integers(len(config.presets))]
        distance = rng.uniform(max(3.0, config.distance_range[0]), min(25.0, config.distance_range[1]))
        all_frames += make_sequence(rng, action, frames_per, PRESETS[preset], distance, config, bm)
        actions.append(ACTIONS.index(action))
        presets.append(list(PRESETS).index(preset))
        distances.append(distance)
    counts = np.array([len(f.points) for f in all_frames])
    data = {
        "offsets": np.concatenate([[0], np.cumsum(counts)]).astype(np.int64),
        "points": np.concatenate([f.points for f in all_frames]).astype(np.float32),
        "parts": np.concatenate([f.parts for f in all_frames]).astype(np.uint8),
        "flow": np.concatenate([f.flow for f in all_frames]).astype(np.float32),
        "backward_flow": np.concatenate([f.backward_flow for f in all_frames]).astype(np.float32),
        "joints": np.stack([f.joints for f in all_frames]),
        "centre": np.stack([f.centre for f in all_frames]),
        "action_id": np.array(actions, dtype=np.uint8),
        "preset_id": np.array(presets, dtype=np.uint8),
        "distance": np.array(distances, dtype=np.float32),
    }
    tmp = path.with_suffix(".tmp.npz")
    np.savez(tmp, **data)
    os.replace(tmp, path)
    return stop - start


def write_sequences(root: str | Path, num_sequences: int, frames_per_sequence: int, seed: int,
                    config: DomainConfig | None = None, workers: int = 1, shard_size: int = SEQ_SHARD_SIZE,
                    progress: bool = True) -> Path:
    """Write ``num_sequences`` sequences of ``frames_per_sequence`` frames; root/DONE when complete."""
    if num_sequences <= 0 or frames_per_sequence < 2 or shard_size <= 0:
        raise ValueError("need num_sequences > 0, frames_per_sequence >= 2 and shard_size > 0")
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    config = config or DomainConfig()
    meta = {"num_sequences": num_sequences, "frames_per_sequence": frames_per_sequence, "seed": seed,
            "shard_size": shard_size, "rate_hz": RATE_HZ, "config": config.to_dict(), "actions": list(ACTIONS),
            "preset_names": list(PRESETS)}
    meta_path = root / "meta.json"
    if meta_path.exists() and json.loads(meta_path.read_text()) != meta:
        raise ValueError(f"{root} holds different sequences (meta.json differs); use another directory")
    meta_path.write_text(json.dumps(meta, indent=1))
    tasks = [(str(root), k, a, min(num_sequences, a + shard_size), frames_per_sequence, seed, config.to_dict())
             for k, a in enumerate(range(0, num_sequences, shard_size))]
    bar = tqdm(total=num_sequences, desc=f"sequences {root.name}", unit="seq", disable=not progress)
    if workers <= 1:
        for task in tasks:
            bar.update(_write_seq_shard(task))
    else:
        with mp.get_context("spawn").Pool(workers) as pool:
            for done in pool.imap_unordered(_write_seq_shard, tasks):
                bar.update(done)
    bar.close()
    (root / "DONE").write_text(json.dumps({"num_sequences": num_sequences, "num_shards": len(tasks)}) + "\n")
    return root


class SequenceDataset:
    """Sequences written by ``write_sequences``; item i is a list of SequenceFrame."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        meta_path = self.root / "meta.json"
        if not meta_path.exists():
            raise FileNotFoundError(f"no sequences at {self.root} (meta.json missing)")
        self.meta = json.loads(meta_path.read_text())
        self.complete = (self.root / "DONE").exists()
        self.frames_per_sequence = int(self.meta["frames_per_sequence"])
        self.shard_size = int(self.meta["shard_size"])
        self._shard_index, self._shard = -1, {}

    def __len__(self) -> int:
        return int(self.meta["num_sequences"])

    def action(self, index: int) -> str:
        data = self._load(index // self.shard_size)
        return self.meta["actions"][int(data["action_id"][index % self.shard_size])]

    def _load(self, k: int) -> dict[str, np.ndarray]:
        if k != self._shard_index:
            with np.load(_seq_path(self.root, k)) as data:
                self._shard = {key: data[key] for key in data.files}
            self._shard_index = k
        return self._shard

    def __getitem__(self, index: int) -> list[SequenceFrame]:
        if not 0 <= index < len(self):
            raise IndexError(index)
        data = self._load(index // self.shard_size)
        first = (index % self.shard_size) * self.frames_per_sequence
        frames = []
        for f in range(first, first + self.frames_per_sequence):
            a, b = data["offsets"][f], data["offsets"][f + 1]
            frames.append(SequenceFrame(points=data["points"][a:b], parts=data["parts"][a:b].astype(np.int64),
                                        joints=data["joints"][f], flow=data["flow"][a:b],
                                        backward_flow=data["backward_flow"][a:b], centre=data["centre"][f]))
        return frames
