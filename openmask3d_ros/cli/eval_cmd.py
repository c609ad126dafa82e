"""``openmask3d eval``: ScanNet-benchmark 3D instance AP of saved maps against ground truth."""
from __future__ import annotations

import argparse
import json
import math
from pathlib import Path


def register(subparsers) -> None:
    """Add the ``eval`` subcommand."""
    p = subparsers.add_parser(
        "eval", help="3D instance segmentation AP (ScanNet benchmark protocol) of saved maps",
        description="Evaluate the map(s) at PATH/openmask3d (a scene) or PATH/*/openmask3d (a "
                    "directory of scenes) against the scenes' ground truth (ground_truth/ or "
                    "ScanNet's *_vh_clean_2.ply + *.segs.json + *.aggregation.json). Prints AP "
                    "(mean over IoU 0.50:0.90, the benchmark's thresholds), AP50 and AP25.")
    p.add_argument("path", type=Path, help="a scene folder, or a folder of scene folders")
    add_protocol_options(p)
    p.add_argument("--config", type=Path, default=None,
                   help="YAML overriding the map's configuration for the text encoder (e.g. a "
                        "local encoder.clip_checkpoint)")
    p.add_argument("--device", default=None, help="device for the text encoder (auto, cpu, cuda)")
    p.add_argument("--map-dir", default="openmask3d", help="map folder name inside each scene")
    p.add_argument("--json", action="store_true", help="print the results as JSON")
    p.set_defaults(func=cmd_eval)


def add_protocol_options(p: argparse.ArgumentParser) -> None:
    """The benchmark protocol's options (shared with ``openmask3d batch --eval``)."""
    p.add_argument("--mode", choices=("agnostic", "open-vocab", "both"), default="both",
                   help="class-agnostic masks, open-vocabulary class assignment, or both")
    p.add_argument("--classes", type=Path, default=None,
                   help="class names, one per line (default: the ground truth's classes)")
    p.add_argument("--exclude-classes", default="",
                   help="comma-separated classes used for assignment but not evaluated "
                        "(ScanNet200: 'wall,floor')")
    p.add_argument("--splits", type=Path, default=None,
                   help="JSON/YAML {head: [...], common: [...], tail: [...]}: AP per split")
    p.add_argument("--label-key", default="label",
                   help="ground-truth attribute used as the class (default 'label'; the "
                        "synthetic scenes also have 'color')")
    p.add_argument("--label-map", type=Path, default=None,
                   help="scannetv2-labels.combined.tsv: map ScanNet raw categories to the "
                        "'category' column (ScanNet200 names)")
    p.add_argument("--label-map-column", default="category",
                   help="column of --label-map giving the class name (default 'category')")
    p.add_argument("--score", choices=("similarity", "one"), default="similarity",
                   help="open-vocab confidence: cosine similarity of the assigned class, or 1.0 "
                        "for every mask (the paper's setting)")
    p.add_argument("--template", default=None,
                   help="class prompt template with {} for the class (default: each map's "
                        "recorded encoder.prompt_template, 'a {} in a scene')")
    p.add_argument("--min-region-size", type=int, default=100,
                   help="ignore GT instances and predictions with fewer points (benchmark: 100)")
    p.add_argument("--per-class", action="store_true", help="print AP of every class")


def _overrides(args: argparse.Namespace) -> dict:
    out: dict = {}
    if args.config is not None:
        from ..core.config import load_config, pipeline_section
        import yaml
        load_config(args.config)     # checks syntax, keys, types and ranges (InputError)
        out.update(pipeline_section(yaml.safe_load(args.config.read_text()) or {}))
    if args.device:
        out["device"] = args.device
    return out


def cmd_eval(args: argparse.Namespace) -> int:
    from ..core.evaluation.runner import find_scenes
    report, encoders, templates = evaluate_paths(
        args, find_scenes(args.path, args.map_dir), args.map_dir, _overrides(args))
    if args.json:
        print(json.dumps(report.to_dict(), indent=2))
        return 0
    print_report(args, report, encoders, templates)
    return 0


def evaluate_paths(args: argparse.Namespace, paths, map_dir: str, overrides: dict):
    """(EvalReport, text encoder names, class prompts) of the maps of the scene folders
    ``paths``, matches pooled over all scenes, with the protocol options in ``args``."""
    from ..core.evaluation import MODES, map_template, read_class_list, read_label_map, \
        read_splits
    from ..core.evaluation.runner import evaluate_scenes, load_eval_scene, text_encoder_for_map

    modes = MODES if args.mode == "both" else (args.mode,)
    label_map = (read_label_map(args.label_map, target=args.label_map_column)
                 if args.label_map else None)
    scenes = [load_eval_scene(p, args.label_key, label_map, map_dir) for p in paths]
    classes = read_class_list(args.classes) if args.classes else None
    splits = read_splits(args.splits) if args.splits else None
    exclude = [c.strip() for c in args.exclude_classes.split(",") if c.strip()]
    cache: dict = {}

    def encoder(imap):
        return text_encoder_for_map(imap, overrides, cache)

    # the class prompt: --template, else each map's recorded encoder.prompt_template
    templates = ([args.template] if args.template else
                 sorted({map_template(s.instances.meta.config) for s in scenes}))
    report = evaluate_scenes(scenes, modes, classes=classes, exclude=exclude, splits=splits,
                             text_encoder=encoder, template=args.template, score=args.score,
                             min_region_size=args.min_region_size)
    return report, sorted({e.name for e in cache.values()}), templates


def print_report(args: argparse.Namespace, report, encoders: list[str],
                 templates: list[str]) -> None:
    """The tables and the one-line summary ``openmask3d eval`` prints."""
    from ..core.evaluation import format_table
    print(f"evaluated {len(report.scenes)} scene(s): {', '.join(report.scenes[:8])}"
          f"{' ...' if len(report.scenes) > 8 else ''}")
    for mode, result in report.results.items():
        if mode == "open-vocab":
            title = (f"open-vocabulary ({len(report.classes)} classes, text encoder "
                     f"{', '.join(encoders) or '?'}, prompt {', '.join(map(repr, templates))}, "
                     f"score {args.score})")
            per_class = args.per_class
        else:
            title = f"class-agnostic (mask confidences: {report.agnostic_scores})"
            per_class = False
        print()
        print(format_table(result, title, per_class=per_class))
    for note in report.notes:
        print(f"note: {note}")
    summary = ", ".join(
        f"{mode}: AP {_pct(r.ap)} AP50 {_pct(r.ap50)} AP25 {_pct(r.ap25)}"
        for mode, r in report.results.items())
    print(f"\n{summary}")


def _pct(v: float) -> str:
    return "nan" if math.isnan(v) else f"{100 * v:.1f}"
