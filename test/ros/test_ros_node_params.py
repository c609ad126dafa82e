"""Parameters a user gets wrong, and the lifecycle end, seen from outside (issue 21, W8-W12):
`openmask3d node` started as a user starts it refuses an unusable parameter at start-up with
exit status 2 and one line naming it; set_parameters from another node names an undeclared
parameter and checks frame ids as names; the lifecycle shutdown transition ends the process."""
import subprocess
import sys
import time

import pytest
from lifecycle_msgs.msg import Transition

from openmask3d_ros.ros.client import OpenMask3DClient

from nodeproc import ROOT, node_env, params, stop_node  # test/ros/nodeproc.py
from test_ros_node_services import Client, start_node  # same folder


def _start_and_fail(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "openmask3d_ros.cli", "node", "--params",
                           "config/openmask3d.yaml", *args], cwd=ROOT, env=node_env(),
                          capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("args,words", [
    # W8: rcl drops a -p value of another type than the file's, silently (the node ran with 5)
    (params("default_top_k:=abc"), ("default_top_k", "integer", "'abc'")),
    (params("pipeline.frame_step:=abc"), ("frame_step", "int")),
    # an integer for a floating-point parameter: rclpy's exception before
    (params("tf_tolerance:=1"), ("tf_tolerance", "1.0", "0.0 to 10.0")),
    # W9: out of range (an "internal error: InvalidParameterValueException", exit 1, before)
    (params("tf_tolerance:=-5.0"), ("tf_tolerance", "[0.0, 10.0]", "-5.0")),
    # W11: names as ROS checks them
    (params("map_frame:=a b/\x01"), ("map_frame", "frame id")),
    (params("color_topic:=/camera/my image"), ("color_topic", "topic name")),
], ids=["int-as-text", "pipeline-int-as-text", "int-for-float", "out-of-range", "frame-id",
        "topic-name"])
def test_unusable_parameter_is_refused_at_start_up(args, words, tmp_path):
    run = _start_and_fail("--scene-dir", str(tmp_path / "rec"), *args)
    errors = [line for line in (run.stdout + run.stderr).splitlines() if "error" in line]
    assert run.returncode == 2, run.stdout + run.stderr
    assert len(errors) == 1 and all(w in errors[0] for w in words), errors
    assert "Traceback" not in run.stderr and "internal error" not in run.stderr


def test_unusable_value_in_a_parameter_file_is_refused_at_start_up(tmp_path):
    own = tmp_path / "mine.yaml"
    own.write_text((ROOT / "config" / "openmask3d.yaml").read_text().replace(
        "tf_tolerance: 0.1", "tf_tolerance: -5.0"))
    run = subprocess.run([sys.executable, "-m", "openmask3d_ros.cli", "node", "--params",
                          str(own), "--scene-dir", str(tmp_path / "rec")], cwd=ROOT,
                         env=node_env(), capture_output=True, text=True, timeout=60)
    assert run.returncode == 2, run.stdout + run.stderr
    assert "parameter tf_tolerance must be in [0.0, 10.0], got -5.0" in run.stderr, run.stderr
    assert "Traceback" not in run.stderr


@pytest.fixture
def client():
    c = Client()
    yield c
    c.close()


def test_set_parameters_names_what_it_refuses(tmp_path, client):
    proc = start_node(tmp_path / "node.log", f"scene_dir:={tmp_path / 'rec'}")
    try:
        assert client.spin_until(lambda: client.state() == "active", 30)
        # W10: an undeclared name is named (rclpy said "undeclared parameter(s): []")
        refused = client.set("default_topk", 3)
        assert not refused.successful
        assert "'default_topk'" in refused.reason and "default_top_k" in refused.reason
        # W11: a frame id that is no name is refused; a namespaced one is taken
        refused = client.set("map_frame", "a b/\x01")
        assert not refused.successful and "map_frame" in refused.reason, refused.reason
        assert "frame id" in refused.reason
        ok = client.set("map_frame", "robot1/map")
        assert ok.successful, ok.reason
    finally:
        assert stop_node(proc) == 0


def test_lifecycle_shutdown_ends_the_process(tmp_path, client):
    """W12: after shutdown the node is finalized and its services are gone; run by its own
    executable, the process exits (0) instead of running on silently."""
    log = tmp_path / "node.log"
    proc = start_node(log, f"scene_dir:={tmp_path / 'rec'}")
    om3d = OpenMask3DClient(client.node)
    try:
        assert client.spin_until(lambda: client.state() == "active", 30)
        assert client.transition(Transition.TRANSITION_ACTIVE_SHUTDOWN)
        t0 = time.monotonic()
        assert proc.wait(15) == 0, log.read_text()[-3000:]
        print(f"exited {time.monotonic() - t0:.2f} s after the transition's reply")
        # its last status says so (latched: a late subscriber still gets it)
        st = om3d.wait_for_status(lambda s: "finalized" in s.message, 5)
        assert st is not None, om3d.last_status
    finally:
        stop_node(proc)
        om3d.destroy()
    text = log.read_text()
    assert "finalized by the lifecycle shutdown transition: exiting" in text
    assert "Traceback" not in text
