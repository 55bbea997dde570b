//! Local matrix-multiplication kernels over `Z_2^64` (plus `f32`/`f64` references).
//!
//! C is cut into (row block x column block) tasks run in parallel by rayon, so even m = 1 or 12
//! keeps both cores busy. Each task walks `k` in tiles, packs its A rows and B columns per tile
//! (B panels of `NR` columns sized for L1, avoiding cache-set conflicts from B's row stride), and
//! runs `MR x NR` register tiles: 16 zmm accumulators updated by a plain `acc += a_ik * b_kj`
//! loop that LLVM turns into `vpmullq`/`vpaddq` (or `vfmadd`). `multiversion` compiles it for
//! AVX-512 and AVX2 and dispatches at runtime: no `target-cpu` flag, no `unsafe`.

use rayon::prelude::*;

/// Columns per register tile (elements): 8 zmm for 64-bit types, 4 zmm for `f32`.
const NR: usize = 64;
/// Rows per register tile for 64-bit types: 2 x 8 = 16 zmm accumulators.
const MR_64: usize = 2;
/// Rows per register tile for `f32`: 4 x 4 = 16 zmm accumulators.
const MR_F32: usize = 4;
/// Bytes of one packed `KC x NR` B panel, sized to stay in a 32-48 KiB L1d.
const PANEL_BYTES: usize = 32 * 1024;
/// Rows per parallel task (before adaptive shrinking).
const MB: usize = 64;
/// Below this many multiply-accumulates the product is computed on the calling thread.
const PAR_THRESHOLD: usize = 1 << 16;

/// Element type of a kernel: one multiply-accumulate step.
trait Elem: Copy + Send + Sync + Default {
    /// `acc + a * b`; `FUSED` selects a fused multiply-add for floats (only when the selected
    /// target has hardware FMA, otherwise `mul_add` would fall back to a slow libm call).
    fn madd<const FUSED: bool>(acc: Self, a: Self, b: Self) -> Self;
}

impl Elem for u64 {
    #[inline(always)]
    fn madd<const FUSED: bool>(acc: u64, a: u64, b: u64) -> u64 {
        acc.wrapping_add(a.wrapping_mul(b))
    }
}

impl Elem for f32 {
    #[inline(always)]
    fn madd<const FUSED: bool>(acc: f32, a: f32, b: f32) -> f32 {
        if FUSED {
            a.mul_add(b, acc)
        } else {
            acc + a * b
        }
    }
}

impl Elem for f64 {
    #[inline(always)]
    fn madd<const FUSED: bool>(acc: f64, a: f64, b: f64) -> f64 {
        if FUSED {
            a.mul_add(b, acc)
        } else {
            acc + a * b
        }
    }
}

/// Register tile: `R` rows of `c[ccol..ccol + NR]` += packed A sliver * packed B panel.
///
/// `ap` is the A sliver as `[p][r]` (`kc * R`), `bp` the B panel as `[p][c]` (`kc * NR`): two
/// contiguous streams. The `R x NR` accumulators live in vector registers for the whole loop.
#[inline(always)]
#[allow(clippy::needless_range_loop)]
fn micro<T: Elem, const R: usize, const NR: usize, const F: bool>(
    ap: &[T],
    bp: &[T],
    rows: &mut [&mut [T]],
    ccol: usize,
) {
    let mut acc = [[T::default(); NR]; R];
    for (acc_r, row) in acc.iter_mut().zip(rows.iter()) {
        acc_r.copy_from_slice(&row[ccol..ccol + NR]);
    }
    for (av, bv) in ap.chunks_exact(R).zip(bp.chunks_exact(NR)) {
        // NR = 64 is deliberate: LLVM vectorises this contiguous column loop (8 zmm per row
        // for 64-bit types) and keeps `acc` in registers. With 32 u64 columns it fully
        // unrolled the loop first and then vectorised across `p` with gathers (checked with
        // objdump); re-check the asm (`vpmullq ... zmm`, no gathers/spills) after changes.
        let bv: &[T; NR] = bv.try_into().unwrap();
        for r in 0..R {
            let x = av[r];
            for c in 0..NR {
                acc[r][c] = T::madd::<F>(acc[r][c], x, bv[c]);
            }
        }
    }
    for (acc_r, row) in acc.iter().zip(rows.iter_mut()) {
        row[ccol..ccol + NR].copy_from_slice(acc_r);
    }
}

