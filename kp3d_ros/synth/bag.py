"""`kp3d synth-bag`: a ROS 2 bag (MCAP or sqlite3) of a synthetic scene, with ground truth topics.

Written with `rosbags` (pure Python, no ROS needed). Topics, all in frame "lidar" unless noted:

- /points (sensor_msgs/PointCloud2, layouts.XYZI: x, y, z, intensity float32; height 1, is_dense false)
- /kp3d/gt/keypoints (PointCloud2, layouts.KEYPOINTS): 14 joints per person with at least
  ``gt_min_points`` LiDAR returns in that scan (default 1: people the sensor does not see are left out);
  track_id = person id (stable over the bag), confidence 1.0
- /kp3d/gt/segmentation (PointCloud2, layouts.SEGMENTATION): every person point with its body part
- /kp3d/gt/scene_flow (PointCloud2, layouts.SCENE_FLOW): every person point with its true motion to the
  next scan (metres per frame)
- /camera/image_raw (sensor_msgs/Image rgb8, frame "camera") and /camera/camera_info, with --camera,
  at --camera-rate on its own clock (image j at j / camera-rate s, plus a uniform jitter of up to
  --camera-jitter s; each image renders the scene of the scan nearest to it, so with a camera rate that
  divides the LiDAR rate and no jitter the image stamps equal those of the scans taken at the same time)

Header stamps equal bag timestamps: START_NS + frame / rate. An output path ending in .mcap (or .db3)
becomes a single storage file (``ros2 bag play`` and rosbags both read it); any other path becomes a
rosbag2 directory with metadata.yaml.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from rosbags.rosbag2 import StoragePlugin, Writer
from rosbags.typesys import Stores, get_typestore

from kp3d_ros.layouts import SCENE_FLOW, SEGMENTATION, XYZI, fields_of, keypoints_array
from kp3d_ros.synth.lidar import PRESETS
from kp3d_ros.synth.scene import START_NS, ScanFrame, SceneSimulator

LIDAR_FRAME = "lidar"
TOPIC_POINTS = "/points"
TOPIC_GT_KEYPOINTS = "/kp3d/gt/keypoints"
TOPIC_GT_SEGMENTATION = "/kp3d/gt/segmentation"
TOPIC_GT_FLOW = "/kp3d/gt/scene_flow"
TOPIC_IMAGE = "/camera/image_raw"
TOPIC_CAMERA_INFO = "/camera/camera_info"
STORAGES = {"mcap": (StoragePlugin.MCAP, ".mcap"), "sqlite3": (StoragePlugin.SQLITE3, ".db3")}
BAG_VERSION = 9  # rosbag2 metadata version (Jazzy and later)


@dataclass
class BagSummary:
    path: Path
    storage: str
    num_frames: int
    num_images: int
    message_counts: dict[str, int]
    duration_s: float
    mean_points: float  # LiDAR points per scan
    mean_visible_people: float  # people with at least one point per scan
    ms_per_scan: float  # scene simulation and ray casting
    ms_per_image: float  # camera rendering
    wall_s: float
    people: list[dict] = field(default_factory=list)

    def describe(self) -> str:
        lines = [f"wrote {self.path} ({self.storage}): {self.num_frames} scans, {self.num_images} images, "
                 f"{self.duration_s:.1f} s, {self.mean_points:.0f} points/scan, "
                 f"{self.mean_visible_people:.1f} visible people/scan",
                 f"  {self.ms_per_scan:.0f} ms/scan, {self.ms_per_image:.0f} ms/image, {self.wall_s:.1f} s in all"]
        lines += [f"  {topic}: {count} messages" for topic, count in self.message_counts.items()]
        people = [f"{p['person_id']} {p['action']}" + (f" {p['speed']} m/s" if p["speed"] else "") for p in self.people]
        lines.append("  people: " + ", ".join(people))
        return "\n".join(lines)


class _Messages:
    """Builds rosbags message objects for one typestore."""

    def __init__(self) -> None:
        self.store = get_typestore(Stores.ROS2_KILTED)
        self.types = self.store.types

    def header(self, stamp_ns: int, frame_id: str):
        stamp = self.types["builtin_interfaces/msg/Time"](sec=stamp_ns // 1_000_000_000,
                                                         nanosec=stamp_ns % 1_000_000_000)
        return self.types["std_msgs/msg/Header"](stamp=stamp, frame_id=frame_id)

    def cloud(self, array: np.ndarray, stamp_ns: int, frame_id: str = LIDAR_FRAME):
        point_field = self.types["sensor_msgs/msg/PointField"]
        fields = [point_field(name=n, offset=o, datatype=d, count=c) for n, o, d, c in fields_of(array.dtype)]
        data = np.ascontiguousarray(array).view(np.uint8).reshape(-1)
        return self.types["sensor_msgs/msg/PointCloud2"](
            header=self.header(stamp_ns, frame_id), height=1, width=len(array), fields=fields, is_bigendian=False,
            point_step=array.dtype.itemsize, row_step=array.dtype.itemsize * len(array), data=data, is_dense=False)

    def image(self, rgb: np.ndarray, stamp_ns: int, frame_id: str):
        height, width = rgb.shape[:2]
        return self.types["sensor_msgs/msg/Image"](
            header=self.header(stamp_ns, frame_id), height=height, width=width, encoding="rgb8", is_bigendian=0,
            step=3 * width, data=np.ascontiguousarray(rgb, dtype=np.uint8).reshape(-1))

    def camera_info(self, info: dict, stamp_ns: int, frame_id: str):
        roi = self.types["sensor_msgs/msg/RegionOfInterest"](x_offset=0, y_offset=0, height=0, width=0,
                                                              do_rectify=False)
        return self.types["sensor_msgs/msg/CameraInfo"](
            header=self.header(stamp_ns, frame_id), height=info["height"], width=info["width"],
            distortion_model=info["distortion_model"], d=np.asarray(info["d"], np.float64),
            k=np.asarray(info["k"], np.float64), r=np.asarray(info["r"], np.float64),
            p=np.asarray(info["p"], np.float64), binning_x=0, binning_y=0, roi=roi)


def scan_arrays(frame: ScanFrame, gt_min_points: int = 1) -> dict[str, np.ndarray]:
    """The structured arrays of one scan's point cloud topics."""
    points = np.zeros(len(frame.points), dtype=XYZI)
    points["x"], points["y"], points["z"] = frame.points.T
    points["intensity"] = frame.intensity
    shown = [p for p in frame.people if p.num_points >= gt_min_points]
    keypoints = keypoints_array([(p.person_id, p.joints, np.ones(len(p.joints), np.float32)) for p in shown])
    index = np.concatenate([p.point_indices for p in frame.people]) if frame.people else np.zeros(0, np.int64)
    track = np.concatenate([np.full(p.num_points, p.person_id) for p in frame.people]) if frame.people else index
    segmentation = np.zeros(len(index), dtype=SEGMENTATION)
    flow = np.zeros(len(index), dtype=SCENE_FLOW)
    for array in (segmentation, flow):
        array["x"], array["y"], array["z"] = frame.points[index].T
        array["track_id"] = track
    if frame.people:
        segmentation["part"] = np.concatenate([p.parts for p in frame.people])
        flow["vx"], flow["vy"], flow["vz"] = np.concatenate([p.flow for p in frame.people]).T
    return {TOPIC_POINTS: points, TOPIC_GT_KEYPOINTS: keypoints, TOPIC_GT_SEGMENTATION: segmentation,
            TOPIC_GT_FLOW: flow}


