#!/usr/bin/env bash
# Every Fashion-MNIST figure in docs/results_history.md (the README's earlier measurements), in one go (about 1150 minutes on 2 CPU cores).
# Usage: bash benchmarks/fashion_mnist.sh [OUT]      (needs /usr/share/datasets/fashion-mnist and data/mnist)
set -euo pipefail
out="${1:-runs/results}"
recipe=recipes/fashion_mnist_noisy.yaml
common=(train.schedule=cosine train.eval_every=250 train.checkpoint_every=0 logging.trackers=[] train.threads=2)
# Sections 1-20 ran before the recipe's default got the label floor 0.05, rejection after 2 visits and a scorer
# update every 4 steps (section 21), and sections 1-22 before it got one refresh on long runs (refresh_at: auto,
# section 23). They pass the default they ran with first, so every override after it still wins.
no_refresh=(reference.refresh_at=[])
earlier=(selection.label_floor=auto selection.reject_after=0 scorer.update_every=1 "${no_refresh[@]}")
export WANDB_MODE=offline

# 1. The main table: 3 seeds, 4000 steps (4.7 epochs of uniform's k=64 samples), 30% symmetric label noise.
online-select bench "$recipe" "${earlier[@]}" --policies uniform,reference_filter,predicted_learnability --seeds 3 \
    --targets 0.85,0.87,0.89 --out "$out/main" train.max_steps=4000 "${common[@]}"

# 2. Cheap scoring vs exact scoring (a large-model forward on all 640 candidates), early phase, one seed.
online-select bench "$recipe" "${earlier[@]}" --policies uniform,predicted_learnability,learnability,reducible_loss --seeds 1 \
    --targets 0.85,0.87 --out "$out/oracles" train.max_steps=1500 "${common[@]}"

# 3. B/k sweep of the default policy (k = 64 fixed), one seed.
online-select bench "$recipe" "${earlier[@]}" --policies uniform,predicted_learnability --seeds 1 --sweep 2,5,10,20 \
    --targets 0.85,0.87 --out "$out/sweep" train.max_steps=2000 "${common[@]}"

# 4. Other data and noise levels, one seed each.
scripts/fetch_mnist.sh data/mnist
online-select bench "$recipe" "${earlier[@]}" --policies uniform,predicted_learnability --seeds 1 --targets 0.95,0.97 \
    --out "$out/mnist30" data.path=data/mnist train.max_steps=3000 "${common[@]}"
for noise in 0.1 0.5; do
  online-select bench "$recipe" "${earlier[@]}" --policies uniform,predicted_learnability --seeds 1 --targets 0.85,0.87 \
      --out "$out/fmnist$noise" data.label_noise=$noise train.max_steps=3000 "${common[@]}"
done

# 5. Host memory over a long run: peak RSS at 1k and 10k steps (metrics.jsonl: sys/peak_rss_mb).
online-select train "$recipe" "${earlier[@]}" output_dir="$out/long10k" train.max_steps=10000 train.eval_every=1000 \
    train.checkpoint_every=0 logging.trackers=[] train.threads=2
python3 benchmarks/peak_rss.py "$out/long10k" | tee "$out/long10k/rss.md"

# 6. Which scorer ranks candidates best (Spearman vs the exact large-model loss), one run.
python3 benchmarks/scorer_study.py --steps=3000 --audit-every=250 train.threads=2 | tee "$out/scorer_study.md"
sed -n "/^Scorer study/,\$p" "$out/scorer_study.md" > "$out/scorer_table.md"

# 7. What each lever gives (scorer update interval, warm-up, exploration, temperature, top-k), one seed.
python3 benchmarks/levers.py "$out/levers" "${earlier[@]}" train.max_steps=1500 "${common[@]}" | tee "$out/levers.md"

