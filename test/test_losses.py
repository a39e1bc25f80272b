"""Known-answer tests of the GC-KPL losses on a body made of perfect cylinders around its limbs."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from kp3d_ros import losses
from kp3d_ros import skeleton as sk

RADIUS = 0.06


def standing_joints() -> np.ndarray:
    """A standing person (14, 3), arms hanging slightly apart, metres."""
    j = {
        "nose": (0.08, 0.0, 1.62), "head_center": (0.0, 0.0, 1.65),
        "left_shoulder": (0.0, 0.18, 1.45), "left_elbow": (0.02, 0.25, 1.17), "left_wrist": (0.1, 0.28, 0.95),
        "right_shoulder": (0.0, -0.18, 1.45), "right_elbow": (0.02, -0.25, 1.17),
        "right_wrist": (0.1, -0.28, 0.95),
        "left_hip": (0.0, 0.1, 0.95), "left_knee": (0.05, 0.11, 0.53), "left_ankle": (0.0, 0.12, 0.12),
        "right_hip": (0.0, -0.1, 0.95), "right_knee": (0.05, -0.11, 0.53), "right_ankle": (0.0, -0.12, 0.12),
    }
    return np.array([j[n] for n in sk.JOINT_NAMES], dtype=np.float64)


def cylinder_body(joints: np.ndarray, per_limb: int = 40, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Points (L * per_limb, 3) on a cylinder of RADIUS around each limb's middle 80 %, and their parts."""
    rng = np.random.default_rng(seed)
    a, b = sk.limb_endpoints(joints)
    pts, parts = [], []
    for limb in range(sk.NUM_LIMBS):
        axis = b[limb] - a[limb]
        u = axis / np.linalg.norm(axis)
        e1 = np.cross(u, [1.0, 0.0, 0.0] if abs(u[0]) < 0.9 else [0.0, 1.0, 0.0])
        e1 /= np.linalg.norm(e1)
        e2 = np.cross(u, e1)
        s = rng.uniform(0.1, 0.9, per_limb)
        th = rng.uniform(0, 2 * np.pi, per_limb)
        p = a[limb] + s[:, None] * axis + RADIUS * (np.cos(th)[:, None] * e1 + np.sin(th)[:, None] * e2)
        pts.append(p)
        parts.append(np.full(per_limb, sk.LIMB_PART[limb]))
    return np.concatenate(pts), np.concatenate(parts)


def one_hot_logits(parts: np.ndarray, sharpness: float = 20.0) -> torch.Tensor:
    logits = torch.zeros(len(parts), sk.NUM_CLASSES, dtype=torch.float64)
    logits[torch.arange(len(parts)), torch.from_numpy(parts)] = sharpness
    return logits


def rot_z(angle: float) -> np.ndarray:
    c, s = np.cos(angle), np.sin(angle)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


@pytest.fixture()
def body():
    joints = standing_joints()
    points, parts = cylinder_body(joints)
    t = lambda x: torch.from_numpy(x)[None]  # noqa: E731
    return t(joints), t(points), one_hot_logits(parts)[None], parts


def test_symmetry_zero_on_cylinders_and_grows_off_axis(body):
    joints, points, logits, _ = body
    probs = logits.softmax(-1)
    on_axis = losses.symmetry_loss(points, joints, probs).item()
    assert on_axis < 1e-6
    previous = on_axis
    for shift in (0.02, 0.04, 0.08):
        moved = joints.clone()
        moved[0, :, 0] += shift  # every limb off its cylinder's axis
        value = losses.symmetry_loss(points, moved, probs).item()
        assert value > previous
        previous = value


def test_symmetry_limb_mask_covers_only_the_named_limbs(body):
    joints, points, logits, _ = body
    probs = logits.softmax(-1)
    moved = joints.clone()
    moved[0, sk.JOINT_INDEX["left_wrist"], 0] += 0.08  # only the left forearm leaves its cylinder
    weights = losses.LossWeights(sym_limbs=("torso", "left_thigh"))
    untouched = losses.symmetry_loss(points, moved, probs, limbs=weights.sym_limb_mask()).item()
    assert untouched < 1e-6
    forearm = losses.LossWeights(sym_limbs=("left_forearm",)).sym_limb_mask()
    alone = losses.symmetry_loss(points, moved, probs, limbs=forearm).item()
    everything = losses.symmetry_loss(points, moved, probs).item()
    assert alone == pytest.approx(everything * sk.NUM_LIMBS, rel=1e-6)  # the mean is over the covered limbs
    with pytest.raises(ValueError, match="unknown limb"):
        losses.LossWeights(sym_limbs=("left_tail",))


