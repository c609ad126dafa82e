"""What the node shows in RViz: the map's instances and each query's answer, all latched.

``MapPublishers(node, frame)`` creates the publishers on a node; then

* ``publish_map(map_or_engine)`` when a map becomes ready: ``~/instances_cloud`` (the scene, one
  colour per instance), ``~/instance_markers`` (a box and an "id (N pts)" label per instance,
  and what changed since the previous map in the namespaces ``openmask3d/changes`` and
  ``openmask3d/change_labels``: added instances boxed green, removed ones a red sphere at their
  old centroid, moved ones an orange arrow from the old centroid to the new) and
  ``~/map_changes`` (openmask3d_ros/MapChanges: the change summary, ``map_changes_msg``);
* ``publish_query(text, results, values)`` after each query: ``~/detections``
  (vision_msgs/Detection3DArray, one Detection3D per hit), ``~/heatmap`` (the scene coloured by
  each instance's value for the query, the best hottest), ``~/markers`` (a box and label per hit)
  and ``~/query_points`` (the hits' points, the best in ``HIGHLIGHT``);
  ``publish_query_later`` does the same on a background thread, so that a service reply never
  waits for it (the node uses it: building these costs more than answering a large query).

Colours are those of ``openmask3d render`` (core/render.py), so RViz and the PNGs agree.
"""
from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable

import numpy as np
from geometry_msgs.msg import Point, Pose, PoseWithCovariance, Quaternion, Vector3
from sensor_msgs.msg import PointCloud2
from visualization_msgs.msg import Marker, MarkerArray

from openmask3d_ros.msg import MapChanges

from ..core import render
from .conversions import arrays_to_cloud
from .fastmsg import box_pose, build
from .qos import latched_qos

INSTANCES_CLOUD_TOPIC = "~/instances_cloud"     # sensor_msgs/PointCloud2 (x y z rgb)
INSTANCE_MARKERS_TOPIC = "~/instance_markers"   # visualization_msgs/MarkerArray
DETECTIONS_TOPIC = "~/detections"               # vision_msgs/Detection3DArray
HEATMAP_TOPIC = "~/heatmap"                     # sensor_msgs/PointCloud2 (x y z rgb)
MARKERS_TOPIC = "~/markers"                     # visualization_msgs/MarkerArray
QUERY_POINTS_TOPIC = "~/query_points"           # sensor_msgs/PointCloud2 (x y z rgb)
CHANGES_TOPIC = "~/map_changes"                 # openmask3d_ros/MapChanges
CHANGES_NS, CHANGE_LABELS_NS = "openmask3d/changes", "openmask3d/change_labels"
CHANGE_COLORS = {"added": (40, 200, 60), "removed": (230, 40, 40), "moved": (255, 150, 0)}


def _rgba(rgb, alpha: float = 1.0):
    from std_msgs.msg import ColorRGBA
    r, g, b = (float(c) / 255.0 for c in rgb)
    return ColorRGBA(r=r, g=g, b=b, a=float(alpha))


def hit_value(result) -> float:
    """The [0, 1] confidence of a hit when the engine computes one (relevance), else its cosine."""
    rel = float(getattr(result, "relevance", float("nan")))
    return rel if np.isfinite(rel) else float(result.score)


