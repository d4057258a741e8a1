#!/usr/bin/env bash
# Width 32 over a longer budget: does a perfect label filter clear +1 point over uniform's best given 8000 steps,
# and does the default gain from them? uniform over 8000 steps, the default over 4000 (every step, then
# selection.plan_steps=4) and 8000 at its own train.lr=0.002, and the default behind a perfect label filter over
# 8000, 3 seeds, one run at a time (about 55 minutes on 2 CPU cores with a 20 ms step). Usage:
# bash benchmarks/long_bounds.sh [OUT]; SEEDS=1 for a quick look. The table is written to OUT.md.
out="${1:-runs/long_bounds}"
source "$(dirname "$0")/run_lib.sh"
python3 benchmarks/oracle_table.py "$recipe" "$out/oracle_table.safetensors"
for seed in $(seq 0 $((seeds - 1))); do
  run uniform_8000 "$seed" selection.policy=uniform train.max_steps=8000 train.eval_every=500
  # No refresh and no rejection behind the perfect filter: both would put the large model's verdicts in place of the truth.
  run perfect_filter_8000_lr0.002 "$seed" reference.kind=file reference.path="$out/oracle_table.safetensors" \
      'reference.refresh_at=[]' selection.reject_after=0 train.max_steps=8000 train.lr=0.002 train.eval_every=500
  run predicted_learnability_8000_lr0.002 "$seed" train.max_steps=8000 train.lr=0.002 train.eval_every=500
  run predicted_learnability_4000_lr0.002 "$seed" train.max_steps=4000 train.lr=0.002 train.eval_every=250
  run plan4_4000_lr0.002 "$seed" selection.plan_steps=4 train.max_steps=4000 train.lr=0.002 train.eval_every=250
done
python3 benchmarks/budgets.py --seeds="$seeds" "$out/uniform_8000/seed{seed}" "$out/predicted_learnability_4000_lr0.002/seed{seed}" \
    "$out/plan4_4000_lr0.002/seed{seed}" "$out/predicted_learnability_8000_lr0.002/seed{seed}" \
    "$out/perfect_filter_8000_lr0.002/seed{seed}" | tee "$out.md"
