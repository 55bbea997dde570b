//! Piecewise-polynomial (spline) evaluation with secret-selected coefficients (Boyle et
//! al. EC'21 §4.2 "splines").
//!
//! A public spline has breakpoints p_1 < ... < p_(m-1) and, on each segment
//! [p_j, p_(j+1)) (p_0 = -inf, p_m = +inf), a polynomial sum_k a_(j,k) x^k of degree d.
//! Writing a(x) = a_(m-1) - sum_j \[x < p_j\] (a_j - a_(j-1)), ONE DCF (whatever the
//! coefficients) selects every coefficient of x's segment in one round: with
//! N = 2^bits, u = x + N/2 and c' = u + (r mod N) opened (mod N), and D the DCF
//! \[z < r mod N\] (payload 1),
//! \[u < t\] = D((c' - t) mod N) - D(c') + \[c' < t\] for every public t,
//! so evaluating the key at c' and at c' - t_j (t_j = p_j + N/2) gives shares of each
//! \[x < p_j\], and sum_j \[x < p_j\] Delta_j is a local combination with the public
//! differences (m + 1 evaluations of one narrow key, one opening). The polynomial is
//! then evaluated on the shared coefficients and the shared x with powers: x^2 .. x^d by
//! d - 1 sequential [`crate::arith::mul_trunc`], then all a_k x^k in one batched
//! `mul_trunc`.

use crate::arith;
use crate::compare::{fss_material, open_masked};
use rayon::prelude::*;
use tessera::error::{Error, Result};
use tessera::fss::material::{dcf_eval, FssRequest};
use tessera::{FixedPoint, Party, Shared, Tensor};

/// A public piecewise polynomial over signed fixed-point inputs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Spline {
    /// Breakpoints p_1 < ... < p_(m-1) as fixed-point ring elements (signed).
    breaks: Vec<u64>,
    /// Per segment (m of them), the coefficients a_0..a_d of x^0..x^d (fixed-point).
    coeffs: Vec<Vec<u64>>,
}

impl Spline {
    /// A spline from ring values: `breaks` strictly increasing as signed integers, and
    /// `breaks.len() + 1` coefficient vectors of one common length d + 1 >= 1.
    pub fn new(breaks: Vec<u64>, coeffs: Vec<Vec<u64>>) -> Result<Spline> {
        let bad = |w: String| Err(Error::Unsupported(format!("spline: {w}")));
        if coeffs.len() != breaks.len() + 1 {
            return bad(format!(
                "{} breakpoints need {} segments, got {}",
                breaks.len(),
                breaks.len() + 1,
                coeffs.len()
            ));
        }
        let d1 = coeffs[0].len();
        if d1 == 0 || coeffs.iter().any(|c| c.len() != d1) {
            return bad("every segment needs the same, non-zero, number of coefficients".into());
        }
        if breaks.windows(2).any(|w| (w[0] as i64) >= (w[1] as i64)) {
            return bad("breakpoints must be strictly increasing".into());
        }
        Ok(Spline { breaks, coeffs })
    }

    /// A spline from real breakpoints and coefficients (rows: segments; columns: powers
    /// 0..=d), encoded in the format `fx`.
    pub fn from_f64(fx: FixedPoint, breaks: &[f64], coeffs: &[Vec<f64>]) -> Result<Spline> {
        let b = fx.encode_slice(breaks)?;
        let c = coeffs
            .iter()
            .map(|c| fx.encode_slice(c))
            .collect::<Result<Vec<_>>>()?;
        Spline::new(b, c)
    }

    /// Polynomial degree d.
    pub fn degree(&self) -> usize {
        self.coeffs[0].len() - 1
    }

    /// Number of segments m.
    pub fn segments(&self) -> usize {
        self.coeffs.len()
    }

    /// The segment of a ring value x (signed): the number of breakpoints <= x.
    pub fn segment_of(&self, x: u64) -> usize {
        self.breaks
            .iter()
            .filter(|&&b| b as i64 <= x as i64)
            .count()
    }

