//! Private training of a classification head on secret features and secret labels
//! (BlindTuner's task — a frozen backbone, a trained classifier — under MPC; SecureML
//! §4.1 / CrypTen's `nn` training loop for the mechanics).
//!
//! The features (the frozen backbone's output, computed under MPC, [`DATA_OWNER`]'s
//! examples through [`MODEL_OWNER`]'s weights) and the one-hot labels (0/1 integers shared
//! by the data owner) stay secret; so do the head's weights from the first update on.
//! Public: the head's shape, the hyper-parameters, the initial weights (drawn from a
//! public seed, as every framework's default initialisation is data-independent), the
//! example count and the batch order (a public permutation per epoch). The data owner
//! alone learns the mean training loss of each epoch and, in inference, the classes.
//!
//! ## One step (mini-batch of B examples, layers l = 1..L, ReLU between layers)
//! ```text
//! forward:  z_l = a_(l-1) W_l + b_l;  a_l = [z_l >= 0] z_l (the DReLU bit kept)
//! softmax:  P = softmax(z_L)                                  (the inference softmax)
//! loss:     sum_i -ln(sum_c P_ic Y_ic)                        (one product, one log)
//! backward: G_L = P - Y;  dW_l = a_(l-1)^T G_l;  db_l = column sums of G_l
//!           G_(l-1) = [z_(l-1) >= 0] (G_l W_l^T)              (before W_l is updated)
//! update:   v <- mu v + dW / B;  W <- W - lr (mu v + dW / B)  (PyTorch's SGD, momentum)
//! ```
//! ## Fixed point (why nothing wraps)
//! Every product is truncated faithfully (`arith`'s one-bit-gap truncation: at most 1 ulp,
//! never a wrap), so the exploding losses CrypTen users see from the probabilistic local
//! truncation (CrypTen#347) cannot happen. The learning rate, momentum and 1/B are public
//! constants at [`UPDATE_SCALE`] fractional bits (lr / B = 0.1 / 32 keeps 5 significant
//! digits, where the session's 16 bits would keep 3), applied to v and to the summed
//! gradient as one local linear combination; the new v and the step lr v' are truncated
//! together in ONE faithful truncation for all parameters (1 round in both settings; in
//! 3PC the updated parameters are pairs, which the next step's products reshare).
//! [`Sgd::check`] refuses a learning rate whose products could leave the ring's signed
//! range, given [`FEATURE_BITS`], or that rounds to zero at [`UPDATE_SCALE`] bits.
//!
//! Rounds per step, measured and held by a test (default softmax): linear head 21, one
//! hidden layer 30, in both settings for the first step (public initial weights); in 3PC
//! later steps take 22 / 32, each forward product with an updated weight (a pair)
//! resharing it first.

use super::act::RELU_BITS;
use super::{AttentionMask, Cx, Step, DATA_OWNER};
use crate::arith::{self, demand as ad};
use crate::compare;
use crate::exp::row_sums;
use crate::log::{log, log_demand};
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use tessera::error::{Error, Result};
use tessera::fss::material::FssRequest;
use tessera::preproc::{Demand, Request};
use tessera::{FixedPoint, Party, Shared, Tensor};

/// Fractional bits of the public update constants (lr, momentum, 1/B).
pub const UPDATE_SCALE: u32 = 24;

/// Bits assumed for |features| (|x| < 2^FEATURE_BITS) when checking a learning rate.
pub const FEATURE_BITS: u32 = 8;

/// Public shape of a head: `input` -> [`hidden` (ReLU)] -> `classes`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HeadSpec {
    /// Feature width.
    pub input: usize,
    /// Width of the hidden layer of an MLP head (`None`: one linear layer).
    pub hidden: Option<usize>,
    /// Number of classes.
    pub classes: usize,
}

impl HeadSpec {
    /// (in, out) of each layer.
    pub fn layers(&self) -> Vec<(usize, usize)> {
        match self.hidden {
            Some(h) => vec![(self.input, h), (h, self.classes)],
            None => vec![(self.input, self.classes)],
        }
    }