class MapPublishers:
    """The visualisation publishers of one node, all latched.

    ``frame``: the map frame, or a callable returning it (read at every publish, so a changed
    ``map_frame`` parameter applies). ``hits=False`` leaves out ``~/markers`` and
    ``~/query_points`` (for a node that publishes those itself). ``lifecycle=True`` makes the
    query topics lifecycle publishers of a LifecycleNode (silent while inactive; create this
    object in on_configure so that activation enables them); the map topics stay plain, so a map
    loaded while the node is still inactive reaches RViz too. ``max_rate`` (Hz, or a callable
    returning it): ``publish_query_later`` publishes at most this often; a faster query stream
    shows its latest answer (building the views costs more than answering a large query).
    """

    def __init__(self, node, frame: str | Callable[[], str] = "map", hits: bool = True,
                 lifecycle: bool = False, max_rate: float | Callable[[], float] = 10.0):
        from vision_msgs.msg import Detection3DArray
        self._node = node
        self._frame = frame if callable(frame) else (lambda: frame)
        qos = latched_qos()
        answer = (node.create_lifecycle_publisher
                  if lifecycle and hasattr(node, "create_lifecycle_publisher")
                  else node.create_publisher)
        self._pubs = {
            INSTANCES_CLOUD_TOPIC: node.create_publisher(PointCloud2, INSTANCES_CLOUD_TOPIC, qos),
            INSTANCE_MARKERS_TOPIC: node.create_publisher(MarkerArray, INSTANCE_MARKERS_TOPIC, qos),
            CHANGES_TOPIC: node.create_publisher(MapChanges, CHANGES_TOPIC, qos),
            DETECTIONS_TOPIC: answer(Detection3DArray, DETECTIONS_TOPIC, qos),
            HEATMAP_TOPIC: answer(PointCloud2, HEATMAP_TOPIC, qos),
        }
        if hits:
            self._pubs[MARKERS_TOPIC] = answer(MarkerArray, MARKERS_TOPIC, qos)
            self._pubs[QUERY_POINTS_TOPIC] = answer(PointCloud2, QUERY_POINTS_TOPIC, qos)
        self._view: tuple[object, np.ndarray] | None = None   # (InstanceMap, point labels)
        rate = max_rate if callable(max_rate) else (lambda: max_rate)
        self._later = LatestJob(node.get_logger(), "openmask3d-viz",     # publish_query_later
                                alive=node.context.ok, min_interval=lambda: 1.0 / rate())

    @property
    def topics(self) -> list[str]:
        """The topics published (relative names, ``~/...``)."""
        return list(self._pubs)

    def destroy(self) -> None:
        self._later.close()
        for pub in self._pubs.values():
            self._node.destroy_publisher(pub)
        self._pubs.clear()

    def _header(self, stamp):
        from std_msgs.msg import Header
        return Header(frame_id=self._frame(),
                      stamp=stamp if stamp is not None else self._node.get_clock().now().to_msg())

    # -- the map ---------------------------------------------------------------------------------
    def publish_map(self, source, stamp=None) -> None:
        """Publish ``~/instances_cloud``, ``~/instance_markers`` and ``~/map_changes`` of an
        InstanceMap (or of an object holding one as ``.map``, e.g. a QueryEngine); kept for
        ``publish_query``."""
        imap = getattr(source, "map", source)
        header = self._header(stamp)
        points = np.asarray(imap.points, np.float32)
        labels = render.point_labels(len(points), imap.point_indices)
        # one assignment: a query on a service thread sees the old view or the new, never half
        self._view = (imap, labels)
        colors = render.instance_colors(points, labels)
        self._pubs[INSTANCES_CLOUD_TOPIC].publish(
            arrays_to_cloud(points, colors, frame_id=header.frame_id, stamp=header.stamp))
        markers = MarkerArray(markers=[_delete_all(header)])
        if imap.num_instances:
            lo, hi = imap.boxes()
            palette = render.instance_palette(np.arange(imap.num_instances))
            for m in range(imap.num_instances):
                n = len(imap.point_indices[m])
                box = _box_lines(header, "openmask3d/instances", m, lo[m], hi[m],
                                 _rgba(palette[m]))
                label = _text(header, "openmask3d/instance_labels", m, lo[m], hi[m],
                              f"{m} ({n} pts)", _rgba(palette[m]))
                markers.markers += [box, label]
        markers.markers += _change_markers(header, imap)
        self._pubs[INSTANCE_MARKERS_TOPIC].publish(markers)
        self._pubs[CHANGES_TOPIC].publish(map_changes_msg(imap, header))

    # -- a query ---------------------------------------------------------------------------------
    def publish_query(self, text: str, results, values=None, stamp=None) -> None:
        """Publish the answer to ``text``: ``results`` are QueryResult-like (instance_id, score,
        centroid, bbox_min, bbox_max, points), best first; ``values`` (M,) the per-instance
        value the ranking used (``QueryAnswer.instance_values``) for the heatmap, which covers
        only the hits when None. The heatmap needs a map from ``publish_map``."""
        header = self._header(stamp)
        boxes = _boxes(results)                      # once for the detections and the markers
        self._pubs[DETECTIONS_TOPIC].publish(_detections(header, text, results, boxes))
        view = self._view
        if view is not None:
            imap, labels = view
            if values is None:
                values = np.full(imap.num_instances, np.nan)
                for r in results:
                    values[r.instance_id] = hit_value(r)
            if len(values) == imap.num_instances:   # else the map changed during the query
                heat = render.heat_values(labels, imap.point_indices, values)
                self._pubs[HEATMAP_TOPIC].publish(arrays_to_cloud(
                    imap.points, render.heat_colors(heat), frame_id=header.frame_id,
                    stamp=header.stamp))
        if MARKERS_TOPIC in self._pubs:
            self._pubs[MARKERS_TOPIC].publish(_hit_markers(header, text, boxes))
            self._pubs[QUERY_POINTS_TOPIC].publish(_hit_points(header, results))

    def publish_query_later(self, text: str, results, values=None, stamp=None) -> None:
        """``publish_query`` on the background thread; ``values`` may be a callable returning
        them (computed there too). A query answered while an older one still waits replaces
        it: the topics are latched, so only the latest answer is shown."""
        stamp = stamp if stamp is not None else self._node.get_clock().now().to_msg()

        def job():
            self.publish_query(text, results, values() if callable(values) else values, stamp)
        self._later.submit(job)

    def wait_published(self, timeout: float = 10.0) -> bool:
        """True once every ``publish_query_later`` so far has been published (or replaced)."""
        return self._later.wait_idle(timeout)


