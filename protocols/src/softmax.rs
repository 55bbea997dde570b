//! Secure softmax over the last axis with an optional public additive mask, in both
//! settings, with a constant number of rounds.
//!
//! | method | definition | paper |
//! |---|---|---|
//! | [`SoftmaxMethod::Puma`] (default) | t = x - max(x) (FSS max tree), e^t by the fused LUT exponential ([`crate::exp`], 0 below -14), one reciprocal per row ([`crate::reciprocal`]), one product | PUMA arXiv 2307.12533 §4.3, SIGMA §5 |
//! | [`SoftmaxMethod::TwoQuad`] | (x + 5)^2 / sum (x + 5)^2 (masked entries dropped), Goldschmidt division | MPCFormer arXiv 2211.01452 §3, SecFormer arXiv 2401.00793 §4.2 |
//! | [`SoftmaxMethod::ReluSoftmax`] | relu(x) / (sum relu(x) + 1e-3) | THE-X (ACL Findings 2022) §3 |
//! | [`SoftmaxMethod::PowerSoftmax`] | u^4 / sum u^4, u = min(x - min(x), 64) / 8 | power-softmax of the polynomial-LLM work |
//!
//! Masked entries (mask < -1) get probability ~0 in every method.
//!
//! ## Bit widths and fusions of the default (Puma) method
//! The FSS comparisons are keyed for [`SOFTMAX_BITS`] = 36-bit operands (logits plus
//! mask up to 2^18 in magnitude, so -1e4 masks and huge logits saturate instead of
//! wrapping), but compare only the *high* bits (SIGMA's high-bit comparison,
//! `FssRequest::ReluCoarse`), which shortens each DCF key and its evaluation:
//! - the max tree ignores the low f - 4 bits (23 instead of 35 levels at f = 16): each of
//!   the 7 levels may keep the smaller entry when two differ by less than 2^-4, so the
//!   shift c is an entry of the row at most 7/16 below the true maximum. Softmax is
//!   invariant to the shift; t = x - c <= 7/16 only makes e^t <= 1.55 (the row sum stays
//!   below 2k, inside the reciprocal's range, and the max entry keeps S >= 1);
//! - the exponential truncates first (faithful, no DCF) and clamps only the 24-bit
//!   eighth-step table index, coarsely (20 levels), all in 2-of-2 form with no reshare
//!   in 3PC (see `exp_shift` in `crate::exp`): it replaces a 35-level clamp ReLU and a
//!   14-level DCF truncation.
//!
//! The clamp's comparison is a bit-output DCF (the masked DReLU bit is opened and selects
//! the lookup, see below). The max tree's comparisons were bit-output DCFs too
//! ([`compare`]'s `relu_bit2`: one more round per level for keys of 5 + 2 (levels - 7) + 2
//! words instead of 4 + 4 levels + 2); since material is dealt request by request just in
//! time, they are payload DCFs again, one round per level ([`MAX_BITWISE`]).
//!
//! The clamp and the table lookup share one opening (`FssRequest::ClampLut`: the opened
//! DReLU bit, masked, picks the lookup DPF's payload), so the clamp costs no round of its
//! own.
//!
//! Dealer material per element (P0; f = 16): about 2.9 KB before (35-level max,
//! 35-level clamp, 14-level DCF truncation, LUT) -> 1.6 KB (coarse payload DCFs) -> 0.9 KB
//! (bit DCFs; the rounds go 24 -> 31 in 2PC, 31 -> 38 in 3PC, the words 8 -> 7 per element
//! and party in 2PC) -> 1.3 KB with the max tree's payload DCFs back (20 / 21 rounds with
//! the table reciprocal).
//!
//! The arithmetic after the lookup is fused too (see `softmax_puma`): E Q(l) from one
//! masked opening of E and l, its truncation kept in opened form so the product with the
//! row reciprocal needs only a row-sized opening, and the whole pipeline on 2-of-2 shares
//! with one reshare at the end in 3PC: 12 -> 8 words per element and party in 2PC,
//! 13 -> 9 in 3PC; rounds 25 -> 24 (2PC), 34 -> 31 (3PC).
//!
//! The row reciprocal is read off a table ([`ReciprocalMethod::Lut`], `crate::tablefn`)
//! on the 2-of-2 row sums: 3 rounds (6 before stop 34) instead of Goldschmidt's 10 and, in
//! 3PC, no reshare of the sums and none of the reciprocal (rounds 31 -> 27 in 2PC, 38 -> 28
//! in 3PC); the max tree's levels use payload DCFs again ([`MAX_BITWISE`]: 27 -> 20,
//! 28 -> 21); the three-round table: 17 / 18; and 17 in both settings once the 3PC output
//! stayed a pair (no reshare at the end: 264 -> 200 bits per element for P0 and P1 in
//! 3PC).

