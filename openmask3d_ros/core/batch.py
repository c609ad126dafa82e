"""Build the maps of many scene folders on Ray: models loaded once per worker, failures reported.

``run_batch`` starts (or joins) a Ray cluster, creates a few ``SceneWorker`` actors, each of
which builds the models once and then runs ``run_pipeline`` (the same code path as
``openmask3d run``) on one scene after another; scenes are handed to whichever worker is idle.

* Resources per scene (CPUs, GPUs, memory) are the actors' Ray resources, so Ray never places
  more workers on a node than it has GPUs (or fractions of one) and cores for; a worker's
  numeric thread pools get the CPUs it was given.
* A scene that fails (bad input, a bug) comes back as a failure with its one-line reason; the
  other scenes go on. A worker that dies (killed, out of memory) is restarted by Ray (reloading
  its models) and its scene is handed again, preferably to another worker, at most ``retries``
  more times. Maps already built are untouched: each build writes a new generation atomically
  (core/map_versions.py), so a killed build leaves only a stale temporary folder.
* ``resume``: scenes whose current map was built from the same cloud, keyframes and result-
  shaping configuration (core/fingerprint.py) are skipped without starting anything.

Ray is imported only here, and only when a batch runs: the ROS node and ``openmask3d run``
never import it, so it is optional at install time for them.
"""
from __future__ import annotations

import glob
import logging
import math
import os
import re
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .config import PipelineConfig
from .threads import ENV_VAR as THREADS_ENV, available_cores

log = logging.getLogger(__name__)

# Test-only hook: "NAME:SECONDS:PIDFILE" makes a worker append its pid to PIDFILE and sleep
# SECONDS when the scene folder NAME reaches its feature stage, so that a test can kill it
# mid-scene. Read by the driver and handed to the workers; unset in normal use.
TEST_PAUSE_ENV = "OPENMASK3D_BATCH_TEST_PAUSE"
LOCAL_OBJECT_STORE_BYTES = 256 * 1024 ** 2     # results are small dicts; maps go to disk
_SCENE_MARKERS = ("color", "depth", "pose", "intrinsic", "scene.json")


class BatchError(Exception):
    """The batch cannot run at all (no scenes, no worker fits, every worker failed to load)."""


# -- scenes ------------------------------------------------------------------------------------
def looks_like_scene(path: Path) -> bool:
    """Whether ``path`` is (meant to be) a scene folder: it has color/, depth/, pose/,
    intrinsic/, scene.json or a .ply. A damaged one still counts: its build reports why."""
    if not path.is_dir():
        return False
    return any((path / m).exists() for m in _SCENE_MARKERS) or any(path.glob("*.ply"))


def find_scene_folders(specs: Sequence[str | Path]) -> tuple[list[Path], list[str]]:
    """(scene folders, notes) from scene folders, glob patterns and folders of scene folders.

    A folder that looks like a scene is one; otherwise its sub-folders that look like scenes
    are (sorted by name; the others are named in the notes). A path that does not exist, or a
    pattern that matches nothing, is a ``BatchError``. Duplicates are dropped."""
    scenes: list[Path] = []
    notes: list[str] = []
    for spec in specs:
        spec = str(spec)
        if glob.has_magic(spec):
            matches = sorted(Path(p) for p in glob.glob(os.path.expanduser(spec)))
            dirs = [p for p in matches if p.is_dir()]
            if not dirs:
                raise BatchError(f"{spec}: matches no folder")
            candidates = dirs
        else:
            path = Path(spec).expanduser()
            if not path.is_dir():
                raise BatchError(f"{spec}: not a folder")
            if looks_like_scene(path):
                candidates = [path]
            else:
                subs = sorted(p for p in path.iterdir()
                              if p.is_dir() and not p.name.startswith("."))
                candidates = [p for p in subs if looks_like_scene(p)]
                other = [p.name for p in subs if not looks_like_scene(p)]
                if other:
                    notes.append(f"{spec}: {len(other)} sub-folder(s) that are not scene "
                                 f"folders ignored ({', '.join(other[:5])}"
                                 f"{', ...' if len(other) > 5 else ''})")
                if not candidates:
                    raise BatchError(f"{spec}: neither a scene folder (color/, depth/, pose/, "
                                     "intrinsic/, a .ply) nor a folder of scene folders")
        for p in candidates:
            scenes.append(p.resolve())
    unique = list(dict.fromkeys(scenes))
    if len(unique) < len(scenes):
        notes.append(f"{len(scenes) - len(unique)} duplicate scene folder(s) dropped")
    if not unique:
        raise BatchError("no scene folders given")
    return unique, notes


