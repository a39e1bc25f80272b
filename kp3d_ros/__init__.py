"""kp3d_ros: 3D human keypoints and body parts from LiDAR, as a ROS 2 node (GC-KPL)."""

__version__ = "0.1.0"
