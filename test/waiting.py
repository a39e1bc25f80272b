"""A polling wait shared by the ROS integration tests (imported by them; not a test module)."""

import time


def wait_until(predicate, timeout: float = 10.0) -> bool:
    """Poll ``predicate`` every 20 ms until it is true or ``timeout`` seconds have passed; its last value."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return predicate()