class LatestJob:
    """One daemon thread running the latest submitted job; a job still waiting when a newer one
    arrives is dropped. Jobs start at least ``min_interval()`` seconds apart (a job submitted
    after a quiet spell starts at once). Errors are logged (``log.warning``), never raised; not
    once ``alive()`` is false (a job cut short by shutdown, e.g. Ctrl-C, is not a failure)."""

    def __init__(self, log, name: str, alive: Callable[[], bool] = lambda: True,
                 min_interval: Callable[[], float] = lambda: 0.0):
        self._log = log
        self._alive = alive
        self._min_interval = min_interval
        self._last_start = -math.inf
        self._cond = threading.Condition()
        self._job: Callable[[], None] | None = None
        self._running = False
        self._closed = False
        self._thread = threading.Thread(target=self._loop, daemon=True, name=name)
        self._thread.start()

    def submit(self, job: Callable[[], None]) -> None:
        with self._cond:
            if self._closed:
                return
            self._job = job
            self._cond.notify_all()

    def wait_idle(self, timeout: float) -> bool:
        with self._cond:
            return self._cond.wait_for(lambda: self._job is None and not self._running, timeout)

    def close(self, timeout: float = 10.0) -> None:
        """Let the running job finish (up to ``timeout``), drop a waiting one, stop the thread."""
        with self._cond:
            self._closed = True
            self._job = None
            self._cond.notify_all()
        self._thread.join(timeout)

    def _loop(self) -> None:
        while True:
            with self._cond:
                while True:
                    self._cond.wait_for(lambda: self._job is not None or self._closed)
                    if self._closed:
                        self._cond.notify_all()
                        return
                    wait = self._last_start + self._min_interval() - time.monotonic()
                    if wait <= 0:
                        break
                    self._cond.wait(wait)      # a newer job may replace this one meanwhile
                job, self._job, self._running = self._job, None, True
                self._last_start = time.monotonic()
            try:
                job()
            except Exception as exc:       # visualisation never takes the node down
                if self._alive():
                    self._log.warning(f"publishing the query views failed: {exc}")
            finally:
                with self._cond:
                    self._running = False
                    self._cond.notify_all()


# -- message builders ------------------------------------------------------------------------------
# Built with fastmsg.build (hundreds per answer): every sub-message is a new object, none is
# changed after it is built.
def _point(x, y, z):
    return build(Point, x=float(x), y=float(y), z=float(z))


