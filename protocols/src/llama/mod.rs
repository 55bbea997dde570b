//! Llama-family decoders outside the secure computation: configuration, weight loading
//! (Hugging Face safetensors; GGUF through a [`model::TensorSource`]), and the plaintext
//! f64 reference forward pass with a KV cache.

pub mod model;
pub mod plain;
