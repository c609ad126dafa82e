"""Query round trip over DDS: QueryObjects answered by ros/query_service.py, called by the client.

A map of ``--instances`` instances over a synthetic scene cloud (the cloud split into contiguous
chunks; colour stand-in features) is served by one node and queried from another (same process,
separate executors, real DDS transport on localhost). For each ``points_mode`` it prints p50/p95
of the client's round trip for top_k = all instances, the node's own answer time (the "(x ms)"
its reply ends with: query + message building, without serialisation and transport) and the
points returned. ``--markers``: the server also publishes the RViz views of every answer as the
node does (MapPublishers.publish_query_later, off the reply path).

    python benchmarks/bench_query_payload.py                  # 150 instances, 60k points
    python benchmarks/bench_query_payload.py --points 1000000 --repeats 10
"""
from __future__ import annotations

import argparse
import os
import re
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--instances", type=int, default=150)
    p.add_argument("--points", type=int, default=60000)
    p.add_argument("--repeats", type=int, default=30)
    p.add_argument("--markers", action="store_true",
                   help="publish the RViz views of every answer, as the node does")
    args = p.parse_args(argv)

    import rclpy

    from openmask3d_ros.core.encoders.colour import ColourEncoder
    from openmask3d_ros.core.instance_map import InstanceMap
    from openmask3d_ros.core.query import QueryEngine
    from openmask3d_ros.core.render import instance_values
    from openmask3d_ros.ros.client import OpenMask3DClient
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

    def publish_hits(text, results, stamp, frame):      # the node's way (--markers)
        viz.publish_query_later(text, results, lambda: instance_values(
            engine, text, include_structure=True), stamp)
    settings = QuerySettings(min_relevance=0.55, publish_markers=args.markers)
    with served(engine, settings, publish_hits if args.markers else None) as server:
        if args.markers:
            viz = MapPublishers(server, "map")
            viz.publish_map(engine)
        planner = rclpy.create_node("planner", context=server.context)
        client = OpenMask3DClient(planner)
        try:
            if not client._query.wait_for_service(timeout_sec=20):
                print("service did not appear")
                return 1
            _measure(client, args)
        finally:
            client.destroy()
            if viz is not None:
                viz.destroy()
            planner.destroy_node()
    return 0


def _measure(client, args) -> None:
    from openmask3d_ros.srv import QueryObjects
    R = QueryObjects.Request
    print(f"{args.instances} instances, {args.points} points, {args.repeats} calls per row, "
          f"markers {'on' if args.markers else 'off'}, load average "
          f"{' '.join(f'{v:.2f}' for v in os.getloadavg())} on {os.cpu_count()} cores")
    print("| points_mode | p50 ms | p95 ms | node answer p50 ms | CPU ms/call | rclpy (de)serialise"
          " ms | instances | points returned |")
    print("|---|---|---|---|---|---|---|---|")
    for name, mode in (("all", R.POINTS_ALL), ("indices", R.POINTS_INDICES),
                       ("voxel 0.05 m", R.POINTS_VOXEL), ("none", R.POINTS_NONE)):
        times, inside, resp = [], [], None
        for i in range(args.repeats + 2):
            if i == 2:
                cpu0 = time.process_time()
            t = time.perf_counter()
            resp = client.query_raw("white", top_k=args.instances, min_relevance=0.0,
                                    include_structure=True, points_mode=mode, voxel_size=0.05)
            if i >= 2:                       # the first calls warm up discovery and caches
                times.append(time.perf_counter() - t)
                inside.append(float(re.findall(r"\(([\d.]+) ms\)$", resp.message)[0]))
        cpu = (time.process_time() - cpu0) / args.repeats
        n_pts = sum(m.points.width for m in resp.instances)
        print(f"| {name} | {np.percentile(times, 50) * 1e3:.1f} | "
              f"{np.percentile(times, 95) * 1e3:.1f} | {np.percentile(inside, 50):.1f} | "
              f"{cpu * 1e3:.1f} | {_conversion_ms(resp):.1f} | {len(resp.instances)} | {n_pts} |")


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
