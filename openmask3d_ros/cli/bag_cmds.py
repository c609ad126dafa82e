"""``openmask3d bag-record`` (a scene folder as a ROS 2 bag) and ``openmask3d bag-play`` (replay a
bag with rclpy), both on top of ros/bag.py."""
from __future__ import annotations


def register(subparsers) -> None:
    r = subparsers.add_parser("bag-record", help="record a scene folder as a ROS 2 bag",
                              description="Write a scene folder's frames (colour, depth, "
                                          "camera_info), poses (/tf, /tf_static and/or a "
                                          "PoseStamped topic), cloud and a map-complete trigger "
                                          "as a ROS 2 bag (rosbags).")
    r.add_argument("scene", help="scene folder")
    r.add_argument("bag", help="output bag directory (must not exist)")
    r.add_argument("--rate", type=float, default=10.0, help="frame rate of the stamps (Hz)")
    r.add_argument("--depth-encoding", choices=("16UC1", "32FC1"), default="16UC1")
    r.add_argument("--color-encoding", choices=("rgb8", "bgr8", "rgba8", "bgra8", "mono8"),
                   default="rgb8")
    r.add_argument("--color-format", choices=("raw", "jpeg", "png"), default="raw",
                   help="jpeg/png: sensor_msgs/CompressedImage on <colour topic>/compressed")
    r.add_argument("--depth-format", choices=("raw", "compressedDepth"), default="raw",
                   help="compressedDepth: image_transport's format on <depth topic>/"
                        "compressedDepth")
    r.add_argument("--poses", choices=("tf", "pose", "both"), default="tf",
                   help="camera poses as /tf, as geometry_msgs/PoseStamped on /camera_pose, "
                        "or both")
    r.add_argument("--pose-delay", type=float, default=0.0,
                   help="seconds the pose messages follow their frame (as from a SLAM system)")
    r.add_argument("--no-trigger", action="store_true", help="leave out the map-complete message")
    r.add_argument("--max-frames", type=int, default=None)
    r.set_defaults(func=run_bag_record)

    b = subparsers.add_parser("bag-play", help="replay a ROS 2 bag with rclpy",
                              description="Publish a bag's messages with their recorded timing "
                                          "(with the shipped Fast DDS profile unless one is set).")
    b.add_argument("bag", help="bag directory")
    b.add_argument("--rate", type=float, default=1.0,
                   help="speed factor: 1 = real time, 0 = as fast as possible")
    b.add_argument("--clock", action="store_true",
                   help="publish /clock from the bag stamps (for --use-sim-time nodes)")
    b.add_argument("--clock-hz", type=float, default=40.0, help="/clock ticks per second")
    b.add_argument("--qos", choices=("reliable", "best-effort"), default="reliable",
                   help="camera topics' reliability (best-effort: like a camera driver)")
    b.add_argument("--compress", action="store_true",
                   help="publish raw colour images as JPEG on <topic>/compressed and depth as "
                        "compressedDepth on <topic>/compressedDepth")
    b.add_argument("--exclude", action="append", default=[], metavar="TOPIC",
                   help="do not publish this topic (repeatable), e.g. /openmask3d/map_complete")
    b.add_argument("--wait", type=float, default=5.0,
                   help="seconds to wait for subscribers before publishing")
    b.add_argument("--delay", type=float, default=1.5,
                   help="seconds to wait after subscribers appear, so discovery completes on "
                        "their side too")
    b.set_defaults(func=run_bag_play)


def run_bag_record(args) -> int:
    from ..ros.bag import bag_summary, record_scene
    poses = ("tf", "pose") if args.poses == "both" else (args.poses,)
    out = record_scene(args.scene, args.bag, rate_hz=args.rate, depth_encoding=args.depth_encoding,
                       color_encoding=args.color_encoding, color_format=args.color_format,
                       depth_format=args.depth_format, poses=poses, pose_delay=args.pose_delay,
                       trigger=not args.no_trigger, max_frames=args.max_frames)
    summary = bag_summary(out)
    width = max(map(len, summary), default=0)
    for topic, (msgtype, count) in summary.items():
        print(f"{topic:{width}s}  {msgtype:32s} {count}")
    return 0


def run_bag_play(args) -> int:
    from ..ros.bag import play_bag
    counts = play_bag(args.bag, rate=args.rate, exclude=args.exclude,
                      wait_for_subscribers=args.wait, start_delay=args.delay, clock=args.clock,
                      clock_hz=args.clock_hz, camera_qos=args.qos.replace("-", "_"),
                      compress=args.compress)
    width = max(map(len, counts), default=0)
    for topic, count in sorted(counts.items()):
        print(f"{topic:{width}s}  {count}")
    return 0
