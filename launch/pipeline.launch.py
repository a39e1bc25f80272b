"""kp3d_node with its parameter file, optionally RViz and a bag replay.

    ros2 launch kp3d_ros pipeline.launch.py [params_file:=FILE] [backend:=auto|onnxruntime|tensorrt|torch]
        [use_sim_time:=true] [rviz:=true] [bag:=BAG.mcap] [rate:=1.0] [points:=/points]
        [image:=/camera/image_raw] [camera_info:=/camera/camera_info] [autostart:=true]

kp3d_node is a lifecycle node: with autostart:=true (the default) it configures and activates itself; with
autostart:=false it stays unconfigured for an external lifecycle manager.

Without `launch` installed, `kp3d run` does the same in one process.
"""

import os  # noqa: I001 (ruff takes the repo's launch/ folder for the first-party `launch`)

from ament_index_python.packages import PackageNotFoundError, get_package_prefix, get_package_share_directory
from launch import Condition, LaunchContext, LaunchDescription
from launch.actions import DeclareLaunchArgument, LogInfo, SetEnvironmentVariable
from launch.conditions import IfCondition
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node

PACKAGE = "kp3d_ros"


def bag_given(context: LaunchContext) -> bool:
    """Replay only with a bag. A predicate, not PythonExpression: that evaluates the path as Python source,
    so a path with a quote in it (it's.mcap) is a SyntaxError that stops the whole launch."""
    return bool(context.launch_configurations.get("bag", "").strip())


def backend_given(context: LaunchContext) -> bool:
    """backend:=... overrides network.backend; without it the params file's value holds."""
    return bool(context.launch_configurations.get("backend", "").strip())


def backend_not_given(context: LaunchContext) -> bool:
    return not backend_given(context)


def package_installed(package: str) -> bool:
    try:
        get_package_prefix(package)
    except PackageNotFoundError:
        return False
    return True


def generate_launch_description() -> LaunchDescription:
    share = get_package_share_directory(PACKAGE)
    params_file = LaunchConfiguration("params_file")
    use_sim_time = LaunchConfiguration("use_sim_time")
    bag = LaunchConfiguration("bag")
    arguments = [
        DeclareLaunchArgument("params_file", default_value=os.path.join(share, "config", "kp3d.yaml"),
                              description="kp3d_node parameter YAML"),
        DeclareLaunchArgument("backend", default_value="",
                              choices=["", "auto", "onnxruntime", "tensorrt", "torch"],
                              description="inference backend; empty: network.backend of params_file"),
        DeclareLaunchArgument("use_sim_time", default_value="false", choices=["true", "false"],
                              description="use /clock (true when replaying a bag)"),
        DeclareLaunchArgument("rviz", default_value="false", choices=["true", "false"],
                              description="start RViz with the package's kp3d.rviz"),
        DeclareLaunchArgument("bag", default_value="", description="ROS 2 bag to replay (empty: none)"),
        DeclareLaunchArgument("rate", default_value="1.0", description="bag replay speed factor"),
        DeclareLaunchArgument("points", default_value="/points", description="input PointCloud2 topic"),
        DeclareLaunchArgument("image", default_value="/camera/image_raw", description="camera image topic"),
        DeclareLaunchArgument("camera_info", default_value="/camera/camera_info", description="camera info topic"),
        DeclareLaunchArgument("autostart", default_value="true", choices=["true", "false"],
                              description="configure and activate kp3d_node at start; false: leave it "
                                          "unconfigured for a lifecycle manager"),
    ]
    common = {"use_sim_time": use_sim_time, "lifecycle.autostart": LaunchConfiguration("autostart")}
    node_options = dict(
        package=PACKAGE,
        executable="kp3d_node",
        name="kp3d_node",
        output="screen",
        remappings=[
            ("points", LaunchConfiguration("points")),
            ("image", LaunchConfiguration("image")),
            ("camera_info", LaunchConfiguration("camera_info")),
        ],
    )
    # One of the two starts: with backend:= its value overrides the params file, without it the file holds.
    nodes = [
        Node(parameters=[params_file, common | {"network.backend": LaunchConfiguration("backend")}],
             condition=Condition(predicate=backend_given), **node_options),
        Node(parameters=[params_file, common], condition=Condition(predicate=backend_not_given), **node_options),
    ]
    replay = Node(
        package=PACKAGE,
        executable="kp3d_replay",
        name="kp3d_replay",
        output="screen",
        arguments=[bag, "--clock", "--rate", LaunchConfiguration("rate"), "--wait-for-subscribers", "60"],
        condition=Condition(predicate=bag_given),
    )
    rviz_wanted = IfCondition(LaunchConfiguration("rviz"))
    if package_installed("rviz2"):
        rviz = Node(
            package="rviz2",
            executable="rviz2",
            name="rviz2",
            arguments=["-d", os.path.join(share, "rviz", "kp3d.rviz")],
            parameters=[{"use_sim_time": use_sim_time}],
            condition=rviz_wanted,
        )
    else:  # a Node of a missing package aborts the launch after kp3d_node has started, and leaves it running
        rviz = LogInfo(msg="rviz:=true, but rviz2 is not installed: running without RViz", condition=rviz_wanted)
    # Large clouds between processes (node, replay, RViz) need a larger Fast DDS shared-memory segment;
    # a profile the user already set wins.
    environment = []
    if not os.environ.get("FASTDDS_DEFAULT_PROFILES_FILE") and not os.environ.get("FASTRTPS_DEFAULT_PROFILES_FILE"):
        profile = os.path.join(share, "config", "fastdds_large_clouds.xml")
        variables = ["FASTDDS_DEFAULT_PROFILES_FILE"]  # Fast DDS 3 (Kilted on)
        if os.environ.get("ROS_DISTRO", "") in ("humble", "iron", "jazzy"):  # Fast DDS 2
            variables.append("FASTRTPS_DEFAULT_PROFILES_FILE")
        environment = [SetEnvironmentVariable(name, profile) for name in variables]
    return LaunchDescription([*arguments, *environment, *nodes, replay, rviz])
