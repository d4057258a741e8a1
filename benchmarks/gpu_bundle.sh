#!/usr/bin/env bash
# Packs what a GPU machine without internet needs beyond a CUDA PyTorch image (one with transformers,
# accelerate and pyarrow, as the H200 image this project is lent: Python 3.12) into .gpu/, ignored by git:
# wheels for the Python packages it lacks and the Fashion-MNIST IDX files. Then, on the GPU machine, from the
# repo root with .gpu beside it: bash benchmarks/gpu_session.sh OUT   (GRID_S bounds the lever grid's seconds)
# Usage: bash benchmarks/gpu_bundle.sh [FASHION_MNIST_FOLDER]
set -euo pipefail
cd "$(dirname "$0")/.."
data="${1:-/usr/share/datasets/fashion-mnist}"
grep -qx '/.gpu/' .git/info/exclude 2>/dev/null || echo '/.gpu/' >> .git/info/exclude
rm -rf .gpu && mkdir -p .gpu/wheels .gpu/fashion-mnist
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .gpu/wheels \
    accelerate==1.16.0 datasets==5.2.0 dill==0.4.1 multiprocess==0.70.19 scattertext==0.2.2
cp "$data"/*-idx?-ubyte.gz .gpu/fashion-mnist/
du -sh .gpu
