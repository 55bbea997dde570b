//! Secure LayerNorm over the last axis with secret gamma and beta, in both settings,
//! with a constant number of rounds (PUMA arXiv 2307.12533 §4.4; SecFormer arXiv
//! 2401.00793 §4.3).
//!
//! mean = sum(x) / k (one truncation on the rows), d = x - mean; one batched product
//! gives d^2 and d gamma together (no truncation); one batched truncation gives the row
//! sums of d^2 and d gamma at scale f; var = sum d^2 / k (row-sized truncation), then
//! rsqrt(var + eps) per row ([`crate::rsqrt`]) and one product (d gamma) rsqrt + beta.

use crate::arith;
use crate::exp::{
    bcast_rows, concat, enc, mul_demand, mul_shift, mul_shift_demand, row_sums, slice,
    trunc_demand, unknown,
};
use crate::rsqrt::{rsqrt_plain, rsqrt_scaled, rsqrt_scaled_demand, RsqrtMethod};
use tessera::error::{Error, Result};
use tessera::preproc::Demand;
use tessera::{Party, Setting, Shared};

/// How LayerNorm's reciprocal square root is computed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum LayerNormMethod {
    /// PUMA §4.4: rsqrt by Newton with a comparison-based (DCF) initial guess; accurate.
    #[default]
    Newton,
    /// SecFormer §4.3: rsqrt by Goldschmidt with deflation, no comparisons.
    Goldschmidt,
}

impl LayerNormMethod {
    /// Every method.
    pub const ALL: &'static [LayerNormMethod] =
        &[LayerNormMethod::Newton, LayerNormMethod::Goldschmidt];
    /// The method's name.
    pub fn name(self) -> &'static str {
        match self {
            LayerNormMethod::Newton => "newton",
            LayerNormMethod::Goldschmidt => "goldschmidt",
        }
    }
    fn rsqrt(self) -> RsqrtMethod {
        match self {
            LayerNormMethod::Newton => RsqrtMethod::Newton,
            LayerNormMethod::Goldschmidt => RsqrtMethod::Goldschmidt,
        }
    }
}

impl std::fmt::Display for LayerNormMethod {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for LayerNormMethod {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        LayerNormMethod::ALL
            .iter()
            .copied()
            .find(|m| m.name() == s)
            .ok_or_else(|| {
                let all: Vec<String> = LayerNormMethod::ALL.iter().map(|m| m.to_string()).collect();
                unknown("layernorm", s, &all)
            })
    }
}

/// Scale of the public 1/k multiplier.
const INV_K: u32 = 26;
/// Extra fractional bits of the variance.
const VAR_EXTRA: u32 = 10;
/// Comparison width of the variance: var < 2^(VAR_BITS - 1 - f - VAR_EXTRA) = 2^17.
const VAR_BITS: u32 = 44;

