#!/usr/bin/env bash
# The quickstart corpus: the King James Bible from Debian's bible-kjv package (installed by
# tools/env.sh), as byte-level token shards data/cache/kjv/{train,val}.bin. Idempotent.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
OUT="$ROOT/data/cache/kjv"
BIN="${SPARSETRAIN_BIN:-$ROOT/build/sparsetrain}"
[ -f "$OUT/train.bin" ] && [ -f "$OUT/val.bin" ] && exit 0
command -v bible >/dev/null || { echo "data/kjv.sh: the 'bible' program is missing: apt-get install bible-kjv" >&2; exit 1; }
mkdir -p "$OUT"
bible gen1:1-rev22:21 > "$OUT/kjv.txt"
"$BIN" data tokenize "$OUT/kjv.txt" --out "$OUT/train.bin" --val-fraction 0.02 --val-out "$OUT/val.bin"
