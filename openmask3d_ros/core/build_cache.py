"""The build cache: exact incremental rebuilds reuse what a previous build of the map computed.

A rebuild (``openmask3d run`` on a folder that has a map, the node's next ``map_complete``)
reads ``MAP/cache/`` and recomputes only the work whose inputs changed. Every entry is keyed by
a SHA-256 of everything that determines its result, so a hit is the result a build from scratch
would compute (exact by construction):

===========  ==========================================================================
``embed``    a keyframe's segmenter image embedding: the frame's pixels (content hash), the
             segmenter's identity (model type, checkpoint content hash, precision, device,
             library versions), the image size
``refine``   one (mask, view) refinement (the winning box, its score, the fallback flag): the
             frame's pixels, the prompt rounds (official fidelity: drawn from the one shared
             stream, core/prompt_plan.py), the fallback box, ``segmenter.min_score`` and the
             segmenter's identity with its decoder settings
``crops``    the L crop embeddings of one (mask, view): the frame's pixels, the crop boxes, the
             image encoder's identity
``proposals`` the split proposals: the cloud (points and colours), the backend's identity and
             settings, the DBSCAN split settings, the fidelity, precomputed masks and segments
===========  ==========================================================================

A model whose identity is unknown (not one of the shipped classes, and no ``cache_identity()``
method returning a dict) is never cached. Numerical noise that no key captures: CLIP crops
encoded in batches of another composition, and SAM prompts batched across masks
(``segmenter.prompt_batch`` > 1, the GPU default), may differ in the last float bits; features
then agree to a cosine of 1 - 1e-7, not bit for bit.

On disk: ``MAP/cache/<kind>/<key>.entry``, each a magic line, the SHA-256 of the payload and
the payload (an .npz holding the entry's key). Entries are written to a temporary file (synced
for embeddings and proposals) and renamed into place (``os.replace``), so a reader sees a whole
entry or none; an entry whose
checksum, key or contents do not check out is logged, deleted and recomputed, never used. The
folder is bounded by ``cache.max_size_mb``: beyond it the least recently used entries (file
mtime, touched on every hit) are deleted. It survives restarts; deleting it is always safe.
"""
from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import logging
import os
import threading
import uuid
from collections.abc import Callable, Sequence
from enum import Enum
from pathlib import Path
from typing import Any

import numpy as np

from .atomic_files import pid_alive, write_atomically
from .map_meta import CacheRecord
from .refine import Refined2D, refine_many

log = logging.getLogger(__name__)

CACHE_DIRNAME = "cache"
FORMAT = 1                              # bump when an entry's meaning changes
MAGIC = b"OPENMASK3D-CACHE 1\n"
SUFFIX = ".entry"
KINDS = ("embed", "refine", "crops", "proposals")
_TMP_PREFIX = ".tmp-"
# synced before the rename: the costly entries. The small ones are not (an fsync costs ~4 ms, a
# refinement's decoder rounds little more): after a power loss one may be empty or cut short,
# which its checksum catches (recomputed with a warning), never used.
_SYNCED = ("embed", "proposals")
_CHECKPOINTS = "checkpoints.json"       # content hashes of model files, by path, size and mtime


class CacheMode(str, Enum):
    """``incremental``: reuse and store; ``full``: recompute everything, store the results (a
    later incremental build reuses them); ``off``: neither read nor write the cache."""

    INCREMENTAL = "incremental"
    FULL = "full"
    OFF = "off"

    @staticmethod
    def parse(value: CacheMode | str | bool | None, enabled: bool = True) -> CacheMode:
        """None: incremental when ``enabled`` (``cache.enabled``), else off; True/False:
        incremental/off; a name: that mode."""
        if value is None:
            return CacheMode.INCREMENTAL if enabled else CacheMode.OFF
        if isinstance(value, bool):
            return CacheMode.INCREMENTAL if value else CacheMode.OFF
        try:
            return CacheMode(str(value.value if isinstance(value, Enum) else value))
        except ValueError:
            raise ValueError(f"cache mode must be incremental, full or off, got {value!r}"
                             ) from None


