//! Criterion benchmarks for the FSS core: DCF key generation and evaluation
//! (n = 64 and n = 37, L = 1) and DPF full-domain evaluation (n = 16).
//!
//! Evaluation is measured three ways: one point per call on one thread
//! (latency-bound AES), `eval_batch` restricted to a one-thread rayon pool
//! (16 points in lockstep, pipelined AES), and `eval_batch` on the global
//! rayon pool over 10^5 points.
//!
//! `relu_keys_18` compares the two comparison keys the protocols use for an 18-level
//! (coarse) ReLU, as the protocols evaluate them: 10^5 keys, each at its own point, from
//! their serialised words on one thread: the payload DCF (L = 2, `FssRequest::ReluCoarse`)
//! and the bit-output DCF with early termination (`FssRequest::DreluBit`).

#![allow(missing_docs)] // criterion_group! expands to an undocumented `pub fn`.

use criterion::{black_box, criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tessera::fss::{bdcf_eval_words, bdcf_gen, dcf_gen, dpf_gen, dpf_gen_early};

const BATCH_POINTS: usize = 100_000;

fn dcf(c: &mut Criterion) {
    let mut rng = StdRng::seed_from_u64(42);
    let single_pool = rayon::ThreadPoolBuilder::new()
        .num_threads(1)
        .build()
        .unwrap();
    for n in [64u32, 37] {
        let mask = u64::MAX >> (64 - n);
        let alpha = rng.gen::<u64>() & mask;
        let (k0, _) = dcf_gen(alpha, &[1], n, &mut rng).unwrap();
        eprintln!("DCF key size n={n} L=1: {} bytes", k0.size_bytes());

        let mut g = c.benchmark_group(format!("dcf_n{n}"));
        g.throughput(Throughput::Elements(1));
        g.bench_function("keygen", |b| {
            b.iter(|| dcf_gen(black_box(alpha), &[1], n, &mut rng).unwrap())
        });
        let xs: Vec<u64> = (0..BATCH_POINTS).map(|_| rng.gen::<u64>() & mask).collect();
        let mut out = [0u64; 1];
        let mut i = 0;
        g.bench_function("eval_single_thread", |b| {
            b.iter(|| {
                i = (i + 1) % xs.len();
                k0.eval_into(black_box(xs[i]), &mut out);
                out[0]
            })
        });
        g.throughput(Throughput::Elements(BATCH_POINTS as u64));
        g.bench_with_input(
            BenchmarkId::new("eval_batch_1thread", BATCH_POINTS),
            &xs,
            |b, xs| b.iter(|| single_pool.install(|| k0.eval_batch(xs))),
        );
        g.bench_with_input(
            BenchmarkId::new("eval_batch_rayon", BATCH_POINTS),
            &xs,
            |b, xs| b.iter(|| k0.eval_batch(xs)),
        );
        g.finish();
    }
}

fn dpf(c: &mut Criterion) {
    let mut rng = StdRng::seed_from_u64(43);
    for n in [64u32, 37] {
        let (k0, _) = dpf_gen(1, &[1], n, &mut rng).unwrap();
        eprintln!("DPF key size n={n} L=1: {} bytes", k0.size_bytes());
    }
    let n = 16;
    let (k0, _) = dpf_gen(12345, &[1], n, &mut rng).unwrap();
    let mut g = c.benchmark_group("dpf_n16");
    g.throughput(Throughput::Elements(1 << n));
    g.bench_function("eval_all", |b| b.iter(|| k0.eval_all().unwrap()));
    g.finish();
}

fn relu_keys(c: &mut Criterion) {
    let mut rng = StdRng::seed_from_u64(44);
    let n = 18u32;
    let count = BATCH_POINTS;
    let mask = (1u64 << n) - 1;
    let (mut payload, mut bit) = (Vec::new(), Vec::new());
    for _ in 0..count {
        let alpha = rng.gen::<u64>() & mask;
        payload.extend(
            dcf_gen(alpha, &[1, alpha], n, &mut rng)
                .unwrap()
                .0
                .to_words(),
        );
        bit.extend(bdcf_gen(alpha, n, &mut rng).unwrap()[0].clone());
    }
    eprintln!(
        "18-level ReLU key: payload DCF (L = 2) {} B, bit DCF {} B",
        8 * payload.len() / count,
        8 * bit.len() / count
    );
    let xs: Vec<u64> = (0..count).map(|_| rng.gen::<u64>() & mask).collect();
    let single_pool = rayon::ThreadPoolBuilder::new()
        .num_threads(1)
        .build()
        .unwrap();
    let mut g = c.benchmark_group("relu_keys_18");
    g.throughput(Throughput::Elements(count as u64));
    g.bench_function("payload_dcf_L2_1thread", |b| {
        b.iter(|| {
            single_pool.install(|| tessera::fss::dcf::eval_words_batch(&payload, &xs).unwrap())
        })
    });
    g.bench_function("bit_dcf_1thread", |b| {
        b.iter(|| single_pool.install(|| bdcf_eval_words(&bit, &xs, 1).unwrap()))
    });
    g.finish();
}

/// The gated 8-bit table lookup of the SiLU/GeLU splines (`dpf_lookup_gated`, two tables):
/// 16384 keys from their words on one thread, as one party evaluates them.
fn lut_gated(c: &mut Criterion) {
    use tessera::fss::material::{dpf_lookup_gated, lut_early};
    let mut rng = StdRng::seed_from_u64(45);
    let (bits, n) = (8u32, 16384usize);
    let mut words = vec![];
    for _ in 0..n {
        let alpha = rng.gen::<u64>() & ((2u64 << bits) - 1);
        let (k0, _) = dpf_gen_early(alpha, &[1], bits + 1, lut_early(bits), &mut rng).unwrap();
        words.extend(k0.to_words());
    }
    let cs: Vec<u64> = (0..n).map(|_| rng.gen()).collect();
    let sel: Vec<u8> = (0..n).map(|_| rng.gen::<u8>() & 1).collect();
    let t0: Vec<u64> = (0..1u64 << bits).map(|i| i * 7 + 1).collect();
    let t1: Vec<u64> = (0..1u64 << bits).map(|i| i * 3 + 2).collect();
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(1)
        .build()
        .unwrap();
    let mut g = c.benchmark_group("lut_gated_8bit");
    g.throughput(Throughput::Elements(n as u64));
    g.bench_function("two_tables_1thread", |b| {
        b.iter(|| pool.install(|| dpf_lookup_gated(&words, &cs, &sel, &[&t0, &t1]).unwrap()))
    });
    g.finish();
}

/// GeLU's cell lookup (5 index bits, tables a, b, c), 16384 keys on one thread: the
/// L = 1 keys of a lookup followed by a product round (`LutGate`, three products) against
/// the L = 3 keys whose payload (1, beta, beta^2) makes the cell local (`LutGateSq`, six
/// products, 2 early-termination levels as dealt).
fn lut_gated_cell(c: &mut Criterion) {
    use tessera::fss::material::{
        dpf_lookup_gated, dpf_lookup_gated_pairs, lookup_early, lut_early,
    };
    // 5 bits: GeLU's tables (L = 1: `spline-abs`; L = 3: the default x-indexed one);
    // 6: SiLU's |x| table.
    for bits in [5u32, 6] {
        let mut rng = StdRng::seed_from_u64(46);
        let n = 16384usize;
        let keys = |rng: &mut StdRng, payload: usize, early: u32| {
            let mut words = vec![];
            for _ in 0..n {
                let alpha = rng.gen::<u64>() & ((2u64 << bits) - 1);
                let beta: u64 = rng.gen();
                let pl = [1, beta, beta.wrapping_mul(beta)];
                let (k0, _) = dpf_gen_early(alpha, &pl[..payload], bits + 1, early, rng).unwrap();
                words.extend(k0.to_words());
            }
            words
        };
        let w1 = keys(&mut rng, 1, lut_early(bits));
        let w3 = keys(&mut rng, 3, lookup_early(bits, 3));
        let cs: Vec<u64> = (0..n).map(|_| rng.gen()).collect();
        let sel: Vec<u8> = (0..n).map(|_| rng.gen::<u8>() & 1).collect();
        let t: Vec<Vec<u64>> = (0..3u64)
            .map(|j| (0..1u64 << bits).map(|i| i * (j + 3) + 1).collect())
            .collect();
        let tr: Vec<&[u64]> = t.iter().map(|v| v.as_slice()).collect();
        let pairs = [(0, 0), (0, 1), (0, 2), (1, 1), (1, 2), (2, 2)];
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(1)
            .build()
            .unwrap();
        let mut g = c.benchmark_group(format!("lut_gated_cell_{bits}bit"));
        g.throughput(Throughput::Elements(n as u64));
        g.bench_function("L1_three_tables_1thread", |b| {
            b.iter(|| pool.install(|| dpf_lookup_gated(&w1, &cs, &sel, &tr).unwrap()))
        });
        g.bench_function("L3_six_products_1thread", |b| {
            b.iter(|| pool.install(|| dpf_lookup_gated_pairs(&w3, &cs, &sel, &tr, &pairs).unwrap()))
        });
        g.finish();
    }
}

criterion_group!(benches, dcf, dpf, relu_keys, lut_gated, lut_gated_cell);
criterion_main!(benches);
