//! The operations `tessera bench OP` measures: inputs, preprocessing demand, the secure
//! op, and its plaintext f64 reference.
//!
//! Inputs are drawn deterministically from a seed the launcher chooses, so the launcher
//! can recompute the reference without seeing any party's data. x belongs to P0, y to P1.

use anyhow::{bail, Result};
use rand::{Rng, SeedableRng};
use tessera::preproc::Demand;
use tessera::{Party, Setting, Shared, Tensor};
use tessera_protocols::{arith, exp, gelu, layernorm, reciprocal, rmsnorm, rsqrt, silu, softmax};

/// What to measure.
#[derive(Clone, Debug)]
pub struct OpSpec {
    /// Op name.
    pub op: String,
    /// Shape argument (meaning per op).
    pub shape: Vec<usize>,
    /// Inputs are uniform in this range (None: the op's documented default).
    pub range: Option<(f64, f64)>,
    /// Input seed.
    pub seed: u64,
    /// Approximation method for the nonlinear ops (None: the default).
    pub method: Option<String>,
}

/// Names of the ops `bench` accepts (plus `bert`, `rtt`, `throughput`).
pub const OPS: &[&str] = &[
    "mul",
    "matmul",
    "trunc",
    "gelu",
    "silu",
    "softmax",
    "layernorm",
    "rmsnorm",
    "reciprocal",
    "rsqrt",
    "exp",
];

/// The nonlinear op with its parsed method.
#[derive(Clone, Copy, Debug)]
enum Nonlinear {
    Gelu(gelu::GeluMethod),
    Silu(silu::SiluMethod),
    Softmax(softmax::SoftmaxMethod),
    LayerNorm(layernorm::LayerNormMethod),
    RmsNorm(layernorm::LayerNormMethod),
    Reciprocal(reciprocal::ReciprocalMethod),
    Rsqrt(rsqrt::RsqrtMethod),
    Exp(exp::ExpMethod),
}

fn parse_method<M: std::str::FromStr + Default>(m: &Option<String>, op: &str) -> Result<M>
where
    M::Err: std::fmt::Display,
{
    match m {
        None => Ok(M::default()),
        Some(name) => name
            .parse()
            .map_err(|e| anyhow::anyhow!("--method {name} for {op}: {e}")),
    }
}

/// Variance-controlled rows for LayerNorm: row i has standard deviation 10^u with u uniform
/// so that the row variance lies in [1e-3, 1e4] (the range), plus a random mean.
fn layernorm_rows(shape: &[usize], seed: u64) -> Result<Tensor<f64>> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let d = *shape.last().unwrap_or(&1);
    let rows = shape.iter().product::<usize>() / d.max(1);
    let mut data = Vec::with_capacity(rows * d);
    for _ in 0..rows {
        let std = 10f64.powf(rng.gen_range(-1.5..2.0));
        let mean = rng.gen_range(-2.0..2.0);
        for _ in 0..d {
            data.push(mean + std * rng.gen_range(-1.732..1.732));
        }
    }
    Ok(Tensor::from_vec(shape, data)?)
}

/// Rows for RMSNorm like a residual stream's: row i has root mean square 10^u with u
/// uniform in [-2, 2] (0.01 to 100), no mean.
fn rmsnorm_rows(shape: &[usize], seed: u64) -> Result<Tensor<f64>> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let d = *shape.last().unwrap_or(&1);
    let rows = shape.iter().product::<usize>() / d.max(1);
    let mut data = Vec::with_capacity(rows * d);
    for _ in 0..rows {
        let rms = 10f64.powf(rng.gen_range(-2.0..2.0));
        for _ in 0..d {
            data.push(rms * rng.gen_range(-1.732..1.732));
        }
    }
    Ok(Tensor::from_vec(shape, data)?)
}

