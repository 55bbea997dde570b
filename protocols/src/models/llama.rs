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
//! attention stacks each KV head's query heads (no copies of K, V). The output head is a
//! prepared [h, vocab] matrix shared from the tied embedding (or `output.weight`). The
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
    head: Linear,
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
        let head = Linear::new(config.hidden, config.vocab_size, false, &mut keys);
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
        // The head as x W with W = E^T [h, vocab] (tied: the embedding's rows).
        let head = match w {
            Some(w) => Some(match w.lm_head()? {
                Some(h) => h.transpose(),
                None => embed
                    .as_ref()
                    .map(|e| e.transpose())
                    .ok_or_else(|| Error::Unsupported("tied head without an embedding".into()))?,
            }),
            None => None,
        };
        drop(embed);
        self.head
            .share(p, cx, head.as_ref().map(|w| LinearWeights { w, b: None }))
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
        self.head.forward(p, cx, &last)
    }
}