    /// Checks the widths.
    pub fn check(&self) -> Result<()> {
        if self.input == 0 || self.classes < 2 || self.hidden == Some(0) {
            return Err(Error::shape(
                "head",
                format!(
                    "{} features -> {:?} hidden -> {} classes: widths must be positive and \
                     classes at least 2",
                    self.input, self.hidden, self.classes
                ),
            ));
        }
        Ok(())
    }

    /// The public initial weights of `seed`: PyTorch's `nn.Linear` default, W and b
    /// uniform in +-1/sqrt(in), W as [in, out].
    pub fn init(&self, seed: u64) -> Vec<(Tensor<f64>, Vec<f64>)> {
        let mut r = rand::rngs::StdRng::seed_from_u64(seed);
        self.layers()
            .into_iter()
            .map(|(k, n)| {
                let a = 1.0 / (k as f64).sqrt();
                let w = (0..k * n).map(|_| r.gen_range(-a..a)).collect();
                let b = (0..n).map(|_| r.gen_range(-a..a)).collect();
                (Tensor::from_vec(&[k, n], w).expect("k n"), b)
            })
            .collect()
    }
}

/// Public hyper-parameters of mini-batch SGD with momentum (PyTorch's `torch.optim.SGD`,
/// dampening 0, no weight decay).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Sgd {
    /// Learning rate.
    pub lr: f64,
    /// Momentum in [0, 1).
    pub momentum: f64,
    /// Examples per batch (the last batch of an epoch may be smaller).
    pub batch: usize,
    /// Passes over the data.
    pub epochs: usize,
    /// Seed of the initial weights and of each epoch's batch order (public).
    pub seed: u64,
}

impl Sgd {
    /// Checks the hyper-parameters: positive learning rate, momentum in [0, 1), batch and
    /// epochs at least 1, and no overflow: the update's largest term,
    /// lr 2^UPDATE_SCALE x (B 2^FEATURE_BITS at scale f), must stay below 2^61, and lr / B
    /// must not round to zero at [`UPDATE_SCALE`] bits.
    pub fn check(&self, frac_bits: u32) -> Result<()> {
        let bad = |m: String| Err(Error::Unsupported(m));
        if !(self.lr.is_finite() && self.lr > 0.0) {
            return bad(format!("learning rate {} must be positive", self.lr));
        }
        if !(0.0..1.0).contains(&self.momentum) {
            return bad(format!("momentum {} must be in [0, 1)", self.momentum));
        }
        if self.batch == 0 || self.epochs == 0 {
            return bad(format!(
                "batch {} and epochs {} must be at least 1",
                self.batch, self.epochs
            ));
        }
        let grad_bits = (self.batch as f64).log2() + f64::from(FEATURE_BITS + frac_bits);
        let used = self.lr.log2() + f64::from(UPDATE_SCALE) + grad_bits;
        if used > 61.0 {
            return bad(format!(
                "learning rate {} would overflow the fixed-point range: lr x 2^{UPDATE_SCALE} x \
                 batch {} x 2^{FEATURE_BITS} (features) at 2^{frac_bits} needs 2^{used:.1} > 2^61; \
                 use lr <= {:.3e}",
                self.lr,
                self.batch,
                2f64.powf(61.0 - f64::from(UPDATE_SCALE) - grad_bits)
            ));
        }
        let step = self.lr / self.batch as f64 * 2f64.powi(UPDATE_SCALE as i32);
        if step < 16.0 {
            return bad(format!(
                "learning rate {} / batch {} is below the update's resolution (2^-{UPDATE_SCALE} \
                 with 4 significant bits)",
                self.lr, self.batch
            ));
        }
        Ok(())
    }

    /// The batches of `epoch` over `n` examples: a public permutation of 0..n drawn from
    /// (seed, epoch), cut into batches of at most [`Sgd::batch`].
    pub fn batches(&self, n: usize, epoch: usize) -> Vec<Vec<usize>> {
        let mut idx: Vec<usize> = (0..n).collect();
        let mut r = rand::rngs::StdRng::seed_from_u64(
            self.seed ^ 0x5851_F42D_4C95_7F2D ^ (epoch as u64).wrapping_mul(0x9E37_79B9),
        );
        idx.shuffle(&mut r);
        idx.chunks(self.batch.max(1))
            .map(<[usize]>::to_vec)
            .collect()
    }
}

