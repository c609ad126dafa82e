"""Python distribution of the openmask3d_ros source package (pip, editable installs).

The distribution is named ``openmask3d-ros-core`` on purpose: the interface build
(scripts/build_interfaces.sh, or colcon) registers an ``openmask3d_ros`` egg-info for the
generated ``openmask3d_ros.msg`` / ``.srv`` / ``.action``; a pip distribution of the same name
would uninstall those generated modules. Dependencies come from requirements.txt minus the ROS
wheels (ros-*) and the build/test tools.
"""
import re
from pathlib import Path

from setuptools import find_packages, setup

HERE = Path(__file__).resolve().parent
_TEST = ("pytest", "hypothesis", "ruff")
_BUILD_OR_TEST = ("ros-", "colcon", "setuptools", "wheel") + _TEST
_BATCH = ("ray",)       # `openmask3d batch` only: the extra "batch" (pip install .[batch])


def _requirements() -> tuple[list[str], list[str], list[str]]:
    path = HERE / "requirements.txt"
    if not path.is_file():
        return [], [], []
    runtime, test, batch = [], [], []
    for line in path.read_text().splitlines():
        req = line.split("#", 1)[0].strip()
        if not req:
            continue
        if re.split(r"[<>=!~\[ ;]", req, maxsplit=1)[0].lower() in _BATCH:
            batch.append(req)
        elif req.lower().startswith(_TEST):
            test.append(req)
        elif not req.lower().startswith(_BUILD_OR_TEST):
            runtime.append(req)
    return runtime, test, batch


RUNTIME, TEST, BATCH = _requirements()

setup(
    name="openmask3d-ros-core",
    version="0.1.0",
    description="OpenMask3D open-vocabulary 3D instance segmentation for ROS 2 (Python package)",
    long_description=(HERE / "README.md").read_text() if (HERE / "README.md").is_file() else "",
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.10",
    packages=find_packages(include=["openmask3d_ros*"]),
    include_package_data=True,
    install_requires=RUNTIME,
    extras_require={"test": TEST, "batch": BATCH},
    entry_points={"console_scripts": ["openmask3d = openmask3d_ros.cli:main"]},
    zip_safe=False,
)
