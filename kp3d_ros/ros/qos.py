"""QoS profiles of the node and the replay tool (plain QoSProfile, same in Humble, Jazzy and Kilted)."""

from __future__ import annotations

from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy

RELIABILITY = {"best_effort": ReliabilityPolicy.BEST_EFFORT, "reliable": ReliabilityPolicy.RELIABLE}


def input_qos(reliability: str = "best_effort", depth: int = 1) -> QoSProfile:
    """Sensor-data style subscription: keep last `depth`, volatile, reliability from the parameter."""
    return QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=depth, reliability=RELIABILITY[reliability],
                      durability=DurabilityPolicy.VOLATILE)


def output_qos(depth: int = 5) -> QoSProfile:
    """Reliable keep-last publishers: match both reliable and best-effort subscribers (RViz, recorders)."""
    return QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=depth, reliability=ReliabilityPolicy.RELIABLE,
                      durability=DurabilityPolicy.VOLATILE)
