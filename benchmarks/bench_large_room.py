"""Large rooms (issue 22, item 3): time and peak memory per stage of a map build as keyframes,
cloud points and masks grow, up to a room of 300 keyframes and 1M points.

One synthetic scene (``core/synthetic.make_scene``, ``--max-keyframes`` frames at
``--width`` x ``--height``) is built once; its fused cloud (~60k points) is densified to each
``--points`` count by jittered copies (2 mm, a denser scan of the same surfaces) and written as
that variant's ``cloud.ply`` (frames shared by symlinks). Masks are a seeded k-means partition
of the original cloud, carried to the copies of each point (the same segments, denser), given
as a precomputed masks file. Keyframe counts are taken with ``frame_step`` over the same orbit
(300 frames: step 4 -> 75 keyframes, 2 -> 150, 1 -> 300).

The sweep varies one size at a time around the anchor (``--anchor`` keyframes,points,masks,
default the largest of each list except the middle mask count): keyframes at the anchor's
points and masks, points at the anchor's keyframes and masks, masks at the anchor's keyframes
and points. Each run is ``run_pipeline(scene, cfg, masks=FILE, frame_step=S, cache="off")`` in
its own child process, so that each peak is its own, with the stages wrapped as in
bench_memory.py (VmHWM reset through ``/proc/self/clear_refs`` at each stage's start; a stage's
figure is the whole process's resident memory at that stage's worst moment).

"Nothing holds all keyframe images": ``SceneFolder.color`` and ``.depth`` are wrapped, and each
image they return is tracked with a weak reference until it is freed; the run reports the most
colour and depth images alive at once (and their bytes) against what all keyframes' images would
take. Crops that are views of a frame keep it alive until the CLIP batch is encoded, so a few
frames may be alive at once, bounded by ``encoder.batch_size``, not by the keyframes.

Printed per run: wall seconds and peak RSS per stage, images alive at once, load average,
threads; then per sweep the growth exponent of each stage (log(t2/t1) / log(n2/n1) between the
smallest and largest size: 1 = linear, 0 = flat, 2 = quadratic), for seconds and for memory
above the pre-run RSS.

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/bench_large_room.py --threads 2
    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/bench_large_room.py --threads 2 --real \\
        --keyframes 300 --points 250000 --masks 1,2 --anchor 300,250000,2

The default sweep (7 builds, stand-ins) takes ~7 minutes of CPU on a 2-core VM (9-17 minutes
wall with other jobs on it); a quick look: ``--keyframes 75,150 --points 250000,500000
--masks 25,50``. With ``--real`` each SAM vit_b embedding is 10-40 s on 2 CPU threads, and the
frames used are at most masks x ``visibility.k_view`` (5), so keep the mask counts small.

``--real``: SAM vit_b + CLIP ViT-B-32 at random weights (seed 0) written to checkpoint files
(SAM's IoU-head bias raised by ``--iou-offset`` so that rounds score > 0 and the SAM-mask path
runs, as bench_memory.py), at a reduced mask count.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import weakref
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from bench_memory import StageMemory, _status_gib  # noqa: E402

STAGES = ("load", "inputs", "proposals", "visibility", "prompts", "seg_embed", "seg_decode",
          "encoder", "features_rest", "assemble", "changes", "save", "other")
LABELS = {"load": "model load", "inputs": "inputs (cloud)", "proposals": "proposals (masks)",
          "visibility": "visibility", "prompts": "prompt plan", "seg_embed": "SAM embed",
          "seg_decode": "SAM decode", "encoder": "CLIP", "features_rest":
          "frames, crops", "assemble": "map assembly", "changes": "changes",
          "save": "map save", "other": "other"}


# ---------------------------------------------------------------------------------------------
# child: one build
# ---------------------------------------------------------------------------------------------
class StageClock(StageMemory):
    """bench_memory's StageMemory plus the process's CPU seconds per stage (all threads): less
    sensitive than wall seconds to other jobs on a shared machine."""

    def __init__(self):
        self.cpu: dict[str, float] = {}
        self._c = time.process_time()
        super().__init__()

    def _close(self) -> None:
        top = self.stack[-1]
        now = time.process_time()
        self.cpu[top] = self.cpu.get(top, 0.0) + now - self._c
        self._c = now
        super()._close()


class LiveImages:
    """Counts the images returned by ``SceneFolder.color`` / ``.depth`` that are still alive."""

    def __init__(self):
        self.live = {"color": 0, "depth": 0}
        self.live_bytes = 0
        self.max = {"color": 0, "depth": 0}
        self.max_bytes = 0
        self.read = {"color": 0, "depth": 0}
        self.image_bytes = {"color": 0, "depth": 0}

    def _gone(self, kind: str, nbytes: int) -> None:
        self.live[kind] -= 1
        self.live_bytes -= nbytes

    def wrap(self, cls, kind: str) -> None:
        fn = getattr(cls, kind)

        def wrapped(folder, fid):
            img = fn(folder, fid)
            self.read[kind] += 1
            self.image_bytes[kind] = img.nbytes
            self.live[kind] += 1
            self.live_bytes += img.nbytes
            self.max[kind] = max(self.max[kind], self.live[kind])
            self.max_bytes = max(self.max_bytes, self.live_bytes)
            weakref.finalize(img, self._gone, kind, img.nbytes)
            return img
        setattr(cls, kind, wrapped)


def child(spec: dict) -> int:
    stages = StageClock()
    from openmask3d_ros.core import features, pipeline
    from openmask3d_ros.core.config import PipelineConfig
    from openmask3d_ros.core.encoders.colour import ColourEncoder
    from openmask3d_ros.core.instance_map import InstanceMap
    from openmask3d_ros.core.scene import SceneFolder
    from openmask3d_ros.core.segmenters.hull import HullSegmenter
    seg_classes, enc_classes = [HullSegmenter], [ColourEncoder]
    if spec["real"]:
        from openmask3d_ros.core.encoders.clip import ClipEncoder
        from openmask3d_ros.core.segmenters.sam import SamSegmenter
        seg_classes.append(SamSegmenter)
        enc_classes.append(ClipEncoder)
    live = LiveImages()
    live.wrap(SceneFolder, "color")
    live.wrap(SceneFolder, "depth")
    stages.wrap(pipeline, "build_models", "load")
    stages.wrap(pipeline, "read_inputs", "inputs")
    stages.wrap(pipeline, "propose", "proposals")
    stages.wrap(pipeline, "split_proposals", "proposals")
    stages.wrap(pipeline, "compute_features", "features_rest")
    stages.wrap(features, "visibility_counts", "visibility")
    stages.wrap(features, "_official_prompt_plan", "prompts")
    for cls in seg_classes:
        stages.wrap(cls, "set_image", "seg_embed")
        stages.wrap(cls, "predict", "seg_decode")
        stages.wrap(cls, "predict_many", "seg_decode")
    for cls in enc_classes:
        stages.wrap(cls, "encode_images", "encoder")
    stages.wrap(pipeline, "map_meta", "assemble")
    stages.wrap(pipeline, "inputs_record", "assemble")
    stages.wrap(pipeline, "structure_meta", "assemble")
    stages.wrap(InstanceMap, "from_masks", "assemble")
    stages.wrap(pipeline, "track_changes", "changes")
    stages.wrap(InstanceMap, "save", "save")
    cfg = PipelineConfig().updated(spec["config"])
    stages._close()
    stages.peak.clear()
    stages.seconds.clear()
    stages.cpu.clear()
    stages.stack[0] = "other"
    base_gib = _status_gib("VmRSS")
    t0, c0 = time.perf_counter(), time.process_time()
    imap = pipeline.run_pipeline(spec["scene"], cfg, masks=spec["masks"],
                                 frame_step=spec["frame_step"], cache="off",
                                 out_dir=spec["out"])
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    stages._close()
    meta = imap.meta
    res = {"peak_mib": {k: v * 1024 for k, v in stages.peak.items()},
           "seconds": stages.seconds, "cpu": stages.cpu, "wall_s": wall, "cpu_s": cpu,
           "base_mib": base_gib * 1024,
           "resettable": stages.resettable,
           "keyframes": meta.frames.keyframes if hasattr(meta.frames, "keyframes") else None,
           "frames_used": len(meta.frames.used), "points": int(len(imap.points)),
           "masks": int(imap.num_instances), "segmenter_images": int(meta.segmenter_images),
           "crops": int(meta.crops_encoded), "timings": meta.timings,
           "live_max": live.max, "live_max_bytes": live.max_bytes, "images_read": live.read,
           "image_bytes": live.image_bytes, "threads": _proc_threads(),
           "torch_threads": _torch_threads()}
    print("RESULT " + json.dumps(res), flush=True)
    return 0


def _proc_threads() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("Threads:"):
                return int(line.split()[1])
    return -1


def _torch_threads() -> int | None:
    if "torch" not in sys.modules:
        return None
    return int(sys.modules["torch"].get_num_threads())


# ---------------------------------------------------------------------------------------------
# parent: scene, variants, sweep, report
# ---------------------------------------------------------------------------------------------
def ints(text: str) -> list[int]:
    return [int(float(x)) for x in text.split(",") if x]


def densify(points, colors, n: int, seed: int = 0):
    """The cloud repeated with 2 mm jitter up to ``n`` points, and each point's source index."""
    src = np.arange(n) % len(points)
    rng = np.random.default_rng(seed)
    pts = points[src].astype(np.float64)
    copy = np.arange(n) >= len(points)
    pts[copy] += rng.normal(0, 0.002, (int(copy.sum()), 3))
    return pts.astype(np.float32), (None if colors is None else colors[src]), src


