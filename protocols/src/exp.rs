//! Secure exponential e^x on whole tensors, in both settings, with a constant number of
//! rounds, and the small numeric toolkit the other nonlinear modules share (products
//! with an arbitrary truncation, row sums and broadcasts, Chebyshev fits, demand
//! builders).
//!
//! ## Methods
//! - [`ExpMethod::Lut`] (default): range reduction by a lookup table, as SIGMA (Gupta et
//!   al. PETS'24 §5, exp of negative inputs by LUTs) and PUMA's clipping (arXiv
//!   2307.12533 §4.3). The input is clamped to [L, U] (two FSS ReLUs in one call),
//!   s = x - L is split *exactly* into a quarter-step part h = floor(4 s) (a DCF
//!   truncation by f - 2 bits) and a remainder l in [0, 1/4); e^(L + h/4) comes from a
//!   7-bit DPF lookup table and e^l from a Chebyshev polynomial of degree 2 (U <= 0,
//!   softmax) or 3 (public exp), evaluated without intermediate truncation; one product
//!   joins them. Error: about 1e-6 relative plus 2^-f absolute.
//!   Softmax's exponential of t = x - c <= ~0 ([`exp_nonpositive`]) is a leaner fused
//!   variant (`exp_shift`): a faithful truncation to eighth steps first (no DCF; the
//!   remainder l in [-1/8, 1/8) is exact), a coarse high-bit ReLU clamp of the *index*
//!   only (20 DCF levels instead of a 35-level clamp of x plus a 14-level DCF
//!   truncation), the lookup, and a degree-2 fit on [-1/8, 1/8] (< 1e-4 relative), all
//!   2-of-2 in 3PC with no reshare (the result is a pair); 0 below -14.
//! - [`ExpMethod::Puma`]: PUMA's (1 + x/2^5)^(2^5) with clipping below -14 (five
//!   squarings). [`ExpMethod::Puma8`]: the same with 2^8 (eight squarings). Both
//!   undershoot e^x for negative x (RECIPES.md); kept for comparison.

use crate::{arith, compare, lut, spline::Spline};
use tessera::error::{Error, Result};
use tessera::fss::material::FssRequest;
use tessera::preproc::{Demand, Request};
use tessera::{Party, Setting, Shared, Tensor};

// ---------------------------------------------------------------------------------------
// Shared toolkit (crate-internal).

/// Internal fixed-point scale of the Newton / Goldschmidt iterations (values below 2, so
/// products stay below 2^(2 * 28 + 2) < 2^62).
pub(crate) const HI: u32 = 28;

/// A ring integer 2^k (k < 64).
pub(crate) fn pow2(k: u32) -> u64 {
    1u64 << k
}

/// round(v * 2^scale) as a ring element.
pub(crate) fn enc(v: f64, scale: u32) -> u64 {
    (v * 2f64.powi(scale as i32)).round() as i64 as u64
}

/// \[x y\] truncated by `shift` bits: [`arith::mul_trunc`] when `shift` is the session's
/// f (2PC 2 rounds, 3PC 1), otherwise [`arith::mul`] then [`arith::truncate_by`] (2 rounds
/// in both settings); in 3PC one more if an operand is a pair (its reshare), and the
/// result is a pair.
pub(crate) fn mul_shift(p: &mut Party, x: &Shared, y: &Shared, shift: u32) -> Result<Shared> {
    if shift == p.fixed().frac_bits() {
        return arith::mul_trunc(p, x, y);
    }
    let z = arith::mul(p, x, y)?;
    arith::truncate_by(p, &z, shift)
}

/// Demand of [`mul_shift`] on n elements.
pub(crate) fn mul_shift_demand(d: &mut Demand, n: usize, shift: u32, s: Setting) {
    mul_demand(d, n, s);
    d.push(Request::Trunc { n, shift, bits: 64 });
}

/// Demand of [`arith::mul`] on n elements (2PC: a Beaver triple; 3PC: nothing).
pub(crate) fn mul_demand(d: &mut Demand, n: usize, s: Setting) {
    if s == Setting::TwoPc {
        d.push(Request::Beaver { n });
    }
}

/// Demand of [`arith::truncate_by`] on n elements.
pub(crate) fn trunc_demand(d: &mut Demand, n: usize, shift: u32) {
    d.push(Request::Trunc { n, shift, bits: 64 });
}

/// Demand of [`compare::max_last_axis`] on rows of k entries.
pub(crate) fn max_demand(d: &mut Demand, rows: usize, k: usize, bits: u32) {
    max_approx_demand(d, rows, k, bits, 0, false);
}

/// Demand of [`compare::max_last_axis_approx`] (`compare::max2_approx` with `bitwise`
/// false) or of the bitwise tree on rows of k entries.
pub(crate) fn max_approx_demand(
    d: &mut Demand,
    rows: usize,
    k: usize,
    bits: u32,
    skip: u32,
    bitwise: bool,
) {
    let mut w = k;
    while w > 1 {
        let n = rows * (w / 2);
        d.push(Request::Fss(if bitwise {
            compare::drelu_bit_request(n, bits, skip)
        } else {
            compare::relu_request(n, bits, skip)
        }));
        w = w.div_ceil(2);
    }
}

