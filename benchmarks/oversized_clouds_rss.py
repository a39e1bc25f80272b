"""Resident memory of a kp3d_node process while oversized clouds arrive (issue 14: RSS grew by 157 MB).

Run: .venv/bin/python benchmarks/oversized_clouds_rss.py [--big-points 2000000] [--rounds 3] [--json OUT]

Starts `kp3d_node` as its own process (its own ROS domain, this machine only), publishes 10 valid clouds of
100k points, then rounds of 10 oversized clouds (2M points, 32 MB, rejected as too_many_points), then 10
valid ones again, and prints the node's RSS and peak RSS (VmRSS, VmHWM in /proc) after each step. Set
MALLOC_MMAP_THRESHOLD_ to compare glibc settings (the node fixes the threshold itself: ros/memory.py).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np


def _rss_mb(pid: int) -> tuple[int, int]:
    with open(f"/proc/{pid}/status") as status:
        fields = dict(line.split(":", 1) for line in status)
    return int(fields["VmRSS"].split()[0]) // 1024, int(fields["VmHWM"].split()[0]) // 1024


def _cloud_bytes(count: int, stamp_ns: int, rng: np.random.Generator) -> bytes:
    from rclpy.serialization import serialize_message
    from std_msgs.msg import Header

    from kp3d_ros.ros.pointcloud2 import array_to_cloud

    points = np.zeros(count, dtype=[("x", "<f4"), ("y", "<f4"), ("z", "<f4"), ("intensity", "<f4")])
    points["x"], points["y"] = rng.uniform(-30, 30, count), rng.uniform(-30, 30, count)
    points["z"] = rng.uniform(-2, 1, count)
    header = Header(frame_id="lidar")
    header.stamp.sec, header.stamp.nanosec = divmod(stamp_ns, 1_000_000_000)
    return serialize_message(array_to_cloud(points, header))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--big-points", type=int, default=2_000_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", help="write the measurements here")
    args = parser.parse_args()
    os.environ.setdefault("ROS_DOMAIN_ID", str(1 + os.getpid() % 100))
    os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
    from kp3d_ros.ros.dds import use_large_message_profile

    use_large_message_profile()
    import rclpy
    from rclpy.node import Node
    from sensor_msgs.msg import PointCloud2

    from kp3d_ros.ros.qos import input_qos

    node = subprocess.Popen([sys.executable, "-m", "kp3d_ros.ros.node", "--ros-args", "-r", "points:=/points"])
    rows: list[dict] = []
    try:
        rclpy.init()
        publisher_node = Node("kp3d_rss_publisher")
        publisher = publisher_node.create_publisher(PointCloud2, "/points", input_qos("best_effort", 5))
        deadline = time.monotonic() + 120
        while publisher.get_subscription_count() == 0 and time.monotonic() < deadline:
            time.sleep(0.2)
        time.sleep(1.0)
        rng, stamp = np.random.default_rng(0), 1_800_000_000 * 1_000_000_000
        valid = [_cloud_bytes(100_000, stamp + i * 100_000_000, rng) for i in range(10)]
        big = _cloud_bytes(args.big_points, stamp + 99 * 100_000_000, rng)

        def step(name: str, messages: list[bytes]) -> None:
            for data in messages:
                publisher.publish(data)
                time.sleep(0.1)
            time.sleep(0.5)
            rss, peak = _rss_mb(node.pid)
            rows.append({"step": name, "rss_mb": rss, "peak_mb": peak})
            print(f"{name:>24}: RSS {rss} MB, peak {peak} MB", flush=True)

        step("start", [])
        step("10 valid", valid)
        for r in range(args.rounds):
            step(f"{10 * (r + 1)} oversized ({len(big) >> 20} MB)", [big] * 10)
        step("10 valid again", valid)
    finally:
        node.send_signal(2)
        node.wait(15)
        if rclpy.ok():
            rclpy.shutdown()
    print(f"kept after the oversized clouds: {rows[-1]['rss_mb'] - rows[1]['rss_mb']} MB; "
          f"peak above the start: {rows[-1]['peak_mb'] - rows[0]['rss_mb']} MB")
    if args.json:
        with open(args.json, "w") as out:
            json.dump({"malloc_mmap_threshold_env": os.environ.get("MALLOC_MMAP_THRESHOLD_"), "rows": rows}, out,
                      indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
