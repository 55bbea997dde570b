//! Property-based fuzzing of every decoder of untrusted bytes in `tessera` and
//! `tessera-protocols` (issue 14): FSS keys and key words, preprocessing requests,
//! demands and material files, the session config, GGUF files, safetensors files, the
//! BERT checkpoint (config.json and model.safetensors) and a trained head's share files. The network profile of the
//! `tessera` binary is fuzzed by a unit test beside it (`parties/src/harness/profile.rs`);
//! the QUIC frame decoder is left to its own change.
//!
//! Each target gets pure random input and mutations of valid encodings (truncation at any
//! length, byte flips, 4- and 8-byte fields overwritten with huge or boundary values,
//! inserted and removed runs, duplicated chunks), so cases reach deep into the parser.
//! Every target asserts:
//! - no panic (a panic fails the property and proptest shrinks the input);
//! - malformed input is a clean `Err` (and an accepted one is self-consistent: it
//!   re-encodes to the bytes read, or evaluates, deals or converts without panicking);
//! - the decode call allocates at most [`alloc_bound`] bytes, measured by an instrumenting
//!   global allocator (`stats_alloc`).
//!
//! Cases per target: 10,000 by default, or `TESSERA_FUZZ_CASES`. The generator is seeded
//! deterministically (CI runs are reproducible); `TESSERA_FUZZ_SEED=<u64>` explores
//! elsewhere. Run: `cargo test --release -p tessera-protocols --test fuzz -- --nocapture`
//! (each target prints its cases, time and the largest allocation it measured).
//! Findings are kept as plain `#[test]`s with their exact bytes at the end of this file.

use proptest::prelude::*;
use proptest::sample::{select, Index};
use proptest::test_runner::{Config as PtConfig, RngAlgorithm, TestRng, TestRunner};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use safetensors::tensor::TensorView;
use safetensors::Dtype;
use stats_alloc::{Region, StatsAlloc, INSTRUMENTED_SYSTEM};
use std::alloc::System;
use std::path::Path;
use std::sync::Mutex;
use std::time::Instant;
use tessera::config::Config;
use tessera::fss::material::{dpf_lookup, lut_early, FssRequest};
use tessera::fss::{bdcf_eval_words, bdcf_gen, dcf_gen, dpf_gen, dpf_gen_early, DcfKey, DpfKey};
use tessera::preproc::{load_bytes, write_files, Demand, Request};
use tessera::prg::{Prg, Seed};
use tessera_protocols::bert::model::{BertConfig, BertWeights};
use tessera_protocols::gguf::{GgmlType, GgufFile, GgufValue, GgufWriter};
use tessera_protocols::llama::model::{SafetensorsSource, TensorSource};

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

/// The allocation counters are process-wide: targets run one at a time.
static SERIAL: Mutex<()> = Mutex::new(());

/// The most a decoder may allocate (bytes, all allocations of one call added up, grown
/// reallocations included) for `len` bytes of input: 16 x len + 1 MiB.
///
/// Why: a decoder's output holds at most a few times its input (a u64 word kept as a
/// `Vec<u64>`, a one-byte GGUF value as a 32-byte enum is the worst at 32 x, bounded by
/// the 2^16-element reserve cap; a Q4_0 block of 18 bytes dequantises to 32 f64, 14.2 x);
/// the 1 MiB covers fixed costs (parser tables, error strings, rayon's first use). A
/// header that declares 2^40 elements and reserves for them exceeds it at once.
fn alloc_bound(len: usize) -> usize {
    16 * len + (1 << 20)
}

