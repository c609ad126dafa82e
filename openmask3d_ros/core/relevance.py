"""Relevance in [0, 1] of each instance to a query, with a fixed meaning across queries and models.

As in LERF (Kerr et al., 2023): with instance feature f, query embedding q and the embeddings
n_1..n_K of canonical negative phrases ("object", "things", "stuff", "texture"),

    relevance(f) = min_k exp(t f.q) / (exp(t f.q) + exp(t f.n_k)) = min_k sigmoid(t (f.q - f.n_k))

so 0.5 means "no more like the query than like a generic thing", and a threshold on it means the
same for every query. The raw cosine f.q is kept beside it as the score.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from collections.abc import Sequence

import numpy as np

from .config import QueryConfig


@dataclass
class RelevanceSettings:
    """What a relevance value depends on (recorded in the map meta and in answers)."""

    negatives: list[str] = field(default_factory=lambda: list(QueryConfig().negatives))
    temperature: float = QueryConfig.temperature
    prompt_template: str = QueryConfig.prompt_template

    @staticmethod
    def from_config(cfg: QueryConfig) -> RelevanceSettings:
        if not cfg.negatives:
            raise ValueError("query.negatives must name at least one phrase")
        if not cfg.temperature > 0:
            raise ValueError(f"query.temperature must be > 0, got {cfg.temperature}")
        if "{}" not in cfg.prompt_template:
            raise ValueError(f"query.prompt_template must contain {{}}, got "
                             f"{cfg.prompt_template!r}")
        return RelevanceSettings(list(cfg.negatives), float(cfg.temperature),
                                 str(cfg.prompt_template))

    def prompt(self, text: str) -> str:
        return self.prompt_template.replace("{}", text)

    def to_dict(self) -> dict:
        return asdict(self)


def relevance(sim_query: np.ndarray, sim_negatives: np.ndarray, temperature: float
              ) -> np.ndarray:
    """(M,) query similarities and (M, K) negative similarities -> (M,) relevance in [0, 1]."""
    sim_query = np.asarray(sim_query, dtype=np.float64)
    sim_negatives = np.asarray(sim_negatives, dtype=np.float64).reshape(len(sim_query), -1)
    # softmax over the pair {query, negative} of the scaled similarities == sigmoid of the gap
    gap = temperature * (sim_query[:, None] - sim_negatives)
    pair = 0.5 * (1.0 + np.tanh(0.5 * gap))       # a sigmoid that never overflows
    return pair.min(axis=1)


class RelevanceScorer:
    """Scores map features against a query embedding with negatives from ``text_encoder``.

    The negatives are embedded once (they do not depend on the query).
    """

    def __init__(self, text_encoder, settings: RelevanceSettings | None = None):
        self.settings = settings or RelevanceSettings()
        self.negative_embeddings = np.asarray(text_encoder.encode_text(
            [self.settings.prompt(n) for n in self.settings.negatives]), dtype=np.float32)

    def __call__(self, features: np.ndarray, query_embedding: np.ndarray
                 ) -> tuple[np.ndarray, np.ndarray]:
        """(cosine (M,), relevance (M,)) of L2-normalised ``features`` to the query."""
        cos = features @ np.asarray(query_embedding, dtype=np.float32)
        neg = features @ self.negative_embeddings.T
        return cos, relevance(cos, neg, self.settings.temperature)


def mentions(text: str, words: Sequence[str]) -> list[str]:
    """The ``words`` (single words or phrases) that ``text`` names, case-insensitively."""
    import re

    tokens = re.findall(r"[a-z]+", text.lower())
    joined = " " + " ".join(tokens) + " "
    singular = " " + " ".join(t[:-1] if t.endswith("s") and len(t) > 3 else t
                              for t in tokens) + " "
    return [w for w in words
            if f" {w.lower().strip()} " in joined or f" {w.lower().strip()} " in singular]
