"""Peak memory per stage of ``openmask3d run``: the path before the memory work against today's.

Both runs build the same map (same synthetic scene, masks, random-weight checkpoint files, config),
each in its own process so that each peak is its own:

* ``before``: ``core.low_memory.ENABLED = False``: checkpoints copied into the built model, SAM's
  full attention matrices (the code path before issue 22), or with ``--code DIR`` the package of
  another checkout (e.g. ``git worktree add /tmp/base HEAD``);
* ``after``: today's defaults (weights taken from the mapped checkpoint, SAM attention in row
  chunks, freed memory handed back).

The run is the CLI's (``openmask3d run SCENE --config CFG --masks MASKS``) inside the child
process, with the stages wrapped: the peak RSS of each stage is read from ``VmHWM`` after
resetting it (``/proc/self/clear_refs``, Linux) at the stage's start, so every figure is the
process's whole resident memory at that stage's worst moment (weights and libraries included).
Stages: imports and start-up, model load, inputs, proposals, SAM image embedding, SAM decoder,
CLIP, the rest of the feature stage (visibility, prompts, crops), map saving, and the run's other
code (structure tagging, building the map). The whole process's peak is the largest of them
(resetting VmHWM resets ``ru_maxrss`` too). Then the two maps' features are compared (cosine per instance).

    python benchmarks/bench_memory.py --threads 2                   # fast.yaml models, 8 x 50
    python benchmarks/bench_memory.py --sam vit_h --clip ViT-L-14-336 --keyframes 2 --masks 5

Models: SAM ``--sam`` and CLIP ``--clip`` at random weights (seed 0), saved as checkpoint files
the way a user points the config at downloaded weights; SAM's IoU-head output bias is raised by
``--iou-offset`` in the file (as bench_features.py does) so that random-weight rounds score > 0
and the faithful SAM-mask path runs instead of the point-box fallback.
"""
from __future__ import annotations

import argparse
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
STAGES = ("startup", "load", "inputs", "proposals", "sam_embed", "sam_decode", "clip",
          "features_rest", "save", "other")
LABELS = {"startup": "imports, start-up", "load": "model load", "inputs": "scene, cloud",
          "proposals": "proposals", "sam_embed": "SAM embedding", "sam_decode": "SAM decode",
          "clip": "CLIP", "features_rest": "visibility, crops", "save": "map save",
          "other": "other run code"}


def _status_gib(key: str) -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 2**20
    return float("nan")


class StageMemory:
    """Peak RSS and seconds per stage; nested stages are attributed to the innermost one."""

    def __init__(self):
        self.stack = ["startup"]
        self.peak: dict[str, float] = {}
        self.seconds: dict[str, float] = {}
        self._t = time.perf_counter()
        self.resettable = self._reset()

    @staticmethod
    def _reset() -> bool:
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")           # resets VmHWM to the current RSS (Linux >= 4.0)
            return True
        except OSError:
            return False

    def _close(self) -> None:
        top = self.stack[-1]
        self.peak[top] = max(self.peak.get(top, 0.0), _status_gib("VmHWM"))
        now = time.perf_counter()
        self.seconds[top] = self.seconds.get(top, 0.0) + now - self._t
        self._t = now
        self._reset()

    def wrap(self, owner, attr: str, stage: str) -> None:
        """Count calls of ``owner.attr`` (a function or method) as ``stage``."""
        fn = getattr(owner, attr, None)
        if fn is None:
            return

        def wrapped(*args, **kwargs):
            self._close()
            self.stack.append(stage)
            try:
                return fn(*args, **kwargs)
            finally:
                self._close()
                self.stack.pop()
        setattr(owner, attr, wrapped)


