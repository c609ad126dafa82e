#!/usr/bin/env bash
# Build the openmask3d_ros interfaces (msg/, srv/, action/) into a Python venv that holds the ROS 2 PyPI
# wheels, so that `from openmask3d_ros.srv import QueryObjects` works without a ROS install.
#
#   bash scripts/build_interfaces.sh [VENV]        (default: .venv at the repository root)
#
# Idempotent: skipped when the installed interfaces match the current msg/srv/action files (hash stamp).
# Steps:
#  1. the ROS wheels bake their build machine's paths (/opt/python/cp311-cp311/...) into
#     share/*/cmake/*.cmake; rewrite them to this interpreter's include dir and numpy's;
#  2. build tf2_msgs (TFMessage only) and vision_msgs (its 3D detection messages) when their import
#     fails: neither is on PyPI; the node subscribes to /tf and /tf_static and publishes
#     vision_msgs/Detection3DArray (a real ROS install keeps its own);
#  3. cmake-configure this package with OPENMASK3D_INSTALL_PYTHON=OFF, build and install it into
#     the venv prefix: only the generated interfaces land in site-packages/openmask3d_ros/, whose
#     generated empty __init__.py is removed so the source package (pip install -e .) is the one
#     imported and extends its __path__ to the generated msg/srv/action.
# Set OPENMASK3D_FORCE_INTERFACES=1 to rebuild regardless of the stamp.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$(cd "${1:-${OPENMASK3D_VENV:-$ROOT/.venv}}" && pwd)"
PY="$VENV/bin/python"
JOBS="${MAX_JOBS:-2}"
log() { printf '[interfaces] %s\n' "$*"; }
die() { printf '[interfaces] ERROR: %s\n' "$*" >&2; exit 1; }

[ -x "$PY" ] || die "no python at $PY (create the venv and install requirements.txt first)"
command -v cmake >/dev/null || die "cmake not found (apt-get install cmake)"
"$PY" -c "import rosidl_generator_py" 2>/dev/null \
  || [ -d "$VENV/share/rosidl_default_generators" ] \
  || die "ROS 2 build wheels missing in $VENV: pip install -r requirements.txt"
export PATH="$VENV/bin:$PATH"
export CMAKE_PREFIX_PATH="$VENV${CMAKE_PREFIX_PATH:+:$CMAKE_PREFIX_PATH}"
export AMENT_PREFIX_PATH="$VENV${AMENT_PREFIX_PATH:+:$AMENT_PREFIX_PATH}"
SITE="$("$PY" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"

# Imports are checked from a neutral directory so the source tree does not mask the result.
py_check() { (cd / && "$PY" -c "$1") >/dev/null 2>&1; }

# -- 1. baked paths ----------------------------------------------------------------------------
PY_INC="$("$PY" -c 'import sysconfig; print(sysconfig.get_paths()["include"])')"
NP_INC="$("$PY" -c 'import numpy; print(numpy.get_include())')"
mapfile -t BAKED < <(grep -l -r --include='*.cmake' -e '/opt/python/cp3' "$VENV/share" 2>/dev/null || true)
if [ "${#BAKED[@]}" -gt 0 ]; then
  log "rewriting baked build paths in ${#BAKED[@]} cmake file(s)"
  for f in "${BAKED[@]}"; do
    sed -i -E \
      -e "s#/opt/python/cp3[0-9]+-cp3[0-9]+/lib/python3\.[0-9]+/site-packages/numpy/_core/include#${NP_INC}#g" \
      -e "s#/opt/python/cp3[0-9]+-cp3[0-9]+/lib/python3\.[0-9]+/site-packages/numpy/core/include#${NP_INC}#g" \
      -e "s#/opt/python/cp3[0-9]+-cp3[0-9]+/include/python3\.[0-9]+#${PY_INC}#g" "$f"
  done
  if grep -l -r --include='*.cmake' -e '/opt/python/cp3' "$VENV/share" >/dev/null 2>&1; then
    die "unrecognised /opt/python paths remain in $VENV/share/*/cmake (see grep -r /opt/python)"
  fi
