//! Secure reciprocal square root 1/sqrt(x) for positive x, in both settings, with a
//! constant number of rounds.
//!
//! - [`RsqrtMethod::Lut`] (LayerNorm's, RMSNorm's and the pooling's): the same one-round DCF normalisation to c in
//!   [0.25, 1) as Newton, then a *table* instead of iterations (SIGMA arXiv 2023/1269 §5
//!   reads rsqrt off a lookup table too): the spline also returns the pair of binades'
//!   index q and the product with the mask, so c = x m 2^-K is local; one opening of
//!   c + r2 gives the cell z = floor(256 c) and the offset inside it in masked form, and
//!   one DPF lookup on (q, z) returns the value and the slope of 1/sqrt(x) there, and the
//!   slope times the offset's mask (secant through the cell's ends, so linear
//!   interpolation is within 1.5 / 256^2 = 2.3e-5 relative of 1/sqrt; measured 0.6-1.3e-4
//!   with the truncations' rounding, against Newton's 1e-6); one truncation finishes
//!   ([`crate::tablefn`]). The whole method runs on 2-of-2 shares (P2 deals in 3PC): 3
//!   rounds in both settings (6 / 7 before stop 34; 3PC 4 while its output was reshared,
//!   now a pair), against Newton's 20 / 29 — row-sized
//!   inputs (LayerNorm, RMSNorm) cost rounds, not bytes, so rounds are what to cut.
//!   It is not the element-wise default: each element's lookup evaluates the DPF over
//!   the whole 2^13-entry table, so 98 k elements take 6.2 s (2PC) against Newton's
//!   1.1 s; the row-sized callers (128 rows per BERT layer) pay milliseconds.
//! - [`RsqrtMethod::Newton`] (default; PUMA arXiv 2307.12533 §4.4 / SPU): normalise
//!   in ONE round with a piecewise-constant spline over pairs of binades [4^j, 4^(j+1))
//!   (one DCF selects both m1 = 2^(K - 2j - 2), so that c = x m1 2^-K is in [0.25, 1),
//!   and m2 = 2^(K/2 - j - 1), so that 1/sqrt(x) = m2 2^-(K/2) / sqrt(c): the even
//!   exponent makes the square root of the scale exact); a degree-2 Chebyshev initial
//!   guess on [0.25, 1) and two Newton steps y <- y (3 - c y^2) / 2 at 2^-28 precision.
//! - [`RsqrtMethod::Goldschmidt`] (SecFormer arXiv 2401.00793 §4.3): no comparisons;
//!   deflate by a public bound B = 2^14 (x' = x / B), then m = (3 - x')/2, x' <- x' m^2,
//!   y <- y m for 16 iterations, 1/sqrt(x) = y / sqrt(B). Accurate only where x / B is not
//!   tiny (it converges linearly, by a factor 1.5, while x' is small).

use crate::exp::{
    cheb_fit, concat, enc, horner, mul_demand, mul_shift, mul_shift_demand, pow2, slice,
    spline_demand, step_spline, trunc_demand, HI,
};
use crate::tablefn::SegTable;
use crate::{arith, spline};
use tessera::error::Result;
use tessera::preproc::Demand;
use tessera::{Party, Setting, Shared};

/// How [`rsqrt`] is computed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum RsqrtMethod {
    /// DCF normalisation + table of value and slope per cell (see the module doc): for
    /// row-sized inputs (3 rounds in both settings; 3PC returns a pair).
    Lut,
    /// DCF normalisation + polynomial guess + Newton (PUMA §4.4); accurate. The default
    /// for element-wise use on large tensors.
    #[default]
    Newton,
    /// SecFormer §4.3: deflation by a public bound, Goldschmidt-style iterations, no
    /// comparisons.
    Goldschmidt,
}

method_names!(RsqrtMethod, "rsqrt", [
    Lut => "lut",
    Newton => "newton",
    Goldschmidt => "goldschmidt",
]);

