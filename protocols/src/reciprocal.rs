//! Secure reciprocal 1/x and division num/den for positive x, in both settings, with a
//! constant number of rounds.
//!
//! Range reduction (PUMA arXiv 2307.12533 §4.3 / SPU: normalise into [0.5, 1) via the
//! MSB) in ONE round: a piecewise-constant spline over the binades [2^i, 2^(i+1)) whose
//! selected coefficient is the integer m = 2^(K - i - 1) (one DCF,
//! [`crate::spline::spline_coefficients`]), so c = x m 2^-K lies in [0.5, 1) and
//! 1/x = (1/c) m 2^-K. Then 1/c from SPU's initial guess w0 = 2.9142 - 2c
//! (|1 - c w0| <= 0.086) and either Goldschmidt (r <- r (1 + e), e <- e^2, both products
//! in one round; SecFormer arXiv 2401.00793 §4.2 uses Goldschmidt for its division) or
//! Newton (w <- w (2 - c w)). The iterations run at 2^-28 internal precision, so the
//! truncations (<= 1 ulp each) stay far below the approximation error.

use crate::exp::{
    concat, enc, mul_demand, mul_shift, mul_shift_demand, pow2, slice, spline_demand, step_spline,
    trunc_demand, HI,
};
use crate::tablefn::SegTable;
use crate::{arith, spline};
use tessera::error::Result;
use tessera::preproc::Demand;
use tessera::{Party, Setting, Shared};

/// How [`reciprocal`] iterates after the normalisation.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum ReciprocalMethod {
    /// Goldschmidt, 2 iterations (relative error 5e-5); PUMA §4.3 / SecFormer §4.2.
    #[default]
    Goldschmidt,
    /// Newton w <- w (2 - c w), 2 iterations (relative error 5e-5, self-correcting).
    Newton,
    /// The same normalisation, then a value-and-slope table per binade
    /// ([`crate::tablefn`]): 3 rounds in both settings (3PC returns a pair); for row-sized
    /// inputs (the DPF
    /// lookup evaluates 2^12 (softmax sums) to 2^14 (the public range) table entries per
    /// element). Softmax's row reciprocal uses it.
    Lut,
}

method_names!(ReciprocalMethod, "reciprocal", [
    Goldschmidt => "goldschmidt",
    Newton => "newton",
    Lut => "lut",
]);

/// Input width of the public [`reciprocal`]: x < 2^(RECIP_BITS - 1 - f).
pub const RECIP_BITS: u32 = 40;

/// The binade range of one reciprocal: inputs in [2^lo, 2^hi) (clamped binades outside).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Range {
    pub lo: i32,
    pub hi: i32,
    pub bits: u32,
}

impl Range {
    /// The public range for the session's f: every positive encoding below 2^(bits-1).
    pub fn public(f: u32) -> Range {
        Range {
            lo: -(f as i32),
            hi: RECIP_BITS as i32 - 1 - f as i32,
            bits: RECIP_BITS,
        }
    }
    pub(crate) fn k(&self) -> u32 {
        (self.hi + 1) as u32
    }
    /// Internal scale of the last iterate, so that W m stays below 2^60.
    fn f2(&self) -> u32 {
        HI.min((60 - self.k() as i32 + self.lo) as u32)
    }
    pub(crate) fn coeffs(&self) -> Vec<Vec<u64>> {
        (self.lo..self.hi)
            .map(|i| vec![pow2((self.k() as i32 - i - 1) as u32)])
            .collect()
    }
    pub(crate) fn breaks(&self, f: u32) -> Vec<u64> {
        (self.lo + 1..self.hi)
            .map(|i| pow2((i + f as i32) as u32))
            .collect()
    }
}

const W0_A: f64 = 2.9142;

