"""SAM's mask decoder run in two halves, so only the winning round of a mask is upscaled.

``MaskDecoder.predict_masks`` (segment-anything 1.0, MobileSAM alike) runs the two-way transformer,
then upscales the image tokens (two transposed convolutions to 256x256x32) and projects each mask
token onto them. The predicted IoU, which picks the best of the k_rounds rounds, comes from the
transformer's IoU token alone. So: transformer for every round, IoU per round, and the upscaling
and projection for the winner only, with the same modules and weights (single-mask output, i.e.
mask token 0, as ``multimask_output=False``). Measured on 2 CPU threads, vit_b: transformer
52 ms, upscaling 18 ms per prompt; with 10 rounds this skips 9 of 10 upscalings.

Equal to ``SamPredictor.predict_torch(..., multimask_output=False)`` up to float rounding of
batch shapes (test/test_sam_segmenter.py compares them).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class Decoded:
    """Transformer output for B prompts: predicted IoU, image tokens and mask token 0."""

    iou: torch.Tensor          # (B,)
    src: torch.Tensor          # (B, C, h, w)
    token: torch.Tensor        # (B, C)


class SplitDecoder:
    """The decoder of one SAM model, with the per-image constants computed once."""

    def __init__(self, model):
        self.model = model
        self.decoder = model.mask_decoder
        self._pe = None

    def image_pe(self) -> torch.Tensor:
        """Dense positional encoding (1, C, h, w): the same for every image, computed once."""
        if self._pe is None:
            self._pe = self.model.prompt_encoder.get_dense_pe()
        return self._pe

    def transformer(self, features: torch.Tensor, coords: torch.Tensor,
                    labels: torch.Tensor) -> Decoded:
        """Prompt encoder + two-way transformer for B point prompts (B, K, 2) in input frame."""
        md = self.decoder
        sparse, dense = self.model.prompt_encoder(points=(coords, labels), boxes=None, masks=None)
        b = sparse.shape[0]
        output_tokens = torch.cat([md.iou_token.weight, md.mask_tokens.weight], dim=0)
        tokens = torch.cat((output_tokens.unsqueeze(0).expand(b, -1, -1), sparse), dim=1)
        src = torch.repeat_interleave(features, b, dim=0) + dense
        pos = torch.repeat_interleave(self.image_pe(), b, dim=0)
        _, c, h, w = src.shape
        hs, src = md.transformer(src, pos, tokens)
        iou = md.iou_prediction_head(hs[:, 0, :])[:, 0]
        return Decoded(iou, src.transpose(1, 2).reshape(b, c, h, w), hs[:, 1, :])

    def masks(self, src: torch.Tensor, token: torch.Tensor) -> torch.Tensor:
        """Low-resolution mask logits (B, 1, 256, 256) for chosen rounds' tokens."""
        md = self.decoder
        up = md.output_upscaling(src)
        hyper = md.output_hypernetworks_mlps[0](token)
        b, c, h, w = up.shape
        return (hyper.unsqueeze(1) @ up.view(b, c, h * w)).view(b, 1, h, w)