fn cases(default: u32) -> u32 {
    std::env::var("TESSERA_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Runs `f` and fails if it allocated more than [`alloc_bound`] of `len`; returns `f`'s
/// value and the bytes allocated.
fn bounded<T>(what: &str, len: usize, f: impl FnOnce() -> T) -> (T, usize) {
    let region = Region::new(GLOBAL);
    let out = f();
    let s = region.change();
    let bytes = s.bytes_allocated + s.bytes_reallocated.max(0) as usize;
    assert!(
        bytes <= alloc_bound(len),
        "{what}: {bytes} bytes allocated for {len} bytes of input (bound {})",
        alloc_bound(len)
    );
    (out, bytes)
}

/// Runs one fuzz target: `cases` inputs from `strategy` through `check`, one target at a
/// time, reporting cases, time and the largest allocation measured.
fn run_target<S: Strategy>(
    name: &str,
    default_cases: u32,
    strategy: S,
    check: impl Fn(S::Value) -> (usize, bool),
) where
    S::Value: std::fmt::Debug,
{
    let _guard = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let n = cases(default_cases);
    let config = PtConfig {
        cases: n,
        failure_persistence: None,
        max_shrink_iters: 2000,
        ..PtConfig::default()
    };
    let seed: u64 = std::env::var("TESSERA_FUZZ_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0x7e55_e7a0);
    let mut seed_bytes = [0u8; 32];
    seed_bytes[..8].copy_from_slice(&seed.to_le_bytes());
    let rng = TestRng::from_seed(RngAlgorithm::ChaCha, &seed_bytes);
    let mut runner = TestRunner::new_with_rng(config, rng);
    let max_alloc = std::cell::Cell::new(0usize);
    let (accepted, total) = (std::cell::Cell::new(0u32), std::cell::Cell::new(0u32));
    let start = Instant::now();
    let result = runner.run(&strategy, |v| {
        total.set(total.get() + 1);
        let (bytes, ok) = check(v);
        max_alloc.set(max_alloc.get().max(bytes));
        accepted.set(accepted.get() + u32::from(ok));
        Ok(())
    });
    println!(
        "fuzz {name}: {} cases ({} accepted) in {:.2} s, largest allocation {} bytes",
        total.get(),
        accepted.get(),
        start.elapsed().as_secs_f64(),
        max_alloc.get()
    );
    if let Err(e) = result {
        panic!("fuzz {name}: {e}");
    }
}

// ---------------------------------------------------------------------------------------
// Input generation: random input, and mutations of valid encodings
// ---------------------------------------------------------------------------------------

/// Boundary and huge values written over length and count fields.
fn interesting_u64() -> impl Strategy<Value = u64> {
    prop_oneof![
        3 => 0u64..80,
        1 => select(vec![
            u64::MAX,
            u64::MAX - 1,
            1 << 63,
            i64::MAX as u64,
            1 << 40,
            1 << 34,
            (1 << 34) + 1,
            1 << 32,
            u32::MAX as u64,
            u32::MAX as u64 - 1,
            1 << 24,
            (1 << 24) + 1,
            1 << 16,
            1 << 20,
        ]),
        1 => any::<u64>(),
    ]
}

/// One edit of an encoding; positions are fractions of the current length.
#[derive(Clone, Debug)]
enum Mutation {
    Truncate(Index),
    SetByte(Index, u8),
    FlipBit(Index, u8),
    U32(Index, u64),
    U64(Index, u64),
    U64Aligned(Index, u64),
    Insert(Index, Vec<u8>),
    Remove(Index, usize),
    Duplicate(Index, usize),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        2 => any::<Index>().prop_map(Mutation::Truncate),
        2 => (any::<Index>(), any::<u8>()).prop_map(|(i, b)| Mutation::SetByte(i, b)),
        2 => (any::<Index>(), 0u8..8).prop_map(|(i, b)| Mutation::FlipBit(i, b)),
        2 => (any::<Index>(), interesting_u64()).prop_map(|(i, v)| Mutation::U32(i, v)),
        2 => (any::<Index>(), interesting_u64()).prop_map(|(i, v)| Mutation::U64(i, v)),
        3 => (any::<Index>(), interesting_u64()).prop_map(|(i, v)| Mutation::U64Aligned(i, v)),
        1 => (any::<Index>(), prop::collection::vec(any::<u8>(), 1..16))
            .prop_map(|(i, b)| Mutation::Insert(i, b)),
        1 => (any::<Index>(), 1usize..32).prop_map(|(i, n)| Mutation::Remove(i, n)),
        1 => (any::<Index>(), 1usize..64).prop_map(|(i, n)| Mutation::Duplicate(i, n)),
    ]
}

fn apply(mut v: Vec<u8>, muts: &[Mutation]) -> Vec<u8> {
    for m in muts {
        let len = v.len();
        let at = |i: &Index| if len == 0 { 0 } else { i.index(len) };
        let write = |v: &mut Vec<u8>, pos: usize, bytes: &[u8]| {
            for (k, b) in bytes.iter().enumerate() {
                if let Some(x) = v.get_mut(pos + k) {
                    *x = *b;
                }
            }
        };
        match m {
            Mutation::Truncate(i) => v.truncate(if len == 0 { 0 } else { i.index(len + 1) }),
            Mutation::SetByte(i, b) if len > 0 => v[at(i)] = *b,
            Mutation::FlipBit(i, b) if len > 0 => v[at(i)] ^= 1 << b,
            Mutation::U32(i, x) => write(&mut v, at(i), &(*x as u32).to_le_bytes()),
            Mutation::U64(i, x) => write(&mut v, at(i), &x.to_le_bytes()),
            Mutation::U64Aligned(i, x) => write(&mut v, at(i) / 8 * 8, &x.to_le_bytes()),
            Mutation::Insert(i, b) => {
                let p = at(i);
                v.splice(p..p, b.iter().copied());
            }
            Mutation::Remove(i, n) => {
                let p = at(i);
                v.drain(p..(p + n).min(len));
            }
            Mutation::Duplicate(i, n) => {
                let p = at(i);
                let chunk = v[p..(p + n).min(len)].to_vec();
                v.splice(p..p, chunk);
            }
            _ => {}
        }
    }
    v
}

/// Random bytes (1 in 5) or 1 to 4 mutations of one of `valid` (4 in 5).
fn bytes_from(valid: Vec<Vec<u8>>, max_random: usize) -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        1 => prop::collection::vec(any::<u8>(), 0..max_random),
        4 => (select(valid), prop::collection::vec(mutation(), 1..5))
            .prop_map(|(v, m)| apply(v, &m)),
    ]
}

fn to_bytes(words: &[u64]) -> Vec<u8> {
    words.iter().flat_map(|w| w.to_le_bytes()).collect()
}

/// Whole little-endian words of `b` (a trailing partial word dropped).
fn to_words(b: &[u8]) -> Vec<u64> {
    b.chunks_exact(8)
        .map(|c| u64::from_le_bytes(c.try_into().unwrap()))
        .collect()
}