/// Checks a labelled data set against a head: at least one example, one feature row per
/// label, every label below the class count.
pub fn check_data(spec: &HeadSpec, features: &[usize], labels: &[usize]) -> Result<()> {
    spec.check()?;
    if labels.is_empty() {
        return Err(Error::shape("training data", "no examples".to_string()));
    }
    if features.len() != 2 || features[0] != labels.len() || features[1] != spec.input {
        return Err(Error::shape(
            "training data",
            format!(
                "features {features:?} for {} labels and a head of {} inputs",
                labels.len(),
                spec.input
            ),
        ));
    }
    if let Some((i, l)) = labels.iter().enumerate().find(|(_, &l)| l >= spec.classes) {
        return Err(Error::shape(
            "training data",
            format!(
                "label {l} of example {i} is out of range for {} classes",
                spec.classes
            ),
        ));
    }
    Ok(())
}

/// One-hot rows (0/1 integers, not fixed point) of `labels`.
pub fn one_hot(labels: &[usize], classes: usize) -> Tensor<u64> {
    let mut t = vec![0u64; labels.len() * classes];
    for (i, &l) in labels.iter().enumerate() {
        t[i * classes + l.min(classes - 1)] = 1;
    }
    Tensor::from_vec(&[labels.len(), classes], t).expect("shape")
}

/// Rows `idx` of a shared `[n, k]` matrix (local).
pub fn gather_rows(x: &Shared, idx: &[usize]) -> Result<Shared> {
    let [n, k] = *x.shape() else {
        return Err(Error::shape("gather rows", format!("{:?}", x.shape())));
    };
    if let Some(&i) = idx.iter().find(|&&i| i >= n) {
        return Err(Error::shape("gather rows", format!("row {i} of {n}")));
    }
    x.try_map_local(|t| {
        let d = t.data();
        let mut out = Vec::with_capacity(idx.len() * k);
        for &i in idx {
            out.extend_from_slice(&d[i * k..(i + 1) * k]);
        }
        Tensor::from_vec(&[idx.len(), k], out)
    })
}

/// Column sums of a shared `[rows, k]` matrix, as `[k]` (local).
fn col_sums(x: &Shared) -> Result<Shared> {
    let k = *x.shape().last().unwrap_or(&1);
    x.try_map_local(|t| {
        let mut s = vec![0u64; k];
        for row in t.data().chunks(k) {
            for (a, b) in s.iter_mut().zip(row) {
                *a = a.wrapping_add(*b);
            }
        }
        Tensor::from_vec(&[k], s)
    })
}

impl Cx<'_> {
    /// \[x >= 0\] as a shared 0/1 integer ([`compare::drelu`] at [`RELU_BITS`]).
    pub fn drelu(&mut self, p: &mut Party, name: &'static str, x: &Shared) -> Result<Shared> {
        self.step(
            p,
            name,
            |_| {
                Ok(Demand(vec![Request::Fss(FssRequest::Sign {
                    n: x.len(),
                    bits: RELU_BITS,
                })]))
            },
            None,
            |p| Ok(Shared::zeros(p, x.shape())),
            |p| compare::drelu(p, x, RELU_BITS),
        )
    }

    /// x * y element-wise with no truncation (one factor a 0/1 integer).
    pub fn mul_int(
        &mut self,
        p: &mut Party,
        name: &'static str,
        x: &Shared,
        y: &Shared,
    ) -> Result<Shared> {
        self.step(
            p,
            name,
            |p| Ok(ad::mul(p.setting(), x.len())),
            None,
            |p| Ok(Shared::zeros(p, x.shape())),
            |p| arith::mul(p, x, y),
        )
    }

    /// Natural logarithm of positive x ([`crate::log::log`]).
    pub fn log(&mut self, p: &mut Party, name: &'static str, x: &Shared) -> Result<Shared> {
        self.step(
            p,
            name,
            |p| Ok(log_demand(x.len(), p.setting(), p.fixed().frac_bits())),
            None,
            |p| Ok(Shared::zeros(p, x.shape())),
            |p| log(p, x),
        )
    }
}

