//! Comparisons and the nonlinear steps built on them, by function secret sharing: each
//! is ONE online round after the masked opening (open c = x + r, then local key
//! evaluation), in both settings.
//!
//! ## How it runs in each setting
//! - **2PC**: the dealer D (party 2) deals a mask r (seed-compressed: P0's and P1's
//!   shares of r come from their PRG streams) and one FSS key per element to each of P0
//!   and P1 (`tessera::fss::material`). P0 and P1 open c = x + r (1 round, n words each)
//!   and evaluate their keys at c: the outputs are additive shares of the result.
//! - **3PC**: P2 acts as the FSS dealer for P0 and P1. Replicated shares are converted
//!   to 2-of-2 locally (P0: x0 + x1, P1: x2), P0 and P1 run the 2PC protocol with P2's
//!   keys (P2 never sees c), and the 2-of-2 result is left in pair form
//!   ([`Shared::pair`]): the next 2-of-2 protocol takes it as it is, and only a replicated
//!   product reshares it ([`Party::replicate`]: 1 round, n words each for P0 and P1,
//!   nothing for P2), so a chain of nonlinear steps pays no reshare at all.
//!
//! Results that are bits come as arithmetic shares of 0/1 in Z_2^64 (multiply them with
//! [`crate::arith::mul`]). Every comparison takes the width `bits` the caller guarantees
//! for its operand (|v| < 2^(bits-1), v the value compared with 0); keys shrink with it
//! (SIGMA's trick); [`FULL_BITS`] = 64 is always safe. Where a caller tolerates an
//! error of the identity kind near 0 it can also drop the low bits of the comparison
//! (`relu2_skip`, [`max_last_axis_approx`]; `FssRequest::ReluCoarse`): keys and
//! evaluation shrink from bits - 1 to bits - 1 - skip levels, and relu(x) may return x
//! for x in (-2^skip, 0).
//!
//! ## Costs (n elements; words are 8 bytes)
//!
//! The same rounds and words in both settings (P2 sends nothing online in 3PC): the 3PC
//! result is a pair, and a replicated product that takes it pays its reshare (1 round,
//! n words for P0 and P1).
//!
//! | op | rounds | online words sent per party (P0, P1) | key bytes per element per party |
//! |---|---|---|---|
//! | [`sign`], [`drelu`], [`lt_const`], [`lt`] | 1 | n | 8 (4 + 3h + 1), h = bits - 1: 1552 (bits 64), 904 (bits 37); + 8 B to P1 |
//! | [`relu`] | 1 | n | 8 (4 + 4h + 2): 2064 (64), 1200 (37); + 16 B to P1 |
//! | [`max_last_axis`] (k entries per row) | L = ceil(log2 k) | n (k-1)/k summed over levels | as [`relu`], k - 1 per row |
//! | [`max_last_axis_approx`] (skip s) | as [`max_last_axis`] | as [`max_last_axis`] | 8 (4 + 4(h - s) + 2): 784 for bits 36, s = 12 |
//! | [`truncate_dcf`] (shift f) | 1 | n | 8 (4 + 3f + 1) = 424 for f = 16; + 16 B to P1 |
//! | `relu_bit2` (crate-internal; GeLU, the softmax max tree and clamp) | 2 | n bits/64 + n/64 (the comparison's opening carries `bits` bits: [`select_opened`] lifts the selection) | 8 (5 + 2 (h' - 7) + 2), h' = bits - 1 - skip levels: 232 at h' = 18 (vs 624 for [`relu`]); + 40 B to P1 |
//! | [`select`] | 1 (3PC: 2 with a pair input, which the product reshares) | 2n (Beaver) / n (+ n per pair input) | none (2PC: one Beaver triple, n words to P1) |
//!
//! [`truncate_dcf`] vs [`crate::arith::truncate`]: both open one masked value (1 round,
//! n words, 2PC). `arith::truncate` gets 16 B/element of dealer words (r >> f, msb r) and
//! is off by at most 1 ulp (it ignores the borrow from the low f bits);
//! `truncate_dcf` adds an f-bit DCF (424 B/element for f = 16) and is exact (floor).
//!
//! ## Select: Beaver multiplication, not an FSS fold
//! [`select`] computes y + b (x - y) with [`crate::arith::mul`]. Folding it into an FSS
//! output would need b and x - y opened under masks (a second masked opening and keys
//! of L = 2), for the same 1 round: a Beaver triple costs 8 B of dealer words per element
//! against ~1.5-2 KB of keys, and 3PC's replicated product needs no dealer at all. The
//! fold *is* used where the selection bit comes from the comparison of the very value
//! that is opened: [`relu`] (x * drelu(x) from the DCF payload r (1 - 2m), Boyle et al.
//! EC'21 §4.1 / SIGMA §4.2) and [`max_last_axis`] (max(a, b) = b + relu(a - b)), so
//! neither pays a multiplication round.
//!
//! ## FSS vs bit decomposition (the cost comparison)
//! Bit decomposition (ABY3 §5.3, PUMA/SPU's msb): 3PC replicated x = (x0 + x1) + x2;
//! P0 boolean-shares a = x0 + x1 (1 round, ~64 bits per party), x2 is boolean-shared
//! locally, and the msb of a + b is a63 ^ b63 ^ carry63. The carry comes from a
//! parallel-prefix adder: generate g_i = a_i b_i (63 ANDs, one layer) and a
//! log2(63) -> 6-layer tree of (g, p) combines (2 ANDs each, 62 nodes, ~118 ANDs for
//! the carry-out only): 7 AND layers = about log2(64) + 1 = 7 rounds, and with one
//! bit sent per AND per party about 63 + 118 + 64 = 245 bits ~ 31 B per element per
//! party (a full Kogge-Stone adder computing every carry, as SPU's PPA does, has
//! ~6 x 63 x 2 ANDs: ~830 bits ~ 104 B). The bit still needs a B2A step (1-2 more
//! rounds) to multiply; the figures below leave it out, in favour of the adder.
//!
//! Time = rounds x RTT + bytes per party / bandwidth, 10^6 elements, 3PC:
//!
//! | method | rounds | online B/elem | LAN (5 Gbit/s, 1 ms) | WAN (100 Mbit/s, 40 ms) |
//! |---|---|---|---|---|
//! | FSS sign, 2PC | 1 | 8 | 1 + 12.8 = 13.8 ms | 40 + 640 = 680 ms |
//! | FSS sign, 3PC, reshared for a replicated product | 2 | 16 | 2 + 25.6 = 27.6 ms | 80 + 1280 = 1.36 s |
//! | PPA, carry-out tree | 7 | 31 | 7 + 49.6 = 56.6 ms | 280 + 2480 = 2.76 s |
//! | PPA, full Kogge-Stone | 7 | 104 | 7 + 166 = 173 ms | 280 + 8320 = 8.6 s |
//! | FSS keys (offline), bits = 64 | - | 1552 | 2.48 s | 124 s |
//! | FSS keys (offline), bits = 37 | - | 904 | 1.45 s | 72 s |
//!
//! **Decision: we keep FSS.** Online it is about 2x faster than the best adder on both
//! profiles and 6x faster than a Kogge-Stone one, with 1-2 rounds instead of 7-9, which is
//! what matters on a WAN and for deep pipelines (softmax max, GeLU segments). The price
//! is the keys: ~1-1.5 KB per element per party, 30-50x the adder's online traffic.
//! That is fine when material is dealt ahead of time (`MaterialMode::Planned` or
//! `Files`), and a caller that knows its range should pass a small `bits` (37 halves
//! the keys). With a *live* 3PC P2 dealing inline the keys sit on the critical path and
//! the adder would win on total time; adding the bit-decomposition route for that case
//! is left as follow-up work.

use crate::arith;
use rayon::prelude::*;
use tessera::error::{Error, Result};
use tessera::fss::material::{dcf_eval, dpf_lookup_gated, FssRequest};
use tessera::preproc::{Material, Request};
use tessera::{Party, Shared};

/// The full input width: no range assumption beyond the ring.
pub const FULL_BITS: u32 = 64;

/// Bias of [`truncate_dcf`]: inputs must satisfy |x| < 2^62.
const BIAS_BITS: u32 = 62;

pub(crate) fn wadd(a: &[u64], b: &[u64]) -> Vec<u64> {
    a.iter().zip(b).map(|(x, y)| x.wrapping_add(*y)).collect()
}
pub(crate) fn wsub(a: &[u64], b: &[u64]) -> Vec<u64> {
    a.iter().zip(b).map(|(x, y)| x.wrapping_sub(*y)).collect()
}

/// FSS material for P0 / P1; `None` for party 2 (which deals it inline in 3PC).
pub(crate) fn fss_material(p: &mut Party, req: FssRequest) -> Result<Option<Material>> {
    req.check()?;
    let m = p.material(&Request::Fss(req))?;
    Ok((p.id() < 2).then_some(m))
}