/// Word inputs: random words (mostly small, so tags and widths are hit), or mutations
/// of valid encodings.
fn words_from(valid: Vec<Vec<u64>>) -> impl Strategy<Value = Vec<u64>> {
    let valid: Vec<Vec<u8>> = valid.iter().map(|w| to_bytes(w)).collect();
    prop_oneof![
        1 => prop::collection::vec(interesting_u64(), 0..12),
        4 => bytes_from(valid, 96).prop_map(|b| to_words(&b)),
    ]
}

/// Text inputs: random printable text, or byte-level mutations of `valid` with TOML/JSON
/// tokens spliced in (read back lossily as UTF-8).
fn text_from(valid: Vec<String>, tokens: &'static [&'static str]) -> impl Strategy<Value = String> {
    let valid: Vec<Vec<u8>> = valid.into_iter().map(String::into_bytes).collect();
    let spliced = (
        select(valid.clone()),
        prop::collection::vec((any::<Index>(), select(tokens), any::<bool>()), 1..4),
    )
        .prop_map(|(mut v, edits)| {
            for (i, tok, replace) in edits {
                let p = i.index(v.len() + 1);
                // Replace the run of word characters at p, or insert before it.
                let end = if replace {
                    p + v[p..]
                        .iter()
                        .take_while(|b| b.is_ascii_alphanumeric() || **b == b'.' || **b == b'_')
                        .count()
                } else {
                    p
                };
                v.splice(p..end, tok.bytes());
            }
            v
        });
    prop_oneof![
        1 => "\\PC{0,200}".prop_map(String::into_bytes),
        3 => spliced,
        2 => bytes_from(valid, 200),
    ]
    .prop_map(|b| String::from_utf8_lossy(&b).into_owned())
}

fn rng() -> StdRng {
    StdRng::seed_from_u64(14)
}

// ---------------------------------------------------------------------------------------
// FSS keys
// ---------------------------------------------------------------------------------------

fn dpf_keys_valid() -> Vec<Vec<u8>> {
    let mut r = rng();
    let mut v = vec![];
    for (n, l) in [(1u32, 1usize), (5, 1), (12, 2), (33, 1), (64, 1), (64, 3)] {
        let (a, b) = dpf_gen(r.gen::<u64>() >> (64 - n), &vec![7; l], n, &mut r).unwrap();
        v.push(a.to_bytes());
        v.push(b.to_bytes());
    }
    for e in 0..=tessera::fss::MAX_EARLY {
        let (a, _) = dpf_gen_early(3, &[1], 9, e, &mut r).unwrap();
        v.push(a.to_bytes());
    }
    v
}

#[test]
fn fuzz_dpf_key_from_bytes() {
    run_target(
        "DpfKey::from_bytes",
        10_000,
        (bytes_from(dpf_keys_valid(), 256), any::<u64>()),
        |(b, x)| {
            let (k, bytes) = bounded("DpfKey::from_bytes", b.len(), || DpfKey::from_bytes(&b));
            let ok = k.is_ok();
            if let Ok(k) = k {
                assert_eq!(k.to_bytes(), b, "an accepted key re-encodes to its bytes");
                assert_eq!(k.eval(x).len(), k.out_len());
            }
            (bytes, ok)
        },
    );
}

fn dcf_keys_valid() -> Vec<Vec<u8>> {
    let mut r = rng();
    let mut v = vec![];
    for (n, l) in [(1u32, 1usize), (6, 1), (17, 2), (64, 1), (63, 4)] {
        let (a, b) = dcf_gen(r.gen::<u64>() >> (64 - n), &vec![9; l], n, &mut r).unwrap();
        v.push(a.to_bytes());
        v.push(b.to_bytes());
    }
    let (a, _) = tessera::fss::dcf_gen_gt(5, &[1], 8, &mut r).unwrap();
    v.push(a.to_bytes());
    v
}

#[test]
fn fuzz_dcf_key_from_bytes() {
    run_target(
        "DcfKey::from_bytes",
        10_000,
        (bytes_from(dcf_keys_valid(), 256), any::<u64>()),
        |(b, x)| {
            let (k, bytes) = bounded("DcfKey::from_bytes", b.len(), || DcfKey::from_bytes(&b));
            let ok = k.is_ok();
            if let Ok(k) = k {
                assert_eq!(k.to_bytes(), b, "an accepted key re-encodes to its bytes");
                assert_eq!(k.eval(x).len(), k.out_len());
            }
            (bytes, ok)
        },
    );
}

/// Key words of `count` keys of one request, back to back (as the dealer sends them).
fn batches(keys: impl Fn(&mut StdRng) -> Vec<u64>, count: usize) -> Vec<Vec<u64>> {
    let mut r = rng();
    (0..3)
        .map(|_| (0..count).flat_map(|_| keys(&mut r)).collect())
        .collect()
}

#[test]
fn fuzz_dcf_eval_words() {
    let mut valid = vec![];
    for (n, l) in [(1u32, 1usize), (12, 2), (64, 1)] {
        valid.extend(batches(
            |r| dcf_gen(1, &vec![1; l], n, r).unwrap().0.to_words(),
            2,
        ));
    }
    run_target(
        "dcf::eval_words_batch",
        10_000,
        (words_from(valid), any::<[u64; 2]>()),
        |(w, xs)| {
            let (out, bytes) = bounded("dcf::eval_words_batch", 8 * w.len(), || {
                tessera::fss::dcf::eval_words_batch(&w, &xs)
            });
            let ok = out.is_ok();
            if let Ok(out) = out {
                assert!(out.len() <= w.len(), "outputs are L words per key");
            }
            (bytes, ok)
        },
    );
}

