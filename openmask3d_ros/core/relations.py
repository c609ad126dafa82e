"""Spatial-relation queries: "the mug on the table", "a chair next to the door", "the largest box".

A query text is parsed into ``<target> <relation> <reference>`` (and an optional leading
superlative); both noun phrases are answered with the usual relevance, and a relevant target is
kept only where the geometric predicate holds against some relevant reference (never itself).
The predicates use the map's oriented boxes and support (core/geometry.py), heights along the
map's up axis, ``contact`` (geometry.contact_distance) and ``near`` (query.near_radius):

- on: the target's bottom is within ``contact`` of the reference's top, and its centre lies
  over the reference's footprint (grown by ``contact``); margin: how close the contact is;
- in: its centre lies over the footprint and its bottom is inside the reference's height span,
  more than a quarter of that span below its top (in a tray, a box, a shelf); margin: depth;
- under / below / beneath: centre over the footprint, top more than ``contact`` below the
  reference's top (under a table top); above / over: centre over the footprint, bottom at or
  above the reference's top (less ``contact``);
- near / next to / beside / close to: the closest points are within ``near``;
- left of / right of: the sign of the offset between centres along the left direction: the map
  frame's left (the horizontal axis 90 degrees counter-clockwise from x about up: +y for z-up)
  or, with a viewpoint, the left of a viewer looking from it at the reference.
The combined score is sqrt(target relevance x reference relevance) x (0.5 + 0.5 x margin),
margin in [0, 1]. Superlatives rank the relevant targets: largest / smallest (box volume),
nearest (to the viewpoint, which it needs).
Not parsed (answered as plain text): nested relations ("on the table near the window" takes
"the table near the window" as one reference phrase), negations, counts, "between".
"""
from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass

import numpy as np

from .geometry import Placement, footprint_contains, up_frame

# phrase -> relation; longer phrases first so "on top of" wins over "on"
RELATIONS = {
    "on top of": "on", "resting on": "on", "sitting on": "on", "standing on": "on", "on": "on",
    "inside of": "in", "inside": "in", "within": "in", "in": "in",
    "underneath": "under", "beneath": "under", "under": "under", "below": "under",
    "above": "above", "over": "above",
    "next to": "near", "close to": "near", "beside": "near", "near": "near",
    "to the left of": "left of", "left of": "left of",
    "to the right of": "right of", "right of": "right of",
}
SUPERLATIVES = {"largest": "largest", "biggest": "largest", "smallest": "smallest",
                "nearest": "nearest", "closest": "nearest"}
_ARTICLES = ("the", "a", "an", "some", "any")
IN_DEPTH = 0.25        # "in": the bottom lies this fraction of the reference's height below its top
FLOOR_WORDS = frozenset({"floor", "ground"})
GENERIC_TARGETS = frozenset({"object", "objects", "thing", "things", "item", "items", "one"})
_PHRASE = re.compile(r"\b(" + "|".join(sorted(map(re.escape, RELATIONS), key=len,
                                                  reverse=True)) + r")\b")


@dataclass
class ParsedQuery:
    """How a query was understood: ``relation`` None for a superlative alone."""

    target: str
    relation: str | None = None
    reference: str | None = None
    superlative: str | None = None

    def describe(self) -> str:
        parts = [f"target {self.target!r}"]
        if self.superlative:
            parts.insert(0, self.superlative)
        if self.relation:
            parts.append(f"{self.relation} reference {self.reference!r}")
        return " ".join(parts)


def _strip_article(phrase: str) -> str:
    words = phrase.split()
    while words and words[0] in _ARTICLES:
        words = words[1:]
    return " ".join(words)


def parse_query(text: str) -> ParsedQuery | None:
    """The relation or superlative a text asks for, or None (answered as plain text)."""
    clean = " ".join(re.sub(r"[^\w\s'-]", " ", text.lower()).split())
    superlative = None
    words = clean.split()
    if words and words[0] == "the":
        words = words[1:]
    if words and words[0] in SUPERLATIVES:
        superlative, clean = SUPERLATIVES[words[0]], " ".join(words[1:])
    for match in _PHRASE.finditer(clean):
        target = _strip_article(clean[:match.start()])
        reference = _strip_article(clean[match.end():])
        if match.group(1) == "in" and reference.startswith("front of"):
            continue                                  # "in front of" is not supported
        if target and reference:
            return ParsedQuery(target, RELATIONS[match.group(1)], reference, superlative)
    if superlative and _strip_article(clean):
        return ParsedQuery(_strip_article(clean), superlative=superlative)
    return None


