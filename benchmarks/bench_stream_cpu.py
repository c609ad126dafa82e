"""What recording a 30 Hz camera stream costs the node: CPU seconds per stream second.

`openmask3d node` runs as its own process (as a user starts it, with the shipped Fast DDS profile)
and this script publishes a synthetic 640x480 posed RGB-D stream into it in real time (camera
topics best-effort like a camera driver, /tf poses 30 ms after their frame as a SLAM system
publishes them, a cloud, no trigger). The node's CPU time (user + system, all its threads, from
/proc) is read just before the first message and after the last one plus a short tail in which
it finishes the last keyframe, and divided by the stream's length. Configurations: raw colour +
raw depth, and JPEG colour (``compressed``) + ``compressedDepth``.

Each figure is printed beside a same-run baseline: ``--base DIR`` is a checkout of the old code
(e.g. ``git worktree add /tmp/base HEAD`` before the change); node processes from both are run
alternately, ``--repeat`` times each, so that load changes on a shared machine hit both alike.

    python benchmarks/bench_stream_cpu.py --base /tmp/base            # before/after
    python benchmarks/bench_stream_cpu.py                              # this checkout only
    python benchmarks/bench_stream_cpu.py --frames 150 --repeat 1      # quicker

Also printed per run: frames received and keyframes written (the counts must not change), the
node's idle CPU before the stream, and where its CPU went by thread name (Fast DDS threads are
named ``dds.*``; rclpy's executor and the recorder run in ``python`` threads).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
os.environ.setdefault("ROS_DOMAIN_ID", str(100 + os.getpid() % 100))

WIDTH, HEIGHT, RATE, STEP = 640, 480, 30.0, 10
CONFIGS = {"raw": dict(color_format="raw", depth_format="raw"),
           "compressed": dict(color_format="jpeg", depth_format="compressedDepth")}
TICK = os.sysconf("SC_CLK_TCK")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--frames", type=int, default=300, help="frames in the stream (30 Hz)")
    p.add_argument("--configs", default="raw,compressed", help="comma-separated: raw, compressed")
    p.add_argument("--base", default="", help="checkout of the old code to run as the baseline")
    p.add_argument("--code", default=str(ROOT),
                   help="checkout whose node is measured as 'after' (default: this one)")
    p.add_argument("--repeat", type=int, default=2, help="runs per configuration and code")
    p.add_argument("--qos", choices=("best_effort", "reliable"), default="best_effort")
    p.add_argument("--tail", type=float, default=0.5,
                   help="seconds after the last message still counted (the last keyframe)")
    p.add_argument("--work", default=str(Path(tempfile.gettempdir()) / "om3d_bench_stream"),
                   help="cache of the generated scene and bags")
    p.add_argument("--json", default="", help="write the runs here as JSON")
    p.add_argument("--keep", default="",
                   help="keep each run's node log and scene folder under this (new) folder")
    p.add_argument("--py-spy", default="",
                   help="path of a py-spy executable: profile the node during each stream into "
                        "<work>/profile_<config>_<code>.txt (diagnosis only: sampling costs CPU)")
    return p.parse_args(argv)


# -- the stream ------------------------------------------------------------------------------------
def make_bags(work: Path, frames: int) -> dict[str, Path]:
    """The synthetic scene recorded as one bag per configuration (cached in ``work``)."""
    from openmask3d_ros.core.synthetic import make_scene
    from openmask3d_ros.ros.bag import record_scene
    base = work / f"{WIDTH}x{HEIGHT}_{frames}"
    scene = base / "scene"
    if not (base / "scene.done").is_file():
        print(f"rendering {frames} frames of {WIDTH}x{HEIGHT} (once, cached in {base})",
              flush=True)
        make_scene(scene, seed=1, num_frames=frames, width=WIDTH, height=HEIGHT)
        (base / "scene.done").write_text("")
    bags = {}
    for name, fmt in CONFIGS.items():
        bag = base / f"{name}.bag"
        if not (base / f"{name}.done").is_file():
            import shutil
            shutil.rmtree(bag, ignore_errors=True)
            record_scene(scene, bag, rate_hz=RATE, poses=("tf",), pose_delay=0.03,
                         trigger=False, **fmt)
            (base / f"{name}.done").write_text("")
        bags[name] = bag
    return bags


def load_bag(bag: Path) -> tuple[list, list]:
    """(connections, [(topic, stamp_ns, bytes), ...]) of a bag, in stamp order."""
    from rosbags.rosbag2 import Reader
    with Reader(bag) as reader:
        conns = list(reader.connections)
        msgs = [(c.topic, stamp, bytes(raw)) for c, stamp, raw in reader.messages()]
    msgs.sort(key=lambda m: m[1])
    return conns, msgs


# -- the node's CPU ----------------------------------------------------------------------------------
def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process (all its threads)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def thread_cpu(pid: int) -> dict[str, float]:
    """CPU seconds per thread name (threads of one name summed)."""
    out: dict[str, float] = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            text = (task / "stat").read_text()
        except OSError:
            continue
        name = text[text.index("(") + 1:text.rindex(")")]
        fields = text.rsplit(")", 1)[1].split()
        out[name] = out.get(name, 0.0) + (int(fields[11]) + int(fields[12])) / TICK
    return out


def start_node(code: Path, log: Path, scene_dir: Path, config: str, qos: str):
    cmd = [sys.executable, "-m", "openmask3d_ros.cli", "node", "--params",
           "config/openmask3d.yaml", "--scene-dir", str(scene_dir),
           "--param", f"pipeline.frame_step:={STEP}", "--param", f"qos_reliability:={qos}",
           "--param", "pose_source:=tf", "--log-level", "info"]
    if config == "compressed":
        cmd += ["--color-transport", "compressed", "--depth-transport", "compressedDepth"]
    env = {k: v for k, v in os.environ.items()
           if k not in ("FASTDDS_DEFAULT_PROFILES_FILE", "FASTRTPS_DEFAULT_PROFILES_FILE")}
    env.update(PYTHONPATH=str(code), PYTHONUNBUFFERED="1", RCUTILS_COLORIZED_OUTPUT="0",
               OMP_NUM_THREADS="1")
    out = open(log, "w")
    return subprocess.Popen(cmd, cwd=code, env=env, stdout=out, stderr=subprocess.STDOUT,
                            start_new_session=True)


def stop_node(proc) -> None:
    import signal
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


def wait_idle(pid: int, timeout: float = 60.0, below: float = 0.15) -> float:
    """Wait until the node uses less than ``below`` of a core over a second (models loaded);
    returns its CPU rate over the last two seconds (cores)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        c0 = cpu_seconds(pid)
        time.sleep(1.0)
        if cpu_seconds(pid) - c0 < below:
            break
    c0, t0 = cpu_seconds(pid), time.monotonic()
    time.sleep(2.0)
    return (cpu_seconds(pid) - c0) / (time.monotonic() - t0)


