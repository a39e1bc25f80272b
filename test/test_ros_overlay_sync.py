"""The overlay pairs each cloud with the camera image nearest in time: a synthetic bag whose camera runs at
7 Hz with up to 20 ms of jitter against a 10 Hz LiDAR, replayed into kp3d_node over real DDS.

Every published overlay must be drawn on an image at most camera.max_offset_s from a distinct processed
cloud, in order; the clouds without such an image must be counted instead.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

rclpy = pytest.importorskip("rclpy")

from rclpy.executors import MultiThreadedExecutor  # noqa: E402
from rclpy.node import Node  # noqa: E402
from sensor_msgs.msg import Image  # noqa: E402
from waiting import Spinner, wait_until  # noqa: E402

from kp3d_ros.core import bagio  # noqa: E402
from kp3d_ros.core.params import load_params  # noqa: E402
from kp3d_ros.ros.qos import output_qos  # noqa: E402
from kp3d_ros.ros.replay import BagPlayer  # noqa: E402
from kp3d_ros.ros.run import make_node  # noqa: E402
from kp3d_ros.synth.bag import write_scene_bag  # noqa: E402

pytestmark = pytest.mark.ros
MAX_OFFSET_S = 0.03
CAMERA_RATE, JITTER_S = 7.0, 0.02
BAG = Path(__file__).resolve().parents[1] / "data" / "test_bags" / "overlay_sync_2people_2s_cam7hz_jitter20ms.mcap"
TOPICS = ["/points", "/camera/image_raw", "/camera/camera_info"]


@pytest.fixture(scope="module")
def bag() -> Path:
    """Generated once (~30 s) and reused from data/test_bags/ (git-ignored)."""
    if not BAG.exists():
        BAG.parent.mkdir(parents=True, exist_ok=True)
        partial = BAG.with_suffix(".partial.mcap")
        write_scene_bag(partial, num_people=2, seconds=2.0, seed=8, camera=True, camera_rate_hz=CAMERA_RATE,
                        camera_jitter_s=JITTER_S, overwrite=True)
        partial.rename(BAG)
    return BAG


def _stamp(header) -> int:
    return int(header.stamp.sec) * 1_000_000_000 + int(header.stamp.nanosec)


def _image_stamps(path: Path) -> list[int]:
    with bagio._open(path) as reader:
        connections = [c for c in reader.connections if c.topic == "/camera/image_raw"]
        return [log_ns for _, log_ns, _ in reader.messages(connections=connections)]


def match_in_order(overlays: list[int], clouds: list[int], max_offset_ns: int) -> list[tuple[int, int]] | None:
    """Each overlay (image stamp, in publication order) to a distinct processed cloud (in processing order),
    later than the previous overlay's cloud and at most max_offset_ns away; None when that is impossible."""
    pairs, start = [], 0
    for image in overlays:
        match = next((i for i in range(start, len(clouds)) if abs(clouds[i] - image) <= max_offset_ns), None)
        if match is None:
            return None
        pairs.append((image, clouds[match]))
        start = match + 1
    return pairs


def test_match_in_order_rejects_an_image_reused_or_too_far():
    ms = 1_000_000
    assert match_in_order([0, 100 * ms], [10 * ms, 95 * ms], 30 * ms) == [(0, 10 * ms), (100 * ms, 95 * ms)]
    assert match_in_order([0, 0], [10 * ms, 100 * ms], 30 * ms) is None  # the second has no cloud near it
    assert match_in_order([0], [40 * ms], 30 * ms) is None


def test_every_overlay_is_within_the_offset_of_its_cloud(bag):
    image_stamps = _image_stamps(bag)
    cloud_stamps = [stamp for stamp, _ in bagio._messages(bag, "/points")]
    assert len(image_stamps) == 14 and len(cloud_stamps) == 20
    offsets = [min(abs(i - c) for i in image_stamps) for c in cloud_stamps]
    near = sum(o <= MAX_OFFSET_S * 1e9 for o in offsets)
    assert 0 < near < len(cloud_stamps)  # the bag has clouds with and without an image in time
    rclpy.init()
    nodes: list[Node] = []
    executor = MultiThreadedExecutor(num_threads=3)
    spinner = Spinner(executor)
    try:
        node = make_node(load_params(overrides={"camera.enabled": True, "camera.max_offset_s": MAX_OFFSET_S}),
                         use_sim_time=True)
        assert node is not None
        probe, replay = Node("kp3d_sync_probe"), Node("kp3d_sync_replay")
        nodes += [node, probe, replay]
        overlays: list[int] = []
        probe.create_subscription(Image, "/kp3d_node/overlay", lambda m: overlays.append(_stamp(m.header)),
                                  output_qos(100))
        for n in nodes:
            executor.add_node(n)
        spinner.start()
        # a quarter of real time: the test is about pairing, and clouds dropped for a busy CI machine would leave
        # too few to check it (CI once processed 5 of 20 at half speed)
        player = BagPlayer(replay, bag, rate=0.25, clock=True, topics=TOPICS, start_delay=0.3)
        assert wait_until(lambda: all(p.get_subscription_count() > 0 for p in player.publishers.values()))
        assert wait_until(lambda: probe.count_publishers("/kp3d_node/overlay") == 1)
        time.sleep(0.5)
        player.start()
        assert player.wait(60)

        def settled() -> bool:
            stats = node.stats
            decided = stats.overlays + stats.overlay_skipped + sum(stats.overlay_errors.values())
            return (stats.received == stats.processed + stats.dropped + sum(stats.malformed.values())
                    and decided == stats.processed and len(overlays) == stats.overlays)
        assert wait_until(settled, 20.0)
        stats = node.stats.snapshot()
        processed = [stamp for stamp, _, _ in node.stats.recent_frames()]  # the clouds processed, in order
        malformed = dict(node.stats.malformed)
        overlay_errors = dict(node.stats.overlay_errors)
    finally:
        spinner.stop()
        executor.shutdown()
        for n in nodes:
            n.destroy_node()
        rclpy.try_shutdown()
    print(f"processed {stats['clouds_processed']} of {len(cloud_stamps)} clouds: {stats['overlays_published']} "
          f"overlays, {stats['overlay_skipped_no_image_in_time']} without an image in time, largest offset "
          f"{stats['overlay_offset_max_ms']:.1f} ms")
    assert stats["clouds_processed"] >= 10 and len(processed) == stats["clouds_processed"], {
        key: stats[key] for key in ("clouds_received", "clouds_dropped_newer_arrived", "clouds_lost_before_callback",
                                    "clouds_malformed", "latency_end_to_end_p99_ms")}
    assert not malformed, malformed
    assert stats["overlays_published"] >= 1 and stats["overlay_skipped_no_image_in_time"] >= 1
    assert set(overlays) <= set(image_stamps)
    pairs = match_in_order(overlays, processed, int(MAX_OFFSET_S * 1e9))
    assert pairs is not None, (overlays, processed)
    assert stats["overlay_offset_max_ms"] <= MAX_OFFSET_S * 1000
    # and no cloud that had an image in time went without its overlay (every image reached the node)
    expected = [min(image_stamps, key=lambda i, c=c: abs(i - c)) for c in processed]
    expected = [i for i, c in zip(expected, processed, strict=True) if abs(i - c) <= MAX_OFFSET_S * 1e9]
    # The replay's first camera_info can reach the node after its first paired image (topics are delivered
    # independently): that overlay is lost, counted as missing_camera_info. Once it has arrived it stays.
    missing = overlay_errors.pop("missing_camera_info", 0)
    assert missing <= 2 and not overlay_errors, overlay_errors
    assert overlays == expected[missing:]
