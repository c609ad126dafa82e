"""Pictures of a map without RViz: per-instance colours, query heatmaps and a two-view PNG.

The colour rules here are shared with the ROS visualisation (``ros/visualization.py``), so that
RViz and the PNGs agree: instance ``m`` always has ``instance_palette(m)``, and a heatmap maps the
per-instance value of a query (``QueryAnswer.instance_values``, computed with the answer) linearly
onto ``HEAT_LUT`` (the best instance is ``HEAT_LUT[-1]``).
Everything is vectorised over points: a z-buffer is one ``np.minimum.at`` per view. The PNG
layout (views side by side, legend) is in :mod:`openmask3d_ros.core.picture`.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

HIGHLIGHT = (255, 0, 255)      # outline and box of the top hit (no heat or palette colour)
OTHER_HIT = (255, 255, 255)    # outline and box of the other hits
PANEL_BG = (24, 24, 28)

# Heat colour map anchors (value, RGB): dark blue -> cyan -> green -> yellow -> red.
_HEAT_ANCHORS = np.array([[0.00, 35, 30, 110], [0.25, 30, 110, 230], [0.50, 40, 200, 170],
                          [0.75, 245, 210, 40], [1.00, 215, 25, 20]], dtype=np.float64)
HEAT_LUT = np.stack([np.interp(np.linspace(0, 1, 256), _HEAT_ANCHORS[:, 0], _HEAT_ANCHORS[:, c])
                     for c in (1, 2, 3)], axis=1).round().astype(np.uint8)


# -- colours ------------------------------------------------------------------------------------
def instance_palette(ids) -> np.ndarray:
    """(M, 3) uint8: a distinct saturated colour per instance id (golden-ratio hue steps)."""
    ids = np.asarray(ids, dtype=np.int64).reshape(-1)
    h = (ids * 0.6180339887 + 0.05) % 1.0
    s = np.where(ids % 2 == 0, 0.85, 0.65)
    v = np.where(ids % 3 == 1, 0.80, 0.97)
    i = np.floor(h * 6).astype(np.int64) % 6
    f = h * 6 - np.floor(h * 6)
    p, q, t = v * (1 - s), v * (1 - s * f), v * (1 - s * (1 - f))
    sextants = ((v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q))
    rgb = np.choose(i[:, None], [np.stack(c, 1) for c in sextants])
    return (rgb * 255).round().astype(np.uint8)


def point_labels(num_points: int, point_indices) -> np.ndarray:
    """(N,) int32: the instance owning each point (-1: none); the smaller instance wins overlaps,
    so a mug on a table keeps its colour."""
    labels = np.full(num_points, -1, np.int32)
    sizes = np.array([len(ix) for ix in point_indices], np.int64)
    if not sizes.sum():
        return labels
    flat = np.concatenate([np.asarray(ix, np.int64) for ix in point_indices])
    owner = np.repeat(np.arange(len(sizes), dtype=np.int64), sizes)
    # Priority = position in descending-size order; the largest priority (smallest instance) wins.
    prio_of = np.empty(len(sizes), np.int64)
    prio_of[np.argsort(-sizes, kind="stable")] = np.arange(len(sizes))
    best = np.full(num_points, -1, np.int64)
    np.maximum.at(best, flat, prio_of[owner])
    has = best >= 0
    labels[has] = np.argsort(prio_of)[best[has]]
    return labels


def instance_colors(points: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """(N, 3) uint8: palette colour of each point's instance; grey shaded by height elsewhere."""
    n = len(labels)
    out = np.empty((n, 3), np.uint8)
    bg = labels < 0
    if bg.any():
        z = np.asarray(points, np.float32)[bg, 2]
        lo, hi = (float(z.min()), float(z.max())) if len(z) else (0.0, 1.0)
        shade = 70 + 80 * (z - lo) / max(hi - lo, 1e-6)
        out[bg] = shade.astype(np.uint8)[:, None]
    if (~bg).any():
        out[~bg] = instance_palette(np.arange(int(labels.max()) + 1))[labels[~bg]]
    return out


def normalise_values(values) -> np.ndarray:
    """Per-instance values -> [0, 1] (min-max over the finite ones; non-finite -> 0)."""
    v = np.asarray(values, np.float64).reshape(-1)
    ok = np.isfinite(v)
    out = np.zeros(len(v))
    if ok.any():
        lo, hi = float(v[ok].min()), float(v[ok].max())
        out[ok] = (v[ok] - lo) / (hi - lo) if hi > lo else 1.0
    return out