fi

# Paths in CLEAN_BEFORE_INSTALL are removed after a successful build, just before installing, so a
# failed build leaves the previous installation usable and the gap without one stays short.
CLEAN_BEFORE_INSTALL=()
cmake_install() {  # SRC_DIR NAME [cmake args...]
  local src="$1" name="$2"; shift 2
  local build; build="$(mktemp -d "${TMPDIR:-/tmp}/openmask3d_${name}_build.XXXXXX")"
  log "building $name (cmake, $JOBS jobs)"
  if ! { cmake -S "$src" -B "$build" -DCMAKE_INSTALL_PREFIX="$VENV" -DCMAKE_BUILD_TYPE=Release \
           -DBUILD_TESTING=OFF -DPython3_EXECUTABLE="$PY" -DPYTHON_EXECUTABLE="$PY" "$@" \
         && cmake --build "$build" -j "$JOBS" \
         && rm -rf "${CLEAN_BEFORE_INSTALL[@]}" \
         && cmake --install "$build"; } >"$build.log" 2>&1; then
    tail -n 40 "$build.log" >&2
    die "building $name failed (full log: $build.log)"
  fi
  rm -rf "$build" "$build.log"
}

# -- 2. message packages that have no PyPI wheel ------------------------------------------------
# msg_package NAME DEPENDENCIES DESCRIPTION: builds the .msg files found in $MSG_SRC/msg as the
# interface package NAME (messages only). The fields are the upstream definitions', so the type
# hashes should match a real ROS install's.
msg_package() {
  local name="$1" deps="$2" desc="$3" src="$MSG_SRC" dep depend_xml="" find_cmake="" files=""
  for dep in $deps; do
    depend_xml+="  <depend>$dep</depend>"$'\n'
    find_cmake+="find_package($dep REQUIRED)"$'\n'
  done
  for f in "$src"/msg/*.msg; do files+=" \"msg/$(basename "$f")\""; done
  cat >"$src/package.xml" <<XML
<?xml version="1.0"?>
<package format="3">
  <name>$name</name>
  <version>0.0.0</version>
  <description>$desc</description>
  <maintainer email="openmask3d-ros@example.com">openmask3d_ros</maintainer>
  <license>BSD</license>
  <buildtool_depend>ament_cmake</buildtool_depend>
  <buildtool_depend>rosidl_default_generators</buildtool_depend>
$depend_xml  <exec_depend>rosidl_default_runtime</exec_depend>
  <member_of_group>rosidl_interface_packages</member_of_group>
  <export><build_type>ament_cmake</build_type></export>
</package>
XML
  cat >"$src/CMakeLists.txt" <<CM
cmake_minimum_required(VERSION 3.16)
project($name)
find_package(ament_cmake REQUIRED)
find_package(rosidl_default_generators REQUIRED)
$find_cmake
rosidl_generate_interfaces(\${PROJECT_NAME}$files DEPENDENCIES $deps)
ament_export_dependencies(rosidl_default_runtime)
ament_package()
CM
  cmake_install "$src" "$name"
}

# tf2_msgs (TFMessage only): the node needs it to subscribe to /tf and /tf_static.
# Built only when `import tf2_msgs` fails, so a real ROS install keeps its own.
if ! py_check "import tf2_msgs.msg; tf2_msgs.msg.TFMessage"; then
  MSG_SRC="$(mktemp -d "${TMPDIR:-/tmp}/tf2_msgs_src.XXXXXX")"
  mkdir -p "$MSG_SRC/msg"
  echo "geometry_msgs/TransformStamped[] transforms" >"$MSG_SRC/msg/TFMessage.msg"
  msg_package tf2_msgs geometry_msgs \
    "TFMessage only, built locally by openmask3d_ros because tf2_msgs has no PyPI wheel."
  rm -rf "$MSG_SRC"
  py_check "import tf2_msgs.msg; tf2_msgs.msg.TFMessage" || die "tf2_msgs built but does not import"
  log "tf2_msgs installed into $VENV"
else
  log "tf2_msgs already importable: not building it"
fi

# vision_msgs (the 3D detection messages of ROS 2 vision_msgs 4.x): the node publishes
# vision_msgs/Detection3DArray on ~/detections. Same rule: a real ROS install keeps its own.
VISION_CHECK="from vision_msgs.msg import Detection3DArray, Detection3D, ObjectHypothesisWithPose, \
ObjectHypothesis, BoundingBox3D, BoundingBox3DArray"
if ! py_check "$VISION_CHECK"; then
  MSG_SRC="$(mktemp -d "${TMPDIR:-/tmp}/vision_msgs_src.XXXXXX")"
  mkdir -p "$MSG_SRC/msg"
  printf '%s\n' "string class_id" "float64 score" >"$MSG_SRC/msg/ObjectHypothesis.msg"
  printf '%s\n' "ObjectHypothesis hypothesis" "geometry_msgs/PoseWithCovariance pose" \
    >"$MSG_SRC/msg/ObjectHypothesisWithPose.msg"
  printf '%s\n' "geometry_msgs/Pose center" "geometry_msgs/Vector3 size" >"$MSG_SRC/msg/BoundingBox3D.msg"
  printf '%s\n' "std_msgs/Header header" "BoundingBox3D[] boxes" >"$MSG_SRC/msg/BoundingBox3DArray.msg"
  printf '%s\n' "std_msgs/Header header" "ObjectHypothesisWithPose[] results" "BoundingBox3D bbox" \
    "string id" >"$MSG_SRC/msg/Detection3D.msg"
  printf '%s\n' "std_msgs/Header header" "Detection3D[] detections" >"$MSG_SRC/msg/Detection3DArray.msg"
  msg_package vision_msgs "std_msgs geometry_msgs" \
    "The 3D detection messages of vision_msgs 4.x, built locally by openmask3d_ros (no PyPI wheel)."
  rm -rf "$MSG_SRC"
  py_check "$VISION_CHECK" || die "vision_msgs built but does not import"
  log "vision_msgs installed into $VENV"
else
  log "vision_msgs already importable: not building it"
fi

# -- 3. openmask3d_ros interfaces -----------------------------------------------------------------
STAMP="$VENV/share/openmask3d_ros/interfaces.sha256"
HASH="$(cd "$ROOT" && cat msg/*.msg srv/*.srv action/*.action CMakeLists.txt package.xml scripts/build_interfaces.sh \
        | sha256sum | cut -d' ' -f1)"
CHECK="from openmask3d_ros.srv import QueryObjects; from openmask3d_ros.msg import ObjectInstance, \
PipelineStatus, MapChanges; from openmask3d_ros.action import BuildMap"
if [ "${OPENMASK3D_FORCE_INTERFACES:-0}" != 1 ] && [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$HASH" ] \
   && [ -f "$SITE/openmask3d_ros/srv/_query_objects.py" ] \
   && [ -f "$SITE/openmask3d_ros/action/_build_map.py" ]; then
  log "openmask3d_ros interfaces up to date"
else
  T0=$SECONDS
  CLEAN_BEFORE_INSTALL=("$SITE/openmask3d_ros/msg" "$SITE/openmask3d_ros/srv" "$SITE/openmask3d_ros/action")
  cmake_install "$ROOT" openmask3d_ros -DOPENMASK3D_INSTALL_PYTHON=OFF
  CLEAN_BEFORE_INSTALL=()
  # The generated empty __init__.py would shadow the source package's (pkgutil.extend_path).
  rm -f "$SITE/openmask3d_ros/__init__.py"
  rm -rf "$SITE/openmask3d_ros/__pycache__"
  echo "$HASH" >"$STAMP"
  log "openmask3d_ros interfaces installed into $VENV ($((SECONDS - T0)) s)"
fi
py_check "$CHECK" || die "the interfaces do not import: (cd / && $PY -c '$CHECK')"
