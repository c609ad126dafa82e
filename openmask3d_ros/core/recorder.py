"""Keyframe recorder: which frames of a posed RGB-D stream become keyframes, and writing them.

ROS-free, so that it is testable without rclpy; the node feeds it and drives it:

- ``offer(stamp_ns, payload)`` (cheap; called from subscription callbacks): counts the frame,
  notices stamp gaps (frames lost before the node, or in its own input queue when frames reach
  it late: the input is faster than it can take; a gap longer than ``pause_s`` is a pause of
  the stream, not a loss), and queues every ``frame_step``-th frame as a
  candidate in a bounded queue, with a deadline ``pose_wait`` seconds ahead on the caller's clock
  (the ROS clock, so simulated time works; a clock that reads 0, i.e. use_sim_time before the
  first /clock, starts the wait when it starts, instead of ending it at its first jump);
- ``process(force=False)`` (a worker thread): each candidate waits until its pose can be
  interpolated at its stamp or its deadline passes; it is then decoded (``decode(payload)``),
  checked (its intrinsics must fit its image size: ``check_principal_point``, as offline) and
  written to the scene folder at once;
- ``time_jumped(text)``: ROS time ran backwards (a bag looped or restarted, a simulator reset):
  the waiting candidates and the stamp history are dropped.

Every frame that does not become a keyframe when it should have is counted by cause (``Drop``),
and ``warn(cause, text)`` is called so the caller can say what to change. ``counters()`` returns
them as one typed record (``RecorderCounters``).
"""
from __future__ import annotations

import statistics
import threading
from collections import deque
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any, NamedTuple
from collections.abc import Callable

import numpy as np

from .camera import Intrinsics, usable_pose
from .scene import SceneWriter, check_principal_point


class Drop(str, Enum):
    """Why a frame that should have become a keyframe did not. A member's name (= its value) is
    its counter's one name everywhere: ``RecorderCounters.drops``, the PipelineStatus field, the
    /diagnostics key and docs/ros.md."""

    # frames missing between consecutive stamps (lost in transport before the node)
    frames_missed = "frames_missed"
    # candidates pushed out of the full queue
    frames_overflow = "frames_overflow"
    # no camera pose at the stamp within the wait
    frames_without_pose = "frames_without_pose"
    # an image that could not be used (encoding, size, camera, intrinsics that do not fit it)
    frames_rejected = "frames_rejected"
    # frames missing between consecutive stamps while frames reached the node late: dropped from
    # its own input queue because the input is faster than the node can take
    frames_overrun = "frames_overrun"
    # candidates dropped because ROS time jumped backwards while they waited for their pose
    frames_time_jump = "frames_time_jump"


@dataclass(frozen=True)
class RecorderCounters:
    """A snapshot of the recorder's counters. ``frames_received``, ``keyframes``,
    ``stream_pauses`` and each ``Drop`` are PipelineStatus fields of the same name; ``pending``
    is not published."""

    frames_received: int
    keyframes: int          # in the scene folder: found at start plus written since
    pending: int            # candidates still waiting for their pose
    drops: dict[Drop, int]  # one entry per Drop
    stream_pauses: int = 0  # gaps in the stamps longer than pause_s (not counted as drops)

Decode = Callable[[Any], tuple[np.ndarray, np.ndarray, Intrinsics]]
PoseAt = Callable[[int, bool], np.ndarray]


@dataclass
class _Candidate:
    index: int
    stamp_ns: int
    payload: Any
    deadline_ns: int | None          # None: the clock had not started when it came


class _Gap(NamedTuple):
    """A gap in the stamps before a frame: ``cause`` None is a pause of the stream."""

    cause: Drop | None
    frames: int          # frames missing (0 for a pause)
    seconds: float       # length of the gap
    late_s: float        # how much later than the earliest frames this frame reached the node


def existing_keyframes(scene_dir: str | Path) -> list[int]:
    """Numbers of the complete keyframes already in ``scene_dir`` (the pose is written last)."""
    return sorted(int(p.stem) for p in (Path(scene_dir) / "pose").glob("*.txt")
                  if p.stem.isdigit())