/// A head whose weights and momenta are secret-shared and change every step (plain
/// shared matrices: a prepared weight's fixed mask would be reused across values).
#[derive(Clone, Debug)]
pub struct TrainableHead {
    /// The public shape.
    pub spec: HeadSpec,
    w: Vec<Shared>,
    b: Vec<Shared>,
    vw: Vec<Shared>,
    vb: Vec<Shared>,
}

impl TrainableHead {
    /// The head at the public initial weights `init` ([`HeadSpec::init`]), momenta zero.
    pub fn new(p: &Party, spec: HeadSpec, init: &[(Tensor<f64>, Vec<f64>)]) -> Result<Self> {
        spec.check()?;
        let layers = spec.layers();
        if init.len() != layers.len() {
            return Err(Error::shape(
                "head init",
                format!("{} layers for a head of {}", init.len(), layers.len()),
            ));
        }
        let fx = p.fixed();
        let (mut w, mut b, mut vw, mut vb) = (vec![], vec![], vec![], vec![]);
        for ((k, n), (iw, ib)) in layers.into_iter().zip(init) {
            if iw.shape() != [k, n] || ib.len() != n {
                return Err(Error::shape(
                    "head init",
                    format!("{:?} and {} for a {k} x {n} layer", iw.shape(), ib.len()),
                ));
            }
            w.push(p.share_public(&fx.encode_tensor(iw)?));
            b.push(p.share_public(&Tensor::from_vec(&[n], fx.encode_slice(ib)?)?));
            vw.push(Shared::zeros(p, &[k, n]));
            vb.push(Shared::zeros(p, &[n]));
        }
        Ok(TrainableHead { spec, w, b, vw, vb })
    }

    /// Logits `[B, classes]` of features `[B, input]`, with each layer's input and the
    /// DReLU bits of the hidden layers (for the backward pass).
    fn forward_keep(
        &self,
        p: &mut Party,
        cx: &mut Cx,
        x: &Shared,
    ) -> Result<(Shared, Vec<Shared>, Vec<Shared>)> {
        if x.shape().len() != 2 || x.shape()[1] != self.spec.input {
            return Err(Error::shape(
                "head",
                format!(
                    "features {:?} for a head of {} inputs",
                    x.shape(),
                    self.spec.input
                ),
            ));
        }
        let last = self.w.len() - 1;
        let mut inputs = vec![x.clone()];
        let mut bits = vec![];
        let mut h = x.clone();
        for l in 0..=last {
            let z = cx.matmul(p, &h, &self.w[l])?.add_rows(&self.b[l])?;
            if l == last {
                return Ok((z, inputs, bits));
            }
            let bit = cx.drelu(p, "head relu", &z)?;
            h = cx.mul_int(p, "head relu", &bit, &z)?;
            bits.push(bit);
            inputs.push(h.clone());
        }
        unreachable!("the last layer returns")
    }

    /// Logits `[B, classes]` of shared features `[B, input]`.
    pub fn forward(&self, p: &mut Party, cx: &mut Cx, x: &Shared) -> Result<Shared> {
        Ok(self.forward_keep(p, cx, x)?.0)
    }

    /// The classes of shared features, revealed to the data owner only (`Some` there).
    pub fn classify(&self, p: &mut Party, cx: &mut Cx, x: &Shared) -> Result<Option<Vec<usize>>> {
        let logits = self.forward(p, cx, x)?;
        cx.argmax_reveal(p, &logits, DATA_OWNER)
    }

