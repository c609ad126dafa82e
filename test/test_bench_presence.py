"""The presence benchmark runs (tiny scene, colour stand-in); without CLIP weights it skips."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("pybullet")

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_presence.py"


def test_presence_benchmark_on_a_tiny_scene(tmp_path):
    out = tmp_path / "presence.json"
    run = subprocess.run([sys.executable, str(SCRIPT), "--scenes", "1", "--frames", "20",
                          "--width", "160", "--height", "120", "--work", str(tmp_path / "w"),
                          "--json", str(out)], capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-2000:]
    assert "precision" in run.stdout and "| min_relevance |" in run.stdout
    res = json.loads(out.read_text())
    s = res["scores"]
    assert res["encoder"] == "colour-standin" and s["absent"] >= 5 and s["present"] >= 4
    assert s["precision"] == 1.0 and s["recall"] >= 0.75
    assert res["strongest_absent"] < res["threshold"] <= res["weakest_present"]


def test_clip_without_weights_is_a_clear_skip():
    run = subprocess.run([sys.executable, str(SCRIPT), "--encoder", "clip"],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0 and run.stdout.startswith("SKIP: no CLIP weights configured")
