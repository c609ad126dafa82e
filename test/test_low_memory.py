"""The memory work of issue 22 keeps results: SAM's chunked attention and MLP equal the original,
weights taken from the mapped checkpoint are the file's values, and a run's features are unchanged.

The attention and weight tests use tiny modules (milliseconds); one test runs the feature stage
with SAM vit_b + CLIP ViT-B-32 at random weights twice (savings off, on) on a 1-keyframe scene.
"""
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import pytest
import yaml

torch = pytest.importorskip("torch")
segment_anything = pytest.importorskip("segment_anything")

from segment_anything.modeling.image_encoder import Attention, ImageEncoderViT  # noqa: E402

from openmask3d_ros.core import low_memory  # noqa: E402
from openmask3d_ros.core.segmenters.sam_attention import (  # noqa: E402
    chunk_block_mlp,
    chunk_global_attention,
)


def _attention(dim=64, heads=4, size=(12, 10), rel_pos=True, seed=0):
    torch.manual_seed(seed)
    att = Attention(dim, num_heads=heads, use_rel_pos=rel_pos, input_size=size)
    with torch.no_grad():
        for p in att.parameters():      # rel_pos_* start at zero: make every term count
            p.normal_(0, 0.3)
    return att.eval()


@pytest.mark.parametrize("rel_pos", [True, False])
@pytest.mark.parametrize("rows_per_chunk", [1, 5, 11])   # 11: chunks of 11 rows and 1
def test_chunked_attention_equals_original(rel_pos, rows_per_chunk):
    att = _attention(rel_pos=rel_pos)
    x = torch.randn(2, 12, 10, 64)                          # B=2 (windows), H=12, W=10 tokens
    with torch.no_grad():
        ref = Attention.forward(att, x)
        heads, n = 2 * att.num_heads, 12 * 10
        row_bytes = heads * 10 * n * 4
        assert chunk_global_attention(att, max_bytes=rows_per_chunk * row_bytes) == 1
        out = att(x)
    assert out.shape == ref.shape
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-6)


def test_chunked_attention_gradients_match():
    att, ref_att = _attention(), _attention()
    chunk_global_attention(att, max_bytes=1)                  # one token row a chunk
    x = torch.randn(1, 12, 10, 64)
    Attention.forward(ref_att, x).square().sum().backward()
    att(x).square().sum().backward()
    for (name, a), b in zip(att.named_parameters(), ref_att.parameters()):
        scale = b.grad.abs().max().item()                     # grads reach ~1e3 here
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-5, atol=1e-6 * scale, msg=name)


def test_small_attention_keeps_the_original_forward():
    att = _attention()
    chunk_global_attention(att)                               # 2 x 4 heads x 120^2: < 16 MiB
    x = torch.randn(2, 12, 10, 64)
    with torch.no_grad():
        assert torch.equal(att(x), Attention.forward(att, x))
    assert chunk_global_attention(att) == 0                   # already changed


def _small_encoder():
    """A small SAM image encoder (8 x 8 tokens, window 3 with padding, one global block)."""
    torch.manual_seed(0)
    enc = ImageEncoderViT(img_size=128, patch_size=16, embed_dim=96, depth=3, num_heads=4,
                          out_chans=32, use_rel_pos=True, window_size=3,
                          global_attn_indexes=(1,)).eval()
    with torch.no_grad():
        for name, p in enc.named_parameters():
            if "rel_pos" in name:
                p.normal_(0, 0.3)
    return enc


def test_image_encoder_with_global_and_window_blocks_unchanged():
    enc = _small_encoder()
    x = torch.randn(1, 3, 128, 128)
    released = []
    with torch.inference_mode():
        ref = enc(x)
        assert chunk_global_attention(enc, max_bytes=1) == 3
        assert chunk_block_mlp(enc, tokens=5, release=lambda: released.append(1)) == 3
        out = enc(x)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-6)
    assert len(released) == 3                                 # before each block


def test_chunked_mlp_block_falls_back_with_gradients():
    enc, ref_enc = _small_encoder(), _small_encoder()
    chunk_block_mlp(enc, tokens=5)
    x = torch.randn(1, 3, 128, 128)
    enc(x).sum().backward()                                   # no in-place autograd error
    ref_enc(x).sum().backward()
    for a, b in zip(enc.parameters(), ref_enc.parameters()):
        torch.testing.assert_close(a.grad, b.grad)


def test_vit_b_width_chunked_at_the_default_budget():
    """vit_b's attention width (768, 12 heads) on 32 x 32 tokens: 48 MiB of logits, above the
    default 16 MiB, so chunks of 10 token rows; equal to the original."""
    att = _attention(dim=768, heads=12, size=(32, 32))
    chunk_global_attention(att)
    x = torch.randn(1, 32, 32, 768) * 0.1
    with torch.no_grad():
        torch.testing.assert_close(att(x), Attention.forward(att, x), rtol=1e-5, atol=1e-6)


# -- weights taken from the mapped checkpoint -----------------------------------------------

def _tiny_model():
    torch.manual_seed(1)
    return torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.LayerNorm(16),
                               torch.nn.Linear(16, 4))


