//! The byte-level BPE tokenizer of Llama-family models (SmolLM2 and other `gpt2`-type
//! vocabularies), read from GGUF metadata or from a Hugging Face `tokenizer.json`.
//!
//! From a GGUF file (keys as in ggml's `docs/gguf.md`, "Tokenizer"):
//! `tokenizer.ggml.model` must be `gpt2` (byte-level BPE); `tokenizer.ggml.tokens`,
//! `tokenizer.ggml.merges` (`"a b"` strings, by rank) and `tokenizer.ggml.token_type`
//! (3 = control, 4 = user-defined: both are matched verbatim in text, as added tokens)
//! give the vocabulary; `tokenizer.ggml.pre` picks the pre-tokenizer: `smollm` splits
//! off every numeric character (`\p{N}`) and then applies the GPT-2 regex (llama.cpp's
//! `LLAMA_VOCAB_PRE_TYPE_SMOLLM`, Hugging Face's `Digits(individual_digits)` +
//! `ByteLevel`), `gpt-2` applies the GPT-2 regex only. The BPE itself runs in the
//! `tokenizers` crate, built in code from these tables.
//!
//! [`LlamaTokenizer::chat_prompt`] renders the model's `tokenizer.chat_template` (Jinja,
//! through `minijinja` with Python string methods and `trim_blocks`/`lstrip_blocks` as
//! transformers' `apply_chat_template`), falling back to ChatML.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use tessera::{Error, Result};
use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::models::bpe::BPE;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::PreTokenizerWrapper;
use tokenizers::{AddedToken, DecoderWrapper};

use crate::gguf::GgufFile;

/// GGUF token type of control tokens (`<|im_start|>`, ...).
const TOKEN_TYPE_CONTROL: i32 = 3;
/// GGUF token type of user-defined tokens.
const TOKEN_TYPE_USER_DEFINED: i32 = 4;

/// The prompt format used when a model has no chat template: ChatML.
pub const CHATML_TEMPLATE: &str = "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";

/// GPT-2's map from bytes to printable characters (`bytes_to_unicode`): the printable
/// Latin-1 bytes map to themselves, the others to U+0100 onwards in byte order.
fn bytes_to_unicode() -> [char; 256] {
    let mut map = ['\0'; 256];
    let mut next = 256u32;
    for b in 0..=255u8 {
        let printable = matches!(b, b'!'..=b'~' | 0xa1..=0xac | 0xae..=0xff);
        map[b as usize] = if printable {
            char::from(b)
        } else {
            let c = char::from_u32(next).unwrap_or('\u{fffd}');
            next += 1;
            c
        };
    }
    map
}

/// A Llama-family byte-level BPE tokenizer.
pub struct LlamaTokenizer {
    inner: tokenizers::Tokenizer,
    /// The bytes each id stands for (special tokens: their text).
    pieces: Vec<Vec<u8>>,
    bos: Option<u32>,
    eos: Option<u32>,
    add_bos: bool,
    chat_template: Option<String>,
    source: PathBuf,
}

impl std::fmt::Debug for LlamaTokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LlamaTokenizer")
            .field("source", &self.source)
            .field("vocab_size", &self.pieces.len())
            .field("bos", &self.bos)
            .field("eos", &self.eos)
            .field("add_bos", &self.add_bos)
            .finish()
    }
}

fn tok_error(path: &Path, detail: impl Into<String>) -> Error {
    Error::Config {
        path: path.to_path_buf(),
        detail: detail.into(),
    }
}

/// The bytes of a byte-level token string (characters outside the byte map stand for
/// their own UTF-8).
fn byte_level_bytes(token: &str, inverse: &HashMap<char, u8>) -> Vec<u8> {
    let mut out = Vec::with_capacity(token.len());
    for c in token.chars() {
        match inverse.get(&c) {
            Some(&b) => out.push(b),
            None => {
                let mut buf = [0u8; 4];
                out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
            }
        }
    }
    out
}

fn inverse_byte_map() -> HashMap<char, u8> {
    bytes_to_unicode()
        .iter()
        .enumerate()
        .map(|(b, &c)| (c, b as u8))
        .collect()
}

