#!/usr/bin/env bash
# On a GPU machine without internet, with .gpu/ from benchmarks/gpu_bundle.sh: install the wheels and this
# checkout, run the multi-process and resume tests there, time SelectiveTrainer's plans on the GPU, then the
# width-128 lever grid (benchmarks/gpu_levers.sh) for GRID_S seconds (default 300). Results go to OUT.
# Usage: GRID_S=300 bash benchmarks/gpu_session.sh OUT
set -uo pipefail
cd "$(dirname "$0")/.."
out="${1:?usage: bash benchmarks/gpu_session.sh OUT}"
mkdir -p "$out"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .gpu/wheels/*.whl || exit 1
export PYTHONPATH=/tmp/site PYTHONUNBUFFERED=1 WANDB_MODE=offline
python3 -m pip install -q --no-index --no-deps --no-build-isolation -e . || exit 1
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
python3 -m pytest -q -o addopts="" -p no:randomly tests/test_distributed.py tests/test_hf_distributed.py tests/test_resume.py \
    tests/test_hf_trainer.py 2>&1 | tail -5 | tee "$out/tests.txt"
python3 benchmarks/hf_plans.py --steps 300 --rounds 3 --threads 4 2>&1 | tail -6 | tee "$out/hf_plans.md"
GRID_S="${GRID_S:-300}" bash benchmarks/gpu_levers.sh "$out/levers" .gpu/fashion-mnist > "$out/levers.log" 2>&1
tail -3 "$out/levers.log"
tar czf "$out/levers.tgz" -C "$out" levers && rm -rf "$out/levers"
