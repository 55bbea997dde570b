//! Convolutional layers: Conv2d (stride, padding, groups), max and average pooling, and
//! the global sum a classifier head needs (DESIGN.md §8).
//!
//! Activations are NHWC (`[N, H, W, C]`): a convolution is im2col (a local gather of public
//! positions, zero padding; shares of zero are zeros in both settings) followed by one
//! prepared-weight product ([`Cx::matmul_prepared`]: the weight's mask is fixed per model,
//! so in 2PC each convolution opens only its activations, as Delphi and CrypTFlow2 do
//! with their offline phase), and its output rows `(n, y, x)` are already NHWC: no
//! transpose between layers. Columns are ordered `(ky, kx, c)`; PyTorch's OIHW weights are
//! reordered to match when they are shared ([`conv_weight_matrix`]).
//!
//! Groups are a block-diagonal weight: one product (one round) for all groups, at
//! `groups` times the multiply-adds of separate per-group products (a depthwise layer on
//! C channels costs C times its own work). Standard ResNets have no groups; a per-group
//! batched product is the next step if depthwise models matter.

use super::linear::{Keys, Matrix, Vector};
use super::{Cx, MODEL_OWNER};
use crate::compare::max_last_axis;
use tessera::error::{Error, Result};
use tessera::fss::material::FssRequest;
use tessera::preproc::{Demand, Request};
use tessera::{Party, Shared, Tensor};

/// The public shape of a 2-D convolution.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConvSpec {
    /// Input channels.
    pub cin: usize,
    /// Output channels.
    pub cout: usize,
    /// Kernel height and width.
    pub kernel: (usize, usize),
    /// Stride (both axes).
    pub stride: usize,
    /// Zero padding (both sides of both axes).
    pub padding: usize,
    /// Groups (1: dense; `cin`: depthwise when `cout` = `cin`).
    pub groups: usize,
}

impl ConvSpec {
    /// A square k x k convolution without groups.
    pub fn square(cin: usize, cout: usize, k: usize, stride: usize, padding: usize) -> ConvSpec {
        ConvSpec {
            cin,
            cout,
            kernel: (k, k),
            stride,
            padding,
            groups: 1,
        }
    }

    /// Checks the spec: positive sizes, groups dividing both channel counts.
    pub fn validate(&self) -> Result<()> {
        let (kh, kw) = self.kernel;
        if self.cin == 0 || self.cout == 0 || kh == 0 || kw == 0 || self.stride == 0 {
            return Err(Error::shape(
                "conv2d",
                format!("zero size in {self:?} (channels, kernel and stride must be >= 1)"),
            ));
        }
        if self.groups == 0
            || !self.cin.is_multiple_of(self.groups)
            || !self.cout.is_multiple_of(self.groups)
        {
            return Err(Error::shape(
                "conv2d",
                format!(
                    "groups {} must divide in_channels {} and out_channels {}",
                    self.groups, self.cin, self.cout
                ),
            ));
        }
        Ok(())
    }

    /// Output height and width for an h x w input (an error when the kernel does not fit).
    pub fn out_hw(&self, h: usize, w: usize) -> Result<(usize, usize)> {
        window_out(h, w, self.kernel, self.stride, self.padding, "conv2d")
    }

    /// Columns of the im2col matrix (kh kw cin).
    pub fn patch_len(&self) -> usize {
        self.kernel.0 * self.kernel.1 * self.cin
    }
}

fn window_out(
    h: usize,
    w: usize,
    (kh, kw): (usize, usize),
    stride: usize,
    padding: usize,
    what: &'static str,
) -> Result<(usize, usize)> {
    let (hp, wp) = (h + 2 * padding, w + 2 * padding);
    if kh > hp || kw > wp || stride == 0 {
        return Err(Error::shape(
            what,
            format!("kernel {kh}x{kw} (stride {stride}, padding {padding}) on a {h}x{w} input"),
        ));
    }
    Ok(((hp - kh) / stride + 1, (wp - kw) / stride + 1))
}

/// NHWC dimensions of a 4-D shape.
pub fn nhwc(shape: &[usize], what: &'static str) -> Result<(usize, usize, usize, usize)> {
    match *shape {
        [n, h, w, c] => Ok((n, h, w, c)),
        _ => Err(Error::shape(
            what,
            format!("needs an NHWC input [N, H, W, C], got {shape:?}"),
        )),
    }
}

