//! Fixed-key AES-128 pseudorandom generator for the FSS trees.
//!
//! Both constructions (BGI CCS'16 Fig. 1, Boyle et al. EC'21 Fig. 3) need a
//! length-doubling PRG `G: {0,1}^λ -> ({0,1}^λ x {0,1})^2` and a map
//! "Convert" from a seed to group elements. Both are built from fixed-key AES
//! in Matyas–Meyer–Oseas mode, `H_k(x) = AES_k(x) ^ x`, which is a
//! (tweakable) correlation-robust hash under the ideal-cipher model and costs
//! one AES block per 128 output bits with no key schedule per call:
//!
//! * expand: `G(s) = (H_{k1}(s ^ 0), H_{k1}(s ^ 1))`; each output block is a
//!   child *node*: its low bit is the child control bit `t`, the other 127 bits
//!   the child seed. Seeds therefore carry 127 bits of entropy.
//! * convert: `Convert(s)` is the `u64` stream
//!   `H_{k2}(s ^ 0), H_{k2}(s ^ 1), H_{k2}(s ^ 2), ...` (each block split into
//!   low and high words) under a second, independent fixed key — so group
//!   elements never collide with tree expansion. The DCF per-level values
//!   `v^L || v^R` are words `0..2L` of `Convert(s)` of the parent seed.
//!
//! Nodes are `u128` values; the seed of a node is `node & SEED_MASK`. The
//! batch helpers encrypt 16 blocks per `encrypt_blocks` call so the AES-NI
//! backend (8-way pipelined in `aes` 0.8, which has no VAES path) stays busy.

use aes::cipher::{BlockEncrypt, KeyInit};
use aes::{Aes128, Block};
use std::sync::OnceLock;

/// Public fixed AES key used for tree expansion (nothing-up-my-sleeve ASCII).
const EXPAND_KEY: [u8; 16] = *b"tessera/fss/expd";
/// Public fixed AES key used for Convert (seed -> group elements).
const CONVERT_KEY: [u8; 16] = *b"tessera/fss/conv";

/// Number of AES blocks handed to `encrypt_blocks` at once in batched paths.
pub const BATCH: usize = 16;

/// Mask selecting the 127 seed bits of a node (the low bit is the control bit).
pub const SEED_MASK: u128 = !1;

/// The two fixed-key AES instances of the PRG.
///
/// Obtain the process-wide instance with [`prg`]; the keys are public
/// constants, so any two processes compute identical expansions.
pub struct FixedKeyPrg {
    expand: Aes128,
    convert: Aes128,
}

/// Returns the process-wide PRG (key schedules are computed once).
pub fn prg() -> &'static FixedKeyPrg {
    static PRG: OnceLock<FixedKeyPrg> = OnceLock::new();
    PRG.get_or_init(|| FixedKeyPrg {
        expand: Aes128::new(&EXPAND_KEY.into()),
        convert: Aes128::new(&CONVERT_KEY.into()),
    })
}

#[inline(always)]
fn to_block(x: u128) -> Block {
    Block::from(x.to_le_bytes())
}

#[inline(always)]
fn from_block(b: Block) -> u128 {
    u128::from_le_bytes(b.into())
}

/// In place `x <- AES_k(x) ^ x` for every element, `BATCH` blocks per AES call.
#[inline]
fn mmo(cipher: &Aes128, xs: &mut [u128]) {
    let mut buf = [Block::default(); BATCH];
    for chunk in xs.chunks_mut(BATCH) {
        let b = &mut buf[..chunk.len()];
        for (bl, x) in b.iter_mut().zip(chunk.iter()) {
            *bl = to_block(*x);
        }
        cipher.encrypt_blocks(b);
        for (bl, x) in b.iter().zip(chunk.iter_mut()) {
            *x ^= from_block(*bl);
        }
    }
}

impl FixedKeyPrg {
    /// Expands a node into its (left, right) children, uncorrected:
    /// `G(s) = (H(s), H(s ^ 1))` with `s = node & SEED_MASK`.
    #[inline]
    pub fn expand(&self, node: u128) -> [u128; 2] {
        let s = node & SEED_MASK;
        let mut b = [s, s | 1];
        mmo(&self.expand, &mut b);
        b
    }

