//! ResNet-style CNNs under MPC, composed of [`crate::nn`] modules (DESIGN.md §8; the
//! layer set of CrypTFlow2 / Cheetah's ResNet-50 and of the HE-friendly polynomial CNNs
//! of Baruch et al. 2023).
//!
//! Roles: the model owner ([`MODEL_OWNER`], P1) folds every BatchNorm into its
//! convolution and secret-shares the result; the data owner ([`DATA_OWNER`], P0) shares
//! its images; only the data owner learns the classes (a private argmax opened to it
//! alone) or, on request, the logits. The architecture and the batch size are public.
//!
//! ```text
//! x = act(conv_stem(x)) [-> maxpool 3x3/2]
//! per block: x = act(main(x) + shortcut(x)),  main = conv1 act conv2 [act conv3]
//! logits = fc(sum_HW(x)) with fc's weight divided by H W (the global average pool's
//!          divisor folded into the classifier: the pool itself is a local sum)
//! ```
//! The dealing plan of a forward pass is [`crate::nn::plan_steps`] over the same code.

use crate::nn::act::Activation;
use crate::nn::conv::{global_sum, Conv2d, ConvWeights, MaxPool2d};
use crate::nn::linear::{Keys, Linear, LinearWeights};
use crate::nn::Cx;
use crate::resnet::{ResNetConfig, ResNetWeights, STEM_POOL};
use tessera::error::{Error, Result};
use tessera::{Party, Shared, Tensor};

pub use crate::nn::{DATA_OWNER, MODEL_OWNER};

/// Fractional bits of the public divisor of [`ResNet::features`]' average pool.
const POOL_SCALE: u32 = 20;

/// One residual block.
#[derive(Clone, Debug)]
pub struct Block {
    /// conv1, conv2 (, conv3), each with its folded BN as bias.
    pub main: Vec<Conv2d>,
    /// The shortcut's 1x1 convolution, if any.
    pub down: Option<Conv2d>,
}

/// A ResNet: its public architecture and its (shared, once [`ResNet::share`]d) modules.
#[derive(Clone, Debug)]
pub struct ResNet {
    /// The public architecture.
    pub config: ResNetConfig,
    stem: Conv2d,
    pool: Option<MaxPool2d>,
    /// The residual blocks.
    pub blocks: Vec<Block>,
    fc: Linear,
    act: Activation,
}

impl ResNet {
    /// The unshared modules of `config`.
    pub fn new(config: &ResNetConfig) -> Result<ResNet> {
        config.validate()?;
        let mut keys = Keys::new();
        let stem = Conv2d::new(config.stem_spec(), true, &mut keys)?;
        let mut blocks = vec![];
        for b in config.block_specs() {
            let (main, down) = b.convs(config.block);
            blocks.push(Block {
                main: main
                    .into_iter()
                    .map(|s| Conv2d::new(s, true, &mut keys))
                    .collect::<Result<_>>()?,
                down: down.map(|s| Conv2d::new(s, true, &mut keys)).transpose()?,
            });
        }
        Ok(ResNet {
            config: config.clone(),
            stem,
            pool: config.stem_maxpool.then_some(STEM_POOL),
            blocks,
            fc: Linear::new(config.features(), config.num_classes, true, &mut keys),
            act: config.activation.clone(),
        })
    }

    /// Shares the weights from the model owner (`Some` there, which must match the
    /// architecture): BatchNorm folded into each convolution, the pool's divisor into fc.
    pub fn share(&mut self, p: &mut Party, cx: &mut Cx, w: Option<&ResNetWeights>) -> Result<()> {
        let w = w.filter(|_| p.id() == MODEL_OWNER);
        if let Some(w) = w {
            if w.config != self.config {
                return Err(Error::Unsupported(
                    "resnet: the weights are for another architecture".into(),
                ));
            }
        }
        let eps = self.config.bn_eps;
        let share_conv = |c: &mut Conv2d,
                          p: &mut Party,
                          cx: &mut Cx,
                          cb: Option<&crate::resnet::ConvBn>|
         -> Result<()> {
            let folded = cb.map(|cb| cb.folded(eps));
            c.share(
                p,
                cx,
                folded.as_ref().map(|(w, b)| ConvWeights {
                    w,
                    b: Some(b.as_slice()),
                }),
            )
        };
        share_conv(&mut self.stem, p, cx, w.map(|w| &w.stem))?;
        for (i, b) in self.blocks.iter_mut().enumerate() {
            let bw = w.map(|w| &w.blocks[i]);
            for (j, c) in b.main.iter_mut().enumerate() {
                share_conv(c, p, cx, bw.map(|bw| &bw.main[j]))?;
            }
            if let Some(d) = b.down.as_mut() {
                let dw = bw.and_then(|bw| bw.down.as_ref());
                if bw.is_some() && dw.is_none() {
                    return Err(Error::Unsupported(format!(
                        "resnet: block {i} needs a downsample shortcut"
                    )));
                }
                share_conv(d, p, cx, dw)?;
            }
        }
        let (fh, fw) = self.config.final_hw()?;
        let inv = 1.0 / (fh * fw) as f64;
        let fc = w.map(|w| w.fc_w.transpose().map(|v| v * inv));
        self.fc.share(
            p,
            cx,
            fc.as_ref().zip(w).map(|(fc, w)| LinearWeights {
                w: fc,
                b: Some(&w.fc_b),
            }),
        )
    }

