"""Mask3D proposal backend: architecture vs the official checkpoint layout, loading, inference.

Everything uses random weights (no checkpoint is downloaded). Needs MinkowskiEngine; the tests
that need it are skipped with the reason when it cannot be imported.
"""
from __future__ import annotations

import collections
import logging
import sys

import numpy as np
import pytest
import torch

from openmask3d_ros.core.instance_map import InstanceMap
from openmask3d_ros.core.proposals.mask3d.compat import import_minkowski, minkowski_available

needs_me = pytest.mark.skipif(not minkowski_available(),
                              reason="MinkowskiEngine is not importable (run scripts/install.sh)")

# Keys read off the official sources (models/mask3d.py, models/res16unet.py,
# models/modules/resnet_block.py, models/modules/3detr_helpers.py, models/position_embedding.py
# of JonasSchult/Mask3D) with MinkowskiEngine's parameter names; shapes for the ScanNet200 model.
KNOWN_OFFICIAL_KEYS = {
    "backbone.conv0p1s1.kernel": (125, 3, 32),
    "backbone.bn0.bn.running_var": (32,),
    "backbone.block1.0.conv1.kernel": (27, 32, 32),
    "backbone.block2.0.downsample.0.kernel": (32, 64),
    "backbone.block2.0.downsample.1.bn.weight": (64,),
    "backbone.block4.5.norm2.bn.num_batches_tracked": (),
    "backbone.convtr4p16s2.kernel": (8, 256, 256),
    "backbone.block5.0.downsample.0.kernel": (384, 256),
    "backbone.convtr7p2s2.kernel": (8, 96, 96),
    "backbone.bntr7.bn.bias": (96,),
    "backbone.block8.1.conv2.kernel": (27, 96, 96),
    "backbone.final.kernel": (96, 200),
    "backbone.final.bias": (1, 200),
    "mask_features_head.kernel": (96, 128),
    "mask_features_head.bias": (1, 128),
    "query_projection.layers.0.weight": (128, 128, 1),
    "query_projection.layers.2.bias": (128,),
    "mask_embed_head.0.weight": (128, 128),
    "mask_embed_head.2.bias": (128,),
    "class_embed_head.weight": (201, 128),
    "pos_enc.gauss_B": (3, 64),
    "cross_attention.0.0.multihead_attn.in_proj_weight": (384, 128),
    "cross_attention.0.3.norm.weight": (128,),
    "self_attention.0.2.self_attn.out_proj.weight": (128, 128),
    "ffn_attention.0.1.linear1.weight": (1024, 128),
    "ffn_attention.0.1.linear2.weight": (128, 1024),
    "lin_squeeze.0.0.weight": (128, 256),
    "lin_squeeze.0.1.weight": (128, 256),
    "lin_squeeze.0.2.weight": (128, 128),
    "lin_squeeze.0.3.weight": (128, 96),
    "decoder_norm.bias": (128,),
}


