"""STAND-IN image/text encoders (weight-free) that share a space of named colours.

An image crop embeds as the centre-weighted histogram of its pixels' colour names; a text embeds as
the colour words it contains. This lets the whole pipeline run and be asserted on without CLIP
weights; it understands colours only and is never presented as CLIP.

Texts naming no colour but a generic noun ("object", "things", "stuff", ...: the canonical
negatives of the relevance score) embed as the flat histogram, a thing of no particular colour;
any other text embeds as the zero vector (the stand-in knows nothing about it).
"""
from __future__ import annotations

import re
from collections.abc import Sequence

import cv2
import numpy as np

from ..interfaces import l2_normalize

COLOUR_NAMES = ("red", "orange", "yellow", "green", "cyan", "blue", "purple", "pink", "brown",
                "white", "grey", "black")
SYNONYMS = {"gray": "grey", "violet": "purple", "magenta": "pink", "teal": "cyan",
            "colour": None, "color": None}
GENERIC_WORDS = frozenset({"object", "objects", "thing", "things", "stuff", "texture",
                           "textures", "something", "item", "items"})
# Hue bins on OpenCV's 0..180 scale: (upper bound, name); red wraps around.
HUE_BINS = ((8, "red"), (20, "orange"), (34, "yellow"), (85, "green"), (100, "cyan"),
            (130, "blue"), (150, "purple"), (170, "pink"), (181, "red"))


def colour_index(hsv: np.ndarray) -> np.ndarray:
    """Colour-name index per pixel of an OpenCV HSV uint8 image (any shape (..., 3))."""
    h = hsv[..., 0].astype(np.int32)
    s = hsv[..., 1].astype(np.float32) / 255.0
    v = hsv[..., 2].astype(np.float32) / 255.0
    idx = np.zeros(h.shape, dtype=np.int64)
    lower = 0
    for upper, name in HUE_BINS:
        idx[(h >= lower) & (h < upper)] = COLOUR_NAMES.index(name)
        lower = upper
    brownish = (idx == COLOUR_NAMES.index("orange")) | (idx == COLOUR_NAMES.index("red"))
    idx[brownish & (v < 0.6) & (s < 0.85)] = COLOUR_NAMES.index("brown")
    achromatic = s < 0.25
    idx[achromatic] = COLOUR_NAMES.index("grey")
    # white surfaces turned away from the light render at v ~ 0.7; mid grey stays below ~0.55
    idx[achromatic & (v > 0.62)] = COLOUR_NAMES.index("white")
    idx[v < 0.18] = COLOUR_NAMES.index("black")
    return idx


class ColourEncoder:
    """Implements both ImageEncoder and TextEncoder over ``COLOUR_NAMES``."""

    name = "colour-standin"
    dim = len(COLOUR_NAMES)

    def __init__(self, centre_sigma: float = 0.35):
        self.centre_sigma = centre_sigma

    def encode_images(self, crops: Sequence[np.ndarray]) -> np.ndarray:
        out = np.zeros((len(crops), self.dim), dtype=np.float32)
        for i, crop in enumerate(crops):
            if crop.size == 0:
                continue
            hsv = cv2.cvtColor(np.ascontiguousarray(crop[..., :3]), cv2.COLOR_RGB2HSV)
            idx = colour_index(hsv)
            h, w = idx.shape
            yy = (np.arange(h) - (h - 1) / 2) / max(h, 1)
            xx = (np.arange(w) - (w - 1) / 2) / max(w, 1)
            weight = np.exp(-(yy[:, None] ** 2 + xx[None, :] ** 2) / (2 * self.centre_sigma ** 2))
            out[i] = np.bincount(idx.ravel(), weights=weight.ravel(), minlength=self.dim)
        return l2_normalize(out)

    def encode_text(self, texts: Sequence[str]) -> np.ndarray:
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for i, text in enumerate(texts):
            generic = False
            for word in re.findall(r"[a-z]+", text.lower()):
                generic |= word in GENERIC_WORDS
                word = SYNONYMS.get(word, word)
                if word in COLOUR_NAMES:
                    out[i, COLOUR_NAMES.index(word)] = 1.0
            if generic and not out[i].any():
                out[i] = 1.0
        return l2_normalize(out)