_IDENTITY = build(Quaternion, x=0.0, y=0.0, z=0.0, w=1.0)   # shared: never changed


def _pose(x, y, z):
    """A pose at (x, y, z), identity orientation."""
    return build(Pose, position=_point(x, y, z), orientation=_IDENTITY)


def _vector(x, y, z):
    return build(Vector3, x=float(x), y=float(y), z=float(z))


def _boxes(results) -> tuple[list, ...]:
    """Per hit, as Python floats (numpy once for all hits): axis-aligned box min and max, the
    oriented box's pose and size (the axis-aligned box where a hit has none), centroid, value."""
    k = len(results)
    lo = np.array([r.bbox_min for r in results], float).reshape(k, 3)
    hi = np.array([r.bbox_max for r in results], float).reshape(k, 3)
    cen = np.array([r.centroid for r in results], float).reshape(k, 3)
    centre = np.array([r.box_center for r in results], float).reshape(k, 3)
    quat = np.array([r.box_orientation for r in results], float).reshape(k, 4)
    size = np.array([r.box_size for r in results], float).reshape(k, 3)
    none = ~np.all(np.isfinite(np.hstack([centre, quat, size])), axis=1)
    centre[none], size[none], quat[none] = ((lo + hi) / 2)[none], (hi - lo)[none], [0, 0, 0, 1]
    poses = [box_pose(v) for v in np.hstack([centre, quat]).tolist()]
    return (lo.tolist(), hi.tolist(), poses, size.tolist(), cen.tolist(),
            [hit_value(r) for r in results])


def _delete_all(header) -> Marker:
    return build(Marker, header=header, action=Marker.DELETEALL)


def _box_lines(header, ns: str, mid: int, lo, hi, color) -> Marker:
    return build(Marker, header=header, ns=ns, id=int(mid), type=Marker.LINE_LIST,
                 action=Marker.ADD, color=color, pose=_pose(0, 0, 0),
                 scale=_vector(0.01, 0, 0),
                 points=[_point(*p) for p in render.box_edges(lo, hi).reshape(-1, 3).tolist()])


def _text(header, ns: str, mid: int, lo, hi, text: str, color) -> Marker:
    """A label above the box (lo, hi): centred in x and y, 5 cm over its top."""
    return build(Marker, header=header, ns=ns, id=int(mid), type=Marker.TEXT_VIEW_FACING,
                 action=Marker.ADD, text=str(text), color=color,
                 pose=_pose((lo[0] + hi[0]) / 2, (lo[1] + hi[1]) / 2, float(hi[2]) + 0.05),
                 scale=_vector(0, 0, 0.05))


def _detections(header, text: str, results, boxes: tuple[list, ...]):
    from vision_msgs.msg import (BoundingBox3D, Detection3D, Detection3DArray, ObjectHypothesis,
                                 ObjectHypothesisWithPose)
    dets = []
    for r, _, _, c, size, cen, value in zip(results, *boxes):
        hyp = build(ObjectHypothesisWithPose,
                    hypothesis=build(ObjectHypothesis, class_id=str(text), score=value),
                    pose=build(PoseWithCovariance, pose=_pose(*cen)))
        dets.append(build(Detection3D, header=header, id=str(int(r.instance_id)),
                          bbox=build(BoundingBox3D, center=c, size=_vector(*size)),
                          results=[hyp]))
    return build(Detection3DArray, header=header, detections=dets)


def _hit_markers(header, text: str, boxes: tuple[list, ...]) -> MarkerArray:
    from std_msgs.msg import ColorRGBA
    best, other, white = (_rgba(render.HIGHLIGHT, 0.35), _rgba(render.OTHER_HIT, 0.35),
                          build(ColorRGBA, r=1.0, g=1.0, b=1.0, a=1.0))
    markers = [_delete_all(header)]
    for rank, (lo, hi, c, size, _, value) in enumerate(zip(*boxes)):
        box = build(Marker, header=header, ns="openmask3d/boxes", id=rank, type=Marker.CUBE,
                    action=Marker.ADD, color=best if rank == 0 else other, pose=c,
                    scale=_vector(*(max(v, 0.01) for v in size)))
        label = _text(header, "openmask3d/labels", rank, lo, hi,
                      f"{text} #{rank + 1} ({value:.2f})", white)
        markers += [box, label]
    return build(MarkerArray, markers=markers)