/// For every output position `(n, oy, ox)` and window offset `(ky, kx)`, the flat NHWC
/// index of the input pixel's first channel, or `None` in the padding.
fn window_index(
    (n, h, w, c): (usize, usize, usize, usize),
    (kh, kw): (usize, usize),
    stride: usize,
    padding: usize,
    (ho, wo): (usize, usize),
) -> Vec<Option<usize>> {
    let mut out = Vec::with_capacity(n * ho * wo * kh * kw);
    for b in 0..n {
        for oy in 0..ho {
            for ox in 0..wo {
                for ky in 0..kh {
                    for kx in 0..kw {
                        let y = (oy * stride + ky) as isize - padding as isize;
                        let x = (ox * stride + kx) as isize - padding as isize;
                        out.push(
                            (y >= 0 && x >= 0 && (y as usize) < h && (x as usize) < w)
                                .then(|| ((b * h + y as usize) * w + x as usize) * c),
                        );
                    }
                }
            }
        }
    }
    out
}

/// im2col of an NHWC tensor: rows `(n, oy, ox)`, columns `(ky, kx, c)`, zero padding.
pub fn im2col<T: Copy + Default>(
    x: &[T],
    dims: (usize, usize, usize, usize),
    kernel: (usize, usize),
    stride: usize,
    padding: usize,
) -> Result<Vec<T>> {
    let (_, h, w, c) = dims;
    let hw = window_out(h, w, kernel, stride, padding, "im2col")?;
    let idx = window_index(dims, kernel, stride, padding, hw);
    let mut out = Vec::with_capacity(idx.len() * c);
    for i in idx {
        match i {
            Some(i) => out.extend_from_slice(&x[i..i + c]),
            None => out.extend(std::iter::repeat_n(T::default(), c)),
        }
    }
    Ok(out)
}

/// A PyTorch OIHW weight `[cout, cin / groups, kh, kw]` as the `[kh kw cin, cout]` matrix
/// of an im2col product (block diagonal over the groups).
pub fn conv_weight_matrix(w: &Tensor<f64>, spec: &ConvSpec) -> Result<Tensor<f64>> {
    spec.validate()?;
    let (kh, kw) = spec.kernel;
    let cg = spec.cin / spec.groups;
    let og = spec.cout / spec.groups;
    if w.shape() != [spec.cout, cg, kh, kw] {
        return Err(Error::shape(
            "conv2d weight",
            format!(
                "{:?} for {} -> {} channels, kernel {kh}x{kw}, groups {} (want [{}, {cg}, {kh}, {kw}])",
                w.shape(),
                spec.cin,
                spec.cout,
                spec.groups,
                spec.cout
            ),
        ));
    }
    let mut m = vec![0.0; kh * kw * spec.cin * spec.cout];
    let d = w.data();
    for o in 0..spec.cout {
        let g = o / og;
        for ci in 0..cg {
            let c = g * cg + ci;
            for ky in 0..kh {
                for kx in 0..kw {
                    let row = (ky * kw + kx) * spec.cin + c;
                    m[row * spec.cout + o] = d[((o * cg + ci) * kh + ky) * kw + kx];
                }
            }
        }
    }
    Tensor::from_vec(&[kh * kw * spec.cin, spec.cout], m)
}

/// Plaintext f64 convolution of an NHWC input with an OIHW weight and optional bias
/// (the reference the secure layer is tested against).
pub fn conv2d_plain(
    x: &Tensor<f64>,
    w: &Tensor<f64>,
    b: Option<&[f64]>,
    spec: &ConvSpec,
) -> Result<Tensor<f64>> {
    let (n, h, wd, c) = nhwc(x.shape(), "conv2d")?;
    if c != spec.cin {
        return Err(Error::shape(
            "conv2d",
            format!("input with {c} channels for a {}-channel layer", spec.cin),
        ));
    }
    let (ho, wo) = spec.out_hw(h, wd)?;
    let cols = im2col(
        x.data(),
        (n, h, wd, c),
        spec.kernel,
        spec.stride,
        spec.padding,
    )?;
    let cols = Tensor::from_vec(&[n * ho * wo, spec.patch_len()], cols)?;
    let y = cols.matmul(&conv_weight_matrix(w, spec)?)?;
    let y = match b {
        Some(b) => y.zip_rows(b, "conv2d bias", |a, b| a + b)?,
        None => y,
    };
    y.reshape(&[n, ho, wo, spec.cout])
}

/// The model owner's values of a [`Conv2d`]: the OIHW weight and the bias.
pub struct ConvWeights<'a> {
    /// `[cout, cin / groups, kh, kw]`.
    pub w: &'a Tensor<f64>,
    /// `[cout]`.
    pub b: Option<&'a [f64]>,
}

