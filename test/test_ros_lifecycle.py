"""kp3d_node as a managed node: every transition through the real lifecycle services (ChangeState, GetState)
from a client node, and what is subscribed and published in each state.

One unconfigured node (camera on) is walked through configure, activate, deactivate, activate, deactivate,
cleanup; further nodes in their own namespaces cover shutdown from each state and failed configures.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

rclpy = pytest.importorskip("rclpy")
lifecycle_msgs = pytest.importorskip("lifecycle_msgs")

from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus  # noqa: E402
from lifecycle_msgs.msg import Transition  # noqa: E402
from lifecycle_msgs.srv import ChangeState, GetState  # noqa: E402
from rclpy.executors import MultiThreadedExecutor  # noqa: E402
from rclpy.node import Node  # noqa: E402
from rclpy.parameter import Parameter  # noqa: E402
from rclpy.parameter_client import AsyncParameterClient  # noqa: E402
from sensor_msgs.msg import PointCloud2  # noqa: E402
from std_msgs.msg import Header  # noqa: E402
from visualization_msgs.msg import MarkerArray  # noqa: E402
from waiting import Spinner, person_box_points, wait_until  # noqa: E402

from kp3d_ros.core.params import load_params  # noqa: E402
from kp3d_ros.ros.node import create_node  # noqa: E402
from kp3d_ros.ros.pointcloud2 import array_to_cloud  # noqa: E402
from kp3d_ros.ros.qos import output_qos  # noqa: E402
from kp3d_ros.ros.run import make_node, node_overrides  # noqa: E402

pytestmark = pytest.mark.ros
ROOT = Path(__file__).resolve().parents[1]
SETTLE_S = 1.0  # how long "nothing arrives" is watched


def _cloud(stamp_sec: int, count: int = 3000) -> PointCloud2:
    """A ground plane with one person-sized box of points at 6 m."""
    points = person_box_points(count, seed=stamp_sec)
    header = Header(frame_id="lidar")
    header.stamp.sec = stamp_sec
    return array_to_cloud(points, header)


class Manager:
    """A lifecycle client (as a lifecycle manager would be) plus a probe of one kp3d_node's topics."""

    def __init__(self, node: Node, target: str) -> None:
        self.node, self.target = node, target
        self.change_client = node.create_client(ChangeState, f"{target}/change_state")
        self.get_client = node.create_client(GetState, f"{target}/get_state")
        self.skeletons: list[MarkerArray] = []
        self.diagnostics: list[DiagnosticArray] = []
        node.create_subscription(MarkerArray, f"{target}/skeletons", self.skeletons.append, output_qos(50))
        node.create_subscription(DiagnosticArray, "/diagnostics", self._on_diagnostics, output_qos(50))

    def _on_diagnostics(self, msg: DiagnosticArray) -> None:
        if msg.status and msg.status[0].hardware_id == self.target:
            self.diagnostics.append(msg)

    def _call(self, client, request, timeout: float = 60.0, attempts: int = 1):
        """The response; an idempotent request is sent again when no answer comes (a reply can be lost while
        the server has not yet discovered the client's reply reader, across processes)."""
        assert client.wait_for_service(timeout_sec=30.0), f"{client.srv_name} not offered"
        for _ in range(attempts):
            future = client.call_async(request)
            if wait_until(future.done, timeout / attempts):
                return future.result()
            client.remove_pending_request(future)
        raise AssertionError(f"{client.srv_name}: no answer")

    def change(self, transition: int) -> bool:
        return self._call(self.change_client, ChangeState.Request(transition=Transition(id=transition))).success

    def state(self) -> str:
        return self._call(self.get_client, GetState.Request(), attempts=6).current_state.label

    def subscribers(self, topic: str) -> int:
        return self.node.count_subscribers(topic)

    def publishers(self, topic: str) -> int:
        return self.node.count_publishers(topic)

    def latest_status(self, after: int = 0, timeout: float = 10.0) -> DiagnosticStatus:
        assert wait_until(lambda: len(self.diagnostics) > after, timeout), "no /diagnostics from the node"
        return self.diagnostics[-1].status[0]


