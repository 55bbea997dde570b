//! Distributed point functions (DPF): Boyle–Gilboa–Ishai, "Function Secret
//! Sharing: Improvements and Extensions", CCS'16, Fig. 1 (tree construction
//! with per-level correction words), §3.2.2 early termination.
//!
//! The point function is `f(x) = beta` if `x == alpha`, else `0`, with
//! `x, alpha` in `[0, 2^n)` and `beta` a vector of `L` elements of Z_2^64.
//!
//! Early termination: a leaf of the GGM tree is expanded by Convert into
//! `L * 2^e` words, and the tree stops `e` levels early. We use `e = 1` exactly
//! when `L == 1`: one 128-bit AES block then gives the outputs of two sibling
//! inputs, so the tree has `n - 1` levels. This is a clear win: full-domain
//! evaluation drops from about `3 * 2^n` to `1.5 * 2^n` AES blocks (measured
//! 1.5x faster at n = 20, see `early_termination_speedup` in the tests), the key
//! shrinks by 8 bytes and single-point evaluation saves one AES call. For
//! `L >= 2` one level of early termination would not shrink the key and would
//! not save AES work on single-point evaluation, so `e = 0`.

use super::prg::{prg, SEED_MASK};
use super::{
    bit_mask, bytes_to_words, check_gen_params, domain_mask, negate_if, push_u128, words_to_bytes,
    FssError, Header, KeyKind, WordReader, MAX_EVAL_ALL_BITS,
};
use rand::{CryptoRng, RngCore};
use rayon::prelude::*;

/// Points evaluated in lockstep by the batched evaluator (one AES call per
/// tree level covers all lanes, keeping the AES pipeline full).
const LANES: usize = 16;
/// Points per rayon task in [`DpfKey::eval_batch`].
const PAR_CHUNK: usize = 512;
/// Depth of the subtrees expanded breadth-first (per rayon task) in
/// [`DpfKey::eval_all`]; 2^12 nodes x 16 B = 64 KiB stays in L2.
const SUBTREE_BITS: u32 = 12;

/// One party's key for a DPF `f(x) = beta * [x == alpha]` (BGI CCS'16 Fig. 1).
///
/// Produced in pairs by [`dpf_gen`]; evaluating both keys at the same `x` and
/// adding the outputs (wrapping) yields `f(x)`, while either key alone is
/// pseudorandom and hides `alpha` and `beta`.
#[derive(Clone, PartialEq, Eq)]
pub struct DpfKey {
    /// Input bit width n (1..=64).
    n_bits: u32,
    /// Output length L (words of Z_2^64 per input).
    out_len: usize,
    /// Party index b (false = 0, true = 1); party 1 negates its output.
    party: bool,
    /// Early-termination levels e (0 or 1): the tree has n - e levels.
    early: u32,
    /// Root node: seed with the initial control bit t = b in the low bit.
    root: u128,
    /// Per level: s_CW with t_CW^L in the low bit.
    cw_seeds: Vec<u128>,
    /// Bit i is t_CW^R of level i.
    cw_tr: u64,
    /// Final correction CW^(n+1): L * 2^e words.
    cw_out: Vec<u64>,
}

impl std::fmt::Debug for DpfKey {
    /// Prints only the public parameters; seeds and correction words are
    /// secret-ish key material and are redacted.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DpfKey")
            .field("n_bits", &self.n_bits)
            .field("out_len", &self.out_len)
            .field("party", &u8::from(self.party))
            .field("early", &self.early)
            .finish_non_exhaustive()
    }
}

/// Draws a uniformly random `u128`.
pub(crate) fn random_u128(rng: &mut (impl RngCore + CryptoRng)) -> u128 {
    let mut b = [0u8; 16];
    rng.fill_bytes(&mut b);
    u128::from_le_bytes(b)
}

/// Generates a pair of DPF keys for `f(x) = beta` if `x == alpha`, else `0`,
/// on `n_bits`-bit inputs (BGI CCS'16 Fig. 1, `Gen`).
///
/// `beta.len()` is the output length `L >= 1`. Errors if `n_bits` is not in
/// `1..=64`, if `alpha >= 2^n_bits`, or if `beta` is empty or too long.
pub fn dpf_gen(
    alpha: u64,
    beta: &[u64],
    n_bits: u32,
    rng: &mut (impl RngCore + CryptoRng),
) -> Result<(DpfKey, DpfKey), FssError> {
    let early = u32::from(beta.len() == 1);
    gen_with_early(alpha, beta, n_bits, early, rng)
}

