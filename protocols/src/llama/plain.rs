//! The plaintext f64 forward pass of a Llama decoder with a KV cache: the reference that
//! secure results are checked against, written to match Hugging Face's
//! `LlamaForCausalLM` (and llama.cpp on GGUF tensors with [`RopeStyle::Interleaved`]).
//!
//! One layer is `x + attn(rmsnorm(x))`, then `+ mlp(rmsnorm(.))`: RMSNorm
//! `x / sqrt(mean(x^2) + eps) * g`; RoPE on q and k at the (public) positions; causal
//! grouped-query attention (query head `h` reads KV head `h / (heads / kv_heads)`) with
//! softmax scaled by `1/sqrt(head_dim)`; SwiGLU `down(silu(gate x) * up x)`. After the
//! last layer a final RMSNorm and the (tied or untied) head give the logits.
//!
//! The building blocks ([`rmsnorm`], [`rope`], [`attention`], [`mlp`], [`layer`]) are
//! public so a secure implementation can be checked layer by layer.
//! [`check_against_reference`] compares this pass with the JSON written by
//! `scripts/llama_reference.py` (an independent numpy implementation).

use std::path::Path;

use serde::Deserialize;
use tessera::{Error, Result, Tensor};

use super::model::{LlamaConfig, LlamaLayerWeights, LlamaWeights, RopeStyle};

/// One layer's cached keys (after RoPE) and values: row-major `[len, kv_heads *
/// head_dim]`, one row per position, heads side by side.
#[derive(Clone, Debug, PartialEq)]
pub struct KvLayer {
    /// Keys after RoPE, `[len, kv_dim]` row-major.
    pub k: Vec<f64>,
    /// Values, `[len, kv_dim]` row-major.
    pub v: Vec<f64>,
    /// Row width: `kv_heads * head_dim`.
    pub kv_dim: usize,
}

impl KvLayer {
    /// An empty cache for rows of width `kv_dim`.
    pub fn new(kv_dim: usize) -> KvLayer {
        KvLayer {
            k: Vec::new(),
            v: Vec::new(),
            kv_dim,
        }
    }

    /// Number of cached positions.
    pub fn len(&self) -> usize {
        self.k.len().checked_div(self.kv_dim).unwrap_or(0)
    }

    /// True when nothing is cached.
    pub fn is_empty(&self) -> bool {
        self.k.is_empty()
    }

    /// The keys as a `[len, kv_dim]` tensor.
    pub fn k_tensor(&self) -> Tensor<f64> {
        Tensor::from_vec(&[self.len(), self.kv_dim], self.k.clone()).expect("rows of kv_dim")
    }

    /// The values as a `[len, kv_dim]` tensor.
    pub fn v_tensor(&self) -> Tensor<f64> {
        Tensor::from_vec(&[self.len(), self.kv_dim], self.v.clone()).expect("rows of kv_dim")
    }
}

/// The keys and values of every layer for the positions processed so far.
#[derive(Clone, Debug, PartialEq)]
pub struct KvCache {
    /// One entry per layer, first to last.
    pub layers: Vec<KvLayer>,
}

impl KvCache {
    /// An empty cache for `config`.
    pub fn new(config: &LlamaConfig) -> KvCache {
        KvCache {
            layers: (0..config.layers)
                .map(|_| KvLayer::new(config.kv_dim()))
                .collect(),
        }
    }

    /// Number of cached positions (the position of the next token).
    pub fn len(&self) -> usize {
        self.layers.first().map_or(0, KvLayer::len)
    }

    /// True when nothing is cached.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Forgets every position from `len` on.
    pub fn truncate(&mut self, len: usize) {
        for l in &mut self.layers {
            l.k.truncate(len * l.kv_dim);
            l.v.truncate(len * l.kv_dim);
        }
    }
}

/// RMSNorm over the last axis: `x / sqrt(mean(x^2) + eps) * g`.
///
/// # Panics
/// If `g` is not as long as the last axis of `x`.
pub fn rmsnorm(x: &Tensor<f64>, g: &[f64], eps: f64) -> Tensor<f64> {
    let d = x.last_dim();
    assert_eq!(g.len(), d, "rmsnorm: rows of length {d}, gain {}", g.len());
    let mut out = x.clone();
    if d == 0 {
        return out;
    }
    for row in out.data_mut().chunks_mut(d) {
        let ms = row.iter().map(|v| v * v).sum::<f64>() / d as f64;
        let inv = 1.0 / (ms + eps).sqrt();
        for (v, &gi) in row.iter_mut().zip(g) {
            *v = *v * inv * gi;
        }
    }
    out
}

/// RoPE's angular frequencies of one head: `theta^(-2i/head_dim)` for `i < head_dim/2`.
pub fn rope_freqs(head_dim: usize, theta: f64) -> Vec<f64> {
    (0..head_dim / 2)
        .map(|i| theta.powf(-((2 * i) as f64) / head_dim as f64))
        .collect()
}