    /// Plaintext definition of what [`spline`] computes (up to its truncations): the
    /// encoded coefficients of x's segment evaluated at the encoded x, in f64.
    pub fn eval_plain(&self, fx: FixedPoint, x: u64) -> f64 {
        let xf = fx.decode(x);
        self.coeffs[self.segment_of(x)]
            .iter()
            .rev()
            .fold(0.0, |acc, &c| acc * xf + fx.decode(c))
    }

    /// The DCF payload: coefficient differences a_j - a_(j-1), j = 1..m-1, concatenated.
    fn payload(&self) -> Vec<u64> {
        self.coeffs
            .windows(2)
            .flat_map(|w| w[1].iter().zip(&w[0]).map(|(a, b)| a.wrapping_sub(*b)))
            .collect()
    }
}

fn check_range(sp: &Spline, bits: u32) -> Result<()> {
    if !(2..=64).contains(&bits) {
        return Err(Error::Unsupported(format!(
            "spline: bits = {bits} outside 2..=64"
        )));
    }
    let half = 1i128 << (bits - 1);
    if let Some(b) = sp
        .breaks
        .iter()
        .find(|&&b| !(-half..half).contains(&i128::from(b as i64)))
    {
        return Err(Error::Unsupported(format!(
            "spline: breakpoint {} outside the declared {bits}-bit range",
            *b as i64
        )));
    }
    Ok(())
}

/// The coefficients a_0..a_d of x's segment, secret-shared (element-wise, each with x's
/// shape), for |x| < 2^(bits-1) and breakpoints in that range. One DCF per element
/// whose payload is all coefficient differences (Boyle et al. EC'21 §4.2).
///
/// Rounds: 1 in both settings (3PC returns the d + 1 coefficients as pairs); 0 for a
/// one-segment spline. Online words sent per party: n (P0 and P1; 0 for P2).
/// Dealer: one DCF key on `bits` bits with L = (m - 1)(d + 1) per element per party:
/// 8 (4 + bits (2 + L) + L) bytes.
pub fn spline_coefficients(
    p: &mut Party,
    x: &Shared,
    sp: &Spline,
    bits: u32,
) -> Result<Vec<Shared>> {
    check_range(sp, bits)?;
    let n = x.len();
    let d1 = sp.degree() + 1;
    if sp.segments() == 1 {
        return sp.coeffs[0]
            .iter()
            .map(|&c| Ok(p.share_public(&Tensor::from_vec(x.shape(), vec![c; n])?)))
            .collect();
    }
    let y = p.additive_view(x);
    let sel = select2(p, &y, sp, bits)?;
    let all = Shared::pair(p, &[d1 * n], sel)?;
    (0..d1)
        .map(|k| {
            all.try_map_local(|t| {
                Tensor::from_vec(x.shape(), t.data()[k * n..(k + 1) * n].to_vec())
            })
        })
        .collect()
}

/// 2-of-2 shares of the selected coefficients, coefficient-major (k * n + i).
pub(crate) fn select2(p: &mut Party, y: &[u64], sp: &Spline, bits: u32) -> Result<Vec<u64>> {
    let n = y.len();
    let d1 = sp.degree() + 1;
    let Some(m) = fss_material(p, spline_request(n, bits))? else {
        return Ok(vec![0; d1 * n]);
    };
    let c = open_masked(p, y, &m.parts[0], "spline open")?;
    Ok(select_at(p.id() == 0, sp, bits, &c, &m.parts[1], None)?.0)
}

