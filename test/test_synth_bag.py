"""`kp3d synth-bag` (kp3d_ros.synth.bag): bags read back with rosbags and deserialized with rclpy."""

from __future__ import annotations

import numpy as np
import pytest
from rosbags.rosbag2 import Reader
from rosbags.typesys import Stores, get_typestore

from kp3d_ros import cli
from kp3d_ros.core import bagio
from kp3d_ros.layouts import KEYPOINTS, SCENE_FLOW, SEGMENTATION, XYZI, fields_of, people_from_keypoints
from kp3d_ros.skeleton import NUM_JOINTS
from kp3d_ros.synth import bag
from kp3d_ros.synth.scene import START_NS, SceneSimulator

PEOPLE, SECONDS, RATE, PRESET, SEED = 3, 0.3, 10.0, "vlp16", 7
LAYOUTS = {bag.TOPIC_POINTS: XYZI, bag.TOPIC_GT_KEYPOINTS: KEYPOINTS, bag.TOPIC_GT_SEGMENTATION: SEGMENTATION,
           bag.TOPIC_GT_FLOW: SCENE_FLOW}


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    path = tmp_path_factory.mktemp("bags") / "scene.mcap"
    summary = bag.write_scene_bag(path, PEOPLE, SECONDS, PRESET, SEED, camera=True, rate_hz=RATE,
                                  camera_rate_hz=RATE)
    return path, summary


def _messages(path):
    store = get_typestore(Stores.ROS2_KILTED)
    out: dict[str, list] = {}
    with Reader(path) as reader:
        for connection, log_ns, raw in reader.messages():
            msg = store.deserialize_cdr(raw, connection.msgtype)
            out.setdefault(connection.topic, []).append((log_ns, msg, bytes(raw)))
    return out


def _array(msg, dtype):
    return np.frombuffer(np.asarray(msg.data, dtype=np.uint8).tobytes(), dtype=dtype)


def test_bag_has_every_topic_with_matching_stamps(written):
    path, summary = written
    assert path.is_file() and summary.num_frames == 3 and summary.num_images == 3
    messages = _messages(path)
    assert set(messages) == set(LAYOUTS) | {bag.TOPIC_IMAGE, bag.TOPIC_CAMERA_INFO}
    expected = [START_NS + i * 100_000_000 for i in range(3)]
    for topic, entries in messages.items():
        assert [log_ns for log_ns, _, _ in entries] == expected, topic
        assert [bagio.stamp_ns(msg) for _, msg, _ in entries] == expected, topic
        assert summary.message_counts[topic] == 3
    for topic, dtype in LAYOUTS.items():
        for _, msg, _ in messages[topic]:
            assert msg.header.frame_id == "lidar" and msg.height == 1 and not msg.is_dense
            assert [(f.name, f.offset, f.datatype, f.count) for f in msg.fields] == fields_of(dtype)
            assert msg.point_step == dtype.itemsize and msg.row_step == msg.width * dtype.itemsize
            assert len(msg.data) == msg.row_step
    assert messages[bag.TOPIC_POINTS][0][1].width > 10000


def test_rclpy_deserializes_the_cdr_bytes(written):
    rclpy_serialization = pytest.importorskip("rclpy.serialization")
    sensor_msgs = pytest.importorskip("sensor_msgs.msg")
    messages = _messages(written[0])
    _, ours, raw = messages[bag.TOPIC_POINTS][1]
    theirs = rclpy_serialization.deserialize_message(raw, sensor_msgs.PointCloud2)
    assert theirs.header.frame_id == "lidar" and theirs.width == ours.width
    assert theirs.header.stamp.sec * 10**9 + theirs.header.stamp.nanosec == START_NS + 100_000_000
    assert [(f.name, f.offset, f.datatype) for f in theirs.fields] == [(n, o, d) for n, o, d, _ in fields_of(XYZI)]
    np.testing.assert_array_equal(np.frombuffer(bytes(theirs.data), dtype=XYZI), _array(ours, XYZI))
    image = rclpy_serialization.deserialize_message(messages[bag.TOPIC_IMAGE][0][2], sensor_msgs.Image)
    assert (image.encoding, image.width, image.height, image.step) == ("rgb8", 640, 480, 1920)
    assert len(image.data) == 640 * 480 * 3
    info = rclpy_serialization.deserialize_message(messages[bag.TOPIC_CAMERA_INFO][0][2], sensor_msgs.CameraInfo)
    assert info.distortion_model == "plumb_bob" and list(info.k) == [500, 0, 320, 0, 500, 240, 0, 0, 1]
    assert list(info.d) == [0.0] * 5 and list(info.r) == [1, 0, 0, 0, 1, 0, 0, 0, 1]


