"""3D instance segmentation AP, following the ScanNet benchmark protocol.

This re-implements the logic of ScanNet's ``evaluate_semantic_instance.py`` in the form Mask3D and
OpenMask3D use it, so numbers are comparable with the papers:

* overlap thresholds ``np.arange(0.5, 0.95, 0.05)`` (that is 0.50 ... 0.90, nine values: the
  script's ``arange`` stops before 0.95) plus 0.25; a prediction matches a ground-truth (GT)
  instance when ``IoU > threshold`` (strictly);
* GT instances with fewer than ``min_region_size`` (100) points are not counted, and predictions
  with fewer than 100 points are dropped;
* greedy matching per class: each GT takes the first unused prediction above the threshold; a
  further prediction above the threshold on an already matched GT is a false positive carrying the
  lower of the two scores;
* an unmatched prediction is a false positive unless more than ``threshold`` of its points lie on
  ignored ground truth (void points, instances of classes not evaluated, GT below the size limit);
* the precision/recall curve over unique confidence values, closed with (recall 0, precision 1),
  integrated with the script's central-difference step widths;
* AP = mean over the nine thresholds 0.50-0.90, AP50 and AP25 the single thresholds; per class,
  then averaged over classes with ``nanmean`` (classes without GT anywhere are NaN and skipped);
* scenes are accumulated before any AP is computed (a directory is one benchmark run).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from collections.abc import Iterable, Mapping, Sequence

import numpy as np

#: The benchmark's overlap thresholds (its ``opt['overlaps']``): 0.50..0.90 step 0.05, then 0.25.
OVERLAPS = np.append(np.arange(0.5, 0.95, 0.05), 0.25)
#: GT instances (and predictions) below this many points are ignored (ScanNet: 100 vertices).
MIN_REGION_SIZE = 100


@dataclass
class _Gt:
    instance_id: int
    label: str
    vert_count: int
    matched_pred: list = field(default_factory=list)   # [(pred_uid, intersection, vert_count, conf)]


@dataclass
class _Pred:
    uid: tuple          # (scene token, index): unique across the scenes of one evaluation
    label: str
    vert_count: int
    confidence: float
    void_intersection: int
    matched_gt: list = field(default_factory=list)     # [(gt_instance_id, intersection, gt_count)]


@dataclass
class SceneMatches:
    """Per-class GT and prediction records of one scene (the script's ``gt2pred`` / ``pred2gt``)."""

    name: str
    gt: dict[str, list[_Gt]]
    pred: dict[str, list[_Pred]]


def match_scene(gt_ids: np.ndarray, gt_labels: Mapping[int, str | None],
                pred_indices: Sequence[np.ndarray], pred_labels: Sequence[str | None],
                pred_scores: Sequence[float], classes: Sequence[str],
                min_region_size: int = MIN_REGION_SIZE, name: str = "") -> SceneMatches:
    """Associate the predictions of one scene with its GT instances (per class, by intersection).

    ``gt_ids``: GT instance id per point (0 = no instance). ``gt_labels``: class name per GT id;
    ids whose class is None or not in ``classes`` are void. ``pred_indices``: point indices of
    each predicted mask; ``pred_labels`` / ``pred_scores``: its class (None = dropped) and
    confidence.
    """
    gt_ids = np.asarray(gt_ids).astype(np.int64, copy=False).ravel()
    if not (len(pred_indices) == len(pred_labels) == len(pred_scores)):
        raise ValueError(f"{len(pred_indices)} predicted masks, {len(pred_labels)} labels and "
                         f"{len(pred_scores)} scores")
    class_set = set(classes)
    if gt_ids.size and gt_ids.min() < 0:
        raise ValueError("ground-truth instance ids must be >= 0")
    counts = np.bincount(gt_ids) if gt_ids.size else np.zeros(1, dtype=np.int64)
    valid_ids = [int(i) for i in np.flatnonzero(counts) if i != 0
                 and gt_labels.get(int(i)) in class_set]
    valid_lut = np.zeros(len(counts), dtype=bool)
    valid_lut[valid_ids] = True
    void = ~valid_lut[gt_ids]                         # points on no evaluated GT instance

    gt: dict[str, list[_Gt]] = {c: [] for c in classes}
    for i in valid_ids:
        rec = _Gt(i, gt_labels[i], int(counts[i]))
        gt[rec.label].append(rec)
    pred: dict[str, list[_Pred]] = {c: [] for c in classes}
    n_points = len(gt_ids)
    scene_token = object()   # the script's uuid4 role: ids unique across scenes, no global state
    for k, (idx, label, conf) in enumerate(zip(pred_indices, pred_labels, pred_scores)):
        if label is None or label not in class_set:
            continue
        idx = np.unique(np.asarray(idx, dtype=np.int64))
        if idx.size and (idx[0] < 0 or idx[-1] >= n_points):
            raise ValueError(f"predicted mask indexes point {int(idx[-1])} but the ground truth "
                             f"has {n_points} points")
        num = int(idx.size)
        if num < min_region_size:
            continue
        p = _Pred((scene_token, k), label, num, float(conf), int(np.count_nonzero(void[idx])))
        inter = np.bincount(gt_ids[idx], minlength=len(counts))
        for g in gt[label]:
            n = int(inter[g.instance_id])
            if n > 0:
                p.matched_gt.append((g.instance_id, n, g.vert_count))
                g.matched_pred.append((p.uid, n, num, p.confidence))
        pred[label].append(p)
    # Small GT instances stay in the records: the AP step needs them to ignore predictions on them.
    return SceneMatches(name, gt, pred)


def _average_precision(y_true: np.ndarray, y_score: np.ndarray, hard_fn: int) -> float:
    """The script's precision/recall integration over unique scores."""
    order = np.argsort(y_score, kind="stable")
    y_score_sorted = y_score[order]
    y_true_sorted = y_true[order]
    cumsum = np.cumsum(y_true_sorted)
    _, unique_indices = np.unique(y_score_sorted, return_index=True)
    n_pr = len(unique_indices) + 1
    num_examples = len(y_score_sorted)
    num_true = cumsum[-1] if len(cumsum) > 0 else 0
    precision = np.zeros(n_pr)
    recall = np.zeros(n_pr)
    cumsum = np.append(cumsum, 0)
    for i, idx in enumerate(unique_indices):
        c = cumsum[idx - 1]                          # idx 0 reads the appended 0
        tp = num_true - c
        fp = num_examples - idx - tp
        fn = c + hard_fn
        precision[i] = float(tp) / (tp + fp)
        recall[i] = float(tp) / (tp + fn)
    precision[-1] = 1.0                              # artificial first point of the curve
    recall[-1] = 0.0
    r = np.concatenate([[recall[0]], recall, [0.0]])
    step = np.convolve(r, [-0.5, 0, 0.5], "valid")
    return float(np.dot(precision, step))


def evaluate_matches(matches: Iterable[SceneMatches], classes: Sequence[str],
                     overlaps: np.ndarray = OVERLAPS,
                     min_region_size: int = MIN_REGION_SIZE) -> np.ndarray:
    """AP per (class, overlap), shape (C, O); NaN where a class has no GT and no prediction."""
    matches = list(matches)
    ap = np.zeros((len(classes), len(overlaps)))
    for oi, th in enumerate(overlaps):
        visited: dict[tuple, bool] = {}     # predictions matched at this threshold, any class
        for li, label in enumerate(classes):
            ap[li, oi] = _class_ap(matches, label, th, min_region_size, visited)
    return ap


def _class_ap(matches: list[SceneMatches], label: str, th: float, min_region_size: int,
              visited: dict[tuple, bool]) -> float:
    """AP of one class at overlap threshold ``th``, all scenes accumulated; 0 when the class has
    GT but no prediction, NaN when it has no GT."""
    y_true: list[np.ndarray] = []
    y_score: list[np.ndarray] = []
    hard_fn = 0
    has_gt = has_pred = False
    for m in matches:
        preds = m.pred.get(label, [])
        all_gts = m.gt.get(label, [])
        if not preds and not all_gts:
            continue
        gts = [g for g in all_gts if g.vert_count >= min_region_size]
        has_gt |= bool(gts)
        has_pred |= bool(preds)
        t, s, missed = _match_gts(gts, th, visited)
        hard_fn += missed
        fp_scores = _false_positive_scores(preds, th, min_region_size)
        y_true.append(t)
        y_true.append(np.zeros(len(fp_scores)))
        y_score.append(s)
        y_score.append(np.asarray(fp_scores, dtype=float))
    if has_gt and has_pred:
        return _average_precision(np.concatenate(y_true), np.concatenate(y_score), hard_fn)
    if has_gt:
        return 0.0
    return math.nan


def _match_gts(gts: list[_Gt], th: float,
               visited: dict[tuple, bool]) -> tuple[np.ndarray, np.ndarray, int]:
    """Greedy matching of one scene's GT instances of a class: (true-positive flags, scores,
    GT left unmatched). A second prediction above ``th`` on a matched GT adds a false positive."""
    cur_true = np.ones(len(gts))
    cur_score = np.full(len(gts), -math.inf)
    cur_match = np.zeros(len(gts), dtype=bool)
    extra_true: list[float] = []
    extra_score: list[float] = []
    hard_fn = 0
    for gi, g in enumerate(gts):
        found = False
        for uid, inter, pcount, conf in g.matched_pred:
            if visited.get(uid, False):
                continue
            iou = inter / (g.vert_count + pcount - inter)
            if iou > th:
                if cur_match[gi]:
                    # A second prediction on a matched GT: the lower score is an FP.
                    lo = min(cur_score[gi], conf)
                    cur_score[gi] = max(cur_score[gi], conf)
                    extra_true.append(0.0)
                    extra_score.append(lo)
                else:
                    found = True
                    cur_match[gi] = True
                    cur_score[gi] = conf
                    visited[uid] = True
        if not found:
            hard_fn += 1
    t = np.concatenate([cur_true[cur_match], extra_true])
    s = np.concatenate([cur_score[cur_match], extra_score])
    return t, s, hard_fn


def _false_positive_scores(preds: list[_Pred], th: float, min_region_size: int) -> list[float]:
    """Confidences of the predictions matching no GT above ``th`` and not lying (more than
    ``th`` of their points) on ignored ground truth."""
    fp_scores = []
    for p in preds:
        if any(inter / (gcount + p.vert_count - inter) > th
               for _, inter, gcount in p.matched_gt):
            continue
        ignored = p.void_intersection + sum(
            inter for _, inter, gcount in p.matched_gt if gcount < min_region_size)
        if ignored / p.vert_count <= th:
            fp_scores.append(p.confidence)
    return fp_scores


def _nanmean(values) -> float:
    arr = np.asarray(values, dtype=float)
    if arr.size == 0 or np.all(np.isnan(arr)):
        return math.nan
    return float(np.nanmean(arr))


@dataclass
class APResult:
    """AP over 0.5:0.95 (the benchmark's nine thresholds), AP50 and AP25: overall, per class and
    per class split."""

    classes: list[str]
    overlaps: np.ndarray
    ap_table: np.ndarray                        # (C, O)
    splits: dict[str, list[str]] = field(default_factory=dict)

    def _cols(self, which: str) -> np.ndarray:
        o = self.overlaps
        if which == "ap":
            return np.flatnonzero(~np.isclose(o, 0.25))
        return np.flatnonzero(np.isclose(o, 0.5 if which == "ap50" else 0.25))

    def class_ap(self, label: str) -> dict[str, float]:
        li = self.classes.index(label)
        return {k: float(np.mean(self.ap_table[li, self._cols(k)])) for k in ("ap", "ap50", "ap25")}

    def mean(self, labels: Sequence[str] | None = None) -> dict[str, float]:
        """Class-averaged AP/AP50/AP25 (over ``labels``, default all), NaN classes skipped."""
        rows = [self.classes.index(c) for c in (labels if labels is not None else self.classes)
                if c in self.classes]
        return {k: _nanmean([np.mean(self.ap_table[r, self._cols(k)]) for r in rows])
                for k in ("ap", "ap50", "ap25")}

    @property
    def ap(self) -> float:
        return self.mean()["ap"]

    @property
    def ap50(self) -> float:
        return self.mean()["ap50"]

    @property
    def ap25(self) -> float:
        return self.mean()["ap25"]

    def at(self, overlap: float, label: str | None = None) -> float:
        """AP at one threshold (class-averaged, or of one class)."""
        oi = int(np.flatnonzero(np.isclose(self.overlaps, overlap))[0])
        col = self.ap_table[:, oi] if label is None else self.ap_table[[self.classes.index(label)], oi]
        return _nanmean(col)

    def to_dict(self) -> dict:
        """JSON-friendly summary (NaN -> None)."""
        def clean(d):
            return {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in d.items()}
        return {
            **clean(self.mean()),
            "per_class": {c: clean(self.class_ap(c)) for c in self.classes},
            "splits": {name: clean(self.mean(labels)) for name, labels in self.splits.items()},
            "overlaps": [round(float(o), 2) for o in self.overlaps],
        }


def evaluate(scenes: Iterable[SceneMatches], classes: Sequence[str],
             splits: Mapping[str, Sequence[str]] | None = None,
             overlaps: np.ndarray = OVERLAPS, min_region_size: int = MIN_REGION_SIZE) -> APResult:
    """Accumulate all scenes' matches, then compute AP per class and threshold."""
    classes = list(classes)
    table = evaluate_matches(scenes, classes, overlaps, min_region_size)
    return APResult(classes, np.asarray(overlaps), table,
                    {k: list(v) for k, v in (splits or {}).items()})


def format_table(result: APResult, title: str = "", per_class: bool = True) -> str:
    """A text table like the benchmark script's: per class, per split, then the average."""
    width = max([15] + [len(c) + 1 for c in result.classes])
    head = f"{'what':<{width}}:{'AP':>9}{'AP_50%':>9}{'AP_25%':>9}"
    lines = ([title] if title else []) + ["#" * len(head), head, "#" * len(head)]

    def row(name, d):
        vals = "".join(f"{'nan' if math.isnan(v) else format(v, '.3f'):>9}"
                       for v in (d["ap"], d["ap50"], d["ap25"]))
        return f"{name:<{width}}:{vals}"
    if per_class:
        lines += [row(c, result.class_ap(c)) for c in result.classes]
    if result.splits:
        lines.append("-" * len(head))
        lines += [row(name, result.mean(labels)) for name, labels in result.splits.items()]
    lines.append("-" * len(head))
    lines.append(row("average", result.mean()))
    return "\n".join(lines)
