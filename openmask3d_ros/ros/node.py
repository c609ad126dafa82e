"""The OpenMask3D ROS 2 node (a lifecycle node).

configure: read parameters, build the models (slow for real checkpoints: done once), load a saved
map when ``load_map`` is set. activate: subscribe to colour/depth/camera_info (approximate-time
synchronised), the reconstructed cloud and the pose source, and offer the services. With
``autostart`` (default) the node drives itself to active, so a plain launch just works.

Every ``pipeline.frame_step``-th synchronised frame with a pose becomes a keyframe, written to the
scene folder at once (bounded memory; nothing lost if the node dies). ``~/map_complete`` (service
or topic) writes the latest cloud and runs the pipeline in a worker thread; ``~/query`` answers
from the latest finished map. Progress and counters go to ``~/status``.
"""
from __future__ import annotations

import math
import threading
import time
import traceback
from collections import deque
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import rclpy
from rcl_interfaces.msg import ParameterDescriptor
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
from rclpy.lifecycle import LifecycleNode, LifecycleState, TransitionCallbackReturn
from rclpy.qos import (DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy)
from sensor_msgs.msg import CameraInfo, Image, PointCloud2
from std_msgs.msg import Empty
from std_srvs.srv import Trigger
from visualization_msgs.msg import Marker, MarkerArray

from openmask3d_ros.msg import ObjectInstance, PipelineStatus
from openmask3d_ros.srv import QueryObjects

from ..core.camera import Intrinsics
from ..core.config import PipelineConfig
from ..core.instance_map import MAP_DIRNAME
from ..core.scene import SceneWriter
from . import params as P
from .conversions import (BODY_T_OPTICAL, COLOR_ENCODINGS, DEPTH_ENCODINGS, ConversionError,
                          arrays_to_cloud, camera_info_to_intrinsics, cloud_to_arrays,
                          image_to_depth, image_to_rgb, pose_to_matrix, stamp_to_ns)
from .query_service import answer_query, handle_query, hits_to_messages
from .sync import make_synchronizer
from .tf_buffer import TransformHistory, make_tf_lookup

RELIABILITY = {"best_effort": ReliabilityPolicy.BEST_EFFORT, "reliable": ReliabilityPolicy.RELIABLE}
POSE_SOURCES = ("tf", "pose", "odometry")


@dataclass
class _Candidate:
    """A keyframe candidate waiting for its pose."""
    index: int
    color: Image
    depth: Image
    info: CameraInfo
    deadline: float


def _latched(depth: int = 1) -> QoSProfile:
    return QoSProfile(depth=depth, reliability=ReliabilityPolicy.RELIABLE,
                      durability=DurabilityPolicy.TRANSIENT_LOCAL, history=HistoryPolicy.KEEP_LAST)


