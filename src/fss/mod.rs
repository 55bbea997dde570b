//! Function secret sharing (FSS): distributed point functions (DPF) and
//! distributed comparison functions (DCF) over the group Z_2^64 (or vectors of
//! it), as pure synchronous maths — no I/O, no protocol state.
//!
//! A dealer calls [`dpf_gen`] / [`dcf_gen`] to split a function into two keys;
//! each party evaluates its key locally and the two outputs are additive
//! shares: `eval0(x) + eval1(x) == f(x)` (wrapping, elementwise).
//!
//! # Design
//!
//! * **PRG** ([`prg`]): fixed-key AES-128 in Matyas–Meyer–Oseas mode,
//!   `G_i(s) = AES_k(s ^ i) ^ s ^ i`. Tree nodes are a single `u128` whose least
//!   significant bit is the control bit `t` and whose other 127 bits are the
//!   seed; expanding a node is one AES block per child, and the child's control
//!   bit is the low bit of that block. Group elements ("Convert" in the papers)
//!   come from a second fixed AES key, two `u64` per block. All batched paths
//!   hand 8–16 blocks at a time to `encrypt_blocks` so the AES-NI pipeline is
//!   kept full.
//! * **DPF** ([`dpf`]): Boyle–Gilboa–Ishai CCS'16, Fig. 1, with early
//!   termination by one level when `L == 1` (a 128-bit leaf carries two
//!   `u64` outputs), which halves the AES work of full-domain evaluation.
//! * **DCF** ([`dcf`]): Boyle et al. Eurocrypt'21, Fig. 3 (`x < alpha`), with a
//!   per-level value correction word `V_CW`.
//! * **Bit DCF** ([`bdcf`]): the DCF over Z_2 (one value bit per level) with a
//!   128-bit early-termination leaf, for comparisons consumed through a masked opening
//!   of the result bit (DReLU / ReLU of `material::FssRequest::DreluBit`).
//! * **Correction-word packing**: the seed correction `s_CW` always has a zero
//!   low bit (it is the XOR of two seeds), so the left control-bit correction
//!   `t_CW^L` is stored in that bit and the right ones `t_CW^R` of all levels in
//!   one 64-bit mask.
//!
//! # Key layout and size
//!
//! Keys serialise to little-endian `u64` words (see `to_words`):
//! one header word (version, kind, `n`, party, flags, `L`), the root node
//! (2 words), `d` seed corrections (2 words each), the `t_CW^R` mask (1 word),
//! then the value corrections. With `n` input bits and `L` output words:
//!
//! * DPF: `d = n - e` tree levels (`e = 1` if `L == 1`, else `0`), final
//!   correction of `L * 2^e` words:
//!   `8 * (4 + 2*d + L*2^e)` bytes — 1056 B for `n = 64, L = 1`.
//! * DCF: `n` levels, each with a seed correction and `L` value-correction
//!   words, plus `L` final words: `8 * (4 + n*(2 + L) + L)` bytes —
//!   1576 B for `n = 64, L = 1` and 928 B for `n = 37, L = 1`.

pub mod bdcf;
pub mod dcf;
pub mod dpf;
pub mod material;
pub mod prg;

pub use bdcf::{bdcf_eval_words, bdcf_gen, bdcf_key_words, BDCF_EARLY};
pub use dcf::{dcf_gen, dcf_gen_gt, DcfKey};
pub use dpf::{dpf_gen, dpf_gen_early, DpfKey, MAX_EARLY};