/// Input width of [`rsqrt`]: x < 2^(RSQRT_BITS - 1 - f).
pub const RSQRT_BITS: u32 = 40;
/// Scale of the guess polynomial's coefficients.
const COEF: u32 = 16;
/// Newton steps.
const NEWTON_STEPS: usize = 2;
/// SecFormer deflation bound exponent (B = 2^14) and iterations.
const DEFLATE: u32 = 14;
const GS_ITERS: usize = 16;
/// Scale of SecFormer's y (it grows up to 1/sqrt(x / B)).
const GS_Y: u32 = 16;

/// Pairs of binades [4^j, 4^(j+1)), j in [lo, hi).
#[derive(Clone, Copy, Debug)]
struct Quads {
    lo: i32,
    hi: i32,
}

impl Quads {
    /// For inputs at scale `sc` below 2^(bits - 1).
    fn new(sc: u32, bits: u32) -> Quads {
        let top = bits as i32 - 1 - sc as i32; // x < 2^top
        Quads {
            lo: -(sc as i32 / 2),
            hi: (top + 1) / 2,
        }
    }
    fn k(&self) -> u32 {
        2 * self.hi as u32
    }
    fn coeffs(&self) -> Vec<Vec<u64>> {
        (self.lo..self.hi)
            .map(|j| {
                vec![
                    pow2((self.k() as i32 - 2 * j - 2) as u32),
                    pow2((self.hi - j - 1) as u32),
                ]
            })
            .collect()
    }
    fn breaks(&self, f: u32) -> Vec<u64> {
        (self.lo + 1..self.hi)
            .map(|j| pow2((2 * j + f as i32) as u32))
            .collect()
    }
}

fn guess() -> Vec<f64> {
    cheb_fit(|c| 1.0 / c.sqrt(), 0.25, 1.0, 2)
}

fn rsqrt_newton(p: &mut Party, x: &Shared, sc: u32, bits: u32) -> Result<Shared> {
    let f = p.fixed().frac_bits();
    let qd = Quads::new(sc, bits);
    let sp = step_spline(qd.breaks(sc), qd.coeffs())?;
    let mut ms = spline::spline_coefficients(p, x, &sp, bits)?;
    let m2 = ms.pop().expect("two coefficients");
    let m1 = ms.pop().expect("two coefficients");
    let xm = arith::mul(p, x, &m1)?; // c at scale sc + K
    let fk = sc + qd.k();
    let c = if fk > HI {
        arith::truncate_by(p, &xm, fk - HI)?
    } else {
        xm.scale(pow2(HI - fk))
    };
    // y0 = a0 + a1 c + a2 c^2, coefficients at scale COEF, one truncation.
    let a = guess();
    let c2 = mul_shift(p, &c, &c, HI)?;
    let y0 = c
        .scale(enc(a[1], COEF))
        .add(&c2.scale(enc(a[2], COEF)))?
        .add_public_scalar(p, enc(a[0], HI + COEF));
    let mut y = arith::truncate_by(p, &y0, COEF)?;
    for _ in 0..NEWTON_STEPS {
        let y2 = mul_shift(p, &y, &y, HI)?;
        let cy2 = mul_shift(p, &c, &y2, HI)?;
        let t = cy2.neg().add_public_scalar(p, 3 * pow2(HI));
        y = mul_shift(p, &y, &t, HI + 1)?;
    }
    // 1/sqrt(x) = y m2 2^-(K/2): y m2 at scale HI + K/2.
    let z = mul_shift(p, &y, &m2, HI + qd.hi as u32 - f)?;
    Ok(z)
}

