"""Offline subcommands: make-scene, run, query, demo."""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

from ..core.config import load_config

# Heavy modules (the pipeline pulls in scikit-learn and scipy; models pull in torch) are imported
# inside the commands that use them, so that --help and queries on stand-in maps start fast.

DEMO_QUERIES = ("red", "green", "blue", "yellow", "white", "black")


class TqdmProgress:
    """A progress callback that draws one bar per stage."""

    def __init__(self) -> None:
        self._bar = None
        self._stage = ""

    def __call__(self, stage: str, done: int, total: int) -> None:
        if stage != self._stage:
            from tqdm import tqdm
            self.close()
            self._stage = stage
            self._bar = tqdm(total=total, desc=stage, unit="step", leave=False,
                             disable=not sys.stderr.isatty())
        if self._bar is not None:
            self._bar.total = total
            self._bar.n = done
            self._bar.refresh()

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None


def add_build_options(p: argparse.ArgumentParser, where: str = "") -> None:
    """--config, --frame-step and --device: the options of a map build (``run``, ``demo``,
    ``batch``); ``where`` says where the device is used."""
    p.add_argument("--config", help="YAML config (ROS parameter file or plain mapping)")
    p.add_argument("--frame-step", type=int, help="use every n-th frame (default 10)")
    p.add_argument("--device", help="auto | cpu | cuda | cuda:N" + (f" ({where})" if where else ""))


def build_config(args: argparse.Namespace):
    """The PipelineConfig of ``add_build_options``' options (--config with the others applied)."""
    overrides = {}
    if getattr(args, "frame_step", None) is not None:
        overrides["frame_step"] = args.frame_step
    if getattr(args, "device", None):
        overrides["device"] = args.device
    return load_config(args.config, overrides)


def cmd_make_scene(args: argparse.Namespace) -> int:
    from ..core.synthetic import make_scene
    path = make_scene(args.out, seed=args.seed, num_frames=args.frames, width=args.width,
                      height=args.height, floor_objects=args.floor_objects)
    print(f"synthetic scene written to {path}")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from ..core.pipeline import run_pipeline
    cfg = build_config(args)
    progress = TqdmProgress()
    try:
        mode = "off" if args.no_cache else "full" if args.refresh_cache else None
        imap = run_pipeline(args.scene, cfg, masks=args.masks, progress=progress,
                            out_dir=args.out, cache=mode)
    finally:
        progress.close()
    from ..core.instance_map import MAP_DIRNAME
    out = Path(args.out) if args.out else Path(args.scene) / MAP_DIRNAME
    models = imap.meta.models
    print(f"{imap.num_instances} instances ({int(imap.valid.sum())} with features) -> {out}")
    print(f"models: proposals={models.proposals} segmenter={models.segmenter} "
          f"encoder={models.image_encoder} device={models.device}")
    for note in models.notes:
        print(f"note: {note}")
    if imap.meta.cache is not None:
        from ..core.pipeline import cache_summary
        print(f"cache ({imap.meta.cache.mode}): {cache_summary(imap.meta.cache)}")
    if imap.meta.changes is not None:
        print(f"changes since {imap.meta.changes.previous}: {imap.meta.changes.summary()}")
    return 0


def print_answer(answer, as_json: bool) -> None:
    if as_json:
        print(json.dumps(answer.to_dict()))
        return
    print(f"query: {answer.query!r}  (min relevance {answer.min_relevance:.2f}"
          f"{', structure included' if answer.include_structure else ''})")
    if answer.understood:
        print(f"  understood as {answer.understood.describe()}")
    if not answer.results:
        print(f"  {answer.message()}")
    for rank, r in enumerate(answer.results, 1):
        c = r.centroid
        print(f"  {rank}. instance {r.instance_id:4d}  relevance {r.relevance:.3f}  "
              f"score {r.score:.3f}  centroid ({c[0]:.3f}, {c[1]:.3f}, {c[2]:.3f})  "
              f"{r.n_points} points" + (f"  [structure: {r.structure}]" if r.structure else "")
              + (f"  [{answer.understood.relation} instance {r.reference_id}]"
                 if r.reference_id >= 0 else ""))
        s = r.box_size
        support = (f"on instance {r.support_id}" if r.support_id >= 0 else
                   "on the floor" if r.on_floor else "on nothing found")
        print(f"     box {s[0]:.3f} x {s[1]:.3f} x {s[2]:.3f} m, yaw "
              f"{_yaw_deg(r.box_orientation):.0f} deg; rests {support}, "
              f"{r.height_above_floor:.2f} m above the floor")


def _yaw_deg(q) -> float:
    """Rotation about z of a quaternion x, y, z, w (degrees)."""
    import math
    x, y, z, w = (float(v) for v in q)
    return math.degrees(math.atan2(2 * (w * z + x * y), 1 - 2 * (y * y + z * z)))


