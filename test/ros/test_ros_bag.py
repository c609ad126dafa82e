"""bag-record / bag-play: compressed topics, PoseStamped poses with a delay, /clock from the bag,
best-effort camera QoS and on-the-fly compression, checked from a separate subscriber process
context (real DDS)."""
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import rclpy
from rclpy.qos import QoSProfile, ReliabilityPolicy

from openmask3d_ros.core.scene import SceneFolder
from openmask3d_ros.ros.bag import (COLOR_TOPIC, DEPTH_TOPIC, POSE_TOPIC, bag_summary,
                                    record_scene)
from openmask3d_ros.ros.conversions import (compressed_to_depth, compressed_to_rgb,
                                            pose_to_matrix, stamp_to_ns)

ROOT = Path(__file__).resolve().parents[2]
FRAMES = 12


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    from openmask3d_ros.core.synthetic import make_scene
    return SceneFolder(make_scene(tmp_path_factory.mktemp("bag") / "scene", seed=3,
                                  num_frames=FRAMES, width=96, height=72))


def _read(bag, topic):
    from rclpy.serialization import deserialize_message
    from rosbags.rosbag2 import Reader
    from openmask3d_ros.ros.bag_play import msg_class
    with Reader(bag) as reader:
        conn = next(c for c in reader.connections if c.topic == topic)
        cls = msg_class(conn.msgtype)
        return [(t, deserialize_message(bytes(raw), cls))
                for _, t, raw in reader.messages(connections=[conn])]


def test_record_compressed_topics_and_delayed_poses(scene, tmp_path):
    bag = tmp_path / "c.bag"
    run = subprocess.run([sys.executable, "-m", "openmask3d_ros.cli", "bag-record",
                          str(scene.root), str(bag), "--rate", "30", "--color-format", "png",
                          "--depth-format", "compressedDepth", "--poses", "both",
                          "--pose-delay", "0.03"], cwd=ROOT, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    summary = bag_summary(bag)
    assert summary[COLOR_TOPIC + "/compressed"] == ("sensor_msgs/msg/CompressedImage", FRAMES)
    assert summary[DEPTH_TOPIC + "/compressedDepth"] == ("sensor_msgs/msg/CompressedImage",
                                                         FRAMES)
    assert summary[POSE_TOPIC] == ("geometry_msgs/msg/PoseStamped", FRAMES)
    assert summary["/tf"][1] == FRAMES and COLOR_TOPIC not in summary
    fid = scene.frame_ids[4]
    (_, color), = _read(bag, COLOR_TOPIC + "/compressed")[4:5]
    (_, depth), = _read(bag, DEPTH_TOPIC + "/compressedDepth")[4:5]
    np.testing.assert_array_equal(compressed_to_rgb(color), scene.color(fid))      # png
    np.testing.assert_allclose(compressed_to_depth(depth), scene.depth(fid), atol=1e-6)
    # the pose of frame 4: the optical frame in map, stamped like the image, logged 30 ms later
    t_log, pose = _read(bag, POSE_TOPIC)[4]
    assert stamp_to_ns(pose.header.stamp) == stamp_to_ns(color.header.stamp)
    assert t_log - stamp_to_ns(color.header.stamp) == 30_000_000
    np.testing.assert_allclose(pose_to_matrix(pose.pose), scene.pose(fid), atol=1e-6)


@pytest.mark.parametrize("what", ["notimg.png", "junk.db3", "junk.mcap", "no_metadata",
                                  "bad_metadata", "missing"])
def test_play_of_something_not_a_bag_is_bad_input_naming_it(scene, tmp_path, what):
    """W6: `bag-play notimg.png` was exit 1 "internal error: ReaderError"; it is bad input:
    exit 2 and one line naming the path."""
    path = tmp_path / what
    if what == "notimg.png" or what.startswith("junk"):
        path.write_bytes((scene.root / "color" / f"{scene.frame_ids[0]}.png").read_bytes())
    elif what != "missing":
        path.mkdir()
        if what == "bad_metadata":
            (path / "metadata.yaml").write_text("rosbag2_bagfile_information: [\n")
    run = subprocess.run([sys.executable, "-m", "openmask3d_ros.cli", "bag-play", str(path),
                          "--wait", "0", "--delay", "0"],
                         cwd=ROOT, capture_output=True, text=True, timeout=60)
    lines = run.stderr.strip().splitlines()
    assert run.returncode == 2 and len(lines) == 1, run.stderr
    assert str(path) in lines[0] and "not a readable ROS 2 bag" in lines[0], lines[0]
    assert "internal error" not in run.stderr and "Traceback" not in run.stderr


def test_play_with_clock_best_effort_and_compression(scene, tmp_path):
    """A raw bag played with --clock --qos best-effort --compress reaches a best-effort
    subscriber as compressed / compressedDepth images, with /clock following the bag stamps."""
    from rosgraph_msgs.msg import Clock
    from sensor_msgs.msg import CompressedImage
    bag = record_scene(scene.root, tmp_path / "raw.bag", rate_hz=30, trigger=False)
    ctx = rclpy.Context()
    rclpy.init(context=ctx)
    node = rclpy.create_node("bag_test_listener", context=ctx)
    got = {"color": [], "depth": [], "clock": []}
    be = QoSProfile(depth=50, reliability=ReliabilityPolicy.BEST_EFFORT)
    node.create_subscription(CompressedImage, COLOR_TOPIC + "/compressed",
                             got["color"].append, be)
    node.create_subscription(CompressedImage, DEPTH_TOPIC + "/compressedDepth",
                             got["depth"].append, be)
    node.create_subscription(Clock, "/clock", lambda m: got["clock"].append(
        stamp_to_ns(m.clock)), QoSProfile(depth=50, reliability=ReliabilityPolicy.BEST_EFFORT))
    executor = rclpy.executors.SingleThreadedExecutor(context=ctx)
    executor.add_node(node)
    spin = threading.Thread(target=executor.spin, daemon=True)
    spin.start()
    try:
        run = subprocess.run([sys.executable, "-m", "openmask3d_ros.cli", "bag-play", str(bag),
                              "--clock", "--qos", "best-effort", "--compress", "--wait", "10",
                              "--exclude", "/cloud_map"],
                             cwd=ROOT, capture_output=True, text=True, timeout=60)
        assert run.returncode == 0, run.stdout + run.stderr
        deadline = time.monotonic() + 5
        while len(got["depth"]) < FRAMES and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        executor.shutdown()
        node.destroy_node()
        rclpy.shutdown(context=ctx)
    assert len(got["color"]) >= FRAMES - 1 and len(got["depth"]) >= FRAMES - 1
    assert got["color"][0].format == "rgb8; jpeg compressed bgr8"
    last = got["color"][-1]
    idx = scene.frame_ids[FRAMES - 1]
    assert np.abs(compressed_to_rgb(last).astype(int) - scene.color(idx)).mean() < 8
    np.testing.assert_allclose(compressed_to_depth(got["depth"][-1]), scene.depth(idx),
                               atol=1e-6)
    clock = got["clock"]
    assert clock == sorted(clock) and len(clock) > FRAMES      # ticks between messages too
    assert clock[-1] >= stamp_to_ns(last.header.stamp)
    assert clock[0] <= stamp_to_ns(got["color"][0].header.stamp)
