//! FSS preprocessing material: what the dealer (party 2) deals for the comparison-based
//! protocols of `tessera-protocols` (`compare`, `spline`, `lut`).
//!
//! Every request kind is "a mask r plus one FSS key per element" (ClampLut: two):
//! - the additive shares r0, r1 of the 64-bit input mask are seed-compressed: P0 and P1
//!   expand them from the material streams they share with the dealer, who runs both
//!   expansions;
//! - other *linear* shares the online phase needs (msb of r, r >> s, r * m) are
//!   seed-compressed the same way: P0's share comes from its stream, P1 gets a correction
//!   word;
//! - *own* words (DreluBit, DreluMulti, LutGate, ClampLut) are drawn by P0 and P1 each
//!   from its own stream and never sent: the dealer, who runs both streams, knows the XOR
//!   w of their low bits, a secret bit it folds into a key (the gated DPF's top bit) or
//!   into rho, the mask of an opened comparison bit;
//! - the keys are sent to both parties, serialised with `to_words()`, one per element,
//!   back to back (every key of a request has the same length); P1's words are its keys
//!   followed by its corrections of the extra linear shares.
//!
//! Key-generation randomness comes from a private OS-seeded [`Prg`] of the dealer (it
//! never needs to be reproduced). [`FssRequest::deal`] advances `prg0` / `prg1` exactly
//! as [`FssRequest::expand`] does on P0 / P1: first n words of r, then one block of n
//! words per extra linear share (P0 only; P1 receives those), then one block per own
//! word.
//!
//! | kind | key (per element) | parts of the material, in order |
//! |---|---|---|
//! | [`FssRequest::Sign`] | DCF on `bits - 1` bits, L = 1 | r, m = bit `bits-1` of r, keys |
//! | [`FssRequest::Relu`] | DCF on `bits - 1` bits, L = 2 | r, m, r m, keys |
//! | [`FssRequest::ReluCoarse`] | DCF on `bits - 1 - skip` bits, L = 2 | r, m, r m, keys |
//! | [`FssRequest::TruncDcf`] | DCF on `shift` bits, L = 1 | r, r >> shift, msb(r), keys |
//! | [`FssRequest::Spline`] | DCF on `bits` bits, L = payload length | r, keys |
//! | [`FssRequest::Lut`] | DPF on `bits` bits, L = 1 | r, keys |
//! | [`FssRequest::DreluBit`] | bit DCF on `bits - 1 - skip` bits | r, rho, rho r', r', m, rho m (r' = r mod 2^bits, m its top bit), w (own), keys |
//! | [`FssRequest::DreluMulti`] | bit DCF on `bits - 1` bits, evaluated at k shifts | r, rho_1..rho_k, w_1..w_k (own), keys |
//! | [`FssRequest::LutGate`] | DPF on `bits + 1` bits, the gate mask sigma on top | r, w (own), keys |
//! | [`FssRequest::LutGateSq`] | as LutGate, L = 3: payload (1, beta, beta^2), beta = r >> bits | r, beta, w (own), keys |
//! | [`FssRequest::ClampLut`] | bit DCF on `bits - 1 - skip` bits + DPF on `table_bits + 1` bits, rho on top | r, w (own), keys (comparison keys, then lookup keys) |
//! | [`FssRequest::CmpLutSq`] | ClampLut's two keys, the DPF with payload (1, beta, beta^2), its index mask r's bits `shift..`, its gate mask sigma on top | r, rho, rho r', r', m, rho m, w (own, rho), w' (own, sigma), keys (comparison keys, then lookup keys) |
//! | [`FssRequest::SegLut`] | DCF on `bits` bits, L = 2: payload (1, r) + DPF on `table_bits` bits, L = 2: payload (1, beta), its column mask r2's bits `trunc + shift..`, its row mask r3 | r, r2, r3 (own: each party's words are its additive shares), keys (spline keys, then lookup keys) |
//! | [`FssRequest::TrigMask`] | none | r, sin(k theta) for k = 1..terms, cos(k theta) for k = 1..terms |
//!
//! Sign (SIGMA, Gupta et al. PETS'24, §4 DReLU; Boyle et al. EC'21 §4): for |x| < 2^(h),
//! h = bits - 1, and c = x + r opened, sign(x) = c_h xor m xor \[c mod 2^h < r mod 2^h\].
//! The dealer folds m into the DCF payload, beta = 1 - 2m, so that m + DCF(c) shares
//! m xor \[c_low < r_low\] with one evaluation. Relu adds a second payload word r (1 - 2m)
//! and the share of r m, giving r * sign(x) linearly (see `tessera_protocols::compare`).
//!
//! ReluCoarse (SIGMA's "compare on the high bits", §4.1/§5): the same as Relu, but the DCF
//! compares only bits `skip..h` of c and r, \[c_low >> skip < r_low >> skip\], ignoring
//! the borrow of the low `skip` bits. The sign is then exact except for x in
//! (-2^skip, 0), where it reads 0: the "ReLU" returns x itself there (an error below
//! 2^skip ring units, and only towards the identity). Keys and evaluation shrink from h
//! to h - skip levels; callers that tolerate the identity near 0 (a max tree, a clamp
//! that a lookup table extends one cell below) use it.

use crate::error::{Error, Result};
use crate::fss::{
    bdcf_gen, bdcf_key_words, dcf_gen, dpf_gen_early, DcfKey, DpfKey, MAX_EARLY, MAX_OUT_LEN,
};
use crate::preproc::Material;
use crate::prg::Prg;
use rayon::prelude::*;

/// Largest input width of a DPF lookup table ([`FssRequest::Lut`]): each online element
/// costs a full-domain evaluation of 2^bits points.
pub const MAX_LUT_BITS: u32 = 16;

/// Largest element count one request may carry (bounds what a malformed request makes
/// the dealer allocate).
const MAX_ELEMENTS: u64 = 1 << 34;

/// Elements per rayon task in key generation.
const KEYGEN_CHUNK: usize = 256;

/// A request for FSS material (keys and masks), dealt by party 2 to P0 and P1.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum FssRequest {
    /// Sign / DReLU of n values with |x| < 2^(bits-1): mask r, m = bit (bits-1) of r,
    /// and a DCF on bits-1 bits with alpha = r mod 2^(bits-1), beta = 1 - 2m.
    Sign {
        /// Number of elements.
        n: usize,
        /// Declared input width (2..=64).
        bits: u32,
    },
    /// ReLU of n values with |x| < 2^(bits-1): as [`FssRequest::Sign`] plus shares of
    /// r m and a second payload word r (1 - 2m).
    Relu {
        /// Number of elements.
        n: usize,
        /// Declared input width (2..=64).
        bits: u32,
    },
    /// Approximate ReLU of n values with |x| < 2^(bits-1) - 2^skip: as
    /// [`FssRequest::Relu`], but the DCF (on bits - 1 - skip bits, alpha = (r mod
    /// 2^(bits-1)) >> skip) compares only the high bits; the result is relu(x), or x for
    /// x in (-2^skip, 0).
    ReluCoarse {
        /// Number of elements.
        n: usize,
        /// Declared input width (3..=64).
        bits: u32,
        /// Low bits ignored by the comparison (1..=bits-2).
        skip: u32,
    },
    /// Exact truncation by `shift` bits of n values with |x| < 2^62: mask r, r >> shift
    /// (logical), msb(r), and a DCF on `shift` bits for the borrow
    /// \[c mod 2^shift < r mod 2^shift\].
    TruncDcf {
        /// Number of elements.
        n: usize,
        /// Bits to shift (1..=62).
        shift: u32,
    },
    /// Spline coefficient selection for n values with |x| < 2^(bits-1): mask r and a DCF
    /// on `bits` bits with alpha = r mod 2^bits whose payload is the vector of coefficient
    /// differences (Boyle et al. EC'21 §4.2).
    Spline {
        /// Number of elements.
        n: usize,
        /// Declared input width (1..=64).
        bits: u32,
        /// DCF payload (coefficient differences of consecutive segments).
        payload: Vec<u64>,
    },
    /// Lookup in a public table of 2^bits entries: mask r and a DPF on `bits` bits with
    /// alpha = r mod 2^bits, beta = 1.
    Lut {
        /// Number of elements.
        n: usize,
        /// Index width (1..=[`MAX_LUT_BITS`]).
        bits: u32,
    },
    /// DReLU with a bit-output comparison, for a ReLU finished by opening the masked
    /// result bit (SIGMA, Gupta et al. PETS'24 §4.1-4.2): for n values with
    /// |x| < 2^(bits-1) (coarse as [`FssRequest::ReluCoarse`] when `skip` > 0): mask r, a
    /// bit DCF ([`crate::fss::bdcf`]) on bits - 1 - skip bits with alpha = (r mod
    /// 2^(bits-1)) >> skip, one own word w per element that each party draws from its
    /// stream, and shares of rho, rho r', r', m and rho m, where r' = r mod 2^bits, m =
    /// bit bits-1 of r and rho = m xor (w0 xor w1) & 1. The key output XOR w_b is then a
    /// share of DReLU(x) xor rho (after the public 1 xor c_h), which can be opened; the
    /// other four make d x linear from c = x + r opened in `bits` bits only (the wrap of
    /// c - r' past 2^bits is m (1 - c_h) where d = 1: see `select_opened` in
    /// `tessera_protocols::compare`).
    DreluBit {
        /// Number of elements.
        n: usize,
        /// Declared input width (2..=64).
        bits: u32,
        /// Low bits ignored by the comparison (0..=bits-2).
        skip: u32,
    },
    /// DReLU of n values at k public thresholds, x >= t_j, with ONE bit-DCF key per element
    /// (Boyle et al. EC'21 §4: a comparison key evaluated at several shifted points): mask
    /// r, shares of rho_j (j < k), k own words w_j, and a bit DCF on bits - 1 bits with
    /// alpha = r mod 2^(bits-1); rho_j = m xor (w_j0 xor w_j1) & 1, so every threshold's
    /// opened bit DReLU(x - t_j) xor rho_j has its own mask (opening them all reveals
    /// nothing), and rho_j makes the bit arithmetic.
    DreluMulti {
        /// Number of elements.
        n: usize,
        /// Declared input width (2..=64): |x - t_j| < 2^(bits-1) for every j.
        bits: u32,
        /// Number of thresholds (1..=64).
        k: u32,
    },
    /// A table lookup gated by a secret XOR-shared bit q: mask r, one own word per element
    /// (sigma = (w0 xor w1) & 1), and a DPF on `bits + 1` bits with alpha = sigma 2^bits +
    /// (r mod 2^bits), payload 1. The parties open q xor sigma with their own words and
    /// expand only the subtree it selects ([`dpf_lookup_gated`]): shares of q T\[idx\].
    LutGate {
        /// Number of elements.
        n: usize,
        /// Index width (1..=10).
        bits: u32,
    },
    /// [`FssRequest::LutGate`] with the payload (1, beta, beta^2) (L = 3) for a second
    /// mask beta = r >> bits, whose shares are dealt as an extra linear share: the lookup
    /// returns shares of q T\[idx\], q T\[idx\] beta and q T\[idx\] beta^2 for every table.
    /// A protocol that opens v - beta (mod 2^k) with the index can then form q T\[idx\] v
    /// and q T\[idx\] v^2 mod 2^k locally, with no product round (the spline's cell
    /// polynomial, `tessera_protocols::gelu`): the DPF hides its payload as it hides its
    /// point. beta's low bits are r's bits `bits..`, independent of the index mask r mod
    /// 2^bits. Material parts: r, beta, w, keys.
    LutGateSq {
        /// Number of elements.
        n: usize,
        /// Index width (1..=10).
        bits: u32,
    },
    /// A lookup in a public table of 2^table_bits entries at a secret index u, gated by
    /// DReLU(u) (a clamp below 0 fused with the lookup): for n values with |u| <
    /// 2^(bits-1): mask r, one own word w per element, a bit DCF on bits - 1 - skip bits
    /// with alpha = (r mod 2^(bits-1)) >> skip (as [`FssRequest::DreluBit`]), and a gated
    /// DPF (as [`FssRequest::LutGate`]) on table_bits + 1 bits with alpha = rho
    /// 2^table_bits + (r mod 2^table_bits), rho = m xor (w0 xor w1) & 1. One opening of
    /// c = u + r serves both keys; the opened e = DReLU(u) xor rho selects the subtree,
    /// so the lookup returns DReLU(u) T\[u\].
    /// Material parts: r, w, keys (all comparison keys, then all lookup keys:
    /// [`FssRequest::split_clamp_keys`]).
    ClampLut {
        /// Number of elements.
        n: usize,
        /// Declared input width (2..=64).
        bits: u32,
        /// Low bits ignored by the comparison (0..=bits-2).
        skip: u32,
        /// Index width of the table (1..=10).
        table_bits: u32,
    },
    /// A comparison and a gated cell lookup on ONE mask r (the x-indexed spline of
    /// `tessera_protocols::gelu`): the bit DCF of [`FssRequest::DreluBit`] (same extra
    /// shares, own word 0 making rho) and a gated DPF on `table_bits + 1` bits whose
    /// index mask is r's bits `shift..shift + table_bits` and whose gate mask sigma is
    /// own word 1, with the payload (1, beta, beta^2) of [`FssRequest::LutGateSq`] for
    /// beta = -(r mod 2^shift). One opening of c = x + r mod 2^bits then serves the
    /// comparisons, the lookup's index (c + o) >> shift (the cell of x + o, floor or one
    /// more, for an offset o that is a multiple of 2^shift) and the cell offset's masked
    /// value u - beta = (c + o) mod 2^shift: no truncation and no index opening (SIGMA,
    /// Gupta et al. PETS'24, §5, opens its lookup index from the comparison's mask too).
    /// Material parts: r, rho, rho r', r', m, rho m, w (own, rho), w' (own, sigma),
    /// keys (all comparison keys, then all lookup keys: [`FssRequest::split_clamp_keys`]).
    CmpLutSq {
        /// Number of elements.
        n: usize,
        /// Declared input width (2..=64): |x - t| < 2^(bits-1) at every threshold t.
        bits: u32,
        /// Low bits ignored by the comparison (0..=bits-2).
        skip: u32,
        /// Index width of the table (1..=10).
        table_bits: u32,
        /// The cell width 2^shift (1..; shift + table_bits <= bits).
        shift: u32,
    },
    /// A segment selection and a cell lookup on TWO masks, for the normalise-and-look-up
    /// functions of `tessera_protocols::tablefn` in three rounds. The spline key is
    /// [`FssRequest::Spline`]'s DCF on `bits` bits (alpha = r mod 2^bits) with the
    /// per-element payload (1, r): evaluated as the spline evaluates it, its second word
    /// gives shares of r [x < p_j], so a selected coefficient m also comes with shares of
    /// m r and the product x m = c m - m r is local once c = x + r is open (Boyle et al.
    /// EC'21 §4.2 splines with a payload that carries the mask). The second mask r2 is
    /// uniform and additively shared through an own word per party (own words are drawn,
    /// never sent; the dealer runs both streams and knows r2 = w0 + w1), and so is a third
    /// mask r3. The lookup key is a DPF on `table_bits` bits for a table of rows of
    /// 2^cell_bits entries ([`dpf_lookup_rows`]): its column mask is r2's bits
    /// `trunc + shift..trunc + shift + cell_bits`, its row mask r3 mod 2^(table_bits -
    /// cell_bits), and its payload (1, beta) with beta = -((r2 >> trunc) mod 2^shift). One
    /// opening of v + r2 then gives the lookup's masked column and the masked offset inside
    /// the cell, as in [`FssRequest::CmpLutSq`], and one of row + r3 the masked row.
    /// Material parts: r, r2's share, r3's share, keys (all spline keys, then all lookup
    /// keys: [`FssRequest::split_clamp_keys`]).
    SegLut {
        /// Number of elements.
        n: usize,
        /// Declared input width of the spline (1..=64).
        bits: u32,
        /// Index width of the table (1..=[`MAX_LUT_BITS`]).
        table_bits: u32,
        /// Column width of the table's rows (1..=table_bits).
        cell_bits: u32,
        /// Low bits of the second opening dropped before the offset (0..).
        trunc: u32,
        /// The cell width 2^shift above `trunc` (1..; trunc + shift + cell_bits <= 64).
        shift: u32,
    },
    /// Masks for secure sines (SecFormer, arXiv 2401.00793, §3.2 "GeLU"): a uniform 64-bit
    /// mask r and, for the phase theta = 2 pi (r mod 2^period_bits) / 2^period_bits,
    /// fixed-point shares (`frac_bits`) of sin(k theta) and cos(k theta), k = 1..=terms.
    ///
    /// Why the period is a power of two: a phase w in the ring with period 2^S (S =
    /// `period_bits`) is masked by the *uniform* 64-bit r, so the opened c = w + r mod
    /// 2^64 is uniform and reveals nothing; and because 2^S divides 2^64,
    /// (c mod 2^S) = (w + (r mod 2^S)) mod 2^S exactly, so the public angle
    /// a = 2 pi (c mod 2^S) / 2^S equals the secret phase plus theta modulo 2 pi, with no
    /// wrap error. (Masking modulo a period that does not divide the ring, as SecFormer's
    /// float code does, leaves an error whenever the masked sum wraps.) A caller maps a
    /// real period P onto 2^S by multiplying its fixed-point input by the public integer
    /// round(2^S / (2^f P)). Then sin(k(a - theta)) = sin(ka) cos(k theta) -
    /// cos(ka) sin(k theta) is linear in the dealt shares.
    TrigMask {
        /// Number of elements.
        n: usize,
        /// Harmonics k = 1..=terms (1..=64).
        terms: u32,
        /// S: the phase period is 2^S ring units (1..=64).
        period_bits: u32,
        /// Fixed-point fractional bits of the dealt sines and cosines (0..=62).
        frac_bits: u32,
    },
}

