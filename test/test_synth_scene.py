"""Synthetic LiDAR scenes (kp3d_ros.synth.scene) and the forward camera (kp3d_ros.synth.camera)."""

from __future__ import annotations

import numpy as np
import pytest

from kp3d_ros.core.camera_geometry import camera_rotation
from kp3d_ros.skeleton import NUM_CLASSES, NUM_JOINTS
from kp3d_ros.synth.camera import PinholeCamera, SceneRenderer
from kp3d_ros.synth.scene import MAX_RANGE, MIN_RANGE, SceneSimulator

RATE = 10.0


@pytest.fixture(scope="module")
def scene():
    sim = SceneSimulator(4, preset="vlp32c", seed=3, rate_hz=RATE, keep_geometry=True)
    return sim, list(sim.frames(3))


def test_frames_have_the_promised_shapes(scene):
    _, frames = scene
    assert [f.index for f in frames] == [0, 1, 2]
    assert np.all(np.diff([f.stamp_ns for f in frames]) == int(1e9 / RATE))
    for frame in frames:
        m = len(frame.points)
        assert m > 10000 and frame.points.shape == (m, 3) and frame.points.dtype == np.float32
        assert frame.intensity.shape == (m,) and frame.intensity.dtype == np.float32
        assert frame.intensity.min() >= 0.0 and frame.intensity.max() <= 1.0
        assert frame.sensor_pose.shape == (4, 4)
        assert [p.person_id for p in frame.people] == [0, 1, 2, 3]
        seen = np.concatenate([p.point_indices for p in frame.people])
        assert len(np.unique(seen)) == len(seen) and (seen < m).all()  # a point belongs to at most one person
        for person in frame.people:
            k = person.num_points
            assert person.joints.shape == (NUM_JOINTS, 3) and person.joints.dtype == np.float32
            assert person.point_indices.dtype == np.int64 and person.parts.shape == (k,)
            assert person.parts.dtype == np.uint8 and ((person.parts >= 1) & (person.parts < NUM_CLASSES)).all()
            assert person.flow.shape == (k, 3) and np.isfinite(person.flow).all()
        labels = frame.person_labels()
        assert (labels >= 0).sum() == len(seen)


def _most_common_height(points: np.ndarray) -> float:
    counts, edges = np.histogram(points[:, 2], bins=np.arange(-5.0, 5.0, 0.05))
    return float(edges[counts.argmax()] + 0.025)


def test_ground_is_sensor_height_below_the_lidar(scene):
    sim, frames = scene
    points = frames[0].points
    background = points[frames[0].person_labels() < 0]
    near = background[np.linalg.norm(background[:, :2], axis=1) < 15]
    assert abs(_most_common_height(near) + sim.sensor_height) < 0.05


def test_joints_lie_within_their_persons_points(scene):
    _, frames = scene
    checked = 0
    for frame in frames:
        for person in frame.people:
            if person.num_points < 30:
                continue
            pts = frame.points[person.point_indices]
            outside = np.maximum(np.maximum(pts.min(0) - person.joints, person.joints - pts.max(0)), 0)
            assert outside.max() < 0.3, f"person {person.person_id}: joints {outside.max():.2f} m outside its points"
            checked += 1
    assert checked >= 3


def test_flow_matches_walking_speed(scene):
    sim, frames = scene
    for person in frames[0].people:
        script = sim.people[person.person_id]
        if script.action != "walk" or person.num_points < 30:
            continue
        expected = script.speed / RATE
        moved = np.linalg.norm(person.flow[:, :2].mean(0))
        assert 0.5 * expected < moved < 1.6 * expected
        # The person's points in the next frame are about where the flow carries them.
        nxt = frames[1].people[person.person_id]
        if nxt.num_points >= 30:
            shift = frames[1].points[nxt.point_indices].mean(0) - frames[0].points[person.point_indices].mean(0)
            assert np.linalg.norm(shift[:2] - person.flow[:, :2].mean(0)) < 0.1


def test_two_people_cross_paths_and_everyone_stays_in_range():
    sim = SceneSimulator(6, preset="vlp16", seed=11)
    times = np.arange(0.0, 30.0, 0.1)
    xy = np.array([[s.root(t)[0] for t in times] for s in sim.people])  # (N, T, 2)
    gap = np.linalg.norm(xy[0] - xy[1], axis=1)
    assert 0.3 < gap.min() < 1.2  # the crossing pair passes close, without walking into each other
    ranges = np.linalg.norm(xy, axis=2)
    assert ranges.min() >= MIN_RANGE - 1.1 and ranges.max() <= MAX_RANGE + 1.1  # turners circle within ~1 m
    assert [s.action for s in sim.people[:6]] == ["walk", "walk", "walk", "wave", "turn", "stand"]


def test_moving_ego_keeps_the_ground_below_the_sensor():
    sim = SceneSimulator(1, preset="vlp16", seed=2, ego_speed=5.0)
    frames = list(sim.frames(2))
    np.testing.assert_allclose(frames[1].sensor_pose[:3, 3] - frames[0].sensor_pose[:3, 3], [0.5, 0, 0], atol=1e-9)
    for frame in frames:
        near = frame.points[np.linalg.norm(frame.points[:, :2], axis=1) < 12]
        assert abs(_most_common_height(near) + sim.sensor_height) < 0.05


