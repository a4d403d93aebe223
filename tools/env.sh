# Sourced by the tools/ scripts: installs what is missing, then exports
#   SPARSETRAIN_PYTHON  a python3 that imports torch 2.11 (used for LibTorch and test oracles)
#   CMAKE_PREFIX_PATH   LibTorch's cmake folder (from that torch package)
# Works as root on a fresh Debian/Ubuntu machine; offline machines must have everything already.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
TORCH_VERSION="2.11.0"
log() { echo "[setup] $*" >&2; }

need_apt=()
[ -f /usr/include/yaml-cpp/yaml.h ] || need_apt+=(libyaml-cpp-dev)
[ -f /usr/include/CLI/CLI.hpp ] || need_apt+=(libcli11-dev)
[ -f /usr/include/gtest/gtest.h ] || need_apt+=(libgtest-dev)
command -v cmake >/dev/null || need_apt+=(cmake)
command -v ninja >/dev/null || need_apt+=(ninja-build)
command -v g++ >/dev/null || need_apt+=(g++)
command -v ccache >/dev/null || need_apt+=(ccache)
command -v bible >/dev/null || need_apt+=(bible-kjv)   # the quickstart corpus
python3 -c 'import venv, ensurepip' 2>/dev/null || need_apt+=(python3-venv)
# SPARSETRAIN_NO_INSTALL=1 skips installing (offline machines that already have the essentials).
if [ ${#need_apt[@]} -gt 0 ] && [ -z "${SPARSETRAIN_NO_INSTALL:-}" ]; then
  if command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
    log "installing ${need_apt[*]}"
    timeout 300 apt-get update -qq >/dev/null 2>&1 || true
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}" >/dev/null \
      || log "warning: apt-get could not install all of: ${need_apt[*]}"
  else
    log "warning: missing ${need_apt[*]} and no root apt-get to install them"
  fi
fi

torch_ok() { "$1" -c "import torch,sys; sys.exit(0 if torch.__version__.startswith('$TORCH_VERSION') else 1)" 2>/dev/null; }
if [ -n "${SPARSETRAIN_PYTHON:-}" ] && torch_ok "$SPARSETRAIN_PYTHON"; then
  :
elif torch_ok python3; then
  SPARSETRAIN_PYTHON="$(command -v python3)"      # e.g. the GPU machine's torch 2.11+cu130
else
  if ! torch_ok "$ROOT/.venv/bin/python"; then
    log "creating $ROOT/.venv with torch==$TORCH_VERSION (a one-time download of a few GB)"
    python3 -m venv "$ROOT/.venv"
    "$ROOT/.venv/bin/pip" install -q --disable-pip-version-check "torch==$TORCH_VERSION"
  fi
  SPARSETRAIN_PYTHON="$ROOT/.venv/bin/python"
fi
export SPARSETRAIN_PYTHON
CMAKE_PREFIX_PATH="$("$SPARSETRAIN_PYTHON" -c 'import torch;print(torch.utils.cmake_prefix_path)' 2>/dev/null)"
export CMAKE_PREFIX_PATH
export CCACHE_BASEDIR="$ROOT" CCACHE_NOHASHDIR=1 CCACHE_SLOPPINESS=pch_defines,time_macros,include_file_mtime,include_file_ctime
[ -d /usr/local/cuda/bin ] && export PATH="$PATH:/usr/local/cuda/bin"
set +euo pipefail