use crate::arith::{finish_trunc_ring, ring_trunc_open};
use crate::exp::{
    bcast_rows, enc, exp_nonpositive_plain, exp_shift_front2, exp_shift_front_demand,
    exp_shift_num2, max_approx_demand, max_demand, mul_public_vec, mul_shift, mul_shift_demand,
    row_sums, sm_top, ExpMethod,
};
use crate::reciprocal::{
    recip_core, recip_demand, recip_lut2, recip_plain, Range, ReciprocalMethod,
};
use crate::{arith, compare};
use tessera::error::{Error, Result};
use tessera::fss::material::FssRequest;
use tessera::preproc::{Demand, Request};
use tessera::{Party, Setting, Shared};

/// Softmax approximation.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum SoftmaxMethod {
    /// Max-subtract, accurate exp, reciprocal (PUMA §4.3); the default.
    #[default]
    Puma,
    /// 2Quad (MPCFormer §3, SecFormer §4.2); needs distilled models.
    TwoQuad,
    /// ReLU-softmax (THE-X §3); needs fine-tuned models.
    ReluSoftmax,
    /// Power-softmax with p = 4 after a min shift.
    PowerSoftmax,
}

method_names!(SoftmaxMethod, "softmax", [
    Puma => "puma",
    TwoQuad => "2quad",
    ReluSoftmax => "relu",
    PowerSoftmax => "power",
]);

/// Comparison width of the max tree and clamps: |logit + mask| < 2^(SOFTMAX_BITS - 2 - f)
/// (2^18 at f = 16).
pub const SOFTMAX_BITS: u32 = 36;
/// Low bits the max tree's comparisons ignore, below the fixed-point scale: the max is
/// exact up to 2^(MAX_COARSE - f) per tree level (the shift only needs to be close).
const MAX_COARSE: u32 = 4;
/// Whether the max tree's comparisons are bit-output DCFs (two rounds per level, keys of
/// 29 words at 18 levels) or payload DCFs that return the ReLU share at once (one round
/// per level, 78 words). Payload: a BERT-base softmax's 7 levels cost 7 rounds instead of
/// 14 for ~0.4 KB more material per element and party (dealt just in time, so peak
/// memory holds one level's keys); over a 40 ms link the 7 rounds are worth 0.28 s.
const MAX_BITWISE: bool = false;
/// 2Quad's shift c.
const QUAD_C: f64 = 5.0;
/// Stabiliser added to the ReLU / 2Quad / power row sums.
const SUM_EPS: f64 = 1e-3;
/// Extra fractional bits of the row reciprocal (1/S is small for large sums).
fn r_extra(m: SoftmaxMethod) -> u32 {
    match m {
        SoftmaxMethod::Puma => 12,
        SoftmaxMethod::TwoQuad => 28,
        SoftmaxMethod::ReluSoftmax | SoftmaxMethod::PowerSoftmax => 20,
    }
}
/// Power-softmax clamp of u = x - min(x).
const POWER_CLIP: f64 = 64.0;

/// Reciprocal range of the exact-style row sum: S in [~1, k].
fn sum_range(k: usize, f: u32) -> Range {
    let hi = (usize::BITS - k.leading_zeros()) as i32 + 1; // 2^hi > 2 k
    Range {
        lo: 0,
        hi,
        bits: hi as u32 + f + 2,
    }
}

fn keep_vec(mask: Option<&[f64]>, n: usize) -> Vec<u64> {
    (0..n)
        .map(|j| u64::from(mask.is_none_or(|m| m[j] > -1.0)))
        .collect()
}