fn newton_demand(d: &mut Demand, n: usize, s: Setting, f: u32, sc: u32, bits: u32) {
    let qd = Quads::new(sc, bits);
    spline_demand(d, n, bits, &qd.coeffs());
    mul_demand(d, n, s);
    if sc + qd.k() > HI {
        trunc_demand(d, n, sc + qd.k() - HI);
    }
    mul_shift_demand(d, n, HI, s);
    trunc_demand(d, n, COEF);
    for _ in 0..NEWTON_STEPS {
        mul_shift_demand(d, n, HI, s);
        mul_shift_demand(d, n, HI, s);
        mul_shift_demand(d, n, HI + 1, s);
    }
    mul_shift_demand(d, n, HI + qd.hi as u32 - f, s);
}

fn newton_plain(x: f64) -> f64 {
    let qd = Quads::new(16, RSQRT_BITS);
    let j = ((x.log2() / 2.0).floor() as i32).clamp(qd.lo, qd.hi - 1);
    let c = x * 2f64.powi(-2 * j - 2);
    let mut y = horner(&guess(), c);
    for _ in 0..NEWTON_STEPS {
        y = y * (3.0 - c * y * y) / 2.0;
    }
    y * 2f64.powi(-j - 1)
}

/// Cells per pair of binades of the Lut method: 2^LUT_CELL_BITS over c in [0, 1)
/// (2^7 measured 5e-4 relative error, 2^8 1.3e-4).
const LUT_CELL_BITS: u32 = 8;

/// The Lut method's table for inputs at scale `sc` below 2^(bits - 1): segment q is the
/// pair of binades j = lo + q, x = c 4^(j + 1), 1/sqrt(x) = c^(-1/2) 2^(-j-1).
fn lut_table(sc: u32, bits: u32) -> SegTable {
    let qd = Quads::new(sc, bits);
    let lo = qd.lo;
    let mult = qd.coeffs().into_iter().map(|c| c[0]).collect();
    SegTable::new(
        qd.breaks(sc),
        mult,
        sc + qd.k(),
        bits,
        LUT_CELL_BITS,
        0.25,
        &|q, c| c.powf(-0.5) * 2f64.powi(-(lo + q as i32) - 1),
    )
}

/// The Lut method on 2-of-2 shares of x at scale `sc` (P2 passes zeros); the output at
/// the session's scale, 2-of-2. Rounds 3 ([`crate::tablefn`]).
fn rsqrt_lut2(p: &mut Party, y: &[u64], sc: u32, bits: u32) -> Result<Vec<u64>> {
    let f = p.fixed().frac_bits();
    lut_table(sc, bits).eval2(p, y, f)
}

fn lut_demand(d: &mut Demand, n: usize, f: u32, sc: u32, bits: u32) {
    lut_table(sc, bits).demand(d, n, f);
}

/// Plaintext definition of the Lut method at f = 16 (inputs at scale 16, 40 bits).
fn lut_plain(x: f64) -> f64 {
    let qd = Quads::new(16, RSQRT_BITS);
    let j = ((x.log2() / 2.0).floor() as i32).clamp(qd.lo, qd.hi - 1);
    let c = x * 2f64.powi(-2 * j - 2);
    lut_table(16, RSQRT_BITS).plain((j - qd.lo) as usize, c)
}

/// Lowest pair of binades of [`rsqrt_sum2`]: sums below 4^-8 = 2^-16 saturate (a
/// LayerNorm row variance below 2^-16 / k, as Newton's 2^-26 floor at f + 10 bits).
const SUM_LO: i32 = -8;

/// The table of sqrt(k) / sqrt(s) for a row's sum of squares s at scale `sc`, below
/// 2^(bits - 1): LayerNorm and RMSNorm's r = 1 / sqrt(s / k + eps) =
/// sqrt(k) / sqrt(s + k eps), so the sum needs neither the division by k nor its
/// truncations (two rounds) before the table.
fn sum_table(k: usize, sc: u32, bits: u32) -> SegTable {
    let full = Quads::new(sc, bits);
    let qd = Quads {
        lo: SUM_LO.max(full.lo),
        hi: full.hi,
    };
    let (lo, rk) = (qd.lo, (k as f64).sqrt());
    let mult = qd.coeffs().into_iter().map(|c| c[0]).collect();
    SegTable::new(
        qd.breaks(sc),
        mult,
        sc + qd.k(),
        bits,
        LUT_CELL_BITS,
        0.25,
        &|q, c| rk * c.powf(-0.5) * 2f64.powi(-(lo + q as i32) - 1),
    )
}

