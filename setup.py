"""ament_python package: installs on a ROS 2 machine with colcon and anywhere with pip."""

from glob import glob

from setuptools import find_packages, setup

PACKAGE = "kp3d_ros"

setup(
    name=PACKAGE,
    version="0.1.0",
    packages=find_packages(include=[PACKAGE, f"{PACKAGE}.*"]),
    data_files=[
        ("share/ament_index/resource_index/packages", [f"resource/{PACKAGE}"]),
        (f"share/{PACKAGE}", ["package.xml"]),
        (f"share/{PACKAGE}/launch", glob("launch/*.py")),
        (f"share/{PACKAGE}/config", glob("config/*.yaml") + glob("config/*.xml")),
        (f"share/{PACKAGE}/rviz", glob("rviz/*.rviz")),
        (f"share/{PACKAGE}/models", glob("models/*")),
    ],
    install_requires=["setuptools"],
    zip_safe=True,
    maintainer="kp3d_ros developers",
    maintainer_email="kp3d-ros@users.noreply.github.com",
    description="3D human keypoints and body parts from LiDAR (GC-KPL) as a ROS 2 node.",
    license="Apache-2.0",
    python_requires=">=3.10",
    entry_points={
        "console_scripts": [
            "kp3d = kp3d_ros.cli:main",
            "kp3d_node = kp3d_ros.ros.node:main",
            "kp3d_replay = kp3d_ros.ros.replay:cli_main",
        ],
    },
)
