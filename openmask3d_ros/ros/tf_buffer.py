"""Camera poses: a small TF buffer (used when tf2_ros is not installed) and pose histories.

tf2_ros is not on PyPI. ``TransformBuffer`` keeps /tf and /tf_static, composes chains through the
frame tree (map -> odom -> base_link -> camera_link -> camera_optical_frame, in any direction) and
evaluates each dynamic edge at the requested time by interpolation (linear translation, slerp
rotation) or, outside the recorded interval, by the nearest sample within a tolerance.
``make_tf_lookup`` prefers tf2_ros when it is importable and wraps both behind one call:
``lookup(target, source, stamp_ns) -> 4x4 target_T_source`` (raises ``LookupError``).

When ROS time jumps backwards (a looped or restarted bag, a simulator reset) the node calls
``clear()``: the moving transforms recorded before the jump are dropped, as tf2 does (static ones
stay). ``TransformHistory`` (also the node's history of PoseStamped/Odometry poses) can refuse to
interpolate across a gap between samples longer than ``max_gap_ns``.
"""
from __future__ import annotations

import bisect
import threading
from collections import deque

import numpy as np

from .conversions import stamp_to_ns, transform_to_matrix


def interpolate(M0: np.ndarray, M1: np.ndarray, a: float) -> np.ndarray:
    """Rigid transform a fraction ``a`` of the way from ``M0`` to ``M1`` (linear translation,
    slerp rotation along the shorter arc)."""
    from scipy.spatial.transform import Rotation, Slerp   # not at start-up: see conversions.py
    M = np.eye(4)
    M[:3, 3] = (1 - a) * M0[:3, 3] + a * M1[:3, 3]
    ends = Rotation.from_matrix(np.stack([M0[:3, :3], M1[:3, :3]]))
    M[:3, :3] = Slerp([0.0, 1.0], ends)(float(a)).as_matrix()
    return M


class TransformHistory:
    """Time-stamped transforms of one edge, with interpolated lookups (thread-safe: poses arrive
    on one thread, the recorder looks them up on another, a time jump clears them)."""

    def __init__(self, max_age_ns: int = 30_000_000_000, max_len: int = 100_000):
        self.max_age_ns = int(max_age_ns)
        self._times: deque[int] = deque(maxlen=max_len)
        self._mats: deque[np.ndarray] = deque(maxlen=max_len)
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._times)

    def clear(self) -> None:
        with self._lock:
            self._times.clear()
            self._mats.clear()

    def add(self, stamp_ns: int, M: np.ndarray) -> None:
        M = np.asarray(M, dtype=np.float64)
        with self._lock:
            self._add(int(stamp_ns), M)

    def _add(self, stamp_ns: int, M: np.ndarray) -> None:
        if not self._times or stamp_ns > self._times[-1]:
            self._times.append(stamp_ns)
            self._mats.append(M)
        else:   # out of order (rare): insert at its place
            times = list(self._times)
            i = bisect.bisect_left(times, stamp_ns)
            if i < len(times) and times[i] == stamp_ns:
                self._mats[i] = M
                return
            self._times.insert(i, stamp_ns)
            self._mats.insert(i, M)
        while self._times and self._times[-1] - self._times[0] > self.max_age_ns:
            self._times.popleft()
            self._mats.popleft()

    def lookup(self, stamp_ns: int | None, tolerance_ns: int,
               max_gap_ns: int | None = None) -> np.ndarray:
        """The transform at ``stamp_ns`` (None: the latest). Interpolates between the samples
        around it (only when they are at most ``max_gap_ns`` apart, if given); before the first
        or after the last sample, the nearest within tolerance."""
        with self._lock:
            return self._lookup(stamp_ns, tolerance_ns, max_gap_ns)

    def _lookup(self, stamp_ns: int | None, tolerance_ns: int,
                max_gap_ns: int | None) -> np.ndarray:
        if not self._times:
            raise LookupError("no transform received")
        if stamp_ns is None:
            return self._mats[-1]
        times = self._times
        i = bisect.bisect_left(times, stamp_ns)
        if i < len(times) and times[i] == stamp_ns:
            return self._mats[i]
        if 0 < i < len(times):
            t0, t1 = times[i - 1], times[i]
            if max_gap_ns is not None and t1 - t0 > max_gap_ns:
                raise LookupError(f"time {stamp_ns / 1e9:.3f} s lies in a gap of "
                                  f"{(t1 - t0) / 1e9:.3f} s between the samples at "
                                  f"{t0 / 1e9:.3f} s and {t1 / 1e9:.3f} s (at most "
                                  f"{max_gap_ns / 1e9:.3f} s is interpolated)")
            return interpolate(self._mats[i - 1], self._mats[i], (stamp_ns - t0) / (t1 - t0))
        j = 0 if i == 0 else len(times) - 1
        gap = abs(times[j] - stamp_ns)
        if gap <= tolerance_ns:
            return self._mats[j]
        side = "before the first" if i == 0 else "after the last"
        raise LookupError(f"time {stamp_ns / 1e9:.3f} s is {gap / 1e9:.3f} s {side} transform "
                          f"(tolerance {tolerance_ns / 1e9:.3f} s)")