/// The coefficients of x's segment from the opened c = x + r and the spline keys (2-of-2
/// shares, coefficient-major). With `r` (this party's share of the mask), the keys carry
/// the payload (1, r) ([`FssRequest::SegLut`]) and the second result holds shares of
/// each selected coefficient times r: r [x < p_j] = D_r(c' - t_j) - D_r(c') +
/// [c' < t_j] r, by the same identity as the bits. Without it the second is empty.
pub(crate) fn select_at(
    first: bool,
    sp: &Spline,
    bits: u32,
    c: &[u64],
    keys: &[u64],
    r: Option<&[u64]>,
) -> Result<(Vec<u64>, Vec<u64>)> {
    let n = c.len();
    let d1 = sp.degree() + 1;
    let payload = sp.payload();
    let l = if r.is_some() { 2 } else { 1 };
    let mask = if bits == 64 {
        u64::MAX
    } else {
        (1u64 << bits) - 1
    };
    let half = 1u64 << (bits - 1);
    let ts: Vec<u64> = sp
        .breaks
        .iter()
        .map(|b| b.wrapping_add(half) & mask)
        .collect();
    let last = &sp.coeffs[sp.segments() - 1];
    // The keys are evaluated at c' and at every c' - t_j (multi-key lockstep evaluator).
    let cps: Vec<u64> = c.iter().map(|v| v.wrapping_add(half) & mask).collect();
    let at_c = dcf_eval(keys, &cps)?;
    let at_shifts = ts
        .iter()
        .map(|&t| {
            let pts: Vec<u64> = cps.iter().map(|cp| cp.wrapping_sub(t) & mask).collect();
            dcf_eval(keys, &pts)
        })
        .collect::<Result<Vec<_>>>()?;
    if at_c.len() != l * n {
        return Err(Error::Preprocessing(format!(
            "spline keys give {} words for {n} points, expected {}",
            at_c.len(),
            l * n
        )));
    }
    // Per element: the d + 1 coefficients, then (with r) the d + 1 products.
    let per: Vec<Vec<u64>> = (0..n)
        .into_par_iter()
        .map(|i| {
            let cp = cps[i];
            let ri = r.map_or(0, |r| r[i]);
            let mut a: Vec<u64> = last.iter().map(|&v| if first { v } else { 0 }).collect();
            if r.is_some() {
                a.extend(last.iter().map(|v| v.wrapping_mul(ri)));
            }
            for (j, &t) in ts.iter().enumerate() {
                // share of [x < p_j] (and of r [x < p_j]), then times the public Delta_j,k
                let below = cp < t;
                let mut b = at_shifts[j][l * i].wrapping_sub(at_c[l * i]);
                if first && below {
                    b = b.wrapping_add(1);
                }
                let br = if l == 2 {
                    let v = at_shifts[j][l * i + 1].wrapping_sub(at_c[l * i + 1]);
                    if below {
                        v.wrapping_add(ri)
                    } else {
                        v
                    }
                } else {
                    0
                };
                for (k, ak) in a.iter_mut().enumerate() {
                    let bk = if k < d1 { b } else { br };
                    *ak = ak.wrapping_sub(bk.wrapping_mul(payload[j * d1 + k % d1]));
                }
            }
            a
        })
        .collect();
    let mut out = vec![0u64; d1 * n];
    let mut out_r = vec![0u64; if l == 2 { d1 * n } else { 0 }];
    for (i, a) in per.iter().enumerate() {
        for (k, v) in a[..d1].iter().enumerate() {
            out[k * n + i] = *v;
        }
        for (k, v) in a[d1..].iter().enumerate() {
            out_r[k * n + i] = *v;
        }
    }
    Ok((out, out_r))
}

/// The material of a coefficient selection on n inputs of `bits` bits: one DCF with the
/// one-word payload 1. Each of the m + 1 evaluations gives a share of one comparison bit,
/// and the public coefficient differences multiply it locally (a payload of all m (d + 1)
/// differences, evaluated m + 1 times, cost m times more key words and payload work: 14.7 s
/// and 2.6 GB of keys for 98k reciprocals before).
pub(crate) fn spline_request(n: usize, bits: u32) -> FssRequest {
    FssRequest::Spline {
        n,
        bits,
        payload: vec![1],
    }
}

/// Flattens several shares (same setting) into one 1-D share ([`Shared::concat_flat`]).
fn concat(xs: &[&Shared]) -> Result<Shared> {
    Shared::concat_flat(xs)
}