/// Flattens several shares into one 1-D share (to batch several products in one round;
/// [`Shared::concat_flat`]).
pub(crate) fn concat(xs: &[&Shared]) -> Result<Shared> {
    Shared::concat_flat(xs)
}

/// Elements [off, off + numel(shape)) of a flat share, reshaped.
pub(crate) fn slice(x: &Shared, off: usize, shape: &[usize]) -> Result<Shared> {
    let n: usize = shape.iter().product();
    x.try_map_local(|t| Tensor::from_vec(shape, t.data()[off..off + n].to_vec()))
}

/// Sums over the last axis (local), shape [rows].
pub(crate) fn row_sums(x: &Shared) -> Result<Shared> {
    let k = *x.shape().last().unwrap_or(&1);
    let rows = x.len() / k.max(1);
    x.try_map_local(|t| {
        let v: Vec<u64> = t
            .data()
            .chunks(k.max(1))
            .map(|r| r.iter().fold(0u64, |a, b| a.wrapping_add(*b)))
            .collect();
        Tensor::from_vec(&[rows], v)
    })
}

/// Repeats each of the `rows` values k times, giving `shape` (local).
pub(crate) fn bcast_rows(x: &Shared, shape: &[usize]) -> Result<Shared> {
    let k = *shape.last().unwrap_or(&1);
    x.try_map_local(|t| {
        let v: Vec<u64> = t
            .data()
            .iter()
            .flat_map(|&a| std::iter::repeat_n(a, k))
            .collect();
        Tensor::from_vec(shape, v)
    })
}

/// Multiplies every element by a public integer vector of the same length (local).
pub(crate) fn mul_public_vec(x: &Shared, v: &[u64]) -> Result<Shared> {
    let t = Tensor::from_vec(x.shape(), v.to_vec())?;
    x.mul_public(&t)
}

/// Monomial coefficients of the degree-`deg` polynomial interpolating `f` at the
/// Chebyshev nodes of [a, b] (near-minimax).
pub(crate) fn cheb_fit(f: impl Fn(f64) -> f64, a: f64, b: f64, deg: usize) -> Vec<f64> {
    let m = deg + 1;
    let xs: Vec<f64> = (0..m)
        .map(|i| {
            let t = ((2 * i + 1) as f64 * std::f64::consts::PI / (2 * m) as f64).cos();
            0.5 * (a + b) + 0.5 * (b - a) * t
        })
        .collect();
    // Solve the Vandermonde system by Gaussian elimination with partial pivoting.
    let mut a_mat: Vec<Vec<f64>> = xs
        .iter()
        .map(|&x| {
            let mut row: Vec<f64> = (0..m).map(|k| x.powi(k as i32)).collect();
            row.push(f(x));
            row
        })
        .collect();
    for c in 0..m {
        let piv = (c..m)
            .max_by(|&i, &j| a_mat[i][c].abs().total_cmp(&a_mat[j][c].abs()))
            .unwrap_or(c);
        a_mat.swap(c, piv);
        let pivot = a_mat[c].clone();
        for (r, row) in a_mat.iter_mut().enumerate() {
            if r != c {
                let k = row[c] / pivot[c];
                for (v, pv) in row.iter_mut().zip(&pivot).skip(c) {
                    *v -= k * pv;
                }
            }
        }
    }
    (0..m).map(|i| a_mat[i][m] / a_mat[i][i]).collect()
}

/// Horner evaluation of monomial coefficients.
pub(crate) fn horner(c: &[f64], x: f64) -> f64 {
    c.iter().rev().fold(0.0, |acc, &k| acc * x + k)
}

/// A piecewise-constant spline over signed ring breakpoints (coefficient vectors per
/// segment), for [`crate::spline::spline_coefficients`].
pub(crate) fn step_spline(breaks: Vec<u64>, coeffs: Vec<Vec<u64>>) -> Result<Spline> {
    Spline::new(breaks, coeffs)
}

/// Demand of a piecewise-constant spline selection.
pub(crate) fn spline_demand(d: &mut Demand, n: usize, bits: u32, sp: &[Vec<u64>]) {
    if sp.len() > 1 {
        d.push(Request::Fss(crate::spline::spline_request(n, bits)));
    }
}

/// Error for an unknown method name.
pub(crate) fn unknown(what: &str, got: &str, all: &[String]) -> Error {
    Error::Unsupported(format!(
        "unknown {what} method {got:?}: expected one of {}",
        all.join(", ")
    ))
}

// ---------------------------------------------------------------------------------------
// exp

/// How [`exp`] is computed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum ExpMethod {
    /// LUT range reduction + short polynomial (SIGMA §5 / PUMA §4.3 clipping); accurate.
    #[default]
    Lut,
    /// PUMA §4.3: (1 + x/32)^32, 0 below -14.
    Puma,
    /// (1 + x/256)^256, 0 below -14 (PUMA's form with 2^8, RECIPES.md).
    Puma8,
}

method_names!(ExpMethod, "exp", [
    Lut => "lut",
    Puma => "puma",
    Puma8 => "puma8",
]);

