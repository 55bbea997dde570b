//! The BERT encoder under MPC (PUMA arXiv 2307.12533 §4; SecFormer arXiv 2401.00793 §3).
//!
//! Roles: the model owner ([`MODEL_OWNER`], P1) secret-shares the weights, the data owner
//! ([`DATA_OWNER`], P0) holds the token ids and feeds them to a private lookup, and only
//! the data owner learns the output. The architecture (sizes, number of layers) and the sequence
//! length are public, as in PUMA; the attention mask therefore is a public vector.
//!
//! Layout choices, each saving rounds or bytes:
//! - Q, K and V come from one product with the concatenated [H, 3H] weight, so their
//!   openings share one round; 1/sqrt(head_dim) is folded into W_q and b_q by the model
//!   owner before sharing, so scores need no extra multiplication.
//! - Every weight is a [`PreparedWeight`]: in 2PC W - B is opened once per model, and each
//!   query then opens only the activations (see `tessera::preproc`).
//! - Heads are batched: scores are one batched matmul [A, S, d] x [A, d, S], the softmax
//!   runs on [A, S, S] at once, the context is one batched matmul.
//! - The word embedding is a two-server DPF lookup ([`crate::lookup`]): the data owner
//!   deals DPF keys for its token ids to the two parties that share a table component
//!   (P1 and P2 in 3PC; P1 and the dealer in 2PC, on the fixed B of the prepared table),
//!   so no seq x vocab one-hot is shared or opened (PUMA's one-hot product costs 31 MB
//!   per party at seq 128 in 2PC; the lookup sends ~34 words per token plus seq x H).
//!   Position and token-type rows are selected locally because their indices are public.

use super::model::{BertConfig, BertWeights, LayerWeights};
use crate::arith::{self, demand as ad, PreparedWeight};
use crate::gelu::{gelu, gelu_demand, GeluMethod};
use crate::layernorm::{layernorm, layernorm_demand, LayerNormMethod};
use crate::lookup::{lookup_demand, lookup_rows, lookup_rows_dealer};
use crate::rsqrt::{rsqrt, rsqrt_demand, RsqrtMethod};
use crate::softmax::{softmax, softmax_demand, SoftmaxMethod};
use std::time::{Duration, Instant};
use tessera::error::{Error, PartyId, Result};
use tessera::preproc::Demand;
use tessera::{CommStats, Party, Setting, Shared, Tensor};

/// The party that holds the model in the clear and shares it.
pub const MODEL_OWNER: PartyId = 1;
/// The party that holds the input and learns the output.
pub const DATA_OWNER: PartyId = 0;

/// Which approximation each nonlinear layer uses.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Methods {
    /// GeLU in the feed-forward blocks.
    pub gelu: GeluMethod,
    /// Softmax over attention scores.
    pub softmax: SoftmaxMethod,
    /// LayerNorm after embeddings, attention and feed-forward.
    pub layernorm: LayerNormMethod,
}

/// One encoder layer's shared weights.
pub struct SecureLayer {
    qkv: PreparedWeight,
    bqkv: Shared,
    wo: PreparedWeight,
    bo: Shared,
    ln1_g: Shared,
    ln1_b: Shared,
    w1: PreparedWeight,
    b1: Shared,
    w2: PreparedWeight,
    b2: Shared,
    ln2_g: Shared,
    ln2_b: Shared,
}

/// A shared BERT model.
pub struct SecureBert {
    /// The public architecture.
    pub config: BertConfig,
    word: PreparedWeight,
    pos: Shared,
    typ: Shared,
    emb_ln_g: Shared,
    emb_ln_b: Shared,
    layers: Vec<SecureLayer>,
}

