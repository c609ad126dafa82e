"""What changed between two maps of the same place: instances added, removed, moved (with the
displacement) and unchanged, and stable instance ids across map generations.

Each instance of the previous map is matched to at most one of the new map, by overlap in space
and feature similarity (``changes.*`` settings, core/config.py):

1. in place: pairs whose points share voxels (``voxel_size``) are aligned by a translation-only
   ICP started at zero; a pair matches when, after alignment, at least ``min_overlap`` of the
   points of one instance lie within ``voxel_size`` of the other's (the larger of the two
   fractions, so an instance whose cloud grew or was seen from new sides still matches) and the
   feature cosine is at least ``min_similarity`` (not checked when either has no feature);
2. moved: instances left unmatched are paired with left-over instances of similar size (sorted
   principal extents within ``size_tolerance``) and similar feature anywhere in the map; ICP
   starts at the centroid difference; the same overlap test applies.

Pairs are assigned one to one (Hungarian, highest overlap + similarity). A matched pair whose
translation is at least ``min_move`` is *moved* with that displacement, otherwise *unchanged*;
unmatched previous instances are *removed*, unmatched new ones *added*. Only translations are
estimated: an object turned in place so far that its points no longer overlap after a
translation is reported as removed and added.

Stable ids: a matched instance keeps the previous instance's id; new instances get fresh ids
(``next_stable_id`` counts on, ids are never reused). A map without recorded ids (first build,
older maps) uses its instance indices.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np
from scipy import sparse
from scipy.optimize import linear_sum_assignment
from scipy.spatial import cKDTree

from .config import ChangesConfig
from .map_meta import ChangesRecord

KINDS = ("added", "removed", "moved", "unchanged")
MAX_POINTS = 800            # points per instance used for alignment (an even subsample)
ICP_ITERATIONS = 20


@dataclass
class InstanceChange:
    """One instance's fate. ``index``: in the new map (None when removed); ``previous_index``:
    in the previous map (None when added); ``centroid``: in the new map (the previous one for a
    removed instance); ``displacement``: previous -> new translation (m) of a matched pair."""

    kind: str
    id: int
    index: int | None = None
    previous_index: int | None = None
    centroid: list[float] = field(default_factory=list)
    displacement: list[float] | None = None
    distance: float | None = None
    overlap: float | None = None
    similarity: float | None = None

    def to_json(self) -> dict:
        return {k: v for k, v in asdict(self).items() if v is not None and k != "kind"}


@dataclass
class MapChanges:
    """The result of ``compare_maps``: every instance of both maps in exactly one entry, and
    the stable id of each new-map instance."""

    previous: str
    entries: list[InstanceChange]
    stable_ids: np.ndarray                  # (M_new,) int64
    next_stable_id: int
    settings: dict = field(default_factory=dict)

    def of(self, kind: str) -> list[InstanceChange]:
        return [e for e in self.entries if e.kind == kind]

    added = property(lambda self: self.of("added"), doc="new instances, with fresh ids")
    removed = property(lambda self: self.of("removed"), doc="previous instances not matched")
    moved = property(lambda self: self.of("moved"), doc="matched, displaced >= min_move")
    unchanged = property(lambda self: self.of("unchanged"), doc="matched, displaced less")

    def to_record(self) -> ChangesRecord:
        return ChangesRecord(previous=self.previous, settings=dict(self.settings),
                             **{k: [e.to_json() for e in self.of(k)] for k in KINDS})


def stable_ids(imap) -> np.ndarray:
    """(M,) the stable ids recorded in a map's metadata, or its indices when it has none."""
    recorded = [inst.stable_id for inst in imap.meta.instances]
    if len(recorded) == imap.num_instances and all(r is not None for r in recorded):
        return np.asarray(recorded, dtype=np.int64)
    return np.arange(imap.num_instances, dtype=np.int64)