/// 1/x for x in the range's binades. See the module doc. Rounds 2PC 10 + [f + K > 28],
/// 3PC 14 + 2 [f + K > 28] (Goldschmidt: the selection, the truncation of c and every
/// `mul_shift` give pairs, and a product of a pair reshares it first; without the
/// truncation c stays replicated and its first product needs no reshare); Newton adds
/// 2 / 3.
pub(crate) fn recip_core(
    p: &mut Party,
    x: &Shared,
    rg: Range,
    method: ReciprocalMethod,
    out: u32,
) -> Result<Shared> {
    let f = p.fixed().frac_bits();
    let shape = x.shape().to_vec();
    let n = x.len();
    let flat = x.reshape(&[n])?;
    if method == ReciprocalMethod::Lut {
        let y = p.additive_view(&flat);
        let r = recip_lut2(p, &y, rg, out)?;
        return Shared::pair(p, &shape, r);
    }
    let sp = step_spline(rg.breaks(f), rg.coeffs())?;
    let m = spline::spline_coefficients(p, &flat, &sp, rg.bits)?.remove(0);
    let xm = arith::mul(p, &flat, &m)?; // c at scale f + K
    let fk = f + rg.k();
    let c = if fk > HI {
        arith::truncate_by(p, &xm, fk - HI)?
    } else {
        xm.scale(pow2(HI - fk))
    };
    let w0 = c.scale(2).neg().add_public_scalar(p, enc(W0_A, HI));
    let f2 = rg.f2();
    let w = match method {
        ReciprocalMethod::Goldschmidt => {
            let cw = mul_shift(p, &c, &w0, HI)?;
            let e0 = cw.neg().add_public_scalar(p, pow2(HI));
            let one_e0 = e0.add_public_scalar(p, pow2(HI));
            let both = mul_shift(p, &concat(&[&w0, &e0])?, &concat(&[&one_e0, &e0])?, HI)?;
            let (w1, e1) = (slice(&both, 0, &[n])?, slice(&both, n, &[n])?);
            mul_shift(p, &w1, &e1.add_public_scalar(p, pow2(HI)), 2 * HI - f2)?
        }
        ReciprocalMethod::Lut => unreachable!("handled above"),
        ReciprocalMethod::Newton => {
            let mut w = w0;
            for it in 0..2 {
                let cw = mul_shift(p, &c, &w, HI)?;
                let t = cw.neg().add_public_scalar(p, pow2(HI + 1));
                let sh = if it == 1 { 2 * HI - f2 } else { HI };
                w = mul_shift(p, &w, &t, sh)?;
            }
            w
        }
    };
    let y = mul_shift(p, &w, &m, f2 + rg.k() - out)?;
    y.reshape(&shape)
}

/// Demand of [`recip_core`] with output scale `out`.
pub(crate) fn recip_demand(
    d: &mut Demand,
    n: usize,
    rg: Range,
    m: ReciprocalMethod,
    s: Setting,
    f: u32,
    out: u32,
) {
    if m == ReciprocalMethod::Lut {
        lut_table(rg, f).demand(d, n, out);
        return;
    }
    spline_demand(d, n, rg.bits, &rg.coeffs());
    mul_demand(d, n, s);
    if f + rg.k() > HI {
        trunc_demand(d, n, f + rg.k() - HI);
    }
    let f2 = rg.f2();
    match m {
        ReciprocalMethod::Goldschmidt => {
            mul_shift_demand(d, n, HI, s);
            mul_shift_demand(d, 2 * n, HI, s);
            mul_shift_demand(d, n, 2 * HI - f2, s);
        }
        ReciprocalMethod::Lut => {}
        ReciprocalMethod::Newton => {
            for it in 0..2 {
                mul_shift_demand(d, n, HI, s);
                mul_shift_demand(d, n, if it == 1 { 2 * HI - f2 } else { HI }, s);
            }
        }
    }
    mul_shift_demand(d, n, f2 + rg.k() - out, s);
}

/// Cells per binade of the Lut method (c in [0.5, 1): the secant is within h^2 / (4 c^2)
/// <= 1.5e-5 relative of 1/c).
const LUT_CELL_BITS: u32 = 8;

/// The Lut method's table: segment q is the binade i = lo + q, x = c 2^(i + 1),
/// 1/x = (1/c) 2^(-i-1).
fn lut_table(rg: Range, f: u32) -> SegTable {
    let lo = rg.lo;
    let mult = rg.coeffs().into_iter().map(|c| c[0]).collect();
    SegTable::new(
        rg.breaks(f),
        mult,
        f + rg.k(),
        rg.bits,
        LUT_CELL_BITS,
        0.5,
        &|q, c| 2f64.powi(-(lo + q as i32) - 1) / c,
    )
}