/// A 2-D convolution y = conv(x, W) + b on NHWC shares: im2col, one prepared-weight
/// product with its truncation ([`Cx::matmul_prepared`]: 2 rounds for the owner-held
/// weight, P0's one-sided x - A and the truncation's top bit, in both settings; the 3PC
/// result is a pair), a local bias add.
#[derive(Clone, Debug)]
pub struct Conv2d {
    /// The public shape.
    pub spec: ConvSpec,
    /// The weight as a `[kh kw cin, cout]` matrix.
    pub w: Matrix,
    /// The bias.
    pub b: Option<Vector>,
}

impl Conv2d {
    /// An unshared layer of `spec`.
    pub fn new(spec: ConvSpec, bias: bool, keys: &mut Keys) -> Result<Conv2d> {
        spec.validate()?;
        Ok(Conv2d {
            spec,
            w: Matrix::new(spec.patch_len(), spec.cout, keys),
            b: bias.then(|| Vector::new(spec.cout)),
        })
    }

    /// Shares W (reordered for im2col) and b from the model owner (`Some` there).
    pub fn share(&mut self, p: &mut Party, cx: &mut Cx, value: Option<ConvWeights>) -> Result<()> {
        let value = value.filter(|_| p.id() == MODEL_OWNER);
        let m = value
            .as_ref()
            .map(|v| conv_weight_matrix(v.w, &self.spec))
            .transpose()?;
        self.w.share(p, cx, m.as_ref())?;
        if let Some(b) = self.b.as_mut() {
            let bv = value.as_ref().and_then(|v| v.b);
            if p.id() == MODEL_OWNER && bv.is_none() {
                return Err(Error::Unsupported(
                    "conv2d: the layer has a bias but none was given".into(),
                ));
            }
            b.share(p, cx, bv)?;
        }
        Ok(())
    }

    /// The convolution of an NHWC input `[N, H, W, cin]`: `[N, H', W', cout]`.
    pub fn forward(&self, p: &mut Party, cx: &mut Cx, x: &Shared) -> Result<Shared> {
        let (n, h, w, c) = nhwc(x.shape(), "conv2d")?;
        if c != self.spec.cin {
            return Err(Error::shape(
                "conv2d",
                format!(
                    "input with {c} channels for a {}-channel layer",
                    self.spec.cin
                ),
            ));
        }
        let s = &self.spec;
        let (ho, wo) = s.out_hw(h, w)?;
        let rows = n * ho * wo;
        let cols = if s.kernel == (1, 1) && s.stride == 1 && s.padding == 0 {
            x.reshape(&[rows, c])?
        } else if cx.is_planning() {
            Shared::zeros(p, &[rows, s.patch_len()])
        } else {
            x.try_map_local(|t| {
                Tensor::from_vec(
                    &[rows, s.patch_len()],
                    im2col(t.data(), (n, h, w, c), s.kernel, s.stride, s.padding)?,
                )
            })?
        };
        let y = cx.matmul_prepared(p, &cols, &self.w)?;
        let y = match &self.b {
            Some(b) => b.add_to(cx, &y)?,
            None => y,
        };
        y.reshape(&[n, ho, wo, s.cout])
    }

    /// Forgets the shares.
    pub fn release(&mut self) {
        self.w.release();
        if let Some(b) = self.b.as_mut() {
            b.release();
        }
    }
}

/// Bits the comparisons of max pooling assume: |a - b| < 2^(POOL_BITS - 1) ring units
/// (2^15 at f = 16), and the padding value -2^(POOL_BITS - 2) stays below every input.
pub const POOL_BITS: u32 = 32;

/// Windows of an NHWC tensor gathered with the window last: `[N H' W' C, kh kw]`, with
/// `pad` in the padding.
fn gather_windows<T: Copy>(
    x: &[T],
    dims: (usize, usize, usize, usize),
    kernel: (usize, usize),
    stride: usize,
    padding: usize,
    hw: (usize, usize),
    pad: T,
) -> Vec<T> {
    let c = dims.3;
    let kk = kernel.0 * kernel.1;
    let idx = window_index(dims, kernel, stride, padding, hw);
    let positions = idx.len() / kk;
    let mut out = Vec::with_capacity(idx.len() * c);
    for pos in 0..positions {
        let win = &idx[pos * kk..(pos + 1) * kk];
        for ch in 0..c {
            out.extend(win.iter().map(|i| i.map_or(pad, |i| x[i + ch])));
        }
    }
    out
}

