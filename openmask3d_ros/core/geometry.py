"""Per-instance geometry a planner acts on: oriented boxes and what each instance rests on.

Boxes are gravity-aligned by default (``yaw``: rotated about the up axis only, since objects
rest on surfaces): the minimum-area rectangle of the instance's footprint (rotating calipers
over its 2D convex hull) times its extent along up. ``full``: a PCA box in 3D.
Support: an instance rests on the highest instance whose top surface is within
``contact_distance`` of its bottom and whose footprint holds its centre; otherwise on the floor
when its bottom is that close to the floor height, else on nothing (it hangs, or the map missed
its support). The floor is the horizontal structure at the bottom of the cloud (an instance of
the map when it was segmented; else only a height: the cloud's lowest points).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

BOX_MODES = ("yaw", "full")
UP_AXES = {"+x": (1, 0, 0), "-x": (-1, 0, 0), "+y": (0, 1, 0), "-y": (0, -1, 0),
           "+z": (0, 0, 1), "-z": (0, 0, -1)}
LOW, HIGH = 2.0, 98.0       # percentiles for bottom and top: a few stray points do not count
FLOOR_THICKNESS = 0.10      # m, thickest a floor instance is along up (noise, a rug)


@dataclass
class OrientedBoxes:
    """M boxes: centre (M, 3), rotation (M, 3, 3) whose columns are the box axes in the map
    frame (the third is ``up`` for yaw boxes), size (M, 3) along those axes (NaN: no points)."""

    center: np.ndarray
    rotation: np.ndarray
    size: np.ndarray

    def quaternions(self) -> np.ndarray:
        """(M, 4) x, y, z, w of each rotation (identity for boxes without points)."""
        rot = np.where(np.isfinite(self.rotation), self.rotation, np.eye(3))
        return matrix_quaternions(rot)

    def yaw(self) -> np.ndarray:
        """(M,) angle of each box's first axis about the map's z axis (rad, in (-pi, pi])."""
        return np.arctan2(self.rotation[:, 1, 0], self.rotation[:, 0, 0])

    def corners(self, m: int) -> np.ndarray:
        """(8, 3) corners of box ``m`` (bit i of the corner index: sign along axis i)."""
        signs = np.array([[(c >> i & 1) * 2 - 1 for i in range(3)] for c in range(8)], float)
        return self.center[m] + (signs * self.size[m] / 2) @ self.rotation[m].T


def matrix_quaternions(rot: np.ndarray) -> np.ndarray:
    """(M, 4) unit quaternions x, y, z, w (w >= 0) of (M, 3, 3) rotation matrices: from the
    largest of the four diagonal combinations, which keeps the division well away from zero
    (numpy only: a query on a stored map loads no scipy)."""
    m = np.asarray(rot, np.float64).reshape(-1, 3, 3)
    t = np.stack([1 + m[:, 0, 0] - m[:, 1, 1] - m[:, 2, 2], 1 - m[:, 0, 0] + m[:, 1, 1] - m[:, 2, 2],
                  1 - m[:, 0, 0] - m[:, 1, 1] + m[:, 2, 2], 1 + m[:, 0, 0] + m[:, 1, 1] + m[:, 2, 2]],
                 axis=1)
    k = np.argmax(t, axis=1)
    r = np.arange(len(m))
    s = 0.5 / np.sqrt(np.maximum(t[r, k], 1e-12))
    a, b, c = m[:, 2, 1] - m[:, 1, 2], m[:, 0, 2] - m[:, 2, 0], m[:, 1, 0] - m[:, 0, 1]
    xy, xz, yz = m[:, 0, 1] + m[:, 1, 0], m[:, 0, 2] + m[:, 2, 0], m[:, 1, 2] + m[:, 2, 1]
    q = np.select([k[:, None] == i for i in range(4)], [
        np.stack([t[:, 0], xy, xz, a], 1), np.stack([xy, t[:, 1], yz, b], 1),
        np.stack([xz, yz, t[:, 2], c], 1), np.stack([a, b, c, t[:, 3]], 1)]) * s[:, None]
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    return np.where(q[:, 3:] < 0, -q, q)


def up_frame(up) -> np.ndarray:
    """(3, 3) rotation whose third column is the unit ``up`` vector (a 3-vector or a name of
    ``UP_AXES``); its first column is the map's x axis when x is normal to up."""
    u = np.asarray(UP_AXES[up] if isinstance(up, str) else up, dtype=np.float64)
    norm = np.linalg.norm(u)
    if u.shape != (3,) or not np.isfinite(norm) or norm < 1e-9:
        raise ValueError(f"up axis must be a non-zero 3-vector, got {up!r}")
    u = u / norm
    x = np.array([1.0, 0, 0]) if abs(u[0]) < 0.9 else np.array([0, 1.0, 0])
    x = x - (x @ u) * u
    x /= np.linalg.norm(x)
    return np.column_stack([x, np.cross(u, x), u])