def values_of(status: DiagnosticStatus) -> dict[str, str]:
    return {kv.key: kv.value for kv in status.values}


@pytest.fixture(scope="module")
def ros():
    rclpy.init()
    executor = MultiThreadedExecutor(num_threads=3)
    spinner = Spinner(executor)
    nodes: list[Node] = []

    def add(node: Node) -> Node:
        nodes.append(node)
        executor.add_node(node)
        return node

    try:
        client = add(Node("kp3d_lifecycle_client"))
        points = client.create_publisher(PointCloud2, "/points", output_qos(10))
        spinner.start()
        yield add, client, points
    finally:
        spinner.stop()
        executor.shutdown()
        for node in nodes:
            node.destroy_node()
        rclpy.try_shutdown()


@pytest.fixture(scope="module")
def managed(ros):
    """The main node: unconfigured at start (lifecycle.autostart false), camera on, diagnostics every 0.2 s."""
    add, client, points = ros
    params = load_params(overrides={"lifecycle.autostart": False, "camera.enabled": True,
                                    "diagnostics.period_s": 0.2})
    node = make_node(params)
    assert node is not None
    add(node)
    return node, Manager(client, "/kp3d_node"), points


def _nothing_published(manager: Manager, points, node, stamp: int) -> None:
    """A cloud sent now reaches no callback and produces no output."""
    received, count = node.stats.received, len(manager.skeletons)
    points.publish(_cloud(stamp))
    time.sleep(SETTLE_S)
    assert node.stats.received == received and len(manager.skeletons) == count


def _processed(manager: Manager, points, stamp: int) -> None:
    """A cloud sent now comes back on ~/skeletons with its stamp."""
    def back() -> bool:
        return any(m.markers and m.markers[0].header.stamp.sec == stamp for m in manager.skeletons)
    points.publish(_cloud(stamp))
    assert wait_until(back, 20.0), f"cloud {stamp} not processed"


def test_unconfigured_node_publishes_only_diagnostics(managed):
    node, manager, _ = managed
    assert manager.state() == "unconfigured"
    status = manager.latest_status()
    values = values_of(status)
    assert values["lifecycle_state"] == "unconfigured" and values["engine_state"] == "not loaded"
    assert status.level == DiagnosticStatus.OK and "unconfigured" in status.message
    assert node.pipeline is None
    time.sleep(SETTLE_S)  # discovery of the node's endpoints (its /diagnostics is seen already)
    assert manager.subscribers("/points") == 0
    for topic in ("skeletons", "keypoints", "segmentation", "scene_flow", "overlay"):
        assert manager.publishers(f"/kp3d_node/{topic}") == 0, topic


def test_configure_loads_the_model_without_subscribing(managed):
    node, manager, points = managed
    assert manager.change(Transition.TRANSITION_CONFIGURE)
    assert manager.state() == "inactive"
    assert node.pipeline is not None and node.pipeline.backend is not None
    assert "warmed up" in node.engine_state
    for topic in ("skeletons", "keypoints", "segmentation", "scene_flow", "overlay"):
        assert wait_until(lambda t=topic: manager.publishers(f"/kp3d_node/{t}") == 1), topic
    assert manager.subscribers("/points") == 0
    _nothing_published(manager, points, node, 100)
    count = len(manager.diagnostics)
    values = values_of(manager.latest_status(count))
    assert values["lifecycle_state"] == "inactive" and values["backend"] == node.backend_name()


def test_activate_subscribes_and_publishes(managed):
    _, manager, points = managed
    assert manager.change(Transition.TRANSITION_ACTIVATE)
    assert manager.state() == "active"
    assert wait_until(lambda: manager.subscribers("/points") == 1)
    assert wait_until(lambda: manager.subscribers("/camera/image_raw") == 1)
    assert wait_until(lambda: manager.subscribers("/camera/camera_info") == 1)
    time.sleep(0.3)  # the subscription's side of the match
    _processed(manager, points, 200)
    values = values_of(manager.latest_status(len(manager.diagnostics)))
    assert values["lifecycle_state"] == "active" and int(values["clouds_processed"]) >= 1


