//! The Llama decoder under MPC, composed of [`crate::nn`] modules, with a secret-shared KV
//! cache for token-by-token generation (PUMA arXiv 2307.12533 §4 and §5 on LLaMA; SIGMA
//! PETS'24 for the FSS nonlinearities).
//!
//! Roles: the model owner ([`MODEL_OWNER`], P1) shares the weights once per session; the
//! data owner ([`DATA_OWNER`], P0) feeds its token ids through the private embedding
//! lookup and alone learns the logits of the last position, from which it picks the next
//! token in the clear; that token re-enters through the lookup. Sequence lengths (and so
//! positions) are public.
//!
//! ```text
//! x = Embedding(ids)                                         [S, h]
//! per layer: x = x + Attention(RMSNorm(x), causal, RoPE at pos0.., KV cache)
//!            x = x + SwiGLU(RMSNorm(x))
//! logits = RMSNorm(x[S - 1]) W_head                          [1, vocab], to P0 only
//! ```
//! 1/sqrt(head_dim) is folded into W_q when the weights are shared; grouped-query
//! attention stacks each KV head's query heads (no copies of K, V). A tied output head
//! reads the embedding table transposed (x E^T, [`crate::arith::matmul_prepared_t_trunc`]:
//! no second copy of the [vocab, h] table); an untied one is its own prepared matrix. The
//! dealing plan of a prefill or a decode step is [`crate::nn::plan_steps`] over the same
//! [`Llama::forward`].

use crate::llama::model::{LlamaConfig, LlamaLayerWeights, LlamaWeights, RopeStyle as LlamaRope};
use crate::nn::linear::{Keys, Linear, LinearWeights};
use crate::nn::{Attention, AttentionMask, Cx, Embedding, KvCache, Mlp, Norm, Rope, RopeStyle};
use tessera::error::{Error, Result};
use tessera::{Party, Shared, Tensor};

pub use crate::nn::{DATA_OWNER, MODEL_OWNER};

/// Where the model owner's weights come from, one part at a time (so the owner never holds
/// every f64 weight at once): a loaded [`LlamaWeights`] or a lazy file loader.
pub trait LlamaParams {
    /// The token embedding table [vocab, h].
    fn embed(&self) -> Result<Tensor<f64>>;
    /// Layer i.
    fn layer(&self, i: usize) -> Result<LlamaLayerWeights>;
    /// The final RMSNorm gain.
    fn final_norm(&self) -> Result<Vec<f64>>;
    /// The output head [vocab, h] (`None`: tied to the embedding).
    fn lm_head(&self) -> Result<Option<Tensor<f64>>>;
}

impl LlamaParams for LlamaWeights {
    fn embed(&self) -> Result<Tensor<f64>> {
        Ok(self.embed.clone())
    }
    fn layer(&self, i: usize) -> Result<LlamaLayerWeights> {
        self.layers
            .get(i)
            .cloned()
            .ok_or_else(|| Error::shape("llama", format!("no layer {i}")))
    }
    fn final_norm(&self) -> Result<Vec<f64>> {
        Ok(self.final_norm.clone())
    }
    fn lm_head(&self) -> Result<Option<Tensor<f64>>> {
        Ok(self.lm_head.clone())
    }
}

/// One pre-norm decoder layer.
#[derive(Clone, Debug)]
pub struct DecoderLayer {
    /// RMSNorm before attention.
    pub attn_norm: Norm,
    /// Causal grouped-query attention with RoPE.
    pub attn: Attention,
    /// RMSNorm before the feed-forward block.
    pub ffn_norm: Norm,
    /// SwiGLU.
    pub mlp: Mlp,
}

/// The secret-shared KV cache of every layer; its length is the next position.
#[derive(Clone, Debug, Default)]
pub struct LlamaCache {
    /// Per layer.
    pub layers: Vec<KvCache>,
}

impl LlamaCache {
    /// An empty cache for `layers` layers.
    pub fn new(layers: usize) -> LlamaCache {
        LlamaCache {
            layers: vec![KvCache::new(); layers],
        }
    }
    /// Positions held (the next token's position).
    pub fn len(&self) -> usize {
        self.layers.first().map_or(0, KvCache::len)
    }
    /// Whether no position is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Words held per share component.
    pub fn words(&self) -> usize {
        self.layers.iter().map(KvCache::words).sum()
    }
}

