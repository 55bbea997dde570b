//! Pseudorandomness: AES-128 in counter mode, seeded from the OS.
//!
//! [`Prg`] expands a 128-bit [`Seed`] with AES-128-CTR (the `aes` crate uses AES-NI when
//! the CPU has it). Seeds come from the OS ([`Seed::random`]); derived seeds (one per
//! purpose: zero-sharing, dealer material, ...) are SHA-256(seed || label) truncated to
//! 128 bits, so independent streams never overlap. Two parties that share a seed get the
//! same stream, which is how zero-sharings and seed-compressed preprocessing avoid
//! communication.

use aes::cipher::{KeyIvInit, StreamCipher};
use rand::{CryptoRng, RngCore};
use sha2::{Digest, Sha256};

type Aes128Ctr = ctr::Ctr64LE<aes::Aes128>;

/// A 128-bit PRG seed.
#[derive(Clone, Copy, PartialEq, Eq, bytemuck::Pod, bytemuck::Zeroable)]
#[repr(transparent)]
pub struct Seed(pub [u8; 16]);

impl std::fmt::Debug for Seed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Seeds are secrets: never print them.
        f.write_str("Seed(..)")
    }
}

impl Seed {
    /// A fresh seed from the operating system's CSPRNG.
    pub fn random() -> Seed {
        let mut s = [0u8; 16];
        rand::rngs::OsRng.fill_bytes(&mut s);
        Seed(s)
    }
    /// A child seed for `label`: SHA-256(seed || label)[..16].
    pub fn derive(&self, label: &[u8]) -> Seed {
        let mut h = Sha256::new();
        h.update(b"tessera-seed-v1");
        h.update(self.0);
        h.update(label);
        let d = h.finalize();
        let mut s = [0u8; 16];
        s.copy_from_slice(&d[..16]);
        Seed(s)
    }
    /// The seed as two words (for sending it in a message).
    pub fn to_words(&self) -> [u64; 2] {
        bytemuck::cast(self.0)
    }
    /// Rebuilds a seed from two words.
    pub fn from_words(w: [u64; 2]) -> Seed {
        Seed(bytemuck::cast(w))
    }
}

/// AES-128-CTR pseudorandom generator.
pub struct Prg {
    cipher: Aes128Ctr,
}

impl std::fmt::Debug for Prg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Prg(..)")
    }
}

impl Prg {
    /// A generator expanding `seed`.
    pub fn new(seed: Seed) -> Prg {
        let iv = [0u8; 16];
        Prg {
            cipher: Aes128Ctr::new(&seed.0.into(), &iv.into()),
        }
    }
    /// A generator seeded from the OS.
    pub fn from_os() -> Prg {
        Prg::new(Seed::random())
    }
    /// Fills `out` with uniform ring elements.
    pub fn fill(&mut self, out: &mut [u64]) {
        out.fill(0);
        self.cipher
            .apply_keystream(bytemuck::cast_slice_mut::<u64, u8>(out));
    }
    /// `n` uniform ring elements.
    pub fn words(&mut self, n: usize) -> Vec<u64> {
        let mut v = vec![0u64; n];
        self.fill(&mut v);
        v
    }
    /// `n` uniform bits as ring elements 0/1.
    pub fn bits(&mut self, n: usize) -> Vec<u64> {
        let mut v = self.words(n);
        v.iter_mut().for_each(|x| *x &= 1);
        v
    }
    /// A fresh seed drawn from this stream.
    pub fn seed(&mut self) -> Seed {
        let mut s = [0u8; 16];
        self.fill_bytes(&mut s);
        Seed(s)
    }
}

impl RngCore for Prg {
    fn next_u32(&mut self) -> u32 {
        self.next_u64() as u32
    }
    fn next_u64(&mut self) -> u64 {
        let mut w = [0u64];
        self.fill(&mut w);
        w[0]
    }
    fn fill_bytes(&mut self, dest: &mut [u8]) {
        dest.fill(0);
        self.cipher.apply_keystream(dest);
    }
    fn try_fill_bytes(&mut self, dest: &mut [u8]) -> Result<(), rand::Error> {
        self.fill_bytes(dest);
        Ok(())
    }
}

impl CryptoRng for Prg {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_stream_and_split_is_consistent() {
        let s = Seed::random();
        let mut a = Prg::new(s);
        let mut b = Prg::new(s);
        let x = a.words(1000);
        let mut y = b.words(3);
        y.extend(b.words(997));
        assert_eq!(x, y, "stream must not depend on how it is consumed");
        assert_ne!(
            Prg::new(s.derive(b"a")).words(4),
            Prg::new(s.derive(b"b")).words(4)
        );
        assert_eq!(Seed::from_words(s.to_words()), s);
        assert_eq!(format!("{:?}", s), "Seed(..)");
    }

    #[test]
    fn output_is_balanced() {
        let mut p = Prg::from_os();
        let w = p.words(1 << 14);
        let ones: u32 = w.iter().map(|x| x.count_ones()).sum();
        let total = (w.len() * 64) as f64;
        // 2^20 bits: the fraction of ones is 0.5 +- 5 sigma (sigma = 0.5/sqrt(total)).
        assert!(((ones as f64 / total) - 0.5).abs() < 5.0 * 0.5 / total.sqrt());
    }
}
