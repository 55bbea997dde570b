//! GeLU(x) = x Phi(x) = 0.5 x (1 + erf(x / sqrt 2)), by every method of DESIGN.md §5, in
//! both settings, on whole tensors with a constant number of rounds.
//!
//! | method | what it computes | rounds (both settings) | online bytes sent per element, P0/P1 (both settings) | dealer bytes per element (P0 / P1) | max error vs exact on [-16, 16] |
//! |---|---|---|---|---|---|
//! | [`GeluMethod::Spline`] (default) | x [x >= 3.75] + q F(x), F piecewise quadratic on cells of 1/8 of [-4, 4) read by a gated 6-bit DPF lookup indexed by x on the comparison's own mask, its payload carrying the offset's mask; one coarse bit-DCF key | 3 | 6.9 | 440 / 496 | 5.2e-4 (bound 2e-3) |
//! | [`GeluMethod::SplineAbs`] | ReLU(x) - q delta(\|x\|), delta piecewise quadratic on cells of 1/8 of [-1/8, 3.75) selected by a gated 5-bit DPF lookup after the sign, one product round (the default before stop 33) | 6 | 24.25 | 376 / 488 | 5.2e-4 |
//! | [`GeluMethod::Puma`] | PUMA's 4 segments by 3 comparisons (one bit-DCF key at three points), F0 / F1 | 10 | 164.5 | 456 / 632 | 2.0e-2 |
//! | [`GeluMethod::SecFormer`] | x/2 (1 + erf), erf by 7 sines, sign outside (one bit-DCF key at two points) | 7 | 60.4 | 456 / 632 | 5.8e-2 (the published beta: erf off by 0.036 at u = 2.28) |
//! | [`GeluMethod::Quad`] | MPCFormer 0.125 x^2 + 0.5 x + 0.25 | 2 | 24 | 0 / 24 | 24 (at x = -16; polynomial) |
//! | [`GeluMethod::Relu`] | THE-X ReLU | 1 | 8 | 1040 / 1056 | 0.17 |
//!
//! (Measured figures are in each method's doc and the tests; the error column is the f64
//! definition's, [`gelu_plain`] against [`gelu_exact`].)
//!
//! ## How the settings run
//! Every method works on 2-of-2 additive shares held by P0 and P1, with party 2 dealing
//! all material (the 2PC dealer D, or P2 in 3PC, as in `crate::compare`): 3PC converts its
//! replicated input to 2-of-2 locally, runs the 2PC body with P2 dealing inline, and
//! returns a pair (`Shared::pair`): the rounds and bytes of 2PC, P2 sending nothing online;
//! a replicated product that takes the result pays its reshare. Multiplications are Beaver
//! products with dealer triples, truncations are the faithful ones of `crate::arith`
//! (1 ulp).
//!
//! ## Input range
//! All methods take |x| < 2^(31 - f) (2^15 = 32768 at f = 16), the width [`INPUT_BITS`] =
//! 32 their comparisons are keyed for (SIGMA's small-ring trick: 32-level DCF keys instead
//! of 64); inside it every method saturates gracefully (GeLU -> x above, 0 below), except
//! Quad, a polynomial, which needs |x| < 2^(30 - f) to stay in the ring, and Spline,
//! whose gate compares x - 3.75 and x + 3.625 on the same width: |x| < 2^(31 - f) - 4.

use crate::arith::{trunc2_high, trunc2_high_pieces, trunc2_ring, trunc2_ring_remainder};
use crate::compare::{
    self, drelu_bit_request, fss_material, open_masked, open_sum_rings, relu2, trunc2, wadd, wsub,
};
use rayon::prelude::*;
use std::sync::OnceLock;
use tessera::error::{Error, Result};
use tessera::fss::material::{dpf_lookup_gated, dpf_lookup_gated_pairs, FssRequest};
use tessera::preproc::{Demand, Material, Request};
use tessera::{Party, Setting, Shared};

/// Input width of every comparison key: inputs must satisfy |x| < 2^(INPUT_BITS - 1)
/// ring units, i.e. |x| < 2^(31 - f) in real terms.
pub const INPUT_BITS: u32 = 32;

/// Ring of the spline's cell-index truncation: its input |x| + a cell offset is below
/// 2^INPUT_BITS, so it is opened in INPUT_BITS + 2 bits ([`crate::arith::trunc2_ring`]).
const INDEX_RING: u32 = INPUT_BITS + 2;

/// The default method: ReLU(x) - q delta(|x|) with parabolas on cells of 1/8 on
/// [-1/8, 3.875), a 5-bit table of three (value, slope, curvature) and the gate
/// \[-3.625 <= x < 3.75\] (in units of 1/8, the comparison's granularity): |x| < 3.75
/// there (also where the coarse comparison errs, in the 1/8 below each threshold), so
/// the cell index of |x| + 1/8 (floor or one more) stays below 31. Outside, GeLU = ReLU
/// up to delta(3.625) < 5.2e-4. The first ReLU ignores the low f - 3 bits: it may pass
/// x in (-1/8, 0) unchanged, so the table starts 1 cell below 0. (Before: lines on 128
/// cells of 1/32, 7-bit table of two; same comparisons and error, 2.7x the lookup's
/// outputs.)
static SPLINE: ReluSpline = ReluSpline {
    cell_bits: 3,
    table_bits: 5,
    neg_bits: 0,
    gate_lo: -29,
    gate_hi: 30,
    delta: delta_exact,
    degree: 2,
    minimax: true,
    tables: OnceLock::new(),
    xcell_bits: XCELL_BITS,
    xtable_bits: XTABLE_BITS,
    xtables: OnceLock::new(),
    what: "gelu",
};

/// The default GeLU's x-indexed table ([`ReluSpline::xtables`]): parabolas on
/// cells of 1/8 over [-4, 4), 64 cells (a 6-bit lookup), each fitted on two cells'
/// width (6e-5, as the |x| table's). Cells of 1/4 (a 5-bit lookup, half the work) err
/// by 5.0e-4 inside the gate: measured on a BERT-base layer, max error 1.4-1.7e-3 and
/// mean 2.5e-4 against 1.1e-3 and 2.0e-4, for a GeLU as fast within the noise.
const XCELL_BITS: u32 = 3;
/// See [`XCELL_BITS`].
const XTABLE_BITS: u32 = 6;

/// SecFormer: erf(u) ~ sum_k beta_k sin(k pi u / 10) on |u| <= 2.5 (SecFormer §3.2).
const SECFORMER_BETA: [f64; 7] = [
    1.25772, -0.0299154, 0.382155, -0.0519123, 0.196033, -0.0624557, 0.118029,
];
/// SecFormer: the series is used for |x / sqrt 2| <= 2.5.
const SECFORMER_T: f64 = 2.5;
/// SecFormer: the phase period 2^S in ring units (see [`FssRequest::TrigMask`]).
const PHASE_BITS: u32 = 40;

/// PUMA's GeLU polynomials (arXiv 2307.12533, §4.2, Eq. for GeLU), coefficients of
/// x^0..x^3 (F0) and x^0..x^6 (F1).
const PUMA_F0: [f64; 4] = [
    -0.5054031199708174,
    -0.42226581151983866,
    -0.11807612951181953,
    -0.011034134030615728,
];
const PUMA_F1: [f64; 7] = [
    0.008526321541038084,
    0.5,
    0.3603292692789629,
    0.0,
    -0.037688200365904236,
    0.0,
    0.0018067462606141187,
];
/// PUMA: extra fractional bits of the public polynomial coefficients.
const PUMA_COEFF_EXTRA: u32 = 16;
/// PUMA's GeLU: breakpoints and polynomials.
static PUMA: PumaPieces = PumaPieces {
    breaks: [-4.0, -1.95, 3.0],
    f0: &PUMA_F0,
    f1: &PUMA_F1,
};

/// How GeLU is computed; every method is selectable by name (`FromStr` / `Display`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum GeluMethod {
    /// Default, accurate: GeLU(x) = x \[x >= 3.75\] + q F(x), the gate q = \[-3.625 <= x
    /// < 3.75\] and F a parabola per cell of 1/8 on [-4, 4) read by a gated 6-bit DPF
    /// lookup indexed by x itself ([`ReluSpline::eval2_x`]): 3 rounds (2PC), 6.9 B per
    /// element and party. One bit-DCF key (18 levels: it compares only the bits above
    /// the low f - 3, SIGMA's high-bit comparison) and the lookup's DPF share ONE mask
    /// ([`FssRequest::CmpLutSq`]), so the comparison's opening of x + r also gives the
    /// lookup's masked index and the cell offset's masked value; the DPF's payload (1,
    /// beta, beta^2) carries the offset's mask, so the parabola needs no product; the
    /// key evaluated at x - 3.75 and x + 3.625 gives the selection bit and the gate
    /// (which picks the DPF's subtree, so no clip comparison is needed). Max error vs
    /// exact 5.2e-4 (bound 2e-3): delta(3.625) is dropped outside the gate; the cells'
    /// own fit errs by 6e-5 inside (SIGMA, Gupta et al. PETS'24, §5, reads an 8-bit
    /// table of GeLU off its comparison's masked input too, without interpolation).
    /// Before stop 33: [`GeluMethod::SplineAbs`], 6 rounds and 24.25 B.
    #[default]
    Spline,
    /// PUMA (arXiv 2307.12533, §4.2): 0 below -4, F0 on [-4, -1.95), F1 (degree 6) on
    /// [-1.95, 3], x above 3; the segments are selected by three comparisons (one bit-DCF
    /// key per element evaluated at the three breakpoints, `FssRequest::DreluMulti`: 456 B
    /// of keys per element instead of three 33-bit payload DCFs' 2424 B, for one more
    /// round), the polynomials on shared powers, the selection by one batched Beaver
    /// product.
    Puma,
    /// SecFormer (arXiv 2401.00793, §3.2): x/2 (1 + erf(x / sqrt 2)), erf by the 7-term
    /// Fourier sine series on |u| <= 2.5 with secure sines from dealt sin/cos of a random
    /// phase ([`FssRequest::TrigMask`]), +-1 outside by two comparisons (one bit-DCF key
    /// at two points, as for Puma).
    SecFormer,
    /// MPCFormer (arXiv 2211.01452, §3 "Quad"): 0.125 x^2 + 0.5 x + 0.25, the variant of
    /// its released code (the paper prints 0.25 x for the linear term; the code's 0.5 x
    /// has GeLU's slope at 0 and is what the distilled checkpoints were trained with).
    /// For distilled models only.
    Quad,
    /// THE-X (Chen et al., Findings of ACL 2022, §3.2): ReLU in place of GeLU, one FSS
    /// ReLU. For fine-tuned models only.
    Relu,
    /// The default before stop 33: GeLU(x) = ReLU(x) - q delta(|x|), the |x|-indexed
    /// parabolas on cells of 1/8 (a 5-bit lookup of three tables, L = 1) evaluated with
    /// one product round after the sign's round, the cell truncation and the index's
    /// opening: 6 rounds and 24.25 B per element and party, against [`GeluMethod::Spline`]'s
    /// 3 and 6.9 B, for a lookup of under a quarter of the work (5 bits, L = 1); the same error.
    SplineAbs,
}

