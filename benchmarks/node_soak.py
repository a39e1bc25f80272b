"""Node soak: a 10 Hz bag looped into the real kp3d_node for a while; every frame's end-to-end latency.

Run: .venv/bin/python benchmarks/node_soak.py [--seconds 60] [--people 5] [--bag BAG] [--separate-replay]
         [--lifecycle-manager [--cycle S]]

The bag (default: a 10 s synthetic street scene with 5 people, written once under data/bags/) is replayed
in a loop at its original rate. By default the replay runs in this process (as `kp3d run --bag`);
with --separate-replay it runs as its own `kp3d replay` process, as a LiDAR driver would. Latency is
the node's own measure: cloud arrival in the subscription callback -> skeleton markers published.
With --lifecycle-manager the node starts unconfigured and a client node in this process configures and
activates it through its lifecycle services (as a lifecycle manager would); --cycle S also deactivates
and re-activates it through them every S seconds during the soak (frames are timed while active).
With --alternate NAME --block S a boolean node parameter is flipped every S seconds (starting from its
configured value) through the node's parameter interface, so that two settings are measured side by side in
one run under the same machine load, e.g. `--set adaptation.enabled=true --alternate adaptation.paused`:
the adapter's cost on perception. Frames finished in the first --settle seconds of each block are left out.
Prints a markdown row and the per-stage medians; --json writes everything.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def ensure_bag(path: Path, people: int, seed: int) -> Path:
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_suffix(".partial.mcap")
        subprocess.run([sys.executable, "-m", "kp3d_ros.cli", "synth-bag", str(partial), "--overwrite",
                        "--people", str(people), "--seconds", "10", "--seed", str(seed)], check=True)
        partial.rename(path)
    return path


class LifecycleClient:
    """ChangeState calls on the node's lifecycle services from a separate client node (spun by the executor)."""

    def __init__(self, executor, target: str) -> None:
        from lifecycle_msgs.srv import ChangeState
        from rclpy.node import Node

        self.executor, self.node = executor, Node("kp3d_soak_lifecycle_manager")
        executor.add_node(self.node)
        self.client = self.node.create_client(ChangeState, f"{target}/change_state")

    def change(self, label: str) -> bool:
        from lifecycle_msgs.msg import Transition
        from lifecycle_msgs.srv import ChangeState

        from kp3d_ros.ros.run import spin_until

        ids = {"configure": Transition.TRANSITION_CONFIGURE, "activate": Transition.TRANSITION_ACTIVATE,
               "deactivate": Transition.TRANSITION_DEACTIVATE}
        if not spin_until(self.executor, self.client.service_is_ready, 30.0):
            return False
        future = self.client.call_async(ChangeState.Request(transition=Transition(id=ids[label])))
        return spin_until(self.executor, future.done, 60.0) and future.result().success


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--people", type=int, default=5)
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--bag", type=Path, help="bag to loop (default: a synthetic one under data/bags/)")
    parser.add_argument("--separate-replay", action="store_true", help="replay from another process")
    parser.add_argument("--set", action="extend", nargs="+", default=[], metavar="NAME=VALUE",
                        help="node parameter overrides")
    parser.add_argument("--lifecycle-manager", action="store_true",
                        help="start the node unconfigured; configure and activate it through its lifecycle services")
    parser.add_argument("--cycle", type=float, default=0.0,
                        help="with --lifecycle-manager: deactivate and re-activate every this many seconds")
    parser.add_argument("--alternate", metavar="NAME", help="a boolean node parameter flipped every --block seconds")
    parser.add_argument("--block", type=float, default=10.0, help="with --alternate: seconds per block")
    parser.add_argument("--settle", type=float, default=1.0,
                        help="with --alternate: frames finished this soon after a flip are not counted")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    from kp3d_ros.ros.dds import use_large_message_profile

    use_large_message_profile()
    import rclpy
    from rclpy.executors import MultiThreadedExecutor
    from rclpy.node import Node

    from kp3d_ros.core.params import load_params, parse_overrides
    from kp3d_ros.ros.replay import BagPlayer
    from kp3d_ros.ros.run import make_node, spin_until

    bag = args.bag or ensure_bag(ROOT / "data" / "bags" / f"soak_{args.people}people_10s_seed{args.seed}.mcap",
                                 args.people, args.seed)
    overrides = parse_overrides(args.set)
    if args.lifecycle_manager:
        overrides["lifecycle.autostart"] = False
    params = load_params(overrides=overrides)
    rclpy.init()
    executor = MultiThreadedExecutor(num_threads=2)
    node = make_node(params)
    if node is None:
        return 1
    executor.add_node(node)
    manager = None
    if args.lifecycle_manager:
        manager = LifecycleClient(executor, f"/{node.get_name()}")
        if not (manager.change("configure") and manager.change("activate")):
            print("the node did not configure and activate through its lifecycle services", file=sys.stderr)
            return 1
    cycles, next_cycle = 0, None
    player, replay_process, replay_node = None, None, None
    if args.separate_replay:
        replay_process = subprocess.Popen([sys.executable, "-m", "kp3d_ros.cli", "replay", str(bag), "--loop",
                                           "--topics", "/points", "--wait-for-subscribers", "30"])
    else:
        replay_node = Node("kp3d_soak_replay")
        executor.add_node(replay_node)
        player = BagPlayer(replay_node, bag, loop=True, topics=["/points"])
        spin_until(executor, lambda: player.publishers["/points"].get_subscription_count() > 0, 5.0)
        player.start()
    latencies, people, activations = [], [], []  # activations: index of the first frame after each re-activation
    settings: list[bool | None] = []  # with --alternate: the parameter's value for each frame, None while settling
    seen = 0
    setting, flipped_at, next_flip, flips = None, 0.0, None, 0
    if args.alternate:
        setting = bool(params[args.alternate])

    def collect() -> None:
        nonlocal seen
        frames = node.stats.recent_frames()
        new = node.stats.processed - seen
        settled = setting if time.monotonic() - flipped_at >= args.settle else None
        for _, latency, count in frames[len(frames) - min(new, len(frames)):]:
            latencies.append(latency)
            people.append(count)
            settings.append(settled)
        seen += new

    spin_until(executor, lambda: node.stats.received > 0, 60.0)  # the first cloud starts the clock
    end = time.monotonic() + args.seconds
    if manager is not None and args.cycle > 0:
        next_cycle = time.monotonic() + args.cycle
    if args.alternate:
        flipped_at = time.monotonic()
        next_flip = flipped_at + args.block
    while time.monotonic() < end:
        spin_until(executor, lambda: False, 0.5)
        collect()
        if next_flip is not None and time.monotonic() >= next_flip:
            from rclpy.parameter import Parameter

            result = node.set_parameters([Parameter(args.alternate, value=not setting)])[0]
            if not result.successful:
                print(f"setting {args.alternate} failed: {result.reason}", file=sys.stderr)
                return 1
            setting, flipped_at, flips = not setting, time.monotonic(), flips + 1
            next_flip = flipped_at + args.block
        if next_cycle is not None and time.monotonic() >= next_cycle:
            if not manager.change("deactivate"):
                print("a lifecycle cycle failed", file=sys.stderr)
                return 1
            collect()  # the frames finished before the deactivation
            activations.append(len(latencies))
            if not manager.change("activate"):
                print("a lifecycle cycle failed", file=sys.stderr)
                return 1
            cycles += 1
            next_cycle = time.monotonic() + args.cycle
    stats = node.stats.snapshot()
    adapter_state = node.adapter.state() if node.adapter is not None else None
    if player is not None:
        player.stop()
    if replay_process is not None:
        replay_process.terminate()
        replay_process.wait(10)
    executor.shutdown()
    node.destroy_node()
    if manager is not None:
        manager.node.destroy_node()
    if replay_node is not None:
        replay_node.destroy_node()
    rclpy.try_shutdown()

    lat = np.array(latencies)
    summary = {
        "bag": str(bag), "seconds": args.seconds,
        "replay": "separate process" if args.separate_replay else "in process",
        "lifecycle": ("autostart" if manager is None else "lifecycle services"
                      + (f", deactivate/activate every {args.cycle:g} s ({cycles} cycles)" if args.cycle > 0 else "")),
        "received": stats["clouds_received"], "processed": stats["clouds_processed"],
        "dropped_newer_arrived": stats["clouds_dropped_newer_arrived"], "malformed": stats["clouds_malformed"],
        "frames_timed": int(lat.size), "people_mean": float(np.mean(people)) if people else 0.0,
        "e2e_median_ms": float(np.median(lat)), "e2e_p90_ms": float(np.percentile(lat, 90)),
        "e2e_p99_ms": float(np.percentile(lat, 99)), "e2e_max_ms": float(lat.max()),
        "latencies_ms": [round(float(v), 3) for v in lat],
        "first_frame_after_activation": activations,  # indices into latencies_ms
        "stage_median_ms": {k[len("latency_"):-len("_median_ms")]: round(v, 2) for k, v in stats.items()
                            if k.startswith("latency_") and k.endswith("_median_ms")},
        "node_stats": {k: v for k, v in stats.items() if isinstance(v, int | float | bool | str)},
        "adapter": adapter_state,
    }
    if args.alternate:
        summary["alternate"] = {"parameter": args.alternate, "block_s": args.block, "settle_s": args.settle,
                                "flips": flips, "settings": settings}
        for value in (False, True):
            part = lat[[s is value for s in settings]] if lat.size else lat
            if part.size:
                summary["alternate"][str(value).lower()] = {
                    "frames": int(part.size), "median_ms": float(np.median(part)),
                    "p95_ms": float(np.percentile(part, 95)), "p99_ms": float(np.percentile(part, 99)),
                    "max_ms": float(part.max())}
    print("| replay | seconds | received | processed | dropped | people/frame | e2e median | p90 | p99 | max |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    print(f"| {summary['replay']} | {args.seconds:.0f} | {summary['received']} | {summary['processed']} | "
          f"{summary['dropped_newer_arrived']} | {summary['people_mean']:.1f} | {summary['e2e_median_ms']:.1f} ms | "
          f"{summary['e2e_p90_ms']:.1f} ms | {summary['e2e_p99_ms']:.1f} ms | {summary['e2e_max_ms']:.1f} ms |")
    print("stage medians (ms, last 300 frames):", summary["stage_median_ms"])
    if args.alternate:
        print(f"| {args.alternate} | frames | median | p95 | p99 | max |")
        print("|---|---|---|---|---|---|")
        for value in ("false", "true"):
            row = summary["alternate"].get(value)
            if row:
                print(f"| {value} | {row['frames']} | {row['median_ms']:.1f} ms | {row['p95_ms']:.1f} ms | "
                      f"{row['p99_ms']:.1f} ms | {row['max_ms']:.1f} ms |")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
