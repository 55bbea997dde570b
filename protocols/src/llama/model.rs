//! Llama-family decoder: configuration, weights, and lazy loading from a tensor source
//! (a Hugging Face `model.safetensors`, or a dequantized GGUF file).
//!
//! Every weight is held in f64 in the layout the forward pass uses: projection matrices
//! are `[in, out]` and applied as `x @ w`, i.e. transposed from the `[out, in]` layout
//! that both Hugging Face (`nn.Linear`) and GGUF (dims listed fastest-first) store. The
//! embedding table and an untied LM head are `[vocab, hidden]` (one row per token).
//!
//! The model owner never needs all f64 weights at once: a [`LlamaLoader`] hands out the
//! embedding, one layer, the final norm and the head on demand from a [`TensorSource`];
//! [`LlamaWeights::load_all`] materialises everything (tests, plaintext reference).
//!
//! RoPE layouts: Hugging Face checkpoints rotate the half-split pairs `(i, i + d/2)` of
//! each head ([`RopeStyle::HalfSplit`]); llama.cpp's converter permutes the q/k projection
//! rows ([`permute_qk_for_interleaved`]) so that GGUF tensors, as stored, rotate adjacent
//! pairs `(2i, 2i + 1)` ([`RopeStyle::Interleaved`]). Both give the same logits.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use safetensors::{Dtype, SafeTensors};
use serde_json::{json, Value};
use tessera::{Error, Result, Tensor};

use crate::bert::model::{safetensor_to_f64, DemoRng};

/// Which coordinates of a head RoPE rotates together.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RopeStyle {
    /// Hugging Face `rotate_half`: pairs `(i, i + d/2)` for `i < d/2`.
    HalfSplit,
    /// llama.cpp / GGUF (q/k rows permuted by the converter): pairs `(2i, 2i + 1)`.
    Interleaved,
}

/// The shape parameters of a Llama decoder.
#[derive(Clone, Debug, PartialEq)]
pub struct LlamaConfig {
    /// Number of token ids (`vocab_size`).
    pub vocab_size: usize,
    /// Model width (`hidden_size`).
    pub hidden: usize,
    /// Decoder layers (`num_hidden_layers`).
    pub layers: usize,
    /// Query heads per layer (`num_attention_heads`).
    pub heads: usize,
    /// Key/value heads per layer (`num_key_value_heads`); query head `h` uses KV head
    /// `h / (heads / kv_heads)`.
    pub kv_heads: usize,
    /// Width of one head (`head_dim`, default `hidden / heads`); RoPE covers all of it.
    pub head_dim: usize,
    /// Width of the SwiGLU feed-forward block (`intermediate_size`).
    pub ffn: usize,
    /// RoPE base: pair `i` turns by `pos * rope_theta^(-2i/head_dim)` (`rope_theta`).
    pub rope_theta: f64,
    /// Epsilon inside every RMSNorm (`rms_norm_eps`).
    pub rms_eps: f64,
    /// Longest sequence (prompt + generated) the model accepts
    /// (`max_position_embeddings`).
    pub max_position: usize,
    /// The RoPE pairing the stored q/k projections expect.
    pub rope_style: RopeStyle,
    /// True when the LM head is the embedding table (`tie_word_embeddings`).
    pub tied_head: bool,
}

/// Path shown in errors about a configuration that did not come from a file.
const IN_MEMORY: &str = "<in-memory LlamaConfig>";

fn config_error(path: &Path, detail: impl Into<String>) -> Error {
    Error::Config {
        path: path.to_path_buf(),
        detail: detail.into(),
    }
}

