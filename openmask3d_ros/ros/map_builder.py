"""Models and maps for the node, off the executor: models load in a background thread after
configure (recording never waits for them), maps are built in a worker thread, and the query
engine is swapped in when a build finishes."""
from __future__ import annotations

import threading
import time
import traceback
from pathlib import Path
from collections.abc import Callable

from openmask3d_ros.msg import PipelineStatus

from ..core.errors import InputError
from ..core.instance_map import MAP_DIRNAME
from .status import StatusBoard


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

    def start(self, flush: Callable[[], int], cloud) -> tuple[bool, str]:
        """Start a build: ``flush()`` decides pending keyframes first (returns the keyframe
        count); ``cloud`` = (points, colours) in the map frame, or None for the folder's
        cloud.ply. (accepted, message)."""
        with self._lock:
            if self.busy():
                s = self.board.snapshot()
                return False, (f"already processing (stage '{s['stage']}' "
                               f"{s['stage_done']}/{s['stage_total']}, {s['elapsed']:.0f} s); "
                               "wait for state 'ready'")
            if self.models_error:
                return False, self.models_error
            self._t0 = time.perf_counter()
            self.board.update(state=PipelineStatus.STATE_PROCESSING, stage="starting",
                              stage_done=0, stage_total=0, progress=0.0, elapsed=0.0,
                              message="map build started")
            self._worker = threading.Thread(target=self._run, args=(flush, cloud), daemon=True,
                                            name="openmask3d-pipeline")
            self._worker.start()
        return True, f"building the map in {self.scene_dir}"

    def progress(self, stage: str, done: int, total: int) -> None:
        frac = float(done) / float(total) if total else 0.0
        changed = self.board.get("stage") != stage
        self.board.update(stage=stage, stage_done=int(done), stage_total=int(total),
                          progress=frac, elapsed=time.perf_counter() - self._t0)
        if changed:
            self.log.info(f"pipeline stage: {stage} ({time.perf_counter() - self._t0:.1f} s)")
            self._publish()

    def _run(self, flush, cloud) -> None:
        from ..core.pipeline import run_pipeline
        try:
            if not self._models_ready.is_set():
                self.progress("loading models", 0, 1)
            self._models_ready.wait()
            if self.models is None:
                raise RuntimeError(self.models_error)
            self.progress("writing keyframes", 0, 1)
            if flush() == 0:
                raise RuntimeError("no keyframe could be written (see frames_without_pose and "
                                   "frames_rejected)")
            if cloud is not None:      # the scene folder holds what the map is built on:
                from ..core.scene import replace_ply   # a restart or `openmask3d run` reuses it
                replace_ply(self.scene_dir / "cloud.ply", *cloud)
            imap = run_pipeline(self.scene_dir, self.cfg, models=self.models,
                                progress=self.progress, cloud=cloud)
            engine = self.engine_for(imap)
        except Exception as exc:
            detail = "" if isinstance(exc, InputError) else f"\n{traceback.format_exc()}"
            self.log.error(f"pipeline failed: {exc}{detail}")
            self.board.update(state=PipelineStatus.STATE_ERROR, stage="",
                              elapsed=time.perf_counter() - self._t0,
                              message=f"pipeline failed: {exc}")
            self._publish()
            return
        self._make_current(engine)
        dt = time.perf_counter() - self._t0
        stages = ", ".join(f"{k.removesuffix('_s')} {v:.1f} s"
                           for k, v in imap.meta.timings.items())
        where = imap.meta.map_dir or self.scene_dir / MAP_DIRNAME
        text = (f"map ready: {imap.num_instances} instances from {imap.meta.frames.keyframes}"
                f" keyframes in {dt:.1f} s ({stages}), saved to {where}")
        self.log.info(text)
        self.board.update(state=PipelineStatus.STATE_READY, stage="", progress=1.0, elapsed=dt,
                          num_instances=imap.num_instances, message=text)
        self._publish()

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
        """Wait for the loader and the build worker (a build cannot be interrupted: warn)."""
        for t in (self._loader, self._worker):
            if t is not None and t.is_alive():
                t.join(timeout)
                if t.is_alive():
                    self.log.warning(f"{t.name} still running after {timeout:.0f} s; it ends "
                                     "with the process")