method_names!(GeluMethod, "GeLU", [
    Spline => "spline",
    Puma => "puma",
    SecFormer => "secformer",
    Quad => "quad",
    Relu => "relu",
    SplineAbs => "spline-abs",
]);

/// erf(x), accurate to ~1e-15 absolute: erf(x) = 2/sqrt(pi) e^(-x^2) sum_n 2^n x^(2n+1) /
/// (1 3 5 ... (2n+1)) (all terms positive, no cancellation), and +-1 beyond |x| = 6.
fn erf(x: f64) -> f64 {
    let a = x.abs();
    if a >= 6.0 {
        return x.signum();
    }
    let mut term = a;
    let mut sum = a;
    let mut n = 0.0;
    while term > 1e-17 * sum {
        n += 1.0;
        term *= 2.0 * a * a / (2.0 * n + 1.0);
        sum += term;
    }
    let v = 2.0 / std::f64::consts::PI.sqrt() * (-a * a).exp() * sum;
    v.min(1.0).copysign(x)
}

/// Exact GeLU: 0.5 x (1 + erf(x / sqrt 2)) with an accurate erf (~1e-15).
pub fn gelu_exact(x: f64) -> f64 {
    0.5 * x * (1.0 + erf(x / std::f64::consts::SQRT_2))
}

/// delta(y) = y Phi(-y): ReLU(y) - GeLU(y) for y >= 0, and y - GeLU(y) for y < 0 (the
/// value the default method needs when its coarse ReLU passes a small negative x).
fn delta_exact(y: f64) -> f64 {
    0.5 * y * (1.0 - erf(y / std::f64::consts::SQRT_2))
}

/// ReLU(x) - q delta(|x|) with delta(y) = ReLU(y) - F(y) for y >= 0 an even correction
/// that vanishes beyond the gate, and q = \[lo <= x < hi\]: the structure of the default
/// GeLU (SIGMA, Gupta et al. PETS'24, §5) shared by every activation of that shape
/// (GeLU, SiLU). delta is piecewise linear (or quadratic, [`Self::degree`]) on cells of
/// width h = 2^-cell_bits, the cell's polynomial read from a gated 2^table_bits-entry
/// DPF lookup (value and slope, and curvature) and evaluated with one product round (or,
/// degree 2 with `local`, none: the lookup's payload carries the offset's mask).
/// The lookup's cost grows with the table's outputs, so a degree-2 spline on 4x wider
/// cells does the same accuracy for ~40% of the outputs. The comparisons ignore the low
/// f - cell_bits + neg_bits bits, so they are exact up to g = 2^(neg_bits - cell_bits)
/// (the gate bounds are multiples of g), and the first ReLU may pass x in (-g, 0)
/// unchanged: the table starts N = 2^neg_bits cells below 0, where delta(y) must be
/// y - F(y) (for an odd-part-identity activation such as GeLU or SiLU, delta(y) =
/// y s(-y) for every y, with F(y) = y s(y)).
pub(crate) struct ReluSpline {
    /// Cells of width 2^-cell_bits.
    pub(crate) cell_bits: u32,
    /// log2 of the number of cells.
    pub(crate) table_bits: u32,
    /// log2 of the number of cells below 0, and the comparisons' coarseness.
    pub(crate) neg_bits: u32,
    /// The gate \[lo, hi) in units of g = 2^(neg_bits - cell_bits).
    pub(crate) gate_lo: i64,
    /// See `gate_lo`.
    pub(crate) gate_hi: i64,
    /// delta(y) = ReLU(y) - F(y) (y >= 0) and y - F(y) (y < 0).
    pub(crate) delta: fn(f64) -> f64,
    /// Degree of each cell's polynomial: 1 (a line, one Beaver product) or 2 (value, slope
    /// and curvature: three tables, [`Request::LinSq`]'s product of the same round
    /// count, one word per element more each way; or, `local`, no product at all).
    pub(crate) degree: u32,
    /// Fit each cell near-minimax instead of by least squares: degree 1, the chord's slope
    /// with the intercept halving the largest deviation (minimax for a convex or concave
    /// window); degree 2, interpolation at the window's three Chebyshev nodes (within a
    /// few percent of minimax for a smooth function).
    pub(crate) minimax: bool,
    /// The fitted tables, computed once.
    pub(crate) tables: OnceLock<[Vec<f64>; 3]>,
    /// Cells of width 2^-xcell_bits in the x-indexed tables ([`Self::eval2_x`], the
    /// default GeLU and SiLU).
    pub(crate) xcell_bits: u32,
    /// log2 of the number of x-indexed cells (half of them below 0).
    pub(crate) xtable_bits: u32,
    /// The x-indexed tables ([`Self::xtables`]), computed once.
    pub(crate) xtables: OnceLock<[Vec<f64>; 3]>,
    /// Label of the exchanges and errors.
    pub(crate) what: &'static str,
}

impl ReluSpline {
    fn cells(&self) -> usize {
        1 << self.table_bits
    }

    fn neg_cells(&self) -> usize {
        1 << self.neg_bits
    }

    /// The x-indexed cells' width.
    fn xh(&self) -> f64 {
        1.0 / f64::from(1u32 << self.xcell_bits)
    }

    /// The x-indexed cells below 0, H (half of them).
    fn xneg(&self) -> usize {
        1 << (self.xtable_bits - 1)
    }

    /// Cell width h.
    fn h(&self) -> f64 {
        1.0 / f64::from(1u32 << self.cell_bits)
    }

    /// The comparison granularity g.
    fn g(&self) -> f64 {
        2f64.powi(self.neg_bits as i32 - self.cell_bits as i32)
    }

    /// The gate's thresholds as reals.
    pub(crate) fn gate_bounds(&self) -> (f64, f64) {
        (
            self.gate_lo as f64 * self.g(),
            self.gate_hi as f64 * self.g(),
        )
    }

    /// The largest cell index a gated input can reach (floor(|x| / h) + N + 1 for the
    /// largest |x| the coarse gate lets in: hi, or g - lo); below [`Self::cells`].
    pub(crate) fn max_gated_cell(&self) -> usize {
        let (lo, hi) = self.gate_bounds();
        let top = hi.max(self.g() - lo);
        // |x| < top strictly
        ((top / self.h()).ceil() as usize - 1) + self.neg_cells() + 1
    }

    /// The tables: cell j is the polynomial a_j + b_j u (+ c_j u^2), u = y - (j - N) h,
    /// fitted by least squares (or near-minimax, [`Self::minimax`]) to delta on
    /// [(j - N - 1) h, (j - N + 1) h) (from -N h), the window in which y lies when the
    /// faithful truncation of y + N h returns j (floor or one more; y >= -N h because the
    /// coarse ReLU errs only on x in (-N h, 0)). Cells above [`Self::max_gated_cell`] are
    /// never gated in. For degree 1 the c table is zero.
    pub(crate) fn tables(&self) -> &[Vec<f64>; 3] {
        self.tables.get_or_init(|| {
            let neg = self.neg_cells();
            let h = self.h();
            self.fit(h, self.cells(), neg, Some(-(neg as f64) * h), self.delta)
        })
    }

    /// The tables of the x-indexed spline ([`Self::eval2_x`]): 2^xtable_bits cells of
    /// width h = 2^-xcell_bits on [-H h, H h), H = 2^(xtable_bits - 1), cell j the
    /// polynomial in u = x - (j - H) h fitted
    /// to F(x) = x - delta(x) (the activation itself, both signs) on [(j - H - 1) h,
    /// (j - H + 1) h), where x lies when the cell of x + H h is read as j (floor or one
    /// more).
    pub(crate) fn xtables(&self) -> &[Vec<f64>; 3] {
        self.xtables.get_or_init(|| {
            let d = self.delta;
            self.fit(self.xh(), 2 * self.xneg(), self.xneg(), None, move |x| {
                x - d(x)
            })
        })
    }