#[test]
fn fuzz_bdcf_eval_words() {
    let mut valid = vec![];
    for n in [1u32, 7, 8, 17, 64] {
        valid.extend(batches(
            |r| bdcf_gen(5 % (1 << n.min(63)), n, r).unwrap()[1].clone(),
            3,
        ));
    }
    run_target(
        "bdcf_eval_words",
        10_000,
        (
            words_from(valid),
            prop::collection::vec(any::<u64>(), 0..7),
            0usize..4,
        ),
        |(w, xs, per_key)| {
            let (out, bytes) = bounded("bdcf_eval_words", 8 * w.len(), || {
                bdcf_eval_words(&w, &xs, per_key)
            });
            let ok = out.is_ok();
            if let Ok(out) = out {
                assert_eq!(out.len(), xs.len());
                assert!(out.iter().all(|&b| b <= 1));
            }
            (bytes, ok)
        },
    );
}

#[test]
fn fuzz_dpf_lookup_words() {
    let mut valid = vec![];
    for bits in [1u32, 4, 10, 11] {
        valid.extend(batches(
            |r| {
                dpf_gen_early(1, &[1], bits, lut_early(bits), r)
                    .unwrap()
                    .0
                    .to_words()
            },
            2,
        ));
    }
    let tables: Vec<Vec<u64>> = [1usize, 4, 10, 11]
        .iter()
        .map(|b| (0..1u64 << b).collect())
        .collect();
    run_target(
        "dpf_lookup",
        10_000,
        (words_from(valid), any::<[u64; 2]>(), 0usize..4),
        |(w, cs, t)| {
            let table: &[u64] = &tables[t];
            let (out, bytes) = bounded("dpf_lookup", 8 * w.len() + 8 * table.len(), || {
                dpf_lookup(&w, &cs, &[table])
            });
            let ok = out.is_ok();
            if let Ok(out) = out {
                assert_eq!(out.len(), 1);
                assert_eq!(out[0].len(), cs.len());
            }
            (bytes, ok)
        },
    );
}

// ---------------------------------------------------------------------------------------
// Preprocessing requests, demands and material files
// ---------------------------------------------------------------------------------------

fn fss_requests() -> Vec<FssRequest> {
    use FssRequest::*;
    vec![
        Sign { n: 3, bits: 17 },
        Relu { n: 2, bits: 64 },
        ReluCoarse {
            n: 2,
            bits: 36,
            skip: 12,
        },
        TruncDcf { n: 4, shift: 16 },
        Spline {
            n: 2,
            bits: 20,
            payload: vec![1, 2, 3],
        },
        Lut { n: 2, bits: 8 },
        DreluBit {
            n: 3,
            bits: 40,
            skip: 4,
        },
        DreluMulti {
            n: 2,
            bits: 30,
            k: 3,
        },
        LutGate { n: 2, bits: 6 },
        LutGateSq { n: 2, bits: 5 },
        ClampLut {
            n: 2,
            bits: 30,
            skip: 2,
            table_bits: 5,
        },
        TrigMask {
            n: 2,
            terms: 3,
            period_bits: 20,
            frac_bits: 16,
        },
    ]
}

/// A decoded FSS request must be one the dealer can deal and both parties expand: the
/// same request with at most 2 elements is dealt and expanded here.
fn check_dealable(words: &[u64], used: usize) {
    let mut small = words[..used].to_vec();
    small[1] = small[1].min(2);
    let (r, _) = FssRequest::decode(&small).expect("the same request with fewer elements");
    let (s0, s1) = (Seed::from_words([1, 2]), Seed::from_words([3, 4]));
    let [w0, w1] = r.deal(&mut Prg::new(s0), &mut Prg::new(s1));
    r.expand(0, &mut Prg::new(s0), w0).unwrap();
    r.expand(1, &mut Prg::new(s1), w1).unwrap();
}

#[test]
fn fuzz_fss_request_decode() {
    let valid = fss_requests().iter().map(FssRequest::encode).collect();
    run_target("FssRequest::decode", 10_000, words_from(valid), |w| {
        let (r, bytes) = bounded("FssRequest::decode", 8 * w.len(), || FssRequest::decode(&w));
        let ok = r.is_ok();
        if let Ok((r, used)) = r {
            assert!(used <= w.len());
            assert_eq!(r.encode(), w[..used], "an accepted request re-encodes");
            check_dealable(&w, used);
        }
        (bytes, ok)
    });
}

