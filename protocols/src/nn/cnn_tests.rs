//! Tests of the CNN modules (convolution, pooling, activations, argmax) and of the ResNet
//! family against plaintext f64, in both settings, with rounds and consumed material held.

use super::act::{argmax_plain, Activation};
use super::conv::{
    conv2d_plain, conv_weight_matrix, global_avg_pool, global_avg_pool_plain, im2col, ConvSpec,
    ConvWeights,
};
use super::linear::Keys;
use super::{plan_steps, total_demand, AvgPool2d, Conv2d, Cx, MaxPool2d, Methods, DATA_OWNER};
use crate::models::resnet::ResNet;
use crate::resnet::{BlockKind, ResNetConfig, ResNetWeights};
use rand::{Rng, SeedableRng};
use tessera::runtime::run_parties;
use tessera::{FixedPoint, MaterialMode, Party, SessionOptions, Setting, Shared, Tensor};

const SETTINGS: [Setting; 2] = [Setting::TwoPc, Setting::ThreePc];

fn rand_tensor(shape: &[usize], lo: f64, hi: f64, seed: u64) -> Tensor<f64> {
    let mut r = rand::rngs::StdRng::seed_from_u64(seed);
    let n = shape.iter().product();
    Tensor::from_vec(shape, (0..n).map(|_| r.gen_range(lo..hi)).collect()).unwrap()
}

fn max_err(a: &[f64], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f64::max)
}

/// Plans `f` in `setting`, runs it on shared `x` (owner P0) with exactly the planned
/// material, and returns the opened output, the forward's rounds and whether the consumed
/// material equalled the plan.
fn run_planned(
    setting: Setting,
    x: &Tensor<f64>,
    f: impl Fn(&mut Party, &mut Cx, &Shared) -> tessera::Result<Shared> + Sync,
) -> (Vec<f64>, u64) {
    let fx = FixedPoint::default();
    let steps = plan_steps(setting, fx, Methods::default(), usize::MAX, |p, cx| {
        let xs = Shared::zeros(p, x.shape());
        f(p, cx, &xs).map(|_| ())
    })
    .unwrap();
    let all = total_demand(&steps);
    let opts = SessionOptions {
        material: MaterialMode::Planned(all.clone()),
        ..Default::default()
    };
    let outs = run_parties(setting, opts, |p| {
        let enc = p.fixed().encode_tensor(x)?;
        let xs = p.share_input(
            DATA_OWNER,
            (p.id() == DATA_OWNER).then_some(&enc),
            x.shape(),
        )?;
        let before = p.stats();
        let mut cx = Cx::run(Methods::default());
        let y = f(p, &mut cx, &xs)?;
        let rounds = p.stats().since(&before).rounds;
        let consumed = p.consumed_demand();
        let t = p.open(&y)?;
        Ok((fx.decode_tensor(&t).into_data(), rounds, consumed))
    })
    .unwrap();
    assert_eq!(outs[0].value.2, all, "consumed = planned ({setting:?})");
    (outs[0].value.0.clone(), outs[0].value.1)
}

/// A direct seven-loop convolution (NHWC input, OIHW weight): an independent reference
/// for im2col and the weight reordering.
fn conv_naive(x: &Tensor<f64>, w: &Tensor<f64>, b: &[f64], s: &ConvSpec) -> Vec<f64> {
    let [n, h, wd, c] = *x.shape() else { panic!() };
    let (ho, wo) = s.out_hw(h, wd).unwrap();
    let (kh, kw) = s.kernel;
    let (cg, og) = (s.cin / s.groups, s.cout / s.groups);
    let mut out = vec![0.0; n * ho * wo * s.cout];
    for bi in 0..n {
        for oy in 0..ho {
            for ox in 0..wo {
                for o in 0..s.cout {
                    let g = o / og;
                    let mut acc = b[o];
                    for ci in 0..cg {
                        for ky in 0..kh {
                            for kx in 0..kw {
                                let y = (oy * s.stride + ky) as isize - s.padding as isize;
                                let xx = (ox * s.stride + kx) as isize - s.padding as isize;
                                if y < 0 || xx < 0 || y as usize >= h || xx as usize >= wd {
                                    continue;
                                }
                                let xi =
                                    ((bi * h + y as usize) * wd + xx as usize) * c + g * cg + ci;
                                let wi = ((o * cg + ci) * kh + ky) * kw + kx;
                                acc += x.data()[xi] * w.data()[wi];
                            }
                        }
                    }
                    out[((bi * ho + oy) * wo + ox) * s.cout + o] = acc;
                }
            }
        }
    }
    out
}

