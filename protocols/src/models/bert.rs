//! The BERT encoder under MPC, composed of [`crate::nn`] modules (PUMA arXiv 2307.12533
//! §4; SecFormer arXiv 2401.00793 §3).
//!
//! Roles: the model owner ([`MODEL_OWNER`], P1) secret-shares the weights, the data owner
//! ([`DATA_OWNER`], P0) holds the token ids and feeds them to the private lookup, and only
//! the data owner learns the output. The architecture and the sequence length are public
//! (as in PUMA), so the padding mask is a public vector.
//!
//! ```text
//! x = LayerNorm(Embedding(ids) + pos[0..S] + type[0])
//! per layer: x = LayerNorm(x + Attention(x)); x = LayerNorm(x + FFN_GeLU(x))
//! sentence embedding: mean over unmasked tokens, / ||.||
//! ```
//! The 1/sqrt(head_dim) of the scores is folded into W_q and b_q when the weights are
//! shared. The dealing plan of any of these passes is [`crate::nn::plan_steps`] over the
//! same code.

use crate::bert::model::{BertConfig, BertWeights, LayerWeights};
use crate::nn::embedding::PublicIndexTable;
use crate::nn::linear::{Keys, LinearWeights};
use crate::nn::{Attention, AttentionMask, Cx, Embedding, Mlp, Norm, MASKED};
use crate::rsqrt::RsqrtMethod;
use tessera::error::{Error, Result};
use tessera::{Party, Shared, Tensor};

pub use crate::nn::{DATA_OWNER, MODEL_OWNER};

/// One encoder layer (post-norm).
#[derive(Clone, Debug)]
pub struct EncoderLayer {
    /// Self-attention (bidirectional, fused QKV with biases).
    pub attn: Attention,
    /// LayerNorm after the attention residual.
    pub norm1: Norm,
    /// GeLU feed-forward.
    pub mlp: Mlp,
    /// LayerNorm after the feed-forward residual.
    pub norm2: Norm,
}

/// A BERT encoder: its public architecture and its (shared, once [`Bert::share`]d)
/// modules.
#[derive(Clone, Debug)]
pub struct Bert {
    /// The public architecture.
    pub config: BertConfig,
    word: Embedding,
    pos: PublicIndexTable,
    typ: PublicIndexTable,
    emb_norm: Norm,
    /// The layers.
    pub layers: Vec<EncoderLayer>,
}

impl EncoderLayer {
    /// An unshared layer of `config`.
    pub fn new(config: &BertConfig, keys: &mut Keys) -> Result<EncoderLayer> {
        let (h, a, eps) = (config.hidden, config.heads, config.layer_norm_eps);
        Ok(EncoderLayer {
            attn: Attention::new(h, a, a, config.head_dim(), true, None, keys)?,
            norm1: Norm::layer_norm(h, eps),
            mlp: Mlp::gelu(h, config.intermediate, keys),
            norm2: Norm::layer_norm(h, eps),
        })
    }

    /// Shares the layer's weights from the model owner (`Some` there): Q, K, V
    /// concatenated into one [H, 3H] weight with 1/sqrt(d) folded into Q.
    pub fn share(
        &mut self,
        p: &mut Party,
        cx: &mut Cx,
        lw: Option<&LayerWeights>,
        config: &BertConfig,
    ) -> Result<()> {
        let lw = lw.filter(|_| p.id() == MODEL_OWNER);
        let scale = 1.0 / (config.head_dim() as f64).sqrt();
        let qkv = lw
            .map(|l| Tensor::concat_last(&[l.wq.map(|v| v * scale), l.wk.clone(), l.wv.clone()]))
            .transpose()?;
        let bqkv = lw.map(|l| {
            let mut b: Vec<f64> = l.bq.iter().map(|v| v * scale).collect();
            b.extend_from_slice(&l.bk);
            b.extend_from_slice(&l.bv);
            b
        });
        let qkv_w = qkv.as_ref().map(|w| LinearWeights {
            w,
            b: bqkv.as_deref(),
        });
        self.attn.qkv.share(p, cx, qkv_w)?;
        let out_w = lw.map(|l| LinearWeights {
            w: &l.wo,
            b: Some(&l.bo),
        });
        self.attn.out.share(p, cx, out_w)?;
        self.norm1.share(
            p,
            cx,
            lw.map(|l| l.ln1_g.as_slice()),
            lw.map(|l| l.ln1_b.as_slice()),
        )?;
        self.mlp.share_gelu(
            p,
            cx,
            lw.map(|l| {
                (
                    LinearWeights {
                        w: &l.w1,
                        b: Some(&l.b1),
                    },
                    LinearWeights {
                        w: &l.w2,
                        b: Some(&l.b2),
                    },
                )
            }),
        )?;
        self.norm2.share(
            p,
            cx,
            lw.map(|l| l.ln2_g.as_slice()),
            lw.map(|l| l.ln2_b.as_slice()),
        )
    }

