//! Secure LayerNorm over the last axis with secret gamma and beta, in both settings,
//! with a constant number of rounds (PUMA arXiv 2307.12533 §4.4; SecFormer arXiv
//! 2401.00793 §4.3).
//!
//! ## Round and byte structure (why this shape)
//! mean = sum(x) / k (one row-sized truncation), d = x - mean. The dealer supplies one
//! [`Request::NormMask`]: a uniform mask a of d, b of the row vector r = rsqrt(var + eps),
//! c of gamma, and shares of a², a∘b, a∘c, a∘b∘c, b⊗c. The parties open e = d - a and
//! g' = gamma - c in one round; then sum_j d² = sum_j (e² + 2ea + a²) is local and exact at
//! scale 2f, so the variance needs only row-sized truncations. After rsqrt they open
//! r' = r - b (row-sized) and y = (e + a)(r' + b)(g' + c) = d r gamma expands into terms
//! that are public or linear in the dealt shares: local, at scale 3f. One truncation by
//! 2f and beta finish. The n-sized traffic is the opening of e and that truncation (2n
//! words per party in 2PC) instead of a Beaver product for d² and d gamma, their
//! truncation, and a second product with r and its truncation (8n words before).
//!
//! With the default [`LayerNormMethod::Lut`], r = 1/sqrt(sum d² / k + eps) =
//! sqrt(k) / sqrt(sum d² + k eps) comes straight from the exact sum at scale 2f through
//! one normalise-and-look-up table with sqrt(k) folded in (`crate::rsqrt`'s sum table,
//! `crate::tablefn`): no division by k, no truncation of the sum, 3 rounds (6 before stop
//! 34), no reshare in 3PC. Rounds 27 -> 10 (2PC), 40 -> 11 (3PC), then 7 / 8, and 7 in
//! both since the 3PC output stays a pair (stop 35). The final truncation is the one-round
//! faithful one (n words) and no longer the half-open variant (`arith::trunc2_split`:
//! n/2 + n/128 words for one more round): LayerNorm's bytes are a few percent of a
//! layer's, its rounds were a third of them.
//! 3PC runs the same on 2-of-2 shares between P0 and P1 (P2 deals, as for FSS), and the
//! output is a pair (`Shared::pair`), reshared only if a replicated product takes it.
//! For a replicated input P2, idle otherwise, opens e to P0 and P1 for 70% of the
//! elements (it holds x_2, x_0 and knows a; see [`open_norm_masked`]), so P0 and P1 send
//! about 0.75n words (0.45n for the truncation, 0.3n of e) and P2 0.7n to each. A pair
//! input (a residual sum with a pair, as in every transformer layer) leaves P2 nothing to
//! open: P0 and P1 send 1.45n, still less than resharing the input first (n more).
//!
//! Why not less: the faithful truncation's 0.45n or more, whose wrap bit couples the
//! opened msb (which P2 must not see, as it knows the mask) and the mask's msb (which the
//! opener must not see). Less would need a truncation mask no single party knows or
//! material dealt by P0 and P1 too (ABY3-style), which the single-dealer preprocessing of
//! DESIGN.md does not have.

use crate::compare::{open_sum, trunc2, wsub};
use crate::exp::{enc, trunc_demand};
use crate::rsqrt::{
    rsqrt_plain, rsqrt_scaled2, rsqrt_scaled_demand, rsqrt_sum2, rsqrt_sum_demand, rsqrt_sum_plain,
    RsqrtMethod,
};
use rayon::prelude::*;
use tessera::error::{Error, Result};
use tessera::preproc::{Demand, Request};
use tessera::{Party, Setting, Shared};

/// How LayerNorm's reciprocal square root is computed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum LayerNormMethod {
    /// rsqrt by a one-round DCF normalisation and a value-and-slope table
    /// ([`RsqrtMethod::Lut`]): 3 rounds instead of Newton's 20.
    #[default]
    Lut,
    /// PUMA §4.4: rsqrt by Newton with a comparison-based (DCF) initial guess; accurate.
    Newton,
    /// SecFormer §4.3: rsqrt by Goldschmidt with deflation, no comparisons.
    Goldschmidt,
}