/// sqrt(k) / sqrt(s) on 2-of-2 shares of sums s at scale `sc` (P2 passes zeros), output
/// at scale `out`, 2-of-2: three rounds (`crate::tablefn`).
pub(crate) fn rsqrt_sum2(
    p: &mut Party,
    s: &[u64],
    k: usize,
    sc: u32,
    bits: u32,
    out: u32,
) -> Result<Vec<u64>> {
    sum_table(k, sc, bits).eval2(p, s, out)
}

/// The material of [`rsqrt_sum2`] on n sums.
pub(crate) fn rsqrt_sum_demand(d: &mut Demand, n: usize, k: usize, f: u32, sc: u32, bits: u32) {
    sum_table(k, sc, bits).demand(d, n, f);
}

/// Plaintext definition of [`rsqrt_sum2`] (scale 2f = 32, `bits` wide).
pub(crate) fn rsqrt_sum_plain(s: f64, k: usize, bits: u32) -> f64 {
    let full = Quads::new(32, bits);
    let lo = SUM_LO.max(full.lo);
    let j = ((s.log2() / 2.0).floor() as i32).clamp(lo, full.hi - 1);
    let c = s * 2f64.powi(-2 * j - 2);
    sum_table(k, 32, bits).plain((j - lo) as usize, c)
}

/// [`rsqrt_scaled`] on 2-of-2 shares of a row-sized input (3PC: P0 and P1 hold them, P2
/// passes zeros), with the output 2-of-2 too: the Lut method runs in that form; the others
/// go through the session's sharing and back (a pair, reshared where a product needs it).
pub(crate) fn rsqrt_scaled2(
    p: &mut Party,
    y: Vec<u64>,
    method: RsqrtMethod,
    sc: u32,
    bits: u32,
) -> Result<Vec<u64>> {
    match method {
        RsqrtMethod::Lut => rsqrt_lut2(p, &y, sc, bits),
        _ => {
            let n = y.len();
            let x = Shared::pair(p, &[n], y)?;
            let r = rsqrt_scaled(p, &x, method, sc, bits)?;
            Ok(p.additive_view(&r))
        }
    }
}

fn rsqrt_goldschmidt(p: &mut Party, x: &Shared, sc: u32) -> Result<Shared> {
    let f = p.fixed().frac_bits();
    let n = x.len();
    // x' = x / 2^DEFLATE at scale HI
    let sh = sc + DEFLATE;
    let mut xp = if sh > HI {
        arith::truncate_by(p, x, sh - HI)?
    } else {
        x.scale(pow2(HI - sh))
    };
    let mut y = Shared::zeros(p, x.shape()).add_public_scalar(p, pow2(GS_Y));
    for _ in 0..GS_ITERS {
        // m = (3 - x') / 2 at scale HI
        let m = xp.neg().add_public_scalar(p, 3 * pow2(HI));
        let both = mul_shift(p, &concat(&[&m, &y])?, &concat(&[&m, &m])?, HI + 1)?;
        // m^2 / 2 at HI, y m / 2 at GS_Y
        let (m2h, ym) = (slice(&both, 0, &[n])?, slice(&both, n, &[n])?);
        y = ym;
        // x' m^2 = x' (m^2/2) / 2 ... m2h = (3 - x')^2 / 2, want x' ((3 - x')/2)^2
        xp = mul_shift(p, &xp, &m2h, HI + 1)?;
    }
    // 1/sqrt(x) = y 2^-(DEFLATE/2): y at scale GS_Y -> f
    let out = GS_Y + DEFLATE / 2;
    let z = if out > f {
        arith::truncate_by(p, &y, out - f)?
    } else {
        y.scale(pow2(f - out))
    };
    z.reshape(x.shape())
}