const TAG_SIGN: u64 = 1;
const TAG_RELU: u64 = 2;
const TAG_TRUNC_DCF: u64 = 3;
const TAG_SPLINE: u64 = 4;
const TAG_LUT: u64 = 5;
const TAG_TRIG: u64 = 6;
const TAG_RELU_COARSE: u64 = 7;
const TAG_DRELU_BIT: u64 = 8;
const TAG_LUT_GATE: u64 = 9;
const TAG_CLAMP_LUT: u64 = 10;
const TAG_DRELU_MULTI: u64 = 11;
const TAG_LUT_GATE_SQ: u64 = 12;
const TAG_CMP_LUT_SQ: u64 = 13;
const TAG_SEG_LUT: u64 = 14;

/// Words of a serialised DCF key with `n_bits` input bits and `l` output words.
pub fn dcf_key_words(n_bits: u32, l: usize) -> usize {
    4 + n_bits as usize * (2 + l) + l
}

/// Words of a serialised DPF key with `n_bits` input bits and `l` output words (with the
/// early termination `dpf_gen` applies when `l == 1`).
pub fn dpf_key_words(n_bits: u32, l: usize) -> usize {
    let e = u32::from(l == 1 && n_bits >= 1);
    dpf_key_words_early(n_bits, l, e)
}

/// Words of a DPF key with `early` early-termination levels.
pub fn dpf_key_words_early(n_bits: u32, l: usize, early: u32) -> usize {
    4 + 2 * (n_bits - early) as usize + (l << early)
}

/// Early-termination levels of [`FssRequest::Lut`] keys: every table lookup evaluates the
/// whole domain, so a wider leaf (up to [`MAX_EARLY`] levels) halves its AES work for
/// two more key words.
pub fn lut_early(bits: u32) -> u32 {
    bits.min(MAX_EARLY)
}

/// Early-termination levels of a gated lookup key with an `l`-word payload: L = 1 as
/// [`lut_early`]; wider payloads stop at 2 levels (a leaf of 4 L words), which keeps
/// [`FssRequest::LutGateSq`]'s keys at 24 words for 5 index bits instead of 34 for
/// 3 levels: its GeLU request is the largest a BERT-base layer deals at once.
pub fn lookup_early(bits: u32, l: usize) -> u32 {
    if l == 1 {
        lut_early(bits)
    } else {
        bits.min(2)
    }
}

/// Parses `count` DCF keys stored back to back in `words` (all of the same length).
pub fn dcf_keys(words: &[u64], count: usize) -> Result<Vec<DcfKey>> {
    split_keys(words, count, DcfKey::from_words)
}

/// Evaluates the DCF keys stored back to back in `words` (one per point, as a request's
/// key part holds them), key `i` at `xs[i]`, without parsing them: `xs.len() * L` words,
/// key `i`'s outputs at `[i*L, (i+1)*L)`. Lockstep and parallel; see
/// [`crate::fss::dcf::eval_words_batch`].
pub fn dcf_eval(words: &[u64], xs: &[u64]) -> Result<Vec<u64>> {
    Ok(crate::fss::dcf::eval_words_batch(words, xs)?)
}

/// Keys walked in lockstep by [`dpf_lookup`].
const DPF_LANES: usize = 16;
/// Largest DPF domain [`dpf_lookup`] expands in lockstep (larger ones go key by key).
const DPF_LOCKSTEP_BITS: u32 = 10;

/// Words per early-terminated leaf at most (`2^MAX_EARLY`).
const MAX_PER_LEAF: usize = 1 << crate::fss::dpf::MAX_EARLY;

/// Table lookups by full-domain DPF evaluation (Boyle et al. EC'21 §3.2, as
/// `tessera_protocols::lut` uses it): for every key `i` of the `cs.len()` DPF keys stored
/// back to back in `words` (all with one header, L = 1, `bits` input bits) and every
/// table T of 2^bits entries, this party's share of sum_z e_i(z) T\[(c_i - z) mod
/// 2^bits\], e_i the key's full-domain output. Result: one vector per table.
///
/// Up to 16 keys are expanded level by level together (every AES call gets many
/// independent blocks) straight from the key words, with no per-key allocation, and
/// groups are spread over rayon threads; domains above 2^10 fall back to parsing each key
/// and [`DpfKey::eval_all`]. Errors if the words are not `cs.len()` keys of one header
/// with L = 1, if a table has the wrong length, or if a root's control bit does not match
/// the party.
pub fn dpf_lookup(words: &[u64], cs: &[u64], tables: &[&[u64]]) -> Result<Vec<Vec<u64>>> {
    lookup_inner(words, cs, None, None, tables, &all_pairs(tables.len()))
}

/// [`dpf_lookup`] on a two-dimensional index, for keys whose payload has L >= 1 words
/// (L = 2 for [`FssRequest::SegLut`], at most [`MAX_LOOKUP_OUT`]): index i = row 2^rb +
/// col (rb = `row_bits`) is masked row by row, c = ((row + a) mod R) 2^rb + ((col + b)
/// mod 2^rb) for the key's point alpha = a 2^rb + b, so a carry out of the column never
/// reaches the row (R = 2^(bits - rb) rows). One vector per `(l, t)` of `pairs`, key i's
/// share of payload_l T_t\[idx_i\]. With rb = bits this is the plain rotation of
/// [`dpf_lookup`]. Errors as [`dpf_lookup`], if rb is 0 or above the index width, and if
/// a pair names a payload word or table that does not exist.
pub fn dpf_lookup_rows(
    words: &[u64],
    cs: &[u64],
    row_bits: u32,
    tables: &[&[u64]],
    pairs: &[(usize, usize)],
) -> Result<Vec<Vec<u64>>> {
    lookup_inner(words, cs, None, Some(row_bits), tables, pairs)
}

/// Every table with payload word 0, in order.
fn all_pairs(nt: usize) -> Vec<(usize, usize)> {
    (0..nt).map(|t| (0, t)).collect()
}

/// Gated table lookups ([`FssRequest::LutGate`], [`FssRequest::ClampLut`]): the keys are
/// DPFs on `bits + 1` bits whose point has the dealer's mask bit (sigma or rho) on top and
/// r mod 2^bits below, with payload 1; for key `i` only the subtree under the top-level
/// child `1 - sel[i]` is expanded (`sel[i]` the opened gate bit), and its 2^bits outputs
/// enter the rotated inner product as in [`dpf_lookup`]. The point lies in that subtree
/// exactly when the secret gate (opened bit xor mask) is 1, so the result is this party's
/// share of q_i T\[idx_i\], at the cost of an ungated lookup (one AES block more). Same
/// errors as [`dpf_lookup`], and one if `sel` has the wrong length or a value above 1.
pub fn dpf_lookup_gated(
    words: &[u64],
    cs: &[u64],
    sel: &[u8],
    tables: &[&[u64]],
) -> Result<Vec<Vec<u64>>> {
    dpf_lookup_gated_pairs(words, cs, sel, tables, &all_pairs(tables.len()))
}

/// [`dpf_lookup_gated`] for keys whose payload has L >= 1 words (L = 3 for
/// [`FssRequest::LutGateSq`], at most [`MAX_LOOKUP_OUT`]): one vector per `(l, t)` of
/// `pairs`, key i's share of q_i payload_l T_t\[idx_i\]. The tree walk is shared; each
/// leaf converts to L words per slot, and only the listed products are formed (GeLU's
/// cell needs 6 of the 9). Errors as [`dpf_lookup_gated`], and if a pair names a payload
/// word or table that does not exist.
pub fn dpf_lookup_gated_pairs(
    words: &[u64],
    cs: &[u64],
    sel: &[u8],
    tables: &[&[u64]],
    pairs: &[(usize, usize)],
) -> Result<Vec<Vec<u64>>> {
    if sel.len() != cs.len() || sel.iter().any(|&b| b > 1) {
        return Err(Error::Preprocessing(format!(
            "dpf_lookup_gated: {} selector bits (0/1) for {} keys",
            sel.len(),
            cs.len()
        )));
    }
    lookup_inner(words, cs, Some(sel), None, tables, pairs)
}

/// Largest payload a gated lookup's keys may carry ([`dpf_lookup_gated_pairs`]).
pub const MAX_LOOKUP_OUT: usize = 3;

/// Key words of a gated lookup on `bits`-bit indices.
fn gated_key_words(bits: u32) -> usize {
    dpf_key_words_early(bits + 1, 1, lut_early(bits))
}

