"""The launch file, the parameter YAML, the runner and the package metadata agree."""
import ast
import re
import sys
import types
import xml.etree.ElementTree as ET
from pathlib import Path

import yaml

from openmask3d_ros.cli.node_cmd import check_params_file, ros_arguments
from openmask3d_ros.core.config import PipelineConfig, load_config
from openmask3d_ros.ros import params as P

ROOT = Path(__file__).resolve().parents[2]
LAUNCH = ROOT / "launch" / "pipeline.launch.py"
YAML = ROOT / "config" / "openmask3d.yaml"


def _launch_constants() -> dict:
    tree = ast.parse(LAUNCH.read_text())
    out = {}
    for node in tree.body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and \
                isinstance(node.targets[0], ast.Name):
            try:
                out[node.targets[0].id] = ast.literal_eval(node.value)
            except ValueError:
                pass
    return out


def _nested_keys(d: dict, prefix: str = "") -> set[str]:
    out = set()
    for k, v in d.items():
        out |= _nested_keys(v, f"{prefix}{k}.") if isinstance(v, dict) else {prefix + k}
    return out


def test_yaml_holds_every_parameter_with_its_default():
    data = yaml.safe_load(YAML.read_text())
    assert list(data) == [P.NODE_NAME]
    params = data[P.NODE_NAME]["ros__parameters"]
    pipeline = params.pop("pipeline")
    assert params == {k: d for k, (d, _) in P.NODE_PARAMETERS.items()}
    assert _nested_keys(pipeline) == _nested_keys(PipelineConfig().to_dict())
    assert pipeline == PipelineConfig().to_dict()           # the paper defaults
    assert load_config(YAML) == PipelineConfig()
    assert check_params_file(YAML) == []


def test_launch_file_matches_node_names_topics_and_yaml():
    const = _launch_constants()
    assert const["PACKAGE"] == "openmask3d_ros"
    assert const["NODE_NAME"] == P.NODE_NAME
    assert const["PARAMS_FILE"] == YAML.name
    assert {k: tuple(v) for k, v in const["TOPIC_ARGUMENTS"].items()} == P.TOPIC_ARGUMENTS
    # the node subscribes to exactly the topics the launch file remaps
    node_topics = {P.COLOR_TOPIC, P.DEPTH_TOPIC, P.INFO_TOPIC, P.CLOUD_TOPIC, P.POSE_TOPIC,
                   P.ODOM_TOPIC}
    assert {topic for topic, _ in const["TOPIC_ARGUMENTS"].values()} == node_topics
    # the executable is the one CMakeLists.txt installs into lib/openmask3d_ros
    cmake = (ROOT / "CMakeLists.txt").read_text()
    assert f"scripts/{const['NODE_EXECUTABLE']}" in cmake
    assert (ROOT / "scripts" / const["NODE_EXECUTABLE"]).is_file()
    assert re.search(r"install\(DIRECTORY launch config DESTINATION share", cmake)


