//! The operations `tessera bench OP` measures: inputs, preprocessing demand, the secure
//! op, and its plaintext f64 reference.
//!
//! Inputs are drawn deterministically from a seed the launcher chooses, so the launcher
//! can recompute the reference without seeing any party's data. x belongs to P0, y to P1.

use anyhow::{bail, Result};
use rand::{Rng, SeedableRng};
use tessera::preproc::{Demand, Request};
use tessera::{Party, Setting, Shared, Tensor};
use tessera_protocols::arith;

/// What to measure.
#[derive(Clone, Debug)]
pub struct OpSpec {
    /// Op name.
    pub op: String,
    /// Shape argument (meaning per op).
    pub shape: Vec<usize>,
    /// Inputs are uniform in this range.
    pub range: (f64, f64),
    /// Input seed.
    pub seed: u64,
}

/// Names of the ops `bench` accepts.
pub const OPS: &[&str] = &["mul", "matmul", "trunc"];

/// One secret input: its owner and its plaintext.
pub struct Input {
    /// Party that owns it.
    pub owner: usize,
    /// Plaintext value.
    pub value: Tensor<f64>,
}

fn uniform(shape: &[usize], range: (f64, f64), seed: u64) -> Result<Tensor<f64>> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let n = shape.iter().product();
    let data = (0..n).map(|_| rng.gen_range(range.0..=range.1)).collect();
    Ok(Tensor::from_vec(shape, data)?)
}

impl OpSpec {
    /// Checks the op name and shape.
    pub fn validate(&self) -> Result<()> {
        if !OPS.contains(&self.op.as_str()) {
            bail!(
                "unknown op {:?}: expected one of {}",
                self.op,
                OPS.join(", ")
            );
        }
        if self.op == "matmul" && self.shape.len() != 3 {
            bail!("matmul needs --shape M,K,N (got {:?})", self.shape);
        }
        if self.shape.is_empty() || self.shape.contains(&0) {
            bail!(
                "--shape must have positive dimensions (got {:?})",
                self.shape
            );
        }
        if !(self.range.0 < self.range.1) {
            bail!("--range LO,HI needs LO < HI (got {:?})", self.range);
        }
        Ok(())
    }

    /// The op's secret inputs.
    pub fn inputs(&self) -> Result<Vec<Input>> {
        let s = &self.shape;
        Ok(match self.op.as_str() {
            "mul" => vec![
                Input {
                    owner: 0,
                    value: uniform(s, self.range, self.seed)?,
                },
                Input {
                    owner: 1,
                    value: uniform(s, self.range, self.seed + 1)?,
                },
            ],
            "matmul" => vec![
                Input {
                    owner: 0,
                    value: uniform(&[s[0], s[1]], self.range, self.seed)?,
                },
                Input {
                    owner: 1,
                    value: uniform(&[s[1], s[2]], self.range, self.seed + 1)?,
                },
            ],
            "trunc" => vec![Input {
                owner: 0,
                value: uniform(s, self.range, self.seed)?,
            }],
            o => bail!("unknown op {o}"),
        })
    }

    /// Output elements.
    fn out_len(&self) -> usize {
        match self.op.as_str() {
            "matmul" => self.shape[0] * self.shape[2],
            _ => self.shape.iter().product(),
        }
    }

    /// Preprocessing the op consumes, in order (for planned and file-based dealing).
    pub fn demand(&self, setting: Setting, frac_bits: u32) -> Demand {
        let n = self.out_len();
        let mut d = Demand::default();
        if setting == Setting::TwoPc {
            match self.op.as_str() {
                "mul" => d.push(Request::Beaver { n }),
                "matmul" => d.push(Request::MatTriple {
                    batch: 1,
                    m: self.shape[0],
                    k: self.shape[1],
                    n: self.shape[2],
                }),
                _ => {}
            }
        }
        d.push(Request::Trunc {
            n,
            shift: frac_bits,
        });
        d
    }

    /// Runs the secure op on already-shared inputs.
    pub fn run(&self, p: &mut Party, xs: &[Shared]) -> Result<Shared> {
        Ok(match self.op.as_str() {
            "mul" => arith::mul_trunc(p, &xs[0], &xs[1])?,
            "matmul" => arith::matmul_trunc(p, &xs[0], &xs[1])?,
            "trunc" => {
                // The input was encoded with 2f fractional bits (as a product would be).
                arith::truncate(p, &xs[0])?
            }
            o => bail!("unknown op {o}"),
        })
    }

    /// Extra encoding bits of input `i`.
    pub fn extra_bits(&self, _i: usize, frac_bits: u32) -> u32 {
        if self.op == "trunc" {
            frac_bits
        } else {
            0
        }
    }

    /// The exact f64 result.
    pub fn reference(&self, inputs: &[Input]) -> Result<Tensor<f64>> {
        Ok(match self.op.as_str() {
            "mul" => inputs[0]
                .value
                .zip_with(&inputs[1].value, "mul", |a, b| a * b)?,
            "matmul" => inputs[0].value.matmul(&inputs[1].value)?,
            "trunc" => inputs[0].value.clone(),
            o => bail!("unknown op {o}"),
        })
    }
}

/// Encodes input `i` at the session scale plus its extra bits.
pub fn encode_input(spec: &OpSpec, i: usize, input: &Input, frac_bits: u32) -> Result<Tensor<u64>> {
    let extra = spec.extra_bits(i, frac_bits);
    let fx = tessera::FixedPoint::new(frac_bits)?;
    let scaled = input.value.map(|v| v * (1u64 << extra) as f64);
    Ok(fx.encode_tensor(&scaled)?)
}

/// Max and mean absolute error of `got` against `want`.
pub fn errors(got: &[f64], want: &[f64]) -> (f64, f64) {
    let n = got.len().max(1) as f64;
    let mut max: f64 = 0.0;
    let mut sum = 0.0;
    for (g, w) in got.iter().zip(want) {
        let e = (g - w).abs();
        max = max.max(e);
        sum += e;
    }
    (max, sum / n)
}