impl LlamaTokenizer {
    /// Builds the tokenizer from a GGUF file's `tokenizer.*` metadata. Errors name the
    /// file and the key (an unsupported `tokenizer.ggml.model` or `tokenizer.ggml.pre`,
    /// a malformed merge, a token-type table of the wrong length, ...).
    pub fn from_gguf(g: &GgufFile) -> Result<LlamaTokenizer> {
        let path = g.path();
        let err = |d: String| tok_error(path, d);
        let model = g.get_str("tokenizer.ggml.model")?;
        if model != "gpt2" {
            return Err(err(format!(
                "GGUF metadata tokenizer.ggml.model is {model:?}; only \"gpt2\" (byte-level BPE) is supported"
            )));
        }
        let pre = g.get_str("tokenizer.ggml.pre")?;
        let split_digits = match pre {
            "smollm" => true,
            "gpt-2" => false,
            other => {
                return Err(err(format!(
                    "GGUF metadata tokenizer.ggml.pre is {other:?}; supported pre-tokenizers are \"smollm\" and \"gpt-2\""
                )))
            }
        };
        let tokens = g.get_str_array("tokenizer.ggml.tokens")?;
        let merges = g.get_str_array("tokenizer.ggml.merges")?;
        let types = match g.metadata("tokenizer.ggml.token_type") {
            Some(_) => g.get_i32_array("tokenizer.ggml.token_type")?,
            None => vec![1; tokens.len()],
        };
        if types.len() != tokens.len() {
            return Err(err(format!(
                "GGUF metadata tokenizer.ggml.token_type has {} entries for {} tokens",
                types.len(),
                tokens.len()
            )));
        }
        let n = u32::try_from(tokens.len())
            .map_err(|_| err("GGUF metadata tokenizer.ggml.tokens: too many tokens".into()))?;
        let mut vocab = tokenizers::models::bpe::Vocab::default();
        for (id, t) in (0..n).zip(&tokens) {
            if vocab.insert(t.to_string(), id).is_some() {
                return Err(err(format!(
                    "GGUF metadata tokenizer.ggml.tokens[{id}]: token {t:?} appears twice"
                )));
            }
        }
        let merges = merges
            .iter()
            .enumerate()
            .map(|(i, m)| match m.split_once(' ') {
                Some((a, b)) if !a.is_empty() && !b.is_empty() && !b.contains(' ') => {
                    Ok((a.to_string(), b.to_string()))
                }
                _ => Err(err(format!(
                    "GGUF metadata tokenizer.ggml.merges[{i}]: {m:?} is not two tokens separated by one space"
                ))),
            })
            .collect::<Result<Vec<_>>>()?;
        let bpe = BPE::builder()
            .vocab_and_merges(vocab, merges)
            .build()
            .map_err(|e| err(format!("cannot build the BPE model: {e}")))?;
        let mut inner = tokenizers::Tokenizer::new(bpe);
        let byte_level: PreTokenizerWrapper = ByteLevel::new(false, true, true).into();
        let pre_tokenizer: PreTokenizerWrapper = if split_digits {
            Sequence::new(vec![Digits::new(true).into(), byte_level]).into()
        } else {
            byte_level
        };
        inner.with_pre_tokenizer(Some(pre_tokenizer));
        inner.with_decoder(Some(ByteLevelDecoder::default()));
        let added = |ty: i32| -> Vec<AddedToken> {
            tokens
                .iter()
                .zip(&types)
                .filter(|(_, &t)| t == ty)
                .map(|(s, _)| AddedToken::from(s.to_string(), true).normalized(false))
                .collect()
        };
        inner.add_special_tokens(&added(TOKEN_TYPE_CONTROL));
        let user: Vec<AddedToken> = added(TOKEN_TYPE_USER_DEFINED)
            .into_iter()
            .map(|t| AddedToken::from(t.content, false).normalized(false))
            .collect();
        inner.add_tokens(&user);

        let inverse = inverse_byte_map();
        let pieces = tokens
            .iter()
            .zip(&types)
            .map(|(t, &ty)| {
                if ty == TOKEN_TYPE_CONTROL || ty == TOKEN_TYPE_USER_DEFINED {
                    t.as_bytes().to_vec()
                } else {
                    byte_level_bytes(t, &inverse)
                }
            })
            .collect();
        let opt_id = |key: &str| -> Result<Option<u32>> {
            match g.metadata(key) {
                None => Ok(None),
                Some(_) => {
                    let id = g.get_u32(key)?;
                    if id >= n {
                        return Err(err(format!(
                            "GGUF metadata {key}: id {id} is outside the vocabulary of {n}"
                        )));
                    }
                    Ok(Some(id))
                }
            }
        };
        let add_bos = match g.metadata("tokenizer.ggml.add_bos_token") {
            None => false,
            Some(_) => g.get_bool("tokenizer.ggml.add_bos_token")?,
        };
        let chat_template = match g.metadata("tokenizer.chat_template") {
            None => None,
            Some(_) => Some(g.get_str("tokenizer.chat_template")?.to_string()),
        };
        let bos = opt_id("tokenizer.ggml.bos_token_id")?;
        if add_bos && bos.is_none() {
            return Err(err(
                "GGUF metadata tokenizer.ggml.add_bos_token is true but tokenizer.ggml.bos_token_id is missing".into(),
            ));
        }
        Ok(LlamaTokenizer {
            inner,
            pieces,
            bos,
            eos: opt_id("tokenizer.ggml.eos_token_id")?,
            add_bos,
            chat_template,
            source: path.to_path_buf(),
        })
    }

