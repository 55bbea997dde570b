//! Row-major tensors over the ring Z_2^64 (and f64/f32 for plaintext references).
//!
//! A [`Tensor`] is a shape plus a contiguous `Vec` in row-major order. Ring tensors are
//! `Tensor<u64>` with wrapping arithmetic; the same type holds f64 plaintext so the
//! reference computations share the shape logic. Shape errors are values, not panics:
//! every binary op checks its operands and names the op and both shapes.

pub mod kernel;

use crate::error::{Error, Result};

/// A dense row-major tensor.
#[derive(Clone, Debug, PartialEq)]
pub struct Tensor<T> {
    shape: Vec<usize>,
    data: Vec<T>,
}

/// Number of elements of a shape (1 for the empty shape, a scalar).
pub fn numel(shape: &[usize]) -> usize {
    shape.iter().product()
}

impl<T: Copy + Default> Tensor<T> {
    /// A tensor of `T::default()` (zero) with the given shape.
    pub fn zeros(shape: &[usize]) -> Self {
        Tensor {
            shape: shape.to_vec(),
            data: vec![T::default(); numel(shape)],
        }
    }

    /// Wraps `data` with `shape`; errors if the sizes disagree.
    pub fn from_vec(shape: &[usize], data: Vec<T>) -> Result<Self> {
        if numel(shape) != data.len() {
            return Err(Error::shape(
                "from_vec",
                format!(
                    "shape {:?} needs {} elements, got {}",
                    shape,
                    numel(shape),
                    data.len()
                ),
            ));
        }
        Ok(Tensor {
            shape: shape.to_vec(),
            data,
        })
    }