method_names!(LayerNormMethod, "layernorm", [
    Lut => "lut",
    Newton => "newton",
    Goldschmidt => "goldschmidt",
]);

impl LayerNormMethod {
    pub(crate) fn rsqrt(self) -> RsqrtMethod {
        match self {
            LayerNormMethod::Lut => RsqrtMethod::Lut,
            LayerNormMethod::Newton => RsqrtMethod::Newton,
            LayerNormMethod::Goldschmidt => RsqrtMethod::Goldschmidt,
        }
    }
}

/// Scale of the public 1/k multiplier.
const INV_K: u32 = 26;
/// Extra fractional bits of the variance.
const VAR_EXTRA: u32 = 10;
/// Comparison width of LayerNorm's variance: var < 2^(VAR_BITS - 1 - f - VAR_EXTRA) = 2^17.
const VAR_BITS: u32 = 44;
/// Comparison width of RMSNorm's mean square: mean(x^2) < 2^25 (row RMS up to ~5800).
/// Decoder LLMs carry "massive activations" in their residual stream: SmolLM2-135M has
/// rows of RMS 1046 (one element near 24900) from layer 11 on, a mean square of 1.1e6,
/// which LayerNorm's 2^17 would wrap.
const RMS_VAR_BITS: u32 = 52;

/// Bits taken off 1/k's [`INV_K`] for the variance's product: RMSNorm's row sums of
/// squares reach 6.3e8 on SmolLM2 (k = 576), and sum 2^(f + 26) / k then needs 2^62.06;
/// with 1/k at 24 bits (relative error < 2e-5 for k < 600) the range is 4x (the sum at
/// scale 2f, below 2^62, is then the binding limit: 1.07e9 at f = 16).
fn pre_shift(center: bool) -> u32 {
    if center {
        0
    } else {
        2
    }
}

/// Comparison width of the Lut method's row sum of squares at scale 2f: below 2^62 (the
/// sum's own limit, see [`layernorm`]).
const SUM_BITS: u32 = 63;

/// Extra fractional bits of the Lut method's r = 1 / sqrt(mean + eps) (scale f + 3),
/// dropped by the output's truncation (by 2f + 3). At scale f a row of RMS 1000 (the
/// massive-activation rows of Llama-family models: SmolLM2's first position reaches
/// 1046) gets r = 1e-3 to 65 ulps, a 0.8% error in every normalised value of the row,
/// which put 0.14 into SmolLM2's logits by itself (an f64 model of it); 3 bits more
/// make that 0.011. The price is the output range: |y| < 2^(59 - 3f) (2048 at f = 16,
/// where the normalised values are at most sqrt(k) max |gamma|; LayerNorm's high-bits
/// truncation halves it, see [`layernorm`]), and the table's
/// slope keeps no extra bits of its own (`crate::tablefn`, 3 before).
const R_EXTRA: u32 = 3;

/// [`R_EXTRA`] for the Lut method, 0 for the others (their r comes at scale f).
fn r_extra(method: LayerNormMethod) -> u32 {
    if method == LayerNormMethod::Lut {
        R_EXTRA
    } else {
        0
    }
}

/// Plaintext r = 1 / sqrt(var + eps) of a row of k as `method` computes it (f = 16).
pub(crate) fn norm_rsqrt_plain(var_eps: f64, k: usize, method: LayerNormMethod) -> f64 {
    match method {
        LayerNormMethod::Lut => rsqrt_sum_plain(var_eps * k as f64, k, SUM_BITS),
        m => rsqrt_plain(var_eps, m.rsqrt()),
    }
}

/// The variance's comparison width for a LayerNorm (`center`) or an RMSNorm.
fn var_bits(center: bool) -> u32 {
    if center {
        VAR_BITS
    } else {
        RMS_VAR_BITS
    }
}

