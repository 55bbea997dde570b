//! Secure arithmetic: multiplication, matrix multiplication and truncation, in both
//! settings.
//!
//! | op | 2PC (P0, P1 + dealer) | 3PC (replicated) |
//! |---|---|---|
//! | [`mul`] | Beaver triple: open x - a, y - b; 1 round, 2n words per party | local cross terms + zero-sharing + reshare; 1 round, n words per party |
//! | [`matmul`] | matrix triple: open X - A, Y - B; 1 round, mk + kn words | local products + reshare; 1 round, mn words |
//! | [`matmul_prepared`] | triple with a per-weight fixed B (W - B opened once): 1 round, mk words | as [`matmul`] |
//! | [`truncate`] | faithful: open x + r; 1 round, n words | faithful: open to P0/P1; 1 round, n words (P0, P1), result a pair |
//! | [`mul_trunc`], [`matmul_trunc`] | product then truncation: 2 rounds | fused: 1 round (the 3-of-3 product goes straight into the truncation), result a pair |
//!
//! 3PC products need replicated operands: a pair operand ([`Shared::pair`], what every
//! 2-of-2 protocol and truncation returns) is reshared first ([`Party::replicate`], both
//! operands in one round), so a product of pairs costs one round more than the table says.
//!
//! ## Faithful truncation (why this method)
//! With bias B = 2^62 and |x| < 2^62, x' = x + B lies in [0, 2^63): its top bit is free.
//! The dealer shares a uniform r together with r >> f (logical) and msb(r). The parties
//! open c = x' + r (uniform, so it reveals nothing). Because x' < 2^63, the addition
//! wrapped mod 2^64 exactly when msb(r) = 1 and msb(c) = 0 (the "one-bit gap" argument of
//! Cheetah / SIGMA), so the wrap bit w = msb(r)(1 - msb(c)) is *linear* in the shared
//! msb(r) once c is public, and
//! (c >> f) - (r >> f) + 2^(64-f) w = floor(x'/2^f) + carry, where carry = [c mod 2^f <
//! r mod 2^f] is in {0, 1}. The result is floor(x / 2^f) or one more: at most 1 ulp of
//! error, always, with no
//! failure probability (the SecureML local trick fails with probability ~|x|/2^63 per
//! element, which over BERT's ~10^8 truncations is not negligible). It costs one opening
//! and 2 words of dealer traffic per element. In 3PC, P2 deals to P0/P1 (seed-compressed),
//! P0/P1 open c between them (P2 never sees c) and the 2-of-2 result is left as a pair,
//! reshared only where a replicated product needs it. [`TruncMode::Local`] selects
//! SecureML's method.

use tessera::error::{Error, Result};
use tessera::preproc::Request;
use tessera::tensor::{batched, kernel, MatmulDims, Tensor};
use tessera::{Party, Setting, Shared, TruncMode};

pub(crate) const BIAS_BITS: u32 = 62;

/// Range of a truncated matrix product's result in real terms: |X W| < 2^20 (values up
/// to ~10^6; LLM activations stay below ~3 10^4, SmolLM2's largest). Within it the
/// product is only needed mod 2^[`product_ring`], so its masked openings (X - A, and
/// Y - B for two shared operands) carry that many bits instead of 64 (55 at f = 16;
/// SIGMA's small rings, PETS'24 §3) and its truncation only the bits above the shift
/// ([`trunc2_high`]: 39). Beyond it the result wraps, as any product beyond 2^(62 - 2f)
/// did before.
pub const PRODUCT_RANGE_BITS: u32 = 20;

/// The ring of a matrix product at scale f + `shift` that is truncated by `shift`:
/// f + shift + [`PRODUCT_RANGE_BITS`] + 3 bits (the high-bits truncation,
/// [`trunc2_high`], needs |x| < 2^(bits - 3)), at most 64.
pub fn product_ring(frac_bits: u32, shift: u32) -> u32 {
    (frac_bits + shift + PRODUCT_RANGE_BITS + 3).min(64)
}

/// The ring of an owner-held product truncated by `shift` ([`matmul_owner_trunc`], whose
/// truncation is exact at the owner, so it needs |x| < 2^(bits - 2) only): f + shift +
/// [`PRODUCT_RANGE_BITS`] + 2 bits, at most 64.
pub fn owner_ring(frac_bits: u32, shift: u32) -> u32 {
    (frac_bits + shift + PRODUCT_RANGE_BITS + 2).min(64)
}

/// Whether a product truncated by `shift` in [`product_ring`] can open only its high
/// bits: its range fits the ring with the high-bits truncation's headroom (the ring was
/// not capped at 64).
fn product_high(frac_bits: u32, shift: u32) -> bool {
    frac_bits + shift + PRODUCT_RANGE_BITS + 3 <= 64
}

fn wadd(a: &[u64], b: &[u64]) -> Vec<u64> {
    a.iter().zip(b).map(|(x, y)| x.wrapping_add(*y)).collect()
}
fn wsub(a: &[u64], b: &[u64]) -> Vec<u64> {
    a.iter().zip(b).map(|(x, y)| x.wrapping_sub(*y)).collect()
}
fn tensor(shape: &[usize], v: Vec<u64>) -> Result<Tensor<u64>> {
    Tensor::from_vec(shape, v)
}

/// 3PC reshare of a 3-of-3 additive sharing z (P_i holds z_i) into replicated form:
/// P_i sends z_i to P_{i-1}. One round, n words per party.
pub(crate) fn reshare3(p: &mut Party, shape: &[usize], z: Vec<u64>, what: &str) -> Result<Shared> {
    let n = z.len();
    let got = p
        .exchange(vec![(p.prev(), z.clone())], &[(p.next(), n)], what)?
        .remove(0);
    Shared::from_parts(tensor(shape, z)?, Some(tensor(shape, got)?))
}

fn check_same(x: &Shared, y: &Shared, op: &'static str) -> Result<()> {
    if x.shape() != y.shape() {
        return Err(Error::shape(
            op,
            format!("{:?} vs {:?}", x.shape(), y.shape()),
        ));
    }
    Ok(())
}

/// 3PC local product terms: x_i y_i + x_i y_{i+1} + x_{i+1} y_i + alpha_i (3-of-3 additive).
fn mul3_local(p: &mut Party, x: &Shared, y: &Shared) -> Result<Vec<u64>> {
    let xy = p.replicate(&[x, y])?;
    let (x0, x1) = xy[0].parts();
    let (y0, y1) = xy[1].parts();
    let (x1, y1) = (x1.expect("3pc share"), y1.expect("3pc share"));
    let alpha = p.zero_share(x.len())?;
    Ok(x0
        .data()
        .iter()
        .zip(x1.data())
        .zip(y0.data().iter().zip(y1.data()))
        .zip(alpha)
        .map(|(((&a0, &a1), (&b0, &b1)), al)| {
            a0.wrapping_mul(b0.wrapping_add(b1))
                .wrapping_add(a1.wrapping_mul(b0))
                .wrapping_add(al)
        })
        .collect())
}

/// 2PC Beaver product as this party's additive share (one round).
fn mul2(p: &mut Party, x: &Shared, y: &Shared) -> Result<Vec<u64>> {
    let n = x.len();
    let m = p.material(&Request::Beaver { n })?;
    let (a, b, c) = (&m.parts[0], &m.parts[1], &m.parts[2]);
    let mut msg = wsub(x.parts().0.data(), a);
    msg.extend(wsub(y.parts().0.data(), b));
    let other = p
        .exchange(
            vec![(1 - p.id(), msg.clone())],
            &[(1 - p.id(), 2 * n)],
            "beaver open",
        )?
        .remove(0);
    let e = wadd(&msg[..n], &other[..n]);
    let d = wadd(&msg[n..], &other[n..]);
    let first = p.id() == 0;
    Ok((0..n)
        .map(|i| {
            let mut z = c[i]
                .wrapping_add(e[i].wrapping_mul(b[i]))
                .wrapping_add(d[i].wrapping_mul(a[i]));
            if first {
                z = z.wrapping_add(e[i].wrapping_mul(d[i]));
            }
            z
        })
        .collect())
}

/// [x * y] element-wise, without truncation (the result carries the sum of both scales).
///
/// 2PC: Beaver triple (a, b, c); open x - a and y - b together: 1 round, 2n words per
/// party, n words of dealer material. 3PC: ABY3 local product with a zero-sharing, then
/// reshare: 1 round, n words per party.
pub fn mul(p: &mut Party, x: &Shared, y: &Shared) -> Result<Shared> {
    check_same(x, y, "mul")?;
    match p.setting() {
        Setting::TwoPc => {
            let z = mul2(p, x, y)?;
            Shared::from_parts(tensor(x.shape(), z)?, None)
        }
        Setting::ThreePc => {
            let z = mul3_local(p, x, y)?;
            reshare3(p, x.shape(), z, "mul reshare")
        }
    }
}

/// [x * y] of two fixed-point values, truncated back to the session scale.
/// 2PC 2 rounds; 3PC 1 (the 3-of-3 product goes into the truncation's opening; the result
/// is a pair), plus 1 if an operand is a pair.
pub fn mul_trunc(p: &mut Party, x: &Shared, y: &Shared) -> Result<Shared> {
    check_same(x, y, "mul_trunc")?;
    let f = p.fixed().frac_bits();
    match (p.setting(), p.trunc_mode()) {
        (Setting::ThreePc, TruncMode::Faithful) => {
            let z = mul3_local(p, x, y)?;
            trunc3_additive(p, x.shape(), z, true, f, 64, false)
        }
        _ => {
            let z = mul(p, x, y)?;
            truncate_by(p, &z, f)
        }
    }
}

/// [x * y] truncated by `shift` instead of f (e.g. 2f when y carries scale 2f, as in a
/// Horner step with a public coefficient folded into y). Same rounds and material as
/// [`mul_trunc`] with `shift` in place of f: 2PC 2 rounds, 3PC 1 (+ 1 for a pair operand).
pub fn mul_trunc_by(p: &mut Party, x: &Shared, y: &Shared, shift: u32) -> Result<Shared> {
    check_same(x, y, "mul_trunc_by")?;
    match (p.setting(), p.trunc_mode()) {
        (Setting::ThreePc, TruncMode::Faithful) => {
            let z = mul3_local(p, x, y)?;
            trunc3_additive(p, x.shape(), z, true, shift, 64, false)
        }
        _ => {
            let z = mul(p, x, y)?;
            truncate_by(p, &z, shift)
        }
    }
}

/// [x^2] truncated (same cost as [`mul_trunc`]).
pub fn square_trunc(p: &mut Party, x: &Shared) -> Result<Shared> {
    mul_trunc(p, x, x)
}

/// Truncates by the session's fractional bits: floor(x / 2^f) or one more (faithful mode).
pub fn truncate(p: &mut Party, x: &Shared) -> Result<Shared> {
    let f = p.fixed().frac_bits();
    truncate_by(p, x, f)
}

/// Truncates by `shift` bits (1..=62) with the session's [`TruncMode`].
pub fn truncate_by(p: &mut Party, x: &Shared, shift: u32) -> Result<Shared> {
    if !(1..=BIAS_BITS).contains(&shift) {
        return Err(Error::Unsupported(format!(
            "truncation shift {shift} outside 1..=62"
        )));
    }
    match (p.setting(), p.trunc_mode()) {
        (Setting::TwoPc, TruncMode::Faithful) => {
            let y = trunc2(p, x.parts().0.data(), shift)?;
            Shared::from_parts(tensor(x.shape(), y)?, None)
        }
        (Setting::TwoPc, TruncMode::Local) => {
            let me = p.id();
            Ok(x.map_local(|t| {
                t.map(|v| {
                    if me == 0 {
                        ((v as i64) >> shift) as u64
                    } else {
                        (((v.wrapping_neg() as i64) >> shift) as u64).wrapping_neg()
                    }
                })
            }))
        }
        (Setting::ThreePc, mode) => {
            // Replicated -> 2-of-2 between P0 (x0 + x1) and P1 (x2), locally.
            let (a, b) = x.parts();
            let b = b.expect("3pc share");
            let z = match p.id() {
                0 => wadd(a.data(), b.data()),
                1 => b.data().to_vec(),
                _ => vec![0; x.len()],
            };
            if mode == TruncMode::Local {
                let me = p.id();
                let y: Vec<u64> = z
                    .iter()
                    .map(|&v| match me {
                        0 => ((v as i64) >> shift) as u64,
                        1 => (((v.wrapping_neg() as i64) >> shift) as u64).wrapping_neg(),
                        _ => 0,
                    })
                    .collect();
                return Shared::pair(p, x.shape(), y);
            }
            trunc3_additive(p, x.shape(), z, false, shift, 64, false)
        }
    }
}

/// Faithful truncation of 2-of-2 additive shares held by P0 and P1 (see the module doc).
/// One round. In 3PC, P2 deals the material inline and gets zeros.
pub(crate) fn trunc2(p: &mut Party, x: &[u64], shift: u32) -> Result<Vec<u64>> {
    trunc2_ring(p, x, shift, 64)
}

