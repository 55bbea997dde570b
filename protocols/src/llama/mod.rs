//! Llama-family decoder models: tokenizer (GGUF or Hugging Face `tokenizer.json`).

pub mod tokenizer;
