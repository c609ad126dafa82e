"""Start-up cost and CPU threads, checked from outside as a user runs the command.

Not timed (a shared CI machine makes timings flaky): the tests check which heavy libraries a
process imports, through ``python -X importtime``, which lists every module a process loads.
"""
import json
import os
import subprocess
import sys

import pytest

from openmask3d_ros.core.pipeline import run_pipeline
from openmask3d_ros.core.synthetic import make_scene
from openmask3d_ros.core.threads import ENV_VAR, available_cores, resolve_threads

HEAVY = ("torch", "sklearn", "open_clip", "segment_anything", "scipy")


def imported_modules(*args: str, env: dict | None = None) -> tuple[set[str], str]:
    """Top-level modules a ``python -m openmask3d_ros.cli ARGS`` process imports, and stdout."""
    proc = subprocess.run([sys.executable, "-X", "importtime", "-m", "openmask3d_ros.cli", *args],
                          capture_output=True, text=True, timeout=120,
                          env={**os.environ, **(env or {})})
    assert proc.returncode == 0, proc.stderr[-2000:]
    names = {line.rsplit("|", 1)[1].strip().split(".")[0]
             for line in proc.stderr.splitlines() if line.startswith("import time:")}
    return names, proc.stdout


@pytest.fixture(scope="module")
def standin_map(tmp_path_factory):
    root = make_scene(tmp_path_factory.mktemp("scene"), seed=0, num_frames=20, width=160,
                      height=120)
    run_pipeline(root)
    return root


def test_help_imports_no_heavy_library():
    names, out = imported_modules("--help")
    assert "query" in out and "run" in out
    assert "openmask3d_ros" in names            # the check sees our own modules...
    assert not names & set(HEAVY), names & set(HEAVY)
    assert "numpy" not in names


def test_query_on_standin_map_imports_no_torch_or_sklearn(standin_map):
    names, out = imported_modules("query", str(standin_map), "red", "--json")
    result = json.loads(out.splitlines()[-1])
    assert result["query"] == "red" and result["instances"]
    assert "numpy" in names                      # ...and the libraries it does load
    assert not names & set(HEAVY), names & set(HEAVY)


def test_thread_count_resolution(monkeypatch):
    monkeypatch.delenv(ENV_VAR, raising=False)
    assert resolve_threads(3) == 3
    assert resolve_threads(0) == max(1, available_cores() - 1)
    monkeypatch.setenv(ENV_VAR, "2")
    assert resolve_threads(5) == 2                # the environment wins over the config
    monkeypatch.setenv(ENV_VAR, "many")
    with pytest.raises(ValueError, match=ENV_VAR):
        resolve_threads(0)
    monkeypatch.setenv(ENV_VAR, "0")
    with pytest.raises(ValueError, match=ENV_VAR):
        resolve_threads(0)
    monkeypatch.delenv(ENV_VAR)
    with pytest.raises(ValueError, match="threads"):
        resolve_threads(-1)


def test_configured_threads_reach_blas_openmp_and_torch():
    """A config's ``threads`` sets numpy's BLAS, OpenMP and torch pools in a fresh process."""
    code = """
import json, numpy, torch
from threadpoolctl import threadpool_info
from openmask3d_ros.core.config import load_config
from openmask3d_ros.core.models import build_models
build_models(load_config(None, {"threads": 1, "device": "cpu"}))
print(json.dumps({"torch": torch.get_num_threads(),
                  "pools": sorted({p["num_threads"] for p in threadpool_info()})}))
"""
    env = {k: v for k, v in os.environ.items() if k not in (ENV_VAR, "OMP_NUM_THREADS")}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    got = json.loads(proc.stdout.splitlines()[-1])
    assert got["torch"] == 1
    assert got["pools"] == [1]
