"""Spinning an executor through rclpy's destroyed-entity race.

A lifecycle transition (deactivate, cleanup, shutdown) destroys subscriptions and publishers in a service callback.
With a MultiThreadedExecutor that callback runs on a pool thread while the spinning thread may be building the
next wait set from the entities it collected a moment before, and rclpy then raises ``InvalidHandle`` ("cannot
use Destroyable because destruction was requested") out of ``spin_once`` (ros2/rclpy#1142). The executor builds
a fresh wait set on its next call, so the right answer is to report it and spin on, not to end the process.
"""

from __future__ import annotations

from collections.abc import Callable

import rclpy
from rclpy.executors import Executor

try:  # rclpy.exceptions re-exports it in the Kilted wheels; otherwise take it from the binding that defines it
    from rclpy.exceptions import InvalidHandle
except ImportError:  # pragma: no cover - not checked on other distributions
    from rclpy.impl.implementation_singleton import rclpy_implementation as _rclpy

    InvalidHandle = _rclpy.InvalidHandle


def spin_once_through_destroyed(executor: Executor, timeout_sec: float) -> bool:
    """One ``executor.spin_once``; False when it met an entity destroyed meanwhile (the next call recovers)."""
    try:
        executor.spin_once(timeout_sec=timeout_sec)
    except InvalidHandle:
        return False
    return True


def spin_through_destroyed(executor: Executor, on_destroyed: Callable[[], None] | None = None) -> None:
    """``executor.spin()`` that survives the race above: spins while the executor's context is ok and calls
    ``on_destroyed`` each time a destroyed entity was met. ExternalShutdownException passes through."""
    while rclpy.ok(context=executor.context):
        if not spin_once_through_destroyed(executor, 0.1) and on_destroyed is not None:
            on_destroyed()
