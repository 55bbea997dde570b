#!/usr/bin/env bash
# Trains the small ResNet on scikit-learn's 8x8 digits (ReLU and degree-2 polynomial
# variants) and writes data/digits/ (weights, configs, test split, logits, README.md), then
# re-reads the files in a fresh process and checks the accuracies (numpy float64 forward).
#
# Makes its own venv (default: $TMPDIR/tessera-train-digits-venv, or /tmp/...; set
# TRAIN_VENV to choose, e.g. TRAIN_VENV=target/train-venv) and pip-installs pinned versions
# of jax[cpu], scikit-learn, safetensors and numpy from PyPI. About 3 minutes on 2 cores.
# Not run by CI.
#
# Usage: bash scripts/train-digits-cnn.sh [--out DIR]   (DIR defaults to data/digits)
# DIGITS_RANGE_LAMBDA overrides the poly variant's range-loss weight (default 100).
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${TRAIN_VENV:-${TMPDIR:-/tmp}/tessera-train-digits-venv}"
py="${PYTHON:-python3}"

if [[ ! -x "$venv/bin/python" ]]; then
  echo "train-digits-cnn: creating venv $venv"
  "$py" -m venv "$venv"
fi
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check \
  "jax[cpu]==0.10.2" "jaxlib==0.10.2" "scikit-learn==1.9.1" "safetensors==0.8.0" "numpy==2.4.6"

cd "$root"
start=$(date +%s)
"$venv/bin/python" scripts/train_digits_cnn.py train "$@"
"$venv/bin/python" scripts/train_digits_cnn.py verify "$@"
echo "train-digits-cnn: done in $(( $(date +%s) - start )) s"
