"""Input preparation for Mask3D as the official ScanNet200 data pipeline does it.

Official facts (OpenMask3D/openmask3d class_agnostic_mask_computation, = Mask3D):
- colours: ``datasets/semseg.py`` normalises uint8 RGB with albumentations
  ``Normalize(mean, std)`` (max_pixel_value 255), i.e. ``(rgb / 255 - mean) / std``, with the
  ScanNet colour statistics hard-coded there (the constructor overrides the yaml path with them);
- features = [normalised colour, raw xyz] (``add_colors`` and ``add_raw_coordinates`` true,
  ``add_normals`` false in conf/data/indoor.yaml, ``in_channels: 3``); the trainer splits the
  last 3 columns off as ``raw_coordinates`` and feeds only the colour to the backbone;
- voxelisation: ``datasets/utils.py voxelize``: ``coords = floor(xyz / voxel_size)``,
  ``ME.utils.sparse_quantize(..., return_index=True, return_inverse=True)``; the voxel keeps the
  features of its ``unique_map`` point; predictions return to points through ``inverse_map``.

OpenMask3D's ``get_masks_single_scene.py`` feeds Open3D colours in [0, 1] *without* this
normalisation, unlike the ScanNet200 pipeline the checkpoint was trained and evaluated with.
``fidelity: official`` (default) does what the single-scene script does (``unit_colors``);
``paper`` follows the training pipeline (``normalize_colors``).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

SCANNET_COLOR_MEAN = (0.47793125906962, 0.4303257521323044, 0.3749598901421883)
SCANNET_COLOR_STD = (0.2834475483823543, 0.27566157565723015, 0.27018971370874995)


def normalize_colors(colors: np.ndarray) -> np.ndarray:
    """RGB (uint8 0-255, or float in [0, 1]) -> float32 ScanNet-normalised colour (P, 3)."""
    colors = np.asarray(colors)
    if colors.ndim != 2 or colors.shape[1] != 3:
        raise ValueError(f"colors must be (P, 3), got {colors.shape}")
    if colors.dtype == np.uint8:
        rgb = colors.astype(np.float32)
    else:
        c = colors.astype(np.float32)
        # float colours in [0, 1] (Open3D style) are scaled; anything larger is taken as 0-255
        rgb = c * 255.0 if c.size and float(c.max()) <= 1.0 else c
        # the official code casts to uint8 before normalising
        rgb = np.clip(np.rint(rgb), 0, 255)
    mean = np.asarray(SCANNET_COLOR_MEAN, np.float32) * 255.0
    std = np.asarray(SCANNET_COLOR_STD, np.float32) * 255.0
    return ((rgb - mean) / std).astype(np.float32)


def unit_colors(colors: np.ndarray) -> np.ndarray:
    """RGB -> float32 in [0, 1] as Open3D reads a .ply (uint8 / 255 in float64, then float32),
    the features OpenMask3D's single-scene mask script feeds the network."""
    colors = np.asarray(colors)
    if colors.ndim != 2 or colors.shape[1] != 3:
        raise ValueError(f"colors must be (P, 3), got {colors.shape}")
    if colors.dtype == np.uint8:
        return (colors.astype(np.float64) / 255.0).astype(np.float32)
    c = colors.astype(np.float64)
    if c.size and float(c.max()) > 1.0:       # 0-255 floats
        c = np.clip(np.rint(c), 0, 255) / 255.0
    return c.astype(np.float32)


@dataclass
class VoxelizedScene:
    """One scene ready for the network."""

    coordinates: torch.Tensor      # (V, 4) int32, batch index 0 + voxel grid coordinates
    features: torch.Tensor         # (V, 3) float32 normalised colour of each voxel
    raw_coordinates: torch.Tensor  # (V, 3) float32 metric xyz of each voxel's kept point
    inverse_map: np.ndarray        # (P,) int64, voxel row of every input point


def voxelize(points: np.ndarray, colors: np.ndarray, voxel_size: float = 0.02,
             normalize: bool = True) -> VoxelizedScene:
    """Quantise a cloud like the official ``voxelize`` collate (batch of one). ``normalize``:
    ScanNet colour statistics (training pipeline); False: colours in [0, 1] (single-scene)."""
    from .compat import import_minkowski
    ME = import_minkowski()
    points = np.asarray(points)
    if points.ndim != 2 or points.shape[1] != 3:
        raise ValueError(f"points must be (P, 3), got {points.shape}")
    if len(colors) != len(points):
        raise ValueError(f"{len(points)} points but {len(colors)} colours")
    feats = normalize_colors(colors) if normalize else unit_colors(colors)
    grid = np.floor(points / voxel_size)
    _, _, unique_map, inverse_map = ME.utils.sparse_quantize(
        coordinates=torch.from_numpy(grid).contiguous(), features=feats,
        return_index=True, return_inverse=True)
    unique_map = np.asarray(unique_map, dtype=np.int64)
    inverse_map = np.asarray(inverse_map, dtype=np.int64).ravel()
    vox = torch.from_numpy(grid[unique_map]).int()
    coords = torch.cat([torch.zeros((len(vox), 1), dtype=torch.int32), vox], dim=1)
    return VoxelizedScene(coordinates=coords.contiguous(),
                          features=torch.from_numpy(feats[unique_map]).float(),
                          raw_coordinates=torch.from_numpy(points[unique_map]).float(),
                          inverse_map=inverse_map)
