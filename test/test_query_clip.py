"""Relevance and image exemplars through real CLIP code (ViT-B-32 at random weights: the numbers
mean nothing, the mechanics are checked): long, odd and empty-vocabulary texts, image queries."""
import numpy as np
import pytest

open_clip = pytest.importorskip("open_clip")
torch = pytest.importorskip("torch")

from openmask3d_ros.core.encoders.clip import ClipEncoder  # noqa: E402
from openmask3d_ros.core.instance_map import InstanceMap  # noqa: E402
from openmask3d_ros.core.query import QueryEngine  # noqa: E402
from openmask3d_ros.core.relevance import relevance  # noqa: E402


@pytest.fixture(scope="module")
def engine(clip_b32_checkpoint):
    enc = ClipEncoder("ViT-B-32", checkpoint=str(clip_b32_checkpoint), device="cpu")
    rng = np.random.default_rng(0)
    crops = [rng.integers(0, 255, (40 + 10 * i, 50, 3), dtype=np.uint8) for i in range(6)]
    feats = enc.encode_images(crops)
    points = rng.uniform(0, 0.2, (600, 3)).astype(np.float32) + np.repeat(
        np.arange(6), 100)[:, None].astype(np.float32)
    imap = InstanceMap(points, [np.arange(i * 100, (i + 1) * 100) for i in range(6)], feats,
                       {"models": {"image_encoder": enc.name}})
    return QueryEngine(imap, enc), crops


def test_relevance_matches_the_formula_with_clip(engine):
    eng, _ = engine
    q = eng.embed_text("a red mug")
    negs = eng.text_encoder.encode_text(["object", "things", "stuff", "texture"])
    expected = relevance(eng.map.features @ q, eng.map.features @ negs.T, 10.0)
    answer = eng.ask("a red mug", top_k=0, min_relevance=0.0)
    got = {r.instance_id: r.relevance for r in answer.results}
    np.testing.assert_allclose([got[m] for m in range(6)], expected, rtol=1e-5)


@pytest.mark.parametrize("text", ["x" * 10000, "\U0001F37A\U0001F642", "things", "a mug"])
def test_odd_texts_answer_without_error(engine, text):
    eng, _ = engine
    answer = eng.ask(text, top_k=0, min_relevance=0.0)
    assert len(answer.results) == 6
    assert all(0.0 <= r.relevance <= 1.0 for r in answer.results)


def test_an_image_exemplar_finds_the_instance_it_came_from(engine):
    eng, crops = engine
    for m in (0, 3, 5):
        answer = eng.ask(image=crops[m], top_k=1, min_relevance=0.0)
        assert answer.results[0].instance_id == m and answer.results[0].score > 0.999
    with pytest.raises(ValueError, match="RGB"):
        eng.ask(image=np.zeros((4, 4), np.uint8))