/// Applies RoPE to `x: [n, heads * head_dim]` (rows at `positions`, one per row): in
/// every head, pair `i` (`(i, i + d/2)` for [`RopeStyle::HalfSplit`], `(2i, 2i + 1)` for
/// [`RopeStyle::Interleaved`]) turns by `pos * theta^(-2i/d)`:
/// `(a, b) -> (a cos - b sin, a sin + b cos)`.
///
/// # Panics
/// If `positions` does not have one entry per row, or the rows are not whole heads of
/// even width.
pub fn rope(
    x: &Tensor<f64>,
    positions: &[usize],
    head_dim: usize,
    theta: f64,
    style: RopeStyle,
) -> Tensor<f64> {
    let width = x.last_dim();
    assert!(
        head_dim > 0 && head_dim.is_multiple_of(2) && width.is_multiple_of(head_dim),
        "rope: rows of {width} are not whole heads of even width {head_dim}"
    );
    let rows = x.len().checked_div(width).unwrap_or(0);
    assert_eq!(positions.len(), rows, "rope: one position per row");
    let freqs = rope_freqs(head_dim, theta);
    let half = head_dim / 2;
    let mut out = x.clone();
    for (row, &pos) in out.data_mut().chunks_mut(width).zip(positions) {
        let trig: Vec<(f64, f64)> = freqs.iter().map(|f| (pos as f64 * f).sin_cos()).collect();
        for head in row.chunks_mut(head_dim) {
            for (i, &(sin, cos)) in trig.iter().enumerate() {
                let (ia, ib) = match style {
                    RopeStyle::HalfSplit => (i, i + half),
                    RopeStyle::Interleaved => (2 * i, 2 * i + 1),
                };
                let (a, b) = (head[ia], head[ib]);
                head[ia] = a * cos - b * sin;
                head[ib] = a * sin + b * cos;
            }
        }
    }
    out
}

/// SiLU: `x / (1 + e^-x)`.
pub fn silu(x: f64) -> f64 {
    x / (1.0 + (-x).exp())
}

fn matmul(x: &Tensor<f64>, w: &Tensor<f64>) -> Tensor<f64> {
    x.matmul(w).expect("weight shapes are checked at load")
}

fn add(a: &Tensor<f64>, b: &Tensor<f64>) -> Tensor<f64> {
    a.zip_with(b, "llama residual", |x, y| x + y)
        .expect("residual shapes agree")
}

/// Causal grouped-query attention of new queries `q: [n, heads * head_dim]` (after RoPE,
/// at positions `pos0..pos0 + n`) over every key and value in `cache` (which already
/// holds the new positions): the per-head contexts side by side, `[n, heads * head_dim]`.
/// The query at position `p` sees cached positions `0..=p`.
///
/// # Panics
/// If the cache does not hold positions up to `pos0 + n`.
pub fn causal_attention(
    config: &LlamaConfig,
    q: &Tensor<f64>,
    cache: &KvLayer,
    pos0: usize,
) -> Tensor<f64> {
    let (heads, d, kv_dim) = (config.heads, config.head_dim, config.kv_dim());
    let q_dim = heads * d;
    let n = q.len() / q_dim;
    assert!(
        cache.len() >= pos0 + n,
        "causal_attention: cache holds {} positions, queries reach {}",
        cache.len(),
        pos0 + n
    );
    let group = config.group();
    let scale = 1.0 / (d as f64).sqrt();
    let mut ctx = vec![0.0; n * q_dim];
    let mut scores = Vec::with_capacity(pos0 + n);
    for i in 0..n {
        let seen = pos0 + i + 1;
        for h in 0..heads {
            let kvh = h / group;
            let qh = &q.data()[i * q_dim + h * d..i * q_dim + (h + 1) * d];
            scores.clear();
            scores.extend((0..seen).map(|j| {
                let kj = &cache.k[j * kv_dim + kvh * d..j * kv_dim + (kvh + 1) * d];
                qh.iter().zip(kj).map(|(a, b)| a * b).sum::<f64>() * scale
            }));
            let max = scores.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            let mut sum = 0.0;
            for s in scores.iter_mut() {
                *s = (*s - max).exp();
                sum += *s;
            }
            let out = &mut ctx[i * q_dim + h * d..i * q_dim + (h + 1) * d];
            for (j, &p) in scores.iter().enumerate() {
                let vj = &cache.v[j * kv_dim + kvh * d..j * kv_dim + (kvh + 1) * d];
                for (o, &v) in out.iter_mut().zip(vj) {
                    *o += p / sum * v;
                }
            }
        }
    }
    Tensor::from_vec(&[n, q_dim], ctx).expect("context shape")
}

/// The attention block of one layer on normalised input `xn: [n, hidden]` at positions
/// `pos0..pos0 + n`: q, k, v projections, RoPE on q and k, the new k and v appended to
/// `cache`, causal attention, output projection. `[n, hidden]`, without the residual.
///
/// # Panics
/// If `pos0` is not the number of positions `cache` holds.
pub fn attention(
    w: &LlamaLayerWeights,
    config: &LlamaConfig,
    xn: &Tensor<f64>,
    cache: &mut KvLayer,
    pos0: usize,
) -> Tensor<f64> {
    assert_eq!(
        cache.len(),
        pos0,
        "attention: the cache holds {} positions, new tokens start at {pos0}",
        cache.len()
    );
    let n = xn.shape()[0];
    let positions: Vec<usize> = (pos0..pos0 + n).collect();
    let c = config;
    let q = rope(
        &matmul(xn, &w.wq),
        &positions,
        c.head_dim,
        c.rope_theta,
        c.rope_style,
    );
    let k = rope(
        &matmul(xn, &w.wk),
        &positions,
        c.head_dim,
        c.rope_theta,
        c.rope_style,
    );
    let v = matmul(xn, &w.wv);
    cache.k.extend_from_slice(k.data());
    cache.v.extend_from_slice(v.data());
    matmul(&causal_attention(c, &q, cache, pos0), &w.wo)
}