def synthetic_scene(n: int = 6000, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A 2 m x 2 m floor with three coloured boxes on it."""
    rng = np.random.default_rng(seed)
    floor = np.c_[rng.uniform(0, 2, (n // 2, 2)), np.zeros(n // 2)]
    parts, cols = [floor], [np.tile([120, 110, 100], (n // 2, 1))]
    boxes = [((0.3, 0.3), 0.3, (200, 30, 30)), ((1.2, 0.4), 0.25, (30, 200, 30)),
             ((0.8, 1.3), 0.35, (30, 30, 200))]
    per_box = (n - n // 2) // len(boxes)
    for (cx, cy), size, col in boxes:
        p = rng.uniform(0, size, (per_box, 3))
        face = rng.integers(0, 3, per_box)          # a point on one of the six faces
        p[np.arange(per_box), face] = size * (rng.random(per_box) < 0.5)
        p += [cx, cy, 0.0]
        parts.append(p)
        cols.append(np.tile(col, (per_box, 1)))
    return np.vstack(parts).astype(np.float64), np.vstack(cols).astype(np.uint8)


@pytest.fixture(scope="module")
def backend():
    from openmask3d_ros.core.proposals.mask3d import Mask3DBackend
    # random weights: seed 2 gives positive mask logits with both colour inputs (official
    # [0, 1] and ScanNet-normalised), so both post-processing paths have masks to work on
    torch.manual_seed(2)
    return Mask3DBackend(checkpoint=None, device="cpu", num_queries=8)


# ------------------------------------------------------------------------------ import shim

def test_missing_minkowski_is_a_clear_import_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "MinkowskiEngine", None)
    with pytest.raises(ImportError, match="MinkowskiEngine is not importable.*install"):
        import_minkowski()


def test_python311_collections_aliases_are_restored():
    import_minkowski() if minkowski_available() else None
    assert collections.Sequence is collections.abc.Sequence


# ------------------------------------------------------------------------------ architecture

@needs_me
def test_network_has_the_official_hyperparameters(backend):
    m = backend.model
    assert m.num_queries == 8 and m.num_heads == 8 and m.num_decoders == 3
    assert m.hlevels == [0, 1, 2, 3] and m.shared_decoder
    assert m.class_embed_head.out_features == 201
    assert m.ffn_attention[0][0].linear1.out_features == 1024
    assert len(m.cross_attention) == 1 and len(m.cross_attention[0]) == 4


@needs_me
def test_state_dict_equals_the_official_layout(backend):
    from openmask3d_ros.core.proposals.mask3d.checkpoint import official_state_dict_shapes
    own = {k: tuple(v.shape) for k, v in backend.model.state_dict().items()}
    expected = official_state_dict_shapes()
    assert sorted(set(expected) - set(own)) == []
    assert sorted(set(own) - set(expected)) == []
    assert {k: s for k, s in own.items() if expected[k] != s} == {}
    for key, shape in KNOWN_OFFICIAL_KEYS.items():
        assert own[key] == shape, key


@needs_me
def test_kernel_volumes_match_the_released_checkpoint(backend):
    """A public inspection of scannet200 checkpoint: 1 kernel of 5^3, 46 of 3^3, 8 of 2^3."""
    volumes = collections.Counter(v.shape[0] for k, v in backend.model.state_dict().items()
                                  if k.endswith(".kernel") and v.dim() == 3)
    assert volumes == {125: 1, 27: 46, 8: 8}


# ------------------------------------------------------------------------------ checkpoints

@needs_me
def test_checkpoint_round_trip_gives_identical_masks(backend, tmp_path):
    from openmask3d_ros.core.proposals.mask3d import Mask3DBackend
    from openmask3d_ros.core.proposals.mask3d.checkpoint import save_lightning_checkpoint
    points, colors = synthetic_scene(3000)
    path = tmp_path / "scannet200_random.ckpt"
    save_lightning_checkpoint(backend.model, path)
    blob = torch.load(path, weights_only=True)
    assert all(k.startswith("model.") for k in blob["state_dict"])
    torch.manual_seed(123)   # a different random init, overwritten by the checkpoint
    loaded = Mask3DBackend(checkpoint=str(path), device="cpu", num_queries=8)
    for k, v in backend.model.state_dict().items():
        assert torch.equal(loaded.model.state_dict()[k], v), k
    a_logits, a_masks, _ = backend.predict_logits(points, colors)
    b_logits, b_masks, _ = loaded.predict_logits(points, colors)
    # MinkowskiEngine's CPU kernels accumulate in a thread-dependent order: two runs of the
    # *same* model differ by ~1e-6, so outputs are compared to 1e-4.
    np.testing.assert_allclose(a_logits, b_logits, atol=1e-4)
    np.testing.assert_allclose(a_masks, b_masks, atol=1e-4)
    decided = np.abs(a_masks) > 1e-3
    np.testing.assert_array_equal((a_masks > 0)[decided], (b_masks > 0)[decided])
    fresh = Mask3DBackend(checkpoint=None, device="cpu", num_queries=8)
    assert not np.allclose(fresh.predict_logits(points, colors)[1], a_masks, atol=1e-2)


@needs_me
def test_lightning_file_with_foreign_objects_loads(backend, tmp_path):
    """Released files also pickle OmegaConf configs and training buffers; both are skipped."""
    from openmask3d_ros.core.proposals.mask3d import Mask3DBackend
    mod = type(sys)("fake_omegaconf_for_test")
    cls = type("DictConfig", (), {"__module__": "fake_omegaconf_for_test"})
    mod.DictConfig = cls
    sys.modules["fake_omegaconf_for_test"] = mod
    try:
        state = {f"model.{k}": v for k, v in backend.model.state_dict().items()}
        state["criterion.empty_weight"] = torch.ones(201)
        torch.save({"state_dict": state, "hyper_parameters": {"config": cls()}, "epoch": 3},
                   tmp_path / "lightning.ckpt")
    finally:
        del sys.modules["fake_omegaconf_for_test"]   # not importable when loading
    loaded = Mask3DBackend(checkpoint=str(tmp_path / "lightning.ckpt"), num_queries=8)
    for k, v in backend.model.state_dict().items():
        assert torch.equal(loaded.model.state_dict()[k], v), k


@needs_me
def test_renamed_key_is_reported(backend, tmp_path):
    from openmask3d_ros.core.proposals.mask3d import Mask3DBackend
    state = {f"model.{k}": v for k, v in backend.model.state_dict().items()}
    state["model.backbone.conv0p1s1.weight"] = state.pop("model.backbone.conv0p1s1.kernel")
    torch.save({"state_dict": state}, tmp_path / "renamed.ckpt")
    with pytest.raises(ValueError) as err:
        Mask3DBackend(checkpoint=str(tmp_path / "renamed.ckpt"), num_queries=8)
    msg = str(err.value)
    assert "1 missing key(s): backbone.conv0p1s1.kernel" in msg
    assert "1 unexpected key(s): backbone.conv0p1s1.weight" in msg


@needs_me
def test_wrong_shape_is_reported(backend, tmp_path):
    from openmask3d_ros.core.proposals.mask3d import Mask3DBackend
    state = {f"model.{k}": v for k, v in backend.model.state_dict().items()}
    state["model.class_embed_head.weight"] = torch.zeros(19, 128)   # a ScanNet20 head
    state["model.class_embed_head.bias"] = torch.zeros(19)
    torch.save({"state_dict": state}, tmp_path / "scannet20.ckpt")
    with pytest.raises(ValueError,
                       match=r"2 shape mismatch.*class_embed_head.bias \(19,\) vs \(201,\)"):
        Mask3DBackend(checkpoint=str(tmp_path / "scannet20.ckpt"), num_queries=8)


def test_missing_file_names_the_file_and_where_to_get_it(tmp_path):
    from openmask3d_ros.core.proposals.mask3d import Mask3DBackend
    path = tmp_path / "nope" / "scannet200_model.ckpt"
    with pytest.raises(FileNotFoundError) as err:
        Mask3DBackend(checkpoint=str(path))
    assert str(path) in str(err.value) and "OpenMask3D README" in str(err.value)
    with pytest.raises(FileNotFoundError):
        Mask3DBackend(checkpoint="")


# ------------------------------------------------------------------------------ inference

@needs_me
def test_propose_returns_point_masks(backend, caplog):
    points, colors = synthetic_scene(6000)
    with caplog.at_level(logging.INFO):
        masks = backend.propose(points, colors).masks
    assert masks.dtype == bool and masks.shape[0] == len(points)
    assert 1 <= masks.shape[1] <= 8
    assert masks.any(axis=0).all()
    # points in one voxel share their mask membership (masks live on 2 cm voxels)
    _, inverse = np.unique(np.floor(points / 0.02), axis=0, return_inverse=True)
    first = np.full(inverse.max() + 1, -1)
    first[inverse[::-1]] = np.arange(len(points))[::-1]
    np.testing.assert_array_equal(masks, masks[first[inverse.ravel()]])
    assert "Mask3D" in caplog.text


@needs_me
def test_masks_follow_the_logits(backend):
    points, colors = synthetic_scene(3000, seed=1)
    _, voxel_logits, inverse = backend.predict_logits(points, colors)
    masks = backend.propose(points, colors).masks
    expected = (voxel_logits > 0)[inverse]
    expected = expected[:, expected.any(axis=0)]
    # every proposal is one query's thresholded mask
    for j in range(masks.shape[1]):
        assert any(np.array_equal(masks[:, j], expected[:, q]) for q in range(expected.shape[1]))


@needs_me
def test_empty_cloud(backend):
    out = backend.propose(np.zeros((0, 3)), np.zeros((0, 3), np.uint8)).masks
    assert out.shape == (0, 0) and out.dtype == bool


def test_colour_normalisation_matches_albumentations_formula():
    from openmask3d_ros.core.proposals.mask3d.preprocess import (SCANNET_COLOR_MEAN,
                                                                 SCANNET_COLOR_STD,
                                                                 normalize_colors)
    rgb = np.array([[0, 128, 255]], np.uint8)
    expected = (rgb / 255.0 - np.array(SCANNET_COLOR_MEAN)) / np.array(SCANNET_COLOR_STD)
    np.testing.assert_allclose(normalize_colors(rgb), expected, rtol=1e-5)
    np.testing.assert_allclose(normalize_colors(rgb / 255.0), expected, rtol=1e-5)


def test_a_two_part_mask_is_split_by_dbscan():
    """The pipeline splits each proposal with DBSCAN eps 0.95: two blobs 3 m apart -> 2 masks."""
    split_masks = pytest.importorskip("openmask3d_ros.core.dbscan_split").split_masks
    rng = np.random.default_rng(0)
    a = rng.uniform(0, 0.3, (200, 3))
    b = rng.uniform(0, 0.3, (150, 3)) + [3.0, 0, 0]
    other = rng.uniform(0, 0.3, (100, 3)) + [0, 3.0, 0]
    points = np.vstack([a, b, other])
    masks = np.zeros((len(points), 2), bool)
    masks[:350, 0] = True          # one proposal covering both blobs
    masks[350:, 1] = True          # a contiguous one
    parts = split_masks(points, masks, eps=0.95, min_points=1, min_mask_points=1)
    assert parts.shape == (len(points), 3)
    sizes = sorted(parts.sum(axis=0).tolist())
    assert sizes == [100, 150, 200]
    assert not (parts.sum(axis=1) > 1).any()


def test_pipeline_falls_back_when_the_checkpoint_is_missing(tmp_path):
    """models.build_proposals: a missing Mask3D file gives the geometric backend and a note."""
    from openmask3d_ros.core.config import PipelineConfig
    from openmask3d_ros.core.models import build_proposals
    cfg = PipelineConfig()
    cfg.proposals.backend = "mask3d"
    cfg.proposals.mask3d_checkpoint = str(tmp_path / "scannet200_model.ckpt")
    notes: list[str] = []
    backend = build_proposals(cfg, "cpu", notes)
    assert backend.name != "mask3d"
    assert any("scannet200_model.ckpt" in n and "geometric" in n for n in notes)


@needs_me
def test_pipeline_builds_mask3d_from_a_checkpoint(backend, tmp_path):
    from openmask3d_ros.core.config import PipelineConfig
    from openmask3d_ros.core.models import build_proposals
    from openmask3d_ros.core.proposals.mask3d.checkpoint import save_lightning_checkpoint
    save_lightning_checkpoint(backend.model, tmp_path / "m.ckpt")
    cfg = PipelineConfig()
    cfg.proposals.backend = "mask3d"
    cfg.proposals.mask3d_checkpoint = str(tmp_path / "m.ckpt")
    cfg.proposals.mask3d_num_queries = 8
    built = build_proposals(cfg, "cpu", [])
    assert built.name == "mask3d" and built.num_queries == 8


@needs_me
def test_openmask3d_run_with_mask3d_checkpoint_on_a_synthetic_scene(backend, tmp_path):
    """The user path end to end: a Lightning checkpoint named in a YAML config, `openmask3d run`."""
    from openmask3d_ros.cli import main as cli
    from openmask3d_ros.core.proposals.mask3d.checkpoint import save_lightning_checkpoint
    from openmask3d_ros.core.synthetic import make_scene
    save_lightning_checkpoint(backend.model, tmp_path / "scannet200_val.ckpt")
    (tmp_path / "c.yaml").write_text(
        f"proposals: {{backend: mask3d, mask3d_checkpoint: {tmp_path / 'scannet200_val.ckpt'}}}\n")
    scene = make_scene(tmp_path / "scene", seed=5, num_frames=20, width=160, height=120)
    assert cli(["run", str(scene), "--config", str(tmp_path / "c.yaml")]) == 0
    meta = InstanceMap.load(scene).meta
    assert meta.models.proposals == "mask3d"
    assert meta.config["proposals"]["mask3d_num_queries"] == 150
    assert len(meta.instances) >= 1
    # official post-processing (the default): every instance keeps its Mask3D score, best first
    scores = [inst.proposal_score for inst in meta.instances]
    assert scores == sorted(scores, reverse=True) and all(0 <= x <= 1 for x in scores)


# ------------------------------------------------------------------ official post-processing

def _reference_official(class_logits, voxel_logits, xyz, inverse):
    """The official eval_instance_step steps written out naively (numpy, per pair)."""
    from sklearn.cluster import DBSCAN
    e = np.exp(class_logits - class_logits.max(axis=1, keepdims=True))
    probs = (e / e.sum(axis=1, keepdims=True))[:, :-1]
    masks, mprobs = [], []
    for q in range(voxel_logits.shape[1]):
        cur = voxel_logits[:, q] > 0
        if cur.any():
            lab = DBSCAN(eps=0.95, min_samples=1).fit(xyz[cur]).labels_
            for c in np.unique(lab):
                m = np.zeros(len(cur))
                m[np.flatnonzero(cur)[lab == c]] = 1
                masks.append(voxel_logits[:, q] * m)
                mprobs.append(probs[q])
    pairs = sorted(((p, i, c) for i, pr in enumerate(mprobs) for c, p in enumerate(pr)),
                   key=lambda t: -t[0])[:len(masks)]
    out = []
    for p, i, c in pairs:
        lg = masks[i]
        inside = lg > 0
        sig = 1 / (1 + np.exp(-lg))
        out.append((p * (sig * inside).sum() / (inside.sum() + 1e-6), inside[inverse], c))
    out.sort(key=lambda t: -t[0])
    return out


def test_official_postprocess_matches_the_official_steps():
    from openmask3d_ros.core.proposals.mask3d.postprocess import official_masks
    rng = np.random.default_rng(0)
    xyz = np.vstack([rng.uniform(0, 0.5, (30, 3)), rng.uniform(0, 0.5, (30, 3)) + [4, 0, 0]])
    V, Q, C = len(xyz), 4, 5
    logits = rng.normal(0, 2, (V, Q)).astype(np.float32)
    logits[:, 3] = -1.0                                  # an empty query: no mask
    # query 0 likely for two classes, query 1 for one; no tie straddles the top-6 cut
    class_logits = np.zeros((Q, C + 1), np.float32)
    class_logits[0, :2] = [6.0, 5.5]
    class_logits[1, 3] = 4.0
    class_logits[2, 4] = 1.0
    inverse = rng.integers(0, V, 200)
    got = official_masks(class_logits, logits, xyz, inverse)
    ref = _reference_official(class_logits, logits, xyz.astype(np.float32), inverse)
    # queries 0-2 each split into the two blobs 4 m apart -> 6 masks, top-6 of 6 x 5 pairs
    assert got.masks.shape == (200, 6) and len(got.scores) == 6
    np.testing.assert_allclose(got.scores, [r[0] for r in ref], rtol=1e-5)
    for j, r in enumerate(ref):
        assert np.array_equal(got.masks[:, j], r[1]) and got.classes[j] == r[2]
    assert np.all(np.diff(got.scores) <= 0)
    # the same cluster appears once per likely class (query 0: classes 0 and 1)
    cols = {got.masks[:, j].tobytes() for j in range(6)}
    assert len(cols) < 6


def test_segment_voting_takes_the_majority_of_each_segment():
    from openmask3d_ros.core.proposals.mask3d.postprocess import segment_vote
    seg = np.array([7, 7, 7, 2, 2, 2, 9])
    masks = np.array([[1, 0], [1, 0], [0, 0], [1, 1], [0, 1], [0, 1], [1, 0]], bool)
    out = segment_vote(masks, seg)
    assert out[:, 0].tolist() == [True, True, True, False, False, False, True]
    assert out[:, 1].tolist() == [False, False, False, True, True, True, False]


def test_segments_file_is_found_and_checked(tmp_path):
    import json

    from openmask3d_ros.core.errors import InputError
    from openmask3d_ros.core.proposals.mask3d.segments import find_segments
    assert find_segments(tmp_path, 3) is None
    path = tmp_path / "scene0011_00_vh_clean_2.0.010000.segs.json"
    path.write_text(json.dumps({"sceneId": "scene0011_00", "segIndices": [5, 5, 9]}))
    assert find_segments(tmp_path, 3).tolist() == [5, 5, 9]
    with pytest.raises(InputError, match="segs.json.*4 points"):
        find_segments(tmp_path, 4)
    path.write_text("{not json")
    with pytest.raises(InputError, match="segs.json"):
        find_segments(tmp_path, 3)


def test_official_colours_are_unit_range_as_the_single_scene_script():
    from openmask3d_ros.core.proposals.mask3d.preprocess import unit_colors
    rgb = np.array([[0, 128, 255]], np.uint8)
    np.testing.assert_array_equal(unit_colors(rgb), (rgb / 255.0).astype(np.float32))
    np.testing.assert_allclose(unit_colors(rgb.astype(float)), rgb / 255.0, rtol=1e-6)


@needs_me
def test_official_backend_scores_and_colour_mode(backend):
    from openmask3d_ros.core.proposals.mask3d import Mask3DBackend
    from openmask3d_ros.core.proposals.mask3d.postprocess import official_masks
    points, colors = synthetic_scene(4000, seed=2)
    assert backend.fidelity == "official"
    out = backend.propose(points, colors)
    masks = out.masks
    assert out.final and len(out.scores) == masks.shape[1] >= 1
    assert np.all(np.diff(out.scores) <= 0)
    class_logits, voxel_logits, inverse = backend.predict_logits(points, colors)
    ref = official_masks(class_logits, voxel_logits, backend._last_voxel_xyz, inverse)
    assert np.array_equal(ref.masks, masks)
    paper = Mask3DBackend(checkpoint=None, device="cpu", num_queries=8, fidelity="paper")
    paper.model.load_state_dict(backend.model.state_dict())
    paper_out = paper.propose(points, colors)
    assert paper_out.scores is None and not paper_out.final and paper_out.masks.shape[1] <= 8
    # the two modes feed the network different colours: different logits
    assert not np.allclose(paper.predict_logits(points, colors)[1], voxel_logits)