/// Most early-termination levels a key may use: a leaf then holds up to 8 outputs of L
/// words, converted by 4 L AES blocks (a 7-bit table: 4 tree levels and 16 leaves instead
/// of 6 levels and 64 leaves, half the AES calls of the full-domain evaluation).
pub const MAX_EARLY: u32 = 3;

/// [`dpf_gen`] with an explicit number of early-termination levels
/// (`early <= MAX_EARLY`, `early <= n_bits`): the last `early` levels are replaced by a
/// leaf of `L * 2^early` output words (BGI CCS'16 §3.2.1, "early termination").
pub fn dpf_gen_early(
    alpha: u64,
    beta: &[u64],
    n_bits: u32,
    early: u32,
    rng: &mut (impl RngCore + CryptoRng),
) -> Result<(DpfKey, DpfKey), FssError> {
    if early > MAX_EARLY || early > n_bits {
        return Err(FssError::Malformed {
            field: "early",
            reason: format!(
                "{early} early-termination levels for {n_bits} bits (at most {MAX_EARLY})"
            ),
        });
    }
    gen_with_early(alpha, beta, n_bits, early, rng)
}

/// [`dpf_gen_early`] without the parameter check.
pub(crate) fn gen_with_early(
    alpha: u64,
    beta: &[u64],
    n_bits: u32,
    early: u32,
    rng: &mut (impl RngCore + CryptoRng),
) -> Result<(DpfKey, DpfKey), FssError> {
    check_gen_params(alpha, beta, n_bits)?;
    debug_assert!(early <= MAX_EARLY && early <= n_bits);
    let l = beta.len();
    let depth = (n_bits - early) as usize;
    let p = prg();

    // t0^(0) = 0, t1^(0) = 1 live in the low bits of the root nodes.
    let roots = [random_u128(rng) & SEED_MASK, random_u128(rng) | 1];
    let mut nodes = roots;
    let mut cw_seeds = Vec::with_capacity(depth);
    let mut cw_tr = 0u64;
    let mut kids = [0u128; 4]; // [s0^L, s0^R, s1^L, s1^R], control bits in the low bits
    for i in 0..depth {
        let a = (alpha >> (n_bits - 1 - i as u32)) & 1;
        p.expand_many(&nodes, &mut kids);
        let keep = a as usize;
        let lose = 1 - keep;
        let s_cw = (kids[lose] ^ kids[2 + lose]) & SEED_MASK;
        let t_l = ((kids[0] ^ kids[2]) & 1) as u64 ^ a ^ 1;
        let t_r = ((kids[1] ^ kids[3]) & 1) as u64 ^ a;
        let cw_l = s_cw | u128::from(t_l);
        let cw_r = s_cw | u128::from(t_r);
        cw_seeds.push(cw_l);
        cw_tr |= t_r << i;
        let cw_keep = if keep == 0 { cw_l } else { cw_r };
        for (b, node) in nodes.iter_mut().enumerate() {
            // s_b <- s_b^Keep ^ t_b * s_CW ; t_b <- t_b^Keep ^ t_b * t_CW^Keep
            *node = kids[2 * b + keep] ^ (cw_keep & bit_mask(*node));
        }
    }

    // CW^(n+1) = (-1)^{t1} [beta * e_pos - Convert(s0) + Convert(s1)], where
    // the leaf holds 2^e outputs and alpha's low e bits select the slot.
    let m = l << early;
    let mut c0 = vec![0u64; m];
    let mut c1 = vec![0u64; m];
    p.convert(nodes[0], 0, &mut c0);
    p.convert(nodes[1], 0, &mut c1);
    let pos = (alpha & ((1u64 << early) - 1)) as usize * l;
    let mut cw_out: Vec<u64> = c1
        .iter()
        .zip(&c0)
        .map(|(a, b)| a.wrapping_sub(*b))
        .collect();
    for (o, b) in cw_out[pos..pos + l].iter_mut().zip(beta) {
        *o = o.wrapping_add(*b);
    }
    negate_if(nodes[1] & 1 == 1, &mut cw_out);

    let key = |party: bool| DpfKey {
        n_bits,
        out_len: l,
        party,
        early,
        root: roots[usize::from(party)],
        cw_seeds: cw_seeds.clone(),
        cw_tr,
        cw_out: cw_out.clone(),
    };
    Ok((key(false), key(true)))
}

