#!/usr/bin/env python
"""Proposal stage timing and peak memory: Mask3D (random weights, 150 queries) vs geometric.

Each backend runs in its own subprocess so that its peak RSS (ru_maxrss, which sees torch and
MinkowskiEngine allocations, unlike tracemalloc) is its own. The cloud is a synthetic room
(floor, two walls, a dozen boxes) of ``--points`` points.

    .venv/bin/python benchmarks/bench_proposals.py --points 100000 --runs 3
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time

from _common import synthetic_room


def worker(backend: str, n_points: int, runs: int, num_queries: int) -> dict:
    import torch
    torch.manual_seed(0)
    points, colors, _ = synthetic_room(n_points, random_sizes=True, colors=True)
    t0 = time.perf_counter()
    if backend == "mask3d":
        from openmask3d_ros.core.proposals.mask3d import Mask3DBackend
        model = Mask3DBackend(checkpoint=None, device="cpu", num_queries=num_queries)
    else:
        from openmask3d_ros.core.config import ProposalConfig
        from openmask3d_ros.core.proposals.geometric import GeometricProposals
        model = GeometricProposals(ProposalConfig())
    build_s = time.perf_counter() - t0
    rss_built = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    times, n_masks, extra = [], 0, {}
    for _ in range(runs):
        t = time.perf_counter()
        masks = model.propose(points, colors).masks
        times.append(time.perf_counter() - t)
        n_masks = int(masks.shape[1])
        extra = dict(getattr(model, "last_timing", {}) or {})
    return {"backend": backend, "points": n_points, "runs": runs, "build_s": build_s,
            "median_s": statistics.median(times), "min_s": min(times), "times_s": times,
            "load_avg_1min": os.getloadavg()[0], "masks": n_masks,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "rss_after_build_mb": rss_built, "threads": torch.get_num_threads(), **extra}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--points", type=int, default=100_000)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--queries", type=int, default=150)
    ap.add_argument("--backends", default="mask3d,geometric")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker, args.points, args.runs, args.queries)))
        return 0

    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"python {platform.python_version()}")
    results = []
    for backend in args.backends.split(","):
        cmd = [sys.executable, __file__, "--worker", backend, "--points", str(args.points),
               "--runs", str(args.runs), "--queries", str(args.queries)]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            tail = (proc.stderr.strip().splitlines() or ["?"])[-1]
            print(f"{backend}: FAILED ({tail})")
            continue
        res = json.loads(proc.stdout.strip().splitlines()[-1])
        results.append(res)
        extra = ""
        if "voxels" in res:
            extra = (f", {int(res['voxels'])} voxels, voxelize {res['voxelize_s']:.2f} s, "
                     f"network {res['network_s']:.2f} s")
        print(f"{backend:10s} {res['points']} points: median {res['median_s']:.2f} s, min "
              f"{res['min_s']:.2f} s over "
              f"{res['runs']} runs ({', '.join(f'{t:.2f}' for t in res['times_s'])}), "
              f"{res['masks']} masks, peak RSS {res['peak_rss_mb']:.0f} MB "
              f"(after build {res['rss_after_build_mb']:.0f} MB), build {res['build_s']:.1f} s"
              f"{extra}; load average after: {res['load_avg_1min']:.1f}")
    if len(results) == 2:
        a, b = results
        print(f"ratio {a['backend']}/{b['backend']}: time x{a['median_s'] / b['median_s']:.1f}, "
              f"peak RSS x{a['peak_rss_mb'] / b['peak_rss_mb']:.1f}")
    return 0 if results else 1


if __name__ == "__main__":
    raise SystemExit(main())
