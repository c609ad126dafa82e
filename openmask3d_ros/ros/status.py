"""The node's status: one thread-safe board, rendered as PipelineStatus, as /diagnostics, and
advice for each kind of dropped frame. Also forwards Python ``logging`` to the ROS logger."""
from __future__ import annotations

import logging
import os
import threading

from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue

from openmask3d_ros.msg import PipelineStatus

from ..core.recorder import Drop, RecorderCounters

# What to change when frames are dropped for each cause (its counter: the status field of the
# same name).
ADVICE = {
    Drop.frames_missed: "frames are lost before they reach the node: give the camera driver AND this "
                 "node the Fast DDS profile config/fastdds.xml (FASTDDS_DEFAULT_PROFILES_FILE), "
                 "or publish the camera reliable and set qos_reliability: reliable",
    Drop.frames_overflow: "too many keyframe candidates wait for their pose: the pose source lags "
                      "the images; raise keyframe_queue_size or fix the pose source's rate",
    Drop.frames_without_pose: "no camera pose at the image stamp within pose_wait: check pose_source, "
               "map_frame and camera_frame (TF map -> camera frame) or the pose topic, its rate "
               "and stamps; or raise pose_wait / tf_tolerance",
    Drop.frames_rejected: "images could not be used (see the reason): check the encodings, "
                "color_transport / depth_transport, that camera_info (K, width, height) is the "
                "one of these images and that the camera does not change",
    Drop.frames_overrun: "input faster than the node can take: frames waited in its input "
                "queue and older ones were dropped there; lower the camera rate or resolution "
                "(e.g. a throttled topic) or run the node on a faster machine (docs/ros.md "
                "gives the rate it sustains)",
    Drop.frames_time_jump: "ROS time jumped backwards (a looped or restarted bag, a simulator "
                "reset): what was recorded before the jump was dropped; nothing to change if "
                "that was intended",
}

# Replaces the advice for candidates that wait for their pose while use_sim_time is true and no
# /clock has come: their wait cannot start, whatever the pose source does.
NO_CLOCK_ADVICE = ("use_sim_time is true but no /clock has been received, so ROS time reads 0 "
                   "and keyframe candidates cannot end their pose wait: start the clock source "
                   "(`openmask3d bag-play --clock`, `ros2 bag play --clock`, the simulator) or "
                   "set use_sim_time false")
_CLOCK_CAUSES = (Drop.frames_overflow, Drop.frames_without_pose)


def advice(cause: Drop, no_clock: bool = False) -> str:
    """What to change for frames dropped for ``cause``; ``no_clock``: use_sim_time and no /clock
    received yet. Frames lost before the node on an overloaded machine say so too."""
    if no_clock and cause in _CLOCK_CAUSES:
        return NO_CLOCK_ADVICE
    return ADVICE[cause] + (machine_load_note() if cause is Drop.frames_missed else "")


def machine_load_note() -> str:
    """A sentence when the 1-minute load average exceeds the cores ('' otherwise): starved of
    CPU, the middleware loses frames before the node sees them."""
    try:
        load, cores = os.getloadavg()[0], os.cpu_count() or 1
    except OSError:
        return ""
    return (f"; the machine is overloaded (load average {load:.1f} on {cores} cores), which also "
            "loses frames before the node: lower the input rate or the other load" if
            load > cores else "")


def no_clock_message(frames: int) -> str:
    """The status message while use_sim_time waits for its first /clock."""
    return f"{frames} frames received but no /clock: {NO_CLOCK_ADVICE}"


# Board fields that are not PipelineStatus fields (published on /diagnostics only).
DIAGNOSTICS_ONLY = frozenset({"inputs"})    # messages per camera input
# The /diagnostics values of the keyframe-recording entry, in order.
RECORDING_KEYS = ("frames_received", "keyframes", *(d.value for d in Drop), "stream_pauses",
                  "have_cloud", "inputs")


class StatusBoard:
    """Status fields (those of PipelineStatus, and ``DIAGNOSTICS_ONLY``) behind a lock; a name
    that is neither is a KeyError."""

    def __init__(self):
        self._lock = threading.Lock()
        self._f = dict(state=PipelineStatus.STATE_RECORDING, stage="", stage_done=0,
                       stage_total=0, progress=0.0, elapsed=0.0, frames_received=0, keyframes=0,
                       **{d.value: 0 for d in Drop}, have_cloud=False, num_instances=0,
                       scene_dir="", models="", notes=[], message="", inputs="", stream_pauses=0,
                       memory_mib=0)

    def update(self, **fields) -> None:
        unknown = fields.keys() - self._f.keys()
        if unknown:
            raise KeyError(f"not status fields: {sorted(unknown)}")
        with self._lock:
            self._f.update(fields)

    def get(self, key: str):
        with self._lock:
            return self._f[key]

    def snapshot(self) -> dict:
        with self._lock:
            return dict(self._f)

    def merge_counters(self, counters: RecorderCounters) -> None:
        """Take frames_received, keyframes, stream_pauses and the drop counters of a
        KeyframeRecorder."""
        self.update(frames_received=counters.frames_received, keyframes=counters.keyframes,
                    stream_pauses=counters.stream_pauses,
                    **{cause.value: n for cause, n in counters.drops.items()})