def test_placement_only_symmetry_moves_the_skeleton_rigidly(body):
    joints, points, logits, _ = body
    probs = logits.softmax(-1)
    moved = joints.clone()
    moved[0, :, 0] += 0.05  # the whole skeleton 5 cm off its cylinders
    moved[0, sk.JOINT_INDEX["left_knee"], 1] += 0.04  # and one joint off on its own
    keypoints = moved.clone().requires_grad_(True)
    losses.symmetry_loss(points, losses.placement_only(keypoints), probs).backward()
    grad = keypoints.grad[0]
    assert grad.abs().max() > 0
    torch.testing.assert_close(grad, grad[:1].expand_as(grad))  # one gradient for every joint
    assert grad[0, 0] > 0  # descent moves the skeleton back towards the axes (-x)
    weights = losses.LossWeights(sym=1.0, flow=0.0, p2l=0.0, seg=0.0, sym_placement_only=True)
    batch = losses.PairBatch(points, points, points, points)
    shape_grad = torch.autograd.grad(losses.stage2_loss(batch, keypoints, logits, keypoints, logits, weights)[0],
                                     keypoints)[0][0]
    torch.testing.assert_close(shape_grad, shape_grad[:1].expand_as(shape_grad))


def test_points_to_limb_equals_radius_and_grows(body):
    joints, points, logits, _ = body
    probs = logits.softmax(-1)
    base = losses.points_to_limb_loss(points, joints, probs).item()
    # each limb owns 1/L of the points, so the mean over limbs of 1/N sum W d is RADIUS / L
    assert base == pytest.approx(RADIUS / sk.NUM_LIMBS, rel=0.02)
    far = joints.clone()
    far[0, :, 1] += 0.15
    assert losses.points_to_limb_loss(points, far, probs).item() > 2 * base


def test_points_to_limb_margin_ignores_points_within_the_limb_radius(body):
    joints, points, logits, _ = body
    probs = logits.softmax(-1)
    # RADIUS is inside every limb's dead zone at margin 1.5 but not at margin 0.1
    assert 1.5 * losses.LIMB_RADIUS_P90.min().item() > RADIUS
    assert losses.points_to_limb_loss(points, joints, probs, margin=1.5).item() < 1e-8  # soft probs leak
    assert losses.points_to_limb_loss(points, joints, probs, margin=0.1).item() > 0.0
    far = joints.clone().requires_grad_(True)
    with torch.no_grad():
        far[0, :, 1] += 0.3  # every limb 30 cm from its points: beyond any dead zone
    value = losses.points_to_limb_loss(points, far, probs, margin=1.5)
    value.backward()
    assert value.item() > 0.0 and far.grad.abs().sum() > 0


def test_flow_loss_zero_for_exact_rigid_flow(body):
    joints, points, logits, _ = body
    probs = logits.softmax(-1)
    R, t = torch.from_numpy(rot_z(0.3)), torch.tensor([0.12, -0.05, 0.01], dtype=torch.float64)
    joints1 = joints @ R.T + t
    points1 = points @ R.T + t  # same surface points, moved
    exact = losses.flow_loss(points, points1, joints, probs, points1, points, joints1, probs).item()
    assert exact < 1e-6
    wrong = losses.flow_loss(points, points, joints, probs, points1, points1, joints1, probs).item()
    assert wrong > 0.003
    noisy = points1 + 0.03 * torch.randn_like(points1)
    assert losses.flow_loss(points, noisy, joints, probs, points1, points, joints1, probs).item() > exact


def test_gradients_reach_keypoints_and_segmentation(body):
    joints, points, logits, parts = body
    joints = (joints + 0.01).requires_grad_(True)
    logits = logits.clone().mul(0.1).requires_grad_(True)
    batch = losses.PairBatch(points_t=points, points_t1=points + 0.1, carried_t=points + 0.1, carried_t1=points,
                             labels_t=torch.from_numpy(parts)[None], labels_t1=torch.from_numpy(parts)[None])
    method_weights = losses.LossWeights(j2p=2.0)  # every term of method.md on
    total, parts_out = losses.stage2_loss(batch, joints, logits, joints + 0.1, logits, method_weights)
    total.backward()
    assert set(parts_out) == {"flow", "p2l", "sym", "j2p", "seg"}
    assert torch.isfinite(joints.grad).all() and joints.grad.abs().sum() > 0
    assert torch.isfinite(logits.grad).all() and logits.grad.abs().sum() > 0