/// Time and communication per kind of step, for the per-op breakdown.
#[derive(Clone, Debug, Default)]
pub struct Breakdown {
    /// (name, time, communication) per category, in first-use order.
    pub items: Vec<(&'static str, Duration, CommStats)>,
}

impl Breakdown {
    fn add(&mut self, name: &'static str, d: Duration, c: CommStats) {
        if let Some(e) = self.items.iter_mut().find(|e| e.0 == name) {
            e.1 += d;
            e.2 = add_stats(&e.2, &c);
        } else {
            self.items.push((name, d, c));
        }
    }
}

fn add_stats(a: &CommStats, b: &CommStats) -> CommStats {
    CommStats {
        rounds: a.rounds + b.rounds,
        online_sent: a.online_sent + b.online_sent,
        online_recv: a.online_recv + b.online_recv,
        offline_sent: a.offline_sent + b.offline_sent,
        offline_recv: a.offline_recv + b.offline_recv,
    }
}

fn timed<T>(
    p: &mut Party,
    br: &mut Breakdown,
    name: &'static str,
    f: impl FnOnce(&mut Party) -> Result<T>,
) -> Result<T> {
    let before = p.stats();
    let t = Instant::now();
    let out = f(p)?;
    br.add(name, t.elapsed(), p.stats().since(&before));
    Ok(out)
}

/// Shares a plaintext tensor from the model owner (other parties pass `None`).
fn share_f64(p: &mut Party, t: Option<&Tensor<f64>>, shape: &[usize]) -> Result<Shared> {
    let fx = p.fixed();
    let enc = match t {
        Some(t) if p.id() == MODEL_OWNER => Some(fx.encode_tensor(t)?),
        _ => None,
    };
    p.share_input(MODEL_OWNER, enc.as_ref(), shape)
}

fn vec_t(v: &[f64]) -> Tensor<f64> {
    Tensor::from_vec(&[v.len()], v.to_vec()).expect("1-D")
}

impl SecureBert {
    /// Shares the model: the model owner passes `Some(weights)`, every other party `None`
    /// (they only need the public `config`). Weight matrices are prepared for repeated
    /// products (2PC opens W - B once per weight). Keys 1.. are used for the prepared
    /// weights.
    pub fn share(
        p: &mut Party,
        weights: Option<&BertWeights>,
        config: &BertConfig,
    ) -> Result<SecureBert> {
        config.validate()?;
        if p.id() == MODEL_OWNER && weights.is_none() {
            return Err(Error::Unsupported(
                "the model owner must provide the weights".into(),
            ));
        }
        let w = if p.id() == MODEL_OWNER { weights } else { None };
        let h = config.hidden;
        let word = share_f64(p, w.map(|w| &w.word_emb), &[config.vocab_size, h])?;
        let word = arith::prepare_weight(p, &word, WORD_KEY)?;
        let pos = share_f64(p, w.map(|w| &w.pos_emb), &[config.max_position, h])?;
        let typ = share_f64(p, w.map(|w| &w.type_emb), &[config.type_vocab_size, h])?;
        let emb_ln_g = share_f64(p, w.map(|w| vec_t(&w.emb_ln_g)).as_ref(), &[h])?;
        let emb_ln_b = share_f64(p, w.map(|w| vec_t(&w.emb_ln_b)).as_ref(), &[h])?;
        let mut layers = Vec::with_capacity(config.layers);
        for li in 0..config.layers {
            layers.push(SecureLayer::share(
                p,
                w.map(|w| &w.layers[li]),
                config,
                layer_key(li),
            )?);
        }
        Ok(SecureBert {
            config: config.clone(),
            word,
            pos,
            typ,
            emb_ln_g,
            emb_ln_b,
            layers,
        })
    }
}

impl SecureLayer {
    /// Shares one layer's weights from the model owner (`Some` there, `None` elsewhere);
    /// its four weight matrices get prepared-weight keys `key0..key0 + 4`.
    pub fn share(
        p: &mut Party,
        lw: Option<&LayerWeights>,
        config: &BertConfig,
        key0: u64,
    ) -> Result<SecureLayer> {
        let lw = if p.id() == MODEL_OWNER { lw } else { None };
        if p.id() == MODEL_OWNER && lw.is_none() {
            return Err(Error::Unsupported(
                "the model owner must provide the layer weights".into(),
            ));
        }
        let (h, f) = (config.hidden, config.intermediate);
        let scale = 1.0 / (config.head_dim() as f64).sqrt();
        let mut key = key0;
        let mut prep =
            |p: &mut Party, t: Option<&Tensor<f64>>, shape: &[usize]| -> Result<PreparedWeight> {
                let s = share_f64(p, t, shape)?;
                let pw = arith::prepare_weight(p, &s, key)?;
                key += 1;
                Ok(pw)
            };
        // Q K V in one [H, 3H] weight; 1/sqrt(d) folded into Q.
        let qkv_t = match lw {
            Some(l) => Some(Tensor::concat_last(&[
                l.wq.map(|v| v * scale),
                l.wk.clone(),
                l.wv.clone(),
            ])?),
            None => None,
        };
        let bqkv_t = lw.map(|l| {
            let mut b: Vec<f64> = l.bq.iter().map(|v| v * scale).collect();
            b.extend_from_slice(&l.bk);
            b.extend_from_slice(&l.bv);
            vec_t(&b)
        });
        let qkv = prep(p, qkv_t.as_ref(), &[h, 3 * h])?;
        let bqkv = share_f64(p, bqkv_t.as_ref(), &[3 * h])?;
        let wo = prep(p, lw.map(|l| &l.wo), &[h, h])?;
        let bo = share_f64(p, lw.map(|l| vec_t(&l.bo)).as_ref(), &[h])?;
        let ln1_g = share_f64(p, lw.map(|l| vec_t(&l.ln1_g)).as_ref(), &[h])?;
        let ln1_b = share_f64(p, lw.map(|l| vec_t(&l.ln1_b)).as_ref(), &[h])?;
        let w1 = prep(p, lw.map(|l| &l.w1), &[h, f])?;
        let b1 = share_f64(p, lw.map(|l| vec_t(&l.b1)).as_ref(), &[f])?;
        let w2 = prep(p, lw.map(|l| &l.w2), &[f, h])?;
        let b2 = share_f64(p, lw.map(|l| vec_t(&l.b2)).as_ref(), &[h])?;
        let ln2_g = share_f64(p, lw.map(|l| vec_t(&l.ln2_g)).as_ref(), &[h])?;
        let ln2_b = share_f64(p, lw.map(|l| vec_t(&l.ln2_b)).as_ref(), &[h])?;
        Ok(SecureLayer {
            qkv,
            bqkv,
            wo,
            bo,
            ln1_g,
            ln1_b,
            w1,
            b1,
            w2,
            b2,
            ln2_g,
            ln2_b,
        })
    }
}

/// Prepared-weight key of the word-embedding table.
const WORD_KEY: u64 = 1;

/// First prepared-weight key of layer `li` (four per layer, after the word table).
pub fn layer_key(li: usize) -> u64 {
    2 + 4 * li as u64
}

/// Rows 0..seq of a shared table (public indices: local).
fn first_rows(t: &Shared, seq: usize) -> Result<Shared> {
    let w = t.shape()[1];
    t.try_map_local(|x| Tensor::from_vec(&[seq, w], x.data()[..seq * w].to_vec()))
}

/// Row 0 of a shared table repeated `seq` times (token type 0 everywhere; local).
fn repeat_row0(t: &Shared, seq: usize) -> Result<Shared> {
    let w = t.shape()[1];
    t.try_map_local(|x| Tensor::from_vec(&[seq, w], x.data()[..w].repeat(seq)))
}

/// The HF additive attention mask for a public 0/1 mask.
pub fn additive_mask(mask: &[u32]) -> Vec<f64> {
    mask.iter()
        .map(|&m| if m == 1 { 0.0 } else { -10000.0 })
        .collect()
}

/// The encoder's last hidden state [S, H] for the data owner's token ids (`Some` at
/// [`DATA_OWNER`], `None` elsewhere; S = `mask.len()` is public). The word embedding is a
/// private DPF lookup ([`crate::lookup`]); in 2PC the dealer runs [`encoder_dealer`]
/// alongside.
pub fn encoder(
    p: &mut Party,
    m: &SecureBert,
    ids: Option<&[u32]>,
    mask: &[u32],
    methods: Methods,
    br: &mut Breakdown,
    on_layer: impl FnMut(usize),
) -> Result<Shared> {
    let mut stages = Stages::none();
    encoder_staged(p, m, ids, mask, methods, br, on_layer, &mut stages)
}

/// The hook a staged run calls before each step, with the step's index.
pub type StageFn<'a> = &'a mut dyn FnMut(&mut Party, usize) -> Result<()>;

/// How a staged run splits its material: softmax / GeLU steps of at most `max_step_elems`
/// elements, and `stage(p, i)` called before step i of the run's step demands (in order).
pub struct Stages<'a> {
    /// Largest softmax / GeLU step in elements (`usize::MAX`: no split).
    pub max_step_elems: usize,
    /// Called before each step with its index (`None`: an unstaged run).
    stage: Option<StageFn<'a>>,
    next: usize,
}