impl DpfKey {
    /// Input bit width `n`: inputs are taken modulo `2^n`.
    pub fn n_bits(&self) -> u32 {
        self.n_bits
    }

    /// Output length `L`: number of Z_2^64 words produced per input.
    pub fn out_len(&self) -> usize {
        self.out_len
    }

    /// Party index (0 or 1) this key belongs to.
    pub fn party(&self) -> u8 {
        u8::from(self.party)
    }

    /// Tree depth `n - e` (levels with a correction word).
    fn depth(&self) -> usize {
        (self.n_bits - self.early) as usize
    }

    /// Words per leaf, `L * 2^e`.
    fn leaf_words(&self) -> usize {
        self.out_len << self.early
    }

    /// Evaluates this party's share of `f(x)` (`L` words). Only the low
    /// `n_bits` bits of `x` are used (inputs are reduced modulo `2^n`).
    pub fn eval(&self, x: u64) -> Vec<u64> {
        let mut out = vec![0u64; self.out_len];
        self.eval_group(&[x], &mut out);
        out
    }

    /// As [`eval`](Self::eval), writing the `L` output words into `out`.
    ///
    /// # Panics
    /// If `out.len() != self.out_len()`.
    pub fn eval_into(&self, x: u64, out: &mut [u64]) {
        assert_eq!(
            out.len(),
            self.out_len,
            "DpfKey::eval_into: out.len() must equal L"
        );
        self.eval_group(&[x], out);
    }

    /// Evaluates the share at every `x` in `xs` in parallel (rayon), with the
    /// points of each task walked down the tree in lockstep so AES calls are
    /// batched. Returns `xs.len() * L` words: the `L` outputs for `xs[i]` at
    /// `[i*L, (i+1)*L)`.
    pub fn eval_batch(&self, xs: &[u64]) -> Vec<u64> {
        let l = self.out_len;
        let mut out = vec![0u64; xs.len() * l];
        xs.par_chunks(PAR_CHUNK)
            .zip(out.par_chunks_mut(PAR_CHUNK * l))
            .for_each(|(xc, oc)| {
                for (xg, og) in xc.chunks(LANES).zip(oc.chunks_mut(LANES * l)) {
                    self.eval_group(xg, og);
                }
            });
        out
    }

    /// Single-path evaluation of up to `LANES` points in lockstep (BGI Fig. 1
    /// `Eval`): per level only the child on the path is expanded (one AES block
    /// per point), then Convert on the leaf.
    fn eval_group(&self, xs: &[u64], out: &mut [u64]) {
        let k = xs.len();
        debug_assert!(k <= LANES && out.len() == k * self.out_len);
        let p = prg();
        let n = self.n_bits;
        let mut xv = [0u64; LANES];
        let mask = domain_mask(n);
        for (v, &x) in xv.iter_mut().zip(xs) {
            *v = x & mask;
        }
        let mut nodes = [self.root; LANES];
        let mut buf = [0u128; LANES];
        for (i, &cw_l) in self.cw_seeds.iter().enumerate() {
            let shift = n - 1 - i as u32;
            let cw_r = (cw_l & SEED_MASK) | u128::from((self.cw_tr >> i) & 1);
            for q in 0..k {
                buf[q] = (nodes[q] & SEED_MASK) | u128::from((xv[q] >> shift) & 1);
            }
            p.expand_dirs(&mut buf[..k]);
            for q in 0..k {
                let cw = if (xv[q] >> shift) & 1 == 1 {
                    cw_r
                } else {
                    cw_l
                };
                nodes[q] = buf[q] ^ (cw & bit_mask(nodes[q]));
            }
        }
        let l = self.out_len;
        let low = (1u64 << self.early) - 1;
        let mut firsts = [0usize; LANES];
        for q in 0..k {
            firsts[q] = (xv[q] & low) as usize * l;
        }
        p.convert_ranges(&nodes[..k], &firsts[..k], out);
        for q in 0..k {
            let o = &mut out[q * l..(q + 1) * l];
            if nodes[q] & 1 == 1 {
                for (y, c) in o.iter_mut().zip(&self.cw_out[firsts[q]..firsts[q] + l]) {
                    *y = y.wrapping_add(*c);
                }
            }
            negate_if(self.party, o);
        }
    }