    /// Cell polynomials of `func` for `cells` cells of width `h`, cell j in u = y - (j -
    /// neg) h on the window [(j - neg - 1) h, (j - neg + 1) h), its low end clamped at
    /// `floor` where given (see [`Self::tables`]).
    fn fit(
        &self,
        h: f64,
        cells: usize,
        neg: usize,
        floor: Option<f64>,
        func: impl Fn(f64) -> f64,
    ) -> [Vec<f64>; 3] {
        let neg = neg as f64;
        let mut t = [vec![0.0; cells], vec![0.0; cells], vec![0.0; cells]];
        for k in 0..cells {
            let c = (k as f64 - neg) * h;
            let (lo, hi) = (floor.map_or(c - h, |f| (c - h).max(f)), c + h);
            let m = 256;
            let at = |i: usize| lo + (hi - lo) * i as f64 / m as f64;
            let d = &func;
            let [a, b, q] = match (self.degree, self.minimax) {
                (1, true) => {
                    let slope = (d(hi) - d(lo)) / (hi - lo);
                    let (mut rlo, mut rhi) = (f64::INFINITY, f64::NEG_INFINITY);
                    for i in 0..=m {
                        let r = d(at(i)) - slope * (at(i) - c);
                        rlo = rlo.min(r);
                        rhi = rhi.max(r);
                    }
                    [(rlo + rhi) / 2.0, slope, 0.0]
                }
                (1, false) => {
                    let (mut sx, mut sy, mut sxx, mut sxy) = (0.0, 0.0, 0.0, 0.0);
                    for i in 0..=m {
                        let y = at(i);
                        let (u, v) = (y - c, d(y));
                        sx += u;
                        sy += v;
                        sxx += u * u;
                        sxy += u * v;
                    }
                    let cnt = (m + 1) as f64;
                    let slope = (cnt * sxy - sx * sy) / (cnt * sxx - sx * sx);
                    [(sy - slope * sx) / cnt, slope, 0.0]
                }
                (_, true) => {
                    // Newton form through the Chebyshev nodes u0, u1, u2, expanded.
                    let u: [f64; 3] = std::array::from_fn(|i| {
                        let t = ((2 * i + 1) as f64 * std::f64::consts::PI / 6.0).cos();
                        (lo + hi) / 2.0 + (hi - lo) / 2.0 * t - c
                    });
                    let v = u.map(|ui| d(ui + c));
                    let f01 = (v[1] - v[0]) / (u[1] - u[0]);
                    let f12 = (v[2] - v[1]) / (u[2] - u[1]);
                    let f012 = (f12 - f01) / (u[2] - u[0]);
                    [
                        v[0] - f01 * u[0] + f012 * u[0] * u[1],
                        f01 - f012 * (u[0] + u[1]),
                        f012,
                    ]
                }
                (_, false) => {
                    // Least squares by the 3 x 3 normal equations (Cramer's rule).
                    let mut g = [[0.0f64; 3]; 3];
                    let mut r = [0.0f64; 3];
                    for i in 0..=m {
                        let y = at(i);
                        let u = y - c;
                        let pw = [1.0, u, u * u];
                        for (j, gj) in g.iter_mut().enumerate() {
                            for (l, gjl) in gj.iter_mut().enumerate() {
                                *gjl += pw[j] * pw[l];
                            }
                            r[j] += pw[j] * d(y);
                        }
                    }
                    let det = |m: &[[f64; 3]; 3]| {
                        m[0][0] * (m[1][1] * m[2][2] - m[1][2] * m[2][1])
                            - m[0][1] * (m[1][0] * m[2][2] - m[1][2] * m[2][0])
                            + m[0][2] * (m[1][0] * m[2][1] - m[1][1] * m[2][0])
                    };
                    let dg = det(&g);
                    std::array::from_fn(|col| {
                        let mut mc = g;
                        for (row, rv) in mc.iter_mut().zip(r) {
                            row[col] = rv;
                        }
                        det(&mc) / dg
                    })
                }
            };
            t[0][k] = a;
            t[1][k] = b;
            t[2][k] = q;
        }
        t
    }

    /// The f64 definition: ReLU(x) outside the gate, ReLU(x) minus the polynomial of cell
    /// floor(|x| / h) inside (the secure version may use the next cell, whose polynomial
    /// also fits there).
    pub(crate) fn plain(&self, x: f64) -> f64 {
        let [a, b, c] = self.tables();
        let (lo, hi) = self.gate_bounds();
        if x < lo || x >= hi {
            return x.max(0.0);
        }
        let y = x.abs();
        let h = self.h();
        let k = ((y / h).floor() as usize + self.neg_cells()).min(self.cells() - 1);
        let u = y - (k as f64 - self.neg_cells() as f64) * h;
        x.max(0.0) - (a[k] + u * (b[k] + u * c[k]))
    }

    /// The f64 definition of the x-indexed spline ([`Self::eval2_x`]): ReLU(x) outside the
    /// gate, the polynomial of x-cell floor(x / h) + H of [`Self::xtables`] inside (the
    /// secure version may use the next cell, whose polynomial also fits there).
    pub(crate) fn plain_x(&self, x: f64) -> f64 {
        let [a, b, c] = self.xtables();
        let (lo, hi) = self.gate_bounds();
        if x < lo || x >= hi {
            return x.max(0.0);
        }
        let (h, neg) = (self.xh(), self.xneg() as f64);
        let k = ((x / h).floor() + neg).clamp(0.0, 2.0 * neg - 1.0) as usize;
        let u = x - (k as f64 - neg) * h;
        a[k] + u * (b[k] + u * c[k])
    }

    /// The material of [`Self::eval2_x`]: one comparison-and-lookup request on one mask.
    fn x_request(&self, n: usize, f: u32) -> FssRequest {
        FssRequest::CmpLutSq {
            n,
            bits: INPUT_BITS,
            skip: f - self.cell_bits + self.neg_bits,
            table_bits: self.xtable_bits,
            shift: f - self.xcell_bits,
        }
    }

    /// The ring of the x-indexed cell's value q F 2^3f: |F| < 2^e on the gate (e = 2
    /// for GeLU, |F| < 3.75; 4 for SiLU, |F| < 15), so 3f + 3 + e bits leave
    /// [`crate::arith::trunc2_high`] its margin.
    fn xring(&self, f: u32) -> u32 {
        let (lo, hi) = self.gate_bounds();
        let top = (hi.max(self.g() - lo) + self.xh()).log2().ceil().max(0.0) as u32;
        (3 * f + 3 + top).min(64)
    }

    /// Exactly the material [`Self::eval2_x`] consumes for n elements.
    pub(crate) fn demand_x(&self, n: usize, f: u32) -> Vec<Request> {
        vec![
            Request::Fss(self.x_request(n, f)),
            Request::Trunc {
                n,
                shift: 2 * f,
                bits: self.xring(f),
            },
        ]
    }

    /// Exactly the material [`Self::eval2`] consumes for n elements.
    pub(crate) fn demand(&self, n: usize, f: u32) -> Vec<Request> {
        let sh = f.saturating_sub(self.cell_bits);
        let bits = self.table_bits;
        let index = Request::Trunc {
            n,
            shift: sh,
            bits: INDEX_RING,
        };
        let cmp = Request::Fss(drelu_bit_request(n, INPUT_BITS, sh + self.neg_bits));
        let last = Request::Trunc {
            n,
            shift: 2 * f,
            bits: Self::poly_ring(f),
        };
        if self.degree == 2 {
            return vec![
                cmp,
                Request::Fss(FssRequest::LutGate { n, bits }),
                Request::TruncLinSq {
                    n,
                    shift: sh,
                    bits: INDEX_RING,
                },
                last,
            ];
        }
        vec![
            cmp,
            Request::Fss(FssRequest::LutGate { n, bits }),
            index,
            Request::Beaver { n },
            Request::Trunc {
                n,
                shift: f,
                bits: 64,
            },
        ]
    }

    /// The ring of a degree-2 cell's evaluation: q delta 2^3f (|delta| < 2) is computed
    /// mod 2^(3f + 3) only, so its openings (the offset, the two factors) carry 3f + 3
    /// bits instead of 64 (51 at f = 16); its truncation by 2f opens only the f + 3 bits
    /// above the shift ([`crate::arith::trunc2_high`], which needs |delta| < 1: delta is
    /// the cell's approximation of relu(x) - gelu(x) in [0, 0.17], or relu(x) - silu(x)
    /// in [0, 0.28], within the spline's error).
    fn poly_ring(f: u32) -> u32 {
        (3 * f + 3).min(64)
    }

    /// The cell index z = trunc(x, sh) in Z_2^INDEX_RING from a [`Request::TruncLinSq`],
    /// with the [`Request::LinSq`]-shaped masks of the cell's product (alpha1, alpha2,
    /// beta, beta², alpha1 beta, alpha2 beta, alpha2 beta²) and the opened u - beta: the
    /// truncation's correction makes u = x - 2^sh z = (c mod 2^sh) - (r mod 2^sh)
    /// exactly, and beta = -(r mod 2^sh), so u - beta is c's low bits, already open (the
    /// 3f + 3 bits of its own opening saved). Party 2 deals and gets zeros.
    fn cell_index_fused(
        &self,
        p: &mut Party,
        x: &[u64],
        sh: u32,
    ) -> Result<(Vec<u64>, Option<Material>, Vec<u64>)> {
        let n = x.len();
        let req = Request::TruncLinSq {
            n,
            shift: sh,
            bits: INDEX_RING,
        };
        let mut m = p.material(&req)?;
        let me = p.id();
        if me >= 2 {
            return Ok((vec![0; n], None, vec![]));
        }
        let (z, u_beta) = trunc2_ring_remainder(p, x, &m.parts, 3, sh, INDEX_RING)?;
        let parts = [1, 2, 5, 6, 7, 8, 9].map(|j| std::mem::take(&mut m.parts[j]));
        Ok((
            z,
            Some(Material {
                parts: parts.to_vec(),
            }),
            u_beta,
        ))
    }

