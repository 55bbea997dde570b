//! Secret-shared tensors and the operations that need no interaction (or one opening).
//!
//! [`Shared`] is one party's view of a secret tensor x:
//! - 2PC (additive 2-of-2): P0 holds x0, P1 holds x1, x = x0 + x1 mod 2^64;
//! - 3PC (replicated 2-of-3, ABY3): x = x0 + x1 + x2 and Pi holds (x_i, x_{i+1}).
//!
//! Protocols are written once against this type; the methods dispatch on the setting.
//! Linear operations (add, subtract, negate, multiply by public values, add a public value,
//! reshape, transpose) are local. Opening costs one round: 2PC each party sends its share
//! (n words per party); 3PC Pi sends x_i to P(i+1), which misses exactly that component (n
//! words per party).
//!
//! 3PC also has a *pair* form: x = y0 + y1 held 2-of-2 by P0 and P1, laid out as the
//! replicated components x_0 = y0, x_1 = 0, x_2 = y1, so P0's (x_0, x_1) and P1's (x_1,
//! x_2) are valid and P2's components are not. Every 3PC protocol that runs between P0 and
//! P1 with P2 dealing (comparisons, GeLU, softmax, LayerNorm, truncation, the owner's
//! products) ends in this form ([`Shared::pair`]) instead of resharing at once: local linear
//! operations work on it componentwise (the result stays a pair), the next 2-of-2 protocol
//! takes it as it is, and only a protocol that needs P2's components (a replicated product,
//! a replicated weight) pays the reshare, in one batched round ([`Party::replicate`]). In a
//! BERT layer that removes five of the seven reshares (one round and n words each).

use std::borrow::Cow;

use crate::error::{Error, PartyId, Result};
use crate::party::{Party, Setting};
use crate::tensor::Tensor;

/// One party's share of a secret tensor.
#[derive(Clone, Debug, PartialEq)]
pub struct Shared {
    /// 2PC: the additive share. 3PC: component x_i.
    a: Tensor<u64>,
    /// 3PC only: component x_{i+1}.
    b: Option<Tensor<u64>>,
    /// 3PC pair form (see the module doc): P2's components are not valid. The same at
    /// every party, since it follows from the protocol's steps, not from data.
    pair: bool,
}

impl Shared {
    /// Wraps raw components (advanced use: protocols that build shares themselves).
    /// `b` must be `Some` exactly in 3PC and have `a`'s shape; the result is replicated
    /// (a 2-of-2 result between P0 and P1 is [`Shared::pair`]).
    pub fn from_parts(a: Tensor<u64>, b: Option<Tensor<u64>>) -> Result<Shared> {
        if let Some(b) = &b {
            a.check_same(b, "Shared::from_parts")?;
        }
        Ok(Shared { a, b, pair: false })
    }
    /// The session's sharing of x = y0 + y1 from P0's y0 and P1's y1 (P2's `y` is
    /// ignored; its length must still match `shape`), with no communication: 2PC the
    /// additive share itself; 3PC the pair form (module doc), which
    /// [`Party::replicate`] turns into a replicated sharing when one is needed.
    pub fn pair(p: &Party, shape: &[usize], y: Vec<u64>) -> Result<Shared> {
        let y = Tensor::from_vec(shape, y)?;
        if p.setting() == Setting::TwoPc {
            return Shared::from_parts(y, None);
        }
        let zero = Tensor::zeros(shape);
        let (a, b) = match p.id() {
            0 => (y, zero),
            1 => (zero, y),
            _ => (zero.clone(), zero),
        };
        Ok(Shared {
            a,
            b: Some(b),
            pair: true,
        })
    }
    /// Whether this is a 3PC pair-form sharing (P2's components not valid; module doc).
    pub fn is_pair(&self) -> bool {
        self.pair
    }
    /// The components: (x_i, Some(x_{i+1})) in 3PC, (x_i, None) in 2PC.
    pub fn parts(&self) -> (&Tensor<u64>, Option<&Tensor<u64>>) {
        (&self.a, self.b.as_ref())
    }
    /// A sharing of zero with this shape (valid in both settings).
    pub fn zeros(p: &Party, shape: &[usize]) -> Shared {
        Shared {
            a: Tensor::zeros(shape),
            b: (p.setting() == Setting::ThreePc).then(|| Tensor::zeros(shape)),
            pair: false,
        }
    }
    /// The shape.
    pub fn shape(&self) -> &[usize] {
        self.a.shape()
    }
    /// Number of elements.
    pub fn len(&self) -> usize {
        self.a.len()
    }
    /// True if there are no elements.
    pub fn is_empty(&self) -> bool {
        self.a.is_empty()
    }

