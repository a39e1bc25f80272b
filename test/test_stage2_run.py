"""A short real Stage II run over synthetic sequences, in rounds: each round starts from the previous
round's model, keeps its own checkpoints, and the last round's model is the run's."""

import re
from pathlib import Path

import numpy as np
import pytest
import torch

from kp3d_ros import losses
from kp3d_ros.model.checkpoint import load_payload
from kp3d_ros.synth.person import DomainConfig
from kp3d_ros.synth.sequence import SequenceDataset, write_sequences
from kp3d_ros.train import stage2

MODEL = Path(__file__).resolve().parents[1] / "models" / "kp3d_stage1.pt"


@pytest.fixture(scope="module")
def sequences(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("sequences")
    return write_sequences(root, 6, 3, seed=11, config=DomainConfig(distance_range=(4.0, 10.0)), progress=False)


def test_rounds_chain_models_and_keep_each_round(sequences: Path, tmp_path: Path):
    cfg = stage2.load_config(None)
    cfg |= {"init": str(MODEL), "data": str(sequences), "out": str(tmp_path / "run"), "rounds": 2,
            "val_sequences": 2}
    cfg["train"] |= {"epochs": 1, "steps_per_epoch": 3, "batch_size": 4, "max_minutes": 0, "lr": 1e-3,
                     "warmup_steps": 0}
    cfg["loss"] |= {"sym": 50.0, "flow": 5.0}
    lines: list[str] = []
    stage2.run(cfg, log=lines.append)
    # round 2 starts where round 1 ended: its 'before' MPJPE on the labelled val pairs is round 1's last
    end_of_first = next(x for x in lines if x.startswith("epoch=1"))
    after_first = float(re.search(r"val_mpjpe_cm=([0-9.]+)", end_of_first).group(1))
    befores = [float(m.group(1)) for x in lines if (m := re.search(r"before: .*'val_mpjpe_cm': ([0-9.]+)", x))]
    assert len(befores) == 2 and befores[1] == pytest.approx(after_first, rel=1e-3)
    assert befores[0] != pytest.approx(after_first, rel=1e-3)
    first = load_payload(tmp_path / "run" / "round1" / "last.pt")
    final = load_payload(tmp_path / "run" / "last.pt")
    start = load_payload(MODEL)
    assert (first["meta"]["round"], final["meta"]["round"], final["meta"]["rounds"]) == (1, 2, 2)
    key = next(k for k, v in start["state_dict"].items() if v.is_floating_point() and v.numel() > 100)
    assert not torch.equal(first["state_dict"][key], start["state_dict"][key])  # round 1 trained
    assert not torch.equal(final["state_dict"][key], first["state_dict"][key])  # round 2 went on from it


def test_sequence_pairs_carry_the_estimated_ground_only_when_asked(sequences: Path):
    frames = SequenceDataset(sequences)[0]
    with_ground = stage2.sequence_pairs(frames, 0, None, estimate_ground=True)
    assert with_ground
    for t, pair in enumerate(with_ground):  # the node's estimate, within a few cm of the true ground
        assert abs(pair.ground_z_t - frames[t].centre[2]) < 0.1
        assert abs(pair.ground_z_t1 - frames[t + 1].centre[2]) < 0.1
    assert all(np.isnan(p.ground_z_t) for p in stage2.sequence_pairs(frames, 0, None))


def test_rounds_must_be_positive_and_cannot_resume(sequences: Path, tmp_path: Path):
    cfg = stage2.load_config(None) | {"init": str(MODEL), "data": str(sequences), "out": str(tmp_path)}
    with pytest.raises(ValueError, match="rounds"):
        stage2.run(cfg | {"rounds": 0}, log=lambda _: None)
    with pytest.raises(ValueError, match="resume"):
        stage2.run(cfg | {"rounds": 2}, resume=True, log=lambda _: None)


def test_calibrate_bones_matches_the_population_and_keeps_the_uncalibrated_model(sequences: Path, tmp_path: Path):
    from kp3d_ros.model.checkpoint import load_model

    population = [round(0.9 * v, 4) for v in losses.REFERENCE_BONE_LENGTHS.tolist()]
    cfg = stage2.load_config(None)
    # val_sequences 0: nothing held back, so the round's model is written (and calibrated) without selection
    cfg |= {"init": str(MODEL), "data": str(sequences), "out": str(tmp_path / "run"), "val_sequences": 0,
            "calibrate_bones": True, "calibrate_max_factor": 1.3}
    cfg["train"] |= {"epochs": 1, "steps_per_epoch": 2, "batch_size": 4, "max_minutes": 0, "warmup_steps": 0}
    cfg["loss"] |= {"bone_prior_lengths": population}
    report = stage2.run(cfg, log=lambda _: None)
    assert report["selection"]["selected"] == "round1"
    assert "optimizer" in load_payload(tmp_path / "run" / "last.pt")  # the training state, for --resume
    final = load_payload(tmp_path / "run" / "selected.pt")  # the output: the chosen model, calibrated
    assert final["meta"]["bone_calibration"] == report["bone_calibration"]
    assert final["meta"]["selected"] == report["selection"]["selected"]
    torch.testing.assert_close(final["state_dict"]["calibration.scale"],
                               torch.tensor(report["bone_calibration"]), atol=1e-4, rtol=0)
    uncalibrated, _ = load_model(tmp_path / "run" / "uncalibrated.pt")
    assert torch.all(uncalibrated.calibration.scale == 1)
    # on the crops it was measured on, the calibrated model's mean bone lengths are the population's
    model, _ = load_model(tmp_path / "run" / "selected.pt")
    tracks = stage2.load_sequence_pairs(sequences, cfg, log=lambda _: None)
    tracks = tracks[min(cfg["val_sequences"], len(tracks) // 4):]  # the training tracks, as run() splits them
    crops = [pair.src for pairs in tracks for pair in pairs]
    lengths = stage2.predicted_bone_lengths(model, crops, cfg["num_points"], seed=cfg["seed"])
    np.testing.assert_allclose(lengths.numpy(), population, rtol=1e-4)
    # --resume trains on from last.pt, and the factors are measured again
    cfg["train"] = cfg["train"] | {"epochs": 2}
    report = stage2.run(cfg, resume=True, log=lambda _: None)
    assert report["result"].steps_done == 4
    assert load_payload(tmp_path / "run" / "selected.pt")["meta"]["bone_calibration"] == report["bone_calibration"]
    cfg["train"] = cfg["train"] | {"epochs": 1}
    # a calibrated model as init trains without its factors, and they are measured again
    again = cfg | {"init": str(tmp_path / "run" / "selected.pt"), "out": str(tmp_path / "again")}
    again["train"] = cfg["train"] | {"epochs": 0}
    lines: list[str] = []
    stage2.run(again, log=lines.append)
    assert any("trains without them" in x for x in lines)
    recalibrated = load_payload(tmp_path / "again" / "selected.pt")["meta"]["bone_calibration"]
    np.testing.assert_allclose(recalibrated, report["bone_calibration"], rtol=1e-3)
