//! ResNet-family CNNs in the clear: the architecture description (`config.toml`), import
//! of PyTorch state_dict tensors from safetensors (torchvision names), BatchNorm folding,
//! deterministic random weights at trained scale for benchmarks, an images file format,
//! and the plaintext f64 forward pass the secure model ([`crate::models::resnet`]) is
//! checked against.
//!
//! Import format (chosen over ONNX: the weights are what a PyTorch user already has, the
//! architecture is a dozen public numbers, and no graph interpreter is needed):
//! - `config.toml`: `architecture = "resnet"`, `block = "basic" | "bottleneck"`,
//!   `in_channels`, `image_size = [H, W]`, `num_classes`, `stem_kernel`, `stem_stride`,
//!   `stem_padding`, `stem_maxpool`, `widths` (per stage; bottleneck blocks output 4x),
//!   `blocks` (per stage), `bn_eps`, `activation = "relu" | "poly"`, `poly = [c0, c1, ..]`
//!   and `poly_range` for `poly`, optional `plain_test_accuracy`. Stage s > 0 starts with
//!   stride 2 (torchvision v1.5: on the 3x3 convolution of a bottleneck).
//! - `model.safetensors`: `conv1.weight` (OIHW), `bn1.{weight,bias,running_mean,
//!   running_var}`, `layer{s}.{b}.conv{1,2,3}.weight`, `layer{s}.{b}.bn{1,2,3}.*`,
//!   `layer{s}.{b}.downsample.{0.weight,1.*}`, `fc.weight` `[classes, features]`,
//!   `fc.bias`; F32/F16/BF16/F64. `num_batches_tracked` is ignored; any other tensor is an
//!   error naming it (a layer this importer does not implement).
//!
//! Activations are NHWC throughout (see [`crate::nn::conv`]).

use crate::bert::model::{safetensor_to_f64, DemoRng};
use crate::nn::act::{argmax_plain, Activation};
use crate::nn::conv::{conv2d_plain, global_avg_pool_plain, nhwc, ConvSpec, MaxPool2d};
use safetensors::SafeTensors;
use std::collections::BTreeSet;
use std::path::Path;
use tessera::{Error, Result, Tensor};

/// Residual block kind.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BlockKind {
    /// Two 3x3 convolutions (ResNet-18/34).
    Basic,
    /// 1x1, 3x3, 1x1 with expansion 4 (ResNet-50/101/152).
    Bottleneck,
}

/// The public architecture of a ResNet-style CNN.
#[derive(Clone, Debug, PartialEq)]
pub struct ResNetConfig {
    /// Block kind.
    pub block: BlockKind,
    /// Image channels.
    pub in_channels: usize,
    /// Image height and width.
    pub image_size: (usize, usize),
    /// Classes.
    pub num_classes: usize,
    /// Stem convolution kernel, stride, padding.
    pub stem: (usize, usize, usize),
    /// 3x3 stride-2 max pool after the stem (ImageNet stem).
    pub stem_maxpool: bool,
    /// Width per stage (a bottleneck stage outputs 4x its width).
    pub widths: Vec<usize>,
    /// Blocks per stage.
    pub blocks: Vec<usize>,
    /// BatchNorm epsilon.
    pub bn_eps: f64,
    /// The activation.
    pub activation: Activation,
    /// For polynomial activations: the input range the model was trained for.
    pub poly_range: Option<f64>,
    /// The plaintext model's test accuracy, as the training script measured it.
    pub plain_test_accuracy: Option<f64>,
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    architecture: String,
    block: String,
    in_channels: usize,
    image_size: [usize; 2],
    num_classes: usize,
    stem_kernel: usize,
    stem_stride: usize,
    stem_padding: usize,
    stem_maxpool: bool,
    widths: Vec<usize>,
    blocks: Vec<usize>,
    #[serde(default = "default_eps")]
    bn_eps: f64,
    activation: String,
    poly: Option<Vec<f64>>,
    poly_range: Option<f64>,
    plain_test_accuracy: Option<f64>,
}

fn default_eps() -> f64 {
    1e-5
}

fn cfg_err(path: &Path, detail: impl Into<String>) -> Error {
    Error::Config {
        path: path.to_path_buf(),
        detail: detail.into(),
    }
}

/// One residual block's public shape.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlockSpec {
    /// Input channels.
    pub cin: usize,
    /// Inner width.
    pub mid: usize,
    /// Output channels.
    pub cout: usize,
    /// Stride of the block.
    pub stride: usize,
    /// Whether the shortcut is a 1x1 convolution (+ BN).
    pub downsample: bool,
}

