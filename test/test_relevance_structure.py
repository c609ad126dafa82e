"""Relevance formula (LERF pairwise softmax) and the geometric structure test, on known inputs."""
import numpy as np

from openmask3d_ros.core.config import StructureConfig
from openmask3d_ros.core.encoders.colour import ColourEncoder
from openmask3d_ros.core.relevance import RelevanceScorer, mentions, relevance
from openmask3d_ros.core.structure import tag_structure


def test_relevance_is_the_minimum_pairwise_softmax():
    rng = np.random.default_rng(0)
    q, neg, t = rng.uniform(-1, 1, 50), rng.uniform(-1, 1, (50, 4)), 10.0
    pair = np.exp(t * q)[:, None] / (np.exp(t * q)[:, None] + np.exp(t * neg))
    np.testing.assert_allclose(relevance(q, neg, t), pair.min(axis=1), rtol=1e-7, atol=1e-12)
    # 0.5 when the query is exactly as similar as the closest negative; bounded, no overflow
    assert relevance(np.array([0.3]), np.array([[0.3, 0.1]]), t)[0] == 0.5
    big = relevance(np.array([1e6, -1e6]), np.zeros((2, 1)), 1e3)
    assert np.all(np.isfinite(big)) and big[0] == 1.0 and big[1] == 0.0


def test_colour_standin_relevance_has_the_same_meaning():
    enc = ColourEncoder()
    scorer = RelevanceScorer(enc)            # negatives "object", "things", ... embed flat
    feats = enc.encode_text(["red", "blue", "red green"])
    _, rel = scorer(feats, enc.encode_text(["red"])[0])
    assert rel[0] > 0.9 and rel[1] < 0.1 and 0.5 < rel[2] < rel[0]
    _, rel = scorer(feats, enc.encode_text(["things"])[0])
    np.testing.assert_allclose(rel, 0.5, atol=1e-6)
    _, rel = scorer(feats, enc.encode_text(["a mug"])[0])    # unknown to the stand-in
    assert np.all(rel < 0.5)


def test_structure_words():
    words = StructureConfig().words
    assert mentions("the Floor", words) == ["floor"]
    assert mentions("walls of the room", words) == ["wall"]
    assert mentions("a red mug", words) == [] and mentions("wallet", words) == []


def _box(lo, hi, n, rng):
    return rng.uniform(lo, hi, size=(n, 3))


def test_planes_and_scene_spanning_instances_are_structure():
    rng = np.random.default_rng(1)
    floor = _box([0, 0, 0], [4, 3, 0.005], 20000, rng)
    wall = _box([0, 0, 0], [0.01, 3, 2.5], 8000, rng)
    top = _box([1, 1, 0.75], [2.2, 1.8, 0.76], 5000, rng)       # 1.2 x 0.8 m table top
    tray = _box([1.2, 1.2, 0.76], [1.5, 1.4, 0.77], 800, rng)   # flat but small
    mug = _box([1.6, 1.3, 0.76], [1.7, 1.4, 0.88], 800, rng)
    corner = np.concatenate([_box([0, 0, 0], [4, 0.02, 2.5], 4000, rng),   # two walls, L
                             _box([0, 0, 0], [0.02, 3, 2.5], 4000, rng)])
    parts = [floor, wall, top, tray, mug, corner]
    points = np.concatenate(parts)
    offsets = np.cumsum([0] + [len(p) for p in parts])
    indices = [np.arange(offsets[i], offsets[i + 1]) for i in range(len(parts))]
    reasons = tag_structure(points, indices)
    assert reasons[0] and reasons[1] and reasons[2] and reasons[5]
    assert "plane" in reasons[2] and "spans" in reasons[5]
    assert reasons[3] is None and reasons[4] is None
