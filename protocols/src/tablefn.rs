//! Normalise-and-look-up: g(x) for a positive x of a wide dynamic range in six rounds, for
//! the row-sized inputs of the normalisations (LayerNorm's variance, RMSNorm's mean
//! square: 1/sqrt) and of softmax (the row sums: 1/x).
//!
//! x lies in one of a few public segments (binades, or pairs of binades for 1/sqrt, whose
//! even exponent keeps the square root of the scale exact). One DCF spline
//! ([`crate::spline`], Boyle et al. EC'21 §4.2) selects per element the segment's
//! power-of-two multiplier m and its table base q 2^b; c = x m 2^-K then lies in
//! [c_min, 1). One product and ONE opening give both c (at scale 28) and its cell
//! z = floor(c 2^b) (the two faithful truncations share the message,
//! [`crate::arith::trunc2_many`]); one DPF lookup on q 2^b + z ([`crate::lut`]) returns the
//! value and the slope of g on that cell (the secant through its ends); one product with
//! the offset c - z 2^-b and one truncation finish. Rounds (2PC): spline 1, product 1,
//! truncations 1, lookup 1, product 1, truncation 1 = 6; 3PC runs the same on 2-of-2
//! shares with P2 dealing (the callers keep their data in that form).
//!
//! Why a table and not iterations: SIGMA (ePrint 2023/1269 §5) reads its reciprocal square
//! root off a table too. The inputs here are row-sized (128 rows for 98 k elements in a
//! BERT layer), so the DPF's full-domain evaluation over a 2^12-2^13 entry table costs
//! milliseconds, while each Newton or Goldschmidt iteration costs two rounds: 20 rounds of
//! rsqrt and 11 of reciprocal become 6 each.
//!
//! Accuracy: the secant's error on a cell of width h is at most h^2 max|g''| / 8; the
//! faithful truncation may round z up by one, so the secant of the next cell is used
//! slightly outside it (up to one cell: at most 4x). The callers state the measured
//! figures.

use crate::arith;
use crate::compare::{fss_material, open_masked, wadd, wsub};
use crate::exp::{enc, spline_demand, step_spline, trunc_demand, HI};
use crate::gelu::mul2;
use crate::spline;
use tessera::error::{Error, Result};
use tessera::fss::material::{dpf_lookup, FssRequest};
use tessera::preproc::{Demand, Request};
use tessera::Party;

/// One normalise-and-look-up function (see the module doc).
pub(crate) struct SegTable {
    /// Spline breakpoints between segments (ring values at the input's scale).
    pub breaks: Vec<u64>,
    /// Per segment: the multiplier m with c = x m 2^-(fk - input scale) in [c_min, 1).
    pub mult: Vec<u64>,
    /// Scale of x m.
    pub fk: u32,
    /// Width of the input's comparison.
    pub bits: u32,
    /// log2 of the cells over c in [0, 1).
    pub cell_bits: u32,
    /// (value, slope) per entry q 2^cell_bits + z, in reals.
    pub table: Vec<(f64, f64)>,
    /// Index width of the table.
    pub index_bits: u32,
}

impl SegTable {
    /// Builds the table of g(q, c) (segment q, normalised c in [c_min, 1)).
    ///
    /// Entry z >= c_min 2^b of segment q: the secant of g(q, .) over [z h, (z + 1) h).
    /// Entry 0 of segment q >= 1 is reached when the truncation rounds c ~ 1 of segment
    /// q - 1 up to z = 2^b: it holds that segment's top-cell secant anchored at c = 1
    /// (the offset c - 1 is then slightly negative). Cells of segment 0 below c_min are reached by inputs below the lowest
    /// segment: they saturate at g(0, c_min), slope 0 (so do the unreachable ones of other
    /// segments, at their own bottom).
    pub fn new(
        breaks: Vec<u64>,
        mult: Vec<u64>,
        fk: u32,
        bits: u32,
        cell_bits: u32,
        c_min: f64,
        g: &dyn Fn(usize, f64) -> f64,
    ) -> SegTable {
        let nseg = mult.len();
        let cells = 1usize << cell_bits;
        let h = 1.0 / cells as f64;
        let index_bits = usize::BITS - (nseg * cells).leading_zeros();
        let secant = |q: usize, z: usize| {
            let (a, b) = (z as f64 * h, (z + 1) as f64 * h);
            (g(q, a), (g(q, b) - g(q, a)) / h)
        };
        let lowest = (c_min * cells as f64) as usize;
        let sat = (g(0, c_min), 0.0);
        let mut table = vec![sat; 1 << index_bits];
        for q in 0..=nseg {
            for z in 0..cells {
                let i = q * cells + z;
                if i >= table.len() {
                    break;
                }
                table[i] = if q < nseg && z >= lowest {
                    secant(q, z)
                } else if q >= 1 && z == 0 {
                    // the top cell's secant, anchored at its right end c = 1 (the offset
                    // is measured from z h = 1 there)
                    (g(q - 1, 1.0), secant(q - 1, cells - 1).1)
                } else if q == 0 {
                    sat
                } else {
                    (g(q.min(nseg - 1), c_min), 0.0)
                };
            }
        }
        SegTable {
            breaks,
            mult,
            fk,
            bits,
            cell_bits,
            table,
            index_bits,
        }
    }

