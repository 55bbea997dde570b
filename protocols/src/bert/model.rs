//! BERT configuration and weights: import from a Hugging Face checkpoint
//! (`config.json` + `model.safetensors`) and a deterministic built-in demo model.
//!
//! Every weight is held in f64 in the layout the forward pass uses: linear layers are
//! `[in, out]` and applied as `x @ w + b`, i.e. transposed from the `[out, in]` layout of
//! PyTorch's `nn.Linear` that the checkpoint stores.

use std::path::{Path, PathBuf};

use safetensors::{Dtype, SafeTensors};
use serde_json::Value;
use tessera::{Error, Result, Tensor};

/// The shape parameters of a BERT encoder (the fields of a Hugging Face `BertConfig`
/// that the forward pass needs).
#[derive(Clone, Debug, PartialEq)]
pub struct BertConfig {
    /// Number of token ids (`vocab_size`).
    pub vocab_size: usize,
    /// Model width (`hidden_size`).
    pub hidden: usize,
    /// Attention heads per layer (`num_attention_heads`).
    pub heads: usize,
    /// Encoder layers (`num_hidden_layers`).
    pub layers: usize,
    /// Width of the feed-forward block (`intermediate_size`).
    pub intermediate: usize,
    /// Longest sequence the position table covers (`max_position_embeddings`).
    pub max_position: usize,
    /// Number of token types / segments (`type_vocab_size`).
    pub type_vocab_size: usize,
    /// Epsilon inside every LayerNorm (`layer_norm_eps`).
    pub layer_norm_eps: f64,
}

/// Path shown in errors about a configuration that did not come from a file.
const IN_MEMORY: &str = "<in-memory BertConfig>";

fn config_error(path: &Path, detail: impl Into<String>) -> Error {
    Error::Config {
        path: path.to_path_buf(),
        detail: detail.into(),
    }
}

impl BertConfig {
    /// Reads a Hugging Face `config.json`.
    ///
    /// Required fields: `vocab_size`, `hidden_size`, `num_attention_heads`,
    /// `num_hidden_layers`, `intermediate_size`, `max_position_embeddings`,
    /// `type_vocab_size`; `layer_norm_eps` defaults to 1e-12 as in Hugging Face. When
    /// present, `model_type` must be `bert`, `hidden_act` must be `gelu` (the exact erf
    /// GeLU) and `position_embedding_type` must be `absolute`: those are what the forward
    /// pass implements. The result is [validated](Self::validate); every error names the
    /// file and the field.
    pub fn from_json_file(path: &Path) -> Result<BertConfig> {
        let text = std::fs::read_to_string(path).map_err(|source| Error::File {
            path: path.to_path_buf(),
            cause: source,
        })?;
        Self::from_json_str(&text, path)
    }

    /// Parses the text of a `config.json` as [`from_json_file`](Self::from_json_file)
    /// does; `path` only names the file in errors.
    pub fn from_json_str(text: &str, path: &Path) -> Result<BertConfig> {
        let v: Value = serde_json::from_str(text)
            .map_err(|e| config_error(path, format!("not valid JSON: {e}")))?;
        if !v.is_object() {
            return Err(config_error(
                path,
                "expected a JSON object at the top level",
            ));
        }
        let usize_field = |name: &str| -> Result<usize> {
            match v.get(name) {
                None => Err(config_error(path, format!("missing field `{name}`"))),
                Some(x) => x
                    .as_u64()
                    .and_then(|n| usize::try_from(n).ok())
                    .ok_or_else(|| {
                        config_error(
                            path,
                            format!("field `{name}` must be a non-negative integer, got {x}"),
                        )
                    }),
            }
        };
        let string_is = |name: &str, want: &str| -> Result<()> {
            match v.get(name) {
                None => Ok(()),
                Some(Value::String(s)) if s == want => Ok(()),
                Some(x) => Err(config_error(
                    path,
                    format!("field `{name}` is {x}; only \"{want}\" is supported"),
                )),
            }
        };
        string_is("model_type", "bert")?;
        string_is("hidden_act", "gelu")?;
        string_is("position_embedding_type", "absolute")?;
        let layer_norm_eps = match v.get("layer_norm_eps") {
            None => 1e-12,
            Some(x) => x.as_f64().ok_or_else(|| {
                config_error(
                    path,
                    format!("field `layer_norm_eps` must be a number, got {x}"),
                )
            })?,
        };
        let config = BertConfig {
            vocab_size: usize_field("vocab_size")?,
            hidden: usize_field("hidden_size")?,
            heads: usize_field("num_attention_heads")?,
            layers: usize_field("num_hidden_layers")?,
            intermediate: usize_field("intermediate_size")?,
            max_position: usize_field("max_position_embeddings")?,
            type_vocab_size: usize_field("type_vocab_size")?,
            layer_norm_eps,
        };
        config.validate_at(path)?;
        Ok(config)
    }

