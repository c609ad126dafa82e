"""SamSegmenter with the real SAM vit_b architecture at random weights.

The weights go through a temporary checkpoint file and the user-facing constructor. A vit_b image
embedding takes ~15 s on a small CPU, so the whole module computes exactly one (module fixture).
"""
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import pytest

torch = pytest.importorskip("torch")
segment_anything = pytest.importorskip("segment_anything")

from openmask3d_ros.core.interfaces import Segmenter  # noqa: E402
from openmask3d_ros.core.segmenters.sam import SamSegmenter  # noqa: E402

H, W = 240, 320


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    model = segment_anything.sam_model_registry["vit_b"](checkpoint=None)
    path = tmp_path_factory.mktemp("sam") / "sam_vit_b_random.pth"
    torch.save(model.state_dict(), path)
    del model
    return path


@pytest.fixture(scope="module")
def image():
    img = np.full((H, W, 3), 40, np.uint8)
    img[60:180, 100:220] = (200, 60, 30)
    img[20:80, 240:300] = (30, 180, 90)
    return img


@pytest.fixture(scope="module")
def seg(checkpoint, image):
    s = SamSegmenter(model_type="vit_b", checkpoint=str(checkpoint), device="cpu")
    s.encoder_passes = 0

    def count(*_):
        s.encoder_passes += 1
    s.model.image_encoder.register_forward_hook(count)
    s.set_image(image)
    return s


def prompts(seed, rounds=10, k=5, box=(100, 60, 220, 180)):
    rng = np.random.default_rng(seed)
    x = rng.uniform(box[0], box[2], (rounds, k))
    y = rng.uniform(box[1], box[3], (rounds, k))
    return np.stack([x, y], axis=-1).astype(np.float32)


def test_protocol_and_name(seg):
    assert isinstance(seg, Segmenter)
    assert seg.name == "sam:vit_b"


def test_predict_shapes_and_embedding_reuse(seg):
    assert seg.encoder_calls == 1 and seg.encoder_passes == 1
    mask, scores = seg.predict(prompts(0))
    assert mask.shape == (H, W) and mask.dtype == bool
    assert scores.shape == (10,) and scores.dtype == np.float32
    mask2, scores2 = seg.predict(prompts(1, rounds=3, k=4, box=(240, 20, 300, 80)))
    assert mask2.shape == (H, W) and scores2.shape == (3,)
    # two prompt batches, still the single embedding from set_image
    assert seg.encoder_calls == 1 and seg.encoder_passes == 1
    assert not np.allclose(scores[:3], scores2)


def test_low_res_selection_matches_full_resolution_selection(seg):
    pts = prompts(2)
    mask, scores = seg.predict(pts)
    p = seg.predictor
    with torch.inference_mode():
        coords = p.transform.apply_coords_torch(torch.from_numpy(pts), (H, W))
        labels = torch.ones(pts.shape[:2], dtype=torch.int)
        full, iou, _ = p.predict_torch(coords, labels, multimask_output=False)
    ref_scores = iou[:, 0].numpy()
    np.testing.assert_allclose(scores, ref_scores, rtol=1e-5, atol=1e-6)
    best = int(np.argmax(ref_scores))
    assert np.sort(ref_scores)[-1] > np.sort(ref_scores)[-2]      # the winner is unambiguous
    assert int(np.argmax(scores)) == best
    assert (mask == full[best, 0].numpy()).mean() > 0.999
    assert seg.encoder_calls == 1 and seg.encoder_passes == 1


def test_single_prompt_set_and_bad_input(seg):
    mask, scores = seg.predict(prompts(3, rounds=1)[0])        # (K, 2) is one round
    assert mask.shape == (H, W) and scores.shape == (1,)
    with pytest.raises(ValueError, match=r"\(R, K, 2\)"):
        seg.predict(np.zeros((2, 5, 3), np.float32))
    with pytest.raises(ValueError):
        seg.predict(np.zeros((0, 5, 2), np.float32))
    with pytest.raises(ValueError, match="uint8"):
        seg.set_image(np.zeros((4, 4, 3), np.float32))
    assert seg.encoder_calls == 1


def test_predict_before_set_image(checkpoint):
    # cheap: vit_b construction only, no embedding
    s = SamSegmenter(model_type="vit_b", checkpoint=str(checkpoint))
    with pytest.raises(RuntimeError, match="set_image"):
        s.predict(prompts(0))
    assert s.encoder_calls == 0


def test_missing_checkpoint_names_file_type_and_source(tmp_path):
    missing = tmp_path / "sam_vit_h_4b8939.pth"
    with pytest.raises(FileNotFoundError) as err:
        SamSegmenter(model_type="vit_h", checkpoint=str(missing))
    text = str(err.value)
    assert str(missing) in text and "vit_h" in text and "sam_vit_h_4b8939.pth" in text
    assert "dl.fbaipublicfiles.com/segment_anything" in text
    with pytest.raises(FileNotFoundError, match="sam_checkpoint is empty"):
        SamSegmenter(model_type="vit_b", checkpoint="")


def test_wrong_model_type_for_checkpoint(checkpoint):
    with pytest.raises(ValueError) as err:
        SamSegmenter(model_type="vit_h", checkpoint=str(checkpoint))
    assert "vit_b" in str(err.value) and "vit_h" in str(err.value)


