"""Answering ``~/query`` (openmask3d_ros/srv/QueryObjects) from a finished map.

Kept apart from the node so that query features (scores, image queries) grow here without
touching recording. The node calls ``handle_query`` from its service callback:

    handle_query(request, response, lambda req, resp: answer_query(
        engine, req, resp, settings, publish_hits, stamp=..., no_map=...), logger)

``settings`` is a ``QuerySettings`` (``QuerySettings.of_node`` for the node's parameters);
``answer_query`` returns the engine's QueryAnswer or raises ``QueryRefused`` (the reply's
``success`` is which of the two happened); ``publish_hits(answer, stamp, frame)`` publishes the
answer for RViz (ros/visualization.py; ``answer.instance_values`` is its heatmap).
Replies are built in bulk (``instance_messages``: one buffer for the points of all hits, messages
filled by ``fastmsg.build``); a request may ask for point indices, a voxel-downsampled cloud or no
points instead of every point (``points_mode``). ``serve_engine`` / ``served`` answer from a
QueryEngine without the OpenMask3D node (tests, benchmarks, a read-only map server).
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

from ..core.config import QueryConfig
from ..core.errors import InputError
from ..core.query import QueryAnswer
from ..core.query_image import check_image_size
from .fastmsg import box_pose, build
from .settings import NodeSettings


@dataclass(frozen=True)
class QuerySettings:
    """What ``answer_query`` takes from the server's configuration."""
    map_frame: str = "map"
    default_top_k: int = 5                  # for requests with top_k 0
    max_points_per_instance: int = 0        # 0: no cap
    publish_markers: bool = False           # call ``publish_hits`` with each answer
    min_relevance: float | None = None      # for requests with a negative one; None: the map's

    @classmethod
    def of_node(cls, s: NodeSettings) -> QuerySettings:
        """The query settings of the node's parameters."""
        return cls(str(s.map_frame), int(s.default_top_k), int(s.max_points_per_instance),
                   bool(s.publish_markers))


# publish_hits(answer, stamp, frame): show an answer (e.g. MapPublishers.publish_query_later)
PublishHits = Callable[[QueryAnswer, object, str], None]


def serve_engine(node, engine, settings: QuerySettings | None = None,
                 publish_hits: PublishHits | None = None, name: str = "~/query"):
    """Answer QueryObjects as ``name`` on ``node`` from ``engine`` (a QueryEngine) until the
    service is destroyed: a query server without the OpenMask3D node (tests, benchmarks, a map
    served read-only). Returns the service."""
    settings = settings if settings is not None else QuerySettings()

    def on_query(request, response):
        stamp = node.get_clock().now().to_msg()
        return handle_query(request, response, lambda rq, rs: answer_query(
            engine, rq, rs, settings, publish_hits, stamp, "no map"), node.get_logger())
    return node.create_service(QueryObjects, name, on_query)


