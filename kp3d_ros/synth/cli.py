"""`kp3d synth`: write labelled synthetic person datasets (Stage I) or animated sequences (flow / Stage II)."""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

from kp3d_ros.synth.lidar import PRESETS
from kp3d_ros.synth.person import DomainConfig
from kp3d_ros.synth.poses import POSE_MIX

log = logging.getLogger(__name__)

TRAIN_PRESETS = ("waymo_top", "hdl64e", "vlp32c", "os1_64")
HELD_OUT_WEIGHT = 0.85  # Stage I train/val bodies have weight < this; the test split only heavier ones

HARD_POSE_MIX = {"lie": 0.25, "sit_ground": 0.15, "crawl": 0.10, "jump": 0.10, "bend": 0.10, "kneel": 0.10,
                 "sit_seat": 0.10, "squat": 0.10}
POSES_DOMAIN = {"pose_mix": POSE_MIX, "child_share": 0.3, "negative_share": 0.1, "sensor_effects": 0.6}

SPLIT_CONFIGS: dict[str, dict] = {
    "stage1": {"presets": TRAIN_PRESETS, "phenotype_ranges": {"weight": (0.0, HELD_OUT_WEIGHT)}},
    "stage1-test": {"presets": ("vlp16",), "phenotype_ranges": {"weight": (HELD_OUT_WEIGHT, 1.0)}},
    "stage1-test-dense": {"presets": ("os1_128",), "phenotype_ranges": {"weight": (HELD_OUT_WEIGHT, 1.0)}},
    # Every pose family of kp3d_ros.synth.poses with its POSE_MIX share, 30 % children, 10 % crops of clutter
    # alone, real-sensor effects on 60 % of the samples.
    "stage1-poses": {"presets": TRAIN_PRESETS, "phenotype_ranges": {"weight": (0.0, HELD_OUT_WEIGHT)},
                     **POSES_DOMAIN},
    # The same bodies and sensors with the families that the mix above leaves weakest (lying, sitting on the
    # ground, crawling, jumping, bending, kneeling, sitting on a seat, squatting) given most of the share: mixed
    # in with stage1-poses to train them more (config/stage1_poses_large_hard.yaml).
    "stage1-poses-hard": {"presets": TRAIN_PRESETS, "phenotype_ranges": {"weight": (0.0, HELD_OUT_WEIGHT)},
                          **POSES_DOMAIN, "pose_mix": HARD_POSE_MIX, "negative_share": 0.05},
    # Held out: heavier bodies and a 128-beam sensor that training never sees, other seeds.
    "poses-test": {"presets": ("os1_128",), "phenotype_ranges": {"weight": (HELD_OUT_WEIGHT, 1.0)}, **POSES_DOMAIN},
    "full": {},
    "flow-source": {"presets": TRAIN_PRESETS, "occluder": 0.0, "carry_object": 0.0},
    "flow-target": {"presets": ("vlp16", "os1_64"), "range_noise_std": 0.04, "dropout": 0.06,
                    "inflate_range": (0.0, 0.04), "occluder": 0.0, "carry_object": 0.1},
}


def domain_config(args: argparse.Namespace) -> DomainConfig:
    """The split config (a name from SPLIT_CONFIGS or a JSON file) with command-line overrides."""
    spec = args.split_config
    if spec in SPLIT_CONFIGS:
        base = dict(SPLIT_CONFIGS[spec])
    elif Path(spec).is_file():
        base = json.loads(Path(spec).read_text())
    else:
        raise ValueError(f"--split-config must be one of {sorted(SPLIT_CONFIGS)} or a JSON file, got {spec!r}")
    if args.preset:
        base["presets"] = tuple(args.preset)
    for key in ("range_noise_std", "dropout", "occluder", "carry_object"):
        if getattr(args, key) is not None:
            base[key] = getattr(args, key)
    if args.inflate is not None:
        base["inflate_range"] = (0.0, args.inflate)
    for item in args.phenotype_range or []:
        label, _, bounds = item.partition("=")
        lo, _, hi = bounds.partition(":")
        base.setdefault("phenotype_ranges", {})[label] = (float(lo), float(hi))
    config = DomainConfig.from_dict(base)
    unknown = [p for p in config.presets if p not in PRESETS]
    if unknown:
        raise ValueError(f"unknown presets {unknown}; known: {sorted(PRESETS)}")
    return config


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("out", type=Path, help="output directory (gets shards, meta.json and DONE)")
    parser.add_argument("--num", type=int, default=1000, help="samples (or sequences with --sequences)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--split-config", default="stage1",
                        help=f"named domain config {sorted(SPLIT_CONFIGS)} or a JSON file of DomainConfig fields")
    parser.add_argument("--preset", action="append", choices=sorted(PRESETS), help="LiDAR preset(s), repeatable")
    parser.add_argument("--range-noise-std", type=float, default=None)
    parser.add_argument("--dropout", type=float, default=None)
    parser.add_argument("--inflate", type=float, default=None, help="max outward surface offset (m)")
    parser.add_argument("--occluder", type=float, default=None, help="probability of an occluder")
    parser.add_argument("--carry-object", type=float, default=None, help="probability of a carried box")
    parser.add_argument("--phenotype-range", action="append", metavar="LABEL=LO:HI",
                        help="restrict a phenotype (gender, age, muscle, weight, height, proportions)")
    parser.add_argument("--sequences", action="store_true", help="write animated sequences with true scene flow")
    parser.add_argument("--frames", type=int, default=8, help="frames per sequence (with --sequences)")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def main(args: argparse.Namespace) -> int:
    try:
        config = domain_config(args)
    except ValueError as exc:
        log.error("%s", exc)
        return 2
    if args.num <= 0:
        log.error("--num must be positive")
        return 2
    start = time.time()
    if args.sequences:
        from kp3d_ros.synth.sequence import write_sequences

        write_sequences(args.out, args.num, args.frames, args.seed, config, workers=args.workers,
                        progress=not args.quiet)
    else:
        from kp3d_ros.synth.dataset import write_dataset

        write_dataset(args.out, args.num, args.seed, config, workers=args.workers, progress=not args.quiet)
    elapsed = time.time() - start
    print(f"wrote {args.num} {'sequences' if args.sequences else 'samples'} to {args.out} in {elapsed:.1f} s "
          f"({args.num / elapsed:.1f}/s)")
    return 0
