"""The perception pipeline end to end: shapes, track ids, flow, timings; with the shipped ONNX model."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from kp3d_ros.bench import simple_scene_frames
from kp3d_ros.core.cloud_layout import CloudError
from kp3d_ros.core.params import defaults
from kp3d_ros.core.pipeline import STAGES, PerceptionPipeline
from kp3d_ros.skeleton import NUM_CLASSES, NUM_JOINTS


def _model_or_skip():
    from kp3d_ros.backends import factory

    try:
        return factory.default_model_path()
    except FileNotFoundError as exc:
        pytest.skip(f"no shipped ONNX model: {exc}")


@pytest.fixture(scope="module")
def frames():
    return simple_scene_frames(num_people=3, num_points=30000, num_frames=5, seed=1)


def test_track_only_gives_stable_ids_and_previous_crops(frames):
    pipeline = PerceptionPipeline(defaults(), backend=None)
    history = []
    for stamp, points in frames:
        crops = pipeline.track(points, stamp)
        history.append({c.track_id: c for c in crops})
    assert history[0] == {}  # tracks need tracking.min_hits = 2 detections
    assert sorted(history[1]) == sorted(history[-1]) == [1, 2, 3]
    for crop in history[-1].values():
        assert crop.points.dtype == np.float32 and crop.points.shape[1] == 3 and len(crop.points) >= 400
        assert crop.previous_points is not None and crop.previous_points.shape[1] == 3
        speed = np.linalg.norm(crop.velocity[:2])
        assert 0.8 < speed < 1.6  # the cylinders walk at 1.2 m/s
        # The crop is centred on the person: its non-ground points are within 0.35 m of the centre.
        upper = crop.points[crop.points[:, 2] > crop.centre[2] + 0.3]
        assert np.abs(upper[:, :2].mean(0) - crop.centre[:2]).max() < 0.15
    assert set(pipeline.last_timings_ms) >= {"roi", "ground", "candidates", "tracking", "crops", "total"}
    pipeline.reset()
    stamp, points = frames[0]
    assert pipeline.track(points, stamp) == []  # a fresh start: nothing confirmed yet


def test_process_with_onnx_backend(frames):
    model = _model_or_skip()
    params = {**defaults(), "network.backend": "onnxruntime", "network.model_path": str(model),
              "network.threads": 1, "detection.min_body_share": 0.0}  # cylinders need not look like people
    pipeline = PerceptionPipeline.from_params(params)
    results = [pipeline.process(points, stamp) for stamp, points in frames]
    assert results[0].people == []
    last = results[-1]
    assert set(last.timings_ms) == set(STAGES)
    assert last.timings_ms["total"] >= last.timings_ms["network"] > 0
    assert last.num_points == len(frames[-1][1]) and last.num_dropped_nonfinite == 0
    assert sorted(p.track_id for p in last.people) == [1, 2, 3]
    for person in last.people:
        assert person.joints.shape == (NUM_JOINTS, 3) and person.joints.dtype == np.float32
        assert np.isfinite(person.joints).all()
        assert person.confidence.shape == (NUM_JOINTS,)
        assert ((person.confidence >= 0) & (person.confidence <= 1)).all()
        assert person.parts.shape == (len(person.points),) and person.parts.dtype == np.uint8
        assert person.parts.max() < NUM_CLASSES
        if pipeline.flow_estimator is not None:
            assert person.flow is not None and person.flow.shape == person.points.shape
            # The cylinders move 0.12 m per frame; the flow of their upper points says so roughly.
            upper = person.points[:, 2] > person.points[:, 2].min() + 0.8
            motion = np.median(person.flow[upper], axis=0)[:2]
            assert 0.05 < np.linalg.norm(motion) < 0.25
            velocity = next(t.velocity for t in pipeline.tracker.tracks if t.track_id == person.track_id)
            assert motion @ velocity > 0.8 * np.linalg.norm(motion) * np.linalg.norm(velocity)  # same direction


def test_network_body_share_filter(frames):
    model = _model_or_skip()
    params = {**defaults(), "network.backend": "onnxruntime", "network.model_path": str(model),
              "network.threads": 1, "flow.enabled": False}
    runs = {}
    for threshold in (0.0, 1.0):
        pipeline = PerceptionPipeline.from_params({**params, "detection.min_body_share": threshold})
        runs[threshold] = [pipeline.process(points, stamp) for stamp, points in frames][-1].people
    assert len(runs[0.0]) == 3
    # Same seed, same crops, same network input. The strict run keeps the people whose non-ground points
    # (estimated ground + 0.2 m; the true ground is z = -1.9 + 0.03 x here) are all labelled body parts.
    def all_body_above(person, height):
        above = person.points[:, 2] > -1.9 + 0.03 * person.points[:, 0] + height
        return bool((person.parts[above] > 0).all())

    # Stage II's path: track() then confirm() with the same network test.
    loose = PerceptionPipeline.from_params({**params, "detection.min_body_share": 0.0})
    crops = [loose.track(points, stamp) for stamp, points in frames][-1]
    assert all(c.person_mask is not None and c.person_mask.shape == (len(c.points),) for c in crops)
    assert [c.track_id for c in loose.confirm(crops)] == [c.track_id for c in crops]

    kept = {p.track_id for p in runs[1.0]}
    assert kept <= {p.track_id for p in runs[0.0] if all_body_above(p, 0.3)}
    assert {p.track_id for p in runs[0.0] if all_body_above(p, 0.1)} <= kept


def test_process_counts_nonfinite_and_rejects_bad_shapes(frames):
    pipeline = PerceptionPipeline(defaults(), backend=None)
    stamp, points = frames[0]
    noisy = points.copy()
    noisy[:7, 1] = np.nan
    noisy[7:9, 2] = np.inf
    result = pipeline.process(noisy, stamp)
    assert result.num_dropped_nonfinite == 9
    empty = pipeline.process(np.zeros((0, 3), np.float32), stamp + 1)
    assert empty.people == [] and empty.num_points == 0
    with pytest.raises(CloudError, match="shape"):
        pipeline.process(points[:, :2], stamp)
    small = PerceptionPipeline({**defaults(), "input.max_points": 1000}, backend=None)
    with pytest.raises(CloudError, match="max_points"):
        small.process(points, stamp)


def test_detects_a_raycast_person_in_the_scene_simulator():
    scene = pytest.importorskip("kp3d_ros.synth.scene")
    sim = scene.SceneSimulator(1, seed=3)
    pipeline = PerceptionPipeline(defaults(), backend=None)
    found = 0
    for frame in sim.frames(4):
        crops = pipeline.track(frame.points, frame.stamp_ns)
        truth_xy = frame.people[0].joints[:, :2].mean(0)
        if frame.people[0].num_points >= 50:
            found += any(np.linalg.norm(c.centre[:2] - truth_xy) < 0.4 for c in crops)
    assert found >= 3


def test_tracks_the_network_keeps_rejecting_are_only_rechecked(frames):
    """Static clutter: after 3 rejections in a row a track goes through the network every recheck_interval
    frames; one acceptance makes it a person again, checked every frame."""
    model = _model_or_skip()
    pipeline = PerceptionPipeline.from_params({**defaults(), "network.backend": "onnxruntime",
                                               "network.model_path": str(model), "detection.recheck_interval": 4})
    for stamp, points in frames:  # real tracks, so that _count_rejections keeps their entries
        crops = pipeline.track(points, stamp)
    clutter, person = crops[0], crops[1]
    checked_frames = []
    for frame in range(12):
        checked = [(clutter, person)[i].track_id for i in pipeline._worth_checking([clutter.track_id, person.track_id])]
        checked_frames.append(clutter.track_id in checked)
        assert person.track_id in checked
        went = [c for c in (clutter, person) if c.track_id in checked]
        pipeline._count_rejections(went, np.array([i for i, c in enumerate(went) if c is person]))
        if frame == 9:  # the clutter track looks like a person once: checked every frame again
            pipeline._count_rejections([clutter], np.array([0]))
    # three rejections, once more right after them, then every 4th frame in the track's phase
    assert checked_frames[:4] == [True] * 4
    later = [f for f in range(5, 10) if checked_frames[f]]
    assert later and later[0] < 4 + 4 and all(b - a == 4 for a, b in itertools.pairwise(later))
    assert not any(checked_frames[4:later[0]])
    assert checked_frames[10:] == [True, True]


def test_rechecks_of_static_clutter_are_spread_over_the_frames():
    """Eight clutter tracks that the network rejected together are rechecked two per frame (interval 4),
    each once every 4 frames, instead of all eight in one frame."""
    from kp3d_ros.core.pipeline import TrackedCrop

    pipeline = PerceptionPipeline.from_params({**defaults(), "network.backend": "onnxruntime",
                                               "network.model_path": str(_model_or_skip()),
                                               "detection.recheck_interval": 4})
    crops = [TrackedCrop(k, np.zeros((30, 3), np.float32), np.zeros(3, np.float32), None, np.zeros(3, np.float32))
             for k in range(1, 9)]
    pipeline._rejections = dict.fromkeys(range(1, 9), PerceptionPipeline.REJECTIONS_TO_SKIP + 1)  # past the first
    seen = {k: [] for k in range(1, 9)}
    for frame in range(12):
        checked = pipeline._worth_checking([c.track_id for c in crops])
        assert len(checked) == 2
        for i in checked:
            seen[crops[i].track_id].append(frame)
            pipeline._rejections[crops[i].track_id] += 1  # rejected again
    assert all(len(f) == 3 and f[1] - f[0] == 4 == f[2] - f[1] for f in seen.values())


def test_body_share_counts_only_points_near_the_track_axis():
    """A person beside a parked car: the car's points in the crop cylinder are rightly background and must
    not make the network's body share fail; with the core radius spanning the whole crop they do."""
    from kp3d_ros.core.pipeline import TrackedCrop

    model = _model_or_skip()
    params = {**defaults(), "network.backend": "onnxruntime", "network.model_path": str(model),
              "detection.min_body_share": 0.9, "detection.body_share_smoothing": 0.0}  # the car's share decides
    pipeline = PerceptionPipeline.from_params(params)
    rng = np.random.default_rng(0)
    body = np.column_stack([rng.normal(10, 0.1, 200), rng.normal(0, 0.1, 200), rng.uniform(-1.8, -0.2, 200)])
    car = np.column_stack([rng.uniform(10.5, 10.9, 100), rng.uniform(-0.8, 0.8, 100), rng.uniform(-1.8, -0.5, 100)])
    crop = TrackedCrop(1, np.concatenate([body, car]).astype(np.float32), np.array([10, 0, -1.9], np.float32),
                       None, np.zeros(3, np.float32))
    parts = [np.concatenate([np.full(200, 2, np.uint8), np.zeros(100, np.uint8)])]  # torso, then background
    mask = [np.ones(300, bool)]
    assert list(pipeline._confirmed_by_network([crop], parts, mask)) == [0]
    pipeline.params["detection.body_core_radius"] = 2.0
    assert list(pipeline._confirmed_by_network([crop], parts, mask)) == []