def _storage_of(path: Path, storage: str) -> tuple[StoragePlugin, bool]:
    """The storage plugin, and whether the output is a single file (path ends in the storage's suffix)."""
    if storage not in STORAGES:
        raise ValueError(f"unknown storage {storage!r}; expected one of {', '.join(STORAGES)}")
    plugin, suffix = STORAGES[storage]
    other = [s for name, (_, s) in STORAGES.items() if name != storage]
    if path.suffix in other:
        raise ValueError(f"{path} ends in {path.suffix} but the storage is {storage} (use {suffix})")
    return plugin, path.suffix == suffix


def write_scene_bag(path: str | Path, num_people: int = 5, seconds: float = 10.0, preset: str = "waymo_top",
                    seed: int = 0, camera: bool = False, storage: str = "mcap", rate_hz: float = 10.0,
                    camera_rate_hz: float = 5.0, gt_min_points: int = 1, overwrite: bool = False,
                    progress: bool = False, pose_share: float = 0.0, child_share: float = 0.0,
                    camera_jitter_s: float = 0.0, transitions: bool = False) -> BagSummary:
    """Simulate a scene and write it as a ROS 2 bag; returns what was written and how long it took."""
    from kp3d_ros.synth.camera import PinholeCamera, SceneRenderer

    path = Path(path)
    plugin, single_file = _storage_of(path, storage)
    if seconds <= 0 or rate_hz <= 0 or camera_rate_hz <= 0:
        raise ValueError("seconds, rate and camera rate must be positive")
    if not 0.0 <= camera_jitter_s < 0.5 / camera_rate_hz:
        raise ValueError("camera jitter must be at least 0 and below half the camera period")
    if not (0.0 <= pose_share <= 1.0 and 0.0 <= child_share <= 1.0):
        raise ValueError("pose share and child share must be within 0 and 1")
    if path.exists():
        if not overwrite:
            raise FileExistsError(f"{path} exists; choose another path or overwrite")
        shutil.rmtree(path) if path.is_dir() else path.unlink()
    path.parent.mkdir(parents=True, exist_ok=True)
    num_frames = max(1, round(seconds * rate_hz))
    image_stamps = _camera_stamps(seconds, rate_hz, camera_rate_hz, camera_jitter_s, seed) if camera else []
    next_image = 0
    started = time.perf_counter()
    sim = SceneSimulator(num_people, preset, seed=seed, rate_hz=rate_hz, keep_geometry=camera, pose_share=pose_share,
                         child_share=child_share, transitions=transitions)
    cam = PinholeCamera()
    renderer = SceneRenderer(cam, sim.world) if camera else None
    messages = _Messages()
    counts: dict[str, int] = {}
    points_total, visible_total, scan_s, image_s, num_images = 0, 0, 0.0, 0.0, 0

    workdir = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent)) if single_file else None
    bag_dir = workdir / "bag" if workdir else path
    try:
        with Writer(bag_dir, version=BAG_VERSION, storage_plugin=plugin) as writer:
            topics = dict.fromkeys((TOPIC_POINTS, TOPIC_GT_KEYPOINTS, TOPIC_GT_SEGMENTATION, TOPIC_GT_FLOW),
                                   "sensor_msgs/msg/PointCloud2")
            if camera:
                topics |= {TOPIC_IMAGE: "sensor_msgs/msg/Image", TOPIC_CAMERA_INFO: "sensor_msgs/msg/CameraInfo"}
            connections = {t: writer.add_connection(t, m, typestore=messages.store) for t, m in topics.items()}

            def write(topic: str, msg, stamp: int) -> None:
                writer.write(connections[topic], stamp, messages.store.serialize_cdr(msg, topics[topic]))
                counts[topic] = counts.get(topic, 0) + 1

            def write_image(frame, stamp: int) -> None:
                nonlocal image_s, num_images
                t0 = time.perf_counter()
                rgb = renderer.render(frame.geometry, frame.sensor_pose)
                image_s += time.perf_counter() - t0
                num_images += 1
                write(TOPIC_IMAGE, messages.image(rgb, stamp, cam.frame_id), stamp)
                write(TOPIC_CAMERA_INFO, messages.camera_info(cam.camera_info(), stamp, cam.frame_id), stamp)

            half_period = round(5e8 / rate_hz)
            tick = time.perf_counter()
            for frame in sim.frames(num_frames):
                scan_s += time.perf_counter() - tick
                # the images nearest to this scan: those before it first, so that the bag is in time order
                mine = []
                while next_image < len(image_stamps) and image_stamps[next_image] < frame.stamp_ns + half_period:
                    mine.append(image_stamps[next_image])
                    next_image += 1
                for stamp in (s for s in mine if s < frame.stamp_ns):
                    write_image(frame, stamp)
                for topic, array in scan_arrays(frame, gt_min_points).items():
                    write(topic, messages.cloud(array, frame.stamp_ns), frame.stamp_ns)
                points_total += len(frame.points)
                visible_total += sum(p.num_points > 0 for p in frame.people)
                for stamp in (s for s in mine if s >= frame.stamp_ns):
                    write_image(frame, stamp)
                if progress and (frame.index + 1) % max(1, num_frames // 10) == 0:
                    print(f"  {frame.index + 1}/{num_frames} scans", file=sys.stderr, flush=True)
                tick = time.perf_counter()
        if workdir is not None:
            (bag_dir / f"bag{STORAGES[storage][1]}").replace(path)
    finally:
        if workdir is not None:
            shutil.rmtree(workdir, ignore_errors=True)
    return BagSummary(
        path=path, storage=storage, num_frames=num_frames, num_images=num_images, message_counts=counts,
        duration_s=num_frames / rate_hz, mean_points=points_total / num_frames,
        mean_visible_people=visible_total / num_frames, ms_per_scan=1000 * scan_s / num_frames,
        ms_per_image=1000 * image_s / max(num_images, 1), wall_s=time.perf_counter() - started,
        people=[{"person_id": s.person_id, "action": s.action, "speed": round(s.speed, 2)} for s in sim.people])


def _camera_stamps(seconds: float, rate_hz: float, camera_rate_hz: float, jitter_s: float, seed: int) -> list[int]:
    """Image stamps (ns): image j at START_NS + j / camera_rate_hz plus a uniform jitter in [-jitter_s, jitter_s],
    within the scans' time span (the last scan's half period included)."""
    end_ns = round(max(1, round(seconds * rate_hz)) / rate_hz * 1e9 - 5e8 / rate_hz)
    rng = np.random.default_rng([seed, 7919])
    stamps = []
    for j in range(int(seconds * camera_rate_hz) + 2):
        offset = round(j * 1e9 / camera_rate_hz)
        if offset >= end_ns:
            break
        jitter = round(rng.uniform(-jitter_s, jitter_s) * 1e9) if jitter_s > 0 else 0
        stamps.append(START_NS + max(0, offset + jitter))
    return stamps


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("out", type=Path, help="output bag: NAME.mcap (or NAME.db3) file, or a directory")
    parser.add_argument("--people", type=int, default=5, help="number of people in the scene")
    parser.add_argument("--seconds", type=float, default=10.0, help="length of the recording")
    parser.add_argument("--rate", type=float, default=10.0, help="LiDAR scans per second")
    parser.add_argument("--preset", default="waymo_top", choices=sorted(PRESETS), help="LiDAR model")
    parser.add_argument("--seed", type=int, default=0, help="random seed of the scene")
    parser.add_argument("--camera", action="store_true", help="also render a forward camera (image + camera_info)")
    parser.add_argument("--camera-rate", type=float, default=5.0, help="camera images per second")
    parser.add_argument("--camera-jitter", type=float, default=0.0,
                        help="each image stamp moves by a uniform jitter of up to this many seconds")
    parser.add_argument("--storage", default="mcap", choices=sorted(STORAGES), help="rosbag2 storage plugin")
    parser.add_argument("--gt-min-points", type=int, default=1,
                        help="ground-truth keypoints only for people with at least this many LiDAR points")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output")
    parser.add_argument("--pose-share", type=float, default=0.0,
                        help="share of the people after the crossing pair who hold a pose of the pose library "
                             "(squat, kneel, sit, bend, lie, crawl, reach, jump)")
    parser.add_argument("--children", type=float, default=0.0, help="share of children among the people")
    parser.add_argument("--transitions", action="store_true",
                        help="the people who hold a pose go through two, standing up in between (with --pose-share)")


def main(args: argparse.Namespace) -> int:
    try:
        summary = write_scene_bag(args.out, args.people, args.seconds, args.preset, args.seed, args.camera,
                                  args.storage, args.rate, args.camera_rate, args.gt_min_points, args.overwrite,
                                  progress=True, pose_share=args.pose_share, child_share=args.children,
                                  camera_jitter_s=args.camera_jitter, transitions=args.transitions)
    except (ValueError, FileExistsError, RuntimeError) as exc:
        print(f"kp3d synth-bag: {exc}", file=sys.stderr)
        return 2
    print(summary.describe())
    return 0
