"""Keyframe recorder: which frames of a posed RGB-D stream become keyframes, and writing them.

ROS-free, so that it is testable without rclpy; the node feeds it and drives it:

- ``offer(stamp_ns, payload)`` (cheap; called from subscription callbacks): counts the frame,
  notices stamp gaps (frames the transport lost), and queues every ``frame_step``-th frame as a
  candidate in a bounded queue, with a deadline ``pose_wait`` seconds ahead on the caller's clock
  (the ROS clock, so simulated time works; a clock that reads 0, i.e. use_sim_time before the
  first /clock, starts the wait when it starts, instead of ending it at its first jump);
- ``process(force=False)`` (a worker thread): each candidate waits until its pose can be
  interpolated at its stamp or its deadline passes; it is then decoded (``decode(payload)``),
  checked and written to the scene folder at once.

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
from typing import Any
from collections.abc import Callable

import numpy as np

from .camera import Intrinsics, usable_pose
from .scene import SceneWriter


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
    # an image that could not be used (encoding, size, camera)
    frames_rejected = "frames_rejected"


@dataclass(frozen=True)
class RecorderCounters:
    """A snapshot of the recorder's counters. ``frames_received``, ``keyframes`` and each
    ``Drop`` are PipelineStatus fields of the same name; ``pending`` is not published."""

    frames_received: int
    keyframes: int          # in the scene folder: found at start plus written since
    pending: int            # candidates still waiting for their pose
    drops: dict[Drop, int]  # one entry per Drop

Decode = Callable[[Any], tuple[np.ndarray, np.ndarray, Intrinsics]]
PoseAt = Callable[[int, bool], np.ndarray]


@dataclass
class _Candidate:
    index: int
    stamp_ns: int
    payload: Any
    deadline_ns: int | None          # None: the clock had not started when it came


def existing_keyframes(scene_dir: str | Path) -> list[int]:
    """Numbers of the complete keyframes already in ``scene_dir`` (the pose is written last)."""
    return sorted(int(p.stem) for p in (Path(scene_dir) / "pose").glob("*.txt")
                  if p.stem.isdigit())


class KeyframeRecorder:
    """Selects, pose-matches, checks and writes keyframes; thread-safe counters."""

    def __init__(self, scene_dir: str | Path, frame_step: int, decode: Decode, pose_at: PoseAt,
                 now_ns: Callable[[], int], pose_wait_s: float = 2.0, queue_size: int = 64,
                 warn: Callable[[Drop, str], None] | None = None,
                 info: Callable[[str], None] | None = None):
        if frame_step < 1:
            raise ValueError(f"frame_step must be >= 1, got {frame_step}")
        if queue_size < 1:
            raise ValueError(f"queue_size must be >= 1, got {queue_size}")
        self.scene_dir = Path(scene_dir)
        self.frame_step = int(frame_step)
        self._decode, self._pose_at, self._now_ns = decode, pose_at, now_ns
        self.pose_wait_ns = int(pose_wait_s * 1e9)
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
        self.frames_received = 0
        self.keyframes_written = 0
        self.drops: dict[Drop, int] = {cause: 0 for cause in Drop}

    # -- fed from callbacks -------------------------------------------------------------------
    def offer(self, stamp_ns: int, payload: Any) -> bool:
        """Count a synchronised frame; queue it when it is a keyframe candidate (returned)."""
        stamp_ns = int(stamp_ns)
        with self._lock:
            index = self.frames_received
            self.frames_received += 1
            missed = self._missed_before(stamp_ns)
            if index % self.frame_step != 0:
                overflow = None
            else:
                overflow = self._queue.popleft() if len(self._queue) >= self._queue_size else None
                now = int(self._now_ns())
                self._queue.append(_Candidate(index, stamp_ns, payload,
                                              now + self.pose_wait_ns if now > 0 else None))
                if overflow is not None:
                    self.drops[Drop.frames_overflow] += 1
        if missed:
            self._warn(Drop.frames_missed, f"{missed} frame(s) missing before the frame stamped "
                       f"{stamp_ns / 1e9:.3f} s (gap in the stamps)")
        if overflow is not None:
            self._warn(Drop.frames_overflow, f"keyframe candidate {overflow.index} dropped: "
                       f"{self._queue_size} candidates already waiting for their pose")
        return index % self.frame_step == 0

    def _missed_before(self, stamp_ns: int) -> int:
        """Frames missing between the previous stamp and this one, from the median period."""
        last, self._last_stamp = self._last_stamp, stamp_ns
        if last is None or stamp_ns <= last:
            return 0
        dt = stamp_ns - last
        missed = 0
        if len(self._intervals) >= 5:
            period = statistics.median(self._intervals)
            if period > 0 and dt > 1.5 * period:
                missed = int(round(dt / period)) - 1
                self.drops[Drop.frames_missed] += missed
        if not missed:
            self._intervals.append(dt)
        return missed

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
                    self._pop(cand)
                    self._count(Drop.frames_without_pose)
                    self._warn(Drop.frames_without_pose, f"keyframe candidate {cand.index} "
                               f"skipped: no camera pose at its stamp ({exc})")
                    continue
                self._pop(cand)
                try:
                    self._write(cand, pose)
                    written += 1
                except ValueError as exc:
                    self._count(Drop.frames_rejected)
                    self._warn(Drop.frames_rejected, f"frame {cand.index} skipped: {exc}")

    def _pop(self, cand: _Candidate) -> None:
        with self._lock:
            if self._queue and self._queue[0] is cand:   # not already pushed out by overflow
                self._queue.popleft()

    def _count(self, cause: Drop) -> None:
        with self._lock:
            self.drops[cause] += 1

    def _write(self, cand: _Candidate, pose: np.ndarray) -> None:
        pose = usable_pose(pose)
        if pose is None:
            raise ValueError("camera pose is not a finite 4x4 matrix")
        rgb, depth, color_k = self._decode(cand.payload)
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
                                    len(self._queue), dict(self.drops))
