"""The OpenMask3D map: class-agnostic instances over the scene cloud and one feature per instance.

On disk (a folder, ``SCENE/openmask3d/`` by default):
```
instances.npz   point_indices (int64, concatenated), offsets (M+1,)  -> points of instance m are
                point_indices[offsets[m]:offsets[m+1]] (indices into the scene's cloud.ply)
                features (M, D) float32 L2-normalised (zero row: no view saw the instance)
                centroids (M, 3), bbox_min (M, 3), bbox_max (M, 3)
meta.json       models (names, stand-in flags), parameters, versions, per-instance diagnostics
```
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

MAP_DIRNAME = "openmask3d"
FORMAT_VERSION = 1


@dataclass
class InstanceMap:
    """Instances as point-index sets over ``points`` plus their features."""

    points: np.ndarray                     # (N, 3) float32, the scene cloud
    point_indices: list[np.ndarray]        # M arrays of int64 indices into ``points``
    features: np.ndarray                   # (M, D) float32, L2-normalised rows (or zero)
    meta: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if len(self.point_indices) != len(self.features):
            raise ValueError(f"{len(self.point_indices)} instances but "
                             f"{len(self.features)} feature rows")

    @property
    def num_instances(self) -> int:
        return len(self.point_indices)

    @property
    def valid(self) -> np.ndarray:
        """Instances that have a feature (were seen by at least one view)."""
        return np.linalg.norm(self.features, axis=1) > 0

    def instance_points(self, m: int) -> np.ndarray:
        return self.points[self.point_indices[m]]

    def centroids(self) -> np.ndarray:
        return np.array([self.instance_points(m).mean(axis=0) for m in range(self.num_instances)]
                        ).reshape(-1, 3)

    def boxes(self) -> tuple[np.ndarray, np.ndarray]:
        mins = [self.instance_points(m).min(axis=0) for m in range(self.num_instances)]
        maxs = [self.instance_points(m).max(axis=0) for m in range(self.num_instances)]
        return np.array(mins).reshape(-1, 3), np.array(maxs).reshape(-1, 3)

    @staticmethod
    def from_masks(points: np.ndarray, masks: np.ndarray, features: np.ndarray,
                   meta: dict | None = None) -> "InstanceMap":
        """Build from a (P, M) boolean mask matrix."""
        indices = [np.flatnonzero(masks[:, m]).astype(np.int64) for m in range(masks.shape[1])]
        return InstanceMap(points, indices, features, dict(meta or {}))

    def masks(self) -> np.ndarray:
        """Dense (P, M) boolean matrix."""
        out = np.zeros((len(self.points), self.num_instances), dtype=bool)
        for m, idx in enumerate(self.point_indices):
            out[idx, m] = True
        return out

    # -- storage --------------------------------------------------------------------------------
    def save(self, folder: str | Path) -> Path:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        sizes = [len(i) for i in self.point_indices]
        offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
        flat = (np.concatenate(self.point_indices) if self.point_indices
                else np.zeros(0, dtype=np.int64))
        bmin, bmax = self.boxes()
        tmp = folder / "instances.tmp.npz"
        np.savez_compressed(tmp, point_indices=flat, offsets=offsets,
                            features=self.features.astype(np.float32),
                            centroids=self.centroids().astype(np.float32),
                            bbox_min=bmin.astype(np.float32), bbox_max=bmax.astype(np.float32),
                            num_points=np.int64(len(self.points)))
        meta = dict(self.meta, format_version=FORMAT_VERSION, num_instances=self.num_instances)
        (folder / "meta.json").write_text(json.dumps(meta, indent=2, default=_json_default))
        tmp.replace(folder / "instances.npz")   # the npz appears last: its presence means complete
        return folder

    @staticmethod
    def load(folder: str | Path, points: np.ndarray | None = None) -> "InstanceMap":
        """Load a saved map; ``points`` defaults to the cloud of the scene folder above it."""
        folder = Path(folder)
        if (folder / MAP_DIRNAME / "instances.npz").is_file():
            folder = folder / MAP_DIRNAME           # a scene folder was given
        npz_path = folder / "instances.npz"
        if not npz_path.is_file():
            raise FileNotFoundError(f"no OpenMask3D map at {folder} (expected instances.npz; "
                                    "run `openmask3d run SCENE` first)")
        data = np.load(npz_path)
        meta = json.loads((folder / "meta.json").read_text())
        if points is None:
            from .scene import read_ply, SceneFolder
            cloud = meta.get("cloud_path")
            path = Path(cloud) if cloud and Path(cloud).is_file() else SceneFolder(
                folder.parent).cloud_path
            points, _ = read_ply(path)
        if len(points) != int(data["num_points"]):
            raise ValueError(f"map at {folder} was built on {int(data['num_points'])} points, "
                             f"but the cloud has {len(points)}")
        off = data["offsets"]
        flat = data["point_indices"]
        indices = [flat[off[m]:off[m + 1]] for m in range(len(off) - 1)]
        return InstanceMap(points, indices, data["features"], meta)


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