    /// Loads a Hugging Face `tokenizer.json` (the Hugging Face model layout). It must be
    /// byte-level (its decoder `ByteLevel`). When a `tokenizer_config.json` lies beside
    /// it, its `chat_template`, `bos_token`, `eos_token` and `add_bos_token` are used.
    pub fn from_file(tokenizer_json: &Path) -> Result<LlamaTokenizer> {
        let path = tokenizer_json;
        if let Err(source) = std::fs::metadata(path) {
            return Err(Error::File {
                path: path.to_path_buf(),
                cause: source,
            });
        }
        let mut inner = tokenizers::Tokenizer::from_file(path)
            .map_err(|e| tok_error(path, format!("cannot load tokenizer: {e}")))?;
        inner.with_padding(None);
        inner
            .with_truncation(None)
            .map_err(|e| tok_error(path, format!("cannot switch off truncation: {e}")))?;
        if !matches!(inner.get_decoder(), Some(DecoderWrapper::ByteLevel(_))) {
            return Err(tok_error(
                path,
                "only byte-level BPE tokenizers (decoder ByteLevel) are supported",
            ));
        }
        let n = inner.get_vocab_size(true);
        let specials = inner.get_added_tokens_decoder();
        let inverse = inverse_byte_map();
        let pieces = (0..n as u32)
            .map(|id| match (specials.get(&id), inner.id_to_token(id)) {
                (Some(t), _) => t.content.as_bytes().to_vec(),
                (None, Some(t)) => byte_level_bytes(&t, &inverse),
                (None, None) => Vec::new(),
            })
            .collect();

        let config_path = path.with_file_name("tokenizer_config.json");
        let config: serde_json::Value = match std::fs::read_to_string(&config_path) {
            Ok(text) => serde_json::from_str(&text)
                .map_err(|e| tok_error(&config_path, format!("not valid JSON: {e}")))?,
            Err(_) => serde_json::Value::Null,
        };
        // `eos_token` is a string or {"content": ...}.
        let token_id = |key: &str| -> Option<u32> {
            let v = config.get(key)?;
            let s = v.as_str().or_else(|| v.get("content")?.as_str())?;
            inner.token_to_id(s)
        };
        let bos = token_id("bos_token");
        let eos = token_id("eos_token");
        let add_bos = config
            .get("add_bos_token")
            .and_then(|v| v.as_bool())
            .unwrap_or(false)
            && bos.is_some();
        let chat_template = config
            .get("chat_template")
            .and_then(|v| v.as_str())
            .map(String::from);
        Ok(LlamaTokenizer {
            inner,
            pieces,
            bos,
            eos,
            add_bos,
            chat_template,
            source: path.to_path_buf(),
        })
    }

