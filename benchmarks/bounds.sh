#!/usr/bin/env bash
# How far the width-32 targets are (README, Results): the default at its own learning rate (0.002) over 4000 steps,
# the same default behind a perfect label filter (its reference table made from the true noise flags) and on clean
# labels (data.label_noise=0), all against uniform's best budget (8000 steps at 0.001) on the noisy labels; 3 seeds,
# one run at a time, so seconds compare side by side. About 40 minutes on 2 CPU cores with a 20-25 ms step.
# Usage: bash benchmarks/bounds.sh [OUT]; SEEDS=1 for a quick look.
set -euo pipefail
out="${1:-runs/bounds}"
seeds="${SEEDS:-3}"
recipe=recipes/fashion_mnist_noisy.yaml
common=(train.checkpoint_every=0 logging.trackers=[] train.threads=2)
default_run=(train.max_steps=4000 train.lr=0.002 train.eval_every=250 train.progress=false "${common[@]}")
export WANDB_MODE=offline
online-select bench "$recipe" --seeds "$seeds" --evals-per-run 16 --reuse --out "$out" --budget uniform=8000 \
    --budget predicted_learnability=4000 --lr predicted_learnability=0.002 "${common[@]}"
python3 benchmarks/oracle_table.py "$recipe" "$out/oracle_table.safetensors"
for seed in $(seq 0 $((seeds - 1))); do
  # No refresh and no rejection behind the perfect filter: both would put the large model's verdicts in place of the truth.
  online-select train --reuse "$recipe" seed=$seed output_dir="$out/perfect_filter_4000_lr0.002/seed$seed" \
      reference.kind=file reference.path="$out/oracle_table.safetensors" 'reference.refresh_at=[]' selection.reject_after=0 \
      "${default_run[@]}"
  online-select train --reuse "$recipe" seed=$seed output_dir="$out/clean_labels_4000_lr0.002/seed$seed" data.label_noise=0 \
      "${default_run[@]}"
done
python3 benchmarks/budgets.py --seeds="$seeds" "$out/uniform_8000/seed{seed}" "$out/predicted_learnability_4000_lr0.002/seed{seed}" \
    "$out/perfect_filter_4000_lr0.002/seed{seed}" "$out/clean_labels_4000_lr0.002/seed{seed}" | tee "$out.md"
