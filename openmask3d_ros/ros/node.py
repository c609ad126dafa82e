"""The OpenMask3D ROS 2 node: a lifecycle node that wires the recorder, inputs, map builder,
query service and status together.

configure: read the parameters once into ``NodeSettings``, open the scene folder (keyframes
already in it count), start loading the models in the background (recording never waits for
them) and then the folder's latest map. activate: subscribe (camera, cloud, poses) and offer
``~/map_complete``, the ``~/build_map`` action (ros/build_action.py) and ``~/query``. With
``autostart`` (default) the node drives itself to active. Runs on a MultiThreadedExecutor
(services, timers, the cloud); camera and pose messages come on a helper node spun on its own
thread (ros/camera_input.py) and only enqueue; a recording thread deserialises, decodes and
writes keyframes.

When ROS time jumps backwards (use_sim_time: a looped or restarted bag, a simulator reset) the
poses, the synchroniser's queues and the waiting keyframe candidates are dropped. Run by its own
executable (``main``), the node exits after the lifecycle ``shutdown`` transition; parameters
that it cannot take stop it at start-up with exit status 2 and one line that names them.
"""
from __future__ import annotations

import os
import sys
import threading
import time
from pathlib import Path

import rclpy
import rclpy.logging
from diagnostic_msgs.msg import DiagnosticArray
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup, ReentrantCallbackGroup
from rcl_interfaces.msg import SetParametersResult
from rclpy._rclpy_pybind11 import RCLError
from rclpy.clock import Clock, ClockChange, ClockType, JumpThreshold, TimeJump
from rclpy.duration import Duration
from rclpy.executors import ExternalShutdownException, MultiThreadedExecutor
from rclpy.lifecycle import LifecycleNode, LifecycleState, TransitionCallbackReturn
from rclpy.task import Future
from std_msgs.msg import Empty, Header
from std_srvs.srv import Trigger

from openmask3d_ros.msg import PipelineStatus
from openmask3d_ros.srv import QueryObjects

from ..core.instance_map import MAP_DIRNAME, has_map
from ..core.low_memory import resident_mib
from ..core.recorder import Drop, KeyframeRecorder
from . import params as P
from .build_action import BuildMapServer
from .inputs import Inputs, decode_frame
from .map_builder import BuildJob, MapBuilder
from .qos import latched_qos
from .query_service import QuerySettings, answer_query, handle_query
from .settings import (NodeSettings, check_live_change, check_overrides, declare_parameters,
                       read_settings, unknown_parameter)
from .visualization import MapPublishers
from .status import (StatusBoard, advice, diagnostics, forward_core_logging, no_clock_message,
                     restore_core_logging, status_message)


def process_age() -> float | None:
    """Seconds since this process started (Linux /proc), None where unknown."""
    try:
        fields = Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()
        start = int(fields[19]) / os.sysconf("SC_CLK_TCK")     # field 22: starttime
        return float(Path("/proc/uptime").read_text().split()[0]) - start
    except (OSError, ValueError, IndexError):
        return None