impl LlamaConfig {
    /// Reads a Hugging Face `config.json` of a `LlamaForCausalLM`.
    ///
    /// Required: `hidden_size`, `num_hidden_layers`, `num_attention_heads`,
    /// `intermediate_size`, `vocab_size`. Optional with Hugging Face's defaults:
    /// `num_key_value_heads` (= heads), `head_dim` (= hidden / heads), `rope_theta`
    /// (10000), `rms_norm_eps` (1e-6), `max_position_embeddings` (2048),
    /// `tie_word_embeddings` (false). Rejected with an error naming the field:
    /// `architectures` other than `["LlamaForCausalLM"]`, `model_type` other than
    /// `llama`, `hidden_act` other than `silu`, a non-null `rope_scaling`, and
    /// `attention_bias` / `mlp_bias` set to true (the forward pass has no scaling and no
    /// biases). The layout is [`RopeStyle::HalfSplit`]. The result is
    /// [validated](Self::validate).
    pub fn from_hf_json(path: impl AsRef<Path>) -> Result<LlamaConfig> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|source| Error::File {
            path: path.to_path_buf(),
            cause: source,
        })?;
        let v: Value = serde_json::from_str(&text)
            .map_err(|e| config_error(path, format!("not valid JSON: {e}")))?;
        Self::from_hf_value(&v, path)
    }

    fn from_hf_value(v: &Value, path: &Path) -> Result<LlamaConfig> {
        if !v.is_object() {
            return Err(config_error(
                path,
                "expected a JSON object at the top level",
            ));
        }
        if let Some(a) = v.get("architectures") {
            let list = a.as_array().ok_or_else(|| {
                config_error(
                    path,
                    format!("field `architectures` must be a list, got {a}"),
                )
            })?;
            if let Some(bad) = list.iter().find(|x| x.as_str() != Some("LlamaForCausalLM")) {
                return Err(config_error(
                    path,
                    format!(
                        "architecture {bad} in `architectures` is not supported; only \"LlamaForCausalLM\""
                    ),
                ));
            }
        }
        let string_is = |name: &str, want: &str| -> Result<()> {
            match v.get(name) {
                None | Some(Value::Null) => Ok(()),
                Some(Value::String(s)) if s == want => Ok(()),
                Some(x) => Err(config_error(
                    path,
                    format!("field `{name}` is {x}; only \"{want}\" is supported"),
                )),
            }
        };
        string_is("model_type", "llama")?;
        string_is("hidden_act", "silu")?;
        match v.get("rope_scaling") {
            None | Some(Value::Null) => {}
            Some(x) => {
                return Err(config_error(
                    path,
                    format!(
                        "field `rope_scaling` is {x}; RoPE scaling is not supported (must be null)"
                    ),
                ))
            }
        }
        for flag in ["attention_bias", "mlp_bias"] {
            if let Some(x) = v.get(flag) {
                if x.as_bool() != Some(false) && !x.is_null() {
                    return Err(config_error(
                        path,
                        format!("field `{flag}` is {x}; biases are not supported"),
                    ));
                }
            }
        }
        let opt_usize = |name: &str| -> Result<Option<usize>> {
            match v.get(name) {
                None | Some(Value::Null) => Ok(None),
                Some(x) => x
                    .as_u64()
                    .and_then(|n| usize::try_from(n).ok())
                    .map(Some)
                    .ok_or_else(|| {
                        config_error(
                            path,
                            format!("field `{name}` must be a non-negative integer, got {x}"),
                        )
                    }),
            }
        };
        let usize_field = |name: &str| -> Result<usize> {
            opt_usize(name)?.ok_or_else(|| config_error(path, format!("missing field `{name}`")))
        };
        let f64_field = |name: &str, default: f64| -> Result<f64> {
            match v.get(name) {
                None | Some(Value::Null) => Ok(default),
                Some(x) => x.as_f64().ok_or_else(|| {
                    config_error(path, format!("field `{name}` must be a number, got {x}"))
                }),
            }
        };
        let hidden = usize_field("hidden_size")?;
        let heads = usize_field("num_attention_heads")?;
        let tied_head = match v.get("tie_word_embeddings") {
            None | Some(Value::Null) => false,
            Some(x) => x.as_bool().ok_or_else(|| {
                config_error(
                    path,
                    format!("field `tie_word_embeddings` must be true or false, got {x}"),
                )
            })?,
        };
        let config = LlamaConfig {
            vocab_size: usize_field("vocab_size")?,
            hidden,
            layers: usize_field("num_hidden_layers")?,
            heads,
            kv_heads: opt_usize("num_key_value_heads")?.unwrap_or(heads),
            head_dim: opt_usize("head_dim")?.unwrap_or(hidden.checked_div(heads).unwrap_or(0)),
            ffn: usize_field("intermediate_size")?,
            rope_theta: f64_field("rope_theta", 10000.0)?,
            rms_eps: f64_field("rms_norm_eps", 1e-6)?,
            max_position: opt_usize("max_position_embeddings")?.unwrap_or(2048),
            rope_style: RopeStyle::HalfSplit,
            tied_head,
        };
        config.validate_at(path)?;
        Ok(config)
    }

    /// The Hugging Face `config.json` of this configuration (a `LlamaForCausalLM`).
    ///
    /// # Errors
    /// If the style is [`RopeStyle::Interleaved`]: Hugging Face has no such layout
    /// (convert the weights with [`LlamaWeights::with_rope_style`] first).
    pub fn to_hf_json(&self) -> Result<Value> {
        if self.rope_style != RopeStyle::HalfSplit {
            return Err(Error::Unsupported(
                "a Hugging Face config.json describes half-split RoPE only; convert the weights with LlamaWeights::with_rope_style(RopeStyle::HalfSplit)".into(),
            ));
        }
        Ok(json!({
            "architectures": ["LlamaForCausalLM"],
            "model_type": "llama",
            "hidden_act": "silu",
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden,
            "num_hidden_layers": self.layers,
            "num_attention_heads": self.heads,
            "num_key_value_heads": self.kv_heads,
            "head_dim": self.head_dim,
            "intermediate_size": self.ffn,
            "rope_theta": self.rope_theta,
            "rms_norm_eps": self.rms_eps,
            "max_position_embeddings": self.max_position,
            "tie_word_embeddings": self.tied_head,
            "rope_scaling": null,
            "attention_bias": false,
            "mlp_bias": false,
        }))
    }

    /// Query heads sharing one KV head: `heads / kv_heads`.
    pub fn group(&self) -> usize {
        self.heads / self.kv_heads.max(1)
    }

    /// Width of the query projection's output: `heads * head_dim`.
    pub fn q_dim(&self) -> usize {
        self.heads * self.head_dim
    }

    /// Width of the key (and value) projection's output: `kv_heads * head_dim`.
    pub fn kv_dim(&self) -> usize {
        self.kv_heads * self.head_dim
    }

    /// Checks that the sizes are usable: all positive, `heads` a multiple of `kv_heads`,
    /// `head_dim` even (RoPE pairs), `rope_theta` and `rms_eps` positive and finite.
    /// Errors name the field (with its `config.json` name).
    pub fn validate(&self) -> Result<()> {
        self.validate_at(Path::new(IN_MEMORY))
    }

    fn validate_at(&self, path: &Path) -> Result<()> {
        let positive = [
            ("vocab_size", "vocab_size", self.vocab_size),
            ("hidden", "hidden_size", self.hidden),
            ("layers", "num_hidden_layers", self.layers),
            ("heads", "num_attention_heads", self.heads),
            ("kv_heads", "num_key_value_heads", self.kv_heads),
            ("head_dim", "head_dim", self.head_dim),
            ("ffn", "intermediate_size", self.ffn),
            ("max_position", "max_position_embeddings", self.max_position),
        ];
        for (field, json, value) in positive {
            if value == 0 {
                return Err(config_error(
                    path,
                    format!("{field} (`{json}`) must be positive, got 0"),
                ));
            }
        }
        if !self.heads.is_multiple_of(self.kv_heads) {
            return Err(config_error(
                path,
                format!(
                    "heads (`num_attention_heads`) = {} is not a multiple of kv_heads (`num_key_value_heads`) = {}",
                    self.heads, self.kv_heads
                ),
            ));
        }
        if !self.head_dim.is_multiple_of(2) {
            return Err(config_error(
                path,
                format!(
                    "head_dim (`head_dim`) = {} must be even (RoPE rotates pairs)",
                    self.head_dim
                ),
            ));
        }
        for (field, json, value) in [
            ("rope_theta", "rope_theta", self.rope_theta),
            ("rms_eps", "rms_norm_eps", self.rms_eps),
        ] {
            if !(value.is_finite() && value > 0.0) {
                return Err(config_error(
                    path,
                    format!("{field} (`{json}`) must be positive and finite, got {value}"),
                ));
            }
        }
        Ok(())
    }

    /// A tiny Llama for tests and demos: vocabulary 64, width 32, 2 layers, 4 query
    /// heads sharing 2 KV heads, head width 8, feed-forward 64, RoPE theta 10000, RMSNorm
    /// epsilon 1e-5, 64 positions, half-split RoPE, tied head.
    pub fn demo() -> LlamaConfig {
        LlamaConfig {
            vocab_size: 64,
            hidden: 32,
            layers: 2,
            heads: 4,
            kv_heads: 2,
            head_dim: 8,
            ffn: 64,
            rope_theta: 10000.0,
            rms_eps: 1e-5,
            max_position: 64,
            rope_style: RopeStyle::HalfSplit,
            tied_head: true,
        }
    }

    /// SmolLM2-135M(-Instruct) as its GGUF file describes it: vocabulary 49152, width
    /// 576, 30 layers, 9 query heads on 3 KV heads, head width 64, SwiGLU 1536, RoPE
    /// theta 100000, context 8192, tied head, [`RopeStyle::Interleaved`] (GGUF tensors as
    /// stored). `rms_eps` is 1e-5 rounded to f32, as GGUF stores it.
    pub fn smollm2_135m() -> LlamaConfig {
        LlamaConfig {
            vocab_size: 49152,
            hidden: 576,
            layers: 30,
            heads: 9,
            kv_heads: 3,
            head_dim: 64,
            ffn: 1536,
            rope_theta: 100000.0,
            rms_eps: f64::from(1e-5f32),
            max_position: 8192,
            rope_style: RopeStyle::Interleaved,
            tied_head: true,
        }
    }
}

