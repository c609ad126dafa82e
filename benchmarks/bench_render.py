#!/usr/bin/env python
"""`openmask3d render` timing: both pictures (instance colours; query heatmap with 5 hits
outlined) of a synthetic room of ``--points`` points, in-process, plus PNG encoding.

The room: floor, two walls and ``--boxes`` box surfaces, each one instance (random per-instance
values stand in for a query's scores). Prints the median of ``--runs`` runs.

    .venv/bin/python benchmarks/bench_render.py --points 1000000 --runs 3
"""
from __future__ import annotations

import argparse
import io
import os
import platform
import statistics
import time

import numpy as np
from _common import synthetic_room


class _Hit:
    def __init__(self, m, score, lo, hi):
        self.instance_id, self.score, self.bbox_min, self.bbox_max = m, score, lo, hi


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--points", type=int, default=1_000_000)
    ap.add_argument("--boxes", type=int, default=40)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--size", default="640x480", help="each view, WIDTHxHEIGHT")
    args = ap.parse_args()
    from openmask3d_ros.core.instance_map import InstanceMap
    from openmask3d_ros.core.picture import render_instances_picture, render_query_picture

    size = tuple(int(v) for v in args.size.split("x"))
    points, _, indices = synthetic_room(args.points, args.boxes)
    points = points.astype(np.float32)
    imap = InstanceMap(points, indices, np.eye(len(indices), 8, dtype=np.float32))
    values = np.random.default_rng(1).uniform(0, 1, len(indices))
    order = np.argsort(-values)[:5]
    hits = [_Hit(int(m), float(values[m]), points[indices[m]].min(0), points[indices[m]].max(0))
            for m in order]
    timings = {"instances": [], "query": [], "png": []}
    for _ in range(args.runs):
        t0 = time.perf_counter()
        render_instances_picture(imap, size=size)
        timings["instances"].append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        pic = render_query_picture(imap, values, hits, "benchmark", size=size)
        timings["query"].append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        pic.save(io.BytesIO(), format="PNG", optimize=True)
        timings["png"].append(time.perf_counter() - t0)
    print(f"{args.points} points, {len(indices)} instances, views {args.size}, "
          f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"median of {args.runs}")
    for name, ts in timings.items():
        print(f"  {name:>9}: {statistics.median(ts):.3f} s  (min {min(ts):.3f})")


if __name__ == "__main__":
    main()