/// LayerNorm over the last axis: (x - mean) / sqrt(var + eps) * gamma + beta, gamma and
/// beta shared vectors of the last axis' length. Needs sum over a row of d^2 < 2^(62 -
/// 2f) (row variance below 2^30 / k at f = 16), |sum x| 2^(f + 26) / k < 2^62 and
/// outputs |y| < 2^(61 - 3f) (2^13 at f = 16; the Lut method, whose r carries
/// [`R_EXTRA`] more bits: 2^(58 - 3f), 1024; the normalised values are at most sqrt(k)
/// max |gamma|, 28 max |gamma| for BERT-base): its output truncation opens only the
/// bits above the shift (`arith::trunc2_high`, which needs one more bit of headroom
/// than the faithful one; RMSNorm keeps 2^(59 - 3f)).
///
/// Rounds (f = 16): Lut (default) 7 in both settings = 1 (mean) + 1 (open d - a,
/// g - c) + 3 (the table of sqrt(k) / sqrt(sum d² + k eps)) + 1 (open r - b) + 1
/// (truncation), 3PC in 2-of-2 form between P0 and P1 (P2 deals) with a pair out; Newton
/// 2PC 26 (2 for the variance, 20 of rsqrt), 3PC 35 (29 of rsqrt, its products'
/// reshares); Goldschmidt 2PC 72, 3PC 104 (98 of rsqrt). Online words per party: 2PC
/// 1.45n + O(rows + k), 3PC 0.75n + O(rows + k) for a replicated input (P0, P1; P2 0.7n
/// to each), 1.45n for a pair. PUMA arXiv 2307.12533 §4.4, SecFormer arXiv 2401.00793
/// §4.3.
pub fn layernorm(
    p: &mut Party,
    x: &Shared,
    gamma: &Shared,
    beta: &Shared,
    eps: f64,
    method: LayerNormMethod,
) -> Result<Shared> {
    normalize(p, x, gamma, Norm::Layer { beta }, eps, method)
}

/// Which normalisation [`normalize`] computes.
#[derive(Clone, Copy)]
pub(crate) enum Norm<'a> {
    /// LayerNorm: subtract the row mean, add beta.
    Layer {
        /// The shared shift.
        beta: &'a Shared,
    },
    /// RMSNorm: neither (d = x, the "variance" is mean(x^2)).
    Rms,
}

impl Norm<'_> {
    fn what(&self) -> &'static str {
        match self {
            Norm::Layer { .. } => "layernorm",
            Norm::Rms => "rmsnorm",
        }
    }
}