/// Errors from FSS key generation, evaluation and (de)serialisation.
///
/// Every variant names the field or parameter at fault so that a malformed key
/// received from a dealer can be diagnosed without a debugger.
#[derive(Debug, thiserror::Error)]
pub enum FssError {
    /// The input bit width `n_bits` is outside `1..=64`.
    #[error("n_bits = {0} is out of range: must be in 1..=64")]
    InvalidBitWidth(u32),
    /// `alpha` has bits set at or above position `n_bits`.
    #[error("alpha = {alpha:#x} does not fit in n_bits = {n_bits} bits")]
    AlphaOutOfRange {
        /// The offending alpha.
        alpha: u64,
        /// The declared input bit width.
        n_bits: u32,
    },
    /// `beta` is empty; the output length `L` must be at least 1.
    #[error("beta is empty: the output length L must be at least 1")]
    EmptyBeta,
    /// `beta` has more elements than a key can describe.
    #[error("beta has {len} elements, more than the maximum output length L = {max}")]
    BetaTooLong {
        /// Length of the supplied beta.
        len: usize,
        /// Largest supported output length.
        max: usize,
    },
    /// Full-domain evaluation was asked for a domain that is too large.
    #[error("full-domain evaluation of 2^{n_bits} points x L = {out_len} outputs is too large (n_bits must be <= {max_bits})")]
    DomainTooLarge {
        /// The key's input bit width.
        n_bits: u32,
        /// The key's output length L.
        out_len: usize,
        /// Largest n_bits supported by full-domain evaluation.
        max_bits: u32,
    },
    /// The serialised key ended before `field` was complete.
    #[error("key words truncated: field `{field}` needs words up to index {needed}, but only {available} words were given")]
    Truncated {
        /// The field that could not be read completely.
        field: &'static str,
        /// Number of words needed to read through the end of `field`.
        needed: usize,
        /// Number of words supplied.
        available: usize,
    },
    /// A field of a serialised key holds an impossible value.
    #[error("malformed key: field `{field}`: {reason}")]
    Malformed {
        /// The offending field.
        field: &'static str,
        /// What is wrong with it.
        reason: String,
    },
}

/// Largest output length `L` (number of `u64` words in beta) a key may have.
///
/// It bounds the header field and keeps all size computations far from
/// overflow; 2^24 words (128 MiB per evaluation) is far beyond practical use.
pub const MAX_OUT_LEN: usize = 1 << 24;

/// Largest input bit width accepted by the full-domain evaluations
/// (`DpfKey::eval_all`); larger domains would not fit in memory.
pub const MAX_EVAL_ALL_BITS: u32 = 32;

/// Serialisation format version written in (and required by) key headers.
pub const KEY_FORMAT_VERSION: u8 = 1;

/// Shared parameter validation for `dpf_gen` / `dcf_gen`.
pub(crate) fn check_gen_params(alpha: u64, beta: &[u64], n_bits: u32) -> Result<(), FssError> {
    if !(1..=64).contains(&n_bits) {
        return Err(FssError::InvalidBitWidth(n_bits));
    }
    if alpha & !domain_mask(n_bits) != 0 {
        return Err(FssError::AlphaOutOfRange { alpha, n_bits });
    }
    if beta.is_empty() {
        return Err(FssError::EmptyBeta);
    }
    if beta.len() > MAX_OUT_LEN {
        return Err(FssError::BetaTooLong {
            len: beta.len(),
            max: MAX_OUT_LEN,
        });
    }
    Ok(())
}

/// Mask of the low `n_bits` bits (`n_bits` in `1..=64`).
#[inline]
pub(crate) fn domain_mask(n_bits: u32) -> u64 {
    u64::MAX >> (64 - n_bits)
}

/// All-ones `u128` if bit `t` (0 or 1) is set, else zero: branch-free select.
#[inline(always)]
pub(crate) fn bit_mask(t: u128) -> u128 {
    0u128.wrapping_sub(t & 1)
}

/// Key kind stored in the header, so a DPF key cannot be parsed as a DCF key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum KeyKind {
    Dpf = 1,
    Dcf = 2,
    Bdcf = 3,
}

/// Decoded key header word.
///
/// Layout (bit ranges of the single `u64`): `0..8` format version,
/// `8..16` kind, `16..23` `n_bits`, `23` party, `24..32` flags, `32..64` `L`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Header {
    pub kind: KeyKind,
    pub n_bits: u32,
    pub party: bool,
    pub flags: u8,
    pub out_len: usize,
}

impl Header {
    pub(crate) fn encode(&self) -> u64 {
        u64::from(KEY_FORMAT_VERSION)
            | (self.kind as u64) << 8
            | u64::from(self.n_bits) << 16
            | u64::from(self.party) << 23
            | u64::from(self.flags) << 24
            | (self.out_len as u64) << 32
    }

