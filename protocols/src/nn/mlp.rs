//! Feed-forward blocks: the GeLU FFN of BERT (W2 GeLU(x W1 + b1) + b2) and Llama's SwiGLU
//! (W_down (SiLU(x W_gate) * (x W_up))), with the gate and up projections fused into one
//! product [h, 2F] so their openings share a round.

use super::linear::{Keys, Linear, LinearWeights};
use super::{Cx, MODEL_OWNER};
use tessera::error::{Error, Result};
use tessera::{Party, Shared, Tensor};

/// A feed-forward block.
#[derive(Clone, Debug)]
pub enum Mlp {
    /// W2 GeLU(x W1 + b1) + b2.
    Gelu {
        /// [h, F] with bias.
        up: Linear,
        /// [F, h] with bias.
        down: Linear,
    },
    /// W_down (SiLU(x W_gate) * (x W_up)), no biases.
    SwiGlu {
        /// [h, 2F]: the gate's F columns, then the up projection's.
        gate_up: Linear,
        /// [F, h].
        down: Linear,
        /// F.
        ffn: usize,
    },
}

impl Mlp {
    /// An unshared GeLU FFN h -> F -> h with biases.
    pub fn gelu(h: usize, ffn: usize, keys: &mut Keys) -> Mlp {
        Mlp::Gelu {
            up: Linear::new(h, ffn, true, keys),
            down: Linear::new(ffn, h, true, keys),
        }
    }
    /// An unshared SwiGLU block h -> F -> h.
    pub fn swiglu(h: usize, ffn: usize, keys: &mut Keys) -> Mlp {
        Mlp::SwiGlu {
            gate_up: Linear::new(h, 2 * ffn, false, keys),
            down: Linear::new(ffn, h, false, keys),
            ffn,
        }
    }
    /// Shares a GeLU FFN's weights (W1 [h, F], b1, W2 [F, h], b2; `Some` at the owner).
    pub fn share_gelu(
        &mut self,
        p: &mut Party,
        cx: &mut Cx,
        w: Option<(LinearWeights, LinearWeights)>,
    ) -> Result<()> {
        let Mlp::Gelu { up, down } = self else {
            return Err(Error::Unsupported("share_gelu on a SwiGLU block".into()));
        };
        let (a, b) = match w.filter(|_| p.id() == MODEL_OWNER) {
            Some((a, b)) => (Some(a), Some(b)),
            None => (None, None),
        };
        up.share(p, cx, a)?;
        down.share(p, cx, b)
    }
    /// Shares a SwiGLU block's weights (gate [h, F], up [h, F], down [F, h]).
    pub fn share_swiglu(
        &mut self,
        p: &mut Party,
        cx: &mut Cx,
        w: Option<(&Tensor<f64>, &Tensor<f64>, &Tensor<f64>)>,
    ) -> Result<()> {
        let Mlp::SwiGlu { gate_up, down, .. } = self else {
            return Err(Error::Unsupported("share_swiglu on a GeLU block".into()));
        };
        let w = w.filter(|_| p.id() == MODEL_OWNER);
        let gu = w
            .map(|(g, u, _)| Tensor::concat_last(&[g.clone(), u.clone()]))
            .transpose()?;
        gate_up.share(p, cx, gu.as_ref().map(|w| LinearWeights { w, b: None }))?;
        down.share(p, cx, w.map(|(_, _, d)| LinearWeights { w: d, b: None }))
    }
    /// The block on x [S, h].
    pub fn forward(&self, p: &mut Party, cx: &mut Cx, x: &Shared) -> Result<Shared> {
        match self {
            Mlp::Gelu { up, down } => {
                let hdn = up.forward(p, cx, x)?;
                let act = cx.gelu(p, &hdn)?;
                down.forward(p, cx, &act)
            }
            Mlp::SwiGlu { gate_up, down, ffn } => {
                let gu = gate_up.forward(p, cx, x)?;
                let parts = gu.split_last(&[*ffn, *ffn])?;
                let act = cx.silu(p, &parts[0])?;
                let prod = cx.mul(p, "swiglu", &act, &parts[1])?;
                down.forward(p, cx, &prod)
            }
        }
    }
    /// Forgets the shares.
    pub fn release(&mut self) {
        match self {
            Mlp::Gelu { up, down } => {
                up.release();
                down.release();
            }
            Mlp::SwiGlu { gate_up, down, .. } => {
                gate_up.release();
                down.release();
            }
        }
    }
}
