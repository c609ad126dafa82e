"""The launch file, the generated parameter YAML, the runner and the package metadata."""
import argparse
import re
import subprocess
import sys
import types
import xml.etree.ElementTree as ET
from pathlib import Path

import yaml

from openmask3d_ros.cli import node_cmd
from openmask3d_ros.cli.node_cmd import check_params_file, ros_arguments
from openmask3d_ros.core.config import PipelineConfig, load_config
from openmask3d_ros.ros import dds
from openmask3d_ros.ros import params as P
from openmask3d_ros.ros.param_file import parameter_file_text, parameter_table_markdown

ROOT = Path(__file__).resolve().parents[2]
LAUNCH = ROOT / "launch" / "pipeline.launch.py"
YAML = ROOT / "config" / "openmask3d.yaml"


def _cli(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "openmask3d_ros.cli", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=120)


def test_committed_parameter_file_is_the_generated_one():
    """config/openmask3d.yaml is generated (`openmask3d params`); edit ros/params.py or
    core/config.py and regenerate with `openmask3d params -o config/openmask3d.yaml`."""
    assert YAML.read_text(encoding="utf-8") == parameter_file_text()
    run = _cli("params", "--check", str(YAML))
    assert run.returncode == 0, run.stderr
    printed = _cli("params")
    assert printed.returncode == 0 and printed.stdout == YAML.read_text(encoding="utf-8")


def test_docs_parameter_table_is_the_generated_one():
    docs = (ROOT / "docs" / "ros.md").read_text(encoding="utf-8")
    found = re.search(r"<!-- params-table:[^\n]*-->\n(.*?)<!-- /params-table -->", docs, re.S)
    assert found, "docs/ros.md lost its params-table markers"
    assert found.group(1) == parameter_table_markdown(), \
        "regenerate the table with `openmask3d params --markdown`"
    assert "| `qos_depth` | `30` | 1 to 10000 |  | camera topics: history depth" in found.group(1)


def test_a_stale_parameter_file_is_reported(tmp_path):
    stale = tmp_path / "openmask3d.yaml"
    stale.write_text(YAML.read_text().replace("qos_depth: 30", "qos_depth: 10"))
    run = _cli("params", "--check", str(stale))
    assert run.returncode == 2 and "out of date" in run.stderr and "openmask3d params -o" in \
        run.stderr
    out = tmp_path / "fresh.yaml"
    assert _cli("params", "-o", str(out)).returncode == 0
    assert _cli("params", "--check", str(out)).returncode == 0


def test_a_broken_parameter_file_reports_its_yaml_error(tmp_path):
    """W7: invalid YAML was reported as "out of date: regenerate it with `openmask3d params -o
    FILE`", advice that overwrites the user's file; it is the YAML error, with line and column."""
    broken = tmp_path / "broken.yaml"
    text = "/**:\n  ros__parameters:\n    qos_depth: [30\n    status_period: 1.0\n"
    broken.write_text(text)
    run = _cli("params", "--check", str(broken))
    assert run.returncode == 2, run.stderr
    assert "broken.yaml: not a readable YAML file at line 4, column 18" in run.stderr, run.stderr
    assert "out of date" not in run.stderr and "params -o" not in run.stderr
    assert broken.read_text() == text


def test_generated_file_holds_every_default_with_its_description():
    data = yaml.safe_load(YAML.read_text())
    assert list(data) == ["/**"]                     # any node name / namespace
    params = data["/**"]["ros__parameters"]
    pipeline = params.pop("pipeline")
    assert params == {name: p.default for name, p in P.NODE_PARAMETERS.items()}
    assert pipeline == PipelineConfig().to_dict()           # the paper defaults
    assert load_config(YAML) == PipelineConfig()             # the offline CLI reads it too
    assert check_params_file(YAML) == [] and check_params_file(YAML, "other_name") == []
    lines = YAML.read_text().splitlines()
    for name, p in P.NODE_PARAMETERS.items():               # its comment sits above the key
        row = lines.index(f"    {name}: {_yaml_scalar(p.default)}")
        comment = " ".join(line.strip().lstrip("# ") for line in lines[row - 3:row]
                           if line.strip().startswith("#"))
        assert p.description.split()[-1] in comment, name
        assert ("live: can be changed" in comment) == p.live, name
    assert "        k_threshold: 0.2  # m, a point is occluded when w - d > k_threshold" in lines
    assert all(len(line) <= 100 for line in lines)


def _yaml_scalar(value) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    return f'"{value}"' if isinstance(value, str) else repr(value)