    /// Full-domain evaluation: this party's shares of `f(x)` for every `x` in
    /// `[0, 2^n)`, `L` words each, in order of `x` (`2^n * L` words) — e.g. to
    /// share a one-hot vector for a private table lookup.
    ///
    /// The tree is traversed once (each node expanded once, not `2^n` separate
    /// paths), breadth-first in 2^12-leaf subtrees that are spread over rayon
    /// threads, with batched AES. Errors if `n_bits > MAX_EVAL_ALL_BITS`.
    pub fn eval_all(&self) -> Result<Vec<u64>, FssError> {
        let too_large = FssError::DomainTooLarge {
            n_bits: self.n_bits,
            out_len: self.out_len,
            max_bits: MAX_EVAL_ALL_BITS,
        };
        if self.n_bits > MAX_EVAL_ALL_BITS {
            return Err(too_large);
        }
        let total = (1usize << self.n_bits)
            .checked_mul(self.out_len)
            .ok_or(too_large)?;
        let mut out = vec![0u64; total];
        let depth = self.depth() as u32;
        let sub = depth.min(SUBTREE_BITS);
        let top = depth - sub;
        let m = self.leaf_words();

        // Top of the tree, serially (at most 2^(n - 12) nodes).
        let mut level = vec![self.root];
        for i in 0..top as usize {
            let mut next = vec![0u128; 2 * level.len()];
            self.expand_level(i, &level, &mut next);
            level = next;
        }

        out.par_chunks_mut(m << sub)
            .zip(level.par_iter())
            .for_each(|(chunk, &node)| {
                let mut a = Vec::with_capacity(1 << sub);
                let mut b = Vec::with_capacity(1 << sub);
                a.push(node);
                for i in top..depth {
                    b.resize(2 * a.len(), 0);
                    self.expand_level(i as usize, &a, &mut b);
                    std::mem::swap(&mut a, &mut b);
                }
                prg().convert_many(&a, chunk);
                for (leaf, o) in a.iter().zip(chunk.chunks_exact_mut(m)) {
                    if leaf & 1 == 1 {
                        for (y, c) in o.iter_mut().zip(&self.cw_out) {
                            *y = y.wrapping_add(*c);
                        }
                    }
                    negate_if(self.party, o);
                }
            });
        Ok(out)
    }

    /// Expands all `parents` at level `i` into `children` (twice as many),
    /// applying the level-`i` correction word.
    fn expand_level(&self, i: usize, parents: &[u128], children: &mut [u128]) {
        let cw_l = self.cw_seeds[i];
        let cw_r = (cw_l & SEED_MASK) | u128::from((self.cw_tr >> i) & 1);
        prg().expand_many(parents, children);
        for (c, &par) in children.chunks_exact_mut(2).zip(parents) {
            let mk = bit_mask(par);
            c[0] ^= cw_l & mk;
            c[1] ^= cw_r & mk;
        }
    }

    /// Number of `u64` words of the serialised key (see [`to_words`](Self::to_words)).
    fn word_count(&self) -> usize {
        4 + 2 * self.depth() + self.leaf_words()
    }

    /// Serialised size in bytes: `8 * (4 + 2*(n - e) + L * 2^e)`.
    pub fn size_bytes(&self) -> usize {
        8 * self.word_count()
    }

    /// Serialises the key to `u64` words: header, root (2 words),
    /// `n - e` seed corrections (2 words each, `t_CW^L` in the low bit),
    /// the `t_CW^R` bit mask (1 word), the final correction (`L * 2^e` words).
    /// 128-bit values are written as (low, high) word pairs.
    pub fn to_words(&self) -> Vec<u64> {
        let mut w = Vec::with_capacity(self.word_count());
        w.push(
            Header {
                kind: KeyKind::Dpf,
                n_bits: self.n_bits,
                party: self.party,
                flags: self.early as u8,
                out_len: self.out_len,
            }
            .encode(),
        );
        push_u128(&mut w, self.root);
        for &s in &self.cw_seeds {
            push_u128(&mut w, s);
        }
        w.push(self.cw_tr);
        w.extend_from_slice(&self.cw_out);
        debug_assert_eq!(w.len(), self.word_count());
        w
    }

