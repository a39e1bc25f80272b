"""Person samples, augmentations, sharded datasets and sequences with true scene flow."""

import numpy as np
import pytest

from kp3d_ros.core.crop import CROP_HEIGHT, CROP_RADIUS
from kp3d_ros.synth import augment as aug
from kp3d_ros.synth.body import get_body_model
from kp3d_ros.synth.dataset import ShardedDataset, write_dataset
from kp3d_ros.synth.lidar import PRESETS
from kp3d_ros.synth.person import DomainConfig, make_person_samples
from kp3d_ros.synth.sequence import SequenceDataset, make_sequence, write_sequences


@pytest.fixture(scope="module")
def samples():
    rngs = [np.random.default_rng([5, i]) for i in range(16)]
    return make_person_samples(get_body_model(), rngs, DomainConfig(distance_range=(3.0, 12.0), clutter=1.0))


def test_samples_are_crops_with_labels(samples):
    for s in samples:
        p, c = s["points"], s["centre"]
        assert p.dtype == np.float32 and s["parts"].dtype == np.int64 and s["joints"].shape == (14, 3)
        assert np.all(np.hypot(p[:, 0] - c[0], p[:, 1] - c[1]) <= CROP_RADIUS + 1e-5)
        assert np.all(p[:, 2] >= c[2] - 0.1 - 1e-5) and np.all(p[:, 2] <= c[2] - 0.1 + CROP_HEIGHT + 1e-5)
        assert s["num_person_points"] == np.count_nonzero(s["parts"]) >= 10
        body = p[s["parts"] > 0]
        gap = np.linalg.norm(body[:, None] - s["joints"][None], axis=-1).min(1)
        assert np.percentile(gap, 90) < 0.3  # body returns lie around the joints
        assert abs(s["joints"][:, 2].min() - c[2]) < 0.25  # ankles near the ground
    assert any((s["parts"] == 0).any() for s in samples)  # ground / clutter present


def test_augmentations_keep_labels_aligned(samples):
    s = max(samples, key=lambda x: x["num_person_points"])
    rng = np.random.default_rng(0)
    stripped = aug.strip_ground(s)
    assert np.all(stripped["points"][:, 2] >= s["centre"][2] + 0.08)
    rotated = aug.scale(aug.rotate_yaw(s, 0.7), 1.1)
    d0 = np.linalg.norm(s["points"] - s["joints"][0], axis=1)
    np.testing.assert_allclose(np.linalg.norm(rotated["points"] - rotated["joints"][0], axis=1), 1.1 * d0, atol=1e-4)
    dropped = aug.drop_part(s, rng)
    assert len(np.unique(dropped["parts"])) == len(np.unique(s["parts"])) - 1
    full = aug.augment(s, rng, aug.AugmentConfig(ground_points=1.0, clutter_points=1.0, noise_std=0.0,
                                                 random_yaw=False, scale_range=(1.0, 1.0), drop_part=0.0))
    assert len(full["points"]) == len(full["parts"])
    # every body point that survived is one of the original points with its original part
    body = full["parts"] > 0
    gaps = np.linalg.norm(full["points"][body][:, None] - s["points"][None], axis=-1)
    nearest = gaps.argmin(1)
    assert gaps.min(1).max() < 1e-4
    np.testing.assert_array_equal(s["parts"][nearest], full["parts"][body])


def test_dataset_is_deterministic_regardless_of_sharding(tmp_path):
    config = DomainConfig(distance_range=(15.0, 25.0), clutter=0.0)
    write_dataset(tmp_path / "a", 65, seed=7, config=config, shard_size=64, progress=False)
    a = ShardedDataset(tmp_path / "a")
    assert a.complete and len(a) == 65
    # Samples depend on (seed, index) only, not on the shard or the pose batch they were made in.
    alone = make_person_samples(get_body_model(), [np.random.default_rng([7, i]) for i in (1, 64)], config)
    for s, i in zip(alone, (1, 64), strict=True):
        np.testing.assert_allclose(a[i]["points"], s["points"], atol=1e-5)
        np.testing.assert_array_equal(a[i]["parts"], s["parts"])
        np.testing.assert_allclose(a[i]["joints"], s["joints"], atol=1e-5)
    assert not np.array_equal(a[0]["joints"], a[1]["joints"])
    with pytest.raises(ValueError):
        write_dataset(tmp_path / "a", 65, seed=8, config=config, shard_size=64, progress=False)


