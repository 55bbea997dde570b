#!/usr/bin/env python3
"""Independent float64 reference for the Llama decoder (protocols/src/llama/plain.rs).

A plain numpy implementation of the Llama forward pass with a KV cache (RMSNorm, RoPE,
causal grouped-query attention, SwiGLU, tied or untied head), reading either

  * a GGUF file with the `gguf` package (tensors dequantized by gguf.quants.dequantize;
    q/k rows as llama.cpp's converter permuted them, so RoPE rotates adjacent pairs), or
  * a Hugging Face directory (config.json + model.safetensors, parsed here with numpy;
    half-split RoPE, as rotate_half).

For each prompt it decodes greedily (no stop at end-of-sequence) and records at every
step the last position's first 16 logits, the top-5 ids and values and the top-2
margin, plus the decode time per token. The Rust function
`llama::plain::check_against_reference` replays the same steps and compares.

    pip install gguf numpy
    python3 scripts/llama_reference.py --gguf models/SmolLM2-135M-Instruct/SmolLM2-135M-Instruct.Q4_1.gguf \\
        --out tests/data/smollm2_reference.json
    cargo test --release -p tessera-protocols --lib dump_demo_hf_dir -- --ignored
    python3 scripts/llama_reference.py --hf target/llama-demo-hf --demo-prompts \\
        --out tests/data/llama_demo_reference.json
"""

import argparse
import json
import os
import struct
import time
from pathlib import Path

# One BLAS thread: the products are matrix-vector sized while decoding, and a threaded
# BLAS on a shared 2-core machine is ~25x slower (thread contention), not faster.
for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import numpy as np  # noqa: E402

STEPS = 8
FIRST = 16
TOP = 5

# SmolLM2 chat pieces (ids from the GGUF vocabulary): the system turn of the default
# chat template, a user turn's header, and the end of the user turn + assistant header.
SYSTEM = [1, 9690, 198, 2683, 359, 253, 5356, 5646, 11173, 3365, 3511, 308, 34519, 28,
          7018, 411, 407, 19712, 8182, 2, 198]
USER = [1, 4093, 198]
ASSISTANT = [2, 198, 1, 520, 9531, 198]
SMOLLM2_PROMPTS = [
    # "What is the capital of France?" as a chat.
    SYSTEM + USER + [1780, 314, 260, 3575, 282, 4649, 47] + ASSISTANT,
    # "Why is the sky blue?" as a chat.
    SYSTEM + USER + [4898, 314, 260, 6376, 4461, 47] + ASSISTANT,
    # "The quick brown fox jumps over the lazy" as plain text.
    [504, 2365, 6354, 16438, 27003, 690, 260, 23790],
]
DEMO_PROMPTS = [
    [5, 42, 17, 3, 60, 9, 33],
    [11],
    [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13],
]


class Model:
    """Weights as stored ([out, in] row-major), float64."""

    def __init__(self, cfg, tensors, names, interleaved, label):
        self.cfg = cfg
        self.t = tensors
        self.names = names
        self.interleaved = interleaved
        self.label = label


def gguf_model(path):
    import gguf
    from gguf.quants import dequantize

    r = gguf.GGUFReader(path)

    def field(name):
        return r.fields[name].contents()

    arch = field("general.architecture")
    if arch != "llama":
        raise SystemExit(f"{path}: architecture {arch!r}, expected 'llama'")
    heads = int(field("llama.attention.head_count"))
    hidden = int(field("llama.embedding_length"))
    cfg = dict(
        hidden=hidden,
        layers=int(field("llama.block_count")),
        heads=heads,
        kv_heads=int(field("llama.attention.head_count_kv")),
        head_dim=int(field("llama.rope.dimension_count")),
        ffn=int(field("llama.feed_forward_length")),
        theta=float(field("llama.rope.freq_base")),
        eps=float(field("llama.attention.layer_norm_rms_epsilon")),
    )
    if cfg["head_dim"] != hidden // heads:
        raise SystemExit("partial rotary is not supported")
    tensors = {}
    for t in r.tensors:
        a = dequantize(t.data, t.tensor_type).astype(np.float64)
        # GGUF lists dims fastest first: [in, out] is a row-major [out, in] matrix.
        shape = tuple(int(x) for x in reversed(t.shape))
        tensors[t.name] = a.reshape(shape)
    cfg["vocab"] = tensors["token_embd.weight"].shape[0]
    names = dict(
        embed="token_embd.weight", norm="output_norm.weight", head="output.weight",
        layer=lambda i, p: f"blk.{i}.{p}.weight",
        parts=dict(attn_norm="attn_norm", q="attn_q", k="attn_k", v="attn_v",
                   o="attn_output", ffn_norm="ffn_norm", gate="ffn_gate", up="ffn_up",
                   down="ffn_down"),
    )
    return Model(cfg, tensors, names, True, f"{Path(path).name} (GGUF, interleaved RoPE)")