    /// The layer on hidden states [S, H] with a public key mask.
    pub fn forward(
        &self,
        p: &mut Party,
        cx: &mut Cx,
        x: &Shared,
        mask: &AttentionMask,
    ) -> Result<Shared> {
        let attn = self.attn.forward(p, cx, x, 0, None, mask)?;
        let x1 = self.norm1.forward(p, cx, &attn.add(x)?)?;
        let ffn = self.mlp.forward(p, cx, &x1)?;
        self.norm2.forward(p, cx, &ffn.add(&x1)?)
    }

    /// Forgets the layer's shares.
    pub fn release(&mut self) {
        self.attn.qkv.release();
        self.attn.out.release();
        self.norm1.release();
        self.mlp.release();
        self.norm2.release();
    }
}

/// The HF additive attention mask of a public 0/1 mask.
pub fn additive_mask(mask: &[u32]) -> Vec<f64> {
    mask.iter()
        .map(|&m| if m == 1 { 0.0 } else { MASKED })
        .collect()
}

impl Bert {
    /// The unshared model of `config` (every party, and the dealer, builds the same one;
    /// prepared-weight keys: the word table 1, then four per layer).
    pub fn new(config: &BertConfig) -> Result<Bert> {
        config.validate()?;
        let mut keys = Keys::new();
        let h = config.hidden;
        let word = Embedding::new(config.vocab_size, h, &mut keys);
        let layers = (0..config.layers)
            .map(|_| EncoderLayer::new(config, &mut keys))
            .collect::<Result<Vec<_>>>()?;
        Ok(Bert {
            config: config.clone(),
            word,
            pos: PublicIndexTable::new(config.max_position, h),
            typ: PublicIndexTable::new(config.type_vocab_size, h),
            emb_norm: Norm::layer_norm(h, config.layer_norm_eps),
            layers,
        })
    }

    /// Shares the whole model from the model owner (`Some(weights)` there, `None`
    /// elsewhere).
    pub fn share(&mut self, p: &mut Party, cx: &mut Cx, w: Option<&BertWeights>) -> Result<()> {
        let w = w.filter(|_| p.id() == MODEL_OWNER);
        if p.id() == MODEL_OWNER && w.is_none() && !cx.is_planning() {
            return Err(Error::Unsupported(
                "the model owner must provide the weights".into(),
            ));
        }
        self.word.share(p, cx, w.map(|w| &w.word_emb))?;
        self.pos.share(p, cx, w.map(|w| &w.pos_emb))?;
        self.typ.share(p, cx, w.map(|w| &w.type_emb))?;
        self.emb_norm.share(
            p,
            cx,
            w.map(|w| w.emb_ln_g.as_slice()),
            w.map(|w| w.emb_ln_b.as_slice()),
        )?;
        let config = self.config.clone();
        for (li, l) in self.layers.iter_mut().enumerate() {
            l.share(p, cx, w.map(|w| &w.layers[li]), &config)?;
        }
        Ok(())
    }

    /// The encoder's last hidden state [S, H] for the data owner's token ids (`Some` at
    /// [`DATA_OWNER`]; S = `mask.len()` is public). `on_layer(i)` runs after layer i.
    pub fn encoder(
        &self,
        p: &mut Party,
        cx: &mut Cx,
        ids: Option<&[u32]>,
        mask: &[u32],
        mut on_layer: impl FnMut(usize),
    ) -> Result<Shared> {
        let seq = mask.len();
        if seq == 0 || seq > self.config.max_position {
            return Err(Error::shape(
                "encoder",
                format!(
                    "sequence of {seq} tokens (max_position {})",
                    self.config.max_position
                ),
            ));
        }
        let word = self.word.forward(p, cx, ids, seq)?;
        // Word rows + position rows 0..S + token-type row 0 (public indices: local).
        let pos: Vec<usize> = (0..seq).collect();
        let x = word
            .add(&self.pos.rows_at(p, cx, &pos)?)?
            .add(&self.typ.rows_at(p, cx, &vec![0; seq])?)?;
        let mut x = self.emb_norm.forward(p, cx, &x)?;
        let amask = AttentionMask::Keys(additive_mask(mask));
        for (li, l) in self.layers.iter().enumerate() {
            x = l.forward(p, cx, &x, &amask)?;
            on_layer(li);
        }
        Ok(x)
    }