# 8. Noise levers at the long budget: the large model re-judging the reference (reference.refresh_at) and
#    rejecting labels it cannot learn (selection.reject_after), then with scorer.update_every=4, one refresh
#    instead of three, an annealed temperature and rejection after 3 visits; 3 seeds, 4000 steps. The short budget
#    with the first five variants.
python3 benchmarks/reference_refresh.py "$out/refresh" 3 "${earlier[@]}" train.max_steps=4000 "${common[@]}" | tee "$out/refresh.md"
python3 benchmarks/reference_refresh.py "$out/refresh1500" 1 "${earlier[@]}" \
    --variants=uniform,predicted_learnability,refresh_at_0.25_0.5_0.75,floor_0.05_reject_after_2_visits,floor_0.05_reject_after_2_visits_refresh_x3 \
    train.max_steps=1500 "${common[@]}" | tee "$out/refresh1500.md"

# 9. The noise ceiling: clean labels, the reference's filter, an oracle filter and oracle hard-mining (15 min), one seed, 4000 steps.
python3 benchmarks/noise_ceiling.py "$out/noise_ceiling" "${earlier[@]}" train.max_steps=4000 "${common[@]}" | tee "$out/noise_ceiling.md"
#    Oracle hard-mining with hard top-k instead of sampling (15 min), read against the noisy uniform run.
online-select train "$recipe" "${earlier[@]}" output_dir="$out/noise_ceiling_extra/oracle_hard_mining_top_k" selection.policy=learnability \
    reference.kind=file reference.path="$out/noise_ceiling/oracle_table.safetensors" selection.rule=top_k \
    train.max_steps=4000 "${common[@]}"
python3 benchmarks/steps_to_best.py "$out/noise_ceiling/uniform/noisy" "$out/noise_ceiling_extra/oracle_hard_mining_top_k" \
    | tee "$out/oracle_top_k.md"

# 10. A constant learning rate (the prior-art protocol: uniform peaks, then memorises flipped labels), 8000 steps.
python3 benchmarks/reference_refresh.py "$out/const" 3 "${earlier[@]}" \
    --variants=uniform,predicted_learnability,floor_0.05_reject_after_2_visits_refresh_x3_scorer_update_every_4 \
    train.max_steps=8000 "${common[@]}" train.schedule=constant | tee "$out/const.md"

# 11. A wider large model (CNN width 64: 0.88M parameters, about 3x the step time): the same selection is a smaller share of the clock.
python3 benchmarks/reference_refresh.py "$out/width64" 3 "${earlier[@]}" \
    --variants=uniform,predicted_learnability,floor_0.05_reject_after_2_visits_refresh_x3_scorer_update_every_4,floor_0.05_reject_after_2_visits_refresh_once_at_0.25_scorer_update_every_4 \
    model.width=64 train.max_steps=4000 "${common[@]}" | tee "$out/width64.md"
#     and the oracle filter at that width (one seed; the oracle table comes from section 9).
online-select train "$recipe" "${earlier[@]}" output_dir="$out/width64_oracle_filter" selection.policy=reference_filter reference.kind=file \
    reference.path="$out/noise_ceiling/oracle_table.safetensors" model.width=64 train.max_steps=4000 "${common[@]}"
python3 benchmarks/steps_to_best.py "$out/width64/uniform/seed0" "$out/width64_oracle_filter" \
    "$out/width64/floor_0.05_reject_after_2_visits_refresh_x3_scorer_update_every_4/seed0" | tee "$out/width64_oracle_filter.md"
#     and the default policy's scorer behind the same oracle filter, right after a uniform run of its own (seconds compared).
online-select train "$recipe" "${earlier[@]}" output_dir="$out/width64_side/uniform" selection.policy=uniform model.width=64 \
    train.max_steps=4000 "${common[@]}"
online-select train "$recipe" "${earlier[@]}" output_dir="$out/width64_side/oracle_scored" selection.policy=predicted_learnability \
    reference.kind=file reference.path="$out/noise_ceiling/oracle_table.safetensors" model.width=64 \
    train.max_steps=4000 "${common[@]}"
python3 benchmarks/steps_to_best.py "$out/width64_side/uniform" "$out/width64_side/oracle_scored" | tee "$out/width64_side.md"