def min_area_rectangle(xy: np.ndarray) -> tuple[np.ndarray, float, np.ndarray]:
    """(centre (2,), angle of the first side (rad), size (2,)) of the smallest-area rectangle
    holding the 2D points; degenerate sets (fewer than 3 points, a line) get their bounding box
    along the principal direction."""
    from scipy.spatial import ConvexHull, QhullError     # only when boxes are computed
    try:
        hull = xy[ConvexHull(xy).vertices]
    except (QhullError, ValueError):
        hull = xy
    if len(hull) < 3:
        d = hull[-1] - hull[0] if len(hull) > 1 else np.array([1.0, 0.0])
        angles = np.array([np.arctan2(d[1], d[0])])
    else:
        edges = np.diff(np.vstack([hull, hull[:1]]), axis=0)
        angles = np.unique(np.mod(np.arctan2(edges[:, 1], edges[:, 0]), np.pi / 2))
    c, s = np.cos(angles), np.sin(angles)
    # hull points in each candidate frame: (A, H, 2)
    u = hull @ np.stack([c, s])           # (H, A) along the side
    v = hull @ np.stack([-s, c])          # (H, A) across
    area = (u.max(0) - u.min(0)) * (v.max(0) - v.min(0))
    k = int(np.argmin(area))
    size = np.array([u[:, k].max() - u[:, k].min(), v[:, k].max() - v[:, k].min()])
    mid = np.array([(u[:, k].max() + u[:, k].min()) / 2, (v[:, k].max() + v[:, k].min()) / 2])
    centre = mid[0] * np.array([c[k], s[k]]) + mid[1] * np.array([-s[k], c[k]])
    return centre, float(angles[k]), size


def yaw_box(points: np.ndarray, frame: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(centre, rotation, size) of the gravity-aligned box: a minimum-area footprint in the
    plane normal to ``frame``'s third column (first axis along its longer side, yaw in
    [-pi/2, pi/2)), the full extent along it."""
    local = points @ frame                                  # coordinates in the up frame
    centre2, angle, size2 = min_area_rectangle(local[:, :2])
    if size2[0] < size2[1]:                 # first axis along the longer side ...
        angle, size2 = angle + np.pi / 2, size2[::-1]
    angle = np.mod(angle + np.pi / 2, np.pi) - np.pi / 2    # ... yaw in [-pi/2, pi/2)
    lo, hi = local[:, 2].min(), local[:, 2].max()
    c, s = np.cos(angle), np.sin(angle)
    rot_local = np.array([[c, -s, 0], [s, c, 0], [0, 0, 1.0]])
    centre = frame @ np.array([centre2[0], centre2[1], (lo + hi) / 2])
    return centre, frame @ rot_local, np.array([size2[0], size2[1], hi - lo])


def pca_box(points: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(centre, rotation, size) of the box along the points' principal axes."""
    mean = points.mean(axis=0)
    if len(points) < 3:
        axes = np.eye(3)
    else:
        _, _, vt = np.linalg.svd(points - mean, full_matrices=False)
        axes = vt.T
        if np.linalg.det(axes) < 0:
            axes[:, 2] *= -1
    local = (points - mean) @ axes
    lo, hi = local.min(axis=0), local.max(axis=0)
    return mean + axes @ ((lo + hi) / 2), axes, hi - lo