fn lookup_inner(
    words: &[u64],
    cs: &[u64],
    sel: Option<&[u8]>,
    row_bits: Option<u32>,
    tables: &[&[u64]],
    pairs: &[(usize, usize)],
) -> Result<Vec<Vec<u64>>> {
    use crate::fss::prg::{prg, SEED_MASK};
    let count = cs.len();
    let nt = tables.len();
    let no = pairs.len();
    if count == 0 || no == 0 {
        return Ok(vec![vec![]; no]);
    }
    let bad = |w: String| Error::Preprocessing(format!("dpf_lookup: {w}"));
    let head = *words.first().ok_or_else(|| bad("no key words".into()))?;
    let n_bits = ((head >> 16) & 0x7f) as u32;
    let early = ((head >> 24) & 0xff) as u32;
    let out_len = head >> 32;
    // Gated keys have one level more, on top: the gate.
    let gate = u32::from(sel.is_some());
    let bits = n_bits.saturating_sub(gate);
    let (max_bits, max_l) = if gate == 1 {
        (DPF_LOCKSTEP_BITS, MAX_LOOKUP_OUT as u64)
    } else {
        (MAX_LUT_BITS, MAX_LOOKUP_OUT as u64)
    };
    let l = out_len.clamp(1, max_l) as usize;
    if !(1..=max_bits).contains(&bits)
        || early != lookup_early(bits, l)
        || !(1..=max_l).contains(&out_len)
    {
        return Err(bad(format!(
            "keys must have L in 1..={max_l}, {} early-termination levels and 1..={max_bits} index bits{}",
            lookup_early(bits, l),
            if gate == 1 { " plus the gate bit" } else { "" }
        )));
    }
    if let Some(&(j, t)) = pairs.iter().find(|&&(j, t)| j >= l || t >= nt) {
        return Err(bad(format!(
            "product ({j}, {t}) asked of keys with {l} payload words and {nt} tables"
        )));
    }
    let size = 1usize << bits;
    if let Some(t) = tables.iter().find(|t| t.len() != size) {
        return Err(bad(format!("table of {} entries for {bits} bits", t.len())));
    }
    let kw = dpf_key_words_early(n_bits, l, early);
    if words.len() != kw * count {
        return Err(bad(format!(
            "{} words for {count} keys of {kw} words",
            words.len()
        )));
    }
    let rb = row_bits.unwrap_or(bits);
    if !(1..=bits).contains(&rb) {
        return Err(bad(format!("rows of {rb} bits in a {bits}-bit index")));
    }
    let (rsize, nrows) = (1usize << rb, 1usize << (bits - rb));
    // Tables reversed once, so each key's rotated inner product is two contiguous runs
    // per row (row r of T reversed is row nrows - 1 - r of the reversed table).
    let rev: Vec<Vec<u64>> = tables
        .iter()
        .map(|t| t.iter().rev().copied().collect())
        .collect();
    // The listed products of one key: `e` holds its outputs payload word by payload word
    // (`size` words each).
    let products = |e: &[u64], c: u64, out: &mut [u64]| {
        let col = (c as usize) & (rsize - 1);
        let row = (c >> rb) as usize;
        for (o, &(j, t)) in out.iter_mut().zip(pairs) {
            let ej = &e[j * size..(j + 1) * size];
            *o = (0..nrows).fold(0u64, |acc, zr| {
                let tr = nrows - 1 - (row.wrapping_sub(zr) & (nrows - 1));
                acc.wrapping_add(lut_dot::rotated_dot(
                    &ej[zr * rsize..(zr + 1) * rsize],
                    &rev[t][tr * rsize..(tr + 1) * rsize],
                    col,
                ))
            });
        }
    };
    // Per key: one output per pair, key-major.
    let mut flat = vec![0u64; count * no];
    if bits > DPF_LOCKSTEP_BITS {
        let keys = dpf_keys(words, count)?;
        flat.par_chunks_mut(no)
            .zip(keys.par_iter().zip(cs))
            .try_for_each(|(o, (k, &c))| -> Result<()> {
                let e = k.eval_all()?;
                if l == 1 {
                    products(&e, c, o);
                } else {
                    products(&by_payload_word(&e, l), c, o);
                }
                Ok(())
            })?;
    } else {
        // The key header is parsed once; every key must carry the same header word.
        let h = crate::fss::Header::decode(words, crate::fss::KeyKind::Dpf)?;
        let depth = (n_bits - early) as usize;
        let first = gate as usize;
        let leaves = 1usize << (depth - first);
        let per_leaf = 1usize << early;
        flat.par_chunks_mut(DPF_LANES * no)
            .zip(
                words
                    .par_chunks(DPF_LANES * kw)
                    .zip(cs.par_chunks(DPF_LANES)),
            )
            .enumerate()
            .try_for_each(|(g, (o, (wg, cg)))| -> Result<()> {
                let k = cg.len();
                for key in wg.chunks_exact(kw) {
                    if key[0] != head || (key[1] & 1 == 1) != h.party {
                        return Err(bad("keys of one batch must share one header".into()));
                    }
                }
                let node = |q: usize, i: usize| {
                    u128::from(wg[q * kw + i]) | u128::from(wg[q * kw + i + 1]) << 64
                };
                // Correction of level i for the child in direction dir.
                let cw = |q: usize, i: usize, dir: u64| {
                    let cw_l = node(q, 3 + 2 * i);
                    if dir == 1 {
                        let tr = (wg[q * kw + 3 + 2 * depth] >> i) & 1;
                        (cw_l & SEED_MASK) | u128::from(tr)
                    } else {
                        cw_l
                    }
                };
                // Level by level, all k keys' nodes side by side (key-major).
                let mut cur: Vec<u128> = (0..k).map(|q| node(q, 1)).collect();
                if let Some(sel) = sel {
                    // The gate level: only the child 1 - (opened bit).
                    let dirs: Vec<u64> = (0..k)
                        .map(|q| 1 - u64::from(sel[g * DPF_LANES + q]))
                        .collect();
                    let mut kids: Vec<u128> = (0..k)
                        .map(|q| (cur[q] & SEED_MASK) | u128::from(dirs[q]))
                        .collect();
                    prg().expand_dirs(&mut kids);
                    for q in 0..k {
                        kids[q] ^= cw(q, 0, dirs[q]) & 0u128.wrapping_sub(cur[q] & 1);
                    }
                    cur = kids;
                }
                let mut next = Vec::with_capacity(k * leaves);
                for i in first..depth {
                    let width = 1usize << (i - first);
                    next.resize(2 * cur.len(), 0);
                    prg().expand_many(&cur, &mut next);
                    for q in 0..k {
                        let (cw_l, cw_r) = (cw(q, i, 0), cw(q, i, 1));
                        for (c, &par) in next[2 * q * width..2 * (q + 1) * width]
                            .chunks_exact_mut(2)
                            .zip(&cur[q * width..(q + 1) * width])
                        {
                            let mk = 0u128.wrapping_sub(par & 1);
                            c[0] ^= cw_l & mk;
                            c[1] ^= cw_r & mk;
                        }
                    }
                    std::mem::swap(&mut cur, &mut next);
                }
                let mut e = vec![0u64; k * size * l];
                prg().convert_many(&cur, &mut e);
                let lw = l * per_leaf;
                // The keys' outputs one payload word at a time (L > 1), contiguous.
                let mut comp = vec![0u64; if l > 1 { l * size } else { 0 }];
                for q in 0..k {
                    let base = q * kw + 4 + 2 * depth;
                    // Row t of `pick` is what a leaf with control bit t adds: an indexed
                    // load rather than a mask, which LLVM turned into a branch on the
                    // (random) control bit and mispredicted on half the leaves.
                    let mut pick = [0u64; 2 * MAX_LOOKUP_OUT * MAX_PER_LEAF];
                    let half = MAX_LOOKUP_OUT * MAX_PER_LEAF;
                    pick[half..half + lw].copy_from_slice(&wg[base..base + lw]);
                    let eq = &mut e[q * size * l..(q + 1) * size * l];
                    let lq = &cur[q * leaves..(q + 1) * leaves];
                    if lw == MAX_PER_LEAF {
                        // Fixed-width leaves: one vector add per leaf.
                        for (slot, leaf) in eq.chunks_exact_mut(MAX_PER_LEAF).zip(lq) {
                            let row = (leaf & 1) as usize * half;
                            let add: &[u64; MAX_PER_LEAF] =
                                pick[row..row + MAX_PER_LEAF].try_into().expect("one row");
                            for (y, c) in slot.iter_mut().zip(add) {
                                *y = y.wrapping_add(*c);
                            }
                        }
                    } else {
                        for (slot, leaf) in eq.chunks_exact_mut(lw).zip(lq) {
                            let row = (leaf & 1) as usize * half;
                            for (y, c) in slot.iter_mut().zip(&pick[row..row + lw]) {
                                *y = y.wrapping_add(*c);
                            }
                        }
                    }
                    // Party 1's outputs are negated: sum (-e) T = -(sum e T), once per
                    // table rather than once per leaf word.
                    let oq = &mut o[q * no..(q + 1) * no];
                    if l == 1 {
                        products(eq, cg[q], oq);
                    } else {
                        transpose_slots(eq, l, &mut comp);
                        products(&comp, cg[q], oq);
                    }
                    if h.party {
                        for v in oq.iter_mut() {
                            *v = v.wrapping_neg();
                        }
                    }
                }
                Ok(())
            })?;
    }
    Ok((0..no)
        .map(|t| flat.iter().skip(t).step_by(no).copied().collect())
        .collect())
}

/// A DPF's full-domain outputs with slot z's `l` payload words side by side, rearranged
/// one payload word at a time (word j of slot z at j * size + z) into `out`. L = 2 and 3
/// (the payloads in use) run without index arithmetic: the generic strided store was 15%
/// of a gated cell lookup (`benches/fss.rs`, `lut_gated_cell_6bit/L3`).
fn transpose_slots(e: &[u64], l: usize, out: &mut [u64]) {
    let size = e.len() / l;
    match l {
        2 => {
            let (a, b) = out.split_at_mut(size);
            for ((x, y), s) in a.iter_mut().zip(b.iter_mut()).zip(e.chunks_exact(2)) {
                *x = s[0];
                *y = s[1];
            }
        }
        3 => {
            let (a, rest) = out.split_at_mut(size);
            let (b, c) = rest.split_at_mut(size);
            for (((x, y), w), s) in a
                .iter_mut()
                .zip(b.iter_mut())
                .zip(c.iter_mut())
                .zip(e.chunks_exact(3))
            {
                *x = s[0];
                *y = s[1];
                *w = s[2];
            }
        }
        _ => {
            for (z, ez) in e.chunks_exact(l).enumerate() {
                for (j, &v) in ez.iter().enumerate() {
                    out[j * size + z] = v;
                }
            }
        }
    }
}

/// [`transpose_slots`] into a new vector.
fn by_payload_word(e: &[u64], l: usize) -> Vec<u64> {
    let mut out = vec![0u64; e.len()];
    transpose_slots(e, l, &mut out);
    out
}

/// The inner product of a DPF lookup, runtime-dispatched so the u64 products vectorise
/// (`vpmullq` on AVX-512). See `crate::tensor::kernel` for the `unexpected_cfgs` note.
#[allow(unexpected_cfgs)]
mod lut_dot {
    use multiversion::multiversion;

    // Inlined into each multiversioned caller, so it is compiled for that caller's
    // target features (vpmullq on AVX-512), not for the baseline.
    #[inline(always)]
    fn dot(a: &[u64], b: &[u64]) -> u64 {
        // A plain reduction: LLVM splits it over vector lanes itself (wrapping integer
        // addition reassociates). A hand-laned 8-accumulator loop compiled to gathers.
        a.iter()
            .zip(b)
            .fold(0u64, |s, (x, y)| s.wrapping_add(x.wrapping_mul(*y)))
    }

    /// sum_z e\[z\] t\[(cp - z) mod size\], given `tr` = t reversed (tr\[i\] = t\[size - 1 - i\]):
    /// z <= cp reads tr\[size - 1 - cp + z\], z > cp reads tr\[z - cp - 1\].
    #[multiversion(targets("x86_64+avx512f+avx512dq+avx512vl", "x86_64+avx2"))]
    pub(super) fn rotated_dot(e: &[u64], tr: &[u64], cp: usize) -> u64 {
        let size = e.len();
        let (e1, e2) = e.split_at(cp + 1);
        dot(e1, &tr[size - 1 - cp..]).wrapping_add(dot(e2, &tr[..size - 1 - cp]))
    }
}

/// Parses `count` DPF keys stored back to back in `words` (all of the same length).
pub fn dpf_keys(words: &[u64], count: usize) -> Result<Vec<DpfKey>> {
    split_keys(words, count, DpfKey::from_words)
}

fn split_keys<K: Send>(
    words: &[u64],
    count: usize,
    parse: impl Fn(&[u64]) -> std::result::Result<K, crate::fss::FssError> + Sync,
) -> Result<Vec<K>> {
    if count == 0 {
        return Ok(vec![]);
    }
    let kl = words.len() / count;
    if kl * count != words.len() || kl == 0 {
        return Err(Error::Preprocessing(format!(
            "{} key words do not split into {count} keys of equal length",
            words.len()
        )));
    }
    words
        .par_chunks(kl)
        .map(|w| parse(w).map_err(Error::from))
        .collect()
}