class Predicates:
    """The geometric predicates over one map (see the module docstring); each returns the
    margin in [0, 1] when it holds, else None."""

    def __init__(self, placement: Placement, grouped_points: np.ndarray, offsets: np.ndarray,
                 up, contact: float, near: float, viewpoint: np.ndarray | None = None):
        self.p, self.up, self.contact, self.near = placement, up, contact, near
        self.frame = up_frame(up)
        self.points, self.offsets = grouped_points, offsets
        self.viewpoint = None if viewpoint is None else np.asarray(viewpoint, np.float64)
        self._trees: dict = {}            # reference -> cKDTree of its points

    def holds(self, relation: str, t: int, r: int) -> float | None:
        return getattr(self, "_" + relation.replace(" ", "_"))(t, r)

    def _over(self, t: int, r: int) -> bool:
        return bool(footprint_contains(self.p.boxes, r, self.p.boxes.center[t], self.up,
                                       self.contact)[0])

    def _on(self, t: int, r: int) -> float | None:
        s = self.p.support
        gap = abs(s.bottom[t] - s.top[r])
        if s.support_id[t] == r or (gap <= self.contact and self._over(t, r)):
            return float(np.clip(1 - gap / self.contact, 0, 1))
        return None

    def _in(self, t: int, r: int) -> float | None:
        s = self.p.support
        span = max(s.top[r] - s.bottom[r], 1e-6)
        depth = s.top[r] - s.bottom[t]
        if depth > IN_DEPTH * span and s.bottom[t] >= s.bottom[r] - self.contact \
                and self._over(t, r):
            return float(min(1.0, depth / span))
        return None

    def _under(self, t: int, r: int) -> float | None:
        s = self.p.support
        depth = s.top[r] - s.top[t]
        if depth > self.contact and self._over(t, r):
            return float(min(1.0, depth / max(s.top[r] - s.bottom[r], 1e-6)))
        return None

    def _above(self, t: int, r: int) -> float | None:
        s = self.p.support
        rise = s.bottom[t] - s.top[r]
        if rise >= -self.contact and self._over(t, r):
            return float(np.clip(1 - rise / self.near, 0, 1))
        return None

    def _near(self, t: int, r: int) -> float | None:
        d = self.distance(t, r)
        return float(1 - d / self.near) if d <= self.near else None

    def _left_of(self, t: int, r: int) -> float | None:
        off = (self.p.boxes.center[t] - self.p.boxes.center[r]) @ self.left(r)
        return float(min(1.0, off / self.near)) if off > 0 else None

    def _right_of(self, t: int, r: int) -> float | None:
        off = (self.p.boxes.center[r] - self.p.boxes.center[t]) @ self.left(r)
        return float(min(1.0, off / self.near)) if off > 0 else None

    def left(self, r: int) -> np.ndarray:
        """The horizontal left direction at reference ``r`` (map frame, or the viewer's)."""
        up = self.frame[:, 2]
        if self.viewpoint is None:
            return self.frame[:, 1]
        look = self.p.boxes.center[r] - self.viewpoint
        look -= (look @ up) * up
        n = np.linalg.norm(look)
        return self.frame[:, 1] if n < 1e-9 else np.cross(up, look / n)

    def distance(self, t: int, r: int) -> float:
        """Distance between the closest points of two instances (m)."""
        from scipy.spatial import cKDTree       # only for "near": plain queries load no scipy
        tree = self._trees.get(r)
        if tree is None:
            tree = self._trees[r] = cKDTree(self.points[self.offsets[r]:self.offsets[r + 1]])
        pts = self.points[self.offsets[t]:self.offsets[t + 1]]
        if len(pts) > 4000:        # a subsample bounds the cost; nearest points stay close
            pts = pts[np.linspace(0, len(pts) - 1, 4000).astype(np.int64)]
        return float(tree.query(pts, k=1)[0].min()) if len(pts) and tree.n else np.inf


