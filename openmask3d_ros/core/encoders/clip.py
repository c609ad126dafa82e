"""CLIP image and text encoder (open_clip) behind the ImageEncoder/TextEncoder interfaces.

Weights are never downloaded: ``checkpoint`` is a file the user fetched on another machine (or a
folder holding one, e.g. an open_clip / Hugging Face hub cache). The paper uses OpenAI's
ViT-L/14 at 336 px (768-d features).
"""
from __future__ import annotations

import json
import logging
import os
import time
import warnings
import zipfile
from collections import OrderedDict
from pathlib import Path
from collections.abc import Sequence

import numpy as np

from .. import low_memory
from ..device import resolve_device
from ..interfaces import configured_path, l2_normalize
from ..precision import ENCODER_PRECISIONS, check_precision, quantize_int8, resolve_precision

log = logging.getLogger(__name__)

DEFAULT_MODEL = "ViT-L-14-336"

# File names open_clip / the HF hub use for full CLIP checkpoints, most specific first.
_PREFERRED_FILES = (
    "open_clip_model.safetensors", "open_clip_pytorch_model.safetensors",
    "open_clip_pytorch_model.bin", "open_clip_pytorch_model.pth",
    "model.safetensors", "pytorch_model.bin", "pytorch_model.pth", "model.pth",
)
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")


def where_to_get(model_name: str) -> str:
    """Human-readable source of weights for ``model_name``, from open_clip's model zoo table."""
    import open_clip

    base = model_name.replace("-quickgelu", "")
    tags = open_clip.list_pretrained_tags_by_model(base) or \
        open_clip.list_pretrained_tags_by_model(model_name)
    for tag in (["openai"] if "openai" in tags else []) + list(tags):
        cfg = open_clip.get_pretrained_cfg(base, tag) or open_clip.get_pretrained_cfg(model_name, tag)
        if not cfg:
            continue
        sources = []
        if cfg.get("url"):
            sources.append(cfg["url"])
        if cfg.get("hf_hub"):
            sources.append(f"the Hugging Face repo {cfg['hf_hub'].rstrip('/')} "
                           f"(open_clip_pytorch_model.bin)")
        if sources:
            return f"open_clip's model zoo, tag '{tag}': " + " or ".join(sources)
    return (f"open_clip's model zoo (open_clip.list_pretrained() lists the weights for '{base}')")


def _is_torchscript(path: Path) -> bool:
    """OpenAI's release files are TorchScript archives (zip with a code/ folder)."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as zf:
        return any(n.split("/", 2)[1:2] == ["code"] or n.endswith("/constants.pkl")
                   for n in zf.namelist())


def resolve_clip_checkpoint(checkpoint: str | os.PathLike, model_name: str) -> Path:
    """The weight file named by ``checkpoint`` (a file, or a folder searched recursively).

    Raises FileNotFoundError naming the path, the expected model and where to obtain it.
    """
    hint = (f"expected open_clip weights for CLIP {model_name}; obtain them from "
            f"{where_to_get(model_name)} and set encoder.clip_checkpoint to the file")
    path = configured_path(checkpoint, "CLIP", "encoder.clip_checkpoint", hint)
    if path.is_file():
        return path
    if path.is_dir():
        found = [p for p in path.rglob("*") if p.is_file() and p.suffix in _WEIGHT_SUFFIXES]
        if found:
            def rank(p: Path):
                pref = _PREFERRED_FILES.index(p.name) if p.name in _PREFERRED_FILES else 99
                return (pref, -p.stat().st_mtime)   # newest snapshot among equals
            return sorted(found, key=rank)[0]
        raise FileNotFoundError(f"CLIP checkpoint folder {path} holds no weight file "
                                f"({', '.join(_WEIGHT_SUFFIXES)}): {hint}")
    raise FileNotFoundError(f"CLIP checkpoint not found: {path}: {hint}")


def _wants_quick_gelu(path: Path, model_name: str) -> bool:
    """OpenAI-trained weights need QuickGELU; open_clip's plain configs use GELU."""
    if model_name.endswith("-quickgelu"):
        return False                                 # the config already says so
    cfg_file = path.parent / "open_clip_config.json"
    if cfg_file.is_file():
        try:
            cfg = json.loads(cfg_file.read_text())
            return bool(cfg.get("model_cfg", {}).get("quick_gelu", False))
        except (OSError, ValueError):
            pass
    return _is_torchscript(path)


