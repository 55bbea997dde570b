//! Parameters and the linear layer: a secret matrix prepared for repeated products, a
//! secret vector (bias, norm gain), and `Linear` = x W (+ b).
//!
//! Every matrix is a [`PreparedWeight`]: in 2PC W - B is opened once per model for the
//! fixed B of the matrix's key, and each product then opens only the activations
//! (`tessera::preproc` explains why reusing B is secure); in 3PC it is the replicated
//! share. Keys are handed out in construction order by a [`Keys`] counter, so every party
//! (and the 2PC dealer, which derives B from the key) builds the same numbering from the
//! public architecture alone.

use super::{Cx, MODEL_OWNER};
use crate::arith::PreparedWeight;
use tessera::error::{Error, Result};
use tessera::{Party, Shared, Tensor};

/// Hands out prepared-weight keys in construction order (unique within a session).
#[derive(Clone, Debug)]
pub struct Keys(u64);

impl Keys {
    /// Keys from 1 on.
    pub fn new() -> Keys {
        Keys(1)
    }
    /// The next key.
    pub fn take(&mut self) -> u64 {
        let k = self.0;
        self.0 += 1;
        k
    }
}

impl Default for Keys {
    fn default() -> Self {
        Keys::new()
    }
}

/// A secret k x n matrix for products x W, prepared under its key once shared.
#[derive(Clone, Debug)]
pub struct Matrix {
    /// Rows (the input width of x W).
    pub k: usize,
    /// Columns (the output width).
    pub n: usize,
    /// Prepared-weight key.
    pub key: u64,
    w: Option<PreparedWeight>,
}

impl Matrix {
    /// An unshared k x n matrix with the next key.
    pub fn new(k: usize, n: usize, keys: &mut Keys) -> Matrix {
        Matrix {
            k,
            n,
            key: keys.take(),
            w: None,
        }
    }
    /// Shares the model owner's value (`Some` there, `None` elsewhere) and prepares it.
    pub fn share(&mut self, p: &mut Party, cx: &mut Cx, value: Option<&Tensor<f64>>) -> Result<()> {
        self.w = cx.share_matrix(p, value, self.k, self.n, self.key)?;
        Ok(())
    }
    /// The prepared share (an error before [`Matrix::share`]).
    pub fn get(&self) -> Result<&PreparedWeight> {
        self.w.as_ref().ok_or_else(|| {
            Error::Unsupported(format!(
                "matrix {} ({} x {}) used before it was shared",
                self.key, self.k, self.n
            ))
        })
    }
    /// Forgets the share (a model shared layer by layer drops each layer after use).
    pub fn release(&mut self) {
        self.w = None;
    }
}

/// A secret vector (bias, norm gain).
#[derive(Clone, Debug)]
pub struct Vector {
    /// Length.
    pub len: usize,
    v: Option<Shared>,
}

impl Vector {
    /// An unshared vector of `len`.
    pub fn new(len: usize) -> Vector {
        Vector { len, v: None }
    }
    /// Shares the model owner's value (`Some` there, `None` elsewhere).
    pub fn share(&mut self, p: &mut Party, cx: &mut Cx, value: Option<&[f64]>) -> Result<()> {
        self.v = cx.share_vector(p, value, self.len)?;
        Ok(())
    }
    /// The share (an error before [`Vector::share`]).
    pub fn get(&self) -> Result<&Shared> {
        self.v.as_ref().ok_or_else(|| {
            Error::Unsupported(format!("vector of {} used before it was shared", self.len))
        })
    }
    /// x + v broadcast over the rows of x (local; the identity when planning).
    pub fn add_to(&self, cx: &Cx, x: &Shared) -> Result<Shared> {
        if cx.is_planning() {
            return Ok(x.clone());
        }
        x.add_rows(self.get()?)
    }
    /// Forgets the share.
    pub fn release(&mut self) {
        self.v = None;
    }
}

/// y = x W + b over the last axis of x (b optional). Rounds and bytes: one
/// [`crate::arith::matmul_prepared_trunc`] (2 rounds: an owner-held weight's E and the
/// truncation's top bit; a shared weight's opening of x - A and the truncation in 2PC, the
/// replicated product's truncation, plus the reshare of a pair x, in 3PC).
#[derive(Clone, Debug)]
pub struct Linear {
    /// The weight [in, out].
    pub w: Matrix,
    /// The bias [out].
    pub b: Option<Vector>,
}

/// The model owner's values of a [`Linear`]: W as [in, out] and the bias.
pub struct LinearWeights<'a> {
    /// W [in, out].
    pub w: &'a Tensor<f64>,
    /// b [out].
    pub b: Option<&'a [f64]>,
}

impl Linear {
    /// An unshared layer of `input` -> `output` features.
    pub fn new(input: usize, output: usize, bias: bool, keys: &mut Keys) -> Linear {
        Linear {
            w: Matrix::new(input, output, keys),
            b: bias.then(|| Vector::new(output)),
        }
    }
    /// Shares W and b from the model owner (`Some` there).
    pub fn share(
        &mut self,
        p: &mut Party,
        cx: &mut Cx,
        value: Option<LinearWeights>,
    ) -> Result<()> {
        let value = value.filter(|_| p.id() == MODEL_OWNER);
        self.w.share(p, cx, value.as_ref().map(|v| v.w))?;
        if let Some(b) = self.b.as_mut() {
            b.share(p, cx, value.as_ref().and_then(|v| v.b))?;
        }
        Ok(())
    }
    /// y = x W + b.
    pub fn forward(&self, p: &mut Party, cx: &mut Cx, x: &Shared) -> Result<Shared> {
        let y = cx.matmul_prepared(p, x, &self.w)?;
        match &self.b {
            Some(b) => b.add_to(cx, &y),
            None => Ok(y),
        }
    }
    /// Forgets the shares.
    pub fn release(&mut self) {
        self.w.release();
        if let Some(b) = self.b.as_mut() {
            b.release();
        }
    }
}
