//! Model families, each one file composing [`crate::nn`] modules (as candle-transformers'
//! `models/bert.rs`, `models/llama.rs`). Import, tokenisation and the plaintext f64
//! references live beside them in [`crate::bert`] and [`crate::llama`].

pub mod bert;
pub mod llama;
pub mod resnet;