    /// One SGD step on the batch `x` `[B, input]` with one-hot labels `y` `[B, classes]`
    /// (shared 0/1 integers). Returns the batch's summed loss sum_i -ln p_(i, y_i), shared,
    /// shape `[1]`. See the module doc.
    pub fn step(
        &mut self,
        p: &mut Party,
        cx: &mut Cx,
        x: &Shared,
        y: &Shared,
        sgd: &Sgd,
    ) -> Result<Shared> {
        let bsz = x.shape().first().copied().unwrap_or(0);
        if y.shape() != [bsz, self.spec.classes] || bsz == 0 {
            return Err(Error::shape(
                "head step",
                format!(
                    "labels {:?} for features {:?} and {} classes",
                    y.shape(),
                    x.shape(),
                    self.spec.classes
                ),
            ));
        }
        let f = p.fixed().frac_bits();
        let (logits, inputs, bits) = self.forward_keep(p, cx, x)?;
        let prob = cx.softmax(p, &logits, &AttentionMask::None)?;
        // loss: p_y = sum_c P_c Y_c (Y is 0/1: no truncation), then -ln, summed
        let py = row_sums(&cx.mul_int(p, "loss", &prob, y)?)?;
        let ln = cx.log(p, "loss", &py.reshape(&[bsz])?)?;
        let loss = col_sums(&ln.reshape(&[bsz, 1])?)?.neg();
        // backward
        let mut g = prob.sub(&y.scale(1u64 << f))?;
        let last = self.w.len() - 1;
        let mut grads = vec![None; self.w.len()];
        for l in (0..=last).rev() {
            let gw = cx.matmul(p, &inputs[l].transpose(), &g)?;
            let gb = col_sums(&g)?;
            if l > 0 {
                let dh = cx.matmul(p, &g, &self.w[l].transpose())?;
                g = cx.mul_int(p, "head relu'", &bits[l - 1], &dh)?;
            }
            grads[l] = Some((gw, gb));
        }
        // update: [mu v + s / B ; lr mu v + lr s / B] truncated once for every parameter
        let enc = |v: f64| (v * 2f64.powi(UPDATE_SCALE as i32)).round() as i64 as u64;
        let inv_b = 1.0 / bsz as f64;
        let (cm, cs) = (enc(sgd.momentum), enc(inv_b));
        let (um, us) = (enc(sgd.lr * sgd.momentum), enc(sgd.lr * inv_b));
        let mut parts = vec![];
        for (l, gr) in grads.iter().enumerate() {
            let (gw, gb) = gr.as_ref().expect("every layer has a gradient");
            for (v, s) in [(&self.vw[l], gw), (&self.vb[l], gb)] {
                parts.push(v.scale(cm).add(&s.scale(cs))?);
                parts.push(v.scale(um).add(&s.scale(us))?);
            }
        }
        let flat = Shared::concat_flat(&parts.iter().collect::<Vec<_>>())?;
        let t = cx.truncate_by(p, "update", &flat, UPDATE_SCALE)?;
        let mut off = 0;
        let mut take = |shape: &[usize]| -> Result<Shared> {
            let n: usize = shape.iter().product();
            let s =
                t.try_map_local(|d| Tensor::from_vec(shape, d.data()[off..off + n].to_vec()))?;
            off += n;
            Ok(s)
        };
        for l in 0..self.w.len() {
            let (ws, bs) = (self.w[l].shape().to_vec(), self.b[l].shape().to_vec());
            self.vw[l] = take(&ws)?;
            self.w[l] = self.w[l].sub(&take(&ws)?)?;
            self.vb[l] = take(&bs)?;
            self.b[l] = self.b[l].sub(&take(&bs)?)?;
        }
        Ok(loss)
    }

    /// One epoch over shared features `[n, input]` and one-hot labels `[n, classes]` in
    /// the public batch order of `epoch`. Returns the summed loss, shared, `[1]`.
    pub fn epoch(
        &mut self,
        p: &mut Party,
        cx: &mut Cx,
        x: &Shared,
        y: &Shared,
        sgd: &Sgd,
        epoch: usize,
    ) -> Result<Shared> {
        let n = x.shape().first().copied().unwrap_or(0);
        let mut total = Shared::zeros(p, &[1]);
        for idx in &sgd.batches(n, epoch) {
            let loss = self.step(p, cx, &gather_rows(x, idx)?, &gather_rows(y, idx)?, sgd)?;
            total = total.add(&loss)?;
        }
        Ok(total)
    }

    /// The weights and biases (each party's shares), layer by layer.
    pub fn params(&self) -> Vec<(&Shared, &Shared)> {
        self.w.iter().zip(&self.b).collect()
    }
}

/// Magic bytes of a head share file ([`TrainableHead::to_file_bytes`]).
pub const HEAD_FILE_MAGIC: &[u8; 8] = b"TSHEAD01";