def child(args) -> int:
    """One run: ``openmask3d run`` with stage wrappers; prints a RESULT line."""
    stages = StageMemory()
    if args.code and args.only == "before":
        sys.path.insert(0, str(Path(args.code).resolve()))
    else:
        sys.path.insert(0, str(ROOT))
    if args.threads:
        os.environ["OPENMASK3D_THREADS"] = str(args.threads)
    import openmask3d_ros
    from openmask3d_ros.cli import main as cli_main
    from openmask3d_ros.core import features, pipeline
    from openmask3d_ros.core.encoders.clip import ClipEncoder
    from openmask3d_ros.core.instance_map import InstanceMap
    from openmask3d_ros.core.segmenters.sam import SamSegmenter
    if args.only == "before" and not args.code:
        from openmask3d_ros.core import low_memory
        low_memory.ENABLED = False
    where = str(Path(openmask3d_ros.__file__).parents[1])
    stages.wrap(pipeline, "build_models", "load")
    stages.wrap(pipeline, "read_inputs", "inputs")
    stages.wrap(pipeline, "propose", "proposals")
    stages.wrap(pipeline, "split_proposals", "proposals")
    stages.wrap(pipeline, "compute_features", "features_rest")
    stages.wrap(features, "visibility_counts", "features_rest")
    stages.wrap(SamSegmenter, "set_image", "sam_embed")
    stages.wrap(SamSegmenter, "predict", "sam_decode")
    stages.wrap(SamSegmenter, "predict_many", "sam_decode")
    stages.wrap(ClipEncoder, "encode_images", "clip")
    stages.wrap(InstanceMap, "save", "save")
    tmp = Path(args.tmp)
    out = tmp / f"map_{args.only}"
    stages._close()
    stages.stack[0] = "other"          # from here: the run's code outside the stages below
    rc = cli_main(["run", str(tmp / "scene"), "--config", str(tmp / "config.yaml"),
                   "--masks", str(tmp / "masks.npy"), "--out", str(out)])
    stages._close()
    # resetting VmHWM resets ru_maxrss too: the process's peak is the largest stage peak
    total = (max(stages.peak.values()) if stages.resettable else
             resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20)
    res = {"code": where, "rc": rc, "peak_gib": stages.peak, "seconds": stages.seconds,
           "resettable": stages.resettable, "total_gib": total, "map": str(out)}
    print("RESULT " + json.dumps(res))
    return int(rc)


def prepare(args, tmp: Path) -> None:
    """Scene, masks, random-weight checkpoint files and the run's config file."""
    import open_clip
    import torch
    import yaml
    from segment_anything import sam_model_registry

    sys.path.insert(0, str(ROOT))
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from bench_features import make_masks

    from openmask3d_ros.core.scene import SceneFolder
    from openmask3d_ros.core.synthetic import make_scene
    make_scene(tmp / "scene", seed=0, num_frames=args.keyframes * args.frame_step,
               width=args.width, height=args.height)
    np.save(tmp / "masks.npy", make_masks(SceneFolder(tmp / "scene").cloud()[0], args.masks))
    torch.manual_seed(0)
    torch.save(open_clip.create_model(args.clip, pretrained=None).state_dict(), tmp / "clip.pt")
    sam = sam_model_registry[args.sam](checkpoint=None)
    with torch.no_grad():
        sam.mask_decoder.iou_prediction_head.layers[-1].bias += args.iou_offset
    torch.save(sam.state_dict(), tmp / "sam.pth")
    del sam
    cfg = yaml.safe_load(Path(args.profile).read_text())
    cfg.update(device="cpu", frame_step=args.frame_step, threads=args.threads)
    cfg["proposals"]["backend"] = "geometric"        # unused: the masks are given
    cfg["segmenter"].update(sam_model=args.sam, sam_checkpoint=str(tmp / "sam.pth"))
    cfg["encoder"].update(clip_model=args.clip, clip_checkpoint=str(tmp / "clip.pt"))
    (tmp / "config.yaml").write_text(yaml.safe_dump(cfg))


