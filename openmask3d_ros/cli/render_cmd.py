"""``openmask3d render``: a PNG of a map (instance colours) or of a query (heatmap, hits
outlined), a top-down and a perspective view side by side."""
from __future__ import annotations

import argparse
import time
from pathlib import Path

from ..core.config import load_config


def _size(text: str) -> tuple[int, int]:
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected WIDTHxHEIGHT, e.g. 640x480, got {text!r}") from None
    if not (64 <= w <= 4096 and 64 <= h <= 4096):
        raise argparse.ArgumentTypeError(f"each side must be 64..4096 pixels, got {text!r}")
    return w, h


def cmd_render(args: argparse.Namespace) -> int:
    from ..core import picture
    out = Path(args.out)
    if out.suffix.lower() != ".png":
        raise ValueError(f"--out {out}: the picture is written as PNG; name it *.png")
    if args.query is not None and not args.query.strip():
        raise ValueError("--query: the query text is empty (leave --query out to draw the "
                         "instances)")
    t0 = time.perf_counter()
    if args.query is not None:
        from ..core.query import open_map
        engine = open_map(args.scene, load_config(args.config) if args.config else None)
        answer = engine.ask(args.query, top_k=args.top_k)
        values, hits = answer.instance_values, answer.results
        has_relevance = bool(hits) and hasattr(hits[0], "relevance")
        image = picture.render_query_picture(
            engine.map, values, hits, args.query, size=args.size,
            value_name="relevance" if has_relevance else "cosine similarity",
            note=f"text encoder {engine.text_encoder.name}")
        summary = (f"{len(hits)} hit(s), best id {hits[0].instance_id}" if hits else "no hit")
    else:
        from ..core.instance_map import InstanceMap
        imap = InstanceMap.load(args.scene)
        image = picture.render_instances_picture(imap, size=args.size,
                                                  title=f"{Path(args.scene).name}: "
                                                        f"{imap.num_instances} instances")
        summary = f"{imap.num_instances} instances"
    out.parent.mkdir(parents=True, exist_ok=True)
    image.save(out, format="PNG", optimize=True)
    print(f"{summary}; wrote {out} ({image.size[0]}x{image.size[1]}) in "
          f"{time.perf_counter() - t0:.2f} s")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("render", help="draw a map (or a query's heatmap) to a PNG, no RViz needed")
    p.add_argument("scene", help="scene folder holding a map, or a map folder")
    p.add_argument("--query", help="text: draw the heatmap of this query with its hits outlined")
    p.add_argument("--out", required=True, help="output PNG file")
    p.add_argument("--top-k", type=int, default=5, help="hits outlined (0 = every relevant one)")
    p.add_argument("--size", type=_size, default=(640, 480),
                   help="size of each of the two views, WIDTHxHEIGHT (default 640x480)")
    p.add_argument("--config", help="YAML config overriding the map's recorded encoder/query "
                                    "settings (e.g. a moved checkpoint)")
    p.set_defaults(func=cmd_render)