    /// Extra fractional bits of the slope for an output at scale `out`, so that value +
    /// slope * offset stays below 2^61 at scale out + extra + HI (at most 8).
    fn extra(&self, out: u32) -> Result<u32> {
        let vmax = self.table.iter().map(|t| t.0.abs()).fold(1.0f64, f64::max);
        let vb = vmax.log2().ceil() as u32;
        let used = out + HI + vb;
        if used > 60 {
            return Err(Error::Unsupported(format!(
                "table function: outputs up to 2^{vb} at scale {out} leave no room below 2^61"
            )));
        }
        Ok((60 - used).min(8))
    }

    fn coeffs(&self) -> Vec<Vec<u64>> {
        self.mult
            .iter()
            .enumerate()
            .map(|(q, &m)| vec![m, (q as u64) << self.cell_bits])
            .collect()
    }

    /// g on 2-of-2 shares `y` (P2 passes zeros and deals), output at scale `out`, 2-of-2.
    pub fn eval2(&self, p: &mut Party, y: &[u64], out: u32) -> Result<Vec<u64>> {
        let n = y.len();
        let e = self.extra(out)?;
        if self.fk <= self.cell_bits {
            return Err(Error::Unsupported(format!(
                "table function: normalised scale {} not above the cell bits",
                self.fk
            )));
        }
        let sp = step_spline(self.breaks.clone(), self.coeffs())?;
        let sel = spline::select2(p, y, &sp, self.bits)?;
        let (m, base) = sel.split_at(n);
        let xm = mul2(p, y, m)?;
        let (c, z) = if self.fk > HI {
            let mut tr =
                arith::trunc2_many(p, &[(&xm, self.fk - HI), (&xm, self.fk - self.cell_bits)])?;
            let z = tr.pop().expect("two parts");
            (tr.pop().expect("two parts"), z)
        } else {
            let c = xm.iter().map(|v| v << (HI - self.fk)).collect();
            (c, arith::trunc2(p, &xm, self.fk - self.cell_bits)?)
        };
        let (c, z) = (&c, &z);
        let idx = wadd(z, base);
        let vt: Vec<u64> = self.table.iter().map(|t| enc(t.0, out + e + HI)).collect();
        let st: Vec<u64> = self.table.iter().map(|t| enc(t.1, out + e)).collect();
        let req = FssRequest::Lut {
            n,
            bits: self.index_bits,
        };
        let (v, s) = match fss_material(p, req)? {
            Some(mat) => {
                let cm = open_masked(p, &idx, &mat.parts[0], "table function lookup open")?;
                let mut vs = dpf_lookup(&mat.parts[1], &cm, &[&vt, &st])?;
                let s = vs.pop().expect("two tables");
                (vs.pop().expect("two tables"), s)
            }
            None => (vec![0; n], vec![0; n]),
        };
        // the offset inside the cell at scale HI (negative when z was rounded up)
        let cell = 1u64 << (HI - self.cell_bits);
        let zc: Vec<u64> = z.iter().map(|v| v.wrapping_mul(cell)).collect();
        let prod = mul2(p, &s, &wsub(c, &zc))?;
        arith::trunc2(p, &wadd(&v, &prod), e + HI)
    }

    /// The material [`SegTable::eval2`] consumes on n elements with output scale `out`.
    pub fn demand(&self, d: &mut Demand, n: usize, out: u32) {
        spline_demand(d, n, self.bits, &self.coeffs());
        d.push(Request::Beaver { n });
        if self.fk > HI {
            trunc_demand(d, n, self.fk - HI);
        }
        trunc_demand(d, n, self.fk.saturating_sub(self.cell_bits));
        d.push(Request::Fss(FssRequest::Lut {
            n,
            bits: self.index_bits,
        }));
        d.push(Request::Beaver { n });
        trunc_demand(d, n, self.extra(out).unwrap_or(0) + HI);
    }

    /// The plaintext definition on segment q at normalised c (q clamped by the caller).
    pub fn plain(&self, q: usize, c: f64) -> f64 {
        let cells = (1u64 << self.cell_bits) as f64;
        let z = (c * cells).floor().max(0.0);
        let i = q * (1usize << self.cell_bits) + z as usize;
        let (v, s) = self.table[i.min(self.table.len() - 1)];
        v + s * (c - z / cells)
    }
}