/// LayerNorm over the last axis: (x - mean) / sqrt(var + eps) * gamma + beta, gamma and
/// beta shared vectors of the last axis' length. Needs sum over a row of d^2 < 2^(62 -
/// 2f) (row variance below 2^30 / k at f = 16) and |sum x| 2^(f + 26) / k < 2^62.
///
/// Rounds (f = 16): Newton 2PC 26 = 1 (mean) + 1 (products) + 1 (truncation) + 1
/// (variance) + 20 (rsqrt) + 2, 3PC 40 = 2 + 1 + 2 + 2 + 31 + 2; Goldschmidt 2PC 72,
/// 3PC 109. PUMA arXiv 2307.12533 §4.4, SecFormer arXiv 2401.00793 §4.3.
pub fn layernorm(
    p: &mut Party,
    x: &Shared,
    gamma: &Shared,
    beta: &Shared,
    eps: f64,
    method: LayerNormMethod,
) -> Result<Shared> {
    let f = p.fixed().frac_bits();
    let shape = x.shape().to_vec();
    let k = *shape
        .last()
        .filter(|&&k| k > 0)
        .ok_or_else(|| Error::shape("layernorm", format!("empty last axis in {shape:?}")))?;
    if gamma.shape() != [k] || beta.shape() != [k] {
        return Err(Error::shape(
            "layernorm",
            format!(
                "gamma {:?} / beta {:?} for rows of {k}",
                gamma.shape(),
                beta.shape()
            ),
        ));
    }
    let n = x.len();
    let rows = n / k;
    let x2 = x.reshape(&[rows, k])?;
    let inv_k = enc(1.0 / k as f64, INV_K);
    let mean = mul_shift_local(p, &row_sums(&x2)?.scale(inv_k), INV_K)?;
    let d = x2.sub(&bcast_rows(&mean, &[rows, k])?)?;
    let g = Shared::zeros(p, &[rows, k]).add_rows(gamma)?;
    let prod = arith::mul(p, &concat(&[&d, &d])?, &concat(&[&d, &g])?)?;
    let d2 = slice(&prod, 0, &[rows, k])?;
    let dg = slice(&prod, n, &[n])?;
    let both = arith::truncate(p, &concat(&[&row_sums(&d2)?, &dg])?)?;
    let ss = slice(&both, 0, &[rows])?;
    let dg = slice(&both, rows, &[rows, k])?;
    // var at scale f + VAR_EXTRA (a variance of 1e-3 keeps 2^-26 resolution)
    let var = mul_shift_local(p, &ss.scale(inv_k), INV_K - VAR_EXTRA)?
        .add_public_scalar(p, enc(eps, f + VAR_EXTRA));
    let r = rsqrt_scaled(p, &var, method.rsqrt(), f + VAR_EXTRA, VAR_BITS)?;
    let y = mul_shift(p, &dg, &bcast_rows(&r, &[rows, k])?, f)?;
    y.add_rows(beta)?.reshape(&shape)
}

/// Truncation of a local product by a public constant.
fn mul_shift_local(p: &mut Party, x: &Shared, shift: u32) -> Result<Shared> {
    arith::truncate_by(p, x, shift)
}

/// Plaintext definition of one row of [`layernorm`] (f = 16).
pub fn layernorm_plain(
    x: &[f64],
    gamma: &[f64],
    beta: &[f64],
    eps: f64,
    method: LayerNormMethod,
) -> Vec<f64> {
    let k = x.len() as f64;
    let mean = x.iter().sum::<f64>() / k;
    let var = x.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / k;
    let r = rsqrt_plain(var + eps, method.rsqrt());
    x.iter()
        .zip(gamma.iter().zip(beta))
        .map(|(v, (g, b))| (v - mean) * g * r + b)
        .collect()
}