    /// Width of one attention head: `hidden / heads`.
    pub fn head_dim(&self) -> usize {
        self.hidden / self.heads.max(1)
    }

    /// Checks that the sizes are usable: all positive, `hidden` a multiple of `heads`,
    /// `layer_norm_eps` positive and finite. Errors name the field (with its
    /// `config.json` name).
    pub fn validate(&self) -> Result<()> {
        self.validate_at(Path::new(IN_MEMORY))
    }

    fn validate_at(&self, path: &Path) -> Result<()> {
        let positive = [
            ("vocab_size", "vocab_size", self.vocab_size),
            ("hidden", "hidden_size", self.hidden),
            ("heads", "num_attention_heads", self.heads),
            ("layers", "num_hidden_layers", self.layers),
            ("intermediate", "intermediate_size", self.intermediate),
            ("max_position", "max_position_embeddings", self.max_position),
            ("type_vocab_size", "type_vocab_size", self.type_vocab_size),
        ];
        for (field, json, value) in positive {
            if value == 0 {
                return Err(config_error(
                    path,
                    format!("{field} (`{json}`) must be positive, got 0"),
                ));
            }
        }
        if self.head_dim() * self.heads != self.hidden {
            return Err(config_error(
                path,
                format!(
                    "hidden (`hidden_size`) = {} is not a multiple of heads (`num_attention_heads`) = {}",
                    self.hidden, self.heads
                ),
            ));
        }
        if !(self.layer_norm_eps.is_finite() && self.layer_norm_eps > 0.0) {
            return Err(config_error(
                path,
                format!(
                    "layer_norm_eps must be positive and finite, got {}",
                    self.layer_norm_eps
                ),
            ));
        }
        Ok(())
    }
}

/// The weights of one encoder layer. Linear weights are `[in, out]` (applied as
/// `x @ w + b`).
#[derive(Clone, Debug, PartialEq)]
pub struct LayerWeights {
    /// Query projection `[hidden, hidden]`.
    pub wq: Tensor<f64>,
    /// Query bias `[hidden]`.
    pub bq: Vec<f64>,
    /// Key projection `[hidden, hidden]`.
    pub wk: Tensor<f64>,
    /// Key bias `[hidden]`.
    pub bk: Vec<f64>,
    /// Value projection `[hidden, hidden]`.
    pub wv: Tensor<f64>,
    /// Value bias `[hidden]`.
    pub bv: Vec<f64>,
    /// Attention output projection `[hidden, hidden]`.
    pub wo: Tensor<f64>,
    /// Attention output bias `[hidden]`.
    pub bo: Vec<f64>,
    /// Gamma of the LayerNorm after attention (`attention.output.LayerNorm`).
    pub ln1_g: Vec<f64>,
    /// Beta of the LayerNorm after attention.
    pub ln1_b: Vec<f64>,
    /// Feed-forward up projection `[hidden, intermediate]` (`intermediate.dense`).
    pub w1: Tensor<f64>,
    /// Feed-forward up bias `[intermediate]`.
    pub b1: Vec<f64>,
    /// Feed-forward down projection `[intermediate, hidden]` (`output.dense`).
    pub w2: Tensor<f64>,
    /// Feed-forward down bias `[hidden]`.
    pub b2: Vec<f64>,
    /// Gamma of the LayerNorm after the feed-forward block (`output.LayerNorm`).
    pub ln2_g: Vec<f64>,
    /// Beta of the LayerNorm after the feed-forward block.
    pub ln2_b: Vec<f64>,
}

/// A whole BERT encoder: configuration, embedding tables and layers.
#[derive(Clone, Debug, PartialEq)]
pub struct BertWeights {
    /// The shapes.
    pub config: BertConfig,
    /// Word embeddings `[vocab_size, hidden]`.
    pub word_emb: Tensor<f64>,
    /// Position embeddings `[max_position, hidden]`.
    pub pos_emb: Tensor<f64>,
    /// Token-type embeddings `[type_vocab_size, hidden]`.
    pub type_emb: Tensor<f64>,
    /// Gamma of the embedding LayerNorm.
    pub emb_ln_g: Vec<f64>,
    /// Beta of the embedding LayerNorm.
    pub emb_ln_b: Vec<f64>,
    /// The encoder layers, first to last.
    pub layers: Vec<LayerWeights>,
}