/// Lower clamp of the public [`exp`] (e^-26 < 2^-37: 0 at any f <= 24).
pub const EXP_LO: f64 = -26.0;
/// Upper clamp of the public [`exp`]: larger inputs saturate to e^5.
pub const EXP_HI: f64 = 5.0;
/// Input width of the public [`exp`]'s comparisons: |x| < 2^(EXP_BITS - 1 - f).
pub const EXP_BITS: u32 = 40;
/// PUMA's clipping threshold.
const PUMA_CLIP: f64 = -14.0;

/// Parameters of one LUT exponential.
#[derive(Clone, Copy, Debug)]
pub(crate) struct LutExp {
    /// Lower clamp L (U - L < 32).
    pub lo: f64,
    /// Upper clamp U, or `None` when the caller guarantees x <= 0.
    pub hi: Option<f64>,
    /// Comparison width: |x - L| < 2^(bits - 1) in ring units.
    pub bits: u32,
}

impl LutExp {
    fn upper(&self) -> f64 {
        self.hi.unwrap_or(0.0)
    }
    fn degree(&self) -> usize {
        if self.upper() <= 0.0 {
            2
        } else {
            3
        }
    }
    fn poly(&self) -> Vec<f64> {
        cheb_fit(f64::exp, 0.0, 0.25, self.degree())
    }
    fn table(&self, f: u32) -> Vec<u64> {
        (0..128)
            .map(|k| enc((self.lo + k as f64 / 4.0).exp(), f))
            .collect()
    }
    /// True when E Q' can be formed without an intermediate truncation.
    fn fused(&self, f: u32) -> bool {
        let emax = self.upper().exp().log2();
        emax + f as f64 + 0.5 + (self.degree() as u32 * f + LUT_EXTRA) as f64 <= 61.0
    }
    /// Scale of Q' = sum c_k l^k (l^k carries k f bits, l < 2^(f-2)).
    fn top(&self, f: u32) -> u32 {
        if self.fused(f) {
            self.degree() as u32 * f + LUT_EXTRA
        } else {
            60
        }
    }
    /// The approximation's own definition (real arithmetic, f for the table rounding).
    pub fn plain(&self, x: f64, f: u32) -> f64 {
        let x = x.max(self.lo).min(self.upper());
        let s = x - self.lo;
        let h = (4.0 * s).floor().min(127.0);
        let l = s - h / 4.0;
        let e = self.table(f)[h as usize] as i64 as f64 / 2f64.powi(f as i32);
        e * horner(&self.poly(), l)
    }
    pub fn demand(&self, d: &mut Demand, n: usize, s: Setting, f: u32) {
        let m = if self.hi.is_some() { 2 * n } else { n };
        d.push(Request::Fss(FssRequest::Relu {
            n: m,
            bits: self.bits,
        }));
        d.push(Request::Fss(FssRequest::TruncDcf { n, shift: f - 2 }));
        d.push(Request::Fss(FssRequest::Lut { n, bits: 7 }));
        mul_demand(d, n, s);
        if self.degree() == 3 {
            mul_demand(d, n, s);
        }
        if self.fused(f) {
            mul_shift_demand(d, n, self.top(f), s);
        } else {
            trunc_demand(d, n, self.top(f) - f - LUT_EXTRA);
            mul_shift_demand(d, n, f + LUT_EXTRA, s);
        }
    }
}

/// Extra fractional bits of the polynomial part before the final product.
const LUT_EXTRA: u32 = 8;

/// LUT exponential (see the module doc). Rounds 2PC: 6 (degree 2) / 8 (degree 3); 3PC:
/// 8 / 11 (the clamp, truncation and lookup give pairs, so each product of them pays a
/// reshare; l is reshared for l^2 and again for l^3).
pub(crate) fn exp_lut(p: &mut Party, x: &Shared, prm: LutExp) -> Result<Shared> {
    let f = p.fixed().frac_bits();
    let n = x.len();
    let shape = x.shape().to_vec();
    let flat = x.reshape(&[n])?;
    let lo = enc(prm.lo, f);
    // s = clamp(x, L, U) - L = relu(x - L) - relu(x - U)
    let a = flat.add_public_scalar(p, lo.wrapping_neg());
    let s = match prm.hi {
        Some(u) => {
            let b = flat.add_public_scalar(p, enc(u, f).wrapping_neg());
            let r = compare::relu(p, &concat(&[&a, &b])?, prm.bits)?;
            slice(&r, 0, &[n])?.sub(&slice(&r, n, &[n])?)?
        }
        None => compare::relu(p, &a, prm.bits)?,
    };
    let sh = f - 2;
    let h = compare::truncate_dcf(p, &s, sh)?;
    let l = s.sub(&h.scale(pow2(sh)))?; // in [0, 2^(f-2)): exact
    let e = lut::lut(p, &h, &prm.table(f), 7)?;
    let c = prm.poly();
    let deg = prm.degree() as u32;
    // Q' = sum c_k l^k at scale deg f + EXTRA, no truncation (l^k at scale k f).
    let l2 = arith::mul(p, &l, &l)?;
    let mut pows = vec![l.clone(), l2];
    if deg == 3 {
        let l3 = arith::mul(p, &pows[1], &l)?;
        pows.push(l3);
    }
    let top = prm.top(f);
    let mut q = Shared::zeros(p, &[n]).add_public_scalar(p, enc(c[0], top));
    for (k, pw) in pows.iter().enumerate() {
        let k = k as u32 + 1;
        q = q.add(&pw.scale(enc(c[k as usize], top - k * f)))?;
    }
    let y = if prm.fused(f) {
        mul_shift(p, &e, &q, top)?
    } else {
        let q = arith::truncate_by(p, &q, top - f - LUT_EXTRA)?;
        mul_shift(p, &e, &q, f + LUT_EXTRA)?
    };
    y.reshape(&shape)
}

