"""Open-vocabulary class assignment for closed-vocabulary evaluation (paper Sec. 4.1).

Each class name is embedded with the map's text encoder through the class prompt template
(``encoder.prompt_template``, the paper's "a {} in a scene", recorded in every map's config); every
instance feature is assigned to the class with the highest cosine similarity, and that similarity
is the prediction's confidence.
"""
from __future__ import annotations

from dataclasses import dataclass
from collections.abc import Mapping, Sequence

import numpy as np

from ..config import EncoderConfig
from ..interfaces import TextEncoder, l2_normalize


def map_template(config: Mapping) -> str:
    """The class prompt template of a map's recorded ``config`` (``encoder.prompt_template``;
    the default for maps that recorded none)."""
    encoder = (config or {}).get("encoder") or {}
    return str(encoder.get("prompt_template") or EncoderConfig.prompt_template)


@dataclass
class Assignment:
    """Per instance: the chosen class index (-1: no feature, left unassigned) and its similarity."""

    class_index: np.ndarray        # (M,) int64
    similarity: np.ndarray         # (M,) float32, cosine similarity to the chosen class
    text_embeddings: np.ndarray    # (C, D)

    def labels(self, classes: Sequence[str]) -> list[str | None]:
        return [classes[i] if i >= 0 else None for i in self.class_index]


def embed_classes(classes: Sequence[str], text_encoder: TextEncoder,
                  template: str = EncoderConfig.prompt_template) -> np.ndarray:
    """(C, D) L2-normalised text embeddings of ``template`` with each class for its ``{}``."""
    if not classes:
        raise ValueError("the class list is empty")
    if "{}" not in template:
        raise ValueError(f"the class prompt template must contain {{}} for the class name, "
                         f"got {template!r}")
    emb = np.asarray(text_encoder.encode_text([template.replace("{}", c) for c in classes]),
                     dtype=np.float32)
    if emb.shape[0] != len(classes):
        raise ValueError(f"text encoder returned {emb.shape[0]} rows for {len(classes)} classes")
    return l2_normalize(emb)


def assign_classes(features: np.ndarray, classes: Sequence[str], text_encoder: TextEncoder,
                   template: str = EncoderConfig.prompt_template) -> Assignment:
    """Assign each instance feature (M, D) to its closest class by cosine similarity.

    Instances whose feature is zero (no view saw them) stay unassigned: they carry no evidence for
    any class. (The official script would give them class 0, which is ``wall`` in ScanNet200 and
    therefore dropped from evaluation too.)
    """
    text = embed_classes(classes, text_encoder, template)
    feats = np.asarray(features, dtype=np.float32)
    if feats.ndim != 2:
        raise ValueError(f"features must be (M, D), got shape {feats.shape}")
    if feats.shape[0] and feats.shape[1] != text.shape[1]:
        raise ValueError(f"instance features have dimension {feats.shape[1]} but the text "
                         f"encoder '{getattr(text_encoder, 'name', '?')}' gives {text.shape[1]}: "
                         "evaluate with the encoder the map was built with")
    valid = np.linalg.norm(feats, axis=1) > 0
    sim = l2_normalize(feats) @ text.T if feats.shape[0] else np.zeros((0, len(classes)),
                                                                       dtype=np.float32)
    idx = np.argmax(sim, axis=1).astype(np.int64) if len(classes) else np.zeros(0, np.int64)
    best = sim[np.arange(len(idx)), idx] if len(idx) else np.zeros(0, dtype=np.float32)
    idx[~valid] = -1
    best = np.where(valid, best, 0.0).astype(np.float32)
    return Assignment(idx, best, text)
