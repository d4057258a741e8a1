#!/usr/bin/env bash
# The default selecting once per 4 steps (selection.plan_steps=4) against once per step, and both against
# uniform's best (README, Results): width 32, the default at its own learning rate (0.002), 3 seeds, one run
# at a time, so seconds compare side by side. About 27 minutes on 2 CPU cores with a 20 ms step. (The README's
# row plan4_4000_lr0.002, one joint draw over the 4 steps' candidates, is this script at commit b8b0425.)
# Usage: bash benchmarks/plan_steps.sh [OUT]; SEEDS=1 for a quick look.
set -euo pipefail
out="${1:-runs/plan_steps}"
seeds="${SEEDS:-3}"
recipe=recipes/fashion_mnist_noisy.yaml
common=(train.checkpoint_every=0 logging.trackers=[] train.threads=2)
export WANDB_MODE=offline
online-select bench "$recipe" --seeds "$seeds" --evals-per-run 16 --reuse --out "$out" --budget uniform=8000 \
    --budget predicted_learnability=4000 --lr predicted_learnability=0.002 "${common[@]}"
for seed in $(seq 0 $((seeds - 1))); do
  online-select train --reuse "$recipe" seed=$seed output_dir="$out/plan4_perstep_4000_lr0.002/seed$seed" selection.plan_steps=4 \
      train.max_steps=4000 train.lr=0.002 train.eval_every=250 train.progress=false "${common[@]}"
done
python3 benchmarks/budgets.py --seeds="$seeds" "$out/uniform_8000/seed{seed}" \
    "$out/predicted_learnability_4000_lr0.002/seed{seed}" "$out/plan4_perstep_4000_lr0.002/seed{seed}" | tee "$out.md"