/// One task: `rows` are the C row segments for rows `i0..` and columns `j0..` of the output.
///
/// Per `k` tile the task packs its A rows (into `MR`-row slivers) and B columns (into `NR`-wide
/// panels) once; every register tile then streams both contiguously, the B panel from L1.
/// Packing B also avoids the L1 set conflicts of walking B with a large row stride.
#[inline(always)]
fn block<T: Elem, const MR: usize, const F: bool>(
    a: &[T],
    b: &[T],
    rows: &mut [&mut [T]],
    i0: usize,
    j0: usize,
    k: usize,
    n: usize,
) {
    let mb = rows.len();
    let nb = rows.first().map_or(0, |r| r.len());
    let full = nb - nb % NR;
    // Depth of a `k` cache tile, so that one packed B panel stays in L1.
    let kc_max = PANEL_BYTES / (NR * core::mem::size_of::<T>());
    let kmax = kc_max.min(k);
    let mut apack = vec![T::default(); mb * kmax];
    let mut bpack = vec![T::default(); full * kmax];
    let mut p0 = 0;
    while p0 < k {
        let kc = kc_max.min(k - p0);
        // Pack A: the sliver of rows ii..ii + h is stored [p][r] at offset ii * kc.
        let mut ii = 0;
        while ii < mb {
            let h = MR.min(mb - ii);
            let sliver = &mut apack[ii * kc..(ii + h) * kc];
            for r in 0..h {
                let a_row = &a[(i0 + ii + r) * k + p0..][..kc];
                for (dst, &v) in sliver[r..].iter_mut().step_by(h).zip(a_row) {
                    *dst = v;
                }
            }
            ii += h;
        }
        // Pack B: panel q is stored [p][c] at offset q * kc * NR.
        for p in 0..kc {
            let b_row = &b[(p0 + p) * n + j0..][..full];
            for (panel, src) in bpack.chunks_exact_mut(kc * NR).zip(b_row.chunks_exact(NR)) {
                panel[p * NR..(p + 1) * NR].copy_from_slice(src);
            }
        }
        for (q, bp) in bpack[..full * kc].chunks_exact(kc * NR).enumerate() {
            let mut ii = 0;
            while ii < mb {
                let h = MR.min(mb - ii);
                let ap = &apack[ii * kc..(ii + h) * kc];
                let tile = &mut rows[ii..ii + h];
                match h {
                    4 => micro::<T, 4, NR, F>(ap, bp, tile, q * NR),
                    3 => micro::<T, 3, NR, F>(ap, bp, tile, q * NR),
                    2 => micro::<T, 2, NR, F>(ap, bp, tile, q * NR),
                    _ => micro::<T, 1, NR, F>(ap, bp, tile, q * NR),
                }
                ii += h;
            }
        }
        if full < nb {
            // Column tail narrower than a register tile: plain vectorisable row updates.
            for (r, row) in rows.iter_mut().enumerate() {
                let a_row = &a[(i0 + r) * k + p0..][..kc];
                let c_tail = &mut row[full..nb];
                for (p, &av) in a_row.iter().enumerate() {
                    let b_tail = &b[(p0 + p) * n + j0 + full..][..nb - full];
                    for (cv, &bv) in c_tail.iter_mut().zip(b_tail) {
                        *cv = T::madd::<F>(*cv, av, bv);
                    }
                }
            }
        }
        p0 += kc;
    }
}

/// Runtime-dispatched per-type task entry points.
///
/// `multiversion` 0.7 tests `cfg(target_feature)` names (e.g. `retpoline`) that newer rustc
/// does not list, hence the local `unexpected_cfgs` allowance.
#[allow(unexpected_cfgs)]
mod dispatch {
    use multiversion::multiversion;