impl<'a> Stages<'a> {
    /// A staged run: `stage(p, i)` before step i.
    pub fn new(max_step_elems: usize, stage: StageFn<'a>) -> Stages<'a> {
        Stages {
            max_step_elems,
            stage: Some(stage),
            next: 0,
        }
    }
    fn none() -> Stages<'static> {
        Stages {
            max_step_elems: usize::MAX,
            stage: None,
            next: 0,
        }
    }
    fn step(&mut self, p: &mut Party) -> Result<()> {
        if let Some(f) = self.stage.as_mut() {
            f(p, self.next)?;
        }
        self.next += 1;
        Ok(())
    }
}

/// [`encoder`] with its material dealt in steps (see [`encoder_step_demands`]).
#[allow(clippy::too_many_arguments)]
pub fn encoder_staged(
    p: &mut Party,
    m: &SecureBert,
    ids: Option<&[u32]>,
    mask: &[u32],
    methods: Methods,
    br: &mut Breakdown,
    mut on_layer: impl FnMut(usize),
    stages: &mut Stages,
) -> Result<Shared> {
    let seq = mask.len();
    if seq == 0 || seq > m.config.max_position {
        return Err(Error::shape(
            "encoder",
            format!(
                "sequence of {seq} tokens (max_position {})",
                m.config.max_position
            ),
        ));
    }
    let eps = m.config.layer_norm_eps;
    stages.step(p)?;
    let word = timed(p, br, "embedding", |p| lookup_rows(p, &m.word, ids, seq))?;
    // Word rows + position rows 0..S + token-type row 0 (public indices: local).
    let x = word
        .add(&first_rows(&m.pos, seq)?)?
        .add(&repeat_row0(&m.typ, seq)?)?;
    let mut x = timed(p, br, "layernorm", |p| {
        layernorm(p, &x, &m.emb_ln_g, &m.emb_ln_b, eps, methods.layernorm)
    })?;
    let amask = additive_mask(mask);
    for (li, l) in m.layers.iter().enumerate() {
        let max = stages.max_step_elems;
        let mut inner = |p: &mut Party, _: usize| stages.step(p);
        x = layer_staged(p, &m.config, l, &x, &amask, methods, br, max, &mut inner)?;
        on_layer(li);
    }
    Ok(x)
}