class TransformBuffer:
    """/tf + /tf_static: a frame tree (each child has one parent) with time histories."""

    def __init__(self, cache_time_s: float = 30.0):
        self._lock = threading.Lock()
        self._parent: dict[str, str] = {}
        self._static: dict[str, np.ndarray] = {}         # child -> parent_T_child
        self._dynamic: dict[str, TransformHistory] = {}  # child -> history of parent_T_child
        self._max_age_ns = int(cache_time_s * 1e9)

    def set_transform(self, parent: str, child: str, stamp_ns: int, M: np.ndarray,
                      static: bool = False) -> None:
        parent, child = parent.lstrip("/"), child.lstrip("/")
        if not parent or not child or parent == child:
            raise ValueError(f"invalid transform {parent!r} -> {child!r}")
        with self._lock:
            self._parent[child] = parent
            if static:
                self._static[child] = np.asarray(M, dtype=np.float64)
                self._dynamic.pop(child, None)
            else:
                self._static.pop(child, None)
                hist = self._dynamic.setdefault(child, TransformHistory(self._max_age_ns))
                hist.add(stamp_ns, M)

    def add_message(self, msg, static: bool = False) -> list[str]:
        """Add every TransformStamped of a tf2_msgs/TFMessage; returns why each unusable one was
        rejected (empty: all were used)."""
        rejected = []
        for ts in msg.transforms:
            what = f"transform {ts.header.frame_id!r} -> {ts.child_frame_id!r}"
            try:
                self.set_transform(ts.header.frame_id, ts.child_frame_id,
                                   stamp_to_ns(ts.header.stamp),
                                   transform_to_matrix(ts.transform, what), static)
            except ValueError as exc:
                rejected.append(str(exc))
        return rejected

    def frames(self) -> list[str]:
        with self._lock:
            return sorted(set(self._parent) | set(self._parent.values()))

    def clear(self) -> None:
        """Drop every moving transform (static ones stay), as tf2 does when time jumps back."""
        with self._lock:
            for child in self._dynamic:
                self._dynamic[child].clear()

    def _chain(self, frame: str) -> list[str]:
        chain = [frame]
        while chain[-1] in self._parent:
            nxt = self._parent[chain[-1]]
            if nxt in chain:
                raise LookupError(f"TF loop at frame '{nxt}'")
            chain.append(nxt)
        return chain

    def _up(self, chain: list[str], stop: str, stamp_ns: int | None, tol_ns: int) -> np.ndarray:
        """stop_T_chain[0]: compose the edges from chain[0] up to ``stop``."""
        M = np.eye(4)
        for child in chain:
            if child == stop:
                return M
            if child in self._static:
                edge = self._static[child]
            else:
                try:
                    edge = self._dynamic[child].lookup(stamp_ns, tol_ns)
                except LookupError as exc:
                    raise LookupError(f"{self._parent[child]} -> {child}: {exc}") from None
            M = edge @ M
        return M

    def lookup(self, target: str, source: str, stamp_ns: int | None = None,
               tolerance_s: float = 0.1) -> np.ndarray:
        """4x4 ``target_T_source`` (maps points in ``source`` to ``target``) at ``stamp_ns``."""
        target, source = target.lstrip("/"), source.lstrip("/")
        if target == source:
            return np.eye(4)
        tol_ns = int(tolerance_s * 1e9)
        with self._lock:
            known = set(self._parent) | set(self._parent.values())
            for name in (target, source):
                if name not in known:
                    raise LookupError(f"frame '{name}' does not exist (known frames: "
                                      f"{', '.join(sorted(known)) or 'none'})")
            up_s, up_t = self._chain(source), self._chain(target)
            common = next((f for f in up_s if f in set(up_t)), None)
            if common is None:
                raise LookupError(f"frames '{target}' and '{source}' are not connected "
                                  f"(roots '{up_t[-1]}' and '{up_s[-1]}')")
            root_T_source = self._up(up_s, common, stamp_ns, tol_ns)
            root_T_target = self._up(up_t, common, stamp_ns, tol_ns)
        return np.linalg.inv(root_T_target) @ root_T_source