def prepare(args, work: Path, runs: list[tuple[int, int, int]]) -> dict:
    from bench_features import make_masks
    from openmask3d_ros.core.scene import SceneFolder, write_ply
    from openmask3d_ros.core.synthetic import make_scene
    scene = work / "scene"
    t = time.perf_counter()
    if not (scene / "scene.json").is_file() or \
            len(SceneFolder(scene).frame_ids) != args.max_keyframes:
        make_scene(scene, seed=0, num_frames=args.max_keyframes, width=args.width,
                   height=args.height)
    print(f"scene: {args.max_keyframes} frames {args.width}x{args.height} "
          f"({time.perf_counter() - t:.0f} s)", flush=True)
    points, colors = SceneFolder(scene).cloud()
    base_masks = {}
    variants = {}
    for n in sorted({p for _, p, _ in runs}):
        folder = work / f"scene_{n}"
        folder.mkdir(exist_ok=True)
        for name in ("color", "depth", "pose", "intrinsic", "scene.json"):
            link = folder / name
            if not link.exists():
                link.symlink_to(scene / name)
        pts, cols, src = densify(points, colors, n)
        if not (folder / "cloud.ply").is_file():
            write_ply(folder / "cloud.ply", pts, cols)
        variants[n] = (folder, src)
    out = {}
    for k, n, m in runs:
        if m not in base_masks:
            base_masks[m] = make_masks(points, m)
        path = work / f"masks_{n}_{m}.npy"
        if not path.is_file():
            np.save(path, base_masks[m][variants[n][1]])
        out[(k, n, m)] = {"scene": str(variants[n][0]), "masks": str(path),
                          "frame_step": args.max_keyframes // k,
                          "mask_count": int(base_masks[m].shape[1])}
    print(f"cloud {len(points)} points, densified to {sorted(variants)}", flush=True)
    return out