/// Reads named tensors out of a safetensors file, converting to f64 and checking shapes.
struct Reader<'a> {
    st: SafeTensors<'a>,
    path: &'a Path,
    prefix: &'static str,
}

impl Reader<'_> {
    fn error(&self, detail: String) -> Error {
        config_error(self.path, detail)
    }

    /// The tensor `name` (with the checkpoint's prefix) as f64, checked against `shape`.
    /// `alt` is an older spelling tried when `name` is absent (TF-converted checkpoints
    /// call LayerNorm parameters `gamma`/`beta`).
    fn get(&self, name: &str, alt: Option<&str>, shape: &[usize]) -> Result<Vec<f64>> {
        let full = format!("{}{name}", self.prefix);
        let view = match self.st.tensor(&full) {
            Ok(v) => v,
            Err(_) => {
                let found = alt.and_then(|a| self.st.tensor(&format!("{}{a}", self.prefix)).ok());
                found.ok_or_else(|| self.error(format!("missing tensor `{full}`")))?
            }
        };
        if view.shape() != shape {
            return Err(self.error(format!(
                "tensor `{full}` has shape {:?}, expected {:?} from config.json",
                view.shape(),
                shape
            )));
        }
        let data = safetensor_to_f64(&view).map_err(|other| {
            self.error(format!(
                "tensor `{full}` has dtype {other:?}; expected F32, F16, BF16 or F64"
            ))
        })?;
        if data.len() != shape.iter().product::<usize>() {
            return Err(self.error(format!(
                "tensor `{full}` holds {} values, shape {:?} needs {}",
                data.len(),
                shape,
                shape.iter().product::<usize>()
            )));
        }
        Ok(data)
    }

    /// A table stored as-is, `[rows, cols]`.
    fn table(&self, name: &str, rows: usize, cols: usize) -> Result<Tensor<f64>> {
        let data = self.get(name, None, &[rows, cols])?;
        Tensor::from_vec(&[rows, cols], data)
    }

    /// A linear layer's weight stored `[out, in]`, returned transposed as `[in, out]`.
    fn linear(&self, name: &str, inp: usize, out: usize) -> Result<Tensor<f64>> {
        let data = self.get(name, None, &[out, inp])?;
        Ok(Tensor::from_vec(&[out, inp], data)?.transpose())
    }

    fn vector(&self, name: &str, len: usize) -> Result<Vec<f64>> {
        self.get(name, None, &[len])
    }

    /// LayerNorm gamma and beta under `base` (`base.weight`/`base.bias`, or
    /// `base.gamma`/`base.beta`).
    fn layer_norm(&self, base: &str, len: usize) -> Result<(Vec<f64>, Vec<f64>)> {
        let g = self.get(
            &format!("{base}.weight"),
            Some(&format!("{base}.gamma")),
            &[len],
        )?;
        let b = self.get(
            &format!("{base}.bias"),
            Some(&format!("{base}.beta")),
            &[len],
        )?;
        Ok((g, b))
    }
}

/// The values of a safetensors tensor converted to f64 (exactly), in the stored
/// row-major order: F64, F32, F16 and BF16 are supported; any other dtype is returned as
/// the error so the caller can name the tensor and file.
pub(crate) fn safetensor_to_f64(
    view: &safetensors::tensor::TensorView<'_>,
) -> std::result::Result<Vec<f64>, Dtype> {
    let bytes = view.data();
    Ok(match view.dtype() {
        Dtype::F64 => bytes
            .chunks_exact(8)
            .map(|c| f64::from_le_bytes(c.try_into().expect("8-byte chunk")))
            .collect(),
        Dtype::F32 => bytes
            .chunks_exact(4)
            .map(|c| f64::from(f32::from_le_bytes(c.try_into().expect("4-byte chunk"))))
            .collect(),
        Dtype::F16 => bytes
            .chunks_exact(2)
            .map(|c| f16_to_f64(u16::from_le_bytes([c[0], c[1]])))
            .collect(),
        Dtype::BF16 => bytes
            .chunks_exact(2)
            .map(|c| bf16_to_f64(u16::from_le_bytes([c[0], c[1]])))
            .collect(),
        other => return Err(other),
    })
}

