"""The library's public surface: `openmask3d_ros.core` names, and README's example run as written."""
import contextlib
import io
import re
import subprocess
import sys
from pathlib import Path

import numpy as np

import openmask3d_ros.core as core

ROOT = Path(__file__).resolve().parents[1]


def test_public_names_resolve_to_their_modules():
    from openmask3d_ros.core.config import PipelineConfig
    from openmask3d_ros.core.pipeline import run_pipeline
    from openmask3d_ros.core.query import open_map
    assert core.PipelineConfig is PipelineConfig and core.run_pipeline is run_pipeline
    assert core.open_map is open_map and callable(core.build_models)
    assert set(core.__all__) <= set(dir(core))
    try:
        core.not_a_name  # noqa: B018
    except AttributeError as exc:
        assert "not_a_name" in str(exc)
    else:
        raise AssertionError("an unknown name must raise AttributeError")


def test_importing_the_config_does_not_load_the_pipeline():
    code = ("import sys, openmask3d_ros.core.config, openmask3d_ros.core as c; "
            "assert 'sklearn' not in sys.modules and 'openmask3d_ros.core.pipeline' "
            "not in sys.modules; print(len(c.__all__))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr


def library_example() -> str:
    text = (ROOT / "README.md").read_text()
    section = text.split("## Use as a Python library", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```python\n(.*?)```", section, re.S)
    assert blocks, "README's library section has no python example"
    return blocks[0]


def test_readme_library_example_finds_the_red_object(tmp_path, monkeypatch):
    """The example runs as written (in a fresh folder) and its answer is the red object."""
    code = library_example()
    monkeypatch.chdir(tmp_path)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(code, "README.md", "exec"), {})
    instance_id = int(out.getvalue().split()[0])
    scene = core.SceneFolder(next(p for p in tmp_path.iterdir() if p.is_dir()))
    gt = scene.ground_truth()
    red = next(g for g, info in gt.labels.items() if info.get("color") == "red")
    imap = core.InstanceMap.load(scene.root)
    got = set(imap.point_indices[instance_id].tolist())
    truth = set(np.flatnonzero(gt.instance_ids == red).tolist())
    assert len(got & truth) / len(got | truth) >= 0.5
