"""Exact incremental rebuilds (core/build_cache.py): a rebuild after new keyframes is the map a
build from scratch gives, with the stand-ins and with random-weight SAM + CLIP; damaged entries
are recomputed with a warning; --no-cache; the size bound; cancel."""
import json
import logging
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml

from openmask3d_ros.cli import main as cli
from openmask3d_ros.core import map_versions
from openmask3d_ros.core.build_cache import CACHE_DIRNAME, BuildCache, digest
from openmask3d_ros.core.config import PipelineConfig
from openmask3d_ros.core.errors import BuildCancelled
from openmask3d_ros.core.instance_map import InstanceMap
from openmask3d_ros.core.map_meta import MapMeta
from openmask3d_ros.core.models import build_models
from openmask3d_ros.core.pipeline import run_pipeline
from openmask3d_ros.core.scene import SceneFolder
from openmask3d_ros.core.synthetic import make_scene


def hide_frames(scene: Path, count: int) -> Path:
    """Move the scene's last ``count`` frames aside (keyframes recorded later); returns where."""
    held = scene.parent / "held"
    held.mkdir()
    folder = SceneFolder(scene)
    for fid in folder.frame_ids[-count:]:
        for f in folder.frame_files(fid):
            (held / f.parent.name).mkdir(exist_ok=True)
            shutil.move(f, held / f.parent.name / f.name)
    return held


def restore_frames(scene: Path, held: Path) -> None:
    for sub in held.iterdir():
        for f in sub.iterdir():
            shutil.move(f, scene / sub.name / f.name)


def assert_same_map(a: InstanceMap, b: InstanceMap) -> None:
    """Same instances, same views, features with cosine >= 0.999999."""
    assert a.num_instances == b.num_instances
    assert all(np.array_equal(x, y) for x, y in zip(a.point_indices, b.point_indices))
    assert [i.views for i in a.meta.instances] == [i.views for i in b.meta.instances]
    assert [i.point_box_fallbacks for i in a.meta.instances] == \
        [i.point_box_fallbacks for i in b.meta.instances]
    fa, fb = a.features.astype(np.float64), b.features.astype(np.float64)
    np.testing.assert_array_equal(np.linalg.norm(fa, axis=1) > 0, np.linalg.norm(fb, axis=1) > 0)
    seen = np.linalg.norm(fb, axis=1) > 0
    cos = (fa * fb).sum(axis=1) / np.maximum(np.linalg.norm(fa, axis=1) *
                                             np.linalg.norm(fb, axis=1), 1e-12)
    assert cos[seen].min() >= 0.999999
    assert a.meta.frames.used == b.meta.frames.used
    assert (a.meta.segmenter_images, a.meta.crops_encoded) == \
        (b.meta.segmenter_images, b.meta.crops_encoded)


@pytest.fixture
def scene(tmp_path):
    """A 12-frame stand-in scene whose last 2 frames are recorded after the first build."""
    root = make_scene(tmp_path / "scene", seed=1, num_frames=12, width=160, height=120)
    return root, hide_frames(root, 2)


def test_rebuild_after_new_keyframes_is_the_map_from_scratch(scene):
    root, held = scene
    assert cli(["run", str(root), "--frame-step", "1"]) == 0
    first = InstanceMap.load(root)
    restore_frames(root, held)
    assert cli(["run", str(root), "--frame-step", "1"]) == 0
    assert cli(["run", str(root), "--frame-step", "1", "--no-cache", "--out",
                str(root.parent / "scratch")]) == 0
    rebuilt, scratch = InstanceMap.load(root), InstanceMap.load(root.parent / "scratch")
    assert_same_map(rebuilt, scratch)
    rec = rebuilt.meta.cache
    assert rec.mode == "incremental" and rec.proposals == "reused"
    pairs = sum(len(i.views) for i in rebuilt.meta.instances)
    assert rec.refinements_reused + rec.refinements_computed == pairs
    assert rec.crops_reused + rec.crops_computed == rebuilt.meta.crops_encoded
    assert rec.refinements_reused > 0 and rec.crops_reused > 0
    # official fidelity, prompts seeded per (mask, view): only the new views are refined
    before = {(m, v) for m, i in enumerate(first.meta.instances) for v in i.views}
    after = {(m, v) for m, i in enumerate(rebuilt.meta.instances) for v in i.views}
    assert after - before and rec.refinements_computed == len(after - before)
    # --no-cache: no cache read or written, nothing recorded
    assert scratch.meta.cache is None and not (root.parent / "scratch" / CACHE_DIRNAME).exists()

    # nothing changed: everything reused, the same map again
    assert cli(["run", str(root), "--frame-step", "1"]) == 0
    again = InstanceMap.load(root)
    assert_same_map(again, scratch)
    rec = again.meta.cache
    assert (rec.refinements_computed, rec.crops_computed, rec.embeddings_computed) == (0, 0, 0)
    assert again.meta.changes.summary().startswith("0 added, 0 removed, 0 moved")