def oriented_boxes(points: np.ndarray, point_indices, up=(0, 0, 1), mode: str = "yaw"
                   ) -> OrientedBoxes:
    """One oriented box per instance (see the module docstring)."""
    if mode not in BOX_MODES:
        raise ValueError(f"box mode must be one of {', '.join(BOX_MODES)}, got {mode!r}")
    frame = up_frame(up)
    M = len(point_indices)
    out = OrientedBoxes(np.full((M, 3), np.nan), np.full((M, 3, 3), np.nan),
                        np.full((M, 3), np.nan))
    pts = np.asarray(points, dtype=np.float64)
    for m, idx in enumerate(point_indices):
        if len(idx) == 0:
            continue
        p = pts[idx]
        box = yaw_box(p, frame) if mode == "yaw" else pca_box(p)
        out.center[m], out.rotation[m], out.size[m] = box
    return out


@dataclass
class Support:
    """Per instance: what it rests on and where. ``support_id`` -1: nothing found (with
    ``on_floor`` true: the floor, which is not an instance of the map or is ``floor_id``).
    Heights are along the up axis in the map frame; ``height_above_floor`` is NaN when the map
    has no floor estimate."""

    support_id: np.ndarray          # (M,) int
    on_floor: np.ndarray            # (M,) bool
    bottom: np.ndarray              # (M,) contact height: the instance's lowest points
    top: np.ndarray                 # (M,) its highest points
    height_above_floor: np.ndarray  # (M,) bottom - floor height
    floor_height: float
    is_floor: np.ndarray            # (M,) bool: the instance is (part of) the floor


def vertical_extent(points: np.ndarray, point_indices, up) -> tuple[np.ndarray, np.ndarray]:
    """(bottom, top) per instance: the LOW and HIGH percentiles of heights along ``up``."""
    h = np.asarray(points, np.float64) @ up_frame(up)[:, 2]
    bottom = np.full(len(point_indices), np.nan)
    top = np.full(len(point_indices), np.nan)
    for m, idx in enumerate(point_indices):
        if len(idx):
            bottom[m], top[m] = np.percentile(h[idx], [LOW, HIGH])
    return bottom, top


def floor_instances(points: np.ndarray, structure: list[str | None], bottom: np.ndarray,
                    top: np.ndarray, up, contact_distance: float) -> list[int]:
    """The floor: structure instances that are horizontal (thinner along up than
    ``FLOOR_THICKNESS``) and lie at the bottom of the cloud (within ``contact_distance`` of its
    LOW percentile height)."""
    if len(points) == 0:
        return []
    low = np.percentile(np.asarray(points, np.float64) @ up_frame(up)[:, 2], LOW)
    return [m for m, why in enumerate(structure)
            if why and np.isfinite(top[m]) and top[m] - bottom[m] <= FLOOR_THICKNESS
            and bottom[m] - low <= contact_distance]


def footprint_contains(boxes: OrientedBoxes, m: int, xyz: np.ndarray, up,
                       margin: float = 0.0) -> np.ndarray:
    """Whether points ``xyz`` (K, 3) lie inside box ``m``'s footprint (grown by ``margin``)
    in the plane normal to ``up``."""
    frame = up_frame(up)
    rot = boxes.rotation[m]
    local = (np.atleast_2d(xyz) - boxes.center[m]) @ rot
    # the box axes most nearly normal to up span its footprint
    along_up = np.abs(rot.T @ frame[:, 2])
    planar = np.argsort(along_up)[:2]
    half = boxes.size[m][planar] / 2 + margin
    return np.all(np.abs(local[:, planar]) <= half, axis=1)