def run_once(code: Path, label: str, config: str, bag: Path, args, ros_node, run_dir: Path
             ) -> dict:
    """One node process from ``code``, one stream; the measured figures."""
    from openmask3d_ros.ros.bag_play import msg_class, topic_qos
    from openmask3d_ros.ros.client import OpenMask3DClient

    conns, msgs = load_bag(bag)
    run_dir.mkdir(parents=True)
    log = run_dir / "node.log"
    proc = start_node(code, log, run_dir / "scene", config, args.qos)
    pubs = {}
    try:
        client = OpenMask3DClient(ros_node)
        if not client.wait_for_node(60):
            raise RuntimeError(f"node did not start: {log.read_text()[-2000:]}")
        idle = wait_idle(proc.pid)
        for c in conns:
            if c.topic not in pubs:
                pubs[c.topic] = ros_node.create_publisher(
                    msg_class(c.msgtype), c.topic,
                    topic_qos(c.topic, c.msgtype, 100, args.qos))
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and not all(
                p.get_subscription_count() > 0 for t, p in pubs.items()):
            time.sleep(0.05)
        time.sleep(1.5)      # discovery completes on the node's side too
        first = msgs[0][1]
        spy = None
        if args.py_spy:
            out = Path(args.work) / f"profile_{config}_{label}.txt"
            spy = subprocess.Popen([args.py_spy, "record", "-p", str(proc.pid), "-t", "-f", "raw",
                                    "-r", "200", "-o", str(out), "-d",
                                    str(int(len(msgs) and (msgs[-1][1] - msgs[0][1]) / 1e9) + 1)],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            time.sleep(1.0)
        threads0, cpu0 = thread_cpu(proc.pid), cpu_seconds(proc.pid)
        t0 = time.monotonic()
        for topic, stamp, data in msgs:
            delay = t0 + (stamp - first) / 1e9 - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            pubs[topic].publish(data)
        late = time.monotonic() - (t0 + (msgs[-1][1] - first) / 1e9)
        time.sleep(args.tail)
        cpu1, threads1 = cpu_seconds(proc.pid), thread_cpu(proc.pid)
        if spy is not None:
            spy.wait(30)
        stream_s = (msgs[-1][1] - first) / 1e9
        st = client.wait_for_status(lambda s: s.frames_received >= args.frames and
                                    s.keyframes >= args.frames // STEP, 10)
        st = client.wait_for_status(lambda s: True, 5)
        client.destroy()
        per_thread = {k: round(v - threads0.get(k, 0.0), 2) for k, v in threads1.items()}
        return dict(code=label, config=config, stream_s=round(stream_s, 2),
                    cpu_s=round(cpu1 - cpu0, 2), cores=round((cpu1 - cpu0) / stream_s, 3),
                    idle_cores=round(idle, 3), publish_late_s=round(late, 2),
                    frames_received=st.frames_received, keyframes=st.keyframes,
                    frames_missed=st.frames_missed, load1=os.getloadavg()[0],
                    threads={k: v for k, v in sorted(per_thread.items(),
                                                     key=lambda kv: -kv[1]) if v >= 0.05})
    finally:
        for p in pubs.values():
            ros_node.destroy_publisher(p)
        stop_node(proc)


def main(argv=None) -> int:
    args = parse_args(argv)
    from openmask3d_ros.ros.dds import apply_profile
    apply_profile()
    import rclpy
    codes = [("after", Path(args.code).resolve())]
    if args.base:
        codes.insert(0, ("before", Path(args.base).resolve()))
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    bags = make_bags(work, args.frames)
    configs = [c.strip() for c in args.configs.split(",") if c.strip()]
    print(f"machine: {os.cpu_count()} cores, load average {os.getloadavg()}; stream "
          f"{args.frames} frames {WIDTH}x{HEIGHT} at {RATE:g} Hz, camera QoS {args.qos}",
          flush=True)
    rclpy.init()
    ros_node = rclpy.create_node("openmask3d_bench_stream")
    runs = []
    try:
        with tempfile.TemporaryDirectory(prefix="om3d_stream_") as tmp:
            tmp = args.keep or tmp
            for r in range(args.repeat):
                for config in configs:
                    for label, code in codes:
                        res = run_once(code, label, config, bags[config], args, ros_node,
                                       Path(tmp) / f"{config}_{label}_{r}")
                        runs.append(res)
                        top = ", ".join(f"{k} {v:.2f}" for k, v in list(res["threads"].items())[:5])
                        print(f"{config:10s} {label:6s} {res['cores']:.3f} cores "
                              f"({res['cpu_s']:.2f} CPU s / {res['stream_s']:.1f} s; idle "
                              f"{res['idle_cores']:.3f}); frames {res['frames_received']}, "
                              f"keyframes {res['keyframes']}, missed {res['frames_missed']}; "
                              f"load {res['load1']:.1f}; threads: {top}", flush=True)
    finally:
        ros_node.destroy_node()
        rclpy.shutdown()
    print("\nmedian CPU seconds per stream second (cores):")
    for config in configs:
        line = [f"  {config:10s}"]
        for label, _ in codes:
            vals = [r["cores"] for r in runs if r["config"] == config and r["code"] == label]
            line.append(f"{label} {statistics.median(vals):.3f} "
                        f"({', '.join(f'{v:.3f}' for v in vals)})")
        print("  ".join(line))
    if args.json:
        Path(args.json).write_text(json.dumps(runs, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
