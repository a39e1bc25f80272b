"""Lifecycle transitions and frame latency: node_soak.py runs, interleaved, with and without the managed node.

Run: .venv/bin/python benchmarks/lifecycle_soak.py [--rounds 2] [--seconds 30] [--cycle 5]
         [--baseline-tree DIR] [--lifecycle-tree DIR] [--out benchmarks/results/lifecycle_soak.json]

Each round runs, one after the other and so under the same machine load:
- ``baseline`` (with --baseline-tree): node_soak.py of another checkout (e.g. a `git worktree` of the commit
  before kp3d_node became a lifecycle node), with that checkout first on PYTHONPATH;
- ``autostart``: the managed node, configured and activated by itself at start;
- ``cycled``: the managed node, configured and activated through its lifecycle services by a client node, and
  deactivated and re-activated through them every --cycle seconds during the soak.
The two lifecycle variants import kp3d_ros from --lifecycle-tree when given (a checkout of the lifecycle
node without later changes), else from this checkout; they always run this checkout's node_soak.py.
Every run loops the same bag (the soak bag of node_soak.py unless --bag). Prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SOAK = ROOT / "benchmarks" / "node_soak.py"
DEFAULT_BAG = ROOT / "data" / "bags" / "soak_5people_10s_seed11.mcap"


def run_soak(script: Path, args: list[str], json_path: Path, pythonpath: Path | None = None) -> dict:
    env = os.environ.copy()
    # a DDS domain of its own, on this machine only: other ROS processes must not feed or drain the soak's topics
    env.setdefault("ROS_DOMAIN_ID", str(1 + os.getpid() % 100))
    env.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
    if pythonpath is not None:
        env["PYTHONPATH"] = os.pathsep.join([str(pythonpath), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    subprocess.run([sys.executable, str(script), *args, "--json", str(json_path)], check=True, env=env,
                   stdout=subprocess.DEVNULL)
    return json.loads(json_path.read_text())


def load_average() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "n/a"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--cycle", type=float, default=5.0, help="deactivate/activate period of the cycled runs")
    parser.add_argument("--bag", type=Path, default=DEFAULT_BAG)
    parser.add_argument("--baseline-tree", type=Path, help="checkout whose benchmarks/node_soak.py is the baseline")
    parser.add_argument("--lifecycle-tree", type=Path, help="checkout whose kp3d_ros the lifecycle variants import")
    parser.add_argument("--out", type=Path, help="write every run's summary as JSON")
    args = parser.parse_args()
    if not args.bag.exists():
        if args.bag != DEFAULT_BAG:
            parser.error(f"bag not found: {args.bag}")
        sys.path.insert(0, str(SOAK.parent))
        from node_soak import ensure_bag

        ensure_bag(DEFAULT_BAG, people=5, seed=11)
    common = ["--seconds", str(args.seconds), "--bag", str(args.bag)]
    lifecycle_tree = args.lifecycle_tree.resolve() if args.lifecycle_tree else None
    variants = [("autostart", SOAK, [], lifecycle_tree),
                ("cycled", SOAK, ["--lifecycle-manager", "--cycle", str(args.cycle)], lifecycle_tree)]
    if args.baseline_tree is not None:
        tree = args.baseline_tree.resolve()
        variants.insert(0, ("baseline", tree / "benchmarks" / "node_soak.py", [], tree))
    runs = []
    scratch = Path(os.environ.get("TMPDIR", "/tmp")) / "kp3d_lifecycle_soak"
    scratch.mkdir(parents=True, exist_ok=True)
    for round_index in range(args.rounds):
        for name, script, extra, pythonpath in variants:
            before = load_average()
            summary = run_soak(script, [*common, *extra], scratch / f"{name}_{round_index}.json", pythonpath)
            summary.update(variant=name, round=round_index, load_before=before, load_after=load_average())
            runs.append(summary)
            print(f"round {round_index + 1} {name}: median {summary['e2e_median_ms']:.1f} ms, "
                  f"p99 {summary['e2e_p99_ms']:.1f} ms ({summary['frames_timed']} frames)", file=sys.stderr)
    print("| round | variant | frames timed | received | dropped | e2e median | p90 | p99 | max | load avg |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for run in runs:
        print(f"| {run['round'] + 1} | {run['variant']} | {run['frames_timed']} | {run['received']} | "
              f"{run['dropped_newer_arrived']} | {run['e2e_median_ms']:.1f} ms | {run['e2e_p90_ms']:.1f} ms | "
              f"{run['e2e_p99_ms']:.1f} ms | {run['e2e_max_ms']:.1f} ms | {run['load_before']} → {run['load_after']} |")
    print("\n| variant | runs | median of run medians | median of run p99s | pooled median | pooled p99 |")
    print("|---|---|---|---|---|---|")
    for name, *_ in variants:
        mine = [r for r in runs if r["variant"] == name]
        pooled = np.concatenate([r["latencies_ms"] for r in mine if "latencies_ms" in r] or [np.zeros(0)])
        pooled_text = (f"{np.median(pooled):.1f} ms | {np.percentile(pooled, 99):.1f} ms" if pooled.size else
                       "n/a | n/a")
        print(f"| {name} | {len(mine)} | {np.median([r['e2e_median_ms'] for r in mine]):.1f} ms | "
              f"{np.median([r['e2e_p99_ms'] for r in mine]):.1f} ms | {pooled_text} |")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(runs, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