def test_joint_to_part_zero_at_centroid(body):
    joints, points, logits, parts = body
    probs = logits.softmax(-1)
    head = torch.from_numpy(parts == sk.PART_INDEX["head"])
    centred = joints.clone()
    centred[0, sk.JOINT_INDEX["head_center"]] = points[0, head].mean(0)
    assert losses.joint_to_part_loss(points, centred, probs).item() < 1e-3
    assert losses.joint_to_part_loss(points, joints, probs).item() > 0.05


def test_joint_to_part_vertical_only_compares_heights(body):
    joints, points, logits, parts = body
    probs = logits.softmax(-1)
    head = torch.from_numpy(parts == sk.PART_INDEX["head"])
    level = joints.clone()
    level[0, sk.JOINT_INDEX["head_center"]] = points[0, head].mean(0) + torch.tensor([0.1, -0.05, 0.0],
                                                                                       dtype=points.dtype)
    assert losses.joint_to_part_loss(points, level, probs, vertical_only=True).item() < 1e-3
    assert losses.joint_to_part_loss(points, level, probs).item() > 0.1  # the full loss sees the offset
    level[0, sk.JOINT_INDEX["head_center"], 2] += 0.04
    assert losses.joint_to_part_loss(points, level, probs, vertical_only=True).item() == pytest.approx(0.04, abs=2e-3)


def test_bone_consistency_zero_for_constant_lengths():
    joints = torch.from_numpy(standing_joints())
    frames = torch.stack([joints @ torch.from_numpy(rot_z(a)).T + a for a in (0.0, 0.5, 1.0, 2.0)])
    track = torch.tensor([7, 7, 7, 7])
    assert losses.bone_consistency_loss(frames, track).item() < 1e-12
    stretched = frames.clone()
    stretched[2, sk.JOINT_INDEX["left_wrist"]] += torch.tensor([0.0, 0.0, -0.1], dtype=torch.float64)
    assert losses.bone_consistency_loss(stretched, track).item() > 1e-5
    # different people may have different lengths: no penalty across tracks
    assert losses.bone_consistency_loss(stretched, torch.tensor([1, 1, 2, 1])).item() < 1e-12


def test_bone_prior_holds_the_crowd_not_the_person():
    joints = torch.from_numpy(standing_joints())
    population = losses.bone_lengths(joints)
    crowd = torch.stack([joints * s for s in (0.9, 1.1)])  # one smaller, one bigger person: mean as population
    assert losses.bone_prior_loss(crowd, population).item() < 1e-12
    bigger = (crowd * 1.1).requires_grad_(True)  # everyone 10 % too big: (0.1)^2
    loss = losses.bone_prior_loss(bigger, population)
    assert loss.item() == pytest.approx(0.01, rel=1e-6)
    loss.backward()
    centre = bigger.detach().mean(1, keepdim=True)
    assert (bigger.grad * (bigger.detach() - centre)).sum() > 0  # growing raises it, shrinking lowers it
    stepped = bigger.detach() - 0.5 * bigger.grad
    assert losses.bone_prior_loss(stepped, population).item() < loss.item()


def test_size_only_bone_prior_scales_skeletons_uniformly():
    joints = torch.from_numpy(standing_joints())
    crowd = torch.stack([joints, joints @ torch.from_numpy(rot_z(1.0)).T * 0.9]).requires_grad_(True)
    sized = losses.size_only(crowd)
    assert torch.allclose(sized, crowd)
    losses.bone_prior_loss(sized, losses.bone_lengths(joints) * 0.8).backward()
    offsets = crowd.detach() - crowd.detach().mean(1, keepdim=True)
    per_person = (crowd.grad * offsets).sum((1, 2)) / offsets.pow(2).sum((1, 2))
    assert torch.allclose(crowd.grad, per_person[:, None, None] * offsets)  # along the scaling direction
    assert (per_person > 0).all()  # too big: descent shrinks both


