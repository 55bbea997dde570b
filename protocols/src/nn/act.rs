//! Element-wise activations of convolutional networks (ReLU by FSS, polynomials with
//! public coefficients) and the private argmax that reveals only a class index.
//!
//! - **ReLU**: one DCF whose payload gives both sign(x) and r sign(x), so
//!   x (1 - sign) is linear in the opened x + r (Boyle et al. EC'21 §4.1, SIGMA §4.2):
//!   1 round in both settings (3PC returns a pair, reshared only by a replicated product).
//! - **Polynomial** p(x) = sum c_i x^i (HE/MPC-friendly activations trained for a range,
//!   e.g. degree 2 as in CryptoNets / Delphi, or a higher-degree ReLU fit as in Baruch et
//!   al. 2023): Horner with the first step local, c_d x + c_{d-1} at scale 2f, and
//!   each further step one product truncated with it ([`arith::mul_trunc_by`]: 2PC 2
//!   rounds; 3PC 1, + 1 to reshare the pair Horner value from the second product on):
//!   degree d costs d - 1 products, 2PC 2 (d - 1) rounds, 3PC 2d - 3 (1 for d = 1, one
//!   truncation), and no FSS keys. The first product carries scale 3f before its truncation by 2f, so inputs must
//!   keep |(c_d x + c_{d-1}) x| < 2^(62 - 3f) (2^14 at f = 16).
//! - **Argmax** revealed to one party: a tournament over the last axis that carries each
//!   candidate's index; per level one comparison ([`compare::lt`]) and one product that
//!   selects both the value and the index: 2PC 2 rounds per level, 3PC 3. Ties go to the
//!   lower index, as `argmax` in the clear. Only the index is opened, to one party.

use super::Cx;
use crate::arith::{self, demand as ad};
use crate::compare;
use tessera::error::{Error, PartyId, Result};
use tessera::fss::material::FssRequest;
use tessera::preproc::{Demand, Request};
use tessera::{Party, Shared, Tensor};

/// Bits the ReLU comparison assumes: |x| < 2^(RELU_BITS - 1) ring units (2^15 at f = 16).
pub const RELU_BITS: u32 = 32;

/// Bits the argmax comparisons assume: logit differences below 2^(ARGMAX_BITS - 1) units.
pub const ARGMAX_BITS: u32 = 32;

/// An activation of a convolutional network.
#[derive(Clone, Debug, PartialEq)]
pub enum Activation {
    /// max(x, 0) by FSS.
    Relu,
    /// sum_i c\[i\] x^i with public coefficients (degree = len - 1 >= 1).
    Poly(Vec<f64>),
}

impl Activation {
    /// A polynomial activation; at least two coefficients (degree >= 1), all finite.
    pub fn poly(coefficients: &[f64]) -> Result<Activation> {
        if coefficients.len() < 2 || coefficients.iter().any(|c| !c.is_finite()) {
            return Err(Error::Unsupported(format!(
                "polynomial activation needs >= 2 finite coefficients (c0, c1, ...), got {coefficients:?}"
            )));
        }
        Ok(Activation::Poly(coefficients.to_vec()))
    }

    /// The activation in the clear (f64).
    pub fn plain(&self, x: f64) -> f64 {
        match self {
            Activation::Relu => x.max(0.0),
            Activation::Poly(c) => c.iter().rev().fold(0.0, |acc, &ci| acc * x + ci),
        }
    }

    /// The activation of a shared tensor (any shape).
    pub fn forward(&self, p: &mut Party, cx: &mut Cx, x: &Shared) -> Result<Shared> {
        match self {
            Activation::Relu => cx.relu(p, x),
            Activation::Poly(c) => cx.poly(p, x, c),
        }
    }
}

