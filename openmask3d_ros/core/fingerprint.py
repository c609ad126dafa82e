"""Fingerprints of a build's inputs, and whether a scene's saved map is up to date with them.

A map records (``MapMeta.inputs``) what its build read: the keyframes' color, depth and pose
files, the intrinsics, scene.json and the cloud file, hashed twice, by name + size + mtime (cheap
to recompute: one ``stat`` per file) and by content, plus a hash of the configuration keys that
shape the result. ``map_is_current`` recomputes them for a scene folder: the stat hash first, and
the content hash only when it differs (a copied folder has new mtimes but the same bytes), so
``openmask3d batch --resume`` can skip the scenes whose current map was built from the same cloud,
keyframes and configuration without reading hundreds of scenes' images.
"""
from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from .config import PipelineConfig
from .map_meta import InputsRecord

# keys that change how a build runs, not what it produces
RUN_ONLY_KEYS = ("threads", "keep_generations", "device", "cache")
_CHUNK = 1 << 20


def config_sha256(cfg: PipelineConfig) -> str:
    """SHA-256 of the configuration minus ``RUN_ONLY_KEYS`` (canonical JSON)."""
    data = {k: v for k, v in cfg.to_dict().items() if k not in RUN_ONLY_KEYS}
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()


def input_files(scene, frame_ids: Iterable[str], cloud: bool, cfg: PipelineConfig
                ) -> list[Path]:
    """The files a build of ``scene`` (a ``SceneFolder``) on ``frame_ids`` reads: each
    keyframe's color, depth and pose, the intrinsics, scene.json, the scene's cloud file
    (``cloud``) and a configured precomputed masks file. Frames in the scene's order."""
    wanted = set(frame_ids)
    files: list[Path] = []
    for fid in scene.frame_ids:
        if fid in wanted:
            files.extend(scene.frame_files(fid))
    intrinsic = scene.root / "intrinsic"
    if intrinsic.is_dir():
        files.extend(sorted(p for p in intrinsic.iterdir() if p.is_file()))
    if (scene.root / "scene.json").is_file():
        files.append(scene.root / "scene.json")
    if cloud:
        files.append(scene.cloud_path)
    if cfg.proposals.backend == "precomputed" and cfg.proposals.masks_file:
        files.append(Path(cfg.proposals.masks_file).expanduser())
    return files


def _name(root: Path, path: Path) -> str:
    try:
        return path.relative_to(root).as_posix()
    except ValueError:              # outside the scene (a configured masks file)
        return str(path)


def stat_sha256(root: Path, files: Sequence[Path]) -> str:
    """SHA-256 over each file's name (relative to ``root``), size and mtime (ns)."""
    h = hashlib.sha256()
    for path in files:
        st = path.stat()
        h.update(f"{_name(root, path)}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


def content_sha256(root: Path, files: Sequence[Path]) -> str:
    """SHA-256 over each file's name (relative to ``root``), size and bytes."""
    h = hashlib.sha256()
    for path in files:
        h.update(f"{_name(root, path)}\0{path.stat().st_size}\n".encode())
        with open(path, "rb") as fh:
            while chunk := fh.read(_CHUNK):
                h.update(chunk)
    return h.hexdigest()


def masks_sha256(masks) -> str | None:
    """SHA-256 of precomputed masks given to a build (a file's bytes or an array's), or None."""
    if masks is None:
        return None
    if isinstance(masks, (str, Path)):
        return content_sha256(Path(masks).parent, [Path(masks)])
    arr = np.ascontiguousarray(np.asarray(masks))
    return hashlib.sha256(f"{arr.dtype.str}{arr.shape}".encode() + arr.tobytes()).hexdigest()


def inputs_record(scene, frame_ids: Iterable[str], cloud_source: str, cfg: PipelineConfig,
                  masks=None) -> InputsRecord:
    """The fingerprint of a build of ``scene`` on ``frame_ids`` (the keyframes considered,
    pose-skipped ones included); ``cloud_source`` "given" leaves the scene's cloud file out."""
    frame_ids = list(frame_ids)
    files = input_files(scene, frame_ids, cloud_source != "given", cfg)
    return InputsRecord(keyframes=len(frame_ids), files=len(files),
                        stat_sha256=stat_sha256(scene.root, files),
                        content_sha256=content_sha256(scene.root, files),
                        config_sha256=config_sha256(cfg), masks_sha256=masks_sha256(masks))


def map_is_current(scene_dir: str | Path, cfg: PipelineConfig, frame_step: int | None = None,
                   map_dirname: str | None = None) -> tuple[bool, str]:
    """(whether the current map of ``scene_dir`` was built from the scene's present cloud,
    keyframes and this configuration, why not / how it was decided). Never raises for a
    damaged scene or map: those are simply not current (the build reports them)."""
    from . import map_versions
    from .instance_map import MAP_DIRNAME, read_meta
    from .pipeline import decimation, keyframes
    from .scene import SceneFolder

    root = Path(scene_dir) / (map_dirname or MAP_DIRNAME)
    gen = map_versions.current(root)
    if gen is None:
        return False, "no map"
    try:
        meta = read_meta(gen / "meta.json")
    except (OSError, ValueError) as exc:
        return False, f"map metadata unreadable ({exc})"
    if not (gen / "instances.npz").is_file() or meta.cloud is None or \
            not (gen / meta.cloud.file).is_file():
        return False, f"map {gen.name} is incomplete"
    rec = meta.inputs
    if rec is None:
        return False, "the map records no input fingerprint (built by an older version)"
    if rec.masks_sha256 is not None:
        return False, "the map was built from precomputed masks given on the command line"
    if rec.config_sha256 != config_sha256(cfg):
        return False, "the configuration differs"
    try:
        scene = SceneFolder(scene_dir)
        files = input_files(scene, keyframes(scene, decimation(scene, cfg, frame_step)), True,
                            cfg)
        if len(files) != rec.files:
            return False, "the keyframes differ"
        if stat_sha256(scene.root, files) == rec.stat_sha256:
            return True, "same files (name, size, mtime)"
        if content_sha256(scene.root, files) == rec.content_sha256:
            return True, "same file contents"
    except (OSError, ValueError) as exc:          # SceneError, InputError, a vanished file
        return False, f"scene unreadable ({exc})"
    return False, "the cloud or keyframe files changed"