/// RMSNorm's eps in `bench rmsnorm` (Llama's, SmolLM2's).
const RMSNORM_EPS: f64 = 1e-5;

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
        if OPS.contains(&self.op.as_str())
            && !["mul", "matmul", "trunc"].contains(&self.op.as_str())
        {
            self.nonlinear()?;
        }
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
        let r = self.range();
        if r.0.partial_cmp(&r.1) != Some(std::cmp::Ordering::Less) {
            bail!("--range LO,HI needs LO < HI (got {:?})", r);
        }
        Ok(())
    }

    /// The input range: `--range` or the op's documented default (issue 5's table).
    pub fn range(&self) -> (f64, f64) {
        self.range.unwrap_or(match self.op.as_str() {
            "gelu" | "silu" => (-16.0, 16.0),
            "softmax" => (-30.0, 30.0),
            "reciprocal" => (1e-2, 1e4),
            "rsqrt" => (1e-3, 1e4),
            "exp" => (-16.0, 4.0),
            _ => (-4.0, 4.0),
        })
    }

    fn nonlinear(&self) -> Result<Nonlinear> {
        let (m, op) = (&self.method, self.op.as_str());
        Ok(match op {
            "gelu" => Nonlinear::Gelu(parse_method(m, op)?),
            "silu" => Nonlinear::Silu(parse_method(m, op)?),
            "softmax" => Nonlinear::Softmax(parse_method(m, op)?),
            "layernorm" => Nonlinear::LayerNorm(parse_method(m, op)?),
            "rmsnorm" => Nonlinear::RmsNorm(parse_method(m, op)?),
            "reciprocal" => Nonlinear::Reciprocal(parse_method(m, op)?),
            "rsqrt" => Nonlinear::Rsqrt(parse_method(m, op)?),
            "exp" => Nonlinear::Exp(parse_method(m, op)?),
            o => bail!("{o} is not a nonlinear op"),
        })
    }

    /// The op's secret inputs.
    pub fn inputs(&self) -> Result<Vec<Input>> {
        let s = &self.shape;
        let r = self.range();
        let one = |owner, shape: &[usize], seed| -> Result<Input> {
            Ok(Input {
                owner,
                value: uniform(shape, r, seed)?,
            })
        };
        Ok(match self.op.as_str() {
            "mul" => vec![one(0, s, self.seed)?, one(1, s, self.seed + 1)?],
            "matmul" => vec![
                one(0, &[s[0], s[1]], self.seed)?,
                one(1, &[s[1], s[2]], self.seed + 1)?,
            ],
            "layernorm" => {
                let value = match self.range {
                    Some(_) => uniform(s, r, self.seed)?,
                    None => layernorm_rows(s, self.seed)?,
                };
                let d = *s.last().unwrap_or(&1);
                vec![
                    Input { owner: 0, value },
                    Input {
                        owner: 1,
                        value: Tensor::from_vec(&[d], vec![1.0; d])?,
                    },
                    Input {
                        owner: 1,
                        value: Tensor::from_vec(&[d], vec![0.0; d])?,
                    },
                ]
            }
            "rmsnorm" => {
                let value = match self.range {
                    Some(_) => uniform(s, r, self.seed)?,
                    None => rmsnorm_rows(s, self.seed)?,
                };
                let d = *s.last().unwrap_or(&1);
                vec![
                    Input { owner: 0, value },
                    Input {
                        owner: 1,
                        value: Tensor::from_vec(&[d], vec![1.0; d])?,
                    },
                ]
            }
            _ => vec![one(0, s, self.seed)?],
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
    pub fn demand(&self, setting: Setting, frac_bits: u32) -> Result<Demand> {
        let n = self.out_len();
        let f = frac_bits;
        Ok(match self.op.as_str() {
            "mul" => arith::demand::mul_trunc(setting, n, f),
            "matmul" => {
                arith::demand::matmul_trunc(setting, &self.shape[..2], &self.shape[1..], f)?
            }
            "trunc" => arith::demand::truncate(n, f),
            _ => match self.nonlinear()? {
                Nonlinear::Gelu(m) => gelu::gelu_demand(n, m, setting, f),
                Nonlinear::Silu(m) => silu::silu_demand(n, m, setting, f),
                Nonlinear::Softmax(m) => softmax::softmax_demand(&self.shape, m, setting, f),
                Nonlinear::LayerNorm(m) => layernorm::layernorm_demand(&self.shape, m, setting, f),
                Nonlinear::RmsNorm(m) => rmsnorm::rmsnorm_demand(&self.shape, m, setting, f),
                Nonlinear::Reciprocal(m) => reciprocal::reciprocal_demand(n, m, setting, f),
                Nonlinear::Rsqrt(m) => rsqrt::rsqrt_demand(n, m, setting, f),
                Nonlinear::Exp(m) => exp::exp_demand(n, m, setting, f),
            },
        })
    }

    /// Runs the secure op on already-shared inputs.
    pub fn run(&self, p: &mut Party, xs: &[Shared]) -> Result<Shared> {
        Ok(match self.op.as_str() {
            "mul" => arith::mul_trunc(p, &xs[0], &xs[1])?,
            "matmul" => arith::matmul_trunc(p, &xs[0], &xs[1])?,
            // The input was encoded with 2f fractional bits (as a product would be).
            "trunc" => arith::truncate(p, &xs[0])?,
            _ => match self.nonlinear()? {
                Nonlinear::Gelu(m) => gelu::gelu(p, &xs[0], m)?,
                Nonlinear::Silu(m) => silu::silu(p, &xs[0], m)?,
                Nonlinear::Softmax(m) => softmax::softmax(p, &xs[0], None, m)?,
                Nonlinear::LayerNorm(m) => {
                    layernorm::layernorm(p, &xs[0], &xs[1], &xs[2], 1e-12, m)?
                }
                Nonlinear::RmsNorm(m) => rmsnorm::rmsnorm(p, &xs[0], &xs[1], RMSNORM_EPS, m)?,
                Nonlinear::Reciprocal(m) => reciprocal::reciprocal(p, &xs[0], m)?,
                Nonlinear::Rsqrt(m) => rsqrt::rsqrt(p, &xs[0], m)?,
                Nonlinear::Exp(m) => exp::exp(p, &xs[0], m)?,
            },
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

    /// True where the issue states the bound as a relative error.
    pub fn relative(&self) -> bool {
        matches!(self.op.as_str(), "reciprocal" | "rsqrt")
    }

    /// The exact f64 function of the inputs as encoded (the quantisation of an input to
    /// the fixed-point grid is not the protocol's error).
    pub fn reference(&self, inputs: &[Input], frac_bits: u32) -> Result<Tensor<f64>> {
        let fx = tessera::FixedPoint::new(frac_bits)?;
        let q = |t: &Tensor<f64>| -> Result<Tensor<f64>> {
            Ok(fx.decode_tensor(&fx.encode_tensor(t)?))
        };
        let x = q(&inputs[0].value)?;
        let rows = |t: &Tensor<f64>, f: &dyn Fn(&[f64]) -> Vec<f64>| -> Result<Tensor<f64>> {
            let d = t.last_dim().max(1);
            let data: Vec<f64> = t.data().chunks(d).flat_map(f).collect();
            Ok(Tensor::from_vec(t.shape(), data)?)
        };
        Ok(match self.op.as_str() {
            "mul" => x.zip_with(&q(&inputs[1].value)?, "mul", |a, b| a * b)?,
            "matmul" => x.matmul(&q(&inputs[1].value)?)?,
            "trunc" => inputs[0].value.clone(),
            "gelu" => x.map(gelu::gelu_exact),
            "silu" => x.map(silu::silu_exact),
            "exp" => x.map(f64::exp),
            "reciprocal" => x.map(|v| 1.0 / v),
            "rsqrt" => x.map(|v| 1.0 / v.sqrt()),
            "softmax" => rows(&x, &|r| {
                let m = r.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let e: Vec<f64> = r.iter().map(|v| (v - m).exp()).collect();
                let s: f64 = e.iter().sum();
                e.iter().map(|v| v / s).collect()
            })?,
            "layernorm" => rows(&x, &|r| {
                let n = r.len() as f64;
                let mean = r.iter().sum::<f64>() / n;
                let var = r.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / n;
                r.iter()
                    .map(|v| (v - mean) / (var + 1e-12).sqrt())
                    .collect()
            })?,
            "rmsnorm" => rows(&x, &|r| {
                let ones = vec![1.0; r.len()];
                rmsnorm::rmsnorm_plain(r, &ones, RMSNORM_EPS)
            })?,
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

/// Max relative error max(|got - want| - slack, 0) / |want| (over elements with want != 0);
/// `slack` allows for the output's own rounding to the fixed-point grid.
pub fn max_rel_error(got: &[f64], want: &[f64], slack: f64) -> f64 {
    got.iter()
        .zip(want)
        .filter(|(_, w)| **w != 0.0)
        .map(|(g, w)| ((g - w).abs() - slack).max(0.0) / w.abs())
        .fold(0.0, f64::max)
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