    macro_rules! task_fn {
        ($name:ident, $t:ty, $mr:expr) => {
            /// Runtime-dispatched task kernel (AVX-512 / AVX2+FMA / baseline).
            #[multiversion(targets("x86_64+avx512f+avx512dq+avx512vl", "x86_64+avx2+fma"))]
            pub(super) fn $name(
                a: &[$t],
                b: &[$t],
                rows: &mut [&mut [$t]],
                i0: usize,
                j0: usize,
                k: usize,
                n: usize,
            ) {
                if multiversion::target::target_cfg_f!(target_feature = "fma") {
                    super::block::<$t, { $mr }, true>(a, b, rows, i0, j0, k, n)
                } else {
                    super::block::<$t, { $mr }, false>(a, b, rows, i0, j0, k, n)
                }
            }
        };
    }

    task_fn!(task_u64, u64, super::MR_64);
    task_fn!(task_f32, f32, super::MR_F32);
    task_fn!(task_f64, f64, super::MR_64);
}
use dispatch::{task_f32, task_f64, task_u64};

/// One parallel unit of work: output rows `i0..`, columns `j0..`, as row segments of C.
struct Task<'c, T> {
    i0: usize,
    j0: usize,
    rows: Vec<&'c mut [T]>,
}

/// A dispatched task kernel: `(a, b, c_row_segments, i0, j0, k, n)`.
type TaskFn<T> = fn(&[T], &[T], &mut [&mut [T]], usize, usize, usize, usize);

/// `c += A * B`, splitting C into row/column blocks run with rayon.
fn drive<T: Elem>(
    a: &[T],
    b: &[T],
    c: &mut [T],
    (m, k, n): (usize, usize, usize),
    mr: usize,
    task: TaskFn<T>,
) {
    debug_assert_eq!(a.len(), m * k);
    debug_assert_eq!(b.len(), k * n);
    debug_assert_eq!(c.len(), m * n);
    if m == 0 || n == 0 || k == 0 {
        return;
    }
    let threads = rayon::current_num_threads();
    if m * k * n < PAR_THRESHOLD {
        let mut rows: Vec<&mut [T]> = c.chunks_exact_mut(n).collect();
        task(a, b, &mut rows, 0, 0, k, n);
        return;
    }
    // Column blocks of 8 register tiles keep a task's packed B tile (kc x nb) in L2; shrink
    // blocks until there are a few tasks per thread so small m (e.g. 1 or 12) uses every core.
    let mut nb = (8 * NR).min(n.div_ceil(NR) * NR);
    let mut mb = MB.min(m);
    let count = |mb: usize, nb: usize| m.div_ceil(mb) * n.div_ceil(nb);
    while count(mb, nb) < 3 * threads && (nb > NR || mb > mr) {
        if nb > NR {
            nb = (nb / 2).div_ceil(NR) * NR;
        } else {
            mb = (mb / 2).div_ceil(mr) * mr;
        }
    }
    let col_blocks = n.div_ceil(nb);
    let mut tasks: Vec<Task<'_, T>> = Vec::with_capacity(m.div_ceil(mb) * col_blocks);
    for (rb, block_rows) in c.chunks_mut(mb * n).enumerate() {
        let first = tasks.len();
        for cb in 0..col_blocks {
            tasks.push(Task {
                i0: rb * mb,
                j0: cb * nb,
                rows: Vec::with_capacity(mb),
            });
        }
        for row in block_rows.chunks_exact_mut(n) {
            for (t, seg) in tasks[first..].iter_mut().zip(row.chunks_mut(nb)) {
                t.rows.push(seg);
            }
        }
    }
    tasks
        .into_par_iter()
        .for_each(|mut t| task(a, b, &mut t.rows, t.i0, t.j0, k, n));
}

