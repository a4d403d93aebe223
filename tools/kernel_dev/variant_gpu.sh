#!/usr/bin/env bash
# One device call for a sparse variant on the kernels, run in a copy of the committed tree on
# the GPU machine: build, every GPU test, a short 125M training run at 16K (impl auto, and
# impl reference for REFERENCE_STEPS steps if set), `bench attention --variant V` at 16K..64K
# and at 128K. Logs, metrics and JSON go to $OUT (the run tool's folder).
#   here: rm -rf .snap-kern && mkdir -p .snap-kern/data/cache && git archive HEAD | tar -x -C .snap-kern
#         && cp -r data/cache/kjv .snap-kern/data/cache/
#   run tool: carry [".snap-kern"], command `cd .snap-kern && VARIANT=infllmv2 tools/kernel_dev/variant_gpu.sh`
set -uo pipefail
cd "$(dirname "$0")/../.."
V=${VARIANT:-infllmv2}
OUT=${OUT:-tools/kernel_dev/results}
export SPARSETRAIN_NO_INSTALL=1 BUILD_DIR=$PWD/build-gpu JOBS=16
T0=$(date +%s)
# note, not log: tools/env.sh defines a log of its own.
note() { echo "$* ($(( $(date +%s) - T0 )) s)" | tee -a "$OUT/run.log"; }
{ nvidia-smi --query-gpu=name,driver_version --format=csv,noheader; date -u; } | tee "$OUT/run.log"
tools/build.sh --target sparsetrain_tests sparsetrain > /tmp/build.log 2>&1 || { tail -40 /tmp/build.log; exit 1; }
note "build done"
source tools/env.sh > /dev/null 2>&1
timeout 240 build-gpu/sparsetrain_tests --gtest_filter='*Gpu*:ActivationCheckpointing.*' > "$OUT/gpu_tests.log" 2>&1
note "gpu tests rc=$?"
grep -E "^\[  (PASSED|FAILED|SKIPPED) |^\[==========\]" "$OUT/gpu_tests.log" | tee -a "$OUT/run.log"

# The README's 125M-at-16K command (tiny recipe, 125M config), 8 steps unless told.
train() {  # impl steps
  timeout 240 build-gpu/sparsetrain train recipes/tiny.yaml --set model.config=configs/125m.yaml \
    --set model.attention.variant="$V" --set model.attention.impl="$1" --set train.seq_len=16384 \
    --set train.steps="$2" --set train.micro_batch=1 --set train.precision=bf16 --set run.name="$V-$1" \
    --set run.out_dir=/tmp/runs --set logging.progress=plain >> "$OUT/run.log" 2>&1
  note "train $V impl $1 rc=$?"
  cp "/tmp/runs/$V-$1/metrics.jsonl" "$OUT/train_$1.metrics.jsonl"
}
train auto "${TRAIN_STEPS:-8}"
timeout 240 build-gpu/sparsetrain bench attention --variant "$V" --lengths 16K,32K,64K --json "$OUT/bench.json" \
  >> "$OUT/run.log" 2>&1
note "bench 16K-64K rc=$?"
timeout 180 build-gpu/sparsetrain bench attention --variant "$V" --sparsities 0.875 --lengths 128K \
  --json "$OUT/bench128.json" >> "$OUT/run.log" 2>&1
note "bench 128K rc=$?"
[ -n "${REFERENCE_STEPS:-}" ] && train reference "$REFERENCE_STEPS"
exit 0
