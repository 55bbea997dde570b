//! Opening a Llama-family model directory, whichever layout it has: a GGUF file
//! (llama.cpp; hyperparameters, tokenizer and chat template in its metadata, tensors
//! dequantised on demand, Q/K rows in llama.cpp's interleaved-RoPE order) or the Hugging
//! Face layout (config.json + model.safetensors + tokenizer.json, half-split RoPE).
//!
//! Every party reads the public architecture from the directory; the data owner also
//! builds the tokenizer, the model owner the lazy weight loader.

use super::model::{LlamaConfig, LlamaLoader, LlamaWeights, RopeStyle, TensorNames, TensorSource};
use super::tokenizer::LlamaTokenizer;
use crate::gguf::GgufFile;
use crate::models::llama::LlamaParams;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tessera::error::{Error, Result};
use tessera::Tensor;

/// Where `scripts/fetch-smollm2.sh` puts SmolLM2-135M-Instruct, relative to the
/// repository root.
pub const SMOLLM2_DIR: &str = "models/SmolLM2-135M-Instruct";

/// A model directory.
pub struct ModelDir {
    dir: PathBuf,
    config: LlamaConfig,
    gguf: Option<Arc<GgufFile>>,
}

/// The GGUF architectures read as Llama.
const ARCHITECTURES: &[&str] = &["llama"];

/// The Llama config of a GGUF file's metadata (`general.architecture` = llama).
pub fn config_from_gguf(g: &GgufFile) -> Result<LlamaConfig> {
    let arch = g.get_str("general.architecture")?;
    if !ARCHITECTURES.contains(&arch) {
        return Err(Error::Unsupported(format!(
            "GGUF general.architecture {arch:?} is not supported (supported: {ARCHITECTURES:?})"
        )));
    }
    let key = |k: &str| format!("{arch}.{k}");
    let usize_of = |k: &str| -> Result<usize> { Ok(g.get_u64(&key(k))? as usize) };
    let hidden = usize_of("embedding_length")?;
    let heads = usize_of("attention.head_count")?;
    let kv_heads = match g.metadata(&key("attention.head_count_kv")) {
        Some(_) => usize_of("attention.head_count_kv")?,
        None => heads,
    };
    if heads == 0 || hidden % heads != 0 {
        return Err(Error::Config {
            path: g.path().to_path_buf(),
            detail: format!(
                "{}: {heads} heads do not divide embedding_length {hidden}",
                key("attention.head_count")
            ),
        });
    }
    let head_dim = match g.metadata(&key("attention.key_length")) {
        Some(_) => usize_of("attention.key_length")?,
        None => hidden / heads,
    };
    if let Some(v) = g.metadata(&key("rope.dimension_count")) {
        let rot = v.as_u64().unwrap_or(0) as usize;
        if rot != head_dim {
            return Err(Error::Unsupported(format!(
                "GGUF {}: partial rotary embeddings ({rot} of {head_dim} dims) are not supported",
                key("rope.dimension_count")
            )));
        }
    }
    if g.metadata(&key("rope.scaling.type"))
        .is_some_and(|v| v.as_str() != Some("none"))
    {
        return Err(Error::Unsupported(format!(
            "GGUF {}: RoPE scaling is not supported",
            key("rope.scaling.type")
        )));
    }
    let vocab_size = match g.metadata(&key("vocab_size")) {
        Some(_) => usize_of("vocab_size")?,
        None => g.tensor_shape("token_embd.weight")?[0],
    };
    let theta = match g.metadata(&key("rope.freq_base")) {
        Some(_) => g.get_f64(&key("rope.freq_base"))?,
        None => 10000.0,
    };
    let config = LlamaConfig {
        vocab_size,
        hidden,
        layers: usize_of("block_count")?,
        heads,
        kv_heads,
        head_dim,
        ffn: usize_of("feed_forward_length")?,
        rope_theta: theta,
        rms_eps: g.get_f64(&key("attention.layer_norm_rms_epsilon"))?,
        max_position: usize_of("context_length")?,
        rope_style: RopeStyle::Interleaved,
        tied_head: g.tensor_info("output.weight").is_none(),
    };
    config.validate()?;
    Ok(config)
}

/// A [`TensorSource`] over a GGUF file (tensors dequantised to f64 when asked for).
pub struct GgufSource(pub Arc<GgufFile>);

impl TensorSource for GgufSource {
    fn tensor(&self, name: &str) -> Result<Tensor<f64>> {
        self.0.tensor_f64(name)
    }
    fn shape(&self, name: &str) -> Result<Vec<usize>> {
        self.0.tensor_shape(name)
    }
    fn has(&self, name: &str) -> bool {
        self.0.tensor_info(name).is_some()
    }
}

