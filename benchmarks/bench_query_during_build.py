"""Queries and memory of the node while it builds a map on a large cloud (issue 21 W14, issue 25
item 4): the node as its own process (``openmask3d node``) on a synthetic scene whose cloud is
densified to ``--points`` points (jittered copies, as a dense scan), default stand-in models.

Per case (``max_cloud_points`` values, ``--caps``; 0 = no cap, the code before W14), in one run:

1. a first build (``map_complete``), timed, with the node's peak RSS (``VmHWM``) and its RSS
   3 s after the map is ready;
2. queries "red" with the node idle (the baseline latency), then a second build of the same
   inputs with the build cache off (a full rebuild, as a re-optimised
   cloud gives) while a client queries "red" every ``--period`` s: latency p50 / p99 / max of
   the answers from the current map, and queries that failed.

    .venv/bin/python benchmarks/bench_query_during_build.py --points 5000000 --caps 0,1000000
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def dense_scene(out: Path, points: int, seed: int = 0) -> Path:
    """A synthetic scene whose cloud.ply is densified to ``points`` points (3 mm jitter)."""
    from openmask3d_ros.core.scene import SceneFolder, write_ply
    from openmask3d_ros.core.synthetic import make_scene
    root = make_scene(out, seed=seed, num_frames=100, width=320, height=240)
    pts, cols = SceneFolder(root).cloud()
    rng = np.random.default_rng(seed)
    pick = rng.integers(0, len(pts), points)
    dense = (pts[pick] + rng.normal(0, 0.003, (points, 3))).astype(np.float32)
    write_ply(Path(root) / "cloud.ply", dense, None if cols is None else cols[pick])
    return Path(root)


def _vm(pid: int, key: str) -> float:
    """VmRSS / VmHWM of ``pid`` in MiB (0 once it is gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def _pct(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


class Run:
    """One node process on ``scene`` and a client node in this process."""

    def __init__(self, scene: Path, cap: int, log: Path):
        import rclpy
        from openmask3d_ros.ros.client import OpenMask3DClient
        args = [sys.executable, "-m", "openmask3d_ros.cli", "node", "--params",
                "config/openmask3d.yaml"]
        for p in (f"scene_dir:={scene}", f"pipeline.max_cloud_points:={cap}",
                  "pipeline.cache.enabled:=false", "pipeline.changes.enabled:=false"):
            args += ["--param", p]
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        self.proc = subprocess.Popen(args, cwd=ROOT, env=env, stdout=log.open("w"),
                                     stderr=subprocess.STDOUT, start_new_session=True)
        self.ctx = rclpy.Context()
        rclpy.init(context=self.ctx)
        self.node = rclpy.create_node("bench_query_during_build", context=self.ctx)
        self.client = OpenMask3DClient(self.node)
        if not self.client.wait_for_node(120):
            raise RuntimeError(f"the node did not come up (log: {log})")

    def build(self, timeout: float = 1800) -> float:
        t0 = time.perf_counter()
        ok, msg = self.client.map_complete()
        if not ok:
            raise RuntimeError(f"map_complete refused: {msg}")
        self.client.wait_until_ready(timeout)
        return time.perf_counter() - t0

    def close(self) -> None:
        import rclpy
        self.proc.send_signal(2)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.node.destroy_node()
        rclpy.shutdown(context=self.ctx)


def idle_queries(run: Run, n: int = 40) -> list[float]:
    """Latencies (ms) of ``n`` queries with the node idle and a map ready (the baseline)."""
    lat = []
    for _ in range(n):
        q0 = time.perf_counter()
        run.client.query("red", top_k=3)
        lat.append((time.perf_counter() - q0) * 1e3)
    return lat


def rebuild_with_queries(run: Run, period: float) -> dict:
    """A second build while querying; latencies of answered queries (ms) and failures."""
    lat, failed, done = [], [], threading.Event()
    peak = [0.0]

    def sample():
        while not done.is_set():
            peak[0] = max(peak[0], _vm(run.proc.pid, "VmRSS"))
            time.sleep(0.05)
    threading.Thread(target=sample, daemon=True).start()
    ok, msg = run.client.map_complete()
    if not ok:
        raise RuntimeError(f"map_complete refused: {msg}")
    t0 = time.perf_counter()
    from openmask3d_ros.msg import PipelineStatus
    while True:
        st = run.client.last_status
        if st is not None and st.state == PipelineStatus.STATE_READY:
            break
        q0 = time.perf_counter()
        try:
            run.client.query("red", top_k=3)
            lat.append((time.perf_counter() - q0) * 1e3)
        except Exception as exc:     # noqa: BLE001 - a failed query is a result here
            failed.append(str(exc)[:80])
        time.sleep(max(period - (time.perf_counter() - q0), 0.0))
    done.set()
    return {"rebuild_s": time.perf_counter() - t0, "queries": len(lat), "failed": len(failed),
            "p50_ms": _pct(lat, 50), "p99_ms": _pct(lat, 99),
            "max_ms": max(lat) if lat else float("nan"), "rss_peak_mib": peak[0],
            "first_failure": failed[:1]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--points", type=int, default=5_000_000)
    ap.add_argument("--caps", default="0,1000000", help="max_cloud_points values, compared")
    ap.add_argument("--period", type=float, default=0.1, help="seconds between queries")
    ap.add_argument("--keep", help="keep the scene here")
    args = ap.parse_args()
    work = Path(args.keep or tempfile.mkdtemp(prefix="bench_qdb_"))
    work.mkdir(parents=True, exist_ok=True)
    base = dense_scene(work / "scene", args.points)
    print(f"scene {base}: {args.points} points; load {os.getloadavg()[0]:.2f}; "
          f"{os.cpu_count()} cores", flush=True)
    for cap in (int(c) for c in args.caps.split(",")):
        scene = work / f"scene_cap{cap}"
        shutil.rmtree(scene, ignore_errors=True)
        shutil.copytree(base, scene)
        run = Run(scene, cap, work / f"node_cap{cap}.log")
        try:
            rss0 = _vm(run.proc.pid, "VmRSS")
            first = run.build()
            hwm = _vm(run.proc.pid, "VmHWM")
            time.sleep(3)
            after = _vm(run.proc.pid, "VmRSS")
            idle = idle_queries(run)
            res = rebuild_with_queries(run, args.period)
        finally:
            run.close()
        print(f"max_cloud_points={cap}: first build {first:.1f} s, RSS {rss0:.0f} MiB before, "
              f"peak {hwm:.0f} MiB, {after:.0f} MiB 3 s after; idle queries p50 "
              f"{_pct(idle, 50):.1f} ms, p99 {_pct(idle, 99):.1f} ms; rebuild {res['rebuild_s']:.1f} s "
              f"with {res['queries']} queries answered ({res['failed']} failed): p50 "
              f"{res['p50_ms']:.1f} ms, p99 {res['p99_ms']:.1f} ms, max {res['max_ms']:.1f} ms; "
              f"RSS peak during the rebuild {res['rss_peak_mib']:.0f} MiB"
              + (f"; first failure: {res['first_failure'][0]}" if res["failed"] else ""),
              flush=True)
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
