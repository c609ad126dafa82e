"""A shell loop of `openmask3d run` processes against one `openmask3d batch` on the same scenes.

Real architectures at random weights (SAM vit_b, CLIP ViT-B/32; proposals: the geometric backend,
since no Mask3D checkpoint can be made here), saved as checkpoint files and named in a YAML config
as users do with downloaded weights. Each scene is mapped twice from identical copies:

* loop:  `for s in scenes; do openmask3d run $s --config C; done`: every process imports torch and
  loads SAM and CLIP again; its thread pools get all cores (OPENMASK3D_THREADS = cores);
* batch: `openmask3d batch scenes/ --config C`: a local Ray, one worker per core
  (--cpus-per-scene 1, one thread each), each loading the models once.

Reports wall time and scenes per hour for both, their ratio, and checks that both built the same
maps (instances equal; features equal up to float noise from the thread counts).

    python benchmarks/bench_batch.py --scenes 8 --frames 4 --frame-step 2
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import yaml

REPO = Path(__file__).resolve().parents[1]
OPENMASK3D = [sys.executable, "-m", "openmask3d_ros.cli"]


def random_checkpoints(folder: Path) -> tuple[Path, Path]:
    """SAM vit_b and open_clip ViT-B-32 with random weights (seed 0), saved as state dicts."""
    import open_clip
    import segment_anything
    import torch
    torch.manual_seed(0)
    sam = folder / "sam_vit_b_random.pth"
    torch.save(segment_anything.sam_model_registry["vit_b"](checkpoint=None).state_dict(), sam)
    clip = folder / "clip_vit_b32_random.pt"
    torch.save(open_clip.create_model("ViT-B-32", pretrained=None).state_dict(), clip)
    return sam, clip


def machine() -> dict:
    cpu = ""
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo")
                   if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    mem = 0.0
    try:
        mem = int(next(line.split()[1] for line in open("/proc/meminfo")
                       if line.startswith("MemTotal"))) / 2 ** 20
    except (OSError, StopIteration):
        pass
    from openmask3d_ros.core.threads import available_cores
    return {"cpu": cpu, "cores": available_cores(), "mem_gib": round(mem, 1),
            "python": platform.python_version(), "gpu": _gpu()}


def _gpu() -> str | None:
    try:
        import torch
        return torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    except Exception:         # no torch or no driver: report no GPU
        return None


def loadavg() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def run_loop(scenes: list[Path], config: Path, step: int, threads: int) -> float:
    env = {**os.environ, "OPENMASK3D_THREADS": str(threads)}
    t0 = time.perf_counter()
    for s in scenes:
        t = time.perf_counter()
        proc = subprocess.run([*OPENMASK3D, "run", str(s), "--config", str(config),
                               "--frame-step", str(step)], cwd=REPO, env=env,
                              capture_output=True, text=True)
        if proc.returncode != 0:
            sys.exit(f"openmask3d run {s} failed:\n{proc.stderr[-3000:]}")
        print(f"  loop: {s.name} {time.perf_counter() - t:.1f} s", flush=True)
    return time.perf_counter() - t0


def run_batch(root: Path, config: Path, step: int, cpus: float, workers: int | None) -> tuple:
    cmd = [*OPENMASK3D, "batch", str(root), "--config", str(config), "--frame-step", str(step),
           "--cpus-per-scene", str(cpus), "--json"]
    if workers:
        cmd += ["--workers", str(workers)]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        sys.exit(f"openmask3d batch failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    for line in proc.stderr.splitlines():
        if line.startswith(("worker", "built", "FAILED", "retry")):
            print(f"  batch: {line}", flush=True)
    return wall, json.loads(proc.stdout)


def compare(loop: list[Path], batch: list[Path]) -> dict:
    from openmask3d_ros.core.instance_map import InstanceMap
    same_instances, max_diff = True, 0.0
    for a, b in zip(loop, batch):
        ma, mb = InstanceMap.load(a), InstanceMap.load(b)
        if ma.num_instances != mb.num_instances or any(
                not np.array_equal(x, y) for x, y in zip(ma.flat_indices(), mb.flat_indices())):
            same_instances = False
            continue
        both = ma.valid & mb.valid
        if ma.features.size and both.any():
            max_diff = max(max_diff, float(np.abs(ma.features[both] - mb.features[both]).max()))
    return {"same_instances": same_instances, "max_feature_abs_diff": max_diff}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--scenes", type=int, default=8)
    ap.add_argument("--frames", type=int, default=4, help="frames per synthetic scene")
    ap.add_argument("--frame-step", type=int, default=2)
    ap.add_argument("--size", default="160x120", help="image size of the synthetic scenes")
    ap.add_argument("--cpus-per-scene", type=float, default=1.0)
    ap.add_argument("--workers", type=int, default=None)
    ap.add_argument("--loop-threads", type=int, default=None,
                    help="threads of each `openmask3d run` (default: all cores)")
    ap.add_argument("--keep", help="work in this folder and keep it (default: a temp folder)")
    args = ap.parse_args()
    from openmask3d_ros.core.synthetic import make_scene
    from openmask3d_ros.core.threads import available_cores

    work = Path(args.keep or tempfile.mkdtemp(prefix="bench_batch_"))
    work.mkdir(parents=True, exist_ok=True)
    width, height = (int(v) for v in args.size.split("x"))
    info = {"machine": machine(), "load_before": loadavg()}
    print(f"machine: {info['machine']}  load {info['load_before']}", flush=True)
    sam, clip = random_checkpoints(work)
    config = work / "bench.yaml"
    config.write_text(yaml.safe_dump({
        "device": "cpu", "proposals": {"backend": "geometric"},
        "segmenter": {"backend": "sam", "sam_model": "vit_b", "sam_checkpoint": str(sam)},
        "encoder": {"backend": "clip", "clip_model": "ViT-B-32", "clip_checkpoint": str(clip),
                    "batch_size": 64}}))
    src = [make_scene(work / "src" / f"scene{i:02d}", seed=i, num_frames=args.frames,
                      width=width, height=height) for i in range(args.scenes)]
    loop = [Path(shutil.copytree(s, work / "loop" / s.name)) for s in src]
    batch = [Path(shutil.copytree(s, work / "batch" / s.name)) for s in src]
    keyframes = len(range(0, args.frames, args.frame_step))
    threads = args.loop_threads or available_cores()
    print(f"{args.scenes} scenes of {args.frames} frames {args.size}, {keyframes} keyframes "
          f"each; loop threads {threads}", flush=True)

    loop_s = run_loop(loop, config, args.frame_step, threads)
    info["load_mid"] = loadavg()
    batch_s, report = run_batch(work / "batch", config, args.frame_step, args.cpus_per_scene,
                                args.workers)
    info["load_after"] = loadavg()
    n = args.scenes
    result = {
        **info, "scenes": n, "frames": args.frames, "keyframes": keyframes, "size": args.size,
        "loop": {"wall_s": round(loop_s, 1), "scenes_per_hour": round(3600 * n / loop_s, 1),
                 "threads": threads},
        "batch": {"wall_s": round(batch_s, 1), "scenes_per_hour": round(3600 * n / batch_s, 1),
                  "workers": report["ray"].get("workers"),
                  "per_scene": report["ray"].get("per_scene"),
                  "model_load_s": [w["load_s"] for w in report["workers"]],
                  "mean_scene_s": report["mean_scene_s"],
                  "reported_wall_s": report["wall_s"]},
        "ratio_batch_over_loop": round(loop_s / batch_s, 2),
        "maps": compare(loop, batch),
    }
    print(json.dumps(result, indent=2))
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