def heat_values(labels: np.ndarray, point_indices, values) -> np.ndarray:
    """(N,) float in [0, 1]: the highest normalised value of the instances holding each point
    (0 for points of no instance), so the best instance's points are the hottest."""
    norm = normalise_values(values)
    heat = np.zeros(len(labels))
    sizes = np.array([len(ix) for ix in point_indices], np.int64)
    if sizes.sum():
        flat = np.concatenate([np.asarray(ix, np.int64) for ix in point_indices])
        np.maximum.at(heat, flat, np.repeat(norm, sizes))
    return heat


def heat_colors(heat: np.ndarray) -> np.ndarray:
    """(N, 3) uint8 colours of values in [0, 1]."""
    return HEAT_LUT[np.clip(np.round(np.asarray(heat) * 255), 0, 255).astype(np.int64)]


# -- rasterising --------------------------------------------------------------------------------
@dataclass
class ViewImage:
    """One rendered view: colours, the instance at each pixel (-1 none) and the projection."""

    rgb: np.ndarray         # (H, W, 3) uint8
    labels: np.ndarray      # (H, W) int32
    project: object         # points (K, 3) -> (px (K,), py (K,), ok (K,))


def _fit(u: np.ndarray, v: np.ndarray, width: int, height: int, margin: int = 12):
    """Scale and offset that fit (u, v) into the image keeping the aspect ratio."""
    if len(u) == 0:
        return 1.0, 0.0, 0.0
    ulo, uhi, vlo, vhi = float(u.min()), float(u.max()), float(v.min()), float(v.max())
    s = min((width - 2 * margin) / max(uhi - ulo, 1e-9),
            (height - 2 * margin) / max(vhi - vlo, 1e-9))
    return s, (width - s * (uhi + ulo)) / 2, (height - s * (vhi + vlo)) / 2


AZIMUTHS = (-125.0, -35.0, 55.0, 145.0)   # perspective candidates: from each corner, above


def _camera(lo: np.ndarray, hi: np.ndarray, kind: str, azimuth: float = AZIMUTHS[0]):
    """(points (K, 3) -> u, v, depth, ok) for 'top' (orthographic, z up) or 'perspective' (from
    ``azimuth`` degrees, 40 degrees up), framing the box [lo, hi]."""
    if kind == "top":
        return lambda p: (p[:, 0], -p[:, 1], -p[:, 2], np.ones(len(p), bool))
    centre = (lo + hi) / 2
    radius = max(float(np.linalg.norm(hi - lo)) / 2, 1e-3)
    az, el = np.radians(azimuth), np.radians(40.0)
    eye = centre + 2.2 * radius * np.array([np.cos(el) * np.cos(az), np.cos(el) * np.sin(az),
                                            np.sin(el)])
    fwd = (centre - eye) / np.linalg.norm(centre - eye)
    right = np.cross(fwd, [0.0, 0.0, 1.0])
    right /= np.linalg.norm(right)
    down = np.cross(fwd, right)
    R = np.stack([right, down, fwd]).astype(np.float32)

    def project(p):
        c = (np.asarray(p, np.float32) - eye.astype(np.float32)) @ R.T
        ok = c[:, 2] > 1e-3 * radius
        z = np.where(ok, c[:, 2], np.float32(1.0))
        return c[:, 0] / z, c[:, 1] / z, c[:, 2], ok
    return project


def point_spacing(points: np.ndarray, bounds=None) -> float:
    """Typical distance between neighbouring points of a surface cloud, from one voxel count:
    at a voxel size v above the spacing d a surface fills about N (d / v)^2 voxels."""
    pts = np.asarray(points, np.float32)
    if len(pts) < 2:
        return 0.0
    lo, hi = bounds if bounds is not None else (pts.min(axis=0), pts.max(axis=0))
    v = max(float(np.linalg.norm(hi - lo)) / 120.0, 1e-6)
    dims = (np.floor((hi - lo) / v) + 1).astype(np.int64)   # <= 121 per axis: bincount fits
    q = np.minimum(((pts - lo) / v).astype(np.int64), dims - 1)
    keys = (q[:, 0] * dims[1] + q[:, 1]) * dims[2] + q[:, 2]
    occupied = int(np.count_nonzero(np.bincount(keys, minlength=int(dims.prod()))))
    return float(min(v * np.sqrt(occupied / len(pts)), v))