/// The SwiGLU block on normalised input `xn: [n, hidden]`:
/// `(silu(xn @ w_gate) * (xn @ w_up)) @ w_down`, without the residual.
pub fn mlp(w: &LlamaLayerWeights, xn: &Tensor<f64>) -> Tensor<f64> {
    let gate = matmul(xn, &w.w_gate);
    let up = matmul(xn, &w.w_up);
    let act = gate
        .zip_with(&up, "swiglu", |g, u| silu(g) * u)
        .expect("gate and up agree");
    matmul(&act, &w.w_down)
}

/// One decoder layer on the residual stream `x: [n, hidden]` at positions
/// `pos0..pos0 + n`; appends the new keys and values to `cache`.
/// `x + attn(rmsnorm(x))`, then `h + mlp(rmsnorm(h))`.
///
/// # Panics
/// If `pos0` is not the number of positions `cache` holds.
pub fn layer(
    w: &LlamaLayerWeights,
    config: &LlamaConfig,
    x: &Tensor<f64>,
    cache: &mut KvLayer,
    pos0: usize,
) -> Tensor<f64> {
    let xn = rmsnorm(x, &w.attn_norm, config.rms_eps);
    let h = add(x, &attention(w, config, &xn, cache, pos0));
    let hn = rmsnorm(&h, &w.ffn_norm, config.rms_eps);
    add(&h, &mlp(w, &hn))
}

/// The embedding rows of `ids`, `[ids.len(), hidden]`.
///
/// # Panics
/// If an id is not below `vocab_size`.
pub fn embed(w: &LlamaWeights, ids: &[u32]) -> Tensor<f64> {
    let h = w.config.hidden;
    let mut data = Vec::with_capacity(ids.len() * h);
    for &id in ids {
        let r = id as usize;
        data.extend_from_slice(&w.embed.data()[r * h..(r + 1) * h]);
    }
    Tensor::from_vec(&[ids.len(), h], data).expect("embedding rows")
}

/// The logits of final-normed rows `x: [n, hidden]`: `x @ head^T`, `[n, vocab]`.
pub fn logits(w: &LlamaWeights, x: &Tensor<f64>) -> Tensor<f64> {
    let (h, vocab) = (w.config.hidden, w.config.vocab_size);
    let head = w.head().data();
    let n = x.len() / h;
    let mut out = Vec::with_capacity(n * vocab);
    for row in x.data().chunks(h) {
        out.extend(
            head.chunks(h)
                .map(|e| row.iter().zip(e).map(|(a, b)| a * b).sum::<f64>()),
        );
    }
    Tensor::from_vec(&[n, vocab], out).expect("logit shape")
}

/// Checks that `ids` can follow the `cache.len()` cached positions of `w`'s model.
fn check_step(w: &LlamaWeights, ids: &[u32], cache: &KvCache) -> Result<()> {
    let c = &w.config;
    if cache.layers.len() != c.layers || cache.layers.iter().any(|l| l.kv_dim != c.kv_dim()) {
        return Err(Error::shape(
            "llama forward",
            format!(
                "the KV cache has {} layers of width {:?}; the model has {} of width {}",
                cache.layers.len(),
                cache.layers.first().map(|l| l.kv_dim),
                c.layers,
                c.kv_dim()
            ),
        ));
    }
    let pos0 = cache.len();
    if cache
        .layers
        .iter()
        .any(|l| l.len() != pos0 || l.v.len() != l.k.len())
    {
        return Err(Error::shape(
            "llama forward",
            "the KV cache's layers hold different numbers of positions",
        ));
    }
    if ids.is_empty() {
        return Err(Error::shape("llama forward", "no tokens to process"));
    }
    if pos0 + ids.len() > c.max_position {
        return Err(Error::shape(
            "llama forward",
            format!(
                "{pos0} cached + {} new positions exceed max_position {}",
                ids.len(),
                c.max_position
            ),
        ));
    }
    if let Some((i, id)) = ids
        .iter()
        .enumerate()
        .find(|(_, &id)| id as usize >= c.vocab_size)
    {
        return Err(Error::shape(
            "llama forward",
            format!("token {i} has id {id}, vocab_size is {}", c.vocab_size),
        ));
    }
    Ok(())
}

/// Runs `ids` through the model after the positions already in `cache` (so the new
/// tokens sit at positions `cache.len()..`), appends their keys and values to `cache`,
/// and returns their logits `[ids.len(), vocab]`.
///
/// # Errors
/// No tokens, an id out of the vocabulary, more positions than `max_position`, or a
/// cache built for another model.
pub fn forward(w: &LlamaWeights, ids: &[u32], cache: &mut KvCache) -> Result<Tensor<f64>> {
    Ok(logits(w, &final_hidden(w, ids, cache)?))
}

/// [`forward`] up to the final RMSNorm: the normalised last hidden states
/// `[ids.len(), hidden]` that the head turns into logits.
///
/// # Errors
/// As [`forward`].
pub fn final_hidden(w: &LlamaWeights, ids: &[u32], cache: &mut KvCache) -> Result<Tensor<f64>> {
    check_step(w, ids, cache)?;
    let pos0 = cache.len();
    let c = &w.config;
    let mut x = embed(w, ids);
    for (lw, lc) in w.layers.iter().zip(&mut cache.layers) {
        x = layer(lw, c, &x, lc, pos0);
    }
    Ok(rmsnorm(&x, &w.final_norm, c.rms_eps))
}