def scene_labels(scenes: Sequence[Path]) -> list[str]:
    """Short unique names: the folder names, or paths below the common parent when two match."""
    names = [p.name for p in scenes]
    if len(set(names)) == len(names):
        return names
    common = Path(os.path.commonpath([str(p) for p in scenes]))
    return [str(p.relative_to(common)) if p != common else p.name for p in scenes]


def parse_size(text: str | None) -> int | None:
    """Bytes of '6GB', '512MiB', '2e9' (None stays None); ValueError otherwise."""
    if text is None:
        return None
    m = re.fullmatch(r"\s*([0-9.eE+]+)\s*([kKmMgGtT]?)(i?)[bB]?\s*", str(text))
    if not m:
        raise ValueError(f"not a size: {text!r} (e.g. 6GB, 512MiB)")
    try:
        value = float(m.group(1))
    except ValueError:
        raise ValueError(f"not a size: {text!r} (e.g. 6GB, 512MiB)") from None
    base = 1024 if m.group(3) else 1000
    power = " KMGT".index(m.group(2).upper() or " ")
    out = int(value * base ** power)
    if out <= 0:
        raise ValueError(f"a size must be positive, got {text!r}")
    return out


def describe_error(exc: BaseException) -> str:
    """One line for a failed build, as the CLI prints it: bad input as its message, anything
    else with its type (an internal error)."""
    if isinstance(exc, MemoryError):
        return "out of memory (MemoryError)"
    if isinstance(exc, (OSError, ValueError, KeyError)):
        msg = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
        return str(msg)
    return f"internal error: {type(exc).__name__}: {exc}"


# -- results -----------------------------------------------------------------------------------
@dataclass
class SceneResult:
    """One scene's outcome: built, skipped (up to date), failed or not run (interrupted)."""

    scene: str                        # label
    path: str
    status: str = "not run"
    reason: str = ""                  # why it failed / was skipped / was not run
    seconds: float | None = None      # build time in the worker (last attempt)
    attempts: int = 0
    instances: int | None = None
    generation: str | None = None
    worker_pid: int | None = None
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def has_map(self) -> bool:
        return self.status in ("built", "skipped")


@dataclass
class BatchReport:
    """What a batch did, and how fast."""

    scenes: list[SceneResult]
    wall_s: float = 0.0
    ray: dict[str, Any] = field(default_factory=dict)   # address, resources, per-scene request
    workers: list[dict[str, Any]] = field(default_factory=list)   # pid, device, load_s, ...
    notes: list[str] = field(default_factory=list)
    interrupted: bool = False

    def count(self, status: str) -> int:
        return sum(r.status == status for r in self.scenes)

    @property
    def ok(self) -> bool:
        """Every scene has a map and the batch ran to the end."""
        return not self.interrupted and all(r.has_map for r in self.scenes)

    @property
    def scenes_per_hour(self) -> float:
        """Scenes built per hour of batch wall time (Ray start and model loading included)."""
        built = self.count("built")
        return 3600.0 * built / self.wall_s if built and self.wall_s > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        built = [r.seconds for r in self.scenes if r.status == "built" and r.seconds]
        return {
            "ok": self.ok, "interrupted": self.interrupted,
            "built": self.count("built"), "skipped": self.count("skipped"),
            "failed": self.count("failed"), "not_run": self.count("not run"),
            "wall_s": round(self.wall_s, 3),
            "scenes_per_hour": round(self.scenes_per_hour, 2),
            "mean_scene_s": round(sum(built) / len(built), 3) if built else None,
            "ray": self.ray, "workers": self.workers, "notes": self.notes,
            "scenes": [asdict(r) for r in self.scenes],
        }