    /// Parses and validates the header word of a key of the expected kind.
    pub(crate) fn decode(words: &[u64], expected: KeyKind) -> Result<Self, FssError> {
        let w = *words.first().ok_or(FssError::Truncated {
            field: "header",
            needed: 1,
            available: 0,
        })?;
        let version = (w & 0xff) as u8;
        if version != KEY_FORMAT_VERSION {
            return Err(FssError::Malformed {
                field: "header.version",
                reason: format!("version {version}, expected {KEY_FORMAT_VERSION}"),
            });
        }
        let kind = ((w >> 8) & 0xff) as u8;
        if kind != expected as u8 {
            return Err(FssError::Malformed {
                field: "header.kind",
                reason: format!("kind {kind}, expected {} ({expected:?})", expected as u8),
            });
        }
        let n_bits = ((w >> 16) & 0x7f) as u32;
        if !(1..=64).contains(&n_bits) {
            return Err(FssError::Malformed {
                field: "header.n_bits",
                reason: format!("{n_bits} is not in 1..=64"),
            });
        }
        let out_len = (w >> 32) as usize;
        if out_len == 0 || out_len > MAX_OUT_LEN {
            return Err(FssError::Malformed {
                field: "header.out_len",
                reason: format!("L = {out_len} is not in 1..={MAX_OUT_LEN}"),
            });
        }
        Ok(Header {
            kind: expected,
            n_bits,
            party: (w >> 23) & 1 == 1,
            flags: ((w >> 24) & 0xff) as u8,
            out_len,
        })
    }
}

/// Sequential reader over serialised key words that reports truncation by field.
pub(crate) struct WordReader<'a> {
    words: &'a [u64],
    pos: usize,
}

impl<'a> WordReader<'a> {
    pub(crate) fn new(words: &'a [u64], pos: usize) -> Self {
        Self { words, pos }
    }

    /// Takes the next `count` words as field `field`.
    pub(crate) fn take(
        &mut self,
        field: &'static str,
        count: usize,
    ) -> Result<&'a [u64], FssError> {
        let end = self.pos.checked_add(count).ok_or(FssError::Malformed {
            field,
            reason: "length overflows".into(),
        })?;
        let s = self.words.get(self.pos..end).ok_or(FssError::Truncated {
            field,
            needed: end,
            available: self.words.len(),
        })?;
        self.pos = end;
        Ok(s)
    }

    /// Takes one 128-bit value stored as (low, high) words.
    pub(crate) fn take_u128(&mut self, field: &'static str) -> Result<u128, FssError> {
        let w = self.take(field, 2)?;
        Ok(join_u128(w[0], w[1]))
    }

    /// Errors if words remain after the last field.
    pub(crate) fn finish(self) -> Result<(), FssError> {
        if self.pos != self.words.len() {
            return Err(FssError::Malformed {
                field: "trailing words",
                reason: format!(
                    "{} words after the end of the key ({} expected, {} given)",
                    self.words.len() - self.pos,
                    self.pos,
                    self.words.len()
                ),
            });
        }
        Ok(())
    }
}

/// Builds a `u128` from (low, high) `u64` halves.
#[inline]
pub(crate) fn join_u128(lo: u64, hi: u64) -> u128 {
    u128::from(lo) | u128::from(hi) << 64
}

/// Appends a `u128` as (low, high) `u64` words.
#[inline]
pub(crate) fn push_u128(out: &mut Vec<u64>, x: u128) {
    out.push(x as u64);
    out.push((x >> 64) as u64);
}

/// Serialises key words to little-endian bytes (used by the keys' `to_bytes`).
pub(crate) fn words_to_bytes(words: &[u64]) -> Vec<u8> {
    let le: Vec<u64> = words.iter().map(|w| w.to_le()).collect();
    bytemuck::cast_slice::<u64, u8>(&le).to_vec()
}

/// Parses little-endian bytes into key words (used by the keys' `from_bytes`).
pub(crate) fn bytes_to_words(bytes: &[u8]) -> Result<Vec<u64>, FssError> {
    if !bytes.chunks_exact(8).remainder().is_empty() {
        return Err(FssError::Malformed {
            field: "bytes",
            reason: format!("length {} is not a multiple of 8", bytes.len()),
        });
    }
    let mut words: Vec<u64> = bytemuck::pod_collect_to_vec(bytes);
    for w in &mut words {
        *w = u64::from_le(*w);
    }
    Ok(words)
}

/// Negates every element of `v` (in Z_2^64) when `neg` is set: `(-1)^b * v`.
#[inline]
pub(crate) fn negate_if(neg: bool, v: &mut [u64]) {
    if neg {
        for x in v {
            *x = x.wrapping_neg();
        }
    }
}