/// The spline at x (fixed-point, the session's `p.fixed()` scale), for |x| <
/// 2^(bits-1) and breakpoints in that range. Coefficients are selected by one DCF
/// ([`spline_coefficients`]), then sum_k a_k x^k is evaluated with powers of x (d - 1
/// sequential `mul_trunc`) and one batched `mul_trunc` of all a_k x^k. Error: at most
/// 1 ulp per truncation, propagated through the coefficients (2d - 1 truncations).
///
/// Rounds: 2PC 2d + 1 (d = 0: 1). 3PC, where the coefficients come as pairs: 2d for
/// d >= 2 (x^2 takes replicated operands, 1 round; every later product takes a pair and
/// reshares it first, 2), 3 for d = 1, 1 for d = 0. Online words sent per party: the
/// selection's (n) plus the products' (2PC 2 words per product for Beaver + 1 for the
/// truncation opening; 3PC as `mul_trunc`, plus n per pair operand reshared for P0 and
/// P1). Boyle et al. EC'21 §4.2; PUMA §4.2 for the piecewise GeLU it serves.
pub fn spline(p: &mut Party, x: &Shared, sp: &Spline, bits: u32) -> Result<Shared> {
    let a = spline_coefficients(p, x, sp, bits)?;
    let d = sp.degree();
    if d == 0 {
        return Ok(a[0].clone());
    }
    let mut pows = vec![x.clone()];
    for _ in 1..d {
        let next = arith::mul_trunc(p, pows.last().expect("non-empty"), x)?;
        pows.push(next);
    }
    let ca = concat(&a[1..].iter().collect::<Vec<_>>())?;
    let cx = concat(&pows.iter().collect::<Vec<_>>())?;
    let prod = arith::mul_trunc(p, &ca, &cx)?;
    let n = x.len();
    let mut acc = a[0].clone();
    for k in 0..d {
        let term = prod.try_map_local(|t| {
            Tensor::from_vec(x.shape(), t.data()[k * n..(k + 1) * n].to_vec())
        })?;
        acc = acc.add(&term)?;
    }
    Ok(acc)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compare::tests::{max_stats, unary, SETTINGS};
    use rand::Rng;
    use tessera::runtime::run;
    use tessera::Setting;

    fn three_segments(fx: FixedPoint) -> Spline {
        Spline::from_f64(
            fx,
            &[-1.0, 1.5],
            &[
                vec![-0.5, 0.25, 0.0],
                vec![0.1, -0.75, 0.5],
                vec![2.0, 1.0, -0.125],
            ],
        )
        .unwrap()
    }

    fn inputs(fx: FixedPoint) -> Vec<u64> {
        let mut v: Vec<u64> = [-1.0, 1.5, 0.0, -4.0, 4.0]
            .iter()
            .map(|&x| fx.encode(x).unwrap())
            .collect();
        for b in [-1.0f64, 1.5] {
            let e = fx.encode(b).unwrap();
            v.extend([e.wrapping_sub(1), e.wrapping_add(1)]);
        }
        let mut r = crate::compare::tests::rng();
        v.extend((0..200).map(|_| fx.encode(r.gen_range(-4.0..4.0)).unwrap()));
        v
    }

    #[test]
    fn quadratic_spline_matches_its_definition() {
        let fx = FixedPoint::default();
        let sp = three_segments(fx);
        let v = inputs(fx);
        let x = Tensor::from_vec(&[v.len()], v.clone()).unwrap();
        for s in SETTINGS {
            for bits in [20u32, 64] {
                let (z, st) = unary(s, &x, |p, a| spline(p, a, &sp, bits));
                // 2PC: selection 1, x^2 2, the batched a_k x^k 2. 3PC: selection 1 (the
                // coefficients a pair), x^2 1 (replicated x: the product goes straight
                // into the truncation), the batched product 2 (reshare of the pairs, then
                // the truncation).
                let d = 2;
                let rounds = if s == Setting::TwoPc {
                    2 * d + 1
                } else {
                    2 * d
                };
                assert_eq!(st.rounds, rounds as u64, "{s:?}");
                // 3 truncations, coefficients |a| <= 1 on the powers: 4 ulp is 1-2 per trunc.
                for (a, b) in v.iter().zip(z.data()) {
                    let want = sp.eval_plain(fx, *a);
                    let got = fx.decode(*b);
                    assert!(
                        (got - want).abs() <= 4.0 * fx.ulp(),
                        "{s:?} x = {} got {got} want {want}",
                        fx.decode(*a)
                    );
                }
            }
        }
    }

    #[test]
    fn coefficient_selection_is_exact_and_one_round() {
        let fx = FixedPoint::default();
        let sp = three_segments(fx);
        let v = inputs(fx);
        let n = v.len();
        let x = Tensor::from_vec(&[n], v.clone()).unwrap();
        for s in SETTINGS {
            let outs = run(s, |p| {
                let xs = p.share_input(0, (p.id() == 0).then_some(&x), &[n])?;
                let before = p.stats();
                let a = spline_coefficients(p, &xs, &sp, 24)?;
                let st = p.stats().since(&before);
                Ok((p.open_many(&a.iter().collect::<Vec<_>>())?, st))
            })
            .unwrap();
            let st = max_stats(&outs.iter().map(|o| o.value.1).collect::<Vec<_>>());
            // One opening of n words in both settings: the 3PC coefficients are pairs.
            assert_eq!(st.rounds, 1, "{s:?}");
            assert_eq!(st.online_sent, 8 * n as u64, "{s:?}");
            for (i, xi) in v.iter().enumerate() {
                let seg = sp.segment_of(*xi);
                for k in 0..3 {
                    assert_eq!(
                        outs[0].value.0[k].data()[i],
                        sp.coeffs[seg][k],
                        "{s:?} x={}",
                        *xi as i64
                    );
                }
            }
        }
    }

    #[test]
    fn linear_and_constant_splines() {
        let fx = FixedPoint::default();
        // ReLU-like piecewise linear with 4 segments, and a piecewise constant step.
        let lin = Spline::from_f64(
            fx,
            &[-2.0, 0.0, 2.0],
            &[
                vec![0.0, 0.0],
                vec![0.0, 0.1],
                vec![0.0, 1.0],
                vec![1.0, 0.5],
            ],
        )
        .unwrap();
        let step = Spline::from_f64(fx, &[0.0], &[vec![-1.0], vec![1.0]]).unwrap();
        let one = Spline::from_f64(fx, &[], &[vec![0.5, 2.0]]).unwrap();
        let v = inputs(fx);
        let x = Tensor::from_vec(&[v.len()], v.clone()).unwrap();
        for s in SETTINGS {
            // Selection 1, then a_1 x: 2PC Beaver + truncation, 3PC the pair a_1's
            // reshare + the truncation: 3 in both settings.
            let (z, st) = unary(s, &x, |p, a| spline(p, a, &lin, 32));
            assert_eq!(st.rounds, 3, "{s:?}");
            for (a, b) in v.iter().zip(z.data()) {
                assert!((fx.decode(*b) - lin.eval_plain(fx, *a)).abs() <= 2.0 * fx.ulp());
            }
            // The selection alone (d = 0).
            let (z, st) = unary(s, &x, |p, a| spline(p, a, &step, 32));
            assert_eq!(st.rounds, 1, "{s:?}");
            for (a, b) in v.iter().zip(z.data()) {
                assert_eq!(fx.decode(*b), step.eval_plain(fx, *a));
            }
            let (z, _) = unary(s, &x, |p, a| spline(p, a, &one, 32));
            for (a, b) in v.iter().zip(z.data()) {
                assert!((fx.decode(*b) - one.eval_plain(fx, *a)).abs() <= 2.0 * fx.ulp());
            }
        }
        assert!(Spline::from_f64(fx, &[1.0, 0.0], &[vec![0.0], vec![0.0], vec![0.0]]).is_err());
        assert!(Spline::new(vec![], vec![vec![]]).is_err());
        let e = run(Setting::TwoPc, |p| {
            let x = Shared::zeros(p, &[2]);
            spline(p, &x, &three_segments(fx), 16).map(|_| ())
        })
        .unwrap_err();
        assert!(e.to_string().contains("breakpoint"), "{e}");
    }
}
