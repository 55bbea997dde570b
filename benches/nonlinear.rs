//! Criterion benchmarks of the transformer nonlinear protocols at BERT-base shapes:
//! softmax on 12x128x128 and LayerNorm on 128x768, every method, both settings, over
//! the in-memory transport.
//!
//! Material is planned (`MaterialMode::Planned` with the op's `*_demand`): the dealer
//! deals everything during session setup, so the time is the online phase of the
//! slowest party. Rounds and online bytes sent per party (max over parties) are printed
//! once per configuration, with the offline bytes the dealer sent.
//!
//! `cargo bench -p tessera-parties --bench nonlinear`

#![allow(missing_docs)] // criterion_group! expands to an undocumented `pub fn`.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, SamplingMode};
use std::time::{Duration, Instant};
use tessera::preproc::Demand;
use tessera::runtime::run_parties;
use tessera::{
    CommStats, FixedPoint, MaterialMode, Party, SessionOptions, Setting, Shared, Tensor,
};
use tessera_protocols::layernorm::{layernorm, layernorm_demand, LayerNormMethod};
use tessera_protocols::softmax::{softmax, softmax_demand, SoftmaxMethod};

type Op<'a> = dyn Fn(&mut Party, &Shared) -> tessera::Result<Shared> + Sync + 'a;

/// One planned session running `op` once on a shared tensor of `shape`; returns the
/// slowest party's online time and the max-over-parties counters.
fn session(
    setting: Setting,
    shape: &[usize],
    demand: Demand,
    op: &Op<'_>,
) -> (Duration, CommStats) {
    let opts = SessionOptions {
        material: MaterialMode::Planned(demand),
        ..Default::default()
    };
    let fx = FixedPoint::default();
    let n: usize = shape.iter().product();
    let v: Vec<f64> = (0..n)
        .map(|i| ((i * 7919) % 6001) as f64 / 100.0 - 30.0)
        .collect();
    let x = Tensor::from_vec(shape, fx.encode_slice(&v).unwrap()).unwrap();
    let outs = run_parties(setting, opts, |p| {
        let xs = p.share_public(&x);
        let before = p.stats();
        let t = Instant::now();
        std::hint::black_box(op(p, &xs)?);
        Ok((t.elapsed(), p.stats().since(&before)))
    })
    .unwrap();
    let time = outs.iter().map(|o| o.value.0).max().unwrap();
    let st = outs.iter().fold(CommStats::default(), |a, o| CommStats {
        rounds: a.rounds.max(o.value.1.rounds),
        online_sent: a.online_sent.max(o.value.1.online_sent),
        online_recv: a.online_recv.max(o.value.1.online_recv),
        offline_sent: a.offline_sent.max(o.value.1.offline_sent),
        offline_recv: a.offline_recv.max(o.value.1.offline_recv),
    });
    (time, st)
}

fn bench_one(
    c: &mut Criterion,
    group: &str,
    id: String,
    setting: Setting,
    shape: &[usize],
    demand: Demand,
    op: &Op<'_>,
) {
    let offline: usize = (0..2).map(|p| demand.correction_words(p)).sum();
    let (_, st) = session(setting, shape, demand.clone(), op);
    println!(
        "{group}/{id}: rounds {}, online sent per party {:.2} MB, dealer words to P0+P1 {:.1} MB",
        st.rounds,
        st.online_sent as f64 / 1e6,
        8.0 * offline as f64 / 1e6
    );
    let mut g = c.benchmark_group(group);
    g.sample_size(10);
    g.sampling_mode(SamplingMode::Flat);
    g.bench_function(BenchmarkId::new(group, &id), |b| {
        b.iter_custom(|iters| {
            (0..iters)
                .map(|_| session(setting, shape, demand.clone(), op).0)
                .sum()
        })
    });
    g.finish();
}

fn softmax_bench(c: &mut Criterion) {
    let shape = [12usize, 128, 128];
    let mask: Vec<f64> = (0..128).map(|j| if j < 120 { 0.0 } else { -1e4 }).collect();
    for setting in [Setting::TwoPc, Setting::ThreePc] {
        for &m in SoftmaxMethod::ALL {
            let d = softmax_demand(&shape, m, setting, 16);
            let mask = &mask;
            let op = move |p: &mut Party, x: &Shared| softmax(p, x, Some(mask), m);
            bench_one(
                c,
                "softmax",
                format!("{setting}/{m}/12x128x128"),
                setting,
                &shape,
                d,
                &op,
            );
        }
    }
}

fn layernorm_bench(c: &mut Criterion) {
    let shape = [128usize, 768];
    let fx = FixedPoint::default();
    let ones = Tensor::from_vec(&[768], vec![fx.encode(1.0).unwrap(); 768]).unwrap();
    let zeros = Tensor::<u64>::zeros(&[768]);
    for setting in [Setting::TwoPc, Setting::ThreePc] {
        for &m in LayerNormMethod::ALL {
            let d = layernorm_demand(&shape, m, setting, 16);
            let (ones, zeros) = (&ones, &zeros);
            let op = move |p: &mut Party, x: &Shared| {
                let g = p.share_public(ones);
                let b = p.share_public(zeros);
                layernorm(p, x, &g, &b, 1e-5, m)
            };
            bench_one(
                c,
                "layernorm",
                format!("{setting}/{m}/128x768"),
                setting,
                &shape,
                d,
                &op,
            );
        }
    }
}

criterion_group!(benches, softmax_bench, layernorm_bench);
criterion_main!(benches);
