#!/usr/bin/env bash
# Transfer-learning split of the 8x8 digits for private fine-tuning: trains a frozen ReLU
# backbone (the digits ResNet with its last stage widened to 128, fc 128->5) on the training
# split's digits 0-4, writes data/digits/backbone/ (config.toml, model.safetensors) and
# data/digits/finetune.safetensors (the digits 5-9 of both splits, labels digit - 5, and the
# backbone's 128-d features), trains the plaintext reference head (float64 numpy, linear
# softmax 128->5), adds a section to data/digits/README.md, then re-reads the files in a fresh
# process and checks them (numpy float64 forward). Leaves the files of train-digits-cnn.sh alone.
#
# Makes its own venv (default: $TMPDIR/tessera-train-digits-venv, or /tmp/...; set
# TRAIN_VENV to choose; the same venv as train-digits-cnn.sh) and pip-installs pinned
# versions of jax[cpu], scikit-learn, safetensors and numpy from PyPI. About 1 minute on 2
# cores once the venv exists. Not run by CI.
#
# Usage: bash scripts/train-digits-backbone.sh [--out DIR]   (DIR defaults to data/digits)
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${TRAIN_VENV:-${TMPDIR:-/tmp}/tessera-train-digits-venv}"
py="${PYTHON:-python3}"

if [[ ! -x "$venv/bin/python" ]]; then
  echo "train-digits-backbone: creating venv $venv"
  "$py" -m venv "$venv"
fi
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check \
  "jax[cpu]==0.10.2" "jaxlib==0.10.2" "scikit-learn==1.9.1" "safetensors==0.8.0" "numpy==2.4.6"

cd "$root"
start=$(date +%s)
"$venv/bin/python" scripts/train_digits_cnn.py pretrain "$@"
"$venv/bin/python" scripts/train_digits_cnn.py verify-pretrain "$@"
echo "train-digits-backbone: done in $(( $(date +%s) - start )) s"
