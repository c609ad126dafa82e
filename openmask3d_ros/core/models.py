"""Build the model set named by a configuration (stand-ins, or the real models when configured)."""
from __future__ import annotations

import logging
import sys
from dataclasses import dataclass, field

from .config import PipelineConfig
from .device import resolve_device
from .interfaces import ImageEncoder, ProposalBackend, Segmenter, TextEncoder
from .threads import apply_torch_threads, configure_threads

log = logging.getLogger(__name__)


@dataclass
class Models:
    proposals: ProposalBackend
    segmenter: Segmenter
    image_encoder: ImageEncoder
    text_encoder: TextEncoder
    device: str = "cpu"
    notes: list[str] = field(default_factory=list)   # fallbacks and stand-ins, for logs/metadata

    def release(self, *names: str) -> None:
        """Free the weights of the named models (``"proposals"``, ``"segmenter"``) that can be
        freed (a ``release()`` method): a one-shot run is done with them. They answer nothing
        after; the others and every model's ``name`` stay."""
        for name in names:
            release = getattr(getattr(self, name), "release", None)
            if release is not None:
                release()
                log.info("%s %s released (not needed for the rest of this run)", name,
                         getattr(self, name).name)

    def describe(self) -> dict:
        return {"proposals": self.proposals.name, "segmenter": self.segmenter.name,
                "image_encoder": self.image_encoder.name, "text_encoder": self.text_encoder.name,
                "device": self.device, "notes": list(self.notes)}


def _note(notes: list[str], text: str, level: int = logging.INFO) -> None:
    """Record a stand-in/fallback note (for metadata and status) and log it once."""
    log.log(level, text)
    notes.append(text)


def uses_torch(cfg: PipelineConfig, text_only: bool = False) -> bool:
    """Whether the configured models need torch (stand-ins do not)."""
    if text_only:
        return cfg.encoder.backend == "clip"
    return (cfg.proposals.backend == "mask3d" or cfg.segmenter.backend == "sam"
            or cfg.encoder.backend == "clip")


def build_proposals(cfg: PipelineConfig, device: str, notes: list[str]) -> ProposalBackend:
    p = cfg.proposals
    if p.backend == "precomputed":
        from .proposals.precomputed import PrecomputedMasks
        return PrecomputedMasks(p.masks_file)
    if p.backend == "mask3d":
        try:
            from .proposals.mask3d import Mask3DBackend
            return Mask3DBackend(checkpoint=p.mask3d_checkpoint, device=device,
                                 num_queries=p.mask3d_num_queries, voxel_size=p.mask3d_voxel_size,
                                 mask_threshold=p.mask3d_mask_threshold,
                                 fidelity=cfg.fidelity, dbscan_eps=p.dbscan_eps,
                                 dbscan_min_points=p.dbscan_min_points)
        except (ImportError, FileNotFoundError, ValueError) as exc:
            note = f"Mask3D unavailable ({exc}); falling back to the geometric proposal backend"
            _note(notes, note, logging.WARNING)
    elif p.backend != "geometric":
        raise ValueError(f"proposals.backend must be geometric, mask3d or precomputed, "
                         f"got '{p.backend}'")
    from .proposals.geometric import GeometricProposals
    return GeometricProposals(p)


def build_segmenter(cfg: PipelineConfig, device: str, notes: list[str]) -> Segmenter:
    s = cfg.segmenter
    if s.backend == "sam":
        from .segmenters.sam import SamSegmenter
        return SamSegmenter(model_type=s.sam_model, checkpoint=s.sam_checkpoint, device=device,
                            prompt_batch=s.prompt_batch, early_stop_iou=s.early_stop_iou,
                            precision=s.precision, quantize=s.quantize)
    if s.backend != "hull":
        raise ValueError(f"segmenter.backend must be hull or sam, got '{s.backend}'")
    from .segmenters.hull import HullSegmenter
    _note(notes, "segmenter is the projected-point hull STAND-IN, not SAM")
    return HullSegmenter()


def build_encoders(cfg: PipelineConfig, device: str, notes: list[str]
                   ) -> tuple[ImageEncoder, TextEncoder]:
    e = cfg.encoder
    if e.backend == "clip":
        from .encoders.clip import ClipEncoder
        enc = ClipEncoder(model_name=e.clip_model, checkpoint=e.clip_checkpoint, device=device,
                          batch_size=e.batch_size, cache_size=e.text_cache_size,
                          preprocess_mode=e.preprocess, precision=e.precision,
                          quantize=e.quantize)
        return enc, enc
    if e.backend != "colour":
        raise ValueError(f"encoder.backend must be colour or clip, got '{e.backend}'")
    from .encoders.colour import ColourEncoder
    _note(notes, "image/text encoders are the colour STAND-IN, not CLIP")
    enc = ColourEncoder()
    return enc, enc


def build_models(cfg: PipelineConfig) -> Models:
    """All four models for ``cfg``; logs the device and every stand-in/fallback."""
    configure_threads(cfg.threads)
    device = resolve_device(cfg.device, uses_torch(cfg))
    log.info("OpenMask3D device: %s", device)
    notes: list[str] = []
    proposals = build_proposals(cfg, device, notes)
    segmenter = build_segmenter(cfg, device, notes)
    image_encoder, text_encoder = build_encoders(cfg, device, notes)
    if "torch" in sys.modules:      # imported by a model after configure_threads ran
        apply_torch_threads()
    return Models(proposals, segmenter, image_encoder, text_encoder, device, notes)


def build_text_encoder(cfg: PipelineConfig) -> TextEncoder:
    """Only the text side (for answering queries on a saved map)."""
    configure_threads(cfg.threads)
    encoder = build_encoders(cfg, resolve_device(cfg.device, uses_torch(cfg, True)), [])[1]
    if "torch" in sys.modules:
        apply_torch_threads()
    return encoder