def checkpoints(args, work: Path) -> dict:
    import open_clip
    import torch
    from segment_anything import sam_model_registry
    torch.manual_seed(0)
    if not (work / "clip.pt").is_file():
        torch.save(open_clip.create_model("ViT-B-32", pretrained=None).state_dict(),
                   work / "clip.pt")
    if not (work / "sam.pth").is_file():
        sam = sam_model_registry["vit_b"](checkpoint=None)
        with torch.no_grad():
            sam.mask_decoder.iou_prediction_head.layers[-1].bias += args.iou_offset
        torch.save(sam.state_dict(), work / "sam.pth")
        del sam
    return {"segmenter.backend": "sam", "segmenter.sam_model": "vit_b",
            "segmenter.sam_checkpoint": str(work / "sam.pth"),
            "encoder.backend": "clip", "encoder.clip_model": "ViT-B-32",
            "encoder.clip_checkpoint": str(work / "clip.pt")}


def sweep_runs(args) -> tuple[list[tuple[int, int, int]], dict[str, list]]:
    K, P, M = args.anchor
    sweeps = {"keyframes": [(k, P, M) for k in args.keyframes],
              "points": [(K, p, M) for p in args.points],
              "masks": [(K, P, m) for m in args.masks]}
    sweeps = {k: v for k, v in sweeps.items() if len(v) > 1}
    runs = sorted({r for v in sweeps.values() for r in v} | {(K, P, M)})
    return runs, sweeps


def run_child(args, spec: dict) -> dict:
    cmd = [sys.executable, __file__, "--child", json.dumps(spec)]
    env = dict(os.environ)
    if args.threads:
        env["OPENMASK3D_THREADS"] = str(args.threads)
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        print(proc.stdout[-3000:], proc.stderr[-3000:])
        raise SystemExit(proc.returncode or 1)
    return json.loads(lines[-1][len("RESULT "):])


def exponent(a: float, b: float, na: float, nb: float) -> float:
    if a <= 0 or b <= 0:
        return float("nan")
    return math.log(b / a) / math.log(nb / na)


