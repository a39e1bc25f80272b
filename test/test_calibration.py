"""Bone-length calibration (model.calibration): exact bone factors about the pelvis, old checkpoints,
the factor estimate, and ONNX export."""

from __future__ import annotations

import pytest
import torch

from kp3d_ros import losses
from kp3d_ros.model.calibration import BoneCalibration, matched_scale
from kp3d_ros.model.export import check_parity, export_onnx_bytes
from kp3d_ros.model.network import build_model
from kp3d_ros.skeleton import BONE_NAMES, JOINT_INDEX


def _skeletons(batch: int = 5) -> torch.Tensor:
    torch.manual_seed(0)
    return torch.randn(batch, len(JOINT_INDEX), 3)


def _pelvis(k: torch.Tensor) -> torch.Tensor:
    return 0.5 * (k[:, JOINT_INDEX["left_hip"]] + k[:, JOINT_INDEX["right_hip"]])


def test_default_factors_change_nothing():
    k = _skeletons()
    torch.testing.assert_close(BoneCalibration()(k), k)


def test_each_bone_takes_its_factor_and_keeps_its_direction():
    k = _skeletons()
    calibration = BoneCalibration()
    calibration.scale.copy_(torch.linspace(0.8, 1.2, len(BONE_NAMES)))
    out = calibration(k)
    torch.testing.assert_close(losses.bone_lengths(out) / losses.bone_lengths(k),
                               calibration.scale.expand(len(k), -1))
    torch.testing.assert_close(_pelvis(out), _pelvis(k))  # the root stays
    for name, child in (("left_elbow", "left_wrist"), ("right_knee", "right_ankle")):
        before = k[:, JOINT_INDEX[child]] - k[:, JOINT_INDEX[name]]
        after = out[:, JOINT_INDEX[child]] - out[:, JOINT_INDEX[name]]
        torch.testing.assert_close(torch.nn.functional.cosine_similarity(before, after, dim=-1), torch.ones(len(k)))
    # the nose moves with the head: its offset from the neck scales with the head's factor
    neck = lambda x: 0.5 * (x[:, JOINT_INDEX["left_shoulder"]] + x[:, JOINT_INDEX["right_shoulder"]])  # noqa: E731
    head = BONE_NAMES.index("head")
    torch.testing.assert_close(out[:, JOINT_INDEX["nose"]] - neck(out),
                               calibration.scale[head] * (k[:, JOINT_INDEX["nose"]] - neck(k)))


def test_checkpoints_without_factors_load_as_uncalibrated():
    model = build_model({"dim": 16, "depth": 1, "heads": 2})
    state = {k: v for k, v in model.state_dict().items() if k != "calibration.scale"}
    model.calibration.scale.fill_(2.0)
    model.load_state_dict(state)  # strict: the missing factors are filled with 1
    assert torch.all(model.calibration.scale == 1)


def test_matched_scale_brings_the_mean_lengths_to_the_population():
    current = torch.full((len(BONE_NAMES),), 0.9, dtype=torch.float64)
    predicted = torch.linspace(0.2, 0.5, len(BONE_NAMES), dtype=torch.float64)
    population = predicted * 0.95
    torch.testing.assert_close(matched_scale(current, predicted, population), current * 0.95)
    # by default a bone is never made longer than the network predicts it
    longer = population.clone()
    longer[0] = predicted[0] * 1.2  # factor 0.9 * 1.2 = 1.08 -> 1
    factors = matched_scale(current, predicted, longer)
    assert factors[0] == 1.0 and factors[1] == pytest.approx(0.855)
    assert matched_scale(current, predicted, longer, max_factor=1.2)[0] == pytest.approx(1.08)
    with pytest.raises(ValueError, match="outside"):
        matched_scale(current, predicted, predicted * 2.0)
    with pytest.raises(ValueError, match="outside"):
        matched_scale(current, predicted * 0.0, population)


def test_a_calibrated_model_exports_with_its_factors():
    torch.manual_seed(1)
    model = build_model({"dim": 16, "depth": 1, "heads": 2}).eval()
    model.calibration.scale.copy_(torch.linspace(0.9, 1.1, len(BONE_NAMES)))
    assert check_parity(model, export_onnx_bytes(model, 32), 32) < 1e-4
    plain = build_model({"dim": 16, "depth": 1, "heads": 2}).eval()
    plain.load_state_dict({k: v for k, v in model.state_dict().items() if k != "calibration.scale"})
    with pytest.raises(RuntimeError, match="differs from torch"):  # the factors are in the graph
        check_parity(model, export_onnx_bytes(plain, 32), 32)