    /// Errors unless f leaves room for the cells and the comparisons' integer part.
    pub(crate) fn check(&self, f: u32) -> Result<()> {
        if f <= self.cell_bits {
            return Err(Error::Unsupported(format!(
                "{} spline needs more than {} fractional bits, got {f}",
                self.what, self.cell_bits
            )));
        }
        if self.degree == 2 && self.xring(f) >= 64 {
            return Err(Error::Unsupported(format!(
                "{} spline: its degree-2 cells are summed at scale 3f, which {f} fractional bits overflow",
                self.what
            )));
        }
        let (lo, hi) = self.gate_bounds();
        let (xh, xneg) = (self.xh(), self.xneg());
        if (hi / xh).ceil() as usize >= xneg || lo - self.g() < -xh * xneg as f64 {
            return Err(Error::Unsupported(format!(
                "{} spline: the gate [{lo}, {hi}) leaves the x-indexed table",
                self.what
            )));
        }
        if self.max_gated_cell() >= self.cells() {
            return Err(Error::Unsupported(format!(
                "{} spline: the gate lets in cell {} of a {}-cell table",
                self.what,
                self.max_gated_cell(),
                self.cells()
            )));
        }
        Ok(())
    }

    /// On 2-of-2 shares: ReLU(x) - q delta(|x|) with a DPF-selected polynomial per cell,
    /// q = \[lo <= x < hi\].
    ///
    /// One bit-DCF key on x serves three comparisons ([`compare::drelu_bits2`] at the
    /// shifts 0, hi, lo, Boyle et al. EC'21 §4's several-points use of one comparison
    /// key): the opened d xor rho gives ReLU(x) by selection, and q = DReLU(x - lo) xor
    /// DReLU(x - hi) is XOR-shared with rho cancelled, opened under the gated lookup's
    /// sigma and used to pick the DPF subtree, so the table entries are zero outside the
    /// gate. There is no clip of the cell index: outside the gate the (wrapped) cell's
    /// subtree is simply not the one holding the DPF's point. Rounds (2PC): open 1, bits
    /// 1, truncation 1, lookup 1, product 1, truncation 1; words per party 6n + 2n / 64
    /// for degree 1 (its cell truncation in INDEX_RING bits). Degree 2 masks the offset
    /// u with the cell truncation's own mask ([`Request::TruncLinSq`]: u - beta is the
    /// truncation's opened low bits, see `cell_index_fused`), so its product a + b u +
    /// c u^2 takes one round after the lookup, and truncates by 2f at the end: the same
    /// rounds. Its openings are in small rings (`compare::open_sum_rings`): the index in
    /// table_bits, the cell truncation in INDEX_RING, the product's two factors and the
    /// last truncation in 3f + 3 bits (the cell's value q delta 2^3f is computed mod
    /// 2^(3f+3) only), whose opening carries only the f + 3 bits above its shift 2f
    /// ([`crate::arith::trunc2_high`]), and the comparison's own opening in INPUT_BITS
    /// (`compare::select_opened` lifts the ReLU from it): 32 + 2 + 34 + table_bits +
    /// 2 (3f + 3) + f + 3 bits per element, 24.25 B at f = 16 (30.6 with u - beta opened
    /// on its own, 34.6 with a 64-bit comparison opening too, 38.6 with the whole last
    /// opening, 56.25 in 64-bit openings). (Stop 29-32's `spline-wan` put the offset's
    /// mask into the lookup's payload instead: 5 rounds, 17.9 B; [`Self::eval2_x`]
    /// replaced it.)
    pub(crate) fn eval2(&self, p: &mut Party, y: &[u64], f: u32) -> Result<Vec<u64>> {
        let n = y.len();
        let sh = f - self.cell_bits;
        let neg = self.neg_cells() as u64;
        let me = p.id();
        let unit = |v: i64| (v << (sh + self.neg_bits)) as u64;
        let shifts = [0, unit(self.gate_hi), unit(self.gate_lo)];
        // relu(x) (coarse: or x itself for x in (-N 2^sh, 0)) and the gate.
        let cmp = compare::drelu_bits2(p, y, INPUT_BITS, sh + self.neg_bits, &shifts)?;
        let bits = self.table_bits;
        // LutGate's parts: r, w (its own word, the gate's mask sigma), keys.
        let gate = fss_material(p, FssRequest::LutGate { n, bits })?;
        let (r, qhat) = match (&cmp, &gate) {
            (Some((m, c, e)), Some(g)) => {
                let mut bits = e[0].clone();
                bits.extend((0..n).map(|i| e[1][i] ^ e[2][i] ^ (g.parts[1][i] & 1) as u8));
                let label = format!("{} bits open", self.what);
                let open = compare::open_bits(p, &bits, &label)?;
                let (e0, qh) = open.split_at(n);
                (
                    compare::select_opened(me == 0, c, e0, m, INPUT_BITS),
                    qh.to_vec(),
                )
            }
            _ => (vec![0; n], vec![]),
        };
        // a = 2 relu(x) - x = |x| (or x for small negative x).
        let a = wsub(&scale(&r, 2), y);
        // Cell index z = floor(a / 2^sh) + N or one more (a >= -N 2^sh: z >= 0).
        let cell = public(p, n, neg << sh);
        // |a| < 2^(INPUT_BITS - 1) + the offset: the truncation's ring is INPUT_BITS + 2.
        // The default degree-2 cell takes its product masks from the truncation's own
        // (`Request::TruncLinSq`): u - beta is then the opened value's low sh bits.
        let fused = self.degree == 2;
        let (z, lin, u_beta) = if fused {
            self.cell_index_fused(p, &wadd(&a, &cell), sh)?
        } else {
            let z = trunc2_ring(p, &wadd(&a, &cell), sh, INDEX_RING)?;
            (z, None, vec![])
        };
        // u = a - (z - N) 2^sh (ring units, |u| < 2^(sh + 1)).
        let u = wsub(&wadd(&a, &cell), &scale(&z, 1u64 << sh));
        let tabs: Vec<Vec<u64>> = self.tables()[..self.degree as usize + 1]
            .iter()
            .map(|t| t.iter().map(|&v| enc(v, f)).collect())
            .collect();
        let trefs: Vec<&[u64]> = tabs.iter().map(|t| t.as_slice()).collect();
        if self.degree == 2 {
            let ring = Self::poly_ring(f);
            let Some(g) = &gate else {
                // Party 2 deals; its result is zeros.
                trunc2_high(p, &vec![0; n], 2 * f, ring)?;
                return Ok(vec![0; n]);
            };
            // The lookup's masked index (table_bits bits); u - beta is the truncation's
            // opened low bits.
            let parts = vec![(wadd(&z, &g.parts[0]), self.table_bits)];
            let mut open = open_sum_rings(p, parts, &format!("{} lut open", self.what))?;
            let du = u_beta;
            let ci = open.pop().unwrap_or_default();
            // q (a0 2^2f + b0 u 2^f + c0 u^2) at scale 3f, mod 2^ring, truncated by 2f.
            let w: Vec<u64> = match &lin {
                None => {
                    return Err(Error::Preprocessing(format!(
                        "{}: the cell truncation dealt no product masks",
                        self.what
                    )))
                }
                Some(lin) => {
                    // The lookup runs piece by piece as the product's opening goes out
                    // (`lin_sq2`), so its compute overlaps the factors' transfer.
                    let keys = &g.parts[2];
                    let kw = keys.len() / n.max(1);
                    let mut a0 = vec![0u64; n];
                    let factors = |r: std::ops::Range<usize>| -> Result<[Vec<u64>; 2]> {
                        let t = dpf_lookup_gated(
                            &keys[r.start * kw..r.end * kw],
                            &ci[r.clone()],
                            &qhat[r.clone()],
                            &trefs,
                        )?;
                        let [t0, t1, t2]: [Vec<u64>; 3] = t.try_into().map_err(|_| {
                            Error::Preprocessing(format!("{}: cell lookup outputs", self.what))
                        })?;
                        a0[r].copy_from_slice(&t0);
                        Ok([t1, t2])
                    };
                    let w = lin_sq2(p, n, factors, &du, lin, ring, self.what)?;
                    w.iter()
                        .zip(&a0)
                        .map(|(&v, &a0)| v.wrapping_add(a0 << (2 * f)))
                        .collect()
                }
            };
            let d = trunc2_high(p, &w, 2 * f, ring)?;
            return Ok(wsub(&r, &d));
        }
        let [a0, b0] = match &gate {
            Some(g) => lut2x_gated(p, &z, g, &qhat, trefs[0], trefs[1], self.what)?,
            None => [vec![0; n], vec![0; n]],
        };
        // q delta 2^f = q a0 2^f + q b0 u.
        let prod = mul2(p, &b0, &u)?;
        let v = wsub(&scale(&wsub(&r, &a0), 1u64 << f), &prod);
        trunc2(p, &v, f)
    }
}