# 12. Which of the label filter's errors costs the accuracy: the default scorer behind tables that keep the twin-halves
#     reference's noise leak, its clean exclusions, both or neither (3 seeds for the two without the leak, one for all four).
python3 benchmarks/filter_errors.py "$out/filter_errors" 3 "${earlier[@]}" --tables=clean_exclusions_only,oracle \
    train.max_steps=4000 "${common[@]}" | tee "$out/filter_errors3.md"
python3 benchmarks/filter_errors.py "$out/filter_errors" 1 "${earlier[@]}" train.max_steps=4000 "${common[@]}" | tee "$out/filter_errors.md"
#     Rejecting after the first visit instead of the second (the levers + scorer.update_every=4; the third visit is in
#     section 8), one seed, read against section 8's seed 0.
levers=(selection.policy=predicted_learnability selection.label_floor=0.05 selection.reject_after=1 scorer.update_every=4)
online-select train "$recipe" "${earlier[@]}" output_dir="$out/reject_visits/after1_refresh_x3" "${levers[@]}" \
    reference.refresh_at=[0.25,0.5,0.75] train.max_steps=4000 "${common[@]}"
online-select train "$recipe" "${earlier[@]}" output_dir="$out/reject_visits/after1_no_refresh" "${levers[@]}" train.max_steps=4000 "${common[@]}"
python3 benchmarks/steps_to_best.py "$out/refresh/uniform/seed0" \
    "$out/refresh/floor_0.05_reject_after_2_visits_refresh_x3_scorer_update_every_4/seed0" \
    "$out/reject_visits/after1_refresh_x3" "$out/reject_visits/after1_no_refresh" | tee "$out/reject_visits/after1.md"

# 13. References that cost more than the recipe's (more folds, rounds, an ensemble, the large model's CNN): their
#     errors against the true noise flags, 3 seeds; then the levers behind the 3-rounds table and behind the recipe's
#     own reference, side by side (six runs at once, one thread each: steps and accuracy compare, seconds do not).
python3 benchmarks/reference_quality.py 3 --save="$out/reference_quality" train.threads=2 | tee "$out/reference_quality.md"
levers=(selection.policy=predicted_learnability selection.label_floor=0.05 selection.reject_after=2 scorer.update_every=4
        reference.refresh_at=[0.25,0.5,0.75])
parallel=(train.max_steps=4000 "${common[@]}" train.threads=1 train.progress=false)
for seed in 0 1 2; do
  online-select train "$recipe" "${earlier[@]}" seed=$seed output_dir="$out/rounds_e2e/levers/seed$seed" "${levers[@]}" "${parallel[@]}" &
  online-select train "$recipe" "${earlier[@]}" seed=$seed output_dir="$out/rounds_e2e/rounds3/seed$seed" "${levers[@]}" "${parallel[@]}" \
      reference.kind=file reference.path="$out/reference_quality/seed$seed/mlp_twin_halves_3_rounds.safetensors" &
done
wait
python3 benchmarks/steps_to_best.py --seeds=3 "$out/refresh/uniform/seed{seed}" "$out/rounds_e2e/levers/seed{seed}" \
    "$out/rounds_e2e/rounds3/seed{seed}" | tee "$out/rounds_e2e.md"

# 14. The levers behind the two-architecture reference of section 13 (the MLP and the CNN, probabilities averaged),
#     with uniform, the levers behind the recipe's reference and with less exploration (explore 0.05): 3 seeds, one
#     run at a time (seconds compare too).
for seed in 0 1 2; do
  online-select train "$recipe" "${earlier[@]}" seed=$seed output_dir="$out/mix/uniform/seed$seed" selection.policy=uniform \
      train.max_steps=4000 "${common[@]}"
  online-select train "$recipe" "${earlier[@]}" seed=$seed output_dir="$out/mix/levers/seed$seed" "${levers[@]}" train.max_steps=4000 "${common[@]}"
  online-select train "$recipe" "${earlier[@]}" seed=$seed output_dir="$out/mix/two_architectures/seed$seed" "${levers[@]}" \
      train.max_steps=4000 "${common[@]}" reference.kind=file \
      reference.path="$out/reference_quality/seed$seed/mlp_twin_halves_cnn_twin_halves_probabilities_averaged.safetensors"
  online-select train "$recipe" "${earlier[@]}" seed=$seed output_dir="$out/mix/levers_explore005/seed$seed" "${levers[@]}" \
      train.max_steps=4000 "${common[@]}" selection.explore=0.05
