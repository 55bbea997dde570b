//! Throughput of the local matmul kernels: `u64` (ring `Z_2^64`) against an `f32` baseline.
//!
//! Criterion reports elements/s with one element = one multiply-accumulate, i.e. MAC/s.

// `criterion_group!` generates an undocumented `pub fn`.
#![allow(missing_docs)]

use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use tessera::tensor::kernel::{matmul_f32, matmul_u64};

/// BERT-base shapes `(m, k, n)`: QKV/output projection, FFN up-projection, attention scores.
const SHAPES: [(usize, usize, usize); 3] = [(128, 768, 768), (128, 768, 3072), (128, 64, 128)];

fn fill_u64(len: usize, seed: u64) -> Vec<u64> {
    (0..len as u64)
        .map(|i| (i ^ seed).wrapping_mul(0x9E37_79B9_7F4A_7C15))
        .collect()
}

fn fill_f32(len: usize, seed: u64) -> Vec<f32> {
    fill_u64(len, seed)
        .into_iter()
        .map(|x| (x >> 40) as f32 / (1u64 << 24) as f32 - 0.5)
        .collect()
}

fn bench_matmul(c: &mut Criterion) {
    for (m, k, n) in SHAPES {
        let macs = (m * k * n) as u64;
        let name = format!("{m}x{k}x{n}");

        let mut group = c.benchmark_group("matmul/u64");
        group.throughput(Throughput::Elements(macs));
        let (a, b) = (fill_u64(m * k, 1), fill_u64(k * n, 2));
        group.bench_function(&name, |bench| {
            bench.iter(|| matmul_u64(black_box(&a), black_box(&b), m, k, n))
        });
        group.finish();

        let mut group = c.benchmark_group("matmul/f32");
        group.throughput(Throughput::Elements(macs));
        let (a, b) = (fill_f32(m * k, 1), fill_f32(k * n, 2));
        group.bench_function(&name, |bench| {
            bench.iter(|| matmul_f32(black_box(&a), black_box(&b), m, k, n))
        });
        group.finish();
    }
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(20)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    targets = bench_matmul
}
criterion_main!(benches);
