"""The node's status: one thread-safe board, rendered as PipelineStatus, as /diagnostics, and
advice for each kind of dropped frame. Also forwards Python ``logging`` to the ROS logger."""
from __future__ import annotations

import logging
import threading

from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue

from openmask3d_ros.msg import PipelineStatus

# What to change when frames are dropped for each cause (status field, advice).
DROP_FIELDS = {"stamp_gap": "frames_missed", "queue_overflow": "frames_overflow",
               "no_pose": "frames_without_pose", "rejected": "frames_rejected"}
ADVICE = {
    "stamp_gap": "frames are lost before they reach the node: give the camera driver AND this "
                 "node the Fast DDS profile config/fastdds.xml (FASTDDS_DEFAULT_PROFILES_FILE), "
                 "or publish the camera reliable and set qos_reliability: reliable",
    "queue_overflow": "too many keyframe candidates wait for their pose: the pose source lags "
                      "the images; raise keyframe_queue_size or fix the pose source's rate",
    "no_pose": "no camera pose at the image stamp within pose_wait: check pose_source, "
               "map_frame and camera_frame (TF map -> camera frame) or the pose topic, its rate "
               "and stamps; or raise pose_wait / tf_tolerance",
    "rejected": "images could not be used (see the reason): check the encodings, "
                "color_transport / depth_transport and that the camera does not change",
}


class StatusBoard:
    """Status fields (those of PipelineStatus) behind a lock."""

    def __init__(self):
        self._lock = threading.Lock()
        self._f = dict(state=PipelineStatus.STATE_RECORDING, stage="", stage_done=0,
                       stage_total=0, progress=0.0, elapsed=0.0, frames_received=0, keyframes=0,
                       frames_without_pose=0, frames_rejected=0, frames_missed=0,
                       frames_overflow=0, have_cloud=False, num_instances=0, scene_dir="",
                       models="", notes=[], message="",
                       inputs="")    # diagnostics only: messages per camera input

    def update(self, **fields) -> None:
        with self._lock:
            self._f.update(fields)

    def get(self, key: str):
        with self._lock:
            return self._f[key]

    def snapshot(self) -> dict:
        with self._lock:
            return dict(self._f)

    def merge_counters(self, counters: dict[str, int]) -> None:
        """Take frames_received, keyframes and the drop counters of a KeyframeRecorder."""
        with self._lock:
            self._f["frames_received"] = counters["frames_received"]
            self._f["keyframes"] = counters["keyframes"]
            for cause, field in DROP_FIELDS.items():
                self._f[field] = counters[f"dropped_{cause}"]


def status_message(fields: dict, stamp, frame_id: str) -> PipelineStatus:
    msg = PipelineStatus()
    msg.header.stamp, msg.header.frame_id = stamp, frame_id
    for key, value in fields.items():
        if hasattr(msg, key):
            setattr(msg, key, type(getattr(msg, key))(value))
    return msg


def diagnostics(fields: dict, node_name: str, stamp, new_drops: dict[str, int]) -> DiagnosticArray:
    """Two entries: keyframe recording (WARN while frames are being dropped, with advice) and
    the map (ERROR in state error)."""
    rec = DiagnosticStatus(name=f"{node_name}: keyframe recording", hardware_id=node_name)
    dropping = {c: n for c, n in new_drops.items() if n > 0}
    if dropping:
        rec.level = DiagnosticStatus.WARN
        rec.message = "; ".join(f"{n} dropped ({c}): {ADVICE[c]}" for c, n in dropping.items())
    else:
        rec.level = DiagnosticStatus.OK
        rec.message = f"{fields['keyframes']} keyframes from {fields['frames_received']} frames"
    keys = ("frames_received", "keyframes", "frames_missed", "frames_overflow",
            "frames_without_pose", "frames_rejected", "have_cloud", "inputs")
    rec.values = [KeyValue(key=k, value=str(fields[k])) for k in keys]
    m = DiagnosticStatus(name=f"{node_name}: map", hardware_id=node_name)
    m.level = DiagnosticStatus.ERROR if fields["state"] == PipelineStatus.STATE_ERROR else \
        DiagnosticStatus.OK
    m.message = f"{fields['state']}: {fields['message']}"[:500]
    m.values = [KeyValue(key=k, value=str(fields[k])) for k in
                ("state", "stage", "stage_done", "stage_total", "elapsed", "num_instances",
                 "models", "scene_dir")]
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
