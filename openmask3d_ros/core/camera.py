"""Pinhole camera: intrinsics (with rescaling between resolutions) and projection."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Intrinsics:
    """3x3 pinhole matrix ``K`` for images of ``width`` x ``height`` pixels."""

    K: np.ndarray
    width: int
    height: int

    def __post_init__(self) -> None:
        K = np.asarray(self.K, dtype=np.float64)
        if K.shape == (4, 4):
            K = K[:3, :3]
        if K.shape != (3, 3):
            raise ValueError(f"intrinsics must be 3x3 or 4x4, got shape {K.shape}")
        if not np.all(np.isfinite(K)) or K[0, 0] <= 0 or K[1, 1] <= 0:
            raise ValueError("intrinsics have non-positive or non-finite focal lengths: "
                             f"{K.tolist()}")
        if self.width <= 0 or self.height <= 0:
            raise ValueError(f"image size must be positive, got {self.width}x{self.height}")
        object.__setattr__(self, "K", K)

    def scaled(self, width: int, height: int) -> Intrinsics:
        """The same camera at another resolution (e.g. depth vs colour)."""
        sx, sy = width / self.width, height / self.height
        K = self.K.copy()
        K[0, :] *= sx
        K[1, :] *= sy
        return Intrinsics(K, width, height)

    def as_4x4(self) -> np.ndarray:
        """ScanNet-style 4x4 matrix."""
        M = np.eye(4)
        M[:3, :3] = self.K
        return M


def usable_pose(pose) -> np.ndarray | None:
    """``pose`` as a float64 4x4 when it is one with only finite entries, else None (SLAM
    systems write inf/NaN poses when tracking is lost). The one "is this pose usable" test."""
    try:
        M = np.asarray(pose, dtype=np.float64)
    except (TypeError, ValueError):
        return None
    return M if M.shape == (4, 4) and np.all(np.isfinite(M)) else None


def invert_pose(pose: np.ndarray) -> np.ndarray:
    """Inverse of a rigid 4x4 transform."""
    R, t = pose[:3, :3], pose[:3, 3]
    inv = np.eye(4)
    inv[:3, :3] = R.T
    inv[:3, 3] = -R.T @ t
    return inv


def project(points: np.ndarray, cam_to_world: np.ndarray, K: np.ndarray
            ) -> tuple[np.ndarray, np.ndarray]:
    """Project world points: returns pixel coordinates ``uv`` (N, 2) and camera depth ``w`` (N,).

    ``uv`` is ``nan`` where ``w == 0``.
    """
    world_to_cam = invert_pose(np.asarray(cam_to_world, dtype=np.float64))
    R, t = world_to_cam[:3, :3].T.astype(points.dtype), world_to_cam[:3, 3].astype(points.dtype)
    cam = points @ R + t
    pix = cam @ np.asarray(K, dtype=points.dtype).T
    w = pix[:, 2]
    with np.errstate(divide="ignore", invalid="ignore"):
        uv = pix[:, :2] / w[:, None]
    uv[w == 0] = np.nan
    return uv, w


def backproject_pixels(u: np.ndarray, v: np.ndarray, z: np.ndarray, K: np.ndarray,
                       cam_to_world: np.ndarray) -> np.ndarray:
    """World points (N, 3) of pixels (u, v) at camera depth z.

    Written per axis because a tall (N, 3) @ (3, 3) matmul is oddly slow with OpenBLAS threads
    on busy 2-core machines.
    """
    x = (u - K[0, 2]) * z / K[0, 0]
    y = (v - K[1, 2]) * z / K[1, 1]
    R, t = cam_to_world[:3, :3], cam_to_world[:3, 3]
    return np.stack([R[r, 0] * x + R[r, 1] * y + R[r, 2] * z + t[r] for r in range(3)], axis=1)


def project_pixels_official(points: np.ndarray, cam_to_world: np.ndarray, K: np.ndarray
                            ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Integer pixels ``u, v`` (int64) and camera depth ``w`` as the official code computes them.

    OpenMask3D's ``PointProjector`` evaluates ``(K @ inv(pose)[:3] @ X_h.T).T`` in float64 and
    stores ``x / w`` into an integer array, i.e. truncates toward zero (so -0.5 becomes 0);
    points with ``w == 0`` keep pixel (0, 0). The same operation order is used here so that the
    pixels match it bit for bit.
    """
    X = np.append(np.asarray(points, dtype=np.float64), np.ones((len(points), 1)), axis=-1)
    P = np.linalg.inv(np.asarray(cam_to_world, dtype=np.float64))[:3, :]
    proj = (np.asarray(K, dtype=np.float64) @ P @ X.T).T
    w = proj[:, 2]
    uv = np.zeros((len(points), 2), dtype=np.int64)
    nz = w != 0
    with np.errstate(invalid="ignore", over="ignore"):
        uv[nz] = np.column_stack([proj[nz, 0] / w[nz], proj[nz, 1] / w[nz]])
    return uv[:, 0], uv[:, 1], w


def official_adapted_intrinsic(K: np.ndarray, original_hw: tuple[int, int],
                               desired_hw: tuple[int, int]) -> np.ndarray:
    """OpenMask3D's ``Camera.get_adapted_intrinsic``: the colour intrinsics moved to the depth
    resolution with its formula, kept as is (for ScanNet 1296x968 -> 640x480 it differs from
    a per-axis rescale by up to ~0.5% in fy and the principal point). Sizes are (H, W)."""
    K = np.asarray(K, dtype=np.float64)[:3, :3]
    orig, want = tuple(int(x) for x in original_hw), tuple(int(x) for x in desired_hw)
    if orig == want:
        return K.copy()
    resize_width = int(np.floor(want[1] * float(orig[0]) / float(orig[1])))
    out = K.copy()
    out[0, 0] *= float(resize_width) / float(orig[0])
    out[1, 1] *= float(want[1]) / float(orig[1])
    out[0, 2] *= float(want[0] - 1) / float(orig[0] - 1)
    out[1, 2] *= float(want[1] - 1) / float(orig[1] - 1)
    return out