/// P0 and P1 open c = y + r between them (one round, n words each); P2 does nothing.
pub(crate) fn open_masked(p: &mut Party, y: &[u64], r: &[u64], what: &str) -> Result<Vec<u64>> {
    open_sum(p, wadd(y, r), what)
}

/// P0 and P1 exchange shares that are already masked and both get their sum (one round,
/// n words each).
pub(crate) fn open_sum(p: &mut Party, mine: Vec<u64>, what: &str) -> Result<Vec<u64>> {
    let me = p.id();
    let n = mine.len();
    let other = p
        .exchange(vec![(1 - me, mine.clone())], &[(1 - me, n)], what)?
        .remove(0);
    Ok(wadd(&mine, &other))
}

/// Words of n values packed at `bits` bits each ([`pack_bits`]): ceil(n bits / 64).
pub(crate) fn packed_words(n: usize, bits: u32) -> usize {
    (n * bits as usize).div_ceil(64)
}

/// Packs the low `bits` bits of each value into a little-endian bit stream of
/// [`packed_words`] words (bits in 1..=64; higher bits are dropped).
pub(crate) fn pack_bits(vals: &[u64], bits: u32) -> Vec<u64> {
    if bits >= 64 {
        return vals.to_vec();
    }
    let mask = (1u64 << bits) - 1;
    let mut out = vec![0u64; packed_words(vals.len(), bits)];
    for (i, &v) in vals.iter().enumerate() {
        let v = v & mask;
        let at = i * bits as usize;
        let (w, o) = (at / 64, (at % 64) as u32);
        out[w] |= v << o;
        if o + bits > 64 {
            out[w + 1] |= v >> (64 - o);
        }
    }
    out
}

/// The inverse of [`pack_bits`]: n values of `bits` bits from `words`. Errors (naming
/// `what`) unless `words` holds exactly ceil(n bits / 64) words.
pub(crate) fn unpack_bits(words: &[u64], bits: u32, n: usize, what: &str) -> Result<Vec<u64>> {
    if bits >= 64 {
        return Ok(words.to_vec());
    }
    let need = packed_words(n, bits);
    if words.len() != need {
        return Err(Error::Unsupported(format!(
            "{what}: {} packed words for {n} values of {bits} bits (expected {need})",
            words.len()
        )));
    }
    let mask = (1u64 << bits) - 1;
    Ok((0..n)
        .map(|i| {
            let at = i * bits as usize;
            let (w, o) = (at / 64, (at % 64) as u32);
            let mut v = words[w] >> o;
            if o + bits > 64 {
                v |= words[w + 1] << (64 - o);
            }
            v & mask
        })
        .collect())
}

/// [`open_sum`] of several vectors, each in its own ring Z_2^bits, in ONE message: each
/// vector's low `bits` bits go packed ([`pack_bits`]), and each sum comes back reduced
/// mod 2^bits. Where the consumer of an opened masked value only needs it mod 2^bits (a
/// DPF index of `bits` bits, an opening whose products are only used mod 2^bits, a
/// truncation in a smaller ring: [`crate::arith::trunc2_ring`]), this sends bits / 64 of
/// the words (SIGMA's small-ring openings, Gupta et al. PETS'24, §3). Uniformly masked
/// words stay uniform in their low bits, so the view is as before. One round.
pub(crate) fn open_sum_rings(
    p: &mut Party,
    parts: Vec<(Vec<u64>, u32)>,
    what: &str,
) -> Result<Vec<Vec<u64>>> {
    let me = p.id();
    let mut msg = Vec::new();
    let mut lens = Vec::with_capacity(parts.len());
    for (v, bits) in &parts {
        let packed = pack_bits(v, *bits);
        lens.push(packed.len());
        if parts.len() == 1 {
            msg = packed;
        } else {
            msg.extend(packed);
        }
    }
    let total = msg.len();
    let other = p
        .exchange(vec![(1 - me, msg)], &[(1 - me, total)], what)?
        .remove(0);
    let mut off = 0;
    let mut out = Vec::with_capacity(parts.len());
    for ((v, bits), len) in parts.into_iter().zip(lens) {
        let theirs = unpack_bits(&other[off..off + len], bits, v.len(), what)?;
        off += len;
        let mask = if bits >= 64 {
            u64::MAX
        } else {
            (1u64 << bits) - 1
        };
        out.push(
            v.iter()
                .zip(&theirs)
                .map(|(a, b)| a.wrapping_add(*b) & mask)
                .collect(),
        );
    }
    Ok(out)
}

/// Bytes a piece of an opening sent in pieces carries at most, about: ~21 ms at 100
/// Mbit/s, long enough that a piece's per-message cost is small beside its transfer and
/// short enough that the first piece's compute (not overlapped) stays small too.
const PIECE_BYTES: usize = 1 << 18;

/// 0..n split into pieces for [`Party::exchange_pieces`]: about [`PIECE_BYTES`] each at
/// `bits` bits per unit, at most `max` of them, every boundary a multiple of `align`
/// units (so every piece but the last packs into whole words and the pieces' words add
/// up to the whole message's). Both parties derive the same split from public sizes.
pub(crate) fn piece_ranges(
    n: usize,
    bits: usize,
    align: usize,
    max: usize,
) -> Vec<std::ops::Range<usize>> {
    let align = align.max(1);
    let count = (n * bits / 8).div_ceil(PIECE_BYTES).clamp(1, max.max(1));
    let size = n.div_ceil(count).div_ceil(align).max(1) * align;
    (0..n)
        .step_by(size)
        .map(|a| a..(a + size).min(n))
        .chain((n == 0).then_some(0..0))
        .collect()
}

/// Most pieces of one opening ([`open_sum_ring_pieces`]).
const MAX_PIECES: usize = 16;

/// [`open_sum_ring`] of `blocks` vectors of n values each, every value in Z_2^bits, built
/// piece by piece so that building a piece overlaps the transfer of the ones before
/// ([`Party::exchange_pieces`]): `produce(range)` returns this party's masked values
/// for `range` of each block, block after block (blocks x range.len() values). The
/// result is the opened sums mod 2^bits, block after block (blocks x n), as
/// [`open_sum_ring`] of the concatenated blocks gives them, with the same words on the
/// wire. P0 and P1 only; one round.
pub(crate) fn open_sum_ring_pieces(
    p: &mut Party,
    n: usize,
    blocks: usize,
    bits: u32,
    produce: impl FnMut(std::ops::Range<usize>) -> Result<Vec<u64>>,
    what: &str,
) -> Result<Vec<u64>> {
    open_sum_ring_pieces_then(p, n, blocks, bits, produce, |_, _| Ok(()), what)
}

/// [`open_sum_ring_pieces`] that also hands each piece's opened values to `then(range,
/// opened)` as soon as the piece has landed (`opened`: the whole result so far, block
/// after block; `range` of each block is complete), so that the work on the opened
/// values (a comparison key's evaluation) overlaps the later pieces' transfer.
pub(crate) fn open_sum_ring_pieces_then(
    p: &mut Party,
    n: usize,
    blocks: usize,
    bits: u32,
    mut produce: impl FnMut(std::ops::Range<usize>) -> Result<Vec<u64>>,
    mut then: impl FnMut(std::ops::Range<usize>, &[u64]) -> Result<()>,
    what: &str,
) -> Result<Vec<u64>> {
    check_bits(bits, what)?;
    let peer = 1 - p.id().min(1);
    let ranges = piece_ranges(n, blocks * bits as usize, 64, MAX_PIECES);
    let lens: Vec<usize> = ranges
        .iter()
        .map(|r| packed_words(blocks * r.len(), bits))
        .collect();
    let mask = u64::MAX >> (64 - bits);
    let mut out = vec![0u64; blocks * n];
    // Written by `produce`, read by `consume` (which runs after every piece is sent).
    let mine = std::cell::RefCell::new(Vec::with_capacity(ranges.len()));
    p.exchange_pieces(
        peer,
        ranges.len(),
        |i| {
            let r = ranges[i].clone();
            let v = produce(r.clone())?;
            if v.len() != blocks * r.len() {
                return Err(Error::Unsupported(format!(
                    "{what}: {} values for a piece of {} x {}",
                    v.len(),
                    blocks,
                    r.len()
                )));
            }
            let packed = pack_bits(&v, bits);
            mine.borrow_mut().push(v);
            Ok(packed)
        },
        &lens,
        |i, theirs| {
            let r = &ranges[i];
            let theirs = unpack_bits(&theirs, bits, blocks * r.len(), what)?;
            for (b, (m, t)) in mine.borrow()[i]
                .chunks(r.len().max(1))
                .zip(theirs.chunks(r.len().max(1)))
                .enumerate()
            {
                let dst = &mut out[b * n + r.start..b * n + r.end];
                for ((d, x), y) in dst.iter_mut().zip(m).zip(t) {
                    *d = x.wrapping_add(*y) & mask;
                }
            }
            then(r.clone(), &out)
        },
        what,
    )?;
    Ok(out)
}

