"""Label-free signals against the true error (issue 15): does a signal rank models as their MPJPE does?

For every labelled sequence domain (``scripts/stage2_experiment.py data --domain NAME``) and every
candidate model, the true MPJPE on the frames of its pairs (labels used for this report only) and five
label-free signals computed on the same unlabelled pairs:

- ``stage2_loss``: the held-back Stage II loss with the shipped recipe's weights (``--config``) and the
  source model's confident segmentation pseudo-labels, as ``kp3d_ros.train.selection`` scores rounds;
- ``source_gap``: mean joint distance (cm) between the candidate's and the source model's predictions;
- ``augment_gap``, ``bone_jitter``, ``left_right``: the geometric signals of ``kp3d_ros.train.signals``
  (two random subsamplings of each crop; bone lengths over a track; mirrored bones).

Candidates: the source model (first ``--model``), the other ``--model``s, and the source with its weights
perturbed by Gaussian noise of each ``--noise`` relative scale (a stand-in for drifted weights). Reported:
Spearman's rank correlation of each signal with the true MPJPE across candidates, per domain, and over all
(candidate, domain) rows with each domain's values taken relative to its source model's.

Run (data: ``scripts/stage2_experiment.py data --domain D --root data/signal_D --train 0 --test 40
--frames 6`` for D in source, clothing, dense_winter, children):
  .venv/bin/python benchmarks/adaptation_signal.py --domain source=data/signal_source/target_test ...
      --model models/kp3d_stage1.pt --model models/kp3d_poses_large.pt --noise 0.01,0.03,0.1 --out REPORT.md
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from pathlib import Path

import numpy as np
import torch
from scipy.stats import spearmanr

from kp3d_ros import losses
from kp3d_ros.model.checkpoint import load_model
from kp3d_ros.train import selection, stage2
from kp3d_ros.train import signals as label_free
from kp3d_ros.train.pairs import collate_pairs

SIGNALS = ("stage2_loss", "source_gap", "augment_gap", "bone_jitter", "left_right")
BATCH = 64


def perturbed(model: torch.nn.Module, scale: float, seed: int) -> torch.nn.Module:
    """A copy with every floating weight tensor w changed by N(0, (scale * std(w))^2)."""
    out = copy.deepcopy(model)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in out.parameters():
            if p.numel() > 1:
                p.add_(torch.randn(p.shape, generator=generator) * scale * float(p.std()))
    return out.eval()


def domain_rows(name: str, root: str, candidates: dict[str, torch.nn.Module], cfg: dict) -> list[dict]:
    tracks = stage2.load_sequence_pairs(root, cfg, log=lambda *_: None)
    pairs = [p for track in tracks for p in track]
    crops = [p.src for p in pairs]
    truth = np.stack([p.joints_t for p in pairs])
    track_of = np.array([p.track for p in pairs])
    source = next(iter(candidates.values()))
    num_points = int(cfg["num_points"])
    source_joints = label_free.predict_joints(source, crops, num_points, label_free.SUBSAMPLING_SEEDS[0])
    weights = losses.LossWeights.from_dict(cfg["loss"])
    rows = []
    for label, model in candidates.items():
        geometric, joints, _ = label_free.geometric_signals(model, crops, track_of, num_points)
        objective = stage2.Stage2Objective(model, source, weights, cfg["seg_target"], float(cfg["confidence"]))
        rng = np.random.default_rng(0)
        with torch.no_grad():
            loss = [float(objective(collate_pairs(pairs[s:s + BATCH], num_points, rng).batch)[0])
                    for s in range(0, len(pairs), BATCH)]
        rows.append({
            "domain": name, "model": label, "pairs": len(pairs),
            "mpjpe_cm": float(np.linalg.norm(joints - truth, axis=-1).mean() * 100),
            "stage2_loss": float(np.mean(loss)),
            "source_gap": float(np.linalg.norm(joints - source_joints, axis=-1).mean() * 100),
        } | geometric)
    return rows


def correlations(rows: list[dict]) -> dict[str, dict[str, float]]:
    """Spearman rho of each signal with MPJPE: per domain, and pooled with values relative to each domain's
    source row (the first model)."""
    out: dict[str, dict[str, float]] = {}
    domains = list(dict.fromkeys(r["domain"] for r in rows))
    pooled = {k: [] for k in ("mpjpe_cm", *SIGNALS)}
    for domain in domains:
        own = [r for r in rows if r["domain"] == domain]
        error = [r["mpjpe_cm"] for r in own]
        out[domain] = {s: float(spearmanr([r[s] for r in own], error)[0]) for s in SIGNALS}
        for key in pooled:
            base = own[0][key]
            pooled[key] += [r[key] - base for r in own]
    out["all (relative to each domain's source)"] = {
        s: float(spearmanr(pooled[s], pooled["mpjpe_cm"])[0]) for s in SIGNALS}
    return out


def verdicts(rows: list[dict]) -> list[dict]:
    """Per domain, what Stage II's selection rule (train.selection) would write among the trained models
    (the first is the source), against the held-back loss alone and the model with the lowest error."""
    out = []
    for domain in dict.fromkeys(r["domain"] for r in rows):
        own = {r["model"]: r for r in rows if r["domain"] == domain and "noise" not in r["model"]}
        chosen, _ = selection.choose({m: {k: r[k] for k in selection.CRITERIA} for m, r in own.items()})
        by_loss = min(own, key=lambda m: (own[m]["stage2_loss"], list(own).index(m)))
        best = min(own, key=lambda m: own[m]["mpjpe_cm"])
        source = next(iter(own.values()))["mpjpe_cm"]
        out.append({"domain": domain, "best": best, "rule": chosen, "loss_alone": by_loss,
                    "rule_change": own[chosen]["mpjpe_cm"] / source - 1,
                    "loss_alone_change": own[by_loss]["mpjpe_cm"] / source - 1})
    return out


def report(rows: list[dict], rho: dict, args: argparse.Namespace) -> str:
    lines = [f"# Label-free signals against the true error ({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())})",
             "", f"Models: {', '.join(args.model)}; weight noise {args.noise or 'none'}; recipe {args.config}.", "",
             "| domain | model | pairs | MPJPE cm | " + " | ".join(SIGNALS) + " |",
             "|---|---|---|---|" + "---|" * len(SIGNALS)]
    for r in rows:
        lines.append(f"| {r['domain']} | {r['model']} | {r['pairs']} | {r['mpjpe_cm']:.2f} | "
                     + " | ".join(f"{r[s]:.4g}" for s in SIGNALS) + " |")
    lines += ["", "Spearman rank correlation with MPJPE (1: the signal orders the models exactly as their error):", ""]
    for title, table in rho.items():
        lines += [f"{title}:", "", "| rows | " + " | ".join(SIGNALS) + " |", "|---|" + "---|" * len(SIGNALS)]
        for key, values in table.items():
            lines.append(f"| {key} | " + " | ".join(f"{values[s]:.2f}" for s in SIGNALS) + " |")
        lines.append("")
    lines += ["What the selection would write (change of MPJPE against the source model):", "",
              "| domain | lowest error | consensus rule (train.selection) | held-back loss alone |",
              "|---|---|---|---|"]
    for v in verdicts(rows):
        lines.append(f"| {v['domain']} | {v['best']} | {v['rule']} ({v['rule_change']:+.1%}) | "
                     f"{v['loss_alone']} ({v['loss_alone_change']:+.1%}) |")
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--domain", action="append", required=True, help="NAME=DIR of labelled sequences")
    parser.add_argument("--model", action="append", required=True, help="torch checkpoint; the first is the source")
    parser.add_argument("--noise", default="", help="comma-separated relative weight-noise scales of the source")
    parser.add_argument("--config", default="config/stage2_anchored.yaml", help="Stage II recipe (loss weights)")
    parser.add_argument("--out", default="", help="write the markdown report here (and .json beside it)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    cfg = stage2.load_config(args.config)
    candidates: dict[str, torch.nn.Module] = {}
    for path in args.model:
        model, meta = load_model(path)
        candidates[Path(path).stem] = model.eval()
        cfg["num_points"] = cfg.get("num_points") or int(meta["num_points"])
    source = next(iter(candidates.values()))
    for k, scale in enumerate(float(s) for s in args.noise.split(",") if s.strip()):
        candidates[f"source + {scale:g} noise"] = perturbed(source, scale, seed=k)
    rows = []
    for spec in args.domain:
        name, _, root = spec.partition("=")
        rows += domain_rows(name, root, candidates, cfg)
        print(f"{name}: {len(rows)} rows", flush=True)
    trained = [r for r in rows if "noise" not in r["model"]]
    rho = {"every candidate": correlations(rows),
           "the trained models only (no weight noise)": correlations(trained)}
    text = report(rows, rho, args)
    print(text)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text)
        Path(args.out).with_suffix(".json").write_text(
            json.dumps({"rows": rows, "spearman": rho, "selection": verdicts(rows)}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