impl ModelDir {
    /// Opens `dir`: the one `*.gguf` file in it, or config.json + model.safetensors (a
    /// path to a `.gguf` file works too).
    pub fn open(dir: &Path) -> Result<ModelDir> {
        let gguf_path = if dir.extension().is_some_and(|e| e == "gguf") {
            Some(dir.to_path_buf())
        } else {
            let entries = std::fs::read_dir(dir).map_err(|e| Error::File {
                path: dir.to_path_buf(),
                cause: e,
            })?;
            let mut found: Vec<PathBuf> = entries
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|e| e == "gguf"))
                .collect();
            found.sort();
            if found.len() > 1 {
                return Err(Error::Config {
                    path: dir.to_path_buf(),
                    detail: format!(
                        "{} .gguf files in the model directory; keep one",
                        found.len()
                    ),
                });
            }
            found.pop()
        };
        match gguf_path {
            Some(path) => {
                let g = GgufFile::read(&path)?;
                let config = config_from_gguf(&g)?;
                Ok(ModelDir {
                    dir: path,
                    config,
                    gguf: Some(Arc::new(g)),
                })
            }
            None => {
                let cfg = dir.join("config.json");
                if !cfg.exists() {
                    return Err(Error::Config {
                        path: dir.to_path_buf(),
                        detail: "no .gguf file and no config.json: not a model directory".into(),
                    });
                }
                Ok(ModelDir {
                    dir: dir.to_path_buf(),
                    config: LlamaConfig::from_hf_json(&cfg)?,
                    gguf: None,
                })
            }
        }
    }

    /// The public architecture.
    pub fn config(&self) -> &LlamaConfig {
        &self.config
    }

    /// The tokenizer (GGUF metadata or tokenizer.json).
    pub fn tokenizer(&self) -> Result<LlamaTokenizer> {
        match &self.gguf {
            Some(g) => LlamaTokenizer::from_gguf(g),
            None => LlamaTokenizer::from_file(&self.dir.join("tokenizer.json")),
        }
    }

    /// The lazy weight loader.
    pub fn loader(&self) -> Result<LlamaLoader> {
        match &self.gguf {
            Some(g) => LlamaLoader::new(
                self.config.clone(),
                TensorNames::Gguf,
                Box::new(GgufSource(g.clone())),
            ),
            None => LlamaLoader::from_hf_dir(&self.dir),
        }
    }

    /// The weights, loaded part by part while they are shared.
    pub fn params(&self) -> Result<Box<dyn LlamaParams>> {
        Ok(Box::new(self.loader()?))
    }

    /// Every weight at once (plaintext references).
    pub fn load_all(&self) -> Result<LlamaWeights> {
        LlamaWeights::load_all(&self.loader()?)
    }
}

impl LlamaParams for LlamaLoader {
    fn embed(&self) -> Result<Tensor<f64>> {
        LlamaLoader::embed(self)
    }
    fn layer(&self, i: usize) -> Result<super::model::LlamaLayerWeights> {
        LlamaLoader::layer(self, i)
    }
    fn final_norm(&self) -> Result<Vec<f64>> {
        LlamaLoader::final_norm(self)
    }
    fn lm_head(&self) -> Result<Option<Tensor<f64>>> {
        LlamaLoader::lm_head(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn repo() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
    }

    /// The real SmolLM2 GGUF, opened the way `generate` opens it (config from the
    /// metadata, tensors dequantised by the Rust reader, interleaved RoPE), gives the
    /// logits and greedy tokens of the independent numpy implementation
    /// (`scripts/llama_reference.py`, the `gguf` package's dequantiser) to 1e-9.
    #[test]
    fn smollm2_gguf_matches_numpy_reference() {
        let dir = repo().join(SMOLLM2_DIR);
        if !dir.join("SmolLM2-135M-Instruct.Q4_1.gguf").exists() {
            eprintln!(
                "SKIP: {} is absent (run scripts/fetch-smollm2.sh)",
                dir.display()
            );
            return;
        }
        let m = ModelDir::open(&dir).unwrap();
        let c = m.config();
        assert_eq!(
            (c.layers, c.hidden, c.heads, c.kv_heads, c.ffn, c.vocab_size),
            (30, 576, 9, 3, 1536, 49152)
        );
        assert!(c.tied_head);
        assert_eq!(c.rope_style, RopeStyle::Interleaved);
        let w = m.load_all().unwrap();
        let r = super::super::plain::check_against_reference(
            &w,
            repo().join("tests/data/smollm2_reference.json"),
        )
        .unwrap();
        println!(
            "SmolLM2 vs numpy: {} steps, max abs diff {:.2e}, tokens {}/{}",
            r.steps, r.max_abs_diff, r.tokens_agree, r.steps
        );
        assert!(r.max_abs_diff < 1e-9, "{}", r.max_abs_diff);
        assert_eq!(r.tokens_agree, r.steps);
        assert_eq!(r.topk_agree, r.steps);
    }

    /// A GGUF of another architecture, or a directory that holds no model, is an error
    /// naming it.
    #[test]
    fn unsupported_architecture_and_empty_directory_are_named() {
        use crate::gguf::{GgufValue, GgufWriter};
        let mut g = GgufWriter::new();
        g.metadata("general.architecture", GgufValue::String("mamba".into()));
        let bytes = g.to_bytes().unwrap();
        let f = GgufFile::from_bytes(bytes).unwrap();
        let e = config_from_gguf(&f).unwrap_err().to_string();
        assert!(e.contains("mamba"), "{e}");
        let dir = std::env::temp_dir().join(format!("tessera-empty-model-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let e = ModelDir::open(&dir).err().unwrap().to_string();
        assert!(e.contains("not a model directory"), "{e}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
