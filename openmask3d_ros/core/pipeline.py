"""The OpenMask3D pipeline over a scene folder: proposals -> DBSCAN split -> features -> map."""
from __future__ import annotations

import logging
import platform
import time
from contextlib import contextmanager
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import numpy as np

from .. import __version__
from .camera import usable_pose
from .config import PipelineConfig
from .errors import InputError, input_error_from
from .dbscan_split import split_masks
from .features import FeatureReport, Progress, compute_features
from .fidelity import Fidelity
from .instance_map import MAP_DIRNAME, InstanceMap
from .interfaces import Proposals
from .map_meta import FrameUse, InstanceRecord, MapMeta, ModelNames, StructureRecord
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


@dataclass
class BuildInputs:
    """What a build reads: the scene, its keyframes (usable poses) and the cloud."""

    scene: SceneFolder
    frame_ids: list[str]
    pose_skipped: dict[str, str]
    points: np.ndarray
    colors: np.ndarray | None
    cloud_source: str            # "cloud.ply" (the scene's) or "given"
    frame_step: int              # relative to the original stream

    @property
    def num_keyframes(self) -> int:
        return len(self.frame_ids) + len(self.pose_skipped)


def run_pipeline(scene_dir: str | Path | SceneFolder, cfg: PipelineConfig | None = None,
                 models: Models | None = None, *, masks: np.ndarray | str | Path | None = None,
                 cloud: tuple[np.ndarray, np.ndarray | None] | None = None,
                 frame_step: int | None = None, progress: Progress | None = None,
                 out_dir: str | Path | None = None) -> InstanceMap:
    """Run OpenMask3D on a scene folder and save the map (``out_dir`` or ``SCENE/openmask3d``).

    ``masks``: precomputed P x M masks (array or .npy/.pt path) instead of the proposal backend.
    ``cloud``: (points (N, 3), colours (N, 3) uint8 or None) to build on instead of the scene's
    cloud.ply; the map keeps its own copy, so the scene's cloud file is never overwritten.
    ``frame_step``: overrides ``cfg.frame_step`` (see ``read_inputs``).
    ``progress(stage, done, total)`` is called as stages advance.
    """
    cfg = cfg or PipelineConfig()
    cfg.validate()
    inputs = read_inputs(scene_dir, cfg, frame_step, cloud)
    models = models or build_models(cfg)
    timings: dict[str, float] = {}
    with _stage("proposals", progress, timings):
        proposals, source = propose(inputs, models, masks)
        split = split_proposals(inputs.points, proposals, source, cfg)
    log.info("proposals: %d masks from %s, %d after DBSCAN split (%.1f s)",
             proposals.masks.shape[1], source, split.masks.shape[1], timings["proposals_s"])
    with _stage("features", None, timings):
        features, report = compute_features(inputs.points, split.masks, inputs.scene,
                                            inputs.frame_ids, models.segmenter,
                                            models.image_encoder, cfg, progress)
    check_frames_read(inputs, report)
    log.info("features: %d instances, %d/%d frames used, %d segmenter images, %d crops (%.1f s)",
             split.masks.shape[1], len(report.frames_used), len(inputs.frame_ids),
             report.segmenter_images, report.crops_encoded, timings["features_s"])
    meta = map_meta(inputs, split, report, models, source, cfg, timings)
    imap = InstanceMap.from_masks(inputs.points, split.masks, features, meta)
    # floor, walls, table tops: tagged once here, left out of object queries (core/structure.py)
    meta.structure = StructureRecord(**structure_meta(inputs.points, imap.point_indices,
                                                      cfg.structure))
    out = Path(out_dir) if out_dir else inputs.scene.root / MAP_DIRNAME
    imap.save(out, keep=cfg.keep_generations, colors=inputs.colors)
    if progress:
        progress("done", 1, 1)
    log.info("map saved to %s (%s)", out, meta.generation)
    return imap


@contextmanager
def _stage(name: str, progress: Progress | None, timings: dict[str, float]):
    """Time a stage into ``timings[name + '_s']`` and report its start and end."""
    if progress:
        progress(name, 0, 1)
    t0 = time.perf_counter()
    yield
    timings[f"{name}_s"] = time.perf_counter() - t0
    if progress:
        progress(name, 1, 1)