def next_stable_id(imap) -> int:
    """The id the next new instance of a map's successor gets."""
    ids = stable_ids(imap)
    floor = int(ids.max()) + 1 if len(ids) else 0
    recorded = imap.meta.next_stable_id
    return max(floor, int(recorded)) if recorded is not None else floor


def compare_maps(previous, current, cfg: ChangesConfig | None = None,
                 previous_name: str = "") -> MapChanges:
    """Match the instances of ``current`` (an InstanceMap) against ``previous`` (both in the
    same frame): see the module docstring."""
    cfg = cfg or ChangesConfig()
    vs = float(cfg.voxel_size)
    prev = _Instances(previous, vs)
    new = _Instances(current, vs)
    sim = _similarity(previous.features, current.features)
    pairs = _pairs_in_place(prev, new, sim, cfg)
    match = _assign(pairs, sim, prev.count, new.count, cfg.min_similarity)
    far = _pairs_moved(prev, new, sim, match, cfg)
    match.update(_assign(far, sim, prev.count, new.count, cfg.min_similarity))
    pairs.update(far)
    entries, ids, next_id = _entries(previous, prev, new, match, pairs, sim, cfg)
    settings = {k: getattr(cfg, k) for k in ("voxel_size", "min_overlap", "min_similarity",
                                             "min_move", "size_tolerance")}
    return MapChanges(previous_name, entries, ids, int(next_id), settings)


Pairs = dict[tuple[int, int], tuple[float, np.ndarray]]    # (prev i, new j) -> (fit, shift)


def _feature_ok(sim: np.ndarray, cfg: ChangesConfig) -> np.ndarray:
    """(M_prev, M_new) whether a pair's features allow a match (always, lacking one)."""
    return np.isnan(sim) | (sim >= cfg.min_similarity)


def _pairs_in_place(prev: _Instances, new: _Instances, sim: np.ndarray,
                    cfg: ChangesConfig) -> Pairs:
    """1. in place: pairs that share voxels (a fraction worth aligning: not neighbours
    touching) and overlap after a small alignment."""
    vs = float(cfg.voxel_size)
    sim_ok = _feature_ok(sim, cfg)
    shared = _shared_voxels(prev, new)
    n_p = np.array([len(v) for v in prev.voxels])
    n_n = np.array([len(v) for v in new.voxels])
    frac = shared / np.maximum(np.minimum(n_p[:, None], n_n[None, :]), 1)
    pairs: Pairs = {}
    for i, j in zip(*np.nonzero(frac >= 0.5 * cfg.min_overlap)):
        if not sim_ok[i, j]:
            continue
        fit, t = _align(prev, i, new, j, np.zeros(3), vs, 4 * vs)
        if fit >= cfg.min_overlap:
            pairs[(i, j)] = (fit, t)
    return pairs


def _pairs_moved(prev: _Instances, new: _Instances, sim: np.ndarray, match: dict[int, int],
                 cfg: ChangesConfig) -> Pairs:
    """2. moved: instances left unmatched in place, of similar size and feature, anywhere,
    that overlap once aligned from one centroid to the other."""
    vs = float(cfg.voxel_size)
    sim_ok = _feature_ok(sim, cfg)
    left_p = [i for i in range(prev.count) if i not in match]
    taken = set(match.values())
    left_n = [j for j in range(new.count) if j not in taken]
    far: Pairs = {}
    for i in left_p:
        for j in left_n:
            if not sim_ok[i, j] or not _similar_size(prev.extent[i], new.extent[j], vs,
                                                     cfg.size_tolerance):
                continue
            fit, t = _align(prev, i, new, j, new.centroid[j] - prev.centroid[i], vs,
                            max(4 * vs, float(np.max(prev.extent[i])) / 2))
            if fit >= cfg.min_overlap:
                far[(i, j)] = (fit, t)
    return far


