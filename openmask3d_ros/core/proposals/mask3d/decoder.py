"""Transformer-decoder parts of Mask3D (plain PyTorch, no MinkowskiEngine).

Module and parameter names match the official Mask3D code (models/mask3d.py,
models/position_embedding.py, models/modules/3detr_helpers.py of JonasSchult/Mask3D) so that the
released checkpoint loads strictly. Only the inference path (dropout 0, post-norm, the
"fourier" position encoding) is implemented.
"""
from __future__ import annotations

import math

import torch
from torch import nn


class FourierPositionEncoding(nn.Module):
    """Random Fourier features of coordinates rescaled to [0, 1] within ``input_range``.

    ``gauss_B`` is a persistent buffer drawn at construction, so the checkpoint carries it
    (key ``pos_enc.gauss_B``, shape (3, d_pos/2)); with random weights it is just random.
    """

    def __init__(self, d_pos: int = 128, d_in: int = 3, gauss_scale: float = 1.0):
        super().__init__()
        if d_pos % 2:
            raise ValueError("d_pos must be even")
        self.d_pos = d_pos
        self.register_buffer("gauss_B", torch.empty((d_in, d_pos // 2)).normal_() * gauss_scale)

    @torch.no_grad()
    def forward(self, xyz: torch.Tensor, input_range: tuple[torch.Tensor, torch.Tensor]
                ) -> torch.Tensor:
        """(B, N, 3) coordinates, range ((B, 3) min, (B, 3) max) -> (B, d_pos, N)."""
        lo, hi = input_range
        span = hi - lo
        # A flat scene (zero extent on an axis) would divide by zero; the official code
        # produces NaN there. Use a unit span instead: the axis then encodes to a constant.
        span = torch.where(span > 0, span, torch.ones_like(span))
        xyz = (xyz - lo[:, None, :]) / span[:, None, :]
        xyz = xyz * (2 * math.pi)
        b, n, d_in = xyz.shape
        proj = torch.mm(xyz.reshape(-1, d_in), self.gauss_B).view(b, n, -1)
        return torch.cat([proj.sin(), proj.cos()], dim=2).permute(0, 2, 1)


class QueryProjection(nn.Module):
    """3DETR ``GenericMLP`` as configured by Mask3D: conv1x1 -> ReLU -> conv1x1 -> ReLU."""

    def __init__(self, dim: int):
        super().__init__()
        self.layers = nn.Sequential(nn.Conv1d(dim, dim, 1, bias=True), nn.ReLU(),
                                    nn.Conv1d(dim, dim, 1, bias=True), nn.ReLU())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, dim, Q) -> (B, dim, Q)."""
        return self.layers(x)


class SelfAttentionLayer(nn.Module):
    """Post-norm self-attention over the queries (sequence-first tensors)."""

    def __init__(self, d_model: int, nhead: int, dropout: float = 0.0):
        super().__init__()
        self.self_attn = nn.MultiheadAttention(d_model, nhead, dropout=dropout)
        self.norm = nn.LayerNorm(d_model)
        self.dropout = nn.Dropout(dropout)
        for p in self.parameters():
            if p.dim() > 1:
                nn.init.xavier_uniform_(p)

    def forward(self, tgt: torch.Tensor, query_pos: torch.Tensor) -> torch.Tensor:
        q = k = tgt + query_pos
        tgt2 = self.self_attn(q, k, value=tgt)[0]
        return self.norm(tgt + self.dropout(tgt2))


class CrossAttentionLayer(nn.Module):
    """Post-norm masked cross-attention from the queries to the point features."""

    def __init__(self, d_model: int, nhead: int, dropout: float = 0.0):
        super().__init__()
        self.multihead_attn = nn.MultiheadAttention(d_model, nhead, dropout=dropout)
        self.norm = nn.LayerNorm(d_model)
        self.dropout = nn.Dropout(dropout)
        for p in self.parameters():
            if p.dim() > 1:
                nn.init.xavier_uniform_(p)

    def forward(self, tgt: torch.Tensor, memory: torch.Tensor, memory_mask: torch.Tensor | None,
                pos: torch.Tensor, query_pos: torch.Tensor) -> torch.Tensor:
        tgt2 = self.multihead_attn(query=tgt + query_pos, key=memory + pos, value=memory,
                                   attn_mask=memory_mask)[0]
        return self.norm(tgt + self.dropout(tgt2))


class FFNLayer(nn.Module):
    """Post-norm feed-forward block."""

    def __init__(self, d_model: int, dim_feedforward: int = 2048, dropout: float = 0.0):
        super().__init__()
        self.linear1 = nn.Linear(d_model, dim_feedforward)
        self.dropout = nn.Dropout(dropout)
        self.linear2 = nn.Linear(dim_feedforward, d_model)
        self.norm = nn.LayerNorm(d_model)
        for p in self.parameters():
            if p.dim() > 1:
                nn.init.xavier_uniform_(p)

    def forward(self, tgt: torch.Tensor) -> torch.Tensor:
        tgt2 = self.linear2(self.dropout(torch.relu(self.linear1(tgt))))
        return self.norm(tgt + self.dropout(tgt2))


def furthest_point_sample(xyz: torch.Tensor, n: int) -> torch.Tensor:
    """Indices of ``n`` points chosen by farthest-point sampling, starting at index 0.

    Same greedy rule as the pointnet2 CUDA op the official code calls (squared Euclidean
    distance, first pick = point 0); ties may resolve to a different index than the CUDA
    kernel. When ``n`` exceeds the number of points the sequence repeats, as the op does.
    """
    num = xyz.shape[0]
    idx = torch.zeros(n, dtype=torch.long, device=xyz.device)
    if num == 0 or n == 0:
        return idx[:0]
    xyz = xyz.float()
    dist = torch.full((num,), 1e10, device=xyz.device)
    last = 0
    for i in range(1, n):
        d = ((xyz - xyz[last]) ** 2).sum(dim=1)
        dist = torch.minimum(dist, d)
        last = int(torch.argmax(dist))
        idx[i] = last
    return idx
