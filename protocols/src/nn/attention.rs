//! Multi-head and grouped-query attention, bidirectional (BERT) or causal (Llama), with
//! optional rotary position embeddings at public positions and an optional secret-shared
//! KV cache (PUMA arXiv 2307.12533 §4 for the layout; RoPE: Su et al. 2021).
//!
//! Layout choices, each saving rounds or bytes:
//! - Q, K and V come from one product with the concatenated weight [h, (A + 2G) d], so
//!   their openings share one round; the model owner folds 1/sqrt(d) into W_q (and b_q).
//! - RoPE rotates pairs of Q and K coordinates by public angles. It is applied to the
//!   *untruncated* projection (additive shares at scale 2f, with cos and sin encoded at
//!   [`ROPE_BITS`] more bits and V scaled by 2^ROPE_BITS), so the projection's one
//!   truncation (by f + ROPE_BITS) serves both: RoPE costs no round and no byte
//!   ([`crate::arith::matmul_prepared_map_trunc`]).
//! - Grouped-query attention needs no copy of K and V: the r = A / G query heads of a KV
//!   head are stacked as [G, r S, d] (query head h uses KV head h / r, as HF's
//!   `repeat_kv`), so scores are one batched product [G, r S, d] x [G, d, T] and the
//!   context one [G, r S, T] x [G, T, d].
//! - The causal and padding masks are public: added as constants before the softmax (no
//!   round, no byte).
//! - The KV cache keeps K and V secret-shared ([G, T, d]); a decode step appends one row
//!   per KV head and attends over all T positions.

use super::linear::{Keys, Linear};
use super::Cx;
use tessera::error::{Error, Result};
use tessera::{Party, Shared, Tensor};

/// Extra fractional bits of RoPE's public cos and sin (the projection is truncated by
/// f + ROPE_BITS at once; products stay below 2^62 for |q|, |k| < 2^(46 - 2f - 1)).
pub const ROPE_BITS: u32 = 16;

/// The additive value of a masked score (as in HF BERT; softmax gives it ~0).
pub const MASKED: f64 = -10000.0;

/// How RoPE pairs the coordinates of a head.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RopeStyle {
    /// Pairs (i, i + d/2): Hugging Face's `rotate_half` (GPT-NeoX style).
    HalfSplit,
    /// Pairs (2i, 2i + 1): llama.cpp's layout, for Q/K rows permuted as GGUF stores them.
    Interleaved,
}

/// Rotary position embedding: pair i of a head rotates by pos * theta^(-2i/d).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Rope {
    /// Base (10000 in Llama, 100000 in SmolLM2).
    pub theta: f64,
    /// Pairing of coordinates.
    pub style: RopeStyle,
}

impl Rope {
    /// The coordinate pairs (a, b) of a head of `d` and their angle index.
    fn pairs(&self, d: usize) -> impl Iterator<Item = (usize, usize, usize)> + '_ {
        let half = d / 2;
        (0..half).map(move |i| match self.style {
            RopeStyle::HalfSplit => (i, i + half, i),
            RopeStyle::Interleaved => (2 * i, 2 * i + 1, i),
        })
    }

    /// Rotates one head's coordinates in f64 at position `pos` (the plaintext definition).
    pub fn apply_plain(&self, head: &mut [f64], pos: usize) {
        let d = head.len();
        for (a, b, i) in self.pairs(d) {
            let ang = pos as f64 * self.theta.powf(-2.0 * i as f64 / d as f64);
            let (s, c) = ang.sin_cos();
            let (x, y) = (head[a], head[b]);
            head[a] = x * c - y * s;
            head[b] = x * s + y * c;
        }
    }

    /// Rotates one head of ring values (an additive share at any scale) by cos and sin
    /// encoded with `bits` fractional bits: exact Z_2^64-linear map (scale + bits).
    fn apply_ring(&self, head: &mut [u64], pos: usize, bits: u32) {
        let d = head.len();
        let one = 2f64.powi(bits as i32);
        for (a, b, i) in self.pairs(d) {
            let ang = pos as f64 * self.theta.powf(-2.0 * i as f64 / d as f64);
            let (s, c) = ang.sin_cos();
            let (c, s) = (
                (c * one).round() as i64 as u64,
                (s * one).round() as i64 as u64,
            );
            let (x, y) = (head[a], head[b]);
            head[a] = x.wrapping_mul(c).wrapping_sub(y.wrapping_mul(s));
            head[b] = x.wrapping_mul(s).wrapping_add(y.wrapping_mul(c));
        }
    }
}

