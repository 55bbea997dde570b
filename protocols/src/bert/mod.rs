//! BERT-family encoders outside the secure computation: model import (Hugging Face
//! `config.json` + `model.safetensors`), tokenisation (`tokenizer.json`), the plaintext
//! f64 reference forward pass, and a deterministic built-in demo model.
//!
//! The secure encoder ([`crate::models::bert`]) takes its weights and inputs from these
//! types and is checked against [`plain::forward`] / [`plain::sentence_embedding`].

pub mod model;
pub mod plain;
pub mod tokenize;

#[cfg(test)]
mod tests;

pub use model::{BertConfig, BertWeights, LayerWeights};
pub use plain::{
    check_input, erf, erfc, forward, gelu_exact, layer_norm_rows, sentence_embedding, softmax_rows,
};
pub use tokenize::{demo_tokenize, Encoded, Tokenizer};

/// Where `scripts/fetch-minilm.sh` puts all-MiniLM-L6-v2, relative to the repository root.
pub const MINILM_DIR: &str = "models/all-MiniLM-L6-v2";