/// IEEE half precision to f64 (exact).
pub(crate) fn f16_to_f64(bits: u16) -> f64 {
    let sign = if bits & 0x8000 != 0 { -1.0 } else { 1.0 };
    let exp = i32::from((bits >> 10) & 0x1f);
    let frac = f64::from(bits & 0x3ff);
    match exp {
        0 => sign * frac * 2f64.powi(-24),
        31 if frac == 0.0 => sign * f64::INFINITY,
        31 => f64::NAN,
        _ => sign * (1.0 + frac / 1024.0) * 2f64.powi(exp - 15),
    }
}

/// bfloat16 (the top half of an f32) to f64 (exact).
pub(crate) fn bf16_to_f64(bits: u16) -> f64 {
    f64::from(f32::from_bits(u32::from(bits) << 16))
}

/// SplitMix64, with normals from an Irwin-Hall sum of uniforms: pure integer and
/// correctly rounded float arithmetic, so the demo weights are bit-identical on every
/// platform (no libm calls).
pub(crate) struct DemoRng(pub(crate) u64);

impl DemoRng {
    pub(crate) fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1) with 53 random bits.
    pub(crate) fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// Approximately N(0, std^2): the sum of four uniforms, centred and scaled to unit
    /// variance (bounded by 2 sqrt(3) std, which keeps the demo free of outliers).
    pub(crate) fn normal(&mut self, std: f64) -> f64 {
        let s: f64 = (0..4).map(|_| self.uniform()).sum();
        (s - 2.0) * 3f64.sqrt() * std
    }

    pub(crate) fn vec(&mut self, len: usize, mean: f64, std: f64) -> Vec<f64> {
        (0..len).map(|_| mean + self.normal(std)).collect()
    }

    pub(crate) fn tensor(&mut self, rows: usize, cols: usize, std: f64) -> Tensor<f64> {
        Tensor::from_vec(&[rows, cols], self.vec(rows * cols, 0.0, std))
            .expect("length matches shape")
    }
}

impl BertWeights {
    /// Loads a Hugging Face BERT checkpoint from `dir`: `config.json` and
    /// `model.safetensors`, tensor names as written by `BertModel` (optionally under a
    /// `bert.` prefix, as `BertFor*` heads write them; other tensors such as the pooler
    /// are ignored). F32, F16, BF16 and F64 tensors are converted to f64. Errors name
    /// the file and the missing or mis-shaped tensor.
    pub fn load(dir: &Path) -> Result<BertWeights> {
        let config = BertConfig::from_json_file(&dir.join("config.json"))?;
        let path: PathBuf = dir.join("model.safetensors");
        let bytes = std::fs::read(&path).map_err(|source| Error::File {
            path: path.clone(),
            cause: source,
        })?;
        Self::from_bytes(&config, &bytes, &path)
    }

    /// The weights of `config` from the bytes of a `model.safetensors` file, as
    /// [`load`](Self::load) reads them; `path` only names the file in errors. Memory
    /// grows with the tensors the file holds, never with the sizes `config` declares.
    pub fn from_bytes(config: &BertConfig, bytes: &[u8], path: &Path) -> Result<BertWeights> {
        config.validate_at(path)?;
        let st = SafeTensors::deserialize(bytes)
            .map_err(|e| config_error(path, format!("not a valid safetensors file: {e}")))?;
        let prefix = if st.tensor("bert.embeddings.word_embeddings.weight").is_ok() {
            "bert."
        } else {
            ""
        };
        let r = Reader { st, path, prefix };
        let c = config;
        let (h, f) = (c.hidden, c.intermediate);
        let (emb_ln_g, emb_ln_b) = r.layer_norm("embeddings.LayerNorm", h)?;
        let mut weights = BertWeights {
            word_emb: r.table("embeddings.word_embeddings.weight", c.vocab_size, h)?,
            pos_emb: r.table("embeddings.position_embeddings.weight", c.max_position, h)?,
            type_emb: r.table(
                "embeddings.token_type_embeddings.weight",
                c.type_vocab_size,
                h,
            )?,
            emb_ln_g,
            emb_ln_b,
            // Not `with_capacity(c.layers)`: config.json may declare 2^40 layers, and a
            // layer is only pushed once the file has shown all its tensors.
            layers: Vec::new(),
            config: config.clone(),
        };
        for i in 0..c.layers {
            let p = format!("encoder.layer.{i}");
            let (ln1_g, ln1_b) = r.layer_norm(&format!("{p}.attention.output.LayerNorm"), h)?;
            let (ln2_g, ln2_b) = r.layer_norm(&format!("{p}.output.LayerNorm"), h)?;
            weights.layers.push(LayerWeights {
                wq: r.linear(&format!("{p}.attention.self.query.weight"), h, h)?,
                bq: r.vector(&format!("{p}.attention.self.query.bias"), h)?,
                wk: r.linear(&format!("{p}.attention.self.key.weight"), h, h)?,
                bk: r.vector(&format!("{p}.attention.self.key.bias"), h)?,
                wv: r.linear(&format!("{p}.attention.self.value.weight"), h, h)?,
                bv: r.vector(&format!("{p}.attention.self.value.bias"), h)?,
                wo: r.linear(&format!("{p}.attention.output.dense.weight"), h, h)?,
                bo: r.vector(&format!("{p}.attention.output.dense.bias"), h)?,
                ln1_g,
                ln1_b,
                w1: r.linear(&format!("{p}.intermediate.dense.weight"), h, f)?,
                b1: r.vector(&format!("{p}.intermediate.dense.bias"), f)?,
                w2: r.linear(&format!("{p}.output.dense.weight"), f, h)?,
                b2: r.vector(&format!("{p}.output.dense.bias"), h)?,
                ln2_g,
                ln2_b,
            });
        }
        Ok(weights)
    }

