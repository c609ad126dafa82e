"""Segment Anything behind the Segmenter interface: one image embedding per frame, decoder work cut.

The official OpenMask3D code calls ``set_image`` for every (mask, view) pair, decodes each of the
k_rounds prompt rounds separately and upsamples each to full resolution. Here the caller sets each
frame once and asks for all masks that chose it (``predict_many``):

* the decoder runs in two halves (sam_decode.py): the transformer for every round gives the
  predicted IoU that picks the winner; only the winner's mask is upscaled and upsampled;
* ``prompt_batch`` rounds go through one decoder call. On a GPU batched prompts are nearly free
  (vit_h: 10 rounds 5.8 ms, 50 rounds 17.7 ms), so the default sends all rounds of all masks of a
  frame at once (up to 512); on a CPU the decoder repeats the image embedding per prompt and a
  batch of 10 was slower than 10 single calls (cache), so the default there is 1;
* opt-in, changing results (each measured against the faithful path in benchmarks/RESULTS.md):
  ``early_stop_iou`` (stop a mask's rounds once one reaches this predicted IoU), ``precision``
  bf16 (CPU with AVX512-BF16/AMX, or GPU) or fp16 (GPU) autocast, ``quantize`` (dynamic int8 of
  the decoder's linear layers, CPU).

Why not ``SamPredictor.predict_torch``: it runs the whole decoder and upsamples to full resolution
for every round, where only the winner's mask is wanted: ~10-25 % more decoder time for 10 rounds
(benchmarks/RESULTS.md) and B full-resolution float masks for a GPU batch of 512 prompts. So the
decoder runs in halves (sam_decode.py, checked against ``predict_torch`` in the tests), and of the
predictor this module uses only what a ``predict_torch`` caller also needs: ``set_image`` (once
per frame), ``get_image_embedding()``, ``transform.apply_coords_torch`` (pixels to the model's
input frame) and ``input_size`` / ``original_size`` for ``Sam.postprocess_masks``.
"""
from __future__ import annotations

import gc
import logging
import time
from pathlib import Path

import numpy as np

from .. import low_memory
from ..device import resolve_device
from ..interfaces import configured_path
from ..precision import check_precision, quantize_int8
from .sam_attention import (
    CHUNK_BYTES,
    CUDA_CHUNK_BYTES,
    chunk_block_mlp,
    chunk_global_attention,
)
from .sam_decode import SplitDecoder

log = logging.getLogger(__name__)

RELEASE_URL = "https://dl.fbaipublicfiles.com/segment_anything/"
# model type -> (official checkpoint file, image encoder width); the width identifies a checkpoint
SAM_CHECKPOINTS = {
    "vit_h": ("sam_vit_h_4b8939.pth", 1280),
    "vit_l": ("sam_vit_l_0b3195.pth", 1024),
    "vit_b": ("sam_vit_b_01ec64.pth", 768),
}
MOBILE_SAM = {"vit_t": ("mobile_sam.pt", None)}
MOBILE_SAM_URL = "https://github.com/ChaoningZhang/MobileSAM (weights/mobile_sam.pt)"


def where_to_get(model_type: str) -> str:
    """Human-readable source of the checkpoint for ``model_type``."""
    if model_type in SAM_CHECKPOINTS:
        fname = SAM_CHECKPOINTS[model_type][0]
        return (f"the segment-anything release checkpoint {fname} "
                f"({RELEASE_URL}{fname}, linked from github.com/facebookresearch/segment-anything)")
    if model_type in MOBILE_SAM:
        return f"MobileSAM's {MOBILE_SAM[model_type][0]} from {MOBILE_SAM_URL}"
    return "the segment-anything release checkpoints"


def _registry(model_type: str):
    """The builder for ``model_type`` (segment-anything, or MobileSAM's vit_t when installed)."""
    if model_type in SAM_CHECKPOINTS:
        from segment_anything import sam_model_registry
        return sam_model_registry[model_type]
    if model_type in MOBILE_SAM:
        try:
            from mobile_sam import sam_model_registry
        except ImportError as exc:
            raise ImportError("SAM model type 'vit_t' (MobileSAM) needs the mobile_sam package "
                              "(pip install git+https://github.com/ChaoningZhang/MobileSAM)"
                              ) from exc
        return sam_model_registry[model_type]
    known = ", ".join(list(SAM_CHECKPOINTS) + list(MOBILE_SAM))
    raise ValueError(f"unknown SAM model type '{model_type}'; expected one of {known}")


def _predictor_class(model_type: str):
    if model_type in MOBILE_SAM:
        from mobile_sam import SamPredictor
    else:
        from segment_anything import SamPredictor
    return SamPredictor