done
python3 benchmarks/steps_to_best.py --seeds=3 "$out/mix/uniform/seed{seed}" "$out/mix/levers/seed{seed}" \
    "$out/mix/two_architectures/seed{seed}" "$out/mix/levers_explore005/seed{seed}" | tee "$out/two_architectures.md"

# 15-17. Budgets: each run with its cosine schedule over its own budget (16 evals each), one run at a time.
#     budget_runs FOLDER "SEEDS" "BUDGETS" "RUNS" [OVERRIDES...]: RUNS among uniform, default (the recipe, after
#     the overrides in `base`), earlier (the default before section 21) and levers; the table reads "steps to
#     uniform's best" against uniform's best budget (budgets.py).
budget_runs() {
  local folder=$1 seeds=$2 budgets=$3 runs=$4 seed steps run policy
  shift 4
  for seed in $seeds; do
    for steps in $budgets; do
      for run in $runs; do
        case $run in
          uniform) policy=(selection.policy=uniform) ;;
          default) policy=() ;;
          earlier) policy=("${earlier[@]}") ;;
          levers) policy=("${levers[@]}") ;;
          once25) policy=('reference.refresh_at=[0.25]') ;;
          once50) policy=('reference.refresh_at=[0.5]') ;;
          auto) policy=(reference.refresh_at=auto) ;;
        esac
        online-select train "$recipe" "${base[@]}" seed=$seed output_dir="$out/$folder/${run}_$steps/seed$seed" "${policy[@]}" \
            train.max_steps=$steps "${common[@]}" train.eval_every=$((steps / 16)) "$@"
      done
    done
  done
  [[ " $runs " == *" uniform "* ]] || return 0  # the table reads every run against uniform; a call without it is read later
  python3 benchmarks/budgets.py --seeds=$(wc -w <<< "$seeds") $(for steps in $budgets; do for run in $runs; do
    echo "$out/$folder/${run}_$steps/seed{seed}"; done; done) | tee "$out/$folder.md"
}
base=("${earlier[@]}")
# 15. uniform, the default and the levers, 3 seeds.
budget_runs budget "0 1 2" "1333 2000 4000" "uniform default levers"
# 16. The CNN twice as wide (model.width=64): uniform and the levers, 3 seeds; then both at 8000 steps.
budget_runs budget_w64 "0 1 2" "1333 2000 3000 4000" "uniform levers" model.width=64
budget_runs budget_w64_long "0 1 2" "8000" "uniform levers" model.width=64
# 17. Long budgets (8000 and 12000 steps: 8.5 and 12.8 epochs of the trained samples), 3 seeds; then at 8000 steps
#     the levers sampling almost uniformly among the labels they keep (temperature 10), 3 seeds, and behind an
#     oracle label filter (section 9's table: reference_filter, and the default policy over 3000, 4000 and 8000 steps),
#     seed 0.
budget_runs budget_long "0 1 2" "8000 12000" "uniform default levers"
for seed in 0 1 2; do
  online-select train "$recipe" "${earlier[@]}" seed=$seed output_dir="$out/budget_long_probe/levers_t10.0_8000/seed$seed" "${levers[@]}" \
      selection.temperature=10.0 train.max_steps=8000 "${common[@]}" train.eval_every=500
done
oracle=(reference.kind=file reference.path="$out/noise_ceiling/oracle_table.safetensors")
online-select train "$recipe" "${earlier[@]}" seed=0 output_dir="$out/budget_long_oracle/oracle_filter_8000/seed0" selection.policy=reference_filter \
    "${oracle[@]}" train.max_steps=8000 "${common[@]}" train.eval_every=500
