"""The pose library, pose-family samples, crops of clutter alone and the real-sensor effects."""

import numpy as np
import pytest

from kp3d_ros.skeleton import BACKGROUND, JOINT_INDEX, pelvis
from kp3d_ros.synth.body import ANATOMICAL_LIMITS_DEG, DOF_LIMITS_DEG, get_body_model
from kp3d_ros.synth.lidar import PRESETS, SensorEffects, box_mesh, cast, sweep_times
from kp3d_ros.synth.person import DomainConfig, _negative_meshes, _pose_checked, make_person_samples
from kp3d_ros.synth.poses import FAMILIES, POSE_MIX, choose_families, draw_family, limbs_clear


@pytest.fixture(scope="module")
def bm():
    return get_body_model()


def _posed(bm, family: str, n: int = 6, seed: int = 0):
    config = DomainConfig(pose_mix={family: 1.0}, child_share=0.3)
    return _pose_checked(bm, [np.random.default_rng([seed, i]) for i in range(n)], config)


def test_mix_shares_and_limits():
    assert set(POSE_MIX) == set(FAMILIES) and abs(sum(POSE_MIX.values()) - 1.0) < 1e-9
    assert np.all(ANATOMICAL_LIMITS_DEG[:, 0] <= DOF_LIMITS_DEG[:, 0])
    assert np.all(ANATOMICAL_LIMITS_DEG[:, 1] >= DOF_LIMITS_DEG[:, 1])
    rng = np.random.default_rng(0)
    drawn = choose_families(rng, 20000)
    for family, share in POSE_MIX.items():
        assert abs(drawn.count(family) / 20000 - share) < 0.012, family
    lo, hi = np.deg2rad(ANATOMICAL_LIMITS_DEG).T
    for family in FAMILIES:
        angles = draw_family(family, rng).angles
        assert np.all(angles >= lo - 1e-6) and np.all(angles <= hi + 1e-6), family
    with pytest.raises(ValueError):
        choose_families(rng, 1, {"fly": 1.0})
    with pytest.raises(ValueError):
        draw_family("fly", rng)


@pytest.mark.parametrize("family,top", [("squat", (0.45, 1.35)), ("lie", (0.05, 0.6)), ("crawl", (0.25, 1.0)),
                                        ("sit_ground", (0.4, 1.1)), ("upright", (0.9, 2.4))])
def test_family_heights(bm, family, top):
    _, vertices, joints, _ = _posed(bm, family)
    for v, j in zip(vertices, joints, strict=True):
        assert abs(v[:, 2].min()) < 1e-3  # on the ground
        assert top[0] < j[JOINT_INDEX["head_center"], 2] < top[1], family


def test_lying_is_horizontal_and_jumps_leave_the_ground(bm):
    _, vertices, _, _ = _posed(bm, "lie")
    for v in vertices:
        extent = v.max(0) - v.min(0)
        assert max(extent[0], extent[1]) > 1.5 * extent[2]
    _, vertices, _, draws = _posed(bm, "jump", n=12)
    lifts = np.array([d.lift for d in draws])
    np.testing.assert_allclose(vertices[:, :, 2].min(1), lifts, atol=1e-3)
    assert (lifts > 0.05).sum() >= 4


def test_limb_check_catches_a_hand_inside_the_torso(bm):
    _, _, joints, _ = _posed(bm, "upright", n=1)
    j = joints[0].copy()
    assert limbs_clear(j)
    j[JOINT_INDEX["left_wrist"]] = 0.5 * (pelvis(j) + 0.5 * (j[JOINT_INDEX["left_shoulder"]]
                                                            + j[JOINT_INDEX["right_shoulder"]]))
    assert not limbs_clear(j)


def test_pose_family_samples_negatives_and_children(bm):
    config = DomainConfig(pose_mix=POSE_MIX, child_share=0.5, negative_share=0.25, sensor_effects=0.5,
                          distance_range=(3.0, 10.0))
    samples = make_person_samples(bm, [np.random.default_rng([3, i]) for i in range(64)], config)
    negatives = [s for s in samples if not s["is_person"]]
    people = [s for s in samples if s["is_person"]]
    assert 6 <= len(negatives) <= 28 and len(people) + len(negatives) == 64
    for s in negatives:
        assert int(s["family"]) == -1 and len(s["points"]) >= 10 and np.all(s["parts"] == BACKGROUND)
    assert all(0 <= int(s["family"]) < len(FAMILIES) and s["num_person_points"] >= 10 for s in people)
    ages = np.array([s["phenotype"][1] for s in people])
    assert 0.2 < np.mean(ages <= 0.5) < 0.8


def test_seat_and_props_are_background(bm):
    for family in ("sit_seat", "push"):
        config = DomainConfig(pose_mix={family: 1.0}, clutter=0.0, occluder=0.0, carry_object=0.0,
                              distance_range=(4.0, 6.0), presets=("waymo_top",))
        samples = make_person_samples(bm, [np.random.default_rng([4, i]) for i in range(6)], config)
        # the seat or the pushed object gives background returns above the ground
        above = [np.count_nonzero((s["parts"] == BACKGROUND) & (s["points"][:, 2] > s["centre"][2] + 0.15))
                 for s in samples]
        assert np.median(above) >= 5, family


