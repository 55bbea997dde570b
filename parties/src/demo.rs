//! The main job: a private two-layer network with a square activation, checked against
//! its plaintext f64 evaluation.
//!
//! P0 is the data owner (input X), P1 the model owner (W1, b1, W2); only P0 learns Y =
//! ((X W1 + b1)^2) W2. Weights and inputs are deterministic, generated in code, so nothing
//! has to be downloaded. (The BERT demo replaces this once the transformer protocols land.)

use crate::job::{DemoArgs, PartyReport};
use anyhow::Result;
use std::sync::Arc;
use std::time::Instant;
use tessera::net::Transport;
use tessera::{FixedPoint, Party, SessionOptions, Setting, Tensor};
use tessera_protocols::arith;

const D_IN: usize = 16;
const D_HID: usize = 32;
const D_OUT: usize = 8;
/// Tolerance of the check: inputs and weights are encoded to 2^-17 and each of the four
/// truncations errs by at most 1 ulp (2^-16); through |W| <= 0.5 sums of 16-32 terms and
/// the square of |h| < 4 this stays below ~1e-4 (measured 6e-5); 1e-3 leaves margin while
/// any real protocol error (a wrong share, a missed truncation) is far larger.
const TOLERANCE: f64 = 1e-3;

fn det(shape: &[usize], salt: u64, scale: f64) -> Tensor<f64> {
    let n: usize = shape.iter().product();
    let data = (0..n)
        .map(|i| {
            let v = ((i as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15)
                ^ salt.wrapping_mul(0xD1B5_4A32_D192_ED03))
                >> 11;
            (v as f64 / (1u64 << 53) as f64 * 2.0 - 1.0) * scale
        })
        .collect();
    Tensor::from_vec(shape, data).expect("shape")
}

/// Deterministic demo model and input.
pub fn model(rows: usize) -> (Tensor<f64>, Tensor<f64>, Tensor<f64>, Tensor<f64>) {
    (
        det(&[rows, D_IN], 1, 1.0),
        det(&[D_IN, D_HID], 2, 0.5),
        det(&[D_HID], 3, 0.1),
        det(&[D_HID, D_OUT], 4, 0.3),
    )
}

/// Plaintext f64 forward pass.
pub fn plaintext(rows: usize) -> Result<Tensor<f64>> {
    let (x, w1, b1, w2) = model(rows);
    let h = x.matmul(&w1)?.zip_rows(b1.data(), "bias", |a, b| a + b)?;
    let a = h.map(|v| v * v);
    Ok(a.matmul(&w2)?)
}

/// Runs the demo as one party.
pub fn run(
    setting: Setting,
    net: Arc<dyn Transport>,
    fixed: FixedPoint,
    args: &DemoArgs,
) -> Result<PartyReport> {
    let rows = args.rows.max(1);
    let id = net.id();
    let t = Instant::now();
    let mut p = Party::setup(
        setting,
        net,
        SessionOptions {
            fixed,
            ..Default::default()
        },
    )?;
    if setting == Setting::TwoPc && id == tessera::party::DEALER {
        p.serve_dealer()?;
        return Ok(PartyReport {
            offline_s: t.elapsed().as_secs_f64(),
            stats: p.stats(),
            ..Default::default()
        });
    }
    let (x, w1, b1, w2) = model(rows);
    let enc = |t: &Tensor<f64>| fixed.encode_tensor(t);
    let (xe, w1e, b1e, w2e) = (enc(&x)?, enc(&w1)?, enc(&b1)?, enc(&w2)?);
    let mine = |owner: usize, t| (id == owner).then_some(t);
    let start = Instant::now();
    let before = p.stats();
    let xs = p.share_input(0, mine(0, &xe), xe.shape())?;
    let w1s = p.share_input(1, mine(1, &w1e), w1e.shape())?;
    let b1s = p.share_input(1, mine(1, &b1e), b1e.shape())?;
    let w2s = p.share_input(1, mine(1, &w2e), w2e.shape())?;
    let h = arith::matmul_trunc(&mut p, &xs, &w1s)?.add_rows(&b1s)?;
    let a = arith::square_trunc(&mut p, &h)?;
    let y = arith::matmul_trunc(&mut p, &a, &w2s)?;
    let out = p.reveal_to(0, &y)?;
    let online_s = start.elapsed().as_secs_f64();
    let stats = p.stats().since(&before);
    let mut max_abs_err = None;
    if let Some(y) = out {
        let got = fixed.decode_tensor(&y);
        let want = plaintext(rows)?;
        let (max, mean) = crate::ops::errors(got.data(), want.data());
        println!(
            "demo ({}, parties over QUIC): private 2-layer network Y = ((X W1 + b1)^2) W2, X {:?} from P0 (data owner), W1 {:?}, b1, W2 {:?} from P1 (model owner); only P0 learns Y",
            setting, x.shape(), w1.shape(), w2.shape()
        );
        println!("  secure Y[0]    = {:?}", &round4(&got.data()[..D_OUT]));
        println!("  plaintext Y[0] = {:?}", &round4(&want.data()[..D_OUT]));
        println!(
            "  check against the plaintext f64 forward pass: max |secure - plaintext| = {max:.2e}, mean {mean:.2e} over {} outputs ({})",
            got.len(),
            if max < TOLERANCE { "OK" } else { "TOO LARGE" }
        );
        println!(
            "  online {:.3} s, {} rounds, P0 sent {} bytes; dealer/offline bytes received {}",
            online_s, stats.rounds, stats.online_sent, stats.offline_recv
        );
        if max >= TOLERANCE {
            anyhow::bail!("secure result differs from the plaintext reference by {max:.3e} (tolerance {TOLERANCE:e})");
        }
        max_abs_err = Some(max);
    }
    p.finish()?;
    Ok(PartyReport {
        online_s,
        stats,
        max_abs_err,
        ..Default::default()
    })
}

fn round4(v: &[f64]) -> Vec<f64> {
    v.iter().map(|x| (x * 1e4).round() / 1e4).collect()
}
