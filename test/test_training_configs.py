"""The shipped training configs load, and their entries are known to the code that reads them."""

from pathlib import Path

import pytest

from kp3d_ros import losses
from kp3d_ros import skeleton as sk
from kp3d_ros.train import stage1, stage2

CONFIG = Path(__file__).resolve().parents[1] / "config"


@pytest.mark.parametrize("name", ["stage2.yaml", "stage2_anchored.yaml"])
def test_stage2_configs_load(name: str) -> None:
    cfg = stage2.load_config(CONFIG / name)
    assert set(cfg) <= set(stage2.DEFAULTS), set(cfg) - set(stage2.DEFAULTS)
    weights = losses.LossWeights.from_dict(cfg["loss"])  # raises on unknown loss names
    assert weights.seg > 0 and cfg["seg_target"] in ("confident", "nearest_limb", "none")


def test_anchored_stage2_config_is_the_measured_recipe() -> None:
    cfg = stage2.load_config(CONFIG / "stage2_anchored.yaml")
    weights = losses.LossWeights.from_dict(cfg["loss"])
    assert (weights.flow, weights.sym, weights.p2l, weights.detach_part_weights) == (6.0, 500.0, 0.0, True)
    assert weights.sym_placement_only and weights.sym_vertical == 0.0
    assert weights.j2p == 2.0 and weights.j2p_vertical_only
    assert set(weights.sym_limbs) == set(sk.LIMB_NAMES) - {"left_forearm", "right_forearm"}
    assert cfg["source"]["weight"] == 1.0 and cfg["source"]["data"]
    assert cfg["train"]["epochs"] * cfg["train"]["steps_per_epoch"] == 1200 and cfg["rounds"] == 2
    assert cfg["calibrate_bones"] and cfg["calibrate_max_factor"] == 1.0 and cfg["train"]["ema_decay"] == 0.0


@pytest.mark.parametrize("name", sorted(p.name for p in CONFIG.glob("stage1*.yaml")))
def test_stage1_config_loads(name: str) -> None:
    cfg = stage1.load_config(CONFIG / name)
    assert set(cfg) <= set(stage1.DEFAULTS) and cfg["num_points"] > 0
    stage1.make_augmenter(cfg["augment"], cfg.get("sensor_augment"))  # raises on unknown augmentation keys


def test_a_loaded_config_shares_nothing_with_the_defaults() -> None:
    cfg = stage2.load_config(None)
    cfg["loss"]["flow"] = 99.0
    cfg["train"]["lr"] = 1.0
    assert stage2.DEFAULTS["loss"]["flow"] != 99.0 and stage2.DEFAULTS["train"]["lr"] != 1.0