fn demands() -> Vec<Demand> {
    let mut all: Vec<Request> = vec![
        Request::Beaver { n: 5 },
        Request::MatTriple {
            batch: 2,
            m: 2,
            k: 3,
            n: 2,
        },
        Request::MatTripleFixedB {
            m: 2,
            k: 2,
            n: 3,
            key: 7,
        },
        Request::MatTripleFixedBT {
            m: 1,
            k: 2,
            n: 3,
            key: 7,
        },
        Request::FixedB { k: 2, n: 2, key: 9 },
        Request::Trunc {
            n: 3,
            shift: 16,
            bits: 64,
        },
        Request::Trunc {
            n: 5,
            shift: 13,
            bits: 34,
        },
        Request::NormMask { rows: 2, k: 3 },
        Request::MulSq { n: 2 },
        Request::TruncSq {
            n: 2,
            shift: 13,
            bits: 38,
        },
        Request::TruncRowMul {
            rows: 2,
            k: 2,
            shift: 12,
            bits: 64,
        },
        Request::TruncRowMul {
            rows: 2,
            k: 2,
            shift: 12,
            bits: 40,
        },
    ];
    all.extend(fss_requests().into_iter().map(Request::Fss));
    vec![
        Demand(all.clone()),
        Demand(all[..3].to_vec()),
        Demand(all[9..12].to_vec()),
        Demand(vec![]),
    ]
}

#[test]
fn fuzz_request_and_demand_decode() {
    let valid: Vec<Vec<u64>> = demands()
        .iter()
        .flat_map(|d| {
            let mut v = vec![d.encode()];
            v.extend(d.0.iter().map(Request::encode));
            v
        })
        .collect();
    run_target(
        "Request::decode + Demand::decode",
        10_000,
        words_from(valid),
        |w| {
            let (r, b1) = bounded("Request::decode", 8 * w.len(), || Request::decode(&w));
            if let Ok((r, used)) = r {
                assert_eq!(r.encode(), w[..used], "an accepted request re-encodes");
            }
            let (d, b2) = bounded("Demand::decode", 8 * w.len(), || Demand::decode(&w));
            let ok = d.is_ok();
            if let Ok((d, used)) = d {
                assert_eq!(d.encode(), w[..used], "an accepted demand re-encodes");
            }
            (b1.max(b2), ok)
        },
    );
}

#[test]
fn fuzz_material_file_bytes() {
    let dir = std::env::temp_dir().join(format!("tessera-fuzz-mat-{}", std::process::id()));
    let mut valid = vec![];
    for d in demands() {
        // Keep the files small: the MatTriple and Spline corrections are enough.
        write_files(&dir, &d).unwrap();
        for id in 0..2 {
            valid.push(std::fs::read(tessera::preproc::material_file(&dir, id)).unwrap());
        }
    }
    std::fs::remove_dir_all(&dir).ok();
    let path = Path::new("/fuzz/p1.material");
    run_target(
        "preproc::load_bytes",
        10_000,
        (bytes_from(valid, 128), 0usize..2),
        |(b, id)| {
            let (s, bytes) = bounded("preproc::load_bytes", b.len(), || {
                load_bytes(&b, id, path).map(|_| ())
            });
            let ok = s.is_ok();
            if let Err(e) = s {
                assert!(e.to_string().contains("p1.material"), "names the file: {e}");
            }
            (bytes, ok)
        },
    );
}

// ---------------------------------------------------------------------------------------
// Configs
// ---------------------------------------------------------------------------------------

const TOML_TOKENS: &[&str] = &[
    "=",
    "\"",
    "'",
    "[[party]]",
    "[party]",
    "\n",
    "#",
    "-1",
    "0",
    "3",
    "99999999999999999999",
    "18446744073709551615",
    "4294967296",
    "1e400",
    "nan",
    "inf",
    "-inf",
    "0.5",
    "true",
    "[]",
    "{}",
    "{ id = 0 }",
    "\"3pc\"",
    "\"2pc\"",
    "\"::1:0\"",
    "\"[::1]:9\"",
    "\"a..b:1\"",
    "\"é:1\"",
    "\"\\u0000\"",
    "\"\"\"",
    "id = 0\naddr = \"x:1\"\n",
    "fingerprint = \"00\"",
];

#[test]
fn fuzz_config_parse() {
    let good = r#"setting = "2pc"
frac_bits = 16
start_timeout_s = 30
io_timeout_s = 60
key_dir = "keys"
preprocessing_dir = "out/preprocessing"
[[party]]
id = 0
addr = "127.0.0.1:17100"
fingerprint = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
[[party]]
id = 1
addr = "[::1]:17101"
cert = "c1.crt"
key = "c1.key"
[[party]]
id = 2
addr = "localhost:17102"
"#;
    let three = good.replace("\"2pc\"", "\"3pc\"");
    Config::parse(good, "x.toml").unwrap();
    run_target(
        "Config::parse",
        10_000,
        text_from(vec![good.to_string(), three], TOML_TOKENS),
        |t| {
            let (c, bytes) = bounded("Config::parse", t.len(), || {
                Config::parse(&t, "/fuzz/session.toml")
            });
            let ok = c.is_ok();
            match c {
                Ok(c) => c.validate().unwrap(),
                Err(e) => assert!(
                    e.to_string().contains("session.toml"),
                    "names the file: {e}"
                ),
            }
            (bytes, ok)
        },
    );
}

// ---------------------------------------------------------------------------------------
// Model files
// ---------------------------------------------------------------------------------------