/// [`open_sum_rings`] of one vector: the sum mod 2^bits, bits / 64 words per element.
pub(crate) fn open_sum_ring(
    p: &mut Party,
    mine: Vec<u64>,
    bits: u32,
    what: &str,
) -> Result<Vec<u64>> {
    Ok(open_sum_rings(p, vec![(mine, bits)], what)?.remove(0))
}

fn check_bits(bits: u32, what: &str) -> Result<()> {
    if !(2..=64).contains(&bits) {
        return Err(Error::Unsupported(format!(
            "{what}: bits = {bits} outside 2..=64"
        )));
    }
    Ok(())
}

/// 2-of-2 shares of sign(y) = \[y < 0\] for |y| < 2^(bits-1) (P2: zeros). One round.
pub(crate) fn sign2(p: &mut Party, y: &[u64], bits: u32) -> Result<Vec<u64>> {
    let n = y.len();
    let Some(m) = fss_material(p, FssRequest::Sign { n, bits })? else {
        return Ok(vec![0; n]);
    };
    let (r, ms) = (&m.parts[0], &m.parts[1]);
    let c = open_masked(p, y, r, "sign open")?;
    let h = bits - 1;
    let low = (1u64 << h) - 1;
    let first = u64::from(p.id() == 0);
    let lows: Vec<u64> = c.iter().map(|v| v & low).collect();
    let o = dcf_eval(&m.parts[2], &lows)?;
    Ok((0..n)
        .into_par_iter()
        .map(|i| {
            // e = m xor [c_low < r_low] (the DCF payload is 1 - 2m)
            let e = ms[i].wrapping_add(o[i]);
            if (c[i] >> h) & 1 == 1 {
                first.wrapping_sub(e)
            } else {
                e
            }
        })
        .collect())
}

/// 2-of-2 shares of relu(y) = y \[y >= 0\] for |y| < 2^(bits-1) (P2: zeros). One round.
pub(crate) fn relu2(p: &mut Party, y: &[u64], bits: u32) -> Result<Vec<u64>> {
    relu2_skip(p, y, bits, 0, 64)
}

/// The request [`relu2_skip`] consumes: [`FssRequest::Relu`] for `skip` = 0, else
/// [`FssRequest::ReluCoarse`].
pub(crate) fn relu_request(n: usize, bits: u32, skip: u32) -> FssRequest {
    if skip == 0 {
        FssRequest::Relu { n, bits }
    } else {
        FssRequest::ReluCoarse { n, bits, skip }
    }
}

/// 2-of-2 shares of an approximate relu(y) for |y| < 2^(bits-1) - 2^skip (P2: zeros),
/// one round: the comparison ignores the low `skip` bits (SIGMA-style high-bit
/// comparison, [`FssRequest::ReluCoarse`]), so the result is relu(y), or y itself for y
/// in (-2^skip, 0). `skip` = 0 is the exact [`relu2`]. The result is correct mod
/// 2^`ring` (`bits` ..= 64): c = y + r is opened in that ring only, for a consumer that
/// needs no more (softmax's max tree, whose output only meets a truncation in Z_2^38).
pub(crate) fn relu2_skip(
    p: &mut Party,
    y: &[u64],
    bits: u32,
    skip: u32,
    ring: u32,
) -> Result<Vec<u64>> {
    let n = y.len();
    let Some(m) = fss_material(p, relu_request(n, bits, skip))? else {
        return Ok(vec![0; n]);
    };
    let (r, ms, rms) = (&m.parts[0], &m.parts[1], &m.parts[2]);
    let c = open_sum_ring(p, wadd(y, r), ring.clamp(bits, 64), "relu open")?;
    let h = bits - 1;
    let low = (1u64 << h) - 1;
    let first = u64::from(p.id() == 0);
    let lows: Vec<u64> = c.iter().map(|v| (v & low) >> skip).collect();
    let o = dcf_eval(&m.parts[3], &lows)?;
    Ok((0..n)
        .into_par_iter()
        .map(|i| {
            // e = m xor d and r e, with d = [c_low < r_low]
            let e = ms[i].wrapping_add(o[2 * i]);
            let re = rms[i].wrapping_add(o[2 * i + 1]);
            let (s, rs) = if (c[i] >> h) & 1 == 1 {
                (first.wrapping_sub(e), r[i].wrapping_sub(re))
            } else {
                (e, re)
            };
            // relu = (c - r)(1 - s) = c - c s - r + r s
            first
                .wrapping_mul(c[i])
                .wrapping_sub(c[i].wrapping_mul(s))
                .wrapping_sub(r[i])
                .wrapping_add(rs)
        })
        .collect())
}

/// P0 and P1 open XOR-shared bits (0/1 bytes) between them, packed 64 to a word: one
/// round, ceil(n / 64) words each. P2 must not call it.
pub(crate) fn open_bits(p: &mut Party, mine: &[u8], what: &str) -> Result<Vec<u8>> {
    let me = p.id();
    let mut words = vec![0u64; mine.len().div_ceil(64)];
    for (i, &b) in mine.iter().enumerate() {
        words[i / 64] |= u64::from(b & 1) << (i % 64);
    }
    let nw = words.len();
    let other = p
        .exchange(vec![(1 - me, words)], &[(1 - me, nw)], what)?
        .remove(0);
    Ok(mine
        .iter()
        .enumerate()
        .map(|(i, &b)| (b ^ (other[i / 64] >> (i % 64)) as u8) & 1)
        .collect())
}

/// This party's XOR shares of DReLU(y - s) xor rho_s for every public shift s, from the
/// opened c = y + r: the bit-DCF `keys` (one per element, comparing bits `skip..bits-1`)
/// evaluated at c - s, XOR the party's own words (`own[0]` for every shift, or `own[j]`
/// for shift j), XOR (P0 only) 1 xor bit bits-1 of c - s. DReLU(v) = 1 xor c'_h xor m xor
/// \[c' mod 2^h < r mod 2^h\] with c' = c - s, h = bits - 1, m = bit h of r (SIGMA
/// §4.1); the own words' XOR w folds in as rho = m xor w. One vector per shift.
pub(crate) fn drelu_share_bits(
    first: bool,
    c: &[u64],
    shifts: &[u64],
    bits: u32,
    skip: u32,
    keys: &[u64],
    own: &[&[u64]],
) -> Result<Vec<Vec<u8>>> {
    let h = bits - 1;
    let low = (1u64 << h) - 1;
    let k = shifts.len();
    let xs: Vec<u64> = c
        .iter()
        .flat_map(|&c| {
            shifts
                .iter()
                .map(move |&s| (c.wrapping_sub(s) & low) >> skip)
        })
        .collect();
    let o = tessera::fss::bdcf_eval_words(keys, &xs, k)?;
    Ok(shifts
        .iter()
        .enumerate()
        .map(|(j, &s)| {
            let w = own[j.min(own.len() - 1)];
            (0..c.len())
                .map(|i| {
                    let mut b = o[i * k + j] ^ (w[i] & 1) as u8;
                    if first {
                        b ^= 1 ^ ((c[i].wrapping_sub(s) >> h) & 1) as u8;
                    }
                    b
                })
                .collect()
        })
        .collect())
}

/// The request [`drelu_bits2`] and [`relu_bit2`] consume.
pub(crate) fn drelu_bit_request(n: usize, bits: u32, skip: u32) -> FssRequest {
    FssRequest::DreluBit { n, bits, skip }
}

/// Round 1 of the bit-output comparisons ([`FssRequest::DreluBit`]): P0 and P1 open
/// c = y + r mod 2^bits (`bits` / 64 words each: the comparison reads no more, and
/// [`select_opened`] lifts d y from it) and evaluate the bit DCF at c - s for every
/// public shift s of `shifts`. Returns the material, c, and per shift this party's XOR share of
/// DReLU(y - s) xor rho, where DReLU(v) = \[v >= 0\] for |v| < 2^(bits-1) - 2^skip (with
/// `skip` > 0 it may also read 1 for v in (-2^skip, 0), as [`relu2_skip`]). All shifts
/// share one rho: open at most one of them, or XORs of two (where rho cancels).
/// `None` for P2 (it only deals). (The bits: `drelu_share_bits`.)
#[allow(clippy::type_complexity)]
pub(crate) fn drelu_bits2(
    p: &mut Party,
    y: &[u64],
    bits: u32,
    skip: u32,
    shifts: &[u64],
) -> Result<Option<(Material, Vec<u64>, Vec<Vec<u8>>)>> {
    let n = y.len();
    let Some(m) = fss_material(p, drelu_bit_request(n, bits, skip))? else {
        return Ok(None);
    };
    let c = open_sum_ring(p, wadd(y, &m.parts[0]), bits, "drelu open")?;
    let first = p.id() == 0;
    let out = drelu_share_bits(first, &c, shifts, bits, skip, &m.parts[7], &[&m.parts[6]])?;
    Ok(Some((m, c, out)))
}