def test_one_stream_seeding_redoes_every_mask_after_the_first_changed_one(scene):
    """segmenter.prompt_seeding: stream (the official code's draws after np.random.seed): a
    rebuild is still the map from scratch, but every mask after the first one whose views
    changed is refined again, where per_view (the default) refines only the new views."""
    root, held = scene
    twin, twin_held = root.parent / "twin", root.parent / "twin_held"
    shutil.copytree(root, twin)
    shutil.copytree(held, twin_held)
    cfg = PipelineConfig().updated({"frame_step": 1, "segmenter.prompt_seeding": "stream"})
    first = run_pipeline(root, cfg)
    restore_frames(root, held)
    rebuilt = run_pipeline(root, cfg)
    scratch = run_pipeline(root, cfg, out_dir=root.parent / "scratch", cache="off")
    assert_same_map(rebuilt, scratch)
    rec = rebuilt.meta.cache
    changed = [m for m, (a, b) in enumerate(zip(first.meta.instances, rebuilt.meta.instances))
               if a.views != b.views]
    assert changed and rec.first_mask_recomputed == changed[0] > 0
    # every view of every later mask (their draws start elsewhere in the stream)
    later = sum(len(i.views) for i in rebuilt.meta.instances[changed[0] + 1:])
    assert later > 0 and rec.refinements_computed >= later
    # the same rebuild seeded per view refines only the pairs that are new views
    per_view = PipelineConfig().updated({"frame_step": 1})
    assert per_view.segmenter.prompt_seeding == "per_view"           # the default
    run_pipeline(twin, per_view)
    restore_frames(twin, twin_held)
    twin_rebuilt = run_pipeline(twin, per_view)
    assert [i.views for i in twin_rebuilt.meta.instances] == \
        [i.views for i in rebuilt.meta.instances]
    assert twin_rebuilt.meta.cache.refinements_computed < rec.refinements_computed


def test_cache_enabled_false_and_refresh(scene):
    root, held = scene
    restore_frames(root, held)
    cfg = PipelineConfig().updated({"frame_step": 1})
    off = run_pipeline(root, cfg.updated({"cache.enabled": False}))
    assert off.meta.cache is None and not (root / "openmask3d" / CACHE_DIRNAME).exists()
    full = run_pipeline(root, cfg, cache="full")                # recompute, store
    assert full.meta.cache.mode == "full" and full.meta.cache.refinements_reused == 0
    assert full.meta.cache.proposals == "computed"
    inc = run_pipeline(root, cfg)
    assert inc.meta.cache.refinements_computed == 0 and inc.meta.cache.proposals == "reused"
    assert_same_map(inc, off)


