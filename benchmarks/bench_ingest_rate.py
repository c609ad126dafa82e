"""What camera rate the node keeps up with: frames received out of frames sent, by image size and
rate (issue 21, W17; the figures in docs/ros.md "Input rate").

`openmask3d node` runs as its own process, as a user starts it (shipped Fast DDS profile, camera
topics best-effort, PoseStamped poses so every 10th frame is written as a keyframe). This script
publishes colour (rgb8), depth (16UC1) and camera_info at a steady rate, stamped with regular
capture times (as a camera driver does), and a pose per frame, with the same profile; then it
reads the node's status: frames received, frames_overrun (dropped in the node's own input queue:
it could not take them) and frames_missed (lost before the node). Publisher and node share the
machine's cores.

    python benchmarks/bench_ingest_rate.py                          # 320x240 and 640x480
    python benchmarks/bench_ingest_rate.py --sizes 320x240 --rates 30,100 --seconds 5
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
os.environ.setdefault("ROS_DOMAIN_ID", str(100 + os.getpid() % 100))


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--sizes", default="320x240,640x480", help="comma-separated WxH")
    p.add_argument("--rates", default="30,60,100,200", help="comma-separated Hz")
    p.add_argument("--seconds", type=float, default=5.0, help="stream length per configuration")
    p.add_argument("--qos", choices=("best_effort", "reliable"), default="best_effort")
    return p.parse_args(argv)


def start_node(scene_dir: Path, log: Path, qos: str) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "openmask3d_ros.cli", "node", "--params",
           "config/openmask3d.yaml", "--scene-dir", str(scene_dir), "--param",
           "pose_source:=pose", "--param", f"qos_reliability:={qos}"]
    env = dict(os.environ, PYTHONUNBUFFERED="1", RCUTILS_COLORIZED_OUTPUT="0")
    return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=open(log, "w"),
                            stderr=subprocess.STDOUT, start_new_session=True)


class Camera:
    """The publishing side: a camera (colour, depth, camera_info) and its poses."""

    def __init__(self, node, qos: str):
        from geometry_msgs.msg import PoseStamped
        from sensor_msgs.msg import CameraInfo, Image
        from openmask3d_ros.ros.inputs import camera_qos
        q = camera_qos(30, qos)
        self.node = node
        self.pubs = [node.create_publisher(Image, "/camera/color/image_raw", q),
                     node.create_publisher(Image, "/camera/aligned_depth_to_color/image_raw", q),
                     node.create_publisher(CameraInfo, "/camera/color/camera_info", q)]
        self.pose_pub = node.create_publisher(PoseStamped, "/camera_pose", 100)
        self.pose = PoseStamped()
        self.pose.header.frame_id, self.pose.pose.orientation.w = "map", 1.0

    def wait(self, timeout: float = 30.0) -> None:
        end = time.monotonic() + timeout
        while any(p.get_subscription_count() == 0 for p in [*self.pubs, self.pose_pub]):
            if time.monotonic() > end:
                raise SystemExit("the node did not subscribe")
            time.sleep(0.1)

    def stream(self, width: int, height: int, rate: float, seconds: float) -> int:
        """Publish at ``rate`` Hz for ``seconds``; the frames sent."""
        import numpy as np
        from openmask3d_ros.core.camera import Intrinsics
        from openmask3d_ros.ros.conversions import (depth_to_image, intrinsics_to_camera_info,
                                                    ns_to_stamp, rgb_to_image)
        K = Intrinsics(np.array([[width, 0, width / 2], [0, width, height / 2], [0, 0, 1.0]]),
                       width, height)
        msgs = (rgb_to_image(np.full((height, width, 3), 90, np.uint8), "rgb8"),
                depth_to_image(np.ones((height, width), np.float32), "16UC1"),
                intrinsics_to_camera_info(K))
        t0, k, wall0 = time.monotonic(), 0, time.time_ns()
        while time.monotonic() < t0 + seconds:
            stamp = ns_to_stamp(wall0 + int(k * 1e9 / rate))   # capture times: regular
            self.pose.header.stamp = stamp
            self.pose_pub.publish(self.pose)
            for m, p in zip(msgs, self.pubs):
                m.header.stamp, m.header.frame_id = stamp, "camera_color_optical_frame"
                p.publish(m)
            k += 1
            time.sleep(max(t0 + k / rate - time.monotonic(), 0.0))
        return k


def settled_status(node, statuses: list, quiet: float = 1.5, timeout: float = 30.0):
    """The latest status once frames_received has not changed for ``quiet`` s."""
    import rclpy
    end, last, since = time.monotonic() + timeout, None, time.monotonic()
    while time.monotonic() < end:
        rclpy.spin_once(node, timeout_sec=0.1)
        now = statuses[-1].frames_received if statuses else None
        if now != last:
            last, since = now, time.monotonic()
        elif statuses and time.monotonic() - since > quiet:
            break
    return statuses[-1]


def main(argv=None) -> int:
    args = parse_args(argv)
    import rclpy
    from openmask3d_ros.msg import PipelineStatus
    from openmask3d_ros.ros.dds import apply_profile
    from openmask3d_ros.ros.qos import latched_qos
    apply_profile()
    rclpy.init()
    node = rclpy.create_node("openmask3d_ingest_bench")
    statuses: list = []
    node.create_subscription(PipelineStatus, "/openmask3d/status", statuses.append, latched_qos())
    work = Path(tempfile.mkdtemp(prefix="om3d_ingest_"))
    proc = start_node(work / "scene", work / "node.log", args.qos)
    cam = Camera(node, args.qos)
    rows = []
    try:
        cam.wait()
        before = settled_status(node, statuses, quiet=0.5)
        for size in args.sizes.split(","):
            w, h = map(int, size.split("x"))
            for rate in map(float, args.rates.split(",")):
                sent = cam.stream(w, h, rate, args.seconds)
                after = settled_status(node, statuses)
                rows.append(_row(size, rate, sent, before, after, args.seconds))
                print(rows[-1], flush=True)
                before = after
    finally:
        proc.terminate()
        proc.wait(20)
        node.destroy_node()
        rclpy.shutdown()
    print(f"\n{os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f}, qos {args.qos}")
    print("| image | sent Hz | received | received Hz | overrun | missed |\n|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['size']} | {r['rate']:.0f} | {r['received']}/{r['sent']} | "
              f"{r['received_hz']:.0f} | {r['overrun']} | {r['missed']} |")
    return 0


def _row(size: str, rate: float, sent: int, before, after, seconds: float) -> dict:
    received = after.frames_received - before.frames_received
    return dict(size=size, rate=rate, sent=sent, received=received,
                received_hz=received / seconds,
                overrun=after.frames_overrun - before.frames_overrun,
                missed=after.frames_missed - before.frames_missed)


if __name__ == "__main__":
    sys.exit(main())