    /// The shape.
    pub fn shape(&self) -> &[usize] {
        &self.shape
    }
    /// Number of elements.
    pub fn len(&self) -> usize {
        self.data.len()
    }
    /// True when the tensor has no elements.
    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }
    /// The elements in row-major order.
    pub fn data(&self) -> &[T] {
        &self.data
    }
    /// Mutable elements in row-major order.
    pub fn data_mut(&mut self) -> &mut [T] {
        &mut self.data
    }
    /// Consumes the tensor, returning its elements.
    pub fn into_data(self) -> Vec<T> {
        self.data
    }
    /// Size of the last axis (1 for a scalar).
    pub fn last_dim(&self) -> usize {
        self.shape.last().copied().unwrap_or(1)
    }

    /// Same data, new shape with the same number of elements.
    pub fn reshape(mut self, shape: &[usize]) -> Result<Self> {
        if numel(shape) != self.data.len() {
            return Err(Error::shape(
                "reshape",
                format!(
                    "{:?} ({} elements) to {:?}",
                    self.shape,
                    self.data.len(),
                    shape
                ),
            ));
        }
        self.shape = shape.to_vec();
        Ok(self)
    }

    /// Element-wise map.
    pub fn map<U>(&self, f: impl Fn(T) -> U) -> Tensor<U>
    where
        U: Copy + Default,
    {
        Tensor {
            shape: self.shape.clone(),
            data: self.data.iter().map(|&x| f(x)).collect(),
        }
    }

    /// Element-wise combination of two tensors of the same shape.
    pub fn zip_with(
        &self,
        other: &Tensor<T>,
        op: &'static str,
        f: impl Fn(T, T) -> T,
    ) -> Result<Self> {
        self.check_same(other, op)?;
        Ok(Tensor {
            shape: self.shape.clone(),
            data: self
                .data
                .iter()
                .zip(&other.data)
                .map(|(&a, &b)| f(a, b))
                .collect(),
        })
    }

    /// Combines each row (last axis) with a vector of the last axis' length:
    /// broadcasting over the last axis (bias add, gamma multiply).
    pub fn zip_rows(&self, row: &[T], op: &'static str, f: impl Fn(T, T) -> T) -> Result<Self> {
        let d = self.last_dim();
        if row.len() != d {
            return Err(Error::shape(
                op,
                format!(
                    "tensor {:?} broadcast with vector of length {}",
                    self.shape,
                    row.len()
                ),
            ));
        }
        let mut out = self.clone();
        if d > 0 {
            for chunk in out.data.chunks_mut(d) {
                for (x, &r) in chunk.iter_mut().zip(row) {
                    *x = f(*x, r);
                }
            }
        }
        Ok(out)
    }

    /// Errors unless `other` has the same shape.
    pub fn check_same(&self, other: &Tensor<T>, op: &'static str) -> Result<()> {
        if self.shape != other.shape {
            return Err(Error::shape(
                op,
                format!("{:?} vs {:?}", self.shape, other.shape),
            ));
        }
        Ok(())
    }

    /// Swaps the last two axes (batched matrix transpose). A 1-D tensor is treated as a row.
    pub fn transpose(&self) -> Self {
        let r = self.shape.len();
        let (rows, cols) = match r {
            0 => return self.clone(),
            1 => (1, self.shape[0]),
            _ => (self.shape[r - 2], self.shape[r - 1]),
        };
        let batch = self.data.len().checked_div(rows * cols).unwrap_or(0);
        let mut data = vec![T::default(); self.data.len()];
        for b in 0..batch {
            let src = &self.data[b * rows * cols..(b + 1) * rows * cols];
            let dst = &mut data[b * rows * cols..(b + 1) * rows * cols];
            for i in 0..rows {
                for j in 0..cols {
                    dst[j * rows + i] = src[i * cols + j];
                }
            }
        }
        let mut shape = self.shape.clone();
        if r == 1 {
            shape = vec![cols, 1];
        } else {
            shape.swap(r - 2, r - 1);
        }
        Tensor { shape, data }
    }

    /// Swaps the first two axes of a 3-D tensor: [a, b, c] -> [b, a, c] (attention heads:
    /// [seq, heads, dim] <-> [heads, seq, dim]).
    pub fn swap01(&self) -> Result<Self> {
        let [a, b, c] = self.shape[..] else {
            return Err(Error::shape(
                "swap01",
                format!("needs a 3-D tensor, got {:?}", self.shape),
            ));
        };
        let mut data = Vec::with_capacity(self.data.len());
        for j in 0..b {
            for i in 0..a {
                data.extend_from_slice(&self.data[(i * b + j) * c..(i * b + j + 1) * c]);
            }
        }
        Ok(Tensor {
            shape: vec![b, a, c],
            data,
        })
    }

    /// Splits the last axis into consecutive pieces of the given widths.
    pub fn split_last(&self, widths: &[usize]) -> Result<Vec<Self>> {
        let d = self.last_dim();
        if widths.iter().sum::<usize>() != d {
            return Err(Error::shape(
                "split_last",
                format!("{:?} into widths {:?}", self.shape, widths),
            ));
        }
        let rows = self.data.len().checked_div(d).unwrap_or(0);
        let mut out = Vec::with_capacity(widths.len());
        let mut off = 0;
        for &w in widths {
            let mut data = Vec::with_capacity(rows * w);
            for r in 0..rows {
                data.extend_from_slice(&self.data[r * d + off..r * d + off + w]);
            }
            let mut shape = self.shape.clone();
            *shape.last_mut().expect("non-scalar") = w;
            out.push(Tensor { shape, data });
            off += w;
        }
        Ok(out)
    }

    /// Concatenates tensors with equal leading axes along the last axis.
    pub fn concat_last(parts: &[Tensor<T>]) -> Result<Self> {
        let first = parts
            .first()
            .ok_or_else(|| Error::shape("concat_last", "nothing to concatenate"))?;
        let lead = &first.shape[..first.shape.len().saturating_sub(1)];
        let rows = numel(lead);
        let mut width = 0;
        for p in parts {
            if &p.shape[..p.shape.len().saturating_sub(1)] != lead {
                return Err(Error::shape(
                    "concat_last",
                    format!("{:?} vs {:?}", first.shape, p.shape),
                ));
            }
            width += p.last_dim();
        }
        let mut data = Vec::with_capacity(rows * width);
        for r in 0..rows {
            for p in parts {
                let w = p.last_dim();
                data.extend_from_slice(&p.data[r * w..(r + 1) * w]);
            }
        }
        let mut shape = lead.to_vec();
        shape.push(width);
        Ok(Tensor { shape, data })
    }

    /// Concatenates tensors along a new leading axis (all must share a shape).
    pub fn stack(parts: &[Tensor<T>]) -> Result<Self> {
        let first = parts
            .first()
            .ok_or_else(|| Error::shape("stack", "no tensors to stack"))?;
        let mut data = Vec::with_capacity(first.len() * parts.len());
        for p in parts {
            first.check_same(p, "stack")?;
            data.extend_from_slice(&p.data);
        }
        let mut shape = vec![parts.len()];
        shape.extend_from_slice(&first.shape);
        Ok(Tensor { shape, data })
    }
}