/// The weights of one decoder layer. Projections are `[in, out]` (applied as `x @ w`).
#[derive(Clone, Debug, PartialEq)]
pub struct LlamaLayerWeights {
    /// RMSNorm gain before attention `[hidden]`.
    pub attn_norm: Vec<f64>,
    /// Query projection `[hidden, heads * head_dim]`.
    pub wq: Tensor<f64>,
    /// Key projection `[hidden, kv_heads * head_dim]`.
    pub wk: Tensor<f64>,
    /// Value projection `[hidden, kv_heads * head_dim]`.
    pub wv: Tensor<f64>,
    /// Attention output projection `[heads * head_dim, hidden]`.
    pub wo: Tensor<f64>,
    /// RMSNorm gain before the feed-forward block `[hidden]`.
    pub ffn_norm: Vec<f64>,
    /// SwiGLU gate projection `[hidden, ffn]`.
    pub w_gate: Tensor<f64>,
    /// SwiGLU up projection `[hidden, ffn]`.
    pub w_up: Tensor<f64>,
    /// SwiGLU down projection `[ffn, hidden]`.
    pub w_down: Tensor<f64>,
}

/// A whole Llama decoder: configuration, embedding, layers, final norm and head.
#[derive(Clone, Debug, PartialEq)]
pub struct LlamaWeights {
    /// The shapes.
    pub config: LlamaConfig,
    /// Token embeddings `[vocab, hidden]`.
    pub embed: Tensor<f64>,
    /// The decoder layers, first to last.
    pub layers: Vec<LlamaLayerWeights>,
    /// RMSNorm gain after the last layer `[hidden]`.
    pub final_norm: Vec<f64>,
    /// Output embeddings `[vocab, hidden]` (logits = x @ lm_head^T); `None` when the head
    /// is tied to `embed`.
    pub lm_head: Option<Tensor<f64>>,
}

/// Reorders the rows of a q or k projection stored `[out, in]` (out = `n_heads *
/// head_dim`) from Hugging Face's half-split RoPE layout to llama.cpp's interleaved one:
/// within each head, row `t * d/2 + i` moves to `2i + t` (what `permute` in llama.cpp's
/// `convert_hf_to_gguf.py` does; pass `kv_heads` for k). With the permuted weights,
/// [`RopeStyle::Interleaved`] gives the same result as [`RopeStyle::HalfSplit`] on the
/// original ones.
///
/// # Panics
/// If `w_out_in` is not 2-D or its rows are not `n_heads` heads of even width.
pub fn permute_qk_for_interleaved(w_out_in: &Tensor<f64>, n_heads: usize) -> Tensor<f64> {
    permute_rows(w_out_in, n_heads, false)
}