# -- Ray actors (plain classes; wrapped with ray.remote when a batch runs) ----------------------
class ProgressBoard:
    """The stage of every running scene, written by the workers, read by the driver."""

    def __init__(self) -> None:
        self.stages: dict[str, tuple[str, int, int]] = {}

    def update(self, scene: str, stage: str | None, done: int = 0, total: int = 0) -> None:
        if stage is None:
            self.stages.pop(scene, None)
        else:
            self.stages[scene] = (stage, done, total)

    def snapshot(self) -> dict[str, tuple[str, int, int]]:
        return dict(self.stages)


class SceneWorker:
    """A Ray actor that builds the models once and then maps scene after scene."""

    def __init__(self, cfg: PipelineConfig, threads: int | None, use_gpu: bool,
                 log_level: int = logging.WARNING, test_pause: str | None = None) -> None:
        logging.basicConfig(level=log_level, format="%(levelname)s %(name)s: %(message)s")
        logging.getLogger().setLevel(log_level)
        if threads:                 # the CPUs Ray gave this worker (core/threads.py reads it)
            os.environ[THREADS_ENV] = str(threads)
        if not use_gpu:             # no GPU was requested: never touch one another worker holds
            os.environ["CUDA_VISIBLE_DEVICES"] = ""
        self.cfg, self.test_pause = cfg, test_pause
        self.pid = os.getpid()
        self.models, self.error = None, None
        t0 = time.perf_counter()
        try:
            from .models import build_models
            self.models = build_models(cfg)
        except Exception as exc:     # reported by ready(); the driver stops using this worker
            self.error = describe_error(exc)
        self.load_s = time.perf_counter() - t0

    def ready(self) -> dict[str, Any]:
        """This worker: pid, node, device, models, model load time, or the load error."""
        import socket
        info: dict[str, Any] = {"pid": self.pid, "host": socket.gethostname(),
                                "load_s": round(self.load_s, 3), "error": self.error,
                                "threads": os.environ.get(THREADS_ENV)}
        if self.models is not None:
            info.update(device=self.models.device, models=self.models.describe())
        return info

    def build(self, scene_dir: str, label: str, board=None) -> dict[str, Any]:
        """Map one scene with the loaded models (``run_pipeline``, as ``openmask3d run``);
        stages go to ``board`` (a ProgressBoard actor; a method argument, not a constructor
        one, so that Ray can always restart this actor)."""
        from .pipeline import run_pipeline
        if self.models is None:
            return {"status": "failed", "reason": f"models not loaded: {self.error}",
                    "pid": self.pid}
        t0 = time.perf_counter()
        progress = _BoardProgress(board, label, self._pause_hook(scene_dir))
        try:
            imap = run_pipeline(scene_dir, self.cfg, self.models, progress=progress)
        except Exception as exc:
            log.debug("%s failed", scene_dir, exc_info=True)   # the driver reports the reason
            return {"status": "failed", "reason": describe_error(exc), "pid": self.pid,
                    "seconds": time.perf_counter() - t0}
        finally:
            progress.clear()
        return {"status": "built", "pid": self.pid, "seconds": time.perf_counter() - t0,
                "instances": imap.num_instances, "generation": imap.meta.generation,
                "timings": {k: round(v, 3) for k, v in imap.meta.timings.items()}}

    def _pause_hook(self, scene_dir: str) -> Callable[[], None] | None:
        if not self.test_pause:
            return None
        name, seconds, pidfile = self.test_pause.split(":", 2)
        if Path(scene_dir).name != name:
            return None

        def pause() -> None:
            with open(pidfile, "a") as fh:
                fh.write(f"{os.getpid()}\n")
            time.sleep(float(seconds))
        return pause


