"""Pose coverage (issue 13): every figure of the issue for one or more models, in one markdown report.

For each model:
- the pose-diverse test split (``kp3d synth --split-config poses-test``: held-out bodies, the OS1-128
  sensor, seeds not used in training): MPJPE and PA-MPJPE per pose family for people with >= 50 returns,
  PEM-style figures overall, MPJPE against the number of points, and the body-share gate's
  precision-recall curve against crops of clutter alone;
- the validation split (``--val``), where the gate's threshold is chosen: the smallest min_body_share
  whose crop-level precision is at least ``--precision``;
- walking people on the OS1-128 test split of the shipped model's card (``--walking``), >= 100 points;
- the full pipeline on street bags with pose-diverse people (``kp3d synth-bag --pose-share``), people
  with >= 50 returns, with the node's defaults and with each ``--set`` variant; also how many of the low
  people (lying, crawling: ``evaluate.is_low``) were found.

Run (the data commands are in benchmarks/results/pose_coverage.md):
  .venv/bin/python benchmarks/pose_coverage.py --model models/kp3d_stage1.onnx [--model runs/X/best.pt]
      --test data/poses_test/test --val data/stage1_poses/val --walking data/stage1/test_dense
      --bag data/bags/poses_street_seed21.mcap ... --variant "detection.min_height=0.3 ..." --out REPORT.md
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from kp3d_ros.train import evaluate


def split_summary(model: str, path: str, threads: int) -> dict:
    from kp3d_ros.synth.dataset import ShardedDataset

    dataset = ShardedDataset(path, cache_shards=1 << 20)
    backend, _ = evaluate.open_backend(model, 32, threads)
    pred = evaluate.predict_dataset(backend, dataset, np.arange(len(dataset)), 32)
    return evaluate.summarise(pred)


def bag_summary(model: str, bag: str, sets: list[str], threads: int) -> dict:
    args = argparse.Namespace(model=model, bag=bag, topic="/points", gt_topic="/kp3d/gt/keypoints",
                              seg_topic="/kp3d/gt/segmentation", min_points=evaluate.SCORED_POINTS, params=None,
                              set=sets, threads=threads, json=None)
    out = Path(f"/tmp/pose_coverage_{Path(bag).stem}_{abs(hash((model, tuple(sets))))}.json")
    args.json = str(out)
    if evaluate.evaluate_bag(args) != 0:
        raise RuntimeError(f"kp3d eval --bag {bag} failed")
    return json.loads(out.read_text())


def bag_totals(model: str, bags: list[str], sets: list[str], threads: int) -> dict:
    """The full pipeline's counts over ``bags`` with ``sets``: matched, missed, false, recall, precision, the low
    people found of all, MPJPE over the matched people (weighted by people) and the bags' mean PEM (cm)."""
    matched = missed = false = low_found = low_all = 0
    errors = []
    for bag in bags:
        b = bag_summary(model, bag, sets, threads)
        matched, missed, false = matched + b["pem"]["matched"], missed + b["pem"]["missed"], false + b["pem"]["false"]
        low_found += b["low_people"]["matched"]
        low_all += b["low_people"]["matched"] + b["low_people"]["missed"]
        if "matched" in b:
            errors.append((b["matched"]["mpjpe_cm"], b["matched"]["people"], b["pem"]["pem_cm"]))
    return {"matched": matched, "missed": missed, "false": false, "recall": matched / max(matched + missed, 1),
            "precision": matched / max(matched + false, 1), "low": f"{low_found} / {low_all}",
            "mpjpe_cm": sum(e * n for e, n, _ in errors) / max(sum(n for _, n, _ in errors), 1),
            "pem_cm": float(np.mean([p for _, _, p in errors])) if errors else float("nan")}


def chosen_threshold(curve: list[dict], precision: float) -> float:
    """The smallest threshold whose precision reaches ``precision`` (the largest one if none does)."""
    ok = [r["threshold"] for r in curve if r["precision"] >= precision]
    return min(ok) if ok else max(r["threshold"] for r in curve)