impl BlockSpec {
    /// The block's convolutions in order (conv1, conv2, [conv3]) and the shortcut's.
    pub fn convs(&self, kind: BlockKind) -> (Vec<ConvSpec>, Option<ConvSpec>) {
        let down = self
            .downsample
            .then(|| ConvSpec::square(self.cin, self.cout, 1, self.stride, 0));
        let main = match kind {
            BlockKind::Basic => vec![
                ConvSpec::square(self.cin, self.mid, 3, self.stride, 1),
                ConvSpec::square(self.mid, self.cout, 3, 1, 1),
            ],
            BlockKind::Bottleneck => vec![
                ConvSpec::square(self.cin, self.mid, 1, 1, 0),
                ConvSpec::square(self.mid, self.mid, 3, self.stride, 1),
                ConvSpec::square(self.mid, self.cout, 1, 1, 0),
            ],
        };
        (main, down)
    }
}

/// The max pool of an ImageNet stem.
pub const STEM_POOL: MaxPool2d = MaxPool2d {
    kernel: 3,
    stride: 2,
    padding: 1,
};

impl ResNetConfig {
    /// Reads and validates a `config.toml` (see the module doc); errors name the file and
    /// the field.
    pub fn from_toml_file(path: &Path) -> Result<ResNetConfig> {
        let text = std::fs::read_to_string(path).map_err(|cause| Error::File {
            path: path.to_path_buf(),
            cause,
        })?;
        Self::from_toml_str(&text, path)
    }

    /// Parses `config.toml` text (`path` names it in errors).
    pub fn from_toml_str(text: &str, path: &Path) -> Result<ResNetConfig> {
        let raw: RawConfig = toml::from_str(text).map_err(|e| cfg_err(path, e.to_string()))?;
        if raw.architecture != "resnet" {
            return Err(cfg_err(
                path,
                format!(
                    "architecture {:?} is not supported (supported: \"resnet\")",
                    raw.architecture
                ),
            ));
        }
        let block = match raw.block.as_str() {
            "basic" => BlockKind::Basic,
            "bottleneck" => BlockKind::Bottleneck,
            b => {
                return Err(cfg_err(
                    path,
                    format!("block {b:?} is not supported (supported: \"basic\", \"bottleneck\")"),
                ))
            }
        };
        let activation = match (raw.activation.as_str(), &raw.poly) {
            ("relu", None) => Activation::Relu,
            ("relu", Some(_)) => {
                return Err(cfg_err(path, "`poly` given with activation \"relu\""))
            }
            ("poly", Some(c)) => Activation::poly(c).map_err(|e| cfg_err(path, e.to_string()))?,
            ("poly", None) => {
                return Err(cfg_err(
                    path,
                    "activation \"poly\" needs `poly = [c0, c1, ...]`",
                ))
            }
            (a, _) => {
                return Err(cfg_err(
                    path,
                    format!("activation {a:?} is not supported (supported: \"relu\", \"poly\")"),
                ))
            }
        };
        let c = ResNetConfig {
            block,
            in_channels: raw.in_channels,
            image_size: (raw.image_size[0], raw.image_size[1]),
            num_classes: raw.num_classes,
            stem: (raw.stem_kernel, raw.stem_stride, raw.stem_padding),
            stem_maxpool: raw.stem_maxpool,
            widths: raw.widths,
            blocks: raw.blocks,
            bn_eps: raw.bn_eps,
            activation,
            poly_range: raw.poly_range,
            plain_test_accuracy: raw.plain_test_accuracy,
        };
        c.validate().map_err(|e| cfg_err(path, e.to_string()))?;
        Ok(c)
    }

    /// Checks sizes: stages, widths, a stem and pooling that fit the image.
    pub fn validate(&self) -> Result<()> {
        let bad = |d: String| Err(Error::Unsupported(d));
        if self.widths.is_empty() || self.widths.len() != self.blocks.len() {
            return bad(format!(
                "widths {:?} and blocks {:?} must be non-empty and of the same length",
                self.widths, self.blocks
            ));
        }
        if self
            .widths
            .iter()
            .chain(&self.blocks)
            .any(|&v| v == 0 || v > 1 << 14)
            || self.in_channels == 0
            || self.in_channels > 1 << 10
            || self.num_classes == 0
            || self.num_classes > 1 << 20
        {
            return bad("zero or oversized channels, blocks or classes".into());
        }
        if !(self.bn_eps > 0.0 && self.bn_eps.is_finite()) {
            return bad(format!("bn_eps {} must be positive", self.bn_eps));
        }
        let (h, w) = self.image_size;
        if h == 0 || w == 0 || h > 4096 || w > 4096 {
            return bad(format!("image_size {h}x{w}"));
        }
        self.final_hw().map(|_| ())
    }

    /// The stem convolution.
    pub fn stem_spec(&self) -> ConvSpec {
        ConvSpec::square(
            self.in_channels,
            self.widths[0],
            self.stem.0,
            self.stem.1,
            self.stem.2,
        )
    }

