"""Mask3D output -> scored class-agnostic masks, as OpenMask3D's mask stage does it.

Source: OpenMask3D/openmask3d @ 3bc3fc5, ``class_agnostic_mask_computation/trainer/trainer.py``
(``eval_instance_step`` with ``use_dbscan: true``, ``decoder_id: -1``; ``get_class_agn_mask``;
``get_full_res_mask``), run by ``compute_masks_single_scene.sh`` / ``compute_masks_full_
scannet200.sh``:

1. class probabilities ``softmax(logits)[:, :-1]`` (the no-object class dropped);
2. every query's voxel mask (logit > 0) is split with DBSCAN (eps 0.95, min_samples 1) on the
   voxels' metric coordinates; each cluster becomes a mask (its query's logits inside the
   cluster, 0 outside) that carries its query's class probabilities;
3. top-N over all (mask, class) pairs, N = number of masks, so one mask can appear once per
   likely class and another not at all; score = class probability x mean sigmoid of the mask
   logits over the mask's voxels;
4. back to every input point through the voxel inverse map; with ScanNet superpoint segments
   (``eval_on_segments``) each segment takes the mask when more than half its points have it;
5. sorted by score, highest first (``torch.sort(descending=True)``).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from scipy import sparse
from sklearn.cluster import DBSCAN


@dataclass
class ScoredMasks:
    masks: np.ndarray        # (P, N) bool, highest score first
    scores: np.ndarray       # (N,) float32
    classes: np.ndarray      # (N,) int64, index into the model's classes (no-object excluded)


def official_masks(class_logits: np.ndarray, voxel_logits: np.ndarray, voxel_xyz: np.ndarray,
                   inverse: np.ndarray, dbscan_eps: float = 0.95, dbscan_min_points: int = 1,
                   point2segment: np.ndarray | None = None) -> ScoredMasks:
    """The official post-processing of one scene (see module docstring)."""
    P = len(inverse)
    probs = torch.softmax(torch.as_tensor(class_logits, dtype=torch.float32), dim=-1)[..., :-1]
    logits = torch.as_tensor(voxel_logits, dtype=torch.float32)
    xyz = np.asarray(voxel_xyz, dtype=np.float32)
    new_masks, new_probs = [], []
    for q in range(logits.shape[1]):
        cur = (logits[:, q] > 0).numpy()
        if not cur.any():
            continue
        clusters = DBSCAN(eps=dbscan_eps, min_samples=dbscan_min_points).fit(xyz[cur]).labels_
        labelled = np.zeros(len(cur), dtype=np.int64)
        labelled[cur] = clusters + 1
        labelled = torch.from_numpy(labelled)
        for cid in np.unique(clusters):
            if cid != -1:
                new_masks.append(logits[:, q] * (labelled == cid + 1))
                new_probs.append(probs[q])
    if not new_masks:
        return ScoredMasks(np.zeros((P, 0), bool), np.zeros(0, np.float32),
                           np.zeros(0, np.int64))
    mask_cls = torch.stack(new_probs)                 # (N, C)
    mask_pred = torch.stack(new_masks).T              # (V, N)
    n, C = mask_cls.shape
    labels = torch.arange(C).unsqueeze(0).repeat(n, 1).flatten(0, 1)
    scores_per_query, topk = mask_cls.flatten(0, 1).topk(n, sorted=True)
    classes = labels[topk]
    mask_pred = mask_pred[:, torch.div(topk, C, rounding_mode="trunc")]
    result = (mask_pred > 0).float()
    heatmap = mask_pred.float().sigmoid()
    mask_scores = (heatmap * result).sum(0) / (result.sum(0) + 1e-6)
    score = scores_per_query * mask_scores
    full = result.numpy()[np.asarray(inverse)] > 0.5                     # (P, N)
    if point2segment is not None:
        full = segment_vote(full, point2segment)
    order = score.sort(descending=True).indices.numpy()
    return ScoredMasks(full[:, order], score.numpy()[order].astype(np.float32),
                       classes.numpy()[order].astype(np.int64))


def segment_vote(masks: np.ndarray, point2segment: np.ndarray) -> np.ndarray:
    """``get_full_res_mask`` with ``eval_on_segments``: scatter_mean over segments > 0.5."""
    seg = np.asarray(point2segment).ravel()
    _, seg_idx = np.unique(seg, return_inverse=True)
    P = len(seg)
    onehot = sparse.csr_matrix((np.ones(P, np.float32), (seg_idx, np.arange(P))),
                               shape=(seg_idx.max() + 1, P))
    sizes = np.asarray(onehot.sum(axis=1)).ravel()
    mean = (onehot @ masks.astype(np.float32)) / sizes[:, None]
    return (mean > 0.5)[seg_idx]