SAFETENSORS_DTYPES = {"F64": "<f8", "F32": "<f4", "F16": "<f2"}


def read_safetensors(path):
    data = Path(path).read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + n])
    body = data[8 + n:]
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        a, b = info["data_offsets"]
        raw = body[a:b]
        if info["dtype"] == "BF16":
            u = np.frombuffer(raw, dtype="<u2").astype(np.uint32) << 16
            arr = u.view(np.float32)
        else:
            arr = np.frombuffer(raw, dtype=SAFETENSORS_DTYPES[info["dtype"]])
        out[name] = arr.astype(np.float64).reshape(info["shape"])
    return out


def hf_model(d):
    d = Path(d)
    c = json.loads((d / "config.json").read_text())
    if c.get("rope_scaling") is not None:
        raise SystemExit("rope_scaling is not supported")
    heads = c["num_attention_heads"]
    cfg = dict(
        hidden=c["hidden_size"],
        layers=c["num_hidden_layers"],
        heads=heads,
        kv_heads=c.get("num_key_value_heads", heads),
        head_dim=c.get("head_dim") or c["hidden_size"] // heads,
        ffn=c["intermediate_size"],
        theta=float(c.get("rope_theta", 10000.0)),
        eps=float(c.get("rms_norm_eps", 1e-6)),
        vocab=c["vocab_size"],
    )
    tensors = read_safetensors(d / "model.safetensors")
    if c.get("tie_word_embeddings", False):
        tensors.pop("lm_head.weight", None)
    names = dict(
        embed="model.embed_tokens.weight", norm="model.norm.weight", head="lm_head.weight",
        layer=lambda i, p: f"model.layers.{i}.{p}.weight",
        parts=dict(attn_norm="input_layernorm", q="self_attn.q_proj", k="self_attn.k_proj",
                   v="self_attn.v_proj", o="self_attn.o_proj",
                   ffn_norm="post_attention_layernorm", gate="mlp.gate_proj",
                   up="mlp.up_proj", down="mlp.down_proj"),
    )
    return Model(cfg, tensors, names, False, f"{d.name} (Hugging Face, half-split RoPE)")


def write_safetensors(path, tensors):
    """Writes F32 tensors (GGUF dequantization is exact in f32) under their own names."""
    header, chunks, off = {"__metadata__": {"format": "pt"}}, [], 0
    for name in sorted(tensors):
        raw = np.ascontiguousarray(tensors[name], dtype="<f4").tobytes()
        header[name] = dict(dtype="F32", shape=list(tensors[name].shape),
                            data_offsets=[off, off + len(raw)])
        chunks.append(raw)
        off += len(raw)
    h = json.dumps(header).encode()
    h += b" " * (-len(h) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)))
        f.write(h)
        for c in chunks:
            f.write(c)


def rmsnorm(x, g, eps):
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * g