    /// Every block's shape, stage by stage.
    pub fn block_specs(&self) -> Vec<BlockSpec> {
        let exp = match self.block {
            BlockKind::Basic => 1,
            BlockKind::Bottleneck => 4,
        };
        let mut cin = self.widths[0];
        let mut out = vec![];
        for (s, (&w, &n)) in self.widths.iter().zip(&self.blocks).enumerate() {
            for b in 0..n {
                let stride = if s > 0 && b == 0 { 2 } else { 1 };
                let cout = w * exp;
                out.push(BlockSpec {
                    cin,
                    mid: w,
                    cout,
                    stride,
                    downsample: stride != 1 || cin != cout,
                });
                cin = cout;
            }
        }
        out
    }

    /// Feature width before the classifier.
    pub fn features(&self) -> usize {
        self.block_specs().last().map_or(self.widths[0], |b| b.cout)
    }

    /// Height and width of the last feature map (an error when a layer does not fit).
    pub fn final_hw(&self) -> Result<(usize, usize)> {
        let (h, w) = self.image_size;
        let mut hw = self.stem_spec().out_hw(h, w)?;
        if self.stem_maxpool {
            hw = STEM_POOL.out_hw(hw.0, hw.1)?;
        }
        for b in self.block_specs() {
            let (main, _) = b.convs(self.block);
            for c in main {
                hw = c.out_hw(hw.0, hw.1)?;
            }
        }
        Ok(hw)
    }

    /// torchvision's ResNet-18 with a CIFAR stem (3x3, stride 1, no max pool), 32x32x3,
    /// 10 classes.
    pub fn resnet18_cifar() -> ResNetConfig {
        ResNetConfig {
            block: BlockKind::Basic,
            in_channels: 3,
            image_size: (32, 32),
            num_classes: 10,
            stem: (3, 1, 1),
            stem_maxpool: false,
            widths: vec![64, 128, 256, 512],
            blocks: vec![2, 2, 2, 2],
            bn_eps: 1e-5,
            activation: Activation::Relu,
            poly_range: None,
            plain_test_accuracy: None,
        }
    }

    /// torchvision's ResNet-50 (v1.5) at ImageNet shape: 224x224x3, 1000 classes.
    pub fn resnet50_imagenet() -> ResNetConfig {
        ResNetConfig {
            block: BlockKind::Bottleneck,
            in_channels: 3,
            image_size: (224, 224),
            num_classes: 1000,
            stem: (7, 2, 3),
            stem_maxpool: true,
            widths: vec![64, 128, 256, 512],
            blocks: vec![3, 4, 6, 3],
            bn_eps: 1e-5,
            activation: Activation::Relu,
            poly_range: None,
            plain_test_accuracy: None,
        }
    }
}

/// BatchNorm parameters (eval mode: running statistics).
#[derive(Clone, Debug, PartialEq)]
pub struct BatchNorm {
    /// Scale.
    pub gamma: Vec<f64>,
    /// Shift.
    pub beta: Vec<f64>,
    /// Running mean.
    pub mean: Vec<f64>,
    /// Running variance.
    pub var: Vec<f64>,
}

/// A bias-free convolution followed by BatchNorm, as ResNets have them.
#[derive(Clone, Debug, PartialEq)]
pub struct ConvBn {
    /// The public shape.
    pub spec: ConvSpec,
    /// OIHW weight.
    pub w: Tensor<f64>,
    /// The BatchNorm after it.
    pub bn: BatchNorm,
}

impl ConvBn {
    /// BatchNorm folded into the convolution (done by the model owner when it shares the
    /// weights): W' = W gamma / sqrt(var + eps) per output channel, b' = beta - mean gamma /
    /// sqrt(var + eps). Exact in f64; the secure model then runs one convolution with a bias.
    pub fn folded(&self, eps: f64) -> (Tensor<f64>, Vec<f64>) {
        let co = self.spec.cout;
        let per = self.w.len() / co.max(1);
        let s: Vec<f64> = (0..co)
            .map(|o| self.bn.gamma[o] / (self.bn.var[o] + eps).sqrt())
            .collect();
        let w: Vec<f64> = self
            .w
            .data()
            .iter()
            .enumerate()
            .map(|(i, v)| v * s[i / per])
            .collect();
        let b = (0..co)
            .map(|o| self.bn.beta[o] - self.bn.mean[o] * s[o])
            .collect();
        (Tensor::from_vec(self.w.shape(), w).expect("same shape"), b)
    }

    /// Convolution then BatchNorm in f64 (unfolded: the reference checks the folding too).
    pub fn plain(&self, x: &Tensor<f64>, eps: f64) -> Result<Tensor<f64>> {
        let y = conv2d_plain(x, &self.w, None, &self.spec)?;
        let bn = &self.bn;
        let s: Vec<f64> = (0..self.spec.cout)
            .map(|o| bn.gamma[o] / (bn.var[o] + eps).sqrt())
            .collect();
        let sh: Vec<f64> = (0..self.spec.cout)
            .map(|o| bn.beta[o] - bn.mean[o] * s[o])
            .collect();
        let c = self.spec.cout;
        let data = y
            .data()
            .iter()
            .enumerate()
            .map(|(i, v)| v * s[i % c] + sh[i % c])
            .collect();
        Tensor::from_vec(y.shape(), data)
    }
}

