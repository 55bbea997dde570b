//! Criterion benches of the core: the AES-CTR PRG (bytes/s), and secure mul / matmul in
//! both settings over the in-memory transport, each beside its plaintext baseline of the
//! same shape (so the README can report "secure / plaintext" ratios from one run).
//!
//! `cargo bench -p tessera-parties --bench core`

#![allow(missing_docs)] // criterion_group! expands to an undocumented `pub fn`.

use criterion::{black_box, criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use std::time::{Duration, Instant};
use tessera::preproc::{Demand, Request};
use tessera::prg::Prg;
use tessera::runtime::run_parties;
use tessera::tensor::kernel::matmul_u64;
use tessera::{MaterialMode, SessionOptions, Setting, Shared};
use tessera_protocols::arith;

fn prg(c: &mut Criterion) {
    let mut g = c.benchmark_group("prg");
    let n = 1 << 20; // 8 MiB
    g.throughput(Throughput::Bytes(8 * n as u64));
    let mut buf = vec![0u64; n];
    let mut p = Prg::from_os();
    g.bench_function("aes128ctr/8MiB", |b| b.iter(|| p.fill(black_box(&mut buf))));
    g.finish();
}

/// Runs `iters` secure ops in one session (material streamed beforehand) and returns the
/// online time of the slowest party.
fn secure_iters(
    setting: Setting,
    iters: u64,
    demand_one: Demand,
    shapes: (Vec<usize>, Vec<usize>),
    op: fn(&mut tessera::Party, &Shared, &Shared) -> tessera::Result<Shared>,
) -> Duration {
    let mut d = Demand::default();
    for _ in 0..iters {
        d.extend(demand_one.clone());
    }
    let opts = SessionOptions {
        material: MaterialMode::Planned(d),
        ..Default::default()
    };
    let outs = run_parties(setting, opts, |p| {
        let x = Shared::zeros(p, &shapes.0);
        let y = Shared::zeros(p, &shapes.1);
        let t = Instant::now();
        for _ in 0..iters {
            black_box(op(p, &x, &y)?);
        }
        Ok(t.elapsed())
    })
    .expect("session");
    outs.iter().map(|o| o.value).max().unwrap_or_default()
}

fn mul(c: &mut Criterion) {
    let mut g = c.benchmark_group("mul");
    g.sample_size(10);
    let n = 100_000usize;
    g.throughput(Throughput::Elements(n as u64));
    let a: Vec<u64> = (0..n as u64).collect();
    g.bench_function(BenchmarkId::new("plaintext", n), |b| {
        b.iter(|| {
            black_box(
                a.iter()
                    .zip(&a)
                    .map(|(x, y)| x.wrapping_mul(*y))
                    .collect::<Vec<u64>>(),
            )
        })
    });
    for setting in [Setting::TwoPc, Setting::ThreePc] {
        let demand = match setting {
            Setting::TwoPc => Demand(vec![Request::Beaver { n }]),
            Setting::ThreePc => Demand::default(),
        };
        g.bench_function(BenchmarkId::new(setting.name(), n), |b| {
            b.iter_custom(|iters| {
                secure_iters(
                    setting,
                    iters,
                    demand.clone(),
                    (vec![n], vec![n]),
                    arith::mul,
                )
            })
        });
    }
    g.finish();
}

fn matmul(c: &mut Criterion) {
    let mut g = c.benchmark_group("matmul");
    g.sample_size(10);
    let (m, k, n) = (128usize, 768usize, 768usize);
    g.throughput(Throughput::Elements((m * k * n) as u64));
    let a = vec![3u64; m * k];
    let w = vec![5u64; k * n];
    let id = format!("{m}x{k}x{n}");
    g.bench_function(BenchmarkId::new("plaintext", &id), |b| {
        b.iter(|| black_box(matmul_u64(&a, &w, m, k, n)))
    });
    for setting in [Setting::TwoPc, Setting::ThreePc] {
        let demand = match setting {
            Setting::TwoPc => Demand(vec![Request::MatTriple { batch: 1, m, k, n }]),
            Setting::ThreePc => Demand::default(),
        };
        g.bench_function(BenchmarkId::new(setting.name(), &id), |b| {
            b.iter_custom(|iters| {
                secure_iters(
                    setting,
                    iters,
                    demand.clone(),
                    (vec![m, k], vec![k, n]),
                    arith::matmul,
                )
            })
        });
    }
    g.finish();
}

criterion_group!(benches, prg, mul, matmul);
criterion_main!(benches);
