#!/usr/bin/env bash
# The default against uniform on a machine with a GPU: the Fashion-MNIST recipe, CNN widths 128 and 32, uniform
# over 8000 steps at lr 0.001 and the default over 4000 at lr 0.002 (its own at width 32), one seed unless SEEDS=N.
# The large model runs on the GPU, the scorer and the selection on the host (as on any machine).
# Usage: bash benchmarks/gpu.sh [OUT [FASHION_MNIST_FOLDER]]   (about 2 minutes a width on one H200)
# EXTRA: more recipe overrides for every run, e.g. EXTRA="selection.plan_steps=4" (uniform ignores plans).
set -euo pipefail
out="${1:-runs/gpu}"
data="${2:-/usr/share/datasets/fashion-mnist}"
common=(data.path="$data" train.checkpoint_every=0 logging.trackers=[] train.threads=4 train.progress=false)
export WANDB_MODE=offline
for width in ${WIDTHS:-128 32}; do
  online-select bench recipes/fashion_mnist_noisy.yaml --seeds "${SEEDS:-1}" --evals-per-run 16 --out "$out/w$width" \
      --budget uniform=8000 --budget predicted_learnability=4000 --lr uniform=0.001 --lr predicted_learnability=0.002 \
      model.width="$width" "${common[@]}" ${EXTRA:-}
done
