"""`fidelity: official` (the default) against an independent reimplementation of the official
feature stage (benchmarks/official_baseline.py: dense views x masks x H x W array, argsort of
pixel counts, np.random.shuffle rounds, mask2box_multi_level): same views, same prompt pixel
sets and prompts, same crop boxes, same features, on small synthetic scenes."""
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from openmask3d_ros.core.config import PipelineConfig
from openmask3d_ros.core.crops import crop_boxes
from openmask3d_ros.core.features import compute_features
from openmask3d_ros.core.fidelity import Fidelity
from openmask3d_ros.core.prompt_plan import plan_official_prompts
from openmask3d_ros.core.refine import mask_box
from openmask3d_ros.core.scene import SceneFolder
from openmask3d_ros.core.synthetic import make_scene
from openmask3d_ros.core.visibility import projection_intrinsics, visible_points

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from _common import RoundBoxSegmenter as BoxSegmenter, image_key  # noqa: E402
from official_baseline import official_features  # noqa: E402


class CropEncoder:
    """Records every crop and embeds it by its mean colour and size (deterministic)."""
    name = "crop-test"
    dim = 5

    def __init__(self):
        self.crops = []

    def encode_images(self, crops):
        out = []
        for c in crops:
            self.crops.append((c.shape, c.tobytes()))
            out.append([*c.reshape(-1, 3).mean(axis=0) / 255.0, c.shape[0] / 50, c.shape[1] / 50])
        out = np.asarray(out, np.float32)
        return out / np.linalg.norm(out, axis=1, keepdims=True)


@pytest.fixture(scope="module", params=[0, 3])
def scene_and_masks(request, tmp_path_factory):
    root = make_scene(tmp_path_factory.mktemp(f"off{request.param}") / "scene",
                      seed=request.param, num_frames=16, width=96, height=72)
    scene = SceneFolder(root)
    points, _ = scene.cloud()
    ids = np.load(root / "ground_truth" / "instance_ids.npy")
    masks = np.stack([ids == i for i in np.unique(ids) if i > 0], axis=1)
    return scene, points, masks, scene.frame_ids[::2]


def test_official_mode_equals_the_official_algorithm(scene_and_masks):
    scene, points, masks, frames = scene_and_masks
    cfg = PipelineConfig().updated({"seed": 5, "encoder.batch_size": 7,
                                    "segmenter.prompt_seeding": "stream"})
    assert cfg.fidelity == "official" and cfg.visibility.two_sided
    seg_o, enc_o = BoxSegmenter(), CropEncoder()
    feats_o, trace = official_features(points, masks, scene, frames, seg_o, enc_o, seed=5)
    seg, enc = BoxSegmenter(), CropEncoder()
    feats, report = compute_features(points, masks, scene, frames, seg, enc, cfg)

    # views: the official top-k rows without the views that cover no pixel (it skips those)
    official_views = [[frames[v] for v in row if trace.scores[v, m] > 0]
                      for m, row in enumerate(trace.topk)]
    assert report.views == official_views
    assert sum(len(v) for v in official_views) >= masks.shape[1] * 2   # a real test

    # prompt pixel sets and the prompts of every round
    views = np.array([[frames.index(f) for f in row] + [-1] * (5 - len(row))
                      for row in report.views])

    def seen_of(j):
        from openmask3d_ros.core.visibility import visible_points
        return visible_points(points, scene.pose(frames[j]), scene.depth(frames[j]),
                              projection_intrinsics(scene, "official"),
                              depth_scale=scene.depth_scale)
    plan = plan_official_prompts(points, masks, views, seen_of, lambda j: scene.pose(frames[j]),
                                 projection_intrinsics(scene, "official"),
                                 scene.color_intrinsics(), 10, 5, 5, per_view=False,
                                 keep_pixels=True)
    assert plan.pixels.keys() == trace.pixels.keys()
    for key in trace.pixels:
        assert np.array_equal(plan.pixels[key], trace.pixels[key]), key
        assert np.array_equal(plan.prompts[key], trace.prompts[key]), key
    # ... and the feature stage really sent those prompts to the segmenter, in batches
    assert Counter(seg.calls) == Counter(seg_o.calls)
    assert seg_o.calls and len(seg.calls) == len(seg_o.calls)

    # crop boxes: same crops cut (exclusive official boxes == our inclusive ones + 1)
    W, H = scene.color_intrinsics().width, scene.color_intrinsics().height
    for key, boxes in trace.boxes.items():
        seg_k = BoxSegmenter()
        seg_k.set_image(np.zeros((H, W, 3), np.uint8))
        best, _ = seg_k.predict(plan.prompts[key])
        ours = crop_boxes(mask_box(best), W, H, 3, 0.1)
        assert [(x1, y1, x2 + 1, y2 + 1) for x1, y1, x2, y2 in ours] == boxes, key
    assert Counter(enc.crops) == Counter(enc_o.crops)
    np.testing.assert_allclose(feats, feats_o / np.linalg.norm(feats_o, axis=1, keepdims=True)
                               .clip(1e-12), atol=1e-5)
    assert report.segmenter_images < trace.set_image_calls       # one embedding per frame


