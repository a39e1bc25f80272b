"""Stage II: unsupervised refinement on unlabelled sequences (`kp3d train stage2`).

  kp3d train stage2 --init models/kp3d_stage1.pt --data DATA --out runs/stage2 [--config config/stage2.yaml]

DATA is a synthetic sequence directory (kp3d_ros.synth.sequence; labels are not used for training) or
one or more bags with /points (frames read with core.bagio, people detected, tracked and cropped by
core.pipeline.PerceptionPipeline.track). Consecutive crops of one track form a pair; scene flow comes
from core.flow (real-time estimator), flow_offline (NSFP-style optimisation, cached) or, for synthetic
data only, the true flow ("truth": an oracle ablation). Loss: losses.stage2_loss with the config's
weights; segmentation pseudo-labels from the frozen initial model ("confident") or the nearest predicted
limb ("nearest_limb"). Validation: the unsupervised loss on held-out pairs (monitored) and, where
labels exist, MPJPE (reported only, never used for selection). At the end the run writes OUT/selected.pt:
the source model or the round that is below it on every label-free signal of train.selection (held-out
pairs). A chosen round is bone-calibrated when calibrate_bones asks and the factors are plausible (otherwise
skipped with a warning); the source model is written as it came. OUT/selection.json and OUT/selection.md
say which and why.

Under torchrun each rank extracts the pairs of its share of the sequences or bags (kp3d_ros.sharding),
holds out its own validation tracks, draws its train.batch_size / world_size pairs per step from its own
tracks and its own labelled source batches, and DistributedDataParallel averages the gradients; the
validation losses and the selection signals are averaged over the ranks. Every rank makes the same choice;
rank 0 alone calibrates, evaluates and writes.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import dataclasses
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

import numpy as np
import torch
import yaml

from kp3d_ros import losses
from kp3d_ros.core.flow import FlowEstimator
from kp3d_ros.model.calibration import ImplausibleCalibrationError, matched_scale
from kp3d_ros.model.checkpoint import load_model, load_payload, save_checkpoint, write_payload
from kp3d_ros.model.preprocess import SCALE, prepare_batch, restore_keypoints
from kp3d_ros.sharding import read_manifest, share, share_by_size, size_on_disk
from kp3d_ros.skeleton import BONE_NAMES
from kp3d_ros.train import anchor, selection, stage1
from kp3d_ros.train.config import load_config as load_yaml_config
from kp3d_ros.train.config import merge
from kp3d_ros.train.distributed import SINGLE, Ranks, process_group, training_device
from kp3d_ros.train.loop import FitConfig, fit
from kp3d_ros.train.pairs import PairSample, batch_on, collate_pairs

GROUND_THRESHOLD = 0.08  # m above the crop's ground: points below are ground (as the node removes them)

DEFAULTS: dict = {
    "init": "models/kp3d_stage1.pt",
    "data": "data/stage2/target_train",
    "out": "runs/stage2",
    "seed": 0,
    "threads": 1,  # on the shared 2-core machine 1 thread trains faster
    "device": "cpu",  # cpu, cuda (under torchrun: the GPU of LOCAL_RANK) or auto
    "max_sequences": 0,  # 0: all
    "val_sequences": 16,  # held out from DATA for the unsupervised validation loss
    "keep_ground": True,  # crops keep their ground points, as the node's crops do
    "pairs_cache": "",  # a directory: the pairs of each bag are kept there and loaded by later runs (train.pair_cache)
    "flow": {"method": "realtime", "iterations": 5, "cache_dir": ""},
    "loss": dataclasses.asdict(losses.LossWeights()),  # method.md's weights (losses.LossWeights)
    "seg_target": "confident",  # confident | nearest_limb | none
    "confidence": 0.9,
    "train": {"epochs": 4, "steps_per_epoch": 50, "batch_size": 16, "pairs_per_track": 2, "lr": 1.0e-4,
              "weight_decay": 0.0, "warmup_steps": 10, "max_minutes": 15.0, "grad_clip": 1.0,
              "ema_decay": 0.0},  # > 0: each round saves and hands on a moving average of its weights
    "rounds": 1,  # rounds of Stage II, each from the previous round's model and with its pseudo-labels
    # After the last round, scale each bone so that the mean bone lengths on DATA match the labelled source
    # population's (model.calibration; the population from loss.bone_prior_lengths or source.data).
    "calibrate_bones": False,
    "calibrate_max_factor": 1.0,  # 1: calibration only shortens bones (model.calibration.matched_scale)
    "eval": {"data": "", "max_sequences": 0},  # labelled sequences for the MPJPE report
    # Labelled synthetic (source) batches mixed into every step with this weight x the Stage I loss, which
    # anchors the network while the unsupervised losses adapt it; 0 or no data: off.
    # source.data: a `kp3d synth` root, or "cache": cache_samples of the cache_split generated once into the user's
    # cache (kp3d_ros.train.anchor), so that the node's adapter needs no data on disk.
    "source": {"data": "", "weight": 0.0, "batch_size": 16, "config": "config/stage1.yaml",
               "cache_split": anchor.DEFAULT_SPLIT, "cache_samples": anchor.DEFAULT_SAMPLES,
               "cache_seed": anchor.DEFAULT_SEED},
}


def load_config(path: str | Path | None) -> dict:
    """The YAML config at `path` over DEFAULTS."""
    return load_yaml_config(path, DEFAULTS)


# -- data -----------------------------------------------------------------------------------------
def flow_function(cfg: dict):
    """(src, dst, init_translation) -> forward flow, for the configured method (not 'truth')."""
    method = cfg["flow"]["method"]
    realtime = FlowEstimator(iterations=int(cfg["flow"]["iterations"]))
    if method == "realtime":
        return realtime.estimate
    if method == "offline":
        from kp3d_ros.flow_offline import FlowCache, NeuralFlowOptimizer

        optimiser = NeuralFlowOptimizer(iterations=150)
        cache_dir = cfg["flow"]["cache_dir"] or str(Path(cfg["out"]) / "flow_cache")
        cache = FlowCache(cache_dir, "nsfp-warm-150")

        def offline(src, dst, init):
            return cache.get_or_compute(src, dst, lambda a, b: optimiser.estimate(a, b, realtime.estimate(a, b, init)))

        return offline
    raise ValueError(f"unknown flow method {method!r} (realtime, offline, truth)")


def above_ground(points: np.ndarray, ground_z: float) -> np.ndarray:
    return points[:, 2] >= ground_z + GROUND_THRESHOLD


def crop_ground_z(points: np.ndarray) -> float:
    """The node's ground estimate (core.ground with the node's default parameters) under a crop's mean
    point: what loss.ground_prior gets on synthetic sequences, as on bags, instead of the true ground."""
    from kp3d_ros.core.ground import segment_ground
    from kp3d_ros.core.params import defaults

    p = defaults()
    ground = segment_ground(points, p["ground.cell_size"], p["ground.clearance"], p["roi.max_range"])
    return float(ground.grid.height_at(points[:, :2].mean(0, keepdims=True))[0])


def sequence_pairs(frames: list, track: int, flow_fn, keep_ground: bool = True,
                   min_points: int = 20, estimate_ground: bool = False) -> list[PairSample]:
    """Pairs of consecutive frames of one synthetic sequence (flow_fn None: the true flow).

    Flow is estimated on the points above the ground only; ground points (kept in the crop when
    keep_ground, as the node's crops keep them) get zero flow: the ground does not move. With
    estimate_ground the pairs carry the ground height under each crop (for loss.ground_prior): the node's
    estimate from the crop's points (crop_ground_z), once per frame; otherwise it is unknown (NaN).
    """
    grounds = [crop_ground_z(f.points) if estimate_ground else float("nan") for f in frames]
    out: list[PairSample] = []
    previous_centroid = None
    for t in range(len(frames) - 1):
        a, b = frames[t], frames[t + 1]
        up_a, up_b = above_ground(a.points, float(a.centre[2])), above_ground(b.points, float(b.centre[2]))
        if up_a.sum() < min_points or up_b.sum() < min_points:
            previous_centroid = None
            continue
        centroid = a.points[up_a].mean(0)
        if flow_fn is None:
            fwd, bwd = a.flow.copy(), b.backward_flow.copy()
        else:
            init = None if previous_centroid is None else centroid - previous_centroid
            fwd = np.zeros_like(a.points)
            bwd = np.zeros_like(b.points)
            fwd[up_a] = flow_fn(a.points[up_a], b.points[up_b], init)
            bwd[up_b] = flow_fn(b.points[up_b], a.points[up_a], None if init is None else -init)
        previous_centroid = centroid
        src, dst = a.points, b.points
        if not keep_ground:
            src, dst, fwd, bwd = src[up_a], dst[up_b], fwd[up_a], bwd[up_b]
        out.append(PairSample(src, dst, fwd, bwd, track, a.joints, b.joints, grounds[t], grounds[t + 1]))
    return out


def load_sequence_pairs(root: str | Path, cfg: dict, log=print, ranks: Ranks = SINGLE) -> list[list[PairSample]]:
    """Pairs per sequence from a SequenceDataset directory (this rank's share of its sequences)."""
    from kp3d_ros.synth.sequence import SequenceDataset

    data = SequenceDataset(root)
    count = len(data) if not cfg["max_sequences"] else min(len(data), int(cfg["max_sequences"]))
    flow_fn = None if cfg["flow"]["method"] == "truth" else flow_function(cfg)
    per_sequence = []
    for i in share(range(count), ranks.rank, ranks.world_size):
        try:
            frames = data[i]
        except FileNotFoundError:  # shard not written yet (data still being generated)
            continue
        per_sequence.append(sequence_pairs(frames, i, flow_fn, keep_ground=bool(cfg["keep_ground"]),
                                           estimate_ground=bool(cfg["loss"].get("ground_prior"))))
    log(f"{datetime.now():%H:%M:%S} {sum(map(len, per_sequence))} pairs from {len(per_sequence)} sequences "
        f"({cfg['flow']['method']} flow)")
    return [p for p in per_sequence if p]


def load_bag_pairs(paths: list[str], cfg: dict, topic: str = "/points", log=print,
                   ranks: Ranks = SINGLE) -> list[list[PairSample]]:
    """Pairs per track from this rank's share of the bags (sharding.share_by_size): detection, tracking and
    crops by the node's pipeline (no network). Track ids are unique over all the bags (1,000,000 per bag
    in list order). The crops of a bag do not depend on the share; the flow estimator's random point
    subsets run on through the share's bags, so flows differ slightly from one process's. With
    cfg['pairs_cache'] each bag's pairs are loaded from there when present, and saved there when
    extracted."""
    from kp3d_ros.train import pair_cache

    flow_fn = flow_function(cfg)
    tracks: list[list[PairSample]] = []
    cached = 0
    mine = share_by_size(list(enumerate(paths)), [size_on_disk(p) for p in paths], ranks.rank, ranks.world_size)
    for position, path in mine:
        stored = pair_cache.cache_file(cfg["pairs_cache"], path, topic, cfg["flow"]) if cfg.get("pairs_cache") else None
        if stored is not None and stored.is_file():
            tracks += pair_cache.load_tracks(stored)
            cached += 1
            continue
        bag_tracks = bag_pairs(path, position * 1_000_000, flow_fn, topic)
        if stored is not None:
            pair_cache.save_tracks(stored, bag_tracks)
        tracks += bag_tracks
    from_cache = f" ({cached} bags from {cfg['pairs_cache']})" if cached else ""
    log(f"{datetime.now():%H:%M:%S} {sum(map(len, tracks))} pairs from {len(tracks)} tracks in bags{from_cache}")
    return tracks


# The candidate filters of bag_pairs. It has no network to gate the candidates with, so it keeps the filters for an
# upright person (the node's defaults before the network's body-share gate took over): the looser defaults would
# let bushes, bins and car parts into Stage II as people.
BAG_CANDIDATES = {"detection.min_height": 0.8, "detection.min_width": 0.5}


def bag_pairs(path: str | Path, offset: int, flow_fn, topic: str = "/points") -> list[list[PairSample]]:
    """Pairs per track of one bag (track ids from `offset` on), in the order the tracks first appear."""
    from kp3d_ros.core.bagio import iter_scans
    from kp3d_ros.core.params import defaults
    from kp3d_ros.core.pipeline import PerceptionPipeline

    tracks: dict[int, list[PairSample]] = {}
    pipeline = PerceptionPipeline(defaults() | BAG_CANDIDATES, backend=None, flow_estimator=None)
    last_stamp = None
    for scan in iter_scans(path, topic):
        dt = 0.1 if last_stamp is None else max(1e-3, (scan.stamp_ns - last_stamp) * 1e-9)
        last_stamp = scan.stamp_ns
        for crop in pipeline.track(scan.points, scan.stamp_ns):
            if crop.previous_points is None or len(crop.previous_points) < 20 or len(crop.points) < 20:
                continue
            init = np.asarray(crop.velocity, dtype=np.float64) * dt
            fwd = flow_fn(crop.previous_points, crop.points, init)
            bwd = flow_fn(crop.points, crop.previous_points, -init)
            tracks.setdefault(offset + crop.track_id, []).append(
                PairSample(crop.previous_points, crop.points, fwd, bwd, offset + crop.track_id,
                           ground_z_t=float(crop.centre[2]), ground_z_t1=float(crop.centre[2])))
    return list(tracks.values())


# -- training -------------------------------------------------------------------------------------
def pair_batches(tracks: list[list[PairSample]], cfg: dict, epoch: int, ranks: Ranks = SINGLE):
    """steps_per_epoch batches; each takes `pairs_per_track` pairs from each of several tracks. Distributed,
    each rank draws train.batch_size / world_size pairs from its own tracks with its own random stream."""
    tcfg = cfg["train"]
    rng = np.random.default_rng([cfg["seed"], epoch] + ([ranks.rank] if ranks.distributed else []))
    per = max(1, int(tcfg["pairs_per_track"]))
    groups = max(1, ranks.per_rank(int(tcfg["batch_size"]), "train.batch_size") // per)
    for _ in range(int(tcfg["steps_per_epoch"])):
        chosen = rng.choice(len(tracks), size=groups, replace=len(tracks) < groups)
        samples = []
        for k in chosen:
            pairs = tracks[k]
            samples += [pairs[i] for i in rng.choice(len(pairs), size=min(per, len(pairs)), replace=False)]
        yield collate_pairs(samples, cfg["num_points"], rng)


def source_objective(cfg: dict, model: torch.nn.Module, ranks: Ranks = SINGLE) -> Callable[[], torch.Tensor] | None:
    """The Stage I loss (its config's w_kp, w_seg) of `model` on the next augmented, labelled batch from
    cfg['source']['data'] (a `kp3d synth` root with a train/ split), or None when mixing is off.
    Distributed, each rank takes source.batch_size / world_size samples from a stream of its own."""
    source = cfg["source"]
    if not source["data"] or float(source["weight"]) <= 0:
        return None
    s1 = stage1.load_config(source["config"] if Path(source["config"]).is_file() else None)
    s1["num_points"] = cfg["num_points"]
    if ranks.distributed:
        s1["seed"] = int(s1["seed"]) + 1_000_003 * ranks.rank  # rank 0 keeps the one-process stream
        source = source | {"batch_size": ranks.per_rank(int(source["batch_size"]), "source.batch_size")}
    s1["train"] = s1["train"] | {"batch_size": int(source["batch_size"]), "steps_per_epoch": 1 << 30}
    dataset = stage1.open_split(anchor.resolve_source_data(source), "train")
    batches = stage1.training_batches(dataset, s1, 0, stage1.make_augmenter(s1["augment"], s1.get("sensor_augment")))
    w_kp, w_seg = s1["train"]["w_kp"], s1["train"]["w_seg"]
    device = next(model.parameters()).device
    return lambda: stage1.stage1_losses(model, *(t.to(device) for t in next(batches)), w_kp=w_kp, w_seg=w_seg)["loss"]


def population_priors(root: Path, max_shards: int = 16) -> dict[str, list[float] | float]:
    """The labelled population of a `kp3d synth` root's train split (its first `max_shards` shards), as the
    loss's prior entries: the mean length (m) of each losses.BONE_NAMES bone and the mean height of the
    lower ankle above the ground (m)."""
    from kp3d_ros.synth.dataset import shard_path

    joints, ground = [], []
    for k in range(max_shards):
        path = shard_path(root / "train", k)
        if path.exists():
            with np.load(path) as shard:
                joints.append(shard["joints"])
                ground.append(shard["centre"][:, 2])  # sensor frame: the ground is at -sensor height
    if not joints:
        raise FileNotFoundError(f"no labelled shards under {root / 'train'} to measure the population priors on")
    kp = torch.from_numpy(np.concatenate(joints)).double()
    lengths = losses.bone_lengths(kp).mean(0)
    height = losses.lowest_ankle_height(kp, torch.from_numpy(np.concatenate(ground)).double()).mean()
    return {"bone_prior_lengths": [round(float(v), 4) for v in lengths],
            "ground_prior_height": round(float(height), 4)}


def fill_population_priors(cfg: dict, log=print, needed: tuple[str, ...] = ()) -> None:
    """Measure the entries that loss.bone_prior / loss.ground_prior need (and the `needed` ones), where the
    config leaves them empty, on the labelled source data (source.data)."""
    loss = cfg["loss"]
    wanted = [key for weight, key in (("bone_prior", "bone_prior_lengths"), ("ground_prior", "ground_prior_height"))
              if loss.get(weight)] + list(needed)
    missing = [key for key in dict.fromkeys(wanted) if not loss.get(key)]
    if not missing:
        return
    if not cfg["source"]["data"]:
        raise ValueError(f"loss.{', loss.'.join(missing)} not given and no source.data to measure them on")
    measured = population_priors(anchor.resolve_source_data(cfg["source"]))
    for key in missing:
        loss[key] = measured[key]
        log(f"population prior from {cfg['source']['data']}: {key} = {measured[key]}")


CALIBRATION_CROPS = 4096  # at most this many crops (a random subset) measure the predicted bone lengths


def predicted_bone_lengths(model: torch.nn.Module, crops: list[np.ndarray], num_points: int,
                           max_crops: int = CALIBRATION_CROPS, seed: int = 0) -> torch.Tensor:
    """Mean length (m) of each skeleton.BONE_NAMES bone in the model's predictions on (at most max_crops
    of) the crops (M, 3)."""
    rng = np.random.default_rng(seed)
    if len(crops) > max_crops:
        crops = [crops[i] for i in rng.choice(len(crops), max_crops, replace=False)]
    total = torch.zeros(len(BONE_NAMES), dtype=torch.float64)
    device = next(model.parameters()).device
    with torch.no_grad():
        for s in range(0, len(crops), 64):
            points = torch.from_numpy(prepare_batch(crops[s:s + 64], num_points, rng).points).to(device)
            total += losses.bone_lengths(model(points)[0].double()).sum(0).cpu() * SCALE
    return total / len(crops)


def calibrate_bones(model: torch.nn.Module, cfg: dict, crops: list[np.ndarray], log=print) -> list[float]:
    """Set model.calibration's factors so that its mean bone lengths on the unlabelled `crops` match the
    population's (loss.bone_prior_lengths, or measured on source.data)."""
    fill_population_priors(cfg, log, needed=("bone_prior_lengths",))
    population = cfg["loss"]["bone_prior_lengths"]
    if not crops:
        raise ValueError("calibrate_bones: no crops to measure the predicted bone lengths on")
    model.eval()
    predicted = predicted_bone_lengths(model, crops, int(cfg["num_points"]), seed=int(cfg["seed"]))
    calibration = model.calibration
    factors = matched_scale(calibration.scale.double().cpu(), predicted, torch.tensor(population, dtype=torch.float64),
                            max_factor=float(cfg.get("calibrate_max_factor", 1.0)))
    calibration.scale.copy_(factors.to(calibration.scale.dtype))
    used = min(len(crops), CALIBRATION_CROPS)
    log(f"{datetime.now():%H:%M:%S} bone calibration on {used} of {len(crops)} crops: " + ", ".join(
        f"{name} {f:.3f}" for name, f in zip(BONE_NAMES, factors.tolist(), strict=True)))
    return [round(float(f), 4) for f in factors]


def _set_checkpoint_factors(path: Path, scale: torch.Tensor, factors: list[float] | None) -> None:
    """Write calibration factors into a checkpoint's weights (its other entries, e.g. optimizer state, kept)."""
    payload = load_payload(path)
    for key in ("state_dict", "trained_state_dict"):
        if key in payload:
            payload[key]["calibration.scale"] = scale.detach().cpu().clone()
    if factors is None:
        payload["meta"].pop("bone_calibration", None)
    else:
        payload["meta"]["bone_calibration"] = factors
    write_payload(path, payload)


def _uncalibrate_for_resume(out: Path, log) -> None:
    """--resume trains on from OUT/last.pt without its calibration factors, as a run does from its init."""
    last = out / "last.pt"
    if last.is_file():
        scale = load_payload(last)["state_dict"].get("calibration.scale")
        if scale is not None and not torch.all(scale == 1):
            log(f"{last} is calibrated; resuming from its uncalibrated weights (the factors are measured again)")
            _set_checkpoint_factors(last, torch.ones_like(scale), None)


class Stage2Objective:
    """Forward pass on both frames, pseudo-labels and the weighted Stage II loss."""

    def __init__(self, model: torch.nn.Module, frozen: torch.nn.Module | None, weights: losses.LossWeights,
                 seg_target: str = "confident", confidence: float = 0.9) -> None:
        if seg_target not in ("confident", "nearest_limb", "none"):
            raise ValueError(f"unknown seg_target {seg_target!r} (confident, nearest_limb, none)")
        if seg_target == "confident" and frozen is None:
            raise ValueError("seg_target 'confident' needs the frozen initial model")
        self.model, self.frozen, self.weights = model, frozen, weights
        self.seg_target, self.confidence = seg_target, confidence

    def __call__(self, batch: losses.PairBatch) -> tuple[torch.Tensor, dict[str, float]]:
        B = batch.points_t.shape[0]
        both = torch.cat([batch.points_t, batch.points_t1])
        keypoints, logits = self.model(both)
        if self.seg_target == "confident":
            with torch.no_grad():
                probs = self.frozen(both)[1].softmax(-1)
            labels = losses.confident_labels(probs, self.confidence)
        elif self.seg_target == "nearest_limb":
            labels = losses.nearest_limb_labels(both, keypoints.detach())
        else:
            labels = None
        if labels is not None:
            batch.labels_t, batch.labels_t1 = labels[:B], labels[B:]
        return losses.stage2_loss(batch, keypoints[:B], logits[:B], keypoints[B:], logits[B:], self.weights)


def evaluate_pairs(model: torch.nn.Module, prepared: list) -> dict[str, float]:
    """MPJPE (cm) of the model on the labelled frames of prepared pair batches (frame t only)."""
    from kp3d_ros.metrics import keypoint_summary

    preds, truths = [], []
    with torch.no_grad():
        for p in prepared:
            if p.joints_t is None:
                continue
            preds.append(model(p.batch.points_t)[0].cpu().numpy())
            truths.append(p.joints_t)
    if not preds:
        return {}
    return keypoint_summary(np.concatenate(preds), np.concatenate(truths))


def evaluate_sequences(checkpoint: str | Path, root: str | Path, max_sequences: int = 0, seed: int = 0,
                       num_points: int | None = None, keep_ground: bool = True) -> dict[str, float]:
    """Keypoint metrics (cm) of a checkpoint on every frame of labelled sequences (crops as the node's)."""
    from kp3d_ros.metrics import confusion_matrix, keypoint_summary, segmentation_scores
    from kp3d_ros.skeleton import NUM_CLASSES
    from kp3d_ros.synth.sequence import SequenceDataset

    model, meta = load_model(checkpoint)
    num_points = num_points or int(meta["num_points"])
    data = SequenceDataset(root)
    rng = np.random.default_rng(seed)
    count = len(data) if not max_sequences else min(max_sequences, len(data))
    crops, truths, parts = [], [], []
    for i in range(count):
        for f in data[i]:
            keep = np.ones(len(f.points), bool) if keep_ground else above_ground(f.points, float(f.centre[2]))
            if keep.sum() >= 10:
                crops.append(f.points[keep])
                truths.append(f.joints)
                parts.append(f.parts[keep])
    preds, conf = [], np.zeros((NUM_CLASSES, NUM_CLASSES), np.int64)
    with torch.no_grad():
        for s in range(0, len(crops), 64):
            batch = prepare_batch(crops[s:s + 64], num_points, rng)
            kp, logits = model(torch.from_numpy(batch.points))
            preds.append(restore_keypoints(kp.numpy(), batch))
            truth = np.stack([p[i] for p, i in zip(parts[s:s + 64], batch.indices, strict=True)])
            conf += confusion_matrix(logits.argmax(-1).numpy(), truth, NUM_CLASSES)
    scores = segmentation_scores(conf)
    summary = keypoint_summary(np.concatenate(preds), np.stack(truths))
    return summary | {"seg_accuracy": scores["accuracy"], "seg_miou": scores["miou"]}


def combine_validation(parts: list[tuple[int, dict[str, float]]]) -> dict[str, float]:
    """The ranks' validation scalars (each with its number of held-out tracks) as one set: each entry's
    mean over the ranks that have it, weighted by their tracks."""
    weights: dict[str, float] = {}
    sums: dict[str, float] = {}
    for count, values in parts:
        for key, value in values.items():
            if count:
                weights[key] = weights.get(key, 0.0) + count
                sums[key] = sums.get(key, 0.0) + count * float(value)
    return {key: sums[key] / weights[key] for key in sums} or {"val_loss": 0.0}


def run(cfg: dict, resume: bool = False, log=print, ranks: Ranks = SINGLE) -> dict:
    torch.set_num_threads(int(cfg["threads"]))
    torch.manual_seed(cfg["seed"])
    rounds = int(cfg["rounds"])
    if rounds < 1:
        raise ValueError(f"rounds must be at least 1, got {rounds}")
    if resume and rounds > 1:
        raise ValueError("--resume continues a single round; with rounds > 1 start the last round from its init")
    ranks.per_rank(int(cfg["train"]["batch_size"]), "train.batch_size")  # say so before extracting pairs
    model, meta = load_model(cfg["init"])
    cfg.setdefault("num_points", int(meta["num_points"]))
    init_factors = model.calibration.scale.clone()  # written back when the source wins and nothing calibrates
    if not torch.all(model.calibration.scale == 1):
        # Training sees the network's own skeleton (the labelled source batches must not be rescaled to the
        # target's factors); calibrate_bones measures the factors again after the last round.
        log(f"{cfg['init']} has bone calibration factors; Stage II trains without them")
        model.calibration.scale.fill_(1.0)
    device = training_device(cfg.get("device", "cpu"))
    model.to(device)
    data = [str(d) for d in (cfg["data"] if isinstance(cfg["data"], list) else [cfg["data"]])]
    if all(Path(d).is_dir() for d in data) and len(data) == 1 and (Path(data[0]) / "meta.json").exists():
        tracks = load_sequence_pairs(data[0], cfg, log, ranks)
    else:
        if cfg["flow"]["method"] == "truth":
            raise ValueError("flow method 'truth' needs synthetic sequences")
        tracks = load_bag_pairs(data, cfg, log=log, ranks=ranks)
    if ranks.distributed:
        pairs, total = ranks.summed([float(sum(map(len, tracks))), float(len(tracks))])
        log(f"{datetime.now():%H:%M:%S} all {ranks.world_size} processes: {int(pairs)} pairs from {int(total)} tracks")
    if len(tracks) < 2:
        where = f" (share {ranks.rank} of {ranks.world_size})" if ranks.distributed else ""
        raise ValueError(f"too little data in {data}{where}: {len(tracks)} tracks with pairs")
    n_val = min(-(-int(cfg["val_sequences"]) // ranks.world_size), len(tracks) // 4)
    val_tracks, train_tracks = tracks[:n_val], tracks[n_val:]
    fill_population_priors(cfg, log)
    val_rng = np.random.default_rng(1234)
    val_prepared = [collate_pairs(pairs, cfg["num_points"], val_rng) for pairs in val_tracks] if n_val else []
    val_prepared = [dataclasses.replace(p, batch=batch_on(p.batch, device)) for p in val_prepared]
    net = ranks.wrap(model)
    source_loss = source_objective(cfg, net, ranks)
    run_meta = dict(meta) | {"stage": "stage2", "init": str(cfg["init"]), "data": data, "loss": cfg["loss"],
                             "seg_target": cfg["seg_target"], "flow": cfg["flow"]["method"], "rounds": rounds}
    report: dict = {"out": cfg["out"]}
    if resume and ranks.is_main:
        _uncalibrate_for_resume(Path(cfg["out"]), log)
    ranks.barrier()
    candidates = {"source": copy.deepcopy(model.state_dict())}
    for k in range(1, rounds + 1):
        # Each round starts from the previous one's model, which also gives the pseudo-labels.
        out = Path(cfg["out"]) if k == rounds else Path(cfg["out"]) / f"round{k}"
        if rounds > 1:
            log(f"{datetime.now():%H:%M:%S} round {k} of {rounds} -> {out}")
        report["result"] = _train_round(model, cfg, train_tracks, val_prepared, source_loss, out,
                                        run_meta | {"round": k}, resume, log, ranks, net)
        candidates[f"round{k}"] = copy.deepcopy(model.state_dict())
    val_crops = [pair.src for pairs in val_tracks for pair in pairs]
    val_track_ids = np.repeat(np.arange(len(val_tracks)), [len(pairs) for pairs in val_tracks])
    signals = {name: _signals_of(model, state, candidates["source"], cfg, val_prepared, val_crops, val_track_ids,
                                 ranks) for name, state in candidates.items()}  # every rank scores its share
    chosen, why = selection.choose(signals)
    model.load_state_dict(candidates[chosen])
    if not ranks.is_main:  # rank 0 calibrates, writes and evaluates (on its own share of the crops)
        return report
    out = Path(cfg["out"])
    origin = {"source": Path(cfg["init"]), f"round{rounds}": out / "last.pt"}.get(chosen, out / chosen / "last.pt")
    report["selection"] = {"selected": chosen, "written": str(out / "selected.pt"), "weights_of": str(origin),
                           "why": why, "signal": selection.SIGNAL, "signals": signals}
    report["bone_calibration"] = None
    # Only an adapted round is calibrated: when no round was better, the source model is written as it came
    # (calibrating it measured +6.6 % on the source domain's own test split, stage2.md 2026-12-02).
    calibrated = bool(cfg["calibrate_bones"]) and chosen != "source"
    if calibrated:
        save_checkpoint(out / "uncalibrated.pt", model, run_meta | {"selected": chosen})
        crops = [pair.src for pairs in train_tracks for pair in pairs]
        report["bone_calibration"] = calibrated_or_skipped(model, cfg, crops, report["selection"], log)
    elif cfg["calibrate_bones"]:
        report["selection"]["calibration"] = "not applied: no round was better, the source model is written as it came"
    factors = report["bone_calibration"]
    if chosen == "source":
        model.calibration.scale.copy_(init_factors)  # the source model as it came, factors included
        factors = meta.get("bone_calibration")
    written_meta = {k: v for k, v in run_meta.items() if k != "bone_calibration"}
    save_checkpoint(out / "selected.pt", model, written_meta | {"selected": chosen, "selection_why": why}
                    | ({"bone_calibration": factors} if factors else {}))
    log(selection.write_report(out, report["selection"]).rstrip())
    if cfg["eval"]["data"]:
        names = ("init", "last", "uncalibrated", "selected") if calibrated else ("init", "last", "selected")
        for name in names:
            path = cfg["init"] if name == "init" else out / f"{name}.pt"
            if not Path(path).is_file():  # last.pt: no training steps (train.epochs 0)
                continue
            report[name] = evaluate_sequences(path, cfg["eval"]["data"], int(cfg["eval"]["max_sequences"]),
                                              keep_ground=bool(cfg["keep_ground"]))
            log(f"target test, {name}: {report[name]}")
    return report


def calibrated_or_skipped(model: torch.nn.Module, cfg: dict, crops: list[np.ndarray], selection_report: dict,
                          log=print) -> list[float] | None:
    """Calibrate `model`'s bones in place (calibrate_bones) and return the factors; an implausible
    calibration is skipped with a warning (factors back to 1, None returned). The outcome goes into
    selection_report["calibration"]."""
    try:
        factors = calibrate_bones(model, cfg, crops, log)
    except ImplausibleCalibrationError as exc:
        model.calibration.scale.fill_(1.0)
        selection_report["calibration"] = f"skipped, the uncalibrated model is written ({exc})"
        log(f"warning: bone calibration skipped, the uncalibrated model is kept: {exc}")
        return None
    selection_report["calibration"] = f"factors {factors}"
    return factors


def _signals_of(model: torch.nn.Module, state: dict, source_state: dict, cfg: dict, val_prepared: list,
                val_crops: list, val_track_ids: np.ndarray, ranks: Ranks) -> dict[str, float]:
    model.load_state_dict(state)
    return selection.candidate_signals(model, source_state, cfg, val_prepared, val_crops, val_track_ids, ranks)


def _train_round(model: torch.nn.Module, cfg: dict, train_tracks: list, val_prepared: list,
                 source_loss: Callable[[], torch.Tensor] | None, out: Path, run_meta: dict, resume: bool, log,
                 ranks: Ranks = SINGLE, net: torch.nn.Module | None = None):
    """One round of Stage II on `model` (in place): pseudo-labels from a frozen copy of it, a new optimizer
    and lr schedule; checkpoints in `out`. Training forward passes go through `net` (ranks.wrap(model))."""
    device = next(model.parameters()).device
    frozen = copy.deepcopy(model).eval() if cfg["seg_target"] == "confident" else None
    if frozen is not None:
        for p in frozen.parameters():
            p.requires_grad_(False)
    weights = losses.LossWeights.from_dict(cfg["loss"])
    objective = Stage2Objective(model, frozen, weights, cfg["seg_target"], float(cfg["confidence"]))
    training = objective if net is None or net is model else Stage2Objective(
        net, frozen, weights, cfg["seg_target"], float(cfg["confidence"]))

    def step(prepared) -> dict[str, float]:
        total, parts = training(batch_on(prepared.batch, device))
        if source_loss is not None:
            supervised = source_loss()
            total = total + float(cfg["source"]["weight"]) * supervised
            parts = parts | {"source": float(supervised.detach())}
        total.backward()
        return {"loss": float(total.detach()), **parts}

    def validate_share() -> dict[str, float]:
        if not val_prepared:
            return {"val_loss": 0.0}
        with torch.no_grad():
            values = [float(objective(p.batch)[0]) for p in val_prepared]
        result = {"val_loss": float(np.mean(values))}
        result |= {f"val_{k}": v for k, v in evaluate_pairs(model, val_prepared).items() if k.endswith("_cm")}
        return result

    def validate() -> dict[str, float]:
        if not ranks.distributed:
            return validate_share()
        return combine_validation(ranks.gathered((len(val_prepared), validate_share())))

    tcfg = cfg["train"]
    optimizer = torch.optim.AdamW(model.parameters(), lr=tcfg["lr"], weight_decay=tcfg["weight_decay"])
    model.eval()
    log(f"{datetime.now():%H:%M:%S} stage2: {len(train_tracks)} train / {len(val_prepared)} val tracks; before: "
        f"{validate()}")
    budget = 60 * tcfg["max_minutes"] if tcfg.get("max_minutes") else None
    fit_cfg = FitConfig(epochs=tcfg["epochs"], steps_per_epoch=tcfg["steps_per_epoch"], lr=tcfg["lr"],
                        warmup_steps=tcfg["warmup_steps"], out_dir=str(out), monitor="val_loss",
                        time_budget_s=budget, grad_clip=tcfg["grad_clip"], resume=resume,
                        ema_decay=float(tcfg["ema_decay"]))
    result = fit(model, optimizer, fit_cfg, lambda e: pair_batches(train_tracks, cfg, e, ranks), step, validate,
                 run_meta, log, ranks)
    log(f"{datetime.now():%H:%M:%S} done: {result}")
    return result


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", default="config/stage2.yaml", help="YAML config (defaults for missing keys)")
    parser.add_argument("--init", help="Stage I checkpoint to start from (overrides the config)")
    parser.add_argument("--data", nargs="+", help="a synthetic sequence directory, or bag(s) with /points")
    parser.add_argument("--manifest", help="a file listing the bags (one path a line) instead of --data")
    parser.add_argument("--out", help="run directory (overrides the config)")
    parser.add_argument("--eval-data", help="labelled sequences for the before/after MPJPE report")
    parser.add_argument("--flow", choices=("realtime", "offline", "truth"), help="scene flow source")
    parser.add_argument("--resume", action="store_true", help="continue from OUT/last.pt")
    parser.add_argument("--epochs", type=int, help="override train.epochs")
    parser.add_argument("--max-minutes", type=float, help="override train.max_minutes")
    parser.add_argument("--device", choices=("cpu", "cuda", "auto"), help="training device (overrides the config)")
    parser.add_argument("--set", action="extend", nargs="+", default=[], metavar="KEY=VALUE",
                        help="override config entries, e.g. loss.sym=0 seg_target=none (values parsed as YAML)")


def apply_overrides(cfg: dict, items: list[str]) -> dict:
    for item in items:
        if "=" not in item:
            raise ValueError(f"--set expects KEY=VALUE, got {item!r}")
        key, value = item.split("=", 1)
        node = cfg
        *path, last = key.split(".")
        for part in path:
            if not isinstance(node.get(part), dict):
                raise ValueError(f"unknown config section {part!r} in {key!r}")
            node = node[part]
        if last not in node:
            raise ValueError(f"unknown config key {key!r}")
        parsed = yaml.safe_load(value)
        if isinstance(parsed, str):  # YAML 1.1 reads 3e-5 (no dot) as a string
            with contextlib.suppress(ValueError):
                parsed = float(parsed)
        node[last] = parsed
    return cfg


def main(args: argparse.Namespace) -> int:
    config_path = args.config if args.config and Path(args.config).is_file() else None
    if args.config and config_path is None:
        print(f"warning: config {args.config} not found, using defaults")
    cfg = load_config(config_path)
    given = {"init": args.init, "data": args.data[0] if args.data and len(args.data) == 1 else args.data,
             "out": args.out}
    cfg = merge(cfg, {k: v for k, v in given.items() if v})
    if args.eval_data:
        cfg["eval"]["data"] = args.eval_data
    if args.flow:
        cfg["flow"]["method"] = args.flow
    if args.epochs is not None:
        cfg["train"]["epochs"] = args.epochs
    if args.max_minutes is not None:
        cfg["train"]["max_minutes"] = args.max_minutes
    if args.device:
        cfg["device"] = args.device
    try:
        if args.manifest:
            if args.data:
                raise ValueError("give --data or --manifest, not both")
            cfg["data"] = [str(path) for path in read_manifest(args.manifest)]
        cfg = apply_overrides(cfg, args.set)
        with process_group(training_device(cfg["device"])) as ranks:
            run(cfg, resume=args.resume, log=ranks.log(print), ranks=ranks)
    except (FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}")
        return 1
    return 0
