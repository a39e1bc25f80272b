"""After a burst of oversized clouds, how soon does kp3d_node process valid clouds again? (issue 14)

Run: .venv/bin/python benchmarks/oversized_clouds_recovery.py [--rounds 3]

Starts `kp3d_node` as its own process (its own ROS domain, this machine only). Each round sends 10 clouds of
2M points (30 MB, rejected as too_many_points) at 20 Hz, then 20 valid clouds of 100k points at 10 Hz, and
prints how many of those 20 came out and how long after its publish the first one's keypoints arrived.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from oversized_clouds_rss import _cloud_bytes


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    os.environ.setdefault("ROS_DOMAIN_ID", str(1 + os.getpid() % 100))
    os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
    from kp3d_ros.ros.dds import use_large_message_profile

    use_large_message_profile()
    import rclpy
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.node import Node
    from sensor_msgs.msg import PointCloud2

    from kp3d_ros.ros.cdr import header_stamp_ns
    from kp3d_ros.ros.qos import input_qos, output_qos

    node = subprocess.Popen([sys.executable, "-m", "kp3d_ros.ros.node", "--ros-args", "-r", "points:=/points"],
                            stderr=subprocess.DEVNULL)
    try:
        rclpy.init()
        client = Node("kp3d_recovery_probe")
        executor = SingleThreadedExecutor()
        executor.add_node(client)
        publisher = client.create_publisher(PointCloud2, "/points", input_qos("best_effort", 5))
        outputs: dict[int, float] = {}  # stamp -> arrival of its keypoints
        client.create_subscription(PointCloud2, "/kp3d_node/keypoints",
                                   lambda data: outputs.setdefault(header_stamp_ns(data), time.monotonic()),
                                   output_qos(50), raw=True)

        def spin(seconds: float) -> None:
            end = time.monotonic() + seconds
            while time.monotonic() < end:
                executor.spin_once(timeout_sec=0.005)

        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and (publisher.get_subscription_count() == 0
                                               or client.count_publishers("/kp3d_node/keypoints") == 0):
            spin(0.1)
        rng, base, k = np.random.default_rng(0), 1_800_000_000 * 1_000_000_000, 0
        for round_ in range(args.rounds):
            big = _cloud_bytes(2_000_000, base + 10**12 + round_, rng)
            for _ in range(10):
                publisher.publish(big)
                spin(0.05)
            sent: dict[int, float] = {}
            for _ in range(20):
                k += 1
                stamp = base + k * 100_000_000
                publisher.publish(_cloud_bytes(100_000, stamp, rng))
                sent[stamp] = time.monotonic()
                spin(0.1)
            spin(1.0)
            done = sorted(s for s in sent if s in outputs)
            first = f"{1e3 * (outputs[done[0]] - sent[done[0]]):.0f} ms after its publish" if done else "none"
            print(f"round {round_}: {len(done)} of 20 valid clouds processed after the burst; "
                  f"first: cloud {sorted(sent).index(done[0]) if done else '-'}, {first}", flush=True)
    finally:
        node.send_signal(2)
        node.wait(15)
        if rclpy.ok():
            rclpy.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
