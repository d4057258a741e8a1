# Sourced by the benchmark scripts that train the Fashion-MNIST recipe one run at a time, after they set `out`:
# `run NAME SEED OVERRIDES...` trains `$recipe` into `$out/NAME/seedSEED` (kept if it finished before: --reuse)
# with the overrides and `${common[@]}`; `seeds` is $SEEDS or 3.
set -euo pipefail
seeds="${SEEDS:-3}"
recipe=recipes/fashion_mnist_noisy.yaml
common=(train.checkpoint_every=0 logging.trackers=[] train.threads=2 train.progress=false)
export WANDB_MODE=offline
run() {
  local name=$1 seed=$2
  shift 2
  online-select train --reuse "$recipe" seed="$seed" output_dir="$out/$name/seed$seed" "$@" "${common[@]}"
}