def cmd_query(args: argparse.Namespace) -> int:
    from ..core.query import open_map
    if not args.text and not args.image:
        raise ValueError("give query text(s) or --image FILE")
    cfg = load_config(args.config) if args.config else None
    engine = open_map(args.map, cfg)
    options = dict(top_k=args.top_k, min_score=args.min_score,
                   min_relevance=0.0 if args.all else args.min_relevance,
                   include_structure=True if (args.all or args.include_structure) else None)
    if args.image:
        from ..core.query_image import read_image_file
        image = read_image_file(args.image, engine.query_cfg.max_image_pixels,
                                f"--image {args.image}")
        print_answer(engine.ask(image=image, **options), args.json)
    for text in args.text:
        print_answer(engine.ask(text, viewpoint=args.viewpoint, literal=args.literal, **options),
                     args.json)
    return 0


def _point(text: str):
    """'x,y,z' -> a (3,) array (argparse type)."""
    import numpy as np
    try:
        v = np.array([float(x) for x in text.split(",")])
    except ValueError:
        v = np.zeros(0)
    if v.shape != (3,) or not np.all(np.isfinite(v)):
        raise argparse.ArgumentTypeError(f"expected X,Y,Z (three finite numbers), got {text!r}")
    return v


def cmd_demo(args: argparse.Namespace) -> int:
    """Synthetic scene -> pipeline -> one query per object colour, checked against ground truth."""
    import numpy as np

    from ..core.pipeline import run_pipeline
    from ..core.query import open_map
    from ..core.scene import SceneFolder
    from ..core.synthetic import make_scene
    root = Path(args.out or tempfile.mkdtemp(prefix="openmask3d_demo_"))
    scene_dir = make_scene(root / "scene", seed=args.seed)
    cfg = build_config(args)
    run_pipeline(scene_dir, cfg, progress=TqdmProgress())
    engine = open_map(scene_dir)
    gt = SceneFolder(scene_dir).ground_truth()
    failures = 0
    for gid, info in sorted(gt.labels.items()):
        colour = info.get("color")
        if colour not in DEMO_QUERIES:
            continue
        results = engine.query(colour, top_k=1)
        truth = set(np.flatnonzero(gt.instance_ids == gid).tolist())
        got = set(results[0].point_indices.tolist()) if results else set()
        iou = len(truth & got) / max(len(truth | got), 1)
        ok = iou >= 0.5
        failures += not ok
        print(f"{colour:>7} -> {info['label']:<12} IoU {iou:.2f}  {'ok' if ok else 'WRONG'}")
    print(f"scene and map in {scene_dir}; try: openmask3d query {scene_dir} red")
    return 1 if failures else 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("make-scene", help="render a synthetic pybullet scene folder")
    p.add_argument("out", help="output scene folder")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--frames", type=int, default=100)
    p.add_argument("--width", type=int, default=320)
    p.add_argument("--height", type=int, default=240)
    p.add_argument("--floor-objects", type=int, default=0, metavar="N",
                   help="N of the table's objects get a twin of the same kind and colour on "
                        "the floor beside the table (default 0: the seed's usual scene)")
    p.set_defaults(func=cmd_make_scene)

    p = sub.add_parser("run", help="build the OpenMask3D map of a scene folder")
    p.add_argument("scene", help="scene folder (color/ depth/ pose/ intrinsic/ cloud.ply)")
    p.add_argument("--out", help="map folder (default SCENE/openmask3d)")
    p.add_argument("--masks", help="precomputed P x M masks (.npy or official OpenMask3D .pt) "
                                   "of 0/1 or booleans (1: the point is in the mask)")
    reuse = p.add_mutually_exclusive_group()
    reuse.add_argument("--no-cache", action="store_true",
                       help="neither reuse nor store intermediate results (MAP/cache; default: "
                            "a rebuild reuses what did not change, cache.enabled)")
    reuse.add_argument("--refresh-cache", action="store_true",
                       help="recompute everything, then store it for later rebuilds")
    add_build_options(p)
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("query", help="find the instances of a map relevant to text or an image")
    p.add_argument("map", help="map folder or scene folder holding one")
    p.add_argument("text", nargs="*", help="query text(s)")
    p.add_argument("--image", help="an image file (e.g. a crop of the object) as the query; "
                                   "at most query.max_image_pixels (4096 x 4096)")
    p.add_argument("--top-k", type=int, default=5, help="results per query (0 = all)")
    p.add_argument("--min-relevance", type=float, default=None,
                   help="relevance in [0, 1] an instance needs (default: the map's "
                        "query.min_relevance, 0.55; 0.5 = no more like the query than a "
                        "generic thing)")
    p.add_argument("--all", action="store_true",
                   help="list every instance, structure included (min relevance 0)")
    p.add_argument("--include-structure", action="store_true",
                   help="let floor, walls and table tops answer (default: only when the text "
                        "names them)")
    p.add_argument("--min-score", type=float, default=-1.0, help="minimum raw cosine score")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--literal", action="store_true",
                   help="no relation parsing: 'the mug on the table' goes to the encoder whole")
    p.add_argument("--viewpoint", type=_point, default=None, metavar="X,Y,Z",
                   help="viewer position (map frame) for 'left of'/'right of' and 'nearest'")
    p.add_argument("--config", help="override the recorded encoder config (e.g. moved checkpoint)")
    p.set_defaults(func=cmd_query)

    p = sub.add_parser("demo", help="synthetic scene end to end with the built-in default models")
    p.add_argument("--out", help="where to write the scene (default: a temp folder)")
    p.add_argument("--seed", type=int, default=0)
    add_build_options(p)
    p.set_defaults(func=cmd_demo)
