//! Normalisation layers over the last axis: LayerNorm (BERT; PUMA §4.4) and RMSNorm
//! (Llama: x / sqrt(mean(x^2) + eps) * g), both with secret gains, through the fused
//! mask-and-rsqrt protocols of [`crate::layernorm`] and [`crate::rmsnorm`].

use super::{Cx, Vector, MODEL_OWNER};
use tessera::error::Result;
use tessera::{Party, Shared};

/// LayerNorm (gain and bias) or RMSNorm (gain only).
#[derive(Clone, Debug)]
pub enum Norm {
    /// (x - mean) / sqrt(var + eps) * g + b.
    LayerNorm {
        /// Gain.
        g: Vector,
        /// Bias.
        b: Vector,
        /// Epsilon.
        eps: f64,
    },
    /// x / sqrt(mean(x^2) + eps) * g.
    RmsNorm {
        /// Gain.
        g: Vector,
        /// Epsilon.
        eps: f64,
    },
}

impl Norm {
    /// An unshared LayerNorm over rows of `h`.
    pub fn layer_norm(h: usize, eps: f64) -> Norm {
        Norm::LayerNorm {
            g: Vector::new(h),
            b: Vector::new(h),
            eps,
        }
    }
    /// An unshared RMSNorm over rows of `h`.
    pub fn rms_norm(h: usize, eps: f64) -> Norm {
        Norm::RmsNorm {
            g: Vector::new(h),
            eps,
        }
    }
    /// Shares the model owner's gain (and bias for LayerNorm; `None` elsewhere).
    pub fn share(
        &mut self,
        p: &mut Party,
        cx: &mut Cx,
        gain: Option<&[f64]>,
        bias: Option<&[f64]>,
    ) -> Result<()> {
        let owner = p.id() == MODEL_OWNER;
        match self {
            Norm::LayerNorm { g, b, .. } => {
                g.share(p, cx, gain.filter(|_| owner))?;
                b.share(p, cx, bias.filter(|_| owner))
            }
            Norm::RmsNorm { g, .. } => g.share(p, cx, gain.filter(|_| owner)),
        }
    }
    /// The normalised rows.
    pub fn forward(&self, p: &mut Party, cx: &mut Cx, x: &Shared) -> Result<Shared> {
        match self {
            Norm::LayerNorm { g, b, eps } => cx.layernorm(p, x, g, b, *eps),
            Norm::RmsNorm { g, eps } => cx.rmsnorm(p, x, g, *eps),
        }
    }
    /// Forgets the shares.
    pub fn release(&mut self) {
        match self {
            Norm::LayerNorm { g, b, .. } => {
                g.release();
                b.release();
            }
            Norm::RmsNorm { g, .. } => g.release(),
        }
    }
}
