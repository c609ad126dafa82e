"""Presence: does a query say "found" exactly when the object is in the map?

Generated scenes (seeds, layouts, resolutions, frame counts and depth noise vary) are mapped with
the configured models; then every object present is queried (it must be found, with a top hit of
IoU >= 0.5 with it) and queries for absent objects and nonsense are asked (they must not be
found). Reported: precision and recall of "found" at the default min_relevance and at a sweep of
thresholds, and the relevance of the weakest present / strongest absent answer.

    python benchmarks/bench_presence.py                          # colour stand-in, 6 scenes
    python benchmarks/bench_presence.py --scenes 2 --frames 20   # quick
    python benchmarks/bench_presence.py --encoder clip --clip-model ViT-L-14-336 \\
        --clip-checkpoint /path/to/open_clip_pytorch_model.bin  # real CLIP weights (labels)

With the colour stand-in the vocabulary is colour words: present = the objects' colours, absent =
colour words no object has (brown table and grey floor excluded). With CLIP, present = the
placed objects' names, absent = catalogue objects not placed and other household objects.
Without CLIP weights ``--encoder clip`` prints a skip line and exits 0.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

NONSENSE = ["a mug", "xxxxxxxx", "x" * 10000, "\U0001F37A\U0001F642", "something to sit on"]
OTHER_OBJECTS = ["a laptop", "a banana", "a chair", "a bottle", "a potted plant", "scissors"]
# (width, height, frames, depth noise) cycled over the scenes
LAYOUTS = [(320, 240, 60, 0.0), (256, 192, 40, 0.003), (160, 120, 30, 0.0),
           (320, 240, 20, 0.002), (200, 150, 50, 0.0), (256, 192, 30, 0.0)]
SWEEP = (0.5, 0.55, 0.6, 0.7, 0.8, 0.9)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--scenes", type=int, default=6, help="number of generated scenes")
    p.add_argument("--first-seed", type=int, default=100)
    p.add_argument("--frames", type=int, default=0, help="frames per scene (0: per layout)")
    p.add_argument("--width", type=int, default=0, help="image width (0: per layout)")
    p.add_argument("--height", type=int, default=0, help="image height (0: per layout)")
    p.add_argument("--min-relevance", type=float, default=None,
                   help="threshold of 'found' (default: the config's query.min_relevance)")
    p.add_argument("--encoder", choices=("colour", "clip"), default="colour")
    p.add_argument("--clip-model", default="ViT-L-14-336")
    p.add_argument("--clip-checkpoint", default="", help="open_clip weights file (CLIP only)")
    p.add_argument("--device", default="auto")
    p.add_argument("--work", help="folder for the scenes (default: a temporary folder)")
    p.add_argument("--json", help="also write the results to this JSON file")
    return p.parse_args(argv)


def queries_for(gt_labels: dict, encoder: str) -> tuple[list[tuple[str, int]], list[str]]:
    """([(present query, ground-truth id)], [absent queries])."""
    from openmask3d_ros.core.encoders.colour import COLOUR_NAMES
    from openmask3d_ros.core.synthetic import CATALOGUE
    objects = {g: i for g, i in gt_labels.items() if i["label"] not in ("table", "floor")}
    if encoder == "colour":
        present = [(i["color"], g) for g, i in objects.items()]
        taken = {i["color"] for i in gt_labels.values()}
        absent = [c for c in COLOUR_NAMES if c not in taken]
    else:
        present = [(f"a {i['label']}", g) for g, i in objects.items()]
        placed = {i["label"] for i in objects.values()}
        absent = [f"a {n}" for n in CATALOGUE if n not in placed] + OTHER_OBJECTS
    return present, absent + NONSENSE


def evaluate_scene(root: Path, engine, encoder: str) -> list[dict]:
    """One row per query: kind, text, best relevance, whether the best hit is the object."""
    from openmask3d_ros.core.scene import SceneFolder
    gt = SceneFolder(root).ground_truth()
    present, absent = queries_for(gt.labels, encoder)
    rows = []
    for text, gid in present:
        a = engine.ask(text, min_relevance=0.0, top_k=1)
        best = a.best
        truth = np.flatnonzero(gt.instance_ids == gid)
        iou = 0.0
        if best is not None:
            iou = len(np.intersect1d(truth, best.point_indices)) / len(
                np.union1d(truth, best.point_indices))
        rows.append({"kind": "present", "query": text, "relevance": best.relevance if best
                     else 0.0, "correct": iou >= 0.5})
    for text in absent:
        a = engine.ask(text, min_relevance=0.0, top_k=1)
        rows.append({"kind": "absent", "query": text[:24],
                     "relevance": a.best.relevance if a.best else 0.0, "correct": False})
    return rows


def scores(rows: list[dict], threshold: float) -> dict:
    """Precision / recall of 'found' (best relevance >= threshold) at ``threshold``."""
    tp = sum(r["kind"] == "present" and r["relevance"] >= threshold and r["correct"]
             for r in rows)
    found = sum(r["relevance"] >= threshold for r in rows)
    n_present = sum(r["kind"] == "present" for r in rows)
    return {"threshold": threshold, "tp": tp, "found": found, "present": n_present,
            "absent": len(rows) - n_present,
            "precision": tp / found if found else 1.0,
            "recall": tp / n_present if n_present else 1.0}


def main(argv=None) -> int:
    args = parse_args(argv)
    from openmask3d_ros.core.config import PipelineConfig
    cfg = PipelineConfig()
    if args.encoder == "clip":
        ckpt = Path(args.clip_checkpoint).expanduser() if args.clip_checkpoint else None
        if ckpt is None or not ckpt.exists():
            print(f"SKIP: no CLIP weights configured (--clip-checkpoint "
                  f"{args.clip_checkpoint or '<empty>'}): the presence benchmark with CLIP needs "
                  f"real open_clip weights for {args.clip_model}; random weights would measure "
                  f"nothing. The colour stand-in run is `--encoder colour`.")
            return 0
        cfg = cfg.updated({"encoder": {"backend": "clip", "clip_model": args.clip_model,
                                       "clip_checkpoint": str(ckpt)}, "device": args.device})
    threshold = cfg.query.min_relevance if args.min_relevance is None else args.min_relevance

    from openmask3d_ros.core.models import build_models
    from openmask3d_ros.core.pipeline import run_pipeline
    from openmask3d_ros.core.query import QueryEngine
    from openmask3d_ros.core.synthetic import make_scene

    models = build_models(cfg)
    work = Path(args.work or tempfile.mkdtemp(prefix="bench_presence_"))
    rows: list[dict] = []
    t0 = time.perf_counter()
    for k in range(args.scenes):
        seed = args.first_seed + k
        w, h, frames, noise = LAYOUTS[k % len(LAYOUTS)]
        w, h, frames = args.width or w, args.height or h, args.frames or frames
        root = make_scene(work / f"scene{seed}", seed=seed, num_frames=frames, width=w,
                          height=h, depth_noise=noise)
        imap = run_pipeline(root, cfg, models=models)
        engine = QueryEngine(imap, models.text_encoder, models.image_encoder)
        scene_rows = evaluate_scene(root, engine, args.encoder)
        s = scores(scene_rows, threshold)
        print(f"scene seed {seed} {w}x{h} {frames} frames noise {noise}: "
              f"{s['present']} present / {s['absent']} absent queries, precision "
              f"{s['precision']:.3f} recall {s['recall']:.3f}", flush=True)
        rows += [dict(r, seed=seed) for r in scene_rows]
    elapsed = time.perf_counter() - t0

    present = [r["relevance"] for r in rows if r["kind"] == "present" and r["correct"]]
    absent = [r["relevance"] for r in rows if r["kind"] == "absent"]
    main_scores = scores(rows, threshold)
    sweep = [scores(rows, t) for t in SWEEP]
    encoder_name = models.text_encoder.name
    print(f"\nencoder {encoder_name}, {args.scenes} scenes, {len(rows)} queries "
          f"({main_scores['present']} present, {main_scores['absent']} absent), {elapsed:.1f} s")
    print(f"min_relevance {threshold:.2f}: precision {main_scores['precision']:.3f}, "
          f"recall {main_scores['recall']:.3f}")
    if present and absent:
        print(f"relevance: weakest correct present {min(present):.3f}, strongest absent "
              f"{max(absent):.3f}")
    print("\n| min_relevance | precision | recall | found | present | absent |")
    print("|---|---|---|---|---|---|")
    for s in sweep:
        print(f"| {s['threshold']:.2f} | {s['precision']:.3f} | {s['recall']:.3f} | "
              f"{s['found']} | {s['present']} | {s['absent']} |")
    if args.json:
        Path(args.json).write_text(json.dumps({
            "encoder": encoder_name, "scenes": args.scenes, "threshold": threshold,
            "scores": main_scores, "sweep": sweep, "elapsed_s": elapsed,
            "weakest_present": min(present) if present else None,
            "strongest_absent": max(absent) if absent else None, "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
