"""Stage II's choice of output: the source model or one of the rounds' models, by label-free signals.

Every candidate is scored on the held-back validation tracks (never trained on) by four signals, lower is
better for each:

- ``stage2_loss``: the run's own loss weights with the frozen source model's segmentation pseudo-labels
  (as round 1 validates), so that all candidates are scored by one objective;
- ``augment_gap``, ``bone_jitter``, ``left_right``: the geometric signals of ``train.signals``, which no
  round minimises.

A round is eligible only when it is below the source model on every signal; among the eligible rounds the
lowest augmentation gap wins, and without any the source model is written. The held-back loss alone falls
for every round, also for rounds that are worse (it is what they minimise): on the signal study's
candidates (benchmarks/results/adaptation_signal_stage2.md) it would have written a worse model on three of
four domains, the consensus on none. The run writes the choice as OUT/selection.json and OUT/selection.md.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import torch

from kp3d_ros import losses
from kp3d_ros.train import signals as label_free
from kp3d_ros.train.distributed import SINGLE, Ranks

CRITERIA = ("stage2_loss", *label_free.GEOMETRIC)
RANKED_BY = "augment_gap"
SIGNAL = ("every label-free signal below the source model's (held-back Stage II loss, augmentation gap, "
          "bone jitter, left/right mismatch), then the lowest augmentation gap")


def candidate_signals(model: torch.nn.Module, source_state: dict, cfg: dict, val_prepared: list,
                      val_crops: list[np.ndarray], val_track_ids: np.ndarray,
                      ranks: Ranks = SINGLE) -> dict[str, float]:
    """The signals of `model`'s current weights on the held-back tracks (`val_prepared`: the collated
    pairs, `val_crops` / `val_track_ids`: their source crops), averaged over the ranks; {} when no rank
    holds any back."""
    from kp3d_ros.train.stage2 import Stage2Objective, combine_validation

    frozen = None
    if cfg["seg_target"] == "confident":
        frozen = copy.deepcopy(model).eval()
        frozen.load_state_dict(source_state)
    objective = Stage2Objective(model, frozen, losses.LossWeights.from_dict(cfg["loss"]), cfg["seg_target"],
                                float(cfg["confidence"]))
    model.eval()
    with torch.no_grad():
        values = [float(objective(p.batch)[0]) for p in val_prepared]
    share: dict[str, float] = {}
    if values:
        geometric, _, _ = label_free.geometric_signals(model, val_crops, val_track_ids, int(cfg["num_points"]))
        share = {"stage2_loss": float(np.mean(values))} | {k: v for k, v in geometric.items() if np.isfinite(v)}
    combined = combine_validation(ranks.gathered((len(val_crops), share)))
    return {k: v for k, v in combined.items() if k in CRITERIA}


def not_below(candidate: dict[str, float], reference: dict[str, float]) -> list[str]:
    """The reference's finite signals that `candidate` is not strictly below (missing or NaN counts as not)."""
    worse = []
    for key, value in reference.items():
        if value is None or not np.isfinite(value):
            continue
        own = candidate.get(key)
        if own is None or not np.isfinite(own) or not own < value:
            worse.append(key)
    return worse


def choose(scores: dict[str, dict[str, float]]) -> tuple[str, str]:
    """(name, why). The first candidate is the source model; a later one is eligible when each of its
    finite criteria is below the source's and it has every criterion the source has; the eligible one
    with the lowest augmentation gap (held-back loss without one) wins. The last candidate is taken when
    nothing was scored (nothing held back)."""
    names = list(scores)
    source = {k: v for k, v in scores[names[0]].items() if v is not None and np.isfinite(v)}
    if not source:
        return names[-1], "no held-back pairs to score on: the last round's model, as without selection"
    key = RANKED_BY if RANKED_BY in source else "stage2_loss"
    eligible, refused = [], []
    for name in names[1:]:
        own = scores[name]
        worse = not_below(own, source)
        if worse:
            refused.append(f"{name}: {', '.join(f'{k} {_fmt(own.get(k))} >= {source[k]:.4g}' for k in worse)}")
        else:
            eligible.append(name)
    if not eligible:
        return names[0], "no round was below the source model on every signal (" + "; ".join(refused) + ")"
    best = min(eligible, key=lambda n: (scores[n][key], names.index(n)))
    return best, (f"below the source model on every signal, and the lowest {key} of the {len(eligible)} that "
                  f"were: {scores[best][key]:.4g} against the source's {source[key]:.4g}")


def _fmt(value: float | None) -> str:
    return "n/a" if value is None or not np.isfinite(value) else f"{value:.4g}"


def write_report(out: Path, selection: dict) -> str:
    """OUT/selection.json and OUT/selection.md; returns the markdown."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "selection.json").write_text(json.dumps(selection, indent=2) + "\n")
    lines = [f"# Stage II output: {selection['written']} ({selection['selected']})", "",
             f"Rule: {SIGNAL}.", "", f"Why: {selection['why']}.", "",
             "| candidate | " + " | ".join(CRITERIA) + " |", "|---|" + "---|" * len(CRITERIA)]
    for name, values in selection["signals"].items():
        mark = " **(written)**" if name == selection["selected"] else ""
        lines.append(f"| {name}{mark} | " + " | ".join(_fmt(values.get(k)) for k in CRITERIA) + " |")
    if selection.get("calibration"):
        lines += ["", f"Bone calibration: {selection['calibration']}."]
    text = "\n".join(lines) + "\n"
    (out / "selection.md").write_text(text)
    return text
