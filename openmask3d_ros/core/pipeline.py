"""The OpenMask3D pipeline over a scene folder: proposals -> DBSCAN split -> features -> map."""
from __future__ import annotations

import logging
import platform
import sys
import threading
import time
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import numpy as np

from .. import __version__
from .build_cache import (BuildCache, CacheMode, FeatureCache, digest, proposals_identity,
                          safe_identity)
from .camera import usable_pose
from .config import PipelineConfig
from .errors import BuildCancelled, InputError, input_error_from
from .dbscan_split import split_masks
from .features import FeatureReport, Progress, check_cancel, compute_features
from .fingerprint import inputs_record, masks_sha256
from .fidelity import Fidelity
from .instance_map import MAP_DIRNAME, InstanceMap, has_map
from .interfaces import Proposals
from .map_meta import (CacheRecord, CloudRecord, FrameUse, InstanceRecord, MapMeta, ModelNames,
                       StructureRecord)
from .models import Models, build_models
from .proposals.precomputed import binary_masks, load_masks
from .cloud_cap import CappedCloud, cap_cloud
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
    cap: CappedCloud | None = None   # how the input cloud was thinned (max_cloud_points)

    def per_input_point(self, rows: np.ndarray) -> np.ndarray:
        """``rows`` given per point of the input cloud (precomputed masks, superpoints), for
        the points built on."""
        index = self.cap.source_index if self.cap is not None else None
        return rows if index is None else rows[index]

    @property
    def input_points(self) -> int:
        """The point count of the input cloud (before max_cloud_points)."""
        return self.cap.source_points if self.cap is not None else len(self.points)

    @property
    def num_keyframes(self) -> int:
        return len(self.frame_ids) + len(self.pose_skipped)


def run_pipeline(scene_dir: str | Path | SceneFolder, cfg: PipelineConfig | None = None,
                 models: Models | None = None, *, masks: np.ndarray | str | Path | None = None,
                 cloud: tuple[np.ndarray, np.ndarray | None] | None = None,
                 frame_step: int | None = None, progress: Progress | None = None,
                 out_dir: str | Path | None = None,
                 cache: CacheMode | str | bool | None = None,
                 cancel: Callable[[], bool] | None = None,
                 previous: str | Path | InstanceMap | None = None) -> InstanceMap:
    """Run OpenMask3D on a scene folder and save the map (``out_dir`` or ``SCENE/openmask3d``).

    ``masks``: precomputed P x M masks (array or .npy/.pt path) instead of the proposal backend.
    ``cloud``: (points (N, 3), colours (N, 3) uint8 or None) to build on instead of the scene's
    cloud.ply; the map keeps its own copy, so the scene's cloud file is never overwritten.
    ``frame_step``: overrides ``cfg.frame_step`` (see ``read_inputs``).
    ``progress(stage, done, total)`` is called as stages advance.
    ``cache``: use of the map folder's build cache (``MAP/cache``, core/build_cache.py): None
    follows ``cfg.cache.enabled`` (incremental: reuse what did not change, the same map as
    from scratch), "full" recomputes everything and stores it, "off" / False neither reads nor
    writes it. ``cancel()`` is polled between stages and frames: True stops the build with
    ``BuildCancelled`` before anything is saved (the current map stays). ``previous``: the map
    (folder or InstanceMap) to report changes against, default the map folder's current map.
    The map's ``meta.cache`` says what was reused, ``meta.changes`` what changed (core/changes.py)
    and ``meta.instances[i].stable_id`` each instance's id across generations.
    """
    cfg = cfg or PipelineConfig()
    cfg.validate()
    inputs = read_inputs(scene_dir, cfg, frame_step, cloud)
    own_models = models is None         # built for this run alone: freed stage by stage
    models = models or build_models(cfg)
    out = Path(out_dir) if out_dir else inputs.scene.root / MAP_DIRNAME
    store = BuildCache.for_map(out, cfg, cache)
    timings: dict[str, float] = {}
    check_cancel(cancel)
    split, source = _proposals_step(inputs, models, masks, cfg, store, progress, timings,
                                    cancel)
    check_cancel(cancel)
    if own_models:
        models.release("proposals")
    features, report = _features_step(inputs, split, models, cfg, store, progress, timings,
                                      cancel, own_models)
    imap = _assemble_map(inputs, split, features, report, models, source, cfg, timings, masks)
    meta = imap.meta
    with _stage("changes", progress, timings):
        track_changes(imap, out, cfg, previous)
    if store is not None:
        meta.cache = store.finish()
        log.info("build cache: %s", cache_summary(meta.cache))
    check_cancel(cancel)
    imap.save(out, keep=cfg.keep_generations, colors=inputs.colors)
    if progress:
        progress("done", 1, 1)
    log.info("map saved to %s (%s)%s", out, meta.generation,
             f"; changes: {meta.changes.summary()}" if meta.changes else "")
    return imap


