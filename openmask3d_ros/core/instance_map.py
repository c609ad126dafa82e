"""The OpenMask3D map: class-agnostic instances over the scene cloud and one feature per instance.

On disk: a map folder (``SCENE/openmask3d/`` by default) holds generations (see
``map_versions``); each generation folder holds
```
cloud.ply       the cloud the map was built on (its content hash is in meta.json)
instances.npz   point_indices (int64, concatenated), offsets (M+1,)  -> points of instance m are
                point_indices[offsets[m]:offsets[m+1]] (indices into this cloud.ply)
                features (M, D) float32 L2-normalised (zero row: no view saw the instance)
                centroids (M, 3), bbox_min (M, 3), bbox_max (M, 3)
                obb_center (M, 3), obb_rotation (M, 3, 3), obb_size (M, 3): oriented boxes;
                support_id, on_floor, bottom, top, height_above_floor (M,), floor_height:
                what each instance rests on (core/geometry.py; computed for maps without them)
meta.json       ``MapMeta`` (core/map_meta.py): cloud {file, num_points, sha256}, models
                (names, stand-in notes), parameters, versions, per-instance diagnostics
```
"""
from __future__ import annotations

import hashlib
import json
import logging
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from . import map_versions
from .errors import InputError, input_error_from
from .geometry import Placement, placement
from .map_meta import FORMAT_VERSION, CloudRecord, MapMeta

log = logging.getLogger(__name__)

MAP_DIRNAME = "openmask3d"
CLOUD_FILE = "cloud.ply"
SOURCE_INDEX_FILE = "source_index.npy"     # written only for a thinned input cloud
DEFAULT_KEEP = 3


