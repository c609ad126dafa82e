"""Incremental rebuilds (issue 25): a rebuild after new keyframes against a build from scratch, in
one process with the models loaded once (as the node keeps them).

Cases, on a synthetic scene (``--keyframes`` + ``--added`` frames, all keyframes) with
``--masks`` k-means masks given as precomputed proposals:

1. ``initial``: a build on the first ``--keyframes`` frames (fills MAP/cache);
2. ``rebuild``: the ``--added`` frames appear, cloud unchanged: an incremental rebuild of the same
   map folder, then ``scratch``: the same inputs, ``cache="off"``, another folder. The maps must
   be identical (same instances, same views, feature cosine >= 0.999999);
3. ``grown``: new keyframes *and* a grown cloud (``--grow`` more points: jittered copies of a
   random subset, as a denser scan), the masks re-assigned to the same k-means centres (the
   same segments, grown): an incremental rebuild of a copy of the initial map folder (its cache
   knows the first keyframes only), then ``grown scratch``.

Printed per case: wall seconds of ``run_pipeline`` and of its parts (SAM embeddings computed /
loaded from the cache, SAM decoder, CLIP), what the cache reused, the ratio to the scratch build,
and for the official fidelity the first mask whose views changed (the shared prompt stream,
core/prompt_plan.py: every later mask's prompts change with it).

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/bench_rebuild.py --masks 50 --threads 2
    .venv/bin/python benchmarks/bench_rebuild.py --stand-ins          # hull + colour, seconds

Real models are the SAM vit_b and CLIP ViT-B-32 architectures at random weights (seed 0), written
to checkpoint files; SAM's IoU head gets ``--iou-offset`` baked into the checkpoint (random
weights score <= 0 otherwise and every view falls back to the point box, RESULTS.md), and its
masks are cut to the prompts' box (``--prompt-box-margin``, see ``box_masks``).
"""
from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def kmeans_masks(points: np.ndarray, n: int, seed: int = 0):
    """(P, n) masks of a seeded k-means partition, and the centres (to re-assign a grown
    cloud's points to the same segments)."""
    from scipy.cluster.vq import kmeans2
    centres, label = kmeans2(points.astype(np.float64), n, seed=seed, minit="++")
    return label[:, None] == np.arange(n)[None], centres


def assign(points: np.ndarray, centres: np.ndarray) -> np.ndarray:
    from scipy.spatial import cKDTree
    _, label = cKDTree(centres).query(points.astype(np.float64))
    return label[:, None] == np.arange(len(centres))[None]


def hide(scene: Path, count: int, held: Path) -> None:
    from openmask3d_ros.core.scene import SceneFolder
    folder = SceneFolder(scene)
    for fid in folder.frame_ids[-count:]:
        for f in folder.frame_files(fid):
            (held / f.parent.name).mkdir(parents=True, exist_ok=True)
            shutil.move(f, held / f.parent.name / f.name)


def restore(scene: Path, held: Path) -> None:
    for sub in held.iterdir():
        for f in sub.iterdir():
            shutil.move(f, scene / sub.name / f.name)


class Clock:
    """Seconds spent in model calls, by wrapping the bound methods of the model instances (the
    classes stay the same, so the build cache knows them)."""

    def __init__(self):
        self.seconds: dict[str, float] = defaultdict(float)
        self.calls: dict[str, int] = defaultdict(int)

    def wrap(self, obj, method: str, label: str) -> None:
        fn = getattr(obj, method, None)
        if fn is None:
            return

        @functools.wraps(fn)
        def timed(*a, **k):
            t = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                self.seconds[label] += time.perf_counter() - t
                self.calls[label] += 1
        setattr(obj, method, timed)

    def take(self) -> dict:
        out = {k: round(v, 2) for k, v in self.seconds.items()}
        out.update({f"{k}_calls": v for k, v in self.calls.items()})
        self.seconds.clear()
        self.calls.clear()
        return out


def box_masks(seg, margin: int) -> None:
    """Random-weight SAM answers every prompt with the whole image, so every crop of a frame
    would be the same (and the build cache would encode it once a frame: an artefact). Its mask
    is cut to the winning round's prompts' box grown by ``margin`` px, a deterministic function
    of SAM's answer and the prompts, so crops follow the prompts: new prompts give new crops,
    as the pessimistic case for crop reuse (a trained SAM often gives the same box)."""
    inner = seg.predict_many

    def predict_many(prompt_list):
        out = []
        for prompts, (mask, scores) in zip(prompt_list, inner(prompt_list)):
            p = np.asarray(prompts, np.float32)[int(np.argmax(scores))]
            h, w = mask.shape
            x1, y1 = np.maximum(np.floor(p.min(axis=0)).astype(int) - margin, 0)
            x2, y2 = np.minimum(np.ceil(p.max(axis=0)).astype(int) + margin, [w - 1, h - 1])
            cut = np.zeros_like(mask)
            cut[y1:y2 + 1, x1:x2 + 1] = mask[y1:y2 + 1, x1:x2 + 1]
            out.append((cut, scores))
        return out
    seg.predict_many = predict_many