def test_deactivate_stops_taking_clouds_and_keeps_the_model(managed):
    node, manager, points = managed
    pipeline, backend = node.pipeline, node.pipeline.backend
    assert manager.change(Transition.TRANSITION_DEACTIVATE)
    assert manager.state() == "inactive"
    assert wait_until(lambda: manager.subscribers("/points") == 0)
    assert manager.subscribers("/camera/image_raw") == 0
    assert manager.publishers("/kp3d_node/skeletons") == 1  # still advertised, silent
    _nothing_published(manager, points, node, 300)
    assert node.pipeline is pipeline and node.pipeline.backend is backend
    # and active again: the same model processes clouds without a new configure
    assert manager.change(Transition.TRANSITION_ACTIVATE)
    assert wait_until(lambda: manager.subscribers("/points") == 1)
    time.sleep(0.3)
    _processed(manager, points, 400)
    assert node.pipeline is pipeline


def test_diagnostics_tell_the_operator_about_budget_and_stale_input(managed):
    """Over DDS: frames over the budget give WARN, then ERROR in a row; no clouds give a stale-input WARN."""
    node, manager, points = managed
    assert manager.state() == "active"

    def status_with(text: str):
        return wait_until(lambda: manager.diagnostics and text in manager.diagnostics[-1].status[0].message, 10.0)

    node.set_parameters([Parameter("diagnostics.frame_budget_ms", value=1.0),
                         Parameter("diagnostics.budget_error_frames", value=2),
                         Parameter("diagnostics.stale_input_s", value=0.6),
                         Parameter("diagnostics.min_input_rate_hz", value=0.0)])
    _processed(manager, points, 500)  # no frame takes under 1 ms end to end
    assert status_with("over the 1 ms budget")
    assert manager.diagnostics[-1].status[0].level == DiagnosticStatus.WARN
    _processed(manager, points, 501)
    assert status_with("2 frames in a row over the 1 ms budget")
    status = manager.diagnostics[-1].status[0]
    assert status.level == DiagnosticStatus.ERROR
    assert int(values_of(status)["frames_over_budget_in_a_row"]) >= 2
    node.set_parameters([Parameter("diagnostics.frame_budget_ms", value=10000.0)])
    _processed(manager, points, 502)  # within the budget: the run of slow frames ends
    assert status_with("stale input: no cloud for")  # and then nothing arrives
    assert manager.diagnostics[-1].status[0].level == DiagnosticStatus.WARN
    node.set_parameters([Parameter("diagnostics.stale_input_s", value=1.0),
                         Parameter("diagnostics.budget_error_frames", value=5)])


def test_cleanup_frees_the_model_and_the_publishers(managed):
    node, manager, _ = managed
    assert not manager.change(Transition.TRANSITION_CLEANUP)  # not from active
    assert manager.state() == "active"
    assert manager.change(Transition.TRANSITION_DEACTIVATE)
    assert manager.change(Transition.TRANSITION_CLEANUP)
    assert manager.state() == "unconfigured"
    assert node.pipeline is None and node.params is None and node.engine_state == "not loaded"
    assert wait_until(lambda: manager.publishers("/kp3d_node/skeletons") == 0)
    assert manager.subscribers("/points") == 0
    values = values_of(manager.latest_status(len(manager.diagnostics)))
    assert values["lifecycle_state"] == "unconfigured" and values["backend"] == "none"