def _stage_table(title: str, rows: dict, stages: list, field: str, fmt: str, tail_head: str,
                 tail) -> None:
    """One row per run: ``r[field][stage]`` per stage column, then ``tail(r)``."""
    print(f"\n{title}")
    print(f"{'K x P x M':<22}" + "".join(f"{LABELS[s][:11]:>12}" for s in stages) + tail_head)
    for key, r in rows.items():
        print(f"{'x'.join(map(str, key)):<22}" +
              "".join(format(r[field].get(s, float("nan")), "12" + fmt) for s in stages) +
              tail(r))


def report(args, rows: dict, sweeps: dict) -> None:
    models = ("SAM vit_b + CLIP ViT-B-32 (random weights)" if args.real
              else "stand-ins (hull segmenter, colour encoder)")
    print(f"\nrun_pipeline, {models}, {args.width}x{args.height} frames, cache off, fidelity "
          f"official; threads {args.threads or 'default'} (OMP_NUM_THREADS="
          f"{os.environ.get('OMP_NUM_THREADS', 'unset')}); {platform.processor() or _cpu()}, "
          f"{os.cpu_count()} cores")
    stages = [s for s in STAGES if any(s in r["seconds"] for r in rows.values())]
    _stage_table("seconds per stage", rows, stages, "seconds", ".2f", f"{'wall':>8} {'load':>10}",
                 lambda r: f"{r['wall_s']:8.1f} {r['load_before']:4.1f}-{r['load_after']:4.1f}")
    if all("cpu" in r for r in rows.values()):
        _stage_table("CPU seconds per stage (the process, all threads)", rows, stages, "cpu",
                     ".2f", f"{'total':>8}", lambda r: f"{r['cpu_s']:8.1f}")
    _stage_table("peak RSS per stage (MiB, whole process; pre-run RSS in the last column)", rows,
                 stages, "peak_mib", ".0f", f"{'max':>8}{'pre-run':>9}",
                 lambda r: f"{max(r['peak_mib'].values()):8.0f}{r['base_mib']:9.0f}")
    print("\nwork and images alive at once")
    print(f"{'K x P x M':<22}{'frames used':>12}{'masks':>7}{'seg images':>11}{'crops':>7}"
          f"{'colour live':>12}{'depth live':>11}{'live MiB':>9}{'all-K MiB':>10}"
          f"{'threads':>8}")
    for key, r in rows.items():
        per = (r["image_bytes"]["color"] + r["image_bytes"]["depth"]) / 2**20
        print(f"{'x'.join(map(str, key)):<22}{r['frames_used']:>12}{r['masks']:>7}"
              f"{r['segmenter_images']:>11}{r['crops']:>7}{r['live_max']['color']:>12}"
              f"{r['live_max']['depth']:>11}{r['live_max_bytes'] / 2**20:9.1f}"
              f"{key[0] * per:10.0f}{r['threads']:>8}")
    print("\ngrowth exponents between the smallest and largest size of each sweep "
          "(1 = linear; memory: peak above the pre-run RSS)")
    for name, keys in sweeps.items():
        dim = {"keyframes": 0, "points": 1, "masks": 2}[name]
        a, b = rows[keys[0]], rows[keys[-1]]
        na, nb = keys[0][dim], keys[-1][dim]
        if name == "masks":          # masks kept after the >= 20 points filter
            na, nb = a["masks"], b["masks"]
        print(f"{name} {na} -> {nb} (x{nb / na:.1f}):")
        cols = [s for s in stages if s in a["seconds"] and s in b["seconds"]]
        print("  time  " + "  ".join(
            f"{LABELS[s]} {exponent(a['seconds'][s], b['seconds'][s], na, nb):.2f}"
            for s in cols if a["seconds"][s] >= 0.05 or b["seconds"][s] >= 0.05)
            + f"  | wall {exponent(a['wall_s'], b['wall_s'], na, nb):.2f}")
        if "cpu" in a and "cpu" in b:
            print("  CPU   " + "  ".join(
                f"{LABELS[s]} {exponent(a['cpu'][s], b['cpu'][s], na, nb):.2f}"
                for s in cols if s in a["cpu"] and s in b["cpu"]
                and (a["cpu"][s] >= 0.05 or b["cpu"][s] >= 0.05))
                + f"  | total {exponent(a['cpu_s'], b['cpu_s'], na, nb):.2f}")
        grow = {s: (a["peak_mib"][s] - a["base_mib"], b["peak_mib"][s] - b["base_mib"])
                for s in cols}
        print("  memory " + "  ".join(
            f"{LABELS[s]} {exponent(x, y, na, nb):.2f} ({x:.0f}->{y:.0f} MiB)"
            for s, (x, y) in grow.items() if max(x, y) >= 8)
            + f"  | max {exponent(_grown(a), _grown(b), na, nb):.2f}")
        unit = {"keyframes": "keyframe", "points": "1k points", "masks": "mask"}[name]
        scale = 1000 if name == "points" else 1
        print(f"  wall per {unit}: " + ", ".join(
            f"{rows[k]['wall_s'] / (k[dim] / scale if name != 'masks' else rows[k]['masks']):.3f}"
            f" s ({'x'.join(map(str, k))})" for k in keys))


