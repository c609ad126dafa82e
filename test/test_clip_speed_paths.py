"""CLIP speed options against open_clip's own PIL preprocessing in fp32 (ViT-B-32, random
weights from a checkpoint file): tensor preprocessing keeps the features, the opt-in bf16 and
int8 CPU paths stay close, bad options are named."""
import numpy as np
import pytest

torch = pytest.importorskip("torch")
open_clip = pytest.importorskip("open_clip")

from openmask3d_ros.core.config import EncoderConfig  # noqa: E402
from openmask3d_ros.core.encoders.clip import ClipEncoder  # noqa: E402
from openmask3d_ros.core.precision import resolve_precision  # noqa: E402


@pytest.fixture(scope="module")
def crops():
    rng = np.random.default_rng(0)
    out = []
    for h, w in [(37, 300), (224, 224), (301, 90), (120, 160), (9, 11)]:
        yy, xx = np.mgrid[0:h, 0:w]
        img = np.stack([xx * 255 / w, yy * 255 / h, (xx + yy) * 128 / (h + w)], -1)
        out.append(np.clip(img + rng.normal(0, 20, (h, w, 3)), 0, 255).astype(np.uint8))
    return out


@pytest.fixture(scope="module")
def reference(clip_b32_checkpoint, crops):
    enc = ClipEncoder("ViT-B-32", str(clip_b32_checkpoint), preprocess_mode="pil")
    return enc.encode_images(crops)


def test_tensor_preprocessing_matches_open_clip_pipeline(clip_b32_checkpoint, crops, reference):
    enc = ClipEncoder("ViT-B-32", str(clip_b32_checkpoint))      # the default
    assert enc.tensor_preprocess is not None
    pil = torch.stack([enc.preprocess(__import__("PIL.Image").Image.fromarray(c)) for c in crops])
    ten = enc.tensor_preprocess(crops)
    assert ten.shape == pil.shape == (5, 3, 224, 224)
    # uint8 rounding of the resized pixels only: about one grey level after normalisation
    assert (ten - pil).abs().mean() < 0.02
    got = enc.encode_images(crops)
    assert (got * reference).sum(axis=1).min() > 0.9999


@pytest.mark.parametrize("kwargs", [{"precision": "bf16"}, {"quantize": True}])
def test_cpu_opt_ins_stay_close(clip_b32_checkpoint, crops, reference, kwargs):
    enc = ClipEncoder("ViT-B-32", str(clip_b32_checkpoint), **kwargs)
    got = enc.encode_images(crops)
    cos = (got * reference).sum(axis=1)
    assert cos.min() > 0.99
    assert cos.min() < 0.999999                                 # the option really changed it
    if kwargs.get("quantize"):
        assert "quantized" in type(enc.model.visual.transformer.resblocks[0].mlp.c_fc).__module__


def test_precision_names_say_what_runs(clip_b32_checkpoint, crops, reference):
    """``auto`` (the default) is fp16 autocast on a GPU and fp32 on a CPU; ``fp32`` is fp32 on
    both; so on this CPU the default and fp32 give the same features."""
    assert EncoderConfig().precision == "auto"
    assert [resolve_precision(p, on_gpu=True) for p in ("auto", "fp32", "bf16", "fp16")] == \
        ["fp16", "fp32", "bf16", "fp16"]
    assert [resolve_precision(p, on_gpu=False) for p in ("auto", "fp32", "bf16")] == \
        ["fp32", "fp32", "bf16"]
    enc = ClipEncoder("ViT-B-32", str(clip_b32_checkpoint), preprocess_mode="pil",
                      precision="fp32")
    assert enc.precision == "fp32"
    np.testing.assert_array_equal(enc.encode_images(crops), reference)   # reference: the default


@pytest.mark.parametrize("kwargs,key", [({"preprocess_mode": "cv2"}, "preprocess"),
                                        ({"precision": "fp8"}, "precision"),
                                        ({"precision": "fp16"}, "fp16")])
def test_bad_options_are_named(clip_b32_checkpoint, kwargs, key):
    with pytest.raises(ValueError, match=key):
        ClipEncoder("ViT-B-32", str(clip_b32_checkpoint), **kwargs)
