#!/usr/bin/env bash
# The clock with the large model in bf16 autocast (train.mixed_precision=bf16; the scorer and reference stay float32):
# uniform over 8000 steps against the default over 4000 at its own train.lr=0.002, as benchmarks/plan2_clock.sh runs
# them in float32, 3 seeds interleaved seed by seed, one run at a time. On a CPU with bf16 matrix units (AMX) the
# large step is faster, so the same selection is a larger share of it. Usage: bash benchmarks/bf16_clock.sh [OUT];
# SEEDS=1 for a quick look. The table is written to OUT.md.
out="${1:-runs/bf16_clock}"
source "$(dirname "$0")/run_lib.sh"
for seed in $(seq 0 $((seeds - 1))); do
  run uniform_8000 "$seed" selection.policy=uniform train.max_steps=8000 train.eval_every=500 train.mixed_precision=bf16
  run predicted_learnability_4000_lr0.002 "$seed" train.max_steps=4000 train.lr=0.002 train.eval_every=250 \
      train.mixed_precision=bf16
done
python3 benchmarks/budgets.py --seeds="$seeds" "$out/uniform_8000/seed{seed}" \
    "$out/predicted_learnability_4000_lr0.002/seed{seed}" | tee "$out.md"
