//! The `examples/custom_protocol.rs` protocol, checked against its plaintext definition.

#[path = "../examples/custom_protocol.rs"]
#[allow(dead_code)]
mod example;

use tessera::{runtime, Setting, Tensor};

#[test]
fn user_written_protocol_matches_plaintext_in_both_settings() {
    let xs: Vec<f64> = (-40..=40).map(|i| i as f64 * 0.125).collect();
    for setting in [Setting::TwoPc, Setting::ThreePc] {
        let outs = runtime::run(setting, |p| {
            let fx = p.fixed();
            let t = fx.encode_tensor(&Tensor::from_vec(&[xs.len()], xs.clone())?)?;
            let x = p.share_input(0, (p.id() == 0).then_some(&t), &[xs.len()])?;
            let y = example::cube_plus_sigmoid(p, &x)?;
            Ok(fx.decode_tensor(&p.open(&y)?))
        })
        .unwrap();
        for (x, y) in xs.iter().zip(outs[0].value.data()) {
            // Three truncations, each within 1 ulp, amplified by |x| <= 5 in x^3: 1e-3.
            let want = example::cube_plus_sigmoid_plain(*x);
            assert!((want - y).abs() < 1e-3, "{setting:?} x={x}: {y} vs {want}");
        }
    }
}
