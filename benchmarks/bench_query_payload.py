"""Query round trip over DDS: QueryObjects answered by ros/query_service.py in a server process,
called by OpenMask3DClient from this process, as a planner calls the node.

The server holds a map of ``--instances`` instances over a synthetic cloud (the cloud cut into
contiguous slabs; colour stand-in features). For each ``points_mode`` the client prints p50/p95
of its round trip for top_k = all instances, the node's own answer time (the "(x ms)" its reply
ends with: query + message building, without serialisation and transport), the server's CPU
per call (from /proc, its views thread included) and the points returned. ``--markers``: the
server also publishes the RViz views of every answer as the node does
(MapPublishers.publish_query_later, off the reply path, at most ``--views-rate`` Hz).
``--code DIR``: serve with the openmask3d_ros of another tree (a baseline in the same run).
Both processes load the shipped Fast DDS profile (config/fastdds.xml), as the node does and as
docs/ros.md tells a planner to (a 720 kB reply does not fit Fast DDS's default shared memory).

    python benchmarks/bench_query_payload.py                  # 150 instances, 60k points
    python benchmarks/bench_query_payload.py --points 1000000 --repeats 10
    python benchmarks/bench_query_payload.py --markers --views-rate 1000   # views of every answer
"""
from __future__ import annotations

import argparse
import inspect
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--instances", type=int, default=150)
    p.add_argument("--points", type=int, default=60000)
    p.add_argument("--repeats", type=int, default=30)
    p.add_argument("--markers", action="store_true",
                   help="publish the RViz views of every answer, as the node does")
    p.add_argument("--views-rate", type=float, default=None,
                   help="with --markers: the views' max rate in Hz (default: the node's "
                        "views_max_rate default)")
    p.add_argument("--code", type=Path, default=ROOT,
                   help="repository whose openmask3d_ros serves (default: this one)")
    p.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)   # the child
    args = p.parse_args(argv)
    sys.path.insert(0, str(args.code.resolve()))
    if not args.serve:           # the child inherits it
        from openmask3d_ros.ros.dds import apply_profile
        apply_profile()
    if args.serve:
        return _serve(args)
    return _client(args, argv if argv is not None else sys.argv[1:])


def _serve(args) -> int:
    """The server process: answer until stdin closes."""
    from openmask3d_ros.core.encoders.colour import ColourEncoder
    from openmask3d_ros.core.instance_map import InstanceMap
    from openmask3d_ros.core.query import QueryEngine
    from openmask3d_ros.ros.query_service import QuerySettings, served
    from openmask3d_ros.ros.visualization import MapPublishers

    rng = np.random.default_rng(0)
    # a 4 x 4 m, 5 cm thick layer: surface-like density, as a fused scan (~1 cm spacing at 160k)
    pts = (rng.uniform(0, 1, (args.points, 3)) * [4.0, 4.0, 0.05]).astype(np.float32)
    pts = pts[np.argsort(pts[:, 0], kind="stable")]          # chunks = slabs along x
    bounds = np.linspace(0, len(pts), args.instances + 1).astype(np.int64)
    indices = [np.arange(bounds[i], bounds[i + 1]) for i in range(args.instances)]
    enc = ColourEncoder()
    feats = enc.encode_text([["red", "green", "blue", "yellow"][i % 4] + " white"
                             for i in range(args.instances)])
    imap = InstanceMap(pts, indices, feats, {"models": {"image_encoder": enc.name}})
    engine = QueryEngine(imap, enc)
    viz = None

    def publish_hits(answer, stamp, frame, *older):     # the node's way (--markers)
        if older:      # a tree before QueryAnswer.instance_values: (text, results, stamp, frame)
            from openmask3d_ros.core.render import instance_values
            text, results, stamp = answer, stamp, frame
            viz.publish_query_later(text, results, lambda: instance_values(
                engine, text, include_structure=True), stamp)
        else:
            viz.publish_query_later(answer.query, answer.results, answer.instance_values, stamp)
    settings = QuerySettings(min_relevance=0.55, publish_markers=args.markers)
    with served(engine, settings, publish_hits if args.markers else None) as server:
        if args.markers:
            kw = {}
            if "max_rate" in inspect.signature(MapPublishers).parameters:   # older trees: none
                from openmask3d_ros.ros.params import NODE_PARAMETERS
                kw["max_rate"] = args.views_rate or NODE_PARAMETERS["views_max_rate"].default
            viz = MapPublishers(server, "map", **kw)
            viz.publish_map(engine)
        print("ready", flush=True)
        sys.stdin.read()
        if viz is not None:
            viz.destroy()
    return 0