fn specs() -> Vec<ConvSpec> {
    vec![
        ConvSpec::square(3, 4, 3, 1, 1),
        ConvSpec {
            groups: 2,
            ..ConvSpec::square(4, 6, 3, 2, 1)
        },
        ConvSpec {
            groups: 4,
            ..ConvSpec::square(4, 4, 3, 1, 1)
        },
        ConvSpec::square(3, 5, 1, 2, 0),
        ConvSpec {
            kernel: (2, 3),
            ..ConvSpec::square(2, 3, 1, 2, 0)
        },
    ]
}

#[test]
fn conv_plain_matches_naive_loops() {
    for (i, s) in specs().into_iter().enumerate() {
        let x = rand_tensor(&[2, 7, 6, s.cin], -2.0, 2.0, i as u64);
        let w = rand_tensor(
            &[s.cout, s.cin / s.groups, s.kernel.0, s.kernel.1],
            -1.0,
            1.0,
            9,
        );
        let b: Vec<f64> = (0..s.cout).map(|o| o as f64 * 0.25 - 0.5).collect();
        let got = conv2d_plain(&x, &w, Some(&b), &s).unwrap();
        let want = conv_naive(&x, &w, &b, &s);
        assert!(max_err(got.data(), &want) < 1e-12, "{s:?}");
    }
    // Shape errors name the layer.
    let s = ConvSpec::square(3, 4, 3, 1, 0);
    let e = conv_weight_matrix(&Tensor::zeros(&[4, 2, 3, 3]), &s).unwrap_err();
    assert!(e.to_string().contains("conv2d weight"), "{e}");
    let e = im2col(&[0u64; 4], (1, 2, 2, 1), (3, 3), 1, 0).unwrap_err();
    assert!(e.to_string().contains("kernel 3x3"), "{e}");
    let bad = ConvSpec {
        groups: 3,
        ..ConvSpec::square(4, 6, 3, 1, 1)
    };
    assert!(bad.validate().unwrap_err().to_string().contains("groups 3"));
}

/// Secure convolution with stride, padding and groups against f64. Tolerance: each of
/// the k = kh kw cin/groups products carries the encoding errors of x and w (2^-17 each
/// at f = 16), so |err| <= k (max|w| + max|x|) 2^-17 + 2 ulp (the truncation and the
/// bias); measured errors are ~10x below. Rounds (P0): 2 in both settings (P0's one-sided
/// x - A for the owner-held weight, then the truncation's top bit back; the 3PC result is
/// a pair, with no reshare).
#[test]
fn secure_conv2d_matches_plain_in_both_settings() {
    for s in SETTINGS {
        for (i, spec) in specs().into_iter().enumerate() {
            let x = rand_tensor(&[2, 7, 6, spec.cin], -2.0, 2.0, 10 + i as u64);
            let w = rand_tensor(
                &[
                    spec.cout,
                    spec.cin / spec.groups,
                    spec.kernel.0,
                    spec.kernel.1,
                ],
                -1.0,
                1.0,
                20 + i as u64,
            );
            let b: Vec<f64> = (0..spec.cout).map(|o| 0.1 * o as f64).collect();
            let want = conv2d_plain(&x, &w, Some(&b), &spec).unwrap();
            let conv = Conv2d::new(spec, true, &mut Keys::new()).unwrap();
            let (got, rounds) = run_planned(s, &x, |p, cx, xs| {
                let mut c = conv.clone();
                c.share(p, cx, Some(ConvWeights { w: &w, b: Some(&b) }))?;
                let before = p.stats().rounds;
                let y = c.forward(p, cx, xs)?;
                if !cx.is_planning() && p.id() == 0 {
                    assert_eq!(p.stats().rounds - before, 2, "conv rounds {s:?}");
                }
                Ok(y)
            });
            let k = (spec.kernel.0 * spec.kernel.1 * spec.cin / spec.groups) as f64;
            let ulp = 2f64.powi(-16);
            let tol = k * 3.0 * ulp / 2.0 + 2.0 * ulp;
            let err = max_err(&got, want.data());
            assert!(err <= tol, "{s:?} {spec:?}: err {err:.3e} > {tol:.3e}");
            assert!(rounds >= 2);
        }
    }
}