def _hit_points(header, results) -> PointCloud2:
    if not results:
        return arrays_to_cloud(np.zeros((0, 3), np.float32), np.zeros((0, 3), np.uint8),
                               frame_id=header.frame_id, stamp=header.stamp)
    pts = [np.asarray(r.points, np.float32).reshape(-1, 3) for r in results]
    palette = np.array([render.HIGHLIGHT] + [render.OTHER_HIT] * (len(pts) - 1), np.uint8)
    cols = np.repeat(palette, [len(p) for p in pts], axis=0)
    return arrays_to_cloud(np.concatenate(pts), cols, frame_id=header.frame_id,
                           stamp=header.stamp)


# -- what changed since the previous map -----------------------------------------------------------
def map_changes_msg(imap, header=None) -> MapChanges:
    """The change summary of ``imap``'s generation (``meta.changes``, core/changes.py);
    ``compared`` is False when there is none (a first map, change tracking off)."""
    from std_msgs.msg import Header
    ch = imap.meta.changes
    msg = MapChanges(header=header if header is not None else Header(),
                     generation=imap.meta.generation or "")
    if ch is None:
        return msg
    msg.previous, msg.compared = ch.previous, True
    for kind in ("added", "moved", "unchanged"):
        entries = getattr(ch, kind)
        setattr(msg, f"{kind}_ids", [int(e["id"]) for e in entries])
        setattr(msg, f"{kind}_indices", [int(e["index"]) for e in entries])
    msg.removed_ids = [int(e["id"]) for e in ch.removed]
    msg.removed_centroids = [Point(**dict(zip("xyz", map(float, e["centroid"]))))
                             for e in ch.removed]
    msg.moved_displacements = [Vector3(**dict(zip("xyz", map(float, e["displacement"]))))
                               for e in ch.moved]
    return msg


def _change_markers(header, imap) -> list[Marker]:
    """Added instances boxed, removed ones a sphere at their old centroid, moved ones an arrow
    from the old centroid to the new, each with a label (namespaces CHANGES_NS and
    CHANGE_LABELS_NS)."""
    ch = imap.meta.changes
    if ch is None:
        return []
    color = {k: _rgba(c) for k, c in CHANGE_COLORS.items()}
    shapes, labels = [], []
    lo, hi = imap.boxes() if imap.num_instances else (None, None)
    for e in ch.added:
        m = int(e["index"])
        shapes.append(_box_lines(header, CHANGES_NS, len(shapes), lo[m], hi[m], color["added"]))
        labels.append((e["centroid"], f"added {e['id']}", color["added"]))
    for e in ch.removed:
        shapes.append(build(Marker, header=header, ns=CHANGES_NS, id=len(shapes),
                            type=Marker.SPHERE, action=Marker.ADD, color=color["removed"],
                            pose=_pose(*e["centroid"]), scale=_vector(0.1, 0.1, 0.1)))
        labels.append((e["centroid"], f"removed {e['id']}", color["removed"]))
    for e in ch.moved:
        new = np.asarray(e["centroid"], float)
        old = new - np.asarray(e["displacement"], float)
        shapes.append(build(Marker, header=header, ns=CHANGES_NS, id=len(shapes),
                            type=Marker.ARROW, action=Marker.ADD, color=color["moved"],
                            pose=_pose(0, 0, 0), scale=_vector(0.02, 0.04, 0.06),
                            points=[_point(*old), _point(*new)]))
        labels.append((e["centroid"], f"moved {e['id']} ({np.linalg.norm(new - old):.2f} m)",
                       color["moved"]))
    return shapes + [_text(header, CHANGE_LABELS_NS, k, c, c, text, col)
                     for k, (c, text, col) in enumerate(labels)]