/// [`forward`], keeping only the last position's logits (what generation samples from;
/// the head is applied to that row only).
pub fn last_logits(w: &LlamaWeights, ids: &[u32], cache: &mut KvCache) -> Result<Vec<f64>> {
    let x = final_hidden(w, ids, cache)?;
    let h = w.config.hidden;
    let last = Tensor::from_vec(&[1, h], x.data()[x.len() - h..].to_vec())?;
    Ok(logits(w, &last).into_data())
}

/// The index of the largest value (the first one on ties).
///
/// # Panics
/// If `row` is empty.
pub fn argmax(row: &[f64]) -> u32 {
    assert!(!row.is_empty(), "argmax of an empty row");
    let mut best = 0;
    for (i, &v) in row.iter().enumerate() {
        if v > row[best] {
            best = i;
        }
    }
    best as u32
}

/// The `k` largest values with their indices, largest first (lower index first on
/// ties).
pub fn top_k(row: &[f64], k: usize) -> Vec<(u32, f64)> {
    let mut idx: Vec<usize> = (0..row.len()).collect();
    idx.sort_by(|&a, &b| row[b].total_cmp(&row[a]).then(a.cmp(&b)));
    idx.into_iter()
        .take(k)
        .map(|i| (i as u32, row[i]))
        .collect()
}

/// The gap between the largest and the second-largest value of a logits row: how far
/// a perturbation (fixed-point error) may move logits before greedy decoding changes.
/// Infinite for a row of one value.
pub fn top2_margin(row: &[f64]) -> f64 {
    match top_k(row, 2)[..] {
        [(_, a), (_, b)] => a - b,
        _ => f64::INFINITY,
    }
}

/// Greedy decoding: the prompt in one pass, then one token per step through the KV
/// cache, each time the argmax of the last logits. Returns the generated tokens (not
/// the prompt): `max_new` of them, or fewer when `eos` is produced (it is included).
///
/// # Errors
/// As [`forward`] (an empty prompt, ids out of range, running past `max_position`).
pub fn generate_greedy(
    w: &LlamaWeights,
    prompt: &[u32],
    max_new: usize,
    eos: Option<u32>,
) -> Result<Vec<u32>> {
    let mut cache = KvCache::new(&w.config);
    let mut out = Vec::with_capacity(max_new);
    if max_new == 0 {
        return Ok(out);
    }
    let mut next = argmax(&last_logits(w, prompt, &mut cache)?);
    loop {
        out.push(next);
        if out.len() == max_new || Some(next) == eos {
            return Ok(out);
        }
        next = argmax(&last_logits(w, &[next], &mut cache)?);
    }
}

/// One decoding step of a reference file: the last position's logits after the prompt
/// and the first `j` generated tokens.
#[derive(Clone, Debug, Deserialize)]
pub struct ReferenceStep {
    /// The first logits of the row (token ids 0, 1, ...).
    pub first_logits: Vec<f64>,
    /// The ids of the largest logits, largest first.
    pub top_ids: Vec<u32>,
    /// Their values.
    pub top_values: Vec<f64>,
    /// Largest minus second-largest logit.
    pub margin: f64,
}

/// One prompt of a reference file.
#[derive(Clone, Debug, Deserialize)]
pub struct ReferenceCase {
    /// The prompt's token ids.
    pub prompt: Vec<u32>,
    /// The reference's greedy continuation (not stopped at end-of-sequence).
    pub generated: Vec<u32>,
    /// One step per generated token: step `j` predicts `generated[j]`.
    pub steps: Vec<ReferenceStep>,
}

/// A reference file written by `scripts/llama_reference.py`.
#[derive(Clone, Debug, Deserialize)]
pub struct Reference {
    /// Which model the file describes.
    pub model: String,
    /// The model's vocabulary size.
    pub vocab_size: usize,
    /// The numpy implementation's time per decoded token, in seconds.
    #[serde(default)]
    pub seconds_per_token: Option<f64>,
    /// The prompts.
    pub cases: Vec<ReferenceCase>,
}

/// How this forward pass agrees with a reference file (see
/// [`check_against_reference`]).
#[derive(Clone, Debug, PartialEq)]
pub struct ReferenceReport {
    /// Prompts checked.
    pub cases: usize,
    /// Decoding steps checked (over all prompts).
    pub steps: usize,
    /// Largest |ours - reference| over the recorded logits (first values and top-k).
    pub max_abs_diff: f64,
    /// Largest |ours - reference| relative to the row's largest |logit|.
    pub max_rel_diff: f64,
    /// Steps where our argmax is the reference's greedy token.
    pub tokens_agree: usize,
    /// Steps where our top-k ids equal the reference's, in order.
    pub topk_agree: usize,
    /// The smallest top-2 margin in the reference.
    pub min_margin: f64,
    /// The reference's numpy time per token, if recorded.
    pub reference_seconds_per_token: Option<f64>,
}

