//! Llama-family decoders outside the secure computation: configuration, weight loading
//! (Hugging Face safetensors or GGUF, [`load::ModelDir`]), the byte-level BPE tokenizer
//! and chat template, and the plaintext f64 reference forward pass with a KV cache. The
//! secure decoder is [`crate::models::llama`].

pub mod load;
pub mod model;
pub mod plain;
pub mod tokenizer;
