"""`openmask3d node` as its own process, as a user starts it: the ROS tests' one way to start and
stop it (from the repository root, so `config/openmask3d.yaml` resolves; output to a log file),
and the tests' own rclpy contexts and client nodes."""
import os
import signal
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

import rclpy

ROOT = Path(__file__).resolve().parents[2]


def node_env(**extra: str) -> dict:
    """The test's environment, with unbuffered, uncoloured node output (readable logs)."""
    return dict(os.environ, PYTHONUNBUFFERED="1", RCUTILS_COLORIZED_OUTPUT="0", **extra)


def params(*assignments: str) -> list[str]:
    """``("a:=1", "b:=2")`` -> ``["--param", "a:=1", "--param", "b:=2"]``."""
    return [arg for p in assignments for arg in ("--param", p)]


def start_node(log: Path, *args: str, env: dict | None = None,
               append: bool = False) -> subprocess.Popen:
    """``python -m openmask3d_ros.cli node <args>``; stdout and stderr go to ``log``. Its own
    session, so a signal meant for the node never reaches pytest."""
    cmd = [sys.executable, "-m", "openmask3d_ros.cli", "node", *args]
    with open(log, "a" if append else "w") as out:    # the child keeps its own copy
        return subprocess.Popen(cmd, cwd=ROOT, env=env if env is not None else node_env(),
                                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)


def stop_node(proc: subprocess.Popen, timeout: float = 15) -> int:
    """Ctrl-C, as a user stops it; SIGKILL if it has not exited after ``timeout`` s. The exit
    status."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
    return proc.returncode


@contextmanager
def ros_context(domain_offset: int = 0):
    """An rclpy context of its own, in this process's DDS domain (test/ros/conftest.py) plus
    ``domain_offset`` (a test whose nodes must not meet the others'); shut down after."""
    ctx = rclpy.Context()
    domain = int(os.environ["ROS_DOMAIN_ID"]) + domain_offset if domain_offset else None
    rclpy.init(context=ctx, domain_id=domain)
    try:
        yield ctx
    finally:
        rclpy.shutdown(context=ctx)


class ClientNode:
    """A plain rclpy node in a context of its own, for a test to talk to the node with;
    ``close()`` destroys both."""

    def __init__(self, name: str):
        self.ctx = rclpy.Context()
        rclpy.init(context=self.ctx)
        self.node = rclpy.create_node(name, context=self.ctx)

    def close(self) -> None:
        self.node.destroy_node()
        rclpy.shutdown(context=self.ctx)


@contextmanager
def client_node(name: str):
    """``ClientNode(name).node``, closed after."""
    client = ClientNode(name)
    try:
        yield client.node
    finally:
        client.close()