def _proposals_step(inputs: BuildInputs, models: Models, masks, cfg: PipelineConfig,
                    store: BuildCache | None, progress: Progress | None,
                    timings: dict[str, float], cancel: Callable[[], bool] | None
                    ) -> tuple[Proposals, str]:
    """The timed "proposals" stage (``proposals_stage``); InputError when no mask is left."""
    with _stage("proposals", progress, timings), cancel_hooks(models, cancel):
        split, source, proposed = proposals_stage(inputs, models, masks, cfg, store)
    if not split.masks.shape[1]:     # never an empty map in place of a good one
        raise InputError(f"no instance: the {source} proposals left no mask with points "
                         "(no map was written; the current one, if any, stays)", inputs.scene.root)
    log.info("proposals: %d masks from %s, %d after DBSCAN split (%.1f s%s)",
             proposed, source, split.masks.shape[1], timings["proposals_s"],
             ", from the build cache" if store and store.record.proposals == "reused" else "")
    return split, source


def _features_step(inputs: BuildInputs, split: Proposals, models: Models, cfg: PipelineConfig,
                   store: BuildCache | None, progress: Progress | None,
                   timings: dict[str, float], cancel: Callable[[], bool] | None,
                   release_segmenter: bool = False) -> tuple[np.ndarray, FeatureReport]:
    """The timed "features" stage (visibility, views, refinement, crops: ``compute_features``),
    through the build cache when there is one; checks that enough frames were read.
    ``release_segmenter``: free the segmenter once its pass is done (a one-shot run)."""
    with _stage("features", None, timings), cancel_hooks(models, cancel):
        feature_cache = (FeatureCache(store, models.segmenter, models.image_encoder,
                                      cfg.segmenter.min_score) if store else None)
        features, report = compute_features(inputs.points, split.masks, inputs.scene,
                                            inputs.frame_ids, models.segmenter,
                                            models.image_encoder, cfg, progress,
                                            feature_cache, cancel,
                                            (lambda: models.release("segmenter"))
                                            if release_segmenter else None)
    check_frames_read(inputs, report)
    log.info("features: %d instances, %d/%d frames used, %d segmenter images, %d crops (%.1f s)",
             split.masks.shape[1], len(report.frames_used), len(inputs.frame_ids),
             report.segmenter_images, report.crops_encoded, timings["features_s"])
    return features, report


def _assemble_map(inputs: BuildInputs, split: Proposals, features: np.ndarray,
                  report: FeatureReport, models: Models, source: str, cfg: PipelineConfig,
                  timings: dict[str, float], masks) -> InstanceMap:
    """The map (not saved yet) with its metadata: the build's record, what it read, the
    thinning of the input cloud, the structure tags."""
    meta = map_meta(inputs, split, report, models, source, cfg, timings)
    # what the build read, so `openmask3d batch --resume` can tell an up-to-date map
    meta.inputs = inputs_record(inputs.scene, inputs.frame_ids + list(inputs.pose_skipped),
                                inputs.cloud_source, cfg, masks)
    imap = InstanceMap.from_masks(inputs.points, split.masks, features, meta)
    if inputs.cap is not None and inputs.cap.source_index is not None:
        imap.source_index = inputs.cap.source_index
        meta.cloud = CloudRecord(source_points=inputs.cap.source_points, voxel=inputs.cap.voxel)
    # floor, walls, table tops: tagged once here, left out of object queries (core/structure.py)
    meta.structure = StructureRecord(**structure_meta(inputs.points, imap.point_indices,
                                                      cfg.structure))
    return imap


def cache_summary(rec: CacheRecord) -> str:
    """One line: what a build reused from its cache and what it computed."""
    return (f"proposals {rec.proposals or 'n/a'}; reused {rec.embeddings_reused} segmenter "
            f"embeddings (computed {rec.embeddings_computed}), {rec.refinements_reused} "
            f"refinements (computed {rec.refinements_computed}), {rec.crops_reused} crops "
            f"(encoded {rec.crops_computed}); {rec.size_bytes / 2**20:.1f} MiB"
            + (f", {rec.damaged} damaged entries recomputed" if rec.damaged else "")
            + (f", {rec.evicted} evicted" if rec.evicted else ""))