def test_parameter_file_applies_to_a_renamed_node(tmp_path):
    """`/**:` lets --name (and namespaces) use the file as it is; rcl matches the wildcard."""
    import rclpy
    f = tmp_path / "p.yaml"
    f.write_text(YAML.read_text().replace("frame_step: 10", "frame_step: 7"))
    argv = ros_arguments(f, {"scene_dir": "/tmp/s"}, None, "other_name", [])
    ctx = rclpy.Context()
    rclpy.init(args=argv, context=ctx)
    try:
        node = rclpy.create_node(P.NODE_NAME, context=ctx,
                                 automatically_declare_parameters_from_overrides=True)
        assert node.get_name() == "other_name"
        assert node.get_parameter("pipeline.frame_step").value == 7
        assert node.get_parameter("scene_dir").value == "/tmp/s"
        assert node.get_parameter("qos_depth").value == P.NODE_PARAMETERS["qos_depth"].default
        node.destroy_node()
    finally:
        rclpy.shutdown(context=ctx)
    old = tmp_path / "old.yaml"
    old.write_text("openmask3d:\n  ros__parameters:\n    autostart: false\n")
    assert check_params_file(old) == []
    (warning,) = check_params_file(old, "other_name")
    assert "'openmask3d' does not apply" in warning and "/**" in warning


def test_node_declares_every_parameter_from_the_table():
    """Descriptions, read-only flags, ranges and choices as a client's describe_parameters sees
    them come from the table; pipeline.* descriptions from core/config.py's comments."""
    import rclpy
    from rclpy.parameter import Parameter
    from openmask3d_ros.ros.settings import declare_parameters, read_settings
    ctx = rclpy.Context()
    rclpy.init(args=[], context=ctx)
    try:
        node = rclpy.create_node("om3d_declare_test", context=ctx)
        declare_parameters(node)
        for name, p in P.NODE_PARAMETERS.items():
            d = node.describe_parameter(name)
            assert d.description == p.description and d.read_only == (not p.live), name
            assert ("one of: " + ", ".join(p.choices) in d.additional_constraints) == \
                bool(p.choices), name
            ranges = list(d.floating_point_range) + list(d.integer_range)
            assert [(r.from_value, r.to_value) for r in ranges] == ([p.range] if p.range else [])
        assert node.describe_parameter("pipeline.frame_step").description == \
            "keep every n-th frame"
        assert node.describe_parameter("pipeline.query.negatives").description.startswith(
            "canonical negatives")
        settings = read_settings(node)
        assert settings.qos_depth == 30 and settings.pipeline == PipelineConfig()
        assert {f for f in settings.__dataclass_fields__} == {*P.NODE_PARAMETERS, "pipeline"}
        assert not node.set_parameters([Parameter("pose_wait", value=5.0)])[0].successful
        assert node.set_parameters([Parameter("default_top_k", value=3)])[0].successful
        assert settings.with_live({"tf_tolerance": 1}).tf_tolerance == 1.0
        node.destroy_node()
    finally:
        rclpy.shutdown(context=ctx)


def test_launch_file_names_and_installed_files(monkeypatch):
    _stub_launch_modules(monkeypatch)
    const = _launch_namespace()
    assert const["PACKAGE"] == "openmask3d_ros"
    assert const["NODE_NAME"] == P.NODE_NAME
    assert const["PARAMS_FILE"] == YAML.name
    assert const["DDS_PROFILE"] == dds.PROFILE_NAME and (ROOT / "config" / "fastdds.xml").is_file()
    assert const["RVIZ_CONFIG"] == node_cmd.RVIZ_CONFIG
    # the executable is the one CMakeLists.txt installs into lib/openmask3d_ros, and config/
    # (parameters, DDS profile, RViz file) is installed next to launch/
    cmake = (ROOT / "CMakeLists.txt").read_text()
    assert f"scripts/{const['NODE_EXECUTABLE']}" in cmake
    assert (ROOT / "scripts" / const["NODE_EXECUTABLE"]).is_file()
    assert re.search(r"install\(DIRECTORY launch config DESTINATION share", cmake)


class _Action:
    def __init__(self, *args, **kwargs):
        self.args, self.kwargs = args, kwargs


def _stub_launch_modules(monkeypatch) -> None:
    """Minimal stand-ins of launch / launch_ros (not installable from PyPI)."""
    class LaunchConfiguration:
        def __init__(self, name):
            self.name = name

        def perform(self, context):
            return context[self.name]

    mods = {
        "launch": types.SimpleNamespace(LaunchDescription=lambda actions: list(actions)),
        "launch.actions": types.SimpleNamespace(DeclareLaunchArgument=_Action,
                                                OpaqueFunction=_Action),
        "launch.substitutions": types.SimpleNamespace(LaunchConfiguration=LaunchConfiguration),
        "launch_ros": types.SimpleNamespace(),
        "launch_ros.actions": types.SimpleNamespace(Node=_Action),
        "ament_index_python.packages": types.SimpleNamespace(
            get_package_share_directory=lambda pkg: f"/opt/share/{pkg}"),
    }
    for name, mod in mods.items():
        monkeypatch.setitem(sys.modules, name, mod)


