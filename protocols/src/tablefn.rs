//! Normalise-and-look-up: g(x) for a positive x of a wide dynamic range in three rounds,
//! for the row-sized inputs of the normalisations (LayerNorm's variance, RMSNorm's mean
//! square: 1/sqrt) and of softmax (the row sums: 1/x) and of the log.
//!
//! x lies in one of a few public segments (binades, or pairs of binades for 1/sqrt, whose
//! even exponent keeps the square root of the scale exact). One DCF spline
//! ([`crate::spline`], Boyle et al. EC'21 §4.2) selects per element the segment's
//! power-of-two multiplier m and its table base q 2^b; c = x m 2^-K then lies in
//! [c_min, 1), and its cell z = floor(c 2^b) indexes the table of the value and the slope
//! of g (the secant through the cell's ends). The three rounds ([`FssRequest::SegLut`]):
//! 1. open x + r. The spline key carries the payload (1, r), so the selection also gives
//!    shares of m r, and x m = (x + r) m - m r is local: no product round;
//! 2. open w + r2 for w = x m + q 2^b 2^(K - b): with the low K - 28 bits dropped (a
//!    faithful truncation to c at scale 28), its bits above the cell give the lookup's
//!    masked index q 2^b + z (the DPF's index mask is r2's bits there: no index opening)
//!    and its bits below give the masked offset o + beta inside the cell; the DPF's
//!    payload (1, beta) returns value, slope and slope beta: value + slope offset is local;
//! 3. truncate value + slope offset to the output scale.
//!
//! Before this (stop 34) the chain was six rounds: spline open, product, the two
//! truncations' opening, index opening, product with the offset, truncation. 3PC runs the
//! same on 2-of-2 shares with P2 dealing (the callers keep their data in that form).
//!
//! Why a table and not iterations: SIGMA (ePrint 2023/1269 §5) reads its reciprocal square
//! root off a table too. The inputs here are row-sized (128 rows for 98 k elements in a
//! BERT layer), so the DPF's full-domain evaluation over a 2^12-2^13 entry table costs
//! milliseconds, while each Newton or Goldschmidt iteration costs two rounds: 20 rounds of
//! rsqrt and 11 of reciprocal become 3 each.
//!
//! Accuracy: the secant's error on a cell of width h is at most h^2 max|g''| / 8; the
//! carry of the dropped bits may round z up by one, so the secant of the next cell is
//! used slightly outside it (up to one cell: at most 4x), with the offset then negative. The callers state the measured
//! figures.

use crate::arith;
use crate::compare::{fss_material, open_masked};
use crate::exp::{enc, step_spline, trunc_demand, HI};
use crate::spline;
use tessera::error::{Error, Result};
use tessera::fss::material::{dpf_lookup_rows, FssRequest};
use tessera::preproc::{Demand, Request};
use tessera::Party;

/// One normalise-and-look-up function (see the module doc).
pub(crate) struct SegTable {
    /// Spline breakpoints between segments (ring values at the input's scale); the first
    /// is the bottom of the lowest real segment, below which inputs saturate.
    pub breaks: Vec<u64>,
    /// Per segment (the saturated one first, with 0): the multiplier m with
    /// c = x m 2^-(fk - input scale) in [c_min, 1).
    pub mult: Vec<u64>,
    /// Scale of x m.
    pub fk: u32,
    /// Width of the input's comparison.
    pub bits: u32,
    /// log2 of the cells over c in [0, 1): the table's columns.
    pub cell_bits: u32,
    /// log2 of the table's rows (one per segment, and one more for the saturated inputs).
    pub row_bits: u32,
    /// (value, slope) per entry row 2^cell_bits + z, in reals.
    pub table: Vec<(f64, f64)>,
}

impl SegTable {
    /// Builds the table of g(q, c) (real segment q, normalised c in [c_min, 1)), on
    /// breakpoints `breaks` between the real segments and their multipliers `mult`.
    ///
    /// Row 0 serves the inputs below the lowest segment (multiplier 0, so c = 0): every
    /// entry saturates at g(0, c_min), slope 0. Row q + 1 serves segment q: entry
    /// z >= c_min 2^b holds the secant of g(q, .) over [z h, (z + 1) h); entry 0 is reached
    /// when the carry of the second opening rounds c ~ 1 up to z = 2^b, which the
    /// column's wrap takes to 0 ([`FssRequest::SegLut`]): it holds the top cell's secant
    /// anchored at c = 1 (the offset is then slightly negative). Cells below c_min that
    /// nothing reaches hold g(q, c_min), slope 0; so do the rows past the last segment.
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
        let row_bits = usize::BITS - nseg.leading_zeros();
        let secant = |q: usize, z: usize| {
            let (a, b) = (z as f64 * h, (z + 1) as f64 * h);
            (g(q, a), (g(q, b) - g(q, a)) / h)
        };
        let lowest = (c_min * cells as f64) as usize;
        debug_assert!(lowest >= 1, "c_min must leave cell 0 for the wrap");
        let sat = (g(0, c_min), 0.0);
        let mut table = vec![sat; cells << row_bits];
        for q in 0..nseg {
            for z in 0..cells {
                table[(q + 1) * cells + z] = if z >= lowest {
                    secant(q, z)
                } else if z == 0 {
                    // the top cell's secant, anchored at its right end c = 1 (the offset
                    // is measured from z h = 1 there)
                    (g(q, 1.0), secant(q, cells - 1).1)
                } else {
                    (g(q, c_min), 0.0)
                };
            }
        }
        // The bottom of segment 0: c_min 2^fk / m_0 (powers of two: exact in f64).
        let under = (c_min * 2f64.powi(fk as i32) / mult[0] as f64)
            .ceil()
            .max(1.0) as u64;
        let mut all_breaks = vec![under];
        all_breaks.extend(breaks);
        let mut all_mult = vec![0];
        all_mult.extend(mult);
        SegTable {
            breaks: all_breaks,
            mult: all_mult,
            fk,
            bits,
            cell_bits,
            row_bits,
            table,
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
            .map(|(q, &m)| vec![m, q as u64])
            .collect()
    }