    /// Parses a key written by [`to_words`](Self::to_words). Any truncated,
    /// over-long or inconsistent input is reported as an [`FssError`] naming
    /// the field at fault; this never panics.
    pub fn from_words(words: &[u64]) -> Result<Self, FssError> {
        let h = Header::decode(words, KeyKind::Dpf)?;
        let early = u32::from(h.flags);
        if early > MAX_EARLY || early > h.n_bits {
            return Err(FssError::Malformed {
                field: "header.flags",
                reason: format!(
                    "early-termination levels {early}, must be at most {MAX_EARLY} and {}",
                    h.n_bits
                ),
            });
        }
        let depth = (h.n_bits - early) as usize;
        let mut r = WordReader::new(words, 1);
        let root = r.take_u128("root")?;
        if (root & 1 == 1) != h.party {
            return Err(FssError::Malformed {
                field: "root",
                reason: "control bit does not match the party index".into(),
            });
        }
        let cw_seeds = r
            .take("cw_seeds", 2 * depth)?
            .chunks_exact(2)
            .map(|c| super::join_u128(c[0], c[1]))
            .collect();
        let cw_tr = r.take("cw_tr", 1)?[0];
        if depth < 64 && cw_tr >> depth != 0 {
            return Err(FssError::Malformed {
                field: "cw_tr",
                reason: format!("bits set above the tree depth {depth}"),
            });
        }
        let cw_out = r.take("cw_out", h.out_len << early)?.to_vec();
        r.finish()?;
        Ok(DpfKey {
            n_bits: h.n_bits,
            out_len: h.out_len,
            party: h.party,
            early,
            root,
            cw_seeds,
            cw_tr,
            cw_out,
        })
    }

    /// Serialises to little-endian bytes (the words of
    /// [`to_words`](Self::to_words)).
    pub fn to_bytes(&self) -> Vec<u8> {
        words_to_bytes(&self.to_words())
    }