/// Exactly the material [`layernorm`] consumes on a tensor of `shape`.
pub fn layernorm_demand(
    shape: &[usize],
    method: LayerNormMethod,
    setting: Setting,
    frac_bits: u32,
) -> Demand {
    let f = frac_bits;
    let k = shape.last().copied().unwrap_or(1).max(1);
    let n: usize = shape.iter().product();
    let rows = n / k;
    let mut d = Demand::default();
    trunc_demand(&mut d, rows, INV_K);
    mul_demand(&mut d, 2 * n, setting);
    trunc_demand(&mut d, rows + n, f);
    trunc_demand(&mut d, rows, INV_K - VAR_EXTRA);
    rsqrt_scaled_demand(
        &mut d,
        rows,
        method.rsqrt(),
        setting,
        f,
        f + VAR_EXTRA,
        VAR_BITS,
    );
    mul_shift_demand(&mut d, n, f, setting);
    d
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compare::tests::{max_stats, SETTINGS};
    use crate::exp::tests::{q, rng};
    use rand::Rng;
    use tessera::runtime::{run, run_parties};
    use tessera::{FixedPoint, MaterialMode, SessionOptions, Tensor};

    fn exact(x: &[f64], gamma: &[f64], beta: &[f64], eps: f64) -> Vec<f64> {
        let k = x.len() as f64;
        let mean = x.iter().sum::<f64>() / k;
        let var = x.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / k;
        x.iter()
            .zip(gamma.iter().zip(beta))
            .map(|(v, (g, b))| (v - mean) * g / (var + eps).sqrt() + b)
            .collect()
    }

    #[test]
    fn layernorm_accuracy_rounds_demand() {
        let mut r = rng();
        let k = 768;
        // rows with variances spread over [1e-3, 1e4] and non-zero means
        let stds = [0.0316, 0.1, 1.0, 10.0, 100.0, 0.05];
        let rows = stds.len();
        let mut xs = vec![];
        for sd in stds {
            let mu: f64 = r.gen_range(-5.0..5.0);
            xs.extend((0..k).map(|_| q(mu + sd * r.gen_range(-1.7f64..1.7))));
        }
        let fx = FixedPoint::default();
        let gammas: [Vec<f64>; 2] = [
            vec![1.0; k],
            (0..k).map(|_| q(r.gen_range(0.5..1.5))).collect(),
        ];
        let beta: Vec<f64> = (0..k).map(|_| q(r.gen_range(-0.5..0.5))).collect();
        let eps = 1e-5;
        let mut bad = vec![];
        let x = Tensor::from_vec(&[rows, k], fx.encode_slice(&xs).unwrap()).unwrap();
        let b = Tensor::from_vec(&[k], fx.encode_slice(&beta).unwrap()).unwrap();
        for s in SETTINGS {
            for &m in LayerNormMethod::ALL {
                for gamma in &gammas {
                    let g = Tensor::from_vec(&[k], fx.encode_slice(gamma).unwrap()).unwrap();
                    let job = |p: &mut Party| {
                        let xs = p.share_input(0, (p.id() == 0).then_some(&x), &[rows, k])?;
                        let gs = p.share_input(1, (p.id() == 1).then_some(&g), &[k])?;
                        let bs = p.share_input(1, (p.id() == 1).then_some(&b), &[k])?;
                        let before = p.stats();
                        let d0 = p.consumed_demand().0.len();
                        let y = layernorm(p, &xs, &gs, &bs, eps, m)?;
                        let st = p.stats().since(&before);
                        let used = Demand(p.consumed_demand().0[d0..].to_vec());
                        Ok((p.open(&y)?, st, used))
                    };
                    let outs = run(s, job).unwrap();
                    let want = layernorm_demand(&[rows, k], m, s, 16);
                    assert_eq!(outs[0].value.2, want, "{s:?} {m}");
                    assert_eq!(outs[1].value.2, want, "{s:?} {m}");
                    let st = max_stats(&outs.iter().map(|o| o.value.1).collect::<Vec<_>>());
                    let opts = SessionOptions {
                        material: MaterialMode::Planned(want),
                        ..Default::default()
                    };
                    let planned = run_parties(s, opts, job).unwrap();
                    let got: Vec<f64> = planned[0]
                        .value
                        .0
                        .data()
                        .iter()
                        .map(|&v| fx.decode(v))
                        .collect();
                    let (mut e_exact, mut e_own) = (0f64, 0f64);
                    for (i, row) in xs.chunks(k).enumerate() {
                        let ex = exact(row, gamma, &beta, eps);
                        let own = layernorm_plain(row, gamma, &beta, eps, m);
                        for j in 0..k {
                            let gv = got[i * k + j];
                            e_exact = e_exact.max((gv - ex[j]).abs());
                            e_own = e_own.max((gv - own[j]).abs());
                        }
                    }
                    println!("layernorm {m} {s:?}: max abs err vs exact {e_exact:.3e}, vs own {e_own:.3e}, rounds {}, bytes {}", st.rounds, st.online_sent);
                    assert!(e_own <= 1e-2, "{s:?} {m}: {e_own}");
                    if m == LayerNormMethod::Newton {
                        assert!(e_exact <= 1e-2, "{s:?}: {e_exact}");
                    }
                    let rounds = match (m, s) {
                        (LayerNormMethod::Newton, Setting::TwoPc) => 26,
                        (LayerNormMethod::Newton, Setting::ThreePc) => 40,
                        (LayerNormMethod::Goldschmidt, Setting::TwoPc) => 72,
                        (LayerNormMethod::Goldschmidt, Setting::ThreePc) => 109,
                    };
                    if st.rounds != rounds {
                        bad.push(format!("{s:?} {m}: {} rounds", st.rounds));
                    }
                }
            }
        }
        assert!(bad.is_empty(), "{bad:?}");
        for &m in LayerNormMethod::ALL {
            assert_eq!(m.to_string().parse::<LayerNormMethod>().unwrap(), m);
        }
    }
}