impl ReluSpline {
    /// The default GeLU and SiLU, on 2-of-2 shares: x [x >= hi] + q F(x) with q = \[lo <=
    /// x < hi\] and F read from a table indexed by x itself (both signs, 2^xtable_bits
    /// cells: [`Self::xtables`]) rather than by |x|, so that nothing waits for the sign:
    /// 3 rounds (2PC).
    ///
    /// 1. Open c = x + r mod 2^INPUT_BITS ([`FssRequest::CmpLutSq`]: one mask for the
    ///    comparison and the lookup). The bit DCF at c - hi and c - lo gives XOR shares of
    ///    d_hi xor rho and d_lo xor rho; the cell of x + H h is read from c as ((c + o) >>
    ///    sh) mod 2^xtable_bits, masked by r's bits sh.. (the dealer's index mask),
    ///    and its offset u as (c + o) mod 2^sh = u - beta, beta = -(r mod 2^sh) (floor or
    ///    one more, as a faithful truncation: the tables fit two cells' width).
    /// 2. Open d_hi xor rho and q xor sigma (two bits). x [x >= hi] is a selection from c
    ///    ([`compare::select_opened`]: d_hi = 1 implies x > 0, where its lift holds); the
    ///    gated lookup, payload (1, beta, beta^2), returns q a, q b, q c, q b beta, q c
    ///    beta, q c beta^2 at the cell, so q (a + b u + c u^2) is local ([`cell_poly`]).
    /// 3. Truncate that by 2f, opening its f + 3 + e bits above the shift
    ///    ([`crate::arith::trunc2_high`] in 3f + 3 + e bits, [`Self::xring`]).
    ///
    /// The gate and the selection read the same coarse bit d_hi, so where the comparison
    /// errs (the g below hi) the output is x, within delta(hi - g) of F, as the |x|
    /// spline's ReLU there. Bytes per element and party: INPUT_BITS + 2 + f + 3 + e bits
    /// (6.9 B for GeLU at f = 16) against 24.25 B and 6 rounds for [`Self::eval2`]; the
    /// price is a lookup whose leaves convert three payload words per slot (2.5x the
    /// L = 1 lookup at the same width), over x's cells instead of |x|'s (twice as many).
    /// The
    /// comparison key runs on each piece of c as it lands, and the lookup piece by piece
    /// as the last truncation's opening goes out ([`Party::exchange_pieces`]), so both
    /// overlap transfers. (SIGMA, Gupta et al. PETS'24, §5, likewise reads its GeLU
    /// table off the comparison's masked input, with no interpolation.)
    pub(crate) fn eval2_x(&self, p: &mut Party, y: &[u64], f: u32) -> Result<Vec<u64>> {
        let n = y.len();
        let sh = f - self.xcell_bits;
        let skip = f - self.cell_bits + self.neg_bits;
        let ring = self.xring(f);
        let req = self.x_request(n, f);
        let Some(m) = fss_material(p, req.clone())? else {
            // Party 2 deals; its result is zeros.
            trunc2_high(p, &vec![0; n], 2 * f, ring)?;
            return Ok(vec![0; n]);
        };
        let first = p.id() == 0;
        let unit = |v: i64| (v << skip) as u64;
        let shifts = [unit(self.gate_hi), unit(self.gate_lo)];
        let (cmp_keys, lut_keys) = req.split_clamp_keys(&m.parts[8])?;
        let ckw = cmp_keys.len() / n.max(1);
        // The comparison key runs on each piece of c as it lands.
        let mut e = [vec![0u8; n], vec![0u8; n]];
        let c = compare::open_sum_ring_pieces_then(
            p,
            n,
            1,
            INPUT_BITS,
            |r| Ok(wadd(&y[r.clone()], &m.parts[0][r])),
            |r, c| {
                let bits = compare::drelu_share_bits(
                    first,
                    &c[r.clone()],
                    &shifts,
                    INPUT_BITS,
                    skip,
                    &cmp_keys[r.start * ckw..r.end * ckw],
                    &[&m.parts[6][r.clone()]],
                )?;
                for (dst, src) in e.iter_mut().zip(bits) {
                    dst[r.clone()].copy_from_slice(&src);
                }
                Ok(())
            },
            &format!("{} open", self.what),
        )?;
        let mut bits = e[0].clone();
        bits.extend((0..n).map(|i| e[0][i] ^ e[1][i] ^ (m.parts[7][i] & 1) as u8));
        let open = compare::open_bits(p, &bits, &format!("{} bits open", self.what))?;
        let (e_hi, qhat) = open.split_at(n);
        let above = compare::select_opened(first, &c, e_hi, &m, INPUT_BITS);
        let o = (self.xneg() as u64) << sh;
        let idx_mask = (1u64 << self.xtable_bits) - 1;
        let ci: Vec<u64> = c
            .iter()
            .map(|&v| (v.wrapping_add(o) >> sh) & idx_mask)
            .collect();
        let du: Vec<u64> = c
            .iter()
            .map(|&v| v.wrapping_add(o) & ((1u64 << sh) - 1))
            .collect();
        let tabs: Vec<Vec<u64>> = self
            .xtables()
            .iter()
            .map(|t| t.iter().map(|&v| enc(v, f)).collect())
            .collect();
        let trefs: Vec<&[u64]> = tabs.iter().map(|t| t.as_slice()).collect();
        // The lookup runs piece by piece as the truncation's opening goes out.
        let kw = lut_keys.len() / n.max(1);
        let d = trunc2_high_pieces(
            p,
            n,
            |r| {
                let t = dpf_lookup_gated_pairs(
                    &lut_keys[r.start * kw..r.end * kw],
                    &ci[r.clone()],
                    &qhat[r.clone()],
                    &trefs,
                    &CELL_PRODUCTS,
                )?;
                Ok(cell_poly(&t, &du[r], f))
            },
            2 * f,
            ring,
        )?;
        Ok(wadd(&above, &d))
    }
}

/// Shares of x1 y 2^f + x2 y^2 mod 2^ring for 2-of-2 shares x1, x2 of n elements and
/// y - beta already opened (mod 2^ring) as `du` ([`Request::LinSq`] material `m`): one
/// round, 2 ring / 64 words per element and party (the openings of x1 - alpha1 and
/// x2 - alpha2 mod 2^ring; the result is only correct mod 2^ring, for a truncation in
/// that ring). `factors(range)` gives x1 and x2 on a range of elements: the opening goes
/// in pieces ([`compare::open_sum_ring_pieces`]), so the work that forms the factors
/// (the cell's lookup) overlaps their transfer. P0 and P1 only.
fn lin_sq2(
    p: &mut Party,
    n: usize,
    mut factors: impl FnMut(std::ops::Range<usize>) -> Result<[Vec<u64>; 2]>,
    du: &[u64],
    m: &Material,
    ring: u32,
    what: &str,
) -> Result<Vec<u64>> {
    let first = p.id() == 0;
    let f = p.fixed().frac_bits();
    let [al1, al2, be, be2, a1b, a2b, a2b2] = std::array::from_fn(|i| &m.parts[i][..]);
    let e = compare::open_sum_ring_pieces(
        p,
        n,
        2,
        ring,
        |r| {
            let [x1, x2] = factors(r.clone())?;
            let mut mine = wsub(&x1, &al1[r.clone()]);
            mine.extend(wsub(&x2, &al2[r]));
            Ok(mine)
        },
        &format!("{what} poly product"),
    )?;
    Ok((0..n)
        .into_par_iter()
        .map(|i| {
            let (e1, e2) = (e[i], e[n + i]);
            let d = du[i];
            let d2 = d.wrapping_mul(d);
            // x1 y = e1 d + e1 beta + alpha1 d + alpha1 beta
            let mut p1 = e1
                .wrapping_mul(be[i])
                .wrapping_add(d.wrapping_mul(al1[i]))
                .wrapping_add(a1b[i]);
            // x2 y^2 = e2 d^2 + 2 e2 d beta + e2 beta^2 + alpha2 d^2 + 2 d alpha2 beta
            //          + alpha2 beta^2
            let mut p2 = e2
                .wrapping_mul(d.wrapping_mul(be[i]).wrapping_mul(2))
                .wrapping_add(e2.wrapping_mul(be2[i]))
                .wrapping_add(d2.wrapping_mul(al2[i]))
                .wrapping_add(d.wrapping_mul(a2b[i]).wrapping_mul(2))
                .wrapping_add(a2b2[i]);
            if first {
                p1 = p1.wrapping_add(e1.wrapping_mul(d));
                p2 = p2.wrapping_add(e2.wrapping_mul(d2));
            }
            (p1 << f).wrapping_add(p2)
        })
        .collect())
}

/// The (payload word, table) products a degree-2 cell takes from its
/// [`FssRequest::CmpLutSq`] lookup of the tables a, b, c: a, b, c, b beta, c beta,
/// c beta^2.
const CELL_PRODUCTS: [(usize, usize); 6] = [(0, 0), (0, 1), (0, 2), (1, 1), (1, 2), (2, 2)];

/// Shares of q (a 2^2f + b u 2^f + c u^2) (mod 2^64, correct mod 2^k) from a
/// [`FssRequest::CmpLutSq`] lookup `t` of [`CELL_PRODUCTS`] and du = u - beta opened
/// mod 2^k: with u = du + beta,
/// b u = b du + (b beta) and c u^2 = c du^2 + 2 du (c beta) + (c beta^2), all local. The
/// result is only correct mod 2^k (du is), for a truncation in that ring. This is what
/// replaced a Beaver-style product round (opening b - alpha and c - alpha' in 2 x 51 bits
/// per element): the dealer puts beta into the DPF's payload instead.
fn cell_poly(t: &[Vec<u64>], du: &[u64], f: u32) -> Vec<u64> {
    let (a, b, c, bb, cb, cbb) = (&t[0], &t[1], &t[2], &t[3], &t[4], &t[5]);
    (0..du.len())
        .into_par_iter()
        .map(|i| {
            let d = du[i];
            let bu = b[i].wrapping_mul(d).wrapping_add(bb[i]);
            let cu2 = c[i]
                .wrapping_mul(d.wrapping_mul(d))
                .wrapping_add(d.wrapping_mul(cb[i]).wrapping_mul(2))
                .wrapping_add(cbb[i]);
            (a[i] << (2 * f)).wrapping_add(bu << f).wrapping_add(cu2)
        })
        .collect()
}

