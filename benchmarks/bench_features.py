"""Feature stage: our per-frame-shared, batched implementation vs the official code's structure.

The baseline ("official-style", benchmarks/official_baseline.py) reimplements how
OpenMask3D/openmask3d computes features, with its own visibility and view choice: a dense views x
masks x H x W visibility array, ``set_image`` for every (mask, view) pair, SAM rounds one by one
at full resolution, and one small CLIP batch (L crops x k views) per mask. Both run on the
same scene, masks, models and seeds, so with SAM the features agree (max |difference| printed;
the hull stand-in unions all rounds' prompts, so it differs from one-round-at-a-time by design).
Each implementation runs in its own process so peak memory is its own.

    python benchmarks/bench_features.py                        # stand-ins, CPU, synthetic scene
    python benchmarks/bench_features.py --real --sam vit_b --clip ViT-B-32     # random weights
    python benchmarks/bench_features.py --real --sam vit_h --clip ViT-L-14-336 --device cuda
"""
from __future__ import annotations

import argparse
import json
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

from openmask3d_ros.core.config import PipelineConfig  # noqa: E402
from openmask3d_ros.core.dbscan_split import split_masks  # noqa: E402
from openmask3d_ros.core.features import compute_features  # noqa: E402
from openmask3d_ros.core.interfaces import l2_normalize  # noqa: E402
from openmask3d_ros.core.proposals.geometric import GeometricProposals  # noqa: E402
from openmask3d_ros.core.scene import SceneFolder  # noqa: E402
from official_baseline import official_features  # noqa: E402


def official_style(points, masks, scene, frame_ids, segmenter, encoder, cfg):
    """The official algorithm (benchmarks/official_baseline.py, its own visibility and view
    choice); returns (L2-normalised features, set_image calls)."""
    s, c, v = cfg.segmenter, cfg.crops, cfg.visibility
    features, trace = official_features(
        points, masks, scene, frame_ids, segmenter, encoder, topk=v.k_view,
        multi_level_expansion_ratio=c.k_exp, num_levels=c.levels, vis_threshold=v.k_threshold,
        num_random_rounds=s.k_rounds, num_selected_points=s.k_sample, seed=cfg.seed)
    return l2_normalize(features), trace.set_image_calls


def build_real(args, tmp: Path, device: str):
    """Real architectures at random weights, saved and loaded through the user path."""
    import open_clip
    import torch
    from segment_anything import sam_model_registry

    from openmask3d_ros.core.encoders.clip import ClipEncoder
    from openmask3d_ros.core.segmenters.sam import SamSegmenter
    torch.manual_seed(0)
    clip_path = tmp / "clip.pt"
    torch.save(open_clip.create_model(args.clip, pretrained=None).state_dict(), clip_path)
    sam_path = tmp / "sam.pth"
    torch.save(sam_model_registry[args.sam](checkpoint=None).state_dict(), sam_path)
    enc = ClipEncoder(model_name=args.clip, checkpoint=str(clip_path), device=device,
                      batch_size=args.batch_size)
    return SamSegmenter(model_type=args.sam, checkpoint=str(sam_path), device=device), enc


def sync(device: str) -> None:
    if device.startswith("cuda"):
        import torch
        torch.cuda.synchronize()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--scene", help="scene folder (default: synthetic 640x480, 100 frames)")
    ap.add_argument("--real", action="store_true", help="SAM + CLIP at random weights")
    ap.add_argument("--sam", default="vit_b")
    ap.add_argument("--clip", default="ViT-B-32")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--frame-step", type=int, default=10)
    ap.add_argument("--max-masks", type=int, default=0, help="use at most this many masks")
    ap.add_argument("--only", choices=("ours", "official"), help=argparse.SUPPRESS)
    ap.add_argument("--features-out", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if not args.only:
        return compare(args)

    tmp = Path(tempfile.mkdtemp(prefix="bench_features_"))
    scene_dir = Path(args.scene)
    scene = SceneFolder(scene_dir)
    cfg = PipelineConfig()
    frame_ids = scene.frame_ids[::args.frame_step]
    points, colors = scene.cloud()
    masks = split_masks(points, GeometricProposals(cfg.proposals).propose(points, colors),
                        cfg.proposals.dbscan_eps, cfg.proposals.dbscan_min_points,
                        cfg.proposals.min_mask_points)
    if args.max_masks:
        masks = masks[:, :args.max_masks]
    if args.real:
        segmenter, encoder = build_real(args, tmp, args.device)
    else:
        from openmask3d_ros.core.encoders.colour import ColourEncoder
        from openmask3d_ros.core.segmenters.hull import HullSegmenter
        segmenter, encoder = HullSegmenter(), ColourEncoder()
    print(f"scene {scene_dir}: {len(points)} points, {masks.shape[1]} masks, {len(frame_ids)} "
          f"keyframes, {scene.color_intrinsics().width}x{scene.color_intrinsics().height}; "
          f"segmenter {segmenter.name}, encoder {encoder.name}, device {args.device}")

    runner = {"ours": lambda: compute_features(points, masks, scene, frame_ids, segmenter,
                                               encoder, cfg)[0],
              "official": lambda: official_style(points, masks, scene, frame_ids, segmenter,
                                                 encoder, cfg)[0]}[args.only]
    if args.device.startswith("cuda"):
        import torch
        torch.cuda.reset_peak_memory_stats()
    sync(args.device)
    t = time.perf_counter()
    features = runner()
    sync(args.device)
    result = {"seconds": time.perf_counter() - t,
              "segmenter_images": getattr(segmenter, "encoder_calls", -1),
              "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}
    if args.device.startswith("cuda"):
        import torch
        result["peak_gpu_gib"] = torch.cuda.max_memory_allocated() / 2**30
    np.save(args.features_out, features)
    print("RESULT " + json.dumps(result))
    return 0


def compare(args) -> int:
    """Run both implementations in fresh processes (separate peak memory) on one scene."""
    tmp = Path(tempfile.mkdtemp(prefix="bench_features_"))
    if not args.scene:
        from openmask3d_ros.core.synthetic import make_scene
        args.scene = str(make_scene(tmp / "scene", seed=0, num_frames=100, width=640, height=480))
    rows = {}
    for only in ("ours", "official"):
        out = tmp / f"{only}.npy"
        cmd = [sys.executable, __file__, "--only", only, "--features-out", str(out)] + [
            a for a in sys.argv[1:]] + ["--scene", args.scene]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            print(proc.stdout, proc.stderr)
            return proc.returncode
        line = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")][-1]
        header = [ln for ln in proc.stdout.splitlines() if ln.startswith("scene ")]
        if only == "ours" and header:
            print(header[0])
        rows[only] = json.loads(line[len("RESULT "):])
        rows[only]["features"] = np.load(out)
        gpu = rows[only].get("peak_gpu_gib")
        print(f"{only:>9}: {rows[only]['seconds']:8.2f} s  segmenter images "
              f"{rows[only]['segmenter_images']:4d}  peak RSS {rows[only]['peak_rss_gib']:.2f} GiB"
              + (f"  peak GPU {gpu:.2f} GiB" if gpu is not None else ""))
    diff = np.abs(rows["ours"]["features"] - rows["official"]["features"]).max()
    print(f"speed-up {rows['official']['seconds'] / rows['ours']['seconds']:.1f}x; "
          f"max |feature difference| {diff:.2e}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