/// C = A B^T over Z_2^64 with A m x k and B n x k, both row-major (B's rows are the
/// output features: a model's embedding table read as its tied output head). Each output
/// is a dot product of two contiguous rows, parallel over B's rows, so the m = 1 product
/// of a decode step streams B once.
pub fn matmul_nt_u64(a: &[u64], b: &[u64], m: usize, k: usize, n: usize) -> Vec<u64> {
    assert_eq!(a.len(), m * k, "matmul_nt_u64: A is not {m} x {k}");
    assert_eq!(b.len(), n * k, "matmul_nt_u64: B is not {n} x {k}");
    let mut c = vec![0u64; m * n];
    if k == 0 || n == 0 {
        return c;
    }
    // Column-major output chunks: each task owns B rows [j0, j0 + 256) for every row of A.
    let cols: Vec<(usize, Vec<u64>)> = b
        .par_chunks(256 * k)
        .enumerate()
        .map(|(ci, bc)| {
            let rows = bc.len() / k;
            let mut out = vec![0u64; m * rows];
            for i in 0..m {
                let ar = &a[i * k..(i + 1) * k];
                for (j, br) in bc.chunks_exact(k).enumerate() {
                    out[i * rows + j] = ar
                        .iter()
                        .zip(br)
                        .fold(0u64, |acc, (x, y)| acc.wrapping_add(x.wrapping_mul(*y)));
                }
            }
            (ci * 256, out)
        })
        .collect();
    for (j0, out) in cols {
        let rows = out.len() / m.max(1);
        for i in 0..m {
            c[i * n + j0..i * n + j0 + rows].copy_from_slice(&out[i * rows..(i + 1) * rows]);
        }
    }
    c
}

/// `C (m x n) = A (m x k) * B (k x n)` over `Z_2^64` (wrapping add/mul), all row-major.
///
/// This is the local product at the heart of every secret-shared linear layer; it is blocked
/// for cache, register-tiled, rayon-parallel and runtime-dispatched to AVX-512 `vpmullq`.
pub fn matmul_u64(a: &[u64], b: &[u64], m: usize, k: usize, n: usize) -> Vec<u64> {
    let mut c = vec![0u64; m * n];
    matmul_u64_acc(a, b, &mut c, m, k, n);
    c
}

/// `c += A (m x k) * B (k x n)` over `Z_2^64` (wrapping), with `c.len() == m * n`.
///
/// Accumulating form of [`matmul_u64`], so callers summing several products (e.g. the cross
/// terms of a Beaver-triple multiplication) avoid a temporary and an extra pass over `c`.
pub fn matmul_u64_acc(a: &[u64], b: &[u64], c: &mut [u64], m: usize, k: usize, n: usize) {
    if m <= GEMV_ROWS {
        return gemv_u64_acc(a, b, c, m, k, n);
    }
    drive(a, b, c, (m, k, n), MR_64, task_u64);
}

/// At most this many rows of A take the streaming path: a decode step's [1, k] x [k, n]
/// product is memory-bound, and the GEMM's packing of B tiles would read B twice (measured
/// on a Llama layer in 3pc: 6.7 ms per SmolLM2 projection before, dominated by packing).
const GEMV_ROWS: usize = 4;

/// C += A B for a few rows of A: each row streams B once, axpy by axpy, in column blocks
/// that run in parallel.
fn gemv_u64_acc(a: &[u64], b: &[u64], c: &mut [u64], m: usize, k: usize, n: usize) {
    debug_assert_eq!(a.len(), m * k);
    debug_assert_eq!(b.len(), k * n);
    debug_assert_eq!(c.len(), m * n);
    if n == 0 {
        return;
    }
    const NB: usize = 512;
    for (i, crow) in c.chunks_exact_mut(n).enumerate() {
        let arow = &a[i * k..(i + 1) * k];
        let block = |(bi, cb): (usize, &mut [u64])| {
            let j0 = bi * NB;
            for (t, &x) in arow.iter().enumerate() {
                if x == 0 {
                    continue;
                }
                let brow = &b[t * n + j0..t * n + j0 + cb.len()];
                for (cj, bj) in cb.iter_mut().zip(brow) {
                    *cj = cj.wrapping_add(x.wrapping_mul(*bj));
                }
            }
        };
        if k * n < PAR_THRESHOLD {
            crow.chunks_mut(NB).enumerate().for_each(block);
        } else {
            crow.par_chunks_mut(NB).enumerate().for_each(block);
        }
    }
}