/// The mask as one entry per element of an [rows, k] tensor: a mask of length k is
/// broadcast over the rows, one of length rows x k (a causal mask, say) is taken as is.
fn full_mask(mask: Option<&[f64]>, rows: usize, k: usize) -> Option<Vec<f64>> {
    mask.map(|m| {
        if m.len() == k {
            m.repeat(rows)
        } else {
            m.to_vec()
        }
    })
}

fn check_mask(mask: Option<&[f64]>, rows: usize, k: usize) -> Result<()> {
    match mask {
        Some(m) if m.len() != k && m.len() != rows * k => Err(Error::shape(
            "softmax",
            format!(
                "mask of length {} for {rows} rows of {k} (give one row or one per row)",
                m.len()
            ),
        )),
        _ => Ok(()),
    }
}

/// Softmax over the last axis of `x` (any shape, rows of k = last axis), with an optional
/// public additive mask (0 or a large negative such as -1e4) of length k, broadcast over
/// the rows, or of length rows x k, one per row (a causal mask; public, so it costs no
/// round and no byte). Logits plus mask must satisfy |v| < 2^(33 - f) (saturating gracefully up to it).
///
/// Rounds (k = 128, f = 16): Puma 17 in both settings = 7 (max) + 3 (exp's truncation,
/// clamp and lookup, masked bit) + 1 (E) + 1 (truncation) + 3 (the row reciprocal's
/// table) + 1 (r - rho) + 1 (truncation), all 2-of-2 (3PC returns a pair); TwoQuad 2PC 15,
/// 3PC 20; ReluSoftmax 2PC 14, 3PC 20; PowerSoftmax 2PC 25, 3PC 32 (3PC: each product of
/// a pair reshares it first, and the Goldschmidt reciprocal takes 16). PUMA arXiv
/// 2307.12533 §4.3; MPCFormer §3; SecFormer §4.2; THE-X §3.
pub fn softmax(
    p: &mut Party,
    x: &Shared,
    mask: Option<&[f64]>,
    method: SoftmaxMethod,
) -> Result<Shared> {
    let f = p.fixed().frac_bits();
    let shape = x.shape().to_vec();
    let k = *shape
        .last()
        .filter(|&&k| k > 0)
        .ok_or_else(|| Error::shape("softmax", format!("empty last axis in {shape:?}")))?;
    let n = x.len();
    let rows = n / k;
    check_mask(mask, rows, k)?;
    let mask = full_mask(mask, rows, k);
    let mask = mask.as_deref();
    let x2 = x.reshape(&[rows, k])?;
    let enc_mask = |sign: f64| -> Result<Option<tessera::Tensor<u64>>> {
        mask.map(|m| {
            tessera::Tensor::from_vec(&[rows, k], m.iter().map(|&v| enc(sign * v, f)).collect())
        })
        .transpose()
    };
    let xm = match enc_mask(1.0)? {
        Some(t) => x2.add_public(p, &t)?,
        None => x2.clone(),
    };
    let keep: Vec<u64> = keep_vec(mask, n);
    let (num, rg) = match method {
        SoftmaxMethod::Puma => return softmax_puma(p, &xm, k, &shape),
        SoftmaxMethod::TwoQuad => {
            let y = x2.add_public_scalar(p, enc(QUAD_C, f));
            let q = arith::mul_trunc(p, &y, &y)?;
            (mul_public_vec(&q, &keep)?, Range::public(f).wide())
        }
        SoftmaxMethod::ReluSoftmax => {
            let r = compare::relu(p, &xm, SOFTMAX_BITS)?;
            (r, Range::public(f))
        }
        SoftmaxMethod::PowerSoftmax => {
            // min over kept entries: -max(-(x - mask))
            let z = match enc_mask(-1.0)? {
                Some(t) => x2.add_public(p, &t)?,
                None => x2.clone(),
            };
            let mn = compare::max_last_axis(p, &z.neg(), SOFTMAX_BITS)?
                .reshape(&[rows])?
                .neg();
            let u = x2.sub(&bcast_rows(&mn, &[rows, k])?)?;
            let over = u.add_public_scalar(p, enc(POWER_CLIP, f).wrapping_neg());
            let u = u.sub(&compare::relu(p, &over, SOFTMAX_BITS)?)?;
            let u2 = mul_shift(p, &u, &u, f + 6)?; // (u / 8)^2
            let u4 = arith::mul_trunc(p, &u2, &u2)?;
            (mul_public_vec(&u4, &keep)?, Range::public(f))
        }
    };
    let mut s = row_sums(&num)?;
    if method != SoftmaxMethod::Puma {
        s = s.add_public_scalar(p, enc(SUM_EPS, f));
    }
    let r = recip_core(
        p,
        &s,
        rg,
        ReciprocalMethod::Goldschmidt,
        f + r_extra(method),
    )?;
    let y = mul_shift(p, &num, &bcast_rows(&r, &[rows, k])?, f + r_extra(method))?;
    y.reshape(&shape)
}

