"""Answering ``~/query`` (openmask3d_ros/srv/QueryObjects) from a finished map.

Kept apart from the node so that query features (scores, image queries) grow here without
touching recording. The node calls ``handle_query`` from its service callback:

    handle_query(request, response, lambda req, resp: answer_query(
        engine, req, resp, settings, publish_hits, stamp=..., no_map=...), logger)

``settings`` is any object with ``map_frame``, ``default_top_k``, ``max_points_per_instance``
and ``publish_markers`` (optionally ``min_relevance``); ``publish_hits(text, results, stamp,
frame)`` publishes the hits for RViz (ros/visualization.py).
Replies are built in bulk (``instance_messages``: one buffer for the points of all hits, messages
filled by ``fastmsg.build``); a request may ask for point indices, a voxel-downsampled cloud or no
points instead of every point (``points_mode``). ``serve_engine`` / ``served`` answer from a
QueryEngine without the mapping node (tests, benchmarks, a read-only map server).
"""
from __future__ import annotations

import array
import math
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np

from openmask3d_ros.msg import ObjectInstance
from openmask3d_ros.srv import QueryObjects

from .fastmsg import build


@dataclass
class QuerySettings:
    """The ``settings`` of ``answer_query`` for a server without node parameters."""
    map_frame: str = "map"
    default_top_k: int = 5
    max_points_per_instance: int = 0
    publish_markers: bool = False
    min_relevance: float | None = None      # None: the map's recorded query.min_relevance


def serve_engine(node, engine, settings=None, publish_hits=None, name: str = "~/query"):
    """Answer QueryObjects as ``name`` on ``node`` from ``engine`` (a QueryEngine) until the
    service is destroyed: a query server without the mapping node (tests, benchmarks, a map
    served read-only). Returns the service."""
    settings = settings if settings is not None else QuerySettings()

    def on_query(request, response):
        stamp = node.get_clock().now().to_msg()
        return handle_query(request, response, lambda rq, rs: answer_query(
            engine, rq, rs, settings, publish_hits, stamp, "no map"), node.get_logger())
    return node.create_service(QueryObjects, name, on_query)


@contextmanager
def served(engine, settings=None, publish_hits=None, node_name: str = "openmask3d",
           context=None) -> Iterator:
    """``serve_engine`` on a new node ``node_name`` spun by its own executor thread, in a new
    ROS context unless ``context`` is given; yields the node; all is shut down on exit."""
    import rclpy
    from rclpy.executors import SingleThreadedExecutor
    own = context is None
    if own:
        context = rclpy.Context()
        rclpy.init(context=context)
    node = rclpy.create_node(node_name, context=context)
    executor = SingleThreadedExecutor(context=context)
    spinner = threading.Thread(target=executor.spin, daemon=True, name="query-server")
    try:
        serve_engine(node, engine, settings, publish_hits)
        executor.add_node(node)
        spinner.start()
        yield node
    finally:
        executor.shutdown()
        if spinner.is_alive():
            spinner.join(10)
        node.destroy_node()
        if own:
            rclpy.shutdown(context=context)


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
    # voxel centroids are computed once per map and voxel size, not per query
    voxelized = engine.voxel_points(voxel if voxel > 0 else DEFAULT_VOXEL) if mode == 2 else None
    response.instances = instance_messages(answer.results, answer.query, stamp, frame, mode,
                                           cap, voxelized)
    response.found = answer.found
    response.best_id = int(answer.best.instance_id) if answer.best else -1
    response.best_relevance = float(answer.best.relevance) if answer.best else 0.0
    if settings.publish_markers and publish_hits is not None:
        publish_hits(answer.query, answer.results, stamp, frame)
    return f"ok: {answer.message()}"


POINT_MODES = {0: "all", 1: "indices", 2: "voxel", 3: "none"}
DEFAULT_VOXEL = 0.02