/// The public header of one party's head share file.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct HeadFileMeta {
    /// Whose shares these are.
    pub party: usize,
    /// `2pc` or `3pc`.
    pub setting: String,
    /// Fixed-point fractional bits of the session that trained the head.
    pub frac_bits: u32,
    /// Feature width.
    pub input: usize,
    /// Hidden width of an MLP head.
    pub hidden: Option<usize>,
    /// Classes.
    pub classes: usize,
    /// A public random tag all parties' files of one training share (hex), so shares of
    /// different trainings are never combined.
    pub tag: String,
}

impl HeadFileMeta {
    /// The head's shape.
    pub fn spec(&self) -> HeadSpec {
        HeadSpec {
            input: self.input,
            hidden: self.hidden,
            classes: self.classes,
        }
    }
}

impl TrainableHead {
    /// This party's shares of the weights (not the momenta) as a file: the magic, a
    /// little-endian u32 header length, the JSON [`HeadFileMeta`], every layer's W then b
    /// (component x_i, then x_(i+1) in 3PC) as little-endian u64, and the SHA-256 of all
    /// that. The file holds one share: alone it reveals nothing about the weights.
    ///
    /// 3PC weights must be replicated ([`TrainableHead::replicate`]): an update leaves them
    /// in pair form, whose components P2 does not hold.
    pub fn to_file_bytes(&self, meta: &HeadFileMeta) -> Result<Vec<u8>> {
        use sha2::Digest;
        if self.w.iter().chain(&self.b).any(|t| t.is_pair()) {
            return Err(Error::Unsupported(
                "head file: 3PC weights in pair form; replicate them before saving".into(),
            ));
        }
        let header = serde_json::to_vec(meta).expect("meta serialises");
        let mut out = HEAD_FILE_MAGIC.to_vec();
        out.extend((header.len() as u32).to_le_bytes());
        out.extend(header);
        for (w, b) in self.w.iter().zip(&self.b) {
            for t in [w, b] {
                let (x, y) = t.parts();
                for part in std::iter::once(x).chain(y) {
                    for v in part.data() {
                        out.extend(v.to_le_bytes());
                    }
                }
            }
        }
        let digest = sha2::Sha256::digest(&out);
        out.extend(digest);
        Ok(out)
    }

    /// Reshares pair-form weights and biases (3PC, after an update) into replicated form,
    /// all in one round (none when there is nothing to do).
    pub fn replicate(&mut self, p: &mut Party) -> Result<()> {
        let all: Vec<&Shared> = self.w.iter().chain(&self.b).collect();
        let rep: Vec<Shared> = p
            .replicate(&all)?
            .into_iter()
            .map(std::borrow::Cow::into_owned)
            .collect();
        let (w, b) = rep.split_at(self.w.len());
        self.w = w.to_vec();
        self.b = b.to_vec();
        Ok(())
    }