def test_garbage_and_unknown_type(tmp_path, checkpoint):
    bad = tmp_path / "sam.pth"
    bad.write_bytes(b"garbage")
    with pytest.raises(ValueError, match="cannot read SAM checkpoint"):
        SamSegmenter(model_type="vit_b", checkpoint=str(bad))
    with pytest.raises(ValueError, match="unknown SAM model type"):
        SamSegmenter(model_type="vit_x", checkpoint=str(checkpoint))


def reference_rounds(seg, pts):
    """The official loop: each round through segment-anything's predict_torch on its own, at full
    resolution; returns per-round scores and masks."""
    p = seg.predictor
    scores, masks = [], []
    with torch.inference_mode():
        for r in range(len(pts)):
            coords = p.transform.apply_coords_torch(torch.from_numpy(pts[r:r + 1]), (H, W))
            labels = torch.ones((1, pts.shape[1]), dtype=torch.int)
            m, iou, _ = p.predict_torch(coords, labels, multimask_output=False)
            scores.append(float(iou[0, 0]))
            masks.append(m[0, 0].numpy())
    return np.asarray(scores, np.float32), masks


@pytest.mark.parametrize("prompt_batch", [1, 7])
def test_split_decoder_matches_official_round_by_round_loop(seg, prompt_batch):
    """Every batching gives the official loop's scores, winner (first of equal) and mask."""
    sets = [prompts(10 + i, rounds=4, k=5 if i % 3 else 3) for i in range(5)]
    before = (seg.decoder_calls, seg.rounds_decoded, seg.masks_upscaled)
    seg.prompt_batch = prompt_batch
    try:
        got = seg.predict_many(sets)
    finally:
        seg.prompt_batch = 1
    for pts, (mask, scores) in zip(sets, got):
        ref_scores, ref_masks = reference_rounds(seg, pts)
        np.testing.assert_allclose(scores, ref_scores, rtol=1e-4, atol=1e-5)
        best = int(np.argmax(ref_scores))
        assert int(np.argmax(scores)) == best
        assert (mask == ref_masks[best]).mean() > 0.999
    calls, rounds, upscaled = (a - b for a, b in zip(
        (seg.decoder_calls, seg.rounds_decoded, seg.masks_upscaled), before))
    assert rounds == 20 and upscaled == 5              # every round decoded, one mask upscaled
    # rounds of different K never share a call: 2 masks with K=3 (8 rounds), 3 with K=5 (12)
    assert calls == {1: 20, 7: 2 + 2}[prompt_batch]
    assert seg.encoder_calls == 1


def test_predict_many_equals_predict_per_mask(seg):
    sets = [prompts(30 + i) for i in range(3)]
    many = seg.predict_many(sets)
    for pts, (mask, scores) in zip(sets, many):
        m1, s1 = seg.predict(pts)
        np.testing.assert_array_equal(scores, s1)
        np.testing.assert_array_equal(mask, m1)


def test_early_stop_decodes_fewer_rounds_and_keeps_the_first_good_round(seg):
    pts = prompts(40)
    full_mask, full_scores = seg.predict(pts)
    threshold = float(np.sort(full_scores)[-3])        # reached by 3 of the 10 rounds
    first = int(np.flatnonzero(full_scores >= threshold)[0])
    rounds0 = seg.rounds_decoded
    seg.early_stop_iou = threshold
    try:
        mask, scores = seg.predict(pts)
    finally:
        seg.early_stop_iou = 0.0
    assert seg.rounds_decoded - rounds0 == first + 1 == len(scores)
    np.testing.assert_allclose(scores, full_scores[:first + 1], rtol=1e-5, atol=1e-6)
    _, ref_masks = reference_rounds(seg, pts)
    assert (mask == ref_masks[first]).mean() > 0.999


def test_bf16_decoder_stays_close_to_fp32(seg):
    sets = [prompts(50 + i) for i in range(3)]
    fp32 = seg.predict_many(sets)
    seg.precision = "bf16"
    try:
        bf16 = seg.predict_many(sets)
    finally:
        seg.precision = "fp32"
    for (_, s32), (_, s16) in zip(fp32, bf16):
        assert s16.dtype == np.float32 and s16.shape == s32.shape
        assert np.abs(s16 - s32).max() < 0.05 * max(1.0, np.abs(s32).max())
        assert not np.array_equal(s16, s32)            # bf16 really ran


def test_option_errors_name_the_key(checkpoint):
    for kwargs, key in [({"precision": "int4"}, "precision"), ({"precision": "fp16"}, "fp16"),
                        ({"prompt_batch": -1}, "prompt_batch"),
                        ({"early_stop_iou": -0.5}, "early_stop_iou")]:
        with pytest.raises(ValueError, match=key):
            SamSegmenter(model_type="vit_b", checkpoint=str(checkpoint), **kwargs)


def test_int8_decoder_answers_with_the_same_embedding(seg, checkpoint, image):
    q = SamSegmenter(model_type="vit_b", checkpoint=str(checkpoint), quantize=True)
    linear = type(q.model.mask_decoder.transformer.layers[0].mlp.lin1)
    assert "quantized" in linear.__module__             # the decoder's linear layers are int8
    # reuse the fixture's embedding (same weights) instead of a second 10 s image embedding
    for attr in ("features", "input_size", "original_size", "is_image_set"):
        setattr(q.predictor, attr, getattr(seg.predictor, attr))
    q._image_shape = (H, W)
    pts = prompts(60, rounds=4)
    qmask, qscores = q.predict(pts)
    mask, scores = seg.predict(pts)
    assert qscores.shape == scores.shape and qmask.shape == mask.shape
    assert np.abs(qscores - scores).max() < 0.1 * max(1.0, np.abs(scores).max())
