"""ClipEncoder with a real open_clip architecture (ViT-B-32) at random weights.

The weights are saved to a temporary checkpoint and loaded through the constructor users call,
so the loading code is exercised exactly as with downloaded weights. Nothing is downloaded.
"""
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import pytest

open_clip = pytest.importorskip("open_clip")
torch = pytest.importorskip("torch")

from openmask3d_ros.core.encoders.clip import ClipEncoder, resolve_clip_checkpoint  # noqa: E402
from openmask3d_ros.core.interfaces import ImageEncoder, TextEncoder  # noqa: E402

MODEL = "ViT-B-32"


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    model = open_clip.create_model(MODEL, pretrained=None)
    path = tmp_path_factory.mktemp("clip") / "open_clip_pytorch_model.bin"
    torch.save(model.state_dict(), path)
    return path


@pytest.fixture(scope="module")
def encoder(checkpoint):
    return ClipEncoder(model_name=MODEL, checkpoint=str(checkpoint), device="cpu",
                       batch_size=2, cache_size=4)


@pytest.fixture(scope="module")
def crops():
    rng = np.random.default_rng(0)
    shapes = [(40, 60), (224, 224), (17, 300), (300, 17), (90, 120)]
    return [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for h, w in shapes]


def test_protocols_name_and_dim(encoder):
    assert isinstance(encoder, ImageEncoder) and isinstance(encoder, TextEncoder)
    assert encoder.name == "clip:ViT-B-32"
    assert encoder.dim == 512


def test_image_shapes_norm_and_batching(encoder, crops):
    before = encoder.image_batches
    feats = encoder.encode_images(crops)
    assert feats.shape == (5, 512) and feats.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(feats, axis=1), 1.0, atol=1e-5)
    assert encoder.image_batches - before == 3          # 5 crops, batch_size 2
    one_by_one = np.concatenate([encoder.encode_images([c]) for c in crops])
    np.testing.assert_allclose(feats, one_by_one, atol=1e-4)
    # different crops give different embeddings
    assert not np.allclose(feats[0], feats[1], atol=1e-3)
    assert encoder.encode_images([]).shape == (0, 512)


def test_bad_crop_is_rejected(encoder):
    with pytest.raises(ValueError, match="crop 0"):
        encoder.encode_images([np.zeros((0, 5, 3), np.uint8)])
    with pytest.raises(ValueError, match="uint8"):
        encoder.encode_images([np.zeros((5, 5, 3), np.float32)])


def test_text_unit_norm_and_cache(encoder):
    encoder.clear_cache()
    calls = encoder.text_model_calls
    a = encoder.encode_text(["a chair in a scene", "a mug in a scene"])
    assert a.shape == (2, 512) and a.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(a, axis=1), 1.0, atol=1e-5)
    assert encoder.text_model_calls == calls + 1
    # repeated and reordered queries are served from the cache: no model call
    b = encoder.encode_text(["a mug in a scene", "a chair in a scene", "a mug in a scene"])
    assert encoder.text_model_calls == calls + 1
    np.testing.assert_array_equal(b[0], a[1])
    np.testing.assert_array_equal(b[1], a[0])
    # a new string costs one call and gives the same row as computing it alone
    c = encoder.encode_text(["a lamp in a scene", "a chair in a scene"])
    assert encoder.text_model_calls == calls + 2
    np.testing.assert_array_equal(c[1], a[0])
    assert not np.allclose(c[0], a[0])


def test_text_cache_is_lru_bounded(encoder):
    encoder.clear_cache()
    encoder.encode_text([f"object {i}" for i in range(6)])       # cache_size is 4
    assert len(encoder._text_cache) == 4
    calls = encoder.text_model_calls
    encoder.encode_text(["object 5"])
    assert encoder.text_model_calls == calls
    encoder.encode_text(["object 0"])                            # evicted
    assert encoder.text_model_calls == calls + 1


def test_weights_come_from_the_checkpoint(checkpoint, encoder, crops, tmp_path):
    # a checkpoint folder (HF-cache-like layout) resolves to the file inside it
    snap = tmp_path / "models--x" / "snapshots" / "abc"
    snap.mkdir(parents=True)
    os.symlink(checkpoint, snap / "open_clip_pytorch_model.bin")
    (snap / "README.md").write_text("x")
    assert resolve_clip_checkpoint(tmp_path, MODEL).name == "open_clip_pytorch_model.bin"
    other = ClipEncoder(model_name=MODEL, checkpoint=str(tmp_path), batch_size=8)
    np.testing.assert_allclose(other.encode_images(crops[:2]), encoder.encode_images(crops[:2]),
                               atol=1e-4)


def test_missing_checkpoint_names_file_and_source(tmp_path):
    missing = tmp_path / "nope" / "ViT-L-14-336px.pt"
    with pytest.raises(FileNotFoundError) as err:
        ClipEncoder(model_name="ViT-L-14-336", checkpoint=str(missing))
    text = str(err.value)
    assert str(missing) in text and "ViT-L-14-336" in text and "openaipublic" in text
    with pytest.raises(FileNotFoundError, match="clip_checkpoint is empty"):
        ClipEncoder(model_name=MODEL, checkpoint="")
    with pytest.raises(FileNotFoundError, match="no weight file"):
        ClipEncoder(model_name=MODEL, checkpoint=str(tmp_path))


def test_tilde_is_expanded(checkpoint, monkeypatch):
    monkeypatch.setenv("HOME", str(checkpoint.parent))
    assert resolve_clip_checkpoint("~/" + checkpoint.name, MODEL) == checkpoint


def test_wrong_architecture_is_a_clear_error(checkpoint):
    with pytest.raises(ValueError) as err:
        ClipEncoder(model_name="ViT-B-16", checkpoint=str(checkpoint))
    assert "ViT-B-16" in str(err.value) and str(checkpoint) in str(err.value)


def test_garbage_file_is_a_clear_error(tmp_path):
    bad = tmp_path / "model.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="cannot read CLIP checkpoint"):
        ClipEncoder(model_name=MODEL, checkpoint=str(bad))


def test_unknown_model_name(checkpoint):
    with pytest.raises(ValueError, match="unknown CLIP model"):
        ClipEncoder(model_name="ViT-Q-99", checkpoint=str(checkpoint))


@pytest.mark.parametrize("profile,model", [("paper", "ViT-L-14-336"), ("fast", "ViT-B-32")])
def test_profiles_load_and_point_at_user_files(profile, model, tmp_path, monkeypatch):
    from pathlib import Path

    from openmask3d_ros.core.config import load_config
    root = Path(__file__).resolve().parents[1]
    cfg = load_config(root / "config" / "profiles" / f"{profile}.yaml")
    assert cfg.encoder.backend == "clip" and cfg.encoder.clip_model == model
    assert cfg.segmenter.backend == "sam" and cfg.proposals.backend == "mask3d"
    monkeypatch.setenv("HOME", str(tmp_path))                    # no weights under this home
    with pytest.raises(FileNotFoundError) as err:
        ClipEncoder(model_name=cfg.encoder.clip_model, checkpoint=cfg.encoder.clip_checkpoint)
    assert str(tmp_path / "openmask3d_models") in str(err.value)