/// One encoder layer on shared hidden states [S, H] with a public additive mask.
pub fn layer(
    p: &mut Party,
    cfg: &BertConfig,
    l: &SecureLayer,
    x: &Shared,
    amask: &[f64],
    methods: Methods,
    br: &mut Breakdown,
) -> Result<Shared> {
    layer_staged(p, cfg, l, x, amask, methods, br, usize::MAX, &mut |_, _| {
        Ok(())
    })
}

/// Elements per step that `bench bert` allows the softmax and GeLU steps by default
/// (`--step-elems`): larger ones run in chunks (heads, rows), each its own step with its
/// own material, so a party holds ~60 MB of keys at a time (a BERT-base layer's GeLU keys
/// are ~0.19 GB per party, its softmax's ~0.16 GB). Each chunk repeats the op's rounds.
/// (2^16 while the comparisons used payload DCFs of 2.4x the size; 2^18 brings the 3pc
/// dealer's peak to 0.49 GB.)
pub const BOUNDED_STEP_ELEMS: usize = 1 << 17;

/// Splits `total` units of `unit` elements each into near-equal chunks of at most
/// `max_elems` elements (at least one unit per chunk).
fn chunks(total: usize, unit: usize, max_elems: usize) -> Vec<usize> {
    let per = (max_elems / unit.max(1)).max(1);
    let parts = total.div_ceil(per).max(1);
    let mut out = vec![];
    let mut left = total;
    for i in 0..parts {
        let c = left.div_ceil(parts - i);
        out.push(c);
        left -= c;
    }
    out
}

