#!/usr/bin/env bash
# One call on the GPU machine: parity (harness grid + the ctest gtest), then timing. The
# binaries are built on the CPU machine and carried (BIN, default build-kd-bin):
#   cmake --build build-kd && mkdir -p build-kd-bin && cp build-kd/{kernel_check,gpu_block_sparse_test} build-kd-bin/
#   run tool: carry [build-kd-bin], command `tools/kernel_dev/device_run.sh`
# Logs go to $OUT (the run tool's folder) or tools/kernel_dev/results.
set -uo pipefail
cd "$(dirname "$0")/../.."
BIN=${BIN:-build-kd-bin}
OUT=${OUT:-tools/kernel_dev/results}
LENGTHS=${LENGTHS:-65536,131072,8192,16384,32768}
# The binaries were linked against the CPU machine's torch wheel; use this machine's copy.
TORCH_LIB="$(python3 -c 'import os, torch; print(os.path.join(os.path.dirname(torch.__file__), "lib"))')"
export LD_LIBRARY_PATH="$TORCH_LIB:${LD_LIBRARY_PATH:-}"
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm,temperature.gpu,power.draw --format=csv \
  | tee "$OUT/smi.txt"
timeout 200 "$BIN/kernel_check" parity > "$OUT/parity.txt" 2>&1
echo "parity rc $?"; grep -E "FAIL|parity:" "$OUT/parity.txt"
timeout 150 "$BIN/gpu_block_sparse_test" > "$OUT/gtest.txt" 2>&1
echo "gtest rc $?"; tail -3 "$OUT/gtest.txt"
[ "${PARITY_ONLY:-0}" = 1 ] && exit 0
timeout 270 "$BIN/kernel_check" bench --lengths "$LENGTHS" --json "$OUT/bench.json" 2>&1 | tee "$OUT/bench.txt"
