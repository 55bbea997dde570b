//! Tokenisation: a Hugging Face `tokenizer.json` through the `tokenizers` crate (pure
//! Rust, `fancy-regex` backend), and a tiny deterministic word hasher for the built-in
//! demo model, which has no vocabulary file.

use std::path::{Path, PathBuf};

use tessera::{Error, Result};
use tokenizers::TruncationDirection;

/// One tokenised input, as the encoder takes it. The three vectors have equal length.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Encoded {
    /// Token ids, including the special tokens (`[CLS]` first, `[SEP]` last).
    pub ids: Vec<u32>,
    /// Token-type (segment) ids; all 0 for a single sentence.
    pub type_ids: Vec<u32>,
    /// 1 for real tokens, 0 for padding.
    pub attention_mask: Vec<u32>,
}

impl Encoded {
    /// Number of tokens.
    pub fn len(&self) -> usize {
        self.ids.len()
    }

    /// True when there are no tokens.
    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }
}

/// A Hugging Face tokenizer loaded from `tokenizer.json`.
///
/// Padding and the truncation stored in the file are switched off: [`Tokenizer::encode`]
/// returns exactly the tokens of the text (attention mask all 1), truncated to the
/// caller's `max_len`.
pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    path: PathBuf,
}

impl Tokenizer {
    /// Loads `tokenizer.json`; errors name the file.
    pub fn from_file(path: &Path) -> Result<Tokenizer> {
        if let Err(source) = std::fs::metadata(path) {
            return Err(Error::File {
                path: path.to_path_buf(),
                cause: source,
            });
        }
        let mut inner = tokenizers::Tokenizer::from_file(path).map_err(|e| Error::Config {
            path: path.to_path_buf(),
            detail: format!("cannot load tokenizer: {e}"),
        })?;
        inner.with_padding(None);
        inner.with_truncation(None).map_err(|e| Error::Config {
            path: path.to_path_buf(),
            detail: format!("cannot switch off truncation: {e}"),
        })?;
        Ok(Tokenizer {
            inner,
            path: path.to_path_buf(),
        })
    }

    fn error(&self, detail: String) -> Error {
        Error::Config {
            path: self.path.clone(),
            detail,
        }
    }

    /// Tokenises one text with the special tokens of the file's post-processor
    /// (`[CLS] ... [SEP]` for BERT), keeping at most `max_len` tokens in all: the text's
    /// tokens are cut from the right so the special tokens stay, as Hugging Face's
    /// truncation does. No padding.
    pub fn encode(&self, text: &str, max_len: usize) -> Result<Encoded> {
        let special = self
            .inner
            .get_post_processor()
            .map_or(0, |p| tokenizers::PostProcessor::added_tokens(p, false));
        if max_len <= special {
            return Err(self.error(format!(
                "max_len {max_len} leaves no room for text beside the {special} special tokens"
            )));
        }
        let mut enc = self
            .inner
            .encode(text, false)
            .map_err(|e| self.error(format!("cannot encode {text:?}: {e}")))?;
        enc.truncate(max_len - special, 0, TruncationDirection::Right);
        let enc = self
            .inner
            .post_process(enc, None, true)
            .map_err(|e| self.error(format!("cannot add special tokens to {text:?}: {e}")))?;
        Ok(Encoded {
            ids: enc.get_ids().to_vec(),
            type_ids: enc.get_type_ids().to_vec(),
            attention_mask: enc.get_attention_mask().to_vec(),
        })
    }
}

/// Id of `[CLS]` in the demo vocabulary.
pub const DEMO_CLS: u32 = 1;
/// Id of `[SEP]` in the demo vocabulary.
pub const DEMO_SEP: u32 = 2;
/// First id a word can map to in the demo vocabulary (0 is padding).
const DEMO_FIRST_WORD: u32 = 3;

/// Tokeniser for the built-in demo model: the text is lowercased and split into runs of
/// alphanumeric characters; each word maps to `3 + fnv1a64(word) % (vocab - 3)`; the
/// result is `[CLS]=1, words..., [SEP]=2`, truncated to `max_len` tokens (words cut from
/// the right). Type ids 0, mask 1. Deterministic on every platform.
///
/// # Panics
/// If `vocab < 4` or `max_len < 2`.
pub fn demo_tokenize(text: &str, vocab: usize, max_len: usize) -> Encoded {
    assert!(
        vocab > DEMO_FIRST_WORD as usize,
        "demo_tokenize: vocab {vocab} < 4"
    );
    assert!(max_len >= 2, "demo_tokenize: max_len {max_len} < 2");
    let words = vocab as u64 - u64::from(DEMO_FIRST_WORD);
    let lower = text.to_lowercase();
    let mut ids = vec![DEMO_CLS];
    for word in lower
        .split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .take(max_len - 2)
    {
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for b in word.bytes() {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
        ids.push(DEMO_FIRST_WORD + (h % words) as u32);
    }
    ids.push(DEMO_SEP);
    let n = ids.len();
    Encoded {
        ids,
        type_ids: vec![0; n],
        attention_mask: vec![1; n],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn demo_tokenize_is_deterministic_and_bounded() {
        let a = demo_tokenize("Hello, World! hello", 512, 16);
        assert_eq!(a.ids.len(), 5);
        assert_eq!(a.ids[0], DEMO_CLS);
        assert_eq!(a.ids[4], DEMO_SEP);
        assert_eq!(a.ids[1], a.ids[2 + 1], "case-insensitive");
        assert!(a.ids[1..4].iter().all(|&i| (3..512).contains(&i)));
        assert_eq!(a, demo_tokenize("hello world HELLO", 512, 16));
        assert_eq!(a.type_ids, vec![0; 5]);
        assert_eq!(a.attention_mask, vec![1; 5]);
        // FNV-1a of "hello" is 0xa430d84680aabd0b: 3 + that % 509.
        assert_eq!(a.ids[1], 3 + (0xa430_d846_80aa_bd0b_u64 % 509) as u32);
        let t = demo_tokenize("one two three four five", 512, 4);
        assert_eq!(t.ids.len(), 4);
        assert_eq!(*t.ids.last().unwrap(), DEMO_SEP);
        assert_eq!(demo_tokenize("", 512, 4).ids, vec![DEMO_CLS, DEMO_SEP]);
    }

    #[test]
    fn tokenizer_missing_file_names_it() {
        let Err(e) = Tokenizer::from_file(Path::new("/nonexistent/tokenizer.json")) else {
            panic!("loaded a missing file");
        };
        assert!(e.to_string().contains("/nonexistent/tokenizer.json"), "{e}");
    }
}
