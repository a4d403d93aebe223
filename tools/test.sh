#!/usr/bin/env bash
# Installs what is missing, builds, runs every test through ctest; exits non-zero on failure.
# GPU tests skip themselves where no GPU is visible.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
"$ROOT/tools/build.sh"
source "$ROOT/tools/env.sh"
set -euo pipefail
# Test oracles (never runtime dependencies): installed into the venv where pip can reach PyPI.
if [ "$SPARSETRAIN_PYTHON" = "$ROOT/.venv/bin/python" ]; then
  "$SPARSETRAIN_PYTHON" -c 'import entmax, transformers, tokenizers, safetensors, numpy, matplotlib' 2>/dev/null ||
    "$ROOT/.venv/bin/pip" install -q --disable-pip-version-check numpy entmax transformers tokenizers safetensors matplotlib >&2 ||
    echo "[test] warning: could not install the python test oracles" >&2
fi
# The quickstart corpus, which the training tests use.
SPARSETRAIN_BIN="${BUILD_DIR:-$ROOT/build}/sparsetrain" "$ROOT/data/kjv.sh"
cd "${BUILD_DIR:-$ROOT/build}"
ctest --output-on-failure -j "${TEST_JOBS:-2}" "$@"
