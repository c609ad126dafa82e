"""The node queries a loaded map with the encoder the map was built with (as the CLI does): a
CLIP map answers in a node configured with the colour stand-in, and a CLIP map whose checkpoint
is gone is refused with a message naming the encoder and the missing file."""
import shutil
import sys
from pathlib import Path

import pytest

from openmask3d_ros.core.query import open_map
from openmask3d_ros.msg import PipelineStatus

from test_ros_node_inprocess import _node, context  # noqa: F401  (same folder; fixture)

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from test_query_map_encoder import save_clip_map, set_recorded_checkpoint  # noqa: E402


@pytest.fixture(scope="module")
def clip_map(tmp_path_factory):
    return save_clip_map(tmp_path_factory.mktemp("clipmap"))


def _wait_loaded(run):
    return run.wait_status(lambda s: s["models"] not in ("", "loading") and (
        s["state"] == PipelineStatus.STATE_READY or "loading the map" in s["message"]), 180)


def test_clip_map_answers_in_a_stand_in_node(context, tmp_path, clip_map):  # noqa: F811
    scene, _ = clip_map
    run = _node(context, tmp_path, load_map=str(scene))     # the node's encoder: colour stand-in
    try:
        st = _wait_loaded(run)
        assert st["state"] == PipelineStatus.STATE_READY, st["message"]
        assert "image_encoder=colour" in st["models"]
        expected = open_map(scene).ask("a blue chair", top_k=4, min_relevance=0.0)
        resp = run.query("a blue chair", top_k=4, min_relevance=0.0)
        assert resp.success, resp.message
        # the instance whose feature is this very text embedding comes first, cosine ~1
        assert resp.instances[0].id == 1 and resp.instances[0].score == pytest.approx(1, abs=1e-4)
        assert [i.id for i in resp.instances] == [r.instance_id for r in expected.results]
    finally:
        run.close()


def test_clip_map_without_its_checkpoint_is_refused_clearly(context, tmp_path,  # noqa: F811
                                                            clip_map):
    scene, ckpt = clip_map
    moved = tmp_path / "moved"
    shutil.copytree(scene, moved)
    gone = tmp_path / "gone" / ckpt.name
    set_recorded_checkpoint(moved, gone)
    run = _node(context, tmp_path, load_map=str(moved))
    try:
        st = _wait_loaded(run)
        assert st["state"] != PipelineStatus.STATE_READY
        msg = st["message"]
        assert "CLIP ViT-B-32" in msg and str(gone) in msg and "not found" in msg, msg
        assert "-d but" not in msg, msg
        resp = run.query("a blue chair")
        assert not resp.success and "no map yet" in resp.message
    finally:
        run.close()
