#!/usr/bin/env bash
# The README's headline (Results, first section): uniform over its best budgets against the recipe's default
# over shorter ones, and the default behind a perfect label filter (the bound), with the CNN of the recipe
# (width 32) and four times as wide (width 128); 3 seeds, one run at a time, so seconds compare side by side.
# About 95 minutes for width 32 and 3x that for width 128 on 2 CPU cores with a 27 ms width-32 step (half that
# on a day with a 14 ms step). Usage: bash benchmarks/headline.sh [OUT [WIDTH...]]
# (WIDTH: 32, 128 or both, the default); SEEDS=1 for a quick look.
set -euo pipefail
out="${1:-runs/headline}"
widths=("${@:2}")
[ ${#widths[@]} -gt 0 ] || widths=(32 128)
seeds="${SEEDS:-3}"
recipe=recipes/fashion_mnist_noisy.yaml
common=(train.checkpoint_every=0 logging.trackers=[] train.threads=2)
export WANDB_MODE=offline
python3 benchmarks/oracle_table.py "$recipe" "$out/oracle_table.safetensors"

headline() {
  local width=$1 uniform_budgets=$2 default_budgets=$3 seed
  online-select bench "$recipe" --seeds "$seeds" --evals-per-run 16 --reuse --out "$out/w$width" \
      --budget uniform="$uniform_budgets" --budget predicted_learnability="$default_budgets" \
      model.width="$width" "${common[@]}"
  # The oracle filter: the same default, its reference table made from the true noise flags, which nothing
  # overwrites (no refresh, no rejection: both would put the large model's verdicts in place of the truth).
  for seed in $(seq 0 $((seeds - 1))); do
    online-select train --reuse "$recipe" seed=$seed output_dir="$out/w$width/oracle_filter_3000/seed$seed" model.width="$width" \
        reference.kind=file reference.path="$out/oracle_table.safetensors" 'reference.refresh_at=[]' \
        selection.reject_after=0 train.max_steps=3000 train.eval_every=187 train.progress=false "${common[@]}"
  done
  python3 benchmarks/budgets.py --seeds="$seeds" --plot="$out/w$width.png" \
      $(for steps in ${uniform_budgets//,/ }; do echo "$out/w$width/uniform_$steps/seed{seed}"; done) \
      $(for steps in ${default_budgets//,/ }; do echo "$out/w$width/predicted_learnability_$steps/seed{seed}"; done) \
      "$out/w$width/oracle_filter_3000/seed{seed}" | tee "$out/w$width.md"
}

for width in "${widths[@]}"; do
  case $width in
    # Width 32: uniform's best budget lies between 6000 and 10000 steps (8000 in earlier sessions, among 4000-12000).
    32) headline 32 6000,8000,10000 3000,4000,6000 ;;
    # Width 128 (1.9M parameters, a 6x slower step): uniform's best budget was 8000 among 4000-10000 steps.
    128) headline 128 6000,8000 3000 ;;
    *) echo "headline.sh: no headline for width $width (32 or 128)" >&2; exit 2 ;;
  esac
done