/// Shares of d y from the opened e = d xor rho of [`drelu_bits2`] (shift 0) and its
/// opened c = y + r' mod 2^k (k = `bits`, r' = r mod 2^k, m its top bit, c_h c's).
/// Where d = 1, y = c - r' + 2^k w exactly, with the wrap w = \[c < r'\] of y + 2^(k-1)
/// (SIGMA's signed reading); that wrap happens, for d = 1 (y >= 0, or y > -2^skip for a
/// coarse comparison), exactly when m = 1 and c_h = 0. So d y = d (c - R) with the
/// dealt R = r' - 2^k m (1 - c_h) chosen by the public c_h, and with d = e + (1 - 2e) rho,
/// d y = e (c - R) + (1 - 2e)(rho c - rho R), linear in the dealt rho, r', rho r', m,
/// rho m. This is what lets the comparison's opening carry k bits instead of 64 (the
/// bits above k of a 64-bit opening only served this selection).
pub(crate) fn select_opened(first: bool, c: &[u64], e: &[u8], m: &Material, bits: u32) -> Vec<u64> {
    let [rho, rhor, rk, msb, rhom] = std::array::from_fn(|j| &m.parts[1 + j][..]);
    (0..c.len())
        .into_par_iter()
        .map(|i| {
            let ci = if first { c[i] } else { 0 };
            let (mut big, mut rho_big) = (rk[i], rhor[i]);
            if bits < 64 && (c[i] >> (bits - 1)) & 1 == 0 {
                big = big.wrapping_sub(msb[i] << bits);
                rho_big = rho_big.wrapping_sub(rhom[i] << bits);
            }
            let sel = rho[i].wrapping_mul(c[i]).wrapping_sub(rho_big);
            if e[i] == 1 {
                ci.wrapping_sub(big).wrapping_sub(sel)
            } else {
                sel
            }
        })
        .collect()
}

/// 2-of-2 shares of relu(y) (approximate as [`relu2_skip`] when `skip` > 0) by the bit
/// comparison: open c = y + r, open the masked bit DReLU(y) xor rho, select. Two rounds
/// (n words, then n/64), against one round for [`relu2_skip`], for keys of 5 + 2(h - 7) +
/// 2 words instead of 4 + 4h + 2 (h = bits - 1 - skip levels): 29 against 78 words at 18
/// levels. P2: zeros.
pub(crate) fn relu_bit2(p: &mut Party, y: &[u64], bits: u32, skip: u32) -> Result<Vec<u64>> {
    let Some((m, c, mut e)) = drelu_bits2(p, y, bits, skip, &[0])? else {
        return Ok(vec![0; y.len()]);
    };
    let e = open_bits(p, &e.remove(0), "relu bit open")?;
    Ok(select_opened(p.id() == 0, &c, &e, &m, bits))
}

/// 2-of-2 shares of DReLU(u) T\[u mod 2^table_bits\] for |u| < 2^(bits-1) - 2^skip (with
/// `skip` > 0, DReLU may also read 1 for u in (-2^skip, 0)): a lookup clamped below at
/// 0 ([`FssRequest::ClampLut`]). One opening of c = u + r serves the bit-DCF comparison
/// and the gated DPF lookup; the opened DReLU(u) xor rho selects the lookup's subtree
/// (`dpf_lookup_gated`), so the gate costs no product and no second index opening. Two
/// rounds, n + n/64 words per party (a ReLU clamp and then a lookup: three rounds,
/// 2n + n/64). Returns the lookup with its openings done and its evaluation pending
/// ([`PendingLookup::eval`]), so a consumer that opens the result masked can run it piece
/// by piece beside that opening's transfer. P2: `None`.
pub(crate) fn clamp_lookup2(
    p: &mut Party,
    u: &[u64],
    bits: u32,
    skip: u32,
    table: Vec<u64>,
    table_bits: u32,
) -> Result<Option<PendingLookup>> {
    let n = u.len();
    let req = FssRequest::ClampLut {
        n,
        bits,
        skip,
        table_bits,
    };
    let Some(m) = fss_material(p, req.clone())? else {
        return Ok(None);
    };
    let (cmp_keys, lut_keys) = req.split_clamp_keys(&m.parts[2])?;
    let lut_at = cmp_keys.len();
    let key_words = lut_keys.len() / n.max(1);
    // The comparison reads bits 0..bits of c and the lookup its low table bits: c is
    // opened mod 2^bits.
    let c = open_sum_ring(p, wadd(u, &m.parts[0]), bits, "clamp lookup open")?;
    let first = p.id() == 0;
    let mine = drelu_share_bits(first, &c, &[0], bits, skip, cmp_keys, &[&m.parts[1]])?;
    let e = open_bits(p, &mine[0], "clamp lookup bit open")?;
    Ok(Some(PendingLookup {
        m,
        lut_at,
        key_words,
        c,
        e,
        table,
    }))
}

/// A [`clamp_lookup2`] whose two openings are done and whose gated DPF lookup is not: its
/// material (whose key part holds the lookup's keys from `lut_at` on, `key_words` words
/// each), the opened index c and the opened gate bits.
pub(crate) struct PendingLookup {
    m: Material,
    lut_at: usize,
    key_words: usize,
    c: Vec<u64>,
    e: Vec<u8>,
    table: Vec<u64>,
}

impl PendingLookup {
    /// This party's shares of DReLU(u) T\[u\] on the elements in `r` (a range within
    /// 0..n).
    pub(crate) fn eval(&self, r: std::ops::Range<usize>) -> Result<Vec<u64>> {
        let (keys, kw) = (&self.m.parts[2][self.lut_at..], self.key_words);
        if r.end > self.c.len() {
            return Err(Error::Unsupported(format!(
                "clamp lookup: elements {r:?} of {}",
                self.c.len()
            )));
        }
        let mut v = dpf_lookup_gated(
            &keys[r.start * kw..r.end * kw],
            &self.c[r.clone()],
            &self.e[r],
            &[&self.table],
        )?;
        Ok(v.pop().unwrap_or_default())
    }
}

/// 2-of-2 arithmetic 0/1 shares of \[y >= t_j\] for the public ring constants `ts` (one
/// vector per threshold), for |y - t_j| < 2^(bits-1): ONE bit-DCF key per element
/// evaluated at c - t_j for every j ([`FssRequest::DreluMulti`]; Boyle et al. EC'21 §4),
/// every opened bit under its own mask rho_j, then d_j = e_j + (1 - 2 e_j) rho_j. Two
/// rounds, n bits / 64 + k n / 64 words per party (k separate comparisons: k n words, k
/// keys).
/// P2: zeros.
pub(crate) fn ge_consts2(p: &mut Party, y: &[u64], bits: u32, ts: &[u64]) -> Result<Vec<Vec<u64>>> {
    let n = y.len();
    let k = ts.len();
    let req = FssRequest::DreluMulti {
        n,
        bits,
        k: k as u32,
    };
    let Some(m) = fss_material(p, req)? else {
        return Ok(vec![vec![0; n]; k]);
    };
    // The comparisons read bits 0..bits of c only: it is opened mod 2^bits.
    let c = open_sum_ring(p, wadd(y, &m.parts[0]), bits, "multi-threshold open")?;
    let first = p.id() == 0;
    let own: Vec<&[u64]> = m.parts[1 + k..1 + 2 * k]
        .iter()
        .map(Vec::as_slice)
        .collect();
    let mine = drelu_share_bits(first, &c, ts, bits, 0, &m.parts[1 + 2 * k], &own)?;
    let e = open_bits(p, &mine.concat(), "multi-threshold bits open")?;
    Ok((0..k)
        .map(|j| {
            let rho = &m.parts[1 + j];
            (0..n)
                .map(|i| {
                    let ej = u64::from(e[j * n + i]);
                    let base = if first { ej } else { 0 };
                    base.wrapping_add((1u64.wrapping_sub(2 * ej)).wrapping_mul(rho[i]))
                })
                .collect()
        })
        .collect())
}

/// \[x < 0\] as an arithmetic share of 0/1, for |x| < 2^(bits-1) (`bits` in 2..=64;
/// [`FULL_BITS`] assumes nothing).
///
/// SIGMA (Gupta et al. PETS'24) §4.1 DReLU / Boyle et al. EC'21 §4: with c = x + r
/// opened, sign = c_h xor m xor \[c mod 2^h < r mod 2^h\] (h = bits - 1, m = bit h of r);
/// one DCF on h bits whose payload 1 - 2m folds m in. Rounds: 1 in both settings (3PC
/// returns a pair). Online words sent per party: n (P0, P1; 0 for P2).
/// Dealer: 8 (5 + 3h) bytes of key per element to each of P0, P1 (+ 8 to P1).
pub fn sign(p: &mut Party, x: &Shared, bits: u32) -> Result<Shared> {
    check_bits(bits, "sign")?;
    let y = p.additive_view(x);
    let s = sign2(p, &y, bits)?;
    Shared::pair(p, x.shape(), s)
}