/// Max pooling is exact on encoded inputs (comparisons and selections are exact), and
/// the padding never wins even when every input is negative. Rounds: the tree's
/// ceil(log2 k^2) levels in both settings (the 3PC tree returns a pair); the pools' one
/// truncation 1 in both.
#[test]
fn secure_maxpool_and_avgpool_match_plain() {
    let x = rand_tensor(&[2, 7, 7, 3], -5.0, -0.5, 3);
    let xq = x.map(|v| (v * 65536.0).round() / 65536.0);
    for s in SETTINGS {
        for (pool, levels) in [
            (
                MaxPool2d {
                    kernel: 3,
                    stride: 2,
                    padding: 1,
                },
                4,
            ),
            (
                MaxPool2d {
                    kernel: 2,
                    stride: 2,
                    padding: 0,
                },
                2,
            ),
        ] {
            let want = pool.plain(&xq).unwrap();
            let (got, rounds) = run_planned(s, &xq, |p, cx, xs| pool.forward(p, cx, xs));
            assert_eq!(max_err(&got, want.data()), 0.0, "{s:?} {pool:?}");
            assert_eq!(rounds, levels, "{s:?} {pool:?}");
        }
        // Average pooling: 1/k^2 encoded with f + 12 bits and one truncation: <= 2 ulp.
        let avg = AvgPool2d {
            kernel: 3,
            stride: 2,
            padding: 1,
        };
        let want = avg.plain(&xq).unwrap();
        let (got, _) = run_planned(s, &xq, |p, cx, xs| avg.forward(p, cx, xs));
        let err = max_err(&got, want.data());
        assert!(err <= 2.0 * 2f64.powi(-16), "{s:?} avg {err:.3e}");
        let want = global_avg_pool_plain(&xq).unwrap();
        let (got, rounds) = run_planned(s, &xq, global_avg_pool);
        let err = max_err(&got, want.data());
        assert!(err <= 2.0 * 2f64.powi(-16), "{s:?} gap {err:.3e}");
        assert_eq!(rounds, 1, "{s:?}");
    }
}

/// ReLU is exact on encoded inputs, including 0, +-1 ulp and the ends of its range
/// (|x| < 2^15 at f = 16); 1 round in both settings (the 3PC result is a pair).
#[test]
fn secure_relu_is_exact_on_edges() {
    let ulp = 2f64.powi(-16);
    let mut v = vec![0.0, ulp, -ulp, 32767.0, -32767.0, 1.5, -1.5];
    v.extend(
        rand_tensor(&[57], -100.0, 100.0, 4)
            .data()
            .iter()
            .map(|x| (x / ulp).round() * ulp),
    );
    let x = Tensor::from_vec(&[8, 8], v.clone()).unwrap();
    for s in SETTINGS {
        let (got, rounds) = run_planned(s, &x, |p, cx, xs| Activation::Relu.forward(p, cx, xs));
        let want: Vec<f64> = v.iter().map(|x| x.max(0.0)).collect();
        assert_eq!(max_err(&got, &want), 0.0, "{s:?}");
        assert_eq!(rounds, 1, "{s:?}");
    }
}