def _run_launch_file(monkeypatch, arguments: dict, environ: dict):
    """generate_launch_description() against the stand-ins, then its OpaqueFunction with
    ``arguments`` as the launch configuration and ``environ`` as the environment.
    Returns ({argument: DeclareLaunchArgument kwargs}, [Node kwargs])."""
    _stub_launch_modules(monkeypatch)
    for var in ("ROS_DISTRO", *dds.PROFILE_VARIABLES):
        monkeypatch.delenv(var, raising=False)
    for var, value in environ.items():
        monkeypatch.setenv(var, value)
    actions = _launch_namespace()["generate_launch_description"]()
    declared = {a.args[0]: a.kwargs for a in actions if a.args and isinstance(a.args[0], str)}
    opaque = next(a for a in actions if "function" in a.kwargs)
    nodes = opaque.kwargs["function"](
        {**{k: v["default_value"] for k, v in declared.items()}, **arguments})
    return declared, [n.kwargs for n in nodes]


def _launch_namespace() -> dict:
    """The launch file's globals, executed as ros2 launch does (after _stub_launch_modules)."""
    namespace: dict = {"__file__": str(LAUNCH)}
    exec(compile(LAUNCH.read_text(), str(LAUNCH), "exec"), namespace)
    return namespace


def test_launch_defaults_leave_the_parameter_file_in_charge(monkeypatch):
    declared, nodes = _run_launch_file(monkeypatch, {}, {})
    default = {name: kwargs["default_value"] for name, kwargs in declared.items()}
    assert default["params_file"] == str(YAML)     # next to the launch file (source or share)
    assert default["rviz"] == "false" and default["log_level"] == "info"
    # every table row marked launch=True is an argument, empty by default, described as in
    # the table, with its choices
    for name in ("use_sim_time", "autostart", "scene_dir", "color_topic", "depth_topic",
                 "camera_info_topic", "cloud_topic", "pose_topic", "odom_topic",
                 "color_transport", "depth_transport"):
        assert default[name] == "", name
        table = P.NODE_PARAMETERS.get(name) or P.ROS_PARAMETERS[name]
        assert declared[name]["description"].startswith(table.description), name
    assert declared["depth_transport"]["choices"] == ["", "raw", "compressedDepth"]
    (node,) = nodes                                  # no RViz unless asked
    assert node["name"] == P.NODE_NAME and node["package"] == "openmask3d_ros"
    assert node["parameters"] == [str(YAML)]
    assert node["arguments"] == ["--ros-args", "--log-level", "info"]
    assert "remappings" not in node                  # topics are parameters now
    assert node["additional_env"] == {"FASTDDS_DEFAULT_PROFILES_FILE":
                                      str(ROOT / "config" / "fastdds.xml")}


def test_launch_arguments_and_runner_options_give_the_same_node(monkeypatch):
    given = {"use_sim_time": "true", "autostart": "false", "color_topic": "/cam/rgb",
             "color_transport": "compressed", "depth_transport": "compressedDepth",
             "scene_dir": "/data/scene", "log_level": "debug", "rviz": "true"}
    _, nodes = _run_launch_file(monkeypatch, given, {"ROS_DISTRO": "humble"})
    node, rviz = nodes
    overrides = node["parameters"][1]
    assert overrides == {"use_sim_time": True, "autostart": False, "color_topic": "/cam/rgb",
                         "color_transport": "compressed", "depth_transport": "compressedDepth",
                         "scene_dir": "/data/scene"}
    assert node["arguments"][-2:] == ["--log-level", "debug"]
    # Fast DDS 2 distributions read the older variable
    assert list(node["additional_env"]) == ["FASTRTPS_DEFAULT_PROFILES_FILE"]
    assert rviz["executable"] == "rviz2"
    rviz_file = ROOT / "config" / "openmask3d.rviz"
    assert rviz["arguments"] == ["-d", str(rviz_file) if rviz_file.is_file()
                                 else "/opt/share/openmask3d_ros/config/openmask3d.rviz"]
    assert rviz["additional_env"] == node["additional_env"]

    parser = argparse.ArgumentParser()
    node_cmd.register(parser.add_subparsers())
    args = parser.parse_args(["node", "--use-sim-time", "--autostart", "false",
                              "--color-topic", "/cam/rgb", "--color-transport", "compressed",
                              "--depth-transport", "compressedDepth", "--scene-dir",
                              "/data/scene", "--log-level", "debug"])
    runner = node_cmd.argument_overrides(args)
    assert {k: (v == "true" if k in ("use_sim_time", "autostart") else v)
            for k, v in runner.items()} == overrides
    argv = ros_arguments(YAML, runner, None, None, [], args.log_level)
    assert argv[-2:] == ["--log-level", "debug"] and "use_sim_time:=true" in argv


