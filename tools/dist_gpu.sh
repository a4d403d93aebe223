#!/usr/bin/env bash
# Sharded training on the GPUs of one host, measured (README "Several GPUs and nodes"): builds,
# runs the GPU tests (Sharded.* needs 2 GPUs), then the 1B model at 8K context on 1, 2, 4 ...
# GPUs up to all of them (tokens/s per GPU, scaling efficiency, peak memory per GPU) and, with
# 4 or more GPUs, the 8B-like config (configs/minicpm4-8b-like.yaml, too big for one GPU
# unsharded) sharded over 4. Logs, metrics and dist.json go to $OUT (default runs/dist-gpu).
#   tools/dist_gpu.sh            STEPS=12 by default; throughput is the mean of steps 5..STEPS
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-runs/dist-gpu}
STEPS=${STEPS:-12}
mkdir -p "$OUT"
export NCCL_NVLS_ENABLE=0  # NVLink multicast can take shared GPUs out of service
export BUILD_DIR=${BUILD_DIR:-build} JOBS=${JOBS:-$(nproc)}
n_gpus=$(nvidia-smi -L | wc -l)
{ nvidia-smi -L; date -u; git log -1 --format=%h 2>/dev/null || cat COMMIT 2>/dev/null; } | tee "$OUT/gpus.txt"
tools/build.sh --target sparsetrain_tests sparsetrain > "$OUT/build.log" 2>&1 || { tail -40 "$OUT/build.log"; exit 1; }
source tools/env.sh > /dev/null 2>&1
timeout 600 "$BUILD_DIR/sparsetrain_tests" --gtest_filter='Sharded.*:ActivationCheckpointing.*:*Gpu*' > "$OUT/gpu_tests.log" 2>&1
echo "GPU tests rc=$?"; grep -E "^\[  (PASSED|FAILED|SKIPPED)|FAILED  \]" "$OUT/gpu_tests.log" | head -20

run() {  # name n_gpus extra-args...
  local name=$1 n=$2; shift 2
  timeout 900 "$BUILD_DIR/sparsetrain" launch --nproc-per-node "$n" -- train recipes/1b-8k.yaml \
    --set train.steps="$STEPS" --set run.name="$name" --set run.out_dir="$OUT/runs" \
    --set logging.progress=plain "$@" > "$OUT/$name.log" 2>&1
  echo "$name rc=$?"
}
counts=(1)
for n in 2 4 8; do [ "$n" -le "$n_gpus" ] && counts+=("$n"); done
for n in "${counts[@]}"; do run "1b-8k-gpu$n" "$n"; done
[ "$n_gpus" -ge 4 ] && run 8b-like-gpu4 4 --set model.config=configs/minicpm4-8b-like.yaml --set train.micro_batch=1 \
  --set train.activation_checkpointing=true

python3 - "$OUT" <<'PY'
import glob, json, os, sys
out = sys.argv[1]
rows = {}
for path in sorted(glob.glob(os.path.join(out, "runs", "*", "metrics.jsonl"))):
    name = os.path.basename(os.path.dirname(path))
    steps = [json.loads(l) for l in open(path) if '"tokens_per_s"' in l]
    tail = steps[4:] or steps
    n = int(name.rsplit("gpu", 1)[1])
    tps = sum(r["tokens_per_s"] for r in tail) / len(tail)
    rows[name] = {"gpus": n, "steps": len(steps), "tokens_per_s": round(tps), "per_gpu": round(tps / n),
                  "mfu": round(sum(r["mfu"] for r in tail) / len(tail), 4),
                  "peak_mem_gib": round(max(r.get("peak_mem_gib", 0) for r in steps), 1),
                  "last_loss": round(steps[-1]["loss"], 4) if steps else None}
base = rows.get("1b-8k-gpu1", {}).get("per_gpu")
print("| run | GPUs | tokens/s | per GPU | scaling efficiency | MFU | peak memory per GPU |")
print("| --- | --- | --- | --- | --- | --- | --- |")
for name, r in rows.items():
    eff = f"{r['per_gpu'] / base:.0%}" if base and name.startswith("1b") else "-"
    r["scaling_efficiency"] = None if eff == "-" else round(r["per_gpu"] / base, 3)
    print(f"| {name} | {r['gpus']} | {r['tokens_per_s']:,} | {r['per_gpu']:,} | {eff} | {r['mfu']:.1%} | {r['peak_mem_gib']} GiB |")
json.dump(rows, open(os.path.join(out, "dist.json"), "w"), indent=1)
PY