def paper_crop_boxes(box, W, H, levels=3, k_exp=0.1):
    """The paper's crop rule written out: level l grows each side by int((x2 - x1) * k_exp * l),
    inclusive edges clipped to the image."""
    x1, y1, x2, y2 = box
    grow = [(int((x2 - x1) * k_exp * lv), int((y2 - y1) * k_exp * lv)) for lv in range(levels)]
    return [(max(0, x1 - dx), max(0, y1 - dy), min(W - 1, x2 + dx), min(H - 1, y2 + dy))
            for dx, dy in grow]


def test_paper_mode_is_a_different_algorithm(scene_and_masks):
    """``paper`` does what the paper's text says (views ranked by visible points, crops grown by
    int((x2 - x1) * 0.1 * l)), and that is not the official algorithm: other view scores, other
    crops, other features."""
    scene, points, masks, frames = scene_and_masks
    cfg = PipelineConfig().updated({"fidelity": "paper", "visibility.two_sided": False})
    assert cfg.fidelity is Fidelity.PAPER
    feats_o, trace = official_features(points, masks, scene, frames, BoxSegmenter(),
                                       CropEncoder())
    seg, enc = BoxSegmenter(), CropEncoder()
    feats, report = compute_features(points, masks, scene, frames, seg, enc, cfg)

    # views: each mask's top 5 frames by visible *points* (rounded pixels, one-sided occlusion
    # at the depth intrinsics), ties to the earlier frame, frames that see none left out
    counts = np.stack([masks.T.astype(np.int64) @ visible_points(
        points, scene.pose(f), scene.depth(f), scene.depth_intrinsics(), 0.2,
        fidelity="paper", two_sided=False) for f in frames])                     # (F, M)
    expected = [[frames[j] for j in sorted(range(len(frames)), key=lambda j: (-counts[j, m], j))[:5]
                 if counts[j, m] > 0] for m in range(masks.shape[1])]
    assert report.views == expected
    assert sum(len(v) for v in expected) >= masks.shape[1] * 2             # a real test
    assert not np.array_equal(counts, trace.scores)      # the official score: distinct pixels

    # crops: every refined box of every (mask, view), grown by the paper's rule, in order
    W, H = scene.color_intrinsics().width, scene.color_intrinsics().height
    images = {image_key(scene.color(f)): scene.color(f) for f in frames}
    boxes = [(images[image], box) for (image, _), box in seg.log.items()]
    assert len(boxes) == sum(len(v) for v in report.views)
    assert enc.crops == [(c.shape, c.tobytes()) for image, box in boxes
                         for x1, y1, x2, y2 in paper_crop_boxes(box, W, H)
                         for c in [image[y1:y2 + 1, x1:x2 + 1]]]
    assert any(paper_crop_boxes(box, W, H) != crop_boxes(box, W, H, 3, 0.1, "official")
               for _, box in boxes)

    # ... so the features are not the official ones
    official = feats_o / np.linalg.norm(feats_o, axis=1, keepdims=True).clip(1e-12)
    assert not np.allclose(feats, official, atol=1e-3)