/// Per-element layout of a request kind.
struct Kind {
    /// Extra linear shares beyond r (each n words; P0 from its stream, P1 as correction).
    extra: usize,
    /// Words of one key.
    key_words: usize,
    /// Own random words per element that each of P0 and P1 draws from its stream (the
    /// dealer knows both; their XOR is a secret bit neither party knows alone).
    own: usize,
}

impl FssRequest {
    /// Number of elements.
    pub fn len(&self) -> usize {
        match *self {
            FssRequest::Sign { n, .. }
            | FssRequest::Relu { n, .. }
            | FssRequest::ReluCoarse { n, .. }
            | FssRequest::TruncDcf { n, .. }
            | FssRequest::Spline { n, .. }
            | FssRequest::Lut { n, .. }
            | FssRequest::DreluBit { n, .. }
            | FssRequest::LutGate { n, .. }
            | FssRequest::LutGateSq { n, .. }
            | FssRequest::ClampLut { n, .. }
            | FssRequest::CmpLutSq { n, .. }
            | FssRequest::SegLut { n, .. }
            | FssRequest::DreluMulti { n, .. }
            | FssRequest::TrigMask { n, .. } => n,
        }
    }
    /// True for a request of no elements.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn kind(&self) -> Kind {
        match self {
            FssRequest::DreluBit { bits, skip, .. } => Kind {
                extra: 5,
                own: 1,
                key_words: bdcf_key_words(bits.saturating_sub(skip.saturating_add(1)).max(1)),
            },
            FssRequest::DreluMulti { bits, k, .. } => Kind {
                extra: *k as usize,
                own: *k as usize,
                key_words: bdcf_key_words(bits.saturating_sub(1).max(1)),
            },
            FssRequest::LutGate { bits, .. } => Kind {
                extra: 0,
                own: 1,
                key_words: gated_key_words(*bits),
            },
            FssRequest::LutGateSq { bits, .. } => Kind {
                extra: 1,
                own: 1,
                key_words: dpf_key_words_early(bits + 1, 3, lookup_early(*bits, 3)),
            },
            FssRequest::CmpLutSq {
                bits,
                skip,
                table_bits,
                ..
            } => Kind {
                extra: 5,
                own: 2,
                key_words: bdcf_key_words(bits.saturating_sub(skip.saturating_add(1)).max(1))
                    + dpf_key_words_early(table_bits + 1, 3, lookup_early(*table_bits, 3)),
            },
            FssRequest::SegLut {
                bits, table_bits, ..
            } => Kind {
                extra: 0,
                own: 2,
                key_words: dcf_key_words(*bits, 2)
                    + dpf_key_words_early(*table_bits, 2, lookup_early(*table_bits, 2)),
            },
            FssRequest::ClampLut {
                bits,
                skip,
                table_bits,
                ..
            } => Kind {
                extra: 0,
                own: 1,
                key_words: bdcf_key_words(bits.saturating_sub(skip.saturating_add(1)).max(1))
                    + gated_key_words(*table_bits),
            },
            FssRequest::Sign { bits, .. } => Kind {
                extra: 1,
                own: 0,
                key_words: dcf_key_words(bits.saturating_sub(1), 1),
            },
            FssRequest::Relu { bits, .. } => Kind {
                extra: 2,
                own: 0,
                key_words: dcf_key_words(bits.saturating_sub(1), 2),
            },
            FssRequest::ReluCoarse { bits, skip, .. } => Kind {
                extra: 2,
                own: 0,
                key_words: dcf_key_words(bits.saturating_sub(skip.saturating_add(1)).max(1), 2),
            },
            FssRequest::TruncDcf { shift, .. } => Kind {
                extra: 2,
                own: 0,
                key_words: dcf_key_words(*shift, 1),
            },
            FssRequest::Spline { bits, payload, .. } => Kind {
                extra: 0,
                own: 0,
                key_words: dcf_key_words(*bits, payload.len()),
            },
            FssRequest::Lut { bits, .. } => Kind {
                extra: 0,
                own: 0,
                key_words: dpf_key_words_early(*bits, 1, lut_early(*bits)),
            },
            FssRequest::TrigMask { terms, .. } => Kind {
                extra: 2 * *terms as usize,
                own: 0,
                key_words: 0,
            },
        }
    }

    /// Words of one party's key for one element.
    pub fn key_words(&self) -> usize {
        self.kind().key_words
    }

    /// Words the dealer sends to `party` (0 or 1): the keys, plus P1's corrections of
    /// the extra linear shares.
    pub fn correction_len(&self, party: usize) -> usize {
        let k = self.kind();
        let n = self.len();
        n * k.key_words + if party == 1 { k.extra * n } else { 0 }
    }

    /// Word encoding (after the request tag).
    pub fn encode(&self) -> Vec<u64> {
        match self {
            FssRequest::Sign { n, bits } => vec![TAG_SIGN, *n as u64, u64::from(*bits)],
            FssRequest::Relu { n, bits } => vec![TAG_RELU, *n as u64, u64::from(*bits)],
            FssRequest::ReluCoarse { n, bits, skip } => vec![
                TAG_RELU_COARSE,
                *n as u64,
                u64::from(*bits),
                u64::from(*skip),
            ],
            FssRequest::TruncDcf { n, shift } => vec![TAG_TRUNC_DCF, *n as u64, u64::from(*shift)],
            FssRequest::Spline { n, bits, payload } => {
                let mut w = vec![
                    TAG_SPLINE,
                    *n as u64,
                    u64::from(*bits),
                    payload.len() as u64,
                ];
                w.extend_from_slice(payload);
                w
            }
            FssRequest::Lut { n, bits } => vec![TAG_LUT, *n as u64, u64::from(*bits)],
            FssRequest::DreluBit { n, bits, skip } => {
                vec![TAG_DRELU_BIT, *n as u64, u64::from(*bits), u64::from(*skip)]
            }
            FssRequest::LutGate { n, bits } => vec![TAG_LUT_GATE, *n as u64, u64::from(*bits)],
            FssRequest::LutGateSq { n, bits } => {
                vec![TAG_LUT_GATE_SQ, *n as u64, u64::from(*bits)]
            }
            FssRequest::DreluMulti { n, bits, k } => {
                vec![TAG_DRELU_MULTI, *n as u64, u64::from(*bits), u64::from(*k)]
            }
            FssRequest::ClampLut {
                n,
                bits,
                skip,
                table_bits,
            } => vec![
                TAG_CLAMP_LUT,
                *n as u64,
                u64::from(*bits),
                u64::from(*skip),
                u64::from(*table_bits),
            ],
            FssRequest::CmpLutSq {
                n,
                bits,
                skip,
                table_bits,
                shift,
            } => vec![
                TAG_CMP_LUT_SQ,
                *n as u64,
                u64::from(*bits),
                u64::from(*skip),
                u64::from(*table_bits),
                u64::from(*shift),
            ],
            FssRequest::SegLut {
                n,
                bits,
                table_bits,
                cell_bits,
                trunc,
                shift,
            } => vec![
                TAG_SEG_LUT,
                *n as u64,
                u64::from(*bits),
                u64::from(*table_bits),
                u64::from(*cell_bits),
                u64::from(*trunc),
                u64::from(*shift),
            ],
            FssRequest::TrigMask {
                n,
                terms,
                period_bits,
                frac_bits,
            } => vec![
                TAG_TRIG,
                *n as u64,
                u64::from(*terms),
                u64::from(*period_bits),
                u64::from(*frac_bits),
            ],
        }
    }

    /// Decodes a request from the front of `w`, returning it and the words used.
    pub fn decode(w: &[u64]) -> Result<(FssRequest, usize)> {
        let bad = |what: String| Error::Preprocessing(format!("malformed FSS request: {what}"));
        if w.len() < 3 {
            return Err(bad("truncated".into()));
        }
        let n = if w[1] > MAX_ELEMENTS {
            return Err(bad(format!("size {} too large", w[1])));
        } else {
            w[1] as usize
        };
        let width = |lo: u64, hi: u64, what: &str| -> Result<u32> {
            if (lo..=hi).contains(&w[2]) {
                Ok(w[2] as u32)
            } else {
                Err(bad(format!("{what} {} outside {lo}..={hi}", w[2])))
            }
        };
        let field = |i: usize| -> Result<u32> {
            let v = *w.get(i).ok_or_else(|| bad("truncated".into()))?;
            u32::try_from(v).map_err(|_| bad(format!("field {i} = {v} too large")))
        };
        let r = match w[0] {
            TAG_SIGN => (
                FssRequest::Sign {
                    n,
                    bits: width(2, 64, "bits")?,
                },
                3,
            ),
            TAG_RELU => (
                FssRequest::Relu {
                    n,
                    bits: width(2, 64, "bits")?,
                },
                3,
            ),
            TAG_RELU_COARSE => {
                let bits = width(3, 64, "bits")?;
                let skip = *w.get(3).ok_or_else(|| bad("truncated".into()))?;
                // `skip` is any word here: compare without adding to it.
                if skip == 0 || skip > u64::from(bits) - 2 {
                    return Err(bad(format!("skip {skip} for bits {bits}")));
                }
                (
                    FssRequest::ReluCoarse {
                        n,
                        bits,
                        skip: skip as u32,
                    },
                    4,
                )
            }
            // The newer kinds: read the fields (as u32, bounded), `check` validates them.
            TAG_DRELU_BIT => (
                FssRequest::DreluBit {
                    n,
                    bits: width(2, 64, "bits")?,
                    skip: field(3)?,
                },
                4,
            ),
            TAG_DRELU_MULTI => (
                FssRequest::DreluMulti {
                    n,
                    bits: width(2, 64, "bits")?,
                    k: field(3)?,
                },
                4,
            ),
            TAG_CLAMP_LUT => (
                FssRequest::ClampLut {
                    n,
                    bits: width(2, 64, "bits")?,
                    skip: field(3)?,
                    table_bits: field(4)?,
                },
                5,
            ),
            TAG_CMP_LUT_SQ => (
                FssRequest::CmpLutSq {
                    n,
                    bits: width(2, 64, "bits")?,
                    skip: field(3)?,
                    table_bits: field(4)?,
                    shift: field(5)?,
                },
                6,
            ),
            TAG_SEG_LUT => (
                FssRequest::SegLut {
                    n,
                    bits: width(1, 64, "bits")?,
                    table_bits: field(3)?,
                    cell_bits: field(4)?,
                    trunc: field(5)?,
                    shift: field(6)?,
                },
                7,
            ),
            TAG_LUT_GATE => (
                FssRequest::LutGate {
                    n,
                    bits: width(1, u64::from(DPF_LOCKSTEP_BITS), "bits")?,
                },
                3,
            ),
            TAG_LUT_GATE_SQ => (
                FssRequest::LutGateSq {
                    n,
                    bits: width(1, u64::from(DPF_LOCKSTEP_BITS), "bits")?,
                },
                3,
            ),
            TAG_TRUNC_DCF => (
                FssRequest::TruncDcf {
                    n,
                    shift: width(1, 62, "shift")?,
                },
                3,
            ),
            TAG_LUT => (
                FssRequest::Lut {
                    n,
                    bits: width(1, u64::from(MAX_LUT_BITS), "bits")?,
                },
                3,
            ),
            TAG_SPLINE => {
                let bits = width(1, 64, "bits")?;
                let l = *w.get(3).ok_or_else(|| bad("truncated".into()))?;
                if l == 0 || l > MAX_OUT_LEN as u64 {
                    return Err(bad(format!("payload length {l}")));
                }
                let l = l as usize;
                let payload = w
                    .get(4..4 + l)
                    .ok_or_else(|| bad("payload truncated".into()))?;
                (
                    FssRequest::Spline {
                        n,
                        bits,
                        payload: payload.to_vec(),
                    },
                    4 + l,
                )
            }
            TAG_TRIG => {
                let terms = width(1, 64, "terms")?;
                let w3 = *w.get(3).ok_or_else(|| bad("truncated".into()))?;
                let w4 = *w.get(4).ok_or_else(|| bad("truncated".into()))?;
                if !(1..=64).contains(&w3) || w4 > 62 {
                    return Err(bad(format!("period_bits {w3} / frac_bits {w4}")));
                }
                (
                    FssRequest::TrigMask {
                        n,
                        terms,
                        period_bits: w3 as u32,
                        frac_bits: w4 as u32,
                    },
                    5,
                )
            }
            t => return Err(bad(format!("unknown FSS tag {t}"))),
        };
        r.0.check()?;
        // The word counts (`correction_len`) must not overflow, whatever the payload.
        let k = r.0.kind();
        if n.checked_mul(k.key_words + k.extra).is_none() {
            return Err(bad(format!(
                "{n} elements of {} key words overflow the word count",
                k.key_words
            )));
        }
        Ok(r)
    }

    /// The dealer's words for P0 and P1; advances `prg0`/`prg1` exactly as
    /// [`FssRequest::expand`] will on each side.
    pub fn deal(&self, prg0: &mut Prg, prg1: &mut Prg) -> [Vec<u64>; 2] {
        let n = self.len();
        let k = self.kind();
        let r0 = prg0.words(n);
        let extra0: Vec<Vec<u64>> = (0..k.extra).map(|_| prg0.words(n)).collect();
        let own0: Vec<Vec<u64>> = (0..k.own).map(|_| prg0.words(n)).collect();
        let r1 = prg1.words(n);
        let own1: Vec<Vec<u64>> = (0..k.own).map(|_| prg1.words(n)).collect();
        // The secret bits of the own words: bit j of w[i] is (own0[j][i] ^ own1[j][i]) & 1.
        let w: Vec<u64> = (0..n)
            .map(|i| {
                own0.iter()
                    .zip(&own1)
                    .enumerate()
                    .fold(0, |acc, (j, (a, b))| acc | (((a[i] ^ b[i]) & 1) << j))
            })
            .collect();
        // SegLut's own words are additive shares of its masks r2 and r3, which its key
        // generation receives in place of the bits.
        let sum = |j: usize| -> Vec<u64> {
            own0[j]
                .iter()
                .zip(&own1[j])
                .map(|(a, b)| a.wrapping_add(*b))
                .collect()
        };
        let (w, w2) = if matches!(self, FssRequest::SegLut { .. }) {
            (sum(0), sum(1))
        } else {
            (w, vec![0; n])
        };
        let r: Vec<u64> = r0
            .iter()
            .zip(&r1)
            .map(|(a, b)| a.wrapping_add(*b))
            .collect();

        // P1's corrections: the extra shares' true values minus P0's shares.
        // P1's words are its keys first, then the corrections (so that `expand` hands
        // the keys on without copying them).
        let mut w1 = vec![0u64; self.correction_len(0)];
        for (j, e0) in extra0.iter().enumerate() {
            w1.extend(
                r.iter()
                    .zip(&w)
                    .zip(e0)
                    .map(|((&r, &w), s0)| self.extra_value(j, r, w).wrapping_sub(*s0)),
            );
        }
        let off1 = 0;
        let mut w0 = vec![0u64; self.correction_len(0)];

        // Keys, in parallel chunks, each with its own private seed.
        let kw = k.key_words;
        if kw > 0 && n > 0 {
            let mut private = Prg::from_os();
            let seeds: Vec<_> = (0..n.div_ceil(KEYGEN_CHUNK))
                .map(|_| private.seed())
                .collect();
            w0.par_chunks_mut(KEYGEN_CHUNK * kw)
                .zip(w1[off1..].par_chunks_mut(KEYGEN_CHUNK * kw))
                .zip(r.par_chunks(KEYGEN_CHUNK).zip(w.par_chunks(KEYGEN_CHUNK)))
                .zip(w2.par_chunks(KEYGEN_CHUNK).zip(seeds))
                .for_each(|(((o0, o1), (rs, ws)), (w2s, seed))| {
                    let mut rng = Prg::new(seed);
                    for ((((k0, k1), &r), &w), &w2) in o0
                        .chunks_mut(kw)
                        .zip(o1.chunks_mut(kw))
                        .zip(rs)
                        .zip(ws)
                        .zip(w2s)
                    {
                        let (a, b) = self.keygen(r, w, w2, &mut rng);
                        k0.copy_from_slice(&a);
                        k1.copy_from_slice(&b);
                    }
                });
        }
        if let Some(k1) = self.first_key_words() {
            // All comparison keys, then all lookup keys (the receivers slice, no copy).
            // In place but for the lookup keys: key i's comparison part moves forward to
            // i k1 (never past unread words), the lookup parts are appended after.
            for w in [&mut w0, &mut w1] {
                let mut lut = Vec::with_capacity(n * (kw - k1));
                for i in 0..n {
                    lut.extend_from_slice(&w[i * kw + k1..(i + 1) * kw]);
                    w.copy_within(i * kw..i * kw + k1, i * k1);
                }
                w[n * k1..n * kw].copy_from_slice(&lut);
            }
        }
        [w0, w1]
    }

    /// Words of the first of the two keys per element of the two-key kinds.
    fn first_key_words(&self) -> Option<usize> {
        match self {
            FssRequest::ClampLut { bits, skip, .. } | FssRequest::CmpLutSq { bits, skip, .. } => {
                Some(bdcf_key_words(bits - 1 - skip))
            }
            FssRequest::SegLut { bits, .. } => Some(dcf_key_words(*bits, 2)),
            _ => None,
        }
    }

    /// For the two-key kinds ([`FssRequest::ClampLut`], [`FssRequest::CmpLutSq`],
    /// [`FssRequest::SegLut`]): the comparison (or spline) keys and the lookup keys of its
    /// keys part (all of the former, then all of the latter). Errors for other requests or
    /// a keys part of the wrong length.
    pub fn split_clamp_keys<'a>(&self, keys: &'a [u64]) -> Result<(&'a [u64], &'a [u64])> {
        match self.first_key_words() {
            Some(k1) if keys.len() == self.len() * self.key_words() => {
                Ok(keys.split_at(self.len() * k1))
            }
            _ => Err(Error::Preprocessing(format!(
                "split_clamp_keys: {} words are not the keys of {self:?}",
                keys.len()
            ))),
        }
    }

    /// The true value of extra linear share `j` for mask r and own secret bits w (bit j:
    /// own word j).
    fn extra_value(&self, j: usize, r: u64, w: u64) -> u64 {
        match (self, j) {
            (FssRequest::DreluMulti { bits, .. }, j) => ((r >> (bits - 1)) & 1) ^ ((w >> j) & 1),
            (FssRequest::DreluBit { bits, .. } | FssRequest::CmpLutSq { bits, .. }, j) => {
                let m = (r >> (bits - 1)) & 1;
                let rho = m ^ (w & 1);
                let low = if *bits >= 64 {
                    r
                } else {
                    r & ((1u64 << bits) - 1)
                };
                match j {
                    0 => rho,
                    1 => low.wrapping_mul(rho),
                    2 => low,
                    3 => m,
                    _ => m & rho,
                }
            }
            (FssRequest::Sign { bits, .. }, _) => (r >> (bits - 1)) & 1,
            (FssRequest::Relu { bits, .. }, 0) => (r >> (bits - 1)) & 1,
            (FssRequest::Relu { bits, .. }, _) => r.wrapping_mul((r >> (bits - 1)) & 1),
            (FssRequest::ReluCoarse { bits, .. }, 0) => (r >> (bits - 1)) & 1,
            (FssRequest::ReluCoarse { bits, .. }, _) => r.wrapping_mul((r >> (bits - 1)) & 1),
            (FssRequest::TruncDcf { shift, .. }, 0) => r >> shift,
            (FssRequest::LutGateSq { bits, .. }, _) => r >> bits,
            (FssRequest::TruncDcf { .. }, _) => r >> 63,
            (
                FssRequest::TrigMask {
                    terms,
                    period_bits,
                    frac_bits,
                    ..
                },
                j,
            ) => {
                let terms = *terms as usize;
                let t = if *period_bits >= 64 {
                    r
                } else {
                    r & ((1u64 << period_bits) - 1)
                };
                let theta = std::f64::consts::TAU * (t as f64) / 2f64.powi(*period_bits as i32);
                let k = (j % terms + 1) as f64;
                let v = if j < terms {
                    (k * theta).sin()
                } else {
                    (k * theta).cos()
                };
                (v * 2f64.powi(*frac_bits as i32)).round() as i64 as u64
            }
            _ => 0,
        }
    }

    /// One element's pair of serialised keys for mask r and own secret bits w (for
    /// [`FssRequest::SegLut`]: w = r2 and w2 = r3, its second and third masks).
    fn keygen(&self, r: u64, w: u64, w2: u64, rng: &mut Prg) -> (Vec<u64>, Vec<u64>) {
        let low = |b: u32| if b >= 64 { r } else { r & ((1u64 << b) - 1) };
        let sigma = (w >> 1) & 1;
        let r2 = w;
        let w = w & 1;
        let pair = match self {
            FssRequest::DreluMulti { bits, .. } => {
                let h = bits - 1;
                bdcf_gen(low(h), h, rng).map(|[a, b]| (a, b))
            }
            FssRequest::DreluBit { bits, skip, .. } => {
                let h = bits - 1;
                bdcf_gen(low(h) >> skip, h - skip, rng).map(|[a, b]| (a, b))
            }
            FssRequest::LutGate { bits, .. } => {
                let alpha = (w << bits) | low(*bits);
                dpf_gen_early(alpha, &[1], bits + 1, lut_early(*bits), rng)
                    .map(|(a, b)| (a.to_words(), b.to_words()))
            }
            FssRequest::LutGateSq { bits, .. } => {
                let alpha = (w << bits) | low(*bits);
                let beta = r >> bits;
                let payload = [1, beta, beta.wrapping_mul(beta)];
                dpf_gen_early(alpha, &payload, bits + 1, lookup_early(*bits, 3), rng)
                    .map(|(a, b)| (a.to_words(), b.to_words()))
            }
            FssRequest::CmpLutSq {
                bits,
                skip,
                table_bits,
                shift,
                ..
            } => {
                let h = bits - 1;
                let (tb, sh) = (*table_bits, *shift);
                // Index mask: r's bits sh..sh + tb; gate mask: own word 1; beta: -(r mod
                // 2^sh), the masked offset's.
                let alpha = (sigma << tb) | ((r >> sh) & ((1u64 << tb) - 1));
                let beta = low(sh).wrapping_neg();
                let payload = [1, beta, beta.wrapping_mul(beta)];
                bdcf_gen(low(h) >> skip, h - skip, rng).and_then(|[mut a, mut b]| {
                    let (da, db) =
                        dpf_gen_early(alpha, &payload, tb + 1, lookup_early(tb, 3), rng)?;
                    a.extend(da.to_words());
                    b.extend(db.to_words());
                    Ok((a, b))
                })
            }
            FssRequest::SegLut {
                bits,
                table_bits,
                cell_bits,
                trunc,
                shift,
                ..
            } => {
                // Column mask from r2 (the second opening), row mask from r3.
                let (tb, cb, lo, sh) = (*table_bits, *cell_bits, *trunc, *shift);
                let col = (r2 >> (lo + sh)) & ((1u64 << cb) - 1);
                let row = w2 & ((1u64 << (tb - cb)) - 1);
                let alpha = (row << cb) | col;
                let beta = ((r2 >> lo) & ((1u64 << sh) - 1)).wrapping_neg();
                dcf_gen(low(*bits), &[1, r], *bits, rng).and_then(|(a, b)| {
                    let (da, db) = dpf_gen_early(alpha, &[1, beta], tb, lookup_early(tb, 2), rng)?;
                    let (mut a, mut b) = (a.to_words(), b.to_words());
                    a.extend(da.to_words());
                    b.extend(db.to_words());
                    Ok((a, b))
                })
            }
            FssRequest::ClampLut {
                bits,
                skip,
                table_bits,
                ..
            } => {
                let h = bits - 1;
                let rho = ((r >> h) & 1) ^ w;
                let tb = *table_bits;
                bdcf_gen(low(h) >> skip, h - skip, rng).and_then(|[mut a, mut b]| {
                    let alpha = (rho << tb) | low(tb);
                    let (da, db) = dpf_gen_early(alpha, &[1], tb + 1, lut_early(tb), rng)?;
                    a.extend(da.to_words());
                    b.extend(db.to_words());
                    Ok((a, b))
                })
            }
            FssRequest::Sign { bits, .. } | FssRequest::Relu { bits, .. } => {
                let h = bits - 1;
                let m = (r >> h) & 1;
                let beta = 1u64.wrapping_sub(2 * m);
                let payload = if matches!(self, FssRequest::Sign { .. }) {
                    vec![beta]
                } else {
                    vec![beta, r.wrapping_mul(beta)]
                };
                dcf_gen(low(h), &payload, h, rng).map(|(a, b)| (a.to_words(), b.to_words()))
            }
            FssRequest::ReluCoarse { bits, skip, .. } => {
                let h = bits - 1;
                let m = (r >> h) & 1;
                let beta = 1u64.wrapping_sub(2 * m);
                dcf_gen(low(h) >> skip, &[beta, r.wrapping_mul(beta)], h - skip, rng)
                    .map(|(a, b)| (a.to_words(), b.to_words()))
            }
            FssRequest::TruncDcf { shift, .. } => {
                dcf_gen(low(*shift), &[1], *shift, rng).map(|(a, b)| (a.to_words(), b.to_words()))
            }
            FssRequest::Spline { bits, payload, .. } => {
                dcf_gen(low(*bits), payload, *bits, rng).map(|(a, b)| (a.to_words(), b.to_words()))
            }
            FssRequest::Lut { bits, .. } => {
                dpf_gen_early(low(*bits), &[1], *bits, lut_early(*bits), rng)
                    .map(|(a, b)| (a.to_words(), b.to_words()))
            }
            FssRequest::TrigMask { .. } => Ok((vec![], vec![])),
        };
        // Parameters are validated when the request is decoded or built by a protocol.
        pair.expect("FSS request parameters are valid")
    }

    /// Party `party`'s material from its seed stream and the dealer's words: the parts
    /// listed in the module table (r, the extra linear shares, then all keys' words).
    pub fn expand(&self, party: usize, prg: &mut Prg, words: Vec<u64>) -> Result<Material> {
        let want = self.correction_len(party);
        if words.len() != want {
            return Err(Error::Preprocessing(format!(
                "dealer words for {self:?} to party {party}: got {}, expected {want}",
                words.len()
            )));
        }
        self.check()?;
        let n = self.len();
        let k = self.kind();
        let mut parts = Vec::with_capacity(2 + k.extra);
        parts.push(prg.words(n));
        let keys = if party == 0 {
            for _ in 0..k.extra {
                parts.push(prg.words(n));
            }
            words
        } else {
            let mut keys = words;
            let extras = keys.split_off(n * k.key_words);
            for j in 0..k.extra {
                parts.push(extras[j * n..(j + 1) * n].to_vec());
            }
            keys
        };
        for _ in 0..k.own {
            parts.push(prg.words(n));
        }
        parts.push(keys);
        Ok(Material { parts })
    }

    /// Validates the parameters (the widths a key generator accepts).
    pub fn check(&self) -> Result<()> {
        let bad = |what: String| {
            Err(Error::Preprocessing(format!(
                "invalid FSS request {self:?}: {what}"
            )))
        };
        match self {
            FssRequest::Sign { bits, .. } | FssRequest::Relu { bits, .. }
                if !(2..=64).contains(bits) =>
            {
                bad("bits must be in 2..=64".into())
            }
            FssRequest::ReluCoarse { bits, skip, .. }
                if !(3..=64).contains(bits) || *skip == 0 || *skip > bits - 2 =>
            {
                bad("bits must be in 3..=64 and skip in 1..=bits-2".into())
            }
            FssRequest::TruncDcf { shift, .. } if !(1..=62).contains(shift) => {
                bad("shift must be in 1..=62".into())
            }
            FssRequest::Spline { bits, payload, .. } => {
                if !(1..=64).contains(bits) {
                    bad("bits must be in 1..=64".into())
                } else if payload.is_empty() || payload.len() > MAX_OUT_LEN {
                    bad(format!("payload length {}", payload.len()))
                } else {
                    Ok(())
                }
            }
            FssRequest::DreluBit { bits, skip, .. }
                if !(2..=64).contains(bits) || *skip > bits - 2 =>
            {
                bad("bits must be in 2..=64 and skip in 0..=bits-2".into())
            }
            FssRequest::DreluMulti { bits, k, .. } if !(2..=64).contains(bits) || !(1..=64).contains(k) => {
                bad("bits must be in 2..=64 and k in 1..=64".into())
            }
            FssRequest::LutGate { bits, .. } | FssRequest::LutGateSq { bits, .. }
                if !(1..=DPF_LOCKSTEP_BITS).contains(bits) =>
            {
                bad(format!("bits must be in 1..={DPF_LOCKSTEP_BITS}"))
            }
            FssRequest::ClampLut {
                bits,
                skip,
                table_bits,
                ..
            } if !(2..=64).contains(bits)
                || *skip > bits - 2
                || !(1..=DPF_LOCKSTEP_BITS).contains(table_bits) =>
            {
                bad(format!(
                    "bits must be in 2..=64, skip in 0..=bits-2, table_bits in 1..={DPF_LOCKSTEP_BITS}"
                ))
            }
            FssRequest::CmpLutSq {
                bits,
                skip,
                table_bits,
                shift,
                ..
            } if !(2..=64).contains(bits)
                || *skip > bits - 2
                || !(1..=DPF_LOCKSTEP_BITS).contains(table_bits)
                || *shift == 0
                || shift + table_bits > *bits =>
            {
                bad(format!(
                    "bits must be in 2..=64, skip in 0..=bits-2, table_bits in 1..={DPF_LOCKSTEP_BITS}, shift >= 1 and shift + table_bits <= bits"
                ))
            }
            FssRequest::SegLut {
                bits,
                table_bits,
                cell_bits,
                trunc,
                shift,
                ..
            } if !(1..=64).contains(bits)
                || !(1..=MAX_LUT_BITS).contains(table_bits)
                || !(1..=*table_bits).contains(cell_bits)
                || *shift == 0
                || u64::from(*trunc) + u64::from(*shift) + u64::from(*cell_bits) > 64 =>
            {
                bad(format!(
                    "bits must be in 1..=64, table_bits in 1..={MAX_LUT_BITS}, cell_bits in 1..=table_bits, shift >= 1 and trunc + shift + cell_bits <= 64"
                ))
            }
            FssRequest::Lut { bits, .. } if !(1..=MAX_LUT_BITS).contains(bits) => {
                bad(format!("bits must be in 1..={MAX_LUT_BITS}"))
            }
            FssRequest::TrigMask {
                terms,
                period_bits,
                frac_bits,
                ..
            } if !(1..=64).contains(terms)
                || !(1..=64).contains(period_bits)
                || *frac_bits > 62 =>
            {
                bad("terms and period_bits must be in 1..=64, frac_bits <= 62".into())
            }
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::prg::Seed;

    fn wadd(a: &[u64], b: &[u64]) -> Vec<u64> {
        a.iter().zip(b).map(|(x, y)| x.wrapping_add(*y)).collect()
    }

    /// Deals `req` and expands both sides; also checks the streams stay in sync by
    /// drawing one more word on each side.
    fn deal_expand(req: &FssRequest) -> (Material, Material) {
        let (s0, s1) = (Seed::random(), Seed::random());
        let (mut d0, mut d1) = (Prg::new(s0), Prg::new(s1));
        let [w0, w1] = req.deal(&mut d0, &mut d1);
        assert_eq!(w0.len(), req.correction_len(0));
        assert_eq!(w1.len(), req.correction_len(1));
        let (mut p0, mut p1) = (Prg::new(s0), Prg::new(s1));
        let m0 = req.expand(0, &mut p0, w0).unwrap();
        let m1 = req.expand(1, &mut p1, w1).unwrap();
        assert_eq!(d0.words(1), p0.words(1), "P0 stream out of sync");
        assert_eq!(d1.words(1), p1.words(1), "P1 stream out of sync");
        (m0, m1)
    }

    #[test]
    fn key_word_formulas_match_the_keys() {
        let mut rng = Prg::from_os();
        for n in [1u32, 2, 12, 36, 63, 64] {
            for l in [1usize, 2, 5] {
                let (k, _) = dcf_gen(0, &vec![1; l], n, &mut rng).unwrap();
                assert_eq!(k.to_words().len(), dcf_key_words(n, l), "dcf n={n} l={l}");
                let (k, _) = crate::fss::dpf_gen(0, &vec![1; l], n, &mut rng).unwrap();
                assert_eq!(k.to_words().len(), dpf_key_words(n, l), "dpf n={n} l={l}");
                for e in 0..=MAX_EARLY.min(n) {
                    let (k, _) = dpf_gen_early(0, &vec![1; l], n, e, &mut rng).unwrap();
                    assert_eq!(k.to_words().len(), dpf_key_words_early(n, l, e));
                }
            }
        }
        let e = dpf_gen_early(0, &[1], 8, MAX_EARLY + 1, &mut rng).unwrap_err();
        assert!(e.to_string().contains("early"), "{e}");
    }

    #[test]
    fn sign_and_relu_material_is_consistent() {
        for bits in [2u32, 17, 64] {
            for relu in [false, true] {
                let n = 50;
                let req = if relu {
                    FssRequest::Relu { n, bits }
                } else {
                    FssRequest::Sign { n, bits }
                };
                let (m0, m1) = deal_expand(&req);
                let last = m0.parts.len() - 1;
                let r = wadd(&m0.parts[0], &m1.parts[0]);
                let m = wadd(&m0.parts[1], &m1.parts[1]);
                let k0 = dcf_keys(&m0.parts[last], n).unwrap();
                let k1 = dcf_keys(&m1.parts[last], n).unwrap();
                let h = bits - 1;
                for i in 0..n {
                    let mi = (r[i] >> h) & 1;
                    assert_eq!(m[i], mi);
                    if relu {
                        assert_eq!(
                            m0.parts[2][i].wrapping_add(m1.parts[2][i]),
                            r[i].wrapping_mul(mi)
                        );
                    }
                    let x = r[i] ^ 1; // some point
                    let y = wadd(&k0[i].eval(x), &k1[i].eval(x));
                    let d = u64::from((x & ((1u64 << h) - 1)) < (r[i] & ((1u64 << h) - 1)));
                    assert_eq!(y[0], d.wrapping_mul(1u64.wrapping_sub(2 * mi)));
                }
            }
        }
    }

    #[test]
    fn coarse_relu_material_compares_the_high_bits() {
        let (n, bits, skip) = (64usize, 36u32, 12u32);
        let req = FssRequest::ReluCoarse { n, bits, skip };
        let (m0, m1) = deal_expand(&req);
        assert_eq!(req.key_words(), dcf_key_words(bits - 1 - skip, 2));
        let r = wadd(&m0.parts[0], &m1.parts[0]);
        let m = wadd(&m0.parts[1], &m1.parts[1]);
        let rm = wadd(&m0.parts[2], &m1.parts[2]);
        let k0 = dcf_keys(&m0.parts[3], n).unwrap();
        let k1 = dcf_keys(&m1.parts[3], n).unwrap();
        let h = bits - 1;
        let mask = (1u64 << h) - 1;
        for i in 0..n {
            let mi = (r[i] >> h) & 1;
            assert_eq!(m[i], mi);
            assert_eq!(rm[i], r[i].wrapping_mul(mi));
            let alpha = (r[i] & mask) >> skip;
            for x in [alpha.wrapping_sub(1) & (mask >> skip), alpha, alpha + 1, 0] {
                let y = wadd(&k0[i].eval(x), &k1[i].eval(x));
                let beta = 1u64.wrapping_sub(2 * mi);
                let d = u64::from(x < alpha);
                assert_eq!(
                    y,
                    vec![
                        d.wrapping_mul(beta),
                        d.wrapping_mul(r[i].wrapping_mul(beta))
                    ]
                );
            }
        }
        for bad in [
            FssRequest::ReluCoarse {
                n,
                bits: 36,
                skip: 0,
            },
            FssRequest::ReluCoarse {
                n,
                bits: 36,
                skip: 35,
            },
            FssRequest::ReluCoarse {
                n,
                bits: 2,
                skip: 1,
            },
        ] {
            assert!(bad.check().is_err(), "{bad:?}");
            assert!(FssRequest::decode(&bad.encode()).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn requests_roundtrip_and_bad_ones_are_rejected() {
        let reqs = [
            FssRequest::Sign { n: 3, bits: 37 },
            FssRequest::Relu { n: 0, bits: 64 },
            FssRequest::ReluCoarse {
                n: 5,
                bits: 36,
                skip: 12,
            },
            FssRequest::TruncDcf { n: 9, shift: 16 },
            FssRequest::Spline {
                n: 4,
                bits: 20,
                payload: vec![1, 2, 3],
            },
            FssRequest::Lut { n: 5, bits: 8 },
            FssRequest::DreluBit {
                n: 6,
                bits: 32,
                skip: 13,
            },
            FssRequest::LutGate { n: 2, bits: 7 },
            FssRequest::DreluMulti {
                n: 4,
                bits: 33,
                k: 3,
            },
            FssRequest::ClampLut {
                n: 3,
                bits: 24,
                skip: 3,
                table_bits: 7,
            },
            FssRequest::CmpLutSq {
                n: 3,
                bits: 32,
                skip: 13,
                table_bits: 6,
                shift: 13,
            },
            FssRequest::TrigMask {
                n: 3,
                terms: 7,
                period_bits: 40,
                frac_bits: 16,
            },
        ];
        for r in &reqs {
            let w = r.encode();
            assert_eq!(FssRequest::decode(&w).unwrap(), (r.clone(), w.len()));
        }
        assert!(FssRequest::decode(&[TAG_SIGN, 1, 1]).is_err());
        assert!(FssRequest::decode(&[TAG_TRUNC_DCF, 1, 63]).is_err());
        assert!(FssRequest::decode(&[TAG_LUT, 1, 17]).is_err());
        assert!(FssRequest::decode(&[TAG_SPLINE, 1, 8, 4, 1]).is_err());
        assert!(FssRequest::decode(&[TAG_SIGN, 1 << 40, 8]).is_err());
        assert!(FssRequest::decode(&[77, 1, 8]).is_err());
        assert!(FssRequest::decode(&[TAG_DRELU_BIT, 1, 8, 7]).is_err());
        assert!(FssRequest::decode(&[TAG_LUT_GATE, 1, 11]).is_err());
        assert!(FssRequest::decode(&[TAG_CLAMP_LUT, 1, 24, 3, 11]).is_err());
        assert!(FssRequest::decode(&[TAG_DRELU_MULTI, 1, 33, 0]).is_err());
        assert!(FssRequest::decode(&[TAG_DRELU_MULTI, 1, 33, 65]).is_err());
        assert!(FssRequest::decode(&[TAG_CLAMP_LUT, 1, 24, 23, 7]).is_err());
        let req = FssRequest::Lut { n: 2, bits: 4 };
        assert!(req.expand(0, &mut Prg::from_os(), vec![0; 3]).is_err());
    }

    #[test]
    fn dpf_lookup_matches_per_key_evaluation() {
        for bits in [1u32, 3, 7, 11] {
            for n in [1usize, 16, 37] {
                let req = FssRequest::Lut { n, bits };
                let (m0, m1) = deal_expand(&req);
                let r = wadd(&m0.parts[0], &m1.parts[0]);
                let size = 1usize << bits;
                let t0: Vec<u64> = (0..size as u64).map(|i| i * 7 + 3).collect();
                let t1: Vec<u64> = (0..size as u64).map(|i| i.wrapping_mul(0x9e37)).collect();
                // The index x = i (mod 2^bits), opened as c = x + r.
                let c: Vec<u64> = (0..n).map(|i| (i as u64).wrapping_add(r[i])).collect();
                let a = dpf_lookup(&m0.parts[1], &c, &[&t0, &t1]).unwrap();
                let b = dpf_lookup(&m1.parts[1], &c, &[&t0, &t1]).unwrap();
                for i in 0..n {
                    let x = i & (size - 1);
                    assert_eq!(a[0][i].wrapping_add(b[0][i]), t0[x], "bits {bits}");
                    assert_eq!(a[1][i].wrapping_add(b[1][i]), t1[x], "bits {bits}");
                }
                if n > 1 {
                    assert!(dpf_lookup(&m0.parts[1][1..], &c[1..], &[&t0]).is_err());
                }
                assert!(dpf_lookup(&m0.parts[1], &c, &[&t0[1..]]).is_err());
            }
        }
    }

    #[test]
    fn drelu_bit_material_is_consistent() {
        use crate::fss::bdcf_eval_words;
        let n = 300;
        for (bits, skip) in [(2u32, 0u32), (18, 0), (32, 13), (36, 12), (64, 0), (64, 20)] {
            let req = FssRequest::DreluBit { n, bits, skip };
            let (m0, m1) = deal_expand(&req);
            assert_eq!(m0.parts.len(), 8);
            let r = wadd(&m0.parts[0], &m1.parts[0]);
            let [rho, rhor, rk, msb, rhom] =
                std::array::from_fn(|j| wadd(&m0.parts[1 + j], &m1.parts[1 + j]));
            let h = bits - 1;
            let levels = h - skip;
            let mut rng = Prg::from_os();
            let xs: Vec<u64> = (0..n).map(|_| rng.words(1)[0] >> (64 - levels)).collect();
            let a = bdcf_eval_words(&m0.parts[7], &xs, 1).unwrap();
            let b = bdcf_eval_words(&m1.parts[7], &xs, 1).unwrap();
            let mut ones = 0;
            for i in 0..n {
                let w = (m0.parts[6][i] ^ m1.parts[6][i]) & 1;
                let m = (r[i] >> h) & 1;
                let r_low = if bits == 64 {
                    r[i]
                } else {
                    r[i] & ((1u64 << bits) - 1)
                };
                assert_eq!(rho[i], m ^ w, "bits {bits}");
                assert_eq!(rk[i], r_low, "bits {bits}");
                assert_eq!(rhor[i], r_low.wrapping_mul(rho[i]));
                assert_eq!((msb[i], rhom[i]), (m, m & rho[i]));
                let low = if h == 64 {
                    r[i]
                } else {
                    r[i] & ((1u64 << h) - 1)
                };
                assert_eq!(a[i] ^ b[i], u8::from(xs[i] < low >> skip), "bits {bits}");
                ones += rho[i];
            }
            assert!(
                (100..200).contains(&ones),
                "rho is a fair bit: {ones} of {n}"
            );
        }
    }

    #[test]
    fn drelu_multi_material_has_a_mask_per_threshold() {
        let (n, bits, k) = (400usize, 33u32, 3usize);
        let (m0, m1) = deal_expand(&FssRequest::DreluMulti {
            n,
            bits,
            k: k as u32,
        });
        assert_eq!(m0.parts.len(), 2 + 2 * k);
        let r = wadd(&m0.parts[0], &m1.parts[0]);
        let h = bits - 1;
        let mut ones = vec![0u64; k];
        for (i, ri) in r.iter().enumerate() {
            let m = (ri >> h) & 1;
            for (j, one) in ones.iter_mut().enumerate() {
                let rho = m0.parts[1 + j][i].wrapping_add(m1.parts[1 + j][i]);
                let w = (m0.parts[1 + k + j][i] ^ m1.parts[1 + k + j][i]) & 1;
                assert_eq!(rho, m ^ w);
                *one += rho;
            }
        }
        // each rho_j a fair coin, and the masks differ between thresholds
        assert!(ones.iter().all(|&o| (150..250).contains(&o)), "{ones:?}");
        let same = (0..n)
            .filter(|&i| {
                m0.parts[1][i].wrapping_add(m1.parts[1][i])
                    == m0.parts[2][i].wrapping_add(m1.parts[2][i])
            })
            .count();
        assert!((150..250).contains(&same), "{same}");
    }

    #[test]
    fn gated_lookup_picks_the_payload_by_the_opened_bit() {
        for bits in [1u32, 3, 7, 10] {
            let n = 70;
            let (m0, m1) = deal_expand(&FssRequest::LutGate { n, bits });
            let r = wadd(&m0.parts[0], &m1.parts[0]);
            let size = 1usize << bits;
            let t: Vec<u64> = (0..size as u64).map(|i| i * 11 + 5).collect();
            let c: Vec<u64> = (0..n).map(|i| (i as u64 * 3).wrapping_add(r[i])).collect();
            let sel: Vec<u8> = (0..n).map(|i| (i % 2) as u8).collect();
            let a = dpf_lookup_gated(&m0.parts[2], &c, &sel, &[&t]).unwrap();
            let b = dpf_lookup_gated(&m1.parts[2], &c, &sel, &[&t]).unwrap();
            for i in 0..n {
                let sigma = ((m0.parts[1][i] ^ m1.parts[1][i]) & 1) as u8;
                // q = sel xor sigma is the gate the opened bit stands for.
                let q = u64::from(sel[i] ^ sigma);
                let x = (i * 3) & (size - 1);
                assert_eq!(a[0][i].wrapping_add(b[0][i]), q * t[x], "bits {bits}");
            }
            assert!(dpf_lookup_gated(&m0.parts[2], &c, &sel[1..], &[&t]).is_err());
            assert!(dpf_lookup(&m0.parts[2], &c, &[&t]).is_err());
        }
    }

    /// LutGateSq: the lookup returns q T[idx] times each payload word 1, beta, beta^2,
    /// beta = r >> bits from the dealt extra share; the same keys fail as plain lookups.
    #[test]
    fn squared_gated_lookup_scales_by_the_second_mask() {
        for bits in [1u32, 3, 5, 7, 10] {
            let n = 70;
            let req = FssRequest::LutGateSq { n, bits };
            let (m0, m1) = deal_expand(&req);
            assert_eq!(m0.parts.len(), 4);
            let r = wadd(&m0.parts[0], &m1.parts[0]);
            let beta = wadd(&m0.parts[1], &m1.parts[1]);
            let size = 1usize << bits;
            let t1: Vec<u64> = (0..size as u64).map(|i| i * 11 + 5).collect();
            let t2: Vec<u64> = (0..size as u64)
                .map(|i| (i ^ 3).wrapping_mul(1 << 40))
                .collect();
            let c: Vec<u64> = (0..n).map(|i| (i as u64 * 3).wrapping_add(r[i])).collect();
            let sel: Vec<u8> = (0..n).map(|i| (i % 2) as u8).collect();
            let pairs: Vec<(usize, usize)> =
                (0..3).flat_map(|l| (0..2).map(move |t| (l, t))).collect();
            let tabs: [&[u64]; 2] = [&t1, &t2];
            let a = dpf_lookup_gated_pairs(&m0.parts[3], &c, &sel, &tabs, &pairs).unwrap();
            let b = dpf_lookup_gated_pairs(&m1.parts[3], &c, &sel, &tabs, &pairs).unwrap();
            assert_eq!(a.len(), 6);
            // A subset in another order.
            let a2 =
                dpf_lookup_gated_pairs(&m0.parts[3], &c, &sel, &tabs, &[(2, 1), (0, 0)]).unwrap();
            assert_eq!(a2, vec![a[5].clone(), a[0].clone()]);
            assert!(dpf_lookup_gated_pairs(&m0.parts[3], &c, &sel, &tabs, &[(3, 0)]).is_err());
            let none = dpf_lookup_gated_pairs(&m0.parts[3], &c, &sel, &tabs, &[]).unwrap();
            assert!(none.is_empty());
            assert!(dpf_lookup_gated_pairs(&m0.parts[3], &c, &sel, &tabs, &[(0, 2)]).is_err());
            for i in 0..n {
                assert_eq!(beta[i], r[i] >> bits);
                let sigma = ((m0.parts[2][i] ^ m1.parts[2][i]) & 1) as u8;
                let q = u64::from(sel[i] ^ sigma);
                let x = (i * 3) & (size - 1);
                let pw = [1, beta[i], beta[i].wrapping_mul(beta[i])];
                for (l, w) in pw.iter().enumerate() {
                    for (ti, t) in [&t1, &t2].iter().enumerate() {
                        let j = l * 2 + ti;
                        assert_eq!(
                            a[j][i].wrapping_add(b[j][i]),
                            (q * t[x]).wrapping_mul(*w),
                            "bits {bits} payload {l} table {ti}"
                        );
                    }
                }
            }
            assert!(dpf_lookup(&m0.parts[3], &c, &[&t1]).is_err());
            assert_eq!(FssRequest::decode(&req.encode()).unwrap(), (req.clone(), 3));
            assert!(FssRequest::decode(&[TAG_LUT_GATE_SQ, 4, 11]).is_err());
        }
    }

    #[test]
    fn clamp_lut_material_gates_the_lookup_by_the_comparison() {
        use crate::fss::bdcf_eval_words;
        let n = 200;
        let (bits, skip, tb) = (24u32, 3u32, 7u32);
        let (m0, m1) = deal_expand(&FssRequest::ClampLut {
            n,
            bits,
            skip,
            table_bits: tb,
        });
        assert_eq!(m0.parts.len(), 3);
        let req = FssRequest::ClampLut {
            n,
            bits,
            skip,
            table_bits: tb,
        };
        let (c0, l0) = req.split_clamp_keys(&m0.parts[2]).unwrap();
        let (c1, l1) = req.split_clamp_keys(&m1.parts[2]).unwrap();
        assert!(req.split_clamp_keys(&m0.parts[2][1..]).is_err());
        let r = wadd(&m0.parts[0], &m1.parts[0]);
        let h = bits - 1;
        let t: Vec<u64> = (0..128u64).map(|i| 1000 + i).collect();
        // u in [-100, 100): the opened c = u + r.
        let u: Vec<i64> = (0..n as i64).map(|i| i - 100).collect();
        let c: Vec<u64> = u
            .iter()
            .zip(&r)
            .map(|(&u, &r)| (u as u64).wrapping_add(r))
            .collect();
        let low = (1u64 << h) - 1;
        let xs: Vec<u64> = c.iter().map(|v| (v & low) >> skip).collect();
        let a = bdcf_eval_words(c0, &xs, 1).unwrap();
        let b = bdcf_eval_words(c1, &xs, 1).unwrap();
        let e: Vec<u8> = (0..n)
            .map(|i| {
                let w = ((m0.parts[1][i] ^ m1.parts[1][i]) & 1) as u8;
                a[i] ^ b[i] ^ w ^ 1 ^ ((c[i] >> h) & 1) as u8
            })
            .collect();
        let la = dpf_lookup_gated(l0, &c, &e, &[&t]).unwrap();
        let lb = dpf_lookup_gated(l1, &c, &e, &[&t]).unwrap();
        for i in 0..n {
            let got = la[0][i].wrapping_add(lb[0][i]);
            let idx = (u[i] as u64 & 127) as usize;
            // coarse: u in (-8, 0) may pass
            let ok = if u[i] >= 0 {
                got == t[idx]
            } else if u[i] > -(1 << skip) {
                got == 0 || got == t[idx]
            } else {
                got == 0
            };
            assert!(ok, "u = {}: {got}", u[i]);
        }
    }

    #[test]
    fn seg_lut_material_serves_spline_products_index_and_offset() {
        // The spline key at c' - t and c' gives [u < t] and r [u < t]; one opening of
        // v + r2 gives the lookup's column and masked offset, one of q + r3 its row; the
        // lookups (lockstep up to 10 index bits, key by key above) return T[idx] and
        // T[idx] beta, the column taken modulo the row.
        for (n, bits, tb, cb, lo, sh) in [
            (200usize, 20u32, 6u32, 6u32, 5u32, 4u32),
            (100, 24, 9, 5, 3, 6),
            (40, 30, 12, 8, 9, 7),
        ] {
            let req = FssRequest::SegLut {
                n,
                bits,
                table_bits: tb,
                cell_bits: cb,
                trunc: lo,
                shift: sh,
            };
            let (m0, m1) = deal_expand(&req);
            assert_eq!(m0.parts.len(), 4);
            let (s0, l0) = req.split_clamp_keys(&m0.parts[3]).unwrap();
            let (s1, l1) = req.split_clamp_keys(&m1.parts[3]).unwrap();
            let r = wadd(&m0.parts[0], &m1.parts[0]);
            let r2 = wadd(&m0.parts[1], &m1.parts[1]);
            let r3 = wadd(&m0.parts[2], &m1.parts[2]);
            let nmask = (1u64 << bits) - 1;
            let half = 1u64 << (bits - 1);
            let t = 3 * half / 2; // threshold 2^(bits-2) on u = x + N/2
            let step = half as i64 / n as i64;
            let x: Vec<i64> = (0..n as i64).map(|i| (i - n as i64 / 2) * step).collect();
            let cp: Vec<u64> = x
                .iter()
                .zip(&r)
                .map(|(&x, &r)| (x as u64).wrapping_add(half).wrapping_add(r) & nmask)
                .collect();
            let shifted: Vec<u64> = cp.iter().map(|c| c.wrapping_sub(t) & nmask).collect();
            let ev = |k: &[u64], xs: &[u64]| dcf_eval(k, xs).unwrap();
            let (a0, a1) = (ev(s0, &cp), ev(s1, &cp));
            let (b0, b1) = (ev(s0, &shifted), ev(s1, &shifted));
            for i in 0..n {
                let d = |j: usize| {
                    b0[2 * i + j]
                        .wrapping_add(b1[2 * i + j])
                        .wrapping_sub(a0[2 * i + j].wrapping_add(a1[2 * i + j]))
                };
                let below = u64::from(cp[i] < t);
                let want = u64::from(x[i] + (half as i64) < t as i64);
                assert_eq!(d(0).wrapping_add(below), want, "x = {}", x[i]);
                let got = d(1).wrapping_add(below.wrapping_mul(r[i]));
                assert_eq!(got, want.wrapping_mul(r[i]), "x = {}", x[i]);
            }
            // The lookup: v in [0, 2^(lo + sh + cb)) opened as v + r2, row q as q + r3.
            let (rows, cols) = (1u64 << (tb - cb), 1u64 << cb);
            let tab: Vec<u64> = (0..1u64 << tb).map(|i| 5 + 3 * i).collect();
            let top = 1u64 << (lo + sh + cb);
            let v: Vec<u64> = (0..n as u64)
                .map(|i| i * (top / n as u64) + i % 7)
                .collect();
            let q: Vec<u64> = (0..n as u64).map(|i| i % rows).collect();
            let u: Vec<u64> = v
                .iter()
                .zip(&r2)
                .map(|(v, r)| v.wrapping_add(*r) >> lo)
                .collect();
            let ci: Vec<u64> = (0..n)
                .map(|i| {
                    let row = q[i].wrapping_add(r3[i]) % rows;
                    row * cols + (u[i] >> sh) % cols
                })
                .collect();
            let pairs = [(0, 0), (1, 0)];
            let la = dpf_lookup_rows(l0, &ci, cb, &[&tab], &pairs).unwrap();
            let lb = dpf_lookup_rows(l1, &ci, cb, &[&tab], &pairs).unwrap();
            for i in 0..n {
                let beta = ((r2[i] >> lo) & ((1 << sh) - 1)).wrapping_neg();
                let off = (u[i] & ((1 << sh) - 1)).wrapping_add(beta) as i64;
                assert!((-(1i64 << sh)..(1i64 << sh)).contains(&off), "v = {}", v[i]);
                // v' = v >> lo or one more (the carry of the dropped bits); z the cell of
                // v', floor or one more, with v' - z 2^sh = off.
                let vp = u[i].wrapping_sub(r2[i] >> lo) & (u64::MAX >> lo);
                assert!(vp == v[i] >> lo || vp == (v[i] >> lo) + 1, "v = {}", v[i]);
                let z = (vp as i64 - off) >> sh;
                let fl = (vp >> sh) as i64;
                assert!(z == fl || z == fl + 1, "v = {}", v[i]);
                let idx = (q[i] * cols + z as u64 % cols) as usize;
                assert_eq!(la[0][i].wrapping_add(lb[0][i]), tab[idx], "v = {}", v[i]);
                assert_eq!(la[1][i].wrapping_add(lb[1][i]), tab[idx].wrapping_mul(beta));
            }
            assert_eq!(FssRequest::decode(&req.encode()).unwrap(), (req.clone(), 7));
        }
        for bad in [
            [TAG_SEG_LUT, 1, 24, 0, 1, 3, 4],
            [TAG_SEG_LUT, 1, 24, 17, 8, 3, 4],
            [TAG_SEG_LUT, 1, 24, 8, 9, 3, 4],
            [TAG_SEG_LUT, 1, 24, 8, 0, 3, 4],
            [TAG_SEG_LUT, 1, 24, 8, 4, 3, 0],
            [TAG_SEG_LUT, 1, 24, 8, 4, 40, 21],
            [TAG_SEG_LUT, 1, 0, 8, 4, 3, 4],
        ] {
            assert!(FssRequest::decode(&bad).is_err(), "{bad:?}");
        }
    }

    /// CmpLutSq: one opening of c = u + r gives the comparison bits at two shifts (the
    /// DreluBit extras and rho), the lookup's masked index (c + o) >> shift and the
    /// offset's masked value (c + o) mod 2^shift; the gated lookup returns q T[z] (1,
    /// beta, beta^2) with z the cell of u + o (floor or one more, so u + o - z 2^shift =
    /// (c + o) mod 2^shift + beta) and sigma from own word 1. Bad shapes are refused.
    #[test]
    fn cmp_lut_sq_material_serves_comparison_index_and_offset() {
        use crate::fss::bdcf_eval_words;
        let n = 300;
        let (bits, skip, tb, sh) = (24u32, 3u32, 6u32, 4u32);
        let req = FssRequest::CmpLutSq {
            n,
            bits,
            skip,
            table_bits: tb,
            shift: sh,
        };
        let (m0, m1) = deal_expand(&req);
        assert_eq!(m0.parts.len(), 9);
        let (c0, l0) = req.split_clamp_keys(&m0.parts[8]).unwrap();
        let (c1, l1) = req.split_clamp_keys(&m1.parts[8]).unwrap();
        let r = wadd(&m0.parts[0], &m1.parts[0]);
        let h = bits - 1;
        let size = 1u64 << tb;
        let o = (size / 2) << sh;
        let t: Vec<u64> = (0..size).map(|i| 1000 + 7 * i).collect();
        // u in [-500, 500): inside the table's [-512, 512).
        let u: Vec<i64> = (0..n as i64).map(|i| 10 * i / 3 - 500).collect();
        let c: Vec<u64> = u
            .iter()
            .zip(&r)
            .map(|(&u, &r)| (u as u64).wrapping_add(r) & ((1 << bits) - 1))
            .collect();
        let low = (1u64 << h) - 1;
        // The comparison at u >= 0 (bit 0 of the own words folds into rho).
        let xs: Vec<u64> = c.iter().map(|v| (v & low) >> skip).collect();
        let a = bdcf_eval_words(c0, &xs, 1).unwrap();
        let b = bdcf_eval_words(c1, &xs, 1).unwrap();
        let mut sel = vec![];
        for i in 0..n {
            let w = ((m0.parts[6][i] ^ m1.parts[6][i]) & 1) as u8;
            let rho = m0.parts[1][i].wrapping_add(m1.parts[1][i]);
            assert_eq!(rho, ((r[i] >> h) & 1) ^ u64::from(w));
            let d = a[i] ^ b[i] ^ w ^ 1 ^ ((c[i] >> h) & 1) as u8 ^ rho as u8;
            if u[i] >= 0 {
                assert_eq!(d, 1, "u = {}", u[i]);
            } else if u[i] <= -(1 << skip) {
                assert_eq!(d, 0, "u = {}", u[i]);
            }
            // Gate q = i % 3 != 0, opened as q xor sigma.
            let sigma = ((m0.parts[7][i] ^ m1.parts[7][i]) & 1) as u8;
            sel.push(u8::from(i % 3 != 0) ^ sigma);
        }
        let ci: Vec<u64> = c
            .iter()
            .map(|&v| (v.wrapping_add(o) >> sh) % size)
            .collect();
        let pairs = [(0, 0), (1, 0), (2, 0)];
        let la = dpf_lookup_gated_pairs(l0, &ci, &sel, &[&t], &pairs).unwrap();
        let lb = dpf_lookup_gated_pairs(l1, &ci, &sel, &[&t], &pairs).unwrap();
        for i in 0..n {
            let du = c[i].wrapping_add(o) & ((1 << sh) - 1);
            let beta = (r[i] & ((1 << sh) - 1)).wrapping_neg();
            let uo = (u[i] + o as i64) as u64;
            // z = floor((u + o) / 2^sh) or one more, with u + o - z 2^sh = du + beta.
            let off = du.wrapping_add(beta) as i64;
            assert!((-(1i64 << sh)..(1i64 << sh)).contains(&off), "u = {}", u[i]);
            let z = (uo as i64 - off) >> sh;
            assert!(z == (uo >> sh) as i64 || z == (uo >> sh) as i64 + 1);
            let q = u64::from(i % 3 != 0);
            for (l, pw) in [1, beta, beta.wrapping_mul(beta)].iter().enumerate() {
                let got = la[l][i].wrapping_add(lb[l][i]);
                assert_eq!(
                    got,
                    (q * t[z as usize]).wrapping_mul(*pw),
                    "u = {} l {l}",
                    u[i]
                );
            }
        }
        assert_eq!(FssRequest::decode(&req.encode()).unwrap(), (req.clone(), 6));
        for bad in [
            [TAG_CMP_LUT_SQ, 1, 24, 3, 6, 0],
            [TAG_CMP_LUT_SQ, 1, 24, 3, 11, 4],
            [TAG_CMP_LUT_SQ, 1, 24, 3, 6, 19],
            [TAG_CMP_LUT_SQ, 1, 24, 23, 6, 4],
        ] {
            assert!(FssRequest::decode(&bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn trig_mask_material_is_consistent() {
        let n = 30;
        let (terms, s, f) = (3u32, 20u32, 16u32);
        let (m0, m1) = deal_expand(&FssRequest::TrigMask {
            n,
            terms,
            period_bits: s,
            frac_bits: f,
        });
        assert_eq!(m0.parts.len(), 2 + 2 * terms as usize);
        let r = wadd(&m0.parts[0], &m1.parts[0]);
        for (i, ri) in r.iter().enumerate() {
            let theta = std::f64::consts::TAU * ((ri & ((1 << s) - 1)) as f64) / (1u64 << s) as f64;
            for k in 0..terms as usize {
                let sv = m0.parts[1 + k][i].wrapping_add(m1.parts[1 + k][i]) as i64;
                let cv = m0.parts[1 + terms as usize + k][i]
                    .wrapping_add(m1.parts[1 + terms as usize + k][i])
                    as i64;
                let kk = (k + 1) as f64;
                assert!((sv as f64 / 65536.0 - (kk * theta).sin()).abs() < 1e-4);
                assert!((cv as f64 / 65536.0 - (kk * theta).cos()).abs() < 1e-4);
            }
        }
        assert!(FssRequest::decode(&[TAG_TRIG, 1, 7, 65, 16]).is_err());
        assert!(FssRequest::decode(&[TAG_TRIG, 1, 7, 40]).is_err());
    }

    #[test]
    fn trunc_spline_and_lut_material_is_consistent() {
        let n = 20;
        let (m0, m1) = deal_expand(&FssRequest::TruncDcf { n, shift: 12 });
        let r = wadd(&m0.parts[0], &m1.parts[0]);
        assert_eq!(
            wadd(&m0.parts[1], &m1.parts[1]),
            r.iter().map(|r| r >> 12).collect::<Vec<_>>()
        );
        assert_eq!(
            wadd(&m0.parts[2], &m1.parts[2]),
            r.iter().map(|r| r >> 63).collect::<Vec<_>>()
        );
        let (m0, m1) = deal_expand(&FssRequest::Spline {
            n,
            bits: 64,
            payload: vec![5, 7],
        });
        let r = wadd(&m0.parts[0], &m1.parts[0]);
        let (k0, k1) = (
            dcf_keys(&m0.parts[1], n).unwrap(),
            dcf_keys(&m1.parts[1], n).unwrap(),
        );
        for i in 0..n {
            assert_eq!(
                wadd(&k0[i].eval(r[i] - 1), &k1[i].eval(r[i] - 1)),
                vec![5, 7]
            );
            assert_eq!(wadd(&k0[i].eval(r[i]), &k1[i].eval(r[i])), vec![0, 0]);
        }
        let (m0, m1) = deal_expand(&FssRequest::Lut { n, bits: 6 });
        let r = wadd(&m0.parts[0], &m1.parts[0]);
        let (k0, k1) = (
            dpf_keys(&m0.parts[1], n).unwrap(),
            dpf_keys(&m1.parts[1], n).unwrap(),
        );
        for i in 0..n {
            let e = wadd(&k0[i].eval_all().unwrap(), &k1[i].eval_all().unwrap());
            for (z, v) in e.iter().enumerate() {
                assert_eq!(*v, u64::from(z as u64 == r[i] & 63));
            }
        }
    }
}
