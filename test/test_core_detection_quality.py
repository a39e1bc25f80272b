"""Detection and tracking quality on ray-cast scenes of the scene simulator (slow: ~1 min).

Prints precision, recall and id switches of the confirmed tracks for a few detection settings;
the numbers are recorded in benchmarks/results/pipeline.md. Run with
    .venv/bin/python -m pytest -m slow -s test/test_core_detection_quality.py
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest

from kp3d_ros.core.params import defaults
from kp3d_ros.core.pipeline import PerceptionPipeline

SEEDS = (10, 11, 12)  # seed 12 has a 5 % ground slope
FRAMES = 12
MATCH_M = 0.5  # a track within this of a person's pelvis (x-y) is that person
VISIBLE = 30  # people with at least this many points must be found


@dataclass
class _Found:
    track_id: int
    centre: np.ndarray  # x, y first


@pytest.fixture(scope="module")
def scenes():
    scene = pytest.importorskip("kp3d_ros.synth.scene")
    out = []
    for seed in SEEDS:
        sim = scene.SceneSimulator(5, seed=seed, ground_slope=0.05 if seed == 12 else 0.0)
        frames = []
        for f in sim.frames(FRAMES):
            truth = np.array([[*p.joints[[4, 10]].mean(0)[:2], p.num_points] for p in f.people])
            frames.append((f.stamp_ns, f.points, truth))
        out.append(frames)
    return out


def evaluate(scenes, overrides: dict, with_network: bool = False) -> dict:
    """Confirmed tracks (pipeline.track) or, with_network, published people (pipeline.process, ONNX model)."""
    tp = fp = fn = switches = 0
    for frames in scenes:
        params = {**defaults(), "flow.enabled": False, **overrides}
        if with_network:
            pipeline = PerceptionPipeline.from_params({**params, "network.backend": "onnxruntime"})
        else:
            pipeline = PerceptionPipeline(params, backend=None)
        owner: dict[int, int] = {}
        for index, (stamp, points, truth) in enumerate(frames):
            if with_network:
                crops = [_Found(p.track_id, p.joints[[4, 10]].mean(0)) for p in pipeline.process(points, stamp).people]
            else:
                crops = pipeline.track(points, stamp)
            if index < 2:  # tracks are confirmed from the second frame
                continue
            matched = set()
            for crop in crops:
                dist = np.linalg.norm(truth[:, :2] - crop.centre[:2], axis=1)
                j = int(np.argmin(dist))
                if dist[j] < MATCH_M:
                    tp += 1
                    matched.add(j)
                    switches += owner.setdefault(crop.track_id, j) != j
                else:
                    fp += 1
            fn += sum(1 for j in np.flatnonzero(truth[:, 2] >= VISIBLE) if j not in matched)
    return {"tp": tp, "fp": fp, "fn": fn, "id_switches": switches,
            "precision": tp / max(tp + fp, 1), "recall": tp / max(tp + fn, 1)}


@pytest.mark.slow
def test_detection_quality_on_simulated_streets(scenes):
    settings = [{}, {"detection.min_height": 1.0}, {"detection.min_height": 1.2},
                {"detection.max_base": 1.0}, {"detection.min_width": 0.0}]
    results = {}
    for overrides in settings:
        results[str(overrides or "defaults")] = r = evaluate(scenes, overrides)
        print(f"{overrides or 'defaults'}: precision {r['precision']:.3f} recall {r['recall']:.3f} "
              f"(tp {r['tp']}, fp {r['fp']}, fn {r['fn']}, id switches {r['id_switches']})")
    default = results["defaults"]
    assert default["recall"] >= 0.95 and default["id_switches"] == 0


@pytest.mark.slow
def test_network_confirmation_removes_clutter(scenes):
    from kp3d_ros.backends import factory

    try:
        factory.default_model_path()
    except FileNotFoundError as exc:
        pytest.skip(f"no shipped ONNX model: {exc}")
    for threshold in (0.0, 0.9):
        r = evaluate(scenes, {"detection.min_body_share": threshold}, with_network=True)
        print(f"published people, detection.min_body_share {threshold}: precision {r['precision']:.3f} "
              f"recall {r['recall']:.3f} (tp {r['tp']}, fp {r['fp']}, fn {r['fn']}, id switches {r['id_switches']})")
