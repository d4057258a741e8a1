#!/usr/bin/env bash
# Single levers against the default at CNN width 128 on one GPU, 3 seeds, with uniform's budgets and the
# perfect-filter bound beside them: the accuracy and steps questions the CPU answers at 15+ minutes a run.
# Several runs share the GPU at once (P, default 7), so read accuracy and steps, not seconds.
# Usage: bash benchmarks/gpu_levers.sh [OUT [FASHION_MNIST_FOLDER]]      (GRID_S: a time limit for the grid)
# Then:  python3 benchmarks/budgets.py --seeds=3 OUT/runs/{uniform_6000,uniform_8000,default,...}/'seed{seed}'
set -uo pipefail
out="${1:-runs/gpu_levers}"
data="${2:-/usr/share/datasets/fashion-mnist}"
recipe=recipes/fashion_mnist_noisy.yaml
export WANDB_MODE=offline OUT_DIR="$out" DATA_DIR="$data" RECIPE="$recipe"
mkdir -p "$out"
python3 benchmarks/oracle_table.py "$recipe" "$out/oracle_table.safetensors" data.path="$data"
jobs="$out/jobs.txt"
: > "$jobs"
# No trailing blank on a line: xargs -L would join it with the next one.
add() { local name=$1 steps=$2 seed; shift 2; for seed in 0 1 2; do echo "$name $seed $steps${*:+ $*}" >> "$jobs"; done; }
add uniform_8000 8000 selection.policy=uniform
add uniform_6000 6000 selection.policy=uniform
add default 3000
add oracle_filter 3000 reference.kind=file reference.path="$out/oracle_table.safetensors" 'reference.refresh_at=[]' selection.reject_after=0
add steps_2000 2000
add reject_after_1 3000 selection.reject_after=1
add label_floor_0.1 3000 selection.label_floor=0.1
add refresh_x3 3000 'reference.refresh_at=[0.25,0.5,0.75]'
add loss_discount_0.15 3000 selection.loss_discount=0.15
add steps_4000 4000
add lr_0.0005 3000 train.lr=0.0005
add explore_0.05 3000 selection.explore=0.05
add temperature_0.05 3000 selection.temperature=0.05
add b_1280 3000 selection.candidate_batch_size=1280
run_one() {
  local name=$1 seed=$2 steps=$3
  shift 3
  online-select train "$RECIPE" seed="$seed" output_dir="$OUT_DIR/runs/$name/seed$seed" model.width=128 \
      train.max_steps="$steps" train.eval_every=$((steps / 16)) data.path="$DATA_DIR" train.checkpoint_every=0 \
      logging.trackers=[] train.threads=2 train.progress=false "$@" > "$OUT_DIR/runs/$name.seed$seed.log" 2>&1
  echo "$name seed $seed: exit $?"
}
export -f run_one
mkdir -p "$out/runs"
timeout "${GRID_S:-3600}" xargs -P "${P:-7}" -L 1 bash -c 'run_one "$@"' _ < "$jobs"
