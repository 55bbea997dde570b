#!/usr/bin/env python3
"""Reference token ids (and a few dequantised tensor values) for SmolLM2-135M-Instruct.

Writes tests/data/smollm2_tokens.json and tests/data/smollm2_tensors.json, which the Rust
tests in protocols/src/llama/tokenizer.rs and protocols/src/gguf_tests.rs compare against.

The token ids come from a byte-level BPE written out here from its definition (GPT-2
byte-to-unicode map, merges applied by rank), reading the vocabulary, merges and special
tokens from the GGUF file with the `gguf` package; the pre-tokenizer is llama.cpp's
`smollm` one: split off every \\p{N} character, then the GPT-2 regex. When the `tokenizers`
Python package is installed, it is compared too (BPE with Digits + ByteLevel, as
SmolLM2's tokenizer.json) and disagreements are reported.

The chat prompt is rendered from the file's `tokenizer.chat_template` with jinja2
(trim_blocks and lstrip_blocks, as transformers' apply_chat_template).

Needs: pip install gguf regex jinja2   (optional: tokenizers)
Usage: python3 scripts/smollm2_tokens.py [path/to/SmolLM2-135M-Instruct.Q4_1.gguf]
"""
import json
import os
import re
import sys

import numpy as np
import regex
from gguf import GGUFReader
from gguf.quants import dequantize

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT = os.path.join(ROOT, "models/SmolLM2-135M-Instruct/SmolLM2-135M-Instruct.Q4_1.gguf")
GPT2_RE = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
USER = "What is the capital of France?"
TEXTS = [
    "Hello, world! How are you today?",
    "In 2024 and 3.14159, we counted 1,000,000 items.",
    "café 東京 🙂",
    "  leading spaces\tand\ttabs\n\n\nnewlines   trailing   ",
    "It's a dog's life; they're here, we've gone, I'm sure, you'll see, he'd know.",
    "def f(x):\n    return x**2 + 1  # comment",
    "Punctuation!!! ??? ... --- (brackets) [sq] {curly} <angle> @#$%^&*",
    "Ünïcödé ÀÉÎ ñ straße Привет мир ١٢٣ ²³",
    "<|im_start|>user\nhi<|im_end|>\n<|endoftext|>",
    "",
]


def bytes_to_unicode():
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(
        range(ord("®"), ord("ÿ") + 1)
    )
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


def dump(obj, path):
    """JSON with one line per list of numbers."""
    text = json.dumps(obj, ensure_ascii=False, indent=1)
    text = re.sub(r"\[\s+([-+0-9.e,\s]+?)\s+\]", lambda m: "[" + ", ".join(x.strip() for x in m.group(1).split(",")) + "]", text)
    with open(path, "w", encoding="utf-8") as f:
        f.write(text + "\n")


def field(r, key):
    return r.fields[key].contents()


class Bpe:
    def __init__(self, r):
        self.tokens = field(r, "tokenizer.ggml.tokens")
        self.vocab = {t: i for i, t in enumerate(self.tokens)}
        merges = field(r, "tokenizer.ggml.merges")
        self.ranks = {tuple(m.split(" ")): i for i, m in enumerate(merges)}
        types = field(r, "tokenizer.ggml.token_type")
        self.special = sorted((t for t, ty in zip(self.tokens, types) if ty in (3, 4)), key=len, reverse=True)
        self.byte_map = bytes_to_unicode()

    def bpe(self, word):
        parts = list(word)
        while len(parts) > 1:
            pairs = [(self.ranks.get((a, b), 1 << 60), i) for i, (a, b) in enumerate(zip(parts, parts[1:]))]
            rank, _ = min(pairs)
            if rank == 1 << 60:
                break
            a, b = [(parts[i], parts[i + 1]) for r_, i in pairs if r_ == rank][0]
            out, i = [], 0
            while i < len(parts):
                if i + 1 < len(parts) and parts[i] == a and parts[i + 1] == b:
                    out.append(a + b)
                    i += 2
                else:
                    out.append(parts[i])
                    i += 1
            parts = out
        return [self.vocab[p] for p in parts]

    def encode_plain(self, text):
        ids = []
        for piece in regex.split(r"(\p{N})", text):
            for m in regex.findall(GPT2_RE, piece):
                ids += self.bpe("".join(self.byte_map[b] for b in m.encode("utf-8")))
        return ids

    def encode(self, text):
        pat = "(" + "|".join(regex.escape(s) for s in self.special) + ")"
        ids = []
        for i, chunk in enumerate(regex.split(pat, text)):
            if i % 2 == 1:
                ids.append(self.vocab[chunk])
            elif chunk:
                ids += self.encode_plain(chunk)
        return ids


def main():
    path = sys.argv[1] if len(sys.argv) > 1 else DEFAULT
    r = GGUFReader(path)
    bpe = Bpe(r)
    assert field(r, "tokenizer.ggml.pre") == "smollm"

    import jinja2

    env = jinja2.Environment(trim_blocks=True, lstrip_blocks=True)
    template = env.from_string(field(r, "tokenizer.chat_template"))
    prompt = template.render(messages=[{"role": "user", "content": USER}], add_generation_prompt=True)
    texts = TEXTS + [prompt]

    cases = [{"text": t, "ids": bpe.encode(t)} for t in texts]

    # A second opinion: Hugging Face's `tokenizers` library with the pre-tokenizer of
    # SmolLM2's tokenizer.json (Digits(individual) + ByteLevel), when installed.
    try:
        from tokenizers import AddedToken, Tokenizer, models, pre_tokenizers

        merges = [tuple(m.split(" ")) for m in field(r, "tokenizer.ggml.merges")]
        hf = Tokenizer(models.BPE(bpe.vocab, merges))
        hf.pre_tokenizer = pre_tokenizers.Sequence(
            [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)]
        )
        hf.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in bpe.special])
        agree = 0
        for c in cases:
            got = hf.encode(c["text"], add_special_tokens=False).ids
            if got != c["ids"]:
                print(f"tokenizers disagrees on {c['text']!r}:\n  ours {c['ids']}\n  hf   {got}")
            else:
                agree += 1
        print(f"tokenizers (Python) agrees on {agree} of {len(cases)} texts")
    except ImportError as e:
        print(f"tokenizers comparison skipped: {e}")

    out = {
        "source": "scripts/smollm2_tokens.py: BPE written from its definition over the GGUF vocabulary",
        "chat_user": USER,
        "chat_prompt": prompt,
        "eos_id": int(field(r, "tokenizer.ggml.eos_token_id")),
        "vocab_size": len(bpe.tokens),
        "cases": cases,
    }
    dump(out, os.path.join(ROOT, "tests/data/smollm2_tokens.json"))

    tensors = {}
    by_name = {t.name: t for t in r.tensors}
    for name in ["token_embd.weight", "blk.0.attn_q.weight", "blk.29.ffn_down.weight", "blk.0.attn_norm.weight", "output_norm.weight"]:
        t = by_name[name]
        v = dequantize(t.data, t.tensor_type).astype(np.float64).reshape(-1)
        tensors[name] = {
            "type": t.tensor_type.name,
            "shape": [int(d) for d in reversed(t.shape)],
            "first": v[:8].tolist(),
            "sum": float(v.sum()),
            "sum_abs": float(np.abs(v).sum()),
        }
    dump({"source": "gguf.quants.dequantize (f32), summed in f64", "tensors": tensors},
         os.path.join(ROOT, "tests/data/smollm2_tensors.json"))
    print(f"wrote {len(cases)} token cases and {len(tensors)} tensor summaries")


if __name__ == "__main__":
    main()