/// Elements [off, off + len) of a flat view of `x`, as a tensor of `shape`.
fn flat_slice(x: &Shared, off: usize, shape: &[usize]) -> Result<Shared> {
    let len: usize = shape.iter().product();
    x.try_map_local(|t| Tensor::from_vec(shape, t.data()[off..off + len].to_vec()))
}

/// [`layer`] with a hook called before each step (`stage(p, i)` for step i =
/// 0..[`layer_step_demands`].len()), in order, and softmax / GeLU split into steps of at
/// most `max_step_elems` elements (`usize::MAX`: no split). The benchmark uses it to deal
/// each step's material just before the step, so a party holds one step's keys at a time.
#[allow(clippy::too_many_arguments)]
pub fn layer_staged(
    p: &mut Party,
    cfg: &BertConfig,
    l: &SecureLayer,
    x: &Shared,
    amask: &[f64],
    methods: Methods,
    br: &mut Breakdown,
    max_step_elems: usize,
    stage: &mut dyn FnMut(&mut Party, usize) -> Result<()>,
) -> Result<Shared> {
    let (seq, h, a, d) = (x.shape()[0], cfg.hidden, cfg.heads, cfg.head_dim());
    let eps = cfg.layer_norm_eps;
    let mut step = 0usize;
    let mut next = |p: &mut Party| -> Result<()> {
        stage(p, step)?;
        step += 1;
        Ok(())
    };
    next(p)?;
    let qkv = timed(p, br, "matmul", |p| {
        arith::matmul_prepared_trunc(p, x, &l.qkv)
    })?
    .add_rows(&l.bqkv)?;
    let parts = qkv.split_last(&[h, h, h])?;
    // [S, H] -> [S, A, d] -> [A, S, d]
    let heads = |t: &Shared| t.reshape(&[seq, a, d])?.swap01();
    let (q, k, v) = (heads(&parts[0])?, heads(&parts[1])?, heads(&parts[2])?);
    let kt = k.transpose(); // [A, d, S]
    next(p)?;
    let scores = timed(p, br, "matmul", |p| arith::matmul_trunc(p, &q, &kt))?; // [A, S, S]
    let mut probs = vec![];
    let mut h0 = 0;
    for hs in chunks(a, seq * seq, max_step_elems) {
        let part = flat_slice(&scores, h0 * seq * seq, &[hs, seq, seq])?;
        next(p)?;
        probs.push(timed(p, br, "softmax", |p| {
            softmax(p, &part, Some(amask), methods.softmax)
        })?);
        h0 += hs;
    }
    let probs = Shared::concat_flat(&probs.iter().collect::<Vec<_>>())?.reshape(&[a, seq, seq])?;
    next(p)?;
    let ctx = timed(p, br, "matmul", |p| arith::matmul_trunc(p, &probs, &v))?; // [A, S, d]
    let ctx = ctx.swap01()?.reshape(&[seq, h])?;
    next(p)?;
    let attn = timed(p, br, "matmul", |p| {
        arith::matmul_prepared_trunc(p, &ctx, &l.wo)
    })?
    .add_rows(&l.bo)?;
    let x1 = attn.add(x)?;
    next(p)?;
    let x1 = timed(p, br, "layernorm", |p| {
        layernorm(p, &x1, &l.ln1_g, &l.ln1_b, eps, methods.layernorm)
    })?;
    next(p)?;
    let hdn = timed(p, br, "matmul", |p| {
        arith::matmul_prepared_trunc(p, &x1, &l.w1)
    })?
    .add_rows(&l.b1)?;
    let ffn = cfg.intermediate;
    let mut acts = vec![];
    let mut row0 = 0;
    for rows in chunks(seq, ffn, max_step_elems) {
        let part = flat_slice(&hdn, row0 * ffn, &[rows, ffn])?;
        next(p)?;
        acts.push(timed(p, br, "gelu", |p| gelu(p, &part, methods.gelu))?);
        row0 += rows;
    }
    let act = Shared::concat_flat(&acts.iter().collect::<Vec<_>>())?.reshape(&[seq, ffn])?;
    next(p)?;
    let out = timed(p, br, "matmul", |p| {
        arith::matmul_prepared_trunc(p, &act, &l.w2)
    })?
    .add_rows(&l.b2)?;
    let x2 = out.add(&x1)?;
    next(p)?;
    timed(p, br, "layernorm", |p| {
        layernorm(p, &x2, &l.ln2_g, &l.ln2_b, eps, methods.layernorm)
    })
}