/// The default method, fused on 2-of-2 shares between P0 and P1 (P2 deals in 3PC), the
/// 3PC output a pair (no reshare):
/// 1. c = approximate row max (FSS tree of bit-DCF ReLUs, 14 rounds at k = 128), t = x - c;
/// 2. E, l = the exponential's table value and remainder ([`exp_shift_front2`], 3 rounds:
///    truncation, one opening for the clamp and the lookup, the masked clamp bit);
/// 3. num = E Q(l) at scale 3f + 8 from one masked opening of E (1 round; l's mask is the
///    front truncation's, whose opening already gave l - beta: [`Request::TruncSq`]), in the
///    ring Z_2^60 of its truncation (`num_ring`);
/// 4. num is truncated to scale f by opening the high bits of c' = num + R mod 2^60
///    (1 round, `arith::trunc2_high`'s opening), *keeping* the truncated value in the form
///    (c' >> s) - (R' >> s) + 2^(60-s) msb(R') (1 - msb(c')), R' = R mod 2^60;
///    row sums S give r = 1/S ([`recip_core`], per row);
/// 5. r - rho is opened (row-sized), and num_f r is local: the dealer's (R' >> s) rho and
///    msb(R') rho ([`Request::TruncRowMul`]) stand in for a second opening of num_f;
/// 6. one truncation (its high bits).
///
/// Online bits per element and party (2PC, f = 16): max tree 38 (its maxima only meet
/// the exponential's truncation in Z_2^38), exp 38 + 24 + 60, truncations 20 + 20: 200
/// (25 B; 286 while the tree opened 64 bits and l had its own opening), the same for P0
/// and P1 in 3PC (+ 64 while the output was reshared); before the fusions 12 / 13
/// words, before the small rings 7 / 8.
fn softmax_puma(p: &mut Party, xm: &Shared, k: usize, shape: &[usize]) -> Result<Shared> {
    use rayon::prelude::*;
    let f = p.fixed().frac_bits();
    let n = xm.len();
    let rows = n / k;
    let me = p.id();
    let y = p.additive_view(xm);
    // The maxima only meet the exponential's truncation, which opens t = y - max in
    // Z_2^(SOFTMAX_BITS + 2) and never uses t's shares again (l is masked by that
    // opening's own mask): the tree works mod 2^(SOFTMAX_BITS + 2) too.
    let mx = compare::max2_approx(
        p,
        y.clone(),
        k,
        SOFTMAX_BITS,
        f - MAX_COARSE,
        MAX_BITWISE,
        SOFTMAX_BITS + 2,
    )?;
    let t: Vec<u64> = y
        .iter()
        .enumerate()
        .map(|(i, v)| v.wrapping_sub(mx[i / k]))
        .collect();
    let front = exp_shift_front2(p, &t, SOFTMAX_BITS)?;
    let (ring, high) = num_ring(f);
    let num = exp_shift_num2(p, &front, ring)?;
    let s = sm_top(f);
    let m = p.material(&Request::TruncRowMul {
        rows,
        k,
        shift: s,
        bits: ring,
    })?;
    // step 4: open c' = num + 2^(ring - 2) + R mod 2^ring (its bits above s) and take
    // the truncated shares
    let (c, xf) = if me < 2 {
        let c = ring_trunc_open(p, &num, &m.parts[0], ring, high.then_some(s))?;
        let xf = finish_trunc_ring(me, &c, &m.parts[2], &m.parts[3], s, ring);
        (c, xf)
    } else {
        (vec![], vec![0; n])
    };
    let sums: Vec<u64> = xf
        .chunks(k)
        .map(|r| r.iter().fold(0u64, |a, v| a.wrapping_add(*v)))
        .collect();
    // the row reciprocal by table, on the 2-of-2 sums (no reshare; 3 rounds, not 11)
    let rs = f + r_extra(SoftmaxMethod::Puma);
    let r2 = recip_lut2(p, &sums, sum_range(k, f), rs)?;
    let out = if me < 2 {
        let pt = &m.parts;
        let rp = compare::open_sum(p, compare::wsub(&r2, &pt[1]), "softmax open r - rho")?;
        let top = 1u64 << (ring - s);
        let unbias = 1u64 << (ring - 2 - s);
        (0..n)
            .into_par_iter()
            .map(|i| {
                let row = i / k;
                let mut v = xf[i]
                    .wrapping_mul(rp[row])
                    .wrapping_add(((c[i] >> s).wrapping_sub(unbias)).wrapping_mul(pt[1][row]))
                    .wrapping_sub(pt[4][i]);
                if (c[i] >> (ring - 1)) & 1 == 0 {
                    v = v.wrapping_add(top.wrapping_mul(pt[5][i]));
                }
                v
            })
            .collect()
    } else {
        vec![0; n]
    };
    let out = crate::arith::trunc2_high(p, &out, rs, out_ring(f, rs))?;
    Shared::pair(p, shape, out)
}

