"""The PNGs of ``openmask3d render``: a top-down and a perspective view side by side, a title
strip and a legend (instance ids, or the score scale and the hits). Drawing uses Pillow; the
rasterising and the colours are in :mod:`openmask3d_ros.core.render`.
"""
from __future__ import annotations

import numpy as np

from .render import (HEAT_LUT, HIGHLIGHT, OTHER_HIT, PANEL_BG, ViewImage, box_edges,
                     choose_azimuth, heat_colors, heat_values, instance_colors, instance_palette,
                     outline, point_labels, point_spacing, render_view)

HEADER_H = 30
LEGEND_W = 240
_VIEWS = (("top", "top-down"), ("perspective", "perspective"))


def _font(size: int):
    from PIL import ImageFont
    try:
        return ImageFont.load_default(size=size)
    except TypeError:        # Pillow < 10.1: bitmap font only
        return ImageFont.load_default()


def _views(points, colors, labels, size) -> list[ViewImage]:
    w, h = size
    if not len(points):
        raise ValueError("the map's cloud has no points: nothing to draw")
    bounds = (points.min(axis=0), points.max(axis=0))
    spacing = point_spacing(points, bounds)
    azimuth = choose_azimuth(points, labels, bounds)
    return [render_view(points, colors, labels, kind, w, h, spacing, bounds=bounds,
                        azimuth=azimuth) for kind, _ in _VIEWS]


def _compose(images: list, title: str, legend):
    """Views (PIL images) side by side under a title strip, ``legend(draw, x0, y0, h)`` right."""
    from PIL import Image, ImageDraw
    w, h = images[0].size
    canvas = Image.new("RGB", (w * len(images) + LEGEND_W, h + HEADER_H), PANEL_BG)
    draw = ImageDraw.Draw(canvas)
    draw.text((8, 7), title, fill=(235, 235, 235), font=_font(15))
    for i, (img, (_, name)) in enumerate(zip(images, _VIEWS)):
        canvas.paste(img, (i * w, HEADER_H))
        draw.text((i * w + 6, HEADER_H + 4), name, fill=(200, 200, 200), font=_font(12))
        if i:
            draw.line([(i * w, HEADER_H), (i * w, HEADER_H + h)], fill=(60, 60, 66))
    legend(draw, w * len(images) + 10, HEADER_H + 8, h - 16)
    return canvas


def render_instances_picture(instance_map, size=(640, 480), title: str | None = None):
    """PIL image: the scene coloured by instance, top-down and perspective, legend of ids."""
    pts = np.asarray(instance_map.points, np.float32)
    labels = point_labels(len(pts), instance_map.point_indices)
    views = _views(pts, instance_colors(pts, labels), labels, size)
    m = instance_map.num_instances
    palette = instance_palette(np.arange(m))
    sizes = [len(ix) for ix in instance_map.point_indices]

    def legend(draw, x, y, height):
        font = _font(12)
        draw.text((x, y), f"{m} instances", fill=(235, 235, 235), font=font)
        rows = max((height - 24) // 17, 1)
        shown = list(range(m)) if m <= rows else list(range(rows - 1))
        for r, k in enumerate(shown):
            yy = y + 22 + r * 17
            draw.rectangle([x, yy, x + 13, yy + 13], fill=tuple(int(c) for c in palette[k]))
            draw.text((x + 20, yy), f"id {k}  ({sizes[k]} pts)", fill=(220, 220, 220), font=font)
        if len(shown) < m:
            draw.text((x, y + 22 + len(shown) * 17), f"+{m - len(shown)} more",
                      fill=(180, 180, 180), font=font)
    from PIL import Image
    return _compose([Image.fromarray(v.rgb) for v in views], title or f"instances: {m}", legend)


def render_query_picture(instance_map, values, hits, text: str, size=(640, 480),
                         value_name: str = "similarity", note: str = ""):
    """PIL image: heatmap of per-instance ``values`` for ``text`` with ``hits`` (QueryResult-like:
    instance_id, score, bbox_min, bbox_max; best first) outlined, the best in ``HIGHLIGHT``."""
    from PIL import Image
    pts = np.asarray(instance_map.points, np.float32)
    labels = point_labels(len(pts), instance_map.point_indices)
    heat = heat_values(labels, instance_map.point_indices, values)
    views = _views(pts, heat_colors(heat), labels, size)
    for rank in range(len(hits) - 1, -1, -1):
        colour = HIGHLIGHT if rank == 0 else OTHER_HIT
        for view in views:
            outline(view, int(hits[rank].instance_id), colour, width=2 if rank else 3)
    finite = np.asarray(values, np.float64)
    finite = finite[np.isfinite(finite)]
    vmin, vmax = (float(finite.min()), float(finite.max())) if len(finite) else (0.0, 0.0)

    def legend(draw, x, y, height):
        font = _font(12)
        draw.text((x, y), value_name, fill=(235, 235, 235), font=font)
        bar_h = max(min(height // 2, 220), 40)
        ramp = HEAT_LUT[np.linspace(255, 0, bar_h).round().astype(int)]
        for r in range(bar_h):
            draw.line([(x, y + 20 + r), (x + 18, y + 20 + r)], fill=tuple(int(c) for c in ramp[r]))
        draw.text((x + 26, y + 16), f"{vmax:.3f}", fill=(220, 220, 220), font=font)
        draw.text((x + 26, y + 12 + bar_h), f"{vmin:.3f}", fill=(220, 220, 220), font=font)
        yy = y + 36 + bar_h
        draw.text((x, yy), "hits" if hits else "no hit", fill=(235, 235, 235), font=font)
        for rank, hit in enumerate(hits[:max((height - bar_h - 60) // 17, 0)]):
            yy += 17
            colour = HIGHLIGHT if rank == 0 else OTHER_HIT
            draw.rectangle([x, yy + 2, x + 10, yy + 12], outline=colour, width=2)
            draw.text((x + 18, yy), f"#{rank + 1}  id {hit.instance_id}  "
                      f"{float(np.asarray(values)[hit.instance_id]):.3f}",
                      fill=(220, 220, 220), font=font)
    images = [Image.fromarray(v.rgb) for v in views]
    for img, view in zip(images, views):
        _draw_boxes(img, view, hits)
    return _compose(images, f"query: {text!r}" + (f"  ({note})" if note else ""), legend)


def _draw_boxes(img, view: ViewImage, hits) -> None:
    """Projected 3D boxes and rank numbers of the hits (best drawn last, on top)."""
    from PIL import ImageDraw
    draw = ImageDraw.Draw(img)
    for rank in range(len(hits) - 1, -1, -1):
        hit = hits[rank]
        colour = HIGHLIGHT if rank == 0 else OTHER_HIT
        edges = box_edges(hit.bbox_min, hit.bbox_max).reshape(-1, 3)
        px, py, ok = view.project(edges)
        for e in range(0, len(edges), 2):
            if ok[e] and ok[e + 1]:
                draw.line([(int(px[e]), int(py[e])), (int(px[e + 1]), int(py[e + 1]))],
                          fill=colour, width=1)
        top = int(np.argmin(np.where(ok, py, np.iinfo(np.int64).max)))
        if ok[top]:
            draw.text((int(px[top]) + 3, max(int(py[top]) - 16, 0)), f"#{rank + 1}",
                      fill=colour, font=_font(12))