/// PUMA's (1 + x/2^t)^(2^t) with x clamped to [-14, hi] (hi = None: x <= 0 assumed).
/// Works at scale f + t, so 1 + x/2^t needs no truncation. Rounds (before the final
/// truncation, 1 more in both settings) 2PC 1 + 2t, 3PC 1 + 3t (each squaring reshares
/// its pair operand, multiplies and truncates).
fn exp_puma(p: &mut Party, x: &Shared, t: u32, hi: Option<f64>, bits: u32) -> Result<Shared> {
    let f = p.fixed().frac_bits();
    let n = x.len();
    let shape = x.shape().to_vec();
    let flat = x.reshape(&[n])?;
    let a = flat.add_public_scalar(p, enc(PUMA_CLIP, f).wrapping_neg());
    let s = match hi {
        Some(u) => {
            let b = flat.add_public_scalar(p, enc(u, f).wrapping_neg());
            let r = compare::relu(p, &concat(&[&a, &b])?, bits)?;
            slice(&r, 0, &[n])?.sub(&slice(&r, n, &[n])?)?
        }
        None => compare::relu(p, &a, bits)?,
    };
    // y = 1 + clamp(x)/2^t at scale f + t: 2^(f+t) + (s + L 2^f)
    let sc = f + t;
    let mut y = s.add_public_scalar(p, pow2(sc).wrapping_add(enc(PUMA_CLIP, f)));
    for _ in 0..t {
        y = mul_shift(p, &y, &y, sc)?;
    }
    let y = arith::truncate_by(p, &y, t)?;
    y.reshape(&shape)
}

fn puma_demand(d: &mut Demand, n: usize, t: u32, hi: bool, bits: u32, s: Setting, f: u32) {
    d.push(Request::Fss(FssRequest::Relu {
        n: if hi { 2 * n } else { n },
        bits,
    }));
    for _ in 0..t {
        mul_shift_demand(d, n, f + t, s);
    }
    trunc_demand(d, n, t);
}

/// e^x element-wise on a whole tensor, for |x| < 2^(39 - f) (documented accuracy on
/// [-16, 4]); inputs below -26 give 0 and above 5 saturate to e^5.
///
/// [`ExpMethod::Lut`]: SIGMA (PETS'24 §5) LUT range reduction with PUMA's clipping
/// (arXiv 2307.12533 §4.3); rounds 2PC 8, 3PC 11. [`ExpMethod::Puma`] / `Puma8`: PUMA
/// §4.3 (1 + x/2^t)^(2^t), t = 5 / 8; rounds 2PC 1 + 2t + 1 (12 / 18), 3PC 1 + 3t + 1
/// (17 / 26).
pub fn exp(p: &mut Party, x: &Shared, method: ExpMethod) -> Result<Shared> {
    match method {
        ExpMethod::Lut => exp_lut(p, x, public_lut()),
        ExpMethod::Puma => exp_puma(p, x, 5, Some(EXP_HI), EXP_BITS),
        ExpMethod::Puma8 => exp_puma(p, x, 8, Some(EXP_HI), EXP_BITS),
    }
}

fn public_lut() -> LutExp {
    LutExp {
        lo: EXP_LO,
        hi: Some(EXP_HI),
        bits: EXP_BITS,
    }
}

/// Plaintext definition of what [`exp`] computes with `method` (at f = 16).
pub fn exp_plain(x: f64, method: ExpMethod) -> f64 {
    match method {
        ExpMethod::Lut => public_lut().plain(x, 16),
        ExpMethod::Puma => puma_plain(x, 5, Some(EXP_HI)),
        ExpMethod::Puma8 => puma_plain(x, 8, Some(EXP_HI)),
    }
}

pub(crate) fn puma_plain(x: f64, t: u32, hi: Option<f64>) -> f64 {
    let x = x.max(PUMA_CLIP).min(hi.unwrap_or(0.0));
    (1.0 + x / 2f64.powi(t as i32)).powi(1 << t)
}

/// Exactly the material [`exp`] consumes on n elements.
pub fn exp_demand(n: usize, method: ExpMethod, setting: Setting, frac_bits: u32) -> Demand {
    let mut d = Demand::default();
    match method {
        ExpMethod::Lut => public_lut().demand(&mut d, n, setting, frac_bits),
        ExpMethod::Puma => puma_demand(&mut d, n, 5, true, EXP_BITS, setting, frac_bits),
        ExpMethod::Puma8 => puma_demand(&mut d, n, 8, true, EXP_BITS, setting, frac_bits),
    }
    d
}