/// How a batched matmul pairs its operands, derived from the shapes.
///
/// `a` is `[.., m, k]`; `b` is either `[k, n]` (shared by every batch entry, e.g. a weight)
/// or `[.., k, n]` with the same leading axes as `a` (e.g. attention heads).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MatmulDims {
    /// Number of independent products (product of leading axes of `a`).
    pub batch: usize,
    /// Rows of each left operand.
    pub m: usize,
    /// Inner dimension.
    pub k: usize,
    /// Columns of each right operand.
    pub n: usize,
    /// True when `b` is one matrix broadcast over the batch.
    pub broadcast_b: bool,
    /// Shape of the result.
    pub out_shape: Vec<usize>,
}

impl MatmulDims {
    /// Checks two shapes for a (batched) matmul.
    pub fn new(a: &[usize], b: &[usize]) -> Result<Self> {
        let bad = || Error::shape("matmul", format!("{:?} x {:?}", a, b));
        if a.len() < 2 || b.len() < 2 {
            return Err(bad());
        }
        let (m, k) = (a[a.len() - 2], a[a.len() - 1]);
        let (k2, n) = (b[b.len() - 2], b[b.len() - 1]);
        if k != k2 {
            return Err(bad());
        }
        let lead_a = &a[..a.len() - 2];
        let lead_b = &b[..b.len() - 2];
        let broadcast_b = lead_b.is_empty();
        if !broadcast_b && lead_a != lead_b {
            return Err(bad());
        }
        let batch = numel(lead_a);
        let mut out_shape = lead_a.to_vec();
        out_shape.extend_from_slice(&[m, n]);
        Ok(MatmulDims {
            batch,
            m,
            k,
            n,
            broadcast_b,
            out_shape,
        })
    }
}

impl Tensor<u64> {
    /// Element-wise wrapping sum.
    pub fn add(&self, o: &Self) -> Result<Self> {
        self.zip_with(o, "add", u64::wrapping_add)
    }
    /// Element-wise wrapping difference.
    pub fn sub(&self, o: &Self) -> Result<Self> {
        self.zip_with(o, "sub", u64::wrapping_sub)
    }
    /// Element-wise wrapping product.
    pub fn mul(&self, o: &Self) -> Result<Self> {
        self.zip_with(o, "mul", u64::wrapping_mul)
    }
    /// Element-wise negation mod 2^64.
    pub fn neg(&self) -> Self {
        self.map(u64::wrapping_neg)
    }
    /// Multiplies every element by a ring constant.
    pub fn scale(&self, c: u64) -> Self {
        self.map(|x| x.wrapping_mul(c))
    }
    /// In-place wrapping add.
    pub fn add_assign(&mut self, o: &Self) -> Result<()> {
        self.check_same(o, "add_assign")?;
        for (x, &y) in self.data.iter_mut().zip(&o.data) {
            *x = x.wrapping_add(y);
        }
        Ok(())
    }
    /// In-place wrapping subtract.
    pub fn sub_assign(&mut self, o: &Self) -> Result<()> {
        self.check_same(o, "sub_assign")?;
        for (x, &y) in self.data.iter_mut().zip(&o.data) {
            *x = x.wrapping_sub(y);
        }
        Ok(())
    }
    /// (Batched) matrix product over Z_2^64; see [`MatmulDims`] for the shapes accepted.
    pub fn matmul(&self, b: &Self) -> Result<Self> {
        let d = MatmulDims::new(&self.shape, &b.shape)?;
        let data = batched(&d, &self.data, &b.data, kernel::matmul_u64);
        Ok(Tensor {
            shape: d.out_shape,
            data,
        })
    }
}

impl Tensor<f64> {
    /// (Batched) matrix product in f64 (plaintext references).
    pub fn matmul(&self, b: &Self) -> Result<Self> {
        let d = MatmulDims::new(&self.shape, &b.shape)?;
        let data = batched(&d, &self.data, &b.data, kernel::matmul_f64);
        Ok(Tensor {
            shape: d.out_shape,
            data,
        })
    }
}

