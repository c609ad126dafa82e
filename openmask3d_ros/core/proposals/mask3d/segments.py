"""ScanNet superpoint segments (``<scene>_vh_clean_2.0.010000.segs.json``) for Mask3D's
segment voting; absent files mean no voting."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ...errors import InputError

SEGMENTS_GLOB = "*_vh_clean_2.0.010000.segs.json"


def find_segments(scene_root: str | Path, num_points: int) -> np.ndarray | None:
    """Per-point segment ids from the scene folder's ScanNet segments file, None without one."""
    files = sorted(Path(scene_root).glob(SEGMENTS_GLOB))
    if not files:
        return None
    path = files[0]
    try:
        data = json.loads(path.read_text())
        seg = np.asarray(data["segIndices"], dtype=np.int64)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise InputError(f"not a ScanNet segments file with 'segIndices' ({exc})", path,
                         "segIndices") from None
    if seg.ndim != 1 or len(seg) != num_points:
        raise InputError(f"segIndices has {seg.size} entries but the cloud has {num_points} "
                         "points", path, "segIndices")
    return seg
