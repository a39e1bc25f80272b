"""`kp3d infer` and the bag reader on small bags written with rosbags (MCAP and sqlite3)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from rosbags.rosbag2 import StoragePlugin, Writer
from rosbags.typesys import Stores, get_typestore

from kp3d_ros import layouts
from kp3d_ros.bench import simple_scene_frames
from kp3d_ros.cli import main as kp3d
from kp3d_ros.core.bagio import BagError, iter_scans, list_topics, read_keypoints
from kp3d_ros.skeleton import NUM_JOINTS

TYPES = get_typestore(Stores.ROS2_KILTED)
PointCloud2 = TYPES.types["sensor_msgs/msg/PointCloud2"]
PointField = TYPES.types["sensor_msgs/msg/PointField"]
Header = TYPES.types["std_msgs/msg/Header"]
Time = TYPES.types["builtin_interfaces/msg/Time"]


def cloud_message(array: np.ndarray, stamp_ns: int, frame_id: str = "lidar"):
    fields = [PointField(name=n, offset=o, datatype=d, count=c) for n, o, d, c in layouts.fields_of(array.dtype)]
    header = Header(stamp=Time(sec=stamp_ns // 10**9, nanosec=stamp_ns % 10**9), frame_id=frame_id)
    step = array.dtype.itemsize
    return PointCloud2(header=header, height=1, width=len(array), fields=fields, is_bigendian=False,
                       point_step=step, row_step=step * len(array),
                       data=np.frombuffer(array.tobytes(), dtype=np.uint8), is_dense=False)


def write_bag(path, frames, storage=StoragePlugin.MCAP, nan_rows: int = 5):
    """/points (XYZI, with some NaN rows) and /ground_truth/keypoints (one fake person per frame)."""
    msgtype = "sensor_msgs/msg/PointCloud2"
    with Writer(path, version=9, storage_plugin=storage) as writer:
        points_conn = writer.add_connection("/points", msgtype, typestore=TYPES)
        truth_conn = writer.add_connection("/ground_truth/keypoints", msgtype, typestore=TYPES)
        for stamp, points in frames:
            cloud = np.zeros(len(points), dtype=layouts.XYZI)
            cloud["x"], cloud["y"], cloud["z"] = points[:, 0], points[:, 1], points[:, 2]
            cloud["x"][:nan_rows] = np.nan
            writer.write(points_conn, stamp, TYPES.serialize_cdr(cloud_message(cloud, stamp), msgtype))
            joints = np.full((NUM_JOINTS, 3), stamp * 1e-9, np.float32)
            truth = layouts.keypoints_array([(4, joints, np.ones(NUM_JOINTS, np.float32))])
            writer.write(truth_conn, stamp, TYPES.serialize_cdr(cloud_message(truth, stamp), msgtype))


@pytest.fixture(scope="module")
def frames():
    return simple_scene_frames(num_people=2, num_points=20000, num_frames=4, seed=2)


@pytest.mark.parametrize("storage", [StoragePlugin.MCAP, StoragePlugin.SQLITE3])
def test_bag_reader_roundtrip(tmp_path, frames, storage):
    bag = tmp_path / "bag"
    write_bag(bag, frames, storage)
    assert list_topics(bag)["/points"] == "sensor_msgs/msg/PointCloud2"
    scans = list(iter_scans(bag, "/points"))
    assert [s.stamp_ns for s in scans] == [f[0] for f in frames]
    assert scans[0].frame_id == "lidar" and scans[0].num_dropped_nonfinite == 5
    np.testing.assert_array_equal(scans[2].points, frames[2][1][5:])
    truth = read_keypoints(bag, "/ground_truth/keypoints")
    assert list(truth) == [f[0] for f in frames]
    np.testing.assert_allclose(truth[frames[1][0]][4], np.full((NUM_JOINTS, 3), frames[1][0] * 1e-9), rtol=1e-6)
    with pytest.raises(BagError, match="topic /nope not in bag"):
        list(iter_scans(bag, "/nope"))
    with pytest.raises(BagError, match="KEYPOINTS"):
        read_keypoints(bag, "/points")


def test_infer_writes_jsonl(tmp_path, frames, capsys):
    from kp3d_ros.backends import factory

    try:
        factory.default_model_path()
    except FileNotFoundError as exc:
        pytest.skip(f"no shipped ONNX model: {exc}")
    bag = tmp_path / "bag"
    write_bag(bag, frames)
    out = tmp_path / "pred.jsonl"
    params = tmp_path / "params.yaml"  # the stand-in cylinders need not look like people to the network
    params.write_text("kp3d_node:\n  ros__parameters:\n    detection:\n      min_body_share: 0.0\n")
    assert kp3d(["infer", str(bag), "--out", str(out), "--backend", "onnxruntime", "--threads", "1",
                 "--params", str(params)]) == 0
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["stamp_ns"] for r in lines] == [f[0] for f in frames]
    assert lines[0]["people"] == [] and lines[0]["frame_id"] == "lidar"
    last = lines[-1]["people"]
    assert sorted(p["track_id"] for p in last) == [1, 2]
    for person in last:
        assert np.asarray(person["keypoints"]).shape == (NUM_JOINTS, 3)
        assert len(person["confidence"]) == NUM_JOINTS
    assert "4 frames" in capsys.readouterr().out


def test_infer_clear_errors(tmp_path, frames, capsys):
    assert kp3d(["infer", str(tmp_path / "missing"), "--out", str(tmp_path / "p.jsonl")]) == 2
    assert "bag not found" in capsys.readouterr().err
    bag = tmp_path / "bag"
    write_bag(bag, frames[:1])
    assert kp3d(["infer", str(bag), "--out", str(tmp_path / "p.jsonl"), "--topic", "/lidar"]) == 2
    assert "topic /lidar not in bag" in capsys.readouterr().err


def test_bench_reports_every_stage(tmp_path, capsys):
    out = tmp_path / "bench.json"
    assert kp3d(["bench", "--scene", "simple", "--backends", "none", "--people", "2", "--points", "20000",
                 "--frames", "3", "--warmup", "2", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    (run,) = result["runs"]
    assert run["people"] == 2 and run["frames"] == 3 and run["mean_people_found"] == 2
    for stage in ("decode", "roi", "ground", "candidates", "tracking", "crops", "network", "flow", "publish",
                  "end_to_end"):
        assert set(run["stages_ms"][stage]) == {"median", "p90", "p99", "mean"}
    assert run["stages_ms"]["end_to_end"]["median"] >= run["stages_ms"]["ground"]["median"]
    assert run["throughput_fps"] > 0 and run["peak_rss_mb"] > 0
    assert "| none | 2 |" in capsys.readouterr().out