    /// Expands several nodes in one batch: `children[2i..2i+2] = expand(nodes[i])`.
    ///
    /// # Panics
    /// If `children.len() != 2 * nodes.len()`.
    pub fn expand_many(&self, nodes: &[u128], children: &mut [u128]) {
        assert_eq!(children.len(), 2 * nodes.len(), "children buffer length");
        for (c, &n) in children.chunks_exact_mut(2).zip(nodes) {
            let s = n & SEED_MASK;
            c[0] = s;
            c[1] = s | 1;
        }
        mmo(&self.expand, children);
    }

    /// In place, for each element: `x <- H(x)` under the expansion key, where
    /// the caller has already formed `x = seed | direction`. Used by the
    /// single-path evaluators, which only need the child on the path.
    #[inline]
    pub fn expand_dirs(&self, inputs: &mut [u128]) {
        mmo(&self.expand, inputs);
    }

    /// In place, for each element: `x <- H(x)` under the Convert key, where the
    /// caller has already formed `x = seed ^ block_index`; block `j` of
    /// `Convert(s)` is words `2j` (low half) and `2j + 1` (high half).
    #[inline]
    pub fn convert_blocks(&self, inputs: &mut [u128]) {
        mmo(&self.convert, inputs);
    }

    /// Writes words `first .. first + out.len()` of `Convert(node & SEED_MASK)`.
    pub fn convert(&self, node: u128, first: usize, out: &mut [u64]) {
        self.convert_ranges(&[node], &[first], out);
    }

    /// Batched Convert with per-seed offsets: for each `q`, writes words
    /// `firsts[q] .. firsts[q] + len` of `Convert(nodes[q])` into
    /// `out[q*len .. (q+1)*len]`, where `len = out.len() / nodes.len()`.
    ///
    /// # Panics
    /// If `firsts.len() != nodes.len()` or `out.len()` is not a multiple of it.
    pub fn convert_ranges(&self, nodes: &[u128], firsts: &[usize], out: &mut [u64]) {
        assert_eq!(nodes.len(), firsts.len(), "firsts length");
        if nodes.is_empty() {
            return;
        }
        let len = out.len() / nodes.len();
        assert_eq!(len * nodes.len(), out.len(), "output length");
        if len == 0 {
            return;
        }
        if len == 1 {
            // Fast path (L = 1): one block per seed, pick its low or high word.
            let mut buf = [0u128; BATCH];
            for ((nc, fc), oc) in nodes
                .chunks(BATCH)
                .zip(firsts.chunks(BATCH))
                .zip(out.chunks_mut(BATCH))
            {
                let b = &mut buf[..nc.len()];
                for ((x, &n), &f) in b.iter_mut().zip(nc).zip(fc) {
                    *x = (n & SEED_MASK) ^ (f / 2) as u128;
                }
                mmo(&self.convert, b);
                for ((o, &x), &f) in oc.iter_mut().zip(b.iter()).zip(fc) {
                    *o = (x >> (64 * (f & 1))) as u64;
                }
            }
            return;
        }
        // Pending blocks: (output word index of the block's low word relative to
        // the seed's output, seed index, block input).
        let mut inputs = [0u128; BATCH];
        let mut meta = [(0usize, 0isize); BATCH];
        let mut fill = 0;
        for (q, (&node, &first)) in nodes.iter().zip(firsts).enumerate() {
            let s = node & SEED_MASK;
            let (j0, j1) = (first / 2, (first + len - 1) / 2);
            for j in j0..=j1 {
                inputs[fill] = s ^ j as u128;
                // Position of word 2j inside this seed's output slice.
                meta[fill] = (q, 2 * j as isize - first as isize);
                fill += 1;
                if fill == BATCH {
                    self.flush_convert(&mut inputs, &meta, len, out);
                    fill = 0;
                }
            }
        }
        if fill > 0 {
            self.flush_convert(&mut inputs[..fill], &meta[..fill], len, out);
        }
    }

    fn flush_convert(
        &self,
        inputs: &mut [u128],
        meta: &[(usize, isize)],
        len: usize,
        out: &mut [u64],
    ) {
        mmo(&self.convert, inputs);
        for (&blk, &(q, pos)) in inputs.iter().zip(meta) {
            let base = q * len;
            for (k, w) in [(0isize, blk as u64), (1, (blk >> 64) as u64)] {
                let p = pos + k;
                if p >= 0 && (p as usize) < len {
                    out[base + p as usize] = w;
                }
            }
        }
    }

