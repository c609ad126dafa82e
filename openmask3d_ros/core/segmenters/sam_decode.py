"""SAM's mask decoder run in two halves, so only the winning round of a mask is upscaled.

``MaskDecoder.predict_masks`` (segment-anything 1.0, MobileSAM alike) runs the two-way transformer,
then upscales the image tokens (two transposed convolutions to 256x256x32) and projects each mask
token onto them. The predicted IoU, which picks the best of the k_rounds rounds, comes from the
transformer's IoU token alone. So: transformer for every round, IoU per round, and the upscaling
and projection for the winner only, with the same modules and weights (single-mask output, i.e.
mask token 0, as ``multimask_output=False``). Measured on 2 CPU threads, vit_b: transformer
52 ms, upscaling 18 ms per prompt; with 10 rounds this skips 9 of 10 upscalings.

The image side of the transformer's first block is the same for every prompt of an image (the
image tokens are only changed at that block's end): its three projections of the 4096 image
tokens (token-to-image keys and values, image-to-token queries; 3 of the 10 per prompt) are
computed once per image (``ImageSide``) and shared by every prompt. With one prompt a call (the
CPU default) each product has the shape it has in ``TwoWayTransformer.forward``, so the answers
are the same to the bit.

Equal to ``SamPredictor.predict_torch(..., multimask_output=False)`` up to float rounding of
batch shapes (test/test_sam_segmenter.py compares them).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch


@dataclass
class Decoded:
    """Transformer output for B prompts: predicted IoU, image tokens and mask token 0."""

    iou: torch.Tensor          # (B,)
    src: torch.Tensor          # (B, C, h, w)
    token: torch.Tensor        # (B, C)


@dataclass
class ImageSide:
    """One image's decoder inputs that do not depend on the prompt (``SplitDecoder.image_side``)."""

    keys: torch.Tensor         # (1, HW, C): image embedding + the no-mask dense embedding
    pe: torch.Tensor           # (1, HW, C): dense positional encoding
    k1: torch.Tensor           # first block, token-to-image: k_proj(keys + pe)
    v1: torch.Tensor           # first block, token-to-image: v_proj(keys)
    q1: torch.Tensor           # first block, image-to-token: q_proj(keys + pe)


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

    def image_side(self, features: torch.Tensor) -> ImageSide:
        """The prompt-independent part of the decoder for an image embedding (1, C, h, w)."""
        dense = self.model.prompt_encoder.no_mask_embed.weight.reshape(1, -1, 1, 1)
        keys = (features + dense).flatten(2).permute(0, 2, 1)
        pe = self.image_pe().flatten(2).permute(0, 2, 1)
        first = self.decoder.transformer.layers[0]
        k = keys + pe
        return ImageSide(keys, pe, first.cross_attn_token_to_image.k_proj(k),
                         first.cross_attn_token_to_image.v_proj(keys),
                         first.cross_attn_image_to_token.q_proj(k))

    def transformer(self, side: ImageSide, coords: torch.Tensor,
                    labels: torch.Tensor) -> Decoded:
        """Prompt encoder + two-way transformer for B point prompts (B, K, 2) in input frame."""
        md = self.decoder
        sparse, _ = self.model.prompt_encoder(points=(coords, labels), boxes=None, masks=None)
        b = sparse.shape[0]
        output_tokens = torch.cat([md.iou_token.weight, md.mask_tokens.weight], dim=0)
        tokens = torch.cat((output_tokens.unsqueeze(0).expand(b, -1, -1), sparse), dim=1)
        t = md.transformer
        queries, keys = _first_block(t.layers[0], tokens, side)
        for layer in t.layers[1:]:
            queries, keys = layer(queries=queries, keys=keys, query_pe=tokens, key_pe=side.pe)
        # TwoWayTransformer.forward's end: the final attention from the tokens to the image
        q = queries + tokens
        queries = t.norm_final_attn(queries + t.final_attn_token_to_image(
            q=q, k=keys + side.pe, v=keys))
        iou = md.iou_prediction_head(queries[:, 0, :])[:, 0]
        h, w = self.image_pe().shape[-2:]
        c = keys.shape[-1]
        return Decoded(iou, keys.transpose(1, 2).reshape(b, c, h, w), queries[:, 1, :])

    def masks(self, src: torch.Tensor, token: torch.Tensor) -> torch.Tensor:
        """Low-resolution mask logits (B, 1, 256, 256) for chosen rounds' tokens."""
        md = self.decoder
        up = md.output_upscaling(src)
        hyper = md.output_hypernetworks_mlps[0](token)
        b, c, h, w = up.shape
        return (hyper.unsqueeze(1) @ up.view(b, c, h * w)).view(b, 1, h, w)


def _first_block(layer, tokens: torch.Tensor, side: ImageSide):
    """``TwoWayAttentionBlock.forward`` of the first block (``skip_first_layer_pe``) with the
    image side's projections taken from ``side``: the same operations in the same order."""
    queries = layer.norm1(layer.self_attn(q=tokens, k=tokens, v=tokens))
    attn = layer.cross_attn_token_to_image
    queries = layer.norm2(queries + _attend(attn, attn.q_proj(queries + tokens), side.k1,
                                            side.v1))
    queries = layer.norm3(queries + layer.mlp(queries))
    q = queries + tokens
    attn = layer.cross_attn_image_to_token
    keys = layer.norm4(side.keys + _attend(attn, side.q1, attn.k_proj(q), attn.v_proj(queries)))
    return queries, keys


def _attend(attn, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """segment-anything's ``Attention.forward`` after its three input projections."""
    b = max(q.shape[0], k.shape[0])
    q, k, v = (attn._separate_heads(x.expand(b, -1, -1), attn.num_heads) for x in (q, k, v))
    out = torch.softmax(q @ k.permute(0, 1, 3, 2) / math.sqrt(q.shape[-1]), dim=-1) @ v
    return attn.out_proj(attn._recombine_heads(out))