# -- keys --------------------------------------------------------------------------------------
def _canonical(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        arr = np.ascontiguousarray(value)
        return {"array": hashlib.sha256(arr.tobytes()).hexdigest(), "dtype": arr.dtype.str,
                "shape": list(arr.shape)}
    if isinstance(value, (np.integer, np.floating, np.bool_)):
        return value.item()
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, dict):
        return {str(k): _canonical(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_canonical(v) for v in value]
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return _canonical(dataclasses.asdict(value))
    if isinstance(value, Path):
        return str(value)
    return value


def digest(kind: str, *parts: Any) -> str:
    """The key of a ``kind`` entry determined by ``parts`` (JSON-able values and arrays)."""
    from .. import __version__
    text = json.dumps([FORMAT, __version__, kind, _canonical(list(parts))], sort_keys=True,
                      separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def image_hash(image: np.ndarray) -> str:
    """Content hash of a decoded frame (pixels, shape and dtype)."""
    arr = np.ascontiguousarray(image)
    h = hashlib.sha256(f"{arr.dtype.str}{arr.shape}".encode())
    h.update(arr.tobytes())
    return h.hexdigest()


# -- the store ---------------------------------------------------------------------------------
class BuildCache:
    """The entries of one map folder's cache (``MAP/cache``), bounded by ``max_bytes``.

    ``get`` returns a checked entry or None (missing, or damaged: logged, deleted); ``put``
    writes one crash-safely and evicts the least recently used entries beyond the bound. A
    failure to write (disk full, read-only folder) is logged once and turns writing off for
    the build: the cache never fails a build. ``record`` says what was reused and computed."""

    def __init__(self, root: str | Path, max_bytes: int, mode: CacheMode | str = "incremental"):
        self.root = Path(root)
        self.mode = CacheMode.parse(mode)
        self.max_bytes = int(max_bytes)
        self.reading = self.mode is CacheMode.INCREMENTAL
        self.writing = self.mode is not CacheMode.OFF
        self.record = CacheRecord(mode=self.mode.value, folder=self.root.name,
                                  max_size_bytes=self.max_bytes)
        self._lock = threading.Lock()
        self._index: dict[Path, tuple[int, int]] = {}        # entry -> (bytes, mtime ns)
        self._total = 0
        self._checkpoints: dict[str, str] | None = None
        if self.writing or self.reading:
            self._scan()

    @staticmethod
    def for_map(map_dir: str | Path, cfg, mode: CacheMode | str | bool | None = None
                ) -> BuildCache | None:
        """The cache of map folder ``map_dir`` as ``cfg.cache`` and ``mode`` say, or None
        when off."""
        mode = CacheMode.parse(mode, cfg.cache.enabled)
        if mode is CacheMode.OFF:
            return None
        return BuildCache(Path(map_dir) / CACHE_DIRNAME, cfg.cache.max_size_mb * 2**20, mode)

    # -- entries -----------------------------------------------------------------------------
    def path(self, kind: str, key: str) -> Path:
        return self.root / kind / f"{key}{SUFFIX}"

    def get(self, kind: str, key: str,
            check: Callable[[dict[str, np.ndarray]], str | None] | None = None
            ) -> dict[str, np.ndarray] | None:
        """The entry's arrays, or None when absent, not read in this mode, or damaged.
        ``check(arrays)`` returns a problem (the entry is then damaged) or None."""
        if not self.reading:
            return None
        path = self.path(kind, key)
        try:
            blob = path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            return self._damaged(path, f"unreadable: {exc}")
        head = len(MAGIC) + 32
        if len(blob) < head or not blob.startswith(MAGIC):
            return self._damaged(path, "not a cache entry (bad header)")
        payload = blob[head:]
        if hashlib.sha256(payload).digest() != blob[len(MAGIC):head]:
            return self._damaged(path, "checksum mismatch")
        try:
            with np.load(io.BytesIO(payload), allow_pickle=False) as data:
                arrays = {k: data[k] for k in data.files}
        except Exception as exc:          # a valid checksum over a bad .npz: another writer
            return self._damaged(path, f"unreadable payload ({type(exc).__name__}: {exc})")
        if str(arrays.pop("__key__", "")) != key:
            return self._damaged(path, "holds another key")
        problem = check(arrays) if check else None
        if problem:
            return self._damaged(path, problem)
        try:                              # least recently used = oldest mtime
            os.utime(path)
            with self._lock:
                self._index[path] = (len(blob), path.stat().st_mtime_ns)
        except OSError:
            pass
        return arrays

    def put(self, kind: str, key: str, arrays: dict[str, np.ndarray]) -> None:
        """Store an entry: temporary file (synced for the costly kinds), ``os.replace``; then
        keep the bound."""
        if not self.writing:
            return
        buf = io.BytesIO()
        np.savez(buf, __key__=np.array(key), **arrays)
        payload = buf.getvalue()
        blob = MAGIC + hashlib.sha256(payload).digest() + payload
        path = self.path(kind, key)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            write_atomically(path, blob, _tmp_path(path), sync=kind in _SYNCED)
            mtime = path.stat().st_mtime_ns
        except OSError as exc:
            log.warning("build cache %s: cannot write (%s); not caching the rest of this build",
                        self.root, exc)
            self.record.notes.append(f"writing stopped: {exc}")
            self.writing = False
            return
        with self._lock:
            old = self._index.get(path)
            self._total += len(blob) - (old[0] if old else 0)
            self._index[path] = (len(blob), mtime)
        if self._total > self.max_bytes:
            self.evict()

    def evict(self, target: int | None = None) -> int:
        """Delete the least recently used entries until the cache holds at most ``target``
        bytes (default: 90 % of the bound, so that eviction runs seldom). Returns how many."""
        target = int(0.9 * self.max_bytes) if target is None else target
        removed = 0
        with self._lock:
            for path, (size, _) in sorted(self._index.items(), key=lambda kv: kv[1][1]):
                if self._total <= target:
                    break
                try:
                    path.unlink(missing_ok=True)
                except OSError as exc:
                    log.warning("build cache: cannot evict %s: %s", path, exc)
                    continue
                del self._index[path]
                self._total -= size
                removed += 1
        self.record.evicted += removed
        if removed:
            log.info("build cache %s: evicted %d least recently used entries (bound %.0f MiB)",
                     self.root, removed, self.max_bytes / 2**20)
        return removed

    @property
    def size_bytes(self) -> int:
        return self._total

    def finish(self) -> CacheRecord:
        """The record for the map's metadata (with the cache's size now)."""
        self.record.size_bytes = int(self._total)
        return self.record

    def _damaged(self, path: Path, why: str) -> None:
        log.warning("build cache entry %s is damaged (%s): recomputing it", path, why)
        self.record.damaged += 1
        try:
            path.unlink(missing_ok=True)
        except OSError:
            pass
        with self._lock:
            old = self._index.pop(path, None)
            if old:
                self._total -= old[0]
        return None

    def _scan(self) -> None:
        """Index the entries on disk; remove temporary files of writers that are gone."""
        for kind in KINDS:
            folder = self.root / kind
            if not folder.is_dir():
                continue
            for entry in os.scandir(folder):
                try:
                    if entry.name.startswith(_TMP_PREFIX):
                        pid = entry.name[len(_TMP_PREFIX):].split("-", 1)[0]
                        if not pid.isdigit() or not pid_alive(int(pid)):
                            os.unlink(entry.path)
                        continue
                    if entry.name.endswith(SUFFIX):
                        st = entry.stat()
                        self._index[Path(entry.path)] = (st.st_size, st.st_mtime_ns)
                        self._total += st.st_size
                except OSError:
                    continue

    # -- model files -------------------------------------------------------------------------
    def file_sha256(self, path: str | Path) -> str:
        """Content hash of a model file, remembered by path, size and mtime (checkpoints.json
        in the cache folder), so that a 2.5 GB checkpoint is read once, not every build."""
        path = Path(path).expanduser().resolve()
        st = path.stat()
        memo_key = f"{path}|{st.st_size}|{st.st_mtime_ns}"
        with self._lock:
            if self._checkpoints is None:
                self._checkpoints = _read_json(self.root / _CHECKPOINTS)
            known = self._checkpoints.get(memo_key)
        if known:
            return known
        h = hashlib.sha256()
        with open(path, "rb") as f:
            while chunk := f.read(1 << 22):
                h.update(chunk)
        value = h.hexdigest()
        with self._lock:
            self._checkpoints[memo_key] = value
            memo = dict(self._checkpoints)
        if self.writing:
            _write_json(self.root / _CHECKPOINTS, memo)
        return value


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return {str(k): str(v) for k, v in data.items()} if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def _write_json(path: Path, data: dict) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomically(path, json.dumps(data, indent=1).encode("utf-8"), _tmp_path(path))
    except OSError as exc:
        log.debug("cannot write %s: %s", path, exc)


def _tmp_path(path: Path) -> Path:
    """A temporary name beside ``path`` with this process's id (in the kind folders, ``_scan``
    removes those whose writer is gone)."""
    return path.parent / f"{_TMP_PREFIX}{os.getpid()}-{uuid.uuid4().hex[:12]}"


# -- model identities --------------------------------------------------------------------------
def _versions(*dists: str) -> dict[str, str]:
    from importlib import metadata
    out = {}
    for dist in dists:
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            pass
    return out


def _device(device: Any) -> str:
    text = str(device)
    if text.startswith("cuda"):
        try:
            import torch
            return f"cuda:{torch.cuda.get_device_name(torch.device(text))}"
        except Exception:
            return text
    return text


def _kind(model: Any) -> str:
    cls = type(model)
    return f"{cls.__module__}.{cls.__qualname__}"


_PKG = "openmask3d_ros.core"


def segmenter_identity(seg: Any, cache: BuildCache) -> tuple[dict | None, dict | None]:
    """(identity of its image embeddings, identity of its refinements), None when unknown.
    Exact classes only: a subclass may answer differently."""
    kind = _kind(seg)
    if kind == f"{_PKG}.segmenters.sam.SamSegmenter":
        embed = {"class": kind, "model_type": seg.model_type,
                 "checkpoint": cache.file_sha256(seg.checkpoint), "precision": seg.precision,
                 "device": _device(seg.device),
                 **_versions("torch", "segment-anything", "mobile_sam")}
        refine = {**embed, "quantize": bool(seg.quantize),
                  "early_stop_iou": float(seg.early_stop_iou),
                  "prompt_batch": int(seg.prompt_batch)}
        return embed, refine
    if kind == f"{_PKG}.segmenters.hull.HullSegmenter":
        return None, {"class": kind, "dilate_px": seg.dilate_px,
                      **_versions("opencv-python", "opencv-python-headless", "numpy")}
    own = _own_identity(seg)
    return (own, own) if own is not None else (None, None)


def encoder_identity(enc: Any, cache: BuildCache) -> dict | None:
    """Identity of an image encoder's crop embeddings, None when unknown."""
    kind = _kind(enc)
    if kind == f"{_PKG}.encoders.clip.ClipEncoder":
        return {"class": kind, "model": enc.model_name,
                "checkpoint": cache.file_sha256(enc.checkpoint), "precision": enc.precision,
                "quantize": bool(getattr(enc, "quantize", False)) or
                _quantized(enc.model.visual),
                "preprocess": "tensor" if enc.tensor_preprocess is not None else "pil",
                "device": _device(enc.device), **_versions("torch", "open_clip_torch", "pillow")}
    if kind == f"{_PKG}.encoders.colour.ColourEncoder":
        return {"class": kind, "centre_sigma": enc.centre_sigma,
                **_versions("opencv-python", "opencv-python-headless", "numpy")}
    return _own_identity(enc)


def proposals_identity(backend: Any, cache: BuildCache) -> dict | None:
    """Identity of a proposal backend's masks, None when unknown (e.g. Mask3D without a
    checkpoint: random weights differ every run)."""
    kind = _kind(backend)
    if kind == f"{_PKG}.proposals.geometric.GeometricProposals":
        return {"class": kind, "cfg": dataclasses.asdict(backend.cfg), "seed": backend.seed,
                **_versions("numpy", "scikit-learn", "scipy")}
    if kind == f"{_PKG}.proposals.precomputed.PrecomputedMasks":
        return {"class": kind, "file": cache.file_sha256(backend.path)}
    if kind == f"{_PKG}.proposals.mask3d.backend.Mask3DBackend":
        weights = Path(str(backend.weights))
        if not weights.is_file():
            return None
        return {"class": kind, "checkpoint": cache.file_sha256(weights),
                "num_queries": backend.num_queries, "voxel_size": backend.voxel_size,
                "mask_threshold": backend.mask_threshold, "fidelity": backend.fidelity,
                "dbscan": [backend.dbscan_eps, backend.dbscan_min_points],
                "device": _device(backend.device),
                **_versions("torch", "MinkowskiEngine", "scikit-learn")}
    return _own_identity(backend)


def safe_identity(fn: Callable, model: Any, cache: BuildCache, default: Any) -> Any:
    """``fn(model, cache)``, or ``default`` (not cached) when the model's files cannot be read
    or it lacks what its class should have: the cache never fails a build."""
    try:
        return fn(model, cache)
    except (OSError, AttributeError, TypeError, ValueError) as exc:
        note = f"{getattr(model, 'name', type(model).__name__)}: no cache identity ({exc})"
        log.warning("build cache: %s; its results are not cached", note)
        cache.record.notes.append(note)
        return default


def _quantized(module: Any) -> bool:
    return any("quantized" in type(m).__module__ for m in getattr(module, "modules", list)())


def _own_identity(model: Any) -> dict | None:
    """A model's own ``cache_identity()`` (a JSON-able dict that changes whenever its answers
    may), or None: its results are then never cached."""
    own = getattr(model, "cache_identity", None)
    if not callable(own):
        return None
    value = own()
    return None if value is None else {"class": _kind(model), "own": value}


# -- the feature stage's use -------------------------------------------------------------------
def _check_refined(a: dict) -> str | None:
    if set(a) != {"box", "score", "fallback"} or a["box"].shape != (4,):
        return "not a refinement entry"
    return None


def _check_embedding(a: dict) -> str | None:
    if not {"features", "dtype", "original_size", "input_size"} <= set(a):
        return "not an embedding entry"
    if a["features"].ndim != 4 or not np.all(np.isfinite(a["features"])):
        return "embedding has a bad shape or non-finite values"
    return None


class FeatureCache:
    """The feature stage's entries, with the keys bound to its models and settings.

    ``refine`` answers a frame's (mask, view) jobs from the cache where it can and runs the
    segmenter for the rest, on the frame's cached embedding when there is one; ``crops`` /
    ``store_crops`` do the same for the crop embeddings of one (mask, view)."""

    def __init__(self, store: BuildCache, segmenter: Any, encoder: Any, min_score: float):
        self.store = store
        self.record = store.record
        self.embed_id, self.refine_id = safe_identity(segmenter_identity, segmenter, store,
                                                      (None, None))
        self.crops_id = safe_identity(encoder_identity, encoder, store, None)
        self.min_score = float(min_score)
        self.exportable = self.embed_id is not None and all(
            callable(getattr(segmenter, m, None)) for m in ("export_embedding",
                                                             "import_embedding"))
        for what, ident, model in (("segmenter", self.refine_id, segmenter),
                                   ("image encoder", self.crops_id, encoder)):
            if ident is None:
                note = (f"{what} {getattr(model, 'name', type(model).__name__)} has no cache "
                        "identity (cache_identity()): its results are recomputed every build")
                log.info(note)
                self.record.notes.append(note)

    def refine(self, segmenter: Any, image: np.ndarray, fid: str, fhash: str,
               jobs: Sequence[tuple[int, np.ndarray, tuple[int, int, int, int]]]
               ) -> list[Refined2D]:
        """``refine_many`` over ``jobs`` (mask, prompts, fallback box) on frame ``fid``."""
        results: list[Refined2D | None] = [None] * len(jobs)
        keys: list[str | None] = [None] * len(jobs)
        if self.refine_id is not None:
            for i, (_, prompts, box) in enumerate(jobs):
                keys[i] = digest("refine", self.refine_id, fhash,
                                 np.asarray(prompts, dtype=np.float32), list(box),
                                 self.min_score)
                hit = self.store.get("refine", keys[i], _check_refined)
                if hit is not None:
                    results[i] = Refined2D(tuple(int(v) for v in hit["box"]),
                                           float(hit["score"]), bool(hit["fallback"]))
        missing = [i for i, r in enumerate(results) if r is None]
        self.record.refinements_reused += len(jobs) - len(missing)
        self.record.refinements_computed += len(missing)
        if not missing:
            return results
        first = min(jobs[i][0] for i in missing)
        if self.record.first_mask_recomputed is None or first < self.record.first_mask_recomputed:
            self.record.first_mask_recomputed = int(first)
        self._set_image(segmenter, image, fid, fhash)
        fresh = refine_many(segmenter, [jobs[i][1] for i in missing],
                            [jobs[i][2] for i in missing], self.min_score)
        for i, r in zip(missing, fresh):
            results[i] = r
            if keys[i] is not None:
                self.store.put("refine", keys[i], {
                    "box": np.asarray(r.box, dtype=np.int64), "score": np.float64(r.score),
                    "fallback": np.bool_(r.fallback)})
        return results

    def _set_image(self, segmenter: Any, image: np.ndarray, fid: str, fhash: str) -> None:
        key = None
        if self.exportable:
            key = digest("embed", self.embed_id, fhash, list(image.shape))
            data = self.store.get("embed", key, _check_embedding)
            if data is not None:
                try:
                    segmenter.import_embedding(data)
                    self.record.embeddings_reused += 1
                    self.record.frames_loaded.append(fid)
                    return
                except Exception as exc:          # e.g. another dtype: embed again
                    log.warning("cached embedding of frame %s not usable (%s): embedding it "
                                "again", fid, exc)
        segmenter.set_image(image)
        self.record.embeddings_computed += 1
        self.record.frames_embedded.append(fid)
        if key is not None and self.store.writing:
            self.store.put("embed", key, segmenter.export_embedding())

    def crops_key(self, fhash: str, boxes: Sequence[tuple[int, int, int, int]]) -> str | None:
        if self.crops_id is None:
            return None
        return digest("crops", self.crops_id, fhash, [list(b) for b in boxes])

    def crops(self, key: str | None, levels: int, dim: int) -> np.ndarray | None:
        """The cached (levels, dim) crop embeddings under ``key``, or None."""
        if key is None:
            return None

        def check(a: dict) -> str | None:
            e = a.get("embeddings")
            if e is None or e.shape != (levels, dim) or not np.all(np.isfinite(e)):
                return "not a crop entry of this encoder"
            return None
        hit = self.store.get("crops", key, check)
        if hit is None:
            return None
        self.record.crops_reused += levels
        return hit["embeddings"].astype(np.float32)

    def store_crops(self, key: str | None, embeddings: np.ndarray) -> None:
        self.record.crops_computed += len(embeddings)
        if key is not None:
            self.store.put("crops", key, {"embeddings": np.asarray(embeddings, np.float32)})