/// A Llama decoder: its public architecture and its modules.
#[derive(Clone, Debug)]
pub struct Llama {
    /// The public architecture.
    pub config: LlamaConfig,
    embed: Embedding,
    /// The layers.
    pub layers: Vec<DecoderLayer>,
    final_norm: Norm,
    /// The untied output head [h, vocab]; `None`: tied to the embedding table, read
    /// transposed (no second copy of the table).
    head: Option<Linear>,
}

impl DecoderLayer {
    fn new(c: &LlamaConfig, keys: &mut Keys) -> Result<DecoderLayer> {
        let rope = Rope {
            theta: c.rope_theta,
            style: match c.rope_style {
                LlamaRope::HalfSplit => RopeStyle::HalfSplit,
                LlamaRope::Interleaved => RopeStyle::Interleaved,
            },
        };
        Ok(DecoderLayer {
            attn_norm: Norm::rms_norm(c.hidden, c.rms_eps),
            attn: Attention::new(
                c.hidden,
                c.heads,
                c.kv_heads,
                c.head_dim,
                false,
                Some(rope),
                keys,
            )?,
            ffn_norm: Norm::rms_norm(c.hidden, c.rms_eps),
            mlp: Mlp::swiglu(c.hidden, c.ffn, keys),
        })
    }

    /// Shares the layer from the model owner (`Some` there): W_q scaled by 1/sqrt(d) and
    /// concatenated with W_k, W_v; gate and up concatenated.
    pub fn share(
        &mut self,
        p: &mut Party,
        cx: &mut Cx,
        lw: Option<&LlamaLayerWeights>,
        c: &LlamaConfig,
    ) -> Result<()> {
        let lw = lw.filter(|_| p.id() == MODEL_OWNER);
        let scale = 1.0 / (c.head_dim as f64).sqrt();
        let qkv = lw
            .map(|l| Tensor::concat_last(&[l.wq.map(|v| v * scale), l.wk.clone(), l.wv.clone()]))
            .transpose()?;
        self.attn_norm
            .share(p, cx, lw.map(|l| l.attn_norm.as_slice()), None)?;
        self.attn
            .qkv
            .share(p, cx, qkv.as_ref().map(|w| LinearWeights { w, b: None }))?;
        self.attn
            .out
            .share(p, cx, lw.map(|l| LinearWeights { w: &l.wo, b: None }))?;
        self.ffn_norm
            .share(p, cx, lw.map(|l| l.ffn_norm.as_slice()), None)?;
        self.mlp
            .share_swiglu(p, cx, lw.map(|l| (&l.w_gate, &l.w_up, &l.w_down)))
    }

    /// The layer on x [S, h] at positions pos0.. with this layer's cache.
    pub fn forward(
        &self,
        p: &mut Party,
        cx: &mut Cx,
        x: &Shared,
        pos0: usize,
        cache: &mut KvCache,
    ) -> Result<Shared> {
        let s = x.shape()[0];
        let mask = AttentionMask::Causal {
            past: pos0,
            queries: s,
        };
        let h = self.attn_norm.forward(p, cx, x)?;
        let a = self.attn.forward(p, cx, &h, pos0, Some(cache), &mask)?;
        let x = x.add(&a)?;
        let h = self.ffn_norm.forward(p, cx, &x)?;
        let m = self.mlp.forward(p, cx, &h)?;
        x.add(&m)
    }

    /// Forgets the layer's shares.
    pub fn release(&mut self) {
        self.attn_norm.release();
        self.attn.qkv.release();
        self.attn.out.release();
        self.ffn_norm.release();
        self.mlp.release();
    }
}

impl Llama {
    /// The unshared model of `config` (every party and the dealer build the same one;
    /// prepared-weight keys: the embedding 1, four per layer, then the head).
    pub fn new(config: &LlamaConfig) -> Result<Llama> {
        config.validate()?;
        let mut keys = Keys::new();
        let embed = Embedding::new(config.vocab_size, config.hidden, &mut keys);
        let layers = (0..config.layers)
            .map(|_| DecoderLayer::new(config, &mut keys))
            .collect::<Result<Vec<_>>>()?;
        let head = (!config.tied_head)
            .then(|| Linear::new(config.hidden, config.vocab_size, false, &mut keys));
        Ok(Llama {
            config: config.clone(),
            embed,
            layers,
            final_norm: Norm::rms_norm(config.hidden, config.rms_eps),
            head,
        })
    }

