"""A planner-side helper for the OpenMask3D node, in the spirit of nav2_simple_commander.

```python
import rclpy
from openmask3d_ros.ros.client import OpenMask3DClient

rclpy.init()
node = rclpy.create_node("planner")
om3d = OpenMask3DClient(node)             # the node's services under /openmask3d
om3d.map_complete()                       # -> (accepted, message)
om3d.wait_until_ready(timeout=300)
reply = om3d.ask("a mug")                  # found / instances / message / best_relevance
if reply.found:
    for obj in reply.instances:           # relevance >= min_relevance, best first
        print(obj.id, obj.relevance, obj.score, obj.centroid, obj.points.shape)
else:
    print("no mug here:", reply.message)
om3d.ask(image=crop_rgb)                  # an image exemplar (RGB uint8 array) instead of text
built = om3d.build_map(feedback_callback=lambda f: print(f.stage, f.done, f.total))
print(built.generation, built.changes.moved)   # the BuildMap action: {stable id: displacement}
```
The client spins ``node`` itself while it waits (pass ``spin=False`` when the node is already
spun by an executor in another thread).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
from rclpy.action import ActionClient
from rclpy.executors import SingleThreadedExecutor
from std_srvs.srv import Trigger

from openmask3d_ros.action import BuildMap
from openmask3d_ros.msg import PipelineStatus
from openmask3d_ros.srv import QueryObjects

from .conversions import cloud_to_arrays
from .params import NODE_NAME
from .qos import latched_qos


class OpenMask3DError(RuntimeError):
    """The node refused a request (success = false) or did not answer in time."""


@dataclass
class Instance:
    """One query hit with numpy geometry, in ``frame_id`` (the node's map frame)."""

    id: int
    score: float
    label: str
    centroid: np.ndarray        # (3,)
    bbox_min: np.ndarray        # (3,)
    bbox_max: np.ndarray        # (3,)
    num_points: int
    points: np.ndarray          # (n, 3) float32 (empty unless points_mode all / voxel)
    frame_id: str
    relevance: float = 0.0      # [0, 1]; 0.5 = no more like the query than a generic thing
    structure: str = ""         # why it is floor/wall/table top; empty for objects
    point_indices: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    # oriented box: centre (3,), orientation x, y, z, w (4,), size along its axes (3,)
    box_center: np.ndarray = field(default_factory=lambda: np.zeros(3))
    box_orientation: np.ndarray = field(default_factory=lambda: np.array([0.0, 0, 0, 1]))
    box_size: np.ndarray = field(default_factory=lambda: np.zeros(3))
    support_id: int = -1        # what it rests on (-1: nothing found)
    on_floor: bool = False
    contact_height: float = float("nan")
    height_above_floor: float = float("nan")
    reference_id: int = -1      # relation queries: the reference instance it relates to
    relation_score: float = 0.0

    @staticmethod
    def from_msg(msg) -> Instance:
        pts = (cloud_to_arrays(msg.points)[0] if msg.points.width * msg.points.height
               else np.zeros((0, 3), np.float32))
        vec = lambda p: np.array([p.x, p.y, p.z], dtype=np.float64)  # noqa: E731
        q = msg.box_center.orientation
        return Instance(int(msg.id), float(msg.score), msg.label, vec(msg.centroid),
                        vec(msg.bbox_min), vec(msg.bbox_max), int(msg.num_points), pts,
                        msg.header.frame_id, float(msg.relevance), msg.structure,
                        np.asarray(msg.point_indices, dtype=np.int64),
                        vec(msg.box_center.position), np.array([q.x, q.y, q.z, q.w]),
                        vec(msg.box_size), int(msg.support_id), bool(msg.on_floor),
                        float(msg.contact_height), float(msg.height_above_floor),
                        int(msg.reference_id), float(msg.relation_score))


@dataclass
class QueryReply:
    """A successful answer: ``found`` False means nothing in the map is relevant."""

    found: bool
    instances: list[Instance]
    message: str
    best_id: int                # best candidate, relevant or not (-1: none)
    best_relevance: float
    # how a relation query was understood (all empty for a plain query)
    target: str = ""
    relation: str = ""
    reference: str = ""
    superlative: str = ""


@dataclass
class MapChangeSummary:
    """What changed between a map generation and the previous one, by stable instance id
    (openmask3d_ros/MapChanges); ``compared`` False: nothing to compare with (a first map)."""

    generation: str
    previous: str
    compared: bool
    added: list[int]
    removed: list[int]
    moved: dict[int, np.ndarray]            # stable id -> displacement (3,), m
    unchanged: list[int]
    index: dict[int, int]                   # stable id -> instance index in this generation
    removed_centroids: dict[int, np.ndarray]

    @staticmethod
    def from_msg(msg) -> MapChangeSummary:
        vec = lambda p: np.array([p.x, p.y, p.z], dtype=np.float64)  # noqa: E731
        index = {int(i): int(m) for kind in ("added", "moved", "unchanged")
                 for i, m in zip(getattr(msg, f"{kind}_ids"), getattr(msg, f"{kind}_indices"))}
        return MapChangeSummary(
            msg.generation, msg.previous, bool(msg.compared), [int(i) for i in msg.added_ids],
            [int(i) for i in msg.removed_ids],
            {int(i): vec(d) for i, d in zip(msg.moved_ids, msg.moved_displacements)},
            [int(i) for i in msg.unchanged_ids], index,
            {int(i): vec(c) for i, c in zip(msg.removed_ids, msg.removed_centroids)})


@dataclass
class BuildResult:
    """The BuildMap action's result: ``cancelled`` when the goal was cancelled (the previous map
    stays current); ``timings``: seconds per pipeline stage."""

    success: bool
    cancelled: bool
    message: str
    generation: str
    num_instances: int
    timings: dict[str, float]
    total_seconds: float
    changes: MapChangeSummary

    @staticmethod
    def from_msg(msg) -> BuildResult:
        return BuildResult(bool(msg.success), bool(msg.cancelled), msg.message, msg.generation,
                           int(msg.num_instances),
                           dict(zip(msg.stage_names, map(float, msg.stage_seconds))),
                           float(msg.total_seconds), MapChangeSummary.from_msg(msg.changes))


BUILD_MODES = {"incremental": BuildMap.Goal.MODE_INCREMENTAL, "full": BuildMap.Goal.MODE_FULL}
REJECTED_PREFIX = "build_map goal rejected"
QUERY_RESEND_S = 1.0      # a query is idempotent: resend it when no answer came in this time


class OpenMask3DClient:
    """Calls ``<ns>/query`` and ``<ns>/map_complete``, sends ``<ns>/build_map`` goals and
    follows ``<ns>/status``."""

    def __init__(self, node, namespace: str = f"/{NODE_NAME}", spin: bool = True):
        self.node = node
        self.ns = namespace.rstrip("/")
        self.spin = spin
        self._query = node.create_client(QueryObjects, f"{self.ns}/query")
        self._trigger = node.create_client(Trigger, f"{self.ns}/map_complete")
        self._build = ActionClient(node, BuildMap, f"{self.ns}/build_map")
        self.last_status: PipelineStatus | None = None
        self._statuses = 0       # status messages received (a rejection's reason comes after)
        self.resent = 0          # queries sent again after QUERY_RESEND_S without an answer
        self._status_sub = node.create_subscription(PipelineStatus, f"{self.ns}/status",
                                                    self._on_status, latched_qos())

    def _on_status(self, msg: PipelineStatus) -> None:
        self.last_status = msg
        self._statuses += 1

    # -- waiting ---------------------------------------------------------------------------------
    def _wait(self, predicate, timeout: float) -> bool:
        """Spin the node (or just wait, with spin=False) until ``predicate()`` or timeout.

        One executor (on the node's own context) serves every call. A fresh executor per call
        loses work: rclpy marks each ready entity when it queues its handler, and handlers still
        queued when an executor is dropped leave their entity marked, so no later executor waits
        on it again (a status subscription stopped updating this way)."""
        deadline = time.monotonic() + timeout
        executor = self._executor() if self.spin else None
        while not predicate():
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            if executor is not None:
                # Always the same timeout: rclpy starts a new wait (dropping the handlers it has
                # queued, which marks their entities for good) whenever spin_once's arguments
                # change.
                executor.spin_once(timeout_sec=0.05)
            else:
                time.sleep(min(0.02, left))
        return True

    def _executor(self) -> SingleThreadedExecutor:
        if getattr(self, "_own_executor", None) is None:
            self._own_executor = SingleThreadedExecutor(context=self.node.context)
        if self.node.executor is not self._own_executor:    # new, or taken by another executor
            self._own_executor.add_node(self.node)
        return self._own_executor

    def _call(self, client, request, timeout: float, resend_after: float | None = None):
        """Call and wait up to ``timeout`` s. ``resend_after``: an idempotent request without an
        answer after this many seconds is sent again (a service response is occasionally lost
        in DDS under load: about 1 in 3000 with 4 clients while frames were recorded)."""
        if not client.wait_for_service(timeout_sec=timeout):
            raise OpenMask3DError(f"service {client.srv_name} is not available "
                                  f"(is the OpenMask3D node running and active?)")
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            wait = min(left, resend_after) if resend_after else left
            future = client.call_async(request)
            if self._wait(future.done, max(wait, 0.0)):
                return future.result()
            client.remove_pending_request(future)
            if time.monotonic() >= deadline:
                raise OpenMask3DError(f"{client.srv_name}: no answer within {timeout} s")
            self.resent += 1

    def wait_for_node(self, timeout: float = 10.0) -> bool:
        """True once both services are available."""
        deadline = time.monotonic() + timeout
        return (self._query.wait_for_service(timeout_sec=timeout) and
                self._trigger.wait_for_service(
                    timeout_sec=max(0.0, deadline - time.monotonic())))

    def wait_for_status(self, predicate, timeout: float = 10.0) -> PipelineStatus | None:
        """Spin until ``predicate(status)`` holds; returns that status or None on timeout."""
        ok = self._wait(lambda: self.last_status is not None and predicate(self.last_status),
                        timeout)
        return self.last_status if ok else None

    def wait_until_ready(self, timeout: float = 600.0) -> bool:
        """Wait for state 'ready' (a map exists). Raises OpenMask3DError on state 'error'."""
        st = self.wait_for_status(lambda s: s.state in (PipelineStatus.STATE_READY,
                                                        PipelineStatus.STATE_ERROR), timeout)
        if st is not None and st.state == PipelineStatus.STATE_ERROR:
            raise OpenMask3DError(f"pipeline error: {st.message}")
        return st is not None

    # -- requests --------------------------------------------------------------------------------
    def map_complete(self, timeout: float = 30.0) -> tuple[bool, str]:
        """Declare the map complete: (accepted, message). Not accepted e.g. while processing."""
        resp = self._call(self._trigger, Trigger.Request(), timeout)
        if resp.success:
            # The next 'ready' must come from this run, not an older map.
            self.last_status = None
        return bool(resp.success), resp.message

    def build_map(self, mode: str | int = "incremental", feedback_callback=None,
                  timeout: float = 600.0, cancel=None) -> BuildResult:
        """Build the map with the ``build_map`` action and wait for its result. ``mode``:
        "incremental" (reuse what did not change) or "full"; ``feedback_callback(feedback)``
        gets BuildMap.Feedback (stage, done, total, elapsed, remaining); ``cancel()``, polled
        while waiting, True cancels the goal (the result then says ``cancelled``). Raises
        OpenMask3DError when the goal is rejected (with the node's reason, e.g. a build already
        running) or no result comes within ``timeout`` s (the goal is cancelled)."""
        if isinstance(mode, str) and mode not in BUILD_MODES:
            raise ValueError(f"mode must be one of {sorted(BUILD_MODES)}, got {mode!r}")
        goal = BuildMap.Goal(mode=BUILD_MODES[mode] if isinstance(mode, str) else int(mode))
        deadline = time.monotonic() + timeout
        if not self._wait(self._build.server_is_ready, timeout):
            raise OpenMask3DError(f"action {self.ns}/build_map is not available "
                                  "(is the OpenMask3D node running and active?)")
        seen = self._statuses
        sent = self._build.send_goal_async(goal, feedback_callback=(
            (lambda m: feedback_callback(m.feedback)) if feedback_callback else None))
        if not self._wait(sent.done, max(0.0, deadline - time.monotonic())):
            raise OpenMask3DError(f"{self.ns}/build_map: the goal was not answered in time")
        handle = sent.result()
        if not handle.accepted:
            raise OpenMask3DError(self._rejection(seen))
        done = handle.get_result_async()
        stop = (lambda: False) if cancel is None else cancel
        self._wait(lambda: done.done() or stop() or time.monotonic() >= deadline, timeout)
        if not done.done():
            late = time.monotonic() >= deadline
            handle.cancel_goal_async()
            self._wait(done.done, 10.0)
            if late or not done.done():
                raise OpenMask3DError(f"{self.ns}/build_map: no result within {timeout} s "
                                      "(the goal was cancelled)")
        return BuildResult.from_msg(done.result().result)

    def _rejection(self, seen: int, wait: float = 5.0) -> str:
        """The reason of a rejected goal: the node puts it in the status message."""
        def arrived() -> bool:
            s = self.last_status
            return self._statuses > seen and s is not None and s.message.startswith(
                REJECTED_PREFIX)
        if self._wait(arrived, wait):
            return self.last_status.message
        return f"{REJECTED_PREFIX} (no reason received; see the node's log)"

    def query_raw(self, text: str = "", top_k: int = 0, min_score: float = -1.0,
                  timeout: float = 30.0, *, min_relevance: float = -1.0,
                  include_structure: bool = False, image: np.ndarray | None = None,
                  points_mode: int = QueryObjects.Request.POINTS_ALL,
                  voxel_size: float = 0.0, literal: bool = False,
                  viewpoint=None) -> QueryObjects.Response:
        """The service response as is (success may be false). ``image``: RGB uint8 (h, w, 3)
        exemplar instead of text; ``min_relevance`` < 0: the node's default; ``literal``: no
        relation parsing; ``viewpoint``: (x, y, z) viewer in the map frame."""
        req = QueryObjects.Request(query=text, top_k=int(top_k), min_score=float(min_score),
                                   min_relevance=float(min_relevance),
                                   include_structure=bool(include_structure),
                                   points_mode=int(points_mode), voxel_size=float(voxel_size),
                                   literal=bool(literal), use_viewpoint=viewpoint is not None)
        if viewpoint is not None:
            req.viewpoint.x, req.viewpoint.y, req.viewpoint.z = (float(v) for v in viewpoint)
        if image is not None:
            from .conversions import rgb_to_image
            rgb_to_image(np.asarray(image), msg=req.image)
        return self._call(self._query, req, timeout, resend_after=QUERY_RESEND_S)

    def ask(self, text: str = "", top_k: int = 0, min_relevance: float = -1.0,
            timeout: float = 30.0, **options) -> QueryReply:
        """Relevant instances for ``text`` (or ``image=...``), with ``found`` and the best
        candidate. Raises OpenMask3DError when the node refuses (no map yet, empty text, ...).
        ``options``: min_score, include_structure, image, points_mode, voxel_size, literal,
        viewpoint. "the mug on the table" is answered as a relation (``reply.relation``)."""
        resp = self.query_raw(text, top_k, timeout=timeout, min_relevance=min_relevance,
                              **options)
        if not resp.success:
            raise OpenMask3DError(resp.message)
        return QueryReply(bool(resp.found), [Instance.from_msg(m) for m in resp.instances],
                          resp.message, int(resp.best_id), float(resp.best_relevance),
                          resp.target, resp.relation, resp.reference, resp.superlative)

    def query(self, text: str, top_k: int = 0, min_score: float = -1.0,
              timeout: float = 30.0, **options) -> list[Instance]:
        """Instances relevant to ``text``, best first (top_k = 0: the node's default_top_k);
        an empty list when nothing is. Raises OpenMask3DError when the node refuses."""
        return self.ask(text, top_k, timeout=timeout, min_score=min_score, **options).instances

    def destroy(self) -> None:
        if getattr(self, "_own_executor", None) is not None:
            self._own_executor.remove_node(self.node)
            self._own_executor.shutdown()
            self._own_executor = None
        self.node.destroy_client(self._query)
        self.node.destroy_client(self._trigger)
        self._build.destroy()
        self.node.destroy_subscription(self._status_sub)
