#!/usr/bin/env bash
# Every Fashion-MNIST figure in the README's Results section, in one go (about 150 minutes on 2 CPU cores).
# Usage: bash benchmarks/fashion_mnist.sh [OUT]      (needs /usr/share/datasets/fashion-mnist and data/mnist)
set -euo pipefail
out="${1:-runs/results}"
recipe=recipes/fashion_mnist_noisy.yaml
common=(train.schedule=cosine train.eval_every=250 train.checkpoint_every=0 logging.trackers=[] train.threads=2)
export WANDB_MODE=offline

# 1. The main table: 3 seeds, 4000 steps (4.7 epochs of uniform's k=64 samples), 30% symmetric label noise.
online-select bench "$recipe" --policies uniform,reference_filter,predicted_learnability --seeds 3 \
    --targets 0.85,0.87,0.89 --out "$out/main" train.max_steps=4000 "${common[@]}"

# 2. Cheap scoring vs exact scoring (a large-model forward on all 640 candidates), early phase, one seed.
online-select bench "$recipe" --policies uniform,predicted_learnability,learnability,reducible_loss --seeds 1 \
    --targets 0.85,0.87 --out "$out/oracles" train.max_steps=1500 "${common[@]}"

# 3. B/k sweep of the default policy (k = 64 fixed), one seed.
online-select bench "$recipe" --policies uniform,predicted_learnability --seeds 1 --sweep 2,5,10,20 \
    --targets 0.85,0.87 --out "$out/sweep" train.max_steps=2000 "${common[@]}"

# 4. Other data and noise levels, one seed each.
scripts/fetch_mnist.sh data/mnist
online-select bench "$recipe" --policies uniform,predicted_learnability --seeds 1 --targets 0.95,0.97 \
    --out "$out/mnist30" data.path=data/mnist train.max_steps=3000 "${common[@]}"
for noise in 0.1 0.5; do
  online-select bench "$recipe" --policies uniform,predicted_learnability --seeds 1 --targets 0.85,0.87 \
      --out "$out/fmnist$noise" data.label_noise=$noise train.max_steps=3000 "${common[@]}"
done

# 5. Host memory over a long run: peak RSS at 1k and 10k steps (metrics.jsonl: sys/peak_rss_mb).
online-select train "$recipe" output_dir="$out/long10k" train.max_steps=10000 train.eval_every=1000 \
    train.checkpoint_every=0 logging.trackers=[] train.threads=2
python3 benchmarks/peak_rss.py "$out/long10k" | tee "$out/long10k/rss.md"

# 6. Which scorer ranks candidates best (Spearman vs the exact large-model loss), one run.
python3 benchmarks/scorer_study.py --steps=3000 --audit-every=250 train.threads=2 | tee "$out/scorer_study.md"
sed -n "/^Scorer study/,\$p" "$out/scorer_study.md" > "$out/scorer_table.md"

# 7. What each lever gives (scorer update interval, warm-up, exploration, temperature, top-k), one seed.
python3 benchmarks/levers.py "$out/levers" train.max_steps=1500 "${common[@]}" | tee "$out/levers.md"

# 8. Noise levers at the long budget: the large model re-judging the reference (reference.refresh_at) and
#    rejecting labels it cannot learn (selection.reject_after), 3 seeds, 4000 steps.
python3 benchmarks/reference_refresh.py "$out/refresh" 3 train.max_steps=4000 "${common[@]}" | tee "$out/refresh.md"
python3 benchmarks/reference_refresh.py "$out/refresh1500" 1 train.max_steps=1500 "${common[@]}" | tee "$out/refresh1500.md"
for seed in 0 1 2; do  # both levers and scorer.update_every=4
  online-select train "$recipe" seed=$seed output_dir="$out/levers_ue4/seed$seed" train.max_steps=4000 "${common[@]}" \
      'reference.refresh_at=[0.25,0.5,0.75]' selection.reject_after=2 selection.label_floor=0.05 scorer.update_every=4
done

# 9. The noise ceiling: clean labels, the reference's filter and an oracle filter, one seed, 4000 steps.
python3 benchmarks/noise_ceiling.py "$out/noise_ceiling" train.max_steps=4000 "${common[@]}" | tee "$out/noise_ceiling.md"