/// A 2-D matmul kernel: (a, b, m, k, n) -> a (m x k) times b (k x n).
pub type Kernel<T> = fn(&[T], &[T], usize, usize, usize) -> Vec<T>;

/// Runs a 2-D kernel over the batch described by `d`.
pub fn batched<T: Copy + Default + Send + Sync>(
    d: &MatmulDims,
    a: &[T],
    b: &[T],
    kern: Kernel<T>,
) -> Vec<T> {
    let (m, k, n) = (d.m, d.k, d.n);
    if d.broadcast_b {
        // [batch*m, k] x [k, n]: one big product is faster than `batch` small ones.
        return kern(a, b, d.batch * m, k, n);
    }
    let mut out = Vec::with_capacity(d.batch * m * n);
    for i in 0..d.batch {
        out.extend(kern(
            &a[i * m * k..(i + 1) * m * k],
            &b[i * k * n..(i + 1) * k * n],
            m,
            k,
            n,
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transpose_and_reshape() {
        let t = Tensor::from_vec(&[2, 3], vec![1u64, 2, 3, 4, 5, 6]).unwrap();
        let tt = t.transpose();
        assert_eq!(tt.shape(), &[3, 2]);
        assert_eq!(tt.data(), &[1, 4, 2, 5, 3, 6]);
        assert_eq!(tt.transpose(), t);
        assert!(t.clone().reshape(&[4]).is_err());
        assert_eq!(t.reshape(&[3, 2]).unwrap().shape(), &[3, 2]);
    }

    #[test]
    fn matmul_shapes_checked() {
        let a = Tensor::<u64>::zeros(&[2, 3]);
        let b = Tensor::<u64>::zeros(&[4, 5]);
        let e = a.matmul(&b).unwrap_err().to_string();
        assert!(e.contains("[2, 3] x [4, 5]"), "{e}");
        let batched_a = Tensor::<u64>::zeros(&[2, 3, 4]);
        let batched_b = Tensor::<u64>::zeros(&[3, 4, 5]);
        assert!(batched_a.matmul(&batched_b).is_err());
    }

    #[test]
    fn matmul_matches_naive_with_wrapping() {
        let a = Tensor::from_vec(&[2, 2, 2], vec![u64::MAX, 2, 3, 4, 5, 6, 7, 8]).unwrap();
        let b = Tensor::from_vec(&[2, 2], vec![1u64, u64::MAX, 1, 0]).unwrap();
        let c = a.matmul(&b).unwrap();
        assert_eq!(c.shape(), &[2, 2, 2]);
        // row [-1, 2] x [[1, -1], [1, 0]] = [1, 1]
        assert_eq!(&c.data()[..2], &[1, 1]);
        let bb = Tensor::from_vec(&[2, 2, 2], [b.data(), b.data()].concat()).unwrap();
        assert_eq!(a.matmul(&bb).unwrap(), c);
    }

    #[test]
    fn swap_split_concat() {
        let t = Tensor::from_vec(&[2, 3, 2], (0..12u64).collect()).unwrap();
        let s = t.swap01().unwrap();
        assert_eq!(s.shape(), &[3, 2, 2]);
        assert_eq!(&s.data()[..4], &[0, 1, 6, 7]);
        assert_eq!(s.swap01().unwrap(), t);
        let m = Tensor::from_vec(&[2, 3], vec![1u64, 2, 3, 4, 5, 6]).unwrap();
        let parts = m.split_last(&[1, 2]).unwrap();
        assert_eq!(parts[0].data(), &[1, 4]);
        assert_eq!(parts[1].data(), &[2, 3, 5, 6]);
        assert_eq!(Tensor::concat_last(&parts).unwrap(), m);
        assert!(m.split_last(&[1, 1]).is_err());
        assert!(Tensor::<u64>::zeros(&[2]).swap01().is_err());
    }

    #[test]
    fn broadcast_rows() {
        let t = Tensor::from_vec(&[2, 2], vec![1u64, 2, 3, 4]).unwrap();
        let r = t.zip_rows(&[10, 20], "bias", u64::wrapping_add).unwrap();
        assert_eq!(r.data(), &[11, 22, 13, 24]);
        assert!(t.zip_rows(&[1], "bias", u64::wrapping_add).is_err());
    }
}