def _entries(previous, prev: _Instances, new: _Instances, match: dict[int, int], pairs: Pairs,
             sim: np.ndarray, cfg: ChangesConfig
             ) -> tuple[list[InstanceChange], np.ndarray, int]:
    """(the entries: matched as unchanged or moved, then added, then removed; the new map's
    stable ids; the next free stable id)."""
    old_ids = stable_ids(previous)
    ids = np.full(new.count, -1, dtype=np.int64)
    entries: list[InstanceChange] = []
    for i, j in sorted(match.items(), key=lambda kv: kv[1]):
        fit, t = pairs[(i, j)]
        ids[j] = old_ids[i]
        dist = float(np.linalg.norm(t))
        s = None if np.isnan(sim[i, j]) else round(float(sim[i, j]), 6)
        entry = InstanceChange("unchanged", int(old_ids[i]), int(j), int(i),
                               _r(new.centroid[j]), overlap=round(float(fit), 4), similarity=s)
        if dist >= cfg.min_move:
            entry.kind, entry.displacement, entry.distance = "moved", _r(t), round(dist, 4)
        entries.append(entry)
    next_id = next_stable_id(previous)
    for j in np.flatnonzero(ids < 0):
        ids[j] = next_id
        entries.append(InstanceChange("added", int(next_id), int(j), None,
                                      _r(new.centroid[j])))
        next_id += 1
    for i in range(prev.count):
        if i not in match:
            entries.append(InstanceChange("removed", int(old_ids[i]), None, int(i),
                                          _r(prev.centroid[i])))
    return entries, ids, next_id


class _Instances:
    """Per instance of a map: an even subsample of its points, its centroid (of all points),
    sorted principal extents, voxel keys and a KD-tree (built when first needed)."""

    def __init__(self, imap, vs: float):
        pts = np.asarray(imap.points, dtype=np.float64)
        self.count = imap.num_instances
        self.points = []
        self.centroid = np.zeros((self.count, 3))
        self.extent = np.zeros((self.count, 3))
        self.voxels = []
        for m, idx in enumerate(imap.point_indices):
            p = pts[np.asarray(idx, dtype=np.int64)]
            if len(p) == 0:
                p = np.zeros((0, 3))
            self.centroid[m] = p.mean(axis=0) if len(p) else np.nan
            self.extent[m] = _extents(p)
            self.voxels.append(np.unique(_codes(np.floor(p / vs).astype(np.int64))))
            if len(p) > MAX_POINTS:
                p = p[np.linspace(0, len(p) - 1, MAX_POINTS).astype(np.int64)]
            self.points.append(p)
        self._trees: dict[int, cKDTree] = {}

    def tree(self, m: int) -> cKDTree:
        if m not in self._trees:
            self._trees[m] = cKDTree(self.points[m])
        return self._trees[m]


_BITS = 21
_HALF = 1 << (_BITS - 1)


def _codes(v: np.ndarray) -> np.ndarray:
    """Integer voxel coordinates (N, 3) as one int64 each (|coordinate| < 2^20 voxels)."""
    v = np.clip(v + _HALF, 0, (1 << _BITS) - 1)
    return (v[:, 0] << (2 * _BITS)) | (v[:, 1] << _BITS) | v[:, 2]