class _BoardProgress:
    """run_pipeline's progress callback: stage changes (and counts every 0.5 s) to the board."""

    def __init__(self, board, label: str, pause: Callable[[], None] | None = None) -> None:
        self.board, self.label, self.pause = board, label, pause
        self.stage, self.sent = "", 0.0

    def __call__(self, stage: str, done: int, total: int) -> None:
        now = time.monotonic()
        if self.board is not None and (stage != self.stage or now - self.sent > 0.5):
            self.board.update.remote(self.label, stage, done, total)
            self.sent = now
        if stage == "features" and self.stage != "features" and self.pause is not None:
            self.pause()
        self.stage = stage

    def clear(self) -> None:
        if self.board is not None:
            self.board.update.remote(self.label, None)


# -- the driver --------------------------------------------------------------------------------
Event = Callable[[str, dict[str, Any]], None]


@dataclass
class _Task:
    index: int
    path: Path
    label: str
    attempts: int = 0
    tried_on: set[int] = field(default_factory=set)
    deaths: list[str] = field(default_factory=list)


@dataclass
class _Worker:
    index: int
    actor: Any
    pid: int | None = None
    info: dict[str, Any] = field(default_factory=dict)
    usable: bool = False
    retired: bool = False
    deaths: int = 0                 # consecutive, reset by a finished scene


def start_ray(address: str | None, verbose: bool = False) -> dict[str, Any]:
    """Join the cluster at ``address`` ("auto", "HOST:PORT", "ray://..."), or start a local
    Ray on this machine's cores (and GPUs) when None. Returns {address, resources, started}."""
    import ray
    kwargs: dict[str, Any] = dict(log_to_driver=True, namespace="openmask3d",
                                  logging_level=logging.INFO if verbose else logging.WARNING)
    if address:
        _check_reachable(address)
        ray.init(address=address, **kwargs)
    else:
        ray.init(address="local", num_cpus=available_cores(), include_dashboard=False,
                 object_store_memory=LOCAL_OBJECT_STORE_BYTES, **kwargs)
    return {"address": address or "local", "resources": {
        k: v for k, v in ray.cluster_resources().items() if k in ("CPU", "GPU", "memory")}}


def _check_reachable(address: str) -> None:
    """BatchError at once when nothing listens at HOST:PORT (Ray itself retries for minutes)."""
    if address == "auto" or "://" in address:
        return
    import socket
    host, _, port = address.rpartition(":")
    try:
        socket.create_connection((host or "127.0.0.1", int(port)), timeout=10).close()
    except (OSError, ValueError) as exc:
        raise BatchError(f"--ray-address {address}: no Ray cluster answers there ({exc}); "
                         "start one with `ray start --head`, or leave --ray-address out for "
                         "a local Ray") from None


def plan_workers(resources: dict[str, float], todo: int, cpus: float, gpus: float,
                 memory: int | None, workers: int | None) -> int:
    """How many workers: ``workers`` if given, else as many as the cluster fits with the
    per-scene resources, never more than there are scenes. BatchError when none fits."""
    fit = math.inf if cpus <= 0 else math.floor(resources.get("CPU", 0) / cpus + 1e-9)
    if gpus > 0:
        fit = min(fit, math.floor(resources.get("GPU", 0) / gpus + 1e-9))
    if memory:
        fit = min(fit, math.floor(resources.get("memory", 0) / memory))
    if workers is not None and workers < 1:
        raise BatchError(f"--workers must be >= 1, got {workers}")
    if fit < 1:             # Ray would keep the workers pending for ever
        have = ", ".join(f"{k} {v:g}" for k, v in sorted(resources.items()))
        raise BatchError(f"the Ray cluster ({have}) cannot fit one worker with {cpus:g} CPU, "
                         f"{gpus:g} GPU{f', {memory} bytes' if memory else ''} per scene")
    # more workers than fit wait for resources (an autoscaling cluster may add them)
    return int(min(workers if workers is not None else fit, todo))


