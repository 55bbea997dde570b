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
}

impl Shared {
    /// Wraps raw components (advanced use: protocols that build shares themselves).
    /// `b` must be `Some` exactly in 3PC and have `a`'s shape.
    pub fn from_parts(a: Tensor<u64>, b: Option<Tensor<u64>>) -> Result<Shared> {
        if let Some(b) = &b {
            a.check_same(b, "Shared::from_parts")?;
        }
        Ok(Shared { a, b })
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

    fn map2(
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
        })
    }
    /// Applies a local linear map to every component.
    pub fn map_local(&self, f: impl Fn(&Tensor<u64>) -> Tensor<u64>) -> Shared {
        Shared {
            a: f(&self.a),
            b: self.b.as_ref().map(f),
        }
    }
    /// Like [`Shared::map_local`] for maps that can fail (reshape, slicing).
    pub fn try_map_local(&self, f: impl Fn(&Tensor<u64>) -> Result<Tensor<u64>>) -> Result<Shared> {
        Ok(Shared {
            a: f(&self.a)?,
            b: self.b.as_ref().map(f).transpose()?,
        })
    }

    /// [x + y] (local).
    pub fn add(&self, o: &Shared) -> Result<Shared> {
        self.map2(o, |x, y| x.add(y))
    }
    /// [x - y] (local).
    pub fn sub(&self, o: &Shared) -> Result<Shared> {
        self.map2(o, |x, y| x.sub(y))
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
        let f =
            |x: &Tensor<u64>, r: &Tensor<u64>| x.zip_rows(r.data(), "add_rows", u64::wrapping_add);
        Ok(Shared {
            a: f(&self.a, &row.a)?,
            b: match (&self.b, &row.b) {
                (Some(x), Some(r)) => Some(f(x, r)?),
                (None, None) => None,
                _ => return Err(Error::Unsupported("mixing 2PC and 3PC shares".into())),
            },
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
            .map(|(a, b)| Shared::from_parts(a, b))
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
        Shared::from_parts(
            Tensor::from_vec(&[len], a)?,
            b.map(|b| Tensor::from_vec(&[len], b)).transpose()?,
        )
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
        Shared::from_parts(Tensor::concat_last(&a)?, b)
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

    /// Opens several shared tensors to every compute party in one round.
    pub fn open_many(&mut self, xs: &[&Shared]) -> Result<Vec<Tensor<u64>>> {
        self.require_compute("open")?;
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