def _capped(offsets: np.ndarray, cap: int) -> np.ndarray:
    """Positions keeping at most ``cap`` evenly spread points of each group (all when cap 0)."""
    sizes = np.diff(offsets)
    if cap <= 0 or not np.any(sizes > cap):
        return np.arange(offsets[-1])
    keep = np.minimum(sizes, cap)
    group = np.repeat(np.arange(len(sizes)), keep)
    rank = np.arange(keep.sum()) - np.repeat(np.cumsum(keep) - keep, keep)
    # linspace(0, n - 1, cap) per capped group, in integers (no float rounding at the ends)
    n, c = sizes[group], keep[group]
    return offsets[group] + np.where(n > cap, rank * (n - 1) // np.maximum(c - 1, 1), rank)


def _payload(results, mode: int, cap: int, voxelized=None):
    """All hits' points (or indices) in one contiguous buffer: (array.array, offsets per hit in
    its items: bytes of xyz float32 points, or uint32 indices). One numpy pass for all hits.
    Mode 2 slices ``voxelized`` (QueryEngine.voxel_points: every instance's voxel centroids)."""
    k = len(results)
    if mode == 1:
        flat = (np.concatenate([r.point_indices for r in results]) if k
                else np.zeros(0, np.int64)).astype(np.uint32)
        off = np.zeros(k + 1, np.int64)
        np.cumsum([len(r.point_indices) for r in results], out=off[1:])
        return array.array("I", flat.tobytes()), off
    if mode == 2:
        vpts, voff = voxelized
        parts = [vpts[voff[r.instance_id]:voff[r.instance_id + 1]] for r in results]
    else:
        parts = [np.asarray(r.points, np.float32).reshape(-1, 3) for r in results]
    pts = np.concatenate(parts) if k else np.zeros((0, 3), np.float32)
    off = np.zeros(k + 1, np.int64)
    np.cumsum([len(p) for p in parts], out=off[1:])
    if cap > 0:
        pos = _capped(off, cap)
        off = np.concatenate([[0], np.cumsum(np.minimum(np.diff(off), cap))])
        pts = pts[pos]
    return array.array("B", np.ascontiguousarray(pts, dtype="<f4").tobytes()), off * 12


def instance_messages(results, label: str, stamp, frame: str, mode: int = 0, cap: int = 0,
                      voxelized=None) -> list:
    """The hits as ObjectInstance messages, their points as ``mode`` says (QueryObjects.srv;
    mode 2 takes ``voxelized``, the engine's ``voxel_points``).

    Built for speed (a reply may carry hundreds): the points of all hits are one buffer sliced
    per hit, the header and the point fields are shared, numbers are converted in bulk."""
    from geometry_msgs.msg import Point
    from sensor_msgs.msg import PointCloud2
    from std_msgs.msg import Header
    k = len(results)
    header = Header(frame_id=frame, stamp=stamp) if stamp is not None else Header(frame_id=frame)
    empty_cloud = PointCloud2()          # no points (indices / none): shared, never changed
    data, off = (_payload(results, mode, cap, voxelized) if mode in (0, 1, 2)
                 else (None, np.zeros(k + 1, np.int64)))
    geo = np.array([[*r.centroid, *r.bbox_min, *r.bbox_max] for r in results],
                   np.float64).reshape(k, 9).tolist()
    fields = _xyz_fields()
    out = []
    for j, r in enumerate(results):
        a, b = int(off[j]), int(off[j + 1])
        cloud, indices = empty_cloud, array.array("I")
        if mode == 1:
            indices = data[a:b]
        elif mode in (0, 2):
            n = (b - a) // 12
            cloud = build(PointCloud2, header=header, height=1, width=n, fields=fields,
                                 is_bigendian=False, point_step=12, row_step=12 * n,
                                 data=data[a:b], is_dense=True)
        g = geo[j]
        rel = float(r.relevance)
        out.append(build(
            ObjectInstance, header=header, id=int(r.instance_id), score=float(r.score),
            label=str(label), centroid=build(Point, x=g[0], y=g[1], z=g[2]),
            bbox_min=build(Point, x=g[3], y=g[4], z=g[5]),
            bbox_max=build(Point, x=g[6], y=g[7], z=g[8]),
            num_points=int(r.n_points), points=cloud,
            relevance=rel if math.isfinite(rel) else 0.0, structure=str(r.structure or ""),
            point_indices=indices))
    return out


_XYZ = None


def _xyz_fields() -> list:
    global _XYZ
    if _XYZ is None:        # immutable once built; shared by every cloud of every reply
        from sensor_msgs.msg import PointField
        _XYZ = [PointField(name=c, offset=4 * i, datatype=PointField.FLOAT32, count=1)
                for i, c in enumerate("xyz")]
    return _XYZ
