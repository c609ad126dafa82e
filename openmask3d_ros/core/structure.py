"""Scene structure (floor, walls, table tops) is not an object: a geometric test per instance.

An instance is structure when it is

* a large plane: the spread of its points along their least principal axis is at most
  ``plane_max_thickness`` and the plane cells it occupies cover at least ``plane_min_area``; or
* spanning the scene: its extent is at least ``span_fraction`` of the scene's along two of the
  three map axes (axes where the scene is shorter than ``span_min_extent`` do not count), which
  catches non-planar structure such as two walls meeting in a corner.

The test needs no gravity direction, so it holds in any map frame. Tags are computed when the map
is built and recorded in its meta (``structure``: per instance the reason, or null); object
queries leave these instances out unless the query asks for structure.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .config import StructureConfig


def structure_reason(points: np.ndarray, scene_extent: np.ndarray, cfg: StructureConfig
                     ) -> str | None:
    """Why the instance with these points is structure, or None when it is an object."""
    pts = np.asarray(points, dtype=np.float64)
    if len(pts) < 3:
        return None
    ext = pts.max(axis=0) - pts.min(axis=0)
    long_axes = scene_extent >= cfg.span_min_extent
    spanned = long_axes & (ext >= cfg.span_fraction * np.maximum(scene_extent, 1e-9))
    if spanned.sum() >= 2:
        axes = "".join("xyz"[i] for i in np.flatnonzero(spanned))
        share = ", ".join(f"{ext[i] / scene_extent[i]:.0%}" for i in np.flatnonzero(spanned))
        return f"spans the scene along {axes} ({share} of its extent)"
    centre = pts.mean(axis=0)
    # principal axes of the points (eigh of the 3x3 covariance: cheap for any point count)
    evals, evecs = np.linalg.eigh(np.cov((pts - centre).T))
    thickness = float(np.sqrt(max(evals[0], 0.0)))
    if thickness > cfg.plane_max_thickness:
        return None
    uv = (pts - centre) @ evecs[:, 1:]
    cells = np.unique(np.floor(uv / cfg.cell_size).astype(np.int64), axis=0)
    area = len(cells) * cfg.cell_size ** 2
    if area < cfg.plane_min_area:
        return None
    normal = evecs[:, 0]
    return (f"plane: {area:.2f} m^2 occupied, {thickness * 100:.1f} cm thick, normal "
            f"({normal[0]:+.2f}, {normal[1]:+.2f}, {normal[2]:+.2f})")


def tag_structure(points: np.ndarray, point_indices: Sequence[np.ndarray],
                  cfg: StructureConfig | None = None) -> list[str | None]:
    """Per instance: the reason it is structure, or None (see the module docstring)."""
    cfg = cfg or StructureConfig()
    pts = np.asarray(points)
    if len(pts) == 0:
        return [None] * len(point_indices)
    scene_extent = pts.max(axis=0).astype(np.float64) - pts.min(axis=0)
    return [structure_reason(pts[idx], scene_extent, cfg) for idx in point_indices]


def structure_meta(points: np.ndarray, point_indices: Sequence[np.ndarray],
                   cfg: StructureConfig | None = None) -> dict:
    """The ``structure`` entry of a map's meta: the settings and one reason (or None) per
    instance."""
    from dataclasses import asdict
    cfg = cfg or StructureConfig()
    return {"settings": asdict(cfg), "reasons": tag_structure(points, point_indices, cfg)}
