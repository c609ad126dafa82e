"""Feature stage: the official code's structure against ours, in one run on the same inputs.

Runs, each in its own process (peak memory is its own), on the same scene, masks, checkpoint
files and seeds:

* ``official``: benchmarks/official_baseline.py (dense views x masks x H x W array, ``set_image``
  per (mask, view), SAM's public ``SamPredictor.predict`` once per round at full resolution, PIL
  preprocessing and one CLIP batch per mask), the official code's calls;
* ``ours``: ``compute_features`` with paper-faithful settings (one embedding per frame, split
  decoder, tensor preprocessing, batched crops);
* ``profile``: ours with the opt-in speed keys of a profile (default config/profiles/cpu.yaml).

Printed per run: seconds per stage (visibility and the rest, SAM image embeddings, SAM decoder,
CLIP), SAM embeddings, peak RSS (and GPU memory on CUDA), the speed-up over ``official``, and the
agreement: feature cosine per mask against ``official`` / ``ours`` and, for the profile, the IoU of
its SAM masks with the faithful path's for the same (frame, prompts).

    python benchmarks/bench_features.py --masks 13 --frames 24 --frame-step 8 --threads 2
    python benchmarks/bench_features.py --stand-ins                 # hull + colour, seconds
    python benchmarks/bench_features.py --gpu-paper                 # vit_h + ViT-L/14@336, CUDA

SAM's IoU head gets ``--iou-offset`` (default 0.5) added to its output bias in every run: at random
weights nearly every round scores <= 0, where the official code skips the view and ours crops the
prompt pixels' box, so without it the runs encode different crops (RESULTS.md, issue 12).

Masks are a seeded k-means partition of the cloud into ``--masks`` spatial chunks (so 13, 50 or
150 masks exist on any scene); ``--points`` tiles the cloud with 2 mm jitter up to that size.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from _common import official_sam_predict  # noqa: E402

RUNS = ("official", "ours", "profile")
SPEED_KEYS = ("segmenter.prompt_batch", "segmenter.early_stop_iou", "segmenter.precision",
              "segmenter.quantize", "encoder.preprocess", "encoder.precision", "encoder.quantize",
              "encoder.batch_size", "visibility.share_fraction")


def _sync(device):
    if str(device).startswith("cuda"):
        import torch
        torch.cuda.synchronize()


class Timed:
    """Wraps a segmenter or encoder: seconds per method, SAM embeddings, SAM masks per prompt."""

    def __init__(self, inner, device, official_sam=False):
        self.inner, self.device, self.official_sam = inner, device, official_sam
        self.name = inner.name
        self.dim = getattr(inner, "dim", None)
        self.seconds = {"sam_embed": 0.0, "sam_decode": 0.0, "clip": 0.0}
        self.embeddings = 0
        self.masks: dict[str, np.ndarray] = {}
        self._image = ""

    def _timed(self, key, fn, *args):
        _sync(self.device)
        t = time.perf_counter()
        out = fn(*args)
        _sync(self.device)
        self.seconds[key] += time.perf_counter() - t
        return out

    def set_image(self, image):
        self._image = hashlib.sha1(np.ascontiguousarray(image).tobytes()).hexdigest()[:16]
        self.embeddings += 1
        self._timed("sam_embed", self.inner.set_image, image)

    def _key(self, prompts):
        return self._image + hashlib.sha1(np.asarray(prompts, np.float32).tobytes()).hexdigest()

    def predict(self, prompt_sets):
        if self.official_sam:          # the official call: SamPredictor.predict, one round
            out = self._timed("sam_decode", official_sam_predict, self.inner.predictor,
                              prompt_sets)
        else:
            out = self._timed("sam_decode", self.inner.predict, prompt_sets)
        self.masks[self._key(prompt_sets)] = np.packbits(out[0])
        return out

    def predict_many(self, prompt_list):
        if not hasattr(self.inner, "predict_many"):
            return [self.predict(p) for p in prompt_list]
        outs = self._timed("sam_decode", self.inner.predict_many, prompt_list)
        for p, (mask, _) in zip(prompt_list, outs):
            self.masks[self._key(p)] = np.packbits(mask)
        return outs

    def encode_images(self, crops):
        return self._timed("clip", self.inner.encode_images, crops)


def make_masks(points, n, seed=0):
    """(P, n) boolean masks: a seeded k-means partition of the points (n spatial chunks)."""
    from scipy.cluster.vq import kmeans2
    _, label = kmeans2(points.astype(np.float64), n, seed=seed, minit="++")
    masks = label[:, None] == np.arange(n)[None]
    return masks[:, masks.sum(axis=0) >= 20]


def tile_points(points, n, seed=0):
    """The cloud repeated with 2 mm jitter up to ``n`` points (a denser scan of the same scene)."""
    if n <= len(points):
        return points
    rng = np.random.default_rng(seed)
    reps = int(np.ceil(n / len(points)))
    tiled = np.concatenate([points] + [points + rng.normal(0, 0.002, points.shape)
                                       for _ in range(reps - 1)])[:n]
    return tiled.astype(np.float32)


def build_models(args, run, tmp: Path):
    if args.stand_ins:
        from openmask3d_ros.core.encoders.colour import ColourEncoder
        from openmask3d_ros.core.segmenters.hull import HullSegmenter
        return HullSegmenter(), ColourEncoder()
    from openmask3d_ros.core.encoders.clip import ClipEncoder
    from openmask3d_ros.core.segmenters.sam import SamSegmenter
    cfg = run_config(args, run)
    s, e = cfg.segmenter, cfg.encoder
    sam = SamSegmenter(args.sam, str(tmp / "sam.pth"), args.device, s.prompt_batch,
                       s.early_stop_iou, s.precision, s.quantize)
    if args.iou_offset:
        # random weights predict IoU <= 0 for most rounds: the official code crashes there (the
        # baseline skips the view) while ours crops the prompt pixels' box, so the two runs
        # would encode different crops (cosine ~0.9 at 4 masks, RESULTS.md); the same offset
        # for every run makes the rounds valid, as benchmarks/fidelity_real.py does
        import torch
        with torch.no_grad():
            sam.model.mask_decoder.iou_prediction_head.layers[-1].bias += args.iou_offset
    clip = ClipEncoder(args.clip, str(tmp / "clip.pt"), args.device, e.batch_size,
                       preprocess_mode="pil" if run == "official" else e.preprocess,
                       precision=e.precision, quantize=e.quantize)
    return sam, clip


def run_config(args, run):
    from openmask3d_ros.core.config import PipelineConfig, load_config
    cfg = PipelineConfig().updated({"seed": 0, "encoder.batch_size": args.batch_size,
                                    "segmenter.prompt_seeding": "stream"})   # official draws
    if run == "profile":
        prof = load_config(args.profile).flat()
        cfg = cfg.updated({k: prof[k] for k in SPEED_KEYS if k in prof})
    return cfg


def child(args) -> int:
    """One run (``--only``): prints a RESULT line, writes features and SAM masks."""
    from openmask3d_ros.core.scene import SceneFolder
    from openmask3d_ros.core.threads import configure_threads
    tmp = Path(args.tmp)
    threads = configure_threads(args.threads)
    scene = SceneFolder(args.scene)
    frame_ids = scene.frame_ids[::args.frame_step]
    points = np.load(tmp / "points.npy")
    masks = np.load(tmp / f"masks_{args.num_masks}.npy")
    seg, enc = build_models(args, args.only, tmp)
    seg, enc = Timed(seg, args.device, official_sam=args.only == "official" and not
                     args.stand_ins), Timed(enc, args.device)
    enc.seconds = seg.seconds                          # one table of stage times
    cfg = run_config(args, args.only)
    if args.device.startswith("cuda"):
        import torch
        torch.cuda.reset_peak_memory_stats()
    _sync(args.device)
    t = time.perf_counter()
    if args.only == "official":
        from official_baseline import official_features
        v, c, s = cfg.visibility, cfg.crops, cfg.segmenter
        feats, trace = official_features(points, masks, scene, frame_ids, seg, enc, v.k_view,
                                         c.k_exp, c.levels, v.k_threshold, s.k_rounds,
                                         s.k_sample, cfg.seed)
        feats = feats / np.maximum(np.linalg.norm(feats, axis=1, keepdims=True), 1e-12)
        extra = {"no_valid_round": len(trace.crashed), "pairs": len(trace.prompts)}
    else:
        from openmask3d_ros.core.features import compute_features
        feats, report = compute_features(points, masks, scene, frame_ids, seg, enc, cfg)
        extra = {"view_sharing": report.view_sharing, "no_valid_round": sum(report.fallbacks),
                 "pairs": sum(len(v) for v in report.views)}
    _sync(args.device)
    total = time.perf_counter() - t
    res = {"total_s": total, **{k: v for k, v in seg.seconds.items()},
           "visibility_and_rest_s": total - sum(seg.seconds.values()),
           "sam_embeddings": seg.embeddings, "threads": threads,
           "sam_rounds_decoded": getattr(seg.inner, "rounds_decoded", None),
           "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, **extra}
    if args.device.startswith("cuda"):
        import torch
        res["peak_gpu_gib"] = torch.cuda.max_memory_allocated() / 2**30
    np.save(tmp / f"feat_{args.only}_{args.num_masks}.npy", feats)
    np.savez(tmp / f"sam_{args.only}_{args.num_masks}.npz", **seg.masks)
    print("RESULT " + json.dumps(res))
    return 0


def prepare(args, tmp: Path) -> None:
    """Scene, points, masks and random-weight checkpoint files, shared by all runs."""
    from openmask3d_ros.core.scene import SceneFolder
    if not args.scene:
        from openmask3d_ros.core.synthetic import make_scene
        args.scene = str(make_scene(tmp / "scene", seed=0, num_frames=args.frames,
                                    width=args.width, height=args.height))
    points = tile_points(SceneFolder(args.scene).cloud()[0], args.points)
    np.save(tmp / "points.npy", points)
    for n in args.masks:
        np.save(tmp / f"masks_{n}.npy", make_masks(points, n))
    if not args.stand_ins:
        import open_clip
        import torch
        from segment_anything import sam_model_registry
        torch.manual_seed(0)
        torch.save(open_clip.create_model(args.clip, pretrained=None).state_dict(),
                   tmp / "clip.pt")
        torch.save(sam_model_registry[args.sam](checkpoint=None).state_dict(), tmp / "sam.pth")


def compare(args) -> int:
    tmp = Path(tempfile.mkdtemp(prefix="bench_features_"))
    prepare(args, tmp)
    models = "stand-ins" if args.stand_ins else f"{args.sam} + {args.clip}"
    print(f"scene {args.scene}: {len(np.load(tmp / 'points.npy'))} points, frame step "
          f"{args.frame_step}; models {models}, device {args.device}, threads "
          f"{args.threads or 'auto'}; load {os.getloadavg()[0]:.2f}")
    for n in args.masks:
        rows = {}
        for run in args.runs:
            cmd = [sys.executable, __file__, "--only", run, "--tmp", str(tmp), "--num-masks",
                   str(n)] + sys.argv[1:] + ["--scene", args.scene]
            proc = subprocess.run(cmd, capture_output=True, text=True)
            if proc.returncode != 0:
                print(proc.stdout[-3000:], proc.stderr[-3000:])
                return proc.returncode
            line = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")][-1]
            rows[run] = json.loads(line[len("RESULT "):])
        masks = np.load(tmp / f"masks_{n}.npy").shape[1]
        print(f"\n{masks} masks")
        print(f"{'run':>9} {'total s':>8} {'vis+rest':>8} {'SAM emb':>8} {'SAM dec':>8} "
              f"{'CLIP':>7} {'embeds':>6} {'RSS GiB':>7} {'GPU GiB':>7} {'speed-up':>8}")
        base = rows.get("official", {}).get("total_s")
        for run, r in rows.items():
            print(f"{run:>9} {r['total_s']:8.2f} {r['visibility_and_rest_s']:8.2f} "
                  f"{r['sam_embed']:8.2f} {r['sam_decode']:8.2f} {r['clip']:7.2f} "
                  f"{r['sam_embeddings']:6d} {r['peak_rss_gib']:7.2f} "
                  f"{r.get('peak_gpu_gib', float('nan')):7.2f} "
                  f"{(base / r['total_s']) if base else float('nan'):7.1f}x")
            if r.get("sam_rounds_decoded") is not None:
                print(f"          SAM rounds through the split decoder: {r['sam_rounds_decoded']}")
            if r.get("no_valid_round") is not None:
                what = "skipped (official crash)" if run == "official" else "point-box fallback"
                print(f"          (mask, view) pairs with no round scoring > 0: "
                      f"{r['no_valid_round']} of {r['pairs']}, {what}")
            if r.get("view_sharing"):
                print(f"          view sharing: {json.dumps(r['view_sharing'])}")
        agreement(tmp, n, rows)
    return 0


def agreement(tmp: Path, n: int, rows: dict) -> None:
    """Feature cosine per mask (valid in both) and SAM mask IoU on common (frame, prompts)."""
    feats = {r: np.load(tmp / f"feat_{r}_{n}.npy") for r in rows}
    for a, b in (("ours", "official"), ("profile", "ours")):
        if a in feats and b in feats:
            ok = (np.linalg.norm(feats[a], axis=1) > 0) & (np.linalg.norm(feats[b], axis=1) > 0)
            cos = (feats[a][ok] * feats[b][ok]).sum(axis=1)
            msg = (f"feature cosine {a} vs {b}: mean {cos.mean():.6f} min {cos.min():.6f} "
                   f"({ok.sum()} masks)") if ok.any() else f"no common features {a}/{b}"
            if a == "profile":
                sa, sb = np.load(tmp / f"sam_{a}_{n}.npz"), np.load(tmp / f"sam_{b}_{n}.npz")
                common = sorted(set(sa.files) & set(sb.files))
                ious = []
                for k in common:
                    x, y = np.unpackbits(sa[k]).astype(bool), np.unpackbits(sb[k]).astype(bool)
                    ious.append((x & y).sum() / max((x | y).sum(), 1))
                if ious:
                    msg += (f"; SAM mask IoU mean {np.mean(ious):.4f} min {np.min(ious):.4f} "
                            f"({len(ious)} of {len(sb.files)} (frame, prompts) in common)")
            print(msg)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--scene", help="scene folder (default: a synthetic one, see --frames)")
    ap.add_argument("--frames", type=int, default=100, help="synthetic scene frames")
    ap.add_argument("--width", type=int, default=640)
    ap.add_argument("--height", type=int, default=480)
    ap.add_argument("--frame-step", type=int, default=10)
    ap.add_argument("--points", type=int, default=0, help="tile the cloud up to this many points")
    ap.add_argument("--masks", default="13,50,150", help="comma-separated mask counts")
    ap.add_argument("--runs", default=",".join(RUNS), help="which of official,ours,profile")
    ap.add_argument("--profile", default=str(ROOT / "config/profiles/cpu.yaml"))
    ap.add_argument("--sam", default="vit_b")
    ap.add_argument("--clip", default="ViT-B-32")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--threads", type=int, default=0, help="CPU threads (0: threads.py default)")
    ap.add_argument("--stand-ins", action="store_true", help="hull + colour stand-ins")
    ap.add_argument("--iou-offset", type=float, default=0.5,
                    help="added to SAM's IoU-head output bias in every run (random weights score "
                         "<= 0 otherwise, where the official code skips the view and ours falls "
                         "back to a box); 0.5 keeps rounds below the profile's early stop 0.9")
    ap.add_argument("--gpu-paper", action="store_true",
                    help="paper models on CUDA: vit_h + ViT-L-14-336, 1000 frames at step 10 "
                         "(100 keyframes), 150k points")
    ap.add_argument("--only", choices=RUNS, help=argparse.SUPPRESS)
    ap.add_argument("--tmp", help=argparse.SUPPRESS)
    ap.add_argument("--num-masks", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.gpu_paper:
        args.sam, args.clip, args.device = "vit_h", "ViT-L-14-336", "cuda"
        args.frames, args.frame_step = max(args.frames, 1000), 10
        args.points = args.points or 150_000
        if args.profile.endswith("cpu.yaml"):
            args.profile = str(ROOT / "config/profiles/paper.yaml")
    args.masks = [int(m) for m in str(args.masks).split(",") if m]
    args.runs = [r for r in str(args.runs).split(",") if r]
    if args.only:
        return child(args)
    return compare(args)


if __name__ == "__main__":
    sys.exit(main())