def test_launch_description_builds_with_stub_launch_modules(monkeypatch):
    """Run generate_launch_description() against minimal stand-ins of launch / launch_ros
    (not installable from PyPI) and check what it passes to the Node action."""
    recorded = {}

    class Action:
        def __init__(self, *args, **kwargs):
            self.args, self.kwargs = args, kwargs

    class Node(Action):
        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            recorded["node"] = kwargs

    class LaunchConfiguration:
        def __init__(self, name):
            self.name = name

    mods = {
        "launch": types.SimpleNamespace(LaunchDescription=lambda actions: list(actions)),
        "launch.actions": types.SimpleNamespace(DeclareLaunchArgument=Action),
        "launch.substitutions": types.SimpleNamespace(LaunchConfiguration=LaunchConfiguration),
        "launch_ros": types.SimpleNamespace(),
        "launch_ros.actions": types.SimpleNamespace(Node=Node),
        "ament_index_python.packages": types.SimpleNamespace(
            get_package_share_directory=lambda pkg: f"/opt/share/{pkg}"),
    }
    for name, mod in mods.items():
        monkeypatch.setitem(sys.modules, name, mod)
    namespace: dict = {}
    exec(compile(LAUNCH.read_text(), str(LAUNCH), "exec"), namespace)
    actions = namespace["generate_launch_description"]()
    declared = {a.args[0]: a.kwargs.get("default_value") for a in actions if not isinstance(a, Node)}
    assert declared["params_file"] == "/opt/share/openmask3d_ros/config/openmask3d.yaml"
    for arg, (topic, default) in P.TOPIC_ARGUMENTS.items():
        assert declared[arg] == default
    node = recorded["node"]
    assert node["name"] == P.NODE_NAME and node["package"] == "openmask3d_ros"
    assert [p.name for p in node["parameters"]] == ["params_file"]
    assert {t: c.name for t, c in node["remappings"]} == {
        topic: arg for arg, (topic, _) in P.TOPIC_ARGUMENTS.items()}


def test_runner_passes_the_same_parameters_and_remappings():
    argv = ros_arguments(YAML, {"scene_dir": "/tmp/x"}, {"cloud": "/my/cloud"}, None,
                         ["--ros-args", "--log-level", "debug"])
    assert argv[:4] == ["openmask3d_node", "--ros-args", "--params-file", str(YAML)]
    remaps = dict(argv[i + 1].split(":=") for i, a in enumerate(argv) if a == "-r")
    assert remaps == {**P.DEFAULT_REMAPPINGS, "cloud": "/my/cloud"}
    assert "scene_dir:=/tmp/x" in argv and argv[-2:] == ["--log-level", "debug"]


def test_unknown_parameters_are_reported(tmp_path):
    bad = tmp_path / "p.yaml"
    bad.write_text("openmask3d:\n  ros__parameters:\n    frame_stepp: 3\n"
                   "    pipeline:\n      visibility:\n        k_treshold: 0.1\n")
    warnings = check_params_file(bad)
    assert any("frame_stepp" in w for w in warnings)
    assert any("pipeline.visibility.k_treshold" in w for w in warnings)


def test_package_xml_and_setup():
    root = ET.parse(ROOT / "package.xml").getroot()
    assert root.get("format") == "3" and root.findtext("name") == "openmask3d_ros"
    assert root.find("export/build_type").text == "ament_cmake"
    assert root.findtext("member_of_group") == "rosidl_interface_packages"
    deps = {e.text for e in root if e.tag.endswith("depend")}
    for dep in ("rclpy", "sensor_msgs", "geometry_msgs", "std_msgs", "std_srvs",
                "visualization_msgs", "nav_msgs", "lifecycle_msgs", "tf2_ros", "tf2_msgs",
                "message_filters", "rosidl_default_generators", "rosidl_default_runtime",
                "python3-numpy"):
        assert dep in deps, dep
    cmake = (ROOT / "CMakeLists.txt").read_text()
    for f in ("msg/ObjectInstance.msg", "msg/PipelineStatus.msg", "srv/QueryObjects.srv"):
        assert f'"{f}"' in cmake and (ROOT / f).is_file()
    # the interface generator already installs the Python package (ros2/rosidl_python#141)
    assert not re.search(r"^\s*ament_python_install_package\(", cmake, re.M)
    setup = (ROOT / "setup.py").read_text()
    assert 'name="openmask3d-ros-core"' in setup
    assert "openmask3d = openmask3d_ros.cli:main" in setup


def test_interfaces_import():
    from openmask3d_ros.msg import ObjectInstance, PipelineStatus
    from openmask3d_ros.srv import QueryObjects
    req = QueryObjects.Request()
    assert (req.query, req.top_k, req.min_score) == ("", 0, -1.0)
    assert PipelineStatus.STATE_READY == "ready"
    assert ObjectInstance().points.height == 0