/// One residual block's weights.
#[derive(Clone, Debug, PartialEq)]
pub struct BlockWeights {
    /// conv1 + bn1, conv2 + bn2 (+ conv3 + bn3 in a bottleneck).
    pub main: Vec<ConvBn>,
    /// The shortcut's 1x1 convolution + BN.
    pub down: Option<ConvBn>,
}

/// A ResNet's weights (the model owner's, in the clear).
#[derive(Clone, Debug, PartialEq)]
pub struct ResNetWeights {
    /// The architecture.
    pub config: ResNetConfig,
    /// conv1 + bn1.
    pub stem: ConvBn,
    /// The blocks in order.
    pub blocks: Vec<BlockWeights>,
    /// Classifier `[classes, features]` (PyTorch layout).
    pub fc_w: Tensor<f64>,
    /// Classifier bias.
    pub fc_b: Vec<f64>,
}

struct Reader<'a> {
    st: SafeTensors<'a>,
    path: &'a Path,
    used: BTreeSet<String>,
}

impl Reader<'_> {
    fn get(&mut self, name: &str, shape: &[usize]) -> Result<Tensor<f64>> {
        let view = self
            .st
            .tensor(name)
            .map_err(|_| cfg_err(self.path, format!("missing tensor `{name}`")))?;
        if view.shape() != shape {
            return Err(cfg_err(
                self.path,
                format!(
                    "tensor `{name}` has shape {:?}, expected {shape:?} from config.toml",
                    view.shape()
                ),
            ));
        }
        let data = safetensor_to_f64(&view).map_err(|d| {
            cfg_err(
                self.path,
                format!("tensor `{name}` has dtype {d:?}; expected F32, F16, BF16 or F64"),
            )
        })?;
        if data.iter().any(|v| !v.is_finite()) {
            return Err(cfg_err(
                self.path,
                format!("tensor `{name}` holds a non-finite value"),
            ));
        }
        self.used.insert(name.to_string());
        Tensor::from_vec(shape, data)
    }

    fn conv_bn(&mut self, conv: &str, bn_name: &str, spec: ConvSpec) -> Result<ConvBn> {
        let (kh, kw) = spec.kernel;
        let w = self.get(
            &format!("{conv}.weight"),
            &[spec.cout, spec.cin / spec.groups, kh, kw],
        )?;
        let c = spec.cout;
        let mut v = |n: &str| -> Result<Vec<f64>> {
            Ok(self.get(&format!("{bn_name}.{n}"), &[c])?.into_data())
        };
        let bn = BatchNorm {
            gamma: v("weight")?,
            beta: v("bias")?,
            mean: v("running_mean")?,
            var: v("running_var")?,
        };
        if bn.var.iter().any(|&x| x < 0.0) {
            return Err(cfg_err(
                self.path,
                format!("`{bn_name}.running_var` is negative"),
            ));
        }
        Ok(ConvBn { spec, w, bn })
    }
}

impl ResNetWeights {
    /// Loads `dir/config.toml` and `dir/model.safetensors` (see the module doc).
    pub fn load(dir: &Path) -> Result<ResNetWeights> {
        let config = ResNetConfig::from_toml_file(&dir.join("config.toml"))?;
        let path = dir.join("model.safetensors");
        let bytes = std::fs::read(&path).map_err(|cause| Error::File {
            path: path.clone(),
            cause,
        })?;
        Self::from_bytes(config, &bytes, &path)
    }

    /// The weights of `config` from the bytes of a safetensors file (`path` names it).
    pub fn from_bytes(config: ResNetConfig, bytes: &[u8], path: &Path) -> Result<ResNetWeights> {
        let st = SafeTensors::deserialize(bytes)
            .map_err(|e| cfg_err(path, format!("not a valid safetensors file: {e}")))?;
        let mut r = Reader {
            st,
            path,
            used: BTreeSet::new(),
        };
        let stem = r.conv_bn("conv1", "bn1", config.stem_spec())?;
        let mut blocks = vec![];
        let mut i = 0;
        let specs = config.block_specs();
        for (s, &n) in config.blocks.iter().enumerate() {
            for b in 0..n {
                let spec = specs[i];
                i += 1;
                let base = format!("layer{}.{b}", s + 1);
                let (main, down) = spec.convs(config.block);
                let main = main
                    .into_iter()
                    .enumerate()
                    .map(|(j, c)| {
                        r.conv_bn(
                            &format!("{base}.conv{}", j + 1),
                            &format!("{base}.bn{}", j + 1),
                            c,
                        )
                    })
                    .collect::<Result<Vec<_>>>()?;
                let down = down
                    .map(|c| {
                        r.conv_bn(
                            &format!("{base}.downsample.0"),
                            &format!("{base}.downsample.1"),
                            c,
                        )
                    })
                    .transpose()?;
                blocks.push(BlockWeights { main, down });
            }
        }
        let fc_w = r.get("fc.weight", &[config.num_classes, config.features()])?;
        let fc_b = r.get("fc.bias", &[config.num_classes])?.into_data();
        let unused: Vec<String> =
            r.st.names()
                .into_iter()
                .filter(|n| !r.used.contains(*n) && !n.ends_with("num_batches_tracked"))
                .map(|n| n.to_string())
                .collect();
        if let Some(first) = unused.iter().min() {
            return Err(cfg_err(
                path,
                format!(
                    "tensor `{first}` belongs to a layer this ResNet importer does not implement ({} unexpected tensors; supported: conv1/bn1, layerS.B.convK/bnK, layerS.B.downsample.0/1, fc)",
                    unused.len()
                ),
            ));
        }
        Ok(ResNetWeights {
            config,
            stem,
            blocks,
            fc_w,
            fc_b,
        })
    }

