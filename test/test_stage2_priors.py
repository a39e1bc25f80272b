"""Stage II's population priors: the ground height reaches the loss in crop coordinates, and the bone and
ground priors are measured on the labelled source data when the config leaves them out."""

from pathlib import Path

import numpy as np
import pytest
import torch

from kp3d_ros import losses
from kp3d_ros import skeleton as sk
from kp3d_ros.synth.dataset import shard_path
from kp3d_ros.train import stage2
from kp3d_ros.train.pairs import PairSample, collate_pairs


def _person(rng: np.random.Generator, at: np.ndarray) -> np.ndarray:
    return (at + rng.normal(0.0, 0.2, (300, 3)) * [0.2, 0.2, 1.0]).astype(np.float32)


def test_ground_height_reaches_the_batch_in_crop_coordinates():
    rng = np.random.default_rng(0)
    src, dst = _person(rng, np.array([8.0, 3.0, -0.9])), _person(rng, np.array([8.1, 3.0, -0.9]))
    zero = np.zeros((300, 3), np.float32)
    known = PairSample(src, dst, zero, zero, 1, ground_z_t=-1.8, ground_z_t1=-1.7)
    unknown = PairSample(src, dst, zero, zero, 2)
    batch = collate_pairs([known, unknown], 256, rng).batch
    # the crop frame is centred on the mean point and turned about z only: ground z minus the mean's z
    assert batch.ground_t[0].item() == pytest.approx(-1.8 - src[:, 2].mean(), abs=1e-5)
    assert batch.ground_t1[0].item() == pytest.approx(-1.7 - dst[:, 2].mean(), abs=1e-5)
    assert torch.isnan(batch.ground_t[1]) and torch.isnan(batch.ground_t1[1])


def test_population_priors_are_measured_on_the_source_split(tmp_path: Path):
    joints = np.random.default_rng(1).normal(0.0, 0.3, (4, sk.NUM_JOINTS, 3)).astype(np.float32)
    joints[:, sk.JOINT_INDEX["left_ankle"], 2] = -1.6
    joints[:, sk.JOINT_INDEX["right_ankle"], 2] = -1.5
    centre = np.array([[5.0, 0.0, -1.7]] * 4, np.float32)  # ground 1.7 m below the sensor
    (tmp_path / "train").mkdir()
    np.savez(shard_path(tmp_path / "train", 0), joints=joints, centre=centre)
    priors = stage2.population_priors(tmp_path)
    assert priors["ground_prior_height"] == pytest.approx(0.1)
    expected = losses.bone_lengths(torch.from_numpy(joints).double()).mean(0).numpy()
    assert priors["bone_prior_lengths"] == pytest.approx(expected, abs=1e-4)

    cfg = stage2.load_config(None)
    cfg["loss"] |= {"bone_prior": 1.0, "ground_prior": 1.0}
    cfg["source"]["data"] = str(tmp_path)
    stage2.fill_population_priors(cfg, log=lambda _: None)
    assert cfg["loss"]["ground_prior_height"] == pytest.approx(0.1)
    losses.LossWeights.from_dict(cfg["loss"])  # complete now

    cfg["source"]["data"] = ""
    cfg["loss"]["bone_prior_lengths"] = []
    with pytest.raises(ValueError, match="bone_prior"):
        stage2.fill_population_priors(cfg)
    with pytest.raises(FileNotFoundError):
        stage2.population_priors(tmp_path / "missing")