/// e^x for inputs known to be below ~0.875 (a softmax row after subtracting its max, an
/// attention score after a bound): only the lower clamp, so cheaper than [`exp`].
/// Inputs need |x| < 2^(bits - 1) ring units (saturating to 0 below -14). Lut: 5 rounds,
/// 190 bits per element and party (P0, P1), in both settings (3PC returns a pair); Puma /
/// Puma8: PUMA's (1 + x/2^t)^(2^t) with clipping.
pub fn exp_nonpositive(p: &mut Party, x: &Shared, method: ExpMethod, bits: u32) -> Result<Shared> {
    match method {
        ExpMethod::Lut => exp_shift(p, x, bits),
        ExpMethod::Puma => exp_puma(p, x, 5, None, bits),
        ExpMethod::Puma8 => exp_puma(p, x, 8, None, bits),
    }
}

// ---------------------------------------------------------------------------------------
// The softmax exponential: e^t for t <= ~0 (t = x - c, c an approximate row maximum).

/// Lower end L of the softmax exponential's table: e^L * 127 < 1.1e-4.
const SM_LO: f64 = -14.0;
/// The index is floor(2^SM_STEP_BITS (t - L)): eighth steps.
const SM_STEP_BITS: u32 = 3;
/// Low bits of the index the coarse clamp ignores: indices in (-2^SM_SKIP, 0) may pass
/// unclamped and read the zero entries at the top of the table.
const SM_SKIP: u32 = 3;

/// The softmax exponential's table: entry j is e^(L + j/8) for 1 <= j < 128 - 2^SM_SKIP,
/// and 0 at j = 0 (t below L + 1/8, clamped) and in the top 2^SM_SKIP entries (the
/// coarse clamp's window of negative indices).
fn sm_table(f: u32) -> Vec<u64> {
    let top = 128 - (1usize << SM_SKIP);
    (0..128)
        .map(|j| {
            if j == 0 || j >= top {
                0
            } else {
                enc((SM_LO + j as f64 / 8.0).exp(), f)
            }
        })
        .collect()
}

/// Degree-2 near-minimax fit of e^l on [-1/8, 1/8] (relative error < 1e-4).
fn sm_poly() -> Vec<f64> {
    cheb_fit(f64::exp, -0.125, 0.125, 2)
}

/// Width of the clamp's operand u = floor(8 t) - 8 L for |t| < 2^(bits-1) ring units.
fn sm_index_bits(bits: u32, f: u32) -> u32 {
    bits + 1 + SM_STEP_BITS - f
}

/// The softmax exponential e^t, for t < L + (127 - 2^SM_SKIP)/8 = 0.875 and
/// |t| < 2^(bits-1) ring units, fused into one 2-of-2 pipeline with no reshare in 3PC
/// (the result is a pair; SIGMA §5's exp by lookup, reorganised to truncate first):
/// 1. h = t >> (f - 3), the *faithful* truncation (floor or one more, dealer pair, no
///    DCF), and l = t - h 2^(f-3) in [-1/8, 1/8), both exact and linear;
/// 2. the eighth-step index u = h - 8 L is clamped below by a coarse comparison on
///    `bits + 4 - f` bits ignoring the low [`SM_SKIP`] bits (a 20-level bit DCF at
///    bits = 36, f = 16, instead of the 35-level clamp of x plus a 14-level DCF
///    truncation), fused with
/// 3. E = T\[u\] by the 7-bit DPF lookup: one opening of u + r serves both keys and the
///    opened DReLU bit (masked) picks the lookup's payload, so E = DReLU(u) T\[u mod 128\]
///    ([`compare`]'s `clamp_lookup2`, [`FssRequest::ClampLut`]); a negative index that
///    slips through the coarse comparison reads a zero entry;
/// 4. e^t = E * Q(l), Q the degree-2 fit on [-1/8, 1/8], at scale 3f + 8 from one masked
///    opening of E, l being masked by step 1's own mask ([`Request::TruncSq`]: E l and
///    E l² are then local), and one truncation.
///
/// Error: < 1e-4 relative (the fit) plus 2^-f, and e^t -> 0 below L = -14.
/// Rounds: 5 in both settings; online bits per element and party (P0, P1): 38 + 24 +
/// 64 + 64, plus one bit.
fn exp_shift(p: &mut Party, x: &Shared, bits: u32) -> Result<Shared> {
    let f = p.fixed().frac_bits();
    let y = p.additive_view(x);
    let front = exp_shift_front2(p, &y, bits)?;
    let num = exp_shift_num2(p, &front, 64)?;
    let out = compare::trunc2(p, &num, sm_top(f))?;
    Shared::pair(p, x.shape(), out)
}

/// Scale of [`exp_shift_num2`]'s output above the session's: Q(l) at 2f + 8.
pub(crate) fn sm_top(f: u32) -> u32 {
    2 * f + LUT_EXTRA
}