def proposals_stage(inputs: BuildInputs, models: Models,
                    masks: np.ndarray | str | Path | None, cfg: PipelineConfig,
                    store: BuildCache | None = None) -> tuple[Proposals, str, int]:
    """(the split proposals, their source, the number of masks before the split): from the
    build cache when the cloud, the backend and the proposal settings are unchanged."""
    key = _proposals_key(inputs, models, masks, cfg, store) if store is not None else None
    if key is not None:
        hit = store.get("proposals", key, _split_check(len(inputs.points)))
        if hit is not None:
            store.record.proposals = "reused"
            return _split_from(hit, len(inputs.points)), str(hit["source"]), \
                int(hit["proposed"])
    proposals, source = propose(inputs, models, masks)
    split = split_proposals(inputs.points, proposals, source, cfg)
    if store is not None:
        store.record.proposals = "computed" if key else "uncached"
        if key is not None:
            store.put("proposals", key, _split_arrays(split, source, proposals.masks.shape[1]))
    return split, source, proposals.masks.shape[1]


def _proposals_key(inputs: BuildInputs, models: Models, masks, cfg: PipelineConfig,
                   store: BuildCache) -> str | None:
    segments = None
    if masks is not None:
        backend, source = {"masks": masks_sha256(masks)}, "precomputed"
    else:
        backend = safe_identity(proposals_identity, models.proposals, store, None)
        source = models.proposals.name
        if backend is None:
            return None
        segments = scene_segments(inputs, models)
    p = cfg.proposals
    return digest("proposals", backend, source, np.asarray(inputs.points, np.float32),
                  inputs.colors, segments, cfg.fidelity,
                  [p.dbscan_eps, p.dbscan_min_points, p.min_mask_points])


def _split_arrays(split: Proposals, source: str, proposed: int) -> dict[str, np.ndarray]:
    sizes = split.masks.sum(axis=0)
    offsets = np.zeros(len(sizes) + 1, np.int64)
    np.cumsum(sizes, out=offsets[1:])
    flat = np.flatnonzero(split.masks.T.reshape(-1)) % split.masks.shape[0]
    out = {"indices": flat.astype(np.int64), "offsets": offsets, "source": np.array(source),
           "proposed": np.int64(proposed), "final": np.bool_(split.final)}
    if split.scores is not None:
        out["scores"] = np.asarray(split.scores, np.float64)
    if split.columns is not None:
        out["columns"] = np.asarray(split.columns, np.int64)
    return out


def _split_check(num_points: int):
    def check(a: dict) -> str | None:
        if not {"indices", "offsets", "source", "proposed", "final"} <= set(a):
            return "not a proposals entry"
        off, idx = a["offsets"], a["indices"]
        if off.ndim != 1 or len(off) < 1 or off[0] != 0 or off[-1] != len(idx) or \
                np.any(np.diff(off) < 0) or (len(idx) and (idx.min() < 0 or
                                                             idx.max() >= num_points)):
            return "proposal masks do not fit this cloud"
        M = len(off) - 1
        if any(k in a and len(a[k]) != M for k in ("scores", "columns")):
            return "scores/columns do not match the masks"
        return None
    return check


def _split_from(a: dict, num_points: int) -> Proposals:
    off = a["offsets"]
    M = len(off) - 1
    masks = np.zeros((num_points, M), dtype=bool)
    owner = np.repeat(np.arange(M), np.diff(off))
    masks[a["indices"], owner] = True
    return Proposals(masks, a.get("scores"), bool(a["final"]), a.get("columns"))


def track_changes(imap: InstanceMap, map_dir: Path, cfg: PipelineConfig,
                  previous: str | Path | InstanceMap | None = None) -> None:
    """Give the new map's instances stable ids and record in ``meta.changes`` what changed
    since ``previous`` (default: the current map of ``map_dir``; none on a first build)."""
    from .changes import compare_maps
    meta = imap.meta
    prev = _previous_map(map_dir, previous) if cfg.changes.enabled else None
    if prev is None:
        ids, meta.next_stable_id = range(imap.num_instances), imap.num_instances
    else:
        name = prev.meta.generation or str(prev.meta.map_dir or "")
        changes = compare_maps(prev, imap, cfg.changes, name)
        ids, meta.next_stable_id = changes.stable_ids.tolist(), changes.next_stable_id
        meta.changes = changes.to_record()
        log.info("changes since %s: %s", name, meta.changes.summary())
    for rec, sid in zip(meta.instances, ids):
        rec.stable_id = int(sid)


def _previous_map(map_dir: Path, previous) -> InstanceMap | None:
    if isinstance(previous, InstanceMap):
        return previous
    where = Path(previous) if previous is not None else map_dir
    if previous is None and not has_map(where):
        return None
    try:
        return InstanceMap.load(where)
    except (InputError, OSError) as exc:
        log.warning("previous map %s unreadable (%s): no change report for this build",
                    where, exc)
        return None