def test_bone_prior_needs_the_population_lengths(body):
    with pytest.raises(ValueError, match="bone_prior_lengths"):
        losses.LossWeights(bone_prior=1.0)
    with pytest.raises(ValueError, match="12 positive"):
        losses.LossWeights(bone_prior=1.0, bone_prior_lengths=(0.3,) * 5)
    joints, points, logits, _ = body
    weights = losses.LossWeights(flow=0, p2l=0, sym=0, seg=0, bone_prior=2.0,
                                 bone_prior_lengths=tuple(losses.bone_lengths(joints[0] / 1.2).tolist()))
    batch = losses.PairBatch(points, points, points, points)
    total, parts = losses.stage2_loss(batch, joints, logits, joints, logits, weights)
    assert parts["bone_prior"] == pytest.approx(0.04, rel=1e-6)
    assert total.item() == pytest.approx(0.08, rel=1e-6)


def test_ground_prior_lifts_whole_skeletons_to_the_population_height():
    joints = torch.from_numpy(standing_joints())  # lower ankle 0.12 m above z = 0
    crowd = torch.stack([joints, joints + torch.tensor([0.0, 0.0, 0.5], dtype=torch.float64)])
    ground = torch.tensor([0.0, 0.5], dtype=torch.float64)
    assert losses.ground_prior_loss(crowd, ground, 0.12).item() < 1e-12
    sunk = (crowd - torch.tensor([0.0, 0.0, 0.05], dtype=torch.float64)).requires_grad_(True)
    loss = losses.ground_prior_loss(sunk, ground, 0.12)
    assert loss.item() == pytest.approx(0.05 ** 2, rel=1e-6)
    loss.backward()
    grad = sunk.grad
    assert torch.allclose(grad, grad[:, :1].expand_as(grad))  # every joint pulled alike: a rigid lift
    assert (grad[..., 2] < 0).all() and grad[..., :2].abs().max() < 1e-12
    unknown = torch.tensor([0.0, float("nan")], dtype=torch.float64)  # a person without ground is left out
    assert losses.ground_prior_loss(crowd[:1] - 0.05, unknown[:1], 0.12).item() == pytest.approx(0.05 ** 2)
    assert losses.ground_prior_loss(sunk.detach(), unknown, 0.12).item() == pytest.approx(0.05 ** 2)
    with pytest.raises(ValueError, match="ground_prior_height"):
        losses.LossWeights(ground_prior=1.0)


def test_group_variance_and_plausibility():
    joints = torch.from_numpy(standing_joints())[None]
    base = losses.bone_group_variance_loss(joints).item()
    broken = joints.clone()
    broken[0, sk.JOINT_INDEX["left_wrist"]] += torch.tensor([0.0, 0.0, -0.5], dtype=torch.float64)
    assert losses.bone_group_variance_loss(broken).item() > base + 0.01
    good = losses.skeleton_plausibility(joints)
    bad = losses.skeleton_plausibility(broken)
    assert good["bones_in_range"] == 1.0
    assert bad["bones_in_range"] < 1.0 and bad["left_right_mismatch"] > good["left_right_mismatch"]


def test_pseudo_labels(body):
    joints, points, _, parts = body
    labels = losses.nearest_limb_labels(points, joints)[0].numpy()
    assert (labels == parts).mean() > 0.9
    probs = torch.softmax(torch.randn(1, 50, sk.NUM_CLASSES), -1)
    conf = losses.confident_labels(probs, threshold=0.5)
    assert ((conf == -1) == (probs.max(-1).values < 0.5)).all()
    assert losses.segmentation_loss(torch.randn(1, 50, sk.NUM_CLASSES), torch.full((1, 50), -1)).item() == 0.0


def test_loss_weights_reject_unknown_names():
    assert losses.LossWeights.from_dict({"flow": 0.1}).flow == 0.1
    with pytest.raises(ValueError, match="unknown"):
        losses.LossWeights.from_dict({"flw": 0.1})


def test_symmetry_top_points_matches_full(body):
    joints, points, logits, _ = body
    probs = (logits * 0.4).softmax(-1)  # confident but not one-hot: every point weighs a little on every limb
    moved = joints.clone()
    moved[0, :, 0] += 0.04
    full = losses.symmetry_loss(points, moved, probs, max_points=None).item()
    fast = losses.symmetry_loss(points, moved, probs, max_points=64).item()
    assert fast == pytest.approx(full, rel=0.1)


def test_joint_to_part_ignores_unseen_parts(body):
    joints, points, logits, _ = body
    probs = logits.softmax(-1)
    no_head = probs.clone()
    no_head[..., sk.PART_INDEX["head"]] = 0.0  # the head is not seen
    assert losses.joint_to_part_loss(points, joints, no_head).item() == 0.0