fn goldschmidt_demand(d: &mut Demand, n: usize, s: Setting, f: u32, sc: u32) {
    let sh = sc + DEFLATE;
    if sh > HI {
        trunc_demand(d, n, sh - HI);
    }
    for _ in 0..GS_ITERS {
        mul_shift_demand(d, 2 * n, HI + 1, s);
        mul_shift_demand(d, n, HI + 1, s);
    }
    let out = GS_Y + DEFLATE / 2;
    if out > f {
        trunc_demand(d, n, out - f);
    }
}

fn goldschmidt_plain(x: f64) -> f64 {
    let mut xp = x / 2f64.powi(DEFLATE as i32);
    let mut y = 1.0;
    for _ in 0..GS_ITERS {
        let m = (3.0 - xp) / 2.0;
        y *= m;
        xp *= m * m;
    }
    y / 2f64.powi(DEFLATE as i32 / 2)
}

/// 1/sqrt(x) element-wise for positive x (documented accuracy on [1e-3, 1e4] for
/// [`RsqrtMethod::Newton`]: relative error below 1e-4 plus the output's 2^-f
/// rounding); Newton clamps inputs to [2^-f, 2^(39 - f)) (saturating outside).
///
/// Newton: PUMA (arXiv 2307.12533) §4.4 with a one-round DCF normalisation; rounds
/// (f = 16) 2PC 20, 3PC 29. Goldschmidt: SecFormer (arXiv 2401.00793) §4.3; rounds 2PC
/// 66, 3PC 98 (16 iterations of two product levels plus two truncations; in 3PC each
/// product takes a pair, reshared first). Lut: 3 in both settings (3PC returns a pair).
pub fn rsqrt(p: &mut Party, x: &Shared, method: RsqrtMethod) -> Result<Shared> {
    let f = p.fixed().frac_bits();
    rsqrt_scaled(p, x, method, f, RSQRT_BITS)
}

/// [`rsqrt`] of an input at scale `sc` (below 2^(bits - 1)); the output at the session's.
pub(crate) fn rsqrt_scaled(
    p: &mut Party,
    x: &Shared,
    method: RsqrtMethod,
    sc: u32,
    bits: u32,
) -> Result<Shared> {
    let shape = x.shape().to_vec();
    let flat = x.reshape(&[x.len()])?;
    let y = match method {
        RsqrtMethod::Lut => {
            let y2 = p.additive_view(&flat);
            let r = rsqrt_lut2(p, &y2, sc, bits)?;
            Shared::pair(p, &[flat.len()], r)?
        }
        RsqrtMethod::Newton => rsqrt_newton(p, &flat, sc, bits)?,
        RsqrtMethod::Goldschmidt => rsqrt_goldschmidt(p, &flat, sc)?,
    };
    y.reshape(&shape)
}

/// Demand of [`rsqrt_scaled`].
pub(crate) fn rsqrt_scaled_demand(
    d: &mut Demand,
    n: usize,
    method: RsqrtMethod,
    setting: Setting,
    f: u32,
    sc: u32,
    bits: u32,
) {
    match method {
        RsqrtMethod::Lut => lut_demand(d, n, f, sc, bits),
        RsqrtMethod::Newton => newton_demand(d, n, setting, f, sc, bits),
        RsqrtMethod::Goldschmidt => goldschmidt_demand(d, n, setting, f, sc),
    }
}

/// Plaintext definition of [`rsqrt`] (f = 16).
pub fn rsqrt_plain(x: f64, method: RsqrtMethod) -> f64 {
    match method {
        RsqrtMethod::Lut => lut_plain(x),
        RsqrtMethod::Newton => newton_plain(x),
        RsqrtMethod::Goldschmidt => goldschmidt_plain(x),
    }
}

