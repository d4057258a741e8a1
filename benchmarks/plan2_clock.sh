#!/usr/bin/env bash
# The clock at width 32 on this machine: uniform over 8000 steps against the default over 4000 at its own
# train.lr=0.002, selecting every step and once per 2 steps (selection.plan_steps=2: one scoring pass and one
# learning step for 2 steps' candidates, scores up to 1 step stale), 3 seeds, the three interleaved seed by seed,
# one run at a time (about 18 minutes on 2 CPU cores with a 17-20 ms step). Usage:
# bash benchmarks/plan2_clock.sh [OUT]; SEEDS=1 for a quick look. The table is written to OUT.md.
out="${1:-runs/plan2_clock}"
source "$(dirname "$0")/run_lib.sh"
for seed in $(seq 0 $((seeds - 1))); do
  run uniform_8000 "$seed" selection.policy=uniform train.max_steps=8000 train.eval_every=500
  run predicted_learnability_4000_lr0.002 "$seed" train.max_steps=4000 train.lr=0.002 train.eval_every=250
  run plan2_4000_lr0.002 "$seed" selection.plan_steps=2 train.max_steps=4000 train.lr=0.002 train.eval_every=250
done
python3 benchmarks/budgets.py --seeds="$seeds" "$out/uniform_8000/seed{seed}" "$out/predicted_learnability_4000_lr0.002/seed{seed}" \
    "$out/plan2_4000_lr0.002/seed{seed}" | tee "$out.md"