/// [`trunc2`] for values known to satisfy |x| < 2^(bits - 2): the masked value is opened
/// in Z_2^bits only, bits / 64 words per element and party, and the result is exact
/// 64-bit shares of floor(x / 2^shift) (or one more), as [`trunc2`]'s.
///
/// Why it is exact: the shares' sum mod 2^bits is x mod 2^bits, so with the bias
/// 2^(bits - 2), x' = x + 2^(bits - 2) is an integer in [0, 2^(bits - 1)) and c = (x' +
/// r) mod 2^bits for the dealt r mod 2^bits ([`Request::Trunc`] with `bits`); the module
/// doc's one-bit-gap argument holds with 2^bits for 2^64 (SIGMA's truncate-reduce in a
/// small ring, Gupta et al. PETS'24, §4.2, keeping our 64-bit output). A value outside the
/// bound is reduced mod 2^bits (garbage), so callers pass a width their range proves.
pub(crate) fn trunc2_ring(p: &mut Party, x: &[u64], shift: u32, bits: u32) -> Result<Vec<u64>> {
    trunc2_open(p, x, shift, bits, false)
}

/// [`trunc2_ring`] that opens only the masked value's bits shift..bits: each party sends
/// the high part (c_i mod 2^bits) >> shift of its share of c, bits - shift bits per
/// element (39 instead of 55 for a product at f = 16), for values with |x| < 2^(bits - 3)
/// (one bit more headroom than [`trunc2_ring`]). The sum v of the high parts is c >>
/// shift less the carry out of the low parts; P0 adds half a unit first
/// ([`round_offset`]), so v = (c >> shift) + e with e in {-1, 0, 1} and, over the
/// shares, E\[e\] = frac(c / 2^shift) - 1/2: v is c / 2^shift rounded without bias, the
/// result is floor(x / 2^shift) - 1 ..= floor(x / 2^shift) + 2 with mean x / 2^shift,
/// unbiased like [`trunc2_ring`] (a bias of half a unit would add up in row sums:
/// softmax's 128-entry sums moved by 64 units, 10^-3), with a spread of about one unit
/// more.
///
/// Why it is exact otherwise (with h = v's top bit, v taken mod 2^(bits - shift), and
/// x' = x + 2^(bits - 2) in (2^(bits - 3), 3 2^(bits - 3))): the wrap correction only
/// matters where bit bits - 1 of r is set; then without a wrap c >= 2^(bits - 1) + x'
/// lies at least 2^(bits - 3 - shift) >= 2 units above the half-way point, so e cannot
/// clear h, and where e carries v past the top of the ring to 0 the correction adds
/// exactly the 2^(bits - shift) that v lost; with a wrap c < x' < 3 2^(bits - 3) and h is
/// clear, unless c >> shift = 0 and e = -1, where v wraps to the top and, uncorrected,
/// equals the corrected value; where bit bits - 1 of r is clear, x' <= c < 7 2^(bits -
/// 3) keeps v inside the ring. This is the local truncation of SecureML (Mohassel-Zhang
/// S&P'17 §4.1) applied to the masked value, whose wrap the dealt msb(r) corrects (the
/// view is a function of the old one's).
pub(crate) fn trunc2_high(p: &mut Party, x: &[u64], shift: u32, bits: u32) -> Result<Vec<u64>> {
    trunc2_open(p, x, shift, bits, true)
}

/// [`trunc2_high`] of n values that `produce(range)` forms piece by piece, each piece
/// masked and queued as soon as it is formed ([`crate::compare::open_sum_ring_pieces`]),
/// so that the work forming the values (a table lookup) overlaps the opening's transfer.
/// Same material, words and round as [`trunc2_high`]; P2 (3PC dealer) never calls
/// `produce` and gets zeros.
pub(crate) fn trunc2_high_pieces(
    p: &mut Party,
    n: usize,
    mut produce: impl FnMut(std::ops::Range<usize>) -> Result<Vec<u64>>,
    shift: u32,
    bits: u32,
) -> Result<Vec<u64>> {
    trunc2_with(p, n, shift, bits, |p, r| {
        let me = p.id();
        let (wire, pre) = trunc_wire(bits, Some(shift));
        let offset = round_offset(me, 2, pre);
        let c = crate::compare::open_sum_ring_pieces(
            p,
            n,
            1,
            wire,
            |rg| {
                let x = produce(rg.clone())?;
                Ok(high_parts(
                    ring_masked(me, &x, &r[rg], bits),
                    bits,
                    pre,
                    offset,
                ))
            },
            "truncation open",
        )?;
        Ok(c.into_iter().map(|v| v << pre).collect())
    })
}

fn trunc2_open(p: &mut Party, x: &[u64], shift: u32, bits: u32, high: bool) -> Result<Vec<u64>> {
    trunc2_with(p, x.len(), shift, bits, |p, r| {
        ring_trunc_open(p, x, r, bits, high.then_some(shift))
    })
}

/// A faithful truncation in Z_2^bits of n values whose masked opening `open(p, r)`
/// performs (given this party's share r of the mask, it returns the opened c): takes the
/// [`Request::Trunc`] material and finishes from c; P2 (3PC dealer) gets zeros.
fn trunc2_with(
    p: &mut Party,
    n: usize,
    shift: u32,
    bits: u32,
    open: impl FnOnce(&mut Party, &[u64]) -> Result<Vec<u64>>,
) -> Result<Vec<u64>> {
    let m = p.material(&Request::Trunc { n, shift, bits })?;
    let me = p.id();
    if me >= 2 {
        return Ok(vec![0; n]);
    }
    let c = open(p, &m.parts[0])?;
    Ok(finish_trunc_ring(
        me,
        &c,
        &m.parts[1],
        &m.parts[2],
        shift,
        bits,
    ))
}

/// Faithful truncation of 2-of-2 shares (as [`trunc2`]) with half the words per party and
/// one more round: P0 opens the first half of the elements to P1 only and P1 the second
/// half to P0 only (n/2 words each); the party that learned c adds the public term, and
/// returns msb(c) packed as bits (n/128 words) so the other can finish its share of the
/// wrap correction. Each party sees c on half the elements (a uniform value, as in
/// [`trunc2`], where it sees all of c) and msb(c) on the other half. Same material as
/// [`trunc2`]. 2 rounds, n/2 + n/128 words per party; P2 (3PC dealer) gets zeros.
/// (LayerNorm used it until rounds became the cost to cut; kept, tested, for callers
/// bound by bytes.)
#[allow(dead_code)]
pub(crate) fn trunc2_split(p: &mut Party, x: &[u64], shift: u32) -> Result<Vec<u64>> {
    use rayon::prelude::*;
    let n = x.len();
    let m = p.material(&Request::Trunc { n, shift, bits: 64 })?;
    let me = p.id();
    if me >= 2 {
        return Ok(vec![0; n]);
    }
    let other = 1 - me;
    let half = n / 2;
    // P0 reveals [0, half) to P1; P1 reveals [half, n) to P0.
    let (send_r, know_r) = if me == 0 {
        (0..half, half..n)
    } else {
        (half..n, 0..half)
    };
    let bias = if me == 0 { 1u64 << BIAS_BITS } else { 0 };
    let masked = |i: usize| x[i].wrapping_add(m.parts[0][i]).wrapping_add(bias);
    let mine: Vec<u64> = send_r.clone().map(masked).collect();
    let got = p
        .exchange(
            vec![(other, mine)],
            &[(other, know_r.len())],
            "truncation open (half)",
        )?
        .remove(0);
    let c: Vec<u64> = know_r
        .clone()
        .zip(&got)
        .map(|(i, v)| masked(i).wrapping_add(*v))
        .collect();
    let msb_words = |len: usize| len.div_ceil(64);
    let mut bits = vec![0u64; msb_words(c.len())];
    for (j, v) in c.iter().enumerate() {
        bits[j / 64] |= (v >> 63) << (j % 64);
    }
    let their = p
        .exchange(
            vec![(other, bits)],
            &[(other, msb_words(send_r.len()))],
            "truncation msb bits",
        )?
        .remove(0);
    let top = 1u64 << (64 - shift);
    let unbias = 1u64 << (BIAS_BITS - shift);
    let (k0, s0) = (know_r.start, send_r.start);
    Ok((0..n)
        .into_par_iter()
        .map(|i| {
            let (rt, mb) = (m.parts[1][i], m.parts[2][i]);
            let mut y = rt.wrapping_neg();
            if know_r.contains(&i) {
                let cv = c[i - k0];
                if cv >> 63 == 0 {
                    y = y.wrapping_add(top.wrapping_mul(mb));
                }
                y.wrapping_add((cv >> shift).wrapping_sub(unbias))
            } else {
                let j = i - s0;
                if (their[j / 64] >> (j % 64)) & 1 == 0 {
                    y = y.wrapping_add(top.wrapping_mul(mb));
                }
                y
            }
        })
        .collect())
}

/// Party `me`'s share of the truncation's masked value x + 2^(bits - 2) + r (P0 adds the
/// bias) from its shares of x and r.
fn ring_masked(me: usize, x: &[u64], r: &[u64], bits: u32) -> Vec<u64> {
    let bias = if me == 0 { 1u64 << (bits - 2) } else { 0 };
    x.iter()
        .zip(r)
        .map(|(v, r)| v.wrapping_add(*r).wrapping_add(bias))
        .collect()
}

/// The opening of [`trunc2_ring`]: c = (x + 2^(bits - 2) + r) mod 2^bits from this
/// party's shares of x and r, `bits` bits per element on the wire; with `high` = Some(s)
/// ([`trunc2_high`]), only each share's bits s..bits go (bits - s per element) and the
/// result is (sum of the high parts mod 2^(bits - s)) << s.
pub(crate) fn ring_trunc_open(
    p: &mut Party,
    x: &[u64],
    r: &[u64],
    bits: u32,
    high: Option<u32>,
) -> Result<Vec<u64>> {
    let mine = ring_masked(p.id(), x, r, bits);
    let (wire, pre) = trunc_wire(bits, high);
    let offset = round_offset(p.id(), 2, pre);
    let v = crate::compare::open_sum_ring(
        p,
        high_parts(mine, bits, pre, offset),
        wire,
        "truncation open",
    )?;
    Ok(if pre == 0 {
        v
    } else {
        v.into_iter().map(|v| v << pre).collect()
    })
}

/// A truncation opening's bits on the wire and the low bits each share drops:
/// (bits, 0), or (bits - s, s) for the high-bits opening by s.
fn trunc_wire(bits: u32, high: Option<u32>) -> (u32, u32) {
    match high {
        Some(s) => (bits - s, s),
        None => (bits, 0),
    }
}

/// Each word's bits pre..bits (all of them below bits for pre = 0), in place, after
/// adding `offset`. The high parts of `parts` additive shares sum to the high part of
/// their sum less the carries out of the low bits, (parts - 1) / 2 units on average
/// (each share's low bits are uniform); one party adds offset = (parts - 1) 2^(pre - 1)
/// (see [`round_offset`]) so that the truncation stays unbiased, as the faithful one is.
fn high_parts(mut v: Vec<u64>, bits: u32, pre: u32, offset: u64) -> Vec<u64> {
    if pre > 0 {
        let low = u64::MAX >> (64 - bits);
        v.iter_mut()
            .for_each(|w| *w = (w.wrapping_add(offset) & low) >> pre);
    }
    v
}

/// The offset P0 adds before a high-bits opening of `parts` shares ([`high_parts`]).
fn round_offset(me: usize, parts: u64, pre: u32) -> u64 {
    if me == 0 && pre > 0 {
        (parts - 1) << (pre - 1)
    } else {
        0
    }
}

/// [`trunc2_ring`] from material whose mask r, (r mod 2^bits) >> shift and msb are
/// `parts[0]`, `parts[rt]`, `parts[rt + 1]` (`Request::TruncSq` / `TruncLinSq`), also
/// returning the remainder x - 2^shift t in opened form: the wrap correction makes
/// t 2^shift = x - (c mod 2^shift) + (r mod 2^shift) exactly, so the remainder is
/// (c mod 2^shift) - (r mod 2^shift), and with the dealt beta = -(r mod 2^shift) as the
/// mask of the product it enters, its masked value is c's low bits, already open. P0 and
/// P1 only (party 2 deals the request and gets nothing).
pub(crate) fn trunc2_ring_remainder(
    p: &mut Party,
    x: &[u64],
    parts: &[Vec<u64>],
    rt: usize,
    shift: u32,
    bits: u32,
) -> Result<(Vec<u64>, Vec<u64>)> {
    let c = ring_trunc_open(p, x, &parts[0], bits, None)?;
    let t = finish_trunc_ring(p.id(), &c, &parts[rt], &parts[rt + 1], shift, bits);
    let low = (1u64 << shift) - 1;
    Ok((t, c.iter().map(|v| v & low).collect()))
}

/// The finish of a faithful truncation in Z_2^bits: from c = (x + 2^(bits - 2) + r) mod 2^bits and this
/// party's shares of (r mod 2^bits) >> s and bit bits - 1 of r, its share of x >> s.
pub(crate) fn finish_trunc_ring(
    me: usize,
    c: &[u64],
    rt: &[u64],
    msb: &[u64],
    shift: u32,
    bits: u32,
) -> Vec<u64> {
    use rayon::prelude::*;
    let top = 1u64 << (bits - shift);
    let unbias = 1u64 << (bits - 2 - shift);
    let h = bits - 1;
    c.par_iter()
        .zip(rt)
        .zip(msb)
        .map(|((&c, &rt), &m)| {
            let mut y = rt.wrapping_neg();
            if (c >> h) & 1 == 0 {
                y = y.wrapping_add(top.wrapping_mul(m));
            }
            if me == 0 {
                y = y.wrapping_add((c >> shift).wrapping_sub(unbias));
            }
            y
        })
        .collect()
}