fn gguf_valid() -> Vec<Vec<u8>> {
    let vals: Vec<f32> = (0..64).map(|i| (i as f32 - 30.0) / 7.0).collect();
    let mut out = vec![];
    for (version, alignment) in [(3u32, 32u32), (2, 8), (3, 1)] {
        let mut w = GgufWriter::new();
        w.version(version).alignment(alignment);
        w.metadata("general.architecture", GgufValue::String("llama".into()))
            .metadata("llama.block_count", GgufValue::U32(2))
            .metadata("x.i8", GgufValue::I8(-3))
            .metadata("x.f64", GgufValue::F64(0.25))
            .metadata("x.bool", GgufValue::Bool(true))
            .metadata(
                "x.arr",
                GgufValue::Array(vec![GgufValue::I32(1), GgufValue::I32(-2)]),
            )
            .metadata(
                "x.nested",
                GgufValue::Array(vec![GgufValue::Array(vec![GgufValue::String("t".into())])]),
            );
        w.tensor("a.f32", &[2, 4], &vals[..8], GgmlType::F32)
            .unwrap();
        w.tensor("b.f16", &[4], &vals[..4], GgmlType::F16).unwrap();
        w.tensor("c.q8", &[32], &vals[..32], GgmlType::Q8_0)
            .unwrap();
        w.tensor("d.q4", &[2, 32], &vals, GgmlType::Q4_0).unwrap();
        w.tensor("e.q41", &[32], &vals[..32], GgmlType::Q4_1)
            .unwrap();
        w.tensor_raw("f.raw", &[3], GgmlType(30), vec![1, 2, 3])
            .ok();
        out.push(w.to_bytes().unwrap());
    }
    let mut small = GgufWriter::new();
    small.metadata("k", GgufValue::U64(1));
    out.push(small.to_bytes().unwrap());
    out
}

#[test]
fn fuzz_gguf_from_bytes() {
    run_target(
        "GgufFile::from_bytes",
        10_000,
        bytes_from(gguf_valid(), 512),
        |b| {
            let len = b.len();
            let input = b.clone();
            let (f, mut max) = bounded("GgufFile::from_bytes", len, || GgufFile::from_bytes(input));
            let Ok(f) = f else { return (max, false) };
            let names: Vec<String> = f.tensor_names().map(str::to_string).collect();
            for name in &names {
                let (t, bytes) = bounded("GgufFile::tensor_f64", len, || f.tensor_f64(name));
                max = max.max(bytes);
                if let Ok(t) = t {
                    assert_eq!(t.shape(), &f.tensor_shape(name).unwrap()[..]);
                }
            }
            let keys: Vec<String> = f.metadata_entries().map(|(k, _)| k.to_string()).collect();
            for k in &keys {
                let _ = f.get_u64(k);
                let _ = f.get_str(k);
                let _ = f.get_f32_array(k);
                let _ = f.get_str_array(k);
            }
            (max, true)
        },
    );
}

/// Serialises `(name, dtype, shape)` tensors with `seed`-dependent values.
fn safetensors_file(tensors: &[(&str, Dtype, Vec<usize>)]) -> Vec<u8> {
    let data: Vec<(String, Dtype, Vec<usize>, Vec<u8>)> = tensors
        .iter()
        .map(|(name, dt, shape)| {
            let n: usize = shape.iter().product::<usize>() * dt.bitsize() / 8;
            let bytes = (0..n).map(|i| (i * 37 % 251) as u8 & 0x3f).collect();
            (name.to_string(), *dt, shape.clone(), bytes)
        })
        .collect();
    let views: Vec<(String, TensorView<'_>)> = data
        .iter()
        .map(|(name, dt, shape, b)| {
            (
                name.clone(),
                TensorView::new(*dt, shape.clone(), b).unwrap(),
            )
        })
        .collect();
    safetensors::tensor::serialize(views, None).unwrap()
}

#[test]
fn fuzz_safetensors_source_from_bytes() {
    let valid = vec![
        safetensors_file(&[
            ("a", Dtype::F32, vec![2, 3]),
            ("b", Dtype::F16, vec![4]),
            ("c", Dtype::BF16, vec![1, 1, 2]),
            ("d", Dtype::F64, vec![2]),
            ("e", Dtype::I32, vec![2]),
            ("z", Dtype::F32, vec![0, 5]),
        ]),
        safetensors_file(&[("model.norm.weight", Dtype::F32, vec![8])]),
        safetensors_file(&[]),
    ];
    run_target(
        "SafetensorsSource::from_bytes",
        10_000,
        bytes_from(valid, 256),
        |b| {
            let len = b.len();
            let names: Vec<String> = safetensors::SafeTensors::deserialize(&b)
                .map(|st| st.names().into_iter().map(str::to_string).collect())
                .unwrap_or_default();
            let input = b.clone();
            let (src, mut max) = bounded("SafetensorsSource::from_bytes", len, || {
                SafetensorsSource::from_bytes(input, "/fuzz/model.safetensors")
            });
            let ok = src.is_ok();
            match src {
                Err(e) => assert!(e.to_string().contains("model.safetensors"), "{e}"),
                Ok(src) => {
                    for name in &names {
                        let (t, bytes) =
                            bounded("SafetensorsSource::tensor", len, || src.tensor(name));
                        max = max.max(bytes);
                        if let Ok(t) = t {
                            assert_eq!(t.shape(), &src.shape(name).unwrap()[..]);
                        }
                    }
                }
            }
            (max, ok)
        },
    );
}

const JSON_TOKENS: &[&str] = &[
    "-1",
    "0",
    "1.5",
    "1e400",
    "1099511627776",
    "18446744073709551615",
    "18446744073709551616",
    "null",
    "true",
    "\"gelu\"",
    "\"relu\"",
    "[]",
    "{}",
    ",",
    ":",
    "\"",
    "}",
];

fn tiny_bert() -> BertConfig {
    BertConfig {
        vocab_size: 4,
        hidden: 2,
        heads: 1,
        layers: 1,
        intermediate: 3,
        max_position: 3,
        type_vocab_size: 1,
        layer_norm_eps: 1e-12,
    }
}

fn bert_config_json(c: &BertConfig) -> String {
    format!(
        r#"{{"model_type": "bert", "hidden_act": "gelu", "position_embedding_type": "absolute",
"vocab_size": {}, "hidden_size": {}, "num_attention_heads": {}, "num_hidden_layers": {},
"intermediate_size": {}, "max_position_embeddings": {}, "type_vocab_size": {},
"layer_norm_eps": {:e}}}"#,
        c.vocab_size,
        c.hidden,
        c.heads,
        c.layers,
        c.intermediate,
        c.max_position,
        c.type_vocab_size,
        c.layer_norm_eps
    )
}