    /// Reads a head share file written by [`TrainableHead::to_file_bytes`] for party `me`
    /// of a `setting` session at `frac_bits`. Errors name the file and what is wrong: a
    /// truncated or corrupted file (checksum), another party's or setting's shares, a
    /// header whose sizes do not match the data.
    pub fn from_file_bytes(
        bytes: &[u8],
        path: &std::path::Path,
        me: usize,
        setting: tessera::Setting,
        frac_bits: u32,
    ) -> Result<(TrainableHead, HeadFileMeta)> {
        use sha2::Digest;
        let bad =
            |m: String| Error::Unsupported(format!("head share file {}: {m}", path.display()));
        if bytes.len() < 8 + 4 + 32 || &bytes[..8] != HEAD_FILE_MAGIC {
            return Err(bad("not a head share file (bad magic or too short)".into()));
        }
        let (body, digest) = bytes.split_at(bytes.len() - 32);
        if sha2::Sha256::digest(body).as_slice() != digest {
            return Err(bad(
                "checksum mismatch: the file is truncated or corrupted".into()
            ));
        }
        let hlen = u32::from_le_bytes(body[8..12].try_into().expect("4 bytes")) as usize;
        let header = body
            .get(12..12 + hlen)
            .ok_or_else(|| bad(format!("header of {hlen} bytes past the end")))?;
        let meta: HeadFileMeta =
            serde_json::from_slice(header).map_err(|e| bad(format!("malformed header: {e}")))?;
        if meta.party != me {
            return Err(bad(format!(
                "holds party {}'s shares, not party {me}'s",
                meta.party
            )));
        }
        if meta.setting != setting.name() || meta.frac_bits != frac_bits {
            return Err(bad(format!(
                "written by a {} session at f = {}, not {} at f = {frac_bits}",
                meta.setting,
                meta.frac_bits,
                setting.name()
            )));
        }
        let spec = meta.spec();
        spec.check()?;
        let parts = if setting == tessera::Setting::ThreePc {
            2
        } else {
            1
        };
        let mut data = &body[12 + hlen..];
        let want = spec
            .layers()
            .iter()
            .try_fold(0usize, |acc, (k, n)| {
                k.checked_mul(*n)?
                    .checked_add(*n)?
                    .checked_mul(parts * 8)?
                    .checked_add(acc)
            })
            .ok_or_else(|| bad(format!("a head of {spec:?} is too large")))?;
        if data.len() != want {
            return Err(bad(format!(
                "{} bytes of shares for a {} -> {:?} -> {} head ({want} expected)",
                data.len(),
                spec.input,
                spec.hidden,
                spec.classes
            )));
        }
        let mut take = |shape: &[usize]| -> Result<Shared> {
            let n: usize = shape.iter().product();
            let mut comps = Vec::with_capacity(parts);
            for _ in 0..parts {
                let (now, rest) = data.split_at(n * 8);
                data = rest;
                let v = now
                    .chunks_exact(8)
                    .map(|c| u64::from_le_bytes(c.try_into().expect("8 bytes")))
                    .collect();
                comps.push(Tensor::from_vec(shape, v)?);
            }
            let mut it = comps.into_iter();
            let a = it.next().expect("one component");
            Shared::from_parts(a, it.next())
        };
        let zeros = |shape: &[usize]| -> Result<Shared> {
            let z = Tensor::from_vec(shape, vec![0; shape.iter().product()])?;
            Shared::from_parts(z.clone(), (parts == 2).then_some(z))
        };
        let (mut w, mut b, mut vw, mut vb) = (vec![], vec![], vec![], vec![]);
        for (k, n) in spec.layers() {
            w.push(take(&[k, n])?);
            b.push(take(&[n])?);
            vw.push(zeros(&[k, n])?);
            vb.push(zeros(&[n])?);
        }
        Ok((TrainableHead { spec, w, b, vw, vb }, meta))
    }
}

/// The plaintext twin: the same training in f64 — same initial weights, batch order and
/// hyper-parameters, exact softmax and logarithm (the loss clamped as the secure log
/// clamps: p_y >= 2^-f).
#[derive(Clone, Debug)]
pub struct PlainHead {
    /// The public shape.
    pub spec: HeadSpec,
    /// W `[in, out]` and b per layer.
    pub layers: Vec<(Tensor<f64>, Vec<f64>)>,
    vel: Vec<(Vec<f64>, Vec<f64>)>,
    floor: f64,
}

impl PlainHead {
    /// The head at `init`, with the loss floor 2^-`frac_bits`.
    pub fn new(spec: HeadSpec, init: Vec<(Tensor<f64>, Vec<f64>)>, frac_bits: u32) -> Self {
        let vel = init
            .iter()
            .map(|(w, b)| (vec![0.0; w.len()], vec![0.0; b.len()]))
            .collect();
        PlainHead {
            spec,
            layers: init,
            vel,
            floor: 2f64.powi(-(frac_bits as i32)),
        }
    }

    fn forward_keep(&self, x: &Tensor<f64>) -> Result<(Tensor<f64>, Vec<Tensor<f64>>)> {
        let mut inputs = vec![x.clone()];
        let mut h = x.clone();
        let last = self.layers.len() - 1;
        for (l, (w, b)) in self.layers.iter().enumerate() {
            let z = h.matmul(w)?.zip_rows(b, "head bias", |a, c| a + c)?;
            if l == last {
                return Ok((z, inputs));
            }
            h = z.map(|v| v.max(0.0));
            inputs.push(h.clone());
        }
        unreachable!("the last layer returns")
    }

    /// Logits of features `[B, input]`.
    pub fn forward(&self, x: &Tensor<f64>) -> Result<Tensor<f64>> {
        Ok(self.forward_keep(x)?.0)
    }