    /// Shares the model from the model owner (`Some(params)` there), one part at a time.
    pub fn share(&mut self, p: &mut Party, cx: &mut Cx, w: Option<&dyn LlamaParams>) -> Result<()> {
        let w = w.filter(|_| p.id() == MODEL_OWNER);
        if p.id() == MODEL_OWNER && w.is_none() && !cx.is_planning() {
            return Err(Error::Unsupported(
                "the model owner must provide the weights".into(),
            ));
        }
        let embed = w.map(|w| w.embed()).transpose()?;
        self.embed.share(p, cx, embed.as_ref())?;
        let config = self.config.clone();
        for (i, l) in self.layers.iter_mut().enumerate() {
            let lw = w.map(|w| w.layer(i)).transpose()?;
            l.share(p, cx, lw.as_ref(), &config)?;
        }
        let fin = w.map(|w| w.final_norm()).transpose()?;
        self.final_norm.share(p, cx, fin.as_deref(), None)?;
        drop(embed);
        if let Some(head) = self.head.as_mut() {
            // The untied head as x W with W = head^T [h, vocab].
            let w_t = match w {
                Some(w) => Some(
                    w.lm_head()?
                        .ok_or_else(|| {
                            Error::Unsupported("the model has no output.weight / lm_head".into())
                        })?
                        .transpose(),
                ),
                None => None,
            };
            head.share(p, cx, w_t.as_ref().map(|w| LinearWeights { w, b: None }))?;
        }
        Ok(())
    }