def run_batch(scenes: Sequence[Path], cfg: PipelineConfig, *, ray_address: str | None = None,
              cpus_per_scene: float = 1.0, gpus_per_scene: float | None = None,
              memory_per_scene: int | None = None, workers: int | None = None,
              resume: bool = False, retries: int = 2, event: Event | None = None,
              verbose: bool = False) -> BatchReport:
    """Build the map of every scene folder in ``scenes`` (see the module docstring).

    ``gpus_per_scene`` None: 1 when the cluster has GPUs and ``cfg.device`` is not "cpu", else
    0. ``event(kind, payload)`` is called as things happen: "skip", "workers", "start", "stage",
    "retry", "done". Ctrl-C (KeyboardInterrupt) stops the batch; the report says what ran."""
    t_start = time.perf_counter()
    emit = event or (lambda kind, payload: None)
    labels = scene_labels(scenes)
    results = [SceneResult(label, str(path)) for label, path in zip(labels, scenes)]
    report = BatchReport(results)
    if retries < 0:
        raise BatchError(f"--retries must be >= 0, got {retries}")
    if cpus_per_scene < 0 or (gpus_per_scene or 0) < 0:
        raise BatchError("resources per scene must be >= 0")
    queue = _scenes_to_build(scenes, labels, results, cfg, resume, emit)
    if not queue:
        report.wall_s = time.perf_counter() - t_start
        return report

    import ray
    started_here = not ray.is_initialized()
    pool: list[_Worker] = []
    try:
        resources = _connect(ray, report, started_here, ray_address, verbose)
        if gpus_per_scene is None:
            gpus_per_scene = 1.0 if resources.get("GPU", 0) > 0 and cfg.device != "cpu" else 0.0
        n = plan_workers(resources, len(queue), cpus_per_scene, gpus_per_scene,
                         memory_per_scene, workers)
        threads = None if cfg.threads > 0 else max(1, int(cpus_per_scene))
        report.ray["per_scene"] = {"CPU": cpus_per_scene, "GPU": gpus_per_scene,
                                   "memory": memory_per_scene, "threads": threads or cfg.threads}
        report.ray["workers"] = n
        board = ray.remote(num_cpus=0)(ProgressBoard).remote()
        pool = _start_workers(ray, n, cfg, threads, cpus_per_scene, gpus_per_scene,
                              memory_per_scene, verbose)
        _drive(ray, pool, queue, results, report, board, retries, emit)
    except KeyboardInterrupt:
        report.interrupted = True
        for r in results:
            if r.status == "not run" and not r.reason:
                r.reason = "interrupted"
    finally:
        _stop_workers(ray, pool, started_here)
        report.wall_s = time.perf_counter() - t_start
    return report


def _scenes_to_build(scenes: Sequence[Path], labels: list[str], results: list[SceneResult],
                     cfg: PipelineConfig, resume: bool, emit: Event) -> deque[_Task]:
    """The scenes to map, in order; with ``resume``, those whose map is current are marked
    skipped in ``results`` instead."""
    queue: deque[_Task] = deque()
    for i, (label, path) in enumerate(zip(labels, scenes)):
        if resume:
            from .fingerprint import map_is_current
            current, why = map_is_current(path, cfg)
            if current:
                results[i].status, results[i].reason = "skipped", f"up to date ({why})"
                emit("skip", {"scene": label, "reason": why})
                continue
            log.debug("%s: rebuilding (%s)", label, why)
        queue.append(_Task(i, Path(path), label))
    return queue


def _connect(ray, report: BatchReport, started_here: bool, address: str | None,
             verbose: bool) -> dict[str, float]:
    """Start or join Ray (unless this process is already connected); the cluster's resources,
    also recorded in ``report.ray``."""
    if started_here:
        report.ray.update(start_ray(address, verbose))
    else:
        report.ray["address"] = "already connected"
        report.ray["resources"] = dict(ray.cluster_resources())
    return report.ray["resources"]