    /// Sentence embedding (all-MiniLM-L6-v2 pipeline): mean of the hidden states over the
    /// tokens with mask 1, then L2 normalisation by a secure rsqrt of the squared norm.
    pub fn sentence_embedding(
        &self,
        p: &mut Party,
        cx: &mut Cx,
        ids: Option<&[u32]>,
        mask: &[u32],
        on_layer: impl FnMut(usize),
    ) -> Result<Shared> {
        let hs = self.encoder(p, cx, ids, mask, on_layer)?;
        mean_l2_pool(p, cx, &hs, mask)
    }
}

/// Masked mean over rows, then x / ||x|| (local sums; one scale truncation, one square,
/// one rsqrt, one product).
pub fn mean_l2_pool(p: &mut Party, cx: &mut Cx, hs: &Shared, mask: &[u32]) -> Result<Shared> {
    let h = hs.shape()[1];
    let count = mask.iter().filter(|&&v| v == 1).count().max(1);
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
    let mean = cx.truncate(p, "pooling", &summed.scale(fx.encode(1.0 / count as f64)?))?;
    let sq = cx.mul(p, "pooling", &mean, &mean)?;
    let norm2 = sq.map_local(|t| {
        Tensor::from_vec(
            &[1],
            vec![t.data().iter().fold(0u64, |a, v| a.wrapping_add(*v))],
        )
        .expect("1-D")
    });
    let inv = cx.rsqrt(p, "pooling", &norm2, RsqrtMethod::Lut)?;
    let inv_b = inv.map_local(|t| Tensor::from_vec(&[h], vec![t.data()[0]; h]).expect("1-D"));
    cx.mul(p, "pooling", &mean, &inv_b)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bert::plain;
    use crate::nn::{plan_steps, total_demand, Methods};
    use tessera::runtime::run_parties;
    use tessera::{FixedPoint, MaterialMode, SessionOptions, Setting};

    /// A layer dealt step by step with softmax and GeLU split into chunks (as `bench
    /// bert` runs it) consumes exactly the plan derived from its own forward and matches
    /// the plaintext layer as closely as the unsplit one: 3e-3 absolute, the per-layer
    /// bound of issue 6 (measured 2.5e-4 here; ~1e-3 at BERT-base width, mostly GeLU's
    /// 3e-4 and LayerNorm's rsqrt).
    #[test]
    fn staged_chunked_layer_matches_plain_and_its_plan() {
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
        let max_elems = 100; // softmax: 32 rows of 8 in 3 chunks; GeLU: 8 row chunks of 64
        let methods = Methods::default();
        let fx = FixedPoint::default();
        let amask = AttentionMask::Keys(additive_mask(&vec![1; seq]));
        for s in [Setting::TwoPc, Setting::ThreePc] {
            let model = Bert::new(&cfg).unwrap();
            let share_plan = plan_steps(s, fx, methods, max_elems, |p, cx| {
                model.layers[0].clone().share(p, cx, None, &cfg)
            })
            .unwrap();
            let steps = plan_steps(s, fx, methods, max_elems, |p, cx| {
                let x = Shared::zeros(p, &[seq, cfg.hidden]);
                model.layers[0].forward(p, cx, &x, &amask).map(|_| ())
            })
            .unwrap();
            assert_eq!(steps.len(), 8 + 3 + 8, "{s:?}");
            let mut all = total_demand(&share_plan);
            all.extend(total_demand(&steps));
            let opts = SessionOptions {
                material: MaterialMode::Planned(all.clone()),
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
                let mut layer = model.layers[0].clone();
                layer.share(p, &mut Cx::run(methods), Some(&w.layers[0]), &cfg)?;
                let mut seen = 0;
                let mut hook = |_: &mut Party, i: usize| {
                    assert_eq!(i, seen);
                    seen += 1;
                    Ok(())
                };
                let mut cx = Cx::staged(methods, max_elems, &mut hook);
                let y = layer.forward(p, &mut cx, &xs, &amask)?;
                drop(cx);
                assert_eq!(seen, 8 + 3 + 8);
                let consumed = p.consumed_demand();
                let t = p.open(&y)?;
                Ok((
                    t.data().iter().map(|&v| fx.decode(v)).collect::<Vec<f64>>(),
                    consumed,
                ))
            })
            .unwrap();
            assert_eq!(outs[0].value.1, all, "consumed = planned ({s:?})");
            let got = &outs[0].value.0;
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