#[test]
fn fuzz_bert_config_json() {
    let valid = vec![
        bert_config_json(&tiny_bert()),
        bert_config_json(&BertWeights::demo_config()),
    ];
    run_target(
        "BertConfig::from_json_str",
        10_000,
        text_from(valid, JSON_TOKENS),
        |t| {
            let (c, bytes) = bounded("BertConfig::from_json_str", t.len(), || {
                BertConfig::from_json_str(&t, Path::new("/fuzz/config.json"))
            });
            let ok = c.is_ok();
            match c {
                Ok(c) => c.validate().unwrap(),
                Err(e) => assert!(e.to_string().contains("config.json"), "{e}"),
            }
            (bytes, ok)
        },
    );
}

/// The tensors of a BERT checkpoint of `c` (`prefix` before every name), as
/// `BertWeights::from_bytes` reads them.
fn bert_tensors(c: &BertConfig, prefix: &str, dt: Dtype) -> Vec<(String, Dtype, Vec<usize>)> {
    let (h, f) = (c.hidden, c.intermediate);
    let mut t = vec![
        (
            "embeddings.word_embeddings.weight".to_string(),
            vec![c.vocab_size, h],
        ),
        (
            "embeddings.position_embeddings.weight".into(),
            vec![c.max_position, h],
        ),
        (
            "embeddings.token_type_embeddings.weight".into(),
            vec![c.type_vocab_size, h],
        ),
        ("embeddings.LayerNorm.weight".into(), vec![h]),
        ("embeddings.LayerNorm.bias".into(), vec![h]),
    ];
    for i in 0..c.layers {
        let p = format!("encoder.layer.{i}");
        for m in ["query", "key", "value"] {
            t.push((format!("{p}.attention.self.{m}.weight"), vec![h, h]));
            t.push((format!("{p}.attention.self.{m}.bias"), vec![h]));
        }
        t.push((format!("{p}.attention.output.dense.weight"), vec![h, h]));
        t.push((format!("{p}.attention.output.dense.bias"), vec![h]));
        t.push((format!("{p}.intermediate.dense.weight"), vec![f, h]));
        t.push((format!("{p}.intermediate.dense.bias"), vec![f]));
        t.push((format!("{p}.output.dense.weight"), vec![h, f]));
        t.push((format!("{p}.output.dense.bias"), vec![h]));
        for ln in ["attention.output.LayerNorm", "output.LayerNorm"] {
            t.push((format!("{p}.{ln}.weight"), vec![h]));
            t.push((format!("{p}.{ln}.bias"), vec![h]));
        }
    }
    t.into_iter()
        .map(|(n, s)| (format!("{prefix}{n}"), dt, s))
        .collect()
}

fn bert_file(c: &BertConfig, prefix: &str, dt: Dtype) -> Vec<u8> {
    let t = bert_tensors(c, prefix, dt);
    let refs: Vec<(&str, Dtype, Vec<usize>)> = t
        .iter()
        .map(|(n, d, s)| (n.as_str(), *d, s.clone()))
        .collect();
    safetensors_file(&refs)
}

#[test]
fn fuzz_bert_weights_from_bytes() {
    let c = tiny_bert();
    let valid = vec![
        bert_file(&c, "", Dtype::F32),
        bert_file(&c, "bert.", Dtype::F16),
    ];
    let ok = BertWeights::from_bytes(&c, &valid[0], Path::new("m.safetensors"));
    assert!(ok.is_ok(), "{:?}", ok.err());
    let configs = vec![
        c.clone(),
        BertConfig {
            layers: 1 << 40,
            ..c.clone()
        },
        BertConfig {
            vocab_size: 1 << 40,
            ..c.clone()
        },
        BertConfig {
            hidden: 4,
            heads: 2,
            ..c.clone()
        },
    ];
    run_target(
        "BertWeights::from_bytes",
        10_000,
        (bytes_from(valid, 256), select(configs)),
        |(b, c)| {
            let (w, bytes) = bounded("BertWeights::from_bytes", b.len(), || {
                BertWeights::from_bytes(&c, &b, Path::new("/fuzz/model.safetensors"))
            });
            let ok = w.is_ok();
            if let Err(e) = w {
                assert!(e.to_string().contains("model.safetensors"), "{e}");
            }
            (bytes, ok)
        },
    );
}

