"""The node's ``~/build_map`` action (openmask3d_ros/action/BuildMap): a map build with feedback,
a result and cancel, beside the ``~/map_complete`` Trigger service and Empty topic.

A goal starts the build in the goal callback, so a goal that cannot start (a build already
running, from any of the three triggers; no keyframes; no cloud) is rejected there, and the
reason is logged and put in ``~/status``'s message (ROS 2 goal responses carry no reason).
The build runs on MapBuilder's worker thread; the goal's execute callback waits for it on an
executor thread of its own callback group, sending the build's progress reports as feedback
(and the latest one every ``HEARTBEAT_S`` seconds). A cancel sets the build's cancel flag:
run_pipeline stops within a frame, no generation is written and the current map stays.
"""
from __future__ import annotations

import threading
import time
from collections.abc import Callable

from rclpy.action import ActionServer, CancelResponse, GoalResponse
from rclpy.callback_groups import ReentrantCallbackGroup

from openmask3d_ros.action import BuildMap

from .map_builder import BuildJob, BuildOutcome, Progress
from .params import BUILD_ACTION
from .visualization import map_changes_msg

MODES = {BuildMap.Goal.MODE_INCREMENTAL: "incremental", BuildMap.Goal.MODE_FULL: "full"}
POLL_S = 0.05
HEARTBEAT_S = 1.0


class BuildMapServer:
    """``start(job)`` starts a build as ``job`` and returns (accepted, message);
    ``rejected(reason)`` makes a refusal visible (log, status); ``header()`` is the header of
    the result's change summary (stamp now, the map frame)."""

    def __init__(self, node, start: Callable[[BuildJob], tuple[bool, str]],
                 rejected: Callable[[str], None], header: Callable[[], object]):
        self._start, self._rejected, self._header = start, rejected, header
        self._lock = threading.Lock()
        self._pending: dict[int, BuildJob] = {}    # by id(goal): started, not yet executed
        self._jobs: dict[bytes, BuildJob] = {}
        self._closed = threading.Event()
        self._server = ActionServer(
            node, BuildMap, BUILD_ACTION, execute_callback=self._execute,
            goal_callback=self._on_goal, handle_accepted_callback=self._on_accepted,
            cancel_callback=self._on_cancel, callback_group=ReentrantCallbackGroup())

    def destroy(self) -> None:
        """Stop serving (a deactivated node); a goal still waiting ends aborted, its build runs
        on as one started by the service would."""
        self._closed.set()
        self._server.destroy()

    # -- goal, accept, cancel ----------------------------------------------------------------------
    def _on_goal(self, goal) -> GoalResponse:
        mode = MODES.get(goal.mode)
        if mode is None:
            return self._reject(f"unknown mode {goal.mode} (MODE_INCREMENTAL=0, MODE_FULL=1)")
        job = BuildJob(mode)
        with self._lock:
            try:
                ok, text = self._start(job)
            except Exception as exc:
                ok, text = False, f"internal error: {exc}"
            if not ok:
                return self._reject(text)
            self._pending[id(goal)] = job     # rclpy hands this goal object to its handle
        return GoalResponse.ACCEPT

    def _reject(self, reason: str) -> GoalResponse:
        self._rejected(f"build_map goal rejected: {reason}")
        return GoalResponse.REJECT

    def _on_accepted(self, goal_handle) -> None:
        with self._lock:
            job = self._pending.pop(id(goal_handle.request))
            self._jobs[bytes(goal_handle.goal_id.uuid)] = job
        goal_handle.execute()

    def _on_cancel(self, goal_handle) -> CancelResponse:
        with self._lock:
            job = self._jobs.get(bytes(goal_handle.goal_id.uuid))
        if job is None or job.done.is_set():
            return CancelResponse.REJECT
        job.cancel()
        return CancelResponse.ACCEPT

    # -- execute ---------------------------------------------------------------------------------
    def _execute(self, goal_handle):
        key = bytes(goal_handle.goal_id.uuid)
        with self._lock:
            job = self._jobs[key]
        try:
            self._follow(goal_handle, job)
            outcome = job.outcome or BuildOutcome(False, False, "the node stopped serving "
                                                  "build_map", 0.0)
            result = self._result(outcome)
            if self._closed.is_set():           # a destroyed server takes no transition
                return result
            if outcome.cancelled and goal_handle.is_cancel_requested:
                goal_handle.canceled()
            elif outcome.success:
                goal_handle.succeed()
            else:
                goal_handle.abort()
            return result
        finally:
            with self._lock:
                self._jobs.pop(key, None)

    def _follow(self, goal_handle, job: BuildJob) -> None:
        """Feedback until the build ends: every stage change, the latest report of each poll,
        and the latest again after HEARTBEAT_S without news (elapsed and time left move on)."""
        sent, last_stage = 0.0, None
        while not self._closed.is_set():
            finished = job.done.wait(POLL_S)
            news: list[Progress] = []
            while job.reports:
                news.append(job.reports.popleft())
            picks = [p for i, p in enumerate(news)
                     if p.stage != (news[i - 1].stage if i else last_stage)]
            if news and (not picks or picks[-1] is not news[-1]):
                picks.append(news[-1])
            if not picks and job.last is not None and time.monotonic() - sent >= HEARTBEAT_S:
                picks = [job.snapshot()]
            for p in picks:
                goal_handle.publish_feedback(BuildMap.Feedback(
                    stage=p.stage, done=max(p.done, 0), total=max(p.total, 0),
                    elapsed=float(p.elapsed), remaining=float(p.remaining)))
                last_stage, sent = p.stage, time.monotonic()
            if finished:
                return

    def _result(self, outcome: BuildOutcome) -> BuildMap.Result:
        result = BuildMap.Result(success=outcome.success, cancelled=outcome.cancelled,
                                 message=outcome.message, total_seconds=float(outcome.elapsed))
        imap = outcome.imap
        if imap is not None:
            result.generation = imap.meta.generation or ""
            result.num_instances = int(imap.num_instances)
            result.stage_names = [k.removesuffix("_s") for k in imap.meta.timings]
            result.stage_seconds = [float(v) for v in imap.meta.timings.values()]
            result.changes = map_changes_msg(imap, self._header())
        return result