@contextmanager
def cancel_hooks(models: Models, cancel: Callable[[], bool] | None):
    """Poll ``cancel()`` inside the torch models too, before each block of their layer lists
    (SAM's image encoder and decoder, CLIP's image tower, Mask3D), so that a cancel stops a
    build within one block's compute instead of one frame's (a SAM vit_b embedding is seconds
    on a CPU). Only in the calling thread: queries answered meanwhile by the same CLIP model
    (its text tower has no hook anyway) are never interrupted."""
    handles = _register_cancel_hooks(models, cancel) if cancel is not None else []
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def _register_cancel_hooks(models: Models, cancel: Callable[[], bool]) -> list:
    """The forward pre-hooks of ``cancel_hooks``; a function of its own so that no model is
    referenced from the suspended generator (a one-shot run frees models in the middle)."""
    if "torch" not in sys.modules:
        return []
    import torch
    me = threading.get_ident()

    def hook(module, args):
        if threading.get_ident() == me and cancel():
            raise BuildCancelled("the map build was cancelled")
    handles = []
    nets = [getattr(models.segmenter, "model", None), getattr(models.proposals, "model", None),
            getattr(getattr(models.image_encoder, "model", None), "visual", None)]
    for net in nets:
        if not isinstance(net, torch.nn.Module):
            continue
        for mod in net.modules():
            if isinstance(mod, torch.nn.ModuleList):
                handles += [child.register_forward_pre_hook(hook) for child in mod]
    return handles


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
    step = decimation(scene, cfg, frame_step)
    if frame_step is None and recorded is not None:
        log.info("%s holds keyframes (every %dth frame of the stream): no further decimation",
                 scene.root, recorded)
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
    capped = cap_cloud(points, colors, cfg.max_cloud_points)
    return BuildInputs(scene, frame_ids, pose_skipped, capped.points, capped.colors, source,
                       step * (recorded or 1), capped)


def decimation(scene: SceneFolder, cfg: PipelineConfig, frame_step: int | None = None) -> int:
    """The step over the scene's frames: ``frame_step``, else 1 for a folder of keyframes
    (scene.json ``keyframe_step``), else ``cfg.frame_step``."""
    if frame_step is not None:
        return frame_step
    return 1 if scene.keyframe_step is not None else cfg.frame_step


def propose(inputs: BuildInputs, models: Models, masks: np.ndarray | str | Path | None = None
            ) -> tuple[Proposals, str]:
    """(the class-agnostic proposals, their source: the backend's name or "precomputed")."""
    if masks is not None:
        return Proposals(inputs.per_input_point(_read_masks(masks, inputs.input_points))), \
            "precomputed"
    return models.proposals.propose(inputs.points, inputs.colors,
                                    scene_segments(inputs, models)), models.proposals.name


def scene_segments(inputs: BuildInputs, models: Models) -> np.ndarray | None:
    """The scene's ScanNet superpoint ids per point built on, for a backend that uses them
    (None otherwise, and for a given cloud: they belong to the scene's own cloud)."""
    if not models.proposals.uses_segments or inputs.cloud_source == "given":
        return None
    from .proposals.mask3d.segments import find_segments
    segments = find_segments(inputs.scene.root, inputs.input_points)
    return None if segments is None else inputs.per_input_point(segments)


def split_proposals(points: np.ndarray, proposals: Proposals, source: str,
                    cfg: PipelineConfig) -> Proposals:
    """Masks split into spatially contiguous parts (DBSCAN), unless they are final already."""
    if proposals.final:     # official Mask3D post-processing: split, scored, sorted already
        return proposals
    if source == "precomputed" and cfg.fidelity == Fidelity.OFFICIAL:
        # the official feature stage takes a masks file as it is (no split, no size filter);
        # only empty columns go (a map instance needs points); each keeps its file column
        columns = np.flatnonzero(proposals.masks.any(axis=0))
        # np.take: the same array as masks[:, columns], copied in time linear in the columns
        # (fancy indexing grew with their square here: 1.4 s for 200 masks of 1M points)
        return Proposals(np.take(proposals.masks, columns, axis=1), final=True, columns=columns)
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
    """Precomputed masks as a (P, M) bool array (binarised and checked as
    ``precomputed.binary_masks`` says); any failure is an InputError naming the file."""
    if isinstance(masks, (str, Path)):
        try:
            return load_masks(masks, num_points)
        except InputError:
            raise
        except Exception as exc:     # numpy/torch decoding failures of a damaged file
            raise input_error_from(exc, Path(masks), "masks file") from exc
    raw = np.asarray(masks)
    if raw.ndim != 2 or raw.shape[0] != num_points:
        raise InputError(f"masks have shape {raw.shape} but the cloud has {num_points} points",
                         None, "masks")
    return binary_masks(raw)
