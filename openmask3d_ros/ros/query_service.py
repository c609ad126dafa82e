"""Answering ``~/query`` (openmask3d_ros/srv/QueryObjects) from a finished map.

Kept apart from the node so that query features (scores, image queries) grow here without
touching recording. The node calls ``handle_query`` from its service callback:

    handle_query(request, response, lambda req, resp: answer_query(
        engine, req, resp, settings, publish_hits, stamp=..., no_map=...), logger)

``settings`` is any object with ``map_frame``, ``default_top_k``, ``max_points_per_instance``
and ``publish_markers`` (optionally ``min_relevance``); ``publish_hits(text, results, stamp,
frame)`` publishes the hits for RViz (ros/visualization.py).
Messages are built with numpy (no per-point Python loops); a request may ask for point indices,
a voxel-downsampled cloud or no points instead of every point (``points_mode``).
"""
from __future__ import annotations

import array
import math
import time
import traceback
from collections.abc import Callable

import numpy as np

from openmask3d_ros.msg import ObjectInstance

from .conversions import arrays_to_cloud


def handle_query(request, response, answer: Callable[[object, object], str], logger):
    """Fill ``response`` with ``answer(request, response)``: success when the answer starts with
    "ok"; the time taken is appended; exceptions become "internal error: ..." (logged)."""
    t0 = time.perf_counter()
    response.success = False
    try:
        response.message = answer(request, response)
        response.success = response.message.startswith("ok")
    except Exception as exc:
        logger.error(f"query failed: {exc}\n{traceback.format_exc()}")
        response.message = f"internal error: {exc}"
        response.instances = []
    if response.success:
        response.message += f" ({(time.perf_counter() - t0) * 1e3:.1f} ms)"
    else:
        logger.warning(f"query '{request.query}' refused: {response.message}")
    return response


def answer_query(engine, request, response, settings, publish_hits, stamp,
                 no_map: str) -> str:
    """Answer ``request`` (text or image exemplar) from ``engine``; returns the status text
    ("ok: ..." or the reason for a refusal). ``engine`` None: refuse with ``no_map``.

    ``settings`` may also carry ``min_relevance`` (the node's default for requests that send a
    negative value); without it the map's recorded query.min_relevance is used.
    """
    if engine is None:
        return no_map
    text = request.query.strip()
    has_image = int(request.image.width) > 0 and int(request.image.height) > 0
    if text and has_image:
        return "give either query text or an image, not both"
    if not text and not has_image:
        return "query text is empty (and no image was given)"
    if request.top_k < 0:
        return (f"top_k must be >= 0 (0 = default_top_k, {settings.default_top_k}), "
                f"got {request.top_k}")
    if not math.isfinite(request.min_score):
        return f"min_score must be finite, got {request.min_score}"
    min_rel = float(request.min_relevance)
    if not math.isfinite(min_rel) or min_rel > 1.0:
        return f"min_relevance must be in [0, 1] (negative = node default), got {min_rel}"
    if min_rel < 0:
        min_rel = getattr(settings, "min_relevance", None)
    mode = int(request.points_mode)
    if mode not in POINT_MODES:
        return f"points_mode must be one of {sorted(POINT_MODES)}, got {mode}"
    voxel = float(request.voxel_size)
    if not math.isfinite(voxel):
        return f"voxel_size must be finite, got {voxel}"
    image = None
    if has_image:
        from .conversions import ConversionError, image_to_rgb
        try:
            image = image_to_rgb(request.image)
        except ConversionError as exc:
            return f"image: {exc}"
    top_k = int(request.top_k) or int(settings.default_top_k)
    try:
        answer = engine.ask(text or None, image=image, top_k=top_k, min_relevance=min_rel,
                            min_score=float(request.min_score),
                            include_structure=True if request.include_structure else None)
    except ValueError as exc:            # e.g. the map's encoder cannot embed images
        return str(exc)
    frame = str(settings.map_frame)
    cap = int(settings.max_points_per_instance)
    response.instances = [instance_message(r, answer.query, stamp, frame, mode, voxel, cap)
                          for r in answer.results]
    response.found = answer.found
    response.best_id = int(answer.best.instance_id) if answer.best else -1
    response.best_relevance = float(answer.best.relevance) if answer.best else 0.0
    if settings.publish_markers and publish_hits is not None:
        publish_hits(answer.query, answer.results, stamp, frame)
    return f"ok: {answer.message()}"


POINT_MODES = {0: "all", 1: "indices", 2: "voxel", 3: "none"}
DEFAULT_VOXEL = 0.02


def voxel_downsample(points: np.ndarray, size: float) -> np.ndarray:
    """One point per ``size`` voxel: the centroid of the points in it (float32 (n, 3))."""
    pts = np.asarray(points, dtype=np.float64).reshape(-1, 3)
    if len(pts) == 0:
        return np.zeros((0, 3), np.float32)
    keys = np.floor(pts / size).astype(np.int64)
    keys -= keys.min(axis=0)
    dims = keys.max(axis=0) + 1
    lin = (keys[:, 0] * dims[1] + keys[:, 1]) * dims[2] + keys[:, 2]
    _, inverse, counts = np.unique(lin, return_inverse=True, return_counts=True)
    out = np.stack([np.bincount(inverse, weights=pts[:, a], minlength=len(counts))
                    for a in range(3)], axis=1) / counts[:, None]
    return out.astype(np.float32)


def instance_message(r, label: str, stamp, frame: str, mode: int = 0, voxel: float = 0.0,
                     cap: int = 0) -> ObjectInstance:
    """One hit as an ObjectInstance; its points as ``mode`` says (see QueryObjects.srv)."""
    inst = ObjectInstance()
    inst.header.stamp, inst.header.frame_id = stamp, frame
    inst.id, inst.score, inst.label = int(r.instance_id), float(r.score), label
    inst.relevance = float(r.relevance) if math.isfinite(r.relevance) else 0.0
    inst.structure = r.structure or ""
    for dst, src in ((inst.centroid, r.centroid), (inst.bbox_min, r.bbox_min),
                     (inst.bbox_max, r.bbox_max)):
        dst.x, dst.y, dst.z = (float(v) for v in src)
    inst.num_points = int(r.n_points)
    if mode == 1:
        inst.point_indices = array.array(
            "I", np.asarray(r.point_indices, dtype=np.uint32).tobytes())
    elif mode in (0, 2):
        pts = np.asarray(r.points, dtype=np.float32)
        if mode == 2:
            pts = voxel_downsample(pts, voxel if voxel > 0 else DEFAULT_VOXEL)
        if cap > 0 and len(pts) > cap:
            pts = pts[np.linspace(0, len(pts) - 1, cap).astype(np.int64)]
        arrays_to_cloud(pts, frame_id=frame, stamp=stamp, msg=inst.points)
    return inst