@contextmanager
def served(engine, settings: QuerySettings | None = None,
           publish_hits: PublishHits | None = None, node_name: str = "openmask3d",
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


class QueryRefused(Exception):
    """A request the service does not answer (no map, an invalid request, a query the map
    cannot answer): the reply has ``success`` false and this text as its message."""


def handle_query(request, response, answer: Callable[[object, object], QueryAnswer], logger):
    """Fill ``response`` with ``answer(request, response)``: success, with "ok: " and the
    answer's message, the time taken appended; a QueryRefused is refused with its text; other
    exceptions become "internal error: ..." (logged)."""
    t0 = time.perf_counter()
    response.success = False
    try:
        result = answer(request, response)
    except QueryRefused as exc:
        response.message = str(exc)
        response.instances = []
    except Exception as exc:
        logger.error(f"query failed: {exc}\n{traceback.format_exc()}")
        response.message = f"internal error: {exc}"
        response.instances = []
    else:
        response.success = True
        response.message = (f"ok: {result.message()} "
                            f"({(time.perf_counter() - t0) * 1e3:.1f} ms)")
        return response
    logger.warning(f"query '{request.query}' refused: {response.message}")
    return response


# Point modes of a request (QueryObjects.srv): what ObjectInstance.points / point_indices carry.
_REQ = QueryObjects.Request
POINTS_ALL, POINTS_INDICES, POINTS_VOXEL, POINTS_NONE = (
    _REQ.POINTS_ALL, _REQ.POINTS_INDICES, _REQ.POINTS_VOXEL, _REQ.POINTS_NONE)
POINT_MODES = {POINTS_ALL: "all", POINTS_INDICES: "indices", POINTS_VOXEL: "voxel",
               POINTS_NONE: "none"}
DEFAULT_VOXEL = 0.02     # voxel edge (m) of POINTS_VOXEL when the request gives none


def has_image(request) -> bool:
    """Whether a QueryObjects request asks with an image exemplar: its width and height are
    non-zero (QueryObjects.srv). The one place that decides it."""
    return int(request.image.width) > 0 and int(request.image.height) > 0


@dataclass(frozen=True)
class CheckedRequest:
    """A QueryObjects request's values, checked, with the settings' defaults applied."""
    text: str | None                # None: ``image`` is the query
    image: np.ndarray | None        # RGB uint8
    top_k: int
    min_relevance: float | None     # None: the map's recorded query.min_relevance
    min_score: float
    include_structure: bool | None  # None: when the text names structure
    points_mode: int                # one of POINT_MODES
    voxel_size: float               # > 0
    literal: bool = False           # true: no relation parsing
    viewpoint: np.ndarray | None = None     # (3,) map frame, for left/right and nearest


def check_request(request, settings: QuerySettings,
                  max_image_pixels: int = QueryConfig.max_image_pixels) -> CheckedRequest:
    """``request`` checked; QueryRefused names the first value that is wrong. An image larger
    than ``max_image_pixels`` is refused before its data is converted."""
    text = request.query.strip()
    image_given = has_image(request)
    if text and image_given:
        raise QueryRefused("give either query text or an image, not both")
    if not text and not image_given:
        raise QueryRefused("query text is empty (and no image was given)")
    if request.top_k < 0:
        raise QueryRefused(f"top_k must be >= 0 (0 = default_top_k, {settings.default_top_k}), "
                           f"got {request.top_k}")
    if not math.isfinite(request.min_score):
        raise QueryRefused(f"min_score must be finite, got {request.min_score}")
    min_rel = float(request.min_relevance)
    if not math.isfinite(min_rel) or min_rel > 1.0:
        raise QueryRefused(f"min_relevance must be in [0, 1] (negative = node default), "
                           f"got {min_rel}")
    mode = int(request.points_mode)
    if mode not in POINT_MODES:
        raise QueryRefused(f"points_mode must be one of {sorted(POINT_MODES)}, got {mode}")
    voxel = float(request.voxel_size)
    if not math.isfinite(voxel):
        raise QueryRefused(f"voxel_size must be finite, got {voxel}")
    return CheckedRequest(
        text or None, _request_image(request, max_image_pixels) if image_given else None,
        int(request.top_k) or int(settings.default_top_k),
        min_rel if min_rel >= 0 else settings.min_relevance, float(request.min_score),
        True if request.include_structure else None, mode, voxel if voxel > 0 else DEFAULT_VOXEL,
        bool(request.literal), _viewpoint(request))


def _viewpoint(request) -> np.ndarray | None:
    if not request.use_viewpoint:
        return None
    v = np.array([request.viewpoint.x, request.viewpoint.y, request.viewpoint.z], np.float64)
    if not np.all(np.isfinite(v)):
        raise QueryRefused(f"viewpoint must be finite, got {v.tolist()}")
    return v


def _request_image(request, max_pixels: int) -> np.ndarray:
    from .conversions import ConversionError, image_to_rgb
    msg = request.image
    try:        # from the claimed size, before the data is touched
        check_image_size(int(msg.width), int(msg.height), max_pixels, "image")
    except InputError as exc:
        raise QueryRefused(str(exc)) from None
    try:
        return image_to_rgb(msg)
    except ConversionError as exc:
        raise QueryRefused(f"image: {exc}") from exc


def answer_query(engine, request, response, settings: QuerySettings,
                 publish_hits: PublishHits | None, stamp, no_map: str) -> QueryAnswer:
    """Answer ``request`` (text or image exemplar) from ``engine`` into ``response`` (instances,
    found, best_id, best_relevance) and return the engine's answer. QueryRefused: no map
    (``engine`` None; the text is ``no_map``), an invalid request, or a query the map cannot
    answer (e.g. its encoder cannot embed images)."""
    if engine is None:
        raise QueryRefused(no_map)
    q = check_request(request, settings, engine.query_cfg.max_image_pixels)
    try:
        answer = engine.ask(q.text, image=q.image, top_k=q.top_k, min_relevance=q.min_relevance,
                            min_score=q.min_score, include_structure=q.include_structure,
                            viewpoint=q.viewpoint, literal=q.literal)
    except ValueError as exc:
        raise QueryRefused(str(exc)) from exc
    frame = settings.map_frame
    # voxel centroids are computed once per map and voxel size, not per query
    voxelized = engine.voxel_points(q.voxel_size) if q.points_mode == POINTS_VOXEL else None
    response.instances = instance_messages(answer.results, answer.query, stamp, frame,
                                           q.points_mode, settings.max_points_per_instance,
                                           voxelized)
    response.found = answer.found
    response.best_id = int(answer.best.instance_id) if answer.best else -1
    response.best_relevance = float(answer.best.relevance) if answer.best else 0.0
    u = answer.understood
    if u is not None:
        response.target, response.relation = u.target, u.relation or ""
        response.reference, response.superlative = u.reference or "", u.superlative or ""
    if settings.publish_markers and publish_hits is not None:
        publish_hits(answer, stamp, frame)
    return answer


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
    POINTS_VOXEL slices ``voxelized`` (QueryEngine.voxel_points: every instance's voxel
    centroids)."""
    k = len(results)
    if mode == POINTS_INDICES:
        flat = (np.concatenate([r.point_indices for r in results]) if k
                else np.zeros(0, np.int64)).astype(np.uint32)
        off = np.zeros(k + 1, np.int64)
        np.cumsum([len(r.point_indices) for r in results], out=off[1:])
        return array.array("I", flat.tobytes()), off
    if mode == POINTS_VOXEL:
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


def instance_messages(results, label: str, stamp, frame: str, mode: int = POINTS_ALL, cap: int = 0,
                      voxelized=None) -> list:
    """The hits as ObjectInstance messages, their points as ``mode`` says (``POINTS_*``;
    POINTS_VOXEL takes ``voxelized``, the engine's ``voxel_points``).

    Built for speed (a reply may carry hundreds): the points of all hits are one buffer sliced
    per hit, the header and the point fields are shared, numbers are converted in bulk."""
    from geometry_msgs.msg import Point, Vector3
    from sensor_msgs.msg import PointCloud2
    from std_msgs.msg import Header
    k = len(results)
    header = Header(frame_id=frame, stamp=stamp) if stamp is not None else Header(frame_id=frame)
    empty_cloud = PointCloud2()          # no points (indices / none): shared, never changed
    data, off = (_payload(results, mode, cap, voxelized) if mode != POINTS_NONE
                 else (None, np.zeros(k + 1, np.int64)))
    geo = np.array([[*r.centroid, *r.bbox_min, *r.bbox_max, *r.box_center, *r.box_orientation,
                     *r.box_size, r.contact_height, r.height_above_floor, r.relation_score]
                    for r in results], np.float64).reshape(k, 22).tolist()
    fields = _xyz_fields()
    out = []
    for j, r in enumerate(results):
        a, b = int(off[j]), int(off[j + 1])
        cloud, indices = empty_cloud, array.array("I")
        if mode == POINTS_INDICES:
            indices = data[a:b]
        elif mode in (POINTS_ALL, POINTS_VOXEL):
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
            point_indices=indices, box_center=box_pose(g[9:16]),
            box_size=build(Vector3, x=g[16], y=g[17], z=g[18]),
            support_id=int(r.support_id), on_floor=bool(r.on_floor), contact_height=g[19],
            height_above_floor=g[20], reference_id=int(r.reference_id),
            relation_score=g[21] if math.isfinite(g[21]) else 0.0))
    return out


_XYZ = None


def _xyz_fields() -> list:
    global _XYZ
    if _XYZ is None:        # immutable once built; shared by every cloud of every reply
        from sensor_msgs.msg import PointField
        _XYZ = [PointField(name=c, offset=4 * i, datatype=PointField.FLOAT32, count=1)
                for i, c in enumerate("xyz")]
    return _XYZ
