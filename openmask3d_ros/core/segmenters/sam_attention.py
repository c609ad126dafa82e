"""SAM's image-encoder attention computed in row chunks: the same result without the full matrix.

segment-anything's ``image_encoder.Attention.forward`` materialises the attention logits of all
tokens at once: in a global-attention block (vit_b: 4 of 12 blocks, vit_h: 4 of 32) that is
heads x 4096 x 4096 float32 for SAM's 64 x 64 token grid, 0.8 GB for vit_b's 12 heads and
1.07 GB for vit_h's 16, and ``add_decomposed_rel_pos`` and softmax each make another (the peak
of one block holds three). That is most of a CPU run's transient memory (benchmarks/RESULTS.md).

Softmax is per query row, so a block of query rows needs only its own logits. The chunked forward
runs the original operations in the original order (``(q * scale) @ k^T``, plus the decomposed
relative-position terms ``rel_h`` and ``rel_w``, softmax, ``@ v``, ``proj``) on
``rows`` rows of the token grid at a time, with ``rel_h`` / ``rel_w`` computed once for all rows as
the original does: equal to the original up to float rounding of the matrix products' blocking
(test/test_sam_attention.py). Not ``scaled_dot_product_attention``: the relative-position bias
would have to be passed as a full (heads, N, N) mask, the very matrix this avoids.

Window-attention blocks (14 x 14 windows) are small and keep the original forward; so does any
block whose full attention is at most ``max_bytes``.
"""
from __future__ import annotations

import types

import torch

# attention logits of one chunk (heads x rows*W x N float32), before the softmax copy; 64 MiB
# costs nothing measurable against the full matrix (RESULTS.md: SAM embed seconds before/after)
CHUNK_BYTES = 64 * 2**20


def chunk_global_attention(image_encoder, max_bytes: int = CHUNK_BYTES) -> int:
    """Give the Attention modules of a segment-anything image encoder the chunked forward.

    Only modules of segment-anything's own ``Attention`` class are changed (MobileSAM's TinyViT
    encoder has none). Returns how many modules were changed; calling it twice changes nothing
    more."""
    try:
        from segment_anything.modeling.image_encoder import Attention
    except ImportError:
        return 0
    changed = 0
    for module in image_encoder.modules():
        if type(module) is Attention and not getattr(module, "chunk_bytes", 0):
            module.chunk_bytes = int(max_bytes)
            module.forward = types.MethodType(chunked_forward, module)
            changed += 1
    return changed


def chunked_forward(self, x: torch.Tensor) -> torch.Tensor:
    """``Attention.forward`` of segment-anything in chunks of query rows (see the module doc)."""
    from segment_anything.modeling.image_encoder import Attention, get_rel_pos

    B, H, W, _ = x.shape
    n = H * W
    heads = B * self.num_heads
    row_bytes = heads * W * n * x.element_size()        # logits of one row of the token grid
    if row_bytes * H <= self.chunk_bytes:
        return Attention.forward(self, x)
    # qkv with shape (3, B, nHead, H * W, C); q, k, v with shape (B * nHead, H * W, C)
    qkv = self.qkv(x).reshape(B, n, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4)
    q, k, v = qkv.reshape(3, heads, n, -1).unbind(0)
    kt = k.transpose(-2, -1)
    if self.use_rel_pos:           # add_decomposed_rel_pos's terms, for all query rows at once
        r_q = q.reshape(heads, H, W, -1)
        rel_h = torch.einsum("bhwc,hkc->bhwk", r_q, get_rel_pos(H, H, self.rel_pos_h))
        rel_w = torch.einsum("bhwc,wkc->bhwk", r_q, get_rel_pos(W, W, self.rel_pos_w))
    out = torch.empty_like(q)
    rows = max(1, self.chunk_bytes // row_bytes)
    for r0 in range(0, H, rows):
        r1 = min(H, r0 + rows)
        attn = (q[:, r0 * W:r1 * W] * self.scale) @ kt
        if self.use_rel_pos:       # (attn + rel_h) + rel_w, as add_decomposed_rel_pos adds them
            attn = attn.view(heads, r1 - r0, W, H, W)
            attn += rel_h[:, r0:r1, :, :, None]
            attn += rel_w[:, r0:r1, :, None, :]
            attn = attn.view(heads, (r1 - r0) * W, n)
        attn = attn.softmax(dim=-1)
        out[:, r0 * W:r1 * W] = attn @ v
        del attn
    x = out.view(B, self.num_heads, H, W, -1).permute(0, 2, 3, 1, 4).reshape(B, H, W, -1)
    return self.proj(x)
