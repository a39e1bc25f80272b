"""Stage II keeps what is better and never ends a finished training with an error: small real runs over
synthetic sequences, where the output is chosen among the source model and the rounds by label-free
signals (train.selection), and an implausible bone calibration is skipped with a warning."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from kp3d_ros import losses
from kp3d_ros.model.checkpoint import load_model, load_payload, save_checkpoint
from kp3d_ros.skeleton import BONE_NAMES
from kp3d_ros.synth.person import DomainConfig
from kp3d_ros.synth.sequence import write_sequences
from kp3d_ros.train import selection, stage2

MODEL = Path(__file__).resolve().parents[1] / "models" / "kp3d_stage1.pt"


@pytest.fixture(scope="module")
def sequences(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("sequences")
    return write_sequences(root, 6, 3, seed=12, config=DomainConfig(distance_range=(4.0, 10.0)), progress=False)


def small_config(sequences: Path, out: Path, **train) -> dict:
    cfg = stage2.load_config(None)
    cfg |= {"init": str(MODEL), "data": str(sequences), "out": str(out), "val_sequences": 2}
    cfg["train"] |= {"epochs": 1, "steps_per_epoch": 2, "batch_size": 4, "max_minutes": 0, "warmup_steps": 0}
    cfg["train"] |= train
    return cfg


def weights_equal(a: dict, b: dict) -> bool:
    return all(torch.equal(a[k], b[k]) for k in a if k != "calibration.scale")


def test_every_round_made_worse_writes_the_source_model(sequences: Path, tmp_path: Path):
    model, meta = load_model(MODEL)  # a calibrated source: written back with its factors
    model.calibration.scale.fill_(0.9)
    init = tmp_path / "calibrated.pt"
    save_checkpoint(init, model, dict(meta) | {"bone_calibration": [0.9] * len(BONE_NAMES)})
    cfg = small_config(sequences, tmp_path / "run", lr=1.0, grad_clip=0.0)  # a learning rate that wrecks it
    cfg |= {"rounds": 2, "init": str(init)}
    lines: list[str] = []
    report = stage2.run(cfg, log=lines.append)
    chosen = report["selection"]
    assert chosen["selected"] == "source" and chosen["weights_of"] == str(init)
    signals = chosen["signals"]
    assert set(signals) == {"source", "round1", "round2"}
    assert all(set(signals[name]) == set(selection.CRITERIA) for name in signals)
    assert all(signals[r]["stage2_loss"] > signals["source"]["stage2_loss"] for r in ("round1", "round2"))
    written = load_payload(tmp_path / "run" / "selected.pt")
    assert written["meta"]["selected"] == "source" and written["meta"]["bone_calibration"] == [0.9] * len(BONE_NAMES)
    assert torch.allclose(written["state_dict"]["calibration.scale"], torch.tensor(0.9))
    assert weights_equal(written["state_dict"], load_payload(MODEL)["state_dict"])
    assert not weights_equal(load_payload(tmp_path / "run" / "last.pt")["state_dict"], written["state_dict"])
    on_disk = json.loads((tmp_path / "run" / "selection.json").read_text())
    assert on_disk["selected"] == "source"
    assert all(on_disk["signals"][name] == pytest.approx(signals[name]) for name in signals)
    markdown = (tmp_path / "run" / "selection.md").read_text()
    assert "source (written)" in markdown.replace("**", "") and "round2" in markdown and "augment_gap" in markdown
    assert any("Stage II output" in x for x in lines)  # the report is printed too


def test_the_source_signal_is_round_one_before_training(sequences: Path, tmp_path: Path):
    cfg = small_config(sequences, tmp_path / "run", lr=1e-3)
    lines: list[str] = []
    report = stage2.run(cfg, log=lines.append)
    before = next(x for x in lines if "before: " in x)
    assert f"'val_loss': {report['selection']['signals']['source']['stage2_loss']}" in before
    assert report["selection"]["selected"] in ("source", "round1")


def test_implausible_calibration_is_skipped_with_a_warning(sequences: Path):
    population = [round(0.5 * v, 4) for v in losses.REFERENCE_BONE_LENGTHS.tolist()]  # factors about 0.5
    cfg = stage2.load_config(None) | {"init": str(MODEL), "calibrate_bones": True}
    cfg["loss"] |= {"bone_prior_lengths": population}
    model, meta = load_model(MODEL)
    cfg["num_points"] = int(meta["num_points"])
    crops = [pair.src for track in stage2.load_sequence_pairs(sequences, cfg, log=lambda *_: None) for pair in track]
    lines: list[str] = []
    report: dict = {}
    assert stage2.calibrated_or_skipped(model, cfg, crops, report, lines.append) is None  # no exception
    assert any(x.startswith("warning: bone calibration skipped") and "outside (0.7, 1.3)" in x for x in lines)
    assert torch.all(model.calibration.scale == 1) and report["calibration"].startswith("skipped")


def test_a_source_model_that_wins_is_written_as_it_came_without_calibration(sequences: Path, tmp_path: Path):
    """calibrate_bones calibrates a chosen round only: the source model, when no round is better, is not
    recalibrated (that made it worse on its own domain)."""
    cfg = small_config(sequences, tmp_path / "run", lr=1.0, grad_clip=0.0) | {"calibrate_bones": True}
    report = stage2.run(cfg, log=lambda *_: None)
    assert report["selection"]["selected"] == "source" and report["bone_calibration"] is None
    assert report["selection"]["calibration"].startswith("not applied")
    written, shipped = load_payload(tmp_path / "run" / "selected.pt"), load_payload(MODEL)
    assert weights_equal(written["state_dict"], shipped["state_dict"])
    assert torch.all(written["state_dict"]["calibration.scale"] == 1)  # the shipped model carries no factors
    assert not (tmp_path / "run" / "uncalibrated.pt").exists()


def scores(loss: float, gap: float, jitter: float = 0.1, mismatch: float = 0.1) -> dict[str, float]:
    return {"stage2_loss": loss, "augment_gap": gap, "bone_jitter": jitter, "left_right": mismatch}


def test_choose_needs_every_signal_below_the_source():
    source = scores(1.0, 3.0)
    assert selection.choose({"source": source, "round1": source})[0] == "source"  # a tie is not better
    # the held-back loss falls (what the rounds minimise) but the augmentation gap rises: refused
    name, why = selection.choose({"source": source, "round1": scores(0.5, 3.1, 0.09, 0.09)})
    assert name == "source" and "round1: augment_gap 3.1 >= 3" in why
    name, _ = selection.choose({"source": source, "round1": scores(0.9, 2.9, 0.11, 0.09)})
    assert name == "source"  # bone jitter up
    name, why = selection.choose({"source": source, "round1": scores(0.9, 2.5, 0.09, 0.09),
                                  "round2": scores(0.8, 2.7, 0.08, 0.08)})
    assert name == "round1" and "lowest augment_gap of the 2" in why  # both eligible, the lowest gap
    name, _ = selection.choose({"source": source, "round1": scores(0.9, 2.5, float("nan"), 0.09)})
    assert name == "source"  # a signal the source has but the round lacks counts against the round


def test_not_below_lists_every_signal_that_is_not_strictly_lower():
    reference = scores(1.0, 3.0) | {"unused": float("nan")}
    assert selection.not_below(scores(0.9, 2.9, 0.09, 0.09), reference) == []
    assert selection.not_below(scores(0.9, 3.0, 0.09, 0.11), reference) == ["augment_gap", "left_right"]
    assert selection.not_below({"stage2_loss": 0.5}, reference) == ["augment_gap", "bone_jitter", "left_right"]


def test_choose_takes_the_last_round_without_held_back_pairs():
    name, why = selection.choose({"source": {}, "round1": {}})
    assert name == "round1" and "no held-back pairs" in why


def test_clearly_lower_needs_a_paired_difference_beyond_two_standard_errors():
    from kp3d_ros.train.signals import clearly_lower

    rng = np.random.default_rng(0)
    reference = rng.uniform(2, 6, 32)
    assert clearly_lower(reference - 0.5 + rng.normal(0, 0.1, 32), reference)  # lower on almost every crop
    assert not clearly_lower(reference + rng.normal(0, 1.0, 32) - 0.05, reference)  # lower on average, by noise
    assert not clearly_lower(reference, reference) and not clearly_lower(reference[:1] - 1, reference[:1])