class OpenMask3DNode(LifecycleNode):
    """Records posed RGB-D keyframes and a cloud, builds the OpenMask3D map, answers queries."""

    def __init__(self, node_name: str = P.NODE_NAME, **kwargs):
        super().__init__(node_name, **kwargs)
        # Own names, prefixed: rclpy's Node keeps its own _services/_timers lists.
        self._om_lock = threading.RLock()
        self._sensor_group = MutuallyExclusiveCallbackGroup()
        self._pose_group = MutuallyExclusiveCallbackGroup()
        self._service_group = ReentrantCallbackGroup()
        self._timer_group = MutuallyExclusiveCallbackGroup()
        self.settings: NodeSettings | None = None
        self.board = StatusBoard()
        self.recorder: KeyframeRecorder | None = None
        self.builder: MapBuilder | None = None
        self.inputs: Inputs | None = None
        self.scene_dir: Path | None = None
        self._om_services: list = []
        self._build_action: BuildMapServer | None = None
        self._om_subs: list = []
        self._om_timers: list = []
        self._rebuild_timer = None                                # rebuild_period, when active
        self._last_build_inputs: tuple[int, int] | None = None   # when the last build started
        self._record_thread: threading.Thread | None = None
        self._record_stop = threading.Event()
        self._wake = threading.Event()
        self._log_state = None
        self._last_drops = {c: 0 for c in Drop}
        # One logger per drop cause: rclpy throttles per logger and call site.
        self._drop_loggers = {c: rclpy.logging.get_logger(self.get_logger().name)
                              for c in Drop}
        # Plain (not lifecycle) publishers: status and diagnostics also report an inactive or
        # failed node.
        self._status_pub = self.create_publisher(PipelineStatus, P.STATUS_TOPIC, latched_qos())
        self._diag_pub = self.create_publisher(DiagnosticArray, "/diagnostics", 10)
        self.viz = None
        self._reasons: dict[Drop, str] = {}     # the latest warning per drop cause
        self._said_no_clock = False
        # Done when the node is finalized (lifecycle shutdown): main() then ends the process.
        self.finalized = Future()
        # Like tf2's buffer: forget what was recorded before ROS time ran backwards.
        self._jump_handle = self.get_clock().create_jump_callback(
            JumpThreshold(min_forward=None, min_backward=Duration(nanoseconds=-1),
                          on_clock_change=True), post_callback=self._on_time_jump)
        # Last: a value it cannot take raises here (ValueError), with the node complete enough
        # to be destroyed.
        declare_parameters(self)
        self.add_on_set_parameters_callback(self._on_set_parameters)

    # -- status ------------------------------------------------------------------------------------
    def status(self) -> dict:
        """A copy of the current status fields (recorder counters merged in)."""
        if self.recorder is not None:
            self.board.merge_counters(self.recorder.counters())
        inputs = self.inputs
        if inputs is not None:
            self.board.update(inputs=inputs.input_counts())
            if inputs.latest_cloud is not None:
                self.board.update(have_cloud=True)
        return self.board.snapshot()

    def _publish_status(self) -> None:
        frame = self.settings.map_frame if self.settings else P.NODE_PARAMETERS["map_frame"][0]
        try:
            self._status_pub.publish(status_message(self.status(), self.get_clock().now().to_msg(),
                                                    frame))
        except Exception:   # context shutting down
            pass

    def _on_status_timer(self) -> None:
        self.board.update(memory_mib=resident_mib())
        rec, no_clock = self.recorder, self._no_clock()
        if rec is None:
            self._publish_status()
            return
        c = rec.counters()
        new = {cause: c.drops[cause] - self._last_drops[cause] for cause in Drop}
        self._last_drops = c.drops
        # What the user must know first stays in the message while it lasts.
        if no_clock and c.frames_received:
            self.board.update(message=no_clock_message(c.frames_received))
            self._said_no_clock = True
        elif self._said_no_clock:
            self._said_no_clock = False
            self.board.update(message="/clock received: ROS time runs")
        elif new[Drop.frames_overrun] and Drop.frames_overrun in self._reasons:
            self.board.update(message=self._reasons[Drop.frames_overrun])
        self._publish_status()
        try:
            self._diag_pub.publish(diagnostics(self.status(), self.get_fully_qualified_name(),
                                               self.get_clock().now().to_msg(), new,
                                               dict(self._reasons), no_clock))
        except Exception:
            pass

    def _no_clock(self) -> bool:
        """use_sim_time and no /clock received yet (ROS time reads 0)."""
        clock = self.get_clock()
        return clock.ros_time_is_active and clock.now().nanoseconds == 0

    def _warn_drop(self, cause: Drop, text: str) -> None:
        inputs = self.inputs
        seen = f" (messages so far: {inputs.input_counts()})" if inputs is not None else ""
        self._reasons[cause] = text
        self._drop_loggers[cause].warning(
            f"{text}{seen}. To fix: {advice(cause, self._no_clock())}", throttle_duration_sec=5.0)
        self.board.update(message=text)

    def _on_time_jump(self, jump: TimeJump) -> None:
        """ROS time ran backwards or changed source: drop the poses, the unmatched camera
        messages and the waiting keyframe candidates of the time before (tf2 clears its buffer
        likewise); frames and poses after the jump are recorded as usual."""
        switched = jump.clock_change in (ClockChange.ROS_TIME_ACTIVATED,
                                         ClockChange.ROS_TIME_DEACTIVATED)
        if jump.delta.nanoseconds >= 0 and not switched:
            return
        what = ("ROS time changed source" if switched else
                f"ROS time jumped back {-jump.delta.nanoseconds / 1e9:.3f} s")
        inputs, rec = self.inputs, self.recorder
        if inputs is not None:
            inputs.reset_time()
        if rec is not None:
            rec.time_jumped(f"{what} while they waited for their pose")
        text = (f"{what} (a looped or restarted bag, a simulator reset?): poses and camera "
                "messages from before it were dropped")
        self.get_logger().warning(text)
        self.board.update(message=text)

    def _fail(self, what: str, exc: Exception) -> TransitionCallbackReturn:
        self.get_logger().error(f"{what} failed: {exc}")
        self.board.update(state=PipelineStatus.STATE_ERROR, message=f"{what} failed: {exc}")
        self._publish_status()
        return TransitionCallbackReturn.FAILURE

    # -- parameters --------------------------------------------------------------------------------
    def set_parameters_atomically(self, parameter_list):
        """rclpy's, except that a request naming an undeclared parameter is refused with a
        reason that names it (rclpy's reason lists none)."""
        unknown = [p.name for p in parameter_list if not self.has_parameter(p.name)]
        if unknown:
            return SetParametersResult(successful=False,
                                       reason="; ".join(map(unknown_parameter, unknown)))
        return super().set_parameters_atomically(parameter_list)

    def _on_set_parameters(self, params):
        result = check_live_change(params)
        live = {p.name: p.value for p in params if p.name in P.LIVE_PARAMETERS}
        if result.successful and live and self.settings is not None:
            self.settings = self.settings.with_live(live)
            if self.inputs is not None:
                self.inputs.s = self.settings
            self.get_logger().info(f"parameters changed: {live}")
        return result

    # -- lifecycle ---------------------------------------------------------------------------------
    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        try:
            s = self.settings = read_settings(self)
            scene = s.scene_dir.strip() or str(Path.home() / ".ros" / "openmask3d" /
                                                time.strftime("%Y%m%d-%H%M%S"))
            self.scene_dir = Path(scene).expanduser().resolve()
            self.recorder = KeyframeRecorder(
                self.scene_dir, s.pipeline.frame_step, decode_frame, self._pose_at,
                lambda: self.get_clock().now().nanoseconds, s.pose_wait, s.keyframe_queue_size,
                warn=self._warn_drop, info=self.get_logger().info, pause_s=s.pause_gap)
        except (ValueError, OSError) as exc:   # a clear message instead of a dead node
            return self._fail("configure", exc)
        log = self.get_logger()
        self._log_state = self._log_state or forward_core_logging(log)
        self.board.update(state=PipelineStatus.STATE_RECORDING, scene_dir=str(self.scene_dir),
                          message=f"configured; recording into {self.scene_dir}")
        # Map and query views (instance cloud, heatmap, detections, hit markers): latched.
        self.viz = MapPublishers(self, lambda: self.settings.map_frame, hits=True, lifecycle=True,
                                 max_rate=lambda: self.settings.views_max_rate)
        self.builder = MapBuilder(self.scene_dir, s.pipeline, self.board, log,
                                  self._publish_status, on_map=self.viz.publish_map)
        maps = [Path(s.load_map).expanduser()] if s.load_map.strip() else []
        if s.load_scene_map:
            maps.append(self.scene_dir / MAP_DIRNAME)
        self.builder.start_loading(maps)
        # A steady clock: with use_sim_time, a ROS-time timer stops when /clock stops (end of
        # a bag, paused simulator) and the latched status would keep counts from that moment.
        self._om_timers.append(self.create_timer(s.status_period, self._on_status_timer,
                                                 callback_group=self._timer_group,
                                                 clock=Clock(clock_type=ClockType.STEADY_TIME)))
        if self.recorder.keyframes_before:
            log.info(f"scene folder {self.scene_dir} already holds "
                     f"{self.recorder.keyframes_before} keyframes; new ones are added after them")
        log.info(f"recording keyframes (every {s.pipeline.frame_step}th synchronised frame, "
                 f"pose wait {s.pose_wait} s) into {self.scene_dir}; models load in the background")
        self._publish_status()
        return TransitionCallbackReturn.SUCCESS

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        try:
            self.inputs = Inputs(self, self.settings, self._sensor_group, self._pose_group,
                                 self._on_frame, self.recorder.reject, self._wake.set)
        except Exception as exc:
            return self._fail("activate", exc)
        g = self._service_group
        self._om_services = [
            self.create_service(Trigger, P.TRIGGER_SERVICE, self._on_trigger_service,
                                callback_group=g),
            self.create_service(QueryObjects, P.QUERY_SERVICE, self._on_query, callback_group=g)]
        self._om_subs = [self.create_subscription(Empty, P.TRIGGER_TOPIC, self._on_trigger_topic,
                                                  10, callback_group=g)]
        self._build_action = BuildMapServer(self, self.start_processing, self._build_refused,
                                            self._map_header)
        if self.settings.rebuild_period > 0:
            if self._last_build_inputs is None and has_map(self.scene_dir):
                self._last_build_inputs = self._build_inputs()   # the map on disk is up to date
            self._rebuild_timer = self.create_timer(
                self.settings.rebuild_period, self._on_rebuild_timer,
                callback_group=self._timer_group, clock=Clock(clock_type=ClockType.STEADY_TIME))
        self._record_stop.clear()
        self._record_thread = threading.Thread(target=self._record_loop, daemon=True,
                                               name="openmask3d-recorder")
        self._record_thread.start()
        age = process_age()
        self.get_logger().info(
            f"active: services {self.resolve_service_name(P.TRIGGER_SERVICE)}, "
            f"{self.resolve_service_name(P.QUERY_SERVICE)}, action "
            f"{self.resolve_topic_name(P.BUILD_ACTION)}" +
            (f" ({age:.2f} s after the process started)" if age is not None else ""))
        self._publish_status()
        return super().on_activate(state)

    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._deactivate()
        return super().on_deactivate(state)

    def _deactivate(self) -> None:
        self._record_stop.set()
        self._wake.set()
        if self._record_thread is not None:
            self._record_thread.join()
            self._record_thread = None
        if self.inputs is not None:
            self.inputs.destroy()
            self.inputs = None
        for srv in self._om_services:
            self.destroy_service(srv)
        for sub in self._om_subs:
            self.destroy_subscription(sub)
        self._om_services, self._om_subs = [], []
        if self._build_action is not None:
            self._build_action.destroy()
            self._build_action = None
        if self._rebuild_timer is not None:
            self.destroy_timer(self._rebuild_timer)
            self._rebuild_timer = None

    def on_cleanup(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._release()
        return TransitionCallbackReturn.SUCCESS

    def on_shutdown(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._deactivate()
        self._release()
        self.board.update(message="finalized (lifecycle shutdown); run by its own executable, "
                                  "the process exits")
        self._publish_status()
        if not self.finalized.done():
            self.finalized.set_result(True)
        return TransitionCallbackReturn.SUCCESS

    def _release(self, join_timeout: float = 10.0) -> None:
        if self.builder is not None:
            self.builder.cancel()       # a build in progress stops; the current map stays
            self.builder.join(join_timeout)
        for t in self._om_timers:
            self.destroy_timer(t)
        self._om_timers = []
        if self.viz is not None:
            self.viz.destroy()
            self.viz = None
        if self._log_state is not None:
            restore_core_logging(self._log_state)
            self._log_state = None
        self.builder = self.recorder = self.settings = None

    def destroy_node(self):
        # Also stops the views thread, which may be publishing, before rclpy's teardown.
        self._deactivate()
        self._release(join_timeout=1.0)
        return super().destroy_node()

    # -- recording ---------------------------------------------------------------------------------
    def _on_frame(self, stamp_ns: int, payload) -> None:
        if self.recorder.offer(stamp_ns, payload):
            self._wake.set()

    def _pose_at(self, stamp_ns: int, strict: bool):
        inputs = self.inputs
        if inputs is None:
            raise LookupError("the node is not active (no pose source)")
        return inputs.camera_pose(self.settings, stamp_ns, strict)

    def _record_loop(self) -> None:
        """Decode and write keyframes off the executor; wakes on frames and poses, and every
        50 ms so that pose waits end on time (ROS time)."""
        while not self._record_stop.is_set():
            self._wake.wait(0.05)
            self._wake.clear()
            try:
                self.recorder.process()
            except Exception as exc:   # keep recording; say why a frame was lost
                self.get_logger().error(f"keyframe recording failed: {exc}",
                                        throttle_duration_sec=5.0)

    # -- map complete ------------------------------------------------------------------------------
    def _on_trigger_topic(self, msg: Empty) -> None:
        ok, text = self.start_processing()
        (self.get_logger().info if ok else self.get_logger().warning)(f"map_complete topic: {text}")

    def _on_trigger_service(self, request, response):
        try:
            response.success, response.message = self.start_processing()
        except Exception as exc:
            response.success, response.message = False, f"internal error: {exc}"
        return response

    def _build_inputs(self) -> tuple[int, int]:
        """(keyframes recorded or pending, clouds received): what a build would read."""
        c = self.recorder.counters()
        return c.keyframes + c.pending, self.inputs.clouds_received if self.inputs else 0

    def _on_rebuild_timer(self) -> None:
        """rebuild_period: an incremental build when keyframes or the cloud changed since the
        last build started; skipped while a build runs (queries keep the current map)."""
        builder = self.builder
        if builder is None or self.recorder is None or builder.busy():
            return
        if self._build_inputs() == self._last_build_inputs:
            return
        ok, text = self.start_processing()
        (self.get_logger().info if ok else self.get_logger().debug)(f"scheduled rebuild: {text}")

    def _build_refused(self, text: str) -> None:
        """A build_map goal was rejected: say why in the log and the status message."""
        self.get_logger().warning(text)
        self.board.update(message=text)
        self._publish_status()

    def _map_header(self) -> Header:
        return Header(stamp=self.get_clock().now().to_msg(), frame_id=self.settings.map_frame)

    def start_processing(self, job: BuildJob | None = None) -> tuple[bool, str]:
        """Start building the map from all keyframes and the latest cloud; (accepted, message).
        ``job``: the build's mode, cancel flag and outcome (the build_map action's)."""
        with self._om_lock:
            rec, builder, inputs = self.recorder, self.builder, self.inputs
            if rec is None or builder is None:
                return False, "node is not configured"
            c = rec.counters()
            if c.keyframes == 0 and c.pending == 0:
                return False, (f"no keyframes recorded yet ({c.frames_received} synchronised "
                               f"frames, {c.drops[Drop.frames_without_pose]} without pose, "
                               f"{c.drops[Drop.frames_rejected]} rejected, "
                               f"{c.drops[Drop.frames_missed]} missing)")
            try:
                cloud = inputs.cloud_in_map(self.settings) if inputs is not None else None
            except (ValueError, LookupError) as exc:
                return False, f"cannot use the cloud: {exc}"
            if cloud is None and not (self.scene_dir / "cloud.ply").is_file():
                topic = inputs.cloud_topic if inputs is not None else "the cloud topic"
                return False, f"no reconstructed cloud received on {topic}"

            def flush() -> int:
                rec.process(force=True)
                return rec.keyframes
            inputs_now = self._build_inputs()
            ok, text = builder.start(flush, cloud, job)
            if ok:
                self._last_build_inputs = inputs_now
        self._publish_status()
        if ok:
            n = f"{len(cloud[0])} cloud points" if cloud is not None else "cloud.ply"
            text = f"processing {c.keyframes + c.pending} keyframes and {n} ({text})"
        return ok, text

    # -- queries -----------------------------------------------------------------------------------
    def _on_query(self, request, response):
        builder, settings = self.builder, self.settings
        engine = builder.engine if builder is not None else None
        if self.board.get("state") == PipelineStatus.STATE_PROCESSING:
            no_map = "no map yet: the first map is being built (state 'processing'); try again"
        else:
            no_map = ("no map yet: record frames, then call "
                      f"{self.resolve_service_name(P.TRIGGER_SERVICE)} (or set parameter load_map)")
        stamp = self.get_clock().now().to_msg()
        viz = self.viz

        def publish_hits(answer, stamp, frame: str) -> None:
            if viz is not None:     # on the views thread: the reply does not wait for it
                viz.publish_query_later(answer.query, answer.results, answer.instance_values,
                                        stamp)

        qs = QuerySettings.of_node(settings) if settings is not None else QuerySettings()
        return handle_query(request, response, lambda req, resp: answer_query(
            engine, req, resp, qs, publish_hits, stamp, no_map), self.get_logger())


def main(args: list[str] | None = None) -> int:
    """Run the node until Ctrl-C or the lifecycle ``shutdown`` transition (``--ros-args`` in
    ``args`` / sys.argv are honoured). Returns 0, or 2 after one line on stderr when a parameter
    given at start-up cannot be used."""
    try:
        check_overrides(sys.argv if args is None else args)   # before rcl drops or chokes on them
        rclpy.init(args=args)
    except (ValueError, RCLError) as exc:
        print(f"{P.NODE_NAME}: error: {' '.join(str(exc).split())}", file=sys.stderr)
        return 2
    try:
        node = _create_node()
    except ValueError as exc:
        print(f"{P.NODE_NAME}: error: {exc}", file=sys.stderr)
        rclpy.shutdown()
        return 2
    # Service callbacks wait for the GIL while a build's Python code runs in its worker thread:
    # switching every 1 ms instead of 5 ms halved the p99 query latency during a rebuild
    # (benchmarks/bench_query_during_build.py, RESULTS.md)
    sys.setswitchinterval(0.001)
    executor = MultiThreadedExecutor(num_threads=4)
    executor.add_node(node)
    try:
        _autostart(node)
        executor.spin_until_future_complete(node.finalized)
        if node.finalized.done():
            node.get_logger().info("finalized by the lifecycle shutdown transition: exiting")
            # let the transition's reply reach the client before the node goes
            executor.spin_until_future_complete(Future(), timeout_sec=0.5)
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        try:
            executor.remove_node(node)
            node.destroy_node()
        except Exception:
            pass
        executor.shutdown()
        if rclpy.ok():
            rclpy.shutdown()
    return 0


def _create_node() -> OpenMask3DNode:
    """The node, after checking every parameter value it took (from parameter files too);
    ValueError naming the first unusable one."""
    node = OpenMask3DNode()
    try:
        read_settings(node)
    except ValueError:
        node.destroy_node()
        raise
    return node


def _autostart(node: OpenMask3DNode) -> None:
    if node.get_parameter("autostart").value:
        if node.trigger_configure() != TransitionCallbackReturn.SUCCESS:
            node.get_logger().error("autostart: configure failed; the node stays "
                                    "unconfigured (fix the parameters, then configure it)")
        elif node.trigger_activate() != TransitionCallbackReturn.SUCCESS:
            node.get_logger().error("autostart: activate failed")