def test_a_profile_set_by_the_user_is_kept(monkeypatch):
    _, (node,) = _run_launch_file(monkeypatch, {}, {"FASTRTPS_DEFAULT_PROFILES_FILE": "/my.xml"})
    assert node["additional_env"] == {}
    env = {"FASTDDS_DEFAULT_PROFILES_FILE": "/mine.xml"}
    assert dds.apply_profile(env) == "/mine.xml"
    assert env == {"FASTDDS_DEFAULT_PROFILES_FILE": "/mine.xml"}
    env = {}
    assert dds.apply_profile(env) == str(ROOT / "config" / "fastdds.xml")
    env = {"ROS_DISTRO": "jazzy"}
    dds.apply_profile(env)
    assert env["FASTRTPS_DEFAULT_PROFILES_FILE"] == str(ROOT / "config" / "fastdds.xml")


def test_fastdds_profile_has_a_large_shm_segment_and_no_builtin_transports():
    root = ET.parse(ROOT / "config" / "fastdds.xml").getroot()
    ns = {"d": "http://www.eprosima.com"}
    descriptors = list(root.iterfind(".//d:transport_descriptor", ns))
    shm = [t for t in descriptors if t.findtext("d:type", namespaces=ns) == "SHM"]
    udp = [t for t in descriptors if t.findtext("d:type", namespaces=ns) == "UDPv4"]
    assert shm and int(shm[0].findtext("d:segment_size", namespaces=ns)) >= 32 * 1024 * 1024
    assert udp and int(udp[0].findtext("d:receiveBufferSize", namespaces=ns)) >= 4 * 1024 * 1024
    participant = root.find(".//d:participant", ns)
    assert participant.get("is_default_profile") == "true"
    assert participant.findtext(".//d:useBuiltinTransports", namespaces=ns) == "false"
    used = {t.text for t in participant.iterfind(".//d:userTransports/d:transport_id", ns)}
    assert used == {t.findtext("d:transport_id", namespaces=ns) for t in shm + udp}


def test_runner_passes_the_same_parameters_and_remappings():
    argv = ros_arguments(YAML, {"scene_dir": "/tmp/x"}, {"cloud": "/my/cloud"}, None,
                         ["--ros-args", "--log-level", "debug"])
    assert argv[:4] == ["openmask3d_node", "--ros-args", "--params-file", str(YAML)]
    remaps = dict(argv[i + 1].split(":=") for i, a in enumerate(argv) if a == "-r")
    assert remaps == {"cloud": "/my/cloud"}          # --remap keeps working
    assert "scene_dir:=/tmp/x" in argv and argv[-2:] == ["--log-level", "debug"]


def test_use_sim_time_is_a_known_parameter(tmp_path):
    f = tmp_path / "p.yaml"
    f.write_text("openmask3d:\n  ros__parameters:\n    use_sim_time: true\n"
                 "    qos_overrides:\n      /tf:\n        subscription:\n          depth: 5\n")
    assert check_params_file(f) == []


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
                "python3-numpy", "action_msgs", "builtin_interfaces"):
        assert dep in deps, dep
    cmake = (ROOT / "CMakeLists.txt").read_text()
    for f in ("msg/ObjectInstance.msg", "msg/PipelineStatus.msg", "msg/MapChanges.msg",
              "srv/QueryObjects.srv", "action/BuildMap.action"):
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
    from openmask3d_ros.action import BuildMap
    from openmask3d_ros.msg import MapChanges
    assert (BuildMap.Goal.MODE_INCREMENTAL, BuildMap.Goal.MODE_FULL) == (0, 1)
    assert BuildMap.Result().changes == MapChanges()


def test_installed_share_path_is_used_outside_a_source_checkout(monkeypatch, tmp_path):
    """Installed with colcon, config/ lives in share/openmask3d_ros: the runner finds the
    parameter file and the DDS profile there."""
    share = tmp_path / "share" / "openmask3d_ros"
    (share / "config").mkdir(parents=True)
    (share / "config" / "fastdds.xml").write_text("<dds/>")
    monkeypatch.setattr(dds, "_SOURCE_CONFIG", tmp_path / "no_checkout" / "config")
    monkeypatch.setitem(sys.modules, "ament_index_python.packages", types.SimpleNamespace(
        get_package_share_directory=lambda pkg: str(share)))
    assert dds.profile_path() == share / "config" / "fastdds.xml"
    assert node_cmd.default_params() == share / "config" / "openmask3d.yaml"
    env = {}
    assert dds.apply_profile(env) == str(share / "config" / "fastdds.xml")
    (share / "config" / "fastdds.xml").unlink()      # no profile anywhere: nothing is set
    env = {}
    assert dds.apply_profile(env) is None and env == {}
