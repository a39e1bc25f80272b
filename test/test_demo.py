"""kp3d demo's isolation: its node runs in a namespace of its own, and only that node's counters are read."""

from __future__ import annotations

import pytest

pytest.importorskip("rclpy")

from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue

from kp3d_ros.demo import diagnostics_values, input_remaps, node_command


def test_node_runs_in_the_demo_namespace_and_reads_the_demo_topics():
    command = node_command({"network.backend": "auto", "camera.enabled": True}, "/kp3d_demo_7")
    ros_args = command[command.index("--ros-args") + 1:]
    assert ros_args[:2] == ["-r", "__ns:=/kp3d_demo_7"]
    assert "network.backend:=\"auto\"" in ros_args and "camera.enabled:=true" in ros_args
    remaps = input_remaps("/kp3d_demo_7")
    assert remaps["points"] == "/kp3d_demo_7/points" and remaps["image"] == "/kp3d_demo_7/camera/image_raw"
    for name, topic in remaps.items():
        assert f"{name}:={topic}" in ros_args


def test_only_the_demo_nodes_counters_are_read():
    def status(name: str, processed: str) -> DiagnosticStatus:
        return DiagnosticStatus(name=f"{name}: pipeline", values=[KeyValue(key="clouds_processed", value=processed),
                                                                   KeyValue(key="backend", value="onnxruntime")])

    msg = DiagnosticArray(status=[status("/kp3d_node", "87"), status("/kp3d_demo_7/kp3d_node", "50")])
    assert diagnostics_values(msg, "/kp3d_demo_7/kp3d_node") == {"clouds_processed": 50.0, "backend": "onnxruntime"}
    assert diagnostics_values(msg, "/kp3d_demo_8/kp3d_node") == {}