impl Cx<'_> {
    /// ReLU of a shared tensor by FSS ([`compare::relu`] at [`RELU_BITS`]), in steps of at
    /// most `max_step_elems` elements (its keys are ~1 KB per element and party).
    pub fn relu(&mut self, p: &mut Party, x: &Shared) -> Result<Shared> {
        let shape = x.shape().to_vec();
        let k = *shape.last().unwrap_or(&1);
        self.chunked(p, x, k, |cx, p, part, _| {
            cx.step(
                p,
                "relu",
                |_| {
                    Ok(Demand(vec![Request::Fss(FssRequest::Relu {
                        n: part.len(),
                        bits: RELU_BITS,
                    })]))
                },
                None,
                |p| Ok(Shared::zeros(p, part.shape())),
                |p| compare::relu(p, part, RELU_BITS),
            )
        })?
        .reshape(&shape)
    }

    /// The polynomial sum_i c\[i\] x^i with public coefficients (see the module doc).
    pub fn poly(&mut self, p: &mut Party, x: &Shared, c: &[f64]) -> Result<Shared> {
        let fx = p.fixed();
        let f = fx.frac_bits();
        let enc = |v: f64| fx.encode(v);
        let d = c.len().saturating_sub(1);
        if d == 0 {
            return Err(Error::Unsupported(
                "polynomial activation of degree 0".into(),
            ));
        }
        // c_d x + c_{d-1} at scale 2f (local).
        let top = x
            .scale(enc(c[d])?)
            .add_public_scalar(p, enc(c[d - 1])? << f);
        if d == 1 {
            return self.truncate(p, "poly", &top);
        }
        let n = x.len();
        let mut h = self.step(
            p,
            "poly",
            |p| Ok(ad::mul_trunc_by(p.setting(), n, 2 * f)),
            None,
            |p| Ok(Shared::zeros(p, x.shape())),
            |p| arith::mul_trunc_by(p, x, &top, 2 * f),
        )?;
        h = h.add_public_scalar(p, enc(c[d - 2])?);
        for i in (0..d - 2).rev() {
            h = self
                .step(
                    p,
                    "poly",
                    |p| Ok(ad::mul_trunc_by(p.setting(), n, f)),
                    None,
                    |p| Ok(Shared::zeros(p, x.shape())),
                    |p| arith::mul_trunc_by(p, x, &h, f),
                )?
                .add_public_scalar(p, enc(c[i])?);
        }
        Ok(h)
    }

    /// The index of the largest entry of each row of `x` (`[rows, k]`), revealed to `to`
    /// only (`Some` there, `None` elsewhere and when planning). See the module doc.
    pub fn argmax_reveal(
        &mut self,
        p: &mut Party,
        x: &Shared,
        to: PartyId,
    ) -> Result<Option<Vec<usize>>> {
        let (rows, k) = match *x.shape() {
            [r, k] if k > 0 => (r, k),
            _ => {
                return Err(Error::shape(
                    "argmax",
                    format!("needs [rows, classes >= 1], got {:?}", x.shape()),
                ))
            }
        };
        let idx0: Vec<u64> = (0..rows).flat_map(|_| 0..k as u64).collect();
        let mut idx = p.share_public(&Tensor::from_vec(&[rows, k], idx0)?);
        let mut val = x.clone();
        let mut w = k;
        while w > 1 {
            let half = w / 2;
            let m = rows * half;
            let pick = |s: &Shared, off: usize| {
                s.try_map_local(|t| {
                    let v = t
                        .data()
                        .chunks(w)
                        .flat_map(|r| (0..half).map(move |j| r[2 * j + off]))
                        .collect();
                    Tensor::from_vec(&[m], v)
                })
            };
            let tail = |s: &Shared| {
                s.try_map_local(|t| {
                    let v = t.data().chunks(w).map(|r| r[w - 1]).collect();
                    Tensor::from_vec(&[rows], v)
                })
            };
            let (a, b, ia, ib) = (
                pick(&val, 0)?,
                pick(&val, 1)?,
                pick(&idx, 0)?,
                pick(&idx, 1)?,
            );
            let diffs = Shared::concat_flat(&[&b.sub(&a)?, &ib.sub(&ia)?])?;
            let sel = self.step(
                p,
                "argmax",
                |p| {
                    let mut d = Demand(vec![Request::Fss(FssRequest::Sign {
                        n: m,
                        bits: ARGMAX_BITS,
                    })]);
                    d.extend(ad::mul(p.setting(), 2 * m));
                    Ok(d)
                },
                None,
                |p| Ok(Shared::zeros(p, &[2 * m])),
                |p| {
                    // [a < b]: b wins only when strictly larger (ties keep the lower index).
                    let s = compare::lt(p, &a, &b, ARGMAX_BITS)?;
                    let ss = Shared::concat_flat(&[&s, &s])?;
                    arith::mul(p, &ss, &diffs)
                },
            )?;
            let (sv, si) = (
                sel.try_map_local(|t| Tensor::from_vec(&[m], t.data()[..m].to_vec()))?,
                sel.try_map_local(|t| Tensor::from_vec(&[m], t.data()[m..].to_vec()))?,
            );
            let (nv, ni) = (a.add(&sv)?, ia.add(&si)?);
            let nw = w.div_ceil(2);
            let join = |new: &Shared, old: &Shared| -> Result<Shared> {
                if w % 2 == 0 {
                    return new.reshape(&[rows, nw]);
                }
                let t = tail(old)?;
                let parts = [new.reshape(&[rows, half])?, t.reshape(&[rows, 1])?];
                Shared::concat_last(&parts)
            };
            val = join(&nv, &val)?;
            idx = join(&ni, &idx)?;
            w = nw;
        }
        match self.reveal_to(p, to, &idx)? {
            Some(t) => {
                let out: Vec<usize> = t.data().iter().map(|&v| v as usize).collect();
                if out.iter().any(|&i| i >= k) {
                    return Err(Error::Unsupported(format!(
                        "argmax: an opened index is outside 0..{k} (inputs beyond the comparison range?)"
                    )));
                }
                Ok(Some(out))
            }
            None => Ok(None),
        }
    }
}

/// The plaintext argmax of each row (first maximum on ties).
pub fn argmax_plain(x: &Tensor<f64>) -> Vec<usize> {
    let k = x.last_dim().max(1);
    x.data()
        .chunks(k)
        .map(|r| {
            let mut best = 0;
            for (j, v) in r.iter().enumerate() {
                if *v > r[best] {
                    best = j;
                }
            }
            best
        })
        .collect()
}
