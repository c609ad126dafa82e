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
(test/test_low_memory.py). Not ``scaled_dot_product_attention``: the relative-position bias
would have to be passed as a full (heads, N, N) mask, the very matrix this avoids.

Window-attention blocks (25 windows of 14 x 14 tokens, 46 MB of logits for vit_b) are chunked the
same way; a block whose full attention is at most ``max_bytes`` keeps the original forward.

``chunk_block_mlp``: each block's MLP (4096 tokens x 4 x width hidden, 50 MB for vit_b, twice:
the linear layer's output and GELU's) runs on ``tokens`` tokens at a time and adds into the
block's residual in place; the MLP and LayerNorm work per token, so the result is the same. Only
without autograd (``set_image`` runs in inference mode); with gradients on, the original forward.
"""
from __future__ import annotations

import types

import torch

# attention logits of one chunk (heads x rows*W x N), before the softmax copy: 16 MiB is one row
# of vit_b's 64 x 64 token grid (12 heads) in a global block and a quarter of a window block's
# (25 windows x 12 heads x 196 x 196); smaller chunks did not lower the encoder's peak further
CHUNK_BYTES = 16 * 2**20
# on a GPU every chunk costs kernel launches: vit_h's 1.07 GB global matrix in 5 chunks, window
# blocks whole (not measured on a GPU here: no device was lent to issue 22's memory work)
CUDA_CHUNK_BYTES = 256 * 2**20


def chunk_global_attention(image_encoder, max_bytes: int = CHUNK_BYTES) -> int:
    """Give the Attention modules of a segment-anything image encoder the chunked forward.

    Only modules of segment-anything's own ``Attention`` class are changed (MobileSAM's TinyViT
    encoder has none). Returns how many modules were changed; calling it twice changes nothing
    more."""
    return _replace_forward(image_encoder, "Attention", chunked_forward,
                            chunk_bytes=int(max_bytes))


def _replace_forward(image_encoder, class_name: str, forward, **settings) -> int:
    """Give each module of segment-anything's ``image_encoder.<class_name>`` class (not of a
    subclass) in ``image_encoder`` the method ``forward`` and the attributes ``settings``, which
    it reads. The first setting marks a changed module: one that has it is left as it is.
    Returns how many modules were changed (0 without segment-anything)."""
    try:
        from segment_anything.modeling import image_encoder as sam_image_encoder
    except ImportError:
        return 0
    cls = getattr(sam_image_encoder, class_name)
    marker = next(iter(settings))
    changed = 0
    for module in image_encoder.modules():
        if type(module) is cls and not getattr(module, marker, 0):
            for name, value in settings.items():
                setattr(module, name, value)
            module.forward = types.MethodType(forward, module)
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
    del qkv                        # the linear layer's output (the reshape copied it)
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


# tokens per MLP chunk: 1024 x 3072 float32 = 12 MiB of hidden activations for vit_b
MLP_CHUNK_TOKENS = 1024


def chunk_block_mlp(image_encoder, tokens: int = MLP_CHUNK_TOKENS, release=None) -> int:
    """Give the Blocks of a segment-anything image encoder the forward with a chunked MLP.

    ``release``: called before each block (e.g. ``low_memory.release_freed``): what the previous
    block freed goes back to the system instead of fragmenting the heap. Returns how many blocks
    were changed (segment-anything's own ``Block`` class only)."""
    return _replace_forward(image_encoder, "Block", block_forward,
                            mlp_chunk_tokens=int(tokens), release_before=release)


def block_forward(self, x: torch.Tensor) -> torch.Tensor:
    """``Block.forward`` of segment-anything with the MLP residual in token chunks, in place."""
    from segment_anything.modeling.image_encoder import Block, window_partition, window_unpartition

    if self.release_before is not None:
        self.release_before()
    if torch.is_grad_enabled():    # the in-place residual would overwrite what autograd saved
        return Block.forward(self, x)
    shortcut = x
    x = self.norm1(x)
    # Window partition
    if self.window_size > 0:
        H, W = x.shape[1], x.shape[2]
        x, pad_hw = window_partition(x, self.window_size)
    x = self.attn(x)
    # Reverse window partition
    if self.window_size > 0:
        x = window_unpartition(x, self.window_size, pad_hw, (H, W))
    x = shortcut + x
    # x + mlp(norm2(x)), token by token: the same sums, written into x's own storage
    flat = x.view(-1, x.shape[-1])
    for start in range(0, flat.shape[0], self.mlp_chunk_tokens):
        part = flat[start:start + self.mlp_chunk_tokens]
        part += self.mlp(self.norm2(part))
    return x