/// 3PC faithful truncation of a sum z held additively: by P0 and P1 only (`three` =
/// false, P2's part is zero), or by all three (`three` = true; P2 sends its part to both).
/// One round: c = z + r is opened to P0 and P1; the result is a pair ([`Shared::pair`]).
///
/// In the ring Z_2^`bits` ([`trunc2_ring`]: |z| < 2^(bits - 2)), every message carries
/// `bits` bits per element, packed; with `high` ([`trunc2_high`]: |z| < 2^(bits - 3),
/// one more unit of error, two with three parts) only the bits above the shift.
fn trunc3_additive(
    p: &mut Party,
    shape: &[usize],
    z: Vec<u64>,
    three: bool,
    shift: u32,
    bits: u32,
    high: bool,
) -> Result<Shared> {
    use crate::compare::{pack_bits, packed_words, unpack_bits};
    let n = z.len();
    let me = p.id();
    let m = p.material(&Request::Trunc { n, shift, bits })?;
    let (wire, pre) = trunc_wire(bits, high.then_some(shift));
    let words = packed_words(n, wire);
    let y = match me {
        0 | 1 => {
            let other = 1 - me;
            let offset = round_offset(me, if three { 3 } else { 2 }, pre);
            let mine = high_parts(ring_masked(me, &z, &m.parts[0], bits), bits, pre, offset);
            let mut recvs = vec![(other, words)];
            if three {
                recvs.push((2, words));
            }
            let got = p.exchange(
                vec![(other, pack_bits(&mine, wire))],
                &recvs,
                "truncation open",
            )?;
            let mut c = wadd(&mine, &unpack_bits(&got[0], wire, n, "truncation open")?);
            if three {
                c = wadd(&c, &unpack_bits(&got[1], wire, n, "truncation open")?);
            }
            let low = u64::MAX >> (64 - wire);
            c.iter_mut().for_each(|v| *v = (*v & low) << pre);
            finish_trunc_ring(me, &c, &m.parts[1], &m.parts[2], shift, bits)
        }
        _ => {
            if three {
                let packed = pack_bits(&high_parts(z, bits, pre, 0), wire);
                p.exchange(
                    vec![(0, packed.clone()), (1, packed)],
                    &[],
                    "truncation open",
                )?;
            }
            vec![0; n]
        }
    };
    Shared::pair(p, shape, y)
}

/// 2PC matrix-triple product as this party's additive share (one round), correct mod
/// 2^`ring` (X - A and Y - B are opened in that ring; 64 for the exact product).
fn matmul2(p: &mut Party, d: &MatmulDims, x: &[u64], y: &[u64], ring: u32) -> Result<Vec<u64>> {
    let (batch, rows) = if d.broadcast_b {
        (1, d.batch * d.m)
    } else {
        (d.batch, d.m)
    };
    let r = Request::MatTriple {
        batch,
        m: rows,
        k: d.k,
        n: d.n,
    };
    let m = p.material(&r)?;
    let (a, b, c) = (&m.parts[0], &m.parts[1], &m.parts[2]);
    let me = p.id();
    let mut open = crate::compare::open_sum_rings(
        p,
        vec![(wsub(x, a), ring), (wsub(y, b), ring)],
        "matrix triple open",
    )?;
    let f = open.pop().unwrap_or_default();
    let e = open.pop().unwrap_or_default();
    Ok(beaver_matmul_finish(me, d, &e, &f, a, b, c))
}

/// Z_i = C_i + E B_i + A_i F (+ E F for P0).
fn beaver_matmul_finish(
    me: usize,
    d: &MatmulDims,
    e: &[u64],
    f: &[u64],
    a: &[u64],
    b: &[u64],
    c: &[u64],
) -> Vec<u64> {
    let mut z = c.to_vec();
    let add = |z: &mut Vec<u64>, t: Vec<u64>| {
        z.iter_mut()
            .zip(t)
            .for_each(|(z, t)| *z = z.wrapping_add(t))
    };
    // P0 folds E F into its E B_0 term: E (B_0 + F) costs one addition of k x n words
    // instead of a third product, so each party runs two products.
    if me == 0 {
        add(&mut z, batched(d, e, &wadd(b, f), kernel::matmul_u64));
    } else {
        add(&mut z, batched(d, e, b, kernel::matmul_u64));
    }
    add(&mut z, batched(d, a, f, kernel::matmul_u64));
    z
}

/// 3PC local matmul terms (X_i + X_{i+1}) Y_i + X_i Y_{i+1} + alpha_i (3-of-3 additive;
/// equal to X_i (Y_i + Y_{i+1}) + X_{i+1} Y_i). The sum is taken on the activations, not
/// on the weights: a decode step's [1, k] x [k, n] product would otherwise copy the whole
/// weight matrix for every token (a Llama-7B layer's 1.6 GB).
fn matmul3_local(p: &mut Party, d: &MatmulDims, x: &Shared, y: &Shared) -> Result<Vec<u64>> {
    let xy = p.replicate(&[x, y])?;
    let (x0, x1) = xy[0].parts();
    let (y0, y1) = xy[1].parts();
    let (x1, y1) = (x1.expect("3pc"), y1.expect("3pc"));
    let xsum = x0.add(x1)?;
    let mut z = batched(d, xsum.data(), y0.data(), kernel::matmul_u64);
    let t = batched(d, x0.data(), y1.data(), kernel::matmul_u64);
    let alpha = p.zero_share(z.len())?;
    z.iter_mut()
        .zip(t)
        .zip(alpha)
        .for_each(|((z, t), a)| *z = z.wrapping_add(t).wrapping_add(a));
    Ok(z)
}

/// [X Y] (batched; shapes as in [`MatmulDims`]), without truncation.
///
/// 2PC: matrix triple; open X - A and Y - B: 1 round, (size(X) + size(Y)) words per party,
/// size(XY) words of dealer material. 3PC: 2 local matmuls + reshare: 1 round, size(XY)
/// words per party.
pub fn matmul(p: &mut Party, x: &Shared, y: &Shared) -> Result<Shared> {
    let d = MatmulDims::new(x.shape(), y.shape())?;
    match p.setting() {
        Setting::TwoPc => {
            let z = matmul2(p, &d, x.parts().0.data(), y.parts().0.data(), 64)?;
            Shared::from_parts(tensor(&d.out_shape, z)?, None)
        }
        Setting::ThreePc => {
            let z = matmul3_local(p, &d, x, y)?;
            reshare3(p, &d.out_shape, z, "matmul reshare")
        }
    }
}

/// [X Y] of fixed-point operands, truncated back to the session scale (2PC 2 rounds; 3PC
/// 1, the result a pair, + 1 if an operand is a pair).
///
/// With faithful truncation the result must satisfy |X Y| < 2^[`PRODUCT_RANGE_BITS`]
/// (real terms): the openings and the truncation are in Z_2^[`product_ring`]. 2PC: X - A
/// and Y - B, then the truncation, each 54 bits per element at f = 16; 3PC: the
/// truncation's three-party opening in 54 bits (no reshare: the result is a pair).
pub fn matmul_trunc(p: &mut Party, x: &Shared, y: &Shared) -> Result<Shared> {
    let d = MatmulDims::new(x.shape(), y.shape())?;
    let f = p.fixed().frac_bits();
    let ring = product_ring(f, f);
    match (p.setting(), p.trunc_mode()) {
        (Setting::ThreePc, TruncMode::Faithful) => {
            let z = matmul3_local(p, &d, x, y)?;
            trunc3_additive(p, &d.out_shape, z, true, f, ring, product_high(f, f))
        }
        (Setting::TwoPc, TruncMode::Faithful) => {
            let z = matmul2(p, &d, x.parts().0.data(), y.parts().0.data(), ring)?;
            let z = trunc2_open(p, &z, f, ring, product_high(f, f))?;
            Shared::from_parts(tensor(&d.out_shape, z)?, None)
        }
        _ => {
            let z = matmul(p, x, y)?;
            truncate_by(p, &z, f)
        }
    }
}

/// A secret weight matrix W (k x n) prepared for repeated products X W.
///
/// Two kinds. A *shared* weight ([`prepare_weight`]: W is a secret-shared value, e.g. one
/// computed under MPC) carries in 2PC the opened F = W - B for the fixed triple B of its key
/// (see `tessera::preproc` for why reusing B is secure) and in 3PC the replicated share.
/// An *owner-held* weight ([`prepare_owned`]: W is the model owner P1's own input, as every
/// model weight is) keeps W in the clear at P1 and F = W - B at P0 (P2 holds nothing);
/// its products are one-sided (`tessera::preproc`, "Weights the model owner holds").
#[derive(Clone, Debug)]
pub struct PreparedWeight {
    /// The shared weight (3PC shared kind; in 2PC it is dropped once W - B is open:
    /// products use only F and the fixed B's material, which halves a model's memory).
    w: Option<Shared>,
    shape: [usize; 2],
    /// 2PC shared kind: the public W - B (both parties). Owner-held kind: F at P0.
    f: Option<Tensor<u64>>,
    /// Owner-held kind: W itself, at the owner P1 only.
    clear: Option<Tensor<u64>>,
    owned: bool,
    key: u64,
}

impl PreparedWeight {
    /// [k, n].
    pub fn shape(&self) -> [usize; 2] {
        self.shape
    }
    /// The shared weight (3PC shared kind only).
    pub fn shared(&self) -> Result<&Shared> {
        self.w.as_ref().ok_or_else(|| {
            Error::Unsupported(
                "this prepared weight holds no replicated share (2PC keeps only W - B; an \
                 owner-held weight keeps W at P1 and W - B at P0)"
                    .into(),
            )
        })
    }
    /// The F = W - B this party holds: both parties of a 2PC shared weight, P0 of an
    /// owner-held one (`None` otherwise).
    pub fn public_f(&self) -> Option<&Tensor<u64>> {
        self.f.as_ref()
    }
    /// The weight's key (which fixed B masks it).
    pub fn key(&self) -> u64 {
        self.key
    }
    /// Whether the weight is owner-held ([`prepare_owned`]).
    pub fn is_owned(&self) -> bool {
        self.owned
    }
}

/// Prepares W for [`matmul_prepared`]: in 2PC opens W - B once (1 round, kn words).
/// `key` must be unique per weight matrix within a session.
pub fn prepare_weight(p: &mut Party, w: &Shared, key: u64) -> Result<PreparedWeight> {
    if w.shape().len() != 2 {
        return Err(Error::shape(
            "prepare_weight",
            format!("weight must be 2-D, got {:?}", w.shape()),
        ));
    }
    let (k, n) = (w.shape()[0], w.shape()[1]);
    let w = p.replicate(&[w])?.remove(0);
    let f = match p.setting() {
        Setting::ThreePc => None,
        Setting::TwoPc => {
            let m = p.material(&Request::FixedB { k, n, key })?;
            let mine = wsub(w.parts().0.data(), &m.parts[0]);
            let me = p.id();
            let other = p
                .exchange(
                    vec![(1 - me, mine.clone())],
                    &[(1 - me, k * n)],
                    "open W - B",
                )?
                .remove(0);
            Some(tensor(&[k, n], wadd(&mine, &other))?)
        }
    };
    Ok(PreparedWeight {
        w: if f.is_some() {
            None
        } else {
            Some(w.into_owned())
        },
        shape: [k, n],
        f,
        clear: None,
        owned: false,
        key,
    })
}

/// Prepares the model owner's weight `w` (`Some` at P1, the owner, encoded; `None`
/// elsewhere) for one-sided products: P1 takes the mask B of `key` ([`Request::OwnerB`],
/// from the seed it shares with the dealer), sends F = W - B to P0 (1 round, kn words,
/// one direction) and keeps W; P0 keeps F; P2 (3PC) keeps nothing. Both settings.
pub fn prepare_owned(
    p: &mut Party,
    w: Option<&Tensor<u64>>,
    k: usize,
    n: usize,
    key: u64,
) -> Result<PreparedWeight> {
    let m = p.material(&Request::OwnerB { k, n, key })?;
    let mut out = PreparedWeight {
        w: None,
        shape: [k, n],
        f: None,
        clear: None,
        owned: true,
        key,
    };
    match p.id() {
        OWNER => {
            let w = w.ok_or_else(|| {
                Error::Unsupported("the model owner (P1) must provide the weight".into())
            })?;
            if w.shape() != [k, n] {
                return Err(Error::shape(
                    "prepare_owned",
                    format!("weight of shape {:?} for a {k} x {n} matrix", w.shape()),
                ));
            }
            let b = m
                .parts
                .first()
                .filter(|b| b.len() == k * n)
                .ok_or_else(|| {
                    Error::Preprocessing(format!("owner mask of the wrong size for {k} x {n}"))
                })?;
            let f = wsub(w.data(), b);
            drop(m);
            p.exchange(vec![(0, f)], &[], "publish W - B")?;
            out.clear = Some(w.clone());
        }
        0 => {
            let f = p
                .exchange(vec![], &[(OWNER, k * n)], "publish W - B")?
                .remove(0);
            out.f = Some(tensor(&[k, n], f)?);
        }
        _ => {}
    }
    Ok(out)
}

/// A public Z_2^64-linear map applied to a product's additive shares.
type LinearMap<'a> = dyn Fn(&mut [u64]) + Sync + 'a;

