"""Large best-effort clouds cross process boundaries intact with the package's Fast DDS profile."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

pytestmark = pytest.mark.ros

PUBLISHER = textwrap.dedent("""
    import time, numpy as np, rclpy
    from rclpy.qos import qos_profile_sensor_data
    from sensor_msgs.msg import PointCloud2, PointField
    rclpy.init(); node = rclpy.create_node('big_cloud_publisher')
    pub = node.create_publisher(PointCloud2, 'big_points', qos_profile_sensor_data)
    deadline = time.time() + 20
    while pub.get_subscription_count() == 0 and time.time() < deadline:
        rclpy.spin_once(node, timeout_sec=0.1)
    time.sleep(0.5)
    msg = PointCloud2(height=1, width=150000, point_step=16, row_step=16 * 150000)
    msg.fields = [PointField(name=c, offset=4 * i, datatype=7, count=1) for i, c in enumerate('xyzi')]
    msg.data = np.zeros(150000 * 4, np.float32).tobytes()
    for _ in range(10):
        pub.publish(msg); time.sleep(0.1)
    time.sleep(1.0)
""")

SUBSCRIBER = textwrap.dedent("""
    import time, rclpy
    from rclpy.qos import qos_profile_sensor_data
    from sensor_msgs.msg import PointCloud2
    rclpy.init(); node = rclpy.create_node('big_cloud_subscriber'); sizes = []
    node.create_subscription(PointCloud2, 'big_points', lambda m: sizes.append(len(m.data)), qos_profile_sensor_data)
    deadline = time.time() + 25
    while time.time() < deadline and len(sizes) < 10:
        rclpy.spin_once(node, timeout_sec=0.1)
    print(len(sizes), min(sizes, default=0))
""")


def test_large_best_effort_clouds_arrive_between_processes():
    env = dict(os.environ)
    assert env.get("FASTDDS_DEFAULT_PROFILES_FILE", "").endswith("fastdds_large_clouds.xml")
    subscriber = subprocess.Popen([sys.executable, "-c", SUBSCRIBER], env=env, stdout=subprocess.PIPE, text=True)
    publisher = subprocess.run([sys.executable, "-c", PUBLISHER], env=env, timeout=60)
    out, _ = subscriber.communicate(timeout=60)
    assert publisher.returncode == 0
    received, smallest = map(int, out.split())
    assert received >= 8, f"only {received} of 10 large clouds arrived"
    assert smallest == 150000 * 16