def supports(points: np.ndarray, point_indices, boxes: OrientedBoxes,
             structure: list[str | None], up=(0, 0, 1), contact_distance: float = 0.05
             ) -> Support:
    """What each instance rests on (see the module docstring)."""
    bottom, top = vertical_extent(points, point_indices, up)
    floor_ids = floor_instances(points, structure, bottom, top, up, contact_distance)
    if floor_ids:
        floor = float(min(bottom[m] for m in floor_ids))
    elif len(points):       # no floor in the map: the bottom of the cloud
        floor = float(np.percentile(np.asarray(points, np.float64) @ up_frame(up)[:, 2], LOW))
    else:
        floor = float("nan")
    M = len(point_indices)
    support = np.full(M, -1, dtype=np.int64)
    with np.errstate(invalid="ignore"):
        touching = (np.abs(top[None, :] - bottom[:, None]) <= contact_distance) \
            & (top[None, :] < top[:, None])                  # [a, b]: b's top under a's bottom
    np.fill_diagonal(touching, False)
    for a, b in sorted(zip(*np.nonzero(touching)), key=lambda ab: -top[ab[1]]):
        if support[a] < 0 and footprint_contains(boxes, b, boxes.center[a], up,
                                                 contact_distance)[0]:
            support[a] = b                                   # the highest surface that holds it
    above = bottom - floor
    on_floor = (support < 0) & (np.abs(above) <= contact_distance)
    on_floor[floor_ids] = False                              # the floor does not rest on itself
    for a in np.flatnonzero(on_floor):
        support[a] = floor_ids[0] if floor_ids else -1
    is_floor = np.zeros(M, dtype=bool)
    is_floor[floor_ids] = True
    return Support(support, on_floor | np.isin(support, floor_ids), bottom, top, above, floor,
                   is_floor)


@dataclass
class Placement:
    """Oriented boxes and support of every instance of a map (stored in instances.npz)."""

    boxes: OrientedBoxes
    support: Support

    ARRAYS = ("obb_center", "obb_rotation", "obb_size", "support_id", "on_floor", "bottom",
              "top", "height_above_floor", "is_floor")

    def to_arrays(self) -> dict[str, np.ndarray]:
        b, s = self.boxes, self.support
        return dict(zip(self.ARRAYS, (b.center, b.rotation, b.size, s.support_id, s.on_floor,
                                      s.bottom, s.top, s.height_above_floor, s.is_floor)),
                    floor_height=np.float64(s.floor_height))

    @staticmethod
    def from_arrays(arrays: dict[str, np.ndarray]) -> Placement | None:
        """The stored placement of M instances, or None when arrays are missing or misshapen
        (maps written before placement was stored: it is computed again)."""
        if not all(k in arrays for k in (*Placement.ARRAYS, "floor_height")):
            return None
        floor = float(arrays["floor_height"])
        a = [np.asarray(arrays[k]) for k in Placement.ARRAYS]
        M = len(a[0])
        shapes = [(M, 3), (M, 3, 3), (M, 3)] + [(M,)] * 6
        if any(x.shape != shape for x, shape in zip(a, shapes)):
            return None
        boxes = OrientedBoxes(*(x.astype(np.float64) for x in a[:3]))
        return Placement(boxes, Support(a[3].astype(np.int64), a[4].astype(bool),
                                        *(x.astype(np.float64) for x in a[5:8]), floor,
                                        a[8].astype(bool)))


def placement(points: np.ndarray, point_indices, structure: list[str | None],
              up="+z", box_mode: str = "yaw", contact_distance: float = 0.05) -> Placement:
    """Boxes, then support, of every instance."""
    boxes = oriented_boxes(points, point_indices, up, box_mode)
    return Placement(boxes, supports(points, point_indices, boxes, structure, up,
                                      contact_distance))
