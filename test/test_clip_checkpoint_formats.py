"""CLIP checkpoint files in the layouts users bring (README "Models and checkpoints"), loaded through
the user-facing constructor: the encoder must answer exactly like the model the file was written
from. Real ViT-B-32 architecture at random weights; nothing is downloaded.
"""
import json
import os
import warnings

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import pytest

open_clip = pytest.importorskip("open_clip")
torch = pytest.importorskip("torch")

from openmask3d_ros.core.encoders.clip import ClipEncoder  # noqa: E402

MODEL = "ViT-B-32"
TEXTS = ["a mug in a scene", "a chair in a scene"]


def _reference(model) -> np.ndarray:
    with torch.inference_mode():
        t = model.encode_text(open_clip.get_tokenizer(MODEL)(TEXTS)).numpy()
    return t / np.linalg.norm(t, axis=1, keepdims=True)


@pytest.fixture(scope="module")
def openai_source():
    """An OpenAI-trained layout: QuickGELU, so a GELU model would answer differently."""
    torch.manual_seed(1)
    return open_clip.create_model(MODEL, pretrained=None, force_quick_gelu=True).eval()


def test_openai_torchscript_archive(openai_source, tmp_path):
    # OpenAI's release files (e.g. ViT-L-14-336px.pt) are TorchScript archives whose state dict
    # carries input_resolution / context_length / vocab_size, and no attention-mask buffer.
    m = openai_source
    mask = m.attn_mask
    del m.attn_mask                                   # a plain attribute, as in OpenAI's code
    m.attn_mask = mask
    m.register_buffer("input_resolution", torch.tensor(224))
    path = tmp_path / "ViT-B-32.pt"
    try:
        with warnings.catch_warnings():          # tracer and jit deprecation notices
            warnings.simplefilter("ignore")
            traced = torch.jit.trace_module(
                m, {"encode_text": torch.zeros(1, 77, dtype=torch.long)}, check_trace=False)
            torch.jit.save(traced, str(path))
            assert "input_resolution" in torch.jit.load(str(path)).state_dict()
    finally:
        del m.input_resolution
        del m.attn_mask
        m.register_buffer("attn_mask", mask, persistent=False)

    enc = ClipEncoder(MODEL, checkpoint=str(path))
    np.testing.assert_allclose(enc.encode_text(TEXTS), _reference(openai_source), atol=1e-5)


def test_hugging_face_folder_with_config(openai_source, tmp_path):
    # open_clip / HF hub layout: open_clip_config.json (quick_gelu) beside a safetensors file
    from safetensors.torch import save_file

    snap = tmp_path / "models--timm--x" / "snapshots" / "abc"
    snap.mkdir(parents=True)
    save_file({k: v.contiguous() for k, v in openai_source.state_dict().items()},
              str(snap / "open_clip_model.safetensors"))
    (snap / "open_clip_config.json").write_text(json.dumps({"model_cfg": {"quick_gelu": True}}))
    enc = ClipEncoder(MODEL, checkpoint=str(tmp_path))
    assert enc.checkpoint.endswith("open_clip_model.safetensors")
    np.testing.assert_allclose(enc.encode_text(TEXTS), _reference(openai_source), atol=1e-5)


def test_training_checkpoint_wrapper(tmp_path):
    # open_clip's training script saves {"epoch", "state_dict"} with DataParallel "module." keys
    torch.manual_seed(2)
    source = open_clip.create_model(MODEL, pretrained=None).eval()
    path = tmp_path / "epoch_3.pt"
    torch.save({"epoch": 3, "state_dict": {f"module.{k}": v
                                           for k, v in source.state_dict().items()}}, path)
    enc = ClipEncoder(MODEL, checkpoint=str(path))
    np.testing.assert_allclose(enc.encode_text(TEXTS), _reference(source), atol=1e-5)


def test_truncated_and_incomplete_files_name_the_file(tmp_path):
    torch.manual_seed(3)
    state = open_clip.create_model(MODEL, pretrained=None).state_dict()
    whole = tmp_path / "whole.pt"
    torch.save(state, whole)
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(whole.read_bytes()[:4096])
    with pytest.raises(ValueError, match="cannot read CLIP checkpoint") as err:
        ClipEncoder(MODEL, checkpoint=str(truncated))
    assert str(truncated) in str(err.value)

    partial = tmp_path / "partial.pt"
    torch.save({k: v for k, v in state.items() if not k.startswith("visual.")}, partial)
    with pytest.raises(ValueError, match="does not match") as err:
        ClipEncoder(MODEL, checkpoint=str(partial))
    assert str(partial) in str(err.value) and MODEL in str(err.value)
    assert "visual." in str(err.value)                 # the missing keys are named

    empty = tmp_path / "empty.pt"
    torch.save({}, empty)
    with pytest.raises(ValueError, match="cannot read CLIP checkpoint") as err:
        ClipEncoder(MODEL, checkpoint=str(empty))
    assert str(empty) in str(err.value)