def status_message(fields: dict, stamp, frame_id: str) -> PipelineStatus:
    """The PipelineStatus of board ``fields``; a field the message lacks (other than
    ``DIAGNOSTICS_ONLY``) is a KeyError, so no counter is left out unnoticed."""
    msg = PipelineStatus()
    msg.header.stamp, msg.header.frame_id = stamp, frame_id
    known = msg.get_fields_and_field_types()
    for key, value in fields.items():
        if key in DIAGNOSTICS_ONLY:
            continue
        if key not in known:
            raise KeyError(f"{key!r} is not a PipelineStatus field")
        setattr(msg, key, type(getattr(msg, key))(value))
    return msg


def diagnostics(fields: dict, node_name: str, stamp, new_drops: dict[Drop, int],
                reasons: dict[Drop, str] | None = None, no_clock: bool = False
                ) -> DiagnosticArray:
    """Two entries: keyframe recording (WARN while frames are being dropped, with the latest
    reason per cause in ``reasons`` and advice) and the map (ERROR in state error)."""
    rec = DiagnosticStatus(name=f"{node_name}: keyframe recording", hardware_id=node_name)
    dropping = {c: n for c, n in new_drops.items() if n > 0}
    reasons = reasons or {}
    if dropping:
        rec.level = DiagnosticStatus.WARN
        rec.message = "; ".join(
            f"{n} dropped ({c.value}{': ' + reasons[c] if c in reasons else ''}): "
            f"{advice(c, no_clock)}" for c, n in dropping.items())
    elif no_clock and fields["frames_received"]:
        rec.level = DiagnosticStatus.WARN
        rec.message = no_clock_message(fields["frames_received"])
    else:
        rec.level = DiagnosticStatus.OK
        rec.message = f"{fields['keyframes']} keyframes from {fields['frames_received']} frames"
    rec.values = [KeyValue(key=k, value=str(fields[k])) for k in RECORDING_KEYS]
    m = DiagnosticStatus(name=f"{node_name}: map", hardware_id=node_name)
    m.level = DiagnosticStatus.ERROR if fields["state"] == PipelineStatus.STATE_ERROR else \
        DiagnosticStatus.OK
    m.message = f"{fields['state']}: {fields['message']}"[:500]
    m.values = [KeyValue(key=k, value=str(fields[k])) for k in
                ("state", "stage", "stage_done", "stage_total", "elapsed", "num_instances",
                 "memory_mib", "models", "scene_dir")]
    out = DiagnosticArray()
    out.header.stamp = stamp
    out.status = [rec, m]
    return out


class RosLogHandler(logging.Handler):
    """Send Python ``logging`` records (the core's log lines) to a ROS logger, so they reach
    the console and /rosout like the node's own lines."""

    def __init__(self, ros_logger):
        super().__init__(logging.INFO)
        self._ros = ros_logger

    def emit(self, record: logging.LogRecord) -> None:
        try:
            text = f"[{record.name}] {record.getMessage()}"
            if record.levelno >= logging.ERROR:
                self._ros.error(text)
            elif record.levelno >= logging.WARNING:
                self._ros.warning(text)
            else:
                self._ros.info(text)
        except Exception:   # logging must never raise into the caller
            pass


def forward_core_logging(ros_logger) -> tuple[logging.Logger, RosLogHandler, tuple]:
    """Route the ``openmask3d_ros`` Python loggers to ``ros_logger``; returns what
    ``restore_core_logging`` needs."""
    pkg = logging.getLogger("openmask3d_ros")
    handler = RosLogHandler(ros_logger)
    saved = (pkg.level, pkg.propagate)
    pkg.addHandler(handler)
    pkg.setLevel(logging.INFO)
    pkg.propagate = False     # not printed a second time by a root handler
    return pkg, handler, saved


def restore_core_logging(state) -> None:
    pkg, handler, (level, propagate) = state
    pkg.removeHandler(handler)
    pkg.setLevel(level)
    pkg.propagate = propagate