/// `C = A (m x k) * B (k x n)` in `f32`, same blocking and dispatch as [`matmul_u64`].
///
/// A fair floating-point baseline (FMA on zmm) so benchmarks can report the cost of ring
/// arithmetic relative to ordinary plaintext inference.
pub fn matmul_f32(a: &[f32], b: &[f32], m: usize, k: usize, n: usize) -> Vec<f32> {
    let mut c = vec![0f32; m * n];
    drive(a, b, &mut c, (m, k, n), MR_F32, task_f32);
    c
}

/// `C = A (m x k) * B (k x n)` in `f64`, same blocking and dispatch as [`matmul_u64`].
///
/// Used by the plaintext reference of transformer inference that secure results are checked
/// against.
pub fn matmul_f64(a: &[f64], b: &[f64], m: usize, k: usize, n: usize) -> Vec<f64> {
    let mut c = vec![0f64; m * n];
    drive(a, b, &mut c, (m, k, n), MR_64, task_f64);
    c
}

#[cfg(test)]
mod tests {
    use super::*;

    /// SplitMix64: small deterministic generator so the tests need no extra dependency.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^ (z >> 31)
        }
        fn below(&mut self, bound: usize) -> usize {
            (self.next() % bound as u64) as usize
        }
        fn unit(&mut self) -> f64 {
            (self.next() >> 11) as f64 / (1u64 << 53) as f64 * 2.0 - 1.0
        }
    }

    fn naive_u64(a: &[u64], b: &[u64], m: usize, k: usize, n: usize) -> Vec<u64> {
        let mut c = vec![0u64; m * n];
        for i in 0..m {
            for j in 0..n {
                let mut s = 0u64;
                for p in 0..k {
                    s = s.wrapping_add(a[i * k + p].wrapping_mul(b[p * n + j]));
                }
                c[i * n + j] = s;
            }
        }
        c
    }

    /// Naive f64 product plus the bound `sum |a||b|` per entry, for tolerance checks.
    fn naive_f64(a: &[f64], b: &[f64], m: usize, k: usize, n: usize) -> (Vec<f64>, Vec<f64>) {
        let mut c = vec![0f64; m * n];
        let mut mag = vec![0f64; m * n];
        for i in 0..m {
            for j in 0..n {
                for p in 0..k {
                    c[i * n + j] += a[i * k + p] * b[p * n + j];
                    mag[i * n + j] += (a[i * k + p] * b[p * n + j]).abs();
                }
            }
        }
        (c, mag)
    }

    fn shapes() -> Vec<(usize, usize, usize)> {
        let mut v = vec![
            (0, 0, 0),
            (0, 5, 7),
            (5, 0, 7),
            (5, 7, 0),
            (1, 1, 1),
            (1, 300, 1),
            (1, 1, 100),
            (100, 1, 1),
            (1, 768, 96),
            (12, 64, 128),
            (7, 129, 33),
            (13, 257, 65),
            (128, 64, 128),
            (67, 200, 300),
            (3, 130, 700),
            (130, 131, 31),
        ];
        let mut rng = Rng(7);
        for _ in 0..20 {
            v.push((rng.below(40), rng.below(300), rng.below(150)));
        }
        v
    }

    #[test]
    fn u64_matches_naive() {
        let mut rng = Rng(1);
        for (m, k, n) in shapes() {
            let a: Vec<u64> = (0..m * k).map(|_| rng.next()).collect();
            let b: Vec<u64> = (0..k * n).map(|_| rng.next()).collect();
            let want = naive_u64(&a, &b, m, k, n);
            assert_eq!(matmul_u64(&a, &b, m, k, n), want, "shape {m}x{k}x{n}");
        }
    }

    #[test]
    fn u64_nt_matches_naive_of_the_transpose() {
        let mut rng = Rng(3);
        for (m, k, n) in shapes()
            .into_iter()
            .chain([(1, 576, 49152 / 64), (2, 64, 600)])
        {
            let a: Vec<u64> = (0..m * k).map(|_| rng.next()).collect();
            let bt: Vec<u64> = (0..n * k).map(|_| rng.next()).collect(); // n x k
            let mut b = vec![0u64; k * n]; // k x n
            for j in 0..n {
                for p in 0..k {
                    b[p * n + j] = bt[j * k + p];
                }
            }
            let want = naive_u64(&a, &b, m, k, n);
            assert_eq!(matmul_nt_u64(&a, &bt, m, k, n), want, "shape {m}x{k}x{n}");
        }
    }

    #[test]
    fn u64_acc_adds_to_existing() {
        let mut rng = Rng(2);
        for (m, k, n) in shapes() {
            let a: Vec<u64> = (0..m * k).map(|_| rng.next()).collect();
            let b: Vec<u64> = (0..k * n).map(|_| rng.next()).collect();
            let c0: Vec<u64> = (0..m * n).map(|_| rng.next()).collect();
            let mut c = c0.clone();
            matmul_u64_acc(&a, &b, &mut c, m, k, n);
            let prod = naive_u64(&a, &b, m, k, n);
            let want: Vec<u64> = c0
                .iter()
                .zip(&prod)
                .map(|(x, y)| x.wrapping_add(*y))
                .collect();
            assert_eq!(c, want, "shape {m}x{k}x{n}");
        }
    }

    #[test]
    fn u64_wraps_near_max() {
        let mut rng = Rng(3);
        let (m, k, n) = (9, 150, 70);
        let a: Vec<u64> = (0..m * k).map(|_| u64::MAX - (rng.next() & 0xff)).collect();
        let b: Vec<u64> = (0..k * n).map(|_| u64::MAX - (rng.next() & 0xff)).collect();
        assert_eq!(matmul_u64(&a, &b, m, k, n), naive_u64(&a, &b, m, k, n));
        // (-1) * (-1) summed k times is k; (2^63)*2 wraps to 0.
        let ones = vec![u64::MAX; 4 * 3];
        assert_eq!(matmul_u64(&ones, &ones, 4, 3, 4), vec![3u64; 16]);
        assert_eq!(matmul_u64(&[1u64 << 63], &[2], 1, 1, 1), vec![0]);
    }

    #[test]
    fn floats_match_naive() {
        let mut rng = Rng(4);
        for (m, k, n) in shapes() {
            let a: Vec<f64> = (0..m * k).map(|_| rng.unit()).collect();
            let b: Vec<f64> = (0..k * n).map(|_| rng.unit()).collect();
            let (want, mag) = naive_f64(&a, &b, m, k, n);
            let got64 = matmul_f64(&a, &b, m, k, n);
            let a32: Vec<f32> = a.iter().map(|&x| x as f32).collect();
            let b32: Vec<f32> = b.iter().map(|&x| x as f32).collect();
            let got32 = matmul_f32(&a32, &b32, m, k, n);
            // Reference for f32 uses the already-rounded inputs, so only summation error remains.
            let a32w: Vec<f64> = a32.iter().map(|&x| x as f64).collect();
            let b32w: Vec<f64> = b32.iter().map(|&x| x as f64).collect();
            let (want32, _) = naive_f64(&a32w, &b32w, m, k, n);
            assert_eq!(got64.len(), m * n);
            assert_eq!(got32.len(), m * n);
            let steps = (k + 1) as f64;
            for i in 0..m * n {
                let tol64 = steps * f64::EPSILON * mag[i] + 1e-300;
                let tol32 = steps * f32::EPSILON as f64 * mag[i] + 1e-30;
                assert!((got64[i] - want[i]).abs() <= tol64, "f64 {m}x{k}x{n} @{i}");
                assert!(
                    (got32[i] as f64 - want32[i]).abs() <= tol32,
                    "f32 {m}x{k}x{n} @{i}"
                );
            }
        }
    }
}