/// The material of [`softmax_puma`].
fn softmax_puma_demand(d: &mut Demand, rows: usize, k: usize, setting: Setting, f: u32) {
    let n = rows * k;
    max_approx_demand(d, rows, k, SOFTMAX_BITS, f - MAX_COARSE, MAX_BITWISE);
    exp_shift_front_demand(d, n, SOFTMAX_BITS, f);
    d.push(Request::TruncRowMul {
        rows,
        k,
        shift: sm_top(f),
        bits: num_ring(f).0,
    });
    let rs = f + r_extra(SoftmaxMethod::Puma);
    recip_demand(
        d,
        rows,
        sum_range(k, f),
        ReciprocalMethod::Lut,
        setting,
        f,
        rs,
    );
    d.push(Request::Trunc {
        n,
        shift: rs,
        bits: out_ring(f, rs),
    });
}

/// Ring of the Puma path's truncation of num = E Q(l) at scale f + s, s = [`sm_top`]:
/// num ~ e^t 2^(f + s) is below 1.55 2^(f + s) < 2^(f + s + 1) (t = x - c <= 7/16, see the
/// module doc), so
/// with the 3 bits of headroom of the high-bits truncation (`arith::trunc2_high`) its
/// masked value is needed mod 2^(f + s + 4) only (60 bits at f = 16) and its opening
/// carries the f + 4 bits above s instead of 64 (and E is opened in it too,
/// `exp::exp_shift_num2`). Returns the ring and whether it fits (it
/// does for f <= 17; beyond, num itself leaves 64 bits); the row product (step 5) reads
/// the opened value's top bit and high part in that ring.
fn num_ring(f: u32) -> (u32, bool) {
    let bits = f + sm_top(f) + 4;
    (bits.min(64), bits <= 64)
}

/// Ring of the Puma path's last truncation: each entry E Q(l) / S is below 1.55 2^(f +
/// rs) < 2^(f + rs + 1) (E <= e^(7/16), the row sum S >= 1 from the max entry, see the
/// module doc), so with the 3 bits of headroom of the high-bits truncation
/// ([`crate::arith::trunc2_high`]) its shares are needed mod 2^(f + rs + 4) only, and
/// its opening carries the f + 4 bits above the shift rs instead of 64.
fn out_ring(f: u32, rs: u32) -> u32 {
    (f + rs + 4).min(64)
}

impl Range {
    /// The public range widened to 52-bit comparisons (2Quad's sums of squares).
    fn wide(self) -> Range {
        Range {
            bits: 52,
            hi: self.hi + 12,
            lo: -10,
        }
    }
}