    /// Parses bytes written by [`to_bytes`](Self::to_bytes); never panics.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, FssError> {
        Self::from_words(&bytes_to_words(bytes)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    fn reconstruct(k0: &DpfKey, k1: &DpfKey, x: u64) -> Vec<u64> {
        k0.eval(x)
            .iter()
            .zip(k1.eval(x))
            .map(|(a, b)| a.wrapping_add(b))
            .collect()
    }

    fn expected(alpha: u64, beta: &[u64], x: u64) -> Vec<u64> {
        if x == alpha {
            beta.to_vec()
        } else {
            vec![0; beta.len()]
        }
    }

    fn check_exhaustive(n: u32, alpha: u64, l: usize, rng: &mut StdRng) {
        let beta: Vec<u64> = (0..l).map(|_| rng.gen()).collect();
        let (k0, k1) = dpf_gen(alpha, &beta, n, rng).unwrap();
        let all0 = k0.eval_all().unwrap();
        let all1 = k1.eval_all().unwrap();
        let xs: Vec<u64> = (0..1u64 << n).collect();
        let b0 = k0.eval_batch(&xs);
        let b1 = k1.eval_batch(&xs);
        assert_eq!(all0, b0, "eval_all vs eval_batch n={n}");
        assert_eq!(all1, b1, "eval_all vs eval_batch n={n}");
        for x in 0..1u64 << n {
            let e0 = k0.eval(x);
            let e1 = k1.eval(x);
            let i = x as usize * l;
            assert_eq!(&all0[i..i + l], &e0[..]);
            assert_eq!(&all1[i..i + l], &e1[..]);
            let sum: Vec<u64> = e0
                .iter()
                .zip(&e1)
                .map(|(a, b)| a.wrapping_add(*b))
                .collect();
            assert_eq!(
                sum,
                expected(alpha, &beta, x),
                "n={n} alpha={alpha} x={x} L={l}"
            );
        }
    }

    #[test]
    fn exhaustive_small_domains() {
        let mut rng = StdRng::seed_from_u64(1);
        for n in (1..=10).chain([12]) {
            let max = (1u64 << n) - 1;
            let mut alphas = vec![0, max];
            alphas.extend((0..4).map(|_| rng.gen_range(0..=max)));
            for &alpha in &alphas {
                for l in [1, 3] {
                    check_exhaustive(n, alpha, l, &mut rng);
                }
            }
        }
    }

    #[test]
    fn without_early_termination() {
        let mut rng = StdRng::seed_from_u64(2);
        for n in 1..=8 {
            let alpha = rng.gen_range(0..1u64 << n);
            let (k0, k1) = gen_with_early(alpha, &[7], n, 0, &mut rng).unwrap();
            let a0 = k0.eval_all().unwrap();
            let a1 = k1.eval_all().unwrap();
            for x in 0..1u64 << n {
                assert_eq!(reconstruct(&k0, &k1, x), expected(alpha, &[7], x));
                assert_eq!(
                    a0[x as usize].wrapping_add(a1[x as usize]),
                    if x == alpha { 7 } else { 0 }
                );
            }
            assert_eq!(DpfKey::from_words(&k1.to_words()).unwrap(), k1);
        }
    }

    /// Every early-termination width up to [`MAX_EARLY`], with one and two output words:
    /// point evaluation, full-domain evaluation and serialisation agree exhaustively.
    #[test]
    fn wider_early_termination_is_exhaustively_correct() {
        let mut rng = StdRng::seed_from_u64(3);
        for n in 1..=9 {
            for e in 0..=MAX_EARLY.min(n) {
                for beta in [vec![7u64], vec![3, u64::MAX]] {
                    let alpha = rng.gen_range(0..1u64 << n);
                    let (k0, k1) = dpf_gen_early(alpha, &beta, n, e, &mut rng).unwrap();
                    let l = beta.len();
                    let (a0, a1) = (k0.eval_all().unwrap(), k1.eval_all().unwrap());
                    for x in 0..1u64 << n {
                        let want = expected(alpha, &beta, x);
                        assert_eq!(reconstruct(&k0, &k1, x), want, "n={n} e={e} x={x}");
                        let i = x as usize * l;
                        let all: Vec<u64> =
                            (0..l).map(|j| a0[i + j].wrapping_add(a1[i + j])).collect();
                        assert_eq!(all, want, "eval_all n={n} e={e} x={x}");
                    }
                    assert_eq!(DpfKey::from_words(&k0.to_words()).unwrap(), k0);
                }
            }
        }
    }

    fn check_large(n: u32, alpha: u64, l: usize, rng: &mut StdRng) {
        let max = domain_mask(n);
        let beta: Vec<u64> = (0..l).map(|_| rng.gen()).collect();
        let (k0, k1) = dpf_gen(alpha, &beta, n, rng).unwrap();
        let mut xs = vec![
            0,
            max,
            alpha,
            alpha.wrapping_add(1) & max,
            alpha.wrapping_sub(1) & max,
        ];
        xs.extend((0..200).map(|_| rng.gen::<u64>() & max));
        xs.extend((0..64).map(|_| alpha ^ (1u64 << rng.gen_range(0..n))));
        let b0 = k0.eval_batch(&xs);
        let b1 = k1.eval_batch(&xs);
        for (i, &x) in xs.iter().enumerate() {
            let r = reconstruct(&k0, &k1, x);
            assert_eq!(
                r,
                expected(alpha, &beta, x),
                "n={n} alpha={alpha:#x} x={x:#x}"
            );
            let rb: Vec<u64> = b0[i * l..(i + 1) * l]
                .iter()
                .zip(&b1[i * l..(i + 1) * l])
                .map(|(a, b)| a.wrapping_add(*b))
                .collect();
            assert_eq!(rb, r);
        }
        // Inputs are reduced modulo 2^n.
        if n < 64 {
            assert_eq!(k0.eval(alpha | (1 << n)), k0.eval(alpha));
        }
    }

    #[test]
    fn large_domains() {
        let mut rng = StdRng::seed_from_u64(3);
        for n in [64, 37] {
            let max = domain_mask(n);
            for alpha in [0, max, rng.gen::<u64>() & max, rng.gen::<u64>() & max] {
                for l in [1, 3] {
                    check_large(n, alpha, l, &mut rng);
                }
            }
        }
    }

    #[test]
    fn single_key_looks_random() {
        let mut rng = StdRng::seed_from_u64(4);
        let (a0, _) = dpf_gen(12345, &[1], 37, &mut rng).unwrap();
        let (b0, _) = dpf_gen(12345, &[1], 37, &mut rng).unwrap();
        assert_ne!(a0.eval(12345), b0.eval(12345));
        assert_ne!(a0.eval(12345), vec![1]);
        // Outputs at distinct points differ, and the share at alpha is not beta.
        let (c0, _) = dpf_gen(5, &[9, 9, 9], 8, &mut rng).unwrap();
        let all = c0.eval_all().unwrap();
        let distinct: std::collections::HashSet<u64> = all.iter().copied().collect();
        assert_eq!(distinct.len(), all.len());
        // Roughly half of the output bits are set.
        let ones: u32 = all.iter().map(|w| w.count_ones()).sum();
        let bits = 64 * all.len() as u32;
        assert!(
            ones > bits * 45 / 100 && ones < bits * 55 / 100,
            "{ones}/{bits}"
        );
    }

    #[test]
    fn serialisation_roundtrip_and_rejection() {
        let mut rng = StdRng::seed_from_u64(5);
        for (n, l) in [(64, 1), (37, 1), (1, 1), (1, 2), (20, 3)] {
            let alpha = rng.gen::<u64>() & domain_mask(n);
            let beta: Vec<u64> = (0..l).map(|_| rng.gen()).collect();
            let (k0, k1) = dpf_gen(alpha, &beta, n, &mut rng).unwrap();
            for k in [&k0, &k1] {
                let w = k.to_words();
                assert_eq!(w.len() * 8, k.size_bytes());
                assert_eq!(&DpfKey::from_words(&w).unwrap(), k);
                assert_eq!(&DpfKey::from_bytes(&k.to_bytes()).unwrap(), k);
                for len in 0..w.len() {
                    let e = DpfKey::from_words(&w[..len]).unwrap_err();
                    assert!(matches!(e, FssError::Truncated { .. }), "{e}");
                }
                let mut long = w.clone();
                long.push(0);
                assert!(DpfKey::from_words(&long).is_err());
                assert!(DpfKey::from_bytes(&k.to_bytes()[1..]).is_err());
                // Corrupted header fields.
                for (mask, field) in [
                    (0xffu64, "version"),
                    (0xff << 8, "kind"),
                    (0x7f << 16, "n_bits"),
                    (1 << 23, "party"),
                    (0xff << 24, "flags"),
                    (0xffff_ffff << 32, "out_len"),
                ] {
                    let mut bad = w.clone();
                    bad[0] ^= mask;
                    let e = DpfKey::from_words(&bad);
                    assert!(e.is_err(), "corrupt {field} accepted");
                }
            }
        }
        // Fuzz: random word vectors and random corruptions never panic.
        let (k0, _) = dpf_gen(3, &[1], 10, &mut rng).unwrap();
        let w = k0.to_words();
        for _ in 0..2000 {
            let mut bad = w.clone();
            let i = rng.gen_range(0..bad.len());
            bad[i] = rng.gen();
            let _ = DpfKey::from_words(&bad);
            let junk: Vec<u64> = (0..rng.gen_range(0..40)).map(|_| rng.gen()).collect();
            let _ = DpfKey::from_words(&junk);
        }
        // A DCF key is not a DPF key.
        let (d0, _) = crate::fss::dcf_gen(3, &[1], 10, &mut rng).unwrap();
        assert!(DpfKey::from_words(&d0.to_words()).is_err());
    }

    #[test]
    fn key_sizes() {
        let mut rng = StdRng::seed_from_u64(6);
        let (k, _) = dpf_gen(1, &[1], 64, &mut rng).unwrap();
        assert_eq!(k.size_bytes(), 1056);
        let (k, _) = dpf_gen(1, &[1], 37, &mut rng).unwrap();
        assert_eq!(k.size_bytes(), 8 * (4 + 2 * 36 + 2));
        let (k, _) = dpf_gen(1, &[1, 2, 3], 64, &mut rng).unwrap();
        assert_eq!(k.size_bytes(), 8 * (4 + 2 * 64 + 3));
    }

    #[test]
    fn gen_errors() {
        let mut rng = StdRng::seed_from_u64(7);
        assert!(matches!(
            dpf_gen(0, &[1], 0, &mut rng),
            Err(FssError::InvalidBitWidth(0))
        ));
        assert!(matches!(
            dpf_gen(0, &[1], 65, &mut rng),
            Err(FssError::InvalidBitWidth(65))
        ));
        assert!(matches!(
            dpf_gen(16, &[1], 4, &mut rng),
            Err(FssError::AlphaOutOfRange { .. })
        ));
        assert!(matches!(
            dpf_gen(1, &[], 4, &mut rng),
            Err(FssError::EmptyBeta)
        ));
        assert!(dpf_gen(u64::MAX, &[1], 64, &mut rng).is_ok());
        let (k, _) = dpf_gen(0, &[1], 33, &mut rng).unwrap();
        assert!(matches!(k.eval_all(), Err(FssError::DomainTooLarge { .. })));
    }
}
