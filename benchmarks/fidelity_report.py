"""How far each fidelity mode is from the official feature stage (numbers for docs/fidelity.md).

On synthetic scenes (several scene seeds, several sampling seeds) it runs
``benchmarks/official_baseline.py`` (the official algorithm) and our feature stage in
``fidelity: official`` and ``fidelity: paper`` with the same masks, frames and models, and
reports per mode: masks whose view set / view order equals the official one, (mask, view) pairs
whose prompt sets and crop boxes equal the official ones, and the cosine between our and the
official per-mask features.

Models are deterministic weight-free stand-ins so that differences come from the algorithm
only: a segmenter whose mask per round is the box of that round's prompts (grown 2 px) with a
score fixed by the prompts, and an encoder that embeds a crop as its 8x8 RGB thumbnail (so the
feature moves with the crop box). Neither is SAM or CLIP.

    python benchmarks/fidelity_report.py [--scenes 0 1 2] [--seeds 0 1] [--size 320 240]
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from _common import RoundBoxSegmenter  # noqa: E402
from official_baseline import official_features  # noqa: E402

from openmask3d_ros.core.config import PipelineConfig  # noqa: E402
from openmask3d_ros.core.dbscan_split import split_masks  # noqa: E402
from openmask3d_ros.core.features import compute_features  # noqa: E402
from openmask3d_ros.core.proposals.geometric import GeometricProposals  # noqa: E402
from openmask3d_ros.core.scene import SceneFolder  # noqa: E402
from openmask3d_ros.core.synthetic import make_scene  # noqa: E402


class ThumbnailEncoder:
    """Stand-in: a crop embeds as its 8x8 RGB thumbnail (192-d, L2-normalised)."""
    name = "thumbnail-standin"
    dim = 192

    def __init__(self):
        self.crops: list[tuple[tuple, bytes]] = []

    def encode_images(self, crops):
        out = []
        for c in crops:
            self.crops.append((c.shape, c.tobytes()))
            out.append(cv2.resize(c, (8, 8), interpolation=cv2.INTER_AREA).astype(np.float32)
                       .ravel() + 1.0)
        out = np.asarray(out)
        return out / np.linalg.norm(out, axis=1, keepdims=True)


def compare(scene, points, masks, frames, mode: str, seed: int, two_sided: bool):
    enc_o = ThumbnailEncoder()
    feats_o, trace = official_features(points, masks, scene, frames, RoundBoxSegmenter(),
                                       enc_o, seed=seed)
    feats_o /= np.maximum(np.linalg.norm(feats_o, axis=1, keepdims=True), 1e-12)
    cfg = PipelineConfig().updated({"fidelity": mode, "seed": seed,
                                    "visibility.two_sided": two_sided,
                                    "segmenter.prompt_seeding": "stream"})   # official draws
    seg, enc = RoundBoxSegmenter(), ThumbnailEncoder()
    feats, report = compute_features(points, masks, scene, frames, seg, enc, cfg)
    official_views = [[frames[v] for v in row if trace.scores[v, m] > 0]
                      for m, row in enumerate(trace.topk)]
    M = masks.shape[1]
    same_order = sum(a == b for a, b in zip(report.views, official_views))
    same_set = sum(set(a) == set(b) for a, b in zip(report.views, official_views))
    ids = RoundBoxSegmenter()
    same_prompts = 0
    for (_m, v), prompts in trace.prompts.items():      # all rounds of one (mask, view)
        ids.set_image(scene.color(frames[v]))
        same_prompts += (ids.image_id, prompts.astype(int).tobytes()) in seg.log
    ours = set(enc.crops)
    same_crops = sum(c in ours for c in enc_o.crops)
    has, has_o = np.linalg.norm(feats, axis=1) > 0, np.linalg.norm(feats_o, axis=1) > 0
    cos = np.sum(feats[has & has_o] * feats_o[has & has_o], axis=1)
    return {"masks": M, "same_set": same_set, "same_order": same_order,
            "pairs": len(trace.prompts), "same_prompts": same_prompts,
            "crops": len(enc_o.crops), "same_crops": same_crops,
            "cos_mean": float(cos.mean()) if len(cos) else float("nan"),
            "cos_min": float(cos.min()) if len(cos) else float("nan")}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--scenes", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--size", type=int, nargs=2, default=[320, 240])
    ap.add_argument("--frames", type=int, default=40)
    ap.add_argument("--frame-step", type=int, default=2)
    ap.add_argument("--depth-noise", type=float, default=0.005)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="fidelity_"))
    print("| scene | seed | mode | masks | same view set | same view order | prompt sets equal "
          "| crops equal | feature cos mean / min |")
    print("|---|---|---|---|---|---|---|---|---|")
    for s in args.scenes:
        root = make_scene(tmp / f"scene{s}", seed=s, num_frames=args.frames,
                          width=args.size[0], height=args.size[1], depth_noise=args.depth_noise)
        scene = SceneFolder(root)
        points, colors = scene.cloud()
        cfg = PipelineConfig()
        p = cfg.proposals
        masks = split_masks(points, GeometricProposals(p).propose(points, colors).masks, p.dbscan_eps,
                            p.dbscan_min_points, p.min_mask_points)
        frames = scene.frame_ids[::args.frame_step]
        for seed in args.seeds:
            for mode, two in (("official", True), ("official", False), ("paper", False)):
                r = compare(scene, points, masks, frames, mode, seed, two)
                print(f"| {s} | {seed} | {mode}{'' if two or mode == 'paper' else ' one-sided'} "
                      f"| {r['masks']} | {r['same_set']}/{r['masks']} | "
                      f"{r['same_order']}/{r['masks']} | {r['same_prompts']}/{r['pairs']} | "
                      f"{r['same_crops']}/{r['crops']} | {r['cos_mean']:.4f} / "
                      f"{r['cos_min']:.4f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