/// The 2PC dealer's online part of [`encoder`] / [`sentence_embedding`] for a sequence of
/// `seq` tokens: the second server of the word-embedding lookup.
pub fn encoder_dealer(p: &mut Party, config: &BertConfig, seq: usize) -> Result<()> {
    lookup_rows_dealer(p, config.vocab_size, config.hidden, WORD_KEY, seq)
}

/// Sentence embedding (all-MiniLM-L6-v2 pipeline): mean of the hidden states over tokens
/// with mask 1, then L2 normalisation by a secure rsqrt of the squared norm.
pub fn sentence_embedding(
    p: &mut Party,
    m: &SecureBert,
    ids: Option<&[u32]>,
    mask: &[u32],
    methods: Methods,
    br: &mut Breakdown,
    on_layer: impl FnMut(usize),
) -> Result<Shared> {
    let mut stages = Stages::none();
    sentence_embedding_staged(p, m, ids, mask, methods, br, on_layer, &mut stages)
}

/// [`sentence_embedding`] with its material dealt in steps (see
/// [`sentence_embedding_step_demands`]); `infer` uses it so a party holds one step's
/// material at a time.
#[allow(clippy::too_many_arguments)]
pub fn sentence_embedding_staged(
    p: &mut Party,
    m: &SecureBert,
    ids: Option<&[u32]>,
    mask: &[u32],
    methods: Methods,
    br: &mut Breakdown,
    on_layer: impl FnMut(usize),
    stages: &mut Stages,
) -> Result<Shared> {
    let hs = encoder_staged(p, m, ids, mask, methods, br, on_layer, stages)?;
    stages.step(p)?;
    let h = hs.shape()[1];
    let count = mask.iter().filter(|&&v| v == 1).count().max(1);
    // Masked column sums (local), then / count: a public fixed-point factor + truncation.
    let summed = hs.map_local(|t| {
        let mut s = vec![0u64; h];
        for (row, &m) in t.data().chunks(h).zip(mask) {
            if m == 1 {
                for (acc, v) in s.iter_mut().zip(row) {
                    *acc = acc.wrapping_add(*v);
                }
            }
        }
        Tensor::from_vec(&[h], s).expect("1-D")
    });
    let fx = p.fixed();
    let mean = timed(p, br, "pooling", |p| {
        arith::truncate(p, &summed.scale(fx.encode(1.0 / count as f64)?))
    })?;
    // ||mean||^2 then rsqrt, broadcast back and multiply.
    let sq = timed(p, br, "pooling", |p| arith::mul_trunc(p, &mean, &mean))?;
    let norm2 = sq.map_local(|t| {
        Tensor::from_vec(
            &[1],
            vec![t.data().iter().fold(0u64, |a, v| a.wrapping_add(*v))],
        )
        .expect("1-D")
    });
    let inv = timed(p, br, "pooling", |p| {
        rsqrt(p, &norm2, RsqrtMethod::default())
    })?;
    let inv_b = inv.map_local(|t| Tensor::from_vec(&[h], vec![t.data()[0]; h]).expect("1-D"));
    timed(p, br, "pooling", |p| arith::mul_trunc(p, &mean, &inv_b))
}

/// Preprocessing consumed by [`SecureBert::share`] for `config` (2PC: the fixed B of every
/// prepared weight).
pub fn share_demand(config: &BertConfig, setting: Setting) -> Demand {
    let mut d = ad::prepare_weight(setting, config.vocab_size, config.hidden, WORD_KEY);
    for li in 0..config.layers {
        d.extend(layer_share_demand(config, setting, layer_key(li)));
    }
    d
}

/// Preprocessing consumed by [`SecureLayer::share`].
pub fn layer_share_demand(config: &BertConfig, setting: Setting, key0: u64) -> Demand {
    let (h, f) = (config.hidden, config.intermediate);
    let mut d = Demand::default();
    for (i, (k, n)) in [(h, 3 * h), (h, h), (h, f), (f, h)].into_iter().enumerate() {
        d.extend(ad::prepare_weight(setting, k, n, key0 + i as u64));
    }
    d
}