    /// Scale of the offset inside a cell: HI, or fk when x m is coarser than that.
    fn offset_scale(&self) -> u32 {
        self.fk.min(HI)
    }

    /// The material request of [`SegTable::eval2`] on n elements: the spline's DCF with
    /// payload (1, r) and the lookup's DPF with payload (1, beta) whose masks come from
    /// the second opening ([`FssRequest::SegLut`]).
    fn request(&self, n: usize) -> FssRequest {
        let os = self.offset_scale();
        FssRequest::SegLut {
            n,
            bits: self.bits,
            table_bits: self.row_bits + self.cell_bits,
            cell_bits: self.cell_bits,
            trunc: self.fk - os,
            shift: os - self.cell_bits,
        }
    }

    /// g on 2-of-2 shares `y` (P2 passes zeros and deals), output at scale `out`, 2-of-2.
    /// Three rounds (see the module doc).
    pub fn eval2(&self, p: &mut Party, y: &[u64], out: u32) -> Result<Vec<u64>> {
        let n = y.len();
        let e = self.extra(out)?;
        let os = self.offset_scale();
        if os <= self.cell_bits {
            return Err(Error::Unsupported(format!(
                "table function: normalised scale {} not above the cell bits",
                self.fk
            )));
        }
        let req = self.request(n);
        let vt: Vec<u64> = self.table.iter().map(|t| enc(t.0, out + e + os)).collect();
        let st: Vec<u64> = self.table.iter().map(|t| enc(t.1, out + e)).collect();
        let sum = match fss_material(p, req.clone())? {
            Some(mat) => {
                let (keys, lkeys) = req.split_clamp_keys(&mat.parts[3])?;
                // Round 1: c = y + r; the spline gives m, the row and m r.
                let c = open_masked(p, y, &mat.parts[0], "table function open")?;
                let sp = step_spline(self.breaks.clone(), self.coeffs())?;
                let first = p.id() == 0;
                let r = Some(mat.parts[0].as_slice());
                let (sel, sel_r) = spline::select_at(first, &sp, self.bits, &c, keys, r)?;
                let (m, row) = sel.split_at(n);
                // Round 2: w + r2 and row + r3 in one message, w = y m = c m - m r (local).
                let mut mine: Vec<u64> = (0..n)
                    .map(|i| c[i].wrapping_mul(m[i]).wrapping_sub(sel_r[i]))
                    .collect();
                mine.extend_from_slice(row);
                let mut mask = mat.parts[1].clone();
                mask.extend_from_slice(&mat.parts[2]);
                let opened = open_masked(p, &mine, &mask, "table function lookup open")?;
                let (v, rows) = opened.split_at(n);
                // v's bits above fk - os: the masked column and the masked offset.
                let (lo, sh, cb) = (self.fk - os, os - self.cell_bits, self.cell_bits);
                let (cmask, rmask) = ((1u64 << cb) - 1, (1u64 << self.row_bits) - 1);
                let ci: Vec<u64> = (0..n)
                    .map(|i| ((rows[i] & rmask) << cb) | ((v[i] >> lo >> sh) & cmask))
                    .collect();
                let pairs = [(0, 0), (0, 1), (1, 1)];
                let vs = dpf_lookup_rows(lkeys, &ci, cb, &[&vt, &st], &pairs)?;
                // value + slope (o + beta): o public, slope beta from the payload.
                (0..n)
                    .map(|i| {
                        let o = (v[i] >> lo) & ((1u64 << sh) - 1);
                        vs[0][i]
                            .wrapping_add(vs[1][i].wrapping_mul(o))
                            .wrapping_add(vs[2][i])
                    })
                    .collect()
            }
            None => vec![0; n],
        };
        // Round 3.
        arith::trunc2(p, &sum, e + os)
    }

    /// The material [`SegTable::eval2`] consumes on n elements with output scale `out`.
    pub fn demand(&self, d: &mut Demand, n: usize, out: u32) {
        d.push(Request::Fss(self.request(n)));
        trunc_demand(d, n, self.extra(out).unwrap_or(0) + self.offset_scale());
    }

    /// The plaintext definition on real segment q at normalised c < 1 (q clamped by the
    /// caller; c below c_min reads the row's saturated cells: cell 0 holds the wrap's
    /// entry, so c below one cell reads cell 1, also below c_min).
    pub fn plain(&self, q: usize, c: f64) -> f64 {
        let cells = 1usize << self.cell_bits;
        let z = ((c * cells as f64).floor().max(0.0) as usize).clamp(1, cells - 1);
        let (v, s) = self.table[(q + 1) * cells + z];
        v + s * (c - z as f64 / cells as f64)
    }
}