def read_inputs(scene_dir: str | Path | SceneFolder, cfg: PipelineConfig,
                frame_step: int | None = None,
                cloud: tuple[np.ndarray, np.ndarray | None] | None = None) -> BuildInputs:
    """The scene's keyframes with usable poses and the cloud, checked before any costly stage.

    A folder whose scene.json has ``keyframe_step`` (recorded by the node) already holds
    keyframes: ``cfg.frame_step`` is then not applied again (``frame_step`` still is)."""
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
    # a run with no usable pose is an error, never an empty map
    frame_ids, pose_skipped = usable_poses(scene, frame_ids)
    if cloud is None:
        points, colors = check_cloud(*scene.cloud(), source=str(scene.cloud_path))
        source = scene.cloud_path.name
    else:
        (points, colors), source = check_cloud(*cloud), "given"
    return BuildInputs(scene, frame_ids, pose_skipped, points, colors, source,
                       step * (recorded or 1))


def propose(inputs: BuildInputs, models: Models, masks: np.ndarray | str | Path | None = None
            ) -> tuple[Proposals, str]:
    """(the class-agnostic proposals, their source: the backend's name or "precomputed")."""
    if masks is not None:
        return Proposals(_read_masks(masks, len(inputs.points))), "precomputed"
    segments = None
    if models.proposals.uses_segments and inputs.cloud_source != "given":
        # ScanNet superpoints belong to the scene's own cloud
        from .proposals.mask3d.segments import find_segments
        segments = find_segments(inputs.scene.root, len(inputs.points))
    return models.proposals.propose(inputs.points, inputs.colors, segments), \
        models.proposals.name


def split_proposals(points: np.ndarray, proposals: Proposals, source: str,
                    cfg: PipelineConfig) -> Proposals:
    """Masks split into spatially contiguous parts (DBSCAN), unless they are final already."""
    if proposals.final:     # official Mask3D post-processing: split, scored, sorted already
        return proposals
    if source == "precomputed" and cfg.fidelity == Fidelity.OFFICIAL:
        # the official feature stage takes a masks file as it is (no split, no size filter);
        # only empty columns go (a map instance needs points); each keeps its file column
        columns = np.flatnonzero(proposals.masks.any(axis=0))
        return Proposals(proposals.masks[:, columns], final=True, columns=columns)
    p = cfg.proposals
    return Proposals(split_masks(points, proposals.masks, p.dbscan_eps, p.dbscan_min_points,
                                 p.min_mask_points), final=True)


def check_frames_read(inputs: BuildInputs, report: FeatureReport) -> None:
    """Fold the pose-skipped frames into the report; SceneError when no keyframe was readable."""
    report.frames_skipped.update(inputs.pose_skipped)
    if len(set(report.frames_skipped) & set(inputs.frame_ids)) == len(inputs.frame_ids):
        raise SceneError(f"{inputs.scene.root}: none of the {len(inputs.frame_ids)} usable-pose "
                         f"keyframes could be read ({_first_reason(report.frames_skipped)}); "
                         "no map was written")


def map_meta(inputs: BuildInputs, proposals: Proposals, report: FeatureReport, models: Models,
             source: str, cfg: PipelineConfig, timings: dict[str, float]) -> MapMeta:
    """The map's metadata: inputs, models, configuration and per-instance diagnostics."""
    names = ModelNames(**models.describe())
    names.proposals = source
    scores = proposals.scores if proposals.scores is not None else [None] * len(report.views)
    columns = proposals.columns if proposals.columns is not None else [None] * len(scores)
    instances = [InstanceRecord(views=v, point_box_fallbacks=int(f), num_points=int(n),
                                proposal_score=None if s is None else float(s),
                                mask_column=None if c is None else int(c))
                 for v, f, n, s, c in zip(report.views, report.fallbacks,
                                          proposals.masks.sum(axis=0), scores, columns)]
    return MapMeta(
        scene=inputs.scene.root.name, cloud_source=inputs.cloud_source, models=names,
        config=cfg.to_dict(), frame_step=inputs.frame_step,
        keyframe_step=inputs.scene.keyframe_step, versions=library_versions(), timings=timings,
        frames=FrameUse(inputs.num_keyframes, report.frames_used, report.frames_skipped),
        segmenter_images=report.segmenter_images, crops_encoded=report.crops_encoded,
        # visibility.share_fraction > 0: frames embedded with and without sharing, embeddings
        # saved, visible points lost (core/view_sharing.py); None: the paper's top-k views
        view_sharing=report.view_sharing or None, instances=instances,
        created=time.strftime("%Y-%m-%dT%H:%M:%S%z"))


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