    /// Deterministic random weights at trained scale for benchmarks: He-normal
    /// convolutions, BatchNorm statistics calibrated on `calib` (an NHWC batch) as a
    /// trained network's running statistics would be (each BN output ~N(beta, gamma^2)),
    /// the last BN of each residual branch with gamma 0.5 so the residual stream grows
    /// slowly, a classifier with std 1/sqrt(features).
    pub fn random(config: &ResNetConfig, seed: u64, calib: &Tensor<f64>) -> Result<ResNetWeights> {
        config.validate()?;
        let mut rng = DemoRng(seed);
        let mut conv = |spec: ConvSpec, last: bool| {
            let (kh, kw) = spec.kernel;
            let fan_in = (spec.cin / spec.groups) * kh * kw;
            let n = spec.cout * fan_in;
            let w = Tensor::from_vec(
                &[spec.cout, spec.cin / spec.groups, kh, kw],
                rng.vec(n, 0.0, (2.0 / fan_in as f64).sqrt()),
            )
            .expect("shape");
            let c = spec.cout;
            let beta = rng.vec(c, 0.0, 0.1);
            ConvBn {
                spec,
                w,
                bn: BatchNorm {
                    gamma: vec![if last { 0.5 } else { 1.0 }; c],
                    beta,
                    mean: vec![0.0; c],
                    var: vec![1.0; c],
                },
            }
        };
        let stem = conv(config.stem_spec(), false);
        let mut blocks = vec![];
        for b in config.block_specs() {
            let (main, down) = b.convs(config.block);
            let k = main.len();
            let main = main
                .into_iter()
                .enumerate()
                .map(|(j, s)| conv(s, j + 1 == k))
                .collect();
            let down = down.map(|s| conv(s, true));
            blocks.push(BlockWeights { main, down });
        }
        let feat = config.features();
        let fc_w = Tensor::from_vec(
            &[config.num_classes, feat],
            rng.vec(config.num_classes * feat, 0.0, 1.0 / (feat as f64).sqrt()),
        )?;
        let fc_b = rng.vec(config.num_classes, 0.0, 0.1);
        let mut w = ResNetWeights {
            config: config.clone(),
            stem,
            blocks,
            fc_w,
            fc_b,
        };
        forward_impl(&mut w, calib, true)?;
        Ok(w)
    }

    /// Plaintext f64 logits `[N, classes]` of an NHWC batch (BatchNorm applied unfolded).
    pub fn forward_plain(&self, x: &Tensor<f64>) -> Result<Tensor<f64>> {
        let mut w = self.clone();
        forward_impl(&mut w, x, false)
    }

    /// Plaintext f64 features `[N, features]` of an NHWC batch: the trunk's output after
    /// the global average pool, before the classifier (what a fine-tuned head sees).
    pub fn features_plain(&self, x: &Tensor<f64>) -> Result<Tensor<f64>> {
        let mut w = self.clone();
        forward_visit(&mut w, x, false, &mut |_| {})
    }

    /// The largest |input| of any activation on the batch `x` (for range checks of
    /// polynomial activations and of the comparisons' bit widths).
    pub fn max_activation_input(&self, x: &Tensor<f64>) -> Result<f64> {
        let mut w = self.clone();
        let mut m = 0f64;
        forward_visit(&mut w, x, false, &mut |v: &Tensor<f64>| {
            m = v.data().iter().fold(m, |a, b| a.max(b.abs()));
        })?;
        Ok(m)
    }
}

