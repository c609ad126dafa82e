"""The small interfaces every model sits behind, so stand-ins, small and paper models swap freely."""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable
from collections.abc import Sequence

import numpy as np


@dataclass
class Proposals:
    """A proposal backend's output.

    ``masks``: boolean (P, M), column m marks the points of mask m. ``scores``: (M,) the
    backend's own confidence per mask, highest first (Mask3D's official post-processing), or
    None for unscored masks. ``final``: the masks are already split into contiguous parts and
    filtered (the pipeline's DBSCAN split is skipped). ``columns``: (M,) each mask's column in
    the masks file it was read from, when the file's columns are kept."""

    masks: np.ndarray
    scores: np.ndarray | None = None
    final: bool = False
    columns: np.ndarray | None = None

    def __post_init__(self) -> None:
        if self.scores is not None and len(self.scores) != self.masks.shape[1]:
            raise ValueError(f"{len(self.scores)} scores for {self.masks.shape[1]} masks")


@runtime_checkable
class ProposalBackend(Protocol):
    """Class-agnostic 3D instance proposals (``uses_segments``: whether ``propose`` votes over
    per-point superpoint ids, so the pipeline looks for the scene's segments file)."""

    name: str
    uses_segments: bool

    def propose(self, points: np.ndarray, colors: np.ndarray,
                segments: np.ndarray | None = None) -> Proposals:
        """Masks over the (P, 3) cloud; ``segments``: per-point superpoint ids (ScanNet) for
        backends that vote over them, ignored by the others."""


@runtime_checkable
class Segmenter(Protocol):
    """Promptable 2D segmenter: an image is set once, then point prompts are answered."""

    name: str

    def set_image(self, image: np.ndarray) -> None:
        """Embed an RGB uint8 (H, W, 3) image; later predictions refer to it."""

    def predict(self, prompt_sets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Answer R rounds of positive point prompts ``(R, K, 2)`` (pixel x, y).

        Returns the best round's full-resolution mask (H, W) bool and all R scores.
        """


@runtime_checkable
class ImageEncoder(Protocol):
    """Embeds image crops into the joint image-text space."""

    name: str
    dim: int

    def encode_images(self, crops: Sequence[np.ndarray]) -> np.ndarray:
        """RGB uint8 crops of any size -> (B, dim) float32, L2-normalised rows."""


@runtime_checkable
class TextEncoder(Protocol):
    """Embeds text into the same space as the image encoder."""

    name: str
    dim: int

    def encode_text(self, texts: Sequence[str]) -> np.ndarray:
        """Strings -> (T, dim) float32, L2-normalised rows."""


def l2_normalize(x: np.ndarray, axis: int = -1) -> np.ndarray:
    """Rows scaled to unit length (zero rows stay zero)."""
    x = np.asarray(x, dtype=np.float32)
    norm = np.linalg.norm(x, axis=axis, keepdims=True)
    return x / np.maximum(norm, 1e-12)


def configured_path(value: str | os.PathLike | None, what: str, key: str, hint: str) -> Path:
    """A user-provided model file path from config ``key`` with ``~`` expanded.

    An empty value is a FileNotFoundError naming the key and ``hint`` (what to get and where).
    """
    if value is None or str(value).strip() == "":
        raise FileNotFoundError(f"no {what} checkpoint configured ({key} is empty): {hint}")
    return Path(os.path.expanduser(str(value)))
