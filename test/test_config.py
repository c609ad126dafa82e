"""Configuration: paper defaults, YAML loading (ROS parameter files too), clear errors."""
import pytest

from openmask3d_ros.core.config import PipelineConfig, load_config
from openmask3d_ros.core.errors import InputError


def test_paper_defaults():
    c = PipelineConfig()
    assert (c.frame_step, c.visibility.k_threshold, c.visibility.k_view) == (10, 0.2, 5)
    assert (c.segmenter.k_rounds, c.segmenter.k_sample) == (10, 5)
    assert (c.crops.levels, c.crops.k_exp, c.proposals.dbscan_eps) == (3, 0.1, 0.95)
    assert c.encoder.prompt_template == "a {} in a scene"


def test_ros_parameter_file_and_dotted_overrides(tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text("openmask3d:\n  ros__parameters:\n    map_frame: map\n    pipeline:\n"
                    "      frame_step: 5\n      visibility:\n        k_view: 3\n")
    c = load_config(path, {"crops.levels": 2})
    assert (c.frame_step, c.visibility.k_view, c.crops.levels) == (5, 3, 2)
    assert PipelineConfig().visibility.k_view == 5       # defaults untouched


def test_unknown_key_is_named(tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text("visibility:\n  k_veiw: 3\n")
    with pytest.raises(InputError, match="p.yaml.*visibility.k_veiw"):
        load_config(path)


def test_wrong_type_is_named():
    with pytest.raises(ValueError, match="crops.k_exp.*float"):
        PipelineConfig().updated({"crops": {"k_exp": "big"}})


def test_missing_file():
    with pytest.raises(FileNotFoundError, match="nope.yaml"):
        load_config("nope.yaml")


def test_flat_round_trip():
    c = PipelineConfig().updated({"seed": 3})
    assert PipelineConfig().updated(c.flat()) == c