    /// Logits `[N, classes]` of shared NHWC images `[N, H, W, C]`.
    pub fn forward(&self, p: &mut Party, cx: &mut Cx, x: &Shared) -> Result<Shared> {
        let pooled = self.trunk_sum(p, cx, x)?;
        self.fc.forward(p, cx, &pooled)
    }

    /// Features `[N, features]` of shared images: the trunk's output averaged over the
    /// final H x W (a frozen backbone's output for a fine-tuned head). The local sum is
    /// scaled by the public round(2^20 / (H W)) and truncated by 20 bits in one faithful
    /// truncation (1 round in both settings; 3PC returns a pair): exact for a power-of-two
    /// H W, else within a relative 2^-21 H W of the mean (2e-5 at 7 x 7), plus 1 ulp.
    pub fn features(&self, p: &mut Party, cx: &mut Cx, x: &Shared) -> Result<Shared> {
        let pooled = self.trunk_sum(p, cx, x)?;
        let (fh, fw) = self.config.final_hw()?;
        let k = ((1u64 << POOL_SCALE) as f64 / (fh * fw) as f64).round() as u64;
        cx.truncate_by(p, "global avg pool", &pooled.scale(k), POOL_SCALE)
    }

    /// The trunk's output summed over the final H x W, `[N, features]`.
    fn trunk_sum(&self, p: &mut Party, cx: &mut Cx, x: &Shared) -> Result<Shared> {
        let c = &self.config;
        match *x.shape() {
            [_, h, w, ch] if (h, w) == c.image_size && ch == c.in_channels => {}
            ref s => {
                return Err(Error::shape(
                    "resnet input",
                    format!(
                        "images {s:?} for a model of [N, {}, {}, {}]",
                        c.image_size.0, c.image_size.1, c.in_channels
                    ),
                ))
            }
        }
        let mut y = self.stem.forward(p, cx, x)?;
        y = self.act.forward(p, cx, &y)?;
        if let Some(pool) = &self.pool {
            y = pool.forward(p, cx, &y)?;
        }
        for b in &self.blocks {
            let mut z = y.clone();
            let k = b.main.len();
            for (j, conv) in b.main.iter().enumerate() {
                z = conv.forward(p, cx, &z)?;
                if j + 1 < k {
                    z = self.act.forward(p, cx, &z)?;
                }
            }
            let short = match &b.down {
                Some(d) => d.forward(p, cx, &y)?,
                None => y.clone(),
            };
            y = self.act.forward(p, cx, &z.add(&short)?)?;
        }
        global_sum(&y)
    }

    /// The classes of shared images, revealed to the data owner only (`Some` there).
    pub fn classify(&self, p: &mut Party, cx: &mut Cx, x: &Shared) -> Result<Option<Vec<usize>>> {
        let logits = self.forward(p, cx, x)?;
        cx.argmax_reveal(p, &logits, DATA_OWNER)
    }

    /// Forgets the shares.
    pub fn release(&mut self) {
        self.stem.release();
        for b in &mut self.blocks {
            b.main.iter_mut().for_each(Conv2d::release);
            if let Some(d) = b.down.as_mut() {
                d.release();
            }
        }
        self.fc.release();
    }
}

/// The data owner's images, encoded (`Some` at [`DATA_OWNER`]).
pub fn encode_images(p: &Party, images: Option<&Tensor<f64>>) -> Result<Option<Tensor<u64>>> {
    images
        .filter(|_| p.id() == DATA_OWNER)
        .map(|t| p.fixed().encode_tensor(t))
        .transpose()
}
