#!/usr/bin/env bash
# Secure-vs-plaintext cosine table for all-MiniLM-L6-v2 (README), per setting and method
# combination. Needs models/all-MiniLM-L6-v2 (scripts/fetch-minilm.sh) and a release build.
# Usage: scripts/minilm-table.sh [SETTINGS...]   (default: 2pc 3pc)
set -euo pipefail
cd "$(dirname "$0")/.."
T=target/release/tessera
M=models/all-MiniLM-L6-v2
S1="The patient was admitted with acute chest pain."
S2="A man is playing a guitar on stage."
S3="Secure multiparty computation keeps inputs private."
combos=(
  "default (spline GeLU, puma softmax, lut LayerNorm)|"
  "PUMA GeLU|--gelu puma"
  "SecFormer GeLU|--gelu secformer"
  "2Quad softmax|--softmax 2quad"
  "Quad GeLU|--gelu quad"
  "ReLU GeLU + ReLU softmax (THE-X)|--gelu relu --softmax relu"
  "power softmax|--softmax power"
  "Newton LayerNorm|--layernorm newton"
  "Goldschmidt LayerNorm|--layernorm goldschmidt"
)
echo "| setting | methods | cosine s1 | cosine s2 | cosine s3 | online s | online MB | rounds |"
echo "|---|---|---|---|---|---|---|---|"
settings=("$@")
[ ${#settings[@]} -eq 0 ] && settings=(2pc 3pc)
for setting in "${settings[@]}"; do
  for c in "${combos[@]}"; do
    name="${c%%|*}"; args="${c#*|}"
    # shellcheck disable=SC2086
    j=$($T launch --config "configs/local-$setting.toml" -- infer --model "$M" --text "$S1" --text "$S2" --text "$S3" --json $args 2>/dev/null | tail -1)
    python3 - "$setting" "$name" "$j" <<'PY'
import json, sys
s, name, j = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
c = j["cosine_vs_plaintext"]
print(f"| {s} | {name} | {c[0]:.6f} | {c[1]:.6f} | {c[2]:.6f} | {j['online_s']:.2f} | {j['online_bytes']/1e6:.1f} | {j['rounds']} |")
PY
  done
done