/// Runs every prompt of the reference JSON at `json_path` through [`forward`] with a KV
/// cache, feeding the reference's own greedy tokens (so one disagreement does not shift
/// the later steps), and measures the agreement of the last-position logits at each
/// step. Whether the figures are good enough is the caller's decision (both sides are
/// f64: expect ~1e-10).
///
/// # Errors
/// The file cannot be read or parsed, describes a different vocabulary, has a step
/// count different from its generated tokens, or a forward pass fails.
pub fn check_against_reference(
    w: &LlamaWeights,
    json_path: impl AsRef<Path>,
) -> Result<ReferenceReport> {
    let path = json_path.as_ref();
    let bad = |detail: String| Error::Config {
        path: path.to_path_buf(),
        detail,
    };
    let text = std::fs::read_to_string(path).map_err(|source| Error::File {
        path: path.to_path_buf(),
        cause: source,
    })?;
    let r: Reference =
        serde_json::from_str(&text).map_err(|e| bad(format!("not a reference file: {e}")))?;
    if r.vocab_size != w.config.vocab_size {
        return Err(bad(format!(
            "reference for `{}` has vocab_size {}, the model has {}",
            r.model, r.vocab_size, w.config.vocab_size
        )));
    }
    let mut rep = ReferenceReport {
        cases: r.cases.len(),
        steps: 0,
        max_abs_diff: 0.0,
        max_rel_diff: 0.0,
        tokens_agree: 0,
        topk_agree: 0,
        min_margin: f64::INFINITY,
        reference_seconds_per_token: r.seconds_per_token,
    };
    for (ci, case) in r.cases.iter().enumerate() {
        if case.steps.len() != case.generated.len() {
            return Err(bad(format!(
                "case {ci}: {} steps for {} generated tokens",
                case.steps.len(),
                case.generated.len()
            )));
        }
        let mut cache = KvCache::new(&w.config);
        let mut input: Vec<u32> = case.prompt.clone();
        for (step, &want) in case.steps.iter().zip(&case.generated) {
            let row = last_logits(w, &input, &mut cache)?;
            let scale = row.iter().fold(0.0f64, |m, v| m.max(v.abs())).max(1e-300);
            if step.top_ids.len() != step.top_values.len() {
                return Err(bad(format!(
                    "case {ci}: top_ids and top_values differ in length"
                )));
            }
            let pairs = step
                .first_logits
                .iter()
                .enumerate()
                .map(|(i, &v)| (i, v))
                .chain(
                    step.top_ids
                        .iter()
                        .zip(&step.top_values)
                        .map(|(&i, &v)| (i as usize, v)),
                );
            for (i, v) in pairs {
                let ours = *row
                    .get(i)
                    .ok_or_else(|| bad(format!("case {ci}: logit index {i} out of range")))?;
                let d = (ours - v).abs();
                rep.max_abs_diff = rep.max_abs_diff.max(d);
                rep.max_rel_diff = rep.max_rel_diff.max(d / scale);
            }
            if argmax(&row) == want {
                rep.tokens_agree += 1;
            }
            let ours_top: Vec<u32> = top_k(&row, step.top_ids.len())
                .into_iter()
                .map(|(i, _)| i)
                .collect();
            if ours_top == step.top_ids {
                rep.topk_agree += 1;
            }
            rep.min_margin = rep.min_margin.min(step.margin);
            rep.steps += 1;
            input = vec![want];
        }
    }
    Ok(rep)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::llama::model::{
        permute_qk_for_interleaved, unpermute_qk_from_interleaved, LayerTensor, LlamaLoader,
        MemorySource, TensorNames,
    };

    fn max_diff(a: &[f64], b: &[f64]) -> f64 {
        assert_eq!(a.len(), b.len());
        a.iter().zip(b).fold(0.0, |m, (x, y)| m.max((x - y).abs()))
    }

    fn full_logits(w: &LlamaWeights, ids: &[u32]) -> Tensor<f64> {
        forward(w, ids, &mut KvCache::new(&w.config)).expect("forward")
    }

    fn ids(n: usize, vocab: usize, salt: u32) -> Vec<u32> {
        (0..n as u32)
            .map(|i| (i.wrapping_mul(37).wrapping_add(salt * 11 + 5)) % vocab as u32)
            .collect()
    }

    /// The demo reference model: `LlamaConfig::demo()` with seed 7.
    pub(crate) const DEMO_SEED: u64 = 7;

    #[test]
    fn kv_cache_decode_equals_full_recompute() {
        for style in [RopeStyle::HalfSplit, RopeStyle::Interleaved] {
            let mut config = LlamaConfig::demo();
            config.rope_style = style;
            let w = LlamaWeights::demo(&config, 3);
            let seq = ids(13, config.vocab_size, 1);
            let full = full_logits(&w, &seq);
            let v = config.vocab_size;
            // Prefill 5, then one token at a time.
            let mut cache = KvCache::new(&config);
            let mut rows = forward(&w, &seq[..5], &mut cache).unwrap().into_data();
            for &t in &seq[5..] {
                rows.extend(forward(&w, &[t], &mut cache).unwrap().into_data());
            }
            assert_eq!(cache.len(), seq.len());
            let d = max_diff(&rows, full.data());
            assert!(d < 1e-12, "{style:?}: decode vs full {d:e}");
            // Uneven chunks.
            let mut cache = KvCache::new(&config);
            let mut rows = Vec::new();
            for chunk in [&seq[..3], &seq[3..7], &seq[7..]] {
                rows.extend(forward(&w, chunk, &mut cache).unwrap().into_data());
            }
            assert!(max_diff(&rows, full.data()) < 1e-12);
            // last_logits is the last row.
            let last = last_logits(&w, &seq, &mut KvCache::new(&config)).unwrap();
            assert_eq!(last, full.data()[(seq.len() - 1) * v..].to_vec());
        }
    }

    /// Expands a GQA layer to plain multi-head attention by repeating each KV head's
    /// projection columns for every query head of its group.
    fn expand_to_mha(w: &LlamaWeights) -> LlamaWeights {
        let c = &w.config;
        let (d, group) = (c.head_dim, c.group());
        let mut out = w.clone();
        out.config.kv_heads = c.heads;
        let expand = |t: &Tensor<f64>| {
            let rows = t.shape()[0];
            let mut data = Vec::with_capacity(rows * c.heads * d);
            for r in 0..rows {
                let row = &t.data()[r * c.kv_dim()..(r + 1) * c.kv_dim()];
                for h in 0..c.heads {
                    let kvh = h / group;
                    data.extend_from_slice(&row[kvh * d..(kvh + 1) * d]);
                }
            }
            Tensor::from_vec(&[rows, c.heads * d], data).unwrap()
        };
        for l in &mut out.layers {
            l.wk = expand(&l.wk);
            l.wv = expand(&l.wv);
        }
        out
    }

    #[test]
    fn gqa_equals_mha_with_repeated_kv_heads() {
        for kv_heads in [6, 3, 2] {
            for style in [RopeStyle::HalfSplit, RopeStyle::Interleaved] {
                let config = LlamaConfig {
                    heads: 6,
                    kv_heads,
                    hidden: 24,
                    rope_style: style,
                    ..LlamaConfig::demo()
                };
                let w = LlamaWeights::demo(&config, 21);
                let mha = expand_to_mha(&w);
                mha.config.validate().unwrap();
                let seq = ids(9, config.vocab_size, 2);
                let a = full_logits(&w, &seq);
                let b = full_logits(&mha, &seq);
                let d = max_diff(a.data(), b.data());
                assert!(d < 1e-12, "group {}: {d:e}", 6 / kv_heads);
                // The grouping matters: a wrong KV-head assignment changes the logits.
                if kv_heads < 6 {
                    let mut wrong = mha.clone();
                    for l in &mut wrong.layers {
                        let cols = l.wk.shape()[1];
                        let rows = l.wk.shape()[0];
                        let d8 = config.head_dim;
                        let mut data = l.wk.data().to_vec();
                        for r in 0..rows {
                            // Swap the keys of heads 0 and the last one, which sit in
                            // different groups whenever there is more than one KV head.
                            let (a0, a1) = (0, (config.heads - 1) * d8);
                            for j in 0..d8 {
                                data.swap(r * cols + a0 + j, r * cols + a1 + j);
                            }
                        }
                        l.wk = Tensor::from_vec(&[rows, cols], data).unwrap();
                    }
                    let c = full_logits(&wrong, &seq);
                    assert!(max_diff(a.data(), c.data()) > 1e-6);
                }
            }
        }
    }

    #[test]
    fn rope_matches_complex_rotation() {
        let (d, heads, theta) = (8, 3, 500.0);
        let positions = [0usize, 1, 7, 100, 4095];
        let n = positions.len();
        let x: Vec<f64> = (0..n * heads * d)
            .map(|i| ((i * 7919 % 101) as f64 - 50.0) / 17.0)
            .collect();
        let x = Tensor::from_vec(&[n, heads * d], x).unwrap();
        for style in [RopeStyle::HalfSplit, RopeStyle::Interleaved] {
            let y = rope(&x, &positions, d, theta, style);
            for (r, &p) in positions.iter().enumerate() {
                for h in 0..heads {
                    for i in 0..d / 2 {
                        let (ia, ib) = match style {
                            RopeStyle::HalfSplit => (i, i + d / 2),
                            RopeStyle::Interleaved => (2 * i, 2 * i + 1),
                        };
                        let base = r * heads * d + h * d;
                        let (a, b) = (x.data()[base + ia], x.data()[base + ib]);
                        // z = a + ib times e^{i p theta^{-2i/d}}, in polar form.
                        let angle = p as f64 / theta.powf(2.0 * i as f64 / d as f64);
                        let (rad, phi) = (a.hypot(b), b.atan2(a));
                        let (re, im) = (rad * (phi + angle).cos(), rad * (phi + angle).sin());
                        let got = (y.data()[base + ia], y.data()[base + ib]);
                        assert!(
                            (got.0 - re).abs() < 1e-9 && (got.1 - im).abs() < 1e-9,
                            "{style:?} pos {p} pair {i}: {got:?} vs ({re}, {im})"
                        );
                    }
                }
            }
        }
        // q.k after RoPE depends only on the relative position.
        let q = Tensor::from_vec(&[1, d], x.data()[..d].to_vec()).unwrap();
        let k = Tensor::from_vec(&[1, d], x.data()[d..2 * d].to_vec()).unwrap();
        let dot = |pq: usize, pk: usize| {
            let a = rope(&q, &[pq], d, theta, RopeStyle::HalfSplit);
            let b = rope(&k, &[pk], d, theta, RopeStyle::HalfSplit);
            a.data()
                .iter()
                .zip(b.data())
                .map(|(u, v)| u * v)
                .sum::<f64>()
        };
        assert!((dot(10, 3) - dot(107, 100)).abs() < 1e-9);
    }

    #[test]
    fn causal_mask_later_tokens_do_not_change_earlier_logits() {
        let config = LlamaConfig::demo();
        let w = LlamaWeights::demo(&config, 5);
        let a = ids(10, config.vocab_size, 3);
        let mut b = a.clone();
        b[7] = (b[7] + 1) % config.vocab_size as u32;
        b[9] = (b[9] + 5) % config.vocab_size as u32;
        let (la, lb) = (full_logits(&w, &a), full_logits(&w, &b));
        let v = config.vocab_size;
        assert_eq!(la.data()[..7 * v], lb.data()[..7 * v]);
        assert!(max_diff(&la.data()[7 * v..8 * v], &lb.data()[7 * v..8 * v]) > 1e-6);
    }

    #[test]
    fn config_validation_names_the_field() {
        let ok = LlamaConfig::demo();
        ok.validate().unwrap();
        LlamaConfig::smollm2_135m().validate().unwrap();
        let cases: Vec<(LlamaConfig, &str)> = vec![
            (
                LlamaConfig {
                    kv_heads: 3,
                    ..ok.clone()
                },
                "kv_heads",
            ),
            (
                LlamaConfig {
                    head_dim: 7,
                    ..ok.clone()
                },
                "head_dim",
            ),
            (
                LlamaConfig {
                    vocab_size: 0,
                    ..ok.clone()
                },
                "vocab_size",
            ),
            (
                LlamaConfig {
                    ffn: 0,
                    ..ok.clone()
                },
                "intermediate_size",
            ),
            (
                LlamaConfig {
                    kv_heads: 0,
                    ..ok.clone()
                },
                "num_key_value_heads",
            ),
            (
                LlamaConfig {
                    rms_eps: 0.0,
                    ..ok.clone()
                },
                "rms_norm_eps",
            ),
            (
                LlamaConfig {
                    rope_theta: f64::NAN,
                    ..ok.clone()
                },
                "rope_theta",
            ),
        ];
        for (c, field) in cases {
            let e = c.validate().unwrap_err().to_string();
            assert!(e.contains(field), "{field}: {e}");
        }
    }

    #[test]
    fn forward_rejects_bad_input() {
        let config = LlamaConfig::demo();
        let w = LlamaWeights::demo(&config, 1);
        let mut cache = KvCache::new(&config);
        assert!(forward(&w, &[], &mut cache).is_err());
        let e = forward(&w, &[1, 64], &mut cache).unwrap_err().to_string();
        assert!(e.contains("64") && e.contains("vocab_size"), "{e}");
        let long = vec![1; config.max_position + 1];
        assert!(forward(&w, &long, &mut cache).is_err());
        let other = KvCache::new(&LlamaConfig {
            layers: 3,
            ..config.clone()
        });
        assert!(forward(&w, &[1], &mut other.clone()).is_err());
        assert!(cache.is_empty(), "failed calls leave the cache alone");
    }

    /// Moves a model into llama.cpp's layout the way a GGUF file stores it: every tensor
    /// row-major `[out, in]` under GGUF names, q and k rows permuted.
    fn as_gguf_source(w: &LlamaWeights) -> MemorySource {
        let c = &w.config;
        let mut src = MemorySource::default();
        let mut put = |name: String, t: Tensor<f64>| {
            src.tensors.insert(name, t);
        };
        let vector = |v: &Vec<f64>| Tensor::from_vec(&[v.len()], v.clone()).unwrap();
        let names = TensorNames::Gguf;
        put(names.embed().into(), w.embed.clone());
        put(names.final_norm().into(), vector(&w.final_norm));
        if let Some(h) = &w.lm_head {
            put(names.lm_head().into(), h.clone());
        }
        for (i, l) in w.layers.iter().enumerate() {
            use LayerTensor::*;
            put(names.layer(i, AttnNorm), vector(&l.attn_norm));
            put(
                names.layer(i, Q),
                permute_qk_for_interleaved(&l.wq.transpose(), c.heads),
            );
            put(
                names.layer(i, K),
                permute_qk_for_interleaved(&l.wk.transpose(), c.kv_heads),
            );
            put(names.layer(i, V), l.wv.transpose());
            put(names.layer(i, O), l.wo.transpose());
            put(names.layer(i, FfnNorm), vector(&l.ffn_norm));
            put(names.layer(i, Gate), l.w_gate.transpose());
            put(names.layer(i, Up), l.w_up.transpose());
            put(names.layer(i, Down), l.w_down.transpose());
        }
        src
    }

    #[test]
    fn hf_half_split_equals_permuted_gguf_interleaved() {
        for tied in [true, false] {
            let config = LlamaConfig {
                tied_head: tied,
                ..LlamaConfig::demo()
            };
            let hf = LlamaWeights::demo(&config, 9);
            let gguf_config = LlamaConfig {
                rope_style: RopeStyle::Interleaved,
                ..config.clone()
            };
            let loader = LlamaLoader::new(
                gguf_config,
                TensorNames::Gguf,
                Box::new(as_gguf_source(&hf)),
            )
            .unwrap();
            let gguf = LlamaWeights::load_all(&loader).unwrap();
            assert_ne!(gguf.layers[0].wq, hf.layers[0].wq, "q rows are permuted");
            assert_eq!(gguf, hf.with_rope_style(RopeStyle::Interleaved));
            assert_eq!(gguf.with_rope_style(RopeStyle::HalfSplit), hf);
            let seq = ids(11, config.vocab_size, 4);
            let d = max_diff(
                full_logits(&hf, &seq).data(),
                full_logits(&gguf, &seq).data(),
            );
            assert!(d < 1e-12, "HF vs GGUF layout: {d:e}");
            // The wrong pairing for the stored layout does change the answer.
            let mut wrong = gguf.clone();
            wrong.config.rope_style = RopeStyle::HalfSplit;
            let d = max_diff(
                full_logits(&hf, &seq).data(),
                full_logits(&wrong, &seq).data(),
            );
            assert!(d > 1e-6, "layouts must matter: {d:e}");
        }
        let t = Tensor::from_vec(&[12, 2], (0..24).map(f64::from).collect()).unwrap();
        let p = permute_qk_for_interleaved(&t, 2);
        // Head 0 rows 0..6: half-split pairs (0,3), (1,4), (2,5) become adjacent.
        let firsts: Vec<f64> = p.data().chunks(2).map(|r| r[0] / 2.0).collect();
        assert_eq!(
            firsts,
            vec![0., 3., 1., 4., 2., 5., 6., 9., 7., 10., 8., 11.]
        );
        assert_eq!(unpermute_qk_from_interleaved(&p, 2), t);
    }

    #[test]
    fn generate_greedy_matches_argmax_of_recompute() {
        let config = LlamaConfig::demo();
        let w = LlamaWeights::demo(&config, DEMO_SEED);
        let prompt = ids(6, config.vocab_size, 6);
        let out = generate_greedy(&w, &prompt, 8, None).unwrap();
        assert_eq!(out.len(), 8);
        let mut seq = prompt.clone();
        for &t in &out {
            let l = full_logits(&w, &seq);
            let v = config.vocab_size;
            let last = &l.data()[(seq.len() - 1) * v..];
            assert_eq!(argmax(last), t);
            assert!(top2_margin(last) >= 0.0);
            seq.push(t);
        }
        let stop = generate_greedy(&w, &prompt, 8, Some(out[2])).unwrap();
        assert_eq!(stop, out[..=out.iter().position(|&t| t == out[2]).unwrap()]);
        assert_eq!(
            top_k(&[1.0, 3.0, 3.0, 2.0], 3),
            vec![(1, 3.0), (2, 3.0), (3, 2.0)]
        );
        assert_eq!(top2_margin(&[1.0, 3.0, 2.5]), 0.5);
    }

    fn workspace_root() -> std::path::PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .expect("workspace root")
            .to_path_buf()
    }

    /// Numpy (scripts/llama_reference.py, reading the HF directory this model was
    /// written to) vs this forward pass on the demo model.
    #[test]
    fn demo_agrees_with_numpy_reference() {
        let w = LlamaWeights::demo(&LlamaConfig::demo(), DEMO_SEED);
        let path = workspace_root().join("tests/data/llama_demo_reference.json");
        let rep = check_against_reference(&w, &path).expect("reference");
        eprintln!("{rep:?}");
        assert!(rep.cases >= 2 && rep.steps >= 16, "{rep:?}");
        assert!(rep.max_abs_diff < 1e-12, "{rep:?}");
        assert_eq!(rep.tokens_agree, rep.steps, "{rep:?}");
        assert_eq!(rep.topk_agree, rep.steps, "{rep:?}");
        // A different model does not pass.
        let other = LlamaWeights::demo(&LlamaConfig::demo(), DEMO_SEED + 1);
        let rep = check_against_reference(&other, &path).unwrap();
        assert!(rep.max_abs_diff > 1e-3, "{rep:?}");
    }

    /// SmolLM2-135M-Instruct (Q4_1 GGUF, dequantized by the `gguf` package and written
    /// as safetensors under GGUF names by `scripts/llama_reference.py
    /// --dump-safetensors`) against the numpy reference; skipped when the file is absent.
    #[test]
    fn smollm2_agrees_with_numpy_reference() {
        let root = workspace_root();
        let st = root.join("models/SmolLM2-135M-Instruct/gguf-dequantized.safetensors");
        if !st.is_file() {
            eprintln!("skipped: {} not found", st.display());
            return;
        }
        let source = crate::llama::model::SafetensorsSource::open(&st).unwrap();
        let loader = LlamaLoader::new(
            LlamaConfig::smollm2_135m(),
            TensorNames::Gguf,
            Box::new(source),
        )
        .unwrap();
        let w = LlamaWeights::load_all(&loader).unwrap();
        let mut cache = KvCache::new(&w.config);
        last_logits(&w, &[1, 9690, 198], &mut cache).unwrap();
        let t0 = std::time::Instant::now();
        for t in [2683, 359, 253, 5356] {
            last_logits(&w, &[t], &mut cache).unwrap();
        }
        eprintln!(
            "rust f64 decode: {:.3} s per token",
            t0.elapsed().as_secs_f64() / 4.0
        );
        let t0 = std::time::Instant::now();
        let rep =
            check_against_reference(&w, root.join("tests/data/smollm2_reference.json")).unwrap();
        eprintln!("{rep:?} in {:.1}s", t0.elapsed().as_secs_f64());
        assert_eq!(rep.steps, 24, "{rep:?}");
        assert!(rep.max_abs_diff < 1e-9, "{rep:?}");
        assert_eq!(rep.tokens_agree, rep.steps, "{rep:?}");
        assert_eq!(rep.topk_agree, rep.steps, "{rep:?}");
    }

    /// Writes the demo model as a Hugging Face directory for
    /// `scripts/llama_reference.py --hf target/llama-demo-hf` (run with `--ignored`).
    #[test]
    #[ignore = "writes target/llama-demo-hf for the numpy reference script"]
    fn dump_demo_hf_dir() {
        let w = LlamaWeights::demo(&LlamaConfig::demo(), DEMO_SEED);
        let dir = workspace_root().join("target/llama-demo-hf");
        w.save_hf_dir(&dir).unwrap();
        assert_eq!(LlamaWeights::load_hf_dir(&dir).unwrap(), w);
    }
}