/// The inverse of [`permute_qk_for_interleaved`]: rows in llama.cpp's interleaved layout
/// (as a GGUF file stores `attn_q` / `attn_k`) back to Hugging Face's half-split layout.
///
/// # Panics
/// As [`permute_qk_for_interleaved`].
pub fn unpermute_qk_from_interleaved(w_out_in: &Tensor<f64>, n_heads: usize) -> Tensor<f64> {
    permute_rows(w_out_in, n_heads, true)
}

fn permute_rows(w: &Tensor<f64>, n_heads: usize, inverse: bool) -> Tensor<f64> {
    let shape = w.shape();
    assert_eq!(
        shape.len(),
        2,
        "q/k permutation: expected a 2-D [out, in] matrix"
    );
    let (rows, cols) = (shape[0], shape[1]);
    assert!(
        n_heads > 0 && rows.is_multiple_of(n_heads) && (rows / n_heads).is_multiple_of(2),
        "q/k permutation: {rows} rows are not {n_heads} heads of even width"
    );
    let d = rows / n_heads;
    let half = d / 2;
    let src = w.data();
    let mut out = vec![0.0; src.len()];
    for h in 0..n_heads {
        for t in 0..2 {
            for i in 0..half {
                let split = h * d + t * half + i;
                let inter = h * d + 2 * i + t;
                let (from, to) = if inverse {
                    (inter, split)
                } else {
                    (split, inter)
                };
                out[to * cols..(to + 1) * cols]
                    .copy_from_slice(&src[from * cols..(from + 1) * cols]);
            }
        }
    }
    Tensor::from_vec(&[rows, cols], out).expect("same shape")
}

/// Applies a row permutation of `[out, in]` to an `[in, out]` matrix (its columns).
fn permute_cols(w_in_out: &Tensor<f64>, n_heads: usize, inverse: bool) -> Tensor<f64> {
    permute_rows(&w_in_out.transpose(), n_heads, inverse).transpose()
}

/// Named tensors, row-major as stored (Hugging Face and GGUF both store a linear layer
/// `[out, in]`), converted to f64. A GGUF source hands out dequantized tensors in the
/// same row-major `[out, in]` form.
pub trait TensorSource {
    /// The tensor `name` as f64, in its stored shape.
    fn tensor(&self, name: &str) -> Result<Tensor<f64>>;
    /// The stored shape of `name` (without converting the data).
    fn shape(&self, name: &str) -> Result<Vec<usize>>;
    /// True when the source holds a tensor called `name`.
    fn has(&self, name: &str) -> bool;
}

/// A [`TensorSource`] over a safetensors file (F64, F32, F16 or BF16 tensors). The file
/// is held in memory in its stored precision and each tensor is converted to f64 only
/// when asked for.
pub struct SafetensorsSource {
    path: PathBuf,
    bytes: Vec<u8>,
}

impl SafetensorsSource {
    /// Reads and checks the safetensors file at `path`.
    pub fn open(path: impl AsRef<Path>) -> Result<SafetensorsSource> {
        let path = path.as_ref().to_path_buf();
        let bytes = std::fs::read(&path).map_err(|source| Error::File {
            path: path.clone(),
            cause: source,
        })?;
        Self::from_bytes(bytes, path)
    }

    /// A source over the bytes of a safetensors file; `path` only labels errors.
    pub fn from_bytes(bytes: Vec<u8>, path: impl Into<PathBuf>) -> Result<SafetensorsSource> {
        let src = SafetensorsSource {
            path: path.into(),
            bytes,
        };
        src.parsed()?;
        Ok(src)
    }

    fn parsed(&self) -> Result<SafeTensors<'_>> {
        SafeTensors::deserialize(&self.bytes)
            .map_err(|e| config_error(&self.path, format!("not a valid safetensors file: {e}")))
    }

    fn view<'a>(
        &self,
        st: &SafeTensors<'a>,
        name: &str,
    ) -> Result<safetensors::tensor::TensorView<'a>> {
        st.tensor(name)
            .map_err(|_| config_error(&self.path, format!("missing tensor `{name}`")))
    }
}

impl TensorSource for SafetensorsSource {
    fn tensor(&self, name: &str) -> Result<Tensor<f64>> {
        let st = self.parsed()?;
        let view = self.view(&st, name)?;
        let data = safetensor_to_f64(&view).map_err(|dt| {
            config_error(
                &self.path,
                format!("tensor `{name}` has dtype {dt:?}; expected F32, F16, BF16 or F64"),
            )
        })?;
        Tensor::from_vec(view.shape(), data)
            .map_err(|e| config_error(&self.path, format!("tensor `{name}`: {e}")))
    }

    fn shape(&self, name: &str) -> Result<Vec<usize>> {
        let st = self.parsed()?;
        Ok(self.view(&st, name)?.shape().to_vec())
    }

    fn has(&self, name: &str) -> bool {
        self.parsed().is_ok_and(|st| st.tensor(name).is_ok())
    }
}

/// A [`TensorSource`] over tensors already in memory (tests, converted checkpoints).
#[derive(Clone, Debug, Default)]
pub struct MemorySource {
    /// The tensors by name, row-major as stored.
    pub tensors: HashMap<String, Tensor<f64>>,
}

impl TensorSource for MemorySource {
    fn tensor(&self, name: &str) -> Result<Tensor<f64>> {
        self.tensors
            .get(name)
            .cloned()
            .ok_or_else(|| config_error(Path::new("<memory>"), format!("missing tensor `{name}`")))
    }

