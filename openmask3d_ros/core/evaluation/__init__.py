"""Evaluation: ScanNet-benchmark 3D instance AP, open-vocabulary class assignment, ground truth."""
from .ap import (MIN_REGION_SIZE, OVERLAPS, APResult, SceneMatches, evaluate, evaluate_matches,
                 format_table, match_scene)
from .assign import Assignment, assign_classes, embed_classes, map_template
from .ground_truth import (load_ground_truth, load_scannet_ground_truth, read_class_list,
                           read_label_map, read_splits)
from .runner import (AGNOSTIC_CLASS, MODES, EvalReport, EvalScene,
                     evaluate_scenes, find_scenes, load_eval_scene)

__all__ = [
    "MIN_REGION_SIZE", "OVERLAPS", "APResult", "SceneMatches", "evaluate", "evaluate_matches",
    "format_table", "match_scene", "Assignment", "assign_classes", "embed_classes",
    "map_template", "load_ground_truth", "load_scannet_ground_truth", "read_class_list",
    "read_label_map", "read_splits", "AGNOSTIC_CLASS", "MODES", "EvalReport", "EvalScene",
    "evaluate_scenes", "find_scenes", "load_eval_scene",
]
