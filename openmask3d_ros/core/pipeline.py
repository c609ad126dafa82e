"""The OpenMask3D pipeline over a scene folder: proposals -> DBSCAN split -> features -> map."""
from __future__ import annotations

import logging
import platform
import time
from importlib import metadata
from pathlib import Path

import numpy as np

from .. import __version__
from .config import PipelineConfig
from .dbscan_split import split_masks
from .features import Progress, compute_features
from .instance_map import MAP_DIRNAME, InstanceMap
from .models import Models, build_models
from .proposals.precomputed import load_masks
from .scene import SceneError, SceneFolder, check_cloud

log = logging.getLogger(__name__)


def library_versions() -> dict[str, str]:
    """Versions of the libraries that shape the results."""
    out = {"openmask3d_ros": __version__, "python": platform.python_version()}
    for dist in ("numpy", "scikit-learn", "torch", "open_clip_torch", "segment-anything",
                 "MinkowskiEngine"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            pass
    return out


def keyframes(scene: SceneFolder, frame_step: int) -> list[str]:
    """Every ``frame_step``-th frame of the scene."""
    if frame_step < 1:
        raise ValueError(f"frame_step must be >= 1, got {frame_step}")
    return scene.frame_ids[::frame_step]


def run_pipeline(scene_dir: str | Path | SceneFolder, cfg: PipelineConfig | None = None,
                 models: Models | None = None, masks: np.ndarray | str | Path | None = None,
                 progress: Progress | None = None, out_dir: str | Path | None = None,
                 frame_step: int | None = None,
                 cloud: tuple[np.ndarray, np.ndarray | None] | None = None) -> InstanceMap:
    """Run OpenMask3D on a scene folder and save the map (``out_dir`` or ``SCENE/openmask3d``).

    ``masks``: precomputed P x M masks (array or .npy/.pt path) instead of the proposal backend.
    ``frame_step``: overrides ``cfg.frame_step`` (1 when the folder holds keyframes only).
    ``progress(stage, done, total)`` is called as stages advance.
    ``cloud``: (points (N, 3), colours (N, 3) uint8 or None) to build on instead of the scene's
    cloud.ply; the map keeps its own copy, so the scene's cloud file is never overwritten.
    """
    cfg = cfg or PipelineConfig()
    scene = scene_dir if isinstance(scene_dir, SceneFolder) else SceneFolder(scene_dir)
    step = cfg.frame_step if frame_step is None else frame_step
    frame_ids = keyframes(scene, step)
    if not frame_ids:
        raise SceneError(f"{scene.root}: no frames")
    models = models or build_models(cfg)
    timings: dict[str, float] = {}

    def stage(name: str, done: int = 0, total: int = 1) -> None:
        if progress:
            progress(name, done, total)

    t0 = time.perf_counter()
    if cloud is None:
        points, colors = check_cloud(*scene.cloud(), source=str(scene.cloud_path))
    else:
        points, colors = check_cloud(*cloud)
    stage("proposals")
    if masks is None:
        raw = models.proposals.propose(points, colors)
        proposal_name = models.proposals.name
    else:
        raw = load_masks(masks, len(points)) if isinstance(masks, (str, Path)) else np.asarray(masks)
        if raw.shape[0] != len(points):
            raise ValueError(f"masks have {raw.shape[0]} rows but the cloud has {len(points)} points")
        raw = raw.astype(bool)
        proposal_name = "precomputed"
    p = cfg.proposals
    split = split_masks(points, raw, p.dbscan_eps, p.dbscan_min_points, p.min_mask_points)
    timings["proposals_s"] = time.perf_counter() - t0
    stage("proposals", 1, 1)
    log.info("proposals: %d masks from %s, %d after DBSCAN split (%.1f s)", raw.shape[1],
             proposal_name, split.shape[1], timings["proposals_s"])

    t1 = time.perf_counter()
    features, report = compute_features(points, split, scene, frame_ids, models.segmenter,
                                        models.image_encoder, cfg, progress)
    timings["features_s"] = time.perf_counter() - t1
    log.info("features: %d instances, %d/%d frames used, %d segmenter images, %d crops (%.1f s)",
             split.shape[1], len(report.frames_used), len(frame_ids), report.segmenter_images,
             report.crops_encoded, timings["features_s"])

    described = models.describe()
    described["proposals"] = proposal_name
    meta = {
        "scene": str(scene.root.resolve()),
        "cloud_path": str(scene.cloud_path.resolve()),
        "models": described,
        "config": cfg.to_dict(),
        "frame_step": step,
        "versions": library_versions(),
        "timings": timings,
        "frames": {"keyframes": len(frame_ids), "used": report.frames_used,
                   "skipped": report.frames_skipped},
        "segmenter_images": report.segmenter_images,
        "crops_encoded": report.crops_encoded,
        "instances": [{"views": v, "point_box_fallbacks": f, "num_points": int(n)}
                      for v, f, n in zip(report.views, report.fallbacks, split.sum(axis=0))],
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    imap = InstanceMap.from_masks(points, split, features, meta)
    out = Path(out_dir) if out_dir else scene.root / MAP_DIRNAME
    imap.save(out)
    stage("done", 1, 1)
    log.info("map saved to %s", out)
    return imap
