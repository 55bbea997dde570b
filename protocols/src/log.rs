//! Secure natural logarithm ln(x) for positive x, in both settings, in 3 rounds (3PC
//! returns a pair): the normalise-and-look-up table function of [`crate::tablefn`] with
//! the reciprocal's binade normalisation ([`crate::reciprocal`]).
//!
//! x in the binade [2^i, 2^(i+1)) is normalised to c = x 2^-(i+1) in [0.5, 1) by one DCF
//! spline selecting the power of two, and ln x = ln c + (i + 1) ln 2 is read, value and
//! slope, from one DPF lookup over 2^8 cells per binade (the secant of ln on a cell of
//! width h = 2^-8 within h^2 / (8 c^2) <= 7.7e-6 of ln c), then one product with the
//! offset inside the cell. The additive term of each binade is folded into its table
//! entries, so the logarithm costs exactly what [`crate::reciprocal`]'s `Lut` method
//! costs. PUMA (arXiv 2307.12533 §4.3) and SIGMA (ePrint 2023/1269 §5) compute their
//! nonlinear functions the same way: a range reduction by the MSB and a small table.
//!
//! Why it exists: the cross-entropy loss of private training ([`crate::nn::train`]),
//! -ln p_y, opened to the data owner once an epoch.
//!
//! Domain: every positive encoding below 2^(39 - f) (x < 2^23 at f = 16); inputs below
//! 2^-f (the encoding 0 included) saturate at ln 2^-f = -11.09 (f = 16). x < 0 is
//! unsupported (it lands in the saturated segment).

use crate::reciprocal::Range;
use crate::tablefn::SegTable;
use tessera::error::Result;
use tessera::preproc::Demand;
use tessera::{Party, Setting, Shared};

/// Cells per binade (c in [0.5, 1): secant error <= 2^-16 / (8 c^2) <= 7.7e-6).
const LOG_CELL_BITS: u32 = 8;

fn log_table(rg: Range, f: u32) -> SegTable {
    let lo = rg.lo;
    let mult = rg.coeffs().into_iter().map(|c| c[0]).collect();
    SegTable::new(
        rg.breaks(f),
        mult,
        f + rg.k(),
        rg.bits,
        LOG_CELL_BITS,
        0.5,
        &|q, c| c.ln() + f64::from(lo + q as i32 + 1) * std::f64::consts::LN_2,
    )
}

/// ln(x) element-wise for positive x at the session's scale (see the module doc).
/// Accuracy: within 1e-4 of ln x for x in [2^-f, 2^(39-f)) at f = 16 (measured 5e-5 to
/// 6.5e-5 over runs: the 7.7e-6 secant error plus up to ~5 ulp of truncations);
/// x below 2^-f gives ln 2^-f. Rounds: 3 in both settings (the table function runs
/// 2-of-2 with P2 dealing in 3PC and returns a pair).
pub fn log(p: &mut Party, x: &Shared) -> Result<Shared> {
    let f = p.fixed().frac_bits();
    let shape = x.shape().to_vec();
    let flat = x.reshape(&[x.len()])?;
    let y = p.additive_view(&flat);
    let r = log_table(Range::public(f), f).eval2(p, &y, f)?;
    Shared::pair(p, &shape, r)
}

/// Plaintext definition of [`log`] at `frac_bits` (the table's secant, binades clamped).
pub fn log_plain(x: f64, frac_bits: u32) -> f64 {
    let rg = Range::public(frac_bits);
    let x = x.max(2f64.powi(-(frac_bits as i32)));
    let i = (x.log2().floor() as i32).clamp(rg.lo, rg.hi - 1);
    let c = x * 2f64.powi(-(i + 1));
    log_table(rg, frac_bits).plain((i - rg.lo) as usize, c)
}

/// Exactly the material [`log`] consumes on n elements.
pub fn log_demand(n: usize, _setting: Setting, frac_bits: u32) -> Demand {
    let mut d = Demand::default();
    log_table(Range::public(frac_bits), frac_bits).demand(&mut d, n, frac_bits);
    d
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compare::tests::SETTINGS;
    use crate::exp::tests::{check_op, q, rng};
    use rand::Rng;

    #[test]
    fn log_accuracy_rounds_demand() {
        let mut r = rng();
        let mut xs: Vec<f64> = (0..300)
            .map(|_| 2f64.powf(r.gen_range(-15.0..20.0)))
            .collect();
        // edges: binade ends, 1, the smallest encodings, 0 (saturates), the top binade
        xs.extend([
            1.0,
            0.5,
            2.0,
            0.999_99,
            2f64.powi(-16),
            2f64.powi(-15),
            0.0,
            1e6,
            8e6,
        ]);
        let n = xs.len();
        let ulp = 2f64.powi(-16);
        for s in SETTINGS {
            let d = log_demand(n, s, 16);
            let (got, st) = check_op(s, &xs, &[n], &d, log);
            // The table function runs 2-of-2 in both settings (3PC: P2 deals, the result
            // is a pair with no reshare).
            assert_eq!(st.rounds, 3, "{s:?}");
            let (mut err, mut own) = (0f64, 0f64);
            for (x, g) in xs.iter().zip(&got) {
                let x = q(*x).max(ulp);
                err = err.max((g - x.ln()).abs());
                own = own.max((g - log_plain(x, 16)).abs());
            }
            println!(
                "log {s:?}: max abs err {err:.3e}, vs own definition {own:.3e}, rounds {}, bytes {}",
                st.rounds, st.online_sent
            );
            // Against its own definition (the same table in f64): the normalised c's
            // truncation (1 ulp of c, times a slope 1/c <= 2: 2 ulp), the slope product's
            // truncation (1), the table's value and slope rounding (1) and the output (1):
            // 5 ulp, 6 allowed (seen: 4.2). Against ln: that plus the secant's 7.7e-6.
            assert!(own <= 6.0 * ulp, "{s:?}: {own}");
            assert!(err <= 7.7e-6 + 6.0 * ulp, "{s:?}: {err}");
        }
    }
}