@dataclass
class InstanceMap:
    """Instances as point-index sets over ``points`` plus their features."""

    points: np.ndarray                     # (N, 3) float32, the scene cloud
    point_indices: list[np.ndarray]        # M arrays of int64 indices into ``points``
    features: np.ndarray                   # (M, D) float32, L2-normalised rows (or zero)
    meta: MapMeta = field(default_factory=MapMeta)
    # (N,) int64: each point's index in the input cloud when max_cloud_points thinned it
    source_index: np.ndarray | None = None
    # (centroids, bbox_min, bbox_max), each (M, 3) float64: stored or computed once
    _geom: tuple | None = field(default=None, init=False, repr=False, compare=False)
    _placement: Placement | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if isinstance(self.meta, dict):     # a meta.json object: typed (and checked) here
            self.meta = MapMeta.from_json(self.meta)
        if len(self.point_indices) != len(self.features):
            raise ValueError(f"{len(self.point_indices)} instances but "
                             f"{len(self.features)} feature rows")

    def source_indices(self, m: int) -> np.ndarray:
        """Instance ``m``'s points as indices into the input cloud the map was built from (the
        map cloud's own indices when the input was not thinned, max_cloud_points)."""
        idx = self.point_indices[m]
        return idx if self.source_index is None else self.source_index[idx]

    def _source_record(self) -> dict:
        """The thinning recorded by the build (meta.cloud before saving), when there was one."""
        prev = self.meta.cloud
        if self.source_index is None or prev is None:
            return {}
        return {"source_points": prev.source_points, "voxel": prev.voxel}

    @property
    def num_instances(self) -> int:
        return len(self.point_indices)

    @property
    def valid(self) -> np.ndarray:
        """Instances that have a feature (were seen by at least one view)."""
        return np.linalg.norm(self.features, axis=1) > 0

    def flat_indices(self) -> tuple[np.ndarray, np.ndarray]:
        """(indices (K,) int64, offsets (M+1,)): instance m is indices[offsets[m]:offsets[m+1]]."""
        sizes = np.fromiter((len(i) for i in self.point_indices), np.int64,
                            count=self.num_instances)
        offsets = np.zeros(self.num_instances + 1, np.int64)
        np.cumsum(sizes, out=offsets[1:])
        flat = (np.concatenate(self.point_indices).astype(np.int64, copy=False)
                if self.num_instances else np.zeros(0, np.int64))
        return flat, offsets

    def centroids(self) -> np.ndarray:
        """(M, 3) mean of each instance's points (NaN for an instance without points)."""
        return self._geometry()[0]

    def boxes(self) -> tuple[np.ndarray, np.ndarray]:
        """(M, 3) minimum and maximum corners of each instance's axis-aligned box."""
        return self._geometry()[1], self._geometry()[2]

    def placement(self) -> Placement:
        """Oriented boxes and support of every instance (core/geometry.py), with the map's
        recorded ``geometry`` settings and structure tags: stored, or computed once."""
        if self._placement is None:
            cfg = self.meta.pipeline_config()
            structure = self.meta.structure
            tags = structure.reasons if structure is not None else None
            if tags is None or len(tags) != self.num_instances:
                from .structure import tag_structure
                tags = tag_structure(self.points, self.point_indices, cfg.structure)
            g = cfg.geometry
            self._placement = placement(self.points, self.point_indices, tags, g.up_axis,
                                        g.box_mode, g.contact_distance)
        return self._placement

    def _geometry(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        # Computed once per map (or read from instances.npz by load()); save() stores it.
        if self._geom is None:
            self._geom = instance_geometry(self.points, *self.flat_indices())
        return self._geom

    @staticmethod
    def from_masks(points: np.ndarray, masks: np.ndarray, features: np.ndarray,
                   meta: MapMeta | None = None) -> InstanceMap:
        """Build from a (P, M) boolean mask matrix."""
        indices = [np.flatnonzero(masks[:, m]).astype(np.int64) for m in range(masks.shape[1])]
        return InstanceMap(points, indices, features, meta or MapMeta())

    # -- storage --------------------------------------------------------------------------------
    def save(self, folder: str | Path, keep: int = DEFAULT_KEEP,
             colors: np.ndarray | None = None) -> Path:
        """Write a new generation under the map folder ``folder`` and make it current.

        The generation holds its own copy of the cloud (``colors`` optional) and the cloud's
        content hash; the ``keep`` newest generations are kept. Returns the generation folder."""
        root = Path(folder)
        tmp, name = map_versions.begin(root)
        try:
            return self._write_generation(root, tmp, name, keep, colors)
        except BaseException:
            # A failure in this process drops its half-written folder; after a kill (no chance
            # to clean up) the next save removes it. Either way it is never loaded.
            shutil.rmtree(tmp, ignore_errors=True)
            raise

    def _write_generation(self, root: Path, tmp: Path, name: str, keep: int,
                          colors: np.ndarray | None) -> Path:
        flat, offsets = self.flat_indices()
        centroids, bmin, bmax = self._geometry()
        from .scene import write_ply
        write_ply(tmp / CLOUD_FILE, self.points, colors)
        np.savez_compressed(tmp / "instances.npz", point_indices=flat, offsets=offsets,
                            features=self.features.astype(np.float32),
                            centroids=centroids.astype(np.float32),
                            bbox_min=bmin.astype(np.float32), bbox_max=bmax.astype(np.float32),
                            num_points=np.int64(len(self.points)),
                            **self.placement().to_arrays())
        meta = self.meta
        meta.format_version, meta.num_instances = FORMAT_VERSION, self.num_instances
        meta.cloud = CloudRecord(CLOUD_FILE, int(len(self.points)), cloud_hash(self.points),
                                 **self._source_record())
        if self.source_index is not None:
            np.save(tmp / SOURCE_INDEX_FILE, self.source_index.astype(np.int64))
        (tmp / "meta.json").write_text(json.dumps(meta.to_json(), indent=2,
                                                  default=_json_default))
        gen = map_versions.publish(root, tmp, name, keep)
        meta.map_dir, meta.generation = str(gen), gen.name
        return gen

    @staticmethod
    def load(folder: str | Path, points: np.ndarray | None = None) -> InstanceMap:
        """Load the current complete map of a scene folder, a map folder or one generation.

        ``points``: the cloud the caller will use the map with; refused unless it is the cloud
        the map was built on (content hash). Bad files raise ``InputError`` naming them."""
        gen = find_map(Path(folder))
        meta = read_meta(gen / "meta.json")
        cloud = meta.cloud
        if cloud is None or not cloud.sha256:
            raise InputError("no 'cloud' record with a 'sha256' (not a map written by this "
                             "version?)", gen / "meta.json", "cloud")
        from .scene import read_ply
        snapshot, _ = read_ply(gen / cloud.file)
        if cloud_hash(snapshot) != cloud.sha256:
            raise InputError(f"the map's cloud does not match the map (content hash "
                             f"{cloud_hash(snapshot)[:12]} != recorded {cloud.sha256[:12]}): "
                             "the file was changed or damaged; rebuild the map",
                             gen / CLOUD_FILE)
        if points is not None and cloud_hash(np.asarray(points, np.float32)) != cloud.sha256:
            raise InputError(f"the map was built on another cloud ({len(snapshot)} points, hash "
                             f"{cloud.sha256[:12]}) than the one given ({len(points)} points, "
                             f"hash {cloud_hash(np.asarray(points, np.float32))[:12]}): "
                             "rebuild the map on this cloud", gen)
        indices, features, geometry, stored = read_instances(gen / "instances.npz",
                                                             len(snapshot))
        meta.map_dir, meta.generation = str(gen), gen.name
        imap = InstanceMap(snapshot, indices, features, meta,
                           read_source_index(gen / SOURCE_INDEX_FILE, cloud))
        imap._geom = geometry
        imap._placement = Placement.from_arrays(stored)
        return imap


def read_source_index(path: Path, cloud: CloudRecord) -> np.ndarray | None:
    """The map points' indices into the input cloud (None when the map has none), checked."""
    if not path.is_file():
        if cloud.source_points:
            raise InputError("missing: the map was built on a thinned cloud", path)
        return None
    try:
        index = np.load(path, allow_pickle=False)
    except Exception as exc:
        raise input_error_from(exc, path, "source index") from exc
    if index.shape != (cloud.num_points,) or not np.issubdtype(index.dtype, np.integer) or (
            len(index) and (index.min() < 0 or index.max() >= max(cloud.source_points, 1))):
        raise InputError(f"must hold {cloud.num_points} indices below {cloud.source_points}, "
                         f"got {index.dtype} {index.shape}", path)
    return index.astype(np.int64, copy=False)


def cloud_hash(points: np.ndarray) -> str:
    """SHA-256 of the points (float32 xyz, row order): another order is another cloud."""
    pts = np.ascontiguousarray(np.asarray(points, dtype="<f4").reshape(-1, 3))
    return hashlib.sha256(pts.tobytes()).hexdigest()


def has_map(folder: str | Path) -> bool:
    """Whether ``folder`` (a scene or map folder) holds a loadable map."""
    try:
        find_map(Path(folder))
    except InputError:
        return False
    return True


def find_map(path: Path) -> Path:
    """The generation folder to load for a scene folder, a map folder or a generation."""
    for root in (path, path / MAP_DIRNAME):
        if (root / map_versions.POINTER).is_file() or map_versions.generations(root):
            gen = map_versions.current(root)
            if gen is not None:
                return gen
    if (path / "meta.json").is_file() and (path / CLOUD_FILE).is_file() and \
            (path / "instances.npz").is_file():
        return path                                 # one generation folder given directly
    if not path.exists():
        raise InputError("no such map or scene folder", path)
    raise InputError("no OpenMask3D map here (expected a CURRENT file and gen-* folders, "
                     f"or {MAP_DIRNAME}/ holding them; run `openmask3d run SCENE` first)", path)


def read_meta(path: Path) -> MapMeta:
    """meta.json as ``MapMeta``, or ``InputError`` naming the file (and the bad key)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise input_error_from(exc, path, "map metadata") from exc
    return MapMeta.from_json(data, path)


_REQUIRED = ("point_indices", "offsets", "features")


_GEOMETRY = ("centroids", "bbox_min", "bbox_max")
_PLACEMENT = (*Placement.ARRAYS, "floor_height")


def read_instances(path: Path, num_points: int
                   ) -> tuple[list[np.ndarray], np.ndarray, tuple | None, dict]:
    """Per-instance point indices and features from instances.npz, checked against the cloud,
    the stored (centroids, bbox_min, bbox_max) (None when the file lacks them: older maps) and
    the stored placement arrays (possibly none: ``Placement.from_arrays`` checks them)."""
    try:
        with np.load(path, allow_pickle=False) as data:
            missing = [k for k in _REQUIRED if k not in data.files]
            if missing:
                raise InputError(f"array(s) {', '.join(missing)} missing (it holds "
                                 f"{', '.join(data.files) or 'nothing'})", path, missing[0])
            arrays = {k: data[k] for k in _REQUIRED + _GEOMETRY + _PLACEMENT
                      if k in data.files}
            stored_n = int(data["num_points"]) if "num_points" in data.files else None
    except InputError:
        raise
    except Exception as exc:          # zip/zlib/npy-header failures of a damaged file
        raise input_error_from(exc, path, "map instances") from exc
    flat, off, feats = arrays["point_indices"], arrays["offsets"], arrays["features"]
    if stored_n is not None and stored_n != num_points:
        raise InputError(f"built on {stored_n} points, but its cloud has {num_points}", path,
                         "num_points")
    if flat.ndim != 1 or not np.issubdtype(flat.dtype, np.integer):
        raise InputError(f"must be a 1-D integer array, got {flat.dtype} {flat.shape}", path,
                         "point_indices")
    if off.ndim != 1 or len(off) < 1 or not np.issubdtype(off.dtype, np.integer) or \
            off[0] != 0 or off[-1] != len(flat) or np.any(np.diff(off) < 0):
        raise InputError(f"offsets must rise from 0 to {len(flat)} (the number of indices)",
                         path, "offsets")
    M = len(off) - 1
    if feats.ndim != 2 or feats.shape[0] != M or not np.issubdtype(feats.dtype, np.floating):
        raise InputError(f"must be a float array with one row per instance ({M}), got "
                         f"{feats.dtype} {feats.shape}", path, "features")
    if not np.all(np.isfinite(feats)):
        raise InputError("non-finite values", path, "features")
    if len(flat) and (flat.min() < 0 or flat.max() >= num_points):
        bad = int(flat.max() if flat.max() >= num_points else flat.min())
        raise InputError(f"point index {bad} is out of range for a cloud of {num_points} "
                         "points", path, "point_indices")
    flat = flat.astype(np.int64)
    geometry = None
    if all(k in arrays for k in _GEOMETRY):
        geo = [arrays[k] for k in _GEOMETRY]
        if all(g.shape == (M, 3) and np.issubdtype(g.dtype, np.floating) for g in geo):
            geometry = tuple(g.astype(np.float64) for g in geo)
        else:   # computed again from the points: the stored copy is only a cache
            log.warning("%s: stored centroids/boxes do not have shape (%d, 3); recomputing them",
                        path, M)
    stored = {k: arrays[k] for k in _PLACEMENT if k in arrays}
    return [flat[off[m]:off[m + 1]] for m in range(M)], feats.astype(np.float32), geometry, \
        stored


def instance_geometry(points: np.ndarray, flat: np.ndarray, offsets: np.ndarray
                      ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(centroids, bbox_min, bbox_max), each (M, 3) float64, of the instances given as
    concatenated point ``flat`` indices and ``offsets`` (M+1,); NaN rows for empty instances.
    One gather and three segment reductions, no per-instance Python loop."""
    M = len(offsets) - 1
    out = [np.full((M, 3), np.nan) for _ in range(3)]
    sizes = np.diff(offsets)
    full = np.flatnonzero(sizes > 0)
    if len(full) == 0:
        return out[0], out[1], out[2]
    pts = np.asarray(points)[flat]
    # reduceat over the starts of non-empty instances only: each segment then ends where the
    # next non-empty one starts, i.e. exactly at its own end (empty ones hold no points)
    starts = offsets[full]
    out[0][full] = np.add.reduceat(pts.astype(np.float64), starts) / sizes[full, None]
    out[1][full] = np.minimum.reduceat(pts, starts)
    out[2][full] = np.maximum.reduceat(pts, starts)
    return out[0], out[1], out[2]


def _json_default(obj):
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (np.floating,)):
        return float(obj)
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")