    fn shape(&self, name: &str) -> Result<Vec<usize>> {
        self.tensors
            .get(name)
            .map(|t| t.shape().to_vec())
            .ok_or_else(|| config_error(Path::new("<memory>"), format!("missing tensor `{name}`")))
    }

    fn has(&self, name: &str) -> bool {
        self.tensors.contains_key(name)
    }
}

/// One tensor of a decoder layer, for [`TensorNames::layer`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LayerTensor {
    /// RMSNorm gain before attention.
    AttnNorm,
    /// Query projection.
    Q,
    /// Key projection.
    K,
    /// Value projection.
    V,
    /// Attention output projection.
    O,
    /// RMSNorm gain before the feed-forward block.
    FfnNorm,
    /// SwiGLU gate projection.
    Gate,
    /// SwiGLU up projection.
    Up,
    /// SwiGLU down projection.
    Down,
}

/// The tensor naming scheme of a checkpoint.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TensorNames {
    /// Hugging Face `LlamaForCausalLM`: `model.embed_tokens.weight`,
    /// `model.layers.{i}.self_attn.q_proj.weight`, ..., `model.norm.weight`,
    /// `lm_head.weight`.
    Hf,
    /// llama.cpp GGUF: `token_embd.weight`, `blk.{i}.attn_q.weight`, ...,
    /// `output_norm.weight`, `output.weight`.
    Gguf,
}

impl TensorNames {
    /// The token embedding table.
    pub fn embed(self) -> &'static str {
        match self {
            TensorNames::Hf => "model.embed_tokens.weight",
            TensorNames::Gguf => "token_embd.weight",
        }
    }

    /// The final RMSNorm gain.
    pub fn final_norm(self) -> &'static str {
        match self {
            TensorNames::Hf => "model.norm.weight",
            TensorNames::Gguf => "output_norm.weight",
        }
    }

    /// The untied LM head.
    pub fn lm_head(self) -> &'static str {
        match self {
            TensorNames::Hf => "lm_head.weight",
            TensorNames::Gguf => "output.weight",
        }
    }

    /// Tensor `t` of layer `i`.
    pub fn layer(self, i: usize, t: LayerTensor) -> String {
        use LayerTensor::*;
        match self {
            TensorNames::Hf => {
                let part = match t {
                    AttnNorm => "input_layernorm",
                    Q => "self_attn.q_proj",
                    K => "self_attn.k_proj",
                    V => "self_attn.v_proj",
                    O => "self_attn.o_proj",
                    FfnNorm => "post_attention_layernorm",
                    Gate => "mlp.gate_proj",
                    Up => "mlp.up_proj",
                    Down => "mlp.down_proj",
                };
                format!("model.layers.{i}.{part}.weight")
            }
            TensorNames::Gguf => {
                let part = match t {
                    AttnNorm => "attn_norm",
                    Q => "attn_q",
                    K => "attn_k",
                    V => "attn_v",
                    O => "attn_output",
                    FfnNorm => "ffn_norm",
                    Gate => "ffn_gate",
                    Up => "ffn_up",
                    Down => "ffn_down",
                };
                format!("blk.{i}.{part}.weight")
            }
        }
    }
}

/// Hands out a model's weights piece by piece from a [`TensorSource`], in the forward
/// pass's layout (`[in, out]` projections), checking every shape against the config.
pub struct LlamaLoader {
    config: LlamaConfig,
    names: TensorNames,
    source: Box<dyn TensorSource>,
}

impl LlamaLoader {
    /// A loader for `config` reading `source` under the naming scheme `names`. The
    /// config is [validated](LlamaConfig::validate); its `rope_style` must match the
    /// stored q/k layout (Hugging Face: half-split; GGUF as stored: interleaved).
    pub fn new(
        config: LlamaConfig,
        names: TensorNames,
        source: Box<dyn TensorSource>,
    ) -> Result<LlamaLoader> {
        config.validate()?;
        Ok(LlamaLoader {
            config,
            names,
            source,
        })
    }

    /// A Hugging Face checkpoint directory: `config.json` and `model.safetensors`.
    pub fn from_hf_dir(dir: impl AsRef<Path>) -> Result<LlamaLoader> {
        let dir = dir.as_ref();
        let config = LlamaConfig::from_hf_json(dir.join("config.json"))?;
        let source = SafetensorsSource::open(dir.join("model.safetensors"))?;
        Self::new(config, TensorNames::Hf, Box::new(source))
    }

    /// The configuration.
    pub fn config(&self) -> &LlamaConfig {
        &self.config
    }

    /// The naming scheme.
    pub fn names(&self) -> TensorNames {
        self.names
    }

    /// The tensor `name`, checked to have `shape` (as stored).
    fn get(&self, name: &str, shape: &[usize]) -> Result<Tensor<f64>> {
        if !self.source.has(name) {
            return Err(Error::Unsupported(format!(
                "llama weights: missing tensor `{name}`"
            )));
        }
        let stored = self.source.shape(name)?;
        if stored != shape {
            return Err(Error::shape(
                "llama weights",
                format!("tensor `{name}` has shape {stored:?}, expected {shape:?} from the config"),
            ));
        }
        let t = self.source.tensor(name)?;
        if t.shape() != shape {
            return Err(Error::shape(
                "llama weights",
                format!(
                    "tensor `{name}` came back with shape {:?}, expected {shape:?}",
                    t.shape()
                ),
            ));
        }
        Ok(t)
    }

    /// A linear layer stored `[out, in]`, returned as `[in, out]`.
    fn linear(&self, name: &str, inp: usize, out: usize) -> Result<Tensor<f64>> {
        Ok(self.get(name, &[out, inp])?.transpose())
    }