/// DReLU: \[x >= 0\] as an arithmetic share of 0/1, for |x| < 2^(bits-1). 1 - [`sign`]:
/// same rounds and bytes (1 round, n words for P0/P1, in both settings; 3PC returns a
/// pair).
/// SIGMA §4.1, Boyle et al. EC'21 §4.
pub fn drelu(p: &mut Party, x: &Shared, bits: u32) -> Result<Shared> {
    check_bits(bits, "drelu")?;
    let y = p.additive_view(x);
    let first = u64::from(p.id() == 0);
    let s: Vec<u64> = sign2(p, &y, bits)?
        .into_iter()
        .map(|v| first.wrapping_sub(v))
        .collect();
    Shared::pair(p, x.shape(), s)
}

/// \[x < t\] for a public ring constant t, as a share of 0/1; needs |x - t| <
/// 2^(bits-1). The sign of x - t ([`sign`]): 1 round, n words (P0, P1) in both settings
/// (3PC returns a pair). Boyle et al. EC'21 §4 (comparison with a public point).
pub fn lt_const(p: &mut Party, x: &Shared, t: u64, bits: u32) -> Result<Shared> {
    check_bits(bits, "lt_const")?;
    let mut y = p.additive_view(x);
    if p.id() == 0 {
        y.iter_mut().for_each(|v| *v = v.wrapping_sub(t));
    }
    let s = sign2(p, &y, bits)?;
    Shared::pair(p, x.shape(), s)
}

/// \[x < y\] for two secrets, as a share of 0/1: the sign of x - y, which must satisfy
/// |x - y| < 2^(bits-1). 1 round, n words (P0, P1) in both settings (3PC returns a
/// pair). SIGMA §4.1 (comparison through the MSB of the difference).
pub fn lt(p: &mut Party, x: &Shared, y: &Shared, bits: u32) -> Result<Shared> {
    check_bits(bits, "lt")?;
    let d = x.sub(y)?;
    sign(p, &d, bits)
}

/// ReLU: max(x, 0) for |x| < 2^(bits-1), in one round after the opening: the DCF
/// payload (1 - 2m, r (1 - 2m)) yields shares of both sign(x) and r sign(x), so
/// x (1 - sign) = (c - r)(1 - sign) is linear (Boyle et al. EC'21 §4.1 ReLU, SIGMA §4.2).
/// 1 round, n words (P0, P1) in both settings (3PC returns a pair). Dealer: 8 (6 + 4h)
/// bytes of key per element per party, h = bits - 1 (+ 16 B to P1).
pub fn relu(p: &mut Party, x: &Shared, bits: u32) -> Result<Shared> {
    check_bits(bits, "relu")?;
    let y = p.additive_view(x);
    let z = relu2(p, &y, bits)?;
    Shared::pair(p, x.shape(), z)
}

/// Multiplexer \[b ? x : y\] = y + b (x - y) for a shared bit b (0/1 arithmetic share) and
/// shared x, y of the same shape, by [`crate::arith::mul`] (see the module doc for why
/// not an FSS fold). 2PC: Beaver, 1 round, 2n words per party; 3PC: replicated product,
/// 1 round, n words per party (a pair input is reshared first: 1 round and n words more
/// for P0 and P1). The result has x's scale (b is an integer 0/1).
pub fn select(p: &mut Party, b: &Shared, x: &Shared, y: &Shared) -> Result<Shared> {
    let d = x.sub(y)?;
    let bd = arith::mul(p, b, &d)?;
    y.add(&bd)
}

/// Maximum over the last axis, as shape \[..., 1\] (the axis is kept, so the result
/// broadcasts back against x). A tree of ceil(log2 k) levels, each max(a, b) = b +
/// relu(a - b) with the FSS [`relu`]: one round per level; differences must satisfy
/// |a - b| < 2^(bits-1). 3PC stays 2-of-2 between levels and returns a pair.
/// Rounds: ceil(log2 k) in both settings (0 for k = 1). Words sent per party (P0, P1):
/// rows x sum over levels of floor(w/2).
/// PUMA §4.3 (max for softmax), with Boyle et al. EC'21 §4.1 ReLU gates.
pub fn max_last_axis(p: &mut Party, x: &Shared, bits: u32) -> Result<Shared> {
    max_last_axis_approx(p, x, bits, 0)
}

/// [`max_last_axis`] with comparisons that ignore the low `skip` bits
/// ([`FssRequest::ReluCoarse`]: DCF keys of bits - 1 - skip levels instead of bits - 1):
/// each level may keep the smaller of two entries when they differ by less than 2^skip,
/// so the result is an entry of the row within ceil(log2 k) 2^skip ring units below the
/// true maximum. That is all a softmax shift needs ([`crate::softmax`]). `skip` = 0 is
/// the exact [`max_last_axis`]; otherwise 1 <= skip <= bits - 2 and differences must
/// satisfy |a - b| < 2^(bits-1) - 2^skip. Same rounds and online words as
/// [`max_last_axis`].
pub fn max_last_axis_approx(p: &mut Party, x: &Shared, bits: u32, skip: u32) -> Result<Shared> {
    check_bits(bits, "max_last_axis")?;
    if skip > 0 && skip + 2 > bits {
        return Err(Error::Unsupported(format!(
            "max_last_axis: skip {skip} for bits {bits}"
        )));
    }
    let shape = x.shape().to_vec();
    let k = *shape.last().filter(|&&k| k > 0).ok_or_else(|| {
        Error::shape(
            "max_last_axis",
            format!("needs a non-empty last axis, got {shape:?}"),
        )
    })?;
    let mut out_shape = shape.clone();
    *out_shape.last_mut().expect("checked") = 1;
    if k == 1 {
        return Ok(x.clone());
    }
    let cur = max2_approx(p, p.additive_view(x), k, bits, skip, false, 64)?;
    Shared::pair(p, &out_shape, cur)
}

/// The tree of [`max_last_axis_approx`] on 2-of-2 shares of rows of k (P2: zeros),
/// returning 2-of-2 shares of the row maxima (no reshare). With `bitwise` every level
/// uses [`relu_bit2`] (two rounds, keys ~60% smaller) instead of [`relu2_skip`]; without,
/// the maxima are correct mod 2^`ring` only (64 for whole values), each level's opening
/// carrying `ring` bits.
pub(crate) fn max2_approx(
    p: &mut Party,
    mut cur: Vec<u64>,
    k: usize,
    bits: u32,
    skip: u32,
    bitwise: bool,
    ring: u32,
) -> Result<Vec<u64>> {
    let rows = cur.len() / k.max(1);
    let mut w = k;
    while w > 1 {
        let half = w / 2;
        let mut a = Vec::with_capacity(rows * half);
        let mut b = Vec::with_capacity(rows * half);
        for row in cur.chunks(w) {
            for j in 0..half {
                a.push(row[2 * j]);
                b.push(row[2 * j + 1]);
            }
        }
        let diff = wsub(&a, &b);
        let r = if bitwise {
            relu_bit2(p, &diff, bits, skip)?
        } else {
            relu2_skip(p, &diff, bits, skip, ring)?
        };
        let m = wadd(&b, &r);
        let nw = w.div_ceil(2);
        let mut next = Vec::with_capacity(rows * nw);
        for (row, mrow) in cur.chunks(w).zip(m.chunks(half)) {
            next.extend_from_slice(mrow);
            if w % 2 == 1 {
                next.push(row[w - 1]);
            }
        }
        cur = next;
        w = nw;
    }
    Ok(cur)
}

/// Exact truncation floor(x / 2^shift) (arithmetic shift) for |x| < 2^62, shift in
/// 1..=62, by a DCF on the opened value (Boyle et al. EC'21 §5.2 "ARS" gate, with the
/// wrap bit of the top taken from the one-bit gap as in [`crate::arith::truncate`]
/// instead of a 64-bit DCF): with x' = x + 2^62 and c = x' + r opened,
/// x' >> s = (c >> s) - (r >> s) + 2^(64-s) msb(r) (1 - msb(c)) - \[c mod 2^s < r mod 2^s\],
/// the last term from an s-bit DCF. No error at all (`arith::truncate` drops the borrow
/// and is off by up to 1 ulp). 1 round, n words (P0, P1) in both settings (3PC returns a
/// pair). Dealer: 8 (5 + 3s) bytes of key per element per party (424 for s = 16) + 16 B to P1.
pub fn truncate_dcf(p: &mut Party, x: &Shared, shift: u32) -> Result<Shared> {
    if !(1..=BIAS_BITS).contains(&shift) {
        return Err(Error::Unsupported(format!(
            "truncate_dcf: shift {shift} outside 1..=62"
        )));
    }
    let y = p.additive_view(x);
    let z = trunc_dcf2(p, &y, shift)?;
    Shared::pair(p, x.shape(), z)
}

