"""Long-stream online adaptation (issue 15): the node's OnlineAdapter, as shipped, on an unlabelled target
stream, scored on a labelled target test every --eval-every steps.

The adapter runs with the node's defaults (``adaptation.*``; override with --set), a real ONNX Runtime
backend and its guards. Frame pairs of the unlabelled sequences (``scripts/stage2_experiment.py data``)
are submitted in order, track after track, looping over the data as long as needed; after each submit
the adapter takes a step when its buffer holds a batch, and considers a swap every --swap-every steps
(the node does so every ``adaptation.min_interval_s``). At step 0 and every --eval-every steps the
weights the backend runs (the accepted ones) are scored on the labelled test sequences.

Long runs go in pieces: --resume continues a run directory as a node restart would (the adapter
resumes its saved accepted weights from ``adaptation.checkpoint_dir``; the optimizer starts afresh and
the swap / rollback / reset counters count from the restart) at the stream position, step count and
overrides of ``progress.json``. Every evaluation is a row of ``log.csv``; ``report.md`` is rewritten
after each.

Run: .venv/bin/python benchmarks/adaptation_stream.py --data data/sig_dw/target_train
         --test data/sig_dw/target_test_big --out runs/adapt_stream_dw --steps 10000 [--resume]
"""

from __future__ import annotations

import argparse
import csv
import json
import time
from pathlib import Path

import torch

from kp3d_ros.adaptation import OnlineAdapter
from kp3d_ros.backends.onnxruntime_backend import OnnxRuntimeBackend
from kp3d_ros.core.params import defaults, parse_overrides
from kp3d_ros.model.checkpoint import load_model, save_checkpoint
from kp3d_ros.model.export import export_checkpoint
from kp3d_ros.train.stage2 import DEFAULTS, evaluate_sequences, load_sequence_pairs

FIELDS = ("step", "mpjpe_cm", "change_pct", "swaps", "held", "rollbacks", "resets", "on_source", "signal",
          "source_signal", "wall_s")


def in_use(adapter: OnlineAdapter, directory: Path, checkpoint: str, test: str) -> dict[str, float]:
    """The labelled scores of the weights the backend runs (the adapter's accepted ones)."""
    if adapter.state()["on_source"]:
        return evaluate_sequences(checkpoint, test)
    model, _ = load_model(checkpoint)
    model.load_state_dict(adapter.accepted_state())
    save_checkpoint(directory / "in_use.pt", model, dict(adapter.meta))
    return evaluate_sequences(directory / "in_use.pt", test)


def write_report(out: Path, rows: list[dict], args: argparse.Namespace) -> None:
    lines = [f"# Online adaptation on a long stream ({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())})", "",
             f"Data {args.data} (unlabelled), test {args.test}; model {args.checkpoint}; overrides "
             f"{args.set or 'none'}; a swap considered every {args.swap_every} steps.", "",
             "| step | MPJPE cm | vs source | swaps | held | rollbacks | resets | on source | signal | source signal |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['step']} | {float(r['mpjpe_cm']):.3f} | {float(r['change_pct']):+.2f} % | {r['swaps']} | "
                     f"{r.get('held', '')} | "
                     f"{r['rollbacks']} | {r['resets']} | {r['on_source']} | {float(r['signal']):.4g} | "
                     f"{float(r['source_signal']):.4g} |")
    (out / "report.md").write_text("\n".join(lines) + "\n")