def _load_model(model_name: str, path: Path, quick_gelu: bool):
    """(eval model on the CPU, PIL preprocess) through open_clip's own loader, from a local file.

    ``pretrained`` is an existing file, so open_clip reads it (state dicts, safetensors, OpenAI's
    TorchScript archives) and never looks for a download. TorchScript needs ``weights_only=False``
    (torch dispatches the archive to ``torch.jit.load``); every other file is read weights-only.
    """
    import open_clip

    torchscript = _is_torchscript(path)
    try:
        with warnings.catch_warnings():    # torch's "dispatching to torch.jit.load" notices
            warnings.filterwarnings("ignore", message=".*(TorchScript|torch.jit.load).*")
            # state-dict files are mapped and their tensors become the weights (no second copy)
            with low_memory.open_clip_loading():
                model, _, preprocess = open_clip.create_model_and_transforms(
                    model_name, pretrained=str(path), force_quick_gelu=quick_gelu, device="cpu",
                    weights_only=not torchscript, require_pretrained=True)
    except Exception as exc:  # pickle, zip, safetensors and state-dict errors alike
        detail = "; ".join(line.strip() for line in str(exc).strip().splitlines()[:6])
        if "Error(s) in loading state_dict" in str(exc):
            raise ValueError(f"CLIP checkpoint {path} does not match the expected model "
                             f"{model_name} (wrong architecture?): {detail}") from exc
        raise ValueError(f"cannot read CLIP checkpoint {path} (expected open_clip weights for "
                         f"{model_name}): {detail or type(exc).__name__}") from exc
    low_memory.release_freed()          # the built model's initial weights
    return model.eval(), preprocess


class ClipEncoder:
    """open_clip model used both for crops (image tower) and queries (text tower).

    ``encode_images`` applies the model's own preprocessing, batches ``batch_size`` crops per
    forward pass and returns L2-normalised float32 rows; ``encode_text`` keeps an LRU cache of
    ``cache_size`` strings so repeated queries cost nothing. ``precision``: ``auto`` (default)
    is fp16 autocast on CUDA and fp32 on CPU; ``fp32`` is fp32 on either; ``bf16`` / ``fp16``
    (CUDA only) autocast.
    """

    def __init__(self, model_name: str = DEFAULT_MODEL, checkpoint: str = "",
                 device: str = "cpu", batch_size: int = 64, cache_size: int = 1024,
                 preprocess_mode: str = "tensor", precision: str = "auto",
                 quantize: bool = False):
        import open_clip

        if model_name not in open_clip.list_models():
            raise ValueError(f"unknown CLIP model '{model_name}'; open_clip knows e.g. "
                             f"ViT-L-14-336, ViT-B-32, ViT-B-16 (see open_clip.list_models())")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        device = resolve_device(device)
        _check_speed_options(preprocess_mode, precision, quantize, device.startswith("cuda"))
        path = resolve_clip_checkpoint(checkpoint, model_name)
        quick_gelu = _wants_quick_gelu(path, model_name)

        t0 = time.perf_counter()
        model, preprocess = _load_model(model_name, path, quick_gelu)
        if quantize:
            model.visual = quantize_int8(model.visual, "encoder")
        self.model = model.to(device)
        self.preprocess = preprocess
        self.tensor_preprocess = (TensorPreprocess(model.visual.preprocess_cfg, device)
                                  if preprocess_mode == "tensor" else None)
        self.tokenizer = open_clip.get_tokenizer(model_name)
        self.device = device
        self.model_name = model_name
        self.checkpoint = str(path)
        self.batch_size = int(batch_size)
        self.cache_size = max(0, int(cache_size))
        self.name = f"clip:{model_name}"
        self.dim = int(open_clip.get_model_config(model_name)["embed_dim"])
        self._use_amp = device.startswith("cuda")
        self.precision = resolve_precision(precision, self._use_amp)
        self._text_cache: OrderedDict[str, np.ndarray] = OrderedDict()
        # counters for tests and benchmarks
        self.image_batches = 0
        self.text_model_calls = 0
        self.text_cache_hits = 0
        log.info("CLIP %s loaded from %s on %s (%s%s) in %.1f s", model_name, path, device,
                 f"{self.precision} autocast" if self.precision != "fp32" else "fp32",
                 ", QuickGELU" if quick_gelu else "", time.perf_counter() - t0)

    # -- images ------------------------------------------------------------------------------
    def encode_images(self, crops: Sequence[np.ndarray]) -> np.ndarray:
        """RGB uint8 crops (h, w, 3) of any size -> (B, dim) float32, L2-normalised rows."""
        import torch
        from PIL import Image

        crops = list(crops)
        if not crops:
            return np.zeros((0, self.dim), dtype=np.float32)
        out = []
        for start in range(0, len(crops), self.batch_size):
            chunk = crops[start:start + self.batch_size]
            checked = [_check_crop(c, start + i) for i, c in enumerate(chunk)]
            if self.tensor_preprocess is not None:
                pixels = self.tensor_preprocess(checked)
            else:   # open_clip's own PIL pipeline, one crop at a time
                pixels = torch.stack([self.preprocess(Image.fromarray(c)) for c in checked])
            with torch.inference_mode(), self._autocast():
                feats = self.model.encode_image(pixels.to(self.device))
            self.image_batches += 1
            out.append(feats.float().cpu().numpy())
        return l2_normalize(np.concatenate(out, axis=0))

    # -- text --------------------------------------------------------------------------------
    def encode_text(self, texts: Sequence[str]) -> np.ndarray:
        """Strings -> (T, dim) float32, L2-normalised; cached per string (LRU)."""
        import torch

        texts = [str(t) for t in texts]
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        missing = list(dict.fromkeys(t for t in texts if t not in self._text_cache))
        self.text_cache_hits += sum(1 for t in texts if t in self._text_cache)
        fresh: dict[str, np.ndarray] = {}
        for start in range(0, len(missing), self.batch_size):
            chunk = missing[start:start + self.batch_size]
            tokens = self.tokenizer(chunk).to(self.device)
            with torch.inference_mode(), self._autocast():
                feats = self.model.encode_text(tokens)
            self.text_model_calls += 1
            for text, row in zip(chunk, l2_normalize(feats.float().cpu().numpy())):
                fresh[text] = row
        rows = []
        for t in texts:
            row = fresh.get(t)
            if row is None:
                row = self._text_cache[t]
                self._text_cache.move_to_end(t)
            rows.append(row)
        for t, row in fresh.items():
            self._remember(t, row)
        return np.stack(rows).astype(np.float32, copy=False)

    def clear_cache(self) -> None:
        """Forget all cached text embeddings."""
        self._text_cache.clear()

    def _remember(self, text: str, row: np.ndarray) -> None:
        if self.cache_size == 0:
            return
        self._text_cache[text] = row
        self._text_cache.move_to_end(text)
        while len(self._text_cache) > self.cache_size:
            self._text_cache.popitem(last=False)

    def _autocast(self):
        import contextlib

        import torch
        if self.precision == "fp32":
            return contextlib.nullcontext()
        dtype = torch.bfloat16 if self.precision == "bf16" else torch.float16
        return torch.autocast("cuda" if self._use_amp else "cpu", dtype=dtype)