/// LayerNorm or RMSNorm over the last axis (see [`layernorm`] and
/// [`crate::rmsnorm::rmsnorm`]): one code path, RMSNorm skipping the mean (one round and
/// its row-sized truncation) and beta.
pub(crate) fn normalize(
    p: &mut Party,
    x: &Shared,
    gamma: &Shared,
    norm: Norm,
    eps: f64,
    method: LayerNormMethod,
) -> Result<Shared> {
    let what = norm.what();
    let f = p.fixed().frac_bits();
    let shape = x.shape().to_vec();
    let k = *shape
        .last()
        .filter(|&&k| k > 0)
        .ok_or_else(|| Error::shape(what, format!("empty last axis in {shape:?}")))?;
    let beta = match norm {
        Norm::Layer { beta } => Some(beta),
        Norm::Rms => None,
    };
    if gamma.shape() != [k] || beta.is_some_and(|b| b.shape() != [k]) {
        let got = match beta {
            Some(b) => format!("gamma {:?} / beta {:?}", gamma.shape(), b.shape()),
            None => format!("gamma {:?}", gamma.shape()),
        };
        return Err(Error::shape(what, format!("{got} for rows of {k}")));
    }
    let n = x.len();
    let rows = n / k;
    let me = p.id();
    let p0 = me == 0;
    // Everything up to the variance runs on 2-of-2 shares held by P0 and P1 (in 3PC P2
    // deals the masks and holds zeros), so one code path serves both settings.
    let x2 = p.additive_view(x);
    let g2 = p.additive_view(gamma);
    let b2 = beta.map(|b| p.additive_view(b));
    let inv_k = enc(1.0 / k as f64, INV_K);
    // RMSNorm: a mean of zero (its masked shares still travel with P2's opening).
    let mean = if beta.is_some() {
        let sums: Vec<u64> = x2
            .chunks(k)
            .map(|r| {
                r.iter()
                    .fold(0u64, |a, v| a.wrapping_add(*v))
                    .wrapping_mul(inv_k)
            })
            .collect();
        trunc2(p, &sums, INV_K)?
    } else {
        vec![0; rows]
    };
    let d: Vec<u64> = x2
        .iter()
        .enumerate()
        .map(|(e, v)| v.wrapping_sub(mean[e / k]))
        .collect();
    let m = p.material(&Request::NormMask { rows, k })?;
    // In 3PC P2 (which dealt a) opens e = d - a to P0 and P1 for the first `via` elements.
    // Not for a pair-form x (`Shared::is_pair`): P2 holds none of it, and resharing
    // first would cost a round and n words to save 0.85 n.
    let via = if p.dealer_views() && !x.is_pair() {
        via_p2(n)
    } else {
        0
    };
    let (e, gc, ss) = if me < 2 {
        let pt = &m.parts;
        let (e, gc, _) = open_norm_masked(p, x, &d, &mean, &g2, pt, via, k)?;
        // sum_j d^2 = sum_j e^2 + 2 e a + a^2, at scale 2f, exact
        let ss: Vec<u64> = (0..rows)
            .map(|i| {
                (i * k..(i + 1) * k).fold(0u64, |acc, t| {
                    let mut v = e[t]
                        .wrapping_mul(pt[0][t])
                        .wrapping_mul(2)
                        .wrapping_add(pt[3][t]);
                    if p0 {
                        v = v.wrapping_add(e[t].wrapping_mul(e[t]));
                    }
                    acc.wrapping_add(v)
                })
            })
            .collect();
        (e, gc, ss)
    } else {
        if via > 0 {
            open_norm_masked_p2(p, x, &m.parts[0], via, k)?;
        }
        (vec![], vec![], vec![0; rows])
    };
    let r2 = if method == LayerNormMethod::Lut {
        // r = sqrt(k) / sqrt(ss + k eps): the table takes the exact sum at scale 2f
        let mut ss = ss;
        if p0 {
            let ke = enc(k as f64 * eps, 2 * f);
            ss.iter_mut().for_each(|v| *v = v.wrapping_add(ke));
        }
        rsqrt_sum2(p, &ss, k, 2 * f, SUM_BITS, f + R_EXTRA)?
    } else {
        let pre = pre_shift(beta.is_some());
        let inv_k_var = enc(1.0 / k as f64, INV_K - pre);
        let ss = trunc2(p, &ss, f)?;
        // var at scale f + VAR_EXTRA (a variance of 1e-3 keeps 2^-26 resolution)
        let mut var = trunc2(
            p,
            &ss.iter()
                .map(|v| v.wrapping_mul(inv_k_var))
                .collect::<Vec<_>>(),
            INV_K - VAR_EXTRA - pre,
        )?;
        if p0 {
            let eps = enc(eps, f + VAR_EXTRA);
            var.iter_mut().for_each(|v| *v = v.wrapping_add(eps));
        }
        rsqrt_scaled2(
            p,
            var,
            method.rsqrt(),
            f + VAR_EXTRA,
            var_bits(beta.is_some()),
        )?
    };
    let y = if me < 2 {
        let pt = &m.parts;
        let rb = open_sum(p, wsub(&r2, &pt[1]), "layernorm open r - b")?;
        // y = (e + a)(r' + b)(g' + c) at scale 3f, from the opened e, r', g' and the
        // shares of a, b, c, a², a∘b, a∘c, a∘b∘c, b⊗c: all local.
        let (a, b, c) = (&pt[0], &pt[1], &pt[2]);
        let (ab, ac, abc, bc) = (&pt[4], &pt[5], &pt[6], &pt[7]);
        let y3: Vec<u64> = (0..n)
            .into_par_iter()
            .map(|t| {
                let (i, j) = (t / k, t % k);
                let (ev, rv, gv) = (e[t], rb[i], gc[j]);
                let rg = rv.wrapping_mul(gv);
                let mut v = ev
                    .wrapping_mul(
                        rv.wrapping_mul(c[j])
                            .wrapping_add(b[i].wrapping_mul(gv))
                            .wrapping_add(bc[t]),
                    )
                    .wrapping_add(a[t].wrapping_mul(rg))
                    .wrapping_add(ac[t].wrapping_mul(rv))
                    .wrapping_add(ab[t].wrapping_mul(gv))
                    .wrapping_add(abc[t]);
                if p0 {
                    v = v.wrapping_add(ev.wrapping_mul(rg));
                }
                v
            })
            .collect();
        y3
    } else {
        vec![0; n]
    };
    // one round (n words per party) rather than the half-open truncation's two
    // (n/2 + n/128): LayerNorm's elementwise traffic is small, its rounds are not
    // LayerNorm's truncation opens only the bits above the shift (29 instead of 64 at f =
    // 16, `arith::trunc2_high`), for half the output range (module doc); RMSNorm keeps
    // the whole range for the massive-activation rows of Llama-family models.
    let shift = 2 * f + r_extra(method);
    let mut y = if beta.is_some() {
        crate::arith::trunc2_high(p, &y, shift, 64)?
    } else {
        trunc2(p, &y, shift)?
    };
    if let (true, Some(b2)) = (me < 2, &b2) {
        y.iter_mut()
            .enumerate()
            .for_each(|(t, v)| *v = v.wrapping_add(b2[t % k]));
    }
    Shared::pair(p, &shape, y)
}

