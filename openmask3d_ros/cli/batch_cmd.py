"""``openmask3d batch``: the maps of many scene folders on Ray (local by default, or a cluster)."""
from __future__ import annotations

import argparse
import contextlib
import json
import signal
import sys
from pathlib import Path

from . import CliError
from .scene_cmds import add_build_options, build_config

# Ray, torch and the pipeline are imported when the command runs (core/batch.py), never by
# `openmask3d --help`, `openmask3d run` or the ROS node.


DESCRIPTION = (
    "Build the OpenMask3D map of every scene folder given (folders, glob patterns, or folders of "
    "scene folders), as `openmask3d run` does for one, on Ray: a local Ray on this machine by "
    "default, or an existing cluster with --ray-address. Each worker loads the models once and "
    "maps scene after scene. A scene that fails is reported and the others go on; a worker that "
    "dies has its scene retried. Exit status 0 only when every scene has a map.")


def register(subparsers) -> None:
    """Add the ``batch`` subcommand."""
    p = subparsers.add_parser("batch", description=DESCRIPTION, help=(
        "build the maps of many scene folders on Ray (models loaded once per worker; "
        "resumable)"))
    p.add_argument("scenes", nargs="+", help="scene folders, glob patterns ('data/scene*'), or "
                                             "folders of scene folders")
    add_build_options(p, "inside each worker")
    p.add_argument("--resume", action="store_true",
                   help="skip scenes whose current map was built from the same cloud, keyframes "
                        "and configuration")
    p.add_argument("--json", action="store_true",
                   help="print the summary (and --eval results) as one JSON object on stdout")
    _add_ray_options(p.add_argument_group("Ray options (where and how the scenes run)"))
    p.add_argument("--eval", action="store_true",
                   help="then evaluate all mapped scenes together against their ground truth "
                        "(matches pooled over scenes, as `openmask3d eval`)")
    from .eval_cmd import add_protocol_options
    add_protocol_options(p.add_argument_group("evaluation options (with --eval)"))
    p.set_defaults(func=cmd_batch)


def _add_ray_options(g) -> None:
    g.add_argument("--ray-address", default=None,
                   help="an existing Ray cluster: 'auto' (the one `ray start` runs here) or "
                        "HOST:PORT (default: start a local Ray on this machine)")
    g.add_argument("--workers", type=int, default=None,
                   help="workers (each loads the models once; default: as many as the "
                        "resources per scene fit in the cluster, at most one per scene)")
    g.add_argument("--cpus-per-scene", type=float, default=1.0,
                   help="CPUs a worker reserves; its thread pools get as many (default 1)")
    g.add_argument("--gpus-per-scene", type=float, default=None,
                   help="GPUs a worker reserves, fractions allowed (0.5: two workers share a "
                        "GPU; default 1 when the cluster has GPUs, else 0)")
    g.add_argument("--memory-per-scene", default=None,
                   help="memory a worker reserves in Ray's scheduling (e.g. 8GB)")
    g.add_argument("--retries", type=int, default=2,
                   help="times a scene whose worker died is tried again (default 2)")


class BatchProgress:
    """Progress on stderr: a bar over scenes with the stage of each running scene (on a
    terminal), and one line per scene event (always, so that logs show them too)."""

    def __init__(self, total: int) -> None:
        from tqdm import tqdm
        self.bar = tqdm(total=total, desc="scenes", unit="scene", file=sys.stderr,
                        disable=not sys.stderr.isatty(), dynamic_ncols=True)
        self.total = total

    def line(self, text: str) -> None:
        if self.bar.disable:
            print(text, file=sys.stderr, flush=True)
        else:
            self.bar.write(text, file=sys.stderr)

    def __call__(self, kind: str, payload: dict) -> None:
        if kind == "skip":
            self.line(f"skip   {payload['scene']}: up to date ({payload['reason']})")
            self.bar.update(1)
        elif kind == "workers":
            info = payload["info"]
            self.line(f"worker {payload['worker']} ready: pid {info['pid']} on {info['host']}, "
                      f"device {info.get('device')}, {info.get('threads') or 'default'} "
                      f"thread(s), models loaded in {info['load_s']:.1f} s")
        elif kind == "worker_failed":
            self.line(f"worker {payload['worker']} given up: {payload['error']}")
        elif kind == "start":
            again = f" (attempt {payload['attempt']})" if payload["attempt"] > 1 else ""
            self.line(f"start  {payload['scene']} on worker {payload['worker']} "
                      f"(pid {payload['pid']}){again}")
        elif kind == "retry":
            self.line(f"retry  {payload['scene']}: {payload['reason']}; attempt "
                      f"{payload['attempt']} of {payload['of']}")
        elif kind == "done":
            r = payload["result"]
            if r.status == "built":
                self.line(f"built  {r.scene}: {r.instances} instances in {r.seconds:.1f} s "
                          f"({r.generation})")
            else:
                self.line(f"FAILED {r.scene}: {r.reason}")
            self.bar.update(1)
        elif kind == "stage" and not self.bar.disable:
            stages = payload["stages"]
            self.bar.set_postfix_str(" | ".join(
                f"{scene}: {stage}" + (f" {done}/{total}" if total > 1 else "")
                for scene, (stage, done, total) in sorted(stages.items())), refresh=True)

    def close(self) -> None:
        self.bar.close()