/// Preprocessing consumed by [`layer`] for a sequence of length `seq`.
pub fn layer_demand(
    config: &BertConfig,
    seq: usize,
    key0: u64,
    methods: Methods,
    setting: Setting,
    frac_bits: u32,
) -> Result<Demand> {
    let mut d = Demand::default();
    for s in layer_step_demands(config, seq, key0, methods, setting, frac_bits, usize::MAX)? {
        d.extend(s);
    }
    Ok(d)
}

/// The material of each step of [`layer_staged`] with `max_step_elems`, in order.
pub fn layer_step_demands(
    config: &BertConfig,
    seq: usize,
    key0: u64,
    methods: Methods,
    setting: Setting,
    frac_bits: u32,
    max_step_elems: usize,
) -> Result<Vec<Demand>> {
    let (h, f, a, hd) = (
        config.hidden,
        config.intermediate,
        config.heads,
        config.head_dim(),
    );
    let mut steps = vec![
        ad::matmul_prepared_trunc(setting, seq, h, 3 * h, key0, frac_bits),
        ad::matmul_trunc(setting, &[a, seq, hd], &[a, hd, seq], frac_bits)?,
    ];
    for hs in chunks(a, seq * seq, max_step_elems) {
        steps.push(softmax_demand(
            &[hs, seq, seq],
            methods.softmax,
            setting,
            frac_bits,
        ));
    }
    steps.extend([
        ad::matmul_trunc(setting, &[a, seq, seq], &[a, seq, hd], frac_bits)?,
        ad::matmul_prepared_trunc(setting, seq, h, h, key0 + 1, frac_bits),
        layernorm_demand(&[seq, h], methods.layernorm, setting, frac_bits),
        ad::matmul_prepared_trunc(setting, seq, h, f, key0 + 2, frac_bits),
    ]);
    for rows in chunks(seq, f, max_step_elems) {
        steps.push(gelu_demand(rows * f, methods.gelu, setting, frac_bits));
    }
    steps.push(ad::matmul_prepared_trunc(
        setting,
        seq,
        f,
        h,
        key0 + 3,
        frac_bits,
    ));
    steps.push(layernorm_demand(
        &[seq, h],
        methods.layernorm,
        setting,
        frac_bits,
    ));
    Ok(steps)
}

/// Preprocessing consumed by [`encoder`] for a sequence of length `seq`.
pub fn encoder_demand(
    config: &BertConfig,
    seq: usize,
    methods: Methods,
    setting: Setting,
    frac_bits: u32,
) -> Result<Demand> {
    flatten(encoder_step_demands(
        config,
        seq,
        methods,
        setting,
        frac_bits,
        usize::MAX,
    )?)
}

fn flatten(steps: Vec<Demand>) -> Result<Demand> {
    let mut d = Demand::default();
    for s in steps {
        d.extend(s);
    }
    Ok(d)
}

/// The material of each step of [`encoder_staged`]: the embedding (lookup and
/// LayerNorm), then every layer's [`layer_step_demands`].
pub fn encoder_step_demands(
    config: &BertConfig,
    seq: usize,
    methods: Methods,
    setting: Setting,
    frac_bits: u32,
    max_step_elems: usize,
) -> Result<Vec<Demand>> {
    let h = config.hidden;
    let mut first = lookup_demand(setting, config.vocab_size, h, WORD_KEY);
    first.extend(layernorm_demand(
        &[seq, h],
        methods.layernorm,
        setting,
        frac_bits,
    ));
    let mut steps = vec![first];
    for li in 0..config.layers {
        steps.extend(layer_step_demands(
            config,
            seq,
            layer_key(li),
            methods,
            setting,
            frac_bits,
            max_step_elems,
        )?);
    }
    Ok(steps)
}

/// Preprocessing consumed by [`sentence_embedding`].
pub fn sentence_embedding_demand(
    config: &BertConfig,
    seq: usize,
    methods: Methods,
    setting: Setting,
    frac_bits: u32,
) -> Result<Demand> {
    flatten(sentence_embedding_step_demands(
        config,
        seq,
        methods,
        setting,
        frac_bits,
        usize::MAX,
    )?)
}

