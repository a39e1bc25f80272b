"""Middleware settings applied before rclpy initialises."""

from __future__ import annotations

import os

from kp3d_ros.resources import find_share_file

PROFILE_VARIABLES = ("FASTDDS_DEFAULT_PROFILES_FILE", "FASTRTPS_DEFAULT_PROFILES_FILE")
PROFILE_FILE = "fastdds_large_clouds.xml"


def use_large_message_profile() -> str | None:
    """Point Fast DDS at the package's large-message profile unless the user chose a profile or another RMW.

    Returns the profile path used, or None when nothing was changed.
    """
    if any(os.environ.get(v) for v in PROFILE_VARIABLES):
        return None
    if os.environ.get("RMW_IMPLEMENTATION", "rmw_fastrtps_cpp") != "rmw_fastrtps_cpp":
        return None
    try:
        path = str(find_share_file("config", PROFILE_FILE))
    except FileNotFoundError:
        return None
    for variable in profile_variables():
        os.environ[variable] = path
    return path


def profile_variables() -> tuple[str, ...]:
    """Fast DDS 3 (Kilted on) reads FASTDDS_...; Fast DDS 2 (Humble, Iron, Jazzy) reads FASTRTPS_...,
    which Fast DDS 3's RMW warns about, so it is set only for those distributions."""
    if os.environ.get("ROS_DISTRO", "") in ("humble", "iron", "jazzy"):
        return PROFILE_VARIABLES
    return PROFILE_VARIABLES[:1]