def _cpu_s(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` so far (all its threads)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _client(args, argv) -> int:
    import rclpy

    from openmask3d_ros.ros.client import OpenMask3DClient
    server = subprocess.Popen([sys.executable, __file__, "--serve", *argv],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        if server.stdout.readline().strip() != "ready":
            print("the server did not start")
            return 1
        rclpy.init()
        planner = rclpy.create_node("planner")
        client = OpenMask3DClient(planner)
        try:
            if not client._query.wait_for_service(timeout_sec=20):
                print("service did not appear")
                return 1
            _measure(client, args, server.pid)
        finally:
            client.destroy()
            planner.destroy_node()
            rclpy.shutdown()
    finally:
        server.stdin.close()
        server.wait(30)
    return 0


def _measure(client, args, server_pid: int) -> None:
    from openmask3d_ros.srv import QueryObjects
    R = QueryObjects.Request
    rate = f" at most {args.views_rate or 'default'} Hz" if args.markers else ""
    from openmask3d_ros.ros.dds import PROFILE_VARIABLES
    dds = next((os.environ[v] for v in PROFILE_VARIABLES if os.environ.get(v)), "defaults")
    print(f"server code {args.code.resolve()}; DDS profile {dds}; {args.instances} instances, {args.points} "
          f"points, {args.repeats} calls per row, markers {'on' if args.markers else 'off'}"
          f"{rate}, load average {' '.join(f'{v:.2f}' for v in os.getloadavg())} on "
          f"{os.cpu_count()} cores")
    print("| points_mode | p50 ms | p95 ms | node answer p50 ms | server CPU ms/call | client "
          "CPU ms/call | rclpy (de)serialise ms | instances | points returned |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name, mode in (("all", R.POINTS_ALL), ("indices", R.POINTS_INDICES),
                       ("voxel 0.05 m", R.POINTS_VOXEL), ("none", R.POINTS_NONE)):
        times, inside, resp = [], [], None
        for i in range(args.repeats + 2):
            if i == 2:
                cpu0, server0 = time.process_time(), _cpu_s(server_pid)
            t = time.perf_counter()
            resp = client.query_raw("white", top_k=args.instances, min_relevance=0.0,
                                    include_structure=True, points_mode=mode, voxel_size=0.05)
            if i >= 2:                       # the first calls warm up discovery and caches
                times.append(time.perf_counter() - t)
                inside.append(float(re.findall(r"\(([\d.]+) ms\)$", resp.message)[0]))
        time.sleep(0.3)                      # the views of the last answers are counted too
        cpu = (time.process_time() - cpu0) / args.repeats
        server_cpu = (_cpu_s(server_pid) - server0) / args.repeats
        n_pts = sum(m.points.width for m in resp.instances)
        print(f"| {name} | {np.percentile(times, 50) * 1e3:.1f} | "
              f"{np.percentile(times, 95) * 1e3:.1f} | {np.percentile(inside, 50):.1f} | "
              f"{server_cpu * 1e3:.1f} | {cpu * 1e3:.1f} | {_conversion_ms(resp):.1f} | "
              f"{len(resp.instances)} | {n_pts} |")


def _conversion_ms(response, repeats: int = 5) -> float:
    """p50 of rclpy serialising + deserialising ``response`` in this process: the part of the
    round trip that rclpy spends on the message on both ends, whatever builds it."""
    from rclpy.serialization import deserialize_message, serialize_message
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        deserialize_message(serialize_message(response), type(response))
        times.append(time.perf_counter() - t)
    return float(np.percentile(times, 50) * 1e3)


if __name__ == "__main__":
    sys.exit(main())
