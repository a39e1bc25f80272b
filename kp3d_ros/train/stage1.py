"""Stage I: supervised warm-up on synthetic people (`kp3d train stage1 --config config/stage1.yaml`).

Loss: L_syn = w_kp * L_kp + w_seg * L_seg (0.5 and 1.0), L_kp the mean L2 distance between predicted
and true joints (metres), L_seg the per-point cross-entropy. AdamW with cosine decay; each training
sample gets the data set's augmentations (kp3d_ros.synth.augment, random yaw included) before
resampling to N points.

Under torchrun each global batch of train.batch_size samples is split across the ranks
(train.sample_seeding: each sample seeded on its own, so the split does not change the samples) and
DistributedDataParallel averages the gradients.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional

from kp3d_ros.model.checkpoint import default_meta, load_model
from kp3d_ros.model.network import KeypointNet, build_model, count_parameters, load_deepened
from kp3d_ros.model.preprocess import SCALE, crop_frame, sample_indices, to_crop_frame
from kp3d_ros.train.config import load_config as load_yaml_config
from kp3d_ros.train.config import merge
from kp3d_ros.train.distributed import SINGLE, Ranks, process_group, training_device
from kp3d_ros.train.loop import FitConfig, fit

DEFAULTS: dict = {
    "data": "data/stage1",
    "out": "runs/stage1",
    "num_points": 128,
    "seed": 0,
    "threads": 1,
    "device": "cpu",  # cpu, cuda (under torchrun: the GPU of LOCAL_RANK) or auto
    "init": None,  # checkpoint to start from (fresh optimizer and lr schedule: a warm restart)
    "extra_train": [],  # more training split directories, mixed in with DATA/train (their sizes set the shares)
    "model": {"dim": 64, "depth": 3, "heads": 4, "mlp_ratio": 2},
    "train": {"epochs": 20, "steps_per_epoch": 250, "batch_size": 32, "lr": 2.0e-3, "weight_decay": 0.05,
              "warmup_steps": 200, "w_kp": 0.5, "w_seg": 1.0, "max_minutes": 45.0, "grad_clip": 1.0,
              # stream: one random stream through the epoch (one process only); per_sample: each sample
              # seeded on its own, which any number of ranks split alike; auto: stream in one process
              "sample_seeding": "auto"},
    "val": {"max_samples": 1024, "batch_size": 64},
    "augment": {},  # kp3d_ros.synth.augment.AugmentConfig fields (its defaults where missing)
    "sensor_augment": {"thin_scan_lines": 0.0},  # probability, spacing_deg, tolerance_deg (thin_scan_lines)
}


def load_config(path: str | Path | None) -> dict:
    """The YAML config at `path` over DEFAULTS."""
    return load_yaml_config(path, DEFAULTS)


# --- samples --------------------------------------------------------------------------------------


MIN_POINTS_AFTER_AUGMENT = 5


def thin_scan_lines(sample: dict, rng: np.random.Generator, spacing_deg: tuple[float, float] = (0.6, 2.2),
                    tolerance_deg: float = 0.18) -> dict:
    """Emulate a LiDAR with fewer beams: keep only the points whose elevation angle (seen from the sensor
    at the origin of the sample's frame) lies near a coarser, randomly offset grid of beam angles."""
    points = sample["points"]
    elevation = np.degrees(np.arctan2(points[:, 2], np.hypot(points[:, 0], points[:, 1])))
    spacing = rng.uniform(*spacing_deg)
    phase = np.mod(elevation - rng.uniform(0, spacing), spacing)
    keep = np.minimum(phase, spacing - phase) < tolerance_deg
    if keep.sum() < MIN_POINTS_AFTER_AUGMENT:
        return sample
    return sample | {"points": points[keep], "parts": sample["parts"][keep]}


def make_augmenter(cfg: dict, sensor_cfg: dict | None = None) -> Callable[[dict, np.random.Generator], dict]:
    """Scan-line thinning (probability sensor_cfg['thin_scan_lines'], on the raw sensor-frame sample), then
    the data set's augmentation pipeline (kp3d_ros.synth.augment: ground, clutter, drop part, random crop,
    downsample, random yaw, scale, noise) with the config's `augment` section as AugmentConfig."""
    from kp3d_ros.synth.augment import AugmentConfig, augment

    fields = {k: tuple(v) if isinstance(v, list) else v for k, v in cfg.items()}
    config = AugmentConfig(**fields)
    sensor_cfg = dict(sensor_cfg or {})
    thin_prob = float(sensor_cfg.pop("thin_scan_lines", 0.0))
    thin_args = {k: tuple(v) if isinstance(v, list) else v for k, v in sensor_cfg.items()}

    def apply(sample: dict, rng: np.random.Generator) -> dict:
        out = sample
        if thin_prob and rng.random() < thin_prob:
            out = thin_scan_lines(out, rng, **thin_args)
        out = augment(out, rng, config)
        return out if len(out["points"]) >= MIN_POINTS_AFTER_AUGMENT else sample

    return apply


def to_example(sample: dict, num_points: int, rng: np.random.Generator) -> tuple[np.ndarray, ...]:
    """Network input (N, 3), target joints (J, 3), target parts (N,), all in the crop's frame, and whether
    the crop holds a person (a crop of clutter alone has no joints to learn; its parts are background)."""
    points = np.asarray(sample["points"], np.float32)
    idx = sample_indices(len(points), num_points, rng)
    centre, rotation = crop_frame(points)
    return (to_crop_frame(points[idx], centre, rotation),
            to_crop_frame(np.asarray(sample["joints"], np.float32), centre, rotation),
            np.asarray(sample["parts"], np.int64)[idx], np.float32(sample.get("is_person", 1)))


def collate(examples: list[tuple[np.ndarray, ...]]) -> tuple[torch.Tensor, ...]:
    pts, joints, parts, is_person = zip(*examples, strict=True)
    return (torch.from_numpy(np.stack(pts).astype(np.float32)), torch.from_numpy(np.stack(joints).astype(np.float32)),
            torch.from_numpy(np.stack(parts)), torch.from_numpy(np.array(is_person, np.float32)))


def available_indices(dataset) -> np.ndarray:
    """Indices of the samples that can be read now: a split still being generated (no DONE file)
    offers the shards already written, so training can start early and sees more data each epoch."""
    if hasattr(dataset, "parts"):  # a ConcatDataset
        return np.concatenate([available_indices(p) + int(o)
                               for p, o in zip(dataset.parts, dataset.offsets, strict=False)])
    root = getattr(dataset, "root", None)
    if root is None or (Path(root) / "DONE").exists():
        return np.arange(len(dataset))
    from kp3d_ros.synth.dataset import shard_path

    size, total = dataset.shard_size, len(dataset)
    ready = [np.arange(k * size, min(total, (k + 1) * size))
             for k in range(-(-total // size)) if shard_path(dataset.root, k).exists()]
    if not ready:
        raise FileNotFoundError(f"no shard written yet in {dataset.root}")
    return np.concatenate(ready)


def training_batches(dataset, cfg: dict, epoch: int, augmenter=None) -> Iterator[tuple[torch.Tensor, ...]]:
    """`steps_per_epoch` augmented batches, samples drawn without replacement (reshuffled when used up)."""
    tcfg = cfg["train"]
    rng = np.random.default_rng([cfg["seed"], epoch])
    pool = available_indices(dataset)
    order = rng.permutation(pool)
    pos = 0
    for _ in range(tcfg["steps_per_epoch"]):
        examples = []
        for _ in range(tcfg["batch_size"]):
            if pos == len(order):
                order, pos = rng.permutation(pool), 0
            sample = dataset[int(order[pos])]
            sample = augmenter(sample, rng) if augmenter else sample
            pos += 1
            if len(sample["points"]) == 0:
                continue
            examples.append(to_example(sample, cfg["num_points"], rng))
        if examples:
            yield collate(examples)


def split_batches(dataset, cfg: dict, epoch: int, augmenter=None, ranks: Ranks = SINGLE
                  ) -> Iterator[tuple[torch.Tensor, ...]]:
    """`steps_per_epoch` batches of this rank's slice of each global batch of train.batch_size samples.
    Position p of the epoch (step * batch_size + slot) reads the sample at p of a permutation of the
    pool (a new one each time the pool is used up) and is augmented with default_rng([seed, epoch, p]),
    so the ranks together see exactly the samples one process sees; rank r takes the r-th contiguous
    slice of every batch."""
    tcfg = cfg["train"]
    batch_size = int(tcfg["batch_size"])
    per_rank = ranks.per_rank(batch_size, "train.batch_size")
    pool = ranks.gathered(available_indices(dataset))[0]  # rank 0's view of a split still being written
    orders: dict[int, np.ndarray] = {}
    for step in range(tcfg["steps_per_epoch"]):
        examples = []
        for slot in range(ranks.rank * per_rank, (ranks.rank + 1) * per_rank):
            position = step * batch_size + slot
            cycle, offset = divmod(position, len(pool))
            if cycle not in orders:
                orders = {cycle: np.random.default_rng([cfg["seed"], epoch, cycle]).permutation(pool)}
            rng = np.random.default_rng([cfg["seed"], epoch, position])
            sample = dataset[int(orders[cycle][offset])]
            sample = augmenter(sample, rng) if augmenter else sample
            if len(sample["points"]):
                examples.append(to_example(sample, cfg["num_points"], rng))
        if not examples:  # every rank must take each step together
            raise ValueError(f"rank {ranks.rank}: every sample of step {step} of epoch {epoch} is empty")
        yield collate(examples)


def batch_source(dataset, cfg: dict, augmenter, ranks: Ranks) -> Callable[[int], Iterator]:
    """epoch -> training batches, as train.sample_seeding says (auto: stream in one process)."""
    seeding = cfg["train"].get("sample_seeding", "auto")
    if seeding == "auto":
        seeding = "per_sample" if ranks.distributed else "stream"
    if seeding == "per_sample":
        ranks.per_rank(int(cfg["train"]["batch_size"]), "train.batch_size")  # say so before the first step
        return lambda epoch: split_batches(dataset, cfg, epoch, augmenter, ranks)
    if seeding != "stream":
        raise ValueError(f"train.sample_seeding must be auto, stream or per_sample, got {seeding!r}")
    if ranks.distributed:
        raise ValueError("train.sample_seeding stream runs in one process; use per_sample (or auto) under torchrun")
    return lambda epoch: training_batches(dataset, cfg, epoch, augmenter)


def fixed_batches(dataset, num_points: int, max_samples: int, batch_size: int, seed: int = 1234) -> list:
    """Deterministic, unaugmented batches (validation), with per-sample point counts."""
    rng = np.random.default_rng(seed)
    count = min(len(dataset), max_samples)
    chosen = np.sort(rng.choice(len(dataset), size=count, replace=False)) if count < len(dataset) else range(count)
    examples = []
    for i in chosen:
        sample = dataset[int(i)]
        if len(sample["points"]) == 0:
            continue
        examples.append(to_example(sample, num_points, rng))
    return [collate(examples[s : s + batch_size]) for s in range(0, len(examples), batch_size)]


# --- loss -----------------------------------------------------------------------------------------


def stage1_losses(model: KeypointNet, points, joints, parts, is_person, w_kp: float, w_seg: float
                  ) -> dict[str, torch.Tensor]:
    """L_syn over a batch; the keypoint term over the crops that hold a person (is_person, (B,))."""
    keypoints, logits = model(points)
    per_crop = (keypoints - joints).norm(dim=-1).mean(-1)
    l_kp = (per_crop * is_person).sum() / is_person.sum().clamp(min=1.0)
    l_seg = functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), parts.reshape(-1))
    return {"loss": w_kp * l_kp + w_seg * l_seg, "l_kp": l_kp, "l_seg": l_seg, "keypoints": keypoints,
            "logits": logits}


def validation(model: KeypointNet, batches: list, w_kp: float, w_seg: float, ranks: Ranks = SINGLE
               ) -> dict[str, float]:
    """Loss, MPJPE (cm, over the crops that hold a person) and segmentation accuracy over `batches`.
    Distributed, each rank takes every world_size-th batch and the sums are added over the ranks."""
    tot = {"val_loss": 0.0, "val_mpjpe_cm": 0.0, "val_seg_acc": 0.0}
    n = people = 0.0
    device = next(model.parameters()).device
    for batch in batches[ranks.rank::ranks.world_size]:
        points, joints, parts, is_person = (t.to(device) for t in batch)
        out = stage1_losses(model, points, joints, parts, is_person, w_kp, w_seg)
        b, p = len(points), float(is_person.sum())
        tot["val_loss"] += float(out["loss"]) * b
        tot["val_mpjpe_cm"] += float(out["l_kp"]) * 100 * SCALE * p
        tot["val_seg_acc"] += float((out["logits"].argmax(-1) == parts).float().mean()) * b
        n, people = n + b, people + p
    if ranks.distributed:
        *sums, n, people = ranks.summed([*tot.values(), n, people])
        tot = dict(zip(tot, sums, strict=True))
    return {k: v / max(people if k == "val_mpjpe_cm" else n, 1) for k, v in tot.items()}


# --- command ---------------------------------------------------------------------------------------


def open_split(root: Path, split: str):
    from kp3d_ros.synth.dataset import ShardedDataset

    path = root / split
    if not path.is_dir():
        raise FileNotFoundError(f"no {split} split at {path}")
    if not (path / "DONE").exists():
        print(f"warning: {path} has no DONE file; the split may be incomplete")
    return ShardedDataset(path, cache_shards=1 << 20)  # keep every shard once read (a few hundred MB)


def run(cfg: dict, resume: bool = False, log=print, ranks: Ranks = SINGLE) -> dict:
    torch.set_num_threads(int(cfg["threads"]))
    torch.manual_seed(cfg["seed"])
    root = Path(cfg["data"])
    train_set, val_set = open_split(root, "train"), open_split(root, "val")
    if cfg.get("extra_train"):
        from kp3d_ros.synth.dataset import ConcatDataset

        train_set = ConcatDataset([train_set] + [open_split(Path(p).parent, Path(p).name) for p in cfg["extra_train"]])
    tcfg = cfg["train"]
    model = build_model(cfg["model"])
    if cfg.get("init") and not resume:
        init_from(model, cfg, log)
    device = training_device(cfg.get("device", "cpu"))
    model.to(device)
    log(f"{datetime.now():%H:%M:%S} stage1: {len(available_indices(train_set))} of {len(train_set)} train samples "
        f"written / {len(val_set)} val, "
        f"{count_parameters(model)} parameters, config {cfg}")
    optimizer = torch.optim.AdamW(model.parameters(), lr=tcfg["lr"], weight_decay=tcfg["weight_decay"])
    val_batches = fixed_batches(val_set, cfg["num_points"], cfg["val"]["max_samples"], cfg["val"]["batch_size"])
    augmenter = make_augmenter(cfg["augment"], cfg.get("sensor_augment"))
    batches = batch_source(train_set, cfg, augmenter, ranks)
    net = ranks.wrap(model)
    if ranks.distributed:
        log(f"torchrun: {ranks.world_size} processes, {tcfg['batch_size'] // ranks.world_size} samples each per step")

    def step(batch) -> dict[str, float]:
        out = stage1_losses(net, *(t.to(device) for t in batch), tcfg["w_kp"], tcfg["w_seg"])
        loss = out["loss"]
        if ranks.distributed:  # the keypoint term averaged over the global batch's people, as in one process
            people = float(batch[3].sum())
            share = ranks.world_size * people / max(ranks.summed([people])[0], 1.0)
            loss = loss + tcfg["w_kp"] * (share - 1.0) * out["l_kp"]
        loss.backward()
        return {"loss": out["loss"].item(), "l_kp": out["l_kp"].item(), "l_seg": out["l_seg"].item()}

    budget = 60 * tcfg["max_minutes"] if tcfg.get("max_minutes") else None
    fit_cfg = FitConfig(epochs=tcfg["epochs"], steps_per_epoch=tcfg["steps_per_epoch"], lr=tcfg["lr"],
                        warmup_steps=tcfg["warmup_steps"], out_dir=cfg["out"], monitor="val_mpjpe_cm",
                        time_budget_s=budget, grad_clip=tcfg["grad_clip"], resume=resume)
    meta = default_meta(cfg["num_points"]) | {"stage": "stage1", "train_samples": len(train_set),
                                              "data": str(root), "extra_train": ",".join(cfg.get("extra_train", []))}
    result = fit(model, optimizer, fit_cfg, batches, step,
                 lambda: validation(model, val_batches, tcfg["w_kp"], tcfg["w_seg"], ranks), meta, log, ranks)
    log(f"done: {result}")
    return {"result": result, "out": cfg["out"]}


def init_from(model: KeypointNet, cfg: dict, log=print) -> None:
    """Load the weights of checkpoint cfg['init'] into `model`; its architecture and N must match, except
    that the config may ask for more blocks (model.network.load_deepened: the extra ones start as the
    identity)."""
    source, meta = load_model(cfg["init"])
    if int(meta.get("num_points", cfg["num_points"])) != int(cfg["num_points"]):
        raise ValueError(f"--init {cfg['init']} was trained with num_points {meta.get('num_points')}, "
                         f"the config says {cfg['num_points']}")
    if source.config.depth < model.config.depth:
        added = load_deepened(model, source)
        log(f"initialised from {cfg['init']} with {added} identity block(s) added (depth "
            f"{source.config.depth} -> {model.config.depth})")
        return
    try:
        model.load_state_dict(source.state_dict())
    except RuntimeError as exc:
        raise ValueError(f"--init {cfg['init']} does not match the config's model {cfg['model']}: {exc}") from exc
    log(f"initialised from {cfg['init']}")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", default="config/stage1.yaml", help="YAML config (defaults for missing keys)")
    parser.add_argument("--data", help="data root with train/ and val/ splits (overrides the config)")
    parser.add_argument("--out", help="run directory (overrides the config)")
    parser.add_argument("--resume", action="store_true", help="continue from OUT/last.pt")
    parser.add_argument("--init", help="start from this checkpoint's weights (new optimizer and lr schedule)")
    parser.add_argument("--epochs", type=int, help="override train.epochs")
    parser.add_argument("--lr", type=float, help="override train.lr (peak learning rate)")
    parser.add_argument("--max-minutes", type=float, help="override train.max_minutes (wall-clock budget)")
    parser.add_argument("--device", choices=("cpu", "cuda", "auto"), help="training device (overrides the config)")


def main(args: argparse.Namespace) -> int:
    cfg = load_config(args.config if args.config and Path(args.config).is_file() else None)
    if args.config and not Path(args.config).is_file():
        print(f"warning: config {args.config} not found, using defaults")
    cfg = merge(cfg, {k: v for k, v in {"data": args.data, "out": args.out, "init": args.init,
                                        "device": args.device}.items() if v})
    given = {"epochs": args.epochs, "max_minutes": args.max_minutes, "lr": args.lr}
    overrides = {k: v for k, v in given.items() if v is not None}
    cfg["train"] = cfg["train"] | overrides
    try:
        with process_group(training_device(cfg["device"])) as ranks:
            run(cfg, resume=args.resume, log=ranks.log(print), ranks=ranks)
    except (FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}")
        return 1
    return 0