/// The owner of owner-held weights.
const OWNER: usize = 1;

/// X W (or X W^T with `t`, W then n x k) for an owner-held weight, as 2-of-2 additive
/// shares of P0 and P1 (P2: zeros), before any truncation: P0 sends E = X_0 - A to P1
/// (1 round, rows k words, one direction); Z_0 = A F + C0 (computed as the material is
/// dealt), Z_1 = (X_1 + E) W + C1.
///
/// With `ring` < 64, E goes packed in Z_2^ring and the result is correct mod 2^ring (for
/// a truncation in that ring).
fn matmul_owner_additive(
    p: &mut Party,
    x: &Shared,
    w: &PreparedWeight,
    rows: usize,
    t: bool,
    ring: u32,
) -> Result<Vec<u64>> {
    let o = OwnerProduct::new(p, x, w, rows, t)?;
    match &o.side {
        OwnerSide::P0 { a, z0 } => {
            o.send_e(p, a, ring, vec![], "owner product open")?;
            Ok(z0.clone())
        }
        OwnerSide::Owner { c1 } => Ok(o.recv_share(p, c1, ring, 0, "owner product open")?.0),
        OwnerSide::Dealer => Ok(vec![0; rows * o.n]),
    }
}

/// One party's side of an owner-held product once its triple is dealt.
enum OwnerSide {
    /// P0: the mask A and its input-independent share A F + C0 of the product.
    P0 { a: Vec<u64>, z0: Vec<u64> },
    /// The owner P1: its share C1 of A B.
    Owner { c1: Vec<u64> },
    /// The 3PC dealer P2.
    Dealer,
}

/// An owner-held product with its triple taken ([`matmul_owner_additive`]).
struct OwnerProduct<'a> {
    w: &'a PreparedWeight,
    xa: Vec<u64>,
    rows: usize,
    k: usize,
    n: usize,
    t: bool,
    side: OwnerSide,
}

impl<'a> OwnerProduct<'a> {
    /// Takes the triple ([`Request::MatTripleOwner`]); P0 forms A F + C0 as it is dealt.
    fn new(p: &mut Party, x: &Shared, w: &'a PreparedWeight, rows: usize, t: bool) -> Result<Self> {
        let [wk, wn] = w.shape;
        let (k, n) = if t { (wn, wk) } else { (wk, wn) };
        let r = Request::MatTripleOwner {
            m: rows,
            k,
            n,
            key: w.key,
            t,
        };
        let xa = p.additive_view(x);
        let side = match p.id() {
            0 => {
                let f = w.f.as_ref().ok_or_else(|| {
                    Error::Unsupported("P0 holds no W - B for this owner-held weight".into())
                })?;
                let mut m = p.material_then(&r, |m| {
                    if m.parts.len() != 2
                        || m.parts[0].len() != rows * k
                        || m.parts[1].len() != rows * n
                    {
                        return Err(Error::Preprocessing(format!(
                            "owner triple material of the wrong shape for {r:?}"
                        )));
                    }
                    let af = owner_kernel(t, &m.parts[0], f.data(), rows, k, n);
                    m.parts[1]
                        .iter_mut()
                        .zip(af)
                        .for_each(|(c, t)| *c = c.wrapping_add(t));
                    Ok(())
                })?;
                let z0 = m.parts.swap_remove(1);
                let a = m.parts.swap_remove(0);
                OwnerSide::P0 { a, z0 }
            }
            OWNER => {
                if w.clear.is_none() {
                    return Err(Error::Unsupported(
                        "the owner holds no clear weight for this matrix".into(),
                    ));
                }
                let mut m = p.material(&r)?;
                if m.parts.first().map(|c| c.len()) != Some(rows * n) {
                    return Err(Error::Preprocessing(format!(
                        "owner triple material of the wrong shape for {r:?}"
                    )));
                }
                OwnerSide::Owner {
                    c1: m.parts.swap_remove(0),
                }
            }
            _ => {
                p.material(&r)?;
                OwnerSide::Dealer
            }
        };
        Ok(OwnerProduct {
            w,
            xa,
            rows,
            k,
            n,
            t,
            side,
        })
    }

    /// Row pieces of E's opening in Z_2^ring: the owner computes its share piece by piece
    /// as E arrives ([`Party::exchange_pieces`]), so its product overlaps E's transfer.
    /// Every piece but the last packs into whole words, so the words are E's in one
    /// message.
    fn e_pieces(&self, ring: u32) -> Vec<std::ops::Range<usize>> {
        Self::pieces_of(self.rows, self.k, ring)
    }

    /// [`OwnerProduct::e_pieces`] of a rows x k input.
    fn pieces_of(rows: usize, k: usize, ring: u32) -> Vec<std::ops::Range<usize>> {
        let bits = k * ring as usize;
        let align = (1..64)
            .find(|a| (a * bits).is_multiple_of(64))
            .unwrap_or(64);
        crate::compare::piece_ranges(rows, bits, align, OWNER_PIECES)
    }

    /// P0's side of the product's one message: E = X_0 - A in Z_2^ring, in row pieces,
    /// then `tail` (P0's masked truncation share when it did not go with the dealing).
    fn send_e(
        &self,
        p: &mut Party,
        a: &[u64],
        ring: u32,
        tail: Vec<u64>,
        what: &str,
    ) -> Result<()> {
        use crate::compare::pack_bits;
        let k = self.k;
        let pieces = self.e_pieces(ring);
        let np = pieces.len();
        let mut tail = Some(tail).filter(|t| !t.is_empty());
        let count = np + usize::from(tail.is_some());
        p.exchange_pieces(
            OWNER,
            count,
            |i| match pieces.get(i) {
                Some(r) => {
                    let (lo, hi) = (r.start * k, r.end * k);
                    Ok(pack_bits(&wsub(&self.xa[lo..hi], &a[lo..hi]), ring))
                }
                None => Ok(tail.take().unwrap_or_default()),
            },
            &[],
            |_, _| Ok(()),
            what,
        )
    }

    /// The owner's side: its share (X_1 + E) W + C1, computed row piece by row piece as
    /// E's pieces arrive, and the message's tail of `tail_words` words (none if 0).
    fn recv_share(
        &self,
        p: &mut Party,
        c1: &[u64],
        ring: u32,
        tail_words: usize,
        what: &str,
    ) -> Result<(Vec<u64>, Vec<u64>)> {
        use crate::compare::{packed_words, unpack_bits};
        let wv = self.w.clear.as_ref().ok_or_else(|| {
            Error::Unsupported("the owner holds no clear weight for this matrix".into())
        })?;
        let (k, n) = (self.k, self.n);
        if c1.len() != self.rows * n {
            return Err(Error::Preprocessing(format!(
                "{what}: owner triple share of {} words for {} x {n}",
                c1.len(),
                self.rows
            )));
        }
        let pieces = self.e_pieces(ring);
        let mut lens: Vec<usize> = pieces
            .iter()
            .map(|r| packed_words(r.len() * k, ring))
            .collect();
        if tail_words > 0 {
            lens.push(tail_words);
        }
        let mut z = vec![0u64; self.rows * n];
        let mut tail = vec![];
        p.exchange_pieces(
            0,
            0,
            |_| Ok(vec![]),
            &lens,
            |i, words| {
                let Some(r) = pieces.get(i) else {
                    tail = words;
                    return Ok(());
                };
                let e = unpack_bits(&words, ring, r.len() * k, what)?;
                let x = wadd(&self.xa[r.start * k..r.end * k], &e);
                let zr = owner_kernel(self.t, &x, wv.data(), r.len(), k, n);
                let (lo, hi) = (r.start * n, r.end * n);
                for ((d, v), c) in z[lo..hi].iter_mut().zip(zr).zip(&c1[lo..hi]) {
                    *d = v.wrapping_add(*c);
                }
                Ok(())
            },
            what,
        )?;
        Ok((z, tail))
    }
}

/// Most row pieces of an owner-held product's E ([`OwnerProduct::e_pieces`]): each piece
/// repacks the weight for the kernel, so the pieces stay few.
const OWNER_PIECES: usize = 4;

/// A B (or A B^T with `t`) for rows x k by k x n (n x k) u64 matrices.
fn owner_kernel(t: bool, a: &[u64], b: &[u64], rows: usize, k: usize, n: usize) -> Vec<u64> {
    if t {
        kernel::matmul_nt_u64(a, b, rows, k, n)
    } else {
        kernel::matmul_u64(a, b, rows, k, n)
    }
}

/// [X W] (truncated by `shift` after the public linear `map`) for an owner-held weight.
///
/// Faithful truncation: P0's share of the product, Z_0 = A F + C0, depends only on dealt
/// material and the public F = W - B, and so does its masked share M_0 = Z_0 + R_0 +
/// 2^(ring - 2) of the truncation's opening. P0 hands M_0 to the owner P1 with the
/// dealing when the material is dealt just in time ([`Party::offline_step`], offline
/// like the dealing, and ended by a barrier like it), or with its E message otherwise; P1 then has the whole masked value
/// c = M_0 + Z_1 + R_1, adds the public term (c >> shift) - 2^(ring - 2 - shift) to its
/// share itself and sends P0 only the top bit of c, which P0's share of the wrap
/// correction needs: online, P0 sends E (ring bits per input) and P1 one bit per output,
/// one message each way (2 rounds in both settings; the 3PC result is a pair, as the
/// replicated product of a shared weight would give after its 1 round, so an owner-held
/// weight costs one round more there, the price of holding one weight-sized matrix per
/// party instead of two). P1 sees c as in [`trunc2_ring`], P0 only its top
/// bit, and the truncation is the faithful one (floor or one more; c is exact at P1), in
/// [`owner_ring`].
fn matmul_owner_trunc(
    p: &mut Party,
    x: &Shared,
    w: &PreparedWeight,
    t: bool,
    shift: u32,
    map: Option<&LinearMap<'_>>,
) -> Result<Shared> {
    use crate::compare::{pack_bits, packed_words, unpack_bits};
    let [wk, wn] = w.shape;
    let (k, n) = if t { (wn, wk) } else { (wk, wn) };
    let kx = *x.shape().last().unwrap_or(&0);
    if kx != k || x.shape().is_empty() {
        return Err(Error::shape(
            "matmul_owner",
            format!("input {:?} for a {k} x {n} product", x.shape()),
        ));
    }
    let rows = x.len() / k.max(1);
    let mut out_shape = x.shape().to_vec();
    *out_shape.last_mut().expect("non-empty") = n;
    if p.trunc_mode() != TruncMode::Faithful {
        let mut z = matmul_owner_additive(p, x, w, rows, t, 64)?;
        if let Some(map) = map {
            map(&mut z);
        }
        let z = Shared::pair(p, &out_shape, z)?;
        return truncate_by(p, &z, shift);
    }
    let ring = owner_ring(p.fixed().frac_bits(), shift);
    let low = u64::MAX >> (64 - ring);
    let n_out = rows * n;
    let treq = Request::Trunc {
        n: n_out,
        shift,
        bits: ring,
    };
    let m_words = packed_words(n_out, ring);
    let o = OwnerProduct::new(p, x, w, rows, t)?;
    let what = "owner product open";
    let y = match &o.side {
        OwnerSide::P0 { a, z0 } => {
            let mut z0 = z0.clone();
            if let Some(map) = map {
                map(&mut z0);
            }
            let early = p.dealt_just_in_time(&treq);
            let tm = p.material(&treq)?;
            let m0 = pack_bits(&ring_masked(0, &z0, &tm.parts[0], ring), ring);
            let tail = if early {
                // With a barrier, so that P0's online clock does not run while the share is
                // still on the wire (P1's offline step waits for it).
                p.offline_step(|p| {
                    p.exchange(vec![(OWNER, m0)], &[], "owner truncation share")?;
                    p.sync()
                })?;
                vec![]
            } else {
                m0
            };
            o.send_e(p, a, ring, tail, what)?;
            let v = p
                .exchange(
                    vec![],
                    &[(OWNER, packed_words(n_out, 1))],
                    "owner truncation",
                )?
                .remove(0);
            // Only the top bit of c: the owner adds the public term (c >> shift), so P0's
            // share is that of the wrap correction less R >> shift (the role
            // `finish_trunc_ring` gives party 1).
            let c: Vec<u64> = unpack_bits(&v, 1, n_out, "owner truncation")?
                .into_iter()
                .map(|b| b << (ring - 1))
                .collect();
            finish_trunc_ring(1, &c, &tm.parts[1], &tm.parts[2], shift, ring)
        }
        OwnerSide::Owner { c1 } => {
            let early = p.dealt_just_in_time(&treq);
            let tm = p.material(&treq)?;
            let mut got = if early {
                p.offline_step(|p| {
                    let got = p.exchange(vec![], &[(0, m_words)], "owner truncation share")?;
                    p.sync()?;
                    Ok(got)
                })?
                .remove(0)
            } else {
                vec![]
            };
            let (mut z1, tail) =
                o.recv_share(p, c1, ring, if early { 0 } else { m_words }, what)?;
            if !early {
                got = tail;
            }
            let m0 = unpack_bits(&got, ring, n_out, "owner truncation share")?;
            if let Some(map) = map {
                map(&mut z1);
            }
            let c: Vec<u64> = wadd(&m0, &ring_masked(1, &z1, &tm.parts[0], ring))
                .into_iter()
                .map(|v| v & low)
                .collect();
            let top: Vec<u64> = c.iter().map(|v| v >> (ring - 1)).collect();
            p.exchange(vec![(0, pack_bits(&top, 1))], &[], "owner truncation")?;
            // The owner knows c, so it adds the public term (party 0's role there).
            finish_trunc_ring(0, &c, &tm.parts[1], &tm.parts[2], shift, ring)
        }
        OwnerSide::Dealer => {
            let early = p.dealt_just_in_time(&treq);
            p.material(&treq)?;
            if early && p.is_compute() {
                // The 3PC dealer meets P0 and P1 at the hand-over's barrier.
                p.offline_step(|p| p.sync())?;
            }
            vec![0; n_out]
        }
    };
    Shared::pair(p, &out_shape, y)
}