@pytest.mark.parametrize("state", ["unconfigured", "inactive", "active"])
def test_shutdown_from_every_state(ros, state):
    add, client, _ = ros
    namespace = f"/shutdown_{state}"
    node = create_node(parameter_overrides=node_overrides(load_params(overrides={"lifecycle.autostart": False})),
                       namespace=namespace)
    assert node is not None
    add(node)
    manager = Manager(client, f"{namespace}/kp3d_node")
    steps = {"unconfigured": [], "inactive": [Transition.TRANSITION_CONFIGURE],
             "active": [Transition.TRANSITION_CONFIGURE, Transition.TRANSITION_ACTIVATE]}[state]
    for step in steps:
        assert manager.change(step)
    assert manager.state() == state
    topic = f"{namespace}/points"  # create_node without make_node's remappings: relative to the namespace
    if state == "active":
        assert wait_until(lambda: manager.subscribers(topic) == 1)
    shutdown = {"unconfigured": Transition.TRANSITION_UNCONFIGURED_SHUTDOWN,
                "inactive": Transition.TRANSITION_INACTIVE_SHUTDOWN,
                "active": Transition.TRANSITION_ACTIVE_SHUTDOWN}[state]
    assert manager.change(shutdown)
    assert manager.state() == "finalized"
    assert node.pipeline is None and not node._inputs and not node._outputs
    assert wait_until(lambda: manager.publishers(f"{namespace}/kp3d_node/skeletons") == 0)
    assert wait_until(lambda: manager.subscribers(topic) == 0)
    assert not manager.change(Transition.TRANSITION_CONFIGURE)  # finalized is final


def _set(client: Node, target: str, parameters: list[Parameter]) -> list:
    parameter_client = AsyncParameterClient(client, target)
    assert parameter_client.wait_for_services(timeout_sec=10.0)
    future = parameter_client.set_parameters(parameters)
    assert wait_until(future.done, 10.0)
    return future.result().results


def test_failed_configure_reports_why_and_leaves_the_node_unconfigured_and_alive(ros):
    add, client, _ = ros
    # input.max_points below its range (refused by rclpy at declaration) and a contradicting roi pair
    overrides = [Parameter("lifecycle.autostart", value=False), Parameter("input.max_points", value=5),
                 Parameter("roi.min_range", value=45.0), Parameter("diagnostics.period_s", value=0.2)]
    node = create_node(parameter_overrides=overrides, namespace="/bad_params")
    assert node is not None
    add(node)
    manager = Manager(client, "/bad_params/kp3d_node")
    assert not manager.change(Transition.TRANSITION_CONFIGURE)
    assert manager.state() == "unconfigured"
    assert "input.max_points" in node.configure_error
    status = manager.latest_status(len(manager.diagnostics))
    assert status.level == DiagnosticStatus.ERROR and "input.max_points" in status.message
    assert values_of(status)["lifecycle_state"] == "unconfigured"
    # fix the value rclpy refused: configure now names the contradicting pair
    assert all(r.successful for r in _set(client, "/bad_params/kp3d_node", [Parameter("input.max_points",
                                                                                      value=400000)]))
    assert not manager.change(Transition.TRANSITION_CONFIGURE)
    assert "roi.min_range must be below roi.max_range" in node.configure_error
    # a value out of range is refused outright, the node stays as it was
    results = _set(client, "/bad_params/kp3d_node", [Parameter("roi.max_range", value=1000.0)])
    assert not results[0].successful
    assert all(r.successful for r in _set(client, "/bad_params/kp3d_node", [Parameter("roi.min_range", value=1.0)]))
    assert manager.change(Transition.TRANSITION_CONFIGURE)
    assert manager.state() == "inactive" and node.configure_error == ""
    status = manager.latest_status(len(manager.diagnostics))
    assert status.level == DiagnosticStatus.OK and values_of(status)["configure_error"] == ""
    assert manager.change(Transition.TRANSITION_INACTIVE_SHUTDOWN)


