#!/usr/bin/env python3
"""Plaintext baseline for text classification on MiniLM sentence embeddings.

Embeds models/text-cls/{train,test}.jsonl (scripts/fetch-text-data.sh) with
all-MiniLM-L6-v2 (scripts/fetch-minilm.sh) at a fixed maximum sequence length, using the
float64 numpy encoder of scripts/minilm_reference.py (imported, not copied), mean pooling
over the attention mask and, for the "normalized" features, the L2 normalisation that
sentence-transformers applies. Then trains a linear softmax head in float64 numpy:
mini-batch SGD with momentum (PyTorch convention: v = mu*v + g; w -= lr*v), zero init,
batches taken in the files' stored order (no shuffling; the last batch may be short),
mean cross-entropy over the batch. Reports per-epoch loss and accuracy, and, when
scikit-learn is importable, LogisticRegression (default C=1, lbfgs) on the same features.

    python3 -m venv /tmp/textcls-venv
    /tmp/textcls-venv/bin/pip install numpy safetensors tokenizers scipy scikit-learn
    scripts/fetch-minilm.sh && scripts/fetch-text-data.sh
    /tmp/textcls-venv/bin/python scripts/text_head_baseline.py

scipy is optional (its erf replaces the reference's np.vectorize(math.erf), same values,
much faster); scikit-learn is optional. Embeddings are cached next to the data
(minilm-embeddings-L{max_len}.npz) and reused while the data files and settings match.
"""

import argparse
import hashlib
import json
import os
import sys
import time
from pathlib import Path

# Tiny matrices: BLAS threads only add overhead (and this machine has 2 cores).
for _v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_v, "1")

import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
import minilm_reference as ref  # noqa: E402

try:
    from scipy.special import erf as _scipy_erf
    ref._erf = _scipy_erf  # the encoder looks _erf up at call time
    ERF = "scipy.special.erf"
except ImportError:
    ERF = "np.vectorize(math.erf) (slow; install scipy to speed up)"


def read_jsonl(path):
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]
    return [r["text"] for r in rows], np.array([int(r["label"]) for r in rows])