def test_divergence_widens_thin_things_and_mixed_returns_float():
    preset = PRESETS["vlp32c"]
    pole = [box_mesh((10.0, 0.0, 0.0), (0.02, 0.02, 4.0))]
    plain = cast(pole, preset, 1.8, np.random.default_rng(0), azimuth_window=(-0.05, 0.05), noise=False)
    wide = cast(pole, preset, 1.8, np.random.default_rng(0), azimuth_window=(-0.05, 0.05), noise=False,
                effects=SensorEffects(divergence_mrad=4.0))
    assert len(wide) > len(plain)
    scene = [box_mesh((6.0, 0.0, 0.0), (0.3, 0.6, 4.0)), box_mesh((12.0, 0.0, 0.0), (0.3, 8.0, 4.0))]
    mixed = cast(scene, preset, 1.8, np.random.default_rng(0), azimuth_window=(-0.2, 0.2), noise=False,
                 effects=SensorEffects(divergence_mrad=6.0, mixed_probability=1.0))
    floating = mixed.mesh_id == -1
    assert floating.any()
    r = np.linalg.norm(mixed.points[floating], axis=1)
    assert np.all((r > 6.0) & (r < 12.0))


def test_range_and_incidence_dropout():
    preset = PRESETS["waymo_top"]
    wall = [box_mesh((20.0, 0.0, 0.0), (0.2, 20.0, 6.0))]
    base = cast(wall, preset, 1.8, np.random.default_rng(1), azimuth_window=(-0.5, 0.5), dropout=0.0)
    dropped = cast(wall, preset, 1.8, np.random.default_rng(1), azimuth_window=(-0.5, 0.5), dropout=0.0,
                   effects=SensorEffects(range_dropout=0.5, incidence_dropout=0.9))
    assert len(dropped) < 0.95 * len(base)


def test_sweep_times():
    points = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [-1.0, 1e-6, 0.0]], np.float32)
    t = sweep_times(points, 0.1, 0.0)
    np.testing.assert_allclose(t, [0.0, 0.025, 0.05], atol=1e-6)


def test_pose_sequence_holds_blends_and_loops():
    from kp3d_ros.synth.pose_sequence import TRANSITION, PoseSequence, blend, draw_sequence

    rng = np.random.default_rng(4)
    seq = draw_sequence(["squat", "upright", "lie"], rng)
    squat, upright, lie = seq.draws
    (h0, h1, h2), b = seq.holds_s, seq.blend_s
    assert seq.period_s == pytest.approx(h0 + h1 + h2 + 3 * b)
    assert seq.at(0.5 * h0) == (squat, "squat") and seq.at(h0 + b + 0.5 * h1)[1] == "upright"
    middle, label = seq.at(h0 + 0.5 * b)
    assert label == TRANSITION
    np.testing.assert_allclose(middle.angles, 0.5 * (squat.angles + upright.angles), atol=1e-6)
    np.testing.assert_allclose(seq.at(h0 + 1e-6)[0].angles, squat.angles, atol=1e-5)  # no jump into the blend
    np.testing.assert_allclose(seq.at(h0 + b - 1e-6)[0].angles, upright.angles, atol=1e-5)  # nor out of it
    lying_down = blend(upright, lie, 0.5)
    assert lying_down.pitch == pytest.approx(0.5 * lie.pitch) and lying_down.roll == pytest.approx(0.5 * lie.roll)
    assert seq.at(seq.period_s + 0.5 * h0)[0] is squat  # and round again
    low, high = np.deg2rad(ANATOMICAL_LIMITS_DEG[:, 0]), np.deg2rad(ANATOMICAL_LIMITS_DEG[:, 1])
    for t in np.linspace(0, seq.period_s, 97):
        angles = seq.at(t)[0].angles
        assert np.all(angles >= low - 1e-6) and np.all(angles <= high + 1e-6)
    with pytest.raises(ValueError):
        PoseSequence([squat], [1.0, 2.0], 1.0)


def test_scene_people_go_through_pose_transitions():
    from kp3d_ros.synth.pose_sequence import TRANSITION
    from kp3d_ros.synth.scene import SceneSimulator

    sim = SceneSimulator(4, preset="vlp16", seed=8, pose_share=1.0, transitions=True)
    changing = [i for i, s in enumerate(sim.people) if s.sequence is not None]
    assert len(changing) == 2 and all(sim.people[i].action == "sequence" for i in changing)
    i = changing[0]
    period = sim.people[i].sequence.period_s
    times = np.linspace(0.0, period, 40)
    labels = [sim.people[i].held(t)[1] for t in times]
    heads = np.array([sim.pose_people(t).joints[i, JOINT_INDEX["head_center"], 2] for t in times])
    assert {"upright", TRANSITION} <= set(labels) and len(set(labels) - {"upright", TRANSITION}) == 2
    assert heads.max() - heads.min() > 0.4  # they stand up between the two held poses
    assert np.abs(np.diff(heads)).max() < 0.5 * (heads.max() - heads.min())  # gradually, not in one frame


def test_negative_clutter_includes_low_rounded_heaps_and_bushes():
    """Low, long heaps (what a lying person is mistaken for) and rounded bushes are among the negatives."""
    shapes = []
    for i in range(300):
        for vertices, faces in _negative_meshes(np.random.default_rng([7, i]), np.zeros(2)):
            assert np.isfinite(vertices).all() and faces.max() < len(vertices)
            extent = np.ptp(vertices, axis=0)
            shapes.append((len(vertices), float(np.hypot(extent[0], extent[1])), float(extent[2]),
                           float(vertices[:, 2].min())))
    rounded = [s for s in shapes if s[0] > 24]  # blobs; boxes have 8 vertices, bicycles their own meshes
    heaps = [s for s in rounded if s[2] < 0.5 and s[1] > 0.6]
    bushes = [s for s in rounded if s[2] >= 0.5]
    assert len(heaps) >= 10 and len(bushes) >= 10
    assert all(-0.3 < s[3] < 0.05 for s in rounded)  # standing on the ground (sunk a little at most)