def test_failed_model_load_stays_unconfigured_and_can_be_retried(ros, tmp_path):
    add, client, _ = ros
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"not a model")
    params = load_params(overrides={"lifecycle.autostart": False, "network.backend": "onnxruntime",
                                    "network.model_path": str(broken)})
    node = create_node(parameter_overrides=node_overrides(params), namespace="/bad_model")
    assert node is not None
    add(node)
    manager = Manager(client, "/bad_model/kp3d_node")
    for _ in range(2):  # the node answers again after a failed configure
        assert not manager.change(Transition.TRANSITION_CONFIGURE)
        assert manager.state() == "unconfigured"
        assert "not a usable ONNX model" in node.configure_error and str(broken) in node.configure_error
    assert node.pipeline is None and not node._outputs
    assert manager.publishers("/bad_model/kp3d_node/skeletons") == 0


def test_kp3d_node_executable_waits_for_a_lifecycle_manager(ros):
    """`kp3d_node` with lifecycle.autostart:=false, driven from this process over the lifecycle services."""
    _, client, _ = ros
    command = [sys.executable, "-m", "kp3d_ros.ros.node", "--ros-args", "-r", "__ns:=/external",
               "-p", "lifecycle.autostart:=false", "-p", "network.backend:=onnxruntime"]
    process = subprocess.Popen(command, cwd=ROOT, env=os.environ.copy(), stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True)
    try:
        manager = Manager(client, "/external/kp3d_node")
        assert manager.state() == "unconfigured"  # (re-sent until answered: then replies reach this client)
        # the same for change_state, with a request that changes nothing: activate is refused when unconfigured
        refused = manager._call(manager.change_client, ChangeState.Request(
            transition=Transition(id=Transition.TRANSITION_ACTIVATE)), attempts=6)
        assert not refused.success and manager.state() == "unconfigured"
        assert manager.subscribers("/external/points") == 0
        assert manager.change(Transition.TRANSITION_CONFIGURE)
        assert manager.change(Transition.TRANSITION_ACTIVATE)
        assert manager.state() == "active"
        assert wait_until(lambda: manager.subscribers("/external/points") == 1, 20.0)
        assert manager.change(Transition.TRANSITION_ACTIVE_SHUTDOWN)
        assert manager.state() == "finalized"
    finally:
        process.send_signal(signal.SIGINT)
        try:
            output, _ = process.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            output, _ = process.communicate()
    assert process.returncode == 0, output
    assert "Traceback" not in output, output


def test_kp3d_run_unconfigured_leaves_the_node_to_a_manager():
    """`kp3d run --unconfigured` (in its own DDS domain: its node is /kp3d_node too) starts and ends cleanly
    without configuring the node; by default `kp3d run` brings it to active (the other ROS tests)."""
    env = {**os.environ, "ROS_DOMAIN_ID": str((int(os.environ.get("ROS_DOMAIN_ID", "0")) + 50) % 101)}
    done = subprocess.run([sys.executable, "-m", "kp3d_ros.cli", "run", "--unconfigured", "--duration", "2"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    assert "/kp3d_node is unconfigured" in output and "processed 0 of 0 clouds" in output
    assert "backend none" in output and "configured: backend" not in output


def test_ctrl_c_ends_kp3d_node_cleanly_in_any_state(ros):
    """SIGINT while unconfigured: exit 0, quickly, and no complaint about the shutdown transition (rcl starts it
    itself when the context shuts down; asking for it again logged an error)."""
    _, client, _ = ros
    command = [sys.executable, "-m", "kp3d_ros.ros.node", "--ros-args", "-r", "__ns:=/ctrl_c",
               "-p", "lifecycle.autostart:=false"]
    process = subprocess.Popen(command, cwd=ROOT, env=os.environ.copy(), stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True)
    try:
        assert Manager(client, "/ctrl_c/kp3d_node").state() == "unconfigured"
        process.send_signal(signal.SIGINT)
        started = time.monotonic()
        output, _ = process.communicate(timeout=20)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert process.returncode == 0 and time.monotonic() - started < 10.0, output
    assert "Unable to start transition" not in output and "Traceback" not in output, output