class OpenMask3DNode(LifecycleNode):
    """Records posed RGB-D keyframes and a cloud, builds the OpenMask3D map, answers queries."""

    def __init__(self, node_name: str = P.NODE_NAME, **kwargs):
        super().__init__(node_name, **kwargs)
        for name, (default, description) in P.NODE_PARAMETERS.items():
            self.declare_parameter(name, default, ParameterDescriptor(description=description))
        # Pipeline keys accept ints for floats etc.; PipelineConfig.updated() type-checks them
        # with messages that name the key.
        for name, default in P.pipeline_defaults().items():
            self.declare_parameter(name, default, ParameterDescriptor(
                description=f"OpenMask3D pipeline setting {name[len(P.PIPELINE_PREFIX):]}",
                dynamic_typing=True))
        self._lock = threading.RLock()
        self._worker: threading.Thread | None = None
        self._engine = None
        self._models = None
        self._cfg = PipelineConfig()
        self._writer: SceneWriter | None = None
        self._scene_dir: Path | None = None
        self._pose_lookup = None
        self._pose_history: TransformHistory | None = None
        self._sync = None
        self._subs: list = []
        self._services: list = []
        self._timers: list = []
        self._pending: deque[_Candidate] = deque()
        self._latest_cloud: PointCloud2 | None = None
        self._intrinsics: tuple[Intrinsics, Intrinsics] | None = None
        self._next_name = 0
        self._warned: dict[str, float] = {}
        self._status_pub = self._markers_pub = self._points_pub = None
        self._status = dict(state=PipelineStatus.STATE_RECORDING, stage="", stage_done=0,
                            stage_total=0, progress=0.0, frames_received=0, keyframes=0,
                            frames_without_pose=0, frames_rejected=0, have_cloud=False,
                            num_instances=0, models="", notes=[], message="")

    # -- helpers ---------------------------------------------------------------------------------
    def _p(self, name: str):
        return self.get_parameter(name).value

    def _warn_throttled(self, key: str, text: str, period: float = 5.0) -> None:
        now = time.monotonic()
        if now - self._warned.get(key, -math.inf) >= period:
            self._warned[key] = now
            self.get_logger().warning(text)
        self._set_status(message=text)

    def _set_status(self, publish: bool = False, **fields) -> None:
        with self._lock:
            self._status.update(fields)
        if publish:
            self._publish_status()

    def _count(self, field: str, n: int = 1) -> None:
        with self._lock:
            self._status[field] += n

    def status(self) -> dict:
        """A copy of the current status fields."""
        with self._lock:
            return dict(self._status, scene_dir=str(self._scene_dir or ""))

    def _publish_status(self) -> None:
        pub = self._status_pub
        if pub is None:
            return
        s = self.status()
        msg = PipelineStatus()
        msg.header.stamp = self.get_clock().now().to_msg()
        msg.header.frame_id = str(self._p("map_frame"))
        for key, value in s.items():
            setattr(msg, key, type(getattr(msg, key))(value))
        try:
            pub.publish(msg)
        except Exception:   # context shutting down
            pass

    # -- lifecycle ---------------------------------------------------------------------------------
    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        log = self.get_logger()
        try:
            self._configure()
        except Exception as exc:   # a clear message instead of a dead node
            log.error(f"configure failed: {exc}")
            self._set_status(state=PipelineStatus.STATE_ERROR, message=f"configure failed: {exc}",
                             publish=True)
            return TransitionCallbackReturn.FAILURE
        return TransitionCallbackReturn.SUCCESS

    def _configure(self) -> None:
        log = self.get_logger()
        if self._p("pose_source") not in POSE_SOURCES:
            raise ValueError(f"parameter pose_source must be one of {POSE_SOURCES}, got "
                             f"'{self._p('pose_source')}'")
        for name in ("qos_reliability", "cloud_qos_reliability"):
            if self._p(name) not in RELIABILITY:
                raise ValueError(f"parameter {name} must be best_effort or reliable, got "
                                 f"'{self._p(name)}'")
        values = {k[len(P.PIPELINE_PREFIX):]: self.get_parameter(k).value
                  for k in P.pipeline_defaults()}
        self._cfg = PipelineConfig().updated(values)
        if self._cfg.frame_step < 1:
            raise ValueError(f"pipeline.frame_step must be >= 1, got {self._cfg.frame_step}")

        scene = str(self._p("scene_dir")).strip()
        if not scene:
            scene = str(Path.home() / ".ros" / "openmask3d" / time.strftime("%Y%m%d-%H%M%S"))
        self._scene_dir = Path(scene).expanduser().resolve()
        self._writer = SceneWriter(self._scene_dir)
        existing = [int(p.stem) for p in (self._scene_dir / "pose").glob("*.txt") if p.stem.isdigit()]
        self._next_name = max(existing) + 1 if existing else 0
        if existing:
            log.info(f"scene folder {self._scene_dir} already holds {len(existing)} keyframes; "
                     "new keyframes are added after them")
        log.info(f"recording keyframes (every {self._cfg.frame_step}th synchronised frame) "
                 f"into {self._scene_dir}")

        from ..core.models import build_models
        t0 = time.perf_counter()
        self._models = build_models(self._cfg)
        log.info(f"models ready in {time.perf_counter() - t0:.1f} s: {self._models.describe()}")
        d = self._models.describe()
        self._set_status(models=" ".join(f"{k}={d[k]}" for k in ("proposals", "segmenter",
                                                                   "image_encoder", "device")),
                         notes=list(self._models.notes))

        self._status_pub = self.create_publisher(PipelineStatus, P.STATUS_TOPIC, _latched())
        self._markers_pub = self.create_publisher(MarkerArray, P.MARKERS_TOPIC, _latched())
        self._points_pub = self.create_publisher(PointCloud2, P.QUERY_POINTS_TOPIC, _latched())
        self._timers.append(self.create_timer(float(self._p("status_period")),
                                              self._publish_status))
        self._timers.append(self.create_timer(0.05, self._guard(self._retry_pending)))

        load = str(self._p("load_map")).strip()
        if load:
            self._load_map(load)
        self._set_status(message=f"configured; recording into {self._scene_dir}", publish=True)

    def _load_map(self, path: str) -> None:
        from ..core.query import QueryEngine
        from ..core.instance_map import InstanceMap
        try:
            imap = InstanceMap.load(Path(path).expanduser())
            enc = self._models.text_encoder
            self._engine = QueryEngine(imap, enc)
            self.get_logger().info(f"loaded map {path}: {imap.num_instances} instances")
            self._set_status(state=PipelineStatus.STATE_READY, num_instances=imap.num_instances,
                             message=f"map loaded from {path}")
        except Exception as exc:
            self.get_logger().error(f"load_map '{path}' failed: {exc}")
            self._set_status(message=f"load_map failed: {exc}")

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        try:
            self._activate()
        except Exception as exc:
            self.get_logger().error(f"activate failed: {exc}")
            self._deactivate()
            self._set_status(state=PipelineStatus.STATE_ERROR, message=f"activate failed: {exc}",
                             publish=True)
            return TransitionCallbackReturn.FAILURE
        return super().on_activate(state)

    def _activate(self) -> None:
        log = self.get_logger()
        cam_qos = QoSProfile(depth=int(self._p("qos_depth")),
                             reliability=RELIABILITY[self._p("qos_reliability")],
                             durability=DurabilityPolicy.VOLATILE, history=HistoryPolicy.KEEP_LAST)
        self._sync = make_synchronizer(
            self, [(Image, P.COLOR_TOPIC), (Image, P.DEPTH_TOPIC), (CameraInfo, P.INFO_TOPIC)],
            cam_qos, self._guard(self._on_frame), int(self._p("sync_queue_size")),
            float(self._p("sync_slop")))
        cloud_qos = QoSProfile(depth=1, reliability=RELIABILITY[self._p("cloud_qos_reliability")],
                               durability=DurabilityPolicy.VOLATILE,
                               history=HistoryPolicy.KEEP_LAST)
        self._subs.append(self.create_subscription(PointCloud2, P.CLOUD_TOPIC,
                                                   self._guard(self._on_cloud), cloud_qos))
        self._subs.append(self.create_subscription(Empty, P.TRIGGER_TOPIC,
                                                   self._guard(self._on_trigger_topic), 10))
        source = self._p("pose_source")
        cache = float(self._p("tf_cache_time"))
        if source == "tf":
            self._pose_lookup = make_tf_lookup(self, cache)
            log.info(f"camera poses from TF ({self._pose_lookup.name}): "
                     f"{self._p('map_frame')} -> camera frame")
        else:
            self._pose_history = TransformHistory(int(cache * 1e9))
            if source == "pose":
                from geometry_msgs.msg import PoseStamped
                self._subs.append(self.create_subscription(
                    PoseStamped, P.POSE_TOPIC, self._guard(self._on_pose), 50))
            else:
                from nav_msgs.msg import Odometry
                self._subs.append(self.create_subscription(
                    Odometry, P.ODOM_TOPIC, self._guard(self._on_odom), 50))
            log.info(f"camera poses from the '{source}' topic")
        self._services.append(self.create_service(Trigger, P.TRIGGER_SERVICE,
                                                  self._on_trigger_service))
        self._services.append(self.create_service(QueryObjects, P.QUERY_SERVICE, self._on_query))
        log.info(f"active: synchronising {self.resolve_topic_name(P.COLOR_TOPIC)}, "
                 f"{self.resolve_topic_name(P.DEPTH_TOPIC)}, "
                 f"{self.resolve_topic_name(P.INFO_TOPIC)} ({self._sync.name}); cloud from "
                 f"{self.resolve_topic_name(P.CLOUD_TOPIC)}; services "
                 f"{self.resolve_service_name(P.TRIGGER_SERVICE)}, "
                 f"{self.resolve_service_name(P.QUERY_SERVICE)}")
        self._publish_status()

    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._deactivate()
        return super().on_deactivate(state)

    def _deactivate(self) -> None:
        if self._sync is not None:
            self._sync.destroy()
            self._sync = None
        if self._pose_lookup is not None and hasattr(self._pose_lookup, "destroy"):
            self._pose_lookup.destroy()
        self._pose_lookup = None
        for sub in self._subs:
            self.destroy_subscription(sub)
        for srv in self._services:
            self.destroy_service(srv)
        self._subs, self._services = [], []
        self._pending.clear()

    def on_cleanup(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._release()
        return TransitionCallbackReturn.SUCCESS

    def on_shutdown(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._deactivate()
        self._release()
        return TransitionCallbackReturn.SUCCESS

    def _release(self) -> None:
        for t in self._timers:
            self.destroy_timer(t)
        self._timers = []
        for pub in (self._status_pub, self._markers_pub, self._points_pub):
            if pub is not None:
                self.destroy_publisher(pub)
        self._status_pub = self._markers_pub = self._points_pub = None
        self._models = None
        self._engine = None

    def _guard(self, fn):
        """Wrap a subscription callback: an exception is logged, never kills the node."""
        def wrapped(*args):
            try:
                fn(*args)
            except Exception as exc:
                self.get_logger().error(f"{fn.__name__} failed: {exc}\n{traceback.format_exc()}")
                self._set_status(message=f"{fn.__name__} failed: {exc}")
        wrapped.__name__ = fn.__name__
        return wrapped

    # -- inputs ------------------------------------------------------------------------------------
    def _on_cloud(self, msg: PointCloud2) -> None:
        first = self._latest_cloud is None
        self._latest_cloud = msg
        if first:
            self.get_logger().info(f"cloud received: {msg.width * msg.height} points in frame "
                                   f"'{msg.header.frame_id}'")
            self._set_status(have_cloud=True, publish=True)

    def _on_pose(self, msg) -> None:
        self._add_pose(msg.header, pose_to_matrix(msg.pose))

    def _on_odom(self, msg) -> None:
        self._add_pose(msg.header, pose_to_matrix(msg.pose.pose))

    def _add_pose(self, header, M: np.ndarray) -> None:
        frame = header.frame_id.lstrip("/")
        if frame and frame != self._p("map_frame"):
            self._warn_throttled("pose_frame", f"pose messages are in frame '{frame}', not the "
                                 f"map frame '{self._p('map_frame')}': used as they are")
        if not self._p("pose_is_optical"):
            M = M @ BODY_T_OPTICAL
        self._pose_history.add(stamp_to_ns(header.stamp), M)

    def _on_frame(self, color: Image, depth: Image, info: CameraInfo) -> None:
        with self._lock:
            index = self._status["frames_received"]
            self._status["frames_received"] += 1
        # Encodings are checked on every frame (cheap), so a misconfigured camera is reported
        # at once rather than at the next keyframe.
        if color.encoding not in COLOR_ENCODINGS or depth.encoding not in DEPTH_ENCODINGS:
            self._count("frames_rejected")
            bad = (f"colour encoding '{color.encoding}'" if color.encoding not in COLOR_ENCODINGS
                   else f"depth encoding '{depth.encoding}'")
            self._warn_throttled("encoding", f"frame skipped: unsupported {bad} (colour: "
                                 f"{', '.join(COLOR_ENCODINGS)}; depth: 16UC1 mm or 32FC1 m)")
            return
        if index % self._cfg.frame_step != 0:
            return
        self._pending.append(_Candidate(index, color, depth, info,
                                        time.monotonic() + float(self._p("tf_wait"))))
        self._retry_pending()

    def _camera_pose(self, color: Image, strict: bool = False) -> np.ndarray:
        """map_T_camera at the image stamp; ``strict``: only an interpolated or exact pose, not
        the nearest one within tf_tolerance (used while a later pose may still arrive)."""
        stamp = stamp_to_ns(color.header.stamp)
        tol = 0.0 if strict else float(self._p("tf_tolerance"))
        if self._p("pose_source") == "tf":
            frame = str(self._p("camera_frame")).strip() or color.header.frame_id
            if not frame:
                raise LookupError("the colour image has no header.frame_id and parameter "
                                  "camera_frame is empty")
            return self._pose_lookup.lookup(str(self._p("map_frame")), frame, stamp, tol)
        return self._pose_history.lookup(stamp, int(tol * 1e9))

    def _retry_pending(self, force: bool = False) -> None:
        """Write the waiting keyframe candidates whose pose is known; ``force``: decide all now."""
        now = time.monotonic()
        while self._pending:
            cand = self._pending[0]
            waiting = not force and now < cand.deadline and self._sync is not None
            try:
                pose = self._camera_pose(cand.color, strict=waiting)
            except LookupError as exc:
                if waiting:
                    return   # its pose may still arrive; later candidates wait behind it
                self._pending.popleft()
                self._count("frames_without_pose")
                self._warn_throttled("pose", f"keyframe candidate {cand.index} skipped: no camera "
                                     f"pose at its stamp ({exc})")
                continue
            self._pending.popleft()
            try:
                self._write_keyframe(cand, pose)
            except (ConversionError, ValueError) as exc:
                self._count("frames_rejected")
                self._warn_throttled("frame", f"frame {cand.index} skipped: {exc}")

    def _write_keyframe(self, cand: _Candidate, pose: np.ndarray) -> None:
        if not np.all(np.isfinite(pose)):
            raise ValueError("camera pose is not finite")
        rgb = image_to_rgb(cand.color)
        depth = image_to_depth(cand.depth)
        h, w = rgb.shape[:2]
        dh, dw = depth.shape
        color_k = camera_info_to_intrinsics(cand.info, w, h)
        depth_k = color_k.scaled(dw, dh)
        if self._intrinsics is None:
            self._writer.write_intrinsics(color_k, depth_k)
            self._intrinsics = (color_k, depth_k)
            self.get_logger().info(f"camera: colour {w}x{h}, depth {dw}x{dh}, fx={color_k.K[0, 0]:.1f}"
                                   f" fy={color_k.K[1, 1]:.1f} (depth intrinsics scaled from the "
                                   "colour camera_info: depth must be registered to colour)")
        elif (self._intrinsics[0].width, self._intrinsics[0].height, self._intrinsics[1].width,
              self._intrinsics[1].height) != (w, h, dw, dh) or \
                not np.allclose(self._intrinsics[0].K, color_k.K, rtol=1e-4):
            raise ValueError(f"camera changed (colour {w}x{h}, depth {dw}x{dh}, K {color_k.K[0, 0]:.1f})"
                             " since the first keyframe; one scene folder holds one camera")
        name = self._next_name
        self._writer.write_frame(name, rgb, depth, pose)
        self._next_name += 1
        with open(self._scene_dir / "keyframes.csv", "a") as f:
            f.write(f"{name},{cand.index},{stamp_to_ns(cand.color.header.stamp)}\n")
        self._count("keyframes")
        k = self.status()["keyframes"]
        if k == 1 or k % 10 == 0:
            self.get_logger().info(f"keyframe {k} written (synchronised frame {cand.index})")

    # -- map complete -------------------------------------------------------------------------------
    def _on_trigger_topic(self, msg: Empty) -> None:
        ok, text = self.start_processing()
        (self.get_logger().info if ok else self.get_logger().warning)(f"map_complete topic: {text}")

    def _on_trigger_service(self, request, response):
        try:
            response.success, response.message = self.start_processing()
        except Exception as exc:
            response.success, response.message = False, f"internal error: {exc}"
        return response

    def start_processing(self) -> tuple[bool, str]:
        """Write the latest cloud and start the pipeline worker; (accepted, message)."""
        with self._lock:
            if self._worker is not None and self._worker.is_alive():
                s = self._status
                return False, (f"already processing (stage '{s['stage']}' "
                               f"{s['stage_done']}/{s['stage_total']}); wait for state 'ready'")
            if self._models is None:
                return False, "node is not configured"
            self._retry_pending(force=True)
            k = self._status["keyframes"]
            if k == 0:
                return False, (f"no keyframes recorded yet ({self._status['frames_received']} "
                               f"synchronised frames, {self._status['frames_without_pose']} "
                               f"without pose, {self._status['frames_rejected']} rejected)")
            if self._latest_cloud is None:
                return False, (f"no reconstructed cloud received on "
                               f"{self.resolve_topic_name(P.CLOUD_TOPIC)}")
            try:
                n = self._write_cloud(self._latest_cloud)
            except (ConversionError, LookupError, ValueError) as exc:
                return False, f"cannot use the cloud: {exc}"
            self._status.update(state=PipelineStatus.STATE_PROCESSING, stage="starting",
                                stage_done=0, stage_total=0, progress=0.0,
                                message=f"processing {k} keyframes, {n} cloud points")
            self._worker = threading.Thread(target=self._run_pipeline, name="openmask3d-pipeline",
                                            daemon=True)
            self._worker.start()
        self._publish_status()
        return True, f"processing {k} keyframes and {n} cloud points in {self._scene_dir}"

    def _write_cloud(self, msg: PointCloud2) -> int:
        points, colors = cloud_to_arrays(msg)
        if len(points) == 0:
            raise ValueError("the cloud has no finite points")
        frame = msg.header.frame_id.lstrip("/")
        map_frame = str(self._p("map_frame"))
        if frame and frame != map_frame:
            if self._pose_lookup is None:
                raise ValueError(f"the cloud is in frame '{frame}', not '{map_frame}', and "
                                 "pose_source is not tf")
            M = self._pose_lookup.lookup(map_frame, frame, None, 0.0)
            points = (points @ M[:3, :3].T + M[:3, 3]).astype(np.float32)
        if colors is None:
            colors = np.full(points.shape, 128, np.uint8)
        self._writer.write_cloud(points, colors)
        return len(points)

    def _progress(self, stage: str, done: int, total: int) -> None:
        frac = float(done) / float(total) if total else 0.0
        changed = self._status.get("stage") != stage
        self._set_status(stage=stage, stage_done=int(done), stage_total=int(total), progress=frac)
        if changed:
            self.get_logger().info(f"pipeline stage: {stage}")
            self._publish_status()

    def _run_pipeline(self) -> None:
        from ..core.pipeline import run_pipeline
        from ..core.query import QueryEngine
        log = self.get_logger()
        t0 = time.perf_counter()
        try:
            imap = run_pipeline(self._scene_dir, self._cfg, models=self._models,
                                progress=self._progress, frame_step=1)
            engine = QueryEngine(imap, self._models.text_encoder)
        except Exception as exc:
            log.error(f"pipeline failed: {exc}\n{traceback.format_exc()}")
            self._set_status(state=PipelineStatus.STATE_ERROR, stage="",
                             message=f"pipeline failed: {exc}", publish=True)
            return
        dt = time.perf_counter() - t0
        with self._lock:
            self._engine = engine
        text = (f"map ready: {imap.num_instances} instances in {dt:.1f} s, saved to "
                f"{self._scene_dir / MAP_DIRNAME}")
        log.info(text)
        self._set_status(state=PipelineStatus.STATE_READY, stage="", progress=1.0,
                         num_instances=imap.num_instances, message=text, publish=True)

    # -- queries --------------------------------------------------------------------------------------
    def _on_query(self, request, response):
        with self._lock:
            engine, state = self._engine, self._status["state"]
        if state == PipelineStatus.STATE_PROCESSING:
            no_map = "no map yet: the first map is being built (state 'processing'); try again"
        else:
            no_map = ("no map yet: record frames, then call "
                      f"{self.resolve_service_name(P.TRIGGER_SERVICE)} (or set parameter load_map)")

        class _Q:   # the live query settings
            map_frame = str(self._p("map_frame"))
            default_top_k = int(self._p("default_top_k"))
            max_points_per_instance = int(self._p("max_points_per_instance"))
            publish_markers = bool(self._p("publish_markers"))
        stamp = self.get_clock().now().to_msg()
        return handle_query(request, response, lambda req, resp: answer_query(
            engine, req, resp, _Q, self._publish_hits, stamp, no_map), self.get_logger())

    def _publish_hits(self, text: str, results, stamp, frame: str) -> None:
        markers, points = hits_to_messages(text, results, stamp, frame)
        self._markers_pub.publish(markers)
        self._points_pub.publish(points)


def main(args: list[str] | None = None) -> int:
    """Run the node until shutdown (``--ros-args`` in ``args`` / sys.argv are honoured)."""
    rclpy.init(args=args)
    node = OpenMask3DNode()
    executor = SingleThreadedExecutor()
    executor.add_node(node)
    code = 0
    try:
        if node.get_parameter("autostart").value:
            if node.trigger_configure() != TransitionCallbackReturn.SUCCESS:
                node.get_logger().error("autostart: configure failed; the node stays "
                                        "unconfigured (fix the parameters, then configure it)")
            elif node.trigger_activate() != TransitionCallbackReturn.SUCCESS:
                node.get_logger().error("autostart: activate failed")
        executor.spin()
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        try:
            executor.remove_node(node)
            node.destroy_node()
        except Exception:
            pass
        if rclpy.ok():
            rclpy.shutdown()
    return code
