"""The small interfaces every model sits behind, so stand-ins, small and paper models swap freely."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Protocol, runtime_checkable
from collections.abc import Sequence

import numpy as np


@runtime_checkable
class ProposalBackend(Protocol):
    """Class-agnostic 3D instance proposals."""

    name: str

    def propose(self, points: np.ndarray, colors: np.ndarray) -> np.ndarray:
        """Boolean (P, M) matrix: column m marks the points of mask m."""


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