def test_ground_truth_matches_the_simulation(written):
    path, _ = written
    frames = list(SceneSimulator(PEOPLE, PRESET, seed=SEED, rate_hz=RATE).frames(3))
    truth = bagio.read_keypoints(path, bag.TOPIC_GT_KEYPOINTS)
    messages = _messages(path)
    for frame, (_, kp_msg, _), (_, seg_msg, _) in zip(frames, messages[bag.TOPIC_GT_KEYPOINTS],
                                                     messages[bag.TOPIC_GT_SEGMENTATION], strict=True):
        keypoints = _array(kp_msg, KEYPOINTS)
        assert (keypoints["confidence"] == 1.0).all()
        people = people_from_keypoints(keypoints, NUM_JOINTS)
        visible = {p.person_id: p for p in frame.people if p.num_points >= 1}
        assert set(people) == set(visible) == set(truth[frame.stamp_ns])
        for pid, joints in people.items():
            np.testing.assert_array_equal(joints, visible[pid].joints)
        segmentation = _array(seg_msg, SEGMENTATION)
        assert len(segmentation) == sum(p.num_points for p in frame.people)
        for person in frame.people:
            rows = segmentation[segmentation["track_id"] == person.person_id]
            np.testing.assert_array_equal(rows["part"], person.parts)
            np.testing.assert_array_equal(rows["x"], frame.points[person.point_indices, 0])
    scans = list(bagio.iter_scans(path))
    np.testing.assert_array_equal(scans[0].points, frames[0].points)


def test_sqlite3_and_directory_outputs(tmp_path):
    db3 = tmp_path / "scene.db3"
    bag.write_scene_bag(db3, 1, 0.1, PRESET, 1, storage="sqlite3")
    directory = tmp_path / "scene_dir"
    bag.write_scene_bag(directory, 1, 0.1, PRESET, 1)
    assert (directory / "metadata.yaml").is_file()
    for path in (db3, directory):
        with Reader(path) as reader:
            assert {c.topic for c in reader.connections} == set(LAYOUTS)
            assert reader.message_count == len(LAYOUTS)


def test_bad_outputs_are_refused(tmp_path, capsys):
    existing = tmp_path / "taken.mcap"
    existing.write_bytes(b"")
    with pytest.raises(FileExistsError):
        bag.write_scene_bag(existing, 1, 0.1, PRESET)
    with pytest.raises(ValueError, match="storage"):
        bag.write_scene_bag(tmp_path / "x.db3", 1, 0.1, PRESET, storage="mcap")
    assert cli.main(["synth-bag", str(existing), "--people", "1"]) == 2
    assert "exists" in capsys.readouterr().err


def test_cli_writes_a_bag(tmp_path, capsys):
    out = tmp_path / "cli.mcap"
    assert cli.main(["synth-bag", str(out), "--people", "1", "--seconds", "0.2", "--preset", PRESET]) == 0
    assert "2 scans" in capsys.readouterr().out
    assert len(list(bagio.iter_scans(out))) == 2


def test_camera_on_its_own_clock_with_jitter(tmp_path):
    stamps = bag._camera_stamps(seconds=2.0, rate_hz=10.0, camera_rate_hz=7.0, jitter_s=0.02, seed=3)
    nominal = [START_NS + round(j * 1e9 / 7.0) for j in range(len(stamps))]
    assert len(stamps) == 14  # j / 7 s below 1.95 s, the last scan's half period
    deviations = np.abs(np.array(stamps) - np.array(nominal)) / 1e6
    assert deviations.max() <= 20.0 and deviations.mean() > 3.0  # really jittered, within the bound
    assert stamps == sorted(stamps)
    assert bag._camera_stamps(2.0, 10.0, 5.0, 0.0, 3) == [START_NS + j * 200_000_000 for j in range(10)]
    with pytest.raises(ValueError, match="jitter"):
        bag.write_scene_bag(tmp_path / "x.mcap", 1, 0.2, "vlp16", camera=True, camera_rate_hz=5.0,
                            camera_jitter_s=0.1)
    path = tmp_path / "jitter.mcap"
    summary = bag.write_scene_bag(path, 1, 0.3, "vlp16", seed=2, camera=True, camera_rate_hz=7.0, camera_jitter_s=0.03)
    messages = _messages(path)
    images = [log_ns for log_ns, _, _ in messages[bag.TOPIC_IMAGE]]
    assert summary.num_images == len(images) == 2  # 0 and 1/7 s, within the 3 scans (to 0.25 s)
    assert images == bag._camera_stamps(0.3, 10.0, 7.0, 0.03, 2)
    assert [bagio.stamp_ns(msg) for _, msg, _ in messages[bag.TOPIC_IMAGE]] == images