/// Steps 1-3 of [`exp_shift`] on 2-of-2 shares (P2: zeros): the table value E = T\[u\]
/// and the remainder l, both 2-of-2 at scale f. 3 rounds.
pub(crate) fn exp_shift_front2(p: &mut Party, y: &[u64], bits: u32) -> Result<ExpFront> {
    let f = p.fixed().frac_bits();
    let sh = f - SM_STEP_BITS;
    let n = y.len();
    // |y| < 2^bits (a difference of two `bits`-wide operands): the truncation opens
    // bits + 2 bits; its mask also masks l for step 4 ([`Request::TruncSq`]).
    let ring = bits + 2;
    let m = p.material(&Request::TruncSq {
        n,
        shift: sh,
        bits: ring,
    })?;
    let me = p.id();
    if me >= 2 {
        // Party 2 deals (the lookup's keys too); its shares are zeros.
        let u = vec![0; n];
        compare::clamp_lookup2(p, &u, sm_index_bits(bits, f), SM_SKIP, sm_table(f), 7)?;
        return Ok(ExpFront {
            n,
            e: None,
            low: vec![],
            m,
        });
    }
    // l = y - t 2^sh, masked by beta = -(r mod 2^sh): l - beta is c's low bits.
    let (t, low) = crate::arith::trunc2_ring_remainder(p, y, &m.parts, 2, sh, ring)?;
    let first = me == 0;
    let off = (-SM_LO * f64::from(1u32 << SM_STEP_BITS)) as u64;
    let u: Vec<u64> = t
        .iter()
        .map(|v| if first { v.wrapping_add(off) } else { *v })
        .collect();
    let e = compare::clamp_lookup2(p, &u, sm_index_bits(bits, f), SM_SKIP, sm_table(f), 7)?;
    Ok(ExpFront { n, e, low, m })
}

/// What steps 1-3 of [`exp_shift`] hand to step 4 ([`exp_shift_num2`]): 2-of-2 shares of
/// the table value E, the remainder l in opened form (l - beta = c mod 2^shift, public
/// to P0 and P1), and the [`Request::TruncSq`] material whose alpha, beta, beta², alpha
/// beta, alpha beta² the product uses. Party 2: zeros and no opened bits.
pub(crate) struct ExpFront {
    /// Number of elements.
    n: usize,
    /// The lookup giving shares of E = T\[u\], evaluated by step 4 piece by piece as
    /// E - alpha goes out (none at party 2).
    e: Option<compare::PendingLookup>,
    /// l - beta, opened.
    low: Vec<u64>,
    /// The truncation's fused material.
    m: tessera::preproc::Material,
}

/// Step 4 of [`exp_shift`] before its truncation: 2-of-2 shares of E Q(l) at scale
/// f + [`sm_top`]. Opens E - alpha (one round, n words per party; P2 gets zeros); l -
/// beta is already open ([`ExpFront`]: the truncation's own mask, beta = -(r mod
/// 2^shift), masks l, so its opening costs nothing; before, l - beta went out beside E -
/// alpha). With them E Q(l) = (eE + alpha)(P + L beta + q2 beta²), P and L public, is
/// linear in the dealt alpha, beta, beta², alpha beta, alpha beta². With `ring` < 64 the
/// opening goes in Z_2^ring (`compare::open_sum_ring`) and the result is correct mod
/// 2^ring, for a consumer that needs no more (softmax's truncation of it).
pub(crate) fn exp_shift_num2(p: &mut Party, front: &ExpFront, ring: u32) -> Result<Vec<u64>> {
    use rayon::prelude::*;
    let f = p.fixed().frac_bits();
    let (n, el) = (front.n, &front.low);
    let me = p.id();
    let Some(look) = front.e.as_ref().filter(|_| me < 2) else {
        return Ok(vec![0; n]);
    };
    // TruncSq's parts are r, alpha, (r mod 2^bits) >> shift, msb, beta, beta², alpha
    // beta, alpha beta²: pt = alpha, beta, beta², alpha beta, alpha beta².
    let pt = [1, 4, 5, 6, 7].map(|j| &front.m.parts[j][..]);
    // The lookup runs piece by piece as E - alpha goes out: its compute overlaps the
    // transfer.
    let ee = compare::open_sum_ring_pieces(
        p,
        n,
        1,
        ring,
        |r| Ok(compare::wsub(&look.eval(r.clone())?, &pt[0][r])),
        "exp open E - alpha",
    )?;
    let c = sm_poly();
    let top = sm_top(f);
    let (q0, q1, q2) = (enc(c[0], top), enc(c[1], top - f), enc(c[2], top - 2 * f));
    Ok((0..n)
        .into_par_iter()
        .map(|i| {
            let (x, z) = (ee[i], el[i]);
            let pp = q0
                .wrapping_add(q1.wrapping_mul(z))
                .wrapping_add(q2.wrapping_mul(z).wrapping_mul(z));
            let ll = q1.wrapping_add(q2.wrapping_mul(z).wrapping_mul(2));
            // eE (L beta + q2 beta²) + alpha P + L alpha beta + q2 alpha beta²
            let mut v = x
                .wrapping_mul(
                    ll.wrapping_mul(pt[1][i])
                        .wrapping_add(q2.wrapping_mul(pt[2][i])),
                )
                .wrapping_add(pp.wrapping_mul(pt[0][i]))
                .wrapping_add(ll.wrapping_mul(pt[3][i]))
                .wrapping_add(q2.wrapping_mul(pt[4][i]));
            if me == 0 {
                v = v.wrapping_add(x.wrapping_mul(pp));
            }
            v
        })
        .collect())
}