def _start_workers(ray, n: int, cfg: PipelineConfig, threads: int | None, cpus: float,
                   gpus: float, memory: int | None, verbose: bool) -> list[_Worker]:
    """``n`` SceneWorker actors, each reserving the per-scene resources (restarted by Ray when
    their process dies; each loads the models once)."""
    options: dict[str, Any] = dict(num_cpus=cpus, num_gpus=gpus, max_restarts=-1,
                                   max_task_retries=0)
    if memory:
        options["memory"] = memory
    actor_cls = ray.remote(SceneWorker).options(**options)
    level = logging.INFO if verbose else logging.WARNING
    return [_Worker(i, actor_cls.remote(cfg, threads, gpus > 0, level,
                                        os.environ.get(TEST_PAUSE_ENV) or None))
            for i in range(n)]


def _stop_workers(ray, pool: list[_Worker], started_here: bool) -> None:
    """Kill the workers (for good) and shut down the Ray this batch started."""
    for w in pool:
        try:
            ray.kill(w.actor, no_restart=True)
        except Exception:     # already dead; nothing to release
            pass
    if started_here and ray.is_initialized():
        ray.shutdown()


def _drive(ray, pool: list[_Worker], queue: deque[_Task], results: list[SceneResult],
           report: BatchReport, board, retries: int, emit: Event) -> None:
    """Hand scenes to idle workers until every scene has an outcome."""
    _Driver(ray, pool, queue, results, report, board, retries, emit).run()


