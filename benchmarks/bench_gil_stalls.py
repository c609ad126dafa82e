"""How long a map build holds the GIL at a stretch: what starves the node's query callbacks while
it builds (issue 21 W14). The build runs in a worker thread, as in the node; a watcher thread
sleeps 1 ms in a loop and records every wake-up later than ``--stall-ms``, with the build
thread's stack at that moment. Printed: the stalls' count, total and longest, and the code
lines that held the GIL longest in all.

Each code version runs in its own process on the same scene (``--code DIR``: another checkout,
e.g. ``git worktree add /tmp/base <commit>``, compared in the same run):

    .venv/bin/python benchmarks/bench_gil_stalls.py --points 300000 --code /tmp/base --code .
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

CHILD = r"""
import collections, json, sys, threading, time, traceback
from openmask3d_ros.core.config import PipelineConfig
from openmask3d_ros.core.models import build_models
from openmask3d_ros.core.pipeline import run_pipeline
scene, out, stall = sys.argv[1], sys.argv[2], float(sys.argv[3]) / 1e3
cfg = PipelineConfig().updated({"cache.enabled": False, "changes.enabled": False})
cfg = cfg.updated({"max_cloud_points": 0}) if hasattr(cfg, "max_cloud_points") else cfg
models = build_models(cfg)
done = threading.Event()
def build():
    run_pipeline(scene, cfg, models=models, out_dir=out)
    done.set()
worker = threading.Thread(target=build)
stalls, where = [], collections.Counter()
t0 = time.perf_counter()
worker.start()
while not done.is_set():
    t = time.perf_counter()
    time.sleep(0.001)
    dt = time.perf_counter() - t
    if dt > stall:
        frame = sys._current_frames().get(worker.ident)
        top = traceback.extract_stack(frame)[-1] if frame else None
        where[f"{top.filename.split('site-packages/')[-1]}:{top.lineno} {top.name}"
              if top else "?"] += dt
        stalls.append(dt)
import openmask3d_ros
print(json.dumps({"code": str(openmask3d_ros.__file__), "build_s": time.perf_counter() - t0,
                  "stalls": len(stalls),
                  "total_ms": 1e3 * sum(stalls), "max_ms": 1e3 * max(stalls, default=0),
                  "where": [(w, round(1e3 * t)) for w, t in where.most_common(4)]}))
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--points", type=int, default=300_000)
    ap.add_argument("--stall-ms", type=float, default=50.0)
    ap.add_argument("--code", action="append", help="checkout(s) to compare (default: this one)")
    args = ap.parse_args()
    from bench_query_during_build import dense_scene
    work = Path(tempfile.mkdtemp(prefix="bench_gil_"))
    scene = dense_scene(work / "scene", args.points)
    print(f"scene: {args.points} points; load {os.getloadavg()[0]:.2f}; {os.cpu_count()} cores")
    for k, code in enumerate(args.code or [str(ROOT)]):
        env = dict(os.environ, PYTHONPATH=str(Path(code).resolve()), OMP_NUM_THREADS="2")
        run = subprocess.run([sys.executable, "-c", CHILD, str(scene), str(work / f"map{k}"),
                              str(args.stall_ms)], env=env, capture_output=True, text=True,
                             cwd=work)      # not a checkout: PYTHONPATH picks the code
        if run.returncode:
            raise SystemExit(run.stderr[-2000:])
        r = json.loads(run.stdout.strip().splitlines()[-1])
        print(f"{r['code']}: build {r['build_s']:.1f} s; {r['stalls']} stalls > {args.stall_ms:g} ms, "
              f"{r['total_ms']:.0f} ms in all, longest {r['max_ms']:.0f} ms; longest in all at "
              + "; ".join(f"{w} ({t} ms)" for w, t in r["where"]), flush=True)


if __name__ == "__main__":
    main()
