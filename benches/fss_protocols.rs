//! Criterion benchmarks for the FSS comparison protocols (`tessera_protocols::compare`):
//! DReLU of N elements in 2PC and 3PC over the in-memory transport.
//!
//! Material is planned (`MaterialMode::Planned`): the dealer deals every key during
//! session setup, so the measured time is the online phase only: expanding the
//! material (parsing the keys), the masked opening, the key evaluations and, in 3PC, the
//! reshare. It is the slowest party's time. N defaults to 10^5 (10^6 with 64-bit keys
//! needs ~1.5 GB of keys per party plus their parsed form; set `TESSERA_BENCH_N` to run
//! it). Bytes and rounds come from each party's `CommStats` and are printed once per
//! configuration.

#![allow(missing_docs)] // criterion_group! expands to an undocumented `pub fn`.

use criterion::{
    criterion_group, criterion_main, BenchmarkId, Criterion, SamplingMode, Throughput,
};
use std::time::{Duration, Instant};
use tessera::fss::material::FssRequest;
use tessera::preproc::{Demand, Request};
use tessera::runtime::run_parties;
use tessera::{CommStats, MaterialMode, SessionOptions, Setting, Tensor};
use tessera_protocols::compare::drelu;

fn elements() -> usize {
    std::env::var("TESSERA_BENCH_N")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000)
}

/// One planned session running DReLU on n values; returns the slowest party's online
/// time and every compute party's counters for the op.
fn session(setting: Setting, n: usize, bits: u32) -> (Duration, Vec<CommStats>) {
    let demand = Demand(vec![Request::Fss(FssRequest::Sign { n, bits })]);
    let opts = SessionOptions {
        material: MaterialMode::Planned(demand),
        ..Default::default()
    };
    let half = 1u64 << (bits - 2);
    let v: Vec<u64> = (0..n as u64)
        .map(|i| i.wrapping_mul(0x9e37_79b9_7f4a_7c15) % (2 * half))
        .map(|x| x.wrapping_sub(half))
        .collect();
    let x = Tensor::from_vec(&[n], v).unwrap();
    let outs = run_parties(setting, opts, |p| {
        // Inputs are shared by an outside data owner: every party builds its share
        // locally (a sharing of x with P0 holding x), so no round is spent on it.
        let xs = p.share_public(&x);
        let before = p.stats();
        let t = Instant::now();
        let d = drelu(p, &xs, bits)?;
        let el = t.elapsed();
        std::hint::black_box(d);
        Ok((el, p.stats().since(&before)))
    })
    .unwrap();
    let time = outs.iter().map(|o| o.value.0).max().unwrap();
    (time, outs.iter().map(|o| o.value.1).collect())
}

fn drelu_bench(c: &mut Criterion) {
    let n = elements();
    let mut g = c.benchmark_group("fss_drelu");
    g.sampling_mode(SamplingMode::Flat)
        .sample_size(10)
        .warm_up_time(Duration::from_millis(1))
        .measurement_time(Duration::from_secs(2))
        .throughput(Throughput::Elements(n as u64));
    for setting in [Setting::TwoPc, Setting::ThreePc] {
        for bits in [64u32, 37] {
            let (t, stats) = session(setting, n, bits);
            let rounds = stats.iter().map(|s| s.rounds).max().unwrap();
            let req = FssRequest::Sign { n, bits };
            eprintln!(
                "drelu {} n={n} bits={bits}: online {t:?}, rounds {rounds}, online bytes sent per party {:?}, \
                 dealer bytes to P0/P1 {}/{}",
                setting.name(),
                stats.iter().map(|s| s.online_sent).collect::<Vec<_>>(),
                8 * req.correction_len(0),
                8 * req.correction_len(1),
            );
            let id = BenchmarkId::new(format!("{}_bits{bits}", setting.name()), n);
            g.bench_function(id, |b| {
                b.iter_custom(|iters| (0..iters).map(|_| session(setting, n, bits).0).sum())
            });
        }
    }
    g.finish();
}

criterion_group!(benches, drelu_bench);
criterion_main!(benches);
