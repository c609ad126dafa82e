"""Models and maps for the node, off the executor: models load in a background thread after
configure (recording never waits for them), maps are built in a worker thread, and the query
engine is swapped in when a build finishes. Each build is a ``BuildJob``: its mode, a cancel
flag (polled by run_pipeline: a cancelled build writes no generation and the current map stays),
its progress and its outcome (what the BuildMap action reports)."""
from __future__ import annotations

import os
import threading
import time
import traceback
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from openmask3d_ros.msg import PipelineStatus

from ..core.errors import BuildCancelled, InputError
from ..core.instance_map import MAP_DIRNAME
from .status import StatusBoard

# Test-only hook: "STAGE:FILE" holds every build when it first reports STAGE until FILE exists or
# the build is cancelled, so that a test can act on a running build without a timing race.
# Unset in normal use.
TEST_HOLD_ENV = "OPENMASK3D_BUILD_TEST_HOLD"


@dataclass
class BuildOutcome:
    """How a build ended: ``imap`` is the new map when ``success``."""

    success: bool
    cancelled: bool
    message: str
    elapsed: float
    imap: object | None = None


@dataclass
class Progress:
    """One progress report of a build: the stage, its counts, seconds since the start and an
    estimate of the seconds left (negative: unknown)."""

    stage: str
    done: int
    total: int
    elapsed: float
    remaining: float


class BuildJob:
    """One map build. ``mode``: "incremental" (the build cache as configured) or "full"
    (recompute everything). Thread-safe: the worker reports and finishes it, any thread may
    cancel it and read its reports."""

    def __init__(self, mode: str = "incremental"):
        if mode not in ("incremental", "full"):
            raise ValueError(f"build mode must be incremental or full, got {mode!r}")
        self.mode = mode
        self.cancel_requested = threading.Event()
        self.done = threading.Event()
        self.outcome: BuildOutcome | None = None
        self.reports: deque[Progress] = deque(maxlen=256)   # drained by the action server
        self.last: Progress | None = None
        self.expected = 0.0        # the previous build's seconds (0: unknown), for time left
        self.t0 = self._stage_t0 = time.perf_counter()
        self._stage = ""

    def cancel(self) -> None:
        self.cancel_requested.set()

    def report(self, stage: str, done: int, total: int) -> Progress:
        """Record a progress report (the worker thread)."""
        now = time.perf_counter()
        if stage != self._stage:
            self._stage, self._stage_t0 = stage, now
        p = Progress(stage, int(done), int(total), now - self.t0, self._time_left(done, total, now))
        self.last = p
        self.reports.append(p)
        return p

    def snapshot(self) -> Progress | None:
        """The latest report with elapsed and time left as of now (any thread)."""
        last = self.last
        if last is None:
            return None
        now = time.perf_counter()
        return Progress(last.stage, last.done, last.total, now - self.t0,
                        self._time_left(last.done, last.total, now))

    def _time_left(self, done: int, total: int, now: float) -> float:
        """The larger of: the current stage's rest at its rate so far, and the previous build's
        duration minus the time spent (later stages are not known in advance)."""
        known = []
        if 0 < done < total:
            known.append((now - self._stage_t0) * (total - done) / done)
        if self.expected > 0:
            known.append(self.expected - (now - self.t0))
        return max(0.0, *known) if known else -1.0

    def finish(self, outcome: BuildOutcome) -> None:
        self.outcome = outcome
        self.done.set()