/// 1/x on 2-of-2 shares (P2 passes zeros) at the session's scale, output at scale `out`,
/// 2-of-2: the Lut method with no conversion (3 rounds in both settings).
pub(crate) fn recip_lut2(p: &mut Party, y: &[u64], rg: Range, out: u32) -> Result<Vec<u64>> {
    let f = p.fixed().frac_bits();
    lut_table(rg, f).eval2(p, y, out)
}

pub(crate) fn recip_plain(x: f64, rg: Range, m: ReciprocalMethod) -> f64 {
    let i = (x.log2().floor() as i32).clamp(rg.lo, rg.hi - 1);
    let sc = 2f64.powi(-(i + 1));
    let c = x * sc;
    if m == ReciprocalMethod::Lut {
        return lut_table(rg, 16).plain((i - rg.lo) as usize, c);
    }
    let w0 = W0_A - 2.0 * c;
    let w = match m {
        ReciprocalMethod::Goldschmidt => {
            let e0 = 1.0 - c * w0;
            w0 * (1.0 + e0) * (1.0 + e0 * e0)
        }
        ReciprocalMethod::Lut => unreachable!("handled above"),
        ReciprocalMethod::Newton => {
            let w1 = w0 * (2.0 - c * w0);
            w1 * (2.0 - c * w1)
        }
    };
    w * sc
}

/// 1/x element-wise for positive x (documented accuracy on [1e-2, 1e4]: relative error
/// below 1e-4 plus the output's 2^-f rounding). Inputs are clamped to the binades
/// [2^-f, 2^(39 - f)): smaller positive inputs saturate near 2^f, x <= 0 is unsupported.
///
/// PUMA (arXiv 2307.12533) §4.3 reciprocal with one-round DCF normalisation;
/// SecFormer (arXiv 2401.00793) §4.2 Goldschmidt. Rounds (f = 16): Goldschmidt 2PC 11,
/// 3PC 16; Newton 2PC 13, 3PC 19; Lut 3 in both settings (3PC returns a pair).
pub fn reciprocal(p: &mut Party, x: &Shared, method: ReciprocalMethod) -> Result<Shared> {
    let f = p.fixed().frac_bits();
    recip_core(p, x, Range::public(f), method, f)
}

/// Plaintext definition of [`reciprocal`] (f = 16).
pub fn reciprocal_plain(x: f64, method: ReciprocalMethod) -> f64 {
    recip_plain(x, Range::public(16), method)
}

/// Exactly the material [`reciprocal`] consumes on n elements.
pub fn reciprocal_demand(
    n: usize,
    method: ReciprocalMethod,
    setting: Setting,
    frac_bits: u32,
) -> Demand {
    let mut d = Demand::default();
    recip_demand(
        &mut d,
        n,
        Range::public(frac_bits),
        method,
        setting,
        frac_bits,
        frac_bits,
    );
    d
}

/// num / den element-wise (den positive, as [`reciprocal`]): [`reciprocal`] then one
/// [`arith::mul_trunc`]. Rounds: [`reciprocal`]'s + 2 (both settings). PUMA §4.3,
/// SecFormer §4.2.
pub fn divide(
    p: &mut Party,
    num: &Shared,
    den: &Shared,
    method: ReciprocalMethod,
) -> Result<Shared> {
    let r = reciprocal(p, den, method)?;
    arith::mul_trunc(p, num, &r)
}

/// Plaintext definition of [`divide`].
pub fn divide_plain(num: f64, den: f64, method: ReciprocalMethod) -> f64 {
    num * reciprocal_plain(den, method)
}