/// [X W] for a prepared weight, without truncation. 2PC: opens only X - A (1 round,
/// size(X) words per party); 3PC: as [`matmul`].
pub fn matmul_prepared(p: &mut Party, x: &Shared, w: &PreparedWeight) -> Result<Shared> {
    let d = MatmulDims::new(x.shape(), &w.shape)?;
    if w.owned {
        let z = matmul_owner_additive(p, x, w, d.batch * d.m, false, 64)?;
        return Shared::pair(p, &d.out_shape, z);
    }
    match (p.setting(), &w.f) {
        (Setting::TwoPc, Some(f)) => {
            let rows = d.batch * d.m;
            let r = Request::MatTripleFixedB {
                m: rows,
                k: d.k,
                n: d.n,
                key: w.key,
            };
            // C_i <- A_i F + C_i does not depend on the input: it is part of the
            // preprocessing (Delphi-style), so the online step runs one product per party.
            let m = p.material_then(&r, |m| {
                if m.parts.len() != 3 || m.parts[0].len() != rows * d.k {
                    return Err(Error::Preprocessing(format!(
                        "fixed-B triple material of the wrong shape for {r:?}"
                    )));
                }
                let af = kernel::matmul_u64(&m.parts[0], f.data(), rows, d.k, d.n);
                let c = &mut m.parts[2];
                if c.len() != af.len() {
                    return Err(Error::Preprocessing(format!(
                        "fixed-B triple material of the wrong shape for {r:?}"
                    )));
                }
                c.iter_mut()
                    .zip(af)
                    .for_each(|(c, t)| *c = c.wrapping_add(t));
                Ok(())
            })?;
            let (a, b, c) = (&m.parts[0], &m.parts[1], &m.parts[2]);
            let mine = wsub(x.parts().0.data(), a);
            let me = p.id();
            let other = p
                .exchange(
                    vec![(1 - me, mine.clone())],
                    &[(1 - me, mine.len())],
                    "fixed-B triple open",
                )?
                .remove(0);
            let e = wadd(&mine, &other);
            // Z_i = E B_i + (A_i F + C_i), and P0 adds E F: E (B_0 + F).
            let right = if me == 0 {
                wadd(b, f.data())
            } else {
                b.clone()
            };
            let mut z = kernel::matmul_u64(&e, &right, rows, d.k, d.n);
            z.iter_mut()
                .zip(c)
                .for_each(|(z, c)| *z = z.wrapping_add(*c));
            Shared::from_parts(tensor(&d.out_shape, z)?, None)
        }
        _ => matmul(p, x, w.shared()?),
    }
}

/// [X W] for a prepared weight, truncated. 2PC 2 rounds; 3PC 1 for a shared weight (the
/// product goes into the truncation's opening; + 1 for a pair X) and 2 for an owner-held
/// one; the 3PC result is a pair.
pub fn matmul_prepared_trunc(p: &mut Party, x: &Shared, w: &PreparedWeight) -> Result<Shared> {
    if w.owned {
        let f = p.fixed().frac_bits();
        return matmul_owner_trunc(p, x, w, false, f, None);
    }
    match (p.setting(), p.trunc_mode()) {
        (Setting::ThreePc, TruncMode::Faithful) => {
            let d = MatmulDims::new(x.shape(), &w.shape)?;
            let z = matmul3_local(p, &d, x, w.shared()?)?;
            trunc3_additive(p, &d.out_shape, z, true, p.fixed().frac_bits(), 64, false)
        }
        _ => {
            let z = matmul_prepared(p, x, w)?;
            truncate(p, &z)
        }
    }
}

/// [X E^T] for a prepared n x k table E (its rows are the output features: a tied output
/// head reads the embedding table this way, with no second, transposed copy), truncated.
///
/// 2PC: with F = E - B public and the dealer's (A, B, C = A B^T) for the table's fixed B
/// ([`Request::MatTripleFixedBT`]), open X - A (1 round, size(X) words); then
/// Z_i = X_i F^T + (X - A) B_i^T + C_i. 3PC: X_0 (E_0 + E_1)^T + X_1 E_0^T locally, then
/// the truncation's opening (the result a pair). Rounds 2PC 2, 3PC 1 (+ 1 for a pair X).
pub fn matmul_prepared_t_trunc(p: &mut Party, x: &Shared, e: &PreparedWeight) -> Result<Shared> {
    let [n, k] = e.shape();
    if x.shape().len() != 2 || x.shape()[1] != k {
        return Err(Error::shape(
            "matmul_prepared_t",
            format!("input {:?} for a table of {n} x {k}", x.shape()),
        ));
    }
    if e.owned {
        let f = p.fixed().frac_bits();
        return matmul_owner_trunc(p, x, e, true, f, None);
    }
    let m = x.shape()[0];
    let f = p.fixed().frac_bits();
    match (p.setting(), p.trunc_mode(), e.f.as_ref()) {
        (Setting::ThreePc, TruncMode::Faithful, _) => {
            let w = e.shared()?;
            let x = p.replicate(&[x])?.remove(0);
            let (x0, x1) = x.parts();
            let (w0, w1) = w.parts();
            let (x1, w1) = (x1.expect("3pc"), w1.expect("3pc"));
            // Three products rather than one with E_0 + E_1: no temporary copy of the table.
            let mut z = kernel::matmul_nt_u64(x0.data(), w0.data(), m, k, n);
            let t1 = kernel::matmul_nt_u64(x0.data(), w1.data(), m, k, n);
            let t2 = kernel::matmul_nt_u64(x1.data(), w0.data(), m, k, n);
            let alpha = p.zero_share(z.len())?;
            z.iter_mut()
                .zip(t1)
                .zip(t2)
                .zip(alpha)
                .for_each(|(((z, a), b), r)| {
                    *z = z.wrapping_add(a).wrapping_add(b).wrapping_add(r)
                });
            trunc3_additive(p, &[m, n], z, true, f, 64, false)
        }
        (Setting::TwoPc, TruncMode::Faithful, Some(fpub)) => {
            let mt = p.material(&Request::MatTripleFixedBT {
                m,
                k,
                n,
                key: e.key,
            })?;
            let (a, b, c) = (&mt.parts[0], &mt.parts[1], &mt.parts[2]);
            let me = p.id();
            let mine = wsub(x.parts().0.data(), a);
            let other = p
                .exchange(
                    vec![(1 - me, mine.clone())],
                    &[(1 - me, mine.len())],
                    "tied head open",
                )?
                .remove(0);
            let opened = wadd(&mine, &other);
            let mut z = kernel::matmul_nt_u64(x.parts().0.data(), fpub.data(), m, k, n);
            let eb = kernel::matmul_nt_u64(&opened, b, m, k, n);
            z.iter_mut()
                .zip(eb)
                .zip(c)
                .for_each(|((z, u), c)| *z = z.wrapping_add(u).wrapping_add(*c));
            truncate_by(p, &Shared::from_parts(tensor(&[m, n], z)?, None)?, f)
        }
        _ => Err(Error::Unsupported(
            "the transposed prepared product needs faithful truncation and a prepared table".into(),
        )),
    }
}

/// [X W] for a prepared weight, then a public linear map `map` applied to the product
/// (at scale 2f) before ONE faithful truncation by `shift`. The map must be Z_2^64-linear
/// (integer coefficients), so applying it to each party's additive share of the product
/// applies it to the product: a public rotation (RoPE, with cos and sin encoded at
/// shift - f extra bits) costs no round and no byte on top of the projection (rounds as
/// [`matmul_prepared_trunc`]).
pub fn matmul_prepared_map_trunc(
    p: &mut Party,
    x: &Shared,
    w: &PreparedWeight,
    shift: u32,
    map: &(dyn Fn(&mut [u64]) + Sync),
) -> Result<Shared> {
    if w.owned {
        return matmul_owner_trunc(p, x, w, false, shift, Some(map));
    }
    let d = MatmulDims::new(x.shape(), &w.shape)?;
    match (p.setting(), p.trunc_mode()) {
        (Setting::ThreePc, TruncMode::Faithful) => {
            let mut z = matmul3_local(p, &d, x, w.shared()?)?;
            map(&mut z);
            trunc3_additive(p, &d.out_shape, z, true, shift, 64, false)
        }
        _ => {
            let z = matmul_prepared(p, x, w)?;
            let z = z.map_local(|t| {
                let mut v = t.data().to_vec();
                map(&mut v);
                Tensor::from_vec(t.shape(), v).expect("same shape")
            });
            truncate_by(p, &z, shift)
        }
    }
}

/// Preprocessing demands of the arithmetic protocols, for planned and file-based dealing.
/// Each mirrors exactly what the protocol of the same name consumes.
pub mod demand {
    use tessera::preproc::{Demand, Request};
    use tessera::tensor::MatmulDims;
    use tessera::{Result, Setting, TruncMode};