/// Elements of an n-element LayerNorm whose d - a P2 opens in 3PC (the first `via_p2(n)`;
/// P0 and P1 exchange the rest), for a replicated input. Links are what the network
/// limits (bandwidth per link and direction): P0 sends P1 one word per remaining element
/// plus about 0.45n for the truncation, P2 sends each of P0 and P1 one word per element
/// it opens: 70% balances the links (0.75n against 0.7n, where P0 alone sent 1.45n) and
/// keeps the busiest party, P2, at 1.4n (issue 5's target for BERT-base, 1.17 MB, is
/// 1.49n). Before the output stayed a pair it was 85%, with n more for the reshare.
pub(crate) fn via_p2(n: usize) -> usize {
    n * 7 / 10
}

/// e, g' and the words received, from [`open_norm_masked`].
type Opened = (Vec<u64>, Vec<u64>, Vec<Vec<u64>>);

/// P0 / P1 side of the opening of e = d - a (a from [`Request::NormMask`]) and of
/// g' = gamma - c, in one round. Elements `via..` the usual way: each sends its masked
/// share of d to the other. Elements `..via` come from P2, which holds x_2 and x_0 and
/// knows a as their dealer: it sends P0 x_2 - a + s1 and P1 x_0 - a + s0 (s0, s1 per
/// row from the streams P2 shares with P0 and P1), and each of P0, P1 sends the other its
/// share of the row mean masked the same way (mean_0 + s0, mean_1 + s1; row-sized), so
/// P0 gets e = (x_0 + x_1 - mean_0) + (x_2 - a + s1) - (mean_1 + s1) and P1 the same
/// from x_1 + x_2. Every word a party receives is masked by a value it does not know
/// (a's other share, or s from a stream it does not hold), so this reveals only e, as
/// the plain opening does. Returns e, g' and the words received (for the view test).
#[allow(clippy::too_many_arguments)]
fn open_norm_masked(
    p: &mut Party,
    x: &Shared,
    d: &[u64],
    mean: &[u64],
    g2: &[u64],
    pt: &[Vec<u64>],
    via: usize,
    k: usize,
) -> Result<Opened> {
    let me = p.id();
    let n = d.len();
    let rows = mean.len();
    let my_gc = wsub(g2, &pt[2]);
    let mut mine: Vec<u64> = wsub(&d[via..], &pt[0][via..]);
    mine.extend_from_slice(&my_gc);
    let mut recvs = vec![(1 - me, mine.len())];
    if via > 0 {
        let s = p.common_words(2, rows)?;
        mine.extend(mean.iter().zip(&s).map(|(m, s)| m.wrapping_add(*s)));
        recvs[0].1 = mine.len();
        recvs.push((2, via));
    }
    let got = p.exchange(vec![(1 - me, mine)], &recvs, "layernorm open d - a, g - c")?;
    let other = &got[0];
    let mut e = Vec::with_capacity(n);
    if via > 0 {
        // what this party holds of x (P0: x_0 + x_1, P1: x_1 + x_2) less its mean share,
        // plus P2's word, less the other's masked mean share
        let (xa, xb) = x.parts();
        let xb = xb.ok_or_else(|| {
            Error::Unsupported("layernorm: a 3PC share without its second part".into())
        })?;
        let their_mean = &other[n - via + g2.len()..];
        let from2 = &got[1];
        e.extend((0..via).map(|t| {
            let i = t / k;
            xa.data()[t]
                .wrapping_add(xb.data()[t])
                .wrapping_sub(mean[i])
                .wrapping_add(from2[t])
                .wrapping_sub(their_mean[i])
        }));
    }
    e.extend((via..n).map(|t| d[t].wrapping_sub(pt[0][t]).wrapping_add(other[t - via])));
    let gc: Vec<u64> = my_gc
        .iter()
        .enumerate()
        .map(|(j, v)| v.wrapping_add(other[n - via + j]))
        .collect();
    Ok((e, gc, got))
}

