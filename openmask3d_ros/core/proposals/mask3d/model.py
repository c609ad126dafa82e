"""Mask3D (Schult et al., ICRA 2023) for inference on one scene, on MinkowskiEngine.

Written after the official ``models/mask3d.py`` (JonasSchult/Mask3D, as vendored by
OpenMask3D/openmask3d), restricted to what OpenMask3D's class-agnostic mask stage runs:
batch size 1, ``is_eval=True`` (every voxel of every level is attended to, no sampling),
non-parametric queries from farthest-point-sampled voxels with the Fourier position encoding,
a shared decoder applied ``num_decoders`` times over the ``hlevels`` feature maps, and voxel
masks (``train_on_segments`` is false in OpenMask3D's single-scene config). Attribute names
are the official ones: they are the checkpoint's state_dict keys.

Row order: everything here works on ``SparseTensor.F`` (coordinate-map order, which equals the
voxelised input order). The official code mixes ``decomposed_features`` (per-batch order) with
re-wrapping into map order in ``mask_module``; that is only consistent when the per-batch
permutation is the identity (which the published results imply for the GPU runs; not verified
here). On MinkowskiEngine's CPU map the
batch-0 permutation is NOT the identity (measured), so copying the official indexing literally
would scramble masks on CPU; the map order used here is the intended semantics, and the
farthest-point sampling starts at row 0 like the official op on identity order.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch
from torch import nn

from .compat import import_minkowski
from .decoder import (CrossAttentionLayer, FFNLayer, FourierPositionEncoding, QueryProjection,
                      SelfAttentionLayer, furthest_point_sample)
from .res16unet import Res16UNet34C

ME = import_minkowski()


@dataclass
class Mask3DConfig:
    """Hyperparameters of the released ScanNet200 model (conf/model/mask3d.yaml + overrides).

    ``num_queries`` is 100 in mask3d.yaml; the ScanNet200 evaluation scripts and OpenMask3D use
    150. It sets no parameter shape (queries are sampled points), so any value loads.
    ``num_classes`` is general.num_targets = 201 (200 classes + no-object); ``out_channels`` is
    data.num_labels = 200; ``in_channels`` is data.in_channels = 3 (colour only; the raw
    coordinates travel separately).
    """

    hidden_dim: int = 128
    dim_feedforward: int = 1024
    num_queries: int = 150
    num_heads: int = 8
    num_decoders: int = 3
    dropout: float = 0.0
    hlevels: list[int] = field(default_factory=lambda: [0, 1, 2, 3])
    shared_decoder: bool = True
    num_classes: int = 201
    gauss_scale: float = 1.0
    in_channels: int = 3
    out_channels: int = 200
    conv1_kernel_size: int = 5
    bn_momentum: float = 0.02

    def as_dict(self) -> dict:
        return asdict(self)


class Mask3D(nn.Module):
    """Sparse U-Net backbone + masked transformer decoder -> per-query class logits and masks."""

    def __init__(self, cfg: Mask3DConfig | None = None):
        super().__init__()
        cfg = cfg or Mask3DConfig()
        self.cfg = cfg
        self.num_queries = cfg.num_queries
        self.num_heads = cfg.num_heads
        self.num_decoders = cfg.num_decoders
        self.hlevels = list(cfg.hlevels)
        self.shared_decoder = cfg.shared_decoder
        self.num_classes = cfg.num_classes
        dim = cfg.hidden_dim

        self.backbone = Res16UNet34C(cfg.in_channels, cfg.out_channels,
                                     cfg.conv1_kernel_size, cfg.bn_momentum)
        sizes = self.backbone.PLANES[-5:]   # channels of the 5 feature maps, coarse to fine
        self.mask_features_head = ME.MinkowskiConvolution(
            self.backbone.PLANES[7], dim, kernel_size=1, stride=1, bias=True, dimension=3)
        self.query_projection = QueryProjection(dim)
        self.mask_embed_head = nn.Sequential(nn.Linear(dim, dim), nn.ReLU(), nn.Linear(dim, dim))
        self.class_embed_head = nn.Linear(dim, cfg.num_classes)
        self.pos_enc = FourierPositionEncoding(dim, gauss_scale=cfg.gauss_scale)
        self.pooling = ME.MinkowskiAvgPooling(kernel_size=2, stride=2, dimension=3)

        self.masked_transformer_decoder = nn.ModuleList()   # empty, kept for name parity
        self.cross_attention = nn.ModuleList()
        self.self_attention = nn.ModuleList()
        self.ffn_attention = nn.ModuleList()
        self.lin_squeeze = nn.ModuleList()
        for _ in range(1 if cfg.shared_decoder else cfg.num_decoders):
            self.cross_attention.append(nn.ModuleList(
                CrossAttentionLayer(dim, cfg.num_heads, cfg.dropout) for _ in self.hlevels))
            self.self_attention.append(nn.ModuleList(
                SelfAttentionLayer(dim, cfg.num_heads, cfg.dropout) for _ in self.hlevels))
            self.ffn_attention.append(nn.ModuleList(
                FFNLayer(dim, cfg.dim_feedforward, cfg.dropout) for _ in self.hlevels))
            self.lin_squeeze.append(nn.ModuleList(
                nn.Linear(sizes[h], dim) for h in self.hlevels))
        self.decoder_norm = nn.LayerNorm(dim)

    def _mask_module(self, queries: torch.Tensor, mask_features, pooling_steps: int | None):
        """Class logits (Q, C), mask logits (N, Q) and, when ``pooling_steps`` is given, the
        boolean attention mask at that level (True = do not attend)."""
        q = self.decoder_norm(queries)            # (1, Q, D)
        mask_embed = self.mask_embed_head(q)
        outputs_class = self.class_embed_head(q)[0]
        output_masks = mask_features.F @ mask_embed[0].T
        if pooling_steps is None:
            return outputs_class, output_masks, None
        attn = ME.SparseTensor(features=output_masks,
                               coordinate_manager=mask_features.coordinate_manager,
                               coordinate_map_key=mask_features.coordinate_map_key)
        for _ in range(pooling_steps):
            attn = self.pooling(attn.float())
        return outputs_class, output_masks, attn.F.detach().sigmoid() < 0.5

    def forward(self, x, raw_coordinates: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One scene: ``x`` (voxel colours, batch index 0 only), ``raw_coordinates`` (N, 3) in
        metres in the row order of ``x``. Returns class logits (Q, num_classes) and mask logits
        (N, Q) of the last decoder layer (OpenMask3D uses ``decoder_id = -1``)."""
        pcd_features, aux = self.backbone(x)
        with torch.no_grad():
            coordinates = ME.SparseTensor(features=raw_coordinates,
                                          coordinate_manager=aux[-1].coordinate_manager,
                                          coordinate_map_key=aux[-1].coordinate_map_key,
                                          device=aux[-1].device)
            coords = [coordinates]
            for _ in range(len(aux) - 1):
                coords.append(self.pooling(coords[-1]))
            coords.reverse()                      # coarse to fine, like ``aux``
        pos_encodings = []
        for c in coords:
            f = c.F.float()
            enc = self.pos_enc(f[None], input_range=(f.min(0)[0][None], f.max(0)[0][None]))
            pos_encodings.append(enc[0].T)        # (N_level, D)
        mask_features = self.mask_features_head(pcd_features)

        # Non-parametric queries: farthest-point sample on the integer voxel grid, encode the
        # sampled voxels' metric positions relative to the scene's extent.
        raw = coordinates.F.float()
        fps_idx = furthest_point_sample(x.C[:, 1:].float(), self.num_queries)
        query_pos = self.pos_enc(raw[fps_idx][None],
                                 input_range=(raw.min(0)[0][None], raw.max(0)[0][None]))
        query_pos = self.query_projection(query_pos)          # (1, D, Q)
        queries = torch.zeros_like(query_pos).permute(0, 2, 1)  # (1, Q, D)
        query_pos = query_pos.permute(2, 0, 1)                 # (Q, 1, D)

        for decoder_counter in range(self.num_decoders):
            dc = 0 if self.shared_decoder else decoder_counter
            for i, hlevel in enumerate(self.hlevels):
                _, _, attn_mask = self._mask_module(queries, mask_features,
                                                    len(aux) - hlevel - 1)
                src = aux[hlevel].F
                if attn_mask.shape[0] != src.shape[0]:
                    raise RuntimeError("attention mask and feature map levels disagree "
                                       f"({attn_mask.shape[0]} vs {src.shape[0]} voxels)")
                # A query whose mask covers no voxel of this level attends to all of them.
                attn_mask[:, attn_mask.all(dim=0)] = False
                memory_mask = attn_mask.T[None].repeat_interleave(self.num_heads, dim=0)
                src_pcd = self.lin_squeeze[dc][i](src[:, None, :])           # (N, 1, D)
                output = self.cross_attention[dc][i](
                    queries.permute(1, 0, 2), src_pcd, memory_mask=memory_mask,
                    pos=pos_encodings[hlevel][:, None, :], query_pos=query_pos)
                output = self.self_attention[dc][i](output, query_pos=query_pos)
                queries = self.ffn_attention[dc][i](output).permute(1, 0, 2)

        pred_logits, pred_masks, _ = self._mask_module(queries, mask_features, None)
        return pred_logits, pred_masks
