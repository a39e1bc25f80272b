"""Throughput of distributed training with 1 and 2 processes (issue 17): Stage II pair extraction
(detection, tracking, crops, real-time flow) over a set of bags, Stage II training steps and Stage I
training steps, each through the project's own functions under torchrun (gloo).

  .venv/bin/python benchmarks/distributed_throughput.py --bags out/fleet_bench/*.mcap \\
      --stage1-data data/stage1_poses --out benchmarks/results/distributed_raw.md

The script launches itself under `torchrun --standalone --nproc-per-node P` for each P of --processes;
rank 0 of each run writes a JSON record, and the driver writes the markdown table (--out) and the raw
records (next to it, .json). benchmarks/results/distributed.md discusses them and projects a job.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


# -- worker (one torchrun rank) ---------------------------------------------------------------------
def count_scans(bag: str) -> int:
    from kp3d_ros.core.bagio import _open

    with _open(bag) as reader:
        return sum(c.msgcount for c in reader.connections if c.topic == "/points")


def measure(args: argparse.Namespace) -> dict:
    """Every rank runs this; rank 0's return value is the record."""
    import torch

    from kp3d_ros.model.checkpoint import load_model
    from kp3d_ros.sharding import share
    from kp3d_ros.train import stage1, stage2
    from kp3d_ros.train.distributed import process_group

    torch.set_num_threads(1)
    quiet = lambda _message: None  # noqa: E731
    with process_group() as ranks, tempfile.TemporaryDirectory() as tmp:
        cfg = stage2.load_config(None)
        frames = sum(count_scans(b) for b in share(args.bags, ranks.rank, ranks.world_size))
        ranks.barrier()
        start, cpu = time.perf_counter(), time.process_time()
        tracks = stage2.load_bag_pairs(args.bags, cfg, log=quiet, ranks=ranks)
        own, own_cpu = time.perf_counter() - start, time.process_time() - cpu
        ranks.barrier()
        extraction = time.perf_counter() - start

        model, meta = load_model(cfg["init"])
        cfg["num_points"] = int(meta["num_points"])
        cfg["train"] |= {"epochs": 1, "steps_per_epoch": args.steps, "max_minutes": 0, "warmup_steps": 0}
        cpu = time.process_time()
        result2 = stage2._train_round(model, cfg, tracks, [], None, Path(tmp) / "s2", dict(meta), False, quiet,
                                      ranks, ranks.wrap(model))
        stage2_cpu = time.process_time() - cpu

        cfg1 = stage1.load_config(ROOT / "config" / "stage1.yaml")
        cfg1 |= {"data": str(args.stage1_data), "out": str(Path(tmp) / "s1")}
        cfg1["train"] |= {"epochs": 1, "steps_per_epoch": args.steps, "max_minutes": 0}
        cfg1["val"] |= {"max_samples": 64}
        cpu = time.process_time()
        result1 = stage1.run(cfg1, log=quiet, ranks=ranks)["result"]
        stage1_cpu = time.process_time() - cpu  # includes opening the data and the validation batches
        per_rank = ranks.gathered({"frames": frames, "pairs": sum(map(len, tracks)), "tracks": len(tracks),
                                   "extraction_s": round(own, 2), "extraction_cpu_s": round(own_cpu, 2),
                                   "stage2_cpu_s": round(stage2_cpu, 2), "stage1_cpu_s": round(stage1_cpu, 2)})
    return {"processes": ranks.world_size, "bags": len(args.bags), "per_rank": per_rank,
            "extraction_wall_s": round(extraction, 2),
            "frames": sum(r["frames"] for r in per_rank), "pairs": sum(r["pairs"] for r in per_rank),
            "stage2_steps": args.steps, "stage2_batch": int(cfg["train"]["batch_size"]),
            "stage2_wall_s": round(result2.wall_s, 2),
            "stage1_steps": args.steps, "stage1_batch": int(cfg1["train"]["batch_size"]),
            "stage1_wall_s": round(result1.wall_s, 2), "is_main": ranks.is_main}


# -- driver ----------------------------------------------------------------------------------------
def load_average() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def run_with(processes: int, args: argparse.Namespace, record: Path) -> dict:
    torchrun = Path(sys.executable).with_name("torchrun")
    command = [str(torchrun), "--standalone", f"--nproc-per-node={processes}", __file__, "--worker",
               "--record", str(record), "--steps", str(args.steps), "--stage1-data", str(args.stage1_data),
               "--bags", *args.bags]
    env = os.environ | {"OMP_NUM_THREADS": "1"}
    subprocess.run(command, cwd=ROOT, env=env, check=True)
    return json.loads(record.read_text())


def rates(r: dict) -> dict[str, float]:
    return {"frames_per_s": r["frames"] / r["extraction_wall_s"], "pairs_per_s": r["pairs"] / r["extraction_wall_s"],
            "stage2_steps_per_s": r["stage2_steps"] / r["stage2_wall_s"],
            "stage1_steps_per_s": r["stage1_steps"] / r["stage1_wall_s"]}


def markdown(records: list[dict], loads: list[str], args: argparse.Namespace) -> str:
    lines = ["| processes | frames | pairs | extraction wall s | frames / s | pairs / s | Stage II steps / s "
             "(global batch 16) | Stage I steps / s (global batch 32) |", "|---|---|---|---|---|---|---|---|"]
    for r in records:
        q = rates(r)
        lines.append(f"| {r['processes']} | {r['frames']} | {r['pairs']} | {r['extraction_wall_s']:.1f} | "
                     f"{q['frames_per_s']:.2f} | {q['pairs_per_s']:.2f} | {q['stage2_steps_per_s']:.2f} | "
                     f"{q['stage1_steps_per_s']:.2f} |")
    shares = "; ".join(f"{r['processes']} processes: " + ", ".join(
        f"rank {i} {p['frames']} frames in {p['extraction_s']} s wall / {p['extraction_cpu_s']} s CPU, Stage II "
        f"{p['stage2_cpu_s']} s CPU, Stage I {p['stage1_cpu_s']} s CPU" for i, p in enumerate(r["per_rank"]))
        for r in records)
    return "\n".join(lines) + f"\n\nPer-rank extraction: {shares}.\n\nLoad average (1/5/15 min) before each run: " \
        + "; ".join(f"{r['processes']} processes: {load}" for r, load in zip(records, loads, strict=True)) + ".\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bags", nargs="+", required=True, help="bags with /points (pair extraction)")
    parser.add_argument("--stage1-data", default="data/stage1_poses", help="a `kp3d synth` root (train/, val/)")
    parser.add_argument("--steps", type=int, default=30, help="training steps per measurement")
    parser.add_argument("--processes", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--out", default="benchmarks/results/distributed_raw.md")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--record", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        record = measure(args)
        if record.pop("is_main"):
            Path(args.record).write_text(json.dumps(record, indent=1))
        return 0
    records, loads = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for processes in args.processes:
            loads.append(load_average())
            records.append(run_with(processes, args, Path(tmp) / f"p{processes}.json"))
            print(json.dumps(records[-1] | rates(records[-1])))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps({"records": records, "loads": loads}, indent=1))
    out.write_text(markdown(records, loads, args))
    print(markdown(records, loads, args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
