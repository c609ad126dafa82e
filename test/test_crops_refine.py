"""Multi-scale crops and the best-of-rounds 2D refinement with its fallback."""
import numpy as np

from openmask3d_ros.core.crops import crop_boxes, cut
from openmask3d_ros.core.refine import mask_box, official_prompts, refine, sample_prompts
from openmask3d_ros.core.segmenters.hull import HullSegmenter


def test_crop_levels_expand_by_ratio():
    boxes = crop_boxes((40, 30, 60, 50), width=200, height=100, levels=3, k_exp=0.1)
    assert boxes == [(40, 30, 60, 50), (38, 28, 62, 52), (36, 26, 64, 54)]


def test_official_and_paper_expansion_of_a_100_px_box():
    # official: int(width * 0.1) * level with width = x2 + 1 - x1 = 100 -> 0/10/20 px a side;
    # paper mode: int((x2 - x1) * 0.1 * level) = 0/9/19
    box = (100, 100, 199, 199)
    off = crop_boxes(box, 640, 480, 3, 0.1, fidelity="official")
    pap = crop_boxes(box, 640, 480, 3, 0.1, fidelity="paper")
    assert [b[0] for b in off] == [100, 90, 80] and [b[2] for b in off] == [199, 209, 219]
    assert [b[0] for b in pap] == [100, 91, 81] and [b[2] for b in pap] == [199, 208, 218]
    # the official right edge is exclusive and clipped to W: inclusive W - 1 here
    assert crop_boxes((600, 0, 639, 10), 640, 480, 3, 0.1)[2][2] == 639


def test_official_prompts_replay_the_official_global_shuffle():
    # the official run_sam: swap (row, col) -> (x, y), then np.random.shuffle the same array
    # every round and take its first 5 rows
    rows_cols = np.argwhere(np.random.default_rng(1).random((30, 40)) > 0.9)   # np.where order
    np.random.seed(7)
    coords = rows_cols[:, ::-1].copy()
    expected = []
    for _ in range(10):
        np.random.shuffle(coords)
        expected.append(coords[:5].copy())
    got = official_prompts(rows_cols[:, ::-1], 10, 5, np.random.RandomState(7))
    assert np.array_equal(got, np.stack(expected))
    few = official_prompts(rows_cols[:3, ::-1], 10, 5, np.random.RandomState(0))
    assert few.shape == (10, 3, 2)


def test_crops_are_clipped_at_image_border():
    boxes = crop_boxes((0, 5, 99, 60), width=100, height=64, levels=3, k_exp=0.1)
    for x1, y1, x2, y2 in boxes:
        assert 0 <= x1 <= x2 <= 99 and 0 <= y1 <= y2 <= 63
    assert boxes[2] == (0, 0, 99, 63)
    img = np.zeros((64, 100, 3), np.uint8)
    assert cut(img, boxes[2]).shape == (64, 100, 3)


def test_sampling_is_seeded_and_uses_distinct_points():
    uv = np.arange(40, dtype=float).reshape(20, 2)
    a = sample_prompts(uv, 10, 5, np.random.default_rng(3))
    b = sample_prompts(uv, 10, 5, np.random.default_rng(3))
    assert a.shape == (10, 5, 2) and np.array_equal(a, b)
    assert all(len({tuple(p) for p in r}) == 5 for r in a)
    assert sample_prompts(uv[:3], 10, 5, np.random.default_rng(0)).shape == (10, 3, 2)


class ZeroScoreSegmenter:
    """Every round scores 0: the official implementation crashes here."""
    name = "zero"

    def set_image(self, image):
        self.shape = image.shape[:2]

    def predict(self, prompt_sets):
        return np.zeros(self.shape, bool), np.zeros(len(prompt_sets), np.float32)


def test_poor_scores_fall_back_to_projected_point_box():
    seg = ZeroScoreSegmenter()
    seg.set_image(np.zeros((50, 80, 3), np.uint8))
    uv = np.array([[10.2, 5.0], [30.0, 20.7], [15.0, 12.0]])
    r = refine(seg, uv, 80, 50, 10, 5, np.random.default_rng(0))
    assert r.fallback and r.box == (10, 5, 30, 21)


def test_hull_segmenter_box_covers_prompts():
    seg = HullSegmenter(dilate_px=0)
    seg.set_image(np.zeros((50, 80, 3), np.uint8))
    uv = np.array([[10, 10], [40, 10], [40, 30], [10, 30], [25, 20]], float)
    r = refine(seg, uv, 80, 50, 10, 5, np.random.default_rng(0))
    assert not r.fallback and r.box == (10, 10, 40, 30)
    assert mask_box(np.zeros((4, 4), bool)) is None