def test_true_flow_of_rigid_translation_equals_translation():
    bm = get_body_model()
    frames = make_sequence(np.random.default_rng(4), "stand", 3, PRESETS["hdl64e"], 6.0,
                           DomainConfig(clutter=0.0), bm)
    # Stand sways slightly; check against a rigid move by re-deriving flow on a translated copy.
    from kp3d_ros.synth.lidar import surface_points

    rng = np.random.default_rng(0)
    verts = rng.normal(size=(50, 3)).astype(np.float32)
    faces = rng.integers(0, 50, (30, 3))
    tri, bary = rng.integers(0, 30, 20), rng.random((20, 2)).astype(np.float32) / 2
    shift = np.array([0.3, -0.1, 0.05], dtype=np.float32)
    flow = surface_points(verts + shift, faces, tri, bary) - surface_points(verts, faces, tri, bary)
    np.testing.assert_allclose(flow, np.tile(shift, (20, 1)), atol=1e-5)
    assert np.isnan(frames[-1].flow).all() and np.isnan(frames[0].backward_flow).all()
    body = frames[0].parts > 0
    assert np.all(frames[0].flow[~body] == 0) and np.linalg.norm(frames[0].flow[body], axis=1).max() < 0.2


def test_walking_flow_matches_body_motion_and_round_trips(tmp_path):
    frames = make_sequence(np.random.default_rng(9), "walk", 3, PRESETS["waymo_top"], 7.0, DomainConfig(clutter=0.0))
    body = frames[0].parts > 0
    pelvis_step = frames[1].joints[[4, 10]].mean(0) - frames[0].joints[[4, 10]].mean(0)
    torso = frames[0].parts == 2
    np.testing.assert_allclose(np.median(frames[0].flow[torso], 0), pelvis_step, atol=0.06)
    assert 0.08 < np.linalg.norm(np.median(frames[0].flow[body], 0)) < 0.2  # 0.8-2 m/s at 10 Hz
    write_sequences(tmp_path / "s", 2, 3, seed=1, config=DomainConfig(clutter=0.0), progress=False)
    ds = SequenceDataset(tmp_path / "s")
    assert ds.complete and len(ds) == 2 and len(ds[1]) == 3 and ds.action(0) in ("walk", "run", "turn", "wave",
                                                                                   "bend", "crouch", "stand")
    assert ds[0][0].flow.shape == ds[0][0].points.shape


def test_inflate_pushes_surfaces_outwards():
    from kp3d_ros.synth.lidar import box_mesh
    from kp3d_ros.synth.person import inflate

    vertices, faces = box_mesh((1.0, 2.0, 3.0), (1.0, 1.0, 1.0))
    grown = inflate(vertices, faces, 0.05)
    before = np.linalg.norm(vertices - [1.0, 2.0, 3.0], axis=1)
    np.testing.assert_allclose(np.linalg.norm(grown - vertices, axis=1), 0.05, atol=1e-5)
    assert np.all(np.linalg.norm(grown - [1.0, 2.0, 3.0], axis=1) > before + 0.02)


def test_cli_split_configs_and_overrides():
    import argparse

    from kp3d_ros.synth import cli

    parser = argparse.ArgumentParser()
    cli.add_arguments(parser)
    args = parser.parse_args(["out", "--split-config", "stage1-test", "--phenotype-range", "age=0.3:0.5",
                              "--dropout", "0.1", "--inflate", "0.03"])
    config = cli.domain_config(args)
    assert config.presets == ("vlp16",) and config.dropout == 0.1 and config.inflate_range == (0.0, 0.03)
    assert config.phenotype_ranges == {"weight": (cli.HELD_OUT_WEIGHT, 1.0), "age": (0.3, 0.5)}
    assert "vlp16" not in cli.SPLIT_CONFIGS["stage1"]["presets"]
    assert cli.main(parser.parse_args(["out", "--split-config", "no-such-config"])) == 2
    hard = cli.domain_config(parser.parse_args(["out", "--split-config", "stage1-poses-hard"]))
    poses = cli.domain_config(parser.parse_args(["out", "--split-config", "stage1-poses"]))
    assert hard.pose_mix["lie"] > 3 * poses.pose_mix["lie"] and "upright" not in hard.pose_mix
    assert hard.presets == poses.presets and hard.phenotype_ranges == poses.phenotype_ranges  # same bodies, sensors


def test_concatenated_datasets_and_their_available_samples(tmp_path):
    from kp3d_ros.synth.dataset import ConcatDataset, ShardedDataset, write_dataset
    from kp3d_ros.train.stage1 import available_indices

    config = DomainConfig(presets=("vlp16",), distance_range=(3.0, 6.0))
    a = ShardedDataset(write_dataset(tmp_path / "a", 64, seed=1, config=config, progress=False))
    b = ShardedDataset(write_dataset(tmp_path / "b", 128, seed=2, config=config, shard_size=64, progress=False))
    (tmp_path / "b" / "DONE").unlink()
    (tmp_path / "b" / "shard_00001.npz").unlink()  # b is still being written: only its first shard is there
    both = ConcatDataset([a, ShardedDataset(tmp_path / "b")])
    assert len(both) == 192
    np.testing.assert_array_equal(both[64]["points"], b[0]["points"])
    np.testing.assert_array_equal(both[-129]["points"], a[63]["points"])
    np.testing.assert_array_equal(available_indices(both), np.arange(128))
    with pytest.raises(IndexError):
        both[192]