/// The material [`exp_shift_front2`] and [`exp_shift_num2`] consume on n elements.
pub(crate) fn exp_shift_front_demand(d: &mut Demand, n: usize, bits: u32, f: u32) {
    d.push(Request::TruncSq {
        n,
        shift: f - SM_STEP_BITS,
        bits: bits + 2,
    });
    d.push(Request::Fss(FssRequest::ClampLut {
        n,
        bits: sm_index_bits(bits, f),
        skip: SM_SKIP,
        table_bits: 7,
    }));
}

/// The material [`exp_shift`] consumes on n elements.
fn exp_shift_demand(d: &mut Demand, n: usize, bits: u32, _s: Setting, f: u32) {
    exp_shift_front_demand(d, n, bits, f);
    d.push(Request::Trunc {
        n,
        shift: sm_top(f),
        bits: 64,
    });
}

/// The definition of [`exp_shift`] (real arithmetic, f = 16 table rounding).
fn exp_shift_plain(t: f64) -> f64 {
    let s = t - SM_LO;
    let h = (8.0 * s).floor();
    if h <= 0.0 || h >= 128.0 {
        return 0.0;
    }
    let e = sm_table(16)[h as usize] as i64 as f64 / 65536.0;
    e * horner(&sm_poly(), s - h / 8.0)
}

pub(crate) fn exp_nonpositive_plain(x: f64, method: ExpMethod) -> f64 {
    match method {
        ExpMethod::Lut => exp_shift_plain(x),
        ExpMethod::Puma => puma_plain(x, 5, None),
        ExpMethod::Puma8 => puma_plain(x, 8, None),
    }
}

