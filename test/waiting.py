"""Helpers shared by the ROS integration tests (imported by them; not a test module): a polling wait, an
executor spun in a background thread, and a synthetic scan with one person-sized box."""

import threading
import time

import numpy as np

from kp3d_ros import layouts
from kp3d_ros.ros.spinning import spin_once_through_destroyed


def wait_until(predicate, timeout: float = 10.0) -> bool:
    """Poll ``predicate`` every 20 ms until it is true or ``timeout`` seconds have passed; its last value."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return predicate()


class Spinner:
    """Spins an executor in a daemon thread between start() and stop(), as kp3d_node does (through entities that
    a lifecycle transition destroyed: kp3d_ros.ros.spinning)."""

    def __init__(self, executor) -> None:
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._spin, args=(executor,), daemon=True)

    def _spin(self, executor) -> None:
        while not self._stop.is_set():
            spin_once_through_destroyed(executor, 0.05)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)


def person_box_points(count: int, seed: int) -> np.ndarray:
    """A ground plane (z = -1.9 m) and a person-sized box of points at 6 m, as layouts.XYZ."""
    rng = np.random.default_rng(seed)
    xyz = np.empty((count, 3), np.float32)
    xyz[:, :2] = rng.uniform(-15, 15, size=(count, 2))
    xyz[:, 2] = -1.9
    xyz[: count // 4] = rng.uniform([6.0, -0.25, -1.9], [6.4, 0.25, -0.15], size=(count // 4, 3))
    points = np.zeros(count, dtype=layouts.XYZ)
    points["x"], points["y"], points["z"] = xyz.T
    return points