/// Exactly the material [`divide`] consumes on n elements.
pub fn divide_demand(
    n: usize,
    method: ReciprocalMethod,
    setting: Setting,
    frac_bits: u32,
) -> Demand {
    let mut d = reciprocal_demand(n, method, setting, frac_bits);
    mul_shift_demand(&mut d, n, frac_bits, setting);
    d
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compare::tests::SETTINGS;
    use crate::exp::tests::{check_op, q, rng};
    use rand::Rng;
    use tessera::runtime::run;
    use tessera::{FixedPoint, Tensor};

    #[test]
    fn reciprocal_accuracy_rounds_demand() {
        let mut r = rng();
        let mut xs: Vec<f64> = (0..300)
            .map(|_| 10f64.powf(r.gen_range(-2.0..4.0)))
            .collect();
        xs.extend([1e-2, 1e4, 1.0, 0.5, 2.0, 0.999, 1024.0, 1e6, 1e-4, 3e6]);
        let n = xs.len();
        let ulp = 2f64.powi(-16);
        for s in SETTINGS {
            for &m in ReciprocalMethod::ALL {
                let d = reciprocal_demand(n, m, s, 16);
                let (got, st) = check_op(s, &xs, &[n], &d, |p, a| reciprocal(p, a, m));
                // 3PC: the selection and the truncation of c are 1 round each and give
                // pairs; x m (replicated x, pair m) reshares m first (2); every mul_shift
                // of a pair is reshare, product, truncation (3): Goldschmidt 1 + 2 + 1 +
                // 4 x 3 = 16, Newton 1 + 2 + 1 + 5 x 3 = 19. Lut: 2-of-2 throughout.
                let rounds = match (m, s) {
                    (ReciprocalMethod::Goldschmidt, Setting::TwoPc) => 11,
                    (ReciprocalMethod::Goldschmidt, Setting::ThreePc) => 16,
                    (ReciprocalMethod::Newton, Setting::TwoPc) => 13,
                    (ReciprocalMethod::Newton, Setting::ThreePc) => 19,
                    (ReciprocalMethod::Lut, _) => 3,
                };
                assert_eq!(st.rounds, rounds, "{s:?} {m}");
                let (mut rel, mut own) = (0f64, 0f64);
                for (x, g) in xs.iter().zip(&got) {
                    let x = q(*x);
                    let want = 1.0 / x;
                    let mine = recip_plain(x, Range::public(16), m);
                    own = own.max((g - mine).abs() / mine.max(1.0));
                    if (1e-2..=1e4).contains(&x) {
                        // relative error, with the output's own rounding (1 ulp) allowed
                        rel = rel.max(((g - want).abs() - ulp).max(0.0) / want);
                    } else {
                        assert!(
                            g.is_finite() && *g >= 0.0 && *g <= 1.0 / x.min(1.0) * 1.01 + 1.0,
                            "{s:?} {m} 1/{x} = {g}"
                        );
                    }
                }
                println!("reciprocal {m} {s:?}: max rel err (beyond 1 ulp) {rel:.3e}, vs own {own:.3e}, rounds {}, bytes {}", st.rounds, st.online_sent);
                assert!(rel <= 1e-3, "{s:?} {m}: {rel}");
                assert!(own <= 1e-3, "{s:?} {m}: {own}");
            }
        }
    }

    #[test]
    fn division_and_names() {
        let fx = FixedPoint::default();
        let num = [1.0, -3.5, 100.0, 0.25];
        let den = [3.0, 7.0, 0.5, 1000.0];
        let a = Tensor::from_vec(&[4], fx.encode_slice(&num).unwrap()).unwrap();
        let b = Tensor::from_vec(&[4], fx.encode_slice(&den).unwrap()).unwrap();
        for s in SETTINGS {
            let outs = run(s, |p| {
                let x = p.share_input(0, (p.id() == 0).then_some(&a), &[4])?;
                let y = p.share_input(1, (p.id() == 1).then_some(&b), &[4])?;
                let d0 = p.consumed_demand().0.len();
                let z = divide(p, &x, &y, ReciprocalMethod::default())?;
                let used = Demand(p.consumed_demand().0[d0..].to_vec());
                Ok((p.open(&z)?, used))
            })
            .unwrap();
            assert_eq!(
                outs[0].value.1,
                divide_demand(4, ReciprocalMethod::default(), s, 16)
            );
            for i in 0..4 {
                let g = fx.decode(outs[0].value.0.data()[i]);
                assert!(
                    (g - num[i] / den[i]).abs() < 1e-3 * (num[i] / den[i]).abs() + 1e-3,
                    "{g}"
                );
                assert!(
                    (g - divide_plain(num[i], den[i], ReciprocalMethod::default())).abs() < 1e-3
                );
            }
        }
        for &m in ReciprocalMethod::ALL {
            assert_eq!(m.to_string().parse::<ReciprocalMethod>().unwrap(), m);
        }
        assert!("x".parse::<ReciprocalMethod>().is_err());
    }
}