def sha256_file(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def embed(texts, model_dir, max_len):
    """Returns (mean-pooled [n, 384], full token lengths, truncated token lengths)."""
    from safetensors.numpy import load_file
    from tokenizers import Tokenizer

    cfg = json.loads((model_dir / "config.json").read_text())
    raw = load_file(str(model_dir / "model.safetensors"))
    t = {k.removeprefix("bert."): v.astype(np.float64) for k, v in raw.items()}
    tok = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    tok.no_padding()
    tok.no_truncation()
    full = [len(e.ids) for e in tok.encode_batch(texts)]
    tok.enable_truncation(max_length=max_len)
    encs = tok.encode_batch(texts)
    out = np.zeros((len(texts), cfg["hidden_size"]))
    for i, enc in enumerate(encs):
        mask = np.array(enc.attention_mask, dtype=np.float64)
        h = ref.encoder(t, cfg, np.array(enc.ids), np.array(enc.type_ids), mask)
        out[i] = (h * mask[:, None]).sum(axis=0) / max(mask.sum(), 1e-9)
    return out, np.array(full), np.array([len(e.ids) for e in encs])


def load_or_embed(data_dir, model_dir, max_len, cache):
    files = [data_dir / "train.jsonl", data_dir / "test.jsonl", model_dir / "model.safetensors"]
    stamp = json.dumps({"max_len": max_len, "sha256": [sha256_file(f) for f in files]})
    if cache.exists():
        z = np.load(cache, allow_pickle=False)
        if str(z["stamp"]) == stamp:
            print(f"embeddings: reused cache {cache}")
            return {k: z[k] for k in z.files if k != "stamp"}, 0.0
    res = {}
    t0 = time.perf_counter()
    for split in ("train", "test"):
        texts, _ = read_jsonl(data_dir / f"{split}.jsonl")
        pooled, full, used = embed(texts, model_dir, max_len)
        res.update({f"{split}_pooled": pooled, f"{split}_full_len": full,
                    f"{split}_used_len": used})
    secs = time.perf_counter() - t0
    np.savez(cache, stamp=np.array(stamp), **res)
    print(f"embeddings: computed in {secs:.1f} s (erf: {ERF}); cached in {cache}")
    return res, secs


def softmax_xent(logits, y):
    z = logits - logits.max(axis=1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    return -logp[np.arange(len(y)), y].mean(), np.exp(logp)


def train_head(xtr, ytr, xte, yte, k, epochs, batch, lr, momentum):
    d = xtr.shape[1]
    w, b = np.zeros((d, k)), np.zeros(k)
    vw, vb = np.zeros_like(w), np.zeros_like(b)
    hist = []
    for ep in range(1, epochs + 1):
        seen, run_loss = 0, 0.0
        for s in range(0, len(ytr), batch):
            xb, yb = xtr[s:s + batch], ytr[s:s + batch]
            loss, p = softmax_xent(xb @ w + b, yb)
            run_loss += loss * len(yb)
            seen += len(yb)
            p[np.arange(len(yb)), yb] -= 1.0
            p /= len(yb)
            gw, gb = xb.T @ p, p.sum(axis=0)
            vw = momentum * vw + gw
            vb = momentum * vb + gb
            w -= lr * vw
            b -= lr * vb
        tr_loss, tr_p = softmax_xent(xtr @ w + b, ytr)
        te_loss, te_p = softmax_xent(xte @ w + b, yte)
        hist.append({"epoch": ep, "running_train_loss": run_loss / seen,
                     "train_loss": float(tr_loss), "train_acc": float((tr_p.argmax(1) == ytr).mean()),
                     "test_loss": float(te_loss), "test_acc": float((te_p.argmax(1) == yte).mean())})
    return w, b, hist


def length_stats(full, max_len):
    q = np.percentile(full, [50, 90, 95, 99])
    return (f"tokens incl. [CLS]/[SEP]: min {full.min()}, median {q[0]:.0f}, mean {full.mean():.1f}, "
            f"p90 {q[1]:.0f}, p95 {q[2]:.0f}, p99 {q[3]:.0f}, max {full.max()}; "
            f"truncated at {max_len}: {(full > max_len).sum()} of {len(full)} "
            f"({100 * (full > max_len).mean():.1f}%)")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", default="models/text-cls")
    ap.add_argument("--model", default="models/all-MiniLM-L6-v2")
    ap.add_argument("--max-len", type=int, default=32)
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--lr", type=float, default=0.1)
    ap.add_argument("--momentum", type=float, default=0.9)
    ap.add_argument("--features", choices=["normalized", "pooled", "both"], default="both",
                    help="normalized = L2-normalised mean pool (sentence-transformers output); "
                         "pooled = raw mean pool")
    ap.add_argument("--json", help="also write the results to this JSON file")
    args = ap.parse_args()

    data_dir, model_dir = Path(args.data), Path(args.model)
    for f in (data_dir / "train.jsonl", data_dir / "test.jsonl", data_dir / "labels.txt"):
        if not f.exists():
            sys.exit(f"missing {f}: run scripts/fetch-text-data.sh")
    if not (model_dir / "model.safetensors").exists():
        sys.exit(f"missing {model_dir}/model.safetensors: run scripts/fetch-minilm.sh")
    labels = (data_dir / "labels.txt").read_text().split("\n")[:-1]
    k = len(labels)
    _, ytr = read_jsonl(data_dir / "train.jsonl")
    _, yte = read_jsonl(data_dir / "test.jsonl")

    cache = data_dir / f"minilm-embeddings-L{args.max_len}.npz"
    emb, embed_s = load_or_embed(data_dir, model_dir, args.max_len, cache)
    results = {"labels": labels, "max_len": args.max_len, "embed_seconds": embed_s,
               "n_train": int(len(ytr)), "n_test": int(len(yte)), "heads": {}}
    for split, y in (("train", ytr), ("test", yte)):
        counts = np.bincount(y, minlength=k)
        print(f"{split}: {len(y)} examples, " +
              ", ".join(f"{labels[c]} {counts[c]}" for c in range(k)) +
              f"; {length_stats(emb[f'{split}_full_len'], args.max_len)}")
        results[f"{split}_truncated"] = int((emb[f"{split}_full_len"] > args.max_len).sum())
    majority = int(np.bincount(ytr, minlength=k).argmax())
    results["majority_test_acc"] = float((yte == majority).mean())
    print(f"majority class ({labels[majority]}) test accuracy: {results['majority_test_acc']:.4f}")

    def feats(name, split):
        x = emb[f"{split}_pooled"]
        if name == "normalized":
            x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
        return x

    names = ["normalized", "pooled"] if args.features == "both" else [args.features]
    try:
        from sklearn.linear_model import LogisticRegression
    except ImportError:
        LogisticRegression = None
        print("scikit-learn not importable: skipping LogisticRegression")
    for name in names:
        xtr, xte = feats(name, "train"), feats(name, "test")
        print(f"\n== {name} features ({xtr.shape[1]}-d, mean row norm {np.linalg.norm(xtr, axis=1).mean():.3f})")
        print(f"SGD head: batch {args.batch}, lr {args.lr}, momentum {args.momentum}, "
              f"zero init, {args.epochs} epochs, stored order, float64")
        t0 = time.perf_counter()
        _, _, hist = train_head(xtr, ytr, xte, yte, k, args.epochs, args.batch, args.lr, args.momentum)
        sgd_s = time.perf_counter() - t0
        print("epoch  running-train-loss  train-loss  train-acc  test-loss  test-acc")
        for h in hist:
            print(f"{h['epoch']:5d}  {h['running_train_loss']:18.4f}  {h['train_loss']:10.4f}  "
                  f"{h['train_acc']:9.4f}  {h['test_loss']:9.4f}  {h['test_acc']:8.4f}")
        print(f"SGD head trained in {sgd_s:.3f} s")
        entry = {"sgd": hist, "sgd_seconds": sgd_s}
        if LogisticRegression is not None:
            t0 = time.perf_counter()
            clf = LogisticRegression(max_iter=5000).fit(xtr, ytr)
            lr_s = time.perf_counter() - t0
            acc = float(clf.score(xte, yte))
            print(f"sklearn LogisticRegression(C=1.0, lbfgs): test accuracy {acc:.4f} "
                  f"(train {clf.score(xtr, ytr):.4f}), fit {lr_s:.3f} s")
            entry.update({"logreg_test_acc": acc, "logreg_seconds": lr_s})
        results["heads"][name] = entry
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1) + "\n")
        print(f"\nwrote {args.json}")


if __name__ == "__main__":
    main()