/// Max pooling (k x k windows, stride, padding as PyTorch: the padding never wins) by a
/// tree of FSS ReLUs over each window ([`max_last_axis`], PUMA §4.3 / Boyle et al. EC'21
/// §4.1): ceil(log2 k^2) rounds in both settings (3PC returns a pair), per chunk of at
/// most the context's step size; inputs within |x| < 2^(POOL_BITS - 2) ring units.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MaxPool2d {
    /// Window size.
    pub kernel: usize,
    /// Stride.
    pub stride: usize,
    /// Padding.
    pub padding: usize,
}

/// The demand of [`max_last_axis`] on `rows` rows of `k`.
pub fn max_demand(rows: usize, k: usize, bits: u32) -> Demand {
    let mut d = Demand::default();
    let mut w = k;
    while w > 1 {
        d.0.push(Request::Fss(FssRequest::Relu {
            n: rows * (w / 2),
            bits,
        }));
        w = w.div_ceil(2);
    }
    d
}

impl MaxPool2d {
    /// Output height and width for an h x w input.
    pub fn out_hw(&self, h: usize, w: usize) -> Result<(usize, usize)> {
        window_out(
            h,
            w,
            (self.kernel, self.kernel),
            self.stride,
            self.padding,
            "maxpool2d",
        )
    }

    /// Max pooling of an NHWC input.
    pub fn forward(&self, p: &mut Party, cx: &mut Cx, x: &Shared) -> Result<Shared> {
        let dims = nhwc(x.shape(), "maxpool2d")?;
        let (n, h, w, c) = dims;
        let (ho, wo) = self.out_hw(h, w)?;
        let kk = self.kernel * self.kernel;
        let rows = n * ho * wo * c;
        let k = (self.kernel, self.kernel);
        let out_shape = [n, ho, wo, c];
        let win = if cx.is_planning() {
            Shared::zeros(p, &[rows, kk])
        } else {
            let win = x.try_map_local(|t| {
                let v = gather_windows(t.data(), dims, k, self.stride, self.padding, (ho, wo), 0);
                Tensor::from_vec(&[rows, kk], v)
            })?;
            if self.padding > 0 {
                // The padding is a public value below every input (P0's slot holds it).
                let neg = (1u64 << (POOL_BITS - 2)).wrapping_neg();
                let marks: Vec<u8> = (0..n * h * w).map(|_| 0).collect();
                let pad = gather_windows(
                    &marks,
                    (n, h, w, 1),
                    k,
                    self.stride,
                    self.padding,
                    (ho, wo),
                    1,
                );
                let mut t = Vec::with_capacity(rows * kk);
                for pos in pad.chunks(kk) {
                    for _ in 0..c {
                        t.extend(pos.iter().map(|&m| if m == 1 { neg } else { 0 }));
                    }
                }
                win.add_public(p, &Tensor::from_vec(&[rows, kk], t)?)?
            } else {
                win
            }
        };
        // Row chunks of at most `max_step_elems` window elements, each its own step: the
        // first level alone needs ~1 KB of DCF key per window pair and party (ResNet-50's
        // stem pool: 0.8 GB unsplit).
        cx.chunked(p, &win, kk, |cx, p, part, _| {
            let r = part.len() / kk;
            cx.step(
                p,
                "maxpool",
                |_| Ok(max_demand(r, kk, POOL_BITS)),
                None,
                |p| Ok(Shared::zeros(p, &[r, 1])),
                |p| max_last_axis(p, part, POOL_BITS),
            )
        })?
        .reshape(&out_shape)
    }

    /// The plaintext f64 reference.
    pub fn plain(&self, x: &Tensor<f64>) -> Result<Tensor<f64>> {
        let dims = nhwc(x.shape(), "maxpool2d")?;
        let (n, h, w, c) = dims;
        let (ho, wo) = self.out_hw(h, w)?;
        let kk = self.kernel * self.kernel;
        let k = (self.kernel, self.kernel);
        let v = gather_windows(
            x.data(),
            dims,
            k,
            self.stride,
            self.padding,
            (ho, wo),
            f64::NEG_INFINITY,
        );
        let out = v
            .chunks(kk)
            .map(|r| r.iter().copied().fold(f64::NEG_INFINITY, f64::max))
            .collect();
        Tensor::from_vec(&[n, ho, wo, c], out)
    }
}

/// Average pooling (k x k windows, stride, zero padding counted in the divisor as
/// PyTorch's default `count_include_pad`): a local window sum, a local product with the
/// public 1/k^2 at f + 12 fraction bits, one faithful truncation (1 round in both
/// settings, the 3PC result a pair; error at most about 1 ulp).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AvgPool2d {
    /// Window size.
    pub kernel: usize,
    /// Stride.
    pub stride: usize,
    /// Padding.
    pub padding: usize,
}

