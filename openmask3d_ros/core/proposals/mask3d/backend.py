"""Mask3D class-agnostic proposals behind the ProposalBackend interface."""
from __future__ import annotations

import gc
import logging
import time
from pathlib import Path

import numpy as np
import torch

from ... import low_memory
from ...fidelity import Fidelity
from ...interfaces import Proposals
from .compat import import_minkowski

log = logging.getLogger(__name__)


class Mask3DBackend:
    """Class-agnostic 3D instance masks from the released Mask3D ScanNet200 model.

    ``fidelity="official"`` (default) is OpenMask3D's mask stage: colours in [0, 1] as its
    single-scene script feeds them, 2 cm voxels, the last decoder layer, then its
    post-processing (postprocess.py: per-query DBSCAN on voxels, top-N over masks x classes,
    score = class probability x mean mask sigmoid, superpoint voting when ``segments`` is set,
    sorted by score). ``propose`` returns those masks with their scores, marked final: the
    pipeline skips its own DBSCAN split.

    ``fidelity="paper"``: ScanNet colour normalisation (the training pipeline), one mask per
    query with ``logit > mask_threshold``, unscored (``scores`` None), empty masks and exact
    duplicates dropped; DBSCAN splitting is left to the pipeline.

    ``checkpoint=None`` builds the network with random weights (tests, benchmarks only).
    """

    name = "mask3d"
    uses_segments = True     # official mode: ScanNet superpoint voting

    def __init__(self, checkpoint: str | Path | None, device: str = "cpu", num_queries: int = 150,
                 voxel_size: float = 0.02, mask_threshold: float = 0.0,
                 fidelity: Fidelity | str = Fidelity.OFFICIAL, dbscan_eps: float = 0.95,
                 dbscan_min_points: int = 1):
        from .checkpoint import load_into, read_checkpoint, require_file
        if checkpoint is not None:
            require_file(checkpoint)  # a missing file is reported even without MinkowskiEngine
        ME = import_minkowski()   # ImportError with an install hint when unavailable
        state = read_checkpoint(checkpoint) if checkpoint is not None else None
        from .model import Mask3D, Mask3DConfig

        self.device = torch.device(device)
        if self.device.type == "cuda":
            if not torch.cuda.is_available():
                raise RuntimeError(f"device '{device}' requested but CUDA is not available")
            if not bool(getattr(ME, "is_cuda_available", lambda: False)()):
                raise ImportError("this MinkowskiEngine build is CPU-only; rebuild it with CUDA "
                                  "(scripts/install.sh on a machine with nvcc and a GPU) or use "
                                  "device 'cpu'")
        if num_queries < 1:
            raise ValueError(f"num_queries must be >= 1, got {num_queries}")
        if voxel_size <= 0:
            raise ValueError(f"voxel_size must be > 0, got {voxel_size}")
        self.num_queries = int(num_queries)
        self.voxel_size = float(voxel_size)
        self.mask_threshold = float(mask_threshold)
        self.fidelity = Fidelity.parse(fidelity)
        self.dbscan_eps, self.dbscan_min_points = float(dbscan_eps), int(dbscan_min_points)
        self._last_voxel_xyz: np.ndarray | None = None
        self.model = Mask3D(Mask3DConfig(num_queries=self.num_queries))
        if state is not None:
            load_into(self.model, state, source=f"checkpoint '{checkpoint}'")
            self.weights = str(checkpoint)
        else:
            self.weights = "random (no checkpoint)"
        self.model.to(self.device).eval()
        self.last_timing: dict[str, float] = {}
        log.info("Mask3D proposals: device %s, weights %s, %d queries, voxel %.3f m",
                 self.device, self.weights, self.num_queries, self.voxel_size)

    def release(self) -> None:
        """Free the network (a one-shot run is done with its proposals); proposes nothing
        after."""
        self.model = None
        gc.collect()
        low_memory.release_freed()

    @torch.no_grad()
    def predict_logits(self, points: np.ndarray, colors: np.ndarray
                       ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Raw network output: class logits (Q, C), voxel mask logits (V, Q), inverse map (P,)."""
        if self.model is None:
            raise RuntimeError("Mask3DBackend used after release()")
        from .preprocess import voxelize
        ME = import_minkowski()
        t0 = time.perf_counter()
        scene = voxelize(points, colors, self.voxel_size,
                         normalize=self.fidelity is Fidelity.PAPER)
        x = ME.SparseTensor(features=scene.features.to(self.device),
                            coordinates=scene.coordinates.to(self.device), device=self.device)
        raw = scene.raw_coordinates.to(self.device)
        inverse = scene.inverse_map
        if x.C.shape[0] != raw.shape[0] or not torch.equal(x.C.cpu(), scene.coordinates):
            # MinkowskiEngine reordered the (already unique) voxels: follow its row order.
            order = _row_order(x.C.cpu(), scene.coordinates)
            raw = raw[order.to(self.device)]
            row_of_voxel = torch.empty_like(order)
            row_of_voxel[order] = torch.arange(len(order))
            inverse = row_of_voxel.numpy()[inverse]
        self._last_voxel_xyz = raw.float().cpu().numpy()
        t1 = time.perf_counter()
        logits, masks = self.model(x, raw)
        t2 = time.perf_counter()
        self.last_timing = {"voxelize_s": t1 - t0, "network_s": t2 - t1,
                            "voxels": float(raw.shape[0])}
        return logits.float().cpu().numpy(), masks.float().cpu().numpy(), inverse

    def propose(self, points: np.ndarray, colors: np.ndarray,
                segments: np.ndarray | None = None) -> Proposals:
        """Official: the scored, post-processed masks (final; ``segments``, per-point ScanNet
        superpoint ids, turn on segment voting); paper: one unscored mask per query with at
        least one point (M <= num_queries)."""
        points = np.asarray(points, dtype=np.float64)
        if len(points) == 0:
            if self.fidelity is Fidelity.OFFICIAL:
                return Proposals(np.zeros((0, 0), bool), np.zeros(0, np.float32), final=True)
            return Proposals(np.zeros((0, 0), dtype=bool))
        class_logits, voxel_logits, inverse = self.predict_logits(points, colors)
        if self.fidelity is Fidelity.OFFICIAL:
            return self._official(class_logits, voxel_logits, inverse, len(points), segments)
        voxel_masks = voxel_logits > self.mask_threshold          # (V, Q)
        keep = voxel_masks.any(axis=0)
        voxel_masks = voxel_masks[:, keep]
        if voxel_masks.shape[1]:
            # FPS repeats points when there are fewer voxels than queries: drop exact copies.
            _, first = np.unique(np.packbits(voxel_masks, axis=0).T, axis=0, return_index=True)
            voxel_masks = voxel_masks[:, np.sort(first)]
        masks = voxel_masks[inverse]
        log.info("Mask3D: %d points, %d voxels -> %d non-empty masks of %d queries (%.2f s)",
                 len(points), voxel_logits.shape[0], masks.shape[1], self.num_queries,
                 sum(v for k, v in self.last_timing.items() if k.endswith("_s")))
        return Proposals(masks)

    def _official(self, class_logits, voxel_logits, inverse, num_points, seg) -> Proposals:
        from .postprocess import official_masks
        if seg is not None and len(seg) != num_points:
            log.warning("Mask3D: %d segment ids for %d points; segment voting off",
                        len(seg), num_points)
            seg = None
        out = official_masks(class_logits, voxel_logits, self._last_voxel_xyz, inverse,
                             self.dbscan_eps, self.dbscan_min_points, seg)
        log.info("Mask3D (official post-processing%s): %d points, %d voxels -> %d scored masks",
                 ", segment voting" if seg is not None else "", num_points,
                 voxel_logits.shape[0], out.masks.shape[1])
        return Proposals(out.masks, out.scores, final=True)


def _row_order(actual: torch.Tensor, expected: torch.Tensor) -> torch.Tensor:
    """Index into ``expected`` rows for every row of ``actual`` (same set of unique rows)."""
    lo = torch.minimum(actual.min(0)[0], expected.min(0)[0]).long()
    span = (torch.maximum(actual.max(0)[0], expected.max(0)[0]).long() - lo + 1)

    def key(c: torch.Tensor) -> torch.Tensor:
        c = c.long() - lo
        k = torch.zeros(len(c), dtype=torch.long)
        for d in range(c.shape[1]):
            k = k * span[d] + c[:, d]
        return k

    ka, ke = key(actual), key(expected)
    sort_e = torch.argsort(ke)
    pos = torch.searchsorted(ke[sort_e], ka)
    return sort_e[pos]
