"""Every Python example in README.md and docs/ros.md that uses the node's client runs exactly as
written against a live node (started as users start it, on a recorded scene folder)."""
import json
import re
import subprocess
import sys

import pytest

from nodeproc import ROOT, stop_node  # test/ros/nodeproc.py
from test_ros_node_services import start_node  # same folder


def snippets() -> list[tuple[str, str]]:
    out = []
    for doc in ("README.md", "docs/ros.md"):
        text = (ROOT / doc).read_text()
        for i, block in enumerate(re.findall(r"```python\n(.*?)```", text, re.S)):
            if "OpenMask3DClient(" in block:
                out.append((f"{doc}#{i}", block))
    return out


@pytest.mark.parametrize("name,code", snippets(), ids=[n for n, _ in snippets()])
def test_documented_client_example_runs(tmp_path, name, code):
    from openmask3d_ros.core.synthetic import make_scene
    scene = make_scene(tmp_path / "scene", seed=4, num_frames=3, width=160, height=120)
    meta = json.loads((scene / "scene.json").read_text())
    (scene / "scene.json").write_text(json.dumps(dict(meta, keyframe_step=10)))
    proc = start_node(tmp_path / "node.log", f"scene_dir:={scene}", "pose_source:=pose")
    try:
        # the examples follow a mapping session: declare the map complete once first
        pre = ("import rclpy\nfrom openmask3d_ros.ros.client import OpenMask3DClient\n"
               "rclpy.init()\nc = OpenMask3DClient(rclpy.create_node('prep'))\n"
               "assert c.wait_for_node(60)\nok, msg = c.map_complete()\nassert ok, msg\n"
               "assert c.wait_until_ready(120)\nrclpy.shutdown()\n")
        prep = subprocess.run([sys.executable, "-c", pre], cwd=tmp_path, capture_output=True,
                              text=True, timeout=180)
        assert prep.returncode == 0, prep.stderr + (tmp_path / "node.log").read_text()[-3000:]
        run = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True,
                             text=True, timeout=180)
        # Exit status only: with the weight-free stand-in encoder a query may rightly find
        # nothing relevant, so the printed hits depend on the scene.
        assert run.returncode == 0, f"{name}:\n{code}\n{run.stdout}{run.stderr}"
    finally:
        stop_node(proc)