class _Driver:
    """The dispatch loop: workers' readiness and builds are Ray object refs waited on together."""

    RESTART_POLL_S = 1.0        # a restarting actor answers "unavailable"; ask again after this

    def __init__(self, ray, pool, queue, results, report, board, retries, emit) -> None:
        self.ray, self.queue, self.results, self.report = ray, queue, results, report
        self.board, self.retries, self.emit = board, retries, emit
        self.pending: dict[Any, tuple[str, _Worker, _Task | None]] = {
            w.actor.ready.remote(): ("ready", w, None) for w in pool}
        self.idle: list[_Worker] = []
        self.later: list[tuple[float, _Worker]] = []      # (when, worker): ask ready() again
        self.load_errors: list[str] = []

    def running(self) -> int:
        return sum(kind == "build" for kind, _, _ in self.pending.values())

    def run(self) -> None:
        last_poll = 0.0
        while self.queue or self.running():
            if not self.idle and not self.pending and not self.later:
                self._no_workers_left()
                break
            now = time.monotonic()
            for item in [x for x in self.later if x[0] <= now]:
                self.later.remove(item)
                self.pending[item[1].actor.ready.remote()] = ("ready", item[1], None)
            if self.pending:
                done, _ = self.ray.wait(list(self.pending), num_returns=1, timeout=0.5)
            else:
                done = []
                time.sleep(0.2)
            for ref in done:
                self._handle(ref)
            self._dispatch()
            now = time.monotonic()
            if now - last_poll > 1.0 and self.running():
                last_poll = now
                self._poll_stages()

    def _handle(self, ref) -> None:
        from ray.exceptions import ActorUnavailableError, RayActorError
        kind, worker, task = self.pending.pop(ref)
        try:
            value = self.ray.get(ref)
        except ActorUnavailableError as exc:
            if kind == "ready":      # restarting (after a death): not a new death, ask again
                self.later.append((time.monotonic() + self.RESTART_POLL_S, worker))
            else:
                self._worker_died(worker, task, exc)
            return
        except RayActorError as exc:
            self._worker_died(worker, task, exc)
            return
        if kind == "ready":
            self._ready(worker, value)
        else:
            worker.deaths = 0
            _finish(task, value, self.results, self.emit)
            self.idle.append(worker)

    def _ready(self, worker: _Worker, value: dict[str, Any]) -> None:
        worker.info, worker.pid = value, value["pid"]
        if value.get("error"):
            self.load_errors.append(value["error"])
            self.report.notes.append(f"worker {worker.index} (pid {worker.pid}) could not load "
                                     f"the models: {value['error']}")
            self._retire(worker, value["error"])
            return
        worker.usable = True
        _record_worker(self.report, worker)
        self.emit("workers", {"worker": worker.index, "info": value})
        self.idle.append(worker)

    def _dispatch(self) -> None:
        """Queued scenes to idle workers; a retried scene prefers a worker it has not used."""
        while self.idle and self.queue:
            task = self.queue.popleft()
            fresh = [w for w in self.idle if w.index not in task.tried_on]
            worker = (fresh or self.idle)[0]
            self.idle.remove(worker)
            task.attempts += 1
            task.tried_on.add(worker.index)
            self.results[task.index].attempts = task.attempts
            ref = worker.actor.build.remote(str(task.path), task.label, self.board)
            self.pending[ref] = ("build", worker, task)
            self.emit("start", {"scene": task.label, "worker": worker.index, "pid": worker.pid,
                                "attempt": task.attempts})

    def _poll_stages(self) -> None:
        from ray.exceptions import GetTimeoutError, RayActorError
        try:
            self.emit("stage", {"stages": self.ray.get(self.board.snapshot.remote(), timeout=2)})
        except (GetTimeoutError, RayActorError):
            pass

    def _worker_died(self, worker: _Worker, task: _Task | None, exc: Exception) -> None:
        """A worker process died (killed, out of memory, node lost): retry its scene (bounded),
        then let Ray restart the worker (models reloaded), unless it keeps dying."""
        worker.deaths += 1
        what = (f"worker process {worker.pid} died ({type(exc).__name__}: killed, out of "
                "memory, or its node was lost)")
        log.debug("worker %d: %s", worker.index, exc)
        if task is not None:
            task.deaths.append(what)
            if task.attempts <= self.retries:
                self.queue.appendleft(task)
                self.emit("retry", {"scene": task.label, "reason": what,
                                    "attempt": task.attempts + 1, "of": self.retries + 1})
            else:
                r = self.results[task.index]
                r.status = "failed"
                r.reason = f"the worker died on each of {task.attempts} attempt(s); last: {what}"
                self.emit("done", {"result": r})
        if worker.deaths > self.retries:     # dies again and again: stop restarting it
            self._retire(worker, f"died {worker.deaths} times in a row; last: {what}")
            return
        self.pending[worker.actor.ready.remote()] = ("ready", worker, None)

    def _retire(self, worker: _Worker, why: str) -> None:
        worker.retired = True
        try:
            self.ray.kill(worker.actor, no_restart=True)
        except Exception:        # already gone
            pass
        self.emit("worker_failed", {"worker": worker.index, "error": why})

    def _no_workers_left(self) -> None:
        """Every worker failed to load or was retired: fail the queued scenes (BatchError when
        nothing was built and the models could not be loaded: a configuration problem)."""
        why = (f"no worker could load the models: {self.load_errors[-1]}" if self.load_errors
               else "every worker died")
        if self.load_errors and not any(r.status == "built" for r in self.results):
            raise BatchError(why)
        for task in self.queue:
            r = self.results[task.index]
            r.status, r.reason = "failed", why
            self.emit("done", {"result": r})
        self.queue.clear()


def _record_worker(report: BatchReport, worker: _Worker) -> None:
    """The worker's entry in the report (a restarted worker: its new pid, restarts counted)."""
    info = {"worker": worker.index, "restarts": 0,
            **{k: worker.info.get(k) for k in ("pid", "host", "device", "load_s", "threads")}}
    for i, old in enumerate(report.workers):
        if old["worker"] == worker.index:
            info["restarts"] = old["restarts"] + 1
            info["load_s"] = round(old["load_s"] + (info["load_s"] or 0), 3)
            report.workers[i] = info
            return
    report.workers.append(info)


def _finish(task: _Task, value: dict[str, Any], results: list[SceneResult],
            emit: Event) -> None:
    r = results[task.index]
    r.status = value["status"]
    r.reason = value.get("reason", "")
    r.seconds = round(value["seconds"], 3) if value.get("seconds") is not None else None
    r.instances, r.generation = value.get("instances"), value.get("generation")
    r.worker_pid, r.timings = value.get("pid"), value.get("timings", {})
    if task.deaths and r.status == "built":
        r.reason = f"built after {len(task.deaths)} worker death(s): {task.deaths[-1]}"
    emit("done", {"result": r})