    fn err(&self, detail: impl Into<String>) -> Error {
        tok_error(&self.source, detail)
    }

    /// Token ids of `text`. Special tokens written in the text (`<|im_start|>`, ...) map
    /// to their ids; the BOS id is prepended only when the model's `add_bos_token` is
    /// true (it is false for SmolLM2).
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        let enc = self
            .inner
            .encode(text, false)
            .map_err(|e| self.err(format!("cannot tokenise: {e}")))?;
        let mut ids = Vec::with_capacity(enc.len() + 1);
        if self.add_bos {
            ids.extend(self.bos);
        }
        ids.extend_from_slice(enc.get_ids());
        Ok(ids)
    }

    /// The bytes token `id` stands for (special tokens: their text).
    pub fn token_bytes(&self, id: u32) -> Result<&[u8]> {
        self.pieces
            .get(id as usize)
            .map(Vec::as_slice)
            .ok_or_else(|| {
                self.err(format!(
                    "token id {id} is outside the vocabulary of {}",
                    self.pieces.len()
                ))
            })
    }

    /// The text of `ids`, special tokens included as their text. Bytes that do not form
    /// valid UTF-8 become U+FFFD.
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        let mut bytes = Vec::new();
        for &id in ids {
            bytes.extend_from_slice(self.token_bytes(id)?);
        }
        Ok(String::from_utf8_lossy(&bytes).into_owned())
    }

    /// The text of one token on its own (a token holding part of a UTF-8 character
    /// gives U+FFFD; use [`StreamDecoder`] to print tokens as they are generated).
    pub fn decode_token(&self, id: u32) -> Result<String> {
        self.decode(&[id])
    }

    /// A decoder that turns ids into text one at a time, holding back incomplete UTF-8.
    pub fn stream(&self) -> StreamDecoder<'_> {
        StreamDecoder {
            tok: self,
            pending: Vec::new(),
        }
    }

    /// The id of a token string (special tokens included), if in the vocabulary.
    pub fn token_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    /// The end-of-sequence id (`<|im_end|>` = 2 for SmolLM2-Instruct).
    pub fn eos_id(&self) -> Option<u32> {
        self.eos
    }

    /// The beginning-of-sequence id, if the model names one.
    pub fn bos_id(&self) -> Option<u32> {
        self.bos
    }

    /// Whether [`LlamaTokenizer::encode`] prepends the BOS id.
    pub fn add_bos(&self) -> bool {
        self.add_bos
    }

    /// Number of token ids (special tokens included).
    pub fn vocab_size(&self) -> usize {
        self.pieces.len()
    }

    /// The model's Jinja chat template, if it has one.
    pub fn chat_template(&self) -> Option<&str> {
        self.chat_template.as_deref()
    }

    /// The prompt for one user message: the model's chat template (ChatML when it has
    /// none) rendered with `messages = [{role: user, content: user}]` and
    /// `add_generation_prompt = true`. For SmolLM2-Instruct this is
    /// `<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by
    /// Hugging Face<|im_end|>\n<|im_start|>user\n{user}<|im_end|>\n<|im_start|>assistant\n`.
    pub fn chat_prompt(&self, user: &str) -> Result<String> {
        let template = self.chat_template.as_deref().unwrap_or(CHATML_TEMPLATE);
        let token_text = |id: Option<u32>| {
            id.and_then(|i| self.pieces.get(i as usize))
                .map(|b| String::from_utf8_lossy(b).into_owned())
                .unwrap_or_default()
        };
        render_chat(template, user, &token_text(self.bos), &token_text(self.eos))
            .map_err(|e| self.err(format!("chat template: {e:#}")))
    }
}

fn render_chat(
    template: &str,
    user: &str,
    bos: &str,
    eos: &str,
) -> std::result::Result<String, minijinja::Error> {
    let mut env = minijinja::Environment::new();
    env.set_trim_blocks(true);
    env.set_lstrip_blocks(true);
    env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
    env.add_function(
        "raise_exception",
        |msg: String| -> std::result::Result<String, minijinja::Error> {
            Err(minijinja::Error::new(
                minijinja::ErrorKind::InvalidOperation,
                msg,
            ))
        },
    );
    let tmpl = env.template_from_str(template)?;
    tmpl.render(minijinja::context! {
        messages => vec![minijinja::context! { role => "user", content => user }],
        add_generation_prompt => true,
        bos_token => bos,
        eos_token => eos,
    })
}

