"""Opt-in shared view selection: fewer frames to embed, bounded visibility loss, paper when off."""
import numpy as np
import pytest

from openmask3d_ros.core.view_sharing import share_views
from openmask3d_ros.core.visibility import select_views


def random_counts(seed, frames=40, masks=30):
    rng = np.random.default_rng(seed)
    counts = rng.integers(0, 1000, (frames, masks))
    counts[rng.random((frames, masks)) < 0.5] = 0          # many masks unseen in many frames
    return counts


@pytest.mark.parametrize("seed", range(5))
def test_fraction_zero_keeps_the_papers_frames(seed):
    counts = random_counts(seed)
    topk = select_views(counts, 5)
    views, rep = share_views(counts, topk, 0.0)
    for a, b in zip(views, topk):                      # same frames (random counts: no ties)
        assert set(a[a >= 0]) == set(b[b >= 0])
    assert rep.embeddings_saved == 0 and rep.visibility_lost_max == 0.0


@pytest.mark.parametrize("seed", range(5))
def test_sharing_embeds_fewer_frames_within_the_fraction(seed):
    counts = random_counts(seed)
    topk = select_views(counts, 5)
    views, rep = share_views(counts, topk, 0.5)
    assert rep.frames_shared == len(np.unique(views[views >= 0])) < rep.frames_topk
    for i in range(counts.shape[1]):
        got, paper = views[i][views[i] >= 0], topk[i][topk[i] >= 0]
        assert len(got) == len(paper) == len(set(got))         # as many distinct views
        if len(paper):
            assert counts[got, i].min() >= 0.5 * counts[paper, i].min()
            assert list(counts[got, i]) == sorted(counts[got, i], reverse=True)
    assert 0.0 <= rep.visibility_lost_mean <= rep.visibility_lost_max < 1.0


def test_bad_fraction_is_named():
    with pytest.raises(ValueError, match="share_fraction"):
        share_views(np.ones((3, 2), int), select_views(np.ones((3, 2), int), 2), 1.0)


def _meta(scene) -> dict:
    import json

    from openmask3d_ros.core import map_versions
    return json.loads((map_versions.current(scene / "openmask3d") / "meta.json").read_text())


def test_map_metadata_reports_the_sharing(built_scene, scene_copy):
    """`openmask3d run` with sharing on: meta.json says what it saved and what it cost, and the
    frames it names are the ones the map's instances were seen from; off: null."""
    from openmask3d_ros.cli import main as cli
    assert _meta(built_scene(0))["view_sharing"] is None          # default: the paper's top-k
    scene = scene_copy(0)
    cfg = scene.parent / "share.yaml"
    cfg.write_text("visibility: {share_fraction: 0.9}\n")
    assert cli(["run", str(scene), "--frame-step", "2", "--config", str(cfg)]) == 0
    meta = _meta(scene)
    rep = meta["view_sharing"]
    assert rep["fraction"] == 0.9
    frames = {v for inst in meta["instances"] for v in inst["views"]}
    assert rep["frames_shared"] == len(frames) == meta["segmenter_images"]
    assert rep["embeddings_saved"] == rep["frames_topk"] - rep["frames_shared"] > 0
    assert 0.0 <= rep["visibility_lost_mean"] <= rep["visibility_lost_max"] < 1.0