class MapBuilder:
    """Owns the models, the current query engine and the build worker of one configured node."""

    def __init__(self, scene_dir: Path, cfg, board: StatusBoard, log, publish: Callable[[], None],
                 on_map: Callable[[object], None] | None = None):
        """``on_map(engine)`` is called whenever a map becomes current (loaded or built)."""
        self.scene_dir, self.cfg, self.board, self.log = scene_dir, cfg, board, log
        self._publish = publish
        self._on_map = on_map
        self._lock = threading.Lock()
        self._current_lock = threading.Lock()    # views + engine swap: loader vs build worker
        self.models = None
        self.models_error: str | None = None
        self._models_ready = threading.Event()
        self.engine = None
        self._encoders: dict = {}      # text encoders by query.encoder_key, the node's own first
        self._encoders_lock = threading.Lock()   # loader and build worker: build each once
        self._loader: threading.Thread | None = None
        self._worker: threading.Thread | None = None
        self._t0 = 0.0
        self.job: BuildJob | None = None          # the running or last build
        self._last_duration = 0.0

    # -- models and saved maps ---------------------------------------------------------------------
    def start_loading(self, maps: list[Path]) -> None:
        """Build the models in the background, then load the first of ``maps`` that holds a map."""
        self.board.update(models="loading")
        self._loader = threading.Thread(target=self._load, args=(maps,), daemon=True,
                                        name="openmask3d-models")
        self._loader.start()

    def _load(self, maps: list[Path]) -> None:
        from ..core.models import build_models
        t0 = time.perf_counter()
        try:
            models = build_models(self.cfg)
        except Exception as exc:
            self.models_error = f"models could not be built: {exc}"
            self.log.error(self.models_error)
            self.board.update(state=PipelineStatus.STATE_ERROR, models="failed",
                              message=self.models_error)
            self._models_ready.set()
            self._publish()
            return
        d = models.describe()
        self.log.info(f"models ready in {time.perf_counter() - t0:.1f} s: {d}")
        self.board.update(models=" ".join(f"{k}={d[k]}" for k in
                                          ("proposals", "segmenter", "image_encoder", "device")),
                          notes=list(models.notes))
        from ..core.query import encoder_key
        self._encoders[encoder_key(self.cfg)] = models.text_encoder
        self.models = models
        self._models_ready.set()
        for path in maps:
            if self._load_map(path):
                break
        self._publish()

    def engine_for(self, imap):
        """A query engine on ``imap`` with the encoder the map was built with (as the CLI and
        evaluation do: query.engine_for_map); encoders are built once and kept."""
        from ..core.query import engine_for_map
        with self._encoders_lock:
            return engine_for_map(imap, self.cfg, self._encoders)

    def _load_map(self, path: Path) -> bool:
        from ..core.instance_map import InstanceMap
        if not path.exists():
            return False
        try:
            imap = InstanceMap.load(path)
            engine = self.engine_for(imap)
        except Exception as exc:
            self.log.error(f"loading the map at {path} failed: {exc}")
            self.board.update(message=f"loading the map at {path} failed: {exc}")
            return False
        if not self._make_current(engine, replace=False):   # a build finished first: keep it
            return True
        self.log.info(f"loaded map {path}: {imap.num_instances} instances")
        self.board.update(state=PipelineStatus.STATE_READY, num_instances=imap.num_instances,
                          message=f"map loaded from {path}")
        return True

    # -- building ----------------------------------------------------------------------------------
    def busy(self) -> bool:
        return self._worker is not None and self._worker.is_alive()

    def start(self, flush: Callable[[], int], cloud,
              job: BuildJob | None = None) -> tuple[bool, str]:
        """Start a build: ``flush()`` decides pending keyframes first (returns the keyframe
        count); ``cloud`` = (points, colours) in the map frame, or None for the folder's
        cloud.ply; ``job``: the build's mode, cancel flag and outcome (a new incremental one
        by default). (accepted, message)."""
        job = job or BuildJob()
        with self._lock:
            if self.busy():
                s = self.board.snapshot()
                return False, (f"already processing (stage '{s['stage']}' "
                               f"{s['stage_done']}/{s['stage_total']}, {s['elapsed']:.0f} s); "
                               "wait for state 'ready'")
            if self.models_error:
                return False, self.models_error
            self._t0 = job.t0 = time.perf_counter()
            job.expected = self._expected_duration()
            self.job = job
            self.board.update(state=PipelineStatus.STATE_PROCESSING, stage="starting",
                              stage_done=0, stage_total=0, progress=0.0, elapsed=0.0,
                              message=f"map build started ({job.mode})")
            self._worker = threading.Thread(target=self._run, args=(job, flush, cloud),
                                            daemon=True, name="openmask3d-pipeline")
            self._worker.start()
        return True, f"building the map in {self.scene_dir}"

    def cancel(self) -> bool:
        """Ask the running build to stop (it ends within a frame); False when none runs."""
        job = self.job
        if job is None or job.done.is_set():
            return False
        job.cancel()
        return True

    def _expected_duration(self) -> float:
        """The last build's seconds, else the stage timings of the current map (0: unknown)."""
        if self._last_duration:
            return self._last_duration
        engine = self.engine
        timings = engine.map.meta.timings if engine is not None else {}
        return float(sum(timings.values())) if timings else 0.0

    def progress(self, stage: str, done: int, total: int) -> None:
        """run_pipeline's progress callback: the status board and the running job."""
        frac = float(done) / float(total) if total else 0.0
        changed = self.board.get("stage") != stage
        self.board.update(stage=stage, stage_done=int(done), stage_total=int(total),
                          progress=frac, elapsed=time.perf_counter() - self._t0)
        if changed:
            self.log.info(f"pipeline stage: {stage} ({time.perf_counter() - self._t0:.1f} s)")
            self._publish()
        job = self.job
        if job is not None and not job.done.is_set():
            job.report(stage, done, total)
            if changed:
                self._test_hold(job, stage)

    def _test_hold(self, job: BuildJob, stage: str) -> None:
        spec = os.environ.get(TEST_HOLD_ENV, "")
        name, _, path = spec.partition(":")
        if not spec or stage != name or Path(path).exists():
            return
        self.log.warning(f"{TEST_HOLD_ENV}: build held at stage {stage} until {path} exists "
                         "or it is cancelled")
        while not Path(path).exists() and not job.cancel_requested.is_set():
            time.sleep(0.02)

    def _run(self, job: BuildJob, flush, cloud) -> None:
        try:
            imap = self._build(job, flush, cloud)
            engine = self.engine_for(imap)
        except BuildCancelled:
            self._end(job, BuildOutcome(False, True, self._cancelled_text(), self._since()))
            return
        except Exception as exc:
            detail = "" if isinstance(exc, InputError) else f"\n{traceback.format_exc()}"
            self.log.error(f"pipeline failed: {exc}{detail}")
            self._end(job, BuildOutcome(False, False, f"pipeline failed: {exc}", self._since()),
                      state=PipelineStatus.STATE_ERROR)
            return
        self._make_current(engine)
        dt = self._last_duration = self._since()
        stages = ", ".join(f"{k.removesuffix('_s')} {v:.1f} s"
                           for k, v in imap.meta.timings.items())
        where = imap.meta.map_dir or self.scene_dir / MAP_DIRNAME
        changes = f"; changes: {imap.meta.changes.summary()}" if imap.meta.changes else ""
        text = (f"map ready: {imap.num_instances} instances from {imap.meta.frames.keyframes}"
                f" keyframes in {dt:.1f} s ({stages}), saved to {where}{changes}")
        self.log.info(text)
        self.board.update(num_instances=imap.num_instances)
        self._end(job, BuildOutcome(True, False, text, dt, imap), progress=1.0)

    def _since(self) -> float:
        return time.perf_counter() - self._t0

    def _build(self, job: BuildJob, flush, cloud):
        """The build itself; raises BuildCancelled when ``job`` is cancelled on the way."""
        from ..core.pipeline import run_pipeline
        if not self._models_ready.is_set():
            self.progress("loading models", 0, 1)
        while not self._models_ready.wait(0.05):
            if job.cancel_requested.is_set():
                raise BuildCancelled("the map build was cancelled")
        if self.models is None:
            raise RuntimeError(self.models_error)
        self.progress("writing keyframes", 0, 1)
        if flush() == 0:
            raise RuntimeError("no keyframe could be written (see frames_without_pose and "
                               "frames_rejected)")
        if cloud is not None:      # the scene folder holds what the map is built on:
            from ..core.scene import replace_ply   # a restart or `openmask3d run` reuses it
            replace_ply(self.scene_dir / "cloud.ply", *cloud)
        return run_pipeline(self.scene_dir, self.cfg, models=self.models,
                            progress=self.progress, cloud=cloud,
                            cache="full" if job.mode == "full" else None,
                            cancel=job.cancel_requested.is_set)

    def _cancelled_text(self) -> str:
        engine = self.engine
        keep = (f"the current map ({engine.map.meta.generation or 'loaded'}, "
                f"{engine.map.num_instances} instances) stays" if engine is not None
                else "there is no map yet")
        text = f"map build cancelled after {self._since():.1f} s: no map was written; {keep}"
        self.log.warning(text)
        return text

    def _end(self, job: BuildJob, outcome: BuildOutcome, state: str | None = None,
             progress: float = 0.0) -> None:
        """Status after a build (ready with a map, else recording, or ``state``), then the
        job's outcome."""
        if state is None:
            state = (PipelineStatus.STATE_READY if self.engine is not None
                     else PipelineStatus.STATE_RECORDING)
        self.board.update(state=state, stage="", progress=progress, elapsed=outcome.elapsed,
                          message=outcome.message)
        self._publish()
        from ..core.low_memory import release_freed
        release_freed()       # the build's transient memory goes back to the system (W14)
        job.finish(outcome)

    def _make_current(self, engine, replace: bool = True) -> bool:
        """Publish the map's views (``on_map``), then hand ``engine`` to queries, so that no
        query sees a map whose views are not out yet. ``replace=False``: keep a map that became
        current first (False returned)."""
        with self._current_lock:
            if not replace and self.engine is not None:
                return False
            if self._on_map is not None:
                try:
                    self._on_map(engine)
                except Exception as exc:     # visualisation must never cost the map
                    self.log.warning(f"publishing the map views failed: {exc}")
            self.engine = engine
        return True

    def join(self, timeout: float = 10.0) -> None:
        """Wait for the loader and the build worker (call ``cancel`` first to stop a build)."""
        for t in (self._loader, self._worker):
            if t is not None and t.is_alive():
                t.join(timeout)
                if t.is_alive():
                    self.log.warning(f"{t.name} still running after {timeout:.0f} s; it ends "
                                     "with the process")
