"""A one-shot build frees each model once its stage is done (issue 22 item 1): the segmenter's
pass runs over every frame before the first crop is encoded, the segmenter is released between
the two passes, and models handed in by a caller (the node, ``openmask3d batch``) are kept."""
import numpy as np
import pytest

from openmask3d_ros.core import pipeline
from openmask3d_ros.core.config import PipelineConfig
from openmask3d_ros.core.instance_map import InstanceMap
from openmask3d_ros.core.low_memory import resident_mib
from openmask3d_ros.core.models import build_models
from openmask3d_ros.core.synthetic import make_scene


class Recording:
    """Wraps a model, logging its calls into a shared list; ``release`` is recorded and any
    later use fails, as a released real model's does."""

    def __init__(self, inner, tag: str, log: list[str]):
        self.inner, self.tag, self.log = inner, tag, log
        self.released = False

    def __getattr__(self, name):
        attr = getattr(self.inner, name)
        if not callable(attr) or name == "cache_identity":
            return attr

        def call(*args, **kwargs):
            assert not self.released, f"{self.tag}.{name} used after release()"
            self.log.append(f"{self.tag}.{name}")
            return attr(*args, **kwargs)
        return call

    def release(self):
        self.released = True
        self.log.append(f"{self.tag}.release")


@pytest.fixture()
def recorded_models(monkeypatch):
    log: list[str] = []

    def build(cfg):
        models = build_models(cfg)
        models.segmenter = Recording(models.segmenter, "segmenter", log)
        models.image_encoder = Recording(models.image_encoder, "encoder", log)
        return models
    monkeypatch.setattr(pipeline, "build_models", build)
    return build, log


def test_a_one_shot_build_frees_the_segmenter_before_the_crops(tmp_path, recorded_models):
    build, log = recorded_models
    scene = make_scene(tmp_path / "scene", seed=5, num_frames=40, width=160, height=120)
    cfg = PipelineConfig().updated({"frame_step": 5})
    own = pipeline.run_pipeline(scene, cfg, out_dir=tmp_path / "own", cache="off")
    calls = [c for c in log if c.split(".")[1] in ("set_image", "release", "encode_images")]
    assert calls.count("segmenter.release") == 1
    cut = calls.index("segmenter.release")
    assert calls[:cut] and set(calls[:cut]) == {"segmenter.set_image"}
    assert calls[cut + 1:] and set(calls[cut + 1:]) == {"encoder.encode_images"}

    log.clear()                                  # models handed in are the caller's: kept
    models = build(cfg)
    kept = pipeline.run_pipeline(scene, cfg, models, out_dir=tmp_path / "kept", cache="off")
    assert "segmenter.release" not in log and not models.segmenter.released
    assert np.array_equal(own.features, kept.features)
    assert own.features.shape[0] >= 3
    assert np.array_equal(InstanceMap.load(tmp_path / "own").features, own.features)


def test_released_sam_gives_its_memory_back_and_refuses_work(sam_vit_b_checkpoint):
    from openmask3d_ros.core.segmenters.sam import SamSegmenter
    sam = SamSegmenter("vit_b", str(sam_vit_b_checkpoint))
    sam.set_image(np.zeros((48, 64, 3), np.uint8))        # every encoder weight is read
    weights_mib = sum(p.numel() * p.element_size() for p in sam.model.parameters()) / 2**20
    before = resident_mib()
    sam.release()
    assert before - resident_mib() > 0.8 * weights_mib     # vit_b: ~358 MiB
    with pytest.raises(RuntimeError, match="release"):
        sam.set_image(np.zeros((48, 64, 3), np.uint8))
    with pytest.raises(RuntimeError, match="release"):
        sam.predict(np.zeros((1, 1, 2), np.float32))