/// P2's side of [`open_norm_masked`]: x_2 - a + s1 to P0, x_0 - a + s0 to P1 for the
/// first `via` elements (a: P2's view of the mask it dealt).
fn open_norm_masked_p2(p: &mut Party, x: &Shared, a: &[u64], via: usize, k: usize) -> Result<()> {
    let rows = x.len() / k;
    let s0 = p.common_words(0, rows)?;
    let s1 = p.common_words(1, rows)?;
    // P2 holds (x_2, x_0)
    let (x2, x0) = x.parts();
    let x0 = x0.ok_or_else(|| {
        Error::Unsupported("layernorm: a 3PC share without its second part".into())
    })?;
    let to = |xs: &[u64], s: &[u64]| -> Vec<u64> {
        (0..via)
            .map(|t| xs[t].wrapping_sub(a[t]).wrapping_add(s[t / k]))
            .collect()
    };
    let m0 = to(x2.data(), &s1);
    let m1 = to(x0.data(), &s0);
    p.exchange(vec![(0, m0), (1, m1)], &[], "layernorm open d - a (P2)")?;
    Ok(())
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
    let r = norm_rsqrt_plain(var + eps, x.len(), method);
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
    normalize_demand(shape, true, method, setting, frac_bits)
}

/// Exactly the material [`normalize`] consumes (`center`: LayerNorm, else RMSNorm).
pub(crate) fn normalize_demand(
    shape: &[usize],
    center: bool,
    method: LayerNormMethod,
    setting: Setting,
    frac_bits: u32,
) -> Demand {
    let f = frac_bits;
    let k = shape.last().copied().unwrap_or(1).max(1);
    let n: usize = shape.iter().product();
    let rows = n / k;
    let mut d = Demand::default();
    if center {
        trunc_demand(&mut d, rows, INV_K);
    }
    d.push(Request::NormMask { rows, k });
    if method == LayerNormMethod::Lut {
        rsqrt_sum_demand(&mut d, rows, k, f + R_EXTRA, 2 * f, SUM_BITS);
    } else {
        let pre = pre_shift(center);
        trunc_demand(&mut d, rows, f);
        trunc_demand(&mut d, rows, INV_K - VAR_EXTRA - pre);
        rsqrt_scaled_demand(
            &mut d,
            rows,
            method.rsqrt(),
            setting,
            f,
            f + VAR_EXTRA,
            var_bits(center),
        );
    }
    trunc_demand(&mut d, n, 2 * f + r_extra(method));
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

    /// What P0 and P1 receive in the 3PC opening of d - a from each other, and P2's words
    /// plus the receiver's own parts of x (x - a + s), are uniform bytes, the same
    /// whether every input is 0 or -1 (255 degrees of freedom: P(chi2 > 360) < 2e-5 under
    /// uniformity). Both paths open the same e = x - mean - a.
    #[test]
    fn the_opening_through_p2_shows_p0_and_p1_only_uniform_words() {
        use crate::arith::tests::{byte_hist, chi2_two_sample, chi2_uniform};
        let (rows, k) = (50, 800);
        let n = rows * k;
        let mut hists = vec![];
        for secret in [0u64, u64::MAX] {
            let x = Tensor::from_vec(&[rows, k], vec![secret; n]).unwrap();
            let outs = run(Setting::ThreePc, |p| {
                // P2 owns the input, so P0 and P1 know nothing of x but what they see here
                let xs = p.share_input(2, (p.id() == 2).then_some(&x), &[rows, k])?;
                let m = p.material(&Request::NormMask { rows, k })?;
                let via = via_p2(n);
                assert!(p.dealer_views() && via > 0);
                if p.id() == 2 {
                    open_norm_masked_p2(p, &xs, &m.parts[0], via, k)?;
                    return Ok((vec![], vec![], vec![]));
                }
                // 2-of-2 shares of the row means (all equal to `secret`)
                let w = p.common_words(1 - p.id(), rows)?;
                let mean: Vec<u64> = match p.id() {
                    0 => w,
                    _ => w.iter().map(|v| secret.wrapping_sub(*v)).collect(),
                };
                let x2 = p.additive_view(&xs);
                let d: Vec<u64> = (0..n).map(|t| x2[t].wrapping_sub(mean[t / k])).collect();
                let g2 = vec![0u64; k];
                let (e, _, got) = open_norm_masked(p, &xs, &d, &mean, &g2, &m.parts, via, k)?;
                // P2's words plus what this party holds of x: x - a + s, still uniform
                let (xa, xb) = xs.parts();
                let xb = xb.expect("3PC share");
                let mut seen = got[0].clone();
                seen.extend((0..via).map(|t| {
                    got[1][t]
                        .wrapping_add(xa.data()[t])
                        .wrapping_add(xb.data()[t])
                }));
                Ok((seen, e, m.parts[0].clone()))
            })
            .unwrap();
            // both paths open the same e, and e + a = x - mean = 0
            let (v0, v1) = (&outs[0].value, &outs[1].value);
            assert_eq!(v0.1, v1.1);
            for t in 0..n {
                assert_eq!(
                    v0.1[t].wrapping_add(v0.2[t]).wrapping_add(v1.2[t]),
                    0,
                    "{t}"
                );
            }
            let h = byte_hist(outs[..2].iter().flat_map(|o| &o.value.0));
            let c = chi2_uniform(&h);
            assert!(c < 360.0, "secret {secret:#x}: chi2 {c}");
            hists.push(h);
        }
        let c = chi2_two_sample(&hists[0], &hists[1]);
        assert!(c < 360.0, "the view depends on the secret: chi2 {c}");
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
                    if m != LayerNormMethod::Goldschmidt {
                        assert!(e_exact <= 1e-2, "{s:?}: {e_exact}");
                    }
                    // 6 rounds around rsqrt (mean, d - a, two variance truncations for
                    // Newton / Goldschmidt, r - b, the output's truncation; the Lut
                    // table's 3 replace the two truncations and rsqrt), plus rsqrt's own
                    // (`rsqrt::tests`: 3PC Newton 29, Goldschmidt 98, on the pair the
                    // variance is, with no reshare in or out).
                    let rounds = match (m, s) {
                        (LayerNormMethod::Lut, _) => 7,
                        (LayerNormMethod::Newton, Setting::TwoPc) => 26,
                        (LayerNormMethod::Newton, Setting::ThreePc) => 35,
                        (LayerNormMethod::Goldschmidt, Setting::TwoPc) => 72,
                        (LayerNormMethod::Goldschmidt, Setting::ThreePc) => 104,
                    };
                    if st.rounds != rounds {
                        bad.push(format!("{s:?} {m}: {} rounds", st.rounds));
                    }
                    // n-sized traffic: the opening of d - a and the final truncation
                    // (its 64 - shift bits above the shift: 2PC n + 29n/64 words for
                    // Lut); in 3PC P0 and P1 open only the last n - via elements (the
                    // output stays a pair), P2 sends 2 via; the busiest party counts. The
                    // rest is per row (rsqrt, variance, r - b: under 300 words a row) and
                    // gamma - c (k words).
                    let n = rows * k;
                    let trunc = (n * (64 - 32 - r_extra(m)) as usize).div_ceil(64);
                    let via = via_p2(n);
                    let per_n = match s {
                        Setting::TwoPc => n + trunc,
                        Setting::ThreePc => (n - via + trunc).max(2 * via),
                    };
                    let (lo, hi) = (8 * per_n, 8 * (per_n + k + 300 * rows));
                    if !(lo as u64..=hi as u64).contains(&st.online_sent) {
                        bad.push(format!(
                            "{s:?} {m}: {} bytes, not in {lo}..={hi}",
                            st.online_sent
                        ));
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
