"""The anny body model wrapper: joint definitions, parts, posing conventions, motion."""

import numpy as np
import pytest

from kp3d_ros.skeleton import JOINT_INDEX, NUM_CLASSES
from kp3d_ros.synth.body import DOF_INDEX, Phenotypes, Poses, get_body_model, yaw_transforms
from kp3d_ros.synth.motion import ACTIONS, action_motion, action_poses


@pytest.fixture(scope="module")
def bm():
    return get_body_model()


def _adult() -> Phenotypes:
    return Phenotypes(np.array([[0.0, 0.667, 0.5, 0.5, 0.5, 0.5]], dtype=np.float32))


def test_head_center_is_midpoint_of_ears(bm):
    import anny
    from anny.keypoints import _load_keypoint_data

    path = anny.paths.get_anny_root_dir() / "data" / "keypoints" / "coco.pth"
    ears, _ = _load_keypoint_data(bm._model, path, ["left_ear", "right_ear", "nose"])
    ears = ears.cpu().numpy()
    np.testing.assert_allclose(bm.joint_regressor[JOINT_INDEX["head_center"]], 0.5 * (ears[0] + ears[1]), atol=1e-6)
    np.testing.assert_allclose(bm.joint_regressor[JOINT_INDEX["nose"]], ears[2], atol=1e-6)
    np.testing.assert_allclose(bm.joint_regressor.sum(1), 1.0, atol=1e-3)


def test_standing_adult_joint_heights_and_facing(bm):
    body = bm.pose(_adult(), Poses.zeros(1))
    j = body.joints[0]
    z = {name: j[i, 2] for name, i in JOINT_INDEX.items()}
    assert 1.45 < z["nose"] < 1.85 and 1.45 < z["head_center"] < 1.85
    assert 1.25 < z["left_shoulder"] < 1.6 and 0.8 < z["left_hip"] < 1.1
    assert 0.4 < z["left_knee"] < 0.65 and 0.03 < z["left_ankle"] < 0.15
    assert abs(body.vertices[0, :, 2].min()) < 1e-4  # feet on z = 0
    for side, sign in (("left", 1), ("right", -1)):  # the person's left is +y
        for joint in ("shoulder", "hip", "ankle", "wrist"):
            assert sign * j[JOINT_INDEX[f"{side}_{joint}"], 1] > 0.05
    assert j[JOINT_INDEX["nose"], 0] > j[JOINT_INDEX["head_center"], 0] + 0.05  # faces +x


def test_every_part_on_the_body(bm):
    assert np.all(np.bincount(bm.vertex_parts, minlength=NUM_CLASSES)[1:] > 50)
    assert np.all(np.bincount(bm.face_parts, minlength=NUM_CLASSES)[1:] > 50)
    assert bm.face_parts.shape == (len(bm.faces),) and bm.faces.dtype == np.int32


def test_positive_angles_are_anatomical(bm):
    rest = bm.pose(_adult(), Poses.zeros(1)).joints[0]
    for dof, joint, axis, sign in [("hip_flex.L", "left_ankle", 0, 1), ("knee_flex.R", "right_ankle", 0, -1),
                                   ("shoulder_abd.L", "left_wrist", 1, 1), ("shoulder_abd.R", "right_wrist", 1, -1),
                                   ("spine_flex", "nose", 0, 1), ("shoulder_flex.R", "right_wrist", 0, 1)]:
        poses = Poses.zeros(1)
        poses.angles[0, DOF_INDEX[dof]] = np.deg2rad(40)
        moved = bm.pose(_adult(), poses).joints[0] - rest
        assert sign * moved[JOINT_INDEX[joint], axis] > 0.1, dof


def test_batched_pose_with_root_transform(bm):
    rng = np.random.default_rng(0)
    phen, poses = bm.sample_phenotypes(rng, 5), bm.random_poses(rng, 5)
    assert np.all((phen.values >= 0) & (phen.values <= 1))
    local = bm.pose(phen, poses)
    transforms = yaw_transforms(np.full(5, np.pi / 2), np.tile([10.0, -2.0, 0.5], (5, 1)))
    moved = bm.pose(phen, poses, transforms)
    assert moved.vertices.shape == (5, bm.num_vertices, 3) and moved.joints.shape == (5, 14, 3)
    expected = local.joints @ transforms[0, :3, :3].T.astype(np.float32) + [10.0, -2.0, 0.5]
    np.testing.assert_allclose(moved.joints, expected, atol=1e-4)
    with pytest.raises(ValueError):
        bm.pose(phen, poses[:2])


def test_actions_are_smooth_and_move_at_speed(bm):
    rng = np.random.default_rng(3)
    phen = _adult()
    for action in ACTIONS:
        motion = action_motion(action, 10, rng)
        body = bm.pose(Phenotypes(np.repeat(phen.values, 10, 0)), motion.poses,
                       yaw_transforms(motion.yaw, np.c_[motion.xy, np.zeros(10)]))
        step = np.linalg.norm(np.diff(body.joints, axis=0), axis=-1).max()
        assert step < (1.3 if action == "run" else 0.6), action  # a running foot swings ~8 m/s
        speed = np.linalg.norm(np.diff(motion.xy, axis=0), axis=1).mean() * 10
        limits = {"walk": (0.9, 1.8), "run": (2.4, 3.6)}.get(action, (0.0, 1.0))
        assert limits[0] <= speed <= limits[1], action
    with pytest.raises(ValueError):
        action_poses("fly", np.zeros(3), rng)