def save_json(args, rows: dict, sweeps: dict) -> None:
    if args.json:
        Path(args.json).write_text(json.dumps(
            {"args": {k: v for k, v in vars(args).items()}, "cpu": _cpu(),
             "rows": {"x".join(map(str, k)): v for k, v in rows.items()},
             "sweeps": {k: ["x".join(map(str, r)) for r in v] for k, v in sweeps.items()}},
            indent=1))


def _grown(r: dict) -> float:
    """The run's peak RSS above its pre-run RSS (MiB)."""
    return max(r["peak_mib"].values()) - r["base_mib"]


def _cpu() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.machine()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--keyframes", type=ints, default=ints("75,150,300"))
    ap.add_argument("--points", type=ints, default=ints("250000,500000,1000000"))
    ap.add_argument("--masks", type=ints, default=ints("25,50,100"))
    ap.add_argument("--anchor", type=ints, help="keyframes,points,masks of the fixed sizes "
                    "(default: the largest keyframes and points, the middle masks)")
    ap.add_argument("--max-keyframes", type=int, help="frames rendered (default: the largest "
                    "--keyframes; each count must divide it)")
    ap.add_argument("--width", type=int, default=320)
    ap.add_argument("--height", type=int, default=240)
    ap.add_argument("--threads", type=int, default=0, help="CPU threads (0: threads.py default)")
    ap.add_argument("--real", action="store_true", help="random-weight SAM vit_b + CLIP ViT-B-32")
    ap.add_argument("--iou-offset", type=float, default=0.5)
    ap.add_argument("--work", help="scene, clouds, masks and maps here (kept; reused)")
    ap.add_argument("--json", help="write the results here")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        return child(json.loads(args.child))
    args.max_keyframes = args.max_keyframes or max(args.keyframes)
    if any(args.max_keyframes % k for k in args.keyframes):
        ap.error(f"each --keyframes count must divide {args.max_keyframes}")
    if args.anchor is None:
        args.anchor = [max(args.keyframes), max(args.points),
                       sorted(args.masks)[len(args.masks) // 2]]
    if max(args.points) > 1_000_000:
        print(f"note: max_cloud_points is set to {max(args.points)} (no thinning)")
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="bench_large_room_"))
    work.mkdir(parents=True, exist_ok=True)
    runs, sweeps = sweep_runs(args)
    print(f"runs (keyframes, points, masks): {runs}; load {os.getloadavg()[0]:.2f}", flush=True)
    specs = prepare(args, work, runs)
    config = {"device": "cpu", "threads": args.threads,
              "max_cloud_points": max(1_000_000, max(args.points))}
    if args.real:
        config.update(checkpoints(args, work))
    rows = {}
    for key in runs:
        spec = dict(specs[key], real=args.real, config=config,
                    out=str(work / f"map_{'x'.join(map(str, key))}"))
        shutil.rmtree(spec["out"], ignore_errors=True)     # a first build: no change report
        load = os.getloadavg()[0]
        r = run_child(args, spec)
        r["load_before"], r["load_after"] = load, os.getloadavg()[0]
        rows[key] = r
        print(f"{key}: wall {r['wall_s']:.1f} s, peak {max(r['peak_mib'].values()):.0f} MiB "
              f"(pre-run {r['base_mib']:.0f}), {r['frames_used']} frames used, "
              f"{r['segmenter_images']} segmenter images, {r['crops']} crops, images alive at "
              f"once: colour {r['live_max']['color']} depth {r['live_max']['depth']}; load "
              f"{load:.2f}", flush=True)
        save_json(args, rows, sweeps)          # after each run: a long sweep cut short keeps them
    report(args, rows, sweeps)
    save_json(args, rows, sweeps)
    print(f"load after the runs {os.getloadavg()[0]:.2f}; files in {work}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