/// Sets a BN's statistics to the batch's per-channel mean and variance.
fn calibrate(cb: &mut ConvBn, x: &Tensor<f64>) -> Result<()> {
    let y = conv2d_plain(x, &cb.w, None, &cb.spec)?;
    let c = cb.spec.cout;
    let rows = (y.len() / c).max(1) as f64;
    let mut mean = vec![0.0; c];
    let mut sq = vec![0.0; c];
    for (i, v) in y.data().iter().enumerate() {
        mean[i % c] += v;
        sq[i % c] += v * v;
    }
    for o in 0..c {
        mean[o] /= rows;
        sq[o] = (sq[o] / rows - mean[o] * mean[o]).max(1e-6);
    }
    cb.bn.mean = mean;
    cb.bn.var = sq;
    Ok(())
}

fn forward_impl(w: &mut ResNetWeights, x: &Tensor<f64>, calib: bool) -> Result<Tensor<f64>> {
    let pooled = forward_visit(w, x, calib, &mut |_| {})?;
    let logits = pooled.matmul(&w.fc_w.transpose())?;
    logits.zip_rows(&w.fc_b, "fc bias", |a, b| a + b)
}

fn forward_visit(
    w: &mut ResNetWeights,
    x: &Tensor<f64>,
    calib: bool,
    visit: &mut dyn FnMut(&Tensor<f64>),
) -> Result<Tensor<f64>> {
    let cfg = w.config.clone();
    let (_, h, wd, c) = nhwc(x.shape(), "resnet input")?;
    if (h, wd) != cfg.image_size || c != cfg.in_channels {
        return Err(Error::shape(
            "resnet input",
            format!(
                "images {h}x{wd}x{c} for a model of {}x{}x{}",
                cfg.image_size.0, cfg.image_size.1, cfg.in_channels
            ),
        ));
    }
    let eps = cfg.bn_eps;
    let act = |v: Tensor<f64>, visit: &mut dyn FnMut(&Tensor<f64>)| {
        visit(&v);
        v.map(|e| cfg.activation.plain(e))
    };
    let conv = |cb: &mut ConvBn, x: &Tensor<f64>| -> Result<Tensor<f64>> {
        if calib {
            calibrate(cb, x)?;
        }
        cb.plain(x, eps)
    };
    let mut y = act(conv(&mut w.stem, x)?, visit);
    if cfg.stem_maxpool {
        y = STEM_POOL.plain(&y)?;
    }
    for b in w.blocks.iter_mut() {
        let mut z = y.clone();
        let k = b.main.len();
        for (j, cb) in b.main.iter_mut().enumerate() {
            z = conv(cb, &z)?;
            if j + 1 < k {
                z = act(z, visit);
            }
        }
        let short = match b.down.as_mut() {
            Some(d) => conv(d, &y)?,
            None => y.clone(),
        };
        y = act(z.zip_with(&short, "residual", |a, b| a + b)?, visit);
    }
    global_avg_pool_plain(&y)
}

/// Images and (optionally) labels: `images.safetensors` with `images` `[N, C, H, W]`
/// (NCHW as PyTorch writes it, already normalised) and `labels` `[N]` (any integer or
/// float dtype). Returned NHWC.
pub struct Images {
    /// `[N, H, W, C]`.
    pub images: Tensor<f64>,
    /// Class per image, if the file has them.
    pub labels: Option<Vec<usize>>,
}

impl Images {
    /// Reads an images file (errors name the file and the tensor).
    pub fn load(path: &Path) -> Result<Images> {
        Images::load_named(path, "images", "labels")
    }

    /// Reads the images of tensor `images` and the labels of tensor `labels` (optional)
    /// from a safetensors file holding several sets (e.g. `train_images` and
    /// `test_images` of a fine-tuning data file).
    pub fn load_named(path: &Path, images: &str, labels: &str) -> Result<Images> {
        let bytes = std::fs::read(path).map_err(|cause| Error::File {
            path: path.to_path_buf(),
            cause,
        })?;
        let st = SafeTensors::deserialize(&bytes)
            .map_err(|e| cfg_err(path, format!("not a valid safetensors file: {e}")))?;
        let view = st
            .tensor(images)
            .map_err(|_| cfg_err(path, format!("missing tensor `{images}` [N, C, H, W]")))?;
        let (n, c, h, w) = match *view.shape() {
            [n, c, h, w] if n > 0 && c > 0 && h > 0 && w > 0 => (n, c, h, w),
            ref s => {
                return Err(cfg_err(
                    path,
                    format!("tensor `{images}` has shape {s:?}, expected [N, C, H, W]"),
                ))
            }
        };
        let data = safetensor_to_f64(&view)
            .map_err(|d| cfg_err(path, format!("tensor `{images}` has dtype {d:?}")))?;
        if data.iter().any(|v| !v.is_finite()) {
            return Err(cfg_err(
                path,
                format!("tensor `{images}` holds a non-finite value"),
            ));
        }
        let mut nhwc = vec![0.0; data.len()];
        for b in 0..n {
            for ch in 0..c {
                for y in 0..h {
                    for x in 0..w {
                        nhwc[((b * h + y) * w + x) * c + ch] = data[((b * c + ch) * h + y) * w + x];
                    }
                }
            }
        }
        let labels = match st.tensor(labels) {
            Err(_) => None,
            Ok(v) => {
                if v.shape() != [n] {
                    return Err(cfg_err(
                        path,
                        format!(
                            "tensor `{labels}` has shape {:?}, expected [{n}]",
                            v.shape()
                        ),
                    ));
                }
                Some(labels_of(&v, labels).map_err(|d| cfg_err(path, d))?)
            }
        };
        Ok(Images {
            images: Tensor::from_vec(&[n, h, w, c], nhwc)?,
            labels,
        })
    }