    /// Applies a local map to the matching components of two shares of one setting (the
    /// result is a pair if either is).
    pub fn zip_local(
        &self,
        o: &Shared,
        f: impl Fn(&Tensor<u64>, &Tensor<u64>) -> Result<Tensor<u64>>,
    ) -> Result<Shared> {
        Ok(Shared {
            a: f(&self.a, &o.a)?,
            b: match (&self.b, &o.b) {
                (Some(x), Some(y)) => Some(f(x, y)?),
                (None, None) => None,
                _ => return Err(Error::Unsupported("mixing 2PC and 3PC shares".into())),
            },
            pair: self.pair || o.pair,
        })
    }
    /// Applies a local linear map to every component.
    pub fn map_local(&self, f: impl Fn(&Tensor<u64>) -> Tensor<u64>) -> Shared {
        Shared {
            a: f(&self.a),
            b: self.b.as_ref().map(f),
            pair: self.pair,
        }
    }
    /// Like [`Shared::map_local`] for maps that can fail (reshape, slicing).
    pub fn try_map_local(&self, f: impl Fn(&Tensor<u64>) -> Result<Tensor<u64>>) -> Result<Shared> {
        Ok(Shared {
            a: f(&self.a)?,
            b: self.b.as_ref().map(f).transpose()?,
            pair: self.pair,
        })
    }

    /// [x + y] (local).
    pub fn add(&self, o: &Shared) -> Result<Shared> {
        self.zip_local(o, |x, y| x.add(y))
    }
    /// [x - y] (local).
    pub fn sub(&self, o: &Shared) -> Result<Shared> {
        self.zip_local(o, |x, y| x.sub(y))
    }
    /// [-x] (local).
    pub fn neg(&self) -> Shared {
        self.map_local(|x| x.neg())
    }
    /// [c x] for a public ring constant c (local; an integer c keeps the scale, a
    /// fixed-point c doubles it and needs a truncation).
    pub fn scale(&self, c: u64) -> Shared {
        self.map_local(|x| x.scale(c))
    }
    /// [x * t] element-wise with a public ring tensor t of the same shape (local).
    pub fn mul_public(&self, t: &Tensor<u64>) -> Result<Shared> {
        self.try_map_local(|x| x.mul(t))
    }
    /// [x * row] broadcast over the last axis with a public vector (local).
    pub fn mul_public_rows(&self, row: &[u64]) -> Result<Shared> {
        self.try_map_local(|x| x.zip_rows(row, "mul_public_rows", u64::wrapping_mul))
    }
    /// [x + row] broadcast over the last axis with a *shared* vector (bias add; local).
    pub fn add_rows(&self, row: &Shared) -> Result<Shared> {
        if row.shape().len() != 1 {
            return Err(Error::shape(
                "add_rows",
                format!("row must be 1-D, got {:?}", row.shape()),
            ));
        }
        self.zip_local(row, |x, r| {
            x.zip_rows(r.data(), "add_rows", u64::wrapping_add)
        })
    }
    /// Swaps the first two axes of a 3-D share (attention heads; local).
    pub fn swap01(&self) -> Result<Shared> {
        self.try_map_local(|x| x.swap01())
    }
    /// Splits the last axis into pieces of the given widths (local).
    pub fn split_last(&self, widths: &[usize]) -> Result<Vec<Shared>> {
        let a = self.a.split_last(widths)?;
        let b = match &self.b {
            Some(b) => b.split_last(widths)?.into_iter().map(Some).collect(),
            None => vec![None; widths.len()],
        };
        a.into_iter()
            .zip(b)
            .map(|(a, b)| Ok(Shared::from_parts(a, b)?.with_pair(self.pair)))
            .collect()
    }
    /// Flattens several shares (same setting) into one 1-D share, in order (local; used to
    /// batch several products into one round).
    pub fn concat_flat(xs: &[&Shared]) -> Result<Shared> {
        let len: usize = xs.iter().map(|x| x.len()).sum();
        let a: Vec<u64> = xs.iter().flat_map(|x| x.a.data().iter().copied()).collect();
        let b: Option<Vec<u64>> = xs
            .iter()
            .map(|x| x.b.as_ref().map(|t| t.data().to_vec()))
            .collect::<Option<Vec<_>>>()
            .map(|v| v.concat());
        Ok(Shared::from_parts(
            Tensor::from_vec(&[len], a)?,
            b.map(|b| Tensor::from_vec(&[len], b)).transpose()?,
        )?
        .with_pair(xs.iter().any(|x| x.pair)))
    }