/// PUMA's four-piece activations (arXiv 2307.12533, §4.2): 0 below t0, the polynomial
/// F0 on [t0, t1), F1 on [t1, t2], x above t2 (GeLU; SiLU in its LLaMA benchmark), F0
/// and F1 of degree at most 6 without an x^5 term. The pieces are selected by three
/// comparisons (one bit-DCF key per element evaluated at the three breakpoints,
/// `FssRequest::DreluMulti`), the polynomials evaluated on shared powers (x^2; x^4 and,
/// where a coefficient needs it, x^3; x^6) with public coefficients at scale
/// f + 16, the selection by one batched Beaver product.
pub(crate) struct PumaPieces {
    /// t0 < t1 < t2.
    pub(crate) breaks: [f64; 3],
    /// Coefficients of x^0.. of F0.
    pub(crate) f0: &'static [f64],
    /// Coefficients of x^0.. of F1.
    pub(crate) f1: &'static [f64],
}

impl PumaPieces {
    /// Whether some coefficient of x^k is non-zero.
    fn uses(&self, k: usize) -> bool {
        [self.f0, self.f1]
            .iter()
            .any(|c| c.get(k).is_some_and(|&v| v != 0.0))
    }

    /// Highest power used.
    fn degree(&self) -> usize {
        (0..=6).filter(|&k| self.uses(k)).max().unwrap_or(0)
    }

    /// The f64 definition.
    pub(crate) fn plain(&self, x: f64) -> f64 {
        let b = &self.breaks;
        if x < b[0] {
            0.0
        } else if x < b[1] {
            poly(self.f0, x)
        } else if x <= b[2] {
            poly(self.f1, x)
        } else {
            x
        }
    }

    /// Exactly the material [`Self::eval2`] consumes for n elements.
    pub(crate) fn demand(&self, n: usize, f: u32) -> Vec<Request> {
        let mut v = vec![
            Request::Fss(FssRequest::DreluMulti {
                n,
                bits: INPUT_BITS + 1,
                k: 3,
            }),
            Request::Beaver { n },
            Request::Trunc {
                n,
                shift: f,
                bits: 64,
            },
        ];
        let deg = self.degree();
        if deg >= 3 {
            let m = if self.uses(3) && deg >= 4 { 2 * n } else { n };
            v.push(Request::Beaver { n: m });
            v.push(Request::Trunc {
                n: m,
                shift: f,
                bits: 64,
            });
        }
        if deg >= 6 {
            v.push(Request::Beaver { n });
            v.push(Request::Trunc {
                n,
                shift: f,
                bits: 64,
            });
        }
        v.push(Request::Trunc {
            n: 2 * n,
            shift: f + PUMA_COEFF_EXTRA,
            bits: 64,
        });
        v.push(Request::Beaver { n: 3 * n });
        v
    }

    /// On 2-of-2 shares: three comparisons, the powers, the two polynomials, selection.
    /// Rounds (2PC, degree 6): comparisons 2, x^2 2, x^4 (with x^3) 2, x^6 2,
    /// polynomials 1, selection 1.
    pub(crate) fn eval2(&self, p: &mut Party, y: &[u64], f: u32) -> Result<Vec<u64>> {
        let n = y.len();
        let deg = self.degree();
        if deg > 6 || self.uses(5) {
            return Err(Error::Unsupported(
                "PUMA pieces: degree above 6 or an x^5 term".into(),
            ));
        }
        // [x < t0] = 1 - [x >= t0], [x < t1], [x > t2] = [x >= t2 + 2^-f]: one key.
        let ts = [
            enc(self.breaks[0], f),
            enc(self.breaks[1], f),
            enc(self.breaks[2], f).wrapping_add(1),
        ];
        let ge = compare::ge_consts2(p, y, INPUT_BITS + 1, &ts)?;
        let one = public(p, n, 1);
        let (b0, b1, b2) = (&wsub(&one, &ge[0]), &wsub(&one, &ge[1]), &ge[2]);
        let sq = mul2(p, y, y)?;
        let x2 = trunc2(p, &sq, f)?;
        let mut pw: [Vec<u64>; 7] = Default::default();
        if deg >= 3 {
            // x^3 and x^4 (or only the one used) in one batched product.
            let (with3, with4) = (self.uses(3), deg >= 4);
            let (mut l, mut r) = (vec![], vec![]);
            if with3 {
                l.extend_from_slice(&x2);
                r.extend_from_slice(y);
            }
            if with4 {
                l.extend_from_slice(&x2);
                r.extend_from_slice(&x2);
            }
            let prod = mul2(p, &l, &r)?;
            let mut x34 = trunc2(p, &prod, f)?;
            if with4 {
                pw[4] = x34.split_off(x34.len() - n);
            }
            if with3 {
                pw[3] = x34;
            }
        }
        if deg >= 6 {
            let prod = mul2(p, &pw[4], &x2)?;
            pw[6] = trunc2(p, &prod, f)?;
        }
        pw[1] = y.to_vec();
        pw[2] = x2;
        // F0, F1 with coefficients at scale f + PUMA_COEFF_EXTRA (f alone would leave a
        // 0.3% error on GeLU's 0.0018 x^6 term), truncated together.
        let cf = f + PUMA_COEFF_EXTRA;
        let eval = |p: &Party, c: &[f64]| -> Vec<u64> {
            let mut acc = public(p, n, enc(c[0], f + cf));
            for (k, &ck) in c.iter().enumerate().skip(1) {
                if ck != 0.0 {
                    acc = wadd(&acc, &scale(&pw[k], enc(ck, cf)));
                }
            }
            acc
        };
        let mut fs = eval(p, self.f0);
        fs.extend(eval(p, self.f1));
        let fs = trunc2(p, &fs, cf)?;
        // (b1 - b0) F0 + (1 - b1 - b2) F1 + b2 x.
        let mut sel = wsub(b1, b0);
        sel.extend(wsub(&wsub(&public(p, n, 1), b1), b2));
        sel.extend_from_slice(b2);
        let mut vals = fs;
        vals.extend_from_slice(y);
        let prod = mul2(p, &sel, &vals)?;
        Ok(wadd(&wadd(&prod[..n], &prod[n..2 * n]), &prod[2 * n..]))
    }
}

fn secformer_erf(x: f64) -> f64 {
    let u = x / std::f64::consts::SQRT_2;
    if u.abs() > SECFORMER_T {
        return u.signum();
    }
    SECFORMER_BETA
        .iter()
        .enumerate()
        .map(|(k, b)| b * ((k + 1) as f64 * std::f64::consts::PI * u / 10.0).sin())
        .sum()
}

pub(crate) fn poly(c: &[f64], x: f64) -> f64 {
    c.iter().rev().fold(0.0, |acc, &v| acc * x + v)
}

/// The approximation's own f64 definition (what [`gelu`] computes, up to its fixed-point
/// rounding). For [`GeluMethod::Spline`] the cell is floor(32 |x|) (the secure version may
/// use the next cell, whose line also fits there: see the tables).
pub fn gelu_plain(x: f64, method: GeluMethod) -> f64 {
    match method {
        GeluMethod::Spline => SPLINE.plain_x(x),
        GeluMethod::SplineAbs => SPLINE.plain(x),
        GeluMethod::Puma => PUMA.plain(x),
        GeluMethod::SecFormer => 0.5 * x * (1.0 + secformer_erf(x)),
        GeluMethod::Quad => 0.125 * x * x + 0.5 * x + 0.25,
        GeluMethod::Relu => x.max(0.0),
    }
}

/// Fixed-point encoding of a real (round to nearest), as a ring element.
pub(crate) fn enc(v: f64, f: u32) -> u64 {
    (v * 2f64.powi(f as i32)).round() as i64 as u64
}

/// Exactly the material [`gelu`] consumes for `n` elements (the same in both settings:
/// party 2 deals everything to P0 and P1).
pub fn gelu_demand(n: usize, method: GeluMethod, setting: Setting, frac_bits: u32) -> Demand {
    let _ = setting; // the same material in both settings
    let f = frac_bits;
    let fss = |r: FssRequest| Request::Fss(r);
    let v = match method {
        GeluMethod::Spline => SPLINE.demand_x(n, f),
        GeluMethod::SplineAbs => SPLINE.demand(n, f),
        GeluMethod::Puma => PUMA.demand(n, f),
        GeluMethod::SecFormer => vec![
            fss(FssRequest::TrigMask {
                n,
                terms: SECFORMER_BETA.len() as u32,
                period_bits: PHASE_BITS,
                frac_bits: f,
            }),
            Request::Trunc {
                n,
                shift: f,
                bits: 64,
            },
            fss(FssRequest::DreluMulti {
                n,
                bits: INPUT_BITS + 1,
                k: 2,
            }),
            Request::Beaver { n },
            Request::Beaver { n },
            Request::Trunc {
                n,
                shift: f + 1,
                bits: 64,
            },
        ],
        GeluMethod::Quad => vec![
            Request::Beaver { n },
            Request::Trunc {
                n,
                shift: f + 3,
                bits: 64,
            },
        ],
        GeluMethod::Relu => vec![fss(FssRequest::Relu {
            n,
            bits: INPUT_BITS,
        })],
    };
    Demand(v)
}