    fn vector(&self, name: &str, len: usize) -> Result<Vec<f64>> {
        Ok(self.get(name, &[len])?.into_data())
    }

    /// The token embedding table `[vocab, hidden]`.
    pub fn embed(&self) -> Result<Tensor<f64>> {
        let c = &self.config;
        self.get(self.names.embed(), &[c.vocab_size, c.hidden])
    }

    /// Layer `i`'s weights.
    pub fn layer(&self, i: usize) -> Result<LlamaLayerWeights> {
        let c = &self.config;
        if i >= c.layers {
            return Err(Error::shape(
                "llama weights",
                format!("layer {i} requested, the model has {}", c.layers),
            ));
        }
        let n = |t| self.names.layer(i, t);
        use LayerTensor::*;
        let (h, q, kv, f) = (c.hidden, c.q_dim(), c.kv_dim(), c.ffn);
        Ok(LlamaLayerWeights {
            attn_norm: self.vector(&n(AttnNorm), h)?,
            wq: self.linear(&n(Q), h, q)?,
            wk: self.linear(&n(K), h, kv)?,
            wv: self.linear(&n(V), h, kv)?,
            wo: self.linear(&n(O), q, h)?,
            ffn_norm: self.vector(&n(FfnNorm), h)?,
            w_gate: self.linear(&n(Gate), h, f)?,
            w_up: self.linear(&n(Up), h, f)?,
            w_down: self.linear(&n(Down), f, h)?,
        })
    }

    /// The final RMSNorm gain `[hidden]`.
    pub fn final_norm(&self) -> Result<Vec<f64>> {
        self.vector(self.names.final_norm(), self.config.hidden)
    }

    /// The LM head `[vocab, hidden]`, or `None` when the config ties it to the
    /// embedding (a stored head is then ignored). An untied config requires the tensor.
    pub fn lm_head(&self) -> Result<Option<Tensor<f64>>> {
        let c = &self.config;
        if c.tied_head {
            return Ok(None);
        }
        self.get(self.names.lm_head(), &[c.vocab_size, c.hidden])
            .map(Some)
    }
}

impl LlamaWeights {
    /// Materialises every weight of `loader`'s model.
    pub fn load_all(loader: &LlamaLoader) -> Result<LlamaWeights> {
        let layers = (0..loader.config().layers)
            .map(|i| loader.layer(i))
            .collect::<Result<Vec<_>>>()?;
        Ok(LlamaWeights {
            config: loader.config().clone(),
            embed: loader.embed()?,
            layers,
            final_norm: loader.final_norm()?,
            lm_head: loader.lm_head()?,
        })
    }

    /// Loads a whole Hugging Face checkpoint directory (see [`LlamaLoader::from_hf_dir`]).
    pub fn load_hf_dir(dir: impl AsRef<Path>) -> Result<LlamaWeights> {
        Self::load_all(&LlamaLoader::from_hf_dir(dir)?)
    }

    /// The same model with its q/k projections rearranged for `style` (a no-op when it
    /// already has that style): the logits do not change.
    pub fn with_rope_style(&self, style: RopeStyle) -> LlamaWeights {
        let mut w = self.clone();
        if style == self.config.rope_style {
            return w;
        }
        let inverse = style == RopeStyle::HalfSplit;
        let c = &self.config;
        for l in &mut w.layers {
            l.wq = permute_cols(&l.wq, c.heads, inverse);
            l.wk = permute_cols(&l.wk, c.kv_heads, inverse);
        }
        w.config.rope_style = style;
        w
    }

    /// The tensors of a Hugging Face checkpoint of this model: name and row-major
    /// `[out, in]` tensor, in half-split layout (q/k are converted if needed).
    pub fn hf_tensors(&self) -> Vec<(String, Tensor<f64>)> {
        let w = self.with_rope_style(RopeStyle::HalfSplit);
        let names = TensorNames::Hf;
        let mut out = vec![(names.embed().to_string(), w.embed.clone())];
        for (i, l) in w.layers.iter().enumerate() {
            use LayerTensor::*;
            let vector = |v: &Vec<f64>| Tensor::from_vec(&[v.len()], v.clone()).expect("1-D");
            out.push((names.layer(i, AttnNorm), vector(&l.attn_norm)));
            out.push((names.layer(i, Q), l.wq.transpose()));
            out.push((names.layer(i, K), l.wk.transpose()));
            out.push((names.layer(i, V), l.wv.transpose()));
            out.push((names.layer(i, O), l.wo.transpose()));
            out.push((names.layer(i, FfnNorm), vector(&l.ffn_norm)));
            out.push((names.layer(i, Gate), l.w_gate.transpose()));
            out.push((names.layer(i, Up), l.w_up.transpose()));
            out.push((names.layer(i, Down), l.w_down.transpose()));
        }
        out.push((
            names.final_norm().to_string(),
            Tensor::from_vec(&[w.final_norm.len()], w.final_norm.clone()).expect("1-D"),
        ));
        if let Some(head) = &w.lm_head {
            out.push((names.lm_head().to_string(), head.clone()));
        }
        out
    }