    /// Concatenates shares along the last axis (local).
    pub fn concat_last(parts: &[Shared]) -> Result<Shared> {
        let a: Vec<Tensor<u64>> = parts.iter().map(|p| p.a.clone()).collect();
        let b = if parts.iter().all(|p| p.b.is_some()) {
            let b: Vec<Tensor<u64>> = parts.iter().filter_map(|p| p.b.clone()).collect();
            Some(Tensor::concat_last(&b)?)
        } else {
            None
        };
        Ok(
            Shared::from_parts(Tensor::concat_last(&a)?, b)?
                .with_pair(parts.iter().any(|p| p.pair)),
        )
    }
    fn with_pair(mut self, pair: bool) -> Shared {
        self.pair = pair;
        self
    }
    /// Same data, new shape.
    pub fn reshape(&self, shape: &[usize]) -> Result<Shared> {
        self.try_map_local(|x| x.clone().reshape(shape))
    }
    /// Swaps the last two axes.
    pub fn transpose(&self) -> Shared {
        self.map_local(|x| x.transpose())
    }

    /// Which of this party's components hold component 0 of the sharing (the one a public
    /// value is added to): 2PC P0's share; 3PC x_0, held by P0 (first) and P2 (second).
    fn public_slot(&mut self, p: &Party) -> Option<&mut Tensor<u64>> {
        match (p.setting(), p.id()) {
            (Setting::TwoPc, 0) | (Setting::ThreePc, 0) => Some(&mut self.a),
            (Setting::ThreePc, 2) => self.b.as_mut(),
            _ => None,
        }
    }
    /// [x + t] for a public ring tensor t of the same shape (local).
    pub fn add_public(&self, p: &Party, t: &Tensor<u64>) -> Result<Shared> {
        self.a.check_same(t, "add_public")?;
        let mut out = self.clone();
        if let Some(slot) = out.public_slot(p) {
            slot.add_assign(t)?;
        }
        Ok(out)
    }
    /// [x + c] for one public ring constant (local).
    pub fn add_public_scalar(&self, p: &Party, c: u64) -> Shared {
        let mut out = self.clone();
        if let Some(slot) = out.public_slot(p) {
            slot.data_mut()
                .iter_mut()
                .for_each(|x| *x = x.wrapping_add(c));
        }
        out
    }
    /// [x + row] broadcast over the last axis with a public vector (bias add; local).
    pub fn add_public_rows(&self, p: &Party, row: &[u64]) -> Result<Shared> {
        let mut out = self.clone();
        if out.a.last_dim() != row.len() {
            return Err(Error::shape(
                "add_public_rows",
                format!("{:?} with vector of length {}", out.shape(), row.len()),
            ));
        }
        if let Some(slot) = out.public_slot(p) {
            *slot = slot.zip_rows(row, "add_public_rows", u64::wrapping_add)?;
        }
        Ok(out)
    }
}