    /// Full Convert of many seeds: `out[q*m .. (q+1)*m]` = words `0..m` of
    /// `Convert(nodes[q])`, with `m = out.len() / nodes.len()`. Fast path for
    /// whole blocks per seed (even `m`: one block in full-domain evaluation, four in the
    /// 8-word early-terminated leaves of a table lookup).
    pub fn convert_many(&self, nodes: &[u128], out: &mut [u64]) {
        if nodes.is_empty() {
            return;
        }
        let m = out.len() / nodes.len();
        if m.is_multiple_of(2) {
            // Block j of seed q is H(s_q ^ j), its two words at 2j and 2j + 1 of q's
            // slice.
            let per = m / 2;
            let mut buf = [0u128; BATCH];
            let (mut fill, mut w) = (0usize, 0usize);
            let mut flush = |b: &mut [u128], w: &mut usize| {
                mmo(&self.convert, b);
                for (o, &x) in out[*w..*w + 2 * b.len()].chunks_exact_mut(2).zip(b.iter()) {
                    o[0] = x as u64;
                    o[1] = (x >> 64) as u64;
                }
                *w += 2 * b.len();
            };
            for &n in nodes {
                let s = n & SEED_MASK;
                for j in 0..per {
                    buf[fill] = s ^ j as u128;
                    fill += 1;
                    if fill == BATCH {
                        flush(&mut buf, &mut w);
                        fill = 0;
                    }
                }
            }
            if fill > 0 {
                flush(&mut buf[..fill], &mut w);
            }
        } else {
            let zeros = vec![0usize; nodes.len()];
            self.convert_ranges(nodes, &zeros, out);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expand_matches_definition() {
        let p = prg();
        let node = 0x0123_4567_89ab_cdef_fedc_ba98_7654_3211u128;
        let [l, r] = p.expand(node);
        let s = node & SEED_MASK;
        let aes = Aes128::new(&EXPAND_KEY.into());
        let h = |x: u128| {
            let mut b = to_block(x);
            aes.encrypt_block(&mut b);
            from_block(b) ^ x
        };
        assert_eq!(l, h(s));
        assert_eq!(r, h(s ^ 1));
        let mut kids = [0u128; 6];
        p.expand_many(&[node, 5, node], &mut kids);
        assert_eq!(&kids[..2], &[l, r]);
        assert_eq!(&kids[4..], &[l, r]);
        assert_ne!(l, r);
        let mut d = [s | 1];
        p.expand_dirs(&mut d);
        assert_eq!(d[0], r);
    }

    #[test]
    fn convert_ranges_consistent() {
        let p = prg();
        let nodes: Vec<u128> = (0..40u128)
            .map(|i| i.wrapping_mul(0x9e37_79b9_7f4a_7c15_f39c_c060_5ced_c835))
            .collect();
        let mut full = vec![0u64; nodes.len() * 7];
        p.convert_many(&nodes, &mut full);
        for first in 0..4 {
            for len in 1..4 {
                let firsts = vec![first; nodes.len()];
                let mut out = vec![0u64; nodes.len() * len];
                p.convert_ranges(&nodes, &firsts, &mut out);
                for q in 0..nodes.len() {
                    for k in 0..len {
                        if first + k < 7 {
                            assert_eq!(out[q * len + k], full[q * 7 + first + k]);
                        }
                    }
                }
            }
        }
        let mut two = vec![0u64; nodes.len() * 2];
        p.convert_many(&nodes, &mut two);
        for q in 0..nodes.len() {
            assert_eq!(&two[2 * q..2 * q + 2], &full[7 * q..7 * q + 2]);
        }
        // The whole-blocks path (even m > 2) agrees with the generic one.
        let mut eight = vec![0u64; nodes.len() * 8];
        p.convert_many(&nodes, &mut eight);
        for q in 0..nodes.len() {
            assert_eq!(&eight[8 * q..8 * q + 7], &full[7 * q..7 * q + 7]);
        }
        // Convert ignores the control bit.
        let mut a = [0u64; 3];
        let mut b = [0u64; 3];
        p.convert(nodes[3], 1, &mut a);
        p.convert(nodes[3] ^ 1, 1, &mut b);
        assert_eq!(a, b);
    }
}