    /// The first `n` images (and labels).
    pub fn take(&self, n: usize) -> Result<Images> {
        let (total, h, w, c) = nhwc(self.images.shape(), "images")?;
        let n = n.min(total);
        Ok(Images {
            images: Tensor::from_vec(&[n, h, w, c], self.images.data()[..n * h * w * c].to_vec())?,
            labels: self.labels.as_ref().map(|l| l[..n].to_vec()),
        })
    }
}

fn labels_of(
    v: &safetensors::tensor::TensorView<'_>,
    name: &str,
) -> std::result::Result<Vec<usize>, String> {
    use safetensors::Dtype;
    let b = v.data();
    let ints: Vec<i64> = match v.dtype() {
        Dtype::I64 => b
            .chunks_exact(8)
            .map(|c| i64::from_le_bytes(c.try_into().expect("8")))
            .collect(),
        Dtype::I32 => b
            .chunks_exact(4)
            .map(|c| i64::from(i32::from_le_bytes(c.try_into().expect("4"))))
            .collect(),
        Dtype::U8 => b.iter().map(|&x| i64::from(x)).collect(),
        _ => {
            let f = safetensor_to_f64(v).map_err(|d| format!("tensor `{name}` has dtype {d:?}"))?;
            if let Some(x) = f.iter().find(|x| !x.is_finite() || x.fract() != 0.0) {
                return Err(format!("tensor `{name}` holds a non-integer label {x}"));
            }
            f.iter().map(|&x| x as i64).collect()
        }
    };
    ints.iter()
        .map(|&l| {
            usize::try_from(l).map_err(|_| format!("tensor `{name}` holds a negative label {l}"))
        })
        .collect()
}