/// Polynomial activations (degree 2: the digits model's ReLU fit; degree 4) against f64.
/// Tolerance: the coefficients' encoding (2^-17 each, times |x|^i) and one ulp per
/// truncation carried through the Horner steps: 2 sum_i 6^i 2^-17 + 4 ulp on [-6, 6]
/// (7e-4 for degree 2, 2.4e-2 for degree 4, whose x^4 term amplifies the encoding of
/// 0.001 by 1296). Rounds: d = 1 one truncation (1); d >= 2: 2PC 2 (d - 1), 3PC 2d - 3 (the
/// first product takes replicated operands and goes straight into its truncation, 1;
/// each later one reshares the pair Horner value first, 2).
#[test]
fn secure_poly_matches_plain() {
    let x = rand_tensor(&[4, 32], -6.0, 6.0, 5);
    for s in SETTINGS {
        for c in [
            vec![0.375, 0.5, 0.1171875],
            vec![0.1, 0.5, 0.2, -0.01, 0.001],
            vec![0.25, -1.5],
        ] {
            let act = Activation::poly(&c).unwrap();
            let (got, rounds) = run_planned(s, &x, |p, cx, xs| act.forward(p, cx, xs));
            let want: Vec<f64> = x.data().iter().map(|&v| act.plain(v)).collect();
            let err = max_err(&got, &want);
            let tol = 2.0 * (0..c.len()).map(|i| 6f64.powi(i as i32)).sum::<f64>() * 2f64.powi(-17)
                + 4.0 * 2f64.powi(-16);
            assert!(err < tol, "{s:?} {c:?}: {err:.3e} > {tol:.3e}");
            let d = c.len() as u64 - 1;
            let want_rounds = match (d, s) {
                (1, _) => 1,
                (_, Setting::TwoPc) => 2 * (d - 1),
                (_, Setting::ThreePc) => 2 * d - 3,
            };
            assert_eq!(rounds, want_rounds, "{s:?} {c:?}");
        }
    }
    assert!(Activation::poly(&[1.0]).is_err());
    assert!(Activation::poly(&[1.0, f64::NAN]).is_err());
}

/// The private argmax returns the plaintext argmax (first maximum on ties) to P0 only;
/// 2 rounds per tree level in 2PC, 3 in 3PC (plus the final opening to P0).
#[test]
fn argmax_reveals_the_class_to_the_data_owner_only() {
    let mut rows = vec![
        vec![0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0],
        vec![9.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0],
        vec![-3.0; 10],
        vec![-1.0, -2.0, 5.5, 5.5, 0.0, 5.5, -7.0, 1.0, 1.0, 5.0],
    ];
    let r = rand_tensor(&[12, 10], -20.0, 20.0, 6);
    rows.extend(r.data().chunks(10).map(|c| c.to_vec()));
    let n = rows.len();
    let x = Tensor::from_vec(&[n, 10], rows.concat()).unwrap();
    let xq = x.map(|v| (v * 65536.0).round() / 65536.0);
    let want = argmax_plain(&xq);
    assert_eq!(&want[..4], &[9, 0, 0, 2]);
    let fx = FixedPoint::default();
    for s in SETTINGS {
        let steps = plan_steps(s, fx, Methods::default(), usize::MAX, |p, cx| {
            cx.argmax_reveal(p, &Shared::zeros(p, &[n, 10]), DATA_OWNER)
                .map(|_| ())
        })
        .unwrap();
        let opts = SessionOptions {
            material: MaterialMode::Planned(total_demand(&steps)),
            ..Default::default()
        };
        let outs = run_parties(s, opts, |p| {
            let enc = p.fixed().encode_tensor(&xq)?;
            let xs = p.share_input(DATA_OWNER, (p.id() == DATA_OWNER).then_some(&enc), &[n, 10])?;
            let before = p.stats().rounds;
            let got = Cx::run(Methods::default()).argmax_reveal(p, &xs, DATA_OWNER)?;
            Ok((got, p.stats().rounds - before))
        })
        .unwrap();
        assert_eq!(outs[0].value.0.as_ref(), Some(&want), "{s:?}");
        for o in &outs[1..] {
            assert_eq!(o.value.0, None, "{s:?}: only P0 learns the class");
        }
        let per_level = if s == Setting::TwoPc { 2 } else { 3 };
        assert_eq!(outs[0].value.1, 4 * per_level + 1, "{s:?}");
    }
}

