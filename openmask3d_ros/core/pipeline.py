"""The OpenMask3D pipeline over a scene folder: proposals -> DBSCAN split -> features -> map."""
from __future__ import annotations

import logging
import platform
import time
from importlib import metadata
from pathlib import Path

import numpy as np

from .. import __version__
from .camera import usable_pose
from .config import PipelineConfig
from .errors import InputError, input_error_from
from .dbscan_split import split_masks
from .features import Progress, compute_features
from .instance_map import MAP_DIRNAME, InstanceMap
from .models import Models, build_models
from .proposals.precomputed import load_masks
from .scene import SceneError, SceneFolder, check_cloud
from .structure import structure_meta

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
    ``frame_step``: overrides ``cfg.frame_step``. A folder whose scene.json has ``keyframe_step``
    (recorded by the node) already holds keyframes: ``cfg.frame_step`` is then not applied again,
    and meta.json records the step relative to the original stream.
    ``progress(stage, done, total)`` is called as stages advance.
    ``cloud``: (points (N, 3), colours (N, 3) uint8 or None) to build on instead of the scene's
    cloud.ply; the map keeps its own copy, so the scene's cloud file is never overwritten.
    """
    cfg = cfg or PipelineConfig()
    cfg.validate()
    scene = scene_dir if isinstance(scene_dir, SceneFolder) else SceneFolder(scene_dir)
    recorded = scene.keyframe_step
    if frame_step is not None:
        step = frame_step
    elif recorded is not None:
        step = 1
        log.info("%s holds keyframes (every %dth frame of the stream): no further decimation",
                 scene.root, recorded)
    else:
        step = cfg.frame_step
    frame_ids = keyframes(scene, step)
    if not frame_ids:
        raise SceneError(f"{scene.root}: no frames (need color/, depth/ and pose/ files with "
                         "matching names)")
    # Unusable poses are found before the costly stages; a run with none usable is an error,
    # never an empty map.
    frame_ids, pose_skipped = usable_poses(scene, frame_ids)
    if cloud is None:
        points, colors = check_cloud(*scene.cloud(), source=str(scene.cloud_path))
        cloud_source = scene.cloud_path.name
    else:
        points, colors = check_cloud(*cloud)
        cloud_source = "given"
    models = models or build_models(cfg)
    timings: dict[str, float] = {}

    def stage(name: str, done: int = 0, total: int = 1) -> None:
        if progress:
            progress(name, done, total)

    t0 = time.perf_counter()
    stage("proposals")
    scores = source_columns = None
    if masks is None:
        if hasattr(models.proposals, "segments"):    # Mask3D: ScanNet superpoint voting
            from .proposals.mask3d.segments import find_segments
            models.proposals.segments = find_segments(scene.root, len(points)) \
                if cloud is None else None
        raw = models.proposals.propose(points, colors)
        proposal_name = models.proposals.name
        scores = getattr(models.proposals, "last_scores", None)
    else:
        raw = _read_masks(masks, len(points))
        proposal_name = "precomputed"
    p = cfg.proposals
    if scores is not None:      # official Mask3D post-processing: split, scored, sorted already
        split = raw
    elif proposal_name == "precomputed" and cfg.fidelity == "official":
        # the official feature stage takes a masks file as it is (no split, no size filter);
        # only empty columns go (a map instance needs points); each keeps its file column
        source_columns = np.flatnonzero(raw.any(axis=0))
        split = raw[:, source_columns]
    else:
        split = split_masks(points, raw, p.dbscan_eps, p.dbscan_min_points, p.min_mask_points)
    timings["proposals_s"] = time.perf_counter() - t0
    stage("proposals", 1, 1)
    log.info("proposals: %d masks from %s, %d after DBSCAN split (%.1f s)", raw.shape[1],
             proposal_name, split.shape[1], timings["proposals_s"])

    t1 = time.perf_counter()
    features, report = compute_features(points, split, scene, frame_ids, models.segmenter,
                                        models.image_encoder, cfg, progress)
    timings["features_s"] = time.perf_counter() - t1
    report.frames_skipped.update(pose_skipped)
    if len(set(report.frames_skipped) & set(frame_ids)) == len(frame_ids):
        raise SceneError(f"{scene.root}: none of the {len(frame_ids)} usable-pose keyframes could "
                         f"be read ({_first_reason(report.frames_skipped)}); no map was written")
    log.info("features: %d instances, %d/%d frames used, %d segmenter images, %d crops (%.1f s)",
             split.shape[1], len(report.frames_used), len(frame_ids), report.segmenter_images,
             report.crops_encoded, timings["features_s"])

    described = models.describe()
    described["proposals"] = proposal_name
    meta = {
        "scene": scene.root.name,
        "cloud_source": cloud_source,
        "models": described,
        "config": cfg.to_dict(),
        "frame_step": step * (recorded or 1),
        "keyframe_step": recorded,
        "versions": library_versions(),
        "timings": timings,
        "frames": {"keyframes": len(frame_ids) + len(pose_skipped), "used": report.frames_used,
                   "skipped": report.frames_skipped},
        "segmenter_images": report.segmenter_images,
        "crops_encoded": report.crops_encoded,
        # visibility.share_fraction > 0: frames embedded with and without sharing, embeddings
        # saved, visible points lost (core/view_sharing.py); null: the paper's top-k views
        "view_sharing": report.view_sharing or None,
        "instances": [{"views": v, "point_box_fallbacks": f, "num_points": int(n)}
                      for v, f, n in zip(report.views, report.fallbacks, split.sum(axis=0))],
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    if scores is not None:      # Mask3D scores, highest first; equal features keep this order
        for inst, score in zip(meta["instances"], scores):
            inst["proposal_score"] = float(score)
    if source_columns is not None:
        for inst, col in zip(meta["instances"], source_columns):
            inst["mask_column"] = int(col)
    imap = InstanceMap.from_masks(points, split, features, meta)
    # floor, walls, table tops: tagged once here, left out of object queries (core/structure.py)
    imap.meta["structure"] = structure_meta(points, imap.point_indices, cfg.structure)
    out = Path(out_dir) if out_dir else scene.root / MAP_DIRNAME
    gen = imap.save(out, keep=cfg.keep_generations, colors=colors)
    imap.meta.update(map_dir=str(gen), generation=gen.name)
    stage("done", 1, 1)
    log.info("map saved to %s (%s)", out, gen.name)
    return imap


def usable_poses(scene: SceneFolder, frame_ids: list[str]) -> tuple[list[str], dict[str, str]]:
    """(frames with a readable, finite pose, {skipped frame: why}); InputError when none."""
    good, skipped = [], {}
    for fid in frame_ids:
        try:
            if usable_pose(scene.pose(fid)) is None:
                raise SceneError("non-finite pose (lost tracking)")
            good.append(fid)
        except SceneError as exc:
            skipped[fid] = str(exc)
            log.warning("frame %s skipped: %s", fid, exc)
    if not good:
        raise SceneError(f"{scene.root}: all {len(frame_ids)} keyframes have unusable poses "
                         f"({_first_reason(skipped)}); no map was written")
    return good, skipped


def _first_reason(skipped: dict[str, str]) -> str:
    fid, why = next(iter(skipped.items()))
    more = f", and {len(skipped) - 1} more" if len(skipped) > 1 else ""
    return f"frame {fid}: {why}{more}"


def _read_masks(masks: np.ndarray | str | Path, num_points: int) -> np.ndarray:
    """Precomputed masks as a (P, M) bool array; any failure is an InputError naming the file."""
    if isinstance(masks, (str, Path)):
        try:
            raw = load_masks(masks, num_points)
        except InputError:
            raise
        except Exception as exc:     # numpy/torch decoding failures of a damaged file
            raise input_error_from(exc, Path(masks), "masks file") from exc
    else:
        raw = np.asarray(masks)
    if raw.ndim != 2 or raw.shape[0] != num_points:
        raise InputError(f"masks have shape {raw.shape} but the cloud has {num_points} points",
                         masks if isinstance(masks, (str, Path)) else None, "masks")
    return raw.astype(bool)