/// Classes of the plaintext model for a batch (first maximum on ties).
pub fn classify_plain(w: &ResNetWeights, x: &Tensor<f64>) -> Result<Vec<usize>> {
    Ok(argmax_plain(&w.forward_plain(x)?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn digits() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../data/digits")
    }

    fn logits_of(path: &Path) -> Tensor<f64> {
        let bytes = std::fs::read(path).unwrap();
        let st = SafeTensors::deserialize(&bytes).unwrap();
        let v = st.tensor("logits").unwrap();
        Tensor::from_vec(v.shape(), safetensor_to_f64(&v).unwrap()).unwrap()
    }

    /// The committed digits models, read by this importer and run by the f64 reference,
    /// give the training script's float32 logits (within 1e-4: f32 rounding through ~8
    /// layers) and its test accuracy.
    #[test]
    fn committed_digits_models_match_the_training_script() {
        let im = Images::load(&digits().join("test.safetensors")).unwrap();
        assert_eq!(im.images.shape(), &[540, 8, 8, 1]);
        let labels = im.labels.clone().unwrap();
        for v in ["relu", "poly"] {
            let w = ResNetWeights::load(&digits().join(v)).unwrap();
            let got = w.forward_plain(&im.images).unwrap();
            let want = logits_of(&digits().join(v).join("logits.safetensors"));
            let err = got
                .data()
                .iter()
                .zip(want.data())
                .map(|(a, b)| (a - b).abs())
                .fold(0.0, f64::max);
            assert!(err < 1e-4, "{v}: {err}");
            let cl = argmax_plain(&got);
            let acc = cl.iter().zip(&labels).filter(|(a, b)| a == b).count() as f64 / 540.0;
            assert!(
                (acc - w.config.plain_test_accuracy.unwrap()).abs() < 1e-9,
                "{v}: {acc}"
            );
            // The poly model was trained to keep activation inputs near [-4, 4].
            let m = w.max_activation_input(&im.images).unwrap();
            if v == "poly" {
                assert!(m < 8.0, "{m}");
            }
        }
    }

    /// The fine-tuning split's features (the training script's global average pool of
    /// the committed backbone, computed in JAX f32) equal our f64 `features_plain` within
    /// 1e-4 (f32 rounding through 2 blocks of values below ~4).
    #[test]
    fn committed_backbone_features_match_the_training_script() {
        let path = digits().join("finetune.safetensors");
        let w = ResNetWeights::load(&digits().join("backbone")).unwrap();
        let bytes = std::fs::read(&path).unwrap();
        let st = SafeTensors::deserialize(&bytes).unwrap();
        for split in ["train", "test"] {
            let im = Images::load_named(
                &path,
                &format!("{split}_images"),
                &format!("{split}_labels"),
            )
            .unwrap();
            let got = w.features_plain(&im.images).unwrap();
            let want =
                safetensor_to_f64(&st.tensor(&format!("{split}_features")).unwrap()).unwrap();
            assert_eq!(got.len(), want.len(), "{split}");
            let err = got
                .data()
                .iter()
                .zip(&want)
                .map(|(a, b)| (a - b).abs())
                .fold(0.0, f64::max);
            assert!(err < 1e-4, "{split}: {err}");
            assert!(im.labels.unwrap().iter().all(|&l| l < 5), "{split}");
        }
    }

    /// Rewrites a safetensors file after `edit` (names, shapes, f32 values).
    fn rewrite(src: &Path, dst: &Path, edit: impl Fn(&mut Vec<(String, Vec<usize>, Vec<f32>)>)) {
        let bytes = std::fs::read(src).unwrap();
        let st = SafeTensors::deserialize(&bytes).unwrap();
        let mut ts: Vec<(String, Vec<usize>, Vec<f32>)> = st
            .tensors()
            .into_iter()
            .map(|(n, v)| {
                let d = safetensor_to_f64(&v)
                    .unwrap()
                    .iter()
                    .map(|&x| x as f32)
                    .collect();
                (n, v.shape().to_vec(), d)
            })
            .collect();
        edit(&mut ts);
        let raw: Vec<Vec<u8>> = ts
            .iter()
            .map(|t| t.2.iter().flat_map(|x| x.to_le_bytes()).collect())
            .collect();
        let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = ts
            .iter()
            .zip(&raw)
            .map(|((n, s, _), r)| {
                let v = safetensors::tensor::TensorView::new(safetensors::Dtype::F32, s.clone(), r)
                    .unwrap();
                (n.clone(), v)
            })
            .collect();
        safetensors::serialize_to_file(views, None, dst).unwrap();
    }

    /// Import errors name the file and the tensor or field at fault.
    #[test]
    fn import_errors_name_the_tensor_or_field() {
        let dir = std::env::temp_dir().join(format!("tessera-resnet-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let src = digits().join("relu");
        std::fs::copy(src.join("config.toml"), dir.join("config.toml")).unwrap();
        let st = dir.join("model.safetensors");
        let err = |dir: &Path| ResNetWeights::load(dir).unwrap_err().to_string();

        rewrite(&src.join("model.safetensors"), &st, |ts| {
            ts.retain(|t| t.0 != "layer2.0.downsample.1.running_var")
        });
        let e = err(&dir);
        assert!(
            e.contains("missing tensor `layer2.0.downsample.1.running_var`"),
            "{e}"
        );

        rewrite(&src.join("model.safetensors"), &st, |ts| {
            ts.push(("layer1.0.se.fc1.weight".into(), vec![2], vec![0.0, 1.0]))
        });
        let e = err(&dir);
        assert!(
            e.contains("layer1.0.se.fc1.weight") && e.contains("does not implement"),
            "{e}"
        );

        rewrite(&src.join("model.safetensors"), &st, |ts| {
            let t = ts.iter_mut().find(|t| t.0 == "fc.weight").unwrap();
            t.1 = vec![32, 10];
        });
        let e = err(&dir);
        assert!(e.contains("`fc.weight` has shape [32, 10]"), "{e}");

        std::fs::write(&st, b"not safetensors").unwrap();
        assert!(err(&dir).contains("not a valid safetensors file"));

        let base = std::fs::read_to_string(src.join("config.toml")).unwrap();
        for (from, to, want) in [
            (
                "architecture = \"resnet\"",
                "architecture = \"vit\"",
                "architecture \"vit\" is not supported",
            ),
            (
                "block = \"basic\"",
                "block = \"dense\"",
                "block \"dense\" is not supported",
            ),
            (
                "activation = \"relu\"",
                "activation = \"gelu\"",
                "activation \"gelu\" is not supported",
            ),
            (
                "activation = \"relu\"",
                "activation = \"poly\"",
                "needs `poly",
            ),
            ("widths = [16, 32]", "widths = [16]", "same length"),
            ("bn_eps = 1e-5", "bn_eps = 1e-5\ndropout = 0.1", "dropout"),
            ("stem_kernel = 3", "stem_kernel = 19", "kernel 19x19"),
        ] {
            let text = base.replace(from, to);
            let e = ResNetConfig::from_toml_str(&text, Path::new("x/config.toml"))
                .unwrap_err()
                .to_string();
            assert!(e.contains(want) && e.contains("x/config.toml"), "{to}: {e}");
        }
        assert!(matches!(
            ResNetWeights::load(&dir.join("nope")),
            Err(Error::File { .. })
        ));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