def combined_score(target_relevance: float, reference_relevance: float, margin: float
                   ) -> float:
    """The ranking score of a related hit (module docstring)."""
    return float(np.sqrt(max(target_relevance, 0) * max(reference_relevance, 0))
                 * (0.5 + 0.5 * margin))


def answer_parsed(engine, text: str, parsed: ParsedQuery, top_k: int, min_relevance: float,
                  min_score: float, include_structure: bool | None, viewpoint=None):
    """The QueryAnswer of a parsed relation / superlative query on ``engine`` (a QueryEngine):
    its ``understood`` says how the text was read, ``reason`` why nothing was found."""
    if parsed.superlative == "nearest" and viewpoint is None:
        raise ValueError(f"{text!r} asks for the nearest {parsed.target!r}: give a viewpoint")
    # "the largest object": a generic word is as relevant as the negatives; every object is a
    # target then, ranked by the superlative or the relation
    generic = parsed.target in GENERIC_TARGETS
    targets = engine.ask(parsed.target, top_k=0, min_relevance=0.0 if generic else min_relevance,
                         min_score=min_score, include_structure=include_structure, literal=True)
    answer = dataclasses.replace(targets, query=text, understood=parsed)
    if not targets.results:
        return dataclasses.replace(answer, reason=f"not found: nothing relevant to the target "
                                   f"{parsed.target!r} ({targets.message()})")
    hits = targets.results
    if parsed.relation is not None:
        refs = references(engine, parsed.reference, min_relevance)
        if not refs.results:
            return dataclasses.replace(answer, results=[], reason=(
                f"not found: nothing relevant to the reference {parsed.reference!r} "
                f"({refs.message()})"))
        hits = related(hits, refs.results, parsed.relation, engine.predicates(viewpoint))
        if not hits:
            return dataclasses.replace(answer, results=[], reason=(
                f"not found: no {parsed.target!r} is {parsed.relation} a {parsed.reference!r} "
                f"({len(targets.results)} target(s), {len(refs.results)} reference(s) "
                "relevant)"))
    if parsed.superlative:
        hits = rank_superlative(hits, parsed.superlative, viewpoint)
    return dataclasses.replace(answer, results=hits[:top_k] if top_k else hits)


def references(engine, phrase: str, min_relevance: float):
    """The answer for the reference phrase, its hits kept to what the geometry allows: the
    floor (found geometrically, core/geometry.py) is the reference exactly when the phrase
    names it ("the floor", "the ground"), whatever the encoder thinks of other instances."""
    refs = engine.ask(phrase, top_k=0, min_relevance=min_relevance, literal=True)
    is_floor = engine.placement.support.is_floor
    names_floor = bool(set(phrase.split()) & FLOOR_WORDS)
    if names_floor and is_floor.any():
        floor = engine.ask(phrase, top_k=0, min_relevance=0.0, include_structure=True,
                           literal=True)
        return dataclasses.replace(refs, results=[
            dataclasses.replace(r, relevance=max(r.relevance, min_relevance))
            for r in floor.results if is_floor[r.instance_id]])
    return dataclasses.replace(refs, results=[r for r in refs.results
                                              if names_floor or not is_floor[r.instance_id]])


def related(targets: list, references: list, relation: str, predicates: Predicates) -> list:
    """Targets for which ``relation`` holds against some reference (not themselves), each with
    its best reference and combined score, best first."""
    hits = []
    for t in targets:
        best = None
        for r in references:
            if r.instance_id == t.instance_id:
                continue
            margin = predicates.holds(relation, t.instance_id, r.instance_id)
            if margin is not None:
                score = combined_score(t.relevance, r.relevance, margin)
                if best is None or score > best[0]:
                    best = (score, r.instance_id)
        if best is not None:
            hits.append(dataclasses.replace(t, relation_score=best[0], reference_id=best[1]))
    return sorted(hits, key=lambda h: -h.relation_score)


def rank_superlative(hits: list, superlative: str, viewpoint=None) -> list:
    """Hits ordered by box volume (largest / smallest) or distance to ``viewpoint``."""
    if superlative == "nearest":
        v = np.asarray(viewpoint, np.float64)
        return sorted(hits, key=lambda h: float(np.linalg.norm(h.centroid - v)))
    sign = -1 if superlative == "largest" else 1
    return sorted(hits, key=lambda h: sign * float(np.prod(np.nan_to_num(h.box_size))))