for steps in 3000 4000 8000; do
  online-select train "$recipe" "${earlier[@]}" seed=0 output_dir="$out/budget_long_oracle/oracle_scored_$steps/seed0" "${oracle[@]}" \
      train.max_steps=$steps "${common[@]}" train.eval_every=$((steps / 16))
done

# 18. Is 8000 steps uniform's best budget? Uniform over 6000 and 10000 steps at width 32, over 6000 and 12000 at
#     width 64, 3 seeds (the README reads them with the 8000-step runs of sections 16 and 17).
budget_runs budget_long_uniform "0 1 2" "6000 10000" "uniform"
budget_runs budget_w64_long_uniform "0 1 2" "6000 12000" "uniform" model.width=64

# 19. What a refresh's large-model forward costs per sample, by batch size (it runs in batches of selection.keep);
#     then width 64 again with that batch (64, where it was 256): uniform and the levers at 2500 and 3000 steps and
#     uniform at 8000, 3 seeds, one session, so the clock reading against uniform's plateau is side by side.
python3 benchmarks/refresh_cost.py | tee "$out/refresh_cost.md"
budget_runs budget_w64_refresh "0 1 2" "2500 3000" "uniform levers" model.width=64
budget_runs budget_w64_refresh_long "0 1 2" "8000" "uniform" model.width=64
#     and the levers with one refresh instead of three (the later refresh_at overrides theirs), 3000 steps.
for seed in 0 1 2; do
  online-select train "$recipe" "${earlier[@]}" seed=$seed output_dir="$out/budget_w64_refresh/levers_once_3000/seed$seed" "${levers[@]}" \
      'reference.refresh_at=[0.25]' train.max_steps=3000 "${common[@]}" train.eval_every=187 model.width=64
done
#     and the default behind the oracle label filter (section 17's oracle overrides: section 9's table), 3000 steps, seed 0.
online-select train "$recipe" "${earlier[@]}" seed=0 output_dir="$out/budget_w64_oracle/oracle_scored_3000/seed0" "${oracle[@]}" \
    model.width=64 train.max_steps=3000 "${common[@]}" train.eval_every=187
python3 benchmarks/steps_to_best.py "$out/budget_w64_long_uniform/uniform_6000/seed0" "$out/budget_w64_oracle/oracle_scored_3000/seed0" \
    "$out/budget_w64_refresh/levers_3000/seed0" | tee "$out/budget_w64_oracle.md"

# 20. The CNN four times as wide (model.width=128: 1.9M parameters, about 3x width 64's step): uniform over 4000
#     steps (seeds 0-1), over 6000 and 8000 (3 seeds), and the levers over 3000 (3 seeds), one run at a time.
budget_runs budget_w128 "0 1" "4000" "uniform" model.width=128
budget_runs budget_w128 "0 1 2" "6000 8000" "uniform" model.width=128
budget_runs budget_w128 "0 1 2" "3000" "levers" model.width=128
#     and uniform over 10000 steps, 3 seeds (its 8000-step run still climbs at the end on seed 0).
budget_runs budget_w128 "0 1 2" "10000" "uniform" model.width=128
python3 benchmarks/budgets.py --seeds=3 "$out"/budget_w128/{uniform_6000,uniform_8000,uniform_10000}/'seed{seed}' \
    | tee "$out/budget_w128_uniform.md"
python3 benchmarks/budgets.py --seeds=3 "$out"/budget_w128/{uniform_6000,uniform_8000,levers_3000}/'seed{seed}' \
    | tee "$out/budget_w128.md"