def _check_crop(crop: np.ndarray, index: int) -> np.ndarray:
    crop = np.asarray(crop)
    if crop.ndim != 3 or crop.shape[2] != 3 or crop.shape[0] == 0 or crop.shape[1] == 0:
        raise ValueError(f"crop {index} must be a non-empty RGB (h, w, 3) array, "
                         f"got shape {crop.shape}")
    if crop.dtype != np.uint8:
        raise ValueError(f"crop {index} must be uint8, got {crop.dtype}")
    return np.ascontiguousarray(crop)


class TensorPreprocess:
    """open_clip's image transform (resize the short side, bicubic with antialias; centre crop;
    normalise) on uint8 tensors, batched, on the model's device: no PIL image per crop.

    torchvision's uint8 bicubic antialias kernel follows PIL's; the pixels differ from PIL's by
    rounding only (feature cosine to the PIL path in benchmarks/RESULTS.md).
    """

    def __init__(self, cfg: dict, device: str):
        import torch

        size = cfg.get("size", 224)
        size = size if isinstance(size, int) else tuple(size)
        if cfg.get("resize_mode", "shortest") != "shortest" or \
                (not isinstance(size, int) and size[0] != size[1]):
            raise ValueError(f"tensor preprocessing supports square 'shortest' resizing only, "
                             f"got {cfg}; set encoder.preprocess: pil")
        if cfg.get("interpolation", "bicubic") != "bicubic":
            raise ValueError(f"tensor preprocessing supports bicubic only, got {cfg}; "
                             f"set encoder.preprocess: pil")
        self.size = size if isinstance(size, int) else size[0]
        self.device = device
        self.mean = torch.tensor(cfg["mean"], device=device).view(1, 3, 1, 1) * 255.0
        self.std = torch.tensor(cfg["std"], device=device).view(1, 3, 1, 1) * 255.0

    def __call__(self, crops: Sequence[np.ndarray]):
        import torch
        from torchvision.transforms.v2 import InterpolationMode
        from torchvision.transforms.v2 import functional as TF

        out = torch.empty((len(crops), 3, self.size, self.size), dtype=torch.uint8,
                          device=self.device)
        for k, crop in enumerate(crops):
            t = torch.from_numpy(crop).permute(2, 0, 1).to(self.device, non_blocking=True)
            t = TF.resize(t, [self.size], interpolation=InterpolationMode.BICUBIC,
                          antialias=True)
            out[k] = TF.center_crop(t, [self.size, self.size])
        return (out.float() - self.mean) / self.std


def _check_speed_options(preprocess: str, precision: str, quantize: bool, on_gpu: bool) -> None:
    if preprocess not in ("tensor", "pil"):
        raise ValueError(f"encoder.preprocess must be tensor or pil, got '{preprocess}'")
    check_precision("encoder", precision, quantize, on_gpu, ENCODER_PRECISIONS)