/// Which scores are hidden (public; costs nothing).
#[derive(Clone, Debug, PartialEq)]
pub enum AttentionMask {
    /// Every query sees every key.
    None,
    /// An additive mask per key (0 or [`MASKED`]), the same for every query (padding).
    Keys(Vec<f64>),
    /// Query q (at position past + q) sees keys 0..=past + q.
    Causal {
        /// Positions already in the cache.
        past: usize,
        /// Number of new queries.
        queries: usize,
    },
}

impl AttentionMask {
    /// The mask of softmax rows row0..row0 + rows of k keys, rows counted over the stacked
    /// [G, r S] queries (row i is query i % S): one row to broadcast, one per row, or none.
    pub fn rows(&self, row0: usize, rows: usize, k: usize) -> Result<Option<Vec<f64>>> {
        match self {
            AttentionMask::None => Ok(None),
            AttentionMask::Keys(m) if m.len() == k => Ok(Some(m.clone())),
            AttentionMask::Keys(m) => Err(Error::shape(
                "attention mask",
                format!("{} entries for {k} keys", m.len()),
            )),
            AttentionMask::Causal { past, queries } => {
                if past + queries != k {
                    return Err(Error::shape(
                        "causal mask",
                        format!("{past} cached + {queries} new positions for {k} keys"),
                    ));
                }
                if *queries <= 1 {
                    return Ok(None); // the newest query sees everything
                }
                let mut m = Vec::with_capacity(rows * k);
                for r in row0..row0 + rows {
                    let q = r % queries;
                    m.extend((0..k).map(|j| if j <= past + q { 0.0 } else { MASKED }));
                }
                Ok(Some(m))
            }
        }
    }
}

/// Secret-shared keys and values of the positions seen so far, per KV head: [G, T, d].
#[derive(Clone, Debug, Default)]
pub struct KvCache {
    k: Option<Shared>,
    v: Option<Shared>,
}

impl KvCache {
    /// An empty cache.
    pub fn new() -> KvCache {
        KvCache::default()
    }
    /// A cache holding keys and values [G, T, d] already (e.g. a benchmark's).
    pub fn preset(k: Shared, v: Shared) -> Result<KvCache> {
        if k.shape().len() != 3 || k.shape() != v.shape() {
            return Err(Error::shape(
                "kv cache",
                format!("keys {:?} and values {:?}", k.shape(), v.shape()),
            ));
        }
        Ok(KvCache {
            k: Some(k),
            v: Some(v),
        })
    }
    /// Positions held.
    pub fn len(&self) -> usize {
        self.k.as_ref().map_or(0, |k| k.shape()[1])
    }
    /// Whether the cache is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Words held per share component (K and V).
    pub fn words(&self) -> usize {
        self.k.as_ref().map_or(0, |k| 2 * k.len())
    }
    /// Appends [G, S, d] keys and values (local copies); returns the full K and V.
    fn append(&mut self, k: Shared, v: Shared) -> Result<(Shared, Shared)> {
        let join = |old: &Option<Shared>, new: Shared| -> Result<Shared> {
            match old {
                None => Ok(new),
                Some(o) => concat_axis1(o, &new),
            }
        };
        let k = join(&self.k, k)?;
        let v = join(&self.v, v)?;
        self.k = Some(k.clone());
        self.v = Some(v.clone());
        Ok((k, v))
    }
}

/// Concatenates [G, T1, d] and [G, T2, d] along the middle axis (local).
fn concat_axis1(a: &Shared, b: &Shared) -> Result<Shared> {
    let (g, t1, d) = (a.shape()[0], a.shape()[1], a.shape()[2]);
    let t2 = b.shape()[1];
    if b.shape()[0] != g || b.shape()[2] != d {
        return Err(Error::shape(
            "kv cache",
            format!("append {:?} to {:?}", b.shape(), a.shape()),
        ));
    }
    a.zip_local(b, |x, y| {
        let mut out = Vec::with_capacity(g * (t1 + t2) * d);
        for gi in 0..g {
            out.extend_from_slice(&x.data()[gi * t1 * d..(gi + 1) * t1 * d]);
            out.extend_from_slice(&y.data()[gi * t2 * d..(gi + 1) * t2 * d]);
        }
        Tensor::from_vec(&[g, t1 + t2, d], out)
    })
}