/// Plaintext definition of one row of [`softmax`] (f = 16).
pub fn softmax_plain(x: &[f64], mask: Option<&[f64]>, method: SoftmaxMethod) -> Vec<f64> {
    let k = x.len();
    let xm: Vec<f64> = (0..k).map(|j| x[j] + mask.map_or(0.0, |m| m[j])).collect();
    let keep: Vec<f64> = keep_vec(mask, k).iter().map(|&b| b as f64).collect();
    let (num, rg): (Vec<f64>, Range) = match method {
        SoftmaxMethod::Puma => {
            let mx = xm.iter().copied().fold(f64::MIN, f64::max);
            let e = xm
                .iter()
                .map(|v| exp_nonpositive_plain(v - mx, ExpMethod::Lut))
                .collect();
            (e, sum_range(k, 16))
        }
        SoftmaxMethod::TwoQuad => (
            (0..k).map(|j| (x[j] + QUAD_C).powi(2) * keep[j]).collect(),
            Range::public(16).wide(),
        ),
        SoftmaxMethod::ReluSoftmax => (xm.iter().map(|v| v.max(0.0)).collect(), Range::public(16)),
        SoftmaxMethod::PowerSoftmax => {
            let mn = (0..k)
                .map(|j| x[j] - mask.map_or(0.0, |m| m[j]))
                .fold(f64::MAX, f64::min);
            (
                (0..k)
                    .map(|j| ((x[j] - mn).min(POWER_CLIP) / 8.0).powi(4) * keep[j])
                    .collect(),
                Range::public(16),
            )
        }
    };
    let mut s: f64 = num.iter().sum();
    if method != SoftmaxMethod::Puma {
        s += SUM_EPS;
    }
    let rm = if method == SoftmaxMethod::Puma {
        ReciprocalMethod::Lut
    } else {
        ReciprocalMethod::Goldschmidt
    };
    let r = recip_plain(s, rg, rm);
    num.iter().map(|v| v * r).collect()
}