    /// Writes a Hugging Face checkpoint of this model into `dir` (created if needed):
    /// `config.json` and `model.safetensors` with F64 tensors (exact), in half-split
    /// layout. [`LlamaWeights::load_hf_dir`] reads it back to the same weights (in
    /// half-split style).
    pub fn save_hf_dir(&self, dir: impl AsRef<Path>) -> Result<()> {
        let dir = dir.as_ref();
        std::fs::create_dir_all(dir).map_err(|source| Error::File {
            path: dir.to_path_buf(),
            cause: source,
        })?;
        let mut config = self.config.clone();
        config.rope_style = RopeStyle::HalfSplit;
        let cfg = serde_json::to_string_pretty(&config.to_hf_json()?)
            .map_err(|e| Error::Unsupported(format!("config.json: {e}")))?;
        let cfg_path = dir.join("config.json");
        std::fs::write(&cfg_path, cfg).map_err(|source| Error::File {
            path: cfg_path,
            cause: source,
        })?;
        let tensors = self.hf_tensors();
        let bytes: Vec<(String, Vec<u8>, Vec<usize>)> = tensors
            .iter()
            .map(|(n, t)| {
                let b = t.data().iter().flat_map(|v| v.to_le_bytes()).collect();
                (n.clone(), b, t.shape().to_vec())
            })
            .collect();
        let views = bytes
            .iter()
            .map(|(n, b, s)| {
                safetensors::tensor::TensorView::new(Dtype::F64, s.clone(), b)
                    .map(|v| (n.clone(), v))
            })
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(|e| Error::Unsupported(format!("safetensors view: {e}")))?;
        let meta = HashMap::from([("format".to_string(), "pt".to_string())]);
        let st_path = dir.join("model.safetensors");
        let out = safetensors::serialize(views, Some(meta))
            .map_err(|e| config_error(&st_path, format!("safetensors serialisation: {e}")))?;
        std::fs::write(&st_path, out).map_err(|source| Error::File {
            path: st_path,
            cause: source,
        })
    }

    /// Deterministic pseudo-random weights for `config`, generated in code (SplitMix64,
    /// no download, no `rand` version dependence): the same `(config, seed)` always gives
    /// bit-identical weights.
    ///
    /// Scales are those of a trained model: RMSNorm gains 1 + N(0, 0.05^2), embeddings
    /// (and an untied head) N(0, 0.1^2), projections N(0, 1/fan_in) so activations stay
    /// at unit scale through the layers. Values are bounded by 2 sqrt(3) std
    /// (Irwin-Hall sampling).
    ///
    /// # Panics
    /// If `config` does not [validate](LlamaConfig::validate).
    pub fn demo(config: &LlamaConfig, seed: u64) -> LlamaWeights {
        if let Err(e) = config.validate() {
            panic!("LlamaWeights::demo: {e}");
        }
        let c = config;
        let (h, q, kv, f) = (c.hidden, c.q_dim(), c.kv_dim(), c.ffn);
        let mut rng = DemoRng(seed ^ 0x11A3_A0DE_C0DE_0001);
        let std_in = |n: usize| 1.0 / (n as f64).sqrt();
        let embed = rng.tensor(c.vocab_size, h, 0.1);
        let layers = (0..c.layers)
            .map(|_| LlamaLayerWeights {
                attn_norm: rng.vec(h, 1.0, 0.05),
                wq: rng.tensor(h, q, std_in(h)),
                wk: rng.tensor(h, kv, std_in(h)),
                wv: rng.tensor(h, kv, std_in(h)),
                wo: rng.tensor(q, h, std_in(q)),
                ffn_norm: rng.vec(h, 1.0, 0.05),
                w_gate: rng.tensor(h, f, std_in(h)),
                w_up: rng.tensor(h, f, std_in(h)),
                w_down: rng.tensor(f, h, std_in(f)),
            })
            .collect();
        let final_norm = rng.vec(h, 1.0, 0.05);
        let lm_head = (!c.tied_head).then(|| rng.tensor(c.vocab_size, h, 0.1));
        LlamaWeights {
            config: config.clone(),
            embed,
            layers,
            final_norm,
            lm_head,
        }
    }

