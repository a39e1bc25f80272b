"""Choose the body-share gate (detection.min_body_share, detection.body_share_smoothing) for a model on
validation bags: the full pipeline over every bag for each pair, people with >= 50 returns; the chosen pair has
the highest recall among those whose precision reaches --precision (ties: the higher precision). Each row also
says how many of the low people (lying, crawling: evaluate.is_low) were found.

Use validation bags only (other seeds than the bags you then report on):
  .venv/bin/python benchmarks/choose_gate.py --model models/kp3d_poses_large.onnx \
      --bag data/bags/val_street_seed33.mcap --bag data/bags/val_trans_seed31.mcap ... \
      --filters "detection.min_height=0.3 detection.min_width=0.3" --out REPORT.md
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from pose_coverage import bag_totals as totals


def choose(rows: list[dict], precision: float) -> dict | None:
    """The row with the highest recall among those at or above ``precision`` (ties: higher precision)."""
    ok = [r for r in rows if r["precision"] >= precision]
    return max(ok, key=lambda r: (r["recall"], r["precision"])) if ok else None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--bag", action="append", required=True, help="validation bag (repeatable)")
    parser.add_argument("--filters", default="", help="other parameters for every run (the candidate filters)")
    parser.add_argument("--thresholds", default="0.5,0.7,0.8,0.9", help="detection.min_body_share values")
    parser.add_argument("--smoothing", default="0,0.5,0.7", help="detection.body_share_smoothing values")
    parser.add_argument("--precision", type=float, default=0.95)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", help="write the report here (markdown)")
    args = parser.parse_args()
    rows = []
    for threshold in (float(v) for v in args.thresholds.split(",")):
        for smoothing in (float(v) for v in args.smoothing.split(",")):
            sets = [*args.filters.split(), f"detection.min_body_share={threshold:g}",
                    f"detection.body_share_smoothing={smoothing:g}"]
            rows.append({"threshold": threshold, "smoothing": smoothing} | totals(args.model, args.bag, sets,
                                                                                  args.threads))
            print(rows[-1], flush=True)
    best = choose(rows, args.precision)
    defaults = totals(args.model, args.bag, [], args.threads)
    lines = [f"# Body-share gate on validation bags ({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())})", "",
             f"Model `{args.model}`; bags {', '.join(f'`{Path(b).name}`' for b in args.bag)}; "
             f"filters `{args.filters or 'defaults'}`; people with >= 50 returns.", "",
             "| min_body_share | smoothing | matched | missed | false | recall | precision | low people found | |",
             "|---|---|---|---|---|---|---|---|---|"]
    lines += [f"| {r['threshold']:g} | {r['smoothing']:g} | {r['matched']} | {r['missed']} | {r['false']} | "
              f"{r['recall']:.3f} | {r['precision']:.3f} | {r['low']} | {'**chosen**' if r is best else ''} |"
              for r in rows]
    lines.append(f"| the node's defaults | | {defaults['matched']} | {defaults['missed']} | {defaults['false']} | "
                 f"{defaults['recall']:.3f} | {defaults['precision']:.3f} | {defaults['low']} | |")
    lines += ["", f"Chosen (highest recall at precision >= {args.precision:g}): "
              + (f"detection.min_body_share={best['threshold']:g} detection.body_share_smoothing={best['smoothing']:g}"
                 if best else "none reaches that precision"), ""]
    text = "\n".join(lines)
    print(text)
    if args.out:
        Path(args.out).write_text(text)
    return 0 if best else 1


if __name__ == "__main__":
    raise SystemExit(main())