/// Exactly the material [`softmax`] consumes on a tensor of `shape`.
pub fn softmax_demand(
    shape: &[usize],
    method: SoftmaxMethod,
    setting: Setting,
    frac_bits: u32,
) -> Demand {
    let f = frac_bits;
    let k = shape.last().copied().unwrap_or(1).max(1);
    let n: usize = shape.iter().product();
    let rows = n / k;
    let mut d = Demand::default();
    let rg = match method {
        SoftmaxMethod::Puma => {
            softmax_puma_demand(&mut d, rows, k, setting, f);
            return d;
        }
        SoftmaxMethod::TwoQuad => {
            mul_shift_demand(&mut d, n, f, setting);
            Range::public(f).wide()
        }
        SoftmaxMethod::ReluSoftmax => {
            d.push(Request::Fss(FssRequest::Relu {
                n,
                bits: SOFTMAX_BITS,
            }));
            Range::public(f)
        }
        SoftmaxMethod::PowerSoftmax => {
            max_demand(&mut d, rows, k, SOFTMAX_BITS);
            d.push(Request::Fss(FssRequest::Relu {
                n,
                bits: SOFTMAX_BITS,
            }));
            mul_shift_demand(&mut d, n, f + 6, setting);
            mul_shift_demand(&mut d, n, f, setting);
            Range::public(f)
        }
    };
    recip_demand(
        &mut d,
        rows,
        rg,
        ReciprocalMethod::Goldschmidt,
        setting,
        f,
        f + r_extra(method),
    );
    mul_shift_demand(&mut d, n, f + r_extra(method), setting);
    d
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compare::tests::SETTINGS;
    use crate::exp::tests::{check_op, q, rng};
    use rand::Rng;

    fn exact(x: &[f64], mask: Option<&[f64]>) -> Vec<f64> {
        let xm: Vec<f64> = x
            .iter()
            .enumerate()
            .map(|(j, v)| v + mask.map_or(0.0, |m| m[j]))
            .collect();
        let mx = xm.iter().copied().fold(f64::MIN, f64::max);
        let e: Vec<f64> = xm.iter().map(|v| (v - mx).exp()).collect();
        let s: f64 = e.iter().sum();
        e.iter().map(|v| v / s).collect()
    }

    #[test]
    fn softmax_methods_accuracy_rounds_demand() {
        let mut r = rng();
        let (rows, k) = (6usize, 128usize);
        let mut xs: Vec<f64> = (0..rows * k).map(|_| r.gen_range(-30.0..30.0)).collect();
        // a peaked row and a flat row
        xs[..k]
            .iter_mut()
            .enumerate()
            .for_each(|(j, v)| *v = if j == 3 { 30.0 } else { -30.0 });
        xs[k..2 * k].iter_mut().for_each(|v| *v = 1.5);
        let mask: Vec<f64> = (0..k)
            .map(|j| if j % 5 == 4 { -1e4 } else { 0.0 })
            .collect();
        let mut bad = vec![];
        for s in SETTINGS {
            for &m in SoftmaxMethod::ALL {
                for mk in [None, Some(&mask[..])] {
                    let d = softmax_demand(&[rows, k], m, s, 16);
                    let (got, st) = check_op(s, &xs, &[rows, k], &d, |p, a| softmax(p, a, mk, m));
                    let (mut e_exact, mut e_own) = (0f64, 0f64);
                    for (row, grow) in xs.chunks(k).zip(got.chunks(k)) {
                        let rq: Vec<f64> = row.iter().map(|v| q(*v)).collect();
                        let ex = exact(&rq, mk);
                        let own = softmax_plain(&rq, mk, m);
                        for j in 0..k {
                            e_exact = e_exact.max((grow[j] - ex[j]).abs());
                            e_own = e_own.max((grow[j] - own[j]).abs());
                        }
                    }
                    println!("softmax {m} {s:?} mask {}: max abs err vs exact {e_exact:.3e}, vs own {e_own:.3e}, rounds {}, bytes {}", mk.is_some(), st.rounds, st.online_sent);
                    assert!(e_own <= 1e-3, "{s:?} {m}: {e_own}");
                    if m == SoftmaxMethod::Puma {
                        assert!(e_exact <= 1e-3, "{s:?}: {e_exact}");
                    }
                    // Puma: 2-of-2 throughout, the same in both settings. The others in
                    // 3PC: the comparisons, truncations and the reciprocal's selection
                    // give pairs (1 round each, as in 2PC), each product of a pair
                    // reshares it first, and the Goldschmidt reciprocal takes 16 (11 in
                    // 2PC): TwoQuad 1 (y^2, replicated y) + 16 + 3 (num r: reshare,
                    // product, truncation); ReluSoftmax 1 + 16 + 3; PowerSoftmax 7 (max)
                    // + 1 (clip) + 3 (u^2) + 2 (u^4) + 16 + 3.
                    let rounds = match (m, s) {
                        (SoftmaxMethod::Puma, _) => 17,
                        (SoftmaxMethod::TwoQuad, Setting::TwoPc) => 15,
                        (SoftmaxMethod::TwoQuad, Setting::ThreePc) => 20,
                        (SoftmaxMethod::ReluSoftmax, Setting::TwoPc) => 14,
                        (SoftmaxMethod::ReluSoftmax, Setting::ThreePc) => 20,
                        (SoftmaxMethod::PowerSoftmax, Setting::TwoPc) => 25,
                        (SoftmaxMethod::PowerSoftmax, Setting::ThreePc) => 32,
                    };
                    if st.rounds != rounds {
                        bad.push(format!("{s:?} {m}: {} rounds", st.rounds));
                    }
                    if m == SoftmaxMethod::Puma {
                        // words per party: max tree n - rows values in 38 bits, exp front
                        // truncation in 38 bits, clamp opening in 24, E in 60 bits (the
                        // ring of E Q(l); l is masked by the front truncation's own
                        // mask), the truncation of E Q(l) and the final one in the f + 4
                        // = 20 bits above their shifts, in both settings (the 3PC output
                        // is a pair); per row under 40 words (the reciprocal, the packed
                        // bits, each tree level's rounding up to whole words)
                        let n = rows * k;
                        let ring = |bits: usize| (n * bits).div_ceil(64);
                        let tree = ((n - rows) * 38).div_ceil(64);
                        let base = tree + ring(38) + ring(24) + ring(60) + 2 * ring(20);
                        let words = (st.online_sent / 8) as usize;
                        if !(base..=base + 40 * rows).contains(&words) {
                            bad.push(format!("{s:?} {m}: {words} words, base {base}"));
                        }
                    }
                }
            }
        }
        assert!(bad.is_empty(), "{bad:?}");
    }

    #[test]
    fn softmax_with_e_opened_in_pieces_is_accurate() {
        // 320 x 128 logits: the exponential's E - alpha (60 bits each, 307 KB) goes in two
        // pieces, each formed by its own part of the table lookup. Bound as
        // `softmax_methods_accuracy_rounds_demand`'s (1e-3 against exact softmax).
        let mut r = rng();
        let (rows, k) = (320usize, 128usize);
        let xs: Vec<f64> = (0..rows * k).map(|_| r.gen_range(-12.0..12.0)).collect();
        let m = SoftmaxMethod::Puma;
        for s in SETTINGS {
            let d = softmax_demand(&[rows, k], m, s, 16);
            let (got, st) = check_op(s, &xs, &[rows, k], &d, |p, a| softmax(p, a, None, m));
            // 2-of-2 throughout: the same in both settings (the 3PC output is a pair)
            assert_eq!(st.rounds, 17, "{s:?}");
            let mut err = 0f64;
            for (row, grow) in xs.chunks(k).zip(got.chunks(k)) {
                let rq: Vec<f64> = row.iter().map(|v| q(*v)).collect();
                for (g, e) in grow.iter().zip(exact(&rq, None)) {
                    err = err.max((g - e).abs());
                }
            }
            assert!(err <= 1e-3, "{s:?}: {err}");
        }
    }

    #[test]
    fn softmax_is_accurate_with_near_ties_at_the_max() {
        // Entries within the approximate max's tolerance of each other (spacing 1/256 and
        // 1/64 near the top), so the max tree often keeps a smaller entry.
        let (rows, k) = (4usize, 128usize);
        let xs: Vec<f64> = (0..rows * k)
            .map(|i| {
                let (r, j) = (i / k, i % k);
                8.0 - j as f64 / (64.0 * (r + 1) as f64) - if r == 3 { 40.0 } else { 0.0 }
            })
            .collect();
        for s in SETTINGS {
            let m = SoftmaxMethod::Puma;
            let d = softmax_demand(&[rows, k], m, s, 16);
            let (got, _) = check_op(s, &xs, &[rows, k], &d, |p, a| softmax(p, a, None, m));
            for (row, grow) in xs.chunks(k).zip(got.chunks(k)) {
                let rq: Vec<f64> = row.iter().map(|v| q(*v)).collect();
                let ex = exact(&rq, None);
                for j in 0..k {
                    assert!(
                        (grow[j] - ex[j]).abs() <= 1e-4,
                        "{s:?}: {} vs {}",
                        grow[j],
                        ex[j]
                    );
                }
            }
        }
    }

    #[test]
    fn softmax_saturates_on_huge_logits() {
        let k = 8;
        let xs = [1e4, -1e4, 0.0, 9999.0, -3e4, 2e4, 5.0, 1.0];
        for s in SETTINGS {
            for &m in SoftmaxMethod::ALL {
                let d = softmax_demand(&[1, k], m, s, 16);
                let (got, _) = check_op(s, &xs, &[1, k], &d, |p, a| softmax(p, a, None, m));
                let own = softmax_plain(&xs, None, m);
                let sum: f64 = got.iter().sum();
                assert!((sum - 1.0).abs() < 2e-2, "{s:?} {m}: {got:?}");
                for (g, w) in got.iter().zip(&own) {
                    assert!(
                        (g - w).abs() < 2e-2 && *g > -1e-3,
                        "{s:?} {m}: {got:?} vs {own:?}"
                    );
                }
            }
        }
        for &m in SoftmaxMethod::ALL {
            assert_eq!(m.to_string().parse::<SoftmaxMethod>().unwrap(), m);
        }
        assert_eq!(
            "2quad".parse::<SoftmaxMethod>().unwrap(),
            SoftmaxMethod::TwoQuad
        );
    }
}