/// GeLU of a shared fixed-point tensor (the session's scale f) by `method`; same shape.
///
/// Needs |x| < 2^(31 - f) (see the module doc; Quad: |x| < 2^(30 - f), Spline:
/// |x| < 2^(31 - f) - 4). Rounds per call:
/// Spline 3, SplineAbs 6, Puma 10, SecFormer 7, Quad 2, Relu 1, in both settings; bytes
/// in the module table. Consumes exactly [`gelu_demand`].
pub fn gelu(p: &mut Party, x: &Shared, method: GeluMethod) -> Result<Shared> {
    let f = p.fixed().frac_bits();
    if matches!(method, GeluMethod::Spline | GeluMethod::SplineAbs) {
        SPLINE.check(f)?;
    }
    if f + 2 > INPUT_BITS {
        return Err(Error::Unsupported(format!(
            "gelu: {f} fractional bits leave no integer part in {INPUT_BITS}-bit inputs"
        )));
    }
    let y = p.additive_view(x);
    let z = match method {
        GeluMethod::Spline => SPLINE.eval2_x(p, &y, f)?,
        GeluMethod::SplineAbs => SPLINE.eval2(p, &y, f)?,
        GeluMethod::Puma => PUMA.eval2(p, &y, f)?,
        GeluMethod::SecFormer => secformer2(p, &y, f)?,
        GeluMethod::Quad => quad2(p, &y, f, 0.25)?,
        GeluMethod::Relu => relu2(p, &y, INPUT_BITS)?,
    };
    Shared::pair(p, x.shape(), z)
}

// ---- 2-of-2 building blocks (P0, P1 compute; party 2 only deals and gets zeros) ----

fn computes(p: &Party) -> bool {
    p.id() < 2
}

/// The public constant c as P0's share (P1: 0).
pub(crate) fn public(p: &Party, n: usize, c: u64) -> Vec<u64> {
    vec![if p.id() == 0 { c } else { 0 }; n]
}

pub(crate) fn scale(v: &[u64], c: u64) -> Vec<u64> {
    v.iter().map(|x| x.wrapping_mul(c)).collect()
}

/// Beaver product of 2-of-2 shares (one round, 2n words per party).
pub(crate) fn mul2(p: &mut Party, x: &[u64], y: &[u64]) -> Result<Vec<u64>> {
    let n = x.len();
    let m = p.material(&Request::Beaver { n })?;
    if !computes(p) {
        return Ok(vec![0; n]);
    }
    let (a, b, c) = (&m.parts[0], &m.parts[1], &m.parts[2]);
    let me = p.id();
    let mut msg = wsub(x, a);
    msg.extend(wsub(y, b));
    let other = p
        .exchange(
            vec![(1 - me, msg.clone())],
            &[(1 - me, 2 * n)],
            "gelu beaver",
        )?
        .remove(0);
    let first = me == 0;
    Ok((0..n)
        .into_par_iter()
        .map(|i| {
            let e = msg[i].wrapping_add(other[i]);
            let d = msg[n + i].wrapping_add(other[n + i]);
            let mut z = c[i]
                .wrapping_add(e.wrapping_mul(b[i]))
                .wrapping_add(d.wrapping_mul(a[i]));
            if first {
                z = z.wrapping_add(e.wrapping_mul(d));
            }
            z
        })
        .collect())
}

/// Two public tables looked up at one 2-of-2 shared index (mod 2^bits, Boyle et al. EC'21
/// §3.2 as `crate::lut`), gated by a secret bit q ([`FssRequest::LutGate`], material `g` fetched by
/// the caller): `qhat` = q xor sigma is already open; shares of q t0\[idx\], q t1\[idx\].
/// One round, n words per party.
fn lut2x_gated(
    p: &mut Party,
    idx: &[u64],
    g: &Material,
    qhat: &[u8],
    t0: &[u64],
    t1: &[u64],
    what: &str,
) -> Result<[Vec<u64>; 2]> {
    let c = open_masked(p, idx, &g.parts[0], &format!("{what} lut open"))?;
    let mut v = dpf_lookup_gated(&g.parts[2], &c, qhat, &[t0, t1])?;
    let b = v.pop().expect("two tables");
    let a = v.pop().expect("two tables");
    Ok([a, b])
}

// ---- the methods on 2-of-2 shares ----

/// SecFormer: secure sines of the phase x / (20 sqrt 2) from one masked opening, the
/// series, sign outside, then x/2 (1 + erf).
/// Rounds (2PC): phase opening 1, series truncation 1, comparisons 2, selection 1,
/// product 1, truncation 1.
fn secformer2(p: &mut Party, y: &[u64], f: u32) -> Result<Vec<u64>> {
    let n = y.len();
    let terms = SECFORMER_BETA.len();
    // Period of sin(pi u / 10), u = x / sqrt 2, in x: P = 20 sqrt 2. Phase w = x_ring K
    // with K = round(2^S / (2^f P)): w / 2^S = x / P (relative error < 1e-6).
    let period = 20.0 * std::f64::consts::SQRT_2;
    let k_mul = (2f64.powi((PHASE_BITS - f) as i32) / period).round() as u64;
    let w = scale(y, k_mul);
    let Some(m) = fss_material(
        p,
        FssRequest::TrigMask {
            n,
            terms: terms as u32,
            period_bits: PHASE_BITS,
            frac_bits: f,
        },
    )?
    else {
        // Party 2 in 3PC: deal the rest in step.
        trunc2(p, &vec![0; n], f)?;
        compare::ge_consts2(p, &vec![0; n], INPUT_BITS + 1, &[0, 0])?;
        mul2(p, &vec![0; n], &vec![0; n])?;
        mul2(p, &vec![0; n], &vec![0; n])?;
        return trunc2(p, &vec![0; n], f + 1);
    };
    let c = open_masked(p, &w, &m.parts[0], "secformer phase open")?;
    let pmask = (1u64 << PHASE_BITS) - 1;
    let unit = std::f64::consts::TAU / 2f64.powi(PHASE_BITS as i32);
    let series: Vec<u64> = (0..n)
        .into_par_iter()
        .map(|i| {
            let a = ((c[i] & pmask) as f64) * unit;
            let mut acc = 0u64;
            for (k, beta) in SECFORMER_BETA.iter().enumerate() {
                let ka = (k + 1) as f64 * a;
                let (sa, ca) = ka.sin_cos();
                // beta sin(k(a - t)) = beta sin(ka) cos(kt) - beta cos(ka) sin(kt)
                let cs = m.parts[1 + terms + k][i];
                let sn = m.parts[1 + k][i];
                acc = acc
                    .wrapping_add(enc(beta * sa, f).wrapping_mul(cs))
                    .wrapping_sub(enc(beta * ca, f).wrapping_mul(sn));
            }
            acc
        })
        .collect();
    let series = trunc2(p, &series, f)?;
    // [x < -T sqrt 2] = 1 - [x >= -T sqrt 2] and [x > T sqrt 2]: one key.
    let xt = enc(SECFORMER_T * std::f64::consts::SQRT_2, f);
    let ge = compare::ge_consts2(
        p,
        y,
        INPUT_BITS + 1,
        &[xt.wrapping_neg(), xt.wrapping_add(1)],
    )?;
    let lo = &wsub(&public(p, n, 1), &ge[0]);
    let hi = &ge[1];
    // erf = series (1 - hi - lo) + (hi - lo) 2^f
    let inside = wsub(&wsub(&public(p, n, 1), hi), lo);
    let erf = wadd(
        &mul2(p, &inside, &series)?,
        &scale(&wsub(hi, lo), 1u64 << f),
    );
    // x/2 (1 + erf): product at scale 2f, truncated by f + 1.
    let onep = wadd(&erf, &public(p, n, 1u64 << f));
    let prod = mul2(p, y, &onep)?;
    trunc2(p, &prod, f + 1)
}