/// Exactly the material [`rsqrt`] consumes on n elements.
pub fn rsqrt_demand(n: usize, method: RsqrtMethod, setting: Setting, frac_bits: u32) -> Demand {
    let mut d = Demand::default();
    rsqrt_scaled_demand(&mut d, n, method, setting, frac_bits, frac_bits, RSQRT_BITS);
    d
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compare::tests::SETTINGS;
    use crate::exp::tests::{check_op, q, rng};
    use rand::Rng;

    #[test]
    fn rsqrt_accuracy_rounds_demand() {
        let mut r = rng();
        let mut xs: Vec<f64> = (0..300)
            .map(|_| 10f64.powf(r.gen_range(-3.0..4.0)))
            .collect();
        xs.extend([1e-3, 1e4, 1.0, 0.25, 4.0, 1e6, 1e-5, 3e6]);
        let n = xs.len();
        let ulp = 2f64.powi(-16);
        for s in SETTINGS {
            for &m in RsqrtMethod::ALL {
                let d = rsqrt_demand(n, m, s, 16);
                let (got, st) = check_op(s, &xs, &[n], &d, |p, a| rsqrt(p, a, m));
                // 3PC: the selection and the truncations are 1 round each and give pairs;
                // a product reshares its pair operands first, so x m1 takes 2 and every
                // mul_shift of a pair 3. Newton: 1 + 2 + 1 (c) + 3 (c^2) + 1 (guess) +
                // 2 x 9 + 3 = 29. Goldschmidt: 1 + 16 x (3 + 3) + 1 = 98. Lut: 2-of-2
                // throughout, as in 2PC.
                let rounds = match (m, s) {
                    (RsqrtMethod::Lut, _) => 3,
                    (RsqrtMethod::Newton, Setting::TwoPc) => 20,
                    (RsqrtMethod::Newton, Setting::ThreePc) => 29,
                    (RsqrtMethod::Goldschmidt, Setting::TwoPc) => 66,
                    (RsqrtMethod::Goldschmidt, Setting::ThreePc) => 98,
                };
                let (mut rel, mut own) = (0f64, 0f64);
                for (x, g) in xs.iter().zip(&got) {
                    let x = q(*x);
                    let want = 1.0 / x.sqrt();
                    let mine = rsqrt_plain(x, m);
                    own = own.max((g - mine).abs() / mine.max(1.0));
                    if (1e-3..=1e4).contains(&x) {
                        rel = rel.max(((g - want).abs() - ulp).max(0.0) / want);
                    } else if m != RsqrtMethod::Goldschmidt {
                        assert!(
                            g.is_finite() && *g >= 0.0 && *g <= 300.0,
                            "{s:?} {m} rsqrt({x}) = {g}"
                        );
                    }
                }
                println!("rsqrt {m} {s:?}: max rel err (beyond 1 ulp) vs exact {rel:.3e}, vs own {own:.3e}, rounds {}, bytes {}", st.rounds, st.online_sent);
                assert_eq!(st.rounds, rounds, "{s:?} {m}");
                assert!(own <= 1e-3, "{s:?} {m}: {own}");
                // Newton: 1e-3 (2 steps from a 1e-2 guess). Lut: the secant over cells of
                // 2^-8 is within 1.5 h^2 = 2.3e-5 of 1/sqrt; the faithful truncation may
                // round the cell up, extrapolating a neighbour's secant by up to one cell
                // (4x that); measured 0.9e-4 / 1.3e-4: 3e-4 holds it with margin.
                match m {
                    RsqrtMethod::Newton => assert!(rel <= 1e-3, "{s:?}: {rel}"),
                    RsqrtMethod::Lut => assert!(rel <= 3e-4, "{s:?}: {rel}"),
                    RsqrtMethod::Goldschmidt => {}
                }
            }
        }
        for &m in RsqrtMethod::ALL {
            assert_eq!(m.to_string().parse::<RsqrtMethod>().unwrap(), m);
        }
    }
}