/// The material of each step of [`sentence_embedding_staged`]: the encoder's steps, then
/// the pooling and normalisation.
pub fn sentence_embedding_step_demands(
    config: &BertConfig,
    seq: usize,
    methods: Methods,
    setting: Setting,
    frac_bits: u32,
    max_step_elems: usize,
) -> Result<Vec<Demand>> {
    let h = config.hidden;
    let mut steps = encoder_step_demands(config, seq, methods, setting, frac_bits, max_step_elems)?;
    let mut d = ad::truncate(h, frac_bits);
    d.extend(ad::mul_trunc(setting, h, frac_bits));
    d.extend(rsqrt_demand(1, RsqrtMethod::default(), setting, frac_bits));
    d.extend(ad::mul_trunc(setting, h, frac_bits));
    steps.push(d);
    Ok(steps)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bert::plain;
    use tessera::runtime::run_parties;
    use tessera::{MaterialMode, SessionOptions};

    /// A layer dealt step by step with softmax and GeLU split into chunks (as `bench
    /// bert` runs it) consumes exactly its step demands and matches the plaintext layer as
    /// closely as the unsplit one: 3e-3 absolute, the per-layer bound of issue 6 (measured
    /// 2.5e-4 here; ~1e-3 at BERT-base width, mostly GeLU's 3e-4 and LayerNorm's rsqrt).
    #[test]
    fn staged_chunked_layer_matches_plain_and_its_step_demands() {
        let cfg = BertConfig {
            vocab_size: 16,
            hidden: 16,
            heads: 4,
            layers: 1,
            intermediate: 64,
            max_position: 8,
            type_vocab_size: 2,
            layer_norm_eps: 1e-12,
        };
        let w = BertWeights::demo(&cfg, 7);
        let seq = 8;
        let x: Vec<f64> = (0..seq * cfg.hidden)
            .map(|i| ((i * 37 % 23) as f64 - 11.0) / 7.0)
            .collect();
        let xt = Tensor::from_vec(&[seq, cfg.hidden], x).unwrap();
        let want = plain::encoder_layer(&cfg, &w.layers[0], &xt, &vec![1; seq]);
        let max_elems = 100; // softmax: 4 head chunks of 64; GeLU: 8 row chunks of 64
        let methods = Methods::default();
        for s in [Setting::TwoPc, Setting::ThreePc] {
            let steps =
                layer_step_demands(&cfg, seq, layer_key(0), methods, s, 16, max_elems).unwrap();
            assert_eq!(steps.len(), 8 + 4 + 8, "{s:?}");
            let mut all = layer_share_demand(&cfg, s, layer_key(0));
            for d in &steps {
                all.extend(d.clone());
            }
            let opts = SessionOptions {
                material: MaterialMode::Planned(all),
                ..Default::default()
            };
            let outs = run_parties(s, opts, |p| {
                let fx = p.fixed();
                let enc = fx.encode_tensor(&xt)?;
                let xs = p.share_input(
                    DATA_OWNER,
                    (p.id() == DATA_OWNER).then_some(&enc),
                    &[seq, cfg.hidden],
                )?;
                let sl = SecureLayer::share(p, Some(&w.layers[0]), &cfg, layer_key(0))?;
                let mut br = Breakdown::default();
                let mut seen = 0;
                let amask = additive_mask(&vec![1; seq]);
                let y = layer_staged(
                    p,
                    &cfg,
                    &sl,
                    &xs,
                    &amask,
                    methods,
                    &mut br,
                    max_elems,
                    &mut |_, i| {
                        assert_eq!(i, seen);
                        seen += 1;
                        Ok(())
                    },
                )?;
                assert_eq!(seen, 8 + 4 + 8);
                let t = p.open(&y)?;
                Ok(t.data().iter().map(|&v| fx.decode(v)).collect::<Vec<f64>>())
            })
            .unwrap();
            let got = &outs[0].value;
            let err = got
                .iter()
                .zip(want.data())
                .map(|(a, b)| (a - b).abs())
                .fold(0f64, f64::max);
            println!("staged chunked layer {s:?}: max abs err {err:.3e}");
            assert!(err <= 3e-3, "{s:?}: {err}");
        }
    }
}
