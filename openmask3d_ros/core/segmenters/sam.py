"""Segment Anything behind the Segmenter interface: one image embedding per frame, batched rounds.

The official OpenMask3D code calls ``set_image`` for every (mask, view) pair and upsamples every
candidate mask to full resolution. Here the caller sets each frame once and asks for all masks that
chose it; all R prompt rounds of a mask go through the decoder in one batch, the winner is picked
by SAM's predicted IoU on the 256x256 low-resolution output, and only that one mask is upsampled.

Measured (benchmarks/bench_feature_models.py, vit_b, 640x480, 2 CPU threads): upsampling all 10
rounds costs 35 ms of a 1.1 s batched decoder pass, so upsampling only the winner saves memory
(no R x H x W float stack) and ~3 % of the time; the decoder pass itself (two-way transformer and
mask upscaling, per round) is what costs. The big saving is the one embedding per frame.
"""
from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np

from ..interfaces import configured_path

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


class SamSegmenter:
    """SAM (vit_h / vit_l / vit_b, or MobileSAM vit_t if installed) answering point prompts.

    ``set_image`` embeds a frame once (``encoder_calls`` counts it); ``predict`` answers any number
    of prompt batches on that embedding.
    """

    def __init__(self, model_type: str = "vit_h", checkpoint: str = "", device: str = "cpu"):
        import torch

        builder = _registry(model_type)
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        hint = (f"expected a SAM {model_type} checkpoint; obtain {where_to_get(model_type)} "
                f"and set segmenter.sam_checkpoint to the file")
        path = configured_path(checkpoint, "SAM", "segmenter.sam_checkpoint", hint)
        if path.is_dir():
            wanted = (SAM_CHECKPOINTS.get(model_type) or MOBILE_SAM[model_type])[0]
            if (path / wanted).is_file():
                path = path / wanted
        if not path.is_file():
            raise FileNotFoundError(f"SAM checkpoint not found: {path}: {hint}")

        t0 = time.perf_counter()
        state = _load_state_dict(path, model_type)
        guessed = _guess_type(state)
        if model_type in SAM_CHECKPOINTS and guessed is not None and guessed != model_type:
            raise ValueError(f"SAM checkpoint {path} holds {guessed} weights, but model type "
                             f"{model_type} was configured (segmenter.sam_model); use "
                             f"{where_to_get(model_type)} or set sam_model: {guessed}")
        model = builder(checkpoint=None)
        try:
            model.load_state_dict(state, strict=True)
        except RuntimeError as exc:
            lines = [ln.strip() for ln in str(exc).strip().splitlines()[:6]]
            raise ValueError(f"SAM checkpoint {path} does not match model type {model_type} "
                             f"(wrong architecture?): {'; '.join(lines)}") from exc
        del state
        self.model = model.to(device).eval()
        self.predictor = _predictor_class(model_type)(self.model)
        self.device = device
        self.model_type = model_type
        self.checkpoint = str(path)
        self.name = f"sam:{model_type}"
        self.encoder_calls = 0      # image embeddings computed (one per set_image)
        self.decoder_calls = 0      # batched prompt-decoder passes
        self._image_shape: tuple[int, int] | None = None
        log.info("SAM %s loaded from %s on %s (fp32) in %.1f s", model_type, path, device,
                 time.perf_counter() - t0)

    def set_image(self, image: np.ndarray) -> None:
        """Embed an RGB uint8 (H, W, 3) image once; later predictions refer to it."""
        import torch

        image = np.asarray(image)
        if image.ndim != 3 or image.shape[2] != 3 or image.shape[0] == 0 or image.shape[1] == 0:
            raise ValueError(f"SAM expects an RGB (H, W, 3) image, got shape {image.shape}")
        if image.dtype != np.uint8:
            raise ValueError(f"SAM expects a uint8 image, got {image.dtype}")
        with torch.inference_mode():
            self.predictor.set_image(np.ascontiguousarray(image), image_format="RGB")
        self.encoder_calls += 1
        self._image_shape = (int(image.shape[0]), int(image.shape[1]))

    def predict(self, prompt_sets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Answer R rounds of K positive points ``(R, K, 2)`` (pixel x, y) in one decoder pass.

        Returns the highest-scoring round's mask at full resolution, (H, W) bool, and the R
        predicted-IoU scores (float32). Only the winning mask is upsampled.
        """
        import torch

        if self._image_shape is None:
            raise RuntimeError("SamSegmenter.predict called before set_image")
        pts = np.asarray(prompt_sets, dtype=np.float32)
        if pts.ndim == 2 and pts.shape[-1] == 2:
            pts = pts[None]
        if pts.ndim != 3 or pts.shape[-1] != 2 or pts.shape[0] == 0 or pts.shape[1] == 0:
            raise ValueError(f"prompt_sets must have shape (R, K, 2) with R, K >= 1, "
                             f"got {np.asarray(prompt_sets).shape}")
        if not np.isfinite(pts).all():
            raise ValueError("prompt_sets holds non-finite coordinates")
        p = self.predictor
        with torch.inference_mode():
            coords = p.transform.apply_coords_torch(
                torch.from_numpy(pts).to(self.device), self._image_shape)
            labels = torch.ones(pts.shape[:2], dtype=torch.int, device=self.device)
            low_res, iou = self._decode(coords, labels)
            scores = iou[:, 0].float()
            best = torch.argmax(scores).view(1)          # stays on the device: no sync here
            full = self.model.postprocess_masks(low_res.index_select(0, best), p.input_size,
                                                p.original_size)
            mask = (full[0, 0] > self.model.mask_threshold).cpu().numpy()
        self.decoder_calls += 1
        return mask, scores.cpu().numpy().astype(np.float32)

    def _decode(self, coords, labels):
        """One batched prompt-encoder + mask-decoder pass: (R, 1, 256, 256) logits, (R, 1) IoU."""
        model = self.model
        sparse, dense = model.prompt_encoder(points=(coords, labels), boxes=None, masks=None)
        return model.mask_decoder(
            image_embeddings=self.predictor.features,
            image_pe=model.prompt_encoder.get_dense_pe(),
            sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense,
            multimask_output=False,
        )

    def reset_image(self) -> None:
        """Drop the current embedding (frees memory between frames)."""
        self.predictor.reset_image()
        self._image_shape = None
