"""Standard messages where the distribution has them: ~/detections (vision_msgs) and body_<id> TF frames
(tf2_msgs), found at run time; the node runs without them.

The venv has neither package: there the tests check that the node runs and says so. With the packages on
the path (a ROS install, or message packages generated in a scratch workspace, see README) the tests
check the messages the node publishes.
"""

from __future__ import annotations

import importlib.util
import math

import numpy as np
import pytest

rclpy = pytest.importorskip("rclpy")

from rclpy.executors import MultiThreadedExecutor  # noqa: E402
from rclpy.node import Node  # noqa: E402
from sensor_msgs.msg import PointCloud2  # noqa: E402
from std_msgs.msg import Header  # noqa: E402
from waiting import Spinner, person_box_points, wait_until  # noqa: E402

from kp3d_ros import layouts, skeleton  # noqa: E402
from kp3d_ros.core.params import load_params  # noqa: E402
from kp3d_ros.core.pipeline import PersonResult  # noqa: E402
from kp3d_ros.ros.pointcloud2 import array_to_cloud, cloud_to_array  # noqa: E402
from kp3d_ros.ros.qos import output_qos  # noqa: E402
from kp3d_ros.ros.run import make_node  # noqa: E402
from kp3d_ros.ros.standard import TF_QOS, body_transforms, heading  # noqa: E402

pytestmark = pytest.mark.ros
HAVE_VISION = importlib.util.find_spec("vision_msgs") is not None
HAVE_TF = importlib.util.find_spec("tf2_msgs") is not None


def _person(track_id: int, yaw: float, centre=(5.0, 1.0)) -> PersonResult:
    """A standing T-shaped joint set facing yaw, with body points around it."""
    joints = np.zeros((skeleton.NUM_JOINTS, 3), np.float32)
    left = np.array([-math.sin(yaw), math.cos(yaw), 0.0])  # the person's left
    for name in skeleton.JOINT_NAMES:
        side = 1 if name.startswith("left") else -1 if name.startswith("right") else 0
        height = {"hip": -0.9, "knee": -1.4, "ankle": -1.85, "shoulder": -0.45, "elbow": -0.7, "wrist": -0.9}
        z = next((h for key, h in height.items() if key in name), -0.25)
        joints[skeleton.JOINT_INDEX[name]] = [centre[0], centre[1], z] + side * 0.15 * left
    rng = np.random.default_rng(track_id)
    points = (joints[rng.integers(0, len(joints), 200)] + rng.normal(0, 0.05, (200, 3))).astype(np.float32)
    return PersonResult(track_id=track_id, joints=joints, confidence=np.full(14, 0.8, np.float32), points=points,
                        parts=np.ones(200, np.uint8), flow=None)


def test_body_frames_sit_at_the_pelvis_and_face_forward():
    header = Header(frame_id="lidar")
    people = [_person(3, 0.0), _person(7, math.pi / 2, centre=(8.0, -2.0))]
    transforms = body_transforms(header, people)
    assert [t.child_frame_id for t in transforms] == ["body_3", "body_7"]
    for transform, person in zip(transforms, people, strict=True):
        pelvis = skeleton.pelvis(person.joints)
        t = transform.transform.translation
        assert (t.x, t.y, t.z) == pytest.approx(tuple(pelvis), abs=1e-5)
        assert transform.header.frame_id == "lidar"
    q = transforms[1].transform.rotation  # facing +y: yaw 90 degrees about z
    assert (q.x, q.y, q.z, q.w) == pytest.approx((0.0, 0.0, math.sin(math.pi / 4), math.cos(math.pi / 4)), abs=1e-5)
    assert heading(people[0].joints) == pytest.approx(0.0, abs=1e-6)
    nan_person = _person(9, 0.0)
    nan_person.joints[:] = np.nan
    assert body_transforms(header, [nan_person]) == []
    assert TF_QOS.depth == 100


def _cloud(stamp_sec: int, count: int = 3000) -> PointCloud2:
    points = person_box_points(count, seed=stamp_sec)
    header = Header(frame_id="lidar")
    header.stamp.sec = stamp_sec
    return array_to_cloud(points, header)


@pytest.fixture(scope="module")
def ros():
    """A node publishing every track (min_body_share 0) with body frames on, a probe, a spinning executor."""
    rclpy.init()
    nodes: list[Node] = []
    executor = MultiThreadedExecutor(num_threads=3)
    spinner = Spinner(executor)
    try:
        node = make_node(load_params(overrides={"detection.min_body_share": 0.0, "output.body_frames": True}))
        assert node is not None
        probe = Node("kp3d_standard_probe")
        nodes += [node, probe]
        for n in nodes:
            executor.add_node(n)
        spinner.start()
        yield node, probe
    finally:
        spinner.stop()
        executor.shutdown()
        for n in nodes:
            n.destroy_node()
        rclpy.try_shutdown()