def test_damaged_entries_are_recomputed_with_a_warning(scene, caplog):
    root, held = scene
    restore_frames(root, held)
    cfg = PipelineConfig().updated({"frame_step": 1})
    first = run_pipeline(root, cfg)
    cache = root / "openmask3d" / CACHE_DIRNAME
    victims = [sorted((cache / kind).iterdir())[0] for kind in ("refine", "crops", "proposals")]
    for n, path in enumerate(victims):
        blob = bytearray(path.read_bytes())
        if n == 0:
            blob[-5] ^= 0xFF                    # a flipped bit in the payload
        elif n == 1:
            del blob[len(blob) // 2:]           # cut short (a crash without fsync)
        else:
            blob[:4] = b"XXXX"                  # not an entry at all
        path.write_bytes(bytes(blob))
    with caplog.at_level(logging.WARNING, logger="openmask3d_ros.core.build_cache"):
        again = run_pipeline(root, cfg)
    assert_same_map(again, first)
    rec = again.meta.cache
    assert rec.damaged == 3
    assert rec.refinements_computed == 1 and rec.crops_computed == cfg.crops.levels
    assert rec.proposals == "computed"
    damaged = [r for r in caplog.records if "damaged" in r.getMessage()]
    assert len(damaged) == 3 and all("recomputing" in r.getMessage() for r in damaged)
    for path in victims:                        # written again, whole
        assert BuildCache(cache, 2**30).get(path.parent.name, path.name[:-6]) is not None


def test_entry_checks(tmp_path, caplog):
    store = BuildCache(tmp_path / "c", 2**30)
    key, other = digest("refine", 1), digest("refine", 2)
    store.put("refine", key, {"box": np.arange(4), "score": np.float64(0.5),
                              "fallback": np.bool_(False)})
    got = store.get("refine", key)
    assert got["box"].tolist() == [0, 1, 2, 3] and float(got["score"]) == 0.5
    # an entry under another key's name (copied, renamed) is never used
    shutil.copy(store.path("refine", key), store.path("refine", other))
    assert store.get("refine", other) is None and "another key" in caplog.text
    assert not store.path("refine", other).exists()
    # a content check that fails
    assert store.get("refine", key, lambda a: "wrong shape") is None
    assert store.record.damaged == 2
    # leftovers of a writer that died are cleaned when the cache is opened
    stale = store.path("refine", key).parent / ".tmp-999999999-abc"
    stale.write_bytes(b"half")
    BuildCache(tmp_path / "c", 2**30)
    assert not stale.exists()


def test_size_bound_evicts_least_recently_used(tmp_path):
    blob = {"embeddings": np.zeros((3, 2048), np.float32)}          # ~24 KiB an entry
    store = BuildCache(tmp_path / "c", 10 * 24 * 1024)
    keys = [digest("crops", i) for i in range(14)]
    for k in keys[:8]:
        store.put("crops", k, blob)
    assert store.get("crops", keys[0]) is not None                   # used again: recent
    for k in keys[8:]:
        store.put("crops", k, blob)
    assert store.size_bytes <= store.max_bytes and store.record.evicted > 0
    on_disk = {p.name[:-6] for p in (tmp_path / "c" / "crops").iterdir()}
    assert keys[0] in on_disk and keys[1] not in on_disk and keys[-1] in on_disk
    assert sum(p.stat().st_size for p in (tmp_path / "c" / "crops").iterdir()) == \
        store.size_bytes
    # the bound holds across restarts: a new store sees what is on disk
    assert BuildCache(tmp_path / "c", store.max_bytes).size_bytes == store.size_bytes


def test_size_bound_through_the_pipeline(scene):
    """An old 2 MiB entry goes when a build with cache.max_size_mb 1 stores its own."""
    root, held = scene
    restore_frames(root, held)
    old = BuildCache(root / "openmask3d" / CACHE_DIRNAME, 2**30)
    old.put("embed", digest("embed", "old"), {"features": np.zeros((1, 8, 256, 256), np.float32)})
    path = old.path("embed", digest("embed", "old"))
    os.utime(path, (1, 1))                                        # long unused
    cfg = PipelineConfig().updated({"frame_step": 1, "cache.max_size_mb": 1})
    rec = run_pipeline(root, cfg).meta.cache
    assert not path.exists() and rec.evicted >= 1
    assert 0 < rec.size_bytes <= 2**20 and rec.max_size_bytes == 2**20
    assert rec.refinements_computed > 0 and rec.proposals == "computed"


def test_cancel_keeps_the_current_map(scene):
    root, held = scene
    cfg = PipelineConfig().updated({"frame_step": 1})
    first = run_pipeline(root, cfg)
    restore_frames(root, held)
    calls = []

    def cancel():
        calls.append(1)
        return len(calls) > 4                 # after the proposals, during the features
    with pytest.raises(BuildCancelled):
        run_pipeline(root, cfg, cancel=cancel)
    assert map_versions.current(root / "openmask3d").name == first.meta.generation
    assert len(map_versions.generations(root / "openmask3d")) == 1
    assert InstanceMap.load(root).num_instances == first.num_instances


def test_meta_records_round_trip():
    meta = MapMeta.from_json({"cache": {"mode": "incremental", "refinements_reused": 3,
                                        "frames_loaded": ["0"]},
                              "changes": {"previous": "gen-000001",
                                          "moved": [{"id": 4, "index": 2, "previous_index": 1,
                                                     "displacement": [0.1, 0, 0]}]},
                              "next_stable_id": 9,
                              "instances": [{"views": [], "stable_id": 4}]})
    assert meta.cache.refinements_reused == 3 and meta.changes.moved[0]["id"] == 4
    assert meta.changes.summary() == "0 added, 0 removed, 1 moved, 0 unchanged"
    data = meta.to_json()
    assert MapMeta.from_json(json.loads(json.dumps(data))).to_json() == data
    assert "stable_id" not in MapMeta.from_json({"instances": [{}]}).to_json()["instances"][0]


open_clip = pytest.importorskip("open_clip")
segment_anything = pytest.importorskip("segment_anything")


def test_rebuild_with_random_sam_and_clip_is_the_map_from_scratch(
        tmp_path, clip_b32_checkpoint, sam_vit_b_checkpoint):
    """SAM vit_b + CLIP ViT-B-32 at random weights: 1 keyframe, then 2. The rebuild embeds only
    the new frame; the old frame's refinements whose prompts moved run on its cached
    embedding; the map equals a build from scratch."""
    root = make_scene(tmp_path / "scene", seed=4, num_frames=2, width=160, height=120)
    held = hide_frames(root, 1)
    config = {"frame_step": 1, "device": "cpu",
              "encoder": {"backend": "clip", "clip_model": "ViT-B-32",
                          "clip_checkpoint": str(clip_b32_checkpoint), "batch_size": 16},
              "segmenter": {"backend": "sam", "sam_model": "vit_b", "k_rounds": 3,
                            "sam_checkpoint": str(sam_vit_b_checkpoint)}}
    (tmp_path / "real.yaml").write_text(yaml.safe_dump(config))
    cfg = PipelineConfig().updated(config)
    models = build_models(cfg)
    sam = models.segmenter
    run_pipeline(root, cfg, models)
    old = SceneFolder(root).frame_ids
    restore_frames(root, held)
    calls = sam.encoder_calls
    rebuilt = run_pipeline(root, cfg, models)
    assert sam.encoder_calls == calls + 1                       # only the new keyframe
    rec = rebuilt.meta.cache
    new = sorted(set(SceneFolder(root).frame_ids) - set(old))
    assert rec.frames_embedded == new and set(rec.frames_loaded) <= set(old)
    assert rec.embeddings_computed == 1 and rec.proposals == "reused"
    if any(i.views and i.views[0] in old for i in rebuilt.meta.instances) and \
            rec.refinements_computed > len([v for i in rebuilt.meta.instances
                                            for v in i.views if v in new]):
        assert rec.frames_loaded == old                         # decoded on the cached one
    scratch = run_pipeline(root, cfg, models, cache="off", out_dir=tmp_path / "scratch")
    assert_same_map(rebuilt, scratch)
    # the CLI with the same config, nothing changed: all reused, the same map
    assert cli(["run", str(root), "--config", str(tmp_path / "real.yaml")]) == 0
    again = InstanceMap.load(root)
    assert again.meta.cache.embeddings_computed == 0
    assert again.meta.cache.refinements_computed == 0
    assert_same_map(again, scratch)


def test_cancel_reaches_into_the_torch_models():
    """A cancel lands between the blocks of a model's layer list (a SAM embedding is seconds
    on a CPU), only in the building thread, and the hooks go with the build."""
    import threading
    import types

    torch = pytest.importorskip("torch")
    from openmask3d_ros.core.pipeline import cancel_hooks
    net = torch.nn.Sequential(torch.nn.ModuleList([torch.nn.Linear(4, 4) for _ in range(3)]))
    ran = []

    def forward(x):
        for layer in net[0]:
            ran.append(1)
            x = layer(x)
        return x
    seg = types.SimpleNamespace(model=net)
    models = types.SimpleNamespace(segmenter=seg, proposals=None, image_encoder=None)
    asked = []

    def cancel():
        asked.append(1)
        return len(asked) >= 2
    with cancel_hooks(models, cancel):
        other = []
        t = threading.Thread(target=lambda: other.append(forward(torch.zeros(1, 4))))
        t.start()
        t.join()
        assert other and len(asked) == 0            # another thread is never interrupted
        with pytest.raises(BuildCancelled):
            forward(torch.zeros(1, 4))
        assert len(ran) == 3 + 2                     # the second block never ran
    asked.clear()
    forward(torch.zeros(1, 4))                       # hooks removed with the build
    assert not asked