    /// One SGD step (as [`TrainableHead::step`]); returns the summed loss.
    pub fn step(&mut self, x: &Tensor<f64>, labels: &[usize], sgd: &Sgd) -> Result<f64> {
        let c = self.spec.classes;
        let bsz = labels.len();
        let (logits, inputs) = self.forward_keep(x)?;
        let mut g = vec![0.0; bsz * c];
        let mut loss = 0.0;
        for (i, row) in logits.data().chunks(c).enumerate() {
            let m = row.iter().copied().fold(f64::MIN, f64::max);
            let e: Vec<f64> = row.iter().map(|v| (v - m).exp()).collect();
            let s: f64 = e.iter().sum();
            for j in 0..c {
                g[i * c + j] = e[j] / s - f64::from(u8::from(j == labels[i]));
            }
            loss -= (e[labels[i]] / s).max(self.floor).ln();
        }
        let mut g = Tensor::from_vec(&[bsz, c], g)?;
        let last = self.layers.len() - 1;
        let mut grads = vec![];
        for l in (0..=last).rev() {
            let gw = inputs[l].transpose().matmul(&g)?;
            let n = g.shape()[1];
            let mut gb = vec![0.0; n];
            for row in g.data().chunks(n) {
                gb.iter_mut().zip(row).for_each(|(a, b)| *a += b);
            }
            if l > 0 {
                let dh = g.matmul(&self.layers[l].0.transpose())?;
                g = dh.zip_with(&inputs[l], "relu'", |d, a| if a > 0.0 { d } else { 0.0 })?;
            }
            grads.push((l, gw, gb));
        }
        let inv_b = 1.0 / bsz as f64;
        for (l, gw, gb) in grads {
            let (w, b) = &mut self.layers[l];
            let (vw, vb) = &mut self.vel[l];
            for ((wv, v), s) in w.data_mut().iter_mut().zip(vw.iter_mut()).zip(gw.data()) {
                *v = sgd.momentum * *v + s * inv_b;
                *wv -= sgd.lr * *v;
            }
            for ((bv, v), s) in b.iter_mut().zip(vb.iter_mut()).zip(&gb) {
                *v = sgd.momentum * *v + s * inv_b;
                *bv -= sgd.lr * *v;
            }
        }
        Ok(loss)
    }

    /// One epoch in the batch order of `epoch`; returns the summed loss.
    pub fn epoch(
        &mut self,
        x: &Tensor<f64>,
        labels: &[usize],
        sgd: &Sgd,
        epoch: usize,
    ) -> Result<f64> {
        let k = self.spec.input;
        let mut total = 0.0;
        for idx in sgd.batches(labels.len(), epoch) {
            let mut rows = Vec::with_capacity(idx.len() * k);
            for &i in &idx {
                rows.extend_from_slice(&x.data()[i * k..(i + 1) * k]);
            }
            let xb = Tensor::from_vec(&[idx.len(), k], rows)?;
            let lb: Vec<usize> = idx.iter().map(|&i| labels[i]).collect();
            total += self.step(&xb, &lb, sgd)?;
        }
        Ok(total)
    }

    /// Classes of features `[N, input]` (first maximum).
    pub fn classify(&self, x: &Tensor<f64>) -> Result<Vec<usize>> {
        Ok(super::act::argmax_plain(&self.forward(x)?))
    }
}

/// The steps of `epochs` epochs of training over `n` examples (the dealing plan, from
/// the same code as the run).
pub fn training_steps(
    setting: tessera::Setting,
    fixed: FixedPoint,
    spec: HeadSpec,
    sgd: &Sgd,
    n: usize,
    epoch: usize,
) -> Result<Vec<Step>> {
    super::plan_steps(
        setting,
        fixed,
        super::Methods::default(),
        usize::MAX,
        |p, cx| {
            let mut head = TrainableHead::new(p, spec, &spec.init(sgd.seed))?;
            let x = Shared::zeros(p, &[n, spec.input]);
            let y = Shared::zeros(p, &[n, spec.classes]);
            head.epoch(p, cx, &x, &y, sgd, epoch)?;
            cx.reveal_to(p, DATA_OWNER, &Shared::zeros(p, &[1]))?;
            Ok(())
        },
    )
}

#[cfg(test)]
mod tests;