def _load_state_dict(path: Path, model_type: str) -> dict:
    import torch

    try:
        try:   # memory-mapped: a 2.5 GB vit_h file is not read twice into RAM
            state = torch.load(str(path), map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError:
            state = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ValueError(f"cannot read SAM checkpoint {path} (expected {model_type} weights, "
                         f"{where_to_get(model_type)}): {exc}") from exc
    if isinstance(state, dict) and isinstance(state.get("model"), dict):
        state = state["model"]
    if not isinstance(state, dict) or not state:
        raise ValueError(f"SAM checkpoint {path} holds no state dict (expected {model_type})")
    return state


def _guess_type(state: dict) -> str | None:
    pos = state.get("image_encoder.pos_embed")
    if pos is None:
        return None
    width = int(pos.shape[-1])
    return next((t for t, (_, w) in SAM_CHECKPOINTS.items() if w == width), None)


def _checkpoint_file(model_type: str, checkpoint: str) -> Path:
    """The configured SAM checkpoint file (in a configured folder: the file of that model
    type's usual name); FileNotFoundError saying where to get it when there is none."""
    hint = (f"expected a SAM {model_type} checkpoint; obtain {where_to_get(model_type)} "
            f"and set segmenter.sam_checkpoint to the file")
    path = configured_path(checkpoint, "SAM", "segmenter.sam_checkpoint", hint)
    if path.is_dir():
        wanted = (SAM_CHECKPOINTS.get(model_type) or MOBILE_SAM[model_type])[0]
        if (path / wanted).is_file():
            path = path / wanted
    if not path.is_file():
        raise FileNotFoundError(f"SAM checkpoint not found: {path}: {hint}")
    return path


def _load_model(builder, path: Path, model_type: str, on_gpu: bool):
    """The SAM model of ``model_type`` with the checkpoint's weights, in eval mode, on the CPU
    (with the memory-saving forwards of sam_attention.py when core/low_memory.py is enabled).
    ValueError when the checkpoint holds another model type's weights."""
    state = _load_state_dict(path, model_type)
    guessed = _guess_type(state)
    if model_type in SAM_CHECKPOINTS and guessed is not None and guessed != model_type:
        raise ValueError(f"SAM checkpoint {path} holds {guessed} weights, but model type "
                         f"{model_type} was configured (segmenter.sam_model); use "
                         f"{where_to_get(model_type)} or set sam_model: {guessed}")
    model = builder(checkpoint=None)
    try:
        # the mapped file's tensors become the weights: no second copy (core/low_memory.py)
        low_memory.load_weights(model, state, strict=True)
    except RuntimeError as exc:
        lines = [ln.strip() for ln in str(exc).strip().splitlines()[:6]]
        raise ValueError(f"SAM checkpoint {path} does not match model type {model_type} "
                         f"(wrong architecture?): {'; '.join(lines)}") from exc
    del state
    low_memory.release_freed()              # the built model's initial weights
    model = model.eval()
    if low_memory.ENABLED:   # no full attention matrices in global blocks (sam_attention.py)
        chunk_global_attention(model.image_encoder, CUDA_CHUNK_BYTES if on_gpu else CHUNK_BYTES)
        if not on_gpu:       # MLP in token chunks, freed memory returned between blocks
            chunk_block_mlp(model.image_encoder, release=low_memory.release_freed)
    return model


class SamSegmenter:
    """SAM (vit_h / vit_l / vit_b, or MobileSAM vit_t if installed) answering point prompts.

    ``set_image`` embeds a frame once (``encoder_calls`` counts it); ``predict`` / ``predict_many``
    answer any number of prompt batches on that embedding (``decoder_calls`` counts transformer
    passes, ``rounds_decoded`` the prompt rounds they held, ``masks_upscaled`` the winners).
    """

    def __init__(self, model_type: str = "vit_h", checkpoint: str = "", device: str = "cpu",
                 prompt_batch: int = 0, early_stop_iou: float = 0.0, precision: str = "fp32",
                 quantize: bool = False):
        builder = _registry(model_type)
        device = resolve_device(device)
        on_gpu = str(device).startswith("cuda")
        _check_options(prompt_batch, early_stop_iou, precision, quantize, on_gpu)
        path = _checkpoint_file(model_type, checkpoint)
        t0 = time.perf_counter()
        model = _load_model(builder, path, model_type, on_gpu)
        if quantize:
            model.mask_decoder = quantize_int8(model.mask_decoder, "segmenter")
        self.model = model.to(device)
        self.predictor = _predictor_class(model_type)(self.model)
        self.decoder = SplitDecoder(self.model)
        self.device = device
        self.model_type = model_type
        self.checkpoint = str(path)
        self.name = f"sam:{model_type}"
        self.prompt_batch = int(prompt_batch) or (512 if on_gpu else 1)
        self.early_stop_iou = float(early_stop_iou)
        self.precision = precision
        self.quantize = bool(quantize)
        self.encoder_calls = 0      # image embeddings computed (one per set_image)
        self.decoder_calls = 0      # transformer passes (each holds up to prompt_batch rounds)
        self.rounds_decoded = 0     # prompt rounds through the transformer
        self.masks_upscaled = 0     # winning rounds upscaled to a mask
        self._image_shape: tuple[int, int] | None = None
        log.info("SAM %s loaded from %s on %s (%s%s, %d prompt%s a decoder call%s) in %.1f s",
                 model_type, path, device, precision, ", int8 decoder" if quantize else "",
                 self.prompt_batch, "" if self.prompt_batch == 1 else "s",
                 f", early stop at IoU {early_stop_iou}" if early_stop_iou > 0 else "",
                 time.perf_counter() - t0)

    def release(self) -> None:
        """Free the model: its weights, buffers and the current embedding (a one-shot run is
        done with SAM before the crops are encoded). The segmenter answers nothing after."""
        self.model = self.predictor = self.decoder = None
        self._image_shape = None
        gc.collect()                            # modules in reference cycles
        low_memory.release_freed()

    def set_image(self, image: np.ndarray) -> None:
        """Embed an RGB uint8 (H, W, 3) image once; later predictions refer to it."""
        import torch

        if self.model is None:
            raise RuntimeError("SamSegmenter.set_image called after release()")
        image = np.asarray(image)
        if image.ndim != 3 or image.shape[2] != 3 or image.shape[0] == 0 or image.shape[1] == 0:
            raise ValueError(f"SAM expects an RGB (H, W, 3) image, got shape {image.shape}")
        if image.dtype != np.uint8:
            raise ValueError(f"SAM expects a uint8 image, got {image.dtype}")
        with torch.inference_mode(), self._autocast():
            self.predictor.set_image(np.ascontiguousarray(image), image_format="RGB")
        low_memory.release_freed()              # the encoder's activations
        self.encoder_calls += 1
        self._image_shape = (int(image.shape[0]), int(image.shape[1]))

    def export_embedding(self) -> dict[str, np.ndarray]:
        """The current image's embedding as plain arrays (core/build_cache.py keeps them), so a
        later ``import_embedding`` answers prompts exactly as after ``set_image`` again."""
        if self._image_shape is None:
            raise RuntimeError("SamSegmenter.export_embedding called before set_image "
                               "(or after release)")
        p = self.predictor
        return {"features": p.features.detach().float().cpu().numpy(),
                "dtype": np.array(str(p.features.dtype).removeprefix("torch.")),
                "original_size": np.asarray(p.original_size, dtype=np.int64),
                "input_size": np.asarray(p.input_size, dtype=np.int64)}

    def import_embedding(self, data) -> None:
        """Make an ``export_embedding`` result the current image (no encoder pass)."""
        import torch

        p = self.predictor
        if p is None:
            raise RuntimeError("SamSegmenter.import_embedding called after release()")
        p.reset_image()
        p.features = torch.from_numpy(np.ascontiguousarray(data["features"])).to(
            self.device, getattr(torch, str(data["dtype"])))
        p.original_size = tuple(int(v) for v in data["original_size"])
        p.input_size = tuple(int(v) for v in data["input_size"])
        p.is_image_set = True
        self._image_shape = (int(p.original_size[0]), int(p.original_size[1]))

    def predict(self, prompt_sets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Answer R rounds of K positive points ``(R, K, 2)`` (pixel x, y).

        Returns the highest-scoring round's mask at full resolution, (H, W) bool (the first of
        equal scores), and the predicted-IoU scores (float32) of the rounds decoded: all R, or
        fewer when ``early_stop_iou`` stopped early. Only the winning mask is upscaled.
        """
        return self.predict_many([prompt_sets])[0]

    def predict_many(self, prompt_list) -> list[tuple[np.ndarray, np.ndarray]]:
        """``predict`` for several masks' prompt rounds on the current image, in order.

        Rounds of all masks share decoder calls of up to ``prompt_batch`` prompts (rounds with
        the same number of points K; prompts are never padded, which would change SAM's answer).
        """
        import torch

        if self._image_shape is None:
            raise RuntimeError("SamSegmenter.predict called before set_image (or after release)")
        sets = [_check_prompts(p) for p in prompt_list]
        winners: dict[int, tuple[float, object, object]] = {}     # i -> (score, src, token)
        scores: list[list[float]] = [[] for _ in sets]
        remaining = [len(p) for p in sets]
        masks: dict[int, np.ndarray] = {}
        pending: list[int] = []
        p = self.predictor
        with torch.inference_mode(), self._autocast():
            side = self.decoder.image_side(p.get_image_embedding())    # shared by all prompts
            for batch in self._batches(sets, remaining):
                pts = np.stack([sets[i][r] for i, r in batch])
                coords = p.transform.apply_coords_torch(
                    torch.from_numpy(pts).to(self.device), self._image_shape)
                labels = torch.ones(pts.shape[:2], dtype=torch.int, device=self.device)
                out = self.decoder.transformer(side, coords, labels)
                self.decoder_calls += 1
                self.rounds_decoded += len(batch)
                iou = out.iou.float().cpu().numpy()
                for b, (i, _) in enumerate(batch):
                    if remaining[i] == 0:        # stopped early earlier in this batch
                        continue
                    score = float(iou[b])
                    scores[i].append(score)
                    remaining[i] -= 1
                    if i not in winners or score > winners[i][0]:
                        winners[i] = (score, out.src[b], out.token[b])
                    if self.early_stop_iou > 0 and score >= self.early_stop_iou:
                        remaining[i] = 0
                    if remaining[i] == 0:
                        pending.append(i)
                if len(pending) >= self.prompt_batch:
                    self._upscale(pending, winners, masks)
            self._upscale(pending, winners, masks)
        low_memory.release_freed()              # the decoder's and upsampling's buffers
        return [(masks[i], np.asarray(scores[i], dtype=np.float32)) for i in range(len(sets))]

    def _batches(self, sets, remaining):
        """Decoder batches of (mask, round), same K in a batch, skipping early-stopped masks."""
        by_k: dict[int, list[tuple[int, int]]] = {}
        for i, pts in enumerate(sets):
            by_k.setdefault(pts.shape[1], []).extend((i, r) for r in range(len(pts)))
        for entries in by_k.values():
            batch: list[tuple[int, int]] = []
            for i, r in entries:
                if remaining[i] == 0:            # stopped early (checked as batches complete)
                    continue
                batch.append((i, r))
                if len(batch) == self.prompt_batch:
                    yield batch
                    batch = []
            if batch:
                yield batch

    def _upscale(self, pending: list[int], winners, masks: dict[int, np.ndarray]) -> None:
        """Upscale and upsample the winners of finished masks (one batch), then forget them."""
        import torch

        if not pending:
            return
        p = self.predictor
        src = torch.stack([winners[i][1] for i in pending])
        token = torch.stack([winners[i][2] for i in pending])
        low_res = self.decoder.masks(src, token)
        full = self.model.postprocess_masks(low_res.float(), p.input_size, p.original_size)
        binary = (full[:, 0] > self.model.mask_threshold).cpu().numpy()
        for k, i in enumerate(pending):
            masks[i] = binary[k]
            del winners[i]                        # frees its image tokens
        self.masks_upscaled += len(pending)
        pending.clear()

    def _autocast(self):
        import contextlib

        import torch
        if self.precision == "fp32":
            return contextlib.nullcontext()
        dtype = torch.bfloat16 if self.precision == "bf16" else torch.float16
        return torch.autocast("cuda" if str(self.device).startswith("cuda") else "cpu",
                              dtype=dtype)


def _check_prompts(prompt_sets) -> np.ndarray:
    pts = np.asarray(prompt_sets, dtype=np.float32)
    if pts.ndim == 2 and pts.shape[-1] == 2:
        pts = pts[None]
    if pts.ndim != 3 or pts.shape[-1] != 2 or pts.shape[0] == 0 or pts.shape[1] == 0:
        raise ValueError(f"prompt_sets must have shape (R, K, 2) with R, K >= 1, "
                         f"got {np.asarray(prompt_sets).shape}")
    if not np.isfinite(pts).all():
        raise ValueError("prompt_sets holds non-finite coordinates")
    return pts


def _check_options(prompt_batch: int, early_stop_iou: float, precision: str, quantize: bool,
                   on_gpu: bool) -> None:
    if prompt_batch < 0:
        raise ValueError(f"segmenter.prompt_batch must be >= 0 (0 = automatic), got {prompt_batch}")
    if not 0.0 <= early_stop_iou <= 1.5:
        raise ValueError(f"segmenter.early_stop_iou must be 0 (off) or a predicted IoU in "
                         f"(0, 1.5], got {early_stop_iou}")
    check_precision("segmenter", precision, quantize, on_gpu)
