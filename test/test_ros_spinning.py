"""kp3d_ros.ros.spinning: the executor spins on when it meets an entity that was destroyed while still listed."""

import pytest

rclpy = pytest.importorskip("rclpy")

from rclpy.context import Context  # noqa: E402
from rclpy.executors import SingleThreadedExecutor  # noqa: E402
from rclpy.node import Node  # noqa: E402
from std_msgs.msg import String  # noqa: E402

from kp3d_ros.ros.spinning import InvalidHandle, spin_once_through_destroyed  # noqa: E402


def test_spin_goes_on_after_an_entity_destroyed_while_listed():
    context = Context()
    rclpy.init(context=context)
    try:
        node = Node("spinning_probe", context=context)
        executor = SingleThreadedExecutor(context=context)
        executor.add_node(node)
        ticks = []
        node.create_timer(0.01, lambda: ticks.append(1))
        subscription = node.create_subscription(String, "spinning_probe", lambda msg: None, 10)
        assert spin_once_through_destroyed(executor, 0.1)
        # what a transition on another executor thread leaves for a moment: destroyed, still in the node's lists
        subscription.destroy()
        with pytest.raises(InvalidHandle):
            executor.spin_once(timeout_sec=0.05)
        assert not spin_once_through_destroyed(executor, 0.05)
        node.destroy_subscription(subscription)  # the transition's removal from the lists follows
        before = len(ticks)
        for _ in range(20):
            assert spin_once_through_destroyed(executor, 0.05)
        assert len(ticks) > before  # the executor still runs callbacks
        executor.shutdown()
        node.destroy_node()
    finally:
        rclpy.try_shutdown(context=context)