def test_averaged_body_share_rejects_flickering_clutter_without_delaying_people(frames):
    """detection.body_share_smoothing: a track's share is averaged over its frames, so clutter whose share
    crosses the threshold now and then stays out, a person is accepted in its first frame and survives one
    poor frame; with smoothing 0 each frame decides alone."""
    from kp3d_ros.core.pipeline import TrackedCrop

    model = _model_or_skip()
    params = {**defaults(), "network.backend": "onnxruntime", "network.model_path": str(model),
              "detection.min_body_share": 0.8, "detection.body_share_smoothing": 0.5}
    pipeline = PerceptionPipeline.from_params(params)
    for stamp, points in frames:  # real tracks: the averages of tracks that died are forgotten
        real = pipeline.track(points, stamp)
    rng = np.random.default_rng(0)
    points = np.column_stack([rng.normal(10, 0.1, 100), rng.normal(0, 0.1, 100), rng.uniform(-1.8, -0.2, 100)])
    crops = [TrackedCrop(real[i].track_id, points.astype(np.float32), np.array([10, 0, -1.9], np.float32), None,
                         np.zeros(3, np.float32)) for i in (0, 1)]
    mask = [np.ones(100, bool)] * 2

    def labelled(share: float) -> np.ndarray:
        return (np.arange(100) < round(100 * share)).astype(np.uint8) * 2  # torso for that share, else background

    clutter = [0.0, 0.9, 0.1, 0.9, 0.2, 0.95]
    person = [1.0, 1.0, 0.7, 1.0, 1.0, 1.0]
    accepted = []
    for c, p in zip(clutter, person, strict=True):
        accepted.append(list(pipeline._confirmed_by_network(crops, [labelled(c), labelled(p)], mask)))
    assert accepted == [[1]] * 6  # the clutter track never, the person in every frame, the first included
    pipeline.params["detection.body_share_smoothing"] = 0.0
    assert list(pipeline._confirmed_by_network(crops, [labelled(0.9), labelled(0.7)], mask)) == [0]