/// Exactly the material [`exp_nonpositive`] consumes on n elements.
pub fn exp_nonpositive_demand(
    d: &mut Demand,
    n: usize,
    method: ExpMethod,
    bits: u32,
    s: Setting,
    f: u32,
) {
    match method {
        ExpMethod::Lut => exp_shift_demand(d, n, bits, s, f),
        ExpMethod::Puma => puma_demand(d, n, 5, false, bits, s, f),
        ExpMethod::Puma8 => puma_demand(d, n, 8, false, bits, s, f),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::compare::tests::{max_stats, SETTINGS};
    use rand::{Rng, SeedableRng};
    use tessera::runtime::{run, run_parties};
    use tessera::{CommStats, FixedPoint, MaterialMode, SessionOptions};

    /// Shares `x` (P0), runs `op`, opens; checks the consumed demand equals `demand`, and
    /// runs the same op again in planned mode. Returns the decoded outputs and max stats.
    pub(crate) fn check_op(
        s: Setting,
        xs: &[f64],
        shape: &[usize],
        demand: &Demand,
        op: impl Fn(&mut Party, &Shared) -> Result<Shared> + Sync,
    ) -> (Vec<f64>, CommStats) {
        let fx = FixedPoint::default();
        let x = Tensor::from_vec(shape, fx.encode_slice(xs).unwrap()).unwrap();
        let job = |p: &mut Party| -> Result<(Tensor<u64>, CommStats, Demand)> {
            let a = p.share_input(0, (p.id() == 0).then_some(&x), shape)?;
            let before = p.stats();
            let d0 = p.consumed_demand().0.len();
            let z = op(p, &a)?;
            let st = p.stats().since(&before);
            let used = Demand(p.consumed_demand().0[d0..].to_vec());
            Ok((p.open(&z)?, st, used))
        };
        let outs = run(s, job).unwrap();
        for o in &outs[..2] {
            assert_eq!(&o.value.2, demand, "{s:?}: consumed demand differs");
        }
        let st = max_stats(&outs.iter().map(|o| o.value.1).collect::<Vec<_>>());
        let opts = SessionOptions {
            material: MaterialMode::Planned(demand.clone()),
            ..Default::default()
        };
        let planned = run_parties(s, opts, job).unwrap();
        assert_eq!(planned[0].value.0.shape(), outs[0].value.0.shape());
        let got = planned[0].value.0.data().iter().map(|&v| fx.decode(v));
        (got.collect(), st)
    }

    /// Fixed-point round trip of an input (the "encoded input" the bounds refer to).
    pub(crate) fn q(x: f64) -> f64 {
        let fx = FixedPoint::default();
        fx.decode(fx.encode(x).unwrap())
    }

    pub(crate) fn rng() -> rand::rngs::StdRng {
        rand::rngs::StdRng::seed_from_u64(5)
    }

    #[test]
    fn exp_methods_accuracy_rounds_demand() {
        let mut r = rng();
        let mut xs: Vec<f64> = (0..400).map(|_| r.gen_range(-16.0..4.0)).collect();
        xs.extend([-16.0, 4.0, 0.0, -1e-5, 3.99, -15.99]);
        let n = xs.len();
        for s in SETTINGS {
            for &m in ExpMethod::ALL {
                let d = exp_demand(n, m, s, 16);
                let (got, st) = check_op(s, &xs, &[n], &d, |p, a| exp(p, a, m));
                // 3PC: the FSS steps and truncations give pairs (1 round each, as in 2PC),
                // and each product reshares its pair operands first. Lut: clamp, DCF
                // truncation, lookup (3), l^2 and l^3 (reshare + product each: 4), the
                // truncation of Q (1), E Q (reshare, product, truncation: 3). Puma: the
                // clamp (1), t squarings (3 each), the final truncation (1).
                let rounds = match (m, s) {
                    (ExpMethod::Lut, Setting::TwoPc) => 8,
                    (ExpMethod::Lut, Setting::ThreePc) => 11,
                    (ExpMethod::Puma, Setting::TwoPc) => 12,
                    (ExpMethod::Puma, Setting::ThreePc) => 17,
                    (ExpMethod::Puma8, Setting::TwoPc) => 18,
                    (ExpMethod::Puma8, Setting::ThreePc) => 26,
                };
                assert_eq!(st.rounds, rounds, "{s:?} {m}");
                let (mut e_exact, mut e_own) = (0f64, 0f64);
                for (x, g) in xs.iter().zip(&got) {
                    let x = q(*x);
                    e_exact = e_exact.max((g - x.exp()).abs());
                    e_own = e_own.max((g - exp_plain(x, m)).abs());
                }
                println!("exp {m} {s:?}: max abs err vs exact {e_exact:.3e}, vs own {e_own:.3e}, rounds {}, bytes {}", st.rounds, st.online_sent);
                assert!(e_own <= 1e-3, "{s:?} {m}: {e_own}");
                if m == ExpMethod::Lut {
                    assert!(e_exact <= 1e-3, "{s:?}: {e_exact}");
                }
            }
        }
    }

    #[test]
    fn exp_nonpositive_accuracy_rounds_bytes() {
        let mut r = rng();
        let mut base: Vec<f64> = (0..500).map(|_| r.gen_range(-20.0..0.0)).collect();
        base.extend([-14.0, -13.9, 0.0, -1e-5, -100.0, -3000.0]);
        for s in SETTINGS {
            for &m in ExpMethod::ALL {
                // the table method also takes the small positive shifts softmax's
                // approximate max leaves (up to 0.875)
                let mut xs = base.clone();
                if m == ExpMethod::Lut {
                    xs.extend([0.5, 0.87]);
                }
                let n = xs.len();
                let mut d = Demand::default();
                exp_nonpositive_demand(&mut d, n, m, 36, s, 16);
                let (got, st) = check_op(s, &xs, &[n], &d, |p, a| exp_nonpositive(p, a, m, 36));
                let mut e_own = 0f64;
                let mut e_exact = 0f64;
                for (x, g) in xs.iter().zip(&got) {
                    let x = q(*x);
                    e_own = e_own.max((g - exp_nonpositive_plain(x, m)).abs());
                    e_exact = e_exact.max((g - x.exp()).abs());
                }
                println!("exp_nonpositive {m} {s:?}: err vs own {e_own:.3e}, vs exact {e_exact:.3e}, rounds {}, bytes {}", st.rounds, st.online_sent);
                assert!(e_own <= 1e-3, "{s:?} {m}: {e_own}");
                if m == ExpMethod::Lut {
                    // fit < 1e-4 relative on outputs up to e^0.875 = 2.4, plus 2^-16
                    assert!(e_exact <= 3e-4, "{s:?}: {e_exact}");
                    // truncation (38-bit ring), clamped lookup (open in the 24-bit index
                    // ring, bit), E (l - beta is the truncation's opening), truncation,
                    // in both settings (the 3PC result is a pair, with no reshare)
                    assert_eq!(st.rounds, 5, "{s:?}");
                    let ring = |bits: usize| (n * bits).div_ceil(64);
                    let sent = 8 * (ring(38) + ring(24) + 2 * n + n.div_ceil(64)) as u64;
                    assert_eq!(st.online_sent, sent, "{s:?}");
                }
            }
        }
    }

    #[test]
    fn exp_saturates_outside_the_range() {
        let xs = [50.0, -100.0, 1e5, -1e5, 5.0, -26.0, 6.0];
        for s in SETTINGS {
            for &m in ExpMethod::ALL {
                let d = exp_demand(xs.len(), m, s, 16);
                let (got, _) = check_op(s, &xs, &[xs.len()], &d, |p, a| exp(p, a, m));
                let top = exp_plain(EXP_HI, m);
                for (x, g) in xs.iter().zip(&got) {
                    let want = exp_plain(*x, m);
                    assert!(
                        (g - want).abs() <= 2e-3 * want.max(1.0),
                        "{s:?} {m} exp({x}) = {g}, want {want}"
                    );
                    assert!(*g >= -1e-3 && *g <= top * 1.001, "{s:?} {m} {x} -> {g}");
                }
            }
        }
    }

    #[test]
    fn method_names_round_trip() {
        for &m in ExpMethod::ALL {
            assert_eq!(m.to_string().parse::<ExpMethod>().unwrap(), m);
        }
        assert!("nope".parse::<ExpMethod>().is_err());
        assert_eq!(ExpMethod::default(), ExpMethod::Lut);
        let c = cheb_fit(|x| 1.0 + 2.0 * x - x * x, -1.0, 3.0, 2);
        assert!(
            (c[0] - 1.0).abs() < 1e-12 && (c[1] - 2.0).abs() < 1e-12 && (c[2] + 1.0).abs() < 1e-12
        );
    }
}
