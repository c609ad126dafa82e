"""The fast SAM path gives the paper-faithful path's features (real vit_b + CLIP ViT-B-32 at random
weights, a small synthetic scene, seeded prompt sampling).

"Before" is the path without the speed work: segment-anything's public ``SamPredictor.predict``
called once per round at full resolution (as the official code does), the first round with the
highest score winning. "After" is ``SamSegmenter.predict_many`` (split decoder, only the winner
upscaled, rounds of all masks of a frame batched). Same views, prompts and crops must follow, so
the features agree to float rounding, whatever the batch size.
"""
import hashlib
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
open_clip = pytest.importorskip("open_clip")
segment_anything = pytest.importorskip("segment_anything")

from openmask3d_ros.core.config import PipelineConfig  # noqa: E402
from openmask3d_ros.core.dbscan_split import split_masks  # noqa: E402
from openmask3d_ros.core.encoders.clip import ClipEncoder  # noqa: E402
from openmask3d_ros.core.features import compute_features  # noqa: E402
from openmask3d_ros.core.proposals.geometric import GeometricProposals  # noqa: E402
from openmask3d_ros.core.scene import SceneFolder  # noqa: E402
from openmask3d_ros.core.segmenters.sam import SamSegmenter  # noqa: E402
from openmask3d_ros.core.synthetic import make_scene  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from _common import official_sam_predict  # noqa: E402


class RoundByRound:
    """The pre-speed-work path: SamPredictor.predict per round, full resolution."""

    def __init__(self, sam: SamSegmenter):
        self.sam = sam
        self.name = sam.name
        self.calls = 0

    def set_image(self, image):
        self.sam.set_image(image)

    def predict(self, prompt_sets):
        self.calls += len(prompt_sets)
        return official_sam_predict(self.sam.predictor, prompt_sets)


def remember_embeddings(sam: SamSegmenter) -> None:
    """Embed each distinct image once for the whole module (a vit_b embedding is ~10 s here)."""
    real, cache = sam.set_image, {}
    p = sam.predictor

    def set_image(image):
        key = hashlib.sha1(np.ascontiguousarray(image).tobytes()).hexdigest()
        if key not in cache:
            real(image)
            cache[key] = (p.features, p.input_size, p.original_size)
            return
        p.features, p.input_size, p.original_size = cache[key]
        p.is_image_set = True
        sam._image_shape = tuple(p.original_size)
    sam.set_image = set_image


@pytest.fixture(scope="module")
def setup(tmp_path_factory, clip_b32_checkpoint, sam_vit_b_checkpoint):
    root = tmp_path_factory.mktemp("paths")
    scene = SceneFolder(make_scene(root / "scene", seed=4, num_frames=20, width=160, height=120))
    points, colors = scene.cloud()
    cfg = PipelineConfig().updated({"segmenter.k_rounds": 4})     # 4 rounds: CPU time
    masks = split_masks(points, GeometricProposals(cfg.proposals).propose(points, colors).masks,
                        cfg.proposals.dbscan_eps, cfg.proposals.dbscan_min_points,
                        cfg.proposals.min_mask_points)[:, :4]
    sam = SamSegmenter("vit_b", str(sam_vit_b_checkpoint))
    remember_embeddings(sam)
    clip = ClipEncoder("ViT-B-32", str(clip_b32_checkpoint), batch_size=32)
    frames = scene.frame_ids[::10]
    before = compute_features(points, masks, scene, frames, RoundByRound(sam), clip, cfg)
    return points, masks, scene, frames, sam, clip, cfg, before


@pytest.mark.parametrize("prompt_batch", [1, 512])
def test_fast_path_gives_the_faithful_features(setup, prompt_batch):
    points, masks, scene, frames, sam, clip, cfg, (f_before, r_before) = setup
    assert masks.shape[1] >= 3 and r_before.crops_encoded > 0
    sam.prompt_batch = prompt_batch
    calls0 = sam.decoder_calls
    f_after, r_after = compute_features(points, masks, scene, frames, sam, clip, cfg)
    assert r_after.views == r_before.views
    assert r_after.fallbacks == r_before.fallbacks
    assert r_after.crops_encoded == r_before.crops_encoded
    np.testing.assert_allclose(f_after, f_before, atol=2e-4)
    valid = np.linalg.norm(f_before, axis=1) > 0
    cos = (f_after[valid] * f_before[valid]).sum(axis=1)
    assert cos.min() > 0.9999
    calls = sam.decoder_calls - calls0
    rounds = cfg.segmenter.k_rounds * sum(len(v) for v in r_after.views)
    if prompt_batch == 1:
        assert calls == rounds                        # CPU: one round a call
    else:
        assert calls <= 2 * len(r_after.frames_used)  # one call a frame (per prompt size K)