/// Adds the additive views received from the others into this party's own.
fn add_views(sum: &mut [u64], got: &[Vec<u64>]) {
    for g in got {
        sum.iter_mut()
            .zip(g)
            .for_each(|(s, v)| *s = s.wrapping_add(*v));
    }
}

impl Party {
    fn require_compute(&self, what: &str) -> Result<()> {
        if !self.is_compute() {
            return Err(Error::Unsupported(format!(
                "party {} is the 2PC dealer and holds no shares ({what})",
                self.id()
            )));
        }
        Ok(())
    }

    /// Secret-shares a tensor held by `owner` (its `value`; other parties pass `None`).
    ///
    /// 2PC: no communication — the other party's share comes from the PRG it shares with
    /// the owner, the owner keeps x - r. 3PC: components o and o+1 come from the streams
    /// the owner shares with P(o+2) and P(o+1); the owner sends x minus them... precisely,
    /// x_o = F(k_{o,o+2}), x_{o+2} = 0, x_{o+1} = x - x_o is sent to P(o+1): one round, n
    /// words from the owner.
    pub fn share_input(
        &mut self,
        owner: PartyId,
        value: Option<&Tensor<u64>>,
        shape: &[usize],
    ) -> Result<Shared> {
        self.require_compute("share_input")?;
        if owner >= self.num_compute() {
            return Err(Error::PartyId {
                id: owner,
                n: self.num_compute(),
            });
        }
        let n: usize = shape.iter().product();
        let me = self.id();
        if me == owner {
            let v = value.ok_or_else(|| {
                Error::Unsupported(format!("party {me} owns the input but passed no value"))
            })?;
            if v.shape() != shape {
                return Err(Error::shape(
                    "share_input",
                    format!("value {:?} vs declared {:?}", v.shape(), shape),
                ));
            }
        }
        match self.setting() {
            Setting::TwoPc => {
                let other = 1 - owner;
                if me == owner {
                    let r = self.common_words(other, n)?;
                    let v = value.expect("checked");
                    let a: Vec<u64> = v
                        .data()
                        .iter()
                        .zip(&r)
                        .map(|(x, r)| x.wrapping_sub(*r))
                        .collect();
                    Shared::from_parts(Tensor::from_vec(shape, a)?, None)
                } else {
                    let r = self.common_words(owner, n)?;
                    Shared::from_parts(Tensor::from_vec(shape, r)?, None)
                }
            }
            Setting::ThreePc => {
                let (o1, o2) = ((owner + 1) % 3, (owner + 2) % 3);
                let zero = || Tensor::<u64>::zeros(shape);
                if me == owner {
                    let x0 = self.common_words(o2, n)?;
                    let v = value.expect("checked");
                    let x1: Vec<u64> = v
                        .data()
                        .iter()
                        .zip(&x0)
                        .map(|(x, r)| x.wrapping_sub(*r))
                        .collect();
                    self.exchange(vec![(o1, x1.clone())], &[], "share_input")?;
                    Shared::from_parts(
                        Tensor::from_vec(shape, x0)?,
                        Some(Tensor::from_vec(shape, x1)?),
                    )
                } else if me == o1 {
                    // holds (x_{o+1}, x_{o+2}) = (received, 0)
                    let x1 = self
                        .exchange(vec![], &[(owner, n)], "share_input")?
                        .remove(0);
                    Shared::from_parts(Tensor::from_vec(shape, x1)?, Some(zero()))
                } else {
                    // P(o+2) holds (x_{o+2}, x_o) = (0, F(k))
                    let x0 = self.common_words(owner, n)?;
                    Shared::from_parts(zero(), Some(Tensor::from_vec(shape, x0)?))
                }
            }
        }
    }

