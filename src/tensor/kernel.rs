//! Local matrix-multiplication kernels (placeholder naive version; replaced by the blocked one).
#![allow(missing_docs)]
pub fn matmul_u64(a: &[u64], b: &[u64], m: usize, k: usize, n: usize) -> Vec<u64> {
    let mut c = vec![0u64; m * n];
    matmul_u64_acc(a, b, &mut c, m, k, n);
    c
}
pub fn matmul_u64_acc(a: &[u64], b: &[u64], c: &mut [u64], m: usize, k: usize, n: usize) {
    for i in 0..m {
        for p in 0..k {
            let x = a[i * k + p];
            for j in 0..n {
                c[i * n + j] = c[i * n + j].wrapping_add(x.wrapping_mul(b[p * n + j]));
            }
        }
    }
}
pub fn matmul_f32(a: &[f32], b: &[f32], m: usize, k: usize, n: usize) -> Vec<f32> {
    let mut c = vec![0f32; m * n];
    for i in 0..m { for p in 0..k { for j in 0..n { c[i*n+j] += a[i*k+p]*b[p*n+j]; } } }
    c
}
pub fn matmul_f64(a: &[f64], b: &[f64], m: usize, k: usize, n: usize) -> Vec<f64> {
    let mut c = vec![0f64; m * n];
    for i in 0..m { for p in 0..k { for j in 0..n { c[i*n+j] += a[i*k+p]*b[p*n+j]; } } }
    c
}
