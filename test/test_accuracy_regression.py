"""Accuracy regression: the full default pipeline on seeded synthetic scenes, scored with the
benchmark metric.

Default configuration: geometric proposals, projected-point hull STAND-IN segmenter, colour
STAND-IN encoders (so the open-vocabulary vocabulary is colour words; each object's GT class is its
``color`` attribute, and table/floor are left out of that vocabulary, which makes them void).

Measured (3 scenes, seeds 0-2, 60 frames 320x240, frame_step 10; 2-core CPU, this commit; the same
values held on seeds 3-5):

=================  ==========  ===========  ============================================
                   AP          AP50         notes
=================  ==========  ===========  ============================================
class-agnostic     0.624       0.803        per scene AP50 0.792-0.808, AP 0.601-0.635
open-vocab colour  0.873       1.000        per scene AP50 1.000, AP 0.867-0.889
=================  ==========  ===========  ============================================

Class-agnostic AP50 is below 1 because the geometric backend returns the four table legs as
extra masks (false positives with the same score 1.0 as the true ones: AP50 = (1 + 8/13) / 2);
the table top matches at IoU ~0.6, which is what pulls AP (0.50:0.90) down. Thresholds keep a
margin of ~0.1 below the lowest measured value.
"""
import numpy as np
import pytest

pytest.importorskip("pybullet")

from openmask3d_ros.core.config import PipelineConfig  # noqa: E402
from openmask3d_ros.core.evaluation.runner import evaluate_scenes, load_eval_scene  # noqa: E402

SEEDS = (0, 1, 2)
NUM_FRAMES, WIDTH, HEIGHT = 60, 320, 240
COLOURS = ["red", "green", "blue", "yellow", "white", "black"]

# Thresholds (measured value in the comment).
AGNOSTIC_AP50_MIN = 0.70        # 0.803 (per scene >= 0.792)
AGNOSTIC_AP_MIN = 0.50          # 0.624 (per scene >= 0.601)
OPEN_VOCAB_AP50_MIN = 0.90      # 1.000 (per scene 1.000)
OPEN_VOCAB_AP_MIN = 0.75        # 0.873 (per scene >= 0.867)


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    """Synthetic scenes with maps built by the default pipeline: (by label, by colour) per seed."""
    from openmask3d_ros.core.pipeline import run_pipeline
    from openmask3d_ros.core.synthetic import make_scene

    root = tmp_path_factory.mktemp("regression")
    out = []
    for seed in SEEDS:
        path = make_scene(root / f"seed{seed}", seed=seed, num_frames=NUM_FRAMES, width=WIDTH,
                          height=HEIGHT)
        cfg = PipelineConfig()
        assert (cfg.proposals.backend, cfg.segmenter.backend, cfg.encoder.backend) == (
            "geometric", "hull", "colour"), "the regression thresholds are for the default config"
        run_pipeline(path, cfg)
        out.append((load_eval_scene(path, "label"), load_eval_scene(path, "color")))
    return out


def test_class_agnostic_ap(scenes):
    by_label = [s for s, _ in scenes]
    r = evaluate_scenes(by_label, ["agnostic"]).results["agnostic"]
    assert r.ap50 >= AGNOSTIC_AP50_MIN, r.to_dict()
    assert r.ap >= AGNOSTIC_AP_MIN, r.to_dict()
    assert r.ap25 >= r.ap50 >= r.ap
    for s in by_label:
        one = evaluate_scenes([s], ["agnostic"]).results["agnostic"]
        assert one.ap50 >= AGNOSTIC_AP50_MIN, (s.name, one.to_dict())


def test_open_vocabulary_ap_with_colour_standin(scenes):
    by_colour = [c for _, c in scenes]
    rep = evaluate_scenes(by_colour, ["open-vocab"], classes=COLOURS)
    r = rep.results["open-vocab"]
    assert r.ap50 >= OPEN_VOCAB_AP50_MIN, r.to_dict()
    assert r.ap >= OPEN_VOCAB_AP_MIN, r.to_dict()
    for s in by_colour:
        one = evaluate_scenes([s], ["open-vocab"], classes=COLOURS).results["open-vocab"]
        assert one.ap50 >= OPEN_VOCAB_AP50_MIN, (s.name, one.to_dict())


def test_open_vocabulary_metric_is_not_vacuous(scenes):
    """Features shuffled between instances must score clearly worse: the threshold above measures
    the features, not only the masks."""
    from dataclasses import replace

    rng = np.random.default_rng(0)
    shuffled = []
    for _, c in scenes:
        feats = c.instances.features[rng.permutation(c.instances.num_instances)]
        shuffled.append(replace(c, instances=replace(c.instances, features=feats)))
    r = evaluate_scenes(shuffled, ["open-vocab"], classes=COLOURS).results["open-vocab"]
    assert r.ap50 < OPEN_VOCAB_AP50_MIN - 0.2, r.to_dict()