fn trunc_dcf2(p: &mut Party, y: &[u64], shift: u32) -> Result<Vec<u64>> {
    let n = y.len();
    let Some(m) = fss_material(p, FssRequest::TruncDcf { n, shift })? else {
        return Ok(vec![0; n]);
    };
    let (r, rt, msb) = (&m.parts[0], &m.parts[1], &m.parts[2]);
    let first = p.id() == 0;
    let biased: Vec<u64> = if first {
        y.iter().map(|v| v.wrapping_add(1 << BIAS_BITS)).collect()
    } else {
        y.to_vec()
    };
    let c = open_masked(p, &biased, r, "truncation open")?;
    let low = (1u64 << shift) - 1;
    let top = 1u64 << (64 - shift);
    let unbias = 1u64 << (BIAS_BITS - shift);
    let lows: Vec<u64> = c.iter().map(|v| v & low).collect();
    let borrow = dcf_eval(&m.parts[3], &lows)?;
    Ok((0..n)
        .into_par_iter()
        .map(|i| {
            let mut v = rt[i].wrapping_neg().wrapping_sub(borrow[i]);
            if c[i] >> 63 == 0 {
                v = v.wrapping_add(top.wrapping_mul(msb[i]));
            }
            if first {
                v = v.wrapping_add((c[i] >> shift).wrapping_sub(unbias));
            }
            v
        })
        .collect())
}

