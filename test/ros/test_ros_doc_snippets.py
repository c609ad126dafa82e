"""Every Python example in README.md and docs/ros.md that uses the node's client runs exactly as
written against a live node (started as users start it, on a recorded scene folder) and prints
what it documents: the node's answer to its query, one line per instance, and "not here: ..."
with the node's message where the example prints that."""
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
        assert run.returncode == 0, f"{name}:\n{code}\n{run.stdout}{run.stderr}"
        answer = reference_answer(tmp_path, code)
    finally:
        stop_node(proc)
    check_printed_answer(run.stdout, answer, code)


REFERENCE = """
import json, rclpy
from openmask3d_ros.ros.client import OpenMask3DClient
rclpy.init()
c = OpenMask3DClient(rclpy.create_node('reference'))
assert c.wait_until_ready(120)
r = c.ask({text!r}, top_k={top_k})
print(json.dumps({{"found": r.found, "message": r.message,
                  "instances": [[i.id, len(i.points)] for i in r.instances]}}))
rclpy.shutdown()
"""


def reference_answer(tmp_path, code: str) -> dict:
    """The node's answer to the example's query, asked by a client of the test's own."""
    text, top_k = re.search(r'\.ask\("([^"]*)", top_k=(\d+)\)', code).groups()
    ref = subprocess.run([sys.executable, "-c", REFERENCE.format(text=text, top_k=int(top_k))],
                         cwd=tmp_path, capture_output=True, text=True, timeout=180)
    assert ref.returncode == 0, ref.stderr
    return json.loads(ref.stdout.strip().splitlines()[-1])


def check_printed_answer(stdout: str, answer: dict, code: str) -> None:
    """One printed line per instance of the answer, in order, naming its id and its number of
    points; "not here: <message>" exactly when nothing was found (examples that print it)."""
    lines = stdout.splitlines()
    not_here = [line for line in lines if line.startswith("not here:")]
    hits = [line for line in lines if not line.startswith("not here:")]
    assert len(hits) == len(answer["instances"]), (stdout, answer)
    for line, (iid, n_points) in zip(hits, answer["instances"]):
        assert re.match(rf"(id )?{iid}\b", line), (line, iid)
        assert re.search(rf"\({n_points}[, ]", line), (line, n_points)
    if "not here:" in code:
        assert not_here == ([] if answer["found"] else [f"not here: {answer['message']}"])