def compare_maps(a, b) -> dict:
    same_inst = a.num_instances == b.num_instances and all(
        np.array_equal(x, y) for x, y in zip(a.point_indices, b.point_indices))
    same_views = [i.views for i in a.meta.instances] == [i.views for i in b.meta.instances]
    fa, fb = a.features.astype(np.float64), b.features.astype(np.float64)
    na, nb = np.linalg.norm(fa, axis=1), np.linalg.norm(fb, axis=1)
    seen = (na > 0) & (nb > 0)
    cos = (fa * fb).sum(axis=1)[seen] / (na[seen] * nb[seen])
    return {"same_instances": bool(same_inst), "same_views": bool(same_views),
            "same_seen": bool(np.array_equal(na > 0, nb > 0)),
            "min_cosine": float(cos.min()) if len(cos) else None,
            "max_abs_diff": float(np.abs(fa - fb).max()) if fa.shape == fb.shape else None}


def first_changed_views(before, after) -> int | None:
    """The lowest mask index whose views differ between two maps of the same masks."""
    for m, (x, y) in enumerate(zip(before.meta.instances, after.meta.instances)):
        if x.views != y.views:
            return m
    return None


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--keyframes", type=int, default=10)
    ap.add_argument("--added", type=int, default=1, help="keyframes added before the rebuild")
    ap.add_argument("--masks", type=int, default=50)
    ap.add_argument("--width", type=int, default=640)
    ap.add_argument("--height", type=int, default=480)
    ap.add_argument("--grow", type=float, default=0.1, help="cloud growth of the grown case")
    ap.add_argument("--fidelity", default="official", choices=("official", "paper"))
    ap.add_argument("--prompt-seeding", default="per_view", choices=("stream", "per_view"),
                    help="segmenter.prompt_seeding (official fidelity; default per_view)")
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--iou-offset", type=float, default=0.5)
    ap.add_argument("--stand-ins", action="store_true")
    ap.add_argument("--prompt-box-margin", type=int, default=16,
                    help="cut SAM's masks to the winning prompts' box + this margin (px); 0: "
                         "random-weight SAM's raw whole-image masks (see box_masks)")
    ap.add_argument("--skip-grown", action="store_true")
    ap.add_argument("--keep", help="keep the scene, maps and checkpoints in this folder")
    ap.add_argument("--json", help="write the results here")
    args = ap.parse_args()

    from openmask3d_ros.core.config import PipelineConfig
    from openmask3d_ros.core.models import build_models
    from openmask3d_ros.core.pipeline import run_pipeline
    from openmask3d_ros.core.scene import SceneFolder
    from openmask3d_ros.core.synthetic import make_scene

    tmp = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="bench_rebuild_"))
    tmp.mkdir(parents=True, exist_ok=True)
    scene = make_scene(tmp / "scene", seed=0, num_frames=args.keyframes + args.added,
                       width=args.width, height=args.height)
    held = tmp / "held"
    shutil.rmtree(held, ignore_errors=True)
    hide(scene, args.added, held)
    points, colors = SceneFolder(scene).cloud()
    masks, centres = kmeans_masks(points, args.masks)
    keep = masks.sum(axis=0) >= 20
    masks, centres = masks[:, keep], centres[keep]

    values = {"frame_step": 1, "threads": args.threads, "fidelity": args.fidelity,
              "segmenter.prompt_seeding": args.prompt_seeding,
              "device": "cpu"}
    if not args.stand_ins:
        import open_clip
        import torch
        from segment_anything import sam_model_registry
        torch.manual_seed(0)
        torch.save(open_clip.create_model("ViT-B-32", pretrained=None).state_dict(),
                   tmp / "clip.pt")
        sam = sam_model_registry["vit_b"](checkpoint=None)
        with torch.no_grad():
            sam.mask_decoder.iou_prediction_head.layers[-1].bias += args.iou_offset
        torch.save(sam.state_dict(), tmp / "sam.pth")
        del sam
        values.update({"segmenter.backend": "sam", "segmenter.sam_model": "vit_b",
                       "segmenter.sam_checkpoint": str(tmp / "sam.pth"),
                       "encoder.backend": "clip", "encoder.clip_model": "ViT-B-32",
                       "encoder.clip_checkpoint": str(tmp / "clip.pt")})
    cfg = PipelineConfig().updated(values)
    models = build_models(cfg)
    if not args.stand_ins and args.prompt_box_margin > 0:
        box_masks(models.segmenter, args.prompt_box_margin)
    clock = Clock()
    clock.wrap(models.segmenter, "set_image", "sam_embed")
    clock.wrap(models.segmenter, "import_embedding", "sam_embedding_load")
    clock.wrap(models.segmenter, "predict_many", "sam_decode")
    if not hasattr(models.segmenter, "predict_many"):
        clock.wrap(models.segmenter, "predict", "sam_decode")
    clock.wrap(models.image_encoder, "encode_images", "clip")

    machine = {"python": platform.python_version(), "cpu": _cpu(), "cores": os.cpu_count(),
               "threads": args.threads}
    print(f"scene {scene}: {len(points)} points, {masks.shape[1]} masks, {args.keyframes} + "
          f"{args.added} keyframes {args.width}x{args.height}; models "
          f"{'stand-ins' if args.stand_ins else 'SAM vit_b + CLIP ViT-B-32 (random weights)'}; "
          f"fidelity {args.fidelity}, prompt seeding {args.prompt_seeding}; {machine}", flush=True)
    rows: dict[str, dict] = {}
    maps = {}

    def run(name, out, mask_arr, cloud=None, cache=None):
        load = os.getloadavg()[0]
        t, cpu = time.perf_counter(), time.process_time()
        imap = run_pipeline(scene, cfg, models, masks=mask_arr, cloud=cloud, cache=cache,
                            out_dir=out)
        row = {"seconds": round(time.perf_counter() - t, 2),
               "cpu_seconds": round(time.process_time() - cpu, 2),
               "load_before": round(load, 2),
               "load_after": round(os.getloadavg()[0], 2), **clock.take(),
               "timings": {k: round(v, 2) for k, v in imap.meta.timings.items()},
               "pairs": sum(len(i.views) for i in imap.meta.instances),
               "keyframes_used": len(imap.meta.frames.used)}
        if imap.meta.cache is not None:
            rec = imap.meta.cache
            row["cache"] = {k: getattr(rec, k) for k in (
                "proposals", "embeddings_reused", "embeddings_computed", "refinements_reused",
                "refinements_computed", "crops_reused", "crops_computed",
                "first_mask_recomputed", "size_bytes")}
        if imap.meta.changes is not None:
            row["changes"] = imap.meta.changes.summary()
        rows[name], maps[name] = row, imap
        print(f"{name}: {json.dumps(row)}", flush=True)
        return imap

    run("initial", tmp / "map", masks)
    # the grown case starts from this state too: its cache knows the first keyframes only
    shutil.rmtree(tmp / "map_grown", ignore_errors=True)
    shutil.copytree(tmp / "map", tmp / "map_grown")
    restore(scene, held)
    run("rebuild", tmp / "map", masks)
    run("scratch", tmp / "scratch", masks, cache="off")
    rows["rebuild"]["vs_scratch"] = compare_maps(maps["rebuild"], maps["scratch"])
    rows["rebuild"]["ratio"] = round(rows["rebuild"]["seconds"] / rows["scratch"]["seconds"], 3)
    rows["rebuild"]["cpu_ratio"] = round(rows["rebuild"]["cpu_seconds"] /
                                         rows["scratch"]["cpu_seconds"], 3)
    rows["rebuild"]["first_mask_with_new_views"] = first_changed_views(maps["initial"],
                                                                       maps["scratch"])
    rows["rebuild"]["masks_with_new_views"] = sum(
        x.views != y.views for x, y in zip(maps["initial"].meta.instances,
                                           maps["scratch"].meta.instances))
    print(f"rebuild vs scratch: {json.dumps(rows['rebuild']['vs_scratch'])}, ratio "
          f"{rows['rebuild']['ratio']} (CPU time {rows['rebuild']['cpu_ratio']}), first mask "
          f"with new views "
          f"{rows['rebuild']['first_mask_with_new_views']} "
          f"({rows['rebuild']['masks_with_new_views']} of {masks.shape[1]} masks)", flush=True)

    if not args.skip_grown:
        rng = np.random.default_rng(1)
        extra = rng.choice(len(points), int(args.grow * len(points)), replace=False)
        grown_pts = np.concatenate([points, points[extra] + rng.normal(0, 0.003, (len(extra),
                                                                               3))])
        grown_pts = grown_pts.astype(np.float32)
        grown_col = None if colors is None else np.concatenate([colors, colors[extra]])
        grown_masks = assign(grown_pts, centres)
        # new keyframes and a grown cloud, against the initial build's map and cache
        run("grown", tmp / "map_grown", grown_masks, cloud=(grown_pts, grown_col))
        run("grown_scratch", tmp / "scratch_grown", grown_masks, cloud=(grown_pts, grown_col),
            cache="off")
        rows["grown"]["vs_scratch"] = compare_maps(maps["grown"], maps["grown_scratch"])
        rows["grown"]["ratio"] = round(rows["grown"]["seconds"] /
                                       rows["grown_scratch"]["seconds"], 3)
        rows["grown"]["cpu_ratio"] = round(rows["grown"]["cpu_seconds"] /
                                           rows["grown_scratch"]["cpu_seconds"], 3)
        print(f"grown vs scratch: {json.dumps(rows['grown']['vs_scratch'])}, ratio "
              f"{rows['grown']['ratio']} (CPU time {rows['grown']['cpu_ratio']})", flush=True)
    result = {"args": vars(args), "machine": machine, "points": int(len(points)),
              "masks": int(masks.shape[1]), "rows": rows}
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))
    if not args.keep:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


def _cpu() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


if __name__ == "__main__":
    sys.exit(main())