    /// Runs `ids` (known to [`DATA_OWNER`]; `count` public) at positions cache.len()..,
    /// appending to the cache; returns the shared logits of the last position [1, vocab].
    pub fn forward(
        &self,
        p: &mut Party,
        cx: &mut Cx,
        ids: Option<&[u32]>,
        count: usize,
        cache: &mut LlamaCache,
    ) -> Result<Shared> {
        let pos0 = cache.len();
        if count == 0 {
            return Err(Error::shape("llama", "no tokens to run"));
        }
        if pos0 + count > self.config.max_position {
            return Err(Error::shape(
                "llama",
                format!(
                    "positions {pos0}..{} beyond the context of {}",
                    pos0 + count,
                    self.config.max_position
                ),
            ));
        }
        if cache.layers.len() != self.layers.len() {
            return Err(Error::shape(
                "llama",
                format!(
                    "cache of {} layers for {}",
                    cache.layers.len(),
                    self.layers.len()
                ),
            ));
        }
        let mut x = self.embed.forward(p, cx, ids, count)?;
        for (l, c) in self.layers.iter().zip(cache.layers.iter_mut()) {
            x = l.forward(p, cx, &x, pos0, c)?;
        }
        let h = self.config.hidden;
        let last = x.try_map_local(|t| {
            Tensor::from_vec(&[1, h], t.data()[(count - 1) * h..count * h].to_vec())
        })?;
        let last = self.final_norm.forward(p, cx, &last)?;
        match &self.head {
            Some(head) => head.forward(p, cx, &last),
            None => cx.matmul_prepared_t(p, &last, &self.embed.table),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::llama::plain;
    use crate::nn::{plan_steps, total_demand, Methods, Step};
    use tessera::runtime::run_all_parties;
    use tessera::{FixedPoint, MaterialMode, SessionOptions, Setting};

    const SETTINGS: [Setting; 2] = [Setting::TwoPc, Setting::ThreePc];

    /// What P0 gets from a secure greedy run: tokens, logits per step, and P0's stats.
    struct Run {
        tokens: Vec<u32>,
        logits: Vec<Vec<f64>>,
        rounds: u64,
        bytes: u64,
    }

    /// Shares `w`, then runs the prompt and `steps` - 1 greedy decode steps (P0 picks the
    /// argmax), all material planned from the model's own forward.
    fn secure_greedy(s: Setting, w: &LlamaWeights, prompt: &[u32], steps: usize) -> Run {
        let fx = FixedPoint::default();
        let methods = Methods::default();
        let model = Llama::new(&w.config).unwrap();
        let mut plan: Vec<Step> = plan_steps(s, fx, methods, usize::MAX, |p, cx| {
            model.clone().share(p, cx, None)
        })
        .unwrap();
        let mut pc = LlamaCache::new(w.config.layers);
        for i in 0..steps {
            let count = if i == 0 { prompt.len() } else { 1 };
            plan.extend(
                plan_steps(s, fx, methods, usize::MAX, |p, cx| {
                    model.forward(p, cx, None, count, &mut pc).map(|_| ())
                })
                .unwrap(),
            );
        }
        let opts = SessionOptions {
            material: MaterialMode::Planned(total_demand(&plan)),
            ..Default::default()
        };
        let outs = run_all_parties(s, opts, |p| {
            if !p.is_compute() {
                for st in &plan {
                    if let Some(t) = &st.dealer {
                        t.run(p)?;
                    }
                }
                return Ok(None);
            }
            let mut m = model.clone();
            let mut cx = Cx::run(methods);
            m.share(p, &mut cx, Some(w as &dyn LlamaParams))?;
            let mut cache = LlamaCache::new(w.config.layers);
            let mut ids = prompt.to_vec();
            let (mut tokens, mut logits) = (vec![], vec![]);
            for i in 0..steps {
                let count = if i == 0 { prompt.len() } else { 1 };
                let y = m.forward(p, &mut cx, Some(&ids), count, &mut cache)?;
                if let Some(l) = p.reveal_to(DATA_OWNER, &y)? {
                    let l = p.fixed().decode_tensor(&l).into_data();
                    let t = plain::argmax(&l);
                    tokens.push(t);
                    logits.push(l);
                    ids = vec![t];
                } else {
                    ids = vec![0];
                }
            }
            Ok(Some((tokens, logits)))
        })
        .unwrap();
        let (tokens, logits) = outs[0].value.clone().unwrap();
        Run {
            tokens,
            logits,
            rounds: outs[0].stats.rounds,
            bytes: outs[0].stats.online_sent,
        }
    }

    /// The plaintext f64 logits of the same greedy run, fed the secure tokens.
    fn plain_logits(w: &LlamaWeights, prompt: &[u32], tokens: &[u32]) -> Vec<Vec<f64>> {
        let mut cache = plain::KvCache::new(&w.config);
        let mut out = vec![plain::last_logits(w, prompt, &mut cache).unwrap()];
        for &t in &tokens[..tokens.len() - 1] {
            out.push(plain::last_logits(w, &[t], &mut cache).unwrap());
        }
        out
    }

    fn max_err(a: &[Vec<f64>], b: &[Vec<f64>]) -> f64 {
        a.iter()
            .zip(b)
            .flat_map(|(x, y)| x.iter().zip(y).map(|(u, v)| (u - v).abs()))
            .fold(0.0, f64::max)
    }

    fn demo() -> LlamaWeights {
        let mut c = LlamaConfig::demo();
        c.vocab_size = 96;
        LlamaWeights::demo(&c, 11)
    }

    /// A tiny random Llama (2 layers, GQA 4/2, RoPE, tied head) generates 8 greedy tokens
    /// equal to the plaintext f64 model's in both settings; the logits stay within 2e-2
    /// of f64 (fixed point f = 16 with the default approximations: ~1e-3 measured; an
    /// error in any protocol is orders of magnitude larger).
    #[test]
    fn tiny_llama_greedy_tokens_equal_plaintext_in_both_settings() {
        let w = demo();
        let prompt = [3u32, 17, 42, 5, 77, 12];
        let want = plain::generate_greedy(&w, &prompt, 8, None).unwrap();
        for s in SETTINGS {
            let r = secure_greedy(s, &w, &prompt, 8);
            let err = max_err(&r.logits, &plain_logits(&w, &prompt, &r.tokens));
            println!(
                "{s:?}: tokens {:?} (plain {want:?}), logits err {err:.2e}, P0 {} rounds {} B",
                r.tokens, r.rounds, r.bytes
            );
            assert_eq!(r.tokens, want, "{s:?}");
            assert!(err < 2e-2, "{s:?}: {err}");
        }
    }

    /// A decode step with the cache gives the logits of recomputing the whole sequence
    /// (both secure; they differ only by fixed-point rounding, 2e-2 as above).
    #[test]
    fn decode_with_cache_equals_recompute() {
        let w = demo();
        let prompt = [3u32, 17, 42, 5, 77];
        for s in SETTINGS {
            let cached = secure_greedy(s, &w, &prompt, 2);
            let mut full = prompt.to_vec();
            full.push(cached.tokens[0]);
            let again = secure_greedy(s, &w, &full, 1);
            let err = max_err(&cached.logits[1..], &again.logits);
            println!("{s:?}: cached decode vs recompute {err:.2e}");
            assert!(err < 2e-2, "{s:?}: {err}");
        }
    }

    /// Grouped-query attention with 1, 2 and 3 query heads per KV head matches f64.
    #[test]
    fn gqa_group_sizes_match_plaintext() {
        for kv in [6, 3, 2] {
            let mut c = LlamaConfig::demo();
            c.heads = 6;
            c.kv_heads = kv;
            c.head_dim = 8;
            c.hidden = 48;
            c.layers = 1;
            let w = LlamaWeights::demo(&c, 5);
            let prompt = [1u32, 2, 3, 4, 9];
            let r = secure_greedy(Setting::ThreePc, &w, &prompt, 2);
            let err = max_err(&r.logits, &plain_logits(&w, &prompt, &r.tokens));
            println!("GQA {} per KV head: err {err:.2e}", 6 / kv);
            assert!(err < 2e-2, "kv {kv}: {err}");
        }
    }

    /// RoPE and the causal mask use public values only: an attention block with them
    /// costs exactly the rounds of one without, and the bytes but for the width of the
    /// QKV product's ring: the rotation's extra bits (f + ROPE_BITS) leave no room below
    /// 64 for the product's range, so its E opening and P0's truncation share go at 64
    /// bits instead of `owner_ring(f, f)`.
    #[test]
    fn rope_and_causal_mask_cost_nothing() {
        use crate::nn::linear::Keys;
        use crate::nn::{Attention, AttentionMask, KvCache, Rope, RopeStyle};
        let (h, a, g, d, s_len) = (32, 4, 2, 8, 5);
        for s in SETTINGS {
            let mut stats = vec![];
            for (rope, mask) in [
                (None, AttentionMask::None),
                (
                    Some(Rope {
                        theta: 10000.0,
                        style: RopeStyle::Interleaved,
                    }),
                    AttentionMask::Causal {
                        past: 0,
                        queries: s_len,
                    },
                ),
            ] {
                let att = Attention::new(h, a, g, d, false, rope, &mut Keys::new()).unwrap();
                let fx = FixedPoint::default();
                let plan = plan_steps(s, fx, Methods::default(), usize::MAX, |p, cx| {
                    att.clone().qkv.share(p, cx, None)?;
                    att.clone().out.share(p, cx, None)?;
                    let x = Shared::zeros(p, &[s_len, h]);
                    att.forward(p, cx, &x, 0, Some(&mut KvCache::new()), &mask)
                        .map(|_| ())
                })
                .unwrap();
                let opts = SessionOptions {
                    material: MaterialMode::Planned(total_demand(&plan)),
                    ..Default::default()
                };
                let wq = Tensor::from_vec(
                    &[h, (a + 2 * g) * d],
                    (0..h * (a + 2 * g) * d)
                        .map(|i| ((i % 7) as f64 - 3.0) / 20.0)
                        .collect(),
                )
                .unwrap();
                let wo = Tensor::from_vec(
                    &[a * d, h],
                    (0..a * d * h)
                        .map(|i| ((i % 5) as f64 - 2.0) / 20.0)
                        .collect(),
                )
                .unwrap();
                let outs = run_all_parties(s, opts, |p| {
                    if !p.is_compute() {
                        return Ok(tessera::CommStats::default());
                    }
                    let mut m = att.clone();
                    let mut cx = Cx::run(Methods::default());
                    m.qkv
                        .share(p, &mut cx, Some(LinearWeights { w: &wq, b: None }))?;
                    m.out
                        .share(p, &mut cx, Some(LinearWeights { w: &wo, b: None }))?;
                    let x = Shared::zeros(p, &[s_len, h]);
                    let before = p.stats();
                    m.forward(p, &mut cx, &x, 0, Some(&mut KvCache::new()), &mask)?;
                    Ok(p.stats().since(&before))
                })
                .unwrap();
                stats.push(
                    outs.iter()
                        .map(|o| (o.value.rounds, o.value.online_sent))
                        .collect::<Vec<_>>(),
                );
            }
            println!(
                "{s:?}: without {:?}, with RoPE + causal mask {:?}",
                stats[0], stats[1]
            );
            // Words saved by small rings on n elements: P0's E opening and masked
            // truncation share in the owner ring instead of 64 bits (P1 answers one bit
            // per element either way).
            let ring = crate::arith::owner_ring(16, 16);
            let w = |n: u64, bits: u32| (n * u64::from(bits)).div_ceil(64);
            let (e, t) = ((s_len * h) as u64, (s_len * (a + 2 * g) * d) as u64);
            let p0 = (e - w(e, ring)) + (t - w(t, ring));
            let extra = [8 * p0, 0, 0];
            for q in 0..3 {
                assert_eq!(stats[0][q].0, stats[1][q].0, "{s:?} rounds of party {q}");
                assert_eq!(
                    stats[0][q].1 + extra[q],
                    stats[1][q].1,
                    "{s:?} bytes of party {q}"
                );
            }
        }
    }
}
