//! Writing a new protocol against Tessera's public API: f(x) = x^3 + sigmoid(x), with the
//! sigmoid approximated by the cubic 0.5 + 0.1972 x - 0.004 x^3 (accurate to ~0.02 on
//! [-5, 5]). The whole protocol is the function below; it runs unchanged in 2PC and 3PC.
//!
//! Run: `cargo run --release -p tessera-parties --example custom_protocol`

use tessera::{Party, Result, Shared};
use tessera_protocols::arith::{mul_trunc, truncate};

/// Plaintext definition of the approximation (what the secure result must match).
pub fn cube_plus_sigmoid_plain(x: f64) -> f64 {
    x.powi(3) + 0.5 + 0.1972 * x - 0.004 * x.powi(3)
}

/// Secure x^3 + sigmoid_poly(x): two multiplications, one linear combination with public
/// fixed-point coefficients and one truncation. Rounds: 2 + 2 + 1 (2PC) or 2 (3PC).
pub fn cube_plus_sigmoid(p: &mut Party, x: &Shared) -> Result<Shared> {
    let fx = p.fixed();
    let x2 = mul_trunc(p, x, x)?; // x^2 at scale 2^f
    let x3 = mul_trunc(p, &x2, x)?; // x^3 at scale 2^f
                                    // 0.1972 x - 0.004 x^3 carries 2f fractional bits: one truncation for both terms.
    let lin = x
        .scale(fx.encode(0.1972)?)
        .sub(&x3.scale(fx.encode(0.004)?))?;
    let lin = truncate(p, &lin)?;
    Ok(x3.add(&lin)?.add_public_scalar(p, fx.encode(0.5)?))
}

#[allow(dead_code)]
fn main() -> Result<()> {
    use tessera::{runtime, Setting, Tensor};
    let xs: Vec<f64> = (-10..=10).map(|i| i as f64 * 0.5).collect();
    for setting in [Setting::TwoPc, Setting::ThreePc] {
        let outs = runtime::run(setting, |p| {
            let fx = p.fixed();
            let t = fx.encode_tensor(&Tensor::from_vec(&[xs.len()], xs.clone())?)?;
            let x = p.share_input(0, (p.id() == 0).then_some(&t), &[xs.len()])?;
            let y = cube_plus_sigmoid(p, &x)?;
            Ok((fx.decode_tensor(&p.open(&y)?), p.stats()))
        })?;
        let (y, stats) = &outs[0].value;
        let err = xs
            .iter()
            .zip(y.data())
            .map(|(x, y)| (cube_plus_sigmoid_plain(*x) - y).abs())
            .fold(0.0, f64::max);
        println!(
            "{}: x^3 + sigmoid(x) on {} points, max |secure - plaintext| = {err:.2e}, {} rounds, {} bytes sent by P0",
            setting.name(),
            xs.len(),
            stats.rounds,
            stats.online_sent
        );
    }
    Ok(())
}