class Tf2RosLookup:
    """tf2_ros.Buffer + TransformListener behind the same ``lookup`` call (real ROS installs)."""

    def __init__(self, node, cache_time_s: float = 30.0, callback_group=None, on_update=None):
        import tf2_ros
        from rclpy.duration import Duration
        self.buffer = tf2_ros.Buffer(cache_time=Duration(seconds=cache_time_s))
        self.listener = tf2_ros.TransformListener(self.buffer, node, spin_thread=False)
        self.name = "tf2_ros"

    def lookup(self, target: str, source: str, stamp_ns: int | None = None,
               tolerance_s: float = 0.1) -> np.ndarray:
        import tf2_ros
        from rclpy.time import Time
        t = Time() if stamp_ns is None else Time(nanoseconds=int(stamp_ns))
        try:
            ts = self.buffer.lookup_transform(target, source, t)
        except tf2_ros.ExtrapolationException:
            if stamp_ns is None:
                raise
            latest = self.buffer.lookup_transform(target, source, Time())
            gap = abs(stamp_to_ns(latest.header.stamp) - int(stamp_ns))
            if gap > tolerance_s * 1e9:
                raise LookupError(f"{target} -> {source}: no transform within {tolerance_s} s "
                                  f"of {stamp_ns / 1e9:.3f} s") from None
            ts = latest
        except (tf2_ros.LookupException, tf2_ros.ConnectivityException) as exc:
            raise LookupError(str(exc)) from None
        return transform_to_matrix(ts.transform)

    def clear(self) -> None:
        self.buffer.clear()

    def destroy(self) -> None:
        self.listener.unregister()


class TfTopicLookup:
    """Our ``TransformBuffer`` fed from /tf and /tf_static subscriptions (tf2_msgs)."""

    def __init__(self, node, cache_time_s: float = 30.0, callback_group=None, on_update=None):
        from rclpy.qos import (DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy)
        from tf2_msgs.msg import TFMessage
        self.buffer = TransformBuffer(cache_time_s)
        self.name = "openmask3d TransformBuffer"
        dyn = QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE,
                         durability=DurabilityPolicy.VOLATILE, history=HistoryPolicy.KEEP_LAST)
        static = QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE,
                            durability=DurabilityPolicy.TRANSIENT_LOCAL,
                            history=HistoryPolicy.KEEP_LAST)
        self._node = node
        self._on_update = on_update or (lambda: None)
        self._subs = [
            node.create_subscription(TFMessage, "/tf", self._on_dynamic, dyn,
                                     callback_group=callback_group),
            node.create_subscription(TFMessage, "/tf_static", self._on_static, static,
                                     callback_group=callback_group)]

    def _warn_rejected(self, rejected: list[str]) -> None:
        if rejected:
            self._node.get_logger().warning(f"TF rejected: {'; '.join(rejected)}",
                                            throttle_duration_sec=5.0)

    def _on_dynamic(self, msg) -> None:
        self._warn_rejected(self.buffer.add_message(msg))
        self._on_update()   # keyframe candidates waiting for this pose are retried at once

    def _on_static(self, msg) -> None:
        known = set(self.buffer.frames())
        self._warn_rejected(self.buffer.add_message(msg, static=True))
        new = [f"{t.header.frame_id} -> {t.child_frame_id}" for t in msg.transforms
               if t.child_frame_id.lstrip("/") not in known]
        if new:
            self._node.get_logger().info(f"static transforms: {', '.join(new)}")
        self._on_update()

    def lookup(self, target: str, source: str, stamp_ns: int | None = None,
               tolerance_s: float = 0.1) -> np.ndarray:
        return self.buffer.lookup(target, source, stamp_ns, tolerance_s)

    def clear(self) -> None:
        self.buffer.clear()

    def destroy(self) -> None:
        for sub in self._subs:
            self._node.destroy_subscription(sub)
        self._subs = []


def make_tf_lookup(node, cache_time_s: float = 30.0, prefer_tf2_ros: bool = True,
                   callback_group=None, on_update=None):
    """tf2_ros when importable (a real ROS install), else our buffer over /tf and /tf_static.
    ``on_update()`` is called after new transforms (our buffer only; tf2_ros is polled)."""
    if prefer_tf2_ros:
        try:
            return Tf2RosLookup(node, cache_time_s, callback_group, on_update)
        except ImportError:
            pass
    try:
        return TfTopicLookup(node, cache_time_s, callback_group, on_update)
    except ImportError as exc:
        raise RuntimeError("neither tf2_ros nor tf2_msgs is importable: run "
                           "scripts/build_interfaces.sh (builds tf2_msgs) or set pose_source "
                           "to 'pose' or 'odometry'") from exc