def _keypoints_by_stamp(probe: Node) -> dict:
    received: dict = {}

    def on_keypoints(msg: PointCloud2) -> None:
        array = np.asarray(cloud_to_array(msg)).astype(layouts.KEYPOINTS)
        received[msg.header.stamp.sec] = layouts.people_from_keypoints(array, skeleton.NUM_JOINTS)
    probe.create_subscription(PointCloud2, "/kp3d_node/keypoints", on_keypoints, output_qos(50))
    return received


@pytest.mark.skipif(HAVE_VISION and HAVE_TF, reason="vision_msgs and tf2_msgs are installed here")
def test_node_runs_without_the_optional_packages_and_says_so(ros):
    node, probe = ros
    keypoints = _keypoints_by_stamp(probe)
    points = probe.create_publisher(PointCloud2, "/points", output_qos(10))
    assert wait_until(lambda: points.get_subscription_count() > 0)
    points.publish(_cloud(10))
    assert wait_until(lambda: 10 in keypoints, 20.0)
    extras = node._standard_outputs()
    if not HAVE_VISION:
        assert extras["detections"] == "unavailable: vision_msgs not installed"
        assert probe.count_publishers("/kp3d_node/detections") == 0 and "detections" not in node._outputs
    if not HAVE_TF:
        assert extras["body_frames"] == "unavailable: tf2_msgs not installed"
        assert probe.count_publishers("/tf") == 0 and "tf" not in node._outputs


@pytest.mark.skipif(not (HAVE_VISION and HAVE_TF), reason="needs vision_msgs and tf2_msgs (see README)")
def test_detections_and_body_frames_match_the_keypoints(ros):
    from tf2_msgs.msg import TFMessage
    from vision_msgs.msg import Detection3DArray

    node, probe = ros
    keypoints = _keypoints_by_stamp(probe)
    detections: dict = {}
    frames: dict = {}
    probe.create_subscription(Detection3DArray, "/kp3d_node/detections",
                              lambda m: detections.__setitem__(m.header.stamp.sec, m), output_qos(50))
    probe.create_subscription(TFMessage, "/tf", lambda m: frames.__setitem__(m.transforms[0].header.stamp.sec, m),
                              TF_QOS)
    points = probe.create_publisher(PointCloud2, "/points", output_qos(10))
    assert wait_until(lambda: points.get_subscription_count() > 0)
    assert wait_until(lambda: probe.count_publishers("/kp3d_node/detections") == 1)
    assert wait_until(lambda: probe.count_publishers("/tf") >= 1)
    stamps = list(range(20, 26))
    for stamp in stamps:  # 10 Hz in stamps; tracks are published from their second detection
        points.publish(_cloud(stamp))
        assert wait_until(lambda s=stamp: s in keypoints and s in detections, 20.0)
    found = [s for s in stamps if keypoints[s]]
    assert found, "no person published from the box"
    assert node._standard_outputs() == {"detections": "on (~/detections)", "body_frames": "on (/tf)"}
    for stamp in found:
        people, message = keypoints[stamp], detections[stamp]
        assert message.header.frame_id == "lidar"
        assert sorted(int(d.id) for d in message.detections) == sorted(people)
        for detection in message.detections:
            joints = people[int(detection.id)]
            box, size = detection.bbox.center.position, detection.bbox.size
            pelvis = skeleton.pelvis(joints)
            assert all(abs(c - p) <= e / 2 + 0.3 for c, p, e in zip((box.x, box.y, box.z), pelvis,
                                                                     (size.x, size.y, size.z), strict=True))
            [hypothesis] = detection.results
            assert hypothesis.hypothesis.class_id == "person" and 0.0 <= hypothesis.hypothesis.score <= 1.0
            position = hypothesis.pose.pose.position
            assert (position.x, position.y, position.z) == pytest.approx(tuple(pelvis), abs=1e-3)
        assert wait_until(lambda s=stamp: s in frames, 5.0)
        transforms = {t.child_frame_id: t for t in frames[stamp].transforms}
        assert set(transforms) == {f"body_{track}" for track in people}
        for track, joints in people.items():
            t = transforms[f"body_{track}"].transform.translation
            assert (t.x, t.y, t.z) == pytest.approx(tuple(skeleton.pelvis(joints)), abs=1e-3)


def test_a_package_without_usable_type_support_counts_as_missing(tmp_path, monkeypatch):
    """A message package that imports but whose compiled type support is absent must not fail configure."""
    from kp3d_ros.ros.standard import optional_messages

    package = tmp_path / "broken_msgs"
    (package / "msg").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "msg" / "__init__.py").write_text(
        "class _Meta(type):\n"  # what rosidl generates when the compiled type support does not import
        "    _TYPE_SUPPORT = None\n"
        "    @classmethod\n"
        "    def __import_type_support__(cls):\n"
        "        pass\n"
        "class Thing(metaclass=_Meta):\n"
        "    pass\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert optional_messages("broken_msgs", "Thing") is None
    assert optional_messages("broken_msgs", "Missing") is None
    assert optional_messages("no_such_msgs", "Thing") is None
    assert optional_messages("geometry_msgs", "TransformStamped") is not None