/// Quad: (x^2 + 4 x) / 8 + c0 with one product and one truncation by f + 3 (GeLU's
/// MPCFormer c0 = 0.25, SiLU's least-squares c0).
pub(crate) fn quad2(p: &mut Party, y: &[u64], f: u32, c0: f64) -> Result<Vec<u64>> {
    let n = y.len();
    let sq = mul2(p, y, y)?;
    let v = wadd(&sq, &scale(y, 4u64 << f));
    let t = trunc2(p, &v, f + 3)?;
    Ok(wadd(&t, &public(p, n, enc(c0, f))))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::compare::tests::{max_stats, SETTINGS};
    use tessera::runtime::{run, run_parties};
    use tessera::{FixedPoint, MaterialMode, SessionOptions, Tensor};

    /// Rounds of each method, in both settings (3PC returns a pair: no reshare).
    fn rounds(m: GeluMethod) -> u64 {
        match m {
            GeluMethod::Spline => 3,
            GeluMethod::SplineAbs => 6,
            GeluMethod::Puma => 10,
            GeluMethod::SecFormer => 7,
            GeluMethod::Quad => 2,
            GeluMethod::Relu => 1,
        }
    }

    /// Online bytes a degree-2 [`ReluSpline`] sends per party (P0 or P1) for n elements
    /// at f fractional bits: the comparison's opening (INPUT_BITS: ReLU selects with
    /// the opened value, lifted), two bits, then
    /// - the |x| spline: the cell truncation in INDEX_RING bits, the lookup's index
    ///   (table bits), the product's two openings (3f + 3 bits each; the offset's is the
    ///   truncation's) and the final truncation by 2f (the f + 3 bits above the shift);
    /// - `local` (the x-indexed spline): only the final truncation, the f + 3 + e bits
    ///   above its shift ([`ReluSpline::xring`]);
    ///
    /// every vector packed to whole words.
    pub(crate) fn spline_bytes(n: u64, s: &ReluSpline, f: u32, local: bool) -> u64 {
        let w = |count: u64, bits: u32| (count * u64::from(bits)).div_ceil(64);
        let head = w(n, INPUT_BITS) + w(2 * n, 1);
        if local {
            return 8 * (head + w(n, s.xring(f) - 2 * f));
        }
        let ring = 3 * f + 3;
        8 * (head + w(n, INDEX_RING) + w(n, s.table_bits) + w(2 * n, ring) + w(n, f + 3))
    }

    /// Online bytes sent by P0 / P1 for n elements, in both settings.
    fn bytes(m: GeluMethod, n: u64) -> u64 {
        let w33 = |n: u64| (n * u64::from(INPUT_BITS + 1)).div_ceil(64);
        n * match m {
            GeluMethod::Spline => return spline_bytes(n, &SPLINE, 16, true),
            GeluMethod::SplineAbs => return spline_bytes(n, &SPLINE, 16, false),
            // one opening for the thresholds in INPUT_BITS + 1 bits, their bits packed
            // 64 to a word
            GeluMethod::Puma => {
                return 160 * n + 8 * (w33(n) + (3 * n).div_ceil(64));
            }
            GeluMethod::SecFormer => return 56 * n + 8 * (w33(n) + (2 * n).div_ceil(64)),
            GeluMethod::Quad => 24,
            GeluMethod::Relu => 8,
        }
    }

    fn grid() -> Vec<f64> {
        let mut v: Vec<f64> = (0..=3200).map(|i| -16.0 + i as f64 * 0.01).collect();
        let mut r = crate::compare::tests::rng();
        use rand::Rng;
        v.extend((0..800).map(|_| r.gen_range(-6.0..6.0)));
        v.extend([
            0.0,
            1.0 / 65536.0,
            -1.0 / 65536.0,
            3.625,
            -3.625,
            3.75,
            -3.75,
            3.7499,
            -3.6251,
            3.96875,
            4.0,
            -4.0,
            1.95,
            -1.95,
        ]);
        v
    }

    /// Runs gelu on `xs`, returns the decoded outputs and the op's max counters.
    fn secure(s: Setting, xs: &[f64], m: GeluMethod) -> (Vec<f64>, tessera::CommStats, bool) {
        let fx = FixedPoint::default();
        let n = xs.len();
        let x = Tensor::from_vec(&[n], fx.encode_slice(xs).unwrap()).unwrap();
        let f = fx.frac_bits();
        let outs = run(s, |p| {
            let xs = p.share_input(0, (p.id() == 0).then_some(&x), &[n])?;
            let before = p.stats();
            let z = gelu(p, &xs, m)?;
            let st = p.stats().since(&before);
            let ok = p.consumed_demand() == gelu_demand(n, m, s, f);
            Ok((p.open(&z)?, st, ok))
        })
        .unwrap();
        let st = max_stats(&outs.iter().map(|o| o.value.1).collect::<Vec<_>>());
        let ok = outs.iter().take(2).all(|o| o.value.2);
        let z = outs[0]
            .value
            .0
            .data()
            .iter()
            .map(|&v| fx.decode(v))
            .collect();
        let per = |q: usize| outs[q].value.1.offline_recv as f64 / n as f64;
        eprintln!(
            "{m} {s}: dealer bytes per element P0 {:.1} P1 {:.1}",
            per(0),
            per(1)
        );
        (z, st, ok)
    }

    /// [`secure`], checking the consumed demand against `gelu_demand` and the rounds and
    /// bytes against [`rounds`] and [`bytes`] (the same in 3PC, whose result is a pair).
    fn secure_counted(s: Setting, xs: &[f64], m: GeluMethod) -> Vec<f64> {
        let n = xs.len() as u64;
        let (z, st, demand_ok) = secure(s, xs, m);
        assert!(demand_ok, "{m} {s}: consumed demand != gelu_demand");
        assert_eq!(st.rounds, rounds(m), "{m} {s}");
        assert_eq!(st.online_sent, bytes(m, n), "{m} {s}");
        z
    }

    #[test]
    fn every_method_matches_its_definition_with_stated_rounds_bytes_and_demand() {
        let xs = grid();
        for &m in GeluMethod::ALL {
            for s in SETTINGS {
                let z = secure_counted(s, &xs, m);
                let (mut own, mut exact) = (0.0f64, 0.0f64);
                let fx = FixedPoint::default();
                for (x, got) in xs.iter().zip(&z) {
                    // The definition at the encoded input (PUMA's pieces jump at breaks).
                    let xe = fx.decode(fx.encode(*x).unwrap());
                    own = own.max((got - gelu_plain(xe, m)).abs());
                    exact = exact.max((got - gelu_exact(*x)).abs());
                }
                eprintln!("{m} {s}: max err vs own definition {own:.2e}, vs exact {exact:.2e}");
                assert!(own <= 1e-3, "{m} {s}: {own}");
                if matches!(m, GeluMethod::Spline | GeluMethod::SplineAbs) {
                    // delta(3.625) = 5.2e-4 dropped outside the gate, plus a few ulps
                    assert!(exact <= 5.6e-4, "{s}: {exact}");
                }
            }
        }
    }

    #[test]
    fn spline_with_its_product_opened_in_pieces_matches_its_definition() {
        // 30 000 inputs: the cell product's opening (2 x 51 bits each, 383 KB) goes in two
        // pieces, each formed by its own part of the lookup. Same bound and bytes as one
        // message ([`every_method_matches_its_definition_with_stated_rounds_bytes_and_demand`]).
        use rand::Rng;
        let mut r = crate::compare::tests::rng();
        let xs: Vec<f64> = (0..30_000).map(|_| r.gen_range(-9.0..9.0)).collect();
        let m = GeluMethod::Spline;
        for s in SETTINGS {
            let z = secure_counted(s, &xs, m);
            let exact = xs
                .iter()
                .zip(&z)
                .map(|(x, got)| (got - gelu_exact(*x)).abs())
                .fold(0.0, f64::max);
            assert!(exact <= 5.6e-4, "{s}: {exact}");
        }
    }

    #[test]
    fn plaintext_definitions_and_errors_against_exact() {
        // erf against known values.
        assert!((erf(0.5) - 0.520_499_877_813_046_5).abs() < 1e-14);
        assert!((erf(2.0) - 0.995_322_265_018_952_7).abs() < 1e-14);
        assert!((gelu_exact(1.0) - 0.841_344_746_068_542_9).abs() < 1e-14);
        let errs: Vec<(GeluMethod, f64)> = GeluMethod::ALL
            .iter()
            .map(|&m| {
                let e = (0..=320_000)
                    .map(|i| -16.0 + i as f64 * 1e-4)
                    .map(|x| (gelu_plain(x, m) - gelu_exact(x)).abs())
                    .fold(0.0, f64::max);
                eprintln!("{m}: f64 definition max |err| vs exact on [-16, 16] = {e:.3e}");
                (m, e)
            })
            .collect();
        assert!(errs[0].1 < 1e-3);
        // Inside the gate only the cells' fit errs: the |x| table's and the x-indexed
        // table's parabolas on cells of 1/8, each fitted on two cells' width, by 6e-5,
        // well within the gate's 5.2e-4 outside.
        let fit = |g: &dyn Fn(f64) -> f64| {
            (0..=70_000)
                .map(|i| -3.5 + i as f64 * 1e-4)
                .map(|x| (g(x) - gelu_exact(x)).abs())
                .fold(0.0, f64::max)
        };
        let (abs, x) = (fit(&|x| SPLINE.plain(x)), fit(&|x| SPLINE.plain_x(x)));
        eprintln!("spline cells: max |err| on [-3.5, 3.5]: |x| table {abs:.3e}, x table {x:.3e}");
        assert!(abs < 1e-4 && x < 1e-4, "{abs} {x}");
        for m in GeluMethod::ALL {
            assert_eq!(m.to_string().parse::<GeluMethod>().unwrap(), *m);
        }
        assert_eq!(GeluMethod::default(), GeluMethod::Spline);
        assert!("gelu".parse::<GeluMethod>().is_err());
    }

    #[test]
    fn large_inputs_saturate() {
        let xs = [
            16.5, -16.5, 100.0, -100.0, 1000.0, -1000.0, 30000.0, -30000.0, 32763.0, -32763.0,
        ];
        for s in SETTINGS {
            for m in [
                GeluMethod::Spline,
                GeluMethod::Puma,
                GeluMethod::SecFormer,
                GeluMethod::Relu,
            ] {
                let (z, _, _) = secure(s, &xs, m);
                for (x, got) in xs.iter().zip(&z) {
                    let want = x.max(0.0);
                    assert!((got - want).abs() <= 1e-3, "{m} {s}: gelu({x}) = {got}");
                }
            }
        }
    }

    #[test]
    fn planned_material_matches_the_demand() {
        let xs = grid();
        let fx = FixedPoint::default();
        let n = xs.len();
        let x = Tensor::from_vec(&[n], fx.encode_slice(&xs).unwrap()).unwrap();
        for s in SETTINGS {
            let mut d = Demand::default();
            for &m in GeluMethod::ALL {
                d.extend(gelu_demand(n, m, s, fx.frac_bits()));
            }
            let opts = SessionOptions {
                material: MaterialMode::Planned(d),
                ..Default::default()
            };
            let outs = run_parties(s, opts, |p| {
                let xs = p.share_public(&x);
                let mut v = vec![];
                for &m in GeluMethod::ALL {
                    let z = gelu(p, &xs, m)?;
                    v.push(p.open(&z)?);
                }
                Ok(v)
            })
            .unwrap();
            for (m, z) in GeluMethod::ALL.iter().zip(&outs[0].value) {
                for (a, b) in x.data().iter().zip(z.data()) {
                    let want = gelu_plain(fx.decode(*a), *m);
                    assert!((fx.decode(*b) - want).abs() <= 1e-3, "{m} {s}");
                }
            }
            for o in &outs {
                assert_eq!(o.stats.offline_recv, 0, "{s}: material came live");
            }
        }
    }
}