    /// The output embeddings `[vocab, hidden]`: the LM head, or the embedding table when
    /// tied.
    pub fn head(&self) -> &Tensor<f64> {
        self.lm_head.as_ref().unwrap_or(&self.embed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("tessera-llama-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn hf_dir_round_trips_demo_weights() {
        for tied in [true, false] {
            let config = LlamaConfig {
                tied_head: tied,
                ..LlamaConfig::demo()
            };
            let w = LlamaWeights::demo(&config, 13);
            assert_eq!(w.lm_head.is_none(), tied);
            let dir = scratch(&format!("rt-{tied}"));
            w.save_hf_dir(&dir).unwrap();
            let loader = LlamaLoader::from_hf_dir(&dir).unwrap();
            assert_eq!(loader.config(), &config);
            assert_eq!(loader.names(), TensorNames::Hf);
            assert_eq!(LlamaWeights::load_all(&loader).unwrap(), w);
            // An interleaved model is written in HF layout and reads back half-split.
            let inter = w.with_rope_style(RopeStyle::Interleaved);
            inter.save_hf_dir(&dir).unwrap();
            assert_eq!(LlamaWeights::load_hf_dir(&dir).unwrap(), w);
            let _ = std::fs::remove_dir_all(dir);
        }
    }

    #[test]
    fn demo_is_deterministic_and_trained_like() {
        let c = LlamaConfig::demo();
        let (a, b) = (LlamaWeights::demo(&c, 1), LlamaWeights::demo(&c, 1));
        assert_eq!(a, b);
        assert_ne!(a, LlamaWeights::demo(&c, 2));
        let l = &a.layers[0];
        assert_eq!(l.wq.shape(), [32, 32]);
        assert_eq!(l.wk.shape(), [32, 16]);
        assert_eq!(l.wo.shape(), [32, 32]);
        assert_eq!(l.w_down.shape(), [64, 32]);
        assert!(l.attn_norm.iter().all(|g| (g - 1.0).abs() < 0.2));
        let std =
            |t: &Tensor<f64>| (t.data().iter().map(|v| v * v).sum::<f64>() / t.len() as f64).sqrt();
        assert!((std(&l.wq) * 32f64.sqrt() - 1.0).abs() < 0.1);
        assert!((std(&a.embed) - 0.1).abs() < 0.01);
    }

    fn write_config(dir: &Path, edit: impl FnOnce(&mut Value)) -> PathBuf {
        let mut v = LlamaConfig::demo().to_hf_json().unwrap();
        edit(&mut v);
        let p = dir.join("config.json");
        std::fs::write(&p, serde_json::to_string(&v).unwrap()).unwrap();
        p
    }

    #[test]
    fn hf_config_json_is_read_and_checked() {
        let dir = scratch("cfg");
        let p = write_config(&dir, |_| {});
        assert_eq!(LlamaConfig::from_hf_json(&p).unwrap(), LlamaConfig::demo());
        // Defaults: kv heads = heads, head_dim = hidden / heads, untied.
        let p = write_config(&dir, |v| {
            let o = v.as_object_mut().unwrap();
            for k in [
                "num_key_value_heads",
                "head_dim",
                "tie_word_embeddings",
                "rope_scaling",
            ] {
                o.remove(k);
            }
        });
        let c = LlamaConfig::from_hf_json(&p).unwrap();
        assert_eq!((c.kv_heads, c.head_dim, c.tied_head), (4, 8, false));
        type Edit = Box<dyn FnOnce(&mut Value)>;
        let bad: Vec<(Edit, &str)> = vec![
            (
                Box::new(|v| v["architectures"] = json!(["MistralForCausalLM"])),
                "MistralForCausalLM",
            ),
            (
                Box::new(|v| v["rope_scaling"] = json!({"rope_type": "llama3", "factor": 8.0})),
                "rope_scaling",
            ),
            (Box::new(|v| v["hidden_act"] = json!("gelu")), "hidden_act"),
            (
                Box::new(|v| v["attention_bias"] = json!(true)),
                "attention_bias",
            ),
            (
                Box::new(|v| v["num_key_value_heads"] = json!(3)),
                "num_key_value_heads",
            ),
            (
                Box::new(|v| {
                    v.as_object_mut().unwrap().remove("hidden_size");
                }),
                "hidden_size",
            ),
            (Box::new(|v| v["vocab_size"] = json!(-1)), "vocab_size"),
        ];
        for (edit, needle) in bad {
            let p = write_config(&dir, edit);
            let e = LlamaConfig::from_hf_json(&p).unwrap_err().to_string();
            assert!(
                e.contains(needle) && e.contains("config.json"),
                "{needle}: {e}"
            );
        }
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn loader_names_missing_and_misshapen_tensors() {
        let config = LlamaConfig {
            tied_head: false,
            ..LlamaConfig::demo()
        };
        let w = LlamaWeights::demo(&config, 4);
        let full: HashMap<String, Tensor<f64>> = w.hf_tensors().into_iter().collect();
        let load = |tensors: HashMap<String, Tensor<f64>>| {
            let loader = LlamaLoader::new(
                config.clone(),
                TensorNames::Hf,
                Box::new(MemorySource { tensors }),
            )
            .unwrap();
            LlamaWeights::load_all(&loader)
        };
        assert_eq!(load(full.clone()).unwrap(), w);
        for name in [
            "model.layers.1.mlp.up_proj.weight",
            "lm_head.weight",
            "model.norm.weight",
        ] {
            let mut t = full.clone();
            t.remove(name);
            let e = load(t).unwrap_err().to_string();
            assert!(e.contains(name) && e.contains("missing"), "{e}");
        }
        let name = "model.layers.0.self_attn.k_proj.weight";
        let mut t = full.clone();
        t.insert(name.into(), full[name].transpose());
        let e = load(t).unwrap_err().to_string();
        assert!(e.contains(name) && e.contains("[32, 16]"), "{e}");
        // A bad config never gets a loader.
        let bad = LlamaConfig {
            head_dim: 5,
            ..config.clone()
        };
        assert!(LlamaLoader::new(bad, TensorNames::Hf, Box::new(MemorySource::default())).is_err());
        // Safetensors: a missing file and a missing tensor name the file.
        let dir = scratch("st");
        w.save_hf_dir(&dir).unwrap();
        let st = SafetensorsSource::open(dir.join("model.safetensors")).unwrap();
        assert!(st.has("model.embed_tokens.weight") && !st.has("nope"));
        assert_eq!(
            st.shape("model.layers.0.self_attn.k_proj.weight").unwrap(),
            [16, 32]
        );
        let e = st.tensor("nope").unwrap_err().to_string();
        assert!(e.contains("nope") && e.contains("model.safetensors"), "{e}");
        assert!(SafetensorsSource::open(dir.join("absent.safetensors")).is_err());
        assert!(SafetensorsSource::from_bytes(vec![1, 2, 3], "junk").is_err());
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn tensor_names_follow_both_schemes() {
        assert_eq!(
            TensorNames::Hf.layer(3, LayerTensor::FfnNorm),
            "model.layers.3.post_attention_layernorm.weight"
        );
        assert_eq!(
            TensorNames::Gguf.layer(0, LayerTensor::O),
            "blk.0.attn_output.weight"
        );
        assert_eq!(TensorNames::Gguf.lm_head(), "output.weight");
        assert_eq!(TensorNames::Gguf.final_norm(), "output_norm.weight");
    }
}