def main(args: argparse.Namespace) -> int:
    torch.set_num_threads(1)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    progress_path, log_path = out / "progress.json", out / "log.csv"
    if progress_path.exists() and not args.resume:
        raise SystemExit(f"{out} holds a run: --resume to continue it, or choose another --out")
    progress = json.loads(progress_path.read_text()) if args.resume and progress_path.exists() else {
        "step": 0, "position": 0, "wall_s": 0.0}
    rows = list(csv.DictReader(log_path.open())) if args.resume and log_path.exists() else []
    args.set = args.set or progress.get("set", [])  # a resumed piece keeps the run's overrides
    export_checkpoint(args.checkpoint, out / "source.onnx")
    backend = OnnxRuntimeBackend(out / "source.onnx", max_batch=8, threads=1)
    params = defaults() | parse_overrides(args.set) | {"adaptation.checkpoint_dir": str(out / "adapter")}
    adapter = OnlineAdapter(args.checkpoint, backend, params, start=False)
    pairs = [p for track in load_sequence_pairs(args.data, DEFAULTS | {"max_sequences": args.sequences})
             for p in track]
    if not pairs:
        raise SystemExit(f"no frame pairs in {args.data}")
    source_mpjpe = float(rows[0]["mpjpe_cm"]) if rows else None
    step, position, wall = int(progress["step"]), int(progress["position"]), float(progress["wall_s"])
    started = time.monotonic()

    def evaluate() -> None:
        nonlocal source_mpjpe
        mpjpe = in_use(adapter, out, args.checkpoint, args.test)["mpjpe_cm"]
        source_mpjpe = mpjpe if source_mpjpe is None else source_mpjpe
        state = adapter.state()
        rows.append({"step": step, "mpjpe_cm": mpjpe, "change_pct": 100 * (mpjpe / source_mpjpe - 1),
                     "swaps": state["swaps"], "held": state.get("held", 0), "rollbacks": state["rollbacks"],
                     "resets": state["resets"],
                     "on_source": state["on_source"], "signal": state["signal"],
                     "source_signal": state["source_signal"], "wall_s": round(wall + time.monotonic() - started, 1)})
        with log_path.open("w", newline="") as f:
            writer = csv.DictWriter(f, FIELDS)
            writer.writeheader()
            writer.writerows(rows)
        progress_path.write_text(json.dumps({"step": step, "position": position, "set": args.set,
                                             "wall_s": wall + time.monotonic() - started}))
        write_report(out, rows, args)
        print(f"step {step}: MPJPE {mpjpe:.3f} cm ({rows[-1]['change_pct']:+.2f} %), swaps {state['swaps']}, "
              f"held {state.get('held', 0)}, rollbacks {state['rollbacks']}, resets {state['resets']}", flush=True)

    if not rows:
        evaluate()
    deadline = started + 60 * args.max_minutes if args.max_minutes > 0 else float("inf")
    while step < args.steps and time.monotonic() < deadline:
        pair = pairs[position % len(pairs)]
        position += 1
        adapter.submit(pair.track, pair.src, pair.dst, -pair.backward)
        if not adapter.step():
            continue
        step += 1
        if step % args.swap_every == 0:
            adapter.consider_swap(force=True)
        if step % args.eval_every == 0:
            evaluate()
    if step % args.eval_every:
        evaluate()  # the piece's last state, so a stopped piece keeps what it did
    print(f"{'done' if step >= args.steps else 'stopped'} at step {step} of {args.steps}: {out / 'report.md'}")
    return 0


def parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, help="unlabelled target sequences (labels unused)")
    parser.add_argument("--test", required=True, help="labelled target test sequences")
    parser.add_argument("--checkpoint", default="models/kp3d_stage1.pt", help="the source model")
    parser.add_argument("--out", required=True, help="run directory")
    parser.add_argument("--steps", type=int, default=10000)
    parser.add_argument("--eval-every", type=int, default=500)
    parser.add_argument("--swap-every", type=int, default=50)
    parser.add_argument("--sequences", type=int, default=0, help="use at most this many sequences (0: all)")
    parser.add_argument("--max-minutes", type=float, default=0.0, help="stop this piece after so long (0: no limit)")
    parser.add_argument("--set", action="append", default=[], help="adaptation parameter KEY=VALUE")
    parser.add_argument("--resume", action="store_true")
    return parser.parse_args()


if __name__ == "__main__":
    raise SystemExit(main(parse()))