    /// [`super::truncate_by`] / [`super::truncate`] of n elements (faithful mode).
    pub fn truncate(n: usize, shift: u32) -> Demand {
        Demand(vec![Request::Trunc { n, shift, bits: 64 }])
    }
    /// [`super::mul`] of n elements.
    pub fn mul(setting: Setting, n: usize) -> Demand {
        match setting {
            Setting::TwoPc => Demand(vec![Request::Beaver { n }]),
            Setting::ThreePc => Demand::default(),
        }
    }
    /// [`super::mul_trunc`] / [`super::square_trunc`] of n elements.
    pub fn mul_trunc(setting: Setting, n: usize, frac_bits: u32) -> Demand {
        let mut d = mul(setting, n);
        d.extend(truncate(n, frac_bits));
        d
    }
    /// [`super::mul_trunc_by`] of n elements.
    pub fn mul_trunc_by(setting: Setting, n: usize, shift: u32) -> Demand {
        let mut d = mul(setting, n);
        d.extend(truncate(n, shift));
        d
    }
    /// [`super::matmul`] of the given shapes.
    pub fn matmul(setting: Setting, a: &[usize], b: &[usize]) -> Result<Demand> {
        let d = MatmulDims::new(a, b)?;
        Ok(match setting {
            Setting::ThreePc => Demand::default(),
            Setting::TwoPc => {
                let (batch, m) = if d.broadcast_b {
                    (1, d.batch * d.m)
                } else {
                    (d.batch, d.m)
                };
                Demand(vec![Request::MatTriple {
                    batch,
                    m,
                    k: d.k,
                    n: d.n,
                }])
            }
        })
    }
    /// [`super::matmul_trunc`] of the given shapes.
    pub fn matmul_trunc(
        setting: Setting,
        a: &[usize],
        b: &[usize],
        frac_bits: u32,
    ) -> Result<Demand> {
        let dims = MatmulDims::new(a, b)?;
        let mut d = matmul(setting, a, b)?;
        d.push(Request::Trunc {
            n: dims.out_shape.iter().product(),
            shift: frac_bits,
            bits: super::product_ring(frac_bits, frac_bits),
        });
        Ok(d)
    }
    /// [`super::prepare_weight`] of a k x n weight with `key`.
    pub fn prepare_weight(setting: Setting, k: usize, n: usize, key: u64) -> Demand {
        match setting {
            Setting::TwoPc => Demand(vec![Request::FixedB { k, n, key }]),
            Setting::ThreePc => Demand::default(),
        }
    }
    /// [`super::prepare_owned`] (both settings).
    pub fn prepare_owned(k: usize, n: usize, key: u64) -> Demand {
        Demand(vec![Request::OwnerB { k, n, key }])
    }
    /// A truncated product with an owner-held weight ([`super::matmul_prepared_trunc`],
    /// `_map_trunc` with `shift`, or with `t` [`super::matmul_prepared_t_trunc`] of an
    /// n x k table): `rows` x k activations, n outputs, f = `frac_bits`. Both settings.
    pub fn matmul_owned_trunc(
        rows: usize,
        k: usize,
        n: usize,
        key: u64,
        t: bool,
        shift: u32,
        frac_bits: u32,
    ) -> Demand {
        let mut d = Demand(vec![Request::MatTripleOwner {
            m: rows,
            k,
            n,
            key,
            t,
        }]);
        d.push(Request::Trunc {
            n: rows * n,
            shift,
            bits: super::owner_ring(frac_bits, shift),
        });
        d
    }
    /// [`super::matmul_prepared`] of `rows` x k activations with a prepared k x n weight.
    pub fn matmul_prepared(setting: Setting, rows: usize, k: usize, n: usize, key: u64) -> Demand {
        match setting {
            Setting::TwoPc => Demand(vec![Request::MatTripleFixedB { m: rows, k, n, key }]),
            Setting::ThreePc => Demand::default(),
        }
    }
    /// [`super::matmul_prepared_trunc`].
    pub fn matmul_prepared_trunc(
        setting: Setting,
        rows: usize,
        k: usize,
        n: usize,
        key: u64,
        frac_bits: u32,
    ) -> Demand {
        let mut d = matmul_prepared(setting, rows, k, n, key);
        d.extend(truncate(rows * n, frac_bits));
        d
    }
    /// [`super::matmul_prepared_t_trunc`] of `rows` x k activations with an n x k table.
    pub fn matmul_prepared_t_trunc(
        setting: Setting,
        rows: usize,
        k: usize,
        n: usize,
        key: u64,
        frac_bits: u32,
    ) -> Demand {
        let mut d = match setting {
            Setting::TwoPc => Demand(vec![Request::MatTripleFixedBT { m: rows, k, n, key }]),
            Setting::ThreePc => Demand::default(),
        };
        d.extend(truncate(rows * n, frac_bits));
        d
    }
    /// [`super::matmul_prepared_map_trunc`] with truncation `shift`.
    pub fn matmul_prepared_map_trunc(
        setting: Setting,
        rows: usize,
        k: usize,
        n: usize,
        key: u64,
        shift: u32,
    ) -> Demand {
        let mut d = matmul_prepared(setting, rows, k, n, key);
        d.extend(truncate(rows * n, shift));
        d
    }
    /// The truncation mode these demands assume.
    pub const MODE: TruncMode = TruncMode::Faithful;
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};
    use tessera::runtime::{run, run_parties};
    use tessera::{MaterialMode, SessionOptions};

    const SETTINGS: [Setting; 2] = [Setting::TwoPc, Setting::ThreePc];

    fn rng() -> rand::rngs::StdRng {
        rand::rngs::StdRng::seed_from_u64(7)
    }

    /// Shares x (owner 0) and y (owner 1), runs `op`, opens, returns every party's opening.
    fn binary(
        setting: Setting,
        x: &Tensor<u64>,
        y: &Tensor<u64>,
        op: impl Fn(&mut Party, &Shared, &Shared) -> Result<Shared> + Sync,
    ) -> Vec<(Tensor<u64>, tessera::CommStats)> {
        run(setting, |p| {
            let xs = p.share_input(0, (p.id() == 0).then_some(x), x.shape())?;
            let ys = p.share_input(1, (p.id() == 1).then_some(y), y.shape())?;
            let before = p.stats();
            let z = op(p, &xs, &ys)?;
            let st = p.stats().since(&before);
            Ok((p.open(&z)?, st))
        })
        .unwrap()
        .into_iter()
        .map(|o| o.value)
        .collect()
    }

    fn edge_and_random(n: usize) -> Vec<u64> {
        let mut r = rng();
        let mut v = vec![0, u64::MAX, 1, i64::MAX as u64, i64::MIN as u64];
        v.extend((0..n).map(|_| r.gen::<u64>()));
        v
    }

    #[test]
    fn mul_is_exact_in_the_ring_and_costs_what_the_doc_says() {
        let xv = edge_and_random(200);
        let yv: Vec<u64> = xv.iter().rev().copied().collect();
        let n = xv.len();
        let x = Tensor::from_vec(&[n], xv.clone()).unwrap();
        let y = Tensor::from_vec(&[n], yv.clone()).unwrap();
        let want: Vec<u64> = xv
            .iter()
            .zip(&yv)
            .map(|(a, b)| a.wrapping_mul(*b))
            .collect();
        for s in SETTINGS {
            for (z, st) in binary(s, &x, &y, mul) {
                assert_eq!(z.data(), &want[..], "{s:?}");
                assert_eq!(st.rounds, 1);
                let words = match s {
                    Setting::TwoPc => 2 * n,
                    Setting::ThreePc => n,
                };
                assert_eq!(st.online_sent, 8 * words as u64, "{s:?}");
            }
        }
    }

    #[test]
    fn mul_trunc_matches_fixed_point_product() {
        let mut r = rng();
        let fx = tessera::FixedPoint::default();
        let n = 500;
        let mut xf: Vec<f64> = (0..n).map(|_| r.gen_range(-1000.0..1000.0)).collect();
        let mut yf: Vec<f64> = (0..n).map(|_| r.gen_range(-1000.0..1000.0)).collect();
        xf.extend([0.0, -1.0, 1.0, -fx.ulp(), 30000.0]);
        yf.extend([5.0, -1.0, 0.0, fx.ulp(), -30000.0]);
        let x = fx
            .encode_tensor(&Tensor::from_vec(&[xf.len()], xf).unwrap())
            .unwrap();
        let y = fx
            .encode_tensor(&Tensor::from_vec(&[yf.len()], yf).unwrap())
            .unwrap();
        for s in SETTINGS {
            let outs = binary(s, &x, &y, mul_trunc);
            // Rounds of the protocol = the most any party takes part in. 2PC: the Beaver
            // opening, then the truncation's; 3PC (replicated operands): the 3-of-3 product
            // goes straight into the truncation's opening, and the result stays a pair.
            let want = match s {
                Setting::TwoPc => 2,
                Setting::ThreePc => 1,
            };
            assert_eq!(outs.iter().map(|o| o.1.rounds).max(), Some(want), "{s:?}");
            for (z, _) in outs {
                for i in 0..x.len() {
                    // exact floor of the 2f-bit product, or one more (faithful truncation)
                    let prod = (x.data()[i] as i64 as i128) * (y.data()[i] as i64 as i128);
                    let fl = prod >> 16;
                    let got = z.data()[i] as i64 as i128;
                    assert!(
                        got == fl || got == fl + 1,
                        "{s:?} i={i} got {got} want {fl}"
                    );
                }
            }
        }
    }

    /// n - 6 uniform values with |x| < 2^62 and the edges 0, -1, +-(2^62 - 1 or 2^62),
    /// +-2^16.
    fn trunc_inputs(n: usize) -> Vec<u64> {
        let mut r = rng();
        let lim = 1i64 << 62;
        let mut v: Vec<u64> = (0..n - 6).map(|_| r.gen_range(-lim..lim) as u64).collect();
        v.extend([
            0,
            u64::MAX,
            (lim - 1) as u64,
            (-lim) as u64,
            1 << 16,
            (-(1i64 << 16)) as u64,
        ]);
        v
    }

    /// How many outputs are neither floor(x / 2^16) nor one more.
    fn off_by_more_than_one_ulp(x: &[u64], got: &[u64]) -> usize {
        x.iter()
            .zip(got)
            .filter(|(a, b)| {
                let fl = (**a as i64) >> 16;
                let got = **b as i64;
                !(got == fl || got == fl + 1)
            })
            .count()
    }

    #[test]
    fn faithful_truncation_error_bound_on_a_million_elements() {
        let n = 1_000_000;
        let v = trunc_inputs(n);
        let x = Tensor::from_vec(&[n], v.clone()).unwrap();
        for s in SETTINGS {
            let outs = run(s, |p| {
                let xs = p.share_input(0, (p.id() == 0).then_some(&x), &[n])?;
                let before = p.stats();
                let z = truncate(p, &xs)?;
                let st = p.stats().since(&before);
                Ok((p.open(&z)?, st))
            })
            .unwrap();
            let (z, st) = &outs[0].value;
            let bad = off_by_more_than_one_ulp(&v, z.data());
            assert_eq!(bad, 0, "{s:?}: {bad} elements off by more than 1 ulp");
            // One opening of n words in both settings (3PC: to P0 and P1, the result a
            // pair, with no reshare).
            assert_eq!(st.rounds, 1, "{s:?}");
            assert_eq!(st.online_sent, 8 * n as u64, "{s:?} bytes");
        }
    }

    /// Runs `op` on the 2-of-2 form of the shared input `x` (P0, P1; P2 deals) in setting
    /// `s` and returns the opened result (back in the session's sharing) and P0's
    /// communication during `op` alone.
    fn on_additive(
        s: Setting,
        x: &Tensor<u64>,
        op: impl Fn(&mut Party, &[u64]) -> Result<Vec<u64>> + Sync,
    ) -> (Tensor<u64>, tessera::CommStats) {
        let n = x.len();
        let outs = run(s, |p| {
            let xs = p.share_input(0, (p.id() == 0).then_some(x), &[n])?;
            let y = p.additive_view(&xs);
            let before = p.stats();
            let z = op(p, &y)?;
            let st = p.stats().since(&before);
            let z = Shared::pair(p, &[n], z)?;
            Ok((p.open(&z)?, st))
        })
        .unwrap();
        outs.into_iter().next().expect("P0").value
    }

    /// The half-open truncation: floor or +1 ulp on random and edge values (odd n, so
    /// the halves differ), 2 rounds and n/2 + n/128 words per party, in both settings
    /// (2-of-2 between P0 and P1; 3PC takes the result as a pair).
    #[test]
    fn split_truncation_is_faithful_with_half_the_words() {
        let n = 100_001;
        let v = trunc_inputs(n);
        let x = Tensor::from_vec(&[n], v.clone()).unwrap();
        for s in SETTINGS {
            let (z, st) = &on_additive(s, &x, |p, y| trunc2_split(p, y, 16));
            let bad = off_by_more_than_one_ulp(&v, z.data());
            assert_eq!(bad, 0, "{s:?}: {bad} elements off by more than 1 ulp");
            assert_eq!(st.rounds, 2, "{s:?}");
            // P0 opens the first n/2 and returns msb bits for the other half
            let words = n / 2 + (n - n / 2).div_ceil(64);
            assert_eq!(st.online_sent, 8 * words as u64, "{s:?} bytes");
        }
    }

    /// Truncation in a smaller ring: floor or +1 ulp with exact 64-bit shares out, on
    /// random values and the edges of |x| < 2^(bits - 2) (0, +-1, +-(2^(bits-2) - 1),
    /// multiples of 2^shift and one less), for rings from shift + 2 to 64, both settings
    /// (2-of-2 between P0 and P1; 3PC takes the result as a pair); one round of
    /// ceil(n bits / 64) words per party, so the packed opening is what the doc says.
    #[test]
    fn ring_truncation_is_faithful_and_sends_bits_per_element() {
        for (bits, shift) in [
            (18u32, 16u32),
            (34, 13),
            (51, 32),
            (52, 16),
            (63, 16),
            (64, 16),
        ] {
            let v = ring_trunc_inputs((1i64 << (bits - 2)) - 1, shift, 3001);
            let n = v.len();
            let x = Tensor::from_vec(&[n], v.clone()).unwrap();
            for s in SETTINGS {
                let (z, st) = &on_additive(s, &x, |p, y| trunc2_ring(p, y, shift, bits));
                for (a, b) in v.iter().zip(z.data()) {
                    let fl = (*a as i64) >> shift;
                    let d = (*b as i64).wrapping_sub(fl);
                    assert!(
                        (0..=1).contains(&d),
                        "{s:?} ring {bits} >> {shift}: {a} -> {b}"
                    );
                }
                let words = crate::compare::packed_words(n, bits) as u64;
                assert_eq!(st.rounds, 1, "{s:?} ring {bits}");
                assert_eq!(st.online_sent, 8 * words, "{s:?} ring {bits}");
            }
        }
    }

    /// Edge and random values for a truncation by `shift` in a ring of `bits` with |x| <=
    /// `lim`: 0, +-1, the range's ends, multiples of 2^shift and their neighbours.
    fn ring_trunc_inputs(lim: i64, shift: u32, random: usize) -> Vec<u64> {
        let mut r = rng();
        let mut v: Vec<i64> = vec![0, 1, -1, lim, -lim, lim - 1, -lim + 1];
        for k in [1i64, 2, 3, 7] {
            let m = (k << shift).min(lim);
            v.extend([m, -m, m - 1, -m + 1, -m - 1]);
        }
        v.extend((0..random).map(|_| r.gen_range(-lim..=lim)));
        v.into_iter().map(|a| a as u64).collect()
    }

    /// Every result within floor(x / 2^shift) - 1 ..= + 2, and the mean error against
    /// x / 2^shift within 0.05 of a unit.
    fn check_high_trunc(x: &[u64], y: &[u64], shift: u32, what: &str) {
        let mut sum = 0f64;
        for (a, b) in x.iter().zip(y) {
            let d = (*b as i64).wrapping_sub((*a as i64) >> shift);
            assert!((-1..=2).contains(&d), "{what} >> {shift}: {a} -> {b}");
            let frac = (*a & ((1u64 << shift) - 1)) as f64 / (1u64 << shift) as f64;
            sum += d as f64 - frac;
        }
        let mean = sum / x.len() as f64;
        assert!(mean.abs() < 0.05, "{what} >> {shift}: mean error {mean}");
    }

    /// The high-bits truncation: floor(x / 2^shift) - 1 ..= + 2 on random and edge values
    /// with |x| < 2^(bits - 3) (the carry out of the dropped low bits is the extra unit over
    /// [`trunc2_ring`]), unbiased (the mean error over 4000 random values within 0.05 of a
    /// unit: each error's spread is ~0.7, so the mean's is ~0.01; without the rounding
    /// offset it is -0.5), one round, (bits - shift) bits per element and party, in both
    /// settings; the same with three parts in 3PC (P2 adds its part to the opening,
    /// [`trunc3_additive`] with `three`), whose opening has as many bits.
    #[test]
    fn high_bits_truncation_is_within_one_unit_and_sends_bits_above_the_shift() {
        for (bits, shift) in [
            (20u32, 16u32),
            (39, 16),
            (51, 32),
            (55, 16),
            (60, 40),
            (64, 16),
        ] {
            let lim = (1i64 << (bits - 3)) - 1;
            let v = ring_trunc_inputs(lim, shift, 4001);
            let n = v.len();
            let x = Tensor::from_vec(&[n], v.clone()).unwrap();
            let words = 8 * crate::compare::packed_words(n, bits - shift) as u64;
            for s in SETTINGS {
                let (z, st) = &on_additive(s, &x, |p, y| trunc2_high(p, y, shift, bits));
                check_high_trunc(&v, z.data(), shift, &format!("{s:?} ring {bits}"));
                assert_eq!(st.rounds, 1, "{s:?} ring {bits}");
                assert_eq!(st.online_sent, words, "{s:?} ring {bits}");
            }
            // Three additive parts (3PC): P0 holds x - t - u, P1 t, P2 u.
            let outs = run(Setting::ThreePc, |p| {
                let z = match p.id() {
                    0 => {
                        let t = p.common_words(1, n)?;
                        let u = p.common_words(2, n)?;
                        wsub(&wsub(&v, &t), &u)
                    }
                    _ => p.common_words(0, n)?,
                };
                let before = p.stats();
                let y = trunc3_additive(p, &[n], z, true, shift, bits, true)?;
                let st = p.stats().since(&before);
                Ok((p.open(&y)?, st))
            })
            .unwrap();
            let (z, st) = &outs[0].value;
            check_high_trunc(&v, z.data(), shift, &format!("3 parts, ring {bits}"));
            // The opening from P1 alone: the result is a pair, with no reshare.
            assert_eq!(st.online_sent, words, "3 parts, ring {bits}");
            assert_eq!(st.rounds, 1, "3 parts, ring {bits}");
        }
    }

    #[test]
    fn local_truncation_is_opt_in_and_works_for_small_values() {
        let mut r = rng();
        let n = 1000;
        let v: Vec<u64> = (0..n)
            .map(|_| r.gen_range(-(1i64 << 40)..(1i64 << 40)) as u64)
            .collect();
        let x = Tensor::from_vec(&[n], v.clone()).unwrap();
        for s in SETTINGS {
            let opts = SessionOptions {
                trunc: TruncMode::Local,
                ..Default::default()
            };
            let outs = run_parties(s, opts, |p| {
                let xs = p.share_input(0, (p.id() == 0).then_some(&x), &[n])?;
                let z = truncate(p, &xs)?;
                p.open(&z)
            })
            .unwrap();
            for (a, b) in v.iter().zip(outs[0].value.data()) {
                let fl = (*a as i64) >> 16;
                assert!((*b as i64 - fl).abs() <= 1, "{s:?}");
            }
        }
    }

    #[test]
    fn matmul_batched_broadcast_and_degenerate_shapes() {
        let mut r = rng();
        let cases: &[(&[usize], &[usize])] = &[
            (&[3, 4], &[4, 5]),
            (&[1, 1], &[1, 1]),
            (&[2, 3, 4], &[4, 2]),
            (&[2, 3, 4], &[2, 4, 1]),
            (&[1, 7], &[7, 1]),
        ];
        for (sa, sb) in cases {
            let a: Tensor<u64> = Tensor::from_vec(
                sa,
                (0..sa.iter().product::<usize>()).map(|_| r.gen()).collect(),
            )
            .unwrap();
            let b: Tensor<u64> = Tensor::from_vec(
                sb,
                (0..sb.iter().product::<usize>()).map(|_| r.gen()).collect(),
            )
            .unwrap();
            let want = a.matmul(&b).unwrap();
            for s in SETTINGS {
                for (z, st) in binary(s, &a, &b, matmul) {
                    assert_eq!(z, want, "{s:?} {sa:?} x {sb:?}");
                    assert_eq!(st.rounds, 1);
                    let words = match s {
                        Setting::TwoPc => a.len() + b.len(),
                        Setting::ThreePc => want.len(),
                    };
                    assert_eq!(st.online_sent, 8 * words as u64);
                }
            }
        }
        let a = Tensor::<u64>::zeros(&[2, 3]);
        for s in SETTINGS {
            let e = run(s, |p| {
                let x = Shared::zeros(p, &[2, 3]);
                let y = Shared::zeros(p, &[4, 2]);
                matmul(p, &x, &y).map(|_| ())
            })
            .unwrap_err();
            assert!(e.to_string().contains("matmul"), "{e}");
            let _ = &a;
        }
    }

    #[test]
    fn prepared_weight_matmul_opens_only_x() {
        let mut r = rng();
        let fx = tessera::FixedPoint::default();
        let xf: Vec<f64> = (0..24).map(|_| r.gen_range(-4.0..4.0)).collect();
        let wf: Vec<f64> = (0..20).map(|_| r.gen_range(-1.0..1.0)).collect();
        let x = fx
            .encode_tensor(&Tensor::from_vec(&[2, 3, 4], xf.clone()).unwrap())
            .unwrap();
        let w = fx
            .encode_tensor(&Tensor::from_vec(&[4, 5], wf.clone()).unwrap())
            .unwrap();
        let want = fx.decode_tensor(&x).matmul(&fx.decode_tensor(&w)).unwrap();
        for s in SETTINGS {
            let outs = run(s, |p| {
                let ws = p.share_input(1, (p.id() == 1).then_some(&w), &[4, 5])?;
                let pw = prepare_weight(p, &ws, 42)?;
                let mut res = vec![];
                for _ in 0..2 {
                    let xs = p.share_input(0, (p.id() == 0).then_some(&x), &[2, 3, 4])?;
                    let before = p.stats();
                    let z = matmul_prepared_trunc(p, &xs, &pw)?;
                    let st = p.stats().since(&before);
                    res.push((p.open(&z)?, st));
                }
                Ok(res)
            })
            .unwrap();
            for (z, st) in &outs[0].value {
                let got = fx.decode_tensor(z);
                for (g, w) in got.data().iter().zip(want.data()) {
                    assert!((g - w).abs() < 4.0 * 5.0 * fx.ulp() * 4.0, "{s:?} {g} {w}");
                }
                // 2PC: X - A, then the truncation's opening; 3PC (replicated X): the local
                // replicated product goes straight into the truncation's opening.
                assert_eq!(st.rounds, if s == Setting::TwoPc { 2 } else { 1 }, "{s:?}");
                if s == Setting::TwoPc {
                    // X - A (24 words) then the truncation opening (30 words)
                    assert_eq!(st.online_sent, 8 * (24 + 30));
                }
            }
        }
    }

    #[test]
    fn owner_held_weight_products_match_f64_and_open_one_way() {
        // x W, (x W) mapped (negated: a Z_2^64-linear map) and x T^T for a table T, with W
        // and T the model owner's (P1's) clear inputs. Error: the f64 product of encoded
        // operands is exact, so only the faithful truncation's 1 ulp plus the encoding of
        // 4 products (<= 4 * 0.5 ulp * |w| + |x| * 0.5 ulp) remain: 4 ulp is safe.
        let mut r = rng();
        let fx = tessera::FixedPoint::default();
        let enc = |shape: &[usize], lo: f64, hi: f64, r: &mut rand::rngs::StdRng| {
            let n = shape.iter().product();
            let v: Vec<f64> = (0..n).map(|_| r.gen_range(lo..hi)).collect();
            fx.encode_tensor(&Tensor::from_vec(shape, v).unwrap())
                .unwrap()
        };
        let x = enc(&[2, 3, 4], -4.0, 4.0, &mut r);
        let w = enc(&[4, 5], -1.0, 1.0, &mut r);
        let table = enc(&[7, 4], -1.0, 1.0, &mut r);
        let xf = fx.decode_tensor(&x);
        let want = xf.matmul(&fx.decode_tensor(&w)).unwrap();
        let x2 = xf.reshape(&[6, 4]).unwrap();
        let want_t = x2.matmul(&fx.decode_tensor(&table).transpose()).unwrap();
        for s in SETTINGS {
            let outs = run(s, |p| {
                let me = p.id();
                let mine = |t: &Tensor<u64>| (me == 1).then(|| t.clone());
                let before = p.stats();
                let pw = prepare_owned(p, mine(&w).as_ref(), 4, 5, 42)?;
                let pt = prepare_owned(p, mine(&table).as_ref(), 7, 4, 43)?;
                let prep = p.stats().since(&before);
                let held = (pw.public_f().is_some(), pw.shared().is_err());
                let xs = p.share_input(0, (p.id() == 0).then_some(&x), &[2, 3, 4])?;
                let before = p.stats();
                let z = matmul_prepared_trunc(p, &xs, &pw)?;
                let st = p.stats().since(&before);
                let neg = |v: &mut [u64]| v.iter_mut().for_each(|e| *e = e.wrapping_neg());
                let zm = matmul_prepared_map_trunc(p, &xs.reshape(&[6, 4])?, &pw, 16, &neg)?;
                let zt = matmul_prepared_t_trunc(p, &xs.reshape(&[6, 4])?, &pt)?;
                Ok((p.open(&z)?, p.open(&zm)?, p.open(&zt)?, st, prep, held))
            })
            .unwrap();
            let tol = 4.0 * fx.ulp();
            let (z, zm, zt, _, _, _) = &outs[0].value;
            assert_eq!(z.shape(), &[2, 3, 5]);
            for ((g, m), w) in fx
                .decode_tensor(z)
                .data()
                .iter()
                .zip(fx.decode_tensor(zm).data())
                .zip(want.data())
            {
                assert!((g - w).abs() < tol, "{s:?} {g} {w}");
                assert!((m + w).abs() < tol, "{s:?} mapped {m} {w}");
            }
            for (g, w) in fx.decode_tensor(zt).data().iter().zip(want_t.data()) {
                assert!((g - w).abs() < tol, "{s:?} transposed {g} {w}");
            }
            // Preparation: P1 sends F to P0 only (20 + 28 words), one round each.
            let (p0, p1) = (&outs[0].value, &outs[1].value);
            assert_eq!((p1.4.online_sent, p1.4.rounds), (8 * (20 + 28), 2), "{s:?}");
            assert_eq!(p0.4.online_sent, 0, "{s:?}");
            // P0 holds F, P1 the clear W, nobody a replicated share.
            assert_eq!(p0.5, (true, true), "{s:?}");
            assert_eq!(p1.5, (false, true), "{s:?}");
            // The product (live material): E (24 elements) and P0's masked truncation share
            // (30 elements) from P0 in one message in the 54-bit owner ring, then the top
            // bit of the opened value (30 elements) from P1: 2 rounds in both settings (the
            // 3PC result is a pair; one round more than the local replicated product's
            // truncation, for a party's memory halved).
            let words = |n: u64, bits: u32| (n * u64::from(bits)).div_ceil(64);
            let ring = owner_ring(16, 16);
            assert_eq!(p0.3.rounds, 2, "{s:?}");
            assert_eq!(p1.3.rounds, 2, "{s:?}");
            assert_eq!(
                p0.3.online_sent,
                8 * (words(24, ring) + words(30, ring)),
                "{s:?}"
            );
            assert_eq!(p1.3.online_sent, 8 * words(30, 1), "{s:?}");
            match s {
                Setting::TwoPc => {}
                Setting::ThreePc => {
                    // P2 sends none.
                    assert_eq!(outs[2].value.3.online_sent, 0);
                    assert_eq!(outs[2].value.4.online_sent, 0);
                }
            }
        }
    }

    /// Bytes of c values packed at `bits` bits.
    fn words(c: usize, bits: u32) -> u64 {
        8 * (c as u64 * u64::from(bits)).div_ceil(64)
    }

    /// Checks an owner-held product's opened output against its f64 product (2 ulps: the
    /// faithful truncation's one plus the encoding's) and returns the owner ring at f = 16
    /// its byte counts need (the same in both settings: the 3PC result is a pair).
    fn check_owner_output(s: Setting, z: &Tensor<u64>, want: &Tensor<f64>) -> u32 {
        let fx = tessera::FixedPoint::default();
        for (g, w) in fx.decode_tensor(z).data().iter().zip(want.data()) {
            assert!((g - w).abs() < 2.0 * fx.ulp() + 1e-9, "{s:?} {g} {w}");
        }
        owner_ring(16, 16)
    }

    /// Dealt just in time ([`Party::stage_lazily`]), an owner-held product's P0 hands its
    /// masked truncation share to P1 with the dealing ([`Party::offline_step`]): online,
    /// P0 sends only E and P1 only the top bit of each opened value, the staged counters
    /// hold P0's share, and the result is the faithful one (within 2 ulps of f64), in
    /// both settings, 2 rounds and the same bytes in each (the 3PC result is a pair); P2
    /// (3PC) sends nothing online.
    #[test]
    fn owner_product_hands_its_truncation_share_over_with_the_dealing() {
        let fx = tessera::FixedPoint::default();
        let mut r = rng();
        // The second shape's E (150 x 600 in 54 bits, 600 KB) goes in 3 row pieces of 64
        // rows (4 rows align a piece to whole words), the owner computing piece by piece.
        for (rows, k, n) in [(6usize, 16usize, 9usize), (150, 600, 5)] {
            let enc = |shape: &[usize], lo: f64, hi: f64, r: &mut rand::rngs::StdRng| {
                let v: Vec<f64> = (0..shape.iter().product::<usize>())
                    .map(|_| r.gen_range(lo..hi))
                    .collect();
                fx.encode_tensor(&Tensor::from_vec(shape, v).unwrap())
                    .unwrap()
            };
            let x = enc(&[rows, k], -4.0, 4.0, &mut r);
            let w = enc(&[k, n], -1.0, 1.0, &mut r);
            let want = fx.decode_tensor(&x).matmul(&fx.decode_tensor(&w)).unwrap();
            for s in SETTINGS {
                let mut d = demand::prepare_owned(k, n, 7);
                d.extend(demand::matmul_owned_trunc(rows, k, n, 7, false, 16, 16));
                let opts = SessionOptions {
                    material: MaterialMode::Planned(tessera::preproc::Demand::default()),
                    ..Default::default()
                };
                let outs = tessera::runtime::run_all_parties(s, opts, |p| {
                    if !p.is_compute() {
                        // The 2PC dealer deals each request as the parties take it.
                        for q in &d.0 {
                            p.preprocess(&tessera::preproc::Demand(vec![q.clone()]))?;
                        }
                        return Ok(None);
                    }
                    p.stage_lazily(&d)?;
                    let me = p.id();
                    let pw = prepare_owned(p, (me == 1).then_some(&w), k, n, 7)?;
                    let xs = p.share_input(0, (me == 0).then_some(&x), &[rows, k])?;
                    let (before, (staged0, _)) = (p.stats(), p.staged_totals());
                    let z = matmul_prepared_trunc(p, &xs, &pw)?;
                    let st = p.stats().since(&before);
                    let staged = p.staged_totals().0.since(&staged0);
                    Ok(Some((p.open(&z)?, st, staged)))
                })
                .unwrap();
                let outs: Vec<_> = outs.into_iter().filter_map(|o| o.value).collect();
                let ring = check_owner_output(s, &outs[0].0, &want);
                let online = |i: usize| outs[i].1.online_sent - outs[i].2.online_sent;
                assert_eq!(online(0), words(rows * k, ring), "{s:?} P0");
                assert_eq!(online(1), words(rows * n, 1), "{s:?} P1");
                // P0's share went with the dealing, as offline words (with the dealing's own).
                assert!(outs[0].2.offline_sent >= words(rows * n, ring), "{s:?}");
                assert!(outs[1].2.offline_recv >= words(rows * n, ring), "{s:?}");
                assert_eq!(outs[0].1.rounds - outs[0].2.rounds, 2, "{s:?}");
            }
        }
    }

    #[test]
    fn owner_product_in_row_pieces_with_the_share_in_its_tail_matches_f64() {
        // Live material: P0's masked truncation share rides as the last piece of the E
        // message, after E's 3 row pieces. Same tolerance as the test above.
        let fx = tessera::FixedPoint::default();
        let mut r = rng();
        let (rows, k, n) = (150usize, 600usize, 5usize);
        let mut enc = |shape: [usize; 2], lo: f64, hi: f64| {
            let v: Vec<f64> = (0..shape[0] * shape[1])
                .map(|_| r.gen_range(lo..hi))
                .collect();
            fx.encode_tensor(&Tensor::from_vec(&shape, v).unwrap())
                .unwrap()
        };
        let (x, w) = (enc([rows, k], -4.0, 4.0), enc([k, n], -1.0, 1.0));
        let want = fx.decode_tensor(&x).matmul(&fx.decode_tensor(&w)).unwrap();
        assert_eq!(
            OwnerProduct::pieces_of(rows, k, owner_ring(16, 16)).len(),
            3
        );
        for s in SETTINGS {
            let outs = run(s, |p| {
                let me = p.id();
                let pw = prepare_owned(p, (me == 1).then_some(&w), k, n, 9)?;
                let xs = p.share_input(0, (me == 0).then_some(&x), &[rows, k])?;
                let before = p.stats();
                let z = matmul_prepared_trunc(p, &xs, &pw)?;
                let st = p.stats().since(&before);
                Ok((p.open(&z)?, st))
            })
            .unwrap();
            let ring = check_owner_output(s, &outs[0].value.0, &want);
            let st = &outs[0].value.1;
            assert_eq!(
                st.online_sent,
                words(rows * k, ring) + words(rows * n, ring),
                "{s:?}"
            );
            assert_eq!(st.rounds, 2, "{s:?}");
        }
    }

    #[test]
    fn the_published_w_minus_b_is_uniform_and_independent_of_the_weight() {
        // What P0 learns of an owner-held weight is F = W - B: for W = 0 and W = -1 its
        // bytes are uniform (chi2, 255 dof, P(chi2 > 360) < 2e-5) and alike.
        let (k, n) = (100, 400);
        for setting in SETTINGS {
            let mut hists = vec![];
            for secret in [0u64, u64::MAX] {
                let w = Tensor::from_vec(&[k, n], vec![secret; k * n]).unwrap();
                let outs = run(setting, |p| {
                    let mine = (p.id() == 1).then(|| w.clone());
                    let pw = prepare_owned(p, mine.as_ref(), k, n, 5)?;
                    Ok(pw.public_f().map(|f| f.data().to_vec()).unwrap_or_default())
                })
                .unwrap();
                let h = byte_hist(&outs[0].value);
                let c = chi2_uniform(&h);
                assert!(c < 360.0, "{setting:?} secret {secret:#x}: chi2 {c}");
                hists.push(h);
            }
            let c = chi2_two_sample(&hists[0], &hists[1]);
            assert!(c < 360.0, "{setting:?}: F depends on W, chi2 {c}");
        }
    }

    #[test]
    fn declared_demands_match_what_the_protocols_consume() {
        let f = 16;
        for s in SETTINGS {
            let outs = run(s, |p| {
                let x = Shared::zeros(p, &[2, 3, 4]);
                let w = Shared::zeros(p, &[4, 5]);
                let y = Shared::zeros(p, &[2, 4, 6]);
                let mut d = tessera::preproc::Demand::default();
                mul_trunc(p, &x, &x)?;
                d.extend(demand::mul_trunc(s, 24, f));
                matmul_trunc(p, &x, &y)?;
                d.extend(demand::matmul_trunc(s, &[2, 3, 4], &[2, 4, 6], f)?);
                matmul_trunc(p, &x, &w)?;
                d.extend(demand::matmul_trunc(s, &[2, 3, 4], &[4, 5], f)?);
                let pw = prepare_weight(p, &w, 3)?;
                d.extend(demand::prepare_weight(s, 4, 5, 3));
                matmul_prepared_trunc(p, &x, &pw)?;
                d.extend(demand::matmul_prepared_trunc(s, 6, 4, 5, 3, f));
                let wc = (p.id() == 1).then(|| Tensor::from_vec(&[4, 5], vec![0u64; 20]).unwrap());
                let po = prepare_owned(p, wc.as_ref(), 4, 5, 4)?;
                d.extend(demand::prepare_owned(4, 5, 4));
                matmul_prepared_trunc(p, &x, &po)?;
                d.extend(demand::matmul_owned_trunc(6, 4, 5, 4, false, f, f));
                let tc = (p.id() == 1).then(|| Tensor::from_vec(&[3, 4], vec![0u64; 12]).unwrap());
                let pt = prepare_owned(p, tc.as_ref(), 3, 4, 6)?;
                d.extend(demand::prepare_owned(3, 4, 6));
                matmul_prepared_t_trunc(p, &x.reshape(&[6, 4])?, &pt)?;
                d.extend(demand::matmul_owned_trunc(6, 4, 3, 6, true, f, f));
                Ok((p.consumed_demand(), d))
            })
            .unwrap();
            for o in &outs[..2] {
                assert_eq!(o.value.0, o.value.1, "{s:?}");
            }
        }
    }

    #[test]
    fn planned_material_matches_live_and_is_checked() {
        let n = 64;
        let x = Tensor::from_vec(&[n], (0..n as u64).collect()).unwrap();
        for s in SETTINGS {
            // Observe the demand of a live run, then plan it.
            let live = run(s, |p| {
                let xs = p.share_input(0, (p.id() == 0).then_some(&x), &[n])?;
                let z = mul_trunc(p, &xs, &xs)?;
                Ok((p.open(&z)?, p.consumed_demand()))
            })
            .unwrap();
            let demand = live[0].value.1.clone();
            assert!(!demand.0.is_empty() || s == Setting::ThreePc);
            let opts = SessionOptions {
                material: MaterialMode::Planned(demand.clone()),
                ..Default::default()
            };
            let planned = run_parties(s, opts, |p| {
                let xs = p.share_input(0, (p.id() == 0).then_some(&x), &[n])?;
                let z = mul_trunc(p, &xs, &xs)?;
                p.open(&z)
            })
            .unwrap();
            for (a, b) in planned[0].value.data().iter().zip(live[0].value.0.data()) {
                assert!(a.abs_diff(*b) <= 1, "{s:?}");
            }
            // A protocol that deviates from the plan fails with a clear error.
            let opts = SessionOptions {
                material: MaterialMode::Planned(demand),
                ..Default::default()
            };
            let e = run_parties(s, opts, |p| {
                let xs = p.share_input(0, (p.id() == 0).then_some(&x), &[n])?;
                let _ = truncate(p, &xs)?;
                let z = mul_trunc(p, &xs, &xs)?;
                p.open(&z)
            });
            assert!(e.is_err(), "{s:?}");
        }
    }

    /// Histogram of the little-endian bytes of `words`.
    pub(crate) fn byte_hist<'a>(words: impl IntoIterator<Item = &'a u64>) -> [u64; 256] {
        let mut h = [0u64; 256];
        for w in words {
            for byte in w.to_le_bytes() {
                h[byte as usize] += 1;
            }
        }
        h
    }

    /// Chi-square statistic of a byte histogram against the uniform distribution.
    pub(crate) fn chi2_uniform(h: &[u64; 256]) -> f64 {
        let total: u64 = h.iter().sum();
        let e = total as f64 / 256.0;
        h.iter().map(|&o| (o as f64 - e).powi(2) / e).sum()
    }

    /// Two-sample chi-square statistic between two byte histograms of equal totals.
    pub(crate) fn chi2_two_sample(a: &[u64; 256], b: &[u64; 256]) -> f64 {
        a.iter()
            .zip(b)
            .filter(|(x, y)| **x + **y > 0)
            .map(|(&x, &y)| (x as f64 - y as f64).powi(2) / (x + y) as f64)
            .sum()
    }

    /// What a small-ring truncation shows a party: the opened c = (x + 2^(bits-2) + r) mod
    /// 2^bits, for x = 0 and for x at the top of the range, in a 40-bit ring (the five
    /// low bytes of each c; the rest are zero). Uniform and the same for both secrets
    /// (255 degrees of freedom: P(chi2 > 360) < 2e-5 under uniformity).
    #[test]
    fn a_ring_truncations_opening_is_uniform_and_independent_of_the_secret() {
        let (n, bits) = (40_000, 40u32);
        let mut hists = vec![];
        for secret in [0u64, (1u64 << (bits - 2)) - 1] {
            let x = Tensor::from_vec(&[n], vec![secret; n]).unwrap();
            let outs = run(Setting::TwoPc, |p| {
                let xs = p.share_input(0, (p.id() == 0).then_some(&x), &[n])?;
                let m = p.material(&Request::Trunc { n, shift: 16, bits })?;
                ring_trunc_open(p, xs.parts().0.data(), &m.parts[0], bits, None)
            })
            .unwrap();
            let c = &outs[1].value;
            assert!(c.iter().all(|v| v >> bits == 0));
            let mut h = [0u64; 256];
            for v in c {
                for byte in &v.to_le_bytes()[..5] {
                    h[*byte as usize] += 1;
                }
            }
            let chi = chi2_uniform(&h);
            assert!(chi < 360.0, "secret {secret:#x}: chi2 {chi}");
            hists.push(h);
        }
        let chi = chi2_two_sample(&hists[0], &hists[1]);
        assert!(chi < 360.0, "the opening depends on the secret, chi2 {chi}");
    }

    #[test]
    fn a_single_partys_view_is_uniform_and_independent_of_the_secret() {
        // P1's components of [s * 1] (shared input times a shared one, so every component
        // has been re-randomised), and the truncation opening P1 receives, for s = 0 and
        // s = -1. 255 degrees of freedom: P(chi2 > 360) < 2e-5 under uniformity.
        let n = 40_000;
        for setting in SETTINGS {
            let mut hists = vec![];
            for secret in [0u64, u64::MAX] {
                let x = Tensor::from_vec(&[n], vec![secret; n]).unwrap();
                let one = Tensor::from_vec(&[n], vec![1u64; n]).unwrap();
                let outs = run(setting, |p| {
                    let xs = p.share_input(0, (p.id() == 0).then_some(&x), &[n])?;
                    let os = p.share_input(0, (p.id() == 0).then_some(&one), &[n])?;
                    let z = mul(p, &xs, &os)?;
                    let (a, b) = z.parts();
                    let mut words = a.data().to_vec();
                    if let Some(b) = b {
                        words.extend_from_slice(b.data());
                    }
                    Ok(words)
                })
                .unwrap();
                let h = byte_hist(&outs[1].value);
                let c = chi2_uniform(&h);
                assert!(c < 360.0, "{setting:?} secret {secret:#x}: chi2 {c}");
                hists.push(h);
            }
            let c = chi2_two_sample(&hists[0], &hists[1]);
            assert!(
                c < 360.0,
                "{setting:?}: view depends on the secret, chi2 {c}"
            );
        }
    }
}