def compare(args) -> int:
    tmp = Path(tempfile.mkdtemp(prefix="bench_memory_"))
    prepare(args, tmp)
    masks = np.load(tmp / "masks.npy")
    print(f"openmask3d run, {args.sam} + {args.clip} (random weights) on CPU, {args.keyframes} "
          f"keyframes {args.width}x{args.height}, {masks.shape[1]} masks over {masks.shape[0]} "
          f"points, threads {args.threads or 'default'}; load {os.getloadavg()[0]:.2f}")
    rows = {}
    for run in ("before", "after"):
        cmd = [sys.executable, __file__, "--only", run, "--tmp", str(tmp)] + sys.argv[1:]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
        if proc.returncode != 0 or not lines:
            print(proc.stdout[-3000:], proc.stderr[-3000:])
            return proc.returncode or 1
        rows[run] = json.loads(lines[-1][len("RESULT "):])
    if not all(r["resettable"] for r in rows.values()):
        print("note: VmHWM cannot be reset here (/proc/self/clear_refs): a stage's figure is the "
              "peak so far")
    print(f"\n{'stage':<20} {'peak RSS GiB':>12} {'':>6} {'seconds':>8} {'':>8}")
    print(f"{'':<20} {'before':>6} {'after':>6} {'before':>8} {'after':>8}")
    for stage in STAGES:
        b, a = rows["before"], rows["after"]
        if stage not in b["peak_gib"] and stage not in a["peak_gib"]:
            continue
        print(f"{LABELS[stage]:<20} {b['peak_gib'].get(stage, float('nan')):6.2f} "
              f"{a['peak_gib'].get(stage, float('nan')):6.2f} "
              f"{b['seconds'].get(stage, float('nan')):8.1f} "
              f"{a['seconds'].get(stage, float('nan')):8.1f}")
    print(f"{'whole process':<20} {rows['before']['total_gib']:6.2f} "
          f"{rows['after']['total_gib']:6.2f} {sum(rows['before']['seconds'].values()):8.1f} "
          f"{sum(rows['after']['seconds'].values()):8.1f}")
    for run, r in rows.items():
        print(f"{run}: code from {r['code']}")
    features_agree(rows)
    print(f"load after the runs {os.getloadavg()[0]:.2f}; files in {tmp}")
    return 0


def features_agree(rows: dict) -> None:
    """Feature cosine per instance between the two maps (instances valid in both)."""
    sys.path.insert(0, str(ROOT))
    from openmask3d_ros.core.instance_map import InstanceMap
    fb, fa = (InstanceMap.load(rows[r]["map"]).features for r in ("before", "after"))
    if fb.shape != fa.shape:
        print(f"features differ in shape: before {fb.shape}, after {fa.shape}")
        return
    ok = (np.linalg.norm(fb, axis=1) > 0) & (np.linalg.norm(fa, axis=1) > 0)
    cos = (fb[ok] * fa[ok]).sum(axis=1)
    lost = int(((np.linalg.norm(fb, axis=1) > 0) != (np.linalg.norm(fa, axis=1) > 0)).sum())
    print(f"feature cosine after vs before: min {cos.min():.7f} mean {cos.mean():.7f} "
          f"({ok.sum()} of {len(fb)} instances with features in both; {lost} in only one); "
          f"max |difference| {np.abs(fb - fa).max():.2e}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--keyframes", type=int, default=8)
    ap.add_argument("--frame-step", type=int, default=10)
    ap.add_argument("--width", type=int, default=640)
    ap.add_argument("--height", type=int, default=480)
    ap.add_argument("--masks", type=int, default=50)
    ap.add_argument("--sam", default="vit_b")
    ap.add_argument("--clip", default="ViT-B-32")
    ap.add_argument("--profile", default=str(ROOT / "config/profiles/fast.yaml"),
                    help="config the run starts from (checkpoints, device replaced)")
    ap.add_argument("--threads", type=int, default=0, help="CPU threads (0: threads.py default)")
    ap.add_argument("--iou-offset", type=float, default=0.5)
    ap.add_argument("--code", help="run 'before' with the openmask3d_ros package of this checkout")
    ap.add_argument("--only", choices=("before", "after"), help=argparse.SUPPRESS)
    ap.add_argument("--tmp", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.only:
        return child(args)
    return compare(args)


if __name__ == "__main__":
    sys.exit(main())