def test_same_seed_same_scene():
    a = next(SceneSimulator(2, preset="vlp16", seed=5).frames(1))
    b = next(SceneSimulator(2, preset="vlp16", seed=5).frames(1))
    np.testing.assert_array_equal(a.points, b.points)
    np.testing.assert_array_equal(a.people[1].joints, b.people[1].joints)


def test_waymo_top_full_scan_has_over_100k_points():
    frame = next(SceneSimulator(1, preset="waymo_top", seed=0).frames(1))
    assert len(frame.points) > 100_000
    azimuth = np.arctan2(frame.points[:, 1], frame.points[:, 0])
    assert np.histogram(azimuth, bins=8, range=(-np.pi, np.pi))[0].min() > 5000  # all the way round


def test_bad_arguments_are_rejected():
    with pytest.raises(ValueError, match="preset"):
        SceneSimulator(1, preset="nope")
    with pytest.raises(ValueError):
        SceneSimulator(-1)


def test_camera_projects_known_points_to_expected_pixels():
    cam = PinholeCamera()
    # Optical z = LiDAR x, optical x = -LiDAR y (right), optical y = -LiDAR z (down).
    np.testing.assert_allclose(cam.rotation, [[0, 0, 1], [-1, 0, 0], [0, -1, 0]], atol=1e-12)
    pixels, depth = cam.project(np.array([[10.0, 0.0, 0.0], [10.0, 2.0, 1.0], [-5.0, 0.0, 0.0]]))
    np.testing.assert_allclose(pixels[:2], [[320.0, 240.0], [220.0, 190.0]], atol=1e-9)
    np.testing.assert_allclose(depth, [10.0, 10.0, -5.0])
    rays = cam.pixel_rays()
    back, _ = cam.project(rays[[0, 640 * 100 + 37]] * 7.0)
    np.testing.assert_allclose(back, [[0.5, 0.5], [37.5, 100.5]], atol=1e-6)
    assert np.allclose(camera_rotation(0.0, 0.0, np.pi / 2) @ [1, 0, 0], [0, 1, 0])


def test_camera_agrees_with_the_node_overlay():
    overlay = pytest.importorskip("kp3d_ros.ros.overlay")
    cam = PinholeCamera()
    points = np.random.default_rng(0).uniform([2, -5, -2], [30, 5, 2], (50, 3))
    ours, _ = cam.project(points)
    theirs, front = overlay.project(points, cam.k, cam.extrinsics)
    assert front.all()
    np.testing.assert_allclose(ours, theirs, atol=1e-6)
    info = cam.camera_info()
    assert info["distortion_model"] == "plumb_bob"
    np.testing.assert_allclose(info["p"], [500, 0, 320, 0, 0, 500, 240, 0, 0, 0, 1, 0])


def test_render_shows_people_where_their_joints_project(scene):
    sim, frames = scene
    cam = PinholeCamera()
    renderer = SceneRenderer(cam, sim.world)
    frame = frames[0]
    image = renderer.render(frame.geometry, frame.sensor_pose)
    assert image.shape == (480, 640, 3) and image.dtype == np.uint8
    empty = renderer.render(type(frame.geometry)(sim.world, frame.geometry.people_vertices[:0],
                                                 frame.geometry.people_faces, frame.geometry.people_colours[:0]),
                            frame.sensor_pose)
    changed = np.abs(image.astype(int) - empty.astype(int)).sum(2) > 0
    assert changed.any()
    ys, xs = np.nonzero(changed)
    joints = np.concatenate([p.joints for p in frame.people])
    pixels, depth = cam.project(joints)
    pixels = pixels[depth > 0.5]
    in_image = (pixels[:, 0] >= 0) & (pixels[:, 0] < 640) & (pixels[:, 1] >= 0) & (pixels[:, 1] < 480)
    assert in_image.any(), "the test scene should have someone in front of the camera"
    nearest = np.min(np.hypot(xs[:, None] - pixels[in_image, 0], ys[:, None] - pixels[in_image, 1]), axis=1)
    assert np.percentile(nearest, 95) < 60  # the changed pixels are the people's


def test_people_holding_library_poses():
    from kp3d_ros.skeleton import JOINT_INDEX
    from kp3d_ros.synth.scene import SCENE_FAMILIES

    sim = SceneSimulator(7, preset="vlp16", seed=5, pose_share=1.0, child_share=0.5)
    held = [s for s in sim.people if s.pose is not None]
    assert len(held) == 5 and all(s.action in SCENE_FAMILIES and s.speed == 0.0 for s in held)
    assert all(s.pose is None for s in sim.people[:2])  # the crossing pair still walks
    ages = sim.phenotypes.values[:, 1]
    assert np.all((ages >= 0.25) & (ages <= 1.0)) and np.any(ages <= 0.5)
    frame_a, frame_b = list(sim.frames(2))
    for i, script in enumerate(sim.people):
        if script.pose is None:
            continue
        head = frame_a.people[i].joints[JOINT_INDEX["head_center"], 2] + sim.sensor_height
        if script.action != "reach":
            assert head < 1.9, script.action  # nobody else holding these poses stands at full height
        if script.action != "jump":  # a held pose stays put
            np.testing.assert_allclose(frame_a.people[i].joints, frame_b.people[i].joints, atol=1e-4)