/// Turns generated ids into text as they come, holding back the bytes of a UTF-8
/// character split across tokens until it is complete.
pub struct StreamDecoder<'a> {
    tok: &'a LlamaTokenizer,
    pending: Vec<u8>,
}

impl StreamDecoder<'_> {
    /// Adds one id; returns the text that is now complete (possibly empty). Invalid
    /// bytes (not merely incomplete ones) come out as U+FFFD.
    pub fn push(&mut self, id: u32) -> Result<String> {
        self.pending.extend_from_slice(self.tok.token_bytes(id)?);
        let mut out = String::new();
        loop {
            match std::str::from_utf8(&self.pending) {
                Ok(s) => {
                    out.push_str(s);
                    self.pending.clear();
                    return Ok(out);
                }
                Err(e) => {
                    let good = e.valid_up_to();
                    out.push_str(std::str::from_utf8(&self.pending[..good]).unwrap_or_default());
                    match e.error_len() {
                        // Incomplete character at the end: keep it for the next token.
                        None => {
                            self.pending.drain(..good);
                            return Ok(out);
                        }
                        Some(bad) => {
                            out.push('\u{fffd}');
                            self.pending.drain(..good + bad);
                        }
                    }
                }
            }
        }
    }

    /// Ends the stream: whatever incomplete bytes are left, as U+FFFD.
    pub fn finish(self) -> String {
        String::from_utf8_lossy(&self.pending).into_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gguf::{GgufValue, GgufWriter};

    const SMOLLM2_TEMPLATE: &str = "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";

    fn strs(v: &[&str]) -> GgufValue {
        GgufValue::Array(v.iter().map(|s| GgufValue::String(s.to_string())).collect())
    }

    /// A tiny vocabulary: 3 control tokens, the 256 byte tokens, and merged tokens.
    fn tiny(edit: impl FnOnce(&mut GgufWriter)) -> Result<LlamaTokenizer> {
        let map = bytes_to_unicode();
        let mut tokens: Vec<String> = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        tokens.extend(map.iter().map(|c| c.to_string()));
        let merges = ["h e", "l l", "he ll", "hell o", "Ġ w", "Ġw o", "1 2", "o r"];
        for m in merges {
            tokens.push(m.replace(' ', ""));
        }
        let mut types = vec![GgufValue::I32(3); 3];
        types.extend(std::iter::repeat_n(GgufValue::I32(1), tokens.len() - 3));
        let token_refs: Vec<&str> = tokens.iter().map(String::as_str).collect();
        let mut w = GgufWriter::new();
        w.metadata("tokenizer.ggml.model", GgufValue::String("gpt2".into()))
            .metadata("tokenizer.ggml.pre", GgufValue::String("smollm".into()))
            .metadata("tokenizer.ggml.tokens", strs(&token_refs))
            .metadata("tokenizer.ggml.merges", strs(&merges))
            .metadata("tokenizer.ggml.token_type", GgufValue::Array(types))
            .metadata("tokenizer.ggml.bos_token_id", GgufValue::U32(1))
            .metadata("tokenizer.ggml.eos_token_id", GgufValue::U32(2))
            .metadata("tokenizer.ggml.add_bos_token", GgufValue::Bool(false));
        edit(&mut w);
        LlamaTokenizer::from_gguf(&GgufFile::from_bytes(w.to_bytes()?)?)
    }

    /// Id of a single byte's token in the tiny vocabulary.
    fn b(c: u8) -> u32 {
        3 + c as u32
    }

    #[test]
    fn tiny_tokenizer_encodes_decodes_and_streams() {
        let t = tiny(|_| {}).unwrap();
        assert_eq!(t.vocab_size(), 3 + 256 + 8);
        assert_eq!(t.eos_id(), Some(2));
        assert!(!t.add_bos());
        let id = |s: &str| t.token_id(s).unwrap();
        let (hello, gwo) = (id("hello"), id("Ġwo"));
        assert_eq!((hello, gwo), (3 + 256 + 3, 3 + 256 + 5));
        // "hello world": hello | Ġwo r l d (merge "o r" ranks below "Ġw o").
        assert_eq!(
            t.encode("hello world").unwrap(),
            vec![hello, gwo, b(b'r'), b(b'l'), b(b'd')]
        );
        // Digits are split off one by one, so the merge "1 2" never applies.
        assert_eq!(t.encode("12").unwrap(), vec![b(b'1'), b(b'2')]);
        assert_eq!(t.encode("x12").unwrap(), vec![b(b'x'), b(b'1'), b(b'2')]);
        // Special tokens in text map to their ids.
        assert_eq!(
            t.encode("<|im_start|>hello<|im_end|>").unwrap(),
            vec![1, hello, 2]
        );
        // Multi-byte characters are byte tokens; decoding puts them back together.
        let ids = t.encode("é!").unwrap();
        assert_eq!(ids, vec![b(0xc3), b(0xa9), b(b'!')]);
        assert_eq!(t.decode(&ids).unwrap(), "é!");
        assert_eq!(t.decode_token(b(0xc3)).unwrap(), "\u{fffd}");
        let mut s = t.stream();
        assert_eq!(s.push(b(0xc3)).unwrap(), "");
        assert_eq!(s.push(b(0xa9)).unwrap(), "é");
        assert_eq!(s.push(b(0xff)).unwrap(), "\u{fffd}");
        assert_eq!(s.push(hello).unwrap(), "hello");
        assert_eq!(s.push(b(0xe6)).unwrap(), "");
        assert_eq!(s.finish(), "\u{fffd}");
        for text in ["hello world", "  a\n\n b\t", "東京 🙂 12.5", "<|im_end|>x"] {
            let ids = t.encode(text).unwrap();
            assert_eq!(t.decode(&ids).unwrap(), text);
        }
        let e = t.decode(&[100_000]).unwrap_err().to_string();
        assert!(
            e.contains("token id 100000 is outside the vocabulary of 267"),
            "{e}"
        );
    }

    #[test]
    fn tiny_tokenizer_bos_and_chat_templates() {
        let t = tiny(|w| {
            w.metadata("tokenizer.ggml.add_bos_token", GgufValue::Bool(true));
        })
        .unwrap();
        assert_eq!(t.encode("hello").unwrap(), vec![1, 3 + 256 + 3]);
        // No template: ChatML.
        assert_eq!(
            t.chat_prompt("hi").unwrap(),
            "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
        );
        let t = tiny(|w| {
            w.metadata(
                "tokenizer.chat_template",
                GgufValue::String(SMOLLM2_TEMPLATE.into()),
            );
        })
        .unwrap();
        assert_eq!(
            t.chat_prompt("What is 2+2?").unwrap(),
            "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n"
        );
        // bos/eos strings, Python string methods, raise_exception.
        let t = tiny(|w| {
            w.metadata(
                "tokenizer.chat_template",
                GgufValue::String(
                    "{{ bos_token }}{% for m in messages %}{{ m['content'].strip().upper() }}{{ eos_token }}{% endfor %}".into(),
                ),
            );
        })
        .unwrap();
        assert_eq!(t.chat_prompt("  hi ").unwrap(), "<|im_start|>HI<|im_end|>");
        let t = tiny(|w| {
            w.metadata(
                "tokenizer.chat_template",
                GgufValue::String("{{ raise_exception('no users here') }}".into()),
            );
        })
        .unwrap();
        let e = t.chat_prompt("x").unwrap_err().to_string();
        assert!(
            e.contains("chat template") && e.contains("no users here"),
            "{e}"
        );
    }

    #[test]
    fn tokenizer_json_layout_loads_the_same_tokenizer() {
        let t = tiny(|_| {}).unwrap();
        let dir = std::env::temp_dir().join(format!("tessera-tok-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let json = dir.join("tokenizer.json");
        t.inner.save(&json, false).unwrap();
        std::fs::write(
            dir.join("tokenizer_config.json"),
            r#"{"eos_token": {"content": "<|im_end|>"}, "bos_token": "<|im_start|>",
                "add_bos_token": false, "chat_template": "{{ messages[0]['content'] }}!"}"#,
        )
        .unwrap();
        let h = LlamaTokenizer::from_file(&json).unwrap();
        assert_eq!(
            (h.vocab_size(), h.eos_id(), h.bos_id()),
            (267, Some(2), Some(1))
        );
        for text in ["hello world 12", "<|im_start|>é<|im_end|>"] {
            let ids = t.encode(text).unwrap();
            assert_eq!(h.encode(text).unwrap(), ids);
            assert_eq!(h.decode(&ids).unwrap(), text);
        }
        assert_eq!(h.chat_prompt("hi").unwrap(), "hi!");
        let e = LlamaTokenizer::from_file(&dir.join("absent.json")).unwrap_err();
        assert!(e.to_string().contains("absent.json"));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn unsupported_tokenizers_are_named() {
        for (key, value, want) in [
            (
                "tokenizer.ggml.model",
                "llama",
                "tokenizer.ggml.model is \"llama\"; only \"gpt2\"",
            ),
            (
                "tokenizer.ggml.pre",
                "qwen2",
                "tokenizer.ggml.pre is \"qwen2\"; supported",
            ),
        ] {
            let e = tiny(|w| {
                w.metadata(key, GgufValue::String(value.into()));
            })
            .unwrap_err()
            .to_string();
            assert!(e.contains(want), "{e}");
        }
        let e = tiny(|w| {
            w.metadata("tokenizer.ggml.merges", strs(&["h e", "bad"]));
        })
        .unwrap_err()
        .to_string();
        assert!(e.contains("tokenizer.ggml.merges[1]: \"bad\""), "{e}");
        let e = tiny(|w| {
            w.metadata("tokenizer.ggml.token_type", GgufValue::Array(vec![]));
        })
        .unwrap_err()
        .to_string();
        assert!(e.contains("token_type has 0 entries for 267 tokens"), "{e}");
        let e = tiny(|w| {
            w.metadata("tokenizer.ggml.eos_token_id", GgufValue::U32(9999));
        })
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("tokenizer.ggml.eos_token_id: id 9999 is outside"),
            "{e}"
        );
    }

    /// The real SmolLM2-135M-Instruct GGUF (fetched by scripts/fetch-smollm2.sh) against
    /// the ids of tests/data/smollm2_tokens.json (scripts/smollm2_tokens.py).
    #[test]
    fn smollm2_matches_reference_ids() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let model = root.join("models/SmolLM2-135M-Instruct/SmolLM2-135M-Instruct.Q4_1.gguf");
        if !model.exists() {
            eprintln!(
                "SKIP: {} is absent (run scripts/fetch-smollm2.sh)",
                model.display()
            );
            return;
        }
        let reference: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(root.join("tests/data/smollm2_tokens.json")).unwrap(),
        )
        .unwrap();
        let g = GgufFile::read(&model).unwrap();
        let t = LlamaTokenizer::from_gguf(&g).unwrap();
        assert_eq!(t.vocab_size(), 49152);
        assert_eq!(t.eos_id(), Some(2));
        assert!(!t.add_bos());
        let user = reference["chat_user"].as_str().unwrap();
        assert_eq!(
            t.chat_prompt(user).unwrap(),
            reference["chat_prompt"].as_str().unwrap()
        );
        let cases = reference["cases"].as_array().unwrap();
        assert!(cases.len() >= 10);
        for case in cases {
            let text = case["text"].as_str().unwrap();
            let want: Vec<u32> = case["ids"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_u64().unwrap() as u32)
                .collect();
            let ids = t.encode(text).unwrap();
            assert_eq!(ids, want, "{text:?}");
            assert_eq!(t.decode(&ids).unwrap(), text);
            let mut s = t.stream();
            let mut streamed = String::new();
            for &id in &ids {
                streamed.push_str(&s.push(id).unwrap());
            }
            streamed.push_str(&s.finish());
            assert_eq!(streamed, text);
        }
    }
}