    /// Deterministic pseudo-random weights for `config`, generated in code (no download);
    /// the same `(config, seed)` always gives bit-identical weights.
    ///
    /// Scales follow a trained BERT so activations stay in the range the fixed-point
    /// protocols expect: LayerNorm gammas 1 + N(0, 0.05^2), betas and biases N(0, 0.02^2),
    /// embedding tables N(0, 0.05^2), and linear weights N(0, 1/fan_in) — about 0.036 at
    /// BERT-base width (768), the std of trained BERT weights, and 0.125 at the demo's
    /// width 64, which keeps attention scores and GeLU inputs at unit scale (softmax is not
    /// flat, GeLU is exercised in its nonlinear range). Weights are bounded by
    /// 2 sqrt(3) std (Irwin-Hall sampling).
    ///
    /// # Panics
    /// If `config` does not [validate](BertConfig::validate).
    pub fn demo(config: &BertConfig, seed: u64) -> BertWeights {
        if let Err(e) = config.validate() {
            panic!("BertWeights::demo: {e}");
        }
        let c = config;
        let (h, f) = (c.hidden, c.intermediate);
        let mut rng = DemoRng(seed ^ 0x7E55_E4A0_BE47_0001);
        let w_h = 1.0 / (h as f64).sqrt();
        let w_f = 1.0 / (f as f64).sqrt();
        let word_emb = rng.tensor(c.vocab_size, h, 0.05);
        let pos_emb = rng.tensor(c.max_position, h, 0.05);
        let type_emb = rng.tensor(c.type_vocab_size, h, 0.05);
        let emb_ln_g = rng.vec(h, 1.0, 0.05);
        let emb_ln_b = rng.vec(h, 0.0, 0.02);
        let layers = (0..c.layers)
            .map(|_| LayerWeights {
                wq: rng.tensor(h, h, w_h),
                bq: rng.vec(h, 0.0, 0.02),
                wk: rng.tensor(h, h, w_h),
                bk: rng.vec(h, 0.0, 0.02),
                wv: rng.tensor(h, h, w_h),
                bv: rng.vec(h, 0.0, 0.02),
                wo: rng.tensor(h, h, w_h),
                bo: rng.vec(h, 0.0, 0.02),
                ln1_g: rng.vec(h, 1.0, 0.05),
                ln1_b: rng.vec(h, 0.0, 0.02),
                w1: rng.tensor(h, f, w_h),
                b1: rng.vec(f, 0.0, 0.02),
                w2: rng.tensor(f, h, w_f),
                b2: rng.vec(h, 0.0, 0.02),
                ln2_g: rng.vec(h, 1.0, 0.05),
                ln2_b: rng.vec(h, 0.0, 0.02),
            })
            .collect();
        BertWeights {
            config: config.clone(),
            word_emb,
            pos_emb,
            type_emb,
            emb_ln_g,
            emb_ln_b,
            layers,
        }
    }

    /// The built-in demo model's shape: a small BERT with vocabulary 512, width 64,
    /// 4 heads, 2 layers, feed-forward width 256, 64 positions, 2 token types,
    /// LayerNorm epsilon 1e-12.
    pub fn demo_config() -> BertConfig {
        BertConfig {
            vocab_size: 512,
            hidden: 64,
            heads: 4,
            layers: 2,
            intermediate: 256,
            max_position: 64,
            type_vocab_size: 2,
            layer_norm_eps: 1e-12,
        }
    }
}
