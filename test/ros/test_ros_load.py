"""Load: 4 client processes' worth of threads (each its own ROS context and node) send 1000
queries in all to the node (a subprocess) while it records frames at 10 Hz. Every query must be
answered, none later than LATE_S; p50/p95/max are printed (benchmarks/RESULTS.md)."""
import os
import shutil
import threading
import time

import numpy as np
import pytest
import rclpy

from openmask3d_ros.core.pipeline import run_pipeline
from openmask3d_ros.core.scene import SceneFolder
from openmask3d_ros.core.synthetic import make_scene
from openmask3d_ros.ros.client import OpenMask3DClient, OpenMask3DError

from test_ros_durability import Feeder, start_node, stop  # noqa: E402  (same folder)

CLIENTS = 4
QUERIES = 1000
LATE_S = float(os.environ.get("OM3D_LOAD_LATE_S", 5.0))
TEXTS = ("red", "green", "blue", "yellow", "a black tray", "white")


def client_thread(n: int, latencies: list, failures: list, resent: list,
                  go: threading.Event) -> None:
    ctx = rclpy.Context()
    rclpy.init(context=ctx)
    node = rclpy.create_node(f"om3d_load_client_{n}", context=ctx)
    client = OpenMask3DClient(node)
    try:
        if not client.wait_for_node(30):
            failures.append(f"client {n}: node not found")
            return
        go.wait()
        for i in range(QUERIES // CLIENTS):
            t0 = time.perf_counter()
            try:
                client.query(TEXTS[(n + i) % len(TEXTS)], top_k=3, timeout=LATE_S)
            except OpenMask3DError as exc:
                failures.append(f"client {n} query {i}: {exc}")
                continue
            latencies.append(time.perf_counter() - t0)
        resent.append(client.resent)
    finally:
        client.destroy()
        node.destroy_node()
        rclpy.shutdown(context=ctx)


def test_1000_queries_from_4_clients_while_recording_at_10hz(tmp_path):
    source = SceneFolder(make_scene(tmp_path / "src", seed=0, num_frames=20, width=160,
                                    height=120))
    rec = tmp_path / "rec"
    shutil.copytree(source.root, rec)
    run_pipeline(rec, None, frame_step=2)                # the map the node loads at start-up
    for sub in ("color", "depth", "pose"):               # recording starts from an empty stream
        shutil.rmtree(rec / sub)
    log = tmp_path / "node.log"
    feeder = Feeder()
    proc = start_node(log, rec)
    latencies: list[float] = []
    failures: list[str] = []
    resent: list[int] = []
    try:
        assert feeder.client.wait_for_status(lambda s: s.state == "ready", 90), \
            log.read_text()[-3000:]
        assert feeder.wait_subscribers(), log.read_text()[-3000:]
        stop_rec = threading.Event()

        def record():                                   # 10 Hz, the scene's frames in a loop
            while not stop_rec.is_set():
                feeder.frames(source, stop_rec, hz=10)

        go = threading.Event()
        threads = [threading.Thread(target=client_thread, args=(n, latencies, failures, resent, go))
                   for n in range(CLIENTS)]
        for t in threads:
            t.start()
        recorder = threading.Thread(target=record)
        recorder.start()
        time.sleep(1.0)
        go.set()
        t0 = time.perf_counter()
        for t in threads:
            t.join(600)
        wall = time.perf_counter() - t0
        stop_rec.set()
        recorder.join(30)
        feeder.client.last_status = None
        st = feeder.client.wait_for_status(lambda s: True, 5)      # a fresh status message
    finally:
        stop(proc)
        feeder.close()
    lat = np.array(latencies) * 1000
    print(f"\nload: {len(lat)}/{QUERIES} answered in {wall:.1f} s by {CLIENTS} clients; "
          f"p50 {np.percentile(lat, 50):.1f} ms, p95 {np.percentile(lat, 95):.1f} ms, "
          f"max {lat.max():.1f} ms; queries resent: {sum(resent)}; keyframes recorded "
          f"meanwhile: {st.keyframes if st else '?'}")
    assert not failures, failures[:5]
    assert len(lat) == QUERIES
    assert lat.max() < LATE_S * 1000
    assert st is not None and st.keyframes > 0          # frames really were being recorded


if __name__ == "__main__":
    pytest.main([__file__, "-s", "-q"])
