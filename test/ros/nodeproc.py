"""`openmask3d node` as its own process, as a user starts it: the ROS tests' one way to start and
stop it (from the repository root, so `config/openmask3d.yaml` resolves; output to a log file)."""
import os
import signal
import subprocess
import sys
from pathlib import Path

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
