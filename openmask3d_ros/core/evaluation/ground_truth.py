"""Ground truth for evaluation: our scene folders and ScanNet scans; class lists and splits.

ScanNet scans are read from the files of the official release::

    sceneXXXX_XX_vh_clean_2.ply                  the mesh whose vertices are the evaluated points
    sceneXXXX_XX_vh_clean_2.0.010000.segs.json   {"segIndices": [segment id per vertex]}
    sceneXXXX_XX.aggregation.json                {"segGroups": [{"objectId", "label", "segments"}]}

Instance id = objectId + 1 (0 = unannotated). Labels are ScanNet's raw categories; give the
release's ``scannetv2-labels.combined.tsv`` as ``label_map`` to map them to the ``category`` column
(the ScanNet200 names).
"""
from __future__ import annotations

import csv
import json
import logging
from pathlib import Path
from collections.abc import Mapping, Sequence

import numpy as np

from ..scene import GroundTruth, SceneError, SceneFolder, read_ply

log = logging.getLogger(__name__)

SPLIT_NAMES = ("head", "common", "tail")


def scannet_files(scene_dir: str | Path) -> tuple[Path, Path, Path] | None:
    """(ply, segs.json, aggregation.json) of a ScanNet scan folder, or None when absent."""
    root = Path(scene_dir)
    plys = sorted(root.glob("*_vh_clean_2.ply"))
    if not plys:
        return None
    stem = plys[0].name[: -len("_vh_clean_2.ply")]
    segs = root / f"{stem}_vh_clean_2.0.010000.segs.json"
    if not segs.is_file():
        found = sorted(root.glob(f"{stem}_vh_clean_2*.segs.json"))
        segs = found[0] if found else segs
    agg = root / f"{stem}.aggregation.json"
    if not agg.is_file():
        found = sorted(root.glob(f"{stem}*.aggregation.json"))
        agg = found[0] if found else agg
    if not (segs.is_file() and agg.is_file()):
        return None
    return plys[0], segs, agg


def read_label_map(path: str | Path, source: str = "raw_category",
                   target: str = "category") -> dict[str, str]:
    """Map ScanNet raw categories to another column of ``scannetv2-labels.combined.tsv``."""
    path = Path(path)
    with path.open(newline="") as f:
        reader = csv.DictReader(f, delimiter="\t")
        if not reader.fieldnames or source not in reader.fieldnames \
                or target not in reader.fieldnames:
            raise ValueError(f"{path}: expected tab-separated columns '{source}' and '{target}', "
                             f"found {reader.fieldnames}")
        return {row[source]: row[target] for row in reader if row.get(source)}


def load_scannet_ground_truth(scene_dir: str | Path,
                              label_map: Mapping[str, str] | None = None) -> GroundTruth:
    """Per-vertex instance ids and labels of a ScanNet scan (see module docstring)."""
    files = scannet_files(scene_dir)
    if files is None:
        raise SceneError(f"{scene_dir}: no ScanNet annotation (need *_vh_clean_2.ply, "
                         "*_vh_clean_2.0.010000.segs.json and *.aggregation.json)")
    ply, segs_path, agg_path = files
    seg_indices = np.asarray(json.loads(segs_path.read_text())["segIndices"], dtype=np.int64)
    points, _ = read_ply(ply)
    if len(seg_indices) != len(points):
        raise SceneError(f"{segs_path}: {len(seg_indices)} segment indices but {ply.name} has "
                         f"{len(points)} vertices")
    groups = json.loads(agg_path.read_text())["segGroups"]
    ids = np.zeros(len(seg_indices), dtype=np.int32)
    labels: dict[int, dict] = {}
    if len(seg_indices):
        lut = np.zeros(int(seg_indices.max()) + 1, dtype=np.int32)
        for g in groups:
            inst = int(g.get("objectId", g.get("id"))) + 1
            raw = str(g["label"])
            name = label_map.get(raw, raw) if label_map is not None else raw
            labels[inst] = {"label": name, "raw_label": raw}
            segs = np.asarray([s for s in g["segments"] if 0 <= s < len(lut)], dtype=np.int64)
            # ScanNet has a few segments claimed by two groups; the later group wins, like the
            # official export (which overwrites in file order).
            lut[segs] = inst
        ids = lut[seg_indices]
    return GroundTruth(ids, labels)


def load_ground_truth(scene_dir: str | Path,
                      label_map: Mapping[str, str] | None = None) -> GroundTruth:
    """Ground truth of a scene folder (``ground_truth/``) or, failing that, of a ScanNet scan."""
    scene_dir = Path(scene_dir)
    gt = SceneFolder(scene_dir).ground_truth()
    if gt is not None:
        if label_map:
            gt = GroundTruth(gt.instance_ids, {
                k: dict(v, label=label_map.get(v.get("label"), v.get("label")))
                for k, v in gt.labels.items()})
        return gt
    if scannet_files(scene_dir) is not None:
        return load_scannet_ground_truth(scene_dir, label_map)
    raise SceneError(f"{scene_dir}: no ground truth (ground_truth/instance_ids.npy, or ScanNet's "
                     "*_vh_clean_2.ply + *.segs.json + *.aggregation.json)")


def gt_classes(gt: GroundTruth, key: str = "label") -> dict[int, str | None]:
    """Class name per GT instance id, read from attribute ``key`` ("label", "color", ...);
    missing or empty names give None (unannotated)."""
    out: dict[int, str | None] = {}
    for i, v in gt.labels.items():
        name = v.get(key)
        out[int(i)] = str(name) if name is not None and str(name) != "" else None
    return out


def read_class_list(path: str | Path) -> list[str]:
    """Class names, one per line (blank lines and '#' comments skipped; order kept, no repeats)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"class list not found: {path}")
    names: list[str] = []
    for line in path.read_text().splitlines():
        name = line.split("#", 1)[0].strip()
        if name and name not in names:
            names.append(name)
    if not names:
        raise ValueError(f"class list {path} holds no class names")
    return names


def read_splits(path: str | Path) -> dict[str, list[str]]:
    """Class splits from JSON or YAML: ``{head: [...], common: [...], tail: [...]}`` (any names)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"splits file not found: {path}")
    text = path.read_text()
    if path.suffix.lower() == ".json":
        data = json.loads(text)
    else:
        import yaml
        data = yaml.safe_load(text)
    if not isinstance(data, Mapping) or not data:
        raise ValueError(f"splits file {path} must map split names to lists of class names")
    out: dict[str, list[str]] = {}
    for name, labels in data.items():
        if isinstance(labels, str) or not isinstance(labels, Sequence):
            raise ValueError(f"splits file {path}: '{name}' must be a list of class names")
        out[str(name)] = [str(x) for x in labels]
    return out


def check_splits(splits: Mapping[str, Sequence[str]], classes: Sequence[str]) -> list[str]:
    """Split classes that are not evaluated (returned, so the caller can warn)."""
    known = set(classes)
    return sorted({c for labels in splits.values() for c in labels if c not in known})