# 21. The recipe's default since this section: the label floor 0.05, rejection after 2 visits and a scorer update
#     every 4 steps (the levers without the refreshes, which cost the clock on short budgets), against the earlier
#     default and uniform over 1500 steps (the `make demo` budget), and against the earlier default over 3000 steps
#     at width 128, read with section 20's uniform runs; 3 seeds, one run at a time.
base=("${no_refresh[@]}")
budget_runs default_stop20 "0 1 2" "1500" "uniform earlier default"
budget_runs default_stop20_w128 "0 1 2" "3000" "earlier default" model.width=128
python3 benchmarks/budgets.py --seeds=3 "$out"/budget_w128/{uniform_6000,uniform_8000,levers_3000}/'seed{seed}' \
    "$out"/default_stop20_w128/{earlier,default}_3000/'seed{seed}' | tee "$out/default_stop20_w128.md"

# 22. The default of section 21 where it had not run: width 64 over 3000 steps (read against section 16-19's uniform
#     and levers runs) and width 32 over 4000 and 8000 steps (read against section 15 and 17's), 3 seeds.
base=("${no_refresh[@]}")
budget_runs default_stop21_w64 "0 1 2" "3000" "default" model.width=64
budget_runs default_stop21_long "0 1 2" "4000 8000" "default"
python3 benchmarks/budgets.py --seeds=3 "$out"/budget_w64_long_uniform/uniform_6000/'seed{seed}' \
    "$out"/budget_w64_refresh/{uniform,levers,levers_once}_3000/'seed{seed}' "$out"/default_stop21_w64/default_3000/'seed{seed}' \
    | tee "$out/default_stop21_w64.md"
python3 benchmarks/budgets.py --seeds=3 "$out"/budget_long/uniform_8000/'seed{seed}' "$out"/budget/{uniform,levers}_4000/'seed{seed}' \
    "$out"/default_stop21_long/default_{4000,8000}/'seed{seed}' "$out"/budget_long/levers_8000/'seed{seed}' \
    | tee "$out/default_stop21_long.md"

# 23. One refresh on long runs (the recipe's refresh_at: auto since this section): uniform, section 21's default
#     (no refresh) and one refresh at 0.25 or 0.5 of the run, over 1500 and 4000 steps (1.6 and 4.3 epochs of the
#     trained samples), 3 seeds, one run at a time.
budget_runs refresh_once/w32 "0 1 2" "1500 4000" "uniform default once25 once50"
for steps in 1500 4000; do
  python3 benchmarks/budgets.py --seeds=3 "$out"/refresh_once/w32/{uniform,default,once25,once50}_$steps/'seed{seed}' \
      | tee "$out/refresh_once_$steps.md"
done
#     At the recipe's own budget (3000 steps, 3.2 epochs: the threshold's edge), uniform, section 21's default and
#     the default as it is now (auto: one refresh at step 750); and the latter over 8000 steps (uniform's plateau).
budget_runs refresh_once/w32 "0 1 2" "3000" "uniform default auto"
budget_runs refresh_once/w32 "0 1 2" "8000" "auto"
python3 benchmarks/budgets.py --seeds=3 "$out"/refresh_once/w32/{uniform,default,auto}_3000/'seed{seed}' | tee "$out/refresh_once_3000.md"
python3 benchmarks/budgets.py --seeds=3 "$out"/budget_long/uniform_8000/'seed{seed}' "$out"/default_stop21_long/default_8000/'seed{seed}' \
    "$out"/refresh_once/w32/auto_8000/'seed{seed}' "$out"/budget_long/levers_8000/'seed{seed}' | tee "$out/refresh_once_8000.md"
#     The default with refresh_at: auto (one refresh: 3000 steps are 3.2 epochs) with the CNN four times as wide,
#     3 seeds, read against section 20-21's runs.
budget_runs refresh_once/w128 "0 1 2" "3000" "auto" model.width=128
python3 benchmarks/budgets.py --seeds=3 "$out"/budget_w128/{uniform_6000,uniform_8000,levers_3000}/'seed{seed}' \
    "$out"/default_stop20_w128/default_3000/'seed{seed}' "$out"/refresh_once/w128/auto_3000/'seed{seed}' \
    | tee "$out/refresh_once_w128.md"
