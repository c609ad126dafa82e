"""The RViz views of one query answer: how long the node takes to build and publish them.

A map of ``--instances`` instances over ``--points`` points (a 4 x 4 m layer cut into slabs, colour
stand-in features, as bench_query_payload.py) is published once (``MapPublishers.publish_map``);
then the answer to a query with every instance as a hit (top_k = instances, min relevance 0) has
its views published ``--repeats`` times by ``MapPublishers.publish_query``: detections, heatmap,
hit markers and hit points, each built and handed to rclpy (the work of the node's views thread
for one answer). Printed: p50 / p95 / min wall ms and CPU ms per answer, in a process of its own
per code tree, trees alternated ``--rounds`` times: ``--code DIR`` (repeatable) adds another
checkout's openmask3d_ros (e.g. ``git worktree add /tmp/base HEAD``) as a baseline.

    OMP_NUM_THREADS=1 python benchmarks/bench_query_views.py --code /tmp/base
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")


def _measure(args) -> dict:
    """In this process: the map, one answer, its views published ``repeats`` times."""
    import rclpy

    from openmask3d_ros.core.encoders.colour import ColourEncoder
    from openmask3d_ros.core.instance_map import InstanceMap
    from openmask3d_ros.core.query import QueryEngine
    from openmask3d_ros.ros.visualization import MapPublishers

    rng = np.random.default_rng(0)
    pts = (rng.uniform(0, 1, (args.points, 3)) * [4.0, 4.0, 0.05]).astype(np.float32)
    pts = pts[np.argsort(pts[:, 0], kind="stable")]
    bounds = np.linspace(0, len(pts), args.instances + 1).astype(np.int64)
    indices = [np.arange(bounds[i], bounds[i + 1]) for i in range(args.instances)]
    enc = ColourEncoder()
    feats = enc.encode_text([["red", "green", "blue", "yellow"][i % 4] + " white"
                             for i in range(args.instances)])
    engine = QueryEngine(InstanceMap(pts, indices, feats,
                                     {"models": {"image_encoder": enc.name}}), enc)
    rclpy.init()
    node = rclpy.create_node("bench_query_views")
    try:
        viz = MapPublishers(node, "map")
        viz.publish_map(engine)
        answer = engine.ask("red", top_k=args.instances, min_relevance=0.0,
                            include_structure=True)
        values = answer.instance_values
        values = values() if callable(values) else values
        wall, cpu = [], []
        for i in range(args.repeats + 3):
            t, c = time.perf_counter(), time.process_time()
            viz.publish_query(answer.query, answer.results, values)
            if i >= 3:                                     # 3 warm-up answers
                wall.append(time.perf_counter() - t)
                cpu.append(time.process_time() - c)
        viz.destroy()
    finally:
        node.destroy_node()
        rclpy.shutdown()
    return {"hits": len(answer.results), "wall_ms": [1000 * w for w in wall],
            "cpu_ms": [1000 * c for c in cpu]}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--instances", type=int, default=150)
    ap.add_argument("--points", type=int, default=60_000)
    ap.add_argument("--repeats", type=int, default=60)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--code", action="append", default=[], help="a baseline checkout")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        sys.path.insert(0, args.child)
        print("RESULT " + json.dumps(_measure(args)))
        return 0
    trees = [str(ROOT)] + [str(Path(c).resolve()) for c in args.code]
    print(f"{args.instances} hits over {args.points} points, {args.repeats} answers per run, "
          f"load {os.getloadavg()[0]:.2f}, OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')}")
    print("| code | round | hits | wall p50 ms | p95 | min | CPU p50 ms |\n|---|---|---|---|---|---|---|")
    for r in range(args.rounds):
        for tree in trees:
            cmd = [sys.executable, __file__, "--child", tree, "--instances", str(args.instances),
                   "--points", str(args.points), "--repeats", str(args.repeats)]
            out = subprocess.run(cmd, capture_output=True, text=True)
            lines = [ln for ln in out.stdout.splitlines() if ln.startswith("RESULT ")]
            if out.returncode or not lines:
                print(out.stdout[-2000:], out.stderr[-2000:])
                return 1
            res = json.loads(lines[-1][7:])
            w, c = np.array(res["wall_ms"]), np.array(res["cpu_ms"])
            print(f"| {tree} | {r + 1} | {res['hits']} | {np.median(w):.1f} | "
                  f"{np.percentile(w, 95):.1f} | {w.min():.1f} | {np.median(c):.1f} |")
    print(f"load after {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