def report(args: argparse.Namespace) -> str:
    lines = [f"# Pose coverage report ({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())})", ""]
    for model in args.model:
        lines += [f"## `{model}`", ""]
        test = split_summary(model, args.test, args.threads)
        val = split_summary(model, args.val, args.threads) if args.val else None
        threshold = chosen_threshold(val["detection"], args.precision) if val and val["detection"] else None
        s = test["ge50_points"]
        lines += [f"Pose-diverse test split `{args.test}`, people with >= {evaluate.SCORED_POINTS} points: "
                  f"{s['people']} people, MPJPE {s['mpjpe_cm']:.2f} cm, PA-MPJPE {s['pa_mpjpe_cm']:.2f} cm.", "",
                  "| family | people | MPJPE cm | PA-MPJPE cm | body-part accuracy |", "|---|---|---|---|---|"]
        lines += [f"| {k} | {v['people']} | {v['mpjpe_cm']:.2f} | {v['pa_mpjpe_cm']:.2f} | {v['part_accuracy']:.2f} |"
                  for k, v in test["by_family"].items()]
        lines += ["", "| person points | people | MPJPE cm |", "|---|---|---|"]
        lines += [f"| [{r['lo']:g}, {r['hi']:g}) | {r['count']} | {r['mean']:.2f} |" for r in test["by_points"]
                  if r["count"]]
        for name, summary in (("test", test), ("validation", val)):
            if summary and summary["detection"]:
                lines += ["", f"Body-share gate, {name} split (crops of people with >= {evaluate.SCORED_POINTS} "
                          "points against crops of clutter alone):", "",
                          "| min_body_share | recall | precision | false |", "|---|---|---|---|"]
                lines += [f"| {r['threshold']:g} | {r['recall']:.3f} | {r['precision']:.3f} | {r['false']} |"
                          for r in summary["detection"]]
        if threshold is not None:
            lines += ["", f"Threshold chosen on the validation split (precision >= {args.precision}): "
                      f"min_body_share {threshold:g}."]
        if args.walking:
            w = split_summary(model, args.walking, args.threads)["ge100_points"]
            lines += ["", f"Walking people, `{args.walking}`, >= 100 points: {w['people']} people, "
                      f"MPJPE {w['mpjpe_cm']:.2f} cm."]
        if args.bag:
            variants = [("defaults", [])] + [(v, v.split()) for v in args.variant]
            if threshold is not None:
                variants += [(f"{v} detection.min_body_share={threshold:g}".strip(),
                              [*v.split(), f"detection.min_body_share={threshold:g}"]) for v in args.variant]
            lines += ["", f"Full pipeline on {len(args.bag)} street bag(s), people with >= "
                      f"{evaluate.SCORED_POINTS} points:", "",
                      "| parameters | matched | missed | false | recall | precision | MPJPE cm (matched) | PEM cm "
                      "| low people: found / all |",
                      "|---|---|---|---|---|---|---|---|---|"]
            for name, sets in variants:
                t = bag_totals(model, args.bag, sets, args.threads)
                lines.append(f"| {name} | {t['matched']} | {t['missed']} | {t['false']} | {t['recall']:.3f} | "
                             f"{t['precision']:.3f} | {t['mpjpe_cm']:.2f} | {t['pem_cm']:.2f} | {t['low']} |")
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", action="append", required=True, help="ONNX model or torch checkpoint (repeatable)")
    parser.add_argument("--test", required=True, help="pose-diverse test split")
    parser.add_argument("--val", help="validation split on which the gate's threshold is chosen")
    parser.add_argument("--walking", help="the walking test split (data/stage1/test_dense)")
    parser.add_argument("--bag", action="append", default=[], help="street bag with pose-diverse people (repeatable)")
    parser.add_argument("--variant", action="append", default=[], help="parameter overrides to try on the bags")
    parser.add_argument("--precision", type=float, default=0.95, help="crop-level precision the threshold must reach")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", help="write the report here (markdown)")
    args = parser.parse_args()
    text = report(args)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")


if __name__ == "__main__":
    main()
