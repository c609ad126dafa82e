"""Evaluate saved OpenMask3D maps against ground truth: one scene or a directory of scenes.

All scenes are matched first and AP is computed once over the accumulated matches, as the
benchmark does (a per-scene AP average would weight small scenes differently).
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from collections.abc import Callable, Mapping, Sequence

import numpy as np

from ..instance_map import MAP_DIRNAME, InstanceMap
from ..interfaces import TextEncoder
from .ap import MIN_REGION_SIZE, OVERLAPS, APResult, evaluate, match_scene
from .assign import assign_classes, map_template
from .ground_truth import check_splits, gt_classes, load_ground_truth

log = logging.getLogger(__name__)

AGNOSTIC_CLASS = "object"
MODES = ("agnostic", "open-vocab")


@dataclass
class EvalScene:
    """One evaluated scene: its name, ground truth and predicted map."""

    name: str
    gt_ids: np.ndarray
    gt_labels: dict[int, str | None]      # class per GT instance (from the chosen label key)
    instances: InstanceMap


@dataclass
class EvalReport:
    """Results per mode, plus what was evaluated."""

    results: dict[str, APResult]
    scenes: list[str]
    classes: list[str]
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0
    agnostic_scores: str | None = None    # "proposal_score" | "uniform" | "mixed"

    def to_dict(self) -> dict:
        return {"scenes": self.scenes, "classes": self.classes, "notes": self.notes,
                "seconds": round(self.seconds, 3), "agnostic_scores": self.agnostic_scores,
                "results": {mode: r.to_dict() for mode, r in self.results.items()}}


def has_map(scene_dir: Path, map_dirname: str = MAP_DIRNAME) -> bool:
    from ..instance_map import has_map as map_exists
    return (scene_dir / map_dirname).is_dir() and map_exists(scene_dir / map_dirname)


def find_scenes(path: str | Path, map_dirname: str = MAP_DIRNAME) -> list[Path]:
    """``path`` itself when it holds a map, else its sub-folders that do (sorted by name)."""
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"not a folder: {path}")
    if has_map(path, map_dirname):
        return [path]
    scenes = sorted(p for p in path.iterdir() if p.is_dir() and has_map(p, map_dirname))
    if not scenes:
        raise FileNotFoundError(f"no OpenMask3D map under {path} (expected {path}/{map_dirname}/"
                                f" or */{map_dirname}/; run "
                                "`openmask3d run SCENE` first)")
    return scenes


def load_eval_scene(scene_dir: str | Path, label_key: str = "label",
                    label_map: Mapping[str, str] | None = None,
                    map_dirname: str = MAP_DIRNAME) -> EvalScene:
    """Ground truth and saved map of one scene, checked to cover the same cloud."""
    scene_dir = Path(scene_dir)
    gt = load_ground_truth(scene_dir, label_map)
    imap = InstanceMap.load(scene_dir / map_dirname)
    if len(imap.points) != len(gt.instance_ids):
        raise ValueError(f"{scene_dir}: the map covers {len(imap.points)} points but the ground "
                         f"truth {len(gt.instance_ids)}: both must refer to the same cloud")
    return EvalScene(scene_dir.name, np.asarray(gt.instance_ids), gt_classes(gt, label_key), imap)


def instance_scores(imap: InstanceMap) -> tuple[np.ndarray, str]:
    """Class-agnostic confidences and where they come from: the proposal backend's own scores
    when the map has them (Mask3D's protocol: "proposal_score"), else 1.0 for every instance
    (the paper's unscored masks: "uniform")."""
    scores = imap.meta.proposal_scores()
    if scores is not None and len(scores) == imap.num_instances:
        return scores, "proposal_score"
    return np.ones(imap.num_instances), "uniform"


def text_encoder_for_map(imap: InstanceMap, overrides: Mapping | None = None,
                         cache: dict | None = None) -> TextEncoder:
    """The text encoder the map was built with (``meta["config"]``), with ``overrides`` applied
    (e.g. a local ``encoder.clip_checkpoint``)."""
    from ..query import map_encoder

    if not imap.meta.config:
        log.warning("map meta.json has no 'config': evaluating with the default text encoder")
    cfg = imap.meta.pipeline_config()
    if overrides:
        cfg = cfg.updated(overrides)
    return map_encoder(imap, cfg, cache)


def default_classes(scenes: Sequence[EvalScene]) -> list[str]:
    """Every GT class of the scenes, sorted."""
    return sorted({c for s in scenes for c in s.gt_labels.values() if c is not None})


def evaluate_scenes(scenes: Sequence[EvalScene], modes: Sequence[str] = MODES,
                    classes: Sequence[str] | None = None, exclude: Sequence[str] = (),
                    splits: Mapping[str, Sequence[str]] | None = None,
                    text_encoder: TextEncoder | Callable[[InstanceMap], TextEncoder] | None = None,
                    template: str | None = None, score: str = "similarity",
                    min_region_size: int = MIN_REGION_SIZE,
                    overlaps: np.ndarray = OVERLAPS) -> EvalReport:
    """AP of ``scenes`` in each mode.

    ``classes``: the vocabulary (default: all GT classes). ``exclude``: classes that take part in
    open-vocabulary assignment but are not evaluated (ScanNet200 excludes wall and floor); their
    GT is void and predictions assigned to them are dropped. ``text_encoder``: an encoder, or a
    function map -> encoder (default: the encoder of each map's configuration). ``template``: the
    class prompt (default: each map's recorded ``encoder.prompt_template``). ``score``:
    "similarity" (cosine similarity of the assigned class) or "one" (1.0, the paper's setting).
    """
    t0 = time.perf_counter()
    if score not in ("similarity", "one"):
        raise ValueError(f"score must be 'similarity' or 'one', got '{score}'")
    for mode in modes:
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got '{mode}'")
    vocab = list(classes) if classes is not None else default_classes(scenes)
    excluded = set(exclude)
    evaluated = [c for c in vocab if c not in excluded]
    if not evaluated:
        raise ValueError("no class left to evaluate")
    notes: list[str] = []
    if splits:
        missing = check_splits(splits, evaluated)
        if missing:
            notes.append(f"{len(missing)} split class(es) are not evaluated, e.g. {missing[:5]}")
            log.warning(notes[-1])
    results: dict[str, APResult] = {}
    agnostic_scores = None
    if "agnostic" in modes:
        results["agnostic"], agnostic_scores = _agnostic(scenes, evaluated, overlaps,
                                                         min_region_size)
    if "open-vocab" in modes:
        cache: dict = {}        # one text encoder per distinct map encoder, over all scenes
        matches = [_open_vocab_matches(s, vocab, excluded, evaluated, text_encoder, template,
                                       score, min_region_size, cache) for s in scenes]
        results["open-vocab"] = evaluate(matches, evaluated, splits, overlaps, min_region_size)
    return EvalReport(results, [s.name for s in scenes], evaluated, notes,
                      time.perf_counter() - t0, agnostic_scores)


def _agnostic(scenes: Sequence[EvalScene], evaluated: Sequence[str], overlaps: np.ndarray,
              min_region_size: int) -> tuple[APResult, str]:
    """Class-agnostic AP, and which confidences ranked the masks ("proposal_score" when every
    map has the proposal backend's scores, "uniform" when none has, else "mixed")."""
    matches, sources = [], set()
    for s in scenes:
        gt = {i: (AGNOSTIC_CLASS if c in evaluated else None) for i, c in s.gt_labels.items()}
        m = s.instances
        scores, source = instance_scores(m)
        sources.add(source)
        matches.append(match_scene(s.gt_ids, gt, m.point_indices,
                                   [AGNOSTIC_CLASS] * m.num_instances, scores,
                                   [AGNOSTIC_CLASS], min_region_size, s.name))
    result = evaluate(matches, [AGNOSTIC_CLASS], None, overlaps, min_region_size)
    return result, sources.pop() if len(sources) == 1 else "mixed"


def _open_vocab_matches(s: EvalScene, vocab: list[str], excluded: set[str],
                        evaluated: list[str], text_encoder, template: str | None, score: str,
                        min_region_size: int, cache: dict):
    """One scene's matches after assigning every instance to its nearest class."""
    if text_encoder is None:
        enc = text_encoder_for_map(s.instances, cache=cache)
    elif callable(text_encoder) and not hasattr(text_encoder, "encode_text"):
        enc = text_encoder(s.instances)
    else:
        enc = text_encoder
    a = assign_classes(s.instances.features, vocab, enc,
                       template or map_template(s.instances.meta.config))
    labels = [None if (c is None or c in excluded) else c for c in a.labels(vocab)]
    scores = a.similarity if score == "similarity" else np.ones(len(labels))
    gt = {i: (c if c in evaluated else None) for i, c in s.gt_labels.items()}
    return match_scene(s.gt_ids, gt, s.instances.point_indices, labels, scores, evaluated,
                       min_region_size, s.name)