/// Faithful truncation of 2-of-2 shares by `shift` (floor or one more; |x| < 2^62; one
/// round, n words per party); P2 (the dealer) gets zeros. See `crate::arith`.
pub(crate) fn trunc2(p: &mut Party, x: &[u64], shift: u32) -> Result<Vec<u64>> {
    crate::arith::trunc2(p, x, shift)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};
    use tessera::runtime::{run, run_parties};
    use tessera::{CommStats, MaterialMode, SessionOptions, Setting, Tensor};

    pub(crate) const SETTINGS: [Setting; 2] = [Setting::TwoPc, Setting::ThreePc];

    pub(crate) fn rng() -> rand::rngs::StdRng {
        rand::rngs::StdRng::seed_from_u64(11)
    }

    /// Edge values of a `bits`-wide signed range plus random ones inside it.
    pub(crate) fn edge_and_random(bits: u32, n: usize) -> Vec<u64> {
        let half = 1i128 << (bits - 1);
        let (lo, hi) = (-half, half - 1);
        let mut v: Vec<u64> = [0i128, 1, -1, 2, -2, lo, hi, lo + 1, hi - 1]
            .iter()
            .filter(|x| (lo..=hi).contains(*x))
            .map(|&x| x as i64 as u64)
            .collect();
        let mut r = rng();
        while v.len() < n {
            v.push(r.gen_range(lo..=hi) as i64 as u64);
        }
        v
    }

    /// Max over parties of the op's counters.
    pub(crate) fn max_stats(st: &[CommStats]) -> CommStats {
        st.iter().fold(CommStats::default(), |a, b| CommStats {
            rounds: a.rounds.max(b.rounds),
            online_sent: a.online_sent.max(b.online_sent),
            online_recv: a.online_recv.max(b.online_recv),
            offline_sent: a.offline_sent.max(b.offline_sent),
            offline_recv: a.offline_recv.max(b.offline_recv),
        })
    }

    /// Shares x (P0) and y (P1), runs `op`, opens; returns the opening and the op's
    /// max-over-parties counters (every compute party, P2 included in 3PC).
    pub(crate) fn binary(
        s: Setting,
        x: &Tensor<u64>,
        y: &Tensor<u64>,
        op: impl Fn(&mut Party, &Shared, &Shared) -> Result<Shared> + Sync,
    ) -> (Tensor<u64>, CommStats) {
        let outs = run(s, |p| {
            let xs = p.share_input(0, (p.id() == 0).then_some(x), x.shape())?;
            let ys = p.share_input(1, (p.id() == 1).then_some(y), y.shape())?;
            let before = p.stats();
            let z = op(p, &xs, &ys)?;
            let st = p.stats().since(&before);
            Ok((p.open(&z)?, st))
        })
        .unwrap();
        for o in &outs[1..] {
            assert_eq!(
                o.value.0, outs[0].value.0,
                "parties disagree on the opening"
            );
        }
        let st: Vec<CommStats> = outs.iter().map(|o| o.value.1).collect();
        (outs[0].value.0.clone(), max_stats(&st))
    }

    pub(crate) fn unary(
        s: Setting,
        x: &Tensor<u64>,
        op: impl Fn(&mut Party, &Shared) -> Result<Shared> + Sync,
    ) -> (Tensor<u64>, CommStats) {
        binary(s, x, x, |p, a, _| op(p, a))
    }

    /// The online cost of a one-opening FSS op on n elements: 1 round, n words per party,
    /// in both settings (the 3PC result is a pair, with no reshare).
    pub(crate) fn assert_one_opening(s: Setting, st: &CommStats, n: usize) {
        assert_eq!(st.rounds, 1, "{s:?}");
        assert_eq!(st.online_sent, 8 * n as u64, "{s:?}");
    }

    fn t(v: Vec<u64>) -> Tensor<u64> {
        Tensor::from_vec(&[v.len()], v).unwrap()
    }

    #[test]
    fn bit_packing_round_trips_at_every_width() {
        let mut r = rng();
        for bits in 1..=64u32 {
            for n in [0usize, 1, 63, 64, 65, 1000] {
                let v: Vec<u64> = (0..n).map(|_| r.gen::<u64>()).collect();
                let packed = pack_bits(&v, bits);
                assert_eq!(packed.len(), packed_words(n, bits), "{bits} {n}");
                let back = unpack_bits(&packed, bits, n, "test").unwrap();
                let mask = if bits == 64 {
                    u64::MAX
                } else {
                    (1 << bits) - 1
                };
                assert!(
                    back.iter().zip(&v).all(|(a, b)| *a == b & mask),
                    "{bits} {n}"
                );
                if !packed.is_empty() && bits < 64 {
                    assert!(unpack_bits(&packed[1..], bits, n, "test").is_err());
                }
            }
        }
    }

    #[test]
    fn pieces_cover_the_range_on_aligned_boundaries() {
        for (n, bits, align, max) in [
            (0usize, 60usize, 64usize, 16usize),
            (1, 60, 64, 16),
            (100_000, 120, 64, 16),
            (393_216, 102, 64, 16),
            (3_000_000, 64, 64, 16),
            (150, 32_400, 4, 4),
            (7, 1 << 22, 3, 4),
        ] {
            let r = piece_ranges(n, bits, align, max);
            assert!(!r.is_empty() && r.len() <= max, "{n} {bits}: {r:?}");
            assert_eq!(r[0].start, 0);
            assert_eq!(r.last().unwrap().end, n);
            for w in r.windows(2) {
                assert_eq!(w[0].end, w[1].start);
                assert_eq!(w[0].end % align, 0, "{n} {bits} {align}: {r:?}");
            }
            // About PIECE_BYTES each unless capped by `max`.
            let want = (n * bits / 8).div_ceil(PIECE_BYTES).clamp(1, max);
            assert!(r.len() <= want, "{n} {bits}: {} pieces for {want}", r.len());
        }
    }

    #[test]
    fn an_opening_in_pieces_sums_like_one_message_with_its_words() {
        // 2 blocks of 100 003 values at 60 bits: 1.5 MB in 6 pieces of ~250 KB; and a
        // small one (one piece). The sums are exact mod 2^60, the words those of one
        // packed message of all 2n values, one round.
        for n in [100_003usize, 37] {
            let (bits, blocks) = (60u32, 2usize);
            let mut r = rng();
            let a: Vec<u64> = (0..blocks * n).map(|_| r.gen()).collect();
            let b: Vec<u64> = (0..blocks * n).map(|_| r.gen()).collect();
            let pieces = piece_ranges(n, blocks * bits as usize, 64, MAX_PIECES).len();
            assert_eq!(pieces, if n > 1000 { 6 } else { 1 });
            let outs = run(Setting::TwoPc, |p| {
                let mine = if p.id() == 0 { &a } else { &b };
                let before = p.stats();
                let got = open_sum_ring_pieces(
                    p,
                    n,
                    blocks,
                    bits,
                    |r| {
                        let mut v = mine[r.clone()].to_vec();
                        v.extend(&mine[n + r.start..n + r.end]);
                        Ok(v)
                    },
                    "test pieces",
                )?;
                Ok((got, p.stats().since(&before)))
            })
            .unwrap();
            let mask = (1u64 << bits) - 1;
            for o in &outs[..2] {
                let (got, st) = &o.value;
                assert!(got
                    .iter()
                    .zip(a.iter().zip(&b))
                    .all(|(g, (x, y))| *g == x.wrapping_add(*y) & mask));
                assert_eq!(st.rounds, 1);
                assert_eq!(st.online_sent, 8 * packed_words(blocks * n, bits) as u64);
            }
        }
    }

    #[test]
    fn an_opening_in_pieces_rejects_a_piece_of_the_wrong_size() {
        let outs = run(Setting::TwoPc, |p| {
            let short = p.id() == 1;
            open_sum_ring_pieces(
                p,
                10,
                1,
                60,
                |r| Ok(vec![0; if short { r.len() - 1 } else { r.len() }]),
                "short piece",
            )
        });
        // P1 fails naming the step; the session's error is its own or P0's view of it.
        let e = outs.expect_err("a short piece must fail").to_string();
        assert!(e.contains("short piece") || e.contains("party 1"), "{e}");
    }

    #[test]
    fn bit_dcf_relu_matches_plaintext_with_two_rounds() {
        for (bits, skip) in [(64u32, 0u32), (37, 0), (32, 13), (20, 3), (2, 0)] {
            let mut v = edge_and_random(bits, 500);
            if skip > 0 {
                // |x| < 2^(bits-1) - 2^skip
                let lim = (1i64 << (bits - 1)) - (1i64 << skip);
                v.retain(|&x| (x as i64).abs() < lim);
            }
            let n = v.len();
            let x = t(v.clone());
            for s in SETTINGS {
                let (rl, st) = unary(s, &x, |p, a| relu_any(p, a, bits, skip, true));
                // open c in `bits` bits, open the masked bit (n/64 words), in both settings
                // (the 3PC result is a pair)
                let words = packed_words(n, bits) + n.div_ceil(64);
                assert_eq!(st.rounds, 2, "{s:?} bits {bits}");
                assert_eq!(st.online_sent, 8 * words as u64, "{s:?} bits {bits}");
                for (i, &vi) in v.iter().enumerate() {
                    let xi = vi as i64;
                    let got = rl.data()[i] as i64;
                    // coarse: x itself may pass for x in (-2^skip, 0)
                    let ok =
                        got == xi.max(0) || (skip > 0 && xi < 0 && xi > -(1 << skip) && got == xi);
                    assert!(ok, "{s:?} bits {bits} skip {skip}: relu({xi}) = {got}");
                }
            }
        }
    }

    #[test]
    fn one_key_compares_with_several_thresholds() {
        let bits = 33u32;
        let ts: [i64; 3] = [-(4 << 16), -127_795, (3 << 16) + 1];
        let mut v: Vec<u64> = edge_and_random(bits - 1, 300);
        for &t in &ts {
            v.extend([t - 1, t, t + 1].map(|x| x as u64));
        }
        let n = v.len();
        let x = t(v.clone());
        let tsu: Vec<u64> = ts.iter().map(|&t| t as u64).collect();
        for s in SETTINGS {
            let (got, st) = unary(s, &x, |p, a| {
                let y = p.additive_view(a);
                let ge = ge_consts2(p, &y, bits, &tsu)?;
                Shared::pair(p, &[3 * n], ge.concat())
            });
            // open c in `bits` bits, the 3n bits packed, in both settings (the 3PC result
            // is a pair)
            let words = packed_words(n, bits) + (3 * n).div_ceil(64);
            assert_eq!(st.online_sent, 8 * words as u64, "{s:?}");
            assert_eq!(st.rounds, 2, "{s:?}");
            for (j, &tj) in ts.iter().enumerate() {
                for (i, &vi) in v.iter().enumerate() {
                    let want = u64::from(vi as i64 >= tj);
                    assert_eq!(got.data()[j * n + i], want, "{s:?} [{} >= {tj}]", vi as i64);
                }
            }
        }
    }

    #[test]
    fn bit_dcf_opened_bits_do_not_depend_on_the_sign() {
        // The bits P0 and P1 open (DReLU xor rho) are fair coins whether every input is
        // positive or every input is negative.
        let n = 20_000;
        for s in SETTINGS {
            for value in [5u64 << 16, (-5i64 << 16) as u64] {
                let x = t(vec![value; n]);
                let outs = run(s, |p| {
                    let xs = p.share_input(0, (p.id() == 0).then_some(&x), &[n])?;
                    let y = p.additive_view(&xs);
                    match drelu_bits2(p, &y, 32, 13, &[0])? {
                        Some((_, _, mut e)) => open_bits(p, &e.remove(0), "test open"),
                        None => Ok(vec![]),
                    }
                })
                .unwrap();
                let ones = outs[1].value.iter().filter(|&&b| b == 1).count();
                // 5 standard deviations of a fair coin: 5 * sqrt(n) / 2 ~ 354
                assert!(
                    ones.abs_diff(n / 2) < 360,
                    "{s:?} {value:#x}: {ones} of {n}"
                );
            }
        }
    }

    #[test]
    fn sign_drelu_relu_match_plaintext_for_several_widths() {
        for bits in [64u32, 37, 20, 2] {
            let v = edge_and_random(bits, 300);
            let x = t(v.clone());
            for s in SETTINGS {
                let (sg, st) = unary(s, &x, |p, a| sign(p, a, bits));
                assert_one_opening(s, &st, v.len());
                let (dr, st) = unary(s, &x, |p, a| drelu(p, a, bits));
                assert_one_opening(s, &st, v.len());
                let (rl, st) = unary(s, &x, |p, a| relu(p, a, bits));
                assert_one_opening(s, &st, v.len());
                for (i, &vi) in v.iter().enumerate() {
                    let xi = vi as i64;
                    assert_eq!(
                        sg.data()[i],
                        u64::from(xi < 0),
                        "{s:?} bits {bits} sign({xi})"
                    );
                    assert_eq!(
                        dr.data()[i],
                        u64::from(xi >= 0),
                        "{s:?} bits {bits} drelu({xi})"
                    );
                    assert_eq!(
                        rl.data()[i] as i64,
                        xi.max(0),
                        "{s:?} bits {bits} relu({xi})"
                    );
                }
            }
        }
    }

    #[test]
    fn comparisons_with_constants_and_secrets() {
        let bits = 40;
        let mut v = edge_and_random(bits - 1, 200);
        let w: Vec<u64> = v.iter().rev().copied().collect();
        v[3] = w[3]; // equal operands
        v[10] = w[10];
        let (x, y) = (t(v.clone()), t(w.clone()));
        for s in SETTINGS {
            let (lt_xy, st) = binary(s, &x, &y, |p, a, b| lt(p, a, b, bits));
            assert_one_opening(s, &st, v.len());
            for c in [0i64, 5, -1, -(1 << 30)] {
                let (lc, st) = unary(s, &x, |p, a| lt_const(p, a, c as u64, bits));
                assert_one_opening(s, &st, v.len());
                for (i, &vi) in v.iter().enumerate() {
                    assert_eq!(
                        lc.data()[i],
                        u64::from((vi as i64) < c),
                        "{s:?} {} < {c}",
                        vi as i64
                    );
                }
            }
            for i in 0..v.len() {
                let (a, b) = (v[i] as i64, w[i] as i64);
                assert_eq!(lt_xy.data()[i], u64::from(a < b), "{s:?} {a} < {b}");
            }
            assert_eq!(lt_xy.data()[3], 0);
        }
    }

    /// Approximate ReLU on a replicated / additive share: [`relu2_skip`], or with
    /// `bitwise` [`relu_bit2`].
    fn relu_any(p: &mut Party, x: &Shared, bits: u32, skip: u32, bitwise: bool) -> Result<Shared> {
        let y = p.additive_view(x);
        let z = if bitwise {
            relu_bit2(p, &y, bits, skip)?
        } else {
            relu2_skip(p, &y, bits, skip, 64)?
        };
        Shared::pair(p, x.shape(), z)
    }

    #[test]
    fn coarse_relu_and_max_err_only_near_zero() {
        let (bits, skip) = (36u32, 12u32);
        let near = 1i64 << skip;
        let mut v: Vec<u64> = edge_and_random(bits - 2, 400);
        // Many values in and around the error window (-2^skip, 0).
        v.extend((-2 * near..2 * near).step_by(97).map(|x| x as u64));
        v.extend([(-near + 1) as u64, (-near) as u64, u64::MAX, 0, 1]);
        let x = t(v.clone());
        let mut flips = 0;
        for s in SETTINGS {
            let (z, st) = unary(s, &x, |p, a| relu_any(p, a, bits, skip, false));
            assert_one_opening(s, &st, v.len());
            for (xi, zi) in v.iter().zip(z.data()) {
                let xv = *xi as i64;
                let exact = xv.max(0) as u64;
                if *zi != exact {
                    assert!(xv > -near && xv < 0 && zi == xi, "{s:?} relu~({xv}) = {zi}");
                    flips += 1;
                }
            }
        }
        assert!(flips > 0, "the error window was never hit");
        // Max: an entry of the row, at most 7 * 2^skip below the true maximum.
        let (rows, k) = (16usize, 128usize);
        let mut r = rng();
        let v: Vec<u64> = (0..rows * k)
            .map(|_| r.gen_range(-(near * 20)..near * 20) as u64)
            .collect();
        let x = Tensor::from_vec(&[rows, k], v.clone()).unwrap();
        for s in SETTINGS {
            let (m, _) = unary(s, &x, |p, a| max_last_axis_approx(p, a, bits, skip));
            for (row, got) in v.chunks(k).zip(m.data()) {
                let mx = row.iter().map(|&a| a as i64).max().unwrap();
                assert!(row.contains(got), "{s:?}: {got} not in the row");
                let g = *got as i64;
                assert!(g <= mx && g > mx - 7 * near, "{s:?}: {g} vs {mx}");
            }
        }
    }

    #[test]
    fn select_picks_by_a_shared_bit() {
        let n = 64;
        let mut r = rng();
        let x = t((0..n).map(|_| r.gen()).collect());
        let y = t((0..n).map(|_| r.gen()).collect());
        let b = t((0..n).map(|i| (i % 3 == 0) as u64).collect());
        for s in SETTINGS {
            let outs = run(s, |p| {
                let bs = p.share_input(0, (p.id() == 0).then_some(&b), &[n])?;
                let xs = p.share_input(0, (p.id() == 0).then_some(&x), &[n])?;
                let ys = p.share_input(1, (p.id() == 1).then_some(&y), &[n])?;
                let before = p.stats();
                let z = select(p, &bs, &xs, &ys)?;
                let st = p.stats().since(&before);
                Ok((p.open(&z)?, st))
            })
            .unwrap();
            let st = max_stats(&outs.iter().map(|o| o.value.1).collect::<Vec<_>>());
            assert_eq!(st.rounds, 1);
            let words = if s == Setting::TwoPc { 2 * n } else { n };
            assert_eq!(st.online_sent, 8 * words as u64);
            for i in 0..n {
                let want = if b.data()[i] == 1 {
                    x.data()[i]
                } else {
                    y.data()[i]
                };
                assert_eq!(outs[0].value.0.data()[i], want, "{s:?}");
            }
        }
    }

    #[test]
    fn max_over_the_last_axis_in_log_rounds() {
        let bits = 48;
        for shape in [
            vec![3usize, 1],
            vec![2, 7],
            vec![4, 128],
            vec![5],
            vec![1, 2, 3],
        ] {
            let k = *shape.last().unwrap();
            let n: usize = shape.iter().product();
            let v = edge_and_random(bits - 1, n.max(9));
            let x = Tensor::from_vec(&shape, v[..n].to_vec()).unwrap();
            for s in SETTINGS {
                let (m, st) = unary(s, &x, |p, a| max_last_axis(p, a, bits));
                let mut want_shape = shape.clone();
                *want_shape.last_mut().unwrap() = 1;
                assert_eq!(m.shape(), &want_shape[..]);
                for (row, got) in x.data().chunks(k).zip(m.data()) {
                    let want = row.iter().map(|&a| a as i64).max().unwrap();
                    assert_eq!(*got as i64, want, "{s:?} {shape:?}");
                }
                let levels = (k as f64).log2().ceil() as u64;
                let rows = n / k;
                let mut words = 0;
                let mut w = k;
                while w > 1 {
                    words += rows * (w / 2);
                    w = w.div_ceil(2);
                }
                // The same in both settings: the 3PC tree stays 2-of-2 and returns a pair.
                assert_eq!(st.rounds, levels, "{s:?} {shape:?}");
                assert_eq!(st.online_sent, 8 * words as u64, "{s:?} {shape:?}");
            }
        }
    }

    #[test]
    fn dcf_truncation_is_exact_and_arith_truncation_within_one_ulp() {
        let mut v = edge_and_random(62, 2000);
        v.extend([
            (1u64 << 62) - 1,
            (-(1i64 << 62) + 1) as u64,
            65535,
            65536,
            (-65536i64) as u64,
        ]);
        let x = t(v.clone());
        for s in SETTINGS {
            for shift in [16u32, 1, 12, 24, 62] {
                let (z, st) = unary(s, &x, |p, a| truncate_dcf(p, a, shift));
                assert_one_opening(s, &st, v.len());
                for (a, b) in v.iter().zip(z.data()) {
                    assert_eq!(*b as i64, (*a as i64) >> shift, "{s:?} shift {shift}");
                }
            }
            // The comparison the issue asks for: same rounds, different dealer bytes/error.
            let outs = run(s, |p| {
                let xs = p.share_input(0, (p.id() == 0).then_some(&x), &[v.len()])?;
                let b0 = p.stats();
                let a = arith::truncate(p, &xs)?;
                let b1 = p.stats();
                let d = truncate_dcf(p, &xs, 16)?;
                let b2 = p.stats();
                Ok((p.open(&a)?, p.open(&d)?, b1.since(&b0), b2.since(&b1)))
            })
            .unwrap();
            let (a, d) = (&outs[0].value.0, &outs[0].value.1);
            let mut off = 0;
            for ((x, a), d) in v.iter().zip(a.data()).zip(d.data()) {
                let want = (*x as i64) >> 16;
                assert_eq!(*d as i64, want);
                let e = *a as i64 - want;
                assert!((0..=1).contains(&e), "arith::truncate off by {e}");
                off += e;
            }
            assert!(off > 0, "the borrow must show up for some random inputs");
            let (sa, sd) = (outs[1].value.2, outs[1].value.3);
            assert_eq!(sa.rounds, sd.rounds);
            assert_eq!(sa.online_sent, sd.online_sent);
            let n = v.len() as u64;
            let key = 8 * tessera::fss::material::dcf_key_words(16, 1) as u64;
            // P1's dealer words: arith 2 words per element; DCF the same plus its key.
            assert_eq!(sa.offline_recv, 16 * n);
            assert_eq!(sd.offline_recv, (16 + key) * n);
            // P0's: nothing for arith (all from its seed), the keys for the DCF.
            assert_eq!(outs[0].value.2.offline_recv, 0);
            assert_eq!(outs[0].value.3.offline_recv, key * n);
        }
    }

    #[test]
    fn planned_material_keeps_deal_and_expand_in_sync() {
        let v = edge_and_random(30, 100);
        let x = t(v.clone());
        let job = |p: &mut Party| -> Result<Vec<Tensor<u64>>> {
            let xs = p.share_input(0, (p.id() == 0).then_some(&x), &[v.len()])?;
            let a = sign(p, &xs, 31)?;
            let b = relu(p, &xs, 64)?;
            let c = truncate_dcf(p, &xs, 12)?;
            let m = max_last_axis(p, &xs.reshape(&[10, 10])?, 32)?;
            let sp = crate::spline::Spline::new(vec![0], vec![vec![1, 2], vec![3, 4]])?;
            let q = crate::spline::spline_coefficients(p, &xs, &sp, 32)?;
            let l = crate::lut::lut(p, &xs, &(0..64).collect::<Vec<u64>>(), 6)?;
            p.open_many(&[&a, &b, &c, &m, &q[0], &q[1], &l])
        };
        for s in SETTINGS {
            let live = run(s, |p| {
                let out = job(p)?;
                Ok((out, p.consumed_demand()))
            })
            .unwrap();
            let demand = live[0].value.1.clone();
            assert_eq!(demand.0.len(), 3 + 4 + 2, "{s:?}: {demand:?}");
            let opts = SessionOptions {
                material: MaterialMode::Planned(demand),
                ..Default::default()
            };
            let planned = run_parties(s, opts, job).unwrap();
            assert_eq!(planned[0].value, live[0].value.0, "{s:?}");
            for o in &planned {
                assert_eq!(
                    o.stats.offline_recv + o.stats.offline_sent,
                    0,
                    "{s:?}: material came live"
                );
            }
        }
    }

    #[test]
    fn bad_widths_are_errors() {
        for s in SETTINGS {
            let e = run(s, |p| {
                let x = Shared::zeros(p, &[3]);
                sign(p, &x, 1).map(|_| ())
            })
            .unwrap_err();
            assert!(e.to_string().contains("bits"), "{e}");
            let e = run(s, |p| {
                let x = Shared::zeros(p, &[3, 0]);
                max_last_axis(p, &x, 64).map(|_| ())
            })
            .unwrap_err();
            assert!(e.to_string().contains("max_last_axis"), "{e}");
        }
    }
}
