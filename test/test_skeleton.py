import numpy as np

from kp3d_ros import skeleton as sk


def test_counts_and_orders_follow_skeleton_md():
    assert sk.NUM_JOINTS == 14 and sk.NUM_CLASSES == 15 and sk.NUM_LIMBS == 10
    assert sk.JOINT_NAMES[0] == "nose" and sk.JOINT_NAMES[13] == "head_center"
    assert sk.PART_NAMES[0] == "background" and sk.PART_NAMES[14] == "right_foot"


def test_limb_endpoints_use_derived_neck_and_pelvis():
    joints = np.random.default_rng(0).normal(size=(14, 3)).astype(np.float32)
    parents, children = sk.limb_endpoints(joints)
    torso = sk.LIMB_NAMES.index("torso")
    np.testing.assert_allclose(parents[torso], sk.pelvis(joints), atol=1e-6)
    np.testing.assert_allclose(children[torso], sk.neck(joints), atol=1e-6)
    head = sk.LIMB_NAMES.index("head")
    np.testing.assert_allclose(children[head], joints[sk.JOINT_INDEX["head_center"]])


def test_mirror_swaps_sides_and_is_an_involution():
    assert sk.JOINT_NAMES[sk.JOINT_MIRROR[1]] == "right_shoulder"
    assert (sk.JOINT_MIRROR[sk.JOINT_MIRROR] == np.arange(14)).all()
    assert (sk.PART_MIRROR[sk.PART_MIRROR] == np.arange(15)).all()


def test_draw_colours_left_blue_right_orange_centre_green():
    segs, colours = sk.draw_segments(np.zeros((14, 3)))
    assert segs.shape == (15, 2, 3)
    edges = sk.DRAW_EDGES
    assert tuple(colours[edges.index(("left_shoulder", "left_elbow"))]) == sk.SIDE_COLOURS["left"]
    assert tuple(colours[edges.index(("right_knee", "right_ankle"))]) == sk.SIDE_COLOURS["right"]
    assert tuple(colours[edges.index(("left_hip", "right_hip"))]) == sk.SIDE_COLOURS["centre"]