def rope(x, pos, theta, interleaved):
    """x: [n, heads, d]; rotate pairs by pos * theta^(-2i/d)."""
    d = x.shape[-1]
    freqs = theta ** (-(2.0 * np.arange(d // 2)) / d)
    ang = pos[:, None].astype(np.float64) * freqs[None, :]
    cos, sin = np.cos(ang)[:, None, :], np.sin(ang)[:, None, :]
    out = np.empty_like(x)
    if interleaved:
        a, b = x[..., 0::2], x[..., 1::2]
        out[..., 0::2] = a * cos - b * sin
        out[..., 1::2] = a * sin + b * cos
    else:
        a, b = x[..., : d // 2], x[..., d // 2:]
        out[..., : d // 2] = a * cos - b * sin
        out[..., d // 2:] = a * sin + b * cos
    return out


def silu(x):
    return x / (1.0 + np.exp(-x))


class Decoder:
    def __init__(self, m):
        self.m = m
        c = m.cfg
        self.k = [np.zeros((0, c["kv_heads"], c["head_dim"])) for _ in range(c["layers"])]
        self.v = [np.zeros((0, c["kv_heads"], c["head_dim"])) for _ in range(c["layers"])]

    def w(self, i, part):
        n = self.m.names
        return self.m.t[n["layer"](i, n["parts"][part])]

    def step(self, ids):
        """Logits [len(ids), vocab] for ids at the next positions."""
        m, c = self.m, self.m.cfg
        H, KV, d = c["heads"], c["kv_heads"], c["head_dim"]
        n = len(ids)
        pos0 = self.k[0].shape[0]
        pos = np.arange(pos0, pos0 + n)
        x = m.t[m.names["embed"]][np.array(ids)]
        for i in range(c["layers"]):
            xn = rmsnorm(x, self.w(i, "attn_norm"), c["eps"])
            q = rope((xn @ self.w(i, "q").T).reshape(n, H, d), pos, c["theta"], m.interleaved)
            k = rope((xn @ self.w(i, "k").T).reshape(n, KV, d), pos, c["theta"], m.interleaved)
            v = (xn @ self.w(i, "v").T).reshape(n, KV, d)
            self.k[i] = np.concatenate([self.k[i], k])
            self.v[i] = np.concatenate([self.v[i], v])
            K, V = self.k[i], self.v[i]
            total = K.shape[0]
            group = H // KV
            ctx = np.empty((n, H, d))
            # Query at absolute position p sees keys 0..=p.
            mask = np.arange(total)[None, :] > pos[:, None]
            for h in range(H):
                s = q[:, h, :] @ K[:, h // group, :].T / np.sqrt(d)
                s = np.where(mask, -np.inf, s)
                s = np.exp(s - s.max(axis=1, keepdims=True))
                s /= s.sum(axis=1, keepdims=True)
                ctx[:, h, :] = s @ V[:, h // group, :]
            x = x + ctx.reshape(n, H * d) @ self.w(i, "o").T
            xn = rmsnorm(x, self.w(i, "ffn_norm"), c["eps"])
            g = xn @ self.w(i, "gate").T
            u = xn @ self.w(i, "up").T
            x = x + (silu(g) * u) @ self.w(i, "down").T
        x = rmsnorm(x, m.t[m.names["norm"]], c["eps"])
        head = m.t.get(m.names["head"], m.t[m.names["embed"]])
        return x @ head.T


def run(m, prompts, steps):
    cases = []
    decode_time, decode_cpu, decode_tokens = 0.0, 0.0, 0
    for prompt in prompts:
        dec = Decoder(m)
        logits = dec.step(prompt)[-1]
        gen, recs = [], []
        for j in range(steps):
            order = np.lexsort((np.arange(len(logits)), -logits))
            top = order[:TOP]
            recs.append(dict(
                first_logits=[float(v) for v in logits[:FIRST]],
                top_ids=[int(i) for i in top],
                top_values=[float(logits[i]) for i in top],
                margin=float(logits[order[0]] - logits[order[1]]),
            ))
            nxt = int(order[0])
            gen.append(nxt)
            if j + 1 < steps:
                t0, c0 = time.perf_counter(), time.process_time()
                logits = dec.step([nxt])[-1]
                decode_time += time.perf_counter() - t0
                decode_cpu += time.process_time() - c0
                decode_tokens += 1
        cases.append(dict(prompt=[int(i) for i in prompt], generated=gen, steps=recs))
        print(f"prompt of {len(prompt)}: generated {gen}, margins "
              f"{[round(r['margin'], 3) for r in recs]}")
    n = max(decode_tokens, 1)
    return cases, decode_time / n, decode_cpu / n


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--gguf", help="a llama-architecture GGUF file")
    src.add_argument("--hf", help="a Hugging Face dir: config.json + model.safetensors")
    ap.add_argument("--out", required=True, help="the JSON to write")
    ap.add_argument("--demo-prompts", action="store_true",
                    help="use short prompts with ids < 64 (the Rust demo model)")
    ap.add_argument("--steps", type=int, default=STEPS)
    ap.add_argument("--dump-safetensors", metavar="PATH",
                    help="also write the (dequantized) tensors, as stored, to a safetensors "
                         "file (F32) for the Rust check before it has a GGUF reader")
    a = ap.parse_args()
    t0 = time.perf_counter()
    m = gguf_model(a.gguf) if a.gguf else hf_model(a.hf)
    print(f"loaded {m.label} in {time.perf_counter() - t0:.1f}s: {m.cfg}")
    if a.dump_safetensors:
        write_safetensors(a.dump_safetensors, m.t)
        print(f"wrote {a.dump_safetensors}")
    prompts = DEMO_PROMPTS if a.demo_prompts else SMOLLM2_PROMPTS
    cases, spt, cpu = run(m, prompts, a.steps)
    print(f"numpy float64 decode: {spt:.4f} s per token wall, {cpu:.4f} s CPU "
          f"(load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores)")
    out = dict(
        model=m.label,
        vocab_size=int(m.cfg["vocab"]),
        seconds_per_token=round(spt, 5),
        cpu_seconds_per_token=round(cpu, 5),
        note="float64 numpy (scripts/llama_reference.py); greedy, no stop at EOS; "
             "step j = last-position logits after prompt + generated[:j]",
        cases=cases,
    )
    Path(a.out).write_text(json.dumps(out, indent=1) + "\n")
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