def _extents(p: np.ndarray) -> np.ndarray:
    """Sorted extents along the principal axes (2nd to 98th percentile), rotation-free."""
    if len(p) < 3:
        return np.zeros(3)
    c = p - p.mean(axis=0)
    _, _, vt = np.linalg.svd(c[:: max(1, len(c) // 5000)], full_matrices=False)
    proj = c @ vt.T
    lo, hi = np.percentile(proj, [2, 98], axis=0)
    return np.sort(hi - lo)


def _similar_size(a: np.ndarray, b: np.ndarray, vs: float, tol: float) -> bool:
    return bool(np.all(np.abs(a - b) <= tol * np.maximum(a, b) + vs))


def _similarity(fa: np.ndarray, fb: np.ndarray) -> np.ndarray:
    """(Ma, Mb) cosine of the features; NaN where either instance has none."""
    fa, fb = np.asarray(fa, np.float64), np.asarray(fb, np.float64)
    na, nb = np.linalg.norm(fa, axis=1), np.linalg.norm(fb, axis=1)
    if fa.shape[1:] != fb.shape[1:]:           # other encoders: no feature comparison
        return np.full((len(fa), len(fb)), np.nan)
    sim = (fa / np.maximum(na, 1e-12)[:, None]) @ (fb / np.maximum(nb, 1e-12)[:, None]).T
    sim[(na == 0)[:, None] | (nb == 0)[None, :]] = np.nan
    return sim


def _shared_voxels(a: _Instances, b: _Instances) -> np.ndarray:
    """(Ma, Mb) number of voxels instances of ``a`` and ``b`` share."""
    keys_a, keys_b = list(a.voxels), list(b.voxels)
    all_keys = [k for k in keys_a + keys_b if len(k)]
    if not all_keys:
        return np.zeros((a.count, b.count), dtype=np.int64)
    _, inverse = np.unique(np.concatenate(all_keys), return_inverse=True)
    inverse = inverse.reshape(-1)
    n_vox = int(inverse.max()) + 1 if len(inverse) else 0

    def incidence(keys, start):
        rows, cols = [], []
        pos = start
        for m, k in enumerate(keys):
            rows.append(inverse[pos:pos + len(k)])
            cols.append(np.full(len(k), m))
            pos += len(k)
        mat = sparse.csr_matrix((np.ones(sum(len(r) for r in rows)),
                                 (np.concatenate(rows) if rows else [],
                                  np.concatenate(cols) if cols else [])),
                                shape=(n_vox, len(keys)))
        return mat, pos
    A, end = incidence(keys_a, 0)
    B, _ = incidence(keys_b, end)
    return np.asarray((A.T @ B).todense(), dtype=np.int64)


def _align(a: _Instances, i: int, b: _Instances, j: int, t0: np.ndarray, vs: float,
           radius: float) -> tuple[float, np.ndarray]:
    """(overlap after alignment, translation t with a_i + t ~ b_j): translation-only ICP on
    median residuals, matching within ``radius`` first, halved each step down to 2 voxels."""
    pa, pb = a.points[i], b.points[j]
    if len(pa) == 0 or len(pb) == 0:
        return 0.0, np.asarray(t0, dtype=np.float64)
    tb = b.tree(j)
    t = np.asarray(t0, dtype=np.float64).copy()
    for _ in range(ICP_ITERATIONS):
        d, k = tb.query(pa + t, distance_upper_bound=radius)
        ok = np.isfinite(d)
        if ok.sum() < 3:
            break
        step = np.median(pb[k[ok]] - (pa[ok] + t), axis=0)
        t += step
        radius = max(2 * vs, radius / 2)
        if np.linalg.norm(step) < 0.05 * vs and radius <= 2 * vs:
            break
    fit_a = float(np.mean(tb.query(pa + t, distance_upper_bound=vs)[0] <= vs))
    fit_b = float(np.mean(a.tree(i).query(pb - t, distance_upper_bound=vs)[0] <= vs))
    return max(fit_a, fit_b), t


def _assign(pairs: dict[tuple[int, int], tuple[float, np.ndarray]], sim: np.ndarray,
            n_a: int, n_b: int, default_sim: float) -> dict[int, int]:
    """One-to-one matching of candidate pairs maximising overlap + similarity."""
    if not pairs:
        return {}
    rows = sorted({i for i, _ in pairs})
    cols = sorted({j for _, j in pairs})
    r_at = {i: n for n, i in enumerate(rows)}
    c_at = {j: n for n, j in enumerate(cols)}
    score = np.full((len(rows), len(cols)), -1e6)
    for (i, j), (fit, _) in pairs.items():
        s = sim[i, j]
        score[r_at[i], c_at[j]] = fit + (default_sim if np.isnan(s) else s)
    r, c = linear_sum_assignment(-score)
    return {rows[x]: cols[y] for x, y in zip(r, c) if score[x, y] > -1e5}


def _r(v) -> list[float]:
    return [round(float(x), 4) for x in v]
