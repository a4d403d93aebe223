#!/usr/bin/env bash
# The ~100M matched-sparsity sweep on one GPU, about 8 minutes on an H200 with the build
# (recipes/sweep-100m.yaml): builds if needed, makes the quickstart corpus and the mixed
# shards, runs the sweep. Run it again to resume. Result: runs/sweep-100m/report.md.
#   kjv : passkey : niah = 2 : 1 : 1, in windows of seq_len + 1 tokens
#   mix-4k.bin   8000 windows of 4097 tokens   (dense pretraining: 1000 steps x 8); the
#                synthetic windows hold two 2048-token examples each: twice the retrieval
#                examples of one per window (with one, 2026-11-24, the model learned none)
#   mix-16k.bin   200 windows of 16385 tokens  (continual pretraining: 24 steps x 1 per run),
#                one 16385-token example per synthetic window
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"
BIN="${SPARSETRAIN_BIN:-${BUILD_DIR:-$ROOT/build}/sparsetrain}"
[ -x "$BIN" ] || "$ROOT/tools/build.sh" --target sparsetrain
source "$ROOT/tools/env.sh"  # SPARSETRAIN_PYTHON draws the plots
set -euo pipefail
SPARSETRAIN_BIN="$BIN" "$ROOT/data/kjv.sh"

D=data/cache/sweep-100m
mkdir -p "$D"
mix() {  # SEQ_LEN WINDOWS EXAMPLE_LENGTH EXAMPLES_PER_TASK OUT
  local window=$(($1 + 1))
  [ -f "$5" ] && return 0
  for task in passkey niah; do
    "$BIN" data synth --task "$task" --length "$3" --count "$4" --seed 7 --out "$D/$task-$3.bin"
  done
  "$BIN" data mix data/cache/kjv/train.bin:2 "$D/passkey-$3.bin:1" "$D/niah-$3.bin:1" \
    --window "$window" --windows "$2" --seed 7 --out "$5"
}
mix 4096 8000 2048 4200 "$D/mix-4k.bin"
mix 16384 200 16385 60 "$D/mix-16k.bin"

"${SPARSETRAIN_PYTHON:-python3}" -c 'import matplotlib' 2>/dev/null ||
  echo "sweep_gpu.sh: matplotlib is missing (pip install matplotlib): the report will have no plots" >&2
"$BIN" sweep recipes/sweep-100m.yaml