    /// Shares of a public tensor (no communication).
    pub fn share_public(&self, t: &Tensor<u64>) -> Shared {
        Shared::zeros(self, t.shape())
            .add_public(self, t)
            .expect("same shape by construction")
    }

    /// This party's 2-of-2 additive view of x: 2PC its share; 3PC (either form) P0: x_0 +
    /// x_1, P1: x_2, P2: zeros. Local.
    pub fn additive_view(&self, x: &Shared) -> Vec<u64> {
        match (self.setting(), self.id(), &x.b) {
            (Setting::TwoPc, _, _) => x.a.data().to_vec(),
            (Setting::ThreePc, 0, Some(b)) => {
                x.a.data()
                    .iter()
                    .zip(b.data())
                    .map(|(u, v)| u.wrapping_add(*v))
                    .collect()
            }
            (Setting::ThreePc, 1, Some(b)) => b.data().to_vec(),
            _ => vec![0; x.len()],
        }
    }

    /// Replicated sharings of `xs`: pair forms ([`Shared::pair`]) are reshared, all in one
    /// round, the others pass through borrowed (no round if there is no pair; 2PC never
    /// has one). For a pair x = y0 + y1, x_0 and x_2 come from the streams P2 shares with
    /// P0 and P1, and x_1 = x - x_0 - x_2 is assembled by P0 and P1 exchanging y0 - x_0
    /// and y1 - x_2: n words each, nothing from P2, which learns nothing.
    pub fn replicate<'a>(&mut self, xs: &[&'a Shared]) -> Result<Vec<Cow<'a, Shared>>> {
        // Each distinct pair once (a square x x passes the same share twice).
        let mut pairs: Vec<&Shared> = vec![];
        for x in xs.iter().copied().filter(|x| x.pair) {
            if !pairs.iter().any(|p| std::ptr::eq(*p, x)) {
                pairs.push(x);
            }
        }
        if pairs.is_empty() {
            return Ok(xs.iter().map(|x| Cow::Borrowed(*x)).collect());
        }
        let total: usize = pairs.iter().map(|x| x.len()).sum();
        let me = self.id();
        // (component kept from a stream, the assembled x_1) for P0 and P1; P2 takes both
        // components from its streams.
        let (kept, x1) = match me {
            0 | 1 => {
                let c = self.common_words(2, total)?;
                let mine: Vec<u64> = pairs
                    .iter()
                    .flat_map(|x| self.additive_view(x))
                    .zip(&c)
                    .map(|(y, c)| y.wrapping_sub(*c))
                    .collect();
                let got = self
                    .exchange(
                        vec![(1 - me, mine.clone())],
                        &[(1 - me, total)],
                        "reshare 2-of-2",
                    )?
                    .remove(0);
                let x1: Vec<u64> = mine
                    .iter()
                    .zip(&got)
                    .map(|(u, v)| u.wrapping_add(*v))
                    .collect();
                (c, x1)
            }
            _ => {
                let c2 = self.common_words(1, total)?;
                let c0 = self.common_words(0, total)?;
                (c0, c2)
            }
        };
        let mut done: Vec<Option<Shared>> = Vec::with_capacity(pairs.len());
        let mut off = 0;
        for x in &pairs {
            let n = x.len();
            let part = |v: &[u64]| Tensor::from_vec(x.shape(), v[off..off + n].to_vec());
            // P0 holds (x_0, x_1), P1 (x_1, x_2), P2 (x_2, x_0): P0 keeps its stream's
            // words first, P1 second, and P2's streams give x_2 (with P1) and x_0 (with P0).
            let (a, b) = match me {
                0 => (part(&kept)?, part(&x1)?),
                _ => (part(&x1)?, part(&kept)?),
            };
            done.push(Some(Shared::from_parts(a, Some(b))?));
            off += n;
        }
        // Each reshared value moves to its last use and is cloned only for a repeat.
        let which: Vec<Option<usize>> = xs
            .iter()
            .map(|x| pairs.iter().position(|p| std::ptr::eq(*p, *x)))
            .collect();
        let mut out = Vec::with_capacity(xs.len());
        for (j, x) in xs.iter().enumerate() {
            out.push(match which[j] {
                None => Cow::Borrowed(*x),
                Some(i) if which[j + 1..].contains(&Some(i)) => {
                    Cow::Owned(done[i].clone().expect("taken at its last use only"))
                }
                Some(i) => Cow::Owned(done[i].take().expect("taken at its last use only")),
            });
        }
        Ok(out)
    }

    /// Opens several shared tensors to every compute party in one round.
    ///
    /// With a 3PC pair among them, P0 and P1 each send their additive view
    /// ([`Party::additive_view`]) to both others (2n words each, none from P2) instead of
    /// the replicated opening's n words from every party.
    pub fn open_many(&mut self, xs: &[&Shared]) -> Result<Vec<Tensor<u64>>> {
        self.require_compute("open")?;
        if self.setting() == Setting::ThreePc && xs.iter().any(|x| x.pair) {
            return self.open_pairs(xs);
        }
        let total: usize = xs.iter().map(|x| x.len()).sum();
        let mine: Vec<u64> = xs.iter().flat_map(|x| x.a.data().iter().copied()).collect();
        let (peer_to, peer_from) = match self.setting() {
            Setting::TwoPc => (1 - self.id(), 1 - self.id()),
            Setting::ThreePc => (self.next(), self.prev()),
        };
        let got = self
            .exchange(vec![(peer_to, mine)], &[(peer_from, total)], "open")?
            .remove(0);
        let mut out = Vec::with_capacity(xs.len());
        let mut off = 0;
        for x in xs {
            let n = x.len();
            let other = &got[off..off + n];
            let data: Vec<u64> = match &x.b {
                None => {
                    x.a.data()
                        .iter()
                        .zip(other)
                        .map(|(a, b)| a.wrapping_add(*b))
                        .collect()
                }
                Some(b) => {
                    x.a.data()
                        .iter()
                        .zip(b.data())
                        .zip(other)
                        .map(|((a, b), c)| a.wrapping_add(*b).wrapping_add(*c))
                        .collect()
                }
            };
            out.push(Tensor::from_vec(x.shape(), data)?);
            off += n;
        }
        Ok(out)
    }

    /// [`Party::open_many`] through the additive views (3PC, some input a pair).
    fn open_pairs(&mut self, xs: &[&Shared]) -> Result<Vec<Tensor<u64>>> {
        let total: usize = xs.iter().map(|x| x.len()).sum();
        let me = self.id();
        let mut sum: Vec<u64> = xs.iter().flat_map(|x| self.additive_view(x)).collect();
        let got = match me {
            0 | 1 => self.exchange(
                vec![(1 - me, sum.clone()), (2, sum.clone())],
                &[(1 - me, total)],
                "open",
            )?,
            _ => self.exchange(vec![], &[(0, total), (1, total)], "open")?,
        };
        add_views(&mut sum, &got);
        let mut off = 0;
        xs.iter()
            .map(|x| {
                let t = Tensor::from_vec(x.shape(), sum[off..off + x.len()].to_vec());
                off += x.len();
                t
            })
            .collect()
    }

    /// Opens one shared tensor to every compute party (one round).
    pub fn open(&mut self, x: &Shared) -> Result<Tensor<u64>> {
        Ok(self.open_many(&[x])?.remove(0))
    }

    /// Reveals x to party `to` only (one round); `to` gets `Some(x)`, the others `None`.
    pub fn reveal_to(&mut self, to: PartyId, x: &Shared) -> Result<Option<Tensor<u64>>> {
        self.require_compute("reveal_to")?;
        if to >= self.num_compute() {
            return Err(Error::PartyId {
                id: to,
                n: self.num_compute(),
            });
        }
        let n = x.len();
        let me = self.id();
        if x.pair {
            // P0 and P1 (but `to`) send their additive views; `to` adds its own.
            let senders: Vec<PartyId> = (0..2).filter(|&s| s != to).collect();
            if me == to {
                let recvs: Vec<(PartyId, usize)> = senders.iter().map(|&s| (s, n)).collect();
                let got = self.exchange(vec![], &recvs, "reveal_to")?;
                let mut sum = self.additive_view(x);
                add_views(&mut sum, &got);
                return Ok(Some(Tensor::from_vec(x.shape(), sum)?));
            }
            if senders.contains(&me) {
                let view = self.additive_view(x);
                self.exchange(vec![(to, view)], &[], "reveal_to")?;
            }
            return Ok(None);
        }
        // 2PC: the other party sends its share. 3PC: P(to-1) sends x_{to-1}, which `to` lacks.
        let sender = match self.setting() {
            Setting::TwoPc => 1 - to,
            Setting::ThreePc => (to + 2) % 3,
        };
        if me == to {
            let got = self
                .exchange(vec![], &[(sender, n)], "reveal_to")?
                .remove(0);
            let mut sum = x.a.clone();
            if let Some(b) = &x.b {
                sum.add_assign(b)?;
            }
            for (s, g) in sum.data_mut().iter_mut().zip(&got) {
                *s = s.wrapping_add(*g);
            }
            Ok(Some(sum))
        } else if me == sender {
            self.exchange(vec![(to, x.a.data().to_vec())], &[], "reveal_to")?;
            Ok(None)
        } else {
            Ok(None)
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::runtime::run;
    use crate::{Error, Setting, Shared, Tensor};

    #[test]
    fn open_reveal_and_public_ops_in_both_settings() {
        let x = Tensor::from_vec(&[2, 2], vec![1u64, u64::MAX, 0, 7]).unwrap();
        for s in [Setting::TwoPc, Setting::ThreePc] {
            let outs = run(s, |p| {
                let xs = p.share_input(1, (p.id() == 1).then_some(&x), &[2, 2])?;
                let y = xs
                    .add_public(p, &x)?
                    .add_public_scalar(p, 10)
                    .add_public_rows(p, &[1, 2])?
                    .scale(3)
                    .sub(&xs)?
                    .neg();
                let opened = p.open(&y)?;
                let only0 = p.reveal_to(0, &xs.transpose())?;
                Ok((opened, only0))
            })
            .unwrap();
            let want: Vec<u64> = x
                .data()
                .iter()
                .enumerate()
                .map(|(i, &v)| {
                    let t = v
                        .wrapping_add(v)
                        .wrapping_add(10)
                        .wrapping_add(1 + (i % 2) as u64);
                    t.wrapping_mul(3).wrapping_sub(v).wrapping_neg()
                })
                .collect();
            for (i, o) in outs.iter().enumerate() {
                assert_eq!(o.value.0.data(), &want[..], "{s:?} party {i}");
                assert_eq!(
                    o.value.1.is_some(),
                    i == 0,
                    "{s:?}: only P0 learns the revealed value"
                );
            }
            assert_eq!(outs[0].value.1.as_ref().unwrap(), &x.transpose());
        }
    }

    /// The 3PC pair form: P2's part of `Shared::pair` is ignored, linear ops with a
    /// replicated share stay pairs, opening and revealing a pair are one round with
    /// nothing from P2, and `replicate` reshares each distinct pair once (n words from P0
    /// and P1, one round) while P2 receives nothing, so its view cannot depend on x.
    #[test]
    fn pair_form_opens_reshares_once_and_mixes_with_replicated() {
        let n = 5;
        let v: Vec<u64> = vec![3, u64::MAX, 1 << 40, 0, 12345];
        let x = Tensor::from_vec(&[n], v.clone()).unwrap();
        let outs = run(Setting::ThreePc, |p| {
            let xs = p.share_input(1, (p.id() == 1).then_some(&x), &[n])?;
            let u: Vec<u64> = (0..n as u64).map(|i| i.wrapping_mul(0x9e37_79b9)).collect();
            let mine = match p.id() {
                0 => u.clone(),
                1 => v.iter().zip(&u).map(|(a, b)| a.wrapping_sub(*b)).collect(),
                _ => vec![99; n], // ignored
            };
            let y = Shared::pair(p, &[n], mine)?;
            let z = y.add(&xs)?.scale(3);
            assert!(y.is_pair() && z.is_pair() && !xs.is_pair());
            let before = p.stats();
            let opened = p.open(&z)?;
            let to2 = p.reveal_to(2, &y)?;
            let open_st = p.stats().since(&before);
            let before = p.stats();
            let r = p.replicate(&[&z, &z, &xs])?;
            let rep_st = p.stats().since(&before);
            assert!(!r[0].is_pair() && r[0] == r[1]);
            assert!(matches!(r[2], std::borrow::Cow::Borrowed(_)));
            let reopened = p.open(&r[0])?;
            Ok((opened, to2, reopened, open_st, rep_st))
        })
        .unwrap();
        let want: Vec<u64> = v.iter().map(|a| a.wrapping_mul(6)).collect();
        for (i, o) in outs.iter().enumerate() {
            let (opened, to2, reopened, open_st, rep_st) = &o.value;
            assert_eq!(opened.data(), &want[..], "party {i}");
            assert_eq!(reopened.data(), &want[..], "party {i}");
            assert_eq!(to2.is_some(), i == 2, "party {i}");
            assert_eq!(open_st.rounds, 2, "party {i}: open and reveal_to");
            assert_eq!(rep_st.rounds, u64::from(i < 2), "party {i}");
            let words = if i < 2 { n as u64 } else { 0 };
            assert_eq!(rep_st.online_sent, 8 * words, "party {i}: z once");
            assert_eq!(rep_st.online_recv, 8 * words, "party {i}");
            // open: additive views to both others; reveal_to 2: one view each
            let sent = if i < 2 { 3 * n as u64 } else { 0 };
            assert_eq!(open_st.online_sent, 8 * sent, "party {i}");
        }
        assert_eq!(outs[2].value.1.as_ref().unwrap().data(), &v[..]);
    }

    #[test]
    fn bad_inputs_are_errors_naming_the_fault() {
        for s in [Setting::TwoPc, Setting::ThreePc] {
            let e = run(s, |p| p.share_input(5, None, &[1]).map(|_| ())).unwrap_err();
            assert!(matches!(e, Error::PartyId { id: 5, .. }), "{e}");
            let e = run(s, |p| {
                let a = Shared::zeros(p, &[2, 3]);
                let b = Shared::zeros(p, &[3, 2]);
                a.add(&b).map(|_| ())
            })
            .unwrap_err();
            assert!(e.to_string().contains("[2, 3] vs [3, 2]"), "{e}");
            // A peer that sends a message of the wrong length (a truncated tensor).
            let e = run(s, |p| {
                if p.id() == 1 {
                    let to = if s == Setting::TwoPc { 0 } else { 2 };
                    p.exchange(vec![(to, vec![1, 2])], &[], "evil")?;
                    // Stay up until the others have read it (an exited peer would make
                    // their own sends fail first, with a different error).
                    std::thread::sleep(std::time::Duration::from_millis(500));
                    return Ok(());
                }
                let x = Shared::zeros(p, &[3]);
                p.open(&x).map(|_| ())
            })
            .unwrap_err();
            let t = e.to_string();
            assert!(
                t.contains("party 1") && t.contains("2 words, expected 3"),
                "{s:?}: {t}"
            );
        }
    }
}