/// Self-attention: fused QKV projection (with RoPE folded into its truncation), scores,
/// softmax with a public mask, context, output projection.
///
/// Rounds (default methods, f = 16): projections 2 + 2, scores 2, context 2, softmax as
/// [`crate::softmax::softmax`] (per chunk), RoPE and masks 0.
#[derive(Clone, Debug)]
pub struct Attention {
    /// [h, (heads + 2 kv_heads) head_dim], Q columns first, then K, then V.
    pub qkv: Linear,
    /// [heads head_dim, h].
    pub out: Linear,
    /// Query heads.
    pub heads: usize,
    /// Key/value heads (heads for plain multi-head attention).
    pub kv_heads: usize,
    /// Width of a head.
    pub head_dim: usize,
    /// Rotary embedding (None: positions are added to the input, as in BERT).
    pub rope: Option<Rope>,
}

impl Attention {
    /// An unshared attention block of hidden size `h`.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        h: usize,
        heads: usize,
        kv_heads: usize,
        head_dim: usize,
        bias: bool,
        rope: Option<Rope>,
        keys: &mut Keys,
    ) -> Result<Attention> {
        if heads == 0 || kv_heads == 0 || !heads.is_multiple_of(kv_heads) || head_dim == 0 {
            return Err(Error::shape(
                "attention",
                format!("{heads} query heads, {kv_heads} kv heads of {head_dim}"),
            ));
        }
        if rope.is_some() && (bias || !head_dim.is_multiple_of(2)) {
            return Err(Error::Unsupported(
                "RoPE needs an even head width and a projection without bias".into(),
            ));
        }
        let qkv_w = (heads + 2 * kv_heads) * head_dim;
        Ok(Attention {
            qkv: Linear::new(h, qkv_w, bias, keys),
            out: Linear::new(heads * head_dim, h, bias, keys),
            heads,
            kv_heads,
            head_dim,
            rope,
        })
    }

    /// The fused projection with RoPE at positions pos0.. folded into its truncation.
    fn project(&self, p: &mut Party, cx: &mut Cx, x: &Shared, pos0: usize) -> Result<Shared> {
        let Some(rope) = self.rope else {
            return self.qkv.forward(p, cx, x);
        };
        let (a, g, d) = (self.heads, self.kv_heads, self.head_dim);
        let width = (a + 2 * g) * d;
        let rot_heads = a + g;
        let map = move |z: &mut [u64]| {
            for (s, row) in z.chunks_mut(width).enumerate() {
                let (qk, v) = row.split_at_mut(rot_heads * d);
                for head in qk.chunks_mut(d) {
                    rope.apply_ring(head, pos0 + s, ROPE_BITS);
                }
                for e in v {
                    *e = e.wrapping_shl(ROPE_BITS);
                }
            }
        };
        cx.matmul_prepared_map(p, x, &self.qkv.w, ROPE_BITS, &map)
    }

    /// Attention over x [S, h] at positions pos0..pos0 + S (public), with the cache when
    /// given (its length must be pos0), and the public mask.
    pub fn forward(
        &self,
        p: &mut Party,
        cx: &mut Cx,
        x: &Shared,
        pos0: usize,
        cache: Option<&mut KvCache>,
        mask: &AttentionMask,
    ) -> Result<Shared> {
        let (a, g, d) = (self.heads, self.kv_heads, self.head_dim);
        let s = x.shape()[0];
        let r = a / g;
        // Q, K and V all go into replicated products (and K, V into the cache): one
        // reshare for the three.
        let qkv = self.project(p, cx, x, pos0)?;
        let qkv = cx.replicate(p, "matmul", qkv)?;
        let parts = qkv.split_last(&[a * d, g * d, g * d])?;
        // [S, n d] -> [n, S, d]
        let heads = |t: &Shared, n: usize| t.reshape(&[s, n, d])?.swap01();
        let q = heads(&parts[0], a)?.reshape(&[g, r * s, d])?;
        let (k, v) = (heads(&parts[1], g)?, heads(&parts[2], g)?);
        let (k, v) = match cache {
            Some(c) => {
                if c.len() != pos0 {
                    return Err(Error::shape(
                        "attention",
                        format!(
                            "cache of {} positions for new positions from {pos0}",
                            c.len()
                        ),
                    ));
                }
                c.append(k, v)?
            }
            None => (k, v),
        };
        let kt = k.transpose(); // [G, d, T]
        let scores = cx.matmul(p, &q, &kt)?; // [G, r S, T]
        let probs = cx.softmax(p, &scores, mask)?;
        let ctx = cx.matmul(p, &probs, &v)?; // [G, r S, d]
        let ctx = ctx.reshape(&[a, s, d])?.swap01()?.reshape(&[s, a * d])?;
        self.out.forward(p, cx, &ctx)
    }
}
