"""Every configuration key is range-checked on load (or listed as free, with the reason): a bad
value is one error line naming the file, the key and what is allowed; never a traceback."""
import os
import subprocess
import sys

import pytest

from openmask3d_ros.core.config import PipelineConfig, load_config
from openmask3d_ros.core.config_check import RULES, UNCHECKED
from openmask3d_ros.core.errors import InputError

BAD = [  # (YAML, what the message must say)
    ("threads: -1\n", ["threads", ">= 0", "-1"]),
    ("seed: -5\n", ["seed", ">= 0"]),
    ("visibility: {share_fraction: 1.0}\n", ["visibility.share_fraction", "[0.0, 1.0)"]),
    ("visibility: {share_fraction: -0.1}\n", ["visibility.share_fraction", "[0.0, 1.0)"]),
    ("segmenter: {prompt_batch: -2}\n", ["segmenter.prompt_batch", ">= 0"]),
    ("segmenter: {early_stop_iou: 3.0}\n", ["segmenter.early_stop_iou", "[0.0, 1.5]"]),
    ("segmenter: {precision: int4}\n", ["segmenter.precision", "fp32, bf16, fp16", "int4"]),
    ("segmenter: {sam_model: vit_x}\n", ["segmenter.sam_model", "vit_h", "vit_b", "vit_t"]),
    ("segmenter: {quantize: maybe}\n", ["segmenter.quantize", "true/false"]),
    ("encoder: {preprocess: opencv}\n", ["encoder.preprocess", "tensor, pil", "opencv"]),
    ("encoder: {precision: fp8}\n", ["encoder.precision", "auto, fp32, bf16, fp16"]),
    ("encoder: {quantize: 1}\n", ["encoder.quantize", "true/false"]),
    ("query: {negatives: [object, ' ']}\n", ["query.negatives", "empty"]),
    ("structure: {cell_size: 0}\n", ["structure.cell_size", "> 0"]),
    ("structure: {plane_max_thickness: -1}\n", ["structure.plane_max_thickness", "> 0"]),
    # what the named device cannot run (model backends only)
    ("device: cpu\nsegmenter: {backend: sam, precision: fp16}\n",
     ["segmenter.precision", "CUDA", "bf16"]),
    ("device: cuda\nencoder: {backend: clip, quantize: true}\n", ["encoder.quantize", "CPU"]),
    ("device: cpu\nencoder: {backend: clip, precision: fp16}\n", ["encoder.precision", "CUDA"]),
]


@pytest.mark.parametrize("text,needles", BAD, ids=[t.splitlines()[-1] for t, _ in BAD])
def test_bad_value_is_named_with_what_is_allowed(tmp_path, text, needles):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(InputError) as err:
        load_config(path)
    for needle in ["bad.yaml", *needles]:
        assert needle in str(err.value), str(err.value)


@pytest.mark.parametrize("text", [
    "visibility: {share_fraction: 0.3}\n",
    "segmenter: {backend: sam, sam_model: vit_b, prompt_batch: 64, early_stop_iou: 0.9, "
    "precision: bf16, quantize: true}\ndevice: cpu\n",
    "encoder: {backend: clip, preprocess: pil, precision: fp16}\ndevice: cuda:0\n",
    "encoder: {backend: clip, precision: fp16, quantize: true}\ndevice: auto\n",   # checked later
    "segmenter: {precision: fp16}\ndevice: cpu\n",      # the hull stand-in has no precision
    "encoder: {backend: clip, precision: auto}\ndevice: cpu\n",   # fp32 on a CPU
    "encoder: {backend: clip, precision: fp32}\ndevice: cuda\n",  # fp32 on a GPU too
    "threads: 3\nseed: 7\n",
])
def test_good_values_load(tmp_path, text):
    path = tmp_path / "good.yaml"
    path.write_text(text)
    load_config(path)


def test_every_key_is_checked_or_listed_as_free():
    keys = set(PipelineConfig().flat())
    assert keys - set(RULES) - set(UNCHECKED) == set()
    assert set(UNCHECKED) <= keys and not set(RULES) & set(UNCHECKED)


@pytest.mark.parametrize("text,needles", [
    ("visibility: {share_fraction: 2}\n", ["visibility.share_fraction", "[0.0, 1.0)"]),
    ("segmenter: {precision: half}\n", ["segmenter.precision", "fp32, bf16, fp16"]),
    ("encoder: {preprocess: cv2}\n", ["encoder.preprocess", "tensor, pil"]),
])
def test_cli_run_exits_2_naming_the_key(tmp_path, text, needles):
    """As a user runs it: `openmask3d run <scene> --config bad.yaml`, a process of its own."""
    cfg = tmp_path / "bad.yaml"
    cfg.write_text(text)
    (tmp_path / "scene").mkdir()
    run = subprocess.run([sys.executable, "-m", "openmask3d_ros.cli", "run",
                          str(tmp_path / "scene"), "--config", str(cfg)], capture_output=True,
                         text=True, timeout=300, env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert run.returncode == 2, run.stdout + run.stderr
    assert "Traceback" not in run.stderr
    (line,) = [ln for ln in run.stderr.splitlines() if ": error: " in ln]
    for needle in ["bad.yaml", *needles]:
        assert needle in line, line


def test_node_pipeline_parameters_get_the_same_checks():
    """The node's `pipeline.*` parameters go through the same checks (it stays unconfigured)."""
    pytest.importorskip("rcl_interfaces")
    from openmask3d_ros.ros.settings import NodeSettings
    with pytest.raises(ValueError, match=r"visibility.share_fraction.*\[0.0, 1.0\)"):
        NodeSettings.from_values({"pipeline.visibility.share_fraction": 2.0})
    with pytest.raises(ValueError, match="segmenter.precision.*fp32, bf16, fp16"):
        NodeSettings.from_values({"pipeline.segmenter.precision": "int8"})
    ok = NodeSettings.from_values({"pipeline.segmenter.precision": "bf16"})
    assert ok.pipeline.segmenter.precision == "bf16"
