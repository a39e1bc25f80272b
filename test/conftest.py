"""Test session setup: isolate ROS 2 traffic of this session from any other on the machine."""

from __future__ import annotations

import os

# A unique DDS domain per test session (set before rclpy initialises) and localhost-only discovery.
os.environ["ROS_DOMAIN_ID"] = str(1 + os.getpid() % 100)
os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
os.environ.setdefault("RMW_IMPLEMENTATION", "rmw_fastrtps_cpp")

# Large clouds between processes need the package's Fast DDS profile (as every kp3d entry point sets it).
from kp3d_ros.ros.dds import use_large_message_profile

use_large_message_profile()