def choose_azimuth(points: np.ndarray, labels: np.ndarray, bounds) -> float:
    """The corner from which the most of the instances is seen (walls near the camera hide a
    room from the other corners): a coarse z-buffer of at most 100k points per candidate, scored
    by the sum over instances of sqrt(visible pixels)."""
    step = max(len(points) // 100_000, 1)
    pts, lab = np.asarray(points, np.float32)[::step], labels[::step]
    if not len(pts) or lab.max(initial=-1) < 0:
        return AZIMUTHS[0]
    best, best_score = AZIMUTHS[0], -1.0
    for az in AZIMUTHS:
        u, v, depth, ok = _camera(*bounds, "perspective", az)(pts)
        s, ou, ov = _fit(u[ok], v[ok], 96, 72, margin=1)
        px = np.clip(np.round(u * s + ou), 0, 95).astype(np.int64)
        py = np.clip(np.round(v * s + ov), 0, 71).astype(np.int64)
        pix, d, lb = (py * 96 + px)[ok], depth[ok], lab[ok]
        zbuf = np.full(96 * 72, np.inf, np.float32)
        np.minimum.at(zbuf, pix, d)
        seen = lb[(d <= zbuf[pix]) & (lb >= 0)]
        score = float(np.sqrt(np.bincount(seen)).sum())
        if score > best_score + 1e-9:
            best, best_score = az, score
    return best


def render_view(points: np.ndarray, colors: np.ndarray, labels: np.ndarray, kind: str,
                width: int, height: int, spacing: float | None = None,
                max_splat: int = 8, bounds=None, azimuth: float = AZIMUTHS[0]) -> ViewImage:
    """Z-buffered points of one view ('top' or 'perspective'). Each front-most point then covers
    a square as wide as the cloud's point ``spacing`` appears at its depth (1..max_splat pixels),
    so that surfaces look closed and hide what lies behind them."""
    pts = np.asarray(points, np.float32)
    if bounds is None:
        bounds = (pts.min(axis=0), pts.max(axis=0)) if len(pts) else (np.zeros(3), np.ones(3))
    cam = _camera(*bounds, kind, azimuth)
    u, v, depth, ok = cam(pts)
    s, ou, ov = _fit(u[ok], v[ok], width, height)

    def project(p):
        pu, pv, _, pok = cam(np.asarray(p, np.float32).reshape(-1, 3))
        return np.round(pu * s + ou).astype(np.int64), np.round(pv * s + ov).astype(np.int64), pok

    px = np.round(u * np.float32(s) + np.float32(ou)).astype(np.int32)
    py = np.round(v * np.float32(s) + np.float32(ov)).astype(np.int32)
    keep = np.flatnonzero(ok & (px >= 0) & (px < width) & (py >= 0) & (py < height))
    pix = py[keep] * width + px[keep]
    d = depth[keep].astype(np.float32)
    zbuf = np.full(height * width, np.inf, np.float32)
    np.minimum.at(zbuf, pix, d)
    win = d <= zbuf[pix]
    front = np.full(height * width, -1, np.int64)    # index of the front-most point per pixel
    front[pix[win]] = keep[win]
    if spacing is None:
        spacing = point_spacing(pts, bounds)
    # 1.5: neighbours on a tilted voxel-grid surface sit up to sqrt(2) spacings apart.
    px_per_m = np.float32(s) / np.maximum(zbuf, 1e-6) if kind != "top" else np.float32(s)
    splat = np.where(front >= 0, np.clip(np.round(1.5 * spacing * px_per_m), 1, max_splat), 0)
    Z, F = _splat(zbuf.reshape(height, width), front.reshape(height, width),
                  splat.astype(np.int8).reshape(height, width))
    rgb = np.empty((height, width, 3), np.uint8)
    rgb[:] = PANEL_BG
    lab = np.full((height, width), -1, np.int32)
    hit = F >= 0
    rgb[hit] = colors[F[hit]]
    lab[hit] = labels[F[hit]]
    _ink_edges(rgb, Z, 4.0 * max(spacing, 1e-6), None if kind == "top" else 1.0 / s)
    return ViewImage(rgb, lab, project)


def _splat(Z: np.ndarray, F: np.ndarray, K: np.ndarray):
    """Grow each pixel's front point into a KxK square down-right, nearest depth winning (image
    operations per offset, not per point)."""
    Z2, F2 = Z.copy(), F.copy()
    h, w = Z.shape
    kmax = int(K.max(initial=0))
    for dy in range(kmax):
        for dx in range(kmax):
            if not dx and not dy:
                continue
            src_z, src_k = Z[:h - dy, :w - dx], K[:h - dy, :w - dx]
            tgt_z = Z2[dy:, dx:]
            better = (src_k > max(dx, dy)) & (src_z < tgt_z)
            tgt_z[better] = src_z[better]
            F2[dy:, dx:][better] = F[:h - dy, :w - dx][better]
    return _fill_holes(Z2, F2)


def _fill_holes(Z: np.ndarray, F: np.ndarray):
    """Give an empty pixel with at least 5 of its 8 neighbours drawn the nearest of them: the
    gaps a random sampling leaves in a surface, not the background around an object."""
    h, w = Z.shape
    zp = np.pad(Z, 1, constant_values=np.inf)
    fp = np.pad(F, 1, constant_values=-1)
    best_z = np.full(Z.shape, np.inf, np.float32)
    best_f = np.full(F.shape, -1, F.dtype)
    count = np.zeros(Z.shape, np.int8)
    for dy in (-1, 0, 1):
        for dx in (-1, 0, 1):
            if dx or dy:
                nz = zp[1 + dy:1 + dy + h, 1 + dx:1 + dx + w]
                nf = fp[1 + dy:1 + dy + h, 1 + dx:1 + dx + w]
                count += nf >= 0
                nearer = nz < best_z
                best_z[nearer], best_f[nearer] = nz[nearer], nf[nearer]
    fill = (F < 0) & (count >= 5)
    Z, F = Z.copy(), F.copy()
    Z[fill], F[fill] = best_z[fill], best_f[fill]
    return Z, F


def _ink_edges(rgb: np.ndarray, zbuf: np.ndarray, min_step: float, m_per_px_at_1m) -> None:
    """Darken pixels where depth jumps (object silhouettes), in place: flat colours alone give
    no sense of shape. Colours away from the edges stay exact."""
    filled = np.isfinite(zbuf)
    z = np.where(filled, zbuf, np.float32(1e30))   # empty = far away (no inf - inf)
    thr = np.full(z.shape, min_step, np.float32)
    if m_per_px_at_1m is not None:   # perspective: one pixel spans more metres farther away
        thr = np.maximum(thr, 6.0 * m_per_px_at_1m * np.where(filled, z, 0))
    edge = np.zeros(z.shape, bool)
    for axis in (0, 1):
        a = z.take(range(0, z.shape[axis] - 1), axis=axis)
        b = z.take(range(1, z.shape[axis]), axis=axis)
        near_a = (b - a) > thr.take(range(0, z.shape[axis] - 1), axis=axis)   # a in front
        near_b = (a - b) > thr.take(range(1, z.shape[axis]), axis=axis)
        sl_a = [slice(None)] * 2
        sl_b = [slice(None)] * 2
        sl_a[axis], sl_b[axis] = slice(0, -1), slice(1, None)
        edge[tuple(sl_a)] |= near_a & filled[tuple(sl_a)]
        edge[tuple(sl_b)] |= near_b & filled[tuple(sl_b)]
    rgb[edge] = (rgb[edge] * 0.45).astype(np.uint8)


def outline(view: ViewImage, instance: int, color, width: int = 2) -> None:
    """Paint a ring of ``width`` pixels around the visible pixels of ``instance`` (in place)."""
    mask = view.labels == instance
    if not mask.any():
        return
    grown = mask.copy()
    for _ in range(width):
        g = grown.copy()
        g[1:] |= grown[:-1]
        g[:-1] |= grown[1:]
        g[:, 1:] |= grown[:, :-1]
        g[:, :-1] |= grown[:, 1:]
        grown = g
    view.rgb[grown & ~mask] = color


def box_edges(lo, hi) -> np.ndarray:
    """(12, 2, 3) the edges of the axis-aligned box [lo, hi]."""
    lo, hi = np.asarray(lo, np.float64), np.asarray(hi, np.float64)
    corners = np.array([[hi[0] if i & 1 else lo[0], hi[1] if i & 2 else lo[1],
                         hi[2] if i & 4 else lo[2]] for i in range(8)])
    pairs = [(a, a | bit) for a in range(8) for bit in (1, 2, 4) if not a & bit]
    return np.array([[corners[a], corners[b]] for a, b in pairs])