def _sigterm(signum, frame):
    raise KeyboardInterrupt       # a scheduler's stop: shut the workers down, print the summary


def cmd_batch(args: argparse.Namespace) -> int:
    from ..core.batch import BatchError, find_scene_folders, parse_size
    cfg = build_config(args)      # the same configuration `openmask3d run` would use
    try:
        scenes, notes = find_scene_folders(args.scenes)
        memory = parse_size(args.memory_per_scene)
    except BatchError as exc:
        raise CliError(str(exc)) from None
    for note in notes:
        print(f"note: {note}", file=sys.stderr)
    report = _build_maps(args, scenes, cfg, memory)
    report.notes[:0] = notes
    status = 130 if report.interrupted else 0 if report.ok else 1
    evaluation, eval_error = None, None
    if args.eval and not report.interrupted:
        evaluation, eval_error = _evaluate(args, report)
        if eval_error and status == 0:
            status = 2
    if args.json:
        out = report.to_dict()
        if args.eval:
            out["eval"] = evaluation[0].to_dict() if evaluation else {"error": eval_error}
        print(json.dumps(out, indent=2))
        return status
    print_summary(report)
    if evaluation:
        from .eval_cmd import print_report
        print()
        print_report(args, *evaluation)
    elif eval_error:
        print(f"openmask3d batch: eval: error: {eval_error}", file=sys.stderr)
    return status


def _build_maps(args: argparse.Namespace, scenes: list[Path], cfg, memory: int | None):
    """run_batch with the progress on stderr; SIGTERM stops it as Ctrl-C does."""
    from ..core.batch import BatchError, run_batch
    progress = BatchProgress(len(scenes))
    previous = signal.signal(signal.SIGTERM, _sigterm)
    # Ray's log monitor prints workers' and the raylet's lines to sys.stdout: send them to
    # stderr with the progress, so stdout holds only the summary (one JSON object with --json)
    try:
        with contextlib.redirect_stdout(sys.stderr):
            return run_batch(scenes, cfg, ray_address=args.ray_address,
                             cpus_per_scene=args.cpus_per_scene,
                             gpus_per_scene=args.gpus_per_scene, memory_per_scene=memory,
                             workers=args.workers, resume=args.resume, retries=args.retries,
                             event=progress, verbose=args.verbose or args.debug)
    except BatchError as exc:
        raise CliError(str(exc)) from None
    finally:
        signal.signal(signal.SIGTERM, previous)
        progress.close()


def _evaluate(args: argparse.Namespace, report) -> tuple[tuple | None, str | None]:
    """(``evaluate_paths``' result over the scenes that have a map, or None; the error that
    prevented it, or None). Notes in the report when some scenes were left out."""
    mapped = [Path(r.path) for r in report.scenes if r.has_map]
    if not mapped:
        return None, "no scene has a map to evaluate"
    from .eval_cmd import evaluate_paths
    try:
        evaluation = evaluate_paths(args, mapped, "openmask3d", {})
    except (OSError, ValueError, KeyError) as exc:
        return None, str(exc.args[0] if isinstance(exc, KeyError) and exc.args else exc)
    if evaluation and len(mapped) < len(report.scenes):
        report.notes.append(f"evaluated {len(mapped)} of {len(report.scenes)} scenes: the "
                            "others have no map")
    return evaluation, None


def print_summary(report) -> None:
    """Scenes built, skipped and failed (with the reason), time per scene, total, throughput."""
    width = max(len(r.scene) for r in report.scenes)
    print(f"{'scene':<{width}}  {'status':<8} {'seconds':>8} {'instances':>9}  notes")
    for r in report.scenes:
        secs = f"{r.seconds:.1f}" if r.seconds is not None else "-"
        inst = str(r.instances) if r.instances is not None else "-"
        print(f"{r.scene:<{width}}  {r.status:<8} {secs:>8} {inst:>9}  {r.reason}")
    d = report.to_dict()
    print()
    print(f"{d['built']} built, {d['skipped']} skipped, {d['failed']} failed"
          + (f", {d['not_run']} not run (interrupted)" if d["not_run"] else "")
          + f" of {len(report.scenes)} scenes in {report.wall_s:.1f} s")
    if d["built"]:
        print(f"{d['mean_scene_s']:.1f} s per scene on a worker; throughput "
              f"{d['scenes_per_hour']:.0f} scenes/hour (wall time, Ray start and model loading "
              "included)")
    if report.workers:
        loads = ", ".join(f"{w['load_s']:.1f}" for w in report.workers)
        per = report.ray.get("per_scene", {})
        print(f"ray: {report.ray.get('address')} {report.ray.get('resources')}; "
              f"{len(report.workers)} worker(s), each {per.get('CPU')} CPU / {per.get('GPU')} "
              f"GPU; models loaded in {loads} s")
    for note in report.notes:
        print(f"note: {note}")
    if report.interrupted:
        print("interrupted: the same command with --resume builds the scenes still missing")
