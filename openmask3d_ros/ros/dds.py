"""The shipped Fast DDS profile (config/fastdds.xml) and the environment that loads it.

Large best-effort camera frames are lost between two processes with Fast DDS's defaults (see the
comment in the XML). The runner (`openmask3d node`), `openmask3d bag-play` and the launch file
set the profile for the processes they start, unless the user already chose a profile file.
No rclpy import here: this must run before rclpy creates its DDS participant.
"""
from __future__ import annotations

import os
from pathlib import Path

PROFILE_NAME = "fastdds.xml"
# Fast DDS 3 (ROS 2 Kilted and later) reads FASTDDS_...; Fast DDS 2 (Humble, Jazzy) reads
# FASTRTPS_... The rmw of Fast DDS 3 still honours the old name but warns that it is deprecated.
PROFILE_VARIABLES = ("FASTDDS_DEFAULT_PROFILES_FILE", "FASTRTPS_DEFAULT_PROFILES_FILE")
_FAST_DDS_2_DISTROS = ("humble", "iron", "jazzy")
_SOURCE_CONFIG = Path(__file__).resolve().parents[2] / "config"


def shipped_config(name: str) -> Path:
    """config/<name> of a source checkout, else the installed share/openmask3d_ros/config one
    (else the source path, which the caller reports as missing)."""
    path = _SOURCE_CONFIG / name
    if path.is_file():
        return path
    try:
        from ament_index_python.packages import get_package_share_directory
        return Path(get_package_share_directory("openmask3d_ros")) / "config" / name
    except Exception:   # not installed with ament
        return path


def profile_path() -> Path:
    """The shipped Fast DDS profile, config/fastdds.xml."""
    return shipped_config(PROFILE_NAME)


def profile_variable(environ=None) -> str:
    """The variable this ROS distribution's Fast DDS reads (by ROS_DISTRO; default Fast DDS 3)."""
    distro = (environ if environ is not None else os.environ).get("ROS_DISTRO", "").lower()
    return PROFILE_VARIABLES[1] if distro in _FAST_DDS_2_DISTROS else PROFILE_VARIABLES[0]


def profile_env(environ=None) -> dict[str, str]:
    """Variables to add so that a process loads the shipped profile: {} when the user already set
    a profile file (theirs wins) or the file is missing."""
    env = environ if environ is not None else os.environ
    if any(env.get(v) for v in PROFILE_VARIABLES):
        return {}
    path = profile_path()
    if not path.is_file():
        return {}
    return {profile_variable(env): str(path)}


def apply_profile(environ=None) -> str | None:
    """Set the profile in ``environ`` (default: this process, before rclpy.init). Returns the
    profile file in effect (the user's or ours), or None."""
    env = environ if environ is not None else os.environ
    env.update(profile_env(env))
    return next((env[v] for v in PROFILE_VARIABLES if env.get(v)), None)
