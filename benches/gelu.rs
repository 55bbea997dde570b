//! Criterion benchmark of GeLU (`tessera_protocols::gelu`) on BERT-base's FFN shape,
//! 128 x 3072 = 393,216 elements, in 2PC and 3PC, for every method.
//!
//! Material is planned (`MaterialMode::Planned` with `gelu_demand`): the dealer deals
//! everything during session setup, so the measured time is the online phase of the
//! slowest party (material expansion, openings, key evaluations, products, reshare).
//! Rounds, online bytes sent per party and the dealer's (offline) bytes to P0 / P1 are
//! printed once per configuration. `TESSERA_BENCH_N` overrides the element count.
//!
//! `cargo bench -p tessera-parties --bench gelu`

#![allow(missing_docs)] // criterion_group! expands to an undocumented `pub fn`.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, SamplingMode};
use std::time::{Duration, Instant};
use tessera::runtime::run_parties;
use tessera::{CommStats, FixedPoint, MaterialMode, SessionOptions, Setting, Tensor};
use tessera_protocols::gelu::{gelu, gelu_demand, GeluMethod};

fn shape() -> (usize, usize) {
    let n = std::env::var("TESSERA_BENCH_N")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(128 * 3072);
    (n / 3072.min(n), 3072.min(n))
}

/// One planned session running GeLU once; the slowest party's online time and every
/// compute party's counters for the op.
fn session(setting: Setting, method: GeluMethod) -> (Duration, Vec<CommStats>) {
    let (rows, cols) = shape();
    let n = rows * cols;
    let fx = FixedPoint::default();
    let demand = gelu_demand(n, method, setting, fx.frac_bits());
    let opts = SessionOptions {
        material: MaterialMode::Planned(demand),
        ..Default::default()
    };
    // Inputs uniform-ish in [-8, 8).
    let v: Vec<u64> = (0..n as u64)
        .map(|i| (i.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 44) as i64 - (1 << 19))
        .map(|x| x as u64)
        .collect();
    let x = Tensor::from_vec(&[rows, cols], v).unwrap();
    let outs = run_parties(setting, opts, |p| {
        let xs = p.share_public(&x);
        // Synchronise: a party that finished setup early must not time its peer's setup.
        p.open(&tessera::Shared::zeros(p, &[1]))?;
        let before = p.stats();
        let t = Instant::now();
        let y = gelu(p, &xs, method)?;
        let el = t.elapsed();
        std::hint::black_box(y);
        Ok((el, p.stats().since(&before)))
    })
    .unwrap();
    let time = outs.iter().map(|o| o.value.0).max().unwrap();
    (time, outs.iter().map(|o| o.value.1).collect())
}

fn gelu_bench(c: &mut Criterion) {
    let (rows, cols) = shape();
    let n = rows * cols;
    let mut g = c.benchmark_group("gelu");
    g.sampling_mode(SamplingMode::Flat)
        .sample_size(10)
        .warm_up_time(Duration::from_millis(1))
        .measurement_time(Duration::from_secs(5));
    for setting in [Setting::TwoPc, Setting::ThreePc] {
        for &method in GeluMethod::ALL {
            let (t, stats) = session(setting, method);
            let rounds = stats.iter().map(|s| s.rounds).max().unwrap();
            let d = gelu_demand(n, method, setting, FixedPoint::default().frac_bits());
            eprintln!(
                "gelu {setting} {method} {rows}x{cols}: online {t:?}, rounds {rounds}, online bytes \
                 sent per party {:?}, dealer bytes to P0/P1 {}/{}",
                stats.iter().map(|s| s.online_sent).collect::<Vec<_>>(),
                8 * d.correction_words(0),
                8 * d.correction_words(1),
            );
            let id = BenchmarkId::new(format!("{setting}_{method}"), format!("{rows}x{cols}"));
            g.bench_function(id, |b| {
                b.iter_custom(|iters| (0..iters).map(|_| session(setting, method).0).sum())
            });
        }
    }
    g.finish();
}

criterion_group!(benches, gelu_bench);
criterion_main!(benches);