def test_pipeline_limits_numpy_blas_threads():
    """cpu.blas_threads caps every loaded BLAS library (the default 1: small products, no oversubscription)."""
    threadpoolctl = pytest.importorskip("threadpoolctl")
    model = _model_or_skip()
    params = {**defaults(), "network.backend": "onnxruntime", "network.model_path": str(model), "network.threads": 1}
    with threadpoolctl.threadpool_limits(limits=2, user_api="blas"):  # restored afterwards for the other tests
        PerceptionPipeline.from_params({**params, "cpu.blas_threads": 1})
        blas = [info for info in threadpoolctl.threadpool_info() if info["user_api"] == "blas"]
        assert blas and all(info["num_threads"] == 1 for info in blas)
        PerceptionPipeline.from_params({**params, "cpu.blas_threads": 0})  # 0 leaves the limit as it was
        assert all(info["num_threads"] == 1 for info in threadpoolctl.threadpool_info() if info["user_api"] == "blas")


def test_rejected_clutter_is_checked_again_as_soon_as_its_shape_changes():
    """A rejected track skipped between its rechecks goes through the network in the frame its cluster grows
    (someone stands up beside a bin), not only at its next periodic recheck; one voxel of width flicker is not
    a change."""
    pipeline = PerceptionPipeline.from_params({**defaults(), "network.backend": "onnxruntime",
                                               "network.model_path": str(_model_or_skip()),
                                               "detection.recheck_interval": 50})
    skip = PerceptionPipeline.REJECTIONS_TO_SKIP
    bin_shape = np.array([0.9, 0.6, 120.0])
    pipeline._rejections = {7: skip + 2}  # past the recheck right after the third rejection, off its phase (7+2)%50
    pipeline._checked_shapes = {7: bin_shape}
    assert pipeline._worth_checking([7], bin_shape[None]) == []  # off its phase and unchanged
    assert pipeline._worth_checking([7], (bin_shape + np.array([0.0, 0.2, 10.0]))[None]) == []  # flicker
    assert pipeline._worth_checking([7], (bin_shape + np.array([0.8, 0.2, 90.0]))[None]) == [0]  # a person beside it
    assert pipeline._worth_checking([7], np.full((1, 3), np.nan)) == []  # unmatched this frame: no shape


def test_concurrent_flow_gives_the_sequential_result(frames):
    """flow.concurrent starts the flow of last frame's people while the network runs: the same flows as one
    after the other (the same subsets are drawn in the same order once every person was a person before)."""
    model = _model_or_skip()
    params = {**defaults(), "network.backend": "onnxruntime", "network.model_path": str(model),
              "network.threads": 1, "detection.min_body_share": 0.0}
    results = {}
    for concurrent in (False, True):
        pipeline = PerceptionPipeline.from_params({**params, "flow.concurrent": concurrent})
        results[concurrent] = [pipeline.process(points, stamp) for stamp, points in frames]
    flows = 0
    for sequential, parallel in zip(results[False], results[True], strict=True):
        assert [p.track_id for p in sequential.people] == [p.track_id for p in parallel.people]
        for a, b in zip(sequential.people, parallel.people, strict=True):
            assert (a.flow is None) == (b.flow is None)
            if a.flow is not None:
                np.testing.assert_allclose(a.flow, b.flow, atol=1e-6)
                flows += 1
    assert flows >= 6  # three people with flow in at least two frames