def test_load_weights_assigns_the_files_tensors(tmp_path):
    src = _tiny_model()
    with torch.no_grad():
        for p in src.parameters():
            p.normal_()
    torch.save(src.state_dict(), tmp_path / "w.pt")
    state = low_memory.read_state_dict(tmp_path / "w.pt")
    model = _tiny_model()
    low_memory.load_weights(model, state)
    for (name, a), b in zip(model.state_dict().items(), src.state_dict().values()):
        assert torch.equal(a, b), name
    # no copy: the model's weight is the state dict's tensor (the mapped file's pages)
    assert model[0].weight.data_ptr() == state["0.weight"].data_ptr()
    assert isinstance(model[0].weight, torch.nn.Parameter)


def test_load_weights_copies_when_dtypes_differ(tmp_path):
    src = _tiny_model().half()
    torch.save(src.state_dict(), tmp_path / "w16.pt")
    model = _tiny_model()
    low_memory.load_weights(model, low_memory.read_state_dict(tmp_path / "w16.pt"))
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert torch.equal(model[0].weight, src[0].weight.float())


def test_savings_off_copies(tmp_path, monkeypatch):
    torch.save(_tiny_model().state_dict(), tmp_path / "w.pt")
    monkeypatch.setattr(low_memory, "ENABLED", False)
    state = low_memory.read_state_dict(tmp_path / "w.pt")
    model = _tiny_model()
    low_memory.load_weights(model, state)
    assert model[0].weight.data_ptr() != state["0.weight"].data_ptr()


def test_sam_segmenter_gets_mapped_weights_and_chunked_attention(sam_vit_b_checkpoint,
                                                                  monkeypatch):
    from openmask3d_ros.core.segmenters.sam import SamSegmenter
    state = torch.load(sam_vit_b_checkpoint, map_location="cpu", weights_only=True)
    sam = SamSegmenter("vit_b", str(sam_vit_b_checkpoint))
    chunked = [m for m in sam.model.image_encoder.modules() if getattr(m, "chunk_bytes", 0)]
    assert len(chunked) == 12
    assert sum(1 for m in sam.model.image_encoder.modules()
               if getattr(m, "mlp_chunk_tokens", 0)) == 12
    for name, value in sam.model.state_dict().items():
        assert torch.equal(value, state[name]), name
    monkeypatch.setattr(low_memory, "ENABLED", False)
    plain = SamSegmenter("vit_b", str(sam_vit_b_checkpoint))
    assert not any(getattr(m, "chunk_bytes", 0) or getattr(m, "mlp_chunk_tokens", 0)
                   for m in plain.model.modules())


def test_clip_encoder_weights_equal_the_checkpoint(clip_b32_checkpoint):
    pytest.importorskip("open_clip")
    import open_clip.factory

    from openmask3d_ros.core.encoders.clip import ClipEncoder
    before = (open_clip.factory.load_checkpoint, open_clip.factory.load_state_dict)
    enc = ClipEncoder("ViT-B-32", str(clip_b32_checkpoint))
    assert (open_clip.factory.load_checkpoint, open_clip.factory.load_state_dict) == before
    assert "load_state_dict" not in vars(enc.model)
    state = torch.load(clip_b32_checkpoint, map_location="cpu", weights_only=True)
    for name, value in enc.model.state_dict().items():
        if name in state:
            assert torch.equal(value, state[name]), name


# -- a run's features -----------------------------------------------------------------------

def test_features_unchanged_by_the_memory_work(tmp_path_factory, clip_b32_checkpoint,
                                               sam_vit_b_checkpoint, monkeypatch):
    """The feature stage with the savings off (the path before issue 22) and on: cosine >=
    0.99999 per instance, same instances with features (1 keyframe, real SAM/CLIP code)."""
    from openmask3d_ros.core.config import load_config
    from openmask3d_ros.core.pipeline import run_pipeline
    from openmask3d_ros.core.synthetic import make_scene

    root = tmp_path_factory.mktemp("lowmem")
    scene = make_scene(root / "scene", seed=4, num_frames=10, width=160, height=120)
    (root / "cfg.yaml").write_text(yaml.safe_dump({
        "device": "cpu",
        "encoder": {"backend": "clip", "clip_model": "ViT-B-32",
                    "clip_checkpoint": str(clip_b32_checkpoint), "batch_size": 16},
        "segmenter": {"backend": "sam", "sam_model": "vit_b",
                      "sam_checkpoint": str(sam_vit_b_checkpoint)}}))
    cfg = load_config(root / "cfg.yaml")
    features = {}
    for enabled in (False, True):
        monkeypatch.setattr(low_memory, "ENABLED", enabled)
        imap = run_pipeline(scene, cfg, out_dir=root / f"map_{enabled}")
        features[enabled] = imap.features
    before, after = features[False], features[True]
    valid = np.linalg.norm(before, axis=1) > 0
    assert valid.any()
    assert np.array_equal(valid, np.linalg.norm(after, axis=1) > 0)
    cos = (before[valid] * after[valid]).sum(axis=1)
    assert cos.min() >= 0.99999
