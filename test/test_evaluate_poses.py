"""`kp3d eval` on a pose-family split: scores per family and the body-share gate's precision and recall."""

import itertools

import numpy as np

from kp3d_ros.backends.factory import create_backend, default_model_path
from kp3d_ros.synth.dataset import ShardedDataset, write_dataset
from kp3d_ros.synth.person import DomainConfig
from kp3d_ros.synth.poses import POSE_MIX
from kp3d_ros.train.evaluate import SHARE_THRESHOLDS, detection_curve, predict_dataset, summarise, to_markdown


def test_family_scores_and_detection_curve(tmp_path):
    config = DomainConfig(presets=("waymo_top",), distance_range=(3.0, 8.0), pose_mix=POSE_MIX,
                          negative_share=0.3, child_share=0.3)
    write_dataset(tmp_path / "split", 64, seed=5, config=config, progress=False)
    data = ShardedDataset(tmp_path / "split")
    backend, _ = create_backend("onnxruntime", default_model_path(), max_batch=16, threads=1)
    pred = predict_dataset(backend, data, np.arange(len(data)), batch=16)
    people = sum(int(data[i]["is_person"]) for i in range(len(data)))
    assert len(pred["gt"]) == people == len(pred["family"]) and len(pred["negative_share"]) == 64 - people
    assert np.all(np.isfinite(pred["gt"]))  # no crop of clutter alone among the scored people
    summary = summarise(pred)
    assert summary["by_family"] and set(summary["by_family"]) <= set(POSE_MIX)
    accuracy = np.array(pred["part_accuracy"])
    assert len(accuracy) == people and np.all((accuracy >= 0) & (accuracy <= 1))
    assert np.mean(accuracy) > 0.6  # the shipped model gives most of a person's points their own part
    assert all(0 <= v["part_accuracy"] <= 1 for v in summary["by_family"].values())
    curve = summary["detection"]
    assert [r["threshold"] for r in curve] == list(SHARE_THRESHOLDS)
    assert curve[0]["recall"] == 1.0 and curve[0]["false"] == 64 - people
    recalls = [r["recall"] for r in curve]
    assert all(a >= b for a, b in itertools.pairwise(recalls))
    assert "Body-share gate" in to_markdown(summary)


def test_detection_curve_counts():
    pred = {"person_share": [1.0, 0.9, 0.6, 0.2], "person_points": [100, 100, 100, 10],
            "negative_share": [0.0, 0.95]}
    rows = {r["threshold"]: r for r in detection_curve(pred, min_points=50)}
    assert rows[0.9]["recall"] == 2 / 3 and rows[0.9]["precision"] == 2 / 3 and rows[0.9]["false"] == 1
    assert rows[0.97]["recall"] == 1 / 3 and rows[0.97]["precision"] == 1.0


def test_bag_scoring_ignores_people_with_few_points(tmp_path):
    import argparse
    import json

    from kp3d_ros.core.bagio import read_keypoints, read_point_counts
    from kp3d_ros.synth.bag import write_scene_bag
    from kp3d_ros.train.evaluate import _without_ignored, evaluate_bag

    bag = tmp_path / "scene.mcap"
    write_scene_bag(bag, num_people=3, seconds=0.3, preset="vlp16", seed=4, pose_share=1.0)
    counts, gt = read_point_counts(bag, "/kp3d/gt/segmentation"), read_keypoints(bag, "/kp3d/gt/keypoints")
    assert set(counts) <= set(gt) and all(c > 0 for frame in counts.values() for c in frame.values())
    results = {}
    for min_points in (0, 10**6):
        args = argparse.Namespace(model=str(default_model_path()), bag=str(bag), topic="/points",
                                  gt_topic="/kp3d/gt/keypoints", seg_topic="/kp3d/gt/segmentation",
                                  min_points=min_points, params=None, set=[], threads=1,
                                  json=str(tmp_path / f"{min_points}.json"))
        assert evaluate_bag(args) == 0
        results[min_points] = json.loads((tmp_path / f"{min_points}.json").read_text())
    nobody = results[10**6]["pem"]
    assert nobody["matched"] == nobody["missed"] == 0  # everyone ignored: nothing to find, nothing missed
    assert nobody["false"] <= results[0]["pem"]["false"] + results[0]["pem"]["matched"]
    person = np.zeros((1, 14, 3))
    assert len(_without_ignored(person, np.zeros((0, 14, 3)), person + 0.1)) == 0
    assert len(_without_ignored(person, np.zeros((0, 14, 3)), person + 5.0)) == 1


def test_low_people_are_lying_or_crawling_not_standing():
    from kp3d_ros.train.evaluate import is_low

    rng = np.random.default_rng(0)
    standing = np.column_stack([rng.normal(0, 0.2, 14), rng.normal(0, 0.2, 14), np.linspace(0.05, 1.7, 14)])
    lying = standing[:, [2, 1, 0]] * [1.0, 1.0, 0.2]  # the same body along x, 0.35 m high
    lying[:, 2] += 2.0  # anywhere in height: low is relative to the person's lowest joint
    assert is_low(np.stack([standing, lying])).tolist() == [False, True]
