#!/usr/bin/env bash
# Installs what is missing, builds, prepares the corpus, trains recipes/quickstart.yaml
# (GPU if there is one, else CPU), evaluates the result and says where everything is.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"
tools/build.sh --target sparsetrain
data/kjv.sh
build/sparsetrain train recipes/quickstart.yaml --resume auto "$@"
echo
build/sparsetrain eval runs/quickstart/ckpt/latest
cat <<MSG

Run folder:   runs/quickstart/
  recipe:     runs/quickstart/recipe.resolved.yaml
  metrics:    runs/quickstart/metrics.jsonl   (one JSON object per step; eval lines carry eval_loss)
  checkpoints runs/quickstart/ckpt/            (latest -> $(cat runs/quickstart/ckpt/latest))
Next: build/sparsetrain train recipes/quickstart.yaml --set model.attention.variant=dash --set run.name=quickstart-dash
MSG
