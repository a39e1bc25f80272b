"""Network shapes and symmetry, preprocessing, confidence, checkpoints."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from kp3d_ros.model import postprocess, preprocess
from kp3d_ros.model.checkpoint import load_model, save_checkpoint
from kp3d_ros.model.network import build_model
from kp3d_ros.skeleton import NUM_CLASSES, NUM_JOINTS

SMALL = {"dim": 32, "depth": 1, "heads": 2}
torch.set_num_threads(1)  # tiny models: one thread is faster than two on a shared machine


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return build_model(SMALL).eval()


@pytest.mark.parametrize("latents", [0, 8])
def test_output_shapes(latents):
    model = build_model(SMALL | {"latents": latents})
    keypoints, logits = model(torch.randn(3, 64, 3))
    assert keypoints.shape == (3, NUM_JOINTS, 3)
    assert logits.shape == (3, 64, NUM_CLASSES)


def test_point_order_permutes_logits_and_keeps_keypoints(model):
    x = torch.randn(2, 64, 3)
    perm = torch.randperm(64)
    with torch.no_grad():
        kp, lg = model(x)
        kp_p, lg_p = model(x[:, perm])
    torch.testing.assert_close(kp_p, kp, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(lg_p, lg[:, perm], atol=1e-5, rtol=1e-4)


def test_batch_items_are_independent(model):
    x = torch.randn(4, 64, 3)
    with torch.no_grad():
        kp_all, _ = model(x)
        kp_one, _ = model(x[2:3])
    torch.testing.assert_close(kp_one[0], kp_all[2], atol=1e-5, rtol=1e-4)


def test_heads_must_divide_dim():
    with pytest.raises(ValueError):
        build_model({"dim": 30, "heads": 4})


def test_prepare_batch_resamples_and_centres():
    rng = np.random.default_rng(0)
    big = rng.normal(size=(500, 3)).astype(np.float32) + np.array([10, 0, 0], np.float32)
    small = rng.normal(size=(20, 3)).astype(np.float32) + np.array([0, 5, 0], np.float32)
    batch = preprocess.prepare_batch([big, small], 64, rng)
    assert batch.points.shape == (2, 64, 3) and batch.points.dtype == np.float32
    assert list(batch.counts) == [500, 20]
    assert len(np.unique(batch.indices[0])) == 64  # subset without replacement
    assert set(batch.indices[1]) == set(range(20))  # every point kept, plus repeats
    np.testing.assert_allclose(batch.centres[0], big.mean(0), atol=1e-5)
    # each crop is centred and turned about z by minus its centre's azimuth (about 0 and 90 degrees here)
    for crop, points, rotation, idx in zip([big, small], batch.points, batch.rotations, batch.indices, strict=True):
        azimuth = np.arctan2(*crop.mean(0)[[1, 0]])
        c, s = np.cos(azimuth), np.sin(azimuth)
        turn = np.array([[c, s, 0], [-s, c, 0], [0, 0, 1]])
        np.testing.assert_allclose(rotation, turn, atol=1e-6)
        np.testing.assert_allclose(points, (crop[idx] - crop.mean(0)) @ turn.T / preprocess.SCALE, atol=1e-4)
    assert abs(np.degrees(np.arctan2(*small.mean(0)[[1, 0]])) - 90) < 20
    kp = np.zeros((2, NUM_JOINTS, 3), np.float32)
    np.testing.assert_allclose(preprocess.restore_keypoints(kp, batch)[1, 0], small.mean(0), atol=1e-5)
    # the round trip to the crop frame and back is exact, and the sensor always lies towards -x
    kp = batch.points[:, :NUM_JOINTS]
    np.testing.assert_allclose(preprocess.restore_keypoints(kp, batch)[1], small[batch.indices[1][:NUM_JOINTS]],
                               atol=1e-4)
    sensor = np.stack([preprocess.to_crop_frame(np.zeros(3, np.float32), c, r)
                       for c, r in zip(batch.centres, batch.rotations, strict=True)])
    assert (sensor[:, 0] < 0).all() and np.allclose(sensor[:, 1], 0, atol=1e-5)


@pytest.mark.parametrize("bad", [np.zeros((0, 3)), np.zeros((5, 2)), np.array([[0, 0, np.nan]])])
def test_prepare_batch_rejects_bad_crops(bad):
    with pytest.raises(ValueError):
        preprocess.prepare_batch([bad], 16)


def test_point_parts_covers_every_original_point():
    rng = np.random.default_rng(1)
    crop_big = rng.uniform(-1, 1, size=(300, 3)).astype(np.float32)
    crop_small = rng.uniform(-1, 1, size=(10, 3)).astype(np.float32)
    batch = preprocess.prepare_batch([crop_big, crop_small], 32, rng)
    # Logits that say "part = 1 + (x > 0)" for each resampled point.
    lidar = np.einsum("bnk,bkl->bnl", batch.points, batch.rotations) + batch.centres[:, None]
    labels = 1 + (lidar[..., 0] > 0)
    logits = np.eye(NUM_CLASSES, dtype=np.float32)[labels] * 5
    parts = preprocess.point_parts(logits, batch.indices, batch.counts, [crop_big, crop_small])
    assert [len(p) for p in parts] == [300, 10] and parts[0].dtype == np.uint8
    np.testing.assert_array_equal(parts[1], 1 + (crop_small[:, 0] > 0))
    agree = (parts[0] == 1 + (crop_big[:, 0] > 0)).mean()
    assert agree > 0.85  # nearest sampled neighbour mostly on the same side
    with pytest.raises(ValueError):
        preprocess.point_parts(logits, batch.indices, batch.counts)


def test_confidence_range_and_support():
    rng = np.random.default_rng(2)
    B, N = 2, 64
    points = rng.normal(size=(B, N, 3)).astype(np.float32) * 0.3
    keypoints = points[:, :NUM_JOINTS].copy()
    logits = np.full((B, N, NUM_CLASSES), -5.0, np.float32)
    logits[0, :, 1] = 5.0  # crop 0: every point is head
    logits[1, :, 0] = 5.0  # crop 1: every point is background
    conf = postprocess.joint_confidence(keypoints, logits, points)
    assert conf.shape == (B, NUM_JOINTS) and conf.min() >= 0 and conf.max() <= 1
    assert conf[0, 13] > 0.9  # head_center supported by head points right next to it
    assert conf[0, 6] < 0.05  # left ankle: no shin/foot points
    assert conf[1].max() < 0.05
    far = keypoints.copy()
    far[0, 13] += 3.0
    assert postprocess.joint_confidence(far, logits, points)[0, 13] < 0.01


def test_checkpoint_round_trip(tmp_path, model):
    path = tmp_path / "m.pt"
    save_checkpoint(path, model, {"note": "test"})
    payload = torch.load(path, weights_only=True)  # plain types only
    assert payload["meta"]["num_points"] == preprocess.DEFAULT_NUM_POINTS
    loaded, meta = load_model(path)
    assert meta["note"] == "test" and len(meta["joint_names"]) == NUM_JOINTS
    x = torch.randn(1, 32, 3)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x)[0], model(x)[0])
    with pytest.raises(FileNotFoundError):
        load_model(tmp_path / "missing.pt")


def _toy_dataset(count: int, seed: int = 0) -> list[dict]:
    rng = np.random.default_rng(seed)
    data = []
    for _ in range(count):
        m = int(rng.integers(20, 80))
        centre = np.array([rng.uniform(3, 20), rng.uniform(-5, 5), -1.9], np.float32)
        points = (rng.normal(size=(m, 3)) * [0.2, 0.2, 0.5] + centre + [0, 0, 0.9]).astype(np.float32)
        data.append({"points": points, "parts": rng.integers(0, NUM_CLASSES, size=m), "centre": centre,
                     "joints": (centre + rng.normal(size=(NUM_JOINTS, 3)) * 0.3).astype(np.float32)})
    return data


def _toy_fit(tmp_path, lr: float, warmup_steps: int, **options):
    """A small model on toy data and `run(epochs, resume)`, which fits it into tmp_path with FitConfig
    `options`."""
    from kp3d_ros.train import stage1
    from kp3d_ros.train.loop import FitConfig, fit

    torch.manual_seed(0)
    data = _toy_dataset(24)
    cfg = stage1.merge(stage1.DEFAULTS, {"num_points": 32, "train": {"steps_per_epoch": 3, "batch_size": 8}})
    model = build_model(SMALL)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr)
    val = stage1.fixed_batches(data, 32, 16, 8)
    augmenter = stage1.make_augmenter({})

    def step(batch):
        out = stage1.stage1_losses(model, *batch, 0.5, 1.0)
        out["loss"].backward()
        return {"loss": out["loss"].item()}

    def run(epochs: int, resume: bool):
        config = FitConfig(epochs=epochs, steps_per_epoch=3, lr=lr, warmup_steps=warmup_steps, out_dir=str(tmp_path),
                           monitor="val_mpjpe_cm", resume=resume, **options)
        return fit(model, optimizer, config, lambda e: stage1.training_batches(data, cfg, e, augmenter), step,
                   lambda: stage1.validation(model, val, 0.5, 1.0), {"num_points": 32}, log=lambda _: None)

    return model, run


def test_fit_logs_checkpoints_and_resumes(tmp_path):
    _, run = _toy_fit(tmp_path, lr=1e-3, warmup_steps=2)
    first = run(2, resume=False)
    assert (first.epochs_done, first.steps_done) == (2, 6)
    assert (tmp_path / "last.pt").is_file() and (tmp_path / "best.pt").is_file()
    second = run(3, resume=True)
    assert (second.epochs_done, second.steps_done) == (3, 9)  # continued, not restarted
    rows = (tmp_path / "log.csv").read_text().strip().splitlines()
    assert rows[0].startswith("epoch,step") and len(rows) == 4 and "val_mpjpe_cm" in rows[0]
    _, meta = load_model(tmp_path / "best.pt")
    assert meta["num_points"] == 32


def test_weight_average_ramps_up_and_swaps_back():
    from kp3d_ros.train.loop import WeightAverage

    model = torch.nn.Linear(2, 1)
    with torch.no_grad():
        model.weight.fill_(0.0)
    average = WeightAverage(model, decay=0.99)
    with torch.no_grad():
        model.weight.fill_(1.0)
    average.update(model)  # the first update keeps 1/10 of the old weights, not 0.99
    torch.testing.assert_close(average.shadow["weight"], torch.full((1, 2), 0.9))
    with average.applied(model) as trained:
        torch.testing.assert_close(model.weight.detach(), torch.full((1, 2), 0.9))
        torch.testing.assert_close(trained["weight"], torch.full((1, 2), 1.0))
    torch.testing.assert_close(model.weight.detach(), torch.full((1, 2), 1.0))
    with pytest.raises(ValueError, match="ema_decay"):
        WeightAverage(model, decay=1.0)


def test_fit_with_weight_average_saves_the_average_and_resumes_the_trained_weights(tmp_path):
    from kp3d_ros.model.checkpoint import load_payload

    model, run = _toy_fit(tmp_path, lr=1e-2, warmup_steps=0, ema_decay=0.9)
    run(2, resume=False)
    payload = load_payload(tmp_path / "last.pt")
    assert payload["ema_updates"] == 6
    name = "seg_head.2.weight"
    saved, trained = payload["state_dict"][name], payload["trained_state_dict"][name]
    assert not torch.allclose(saved, trained)  # the average is not the last weights
    torch.testing.assert_close(model.state_dict()[name], saved)  # the caller gets the average
    second = run(3, resume=True)
    assert second.steps_done == 9 and load_payload(tmp_path / "last.pt")["ema_updates"] == 9


def test_cosine_lr_schedule():
    from kp3d_ros.train.loop import cosine_lr

    assert cosine_lr(0, 100, 1.0, warmup_steps=10) == pytest.approx(0.1)
    assert cosine_lr(10, 110, 1.0, warmup_steps=10) == pytest.approx(1.0)
    assert cosine_lr(110, 110, 1.0, warmup_steps=10) == pytest.approx(0.02)
    # The wall-clock budget decays the rate too when it runs out first.
    assert cosine_lr(20, 1000, 1.0, warmup_steps=10, time_fraction=1.0) == pytest.approx(0.02)


def test_scan_line_thinning_keeps_whole_rings():
    from kp3d_ros.train.stage1 import thin_scan_lines

    # 40 rings 0.4 degrees apart, 50 points each, 10 m away.
    elevation = np.repeat(np.radians(-10 + 0.4 * np.arange(40)), 50)
    azimuth = np.tile(np.linspace(-0.05, 0.05, 50), 40)
    points = np.stack([10 * np.cos(azimuth), 10 * np.sin(azimuth), 10 * np.tan(elevation)], 1).astype(np.float32)
    sample = {"points": points, "parts": np.arange(len(points)), "joints": np.zeros((NUM_JOINTS, 3), np.float32)}
    out = thin_scan_lines(sample, np.random.default_rng(0), spacing_deg=(2.0, 2.0), tolerance_deg=0.18)
    kept_rings = np.unique(out["parts"] // 50)
    assert 5 <= len(kept_rings) <= 10  # about one ring in five
    assert len(out["points"]) == 50 * len(kept_rings)  # whole rings, parts still aligned
    np.testing.assert_array_equal(out["points"], points[out["parts"]])


def test_models_with_another_input_rule_are_refused(tmp_path):
    """A model trained without the crop-frame rotation would give silently wrong joints: loading it fails."""
    preprocess.check_input_rule({"centre_rule": preprocess.CENTRE_RULE, "scale": preprocess.SCALE})
    preprocess.check_input_rule({})  # models without the metadata are not checked
    with pytest.raises(ValueError, match="input rule"):
        preprocess.check_input_rule({"centre_rule": "mean of the crop's points; no rotation normalisation"})
    with pytest.raises(ValueError, match="scale"):
        preprocess.check_input_rule({"centre_rule": preprocess.CENTRE_RULE, "scale": "2.0"})


def test_deepened_model_computes_what_its_source_did_and_then_trains(model):
    from kp3d_ros.model.network import load_deepened

    torch.manual_seed(1)
    deeper = build_model(SMALL | {"depth": 3})
    assert load_deepened(deeper, model) == 2
    deeper.eval()
    x = torch.randn(2, 64, 3)
    with torch.no_grad():
        for got, want in zip(deeper(x), model(x), strict=True):
            torch.testing.assert_close(got, want)
    deeper.train()
    keypoints, _ = deeper(x)
    keypoints.sum().backward()
    new_block = deeper.blocks[2]
    assert new_block.mlp[2].weight.grad.abs().sum() > 0  # the identity block is not stuck at zero


@pytest.mark.parametrize("change", [{"depth": 1, "dim": 64}, {"depth": 0}])
def test_deepening_refuses_other_changes(model, change):
    from kp3d_ros.model.network import load_deepened

    with pytest.raises(ValueError, match="cannot deepen"):
        load_deepened(build_model(SMALL | change), model)


def test_stage1_init_deepens_a_shallower_checkpoint(model, tmp_path):
    from kp3d_ros.train.stage1 import init_from

    path = tmp_path / "shallow.pt"
    save_checkpoint(path, model, {"num_points": 64})
    deeper = build_model(SMALL | {"depth": 2})
    messages = []
    init_from(deeper, {"init": str(path), "num_points": 64, "model": SMALL | {"depth": 2}}, messages.append)
    assert "1 identity block(s) added" in messages[0]
    x = torch.randn(1, 64, 3)
    with torch.no_grad():
        torch.testing.assert_close(deeper.eval()(x)[0], model(x)[0])
    with pytest.raises(ValueError, match="does not match"):
        init_from(build_model(SMALL | {"dim": 64}), {"init": str(path), "num_points": 64, "model": {"dim": 64}})