// ---------------------------------------------------------------------------------------
// Regression tests: every finding, with its exact bytes
// ---------------------------------------------------------------------------------------

/// Found by `fuzz_fss_request_decode`: a ReluCoarse request (tag 7) whose `skip` word is
/// 2^64 - 1 passed `skip + 2 > bits` by wrapping (release builds), was accepted as
/// `skip = 2^32 - 1`, and would have made the dealer panic in key generation. Now a
/// clean error naming `skip`.
#[test]
fn regression_fss_request_relu_coarse_skip_wraps() {
    let e = FssRequest::decode(&[7, 2, 36, u64::MAX])
        .unwrap_err()
        .to_string();
    assert!(e.contains("skip 18446744073709551615 for bits 36"), "{e}");
}

/// Found with the same target: DreluBit (tag 8) and ClampLut (tag 10) read `skip` as a
/// u32, and `skip + 2 > bits` wrapped for skip = 2^32 - 2, so the request was accepted
/// and `bits - 1 - skip` underflowed when dealt. Now rejected by the parameter check.
#[test]
fn regression_fss_request_drelu_skip_wraps() {
    let skip = u64::from(u32::MAX - 1);
    for words in [vec![8, 2, 40, skip], vec![10, 2, 40, skip, 5]] {
        let e = FssRequest::decode(&words).unwrap_err().to_string();
        assert!(e.contains("skip in 0..=bits-2"), "{words:?}: {e}");
    }
}

/// Found by `fuzz_bert_weights_from_bytes`: a config.json declaring 2^40 layers made
/// `BertWeights::load` reserve 2^40 layers up front (`Vec::with_capacity`), and the
/// process aborted ("memory allocation of 580542139465728 bytes failed") before any
/// layer tensor was looked at. Now the missing first layer is named.
#[test]
fn regression_bert_declared_layers_are_not_reserved() {
    let json = bert_config_json(&tiny_bert()).replace(
        "\"num_hidden_layers\": 1,",
        "\"num_hidden_layers\": 1099511627776,",
    );
    let c = BertConfig::from_json_str(&json, Path::new("config.json")).unwrap();
    assert_eq!(c.layers, 1 << 40);
    let file = bert_file(
        &BertConfig {
            layers: 0,
            ..tiny_bert()
        },
        "",
        Dtype::F32,
    );
    let _guard = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let ((), _) = bounded("BertWeights::from_bytes", file.len(), || {
        let e = BertWeights::from_bytes(&c, &file, Path::new("model.safetensors"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("model.safetensors") && e.contains("encoder.layer.0"),
            "{e}"
        );
    });
}

/// Head share files (`finetune --save-head`): valid files of both settings, mutated, with
/// the checksum recomputed over the mutated body half the time (so mutations reach the
/// header and size checks behind it). Accepted files must hold the shapes their header
/// declares.
#[test]
fn fuzz_head_share_file() {
    use sha2::Digest;
    use tessera::Setting;
    use tessera_protocols::nn::train::{HeadFileMeta, TrainableHead};
    let body = |setting: Setting, hidden: Option<usize>| -> Vec<u8> {
        let meta = HeadFileMeta {
            party: 1,
            setting: setting.name().to_string(),
            frac_bits: 16,
            input: 6,
            hidden,
            classes: 3,
            tag: "0123456789abcdef0123456789abcdef".into(),
        };
        let header = serde_json::to_vec(&meta).unwrap();
        let parts = if setting == Setting::ThreePc { 2 } else { 1 };
        let words: usize = meta
            .spec()
            .layers()
            .iter()
            .map(|(k, n)| (k * n + n) * parts)
            .sum();
        let mut out = b"TSHEAD01".to_vec();
        out.extend((header.len() as u32).to_le_bytes());
        out.extend(header);
        out.extend((0..words as u64).flat_map(|w| (w * 0x9E37_79B9).to_le_bytes()));
        out
    };
    let valid = vec![
        body(Setting::TwoPc, None),
        body(Setting::ThreePc, Some(4)),
        body(Setting::TwoPc, Some(5)),
    ];
    run_target(
        "TrainableHead::from_file_bytes",
        10_000,
        (bytes_from(valid, 256), any::<bool>()),
        |(mut b, fix)| {
            if fix {
                let d = sha2::Sha256::digest(&b);
                b.extend(d);
            }
            let len = b.len();
            let mut accepted = false;
            let mut max = 0;
            for s in [Setting::TwoPc, Setting::ThreePc] {
                let (r, bytes) = bounded("TrainableHead::from_file_bytes", len, || {
                    TrainableHead::from_file_bytes(&b, Path::new("fuzz.bin"), 1, s, 16)
                });
                max = max.max(bytes);
                if let Ok((h, m)) = r {
                    accepted = true;
                    for ((w, bias), (k, n)) in h.params().into_iter().zip(m.spec().layers()) {
                        assert_eq!(w.shape(), &[k, n]);
                        assert_eq!(bias.shape(), &[n]);
                    }
                }
            }
            (max, accepted)
        },
    );
}