impl AvgPool2d {
    /// Average pooling of an NHWC input.
    pub fn forward(&self, p: &mut Party, cx: &mut Cx, x: &Shared) -> Result<Shared> {
        let dims = nhwc(x.shape(), "avgpool2d")?;
        let (n, h, w, c) = dims;
        let k = (self.kernel, self.kernel);
        let (ho, wo) = window_out(h, w, k, self.stride, self.padding, "avgpool2d")?;
        let kk = self.kernel * self.kernel;
        let sums = if cx.is_planning() {
            Shared::zeros(p, &[n, ho, wo, c])
        } else {
            x.try_map_local(|t| {
                let v =
                    gather_windows(t.data(), dims, k, self.stride, self.padding, (ho, wo), 0u64);
                let s = v
                    .chunks(kk)
                    .map(|r| r.iter().fold(0u64, |a, &b| a.wrapping_add(b)))
                    .collect();
                Tensor::from_vec(&[n, ho, wo, c], s)
            })?
        };
        divide(p, cx, &sums, kk)
    }

    /// The plaintext f64 reference.
    pub fn plain(&self, x: &Tensor<f64>) -> Result<Tensor<f64>> {
        let dims = nhwc(x.shape(), "avgpool2d")?;
        let (n, h, w, c) = dims;
        let k = (self.kernel, self.kernel);
        let (ho, wo) = window_out(h, w, k, self.stride, self.padding, "avgpool2d")?;
        let kk = (self.kernel * self.kernel) as f64;
        let v = gather_windows(x.data(), dims, k, self.stride, self.padding, (ho, wo), 0.0);
        let out = v
            .chunks(self.kernel * self.kernel)
            .map(|r| r.iter().sum::<f64>() / kk)
            .collect();
        Tensor::from_vec(&[n, ho, wo, c], out)
    }
}

/// The sum over H and W of an NHWC tensor: `[N, C]` (local, no rounds). A global average
/// pool is this sum with the divisor H W folded into the following layer's weights (what
/// [`crate::models::resnet`] does) or [`global_avg_pool`].
pub fn global_sum(x: &Shared) -> Result<Shared> {
    let (n, h, w, c) = nhwc(x.shape(), "global pool")?;
    x.try_map_local(|t| {
        let mut out = vec![0u64; n * c];
        for b in 0..n {
            for pos in 0..h * w {
                let row = &t.data()[(b * h * w + pos) * c..(b * h * w + pos + 1) * c];
                for (o, v) in out[b * c..(b + 1) * c].iter_mut().zip(row) {
                    *o = o.wrapping_add(*v);
                }
            }
        }
        Tensor::from_vec(&[n, c], out)
    })
}

/// Global average pooling `[N, H, W, C]` -> `[N, C]`: [`global_sum`], the public 1/(H W),
/// one truncation (1 round in both settings; 3PC returns a pair).
pub fn global_avg_pool(p: &mut Party, cx: &mut Cx, x: &Shared) -> Result<Shared> {
    let (_, h, w, _) = nhwc(x.shape(), "global pool")?;
    divide(p, cx, &global_sum(x)?, h * w)
}

/// Extra fraction bits of a pool's public 1/k: the product carries scale 2f + 12 before
/// one truncation by f + 12, so the rounding of 1/k costs at most |sum| 2^-(f + 13)
/// (below an ulp for |sum| < 2^12), and values need |mean| < 2^(62 - 2f - 12) (2^18 at
/// f = 16).
const DIV_EXTRA_BITS: u32 = 12;

/// x / k for a public k: a local product with round(2^(f + 12) / k), one faithful
/// truncation by f + 12 (1 round in both settings; 3PC returns a pair).
fn divide(p: &mut Party, cx: &mut Cx, x: &Shared, k: usize) -> Result<Shared> {
    let f = p.fixed().frac_bits();
    let inv = ((1u64 << (f + DIV_EXTRA_BITS)) as f64 / k as f64).round() as u64;
    cx.truncate_by(p, "avgpool", &x.scale(inv), f + DIV_EXTRA_BITS)
}

/// The plaintext f64 global average pool.
pub fn global_avg_pool_plain(x: &Tensor<f64>) -> Result<Tensor<f64>> {
    let (n, h, w, c) = nhwc(x.shape(), "global pool")?;
    let mut out = vec![0.0; n * c];
    for b in 0..n {
        for pos in 0..h * w {
            for ch in 0..c {
                out[b * c + ch] += x.data()[(b * h * w + pos) * c + ch];
            }
        }
    }
    out.iter_mut().for_each(|v| *v /= (h * w) as f64);
    Tensor::from_vec(&[n, c], out)
}
