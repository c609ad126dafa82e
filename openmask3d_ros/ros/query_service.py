"""Answering ``~/query`` (openmask3d_ros/srv/QueryObjects) from a finished map.

Kept apart from the node so that query features (scores, image queries) grow here without
touching recording. The node calls ``handle_query`` from its service callback:

    handle_query(request, response, lambda req, resp: answer_query(
        engine, req, resp, settings, publish_hits, stamp=..., no_map=...), logger)

``settings`` is any object with ``map_frame``, ``default_top_k``, ``max_points_per_instance``
and ``publish_markers``; ``publish_hits(text, results, stamp, frame)`` publishes the hits for
RViz (``hits_to_messages`` builds them).
"""
from __future__ import annotations

import math
import time
import traceback
from typing import Callable

import numpy as np
from visualization_msgs.msg import Marker, MarkerArray

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
    """Rank the map's instances for ``request.query``; returns the status text ("ok: ..." or
    the reason for a refusal). ``engine`` None: refuse with ``no_map``."""
    if engine is None:
        return no_map
    text = request.query.strip()
    if not text:
        return "query text is empty"
    if request.top_k < 0:
        return (f"top_k must be >= 0 (0 = default_top_k, {settings.default_top_k}), "
                f"got {request.top_k}")
    if not math.isfinite(request.min_score):
        return f"min_score must be finite, got {request.min_score}"
    top_k = int(request.top_k) or int(settings.default_top_k)
    results = engine.query(text, top_k=top_k, min_score=float(request.min_score))
    frame = str(settings.map_frame)
    cap = int(settings.max_points_per_instance)
    instances = []
    for r in results:
        inst = ObjectInstance()
        inst.header.stamp, inst.header.frame_id = stamp, frame
        inst.id, inst.score, inst.label = int(r.instance_id), float(r.score), text
        for dst, src in ((inst.centroid, r.centroid), (inst.bbox_min, r.bbox_min),
                         (inst.bbox_max, r.bbox_max)):
            dst.x, dst.y, dst.z = (float(v) for v in src)
        pts = np.asarray(r.points, dtype=np.float32)
        inst.num_points = len(pts)
        if cap > 0 and len(pts) > cap:
            pts = pts[np.linspace(0, len(pts) - 1, cap).astype(np.int64)]
        arrays_to_cloud(pts, frame_id=frame, stamp=stamp, msg=inst.points)
        instances.append(inst)
    response.instances = instances
    if settings.publish_markers and publish_hits is not None:
        publish_hits(text, results, stamp, frame)
    best = f", best id {results[0].instance_id} score {results[0].score:.3f}" if results else ""
    return f"ok: {len(results)} instance(s) for '{text}'{best}"


def hits_to_messages(text: str, results, stamp, frame: str):
    """(MarkerArray of boxes + labels, PointCloud2 of the hits' points) for the last query."""
    markers = MarkerArray()
    clear = Marker()
    clear.header.frame_id, clear.header.stamp = frame, stamp
    clear.action = Marker.DELETEALL
    markers.markers.append(clear)
    for rank, r in enumerate(results):
        lo, hi = np.asarray(r.bbox_min, float), np.asarray(r.bbox_max, float)
        shade = 1.0 if rank == 0 else 0.5
        box = Marker()
        box.header.frame_id, box.header.stamp = frame, stamp
        box.ns, box.id, box.type, box.action = "openmask3d/boxes", rank, Marker.CUBE, Marker.ADD
        c = (lo + hi) / 2
        box.pose.position.x, box.pose.position.y, box.pose.position.z = (float(v) for v in c)
        box.pose.orientation.w = 1.0
        size = np.maximum(hi - lo, 0.01)
        box.scale.x, box.scale.y, box.scale.z = (float(v) for v in size)
        box.color.r, box.color.g, box.color.b, box.color.a = 0.1, shade, 0.2, 0.35
        label = Marker()
        label.header.frame_id, label.header.stamp = frame, stamp
        label.ns, label.id = "openmask3d/labels", rank
        label.type, label.action = Marker.TEXT_VIEW_FACING, Marker.ADD
        label.pose.position.x, label.pose.position.y = float(c[0]), float(c[1])
        label.pose.position.z = float(hi[2]) + 0.05
        label.pose.orientation.w = 1.0
        label.scale.z = 0.05
        label.color.r = label.color.g = label.color.b = label.color.a = 1.0
        label.text = f"{text} #{rank + 1} ({r.score:.2f})"
        markers.markers += [box, label]
    pts = (np.concatenate([np.asarray(r.points, np.float32) for r in results])
           if results else np.zeros((0, 3), np.float32))
    return markers, arrays_to_cloud(pts, frame_id=frame, stamp=stamp)