class KeyframeRecorder:
    """Selects, pose-matches, checks and writes keyframes; thread-safe counters."""

    def __init__(self, scene_dir: str | Path, frame_step: int, decode: Decode, pose_at: PoseAt,
                 now_ns: Callable[[], int], pose_wait_s: float = 2.0, queue_size: int = 64,
                 warn: Callable[[Drop, str], None] | None = None,
                 info: Callable[[str], None] | None = None, pause_s: float = 1.0):
        if frame_step < 1:
            raise ValueError(f"frame_step must be >= 1, got {frame_step}")
        if queue_size < 1:
            raise ValueError(f"queue_size must be >= 1, got {queue_size}")
        self.scene_dir = Path(scene_dir)
        self.frame_step = int(frame_step)
        self._decode, self._pose_at, self._now_ns = decode, pose_at, now_ns
        self.pose_wait_ns = int(pose_wait_s * 1e9)
        self.pause_ns = int(pause_s * 1e9)
        self._warn = warn or (lambda cause, text: None)
        self._info = info or (lambda text: None)
        self._writer = SceneWriter(self.scene_dir)
        done = existing_keyframes(self.scene_dir)
        self.keyframes_before = len(done)
        self._next_name = done[-1] + 1 if done else 0
        self._writer.write_keyframe_step(self.frame_step)
        self._intrinsics: tuple[Intrinsics, Intrinsics] | None = None
        self._queue: deque[_Candidate] = deque()
        self._queue_size = int(queue_size)
        self._lock = threading.Lock()
        self._process_lock = threading.Lock()   # one writer at a time
        self._last_stamp: int | None = None
        self._intervals: deque[int] = deque(maxlen=31)
        self._min_lag: int | None = None     # least (clock - stamp) seen: the frames' base delay
        self.frames_received = 0
        self.stream_pauses = 0
        self.keyframes_written = 0
        self.drops: dict[Drop, int] = {cause: 0 for cause in Drop}

    # -- fed from callbacks -------------------------------------------------------------------
    def offer(self, stamp_ns: int, payload: Any) -> bool:
        """Count a synchronised frame; queue it when it is a keyframe candidate (returned)."""
        stamp_ns = int(stamp_ns)
        now = int(self._now_ns())
        with self._lock:
            index = self.frames_received
            self.frames_received += 1
            gap = self._gap_before(stamp_ns, now)
            candidate = index % self.frame_step == 0
            overflow = self._enqueue(index, stamp_ns, payload, now) if candidate else None
        if gap is not None:
            self._report_gap(gap, stamp_ns)
        if overflow is not None:
            self._warn(Drop.frames_overflow, f"keyframe candidate {overflow.index} dropped: "
                       f"{self._queue_size} candidates already waiting for their pose" +
                       (" and the clock reads 0" if now <= 0 else ""))
        return candidate

    def _enqueue(self, index: int, stamp_ns: int, payload: Any, now: int) -> _Candidate | None:
        """Queue a candidate (its pose wait starts now, or when a stopped clock starts); the one
        pushed out of a full queue, counted, or None. Called under the lock."""
        overflow = self._queue.popleft() if len(self._queue) >= self._queue_size else None
        self._queue.append(_Candidate(index, stamp_ns, payload,
                                      now + self.pose_wait_ns if now > 0 else None))
        if overflow is not None:
            self.drops[Drop.frames_overflow] += 1
        return overflow

    def _gap_before(self, stamp_ns: int, now: int) -> _Gap | None:
        """The gap between the previous stamp and this one, when frames are missing there (from
        the median period), counted by cause: lost before the node (frames_missed) or, when this
        frame reached the node late, in its own input queue (frames_overrun). A gap longer than
        pause_s is a pause of the stream, not a loss. Called under the lock."""
        late = self._lateness(stamp_ns, now)
        last = self._last_stamp
        if last is not None and stamp_ns <= last:
            if last - stamp_ns > self.pause_ns:     # the stream started again, earlier
                self._last_stamp = stamp_ns
            return None     # out of order: the newest stamp stays, so no gap is counted twice
        self._last_stamp = stamp_ns
        if last is None:
            return None
        dt = stamp_ns - last
        if dt > self.pause_ns:
            self.stream_pauses += 1
            self._min_lag = None        # a new stream: its delay and rate are learnt again
            self._intervals.clear()
            return _Gap(None, 0, dt / 1e9, 0.0)
        if len(self._intervals) >= 5:
            period = statistics.median(self._intervals)
            if period > 0 and dt > 1.5 * period:
                missed = int(round(dt / period)) - 1
                # Frames that waited in the node's input queue for more than a few periods: the
                # queue was full, so the missing ones were dropped there.
                cause = Drop.frames_overrun if late > max(3 * period, 1e7) else Drop.frames_missed
                self.drops[cause] += missed
                return _Gap(cause, missed, dt / 1e9, late / 1e9)
        self._intervals.append(dt)
        return None

    def _lateness(self, stamp_ns: int, now: int) -> int:
        """How much later than the earliest frames (relative to its stamp) this frame reached
        the node, in ns (0 while the clock reads 0)."""
        if now <= 0:
            return 0
        lag = now - stamp_ns
        if self._min_lag is None or lag < self._min_lag:
            self._min_lag = lag
        return lag - self._min_lag

    def _report_gap(self, gap: _Gap, stamp_ns: int) -> None:
        at = f"the frame stamped {stamp_ns / 1e9:.3f} s"
        if gap.cause is None:
            self._info(f"the stream paused for {gap.seconds:.1f} s before {at} (a gap longer "
                       f"than {self.pause_ns / 1e9:g} s is a pause, not lost frames)")
        elif gap.cause is Drop.frames_overrun:
            self._warn(gap.cause, f"input faster than the node can take: {gap.frames} frame(s) "
                       f"dropped from its input queue before {at} (frames reach it "
                       f"{gap.late_s:.2f} s late)")
        else:
            self._warn(gap.cause, f"{gap.frames} frame(s) missing before {at} (gap in the "
                       "stamps)")

    def reject(self, reason: str) -> None:
        """Count a frame that cannot be used (e.g. its encoding is unsupported)."""
        with self._lock:
            self.frames_received += 1
            self.drops[Drop.frames_rejected] += 1
        self._warn(Drop.frames_rejected, f"frame skipped: {reason}")

    # -- the worker ------------------------------------------------------------------------------
    def pending(self) -> int:
        with self._lock:
            return len(self._queue)

    def process(self, force: bool = False) -> int:
        """Write the candidates whose pose is known; ``force``: decide all of them now (their
        pose wait ends). Returns the keyframes written."""
        written = 0
        with self._process_lock:
            while True:
                with self._lock:
                    if not self._queue:
                        return written
                    cand = self._queue[0]
                now = int(self._now_ns())
                if cand.deadline_ns is None and now > 0:
                    cand.deadline_ns = now + self.pose_wait_ns
                waiting = not force and (cand.deadline_ns is None or now < cand.deadline_ns)
                try:
                    # While a later pose may still come, only an interpolated (or exact) pose
                    # is taken, not the nearest one within the tolerance.
                    pose = self._pose_at(cand.stamp_ns, waiting)
                except LookupError as exc:
                    if waiting:
                        return written   # later candidates wait behind it (poses come in order)
                    if self._pop(cand):
                        self._count(Drop.frames_without_pose)
                        self._warn(Drop.frames_without_pose, f"keyframe candidate {cand.index} "
                                   f"skipped: no camera pose at its stamp ({exc})")
                    continue
                if not self._pop(cand):
                    continue     # dropped meanwhile (overflow, time jump): counted there
                try:
                    self._write(cand, pose)
                    written += 1
                except ValueError as exc:
                    self._count(Drop.frames_rejected)
                    self._warn(Drop.frames_rejected, f"frame {cand.index} skipped: {exc}")

    def _pop(self, cand: _Candidate) -> bool:
        """Take ``cand`` off the queue; False when it is no longer there (pushed out by
        overflow or dropped by a time jump, and counted for that)."""
        with self._lock:
            if self._queue and self._queue[0] is cand:
                self._queue.popleft()
                return True
            return False

    def time_jumped(self, text: str) -> int:
        """ROS time ran backwards: drop the waiting candidates (their poses belong to the time
        before the jump; counted in frames_time_jump) and forget the stamp history. Returns the
        candidates dropped."""
        with self._lock:
            dropped = len(self._queue)
            self._queue.clear()
            self.drops[Drop.frames_time_jump] += dropped
            self._last_stamp, self._min_lag = None, None
            self._intervals.clear()
        if dropped:
            self._warn(Drop.frames_time_jump, f"{dropped} keyframe candidate(s) dropped: {text}")
        return dropped

    def _count(self, cause: Drop) -> None:
        with self._lock:
            self.drops[cause] += 1

    def _write(self, cand: _Candidate, pose: np.ndarray) -> None:
        pose = usable_pose(pose)
        if pose is None:
            raise ValueError("camera pose is not a finite 4x4 matrix")
        rgb, depth, color_k = self._decode(cand.payload)
        check_principal_point(color_k, "camera_info", "colour")   # K of another resolution
        h, w = rgb.shape[:2]
        dh, dw = depth.shape[:2]
        depth_k = color_k.scaled(dw, dh)
        if self._intrinsics is None:
            self._writer.write_intrinsics(color_k, depth_k)
            self._intrinsics = (color_k, depth_k)
            self._info(f"camera: colour {w}x{h}, depth {dw}x{dh}, fx={color_k.K[0, 0]:.1f} "
                       f"fy={color_k.K[1, 1]:.1f} (depth intrinsics scaled from the colour "
                       "camera_info: depth must be registered to colour)")
        else:
            c0, d0 = self._intrinsics
            if (c0.width, c0.height, d0.width, d0.height) != (w, h, dw, dh) or \
                    not np.allclose(c0.K, color_k.K, rtol=1e-4):
                raise ValueError(f"camera changed (colour {w}x{h}, depth {dw}x{dh}, K "
                                 f"{color_k.K[0, 0]:.1f}) since the first keyframe; one scene "
                                 "folder holds one camera")
        name = self._next_name
        self._writer.write_frame(name, rgb, depth, pose)
        self._next_name += 1
        with open(self.scene_dir / "keyframes.csv", "a") as f:
            f.write(f"{name},{cand.index},{cand.stamp_ns}\n")
        with self._lock:
            self.keyframes_written += 1
            k = self.keyframes_written
        if k == 1 or k % 10 == 0:
            self._info(f"keyframe {k} written (synchronised frame {cand.index})")

    # -- reporting ---------------------------------------------------------------------------------
    @property
    def keyframes(self) -> int:
        """Keyframes in the scene folder: those found at start plus those written since."""
        with self._lock:
            return self.keyframes_before + self.keyframes_written

    def counters(self) -> RecorderCounters:
        """All counters at one moment."""
        with self._lock:
            return RecorderCounters(self.frames_received,
                                    self.keyframes_before + self.keyframes_written,
                                    len(self._queue), dict(self.drops), self.stream_pauses)
