"""Stage II's choice of output: the source model or one of the rounds' models, by a label-free signal.

The signal is the held-back Stage II loss: the run's loss weights on the validation tracks (never trained
on), with the segmentation pseudo-labels of the frozen source model for every candidate (as round 1
validates), so that all candidates are scored by one objective. The source model is always a candidate
and wins ties, so by this signal the output is never worse than the start. The segmentation term favours
the source a little (its own confident labels); that bias is on the side of caution. The run writes the
choice as OUT/selection.json and OUT/selection.md.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import torch

from kp3d_ros import losses
from kp3d_ros.train.distributed import SINGLE, Ranks

SIGNAL = "held-back Stage II loss (source pseudo-labels)"


def held_back_signal(model: torch.nn.Module, source_state: dict, cfg: dict, val_prepared: list,
                     ranks: Ranks = SINGLE) -> float | None:
    """The signal of `model`'s current weights (lower is better), averaged over the ranks' held-back
    tracks; None when no rank holds any back."""
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
    share = {"signal": float(np.mean(values))} if values else {}
    combined = combine_validation(ranks.gathered((len(values), share)))
    return combined.get("signal")


def choose(signals: dict[str, float | None]) -> tuple[str, str]:
    """(name, why): the candidate with the lowest finite signal; the first one (the source) on ties, and
    the last one when no candidate has a signal (nothing held back)."""
    names = list(signals)
    finite = {n: v for n, v in signals.items() if v is not None and np.isfinite(v)}
    if not finite:
        return names[-1], "no held-back pairs to score on: the last round's model, as without selection"
    best = min(finite, key=lambda n: (finite[n], names.index(n)))
    if best == names[0]:
        return best, f"no round scored below the source model's {finite[best]:.5f}"
    return best, f"lowest {SIGNAL}: {finite[best]:.5f} against the source's {finite.get(names[0], float('nan')):.5f}"


def write_report(out: Path, selection: dict) -> str:
    """OUT/selection.json and OUT/selection.md; returns the markdown."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "selection.json").write_text(json.dumps(selection, indent=2) + "\n")
    lines = [f"# Stage II output: {selection['written']} ({selection['selected']})", "",
             f"Why: {selection['why']}.", "", f"| candidate | {SIGNAL} |", "|---|---|"]
    for name, value in selection["signals"].items():
        mark = " **(written)**" if name == selection["selected"] else ""
        lines.append(f"| {name}{mark} | {'n/a' if value is None else f'{value:.5f}'} |")
    if selection.get("calibration"):
        lines += ["", f"Bone calibration: {selection['calibration']}."]
    text = "\n".join(lines) + "\n"
    (out / "selection.md").write_text(text)
    return text