fn tiny_config(block: BlockKind, act: Activation) -> ResNetConfig {
    ResNetConfig {
        block,
        in_channels: 2,
        image_size: (10, 10),
        num_classes: 5,
        stem: (3, 1, 1),
        stem_maxpool: block == BlockKind::Bottleneck,
        widths: vec![4, 6],
        blocks: vec![1, 2],
        bn_eps: 1e-5,
        activation: act,
        poly_range: None,
        plain_test_accuracy: None,
    }
}

/// BatchNorm folding is exact in f64.
#[test]
fn batchnorm_folding_is_exact() {
    let cfg = tiny_config(BlockKind::Basic, Activation::Relu);
    let x = rand_tensor(&[3, 10, 10, 2], -1.0, 1.0, 7);
    let w = ResNetWeights::random(&cfg, 3, &x).unwrap();
    let cb = &w.blocks[1].main[0];
    let y = rand_tensor(&[2, 5, 5, cb.spec.cin], -1.0, 1.0, 8);
    let (fw, fb) = cb.folded(cfg.bn_eps);
    let a = cb.plain(&y, cfg.bn_eps).unwrap();
    let b = conv2d_plain(&y, &fw, Some(&fb), &cb.spec).unwrap();
    assert!(max_err(a.data(), b.data()) < 1e-12);
}

/// A small ResNet (basic blocks; bottleneck blocks with the ImageNet max pool; ReLU and
/// degree-2 polynomial activations) under MPC against its f64 forward pass: the logits
/// within 2e-2 (fixed-point errors through ~10 layers of trained-scale activations,
/// measured ~1e-3) and the classes equal, with exactly the planned material.
#[test]
fn secure_resnet_matches_plain() {
    let x = rand_tensor(&[3, 10, 10, 2], -1.5, 1.5, 11);
    for s in SETTINGS {
        for (block, act) in [
            (BlockKind::Basic, Activation::Relu),
            (BlockKind::Bottleneck, Activation::Relu),
            (
                BlockKind::Basic,
                Activation::poly(&[0.375, 0.5, 0.1171875]).unwrap(),
            ),
        ] {
            let cfg = tiny_config(block, act);
            let w = ResNetWeights::random(&cfg, 5, &x).unwrap();
            let want = w.forward_plain(&x).unwrap();
            let model = ResNet::new(&cfg).unwrap();
            let (got, _) = run_planned(s, &x, |p, cx, xs| {
                let mut m = model.clone();
                m.share(p, cx, Some(&w))?;
                m.forward(p, cx, xs)
            });
            let err = max_err(&got, want.data());
            println!("resnet {s:?} {block:?}: logits max abs err {err:.3e}");
            assert!(err < 2e-2, "{s:?} {block:?}: {err:.3e}");
            let got_t = Tensor::from_vec(want.shape(), got).unwrap();
            assert_eq!(argmax_plain(&got_t), argmax_plain(&want), "{s:?} {block:?}");
        }
    }
}

/// The frozen backbone's features (trunk + global average pool over a 5 x 5 map, a
/// divisor that is not a power of two) against f64: within 2e-2 like the logits (the
/// pool's scale adds at most 2^-21 x 25 relative, 1.2e-5), with exactly the planned
/// material and one truncation's rounds more than the trunk.
#[test]
fn secure_resnet_features_match_plain() {
    let x = rand_tensor(&[3, 10, 10, 2], -1.5, 1.5, 12);
    for s in SETTINGS {
        let cfg = tiny_config(BlockKind::Basic, Activation::Relu);
        assert_eq!(cfg.final_hw().unwrap(), (5, 5));
        let w = ResNetWeights::random(&cfg, 6, &x).unwrap();
        let want = w.features_plain(&x).unwrap();
        assert_eq!(want.shape(), [3, cfg.features()]);
        let model = ResNet::new(&cfg).unwrap();
        let (got, _) = run_planned(s, &x, |p, cx, xs| {
            let mut m = model.clone();
            m.share(p, cx, Some(&w))?;
            m.features(p, cx, xs)
        });
        let err = max_err(&got, want.data());
        println!("resnet features {s:?}: max abs err {err:.3e}");
        assert!(err < 2e-2, "{s:?}: {err:.3e}");
    }
}
