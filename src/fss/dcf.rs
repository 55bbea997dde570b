//! Distributed comparison functions (DCF): Boyle, Chandran, Gilboa, Gupta,
//! Ishai, Kumar, Rathee, "Function Secret Sharing for Mixed-Mode and
//! Fixed-Point Secure Computation", Eurocrypt'21, Fig. 3 (§3.1).
//!
//! The comparison function is `f(x) = beta` if `x < alpha` (unsigned, `n`-bit),
//! else `0`, with `beta` a vector of `L` elements of Z_2^64. The tree is the
//! DPF tree of BGI'16 along `alpha`; in addition every level carries a value
//! correction word `V_CW` (L words) so that the values `v^L, v^R` picked up
//! along the evaluation path sum to `beta` exactly when the path leaves
//! `alpha`'s path to the left at a level where `alpha` has a 1 bit.
//!
//! The mirrored function `beta * [x > alpha]` is obtained for free by
//! complementing all input bits (`x > alpha <=> !x < !alpha`), see
//! [`dcf_gen_gt`]. (`x >= alpha` is not offered: for `alpha = 0` it is a
//! constant that has no `n`-bit `<` form.)

use super::dpf::random_u128;
use super::prg::{prg, SEED_MASK};
use super::{
    bit_mask, bytes_to_words, check_gen_params, domain_mask, negate_if, push_u128, words_to_bytes,
    FssError, Header, KeyKind, WordReader,
};
use rand::{CryptoRng, RngCore};
use rayon::prelude::*;

/// Points evaluated in lockstep by the batched evaluator.
const LANES: usize = 16;
/// Points per rayon task in [`DcfKey::eval_batch`].
const PAR_CHUNK: usize = 512;
/// Header flag: the key computes `beta * [x > alpha]` (inputs complemented).
const FLAG_GREATER: u8 = 1;

/// One party's key for a DCF `f(x) = beta * [x < alpha]` (Boyle et al.
/// EC'21 Fig. 3), or `beta * [x > alpha]` when made by [`dcf_gen_gt`].
///
/// Produced in pairs; the two parties' outputs at the same `x` add up
/// (wrapping) to `f(x)`, while a single key reveals nothing about `alpha`,
/// `beta`.
#[derive(Clone, PartialEq, Eq)]
pub struct DcfKey {
    /// Input bit width n (1..=64).
    n_bits: u32,
    /// Output length L.
    out_len: usize,
    /// Party index b; party 1 negates its output.
    party: bool,
    /// Compute `[x > alpha]` by complementing inputs.
    greater: bool,
    /// Root node (seed, t = b in the low bit).
    root: u128,
    /// Per level: s_CW with t_CW^L in the low bit (n entries).
    cw_seeds: Vec<u128>,
    /// Bit i is t_CW^R of level i.
    cw_tr: u64,
    /// Per level value corrections V_CW, L words each (n * L words).
    cw_vals: Vec<u64>,
    /// Final correction CW^(n+1) (L words).
    cw_out: Vec<u64>,
}

impl std::fmt::Debug for DcfKey {
    /// Prints only the public parameters; key material is redacted.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DcfKey")
            .field("n_bits", &self.n_bits)
            .field("out_len", &self.out_len)
            .field("party", &u8::from(self.party))
            .field("greater", &self.greater)
            .finish_non_exhaustive()
    }
}

/// Generates a pair of DCF keys for `f(x) = beta` if `x < alpha` else `0`
/// (unsigned comparison of `n_bits`-bit values; Boyle et al. EC'21 Fig. 3,
/// `Gen^<`).
///
/// `beta.len()` is the output length `L >= 1`. Errors if `n_bits` is not in
/// `1..=64`, if `alpha >= 2^n_bits`, or if `beta` is empty or too long.
/// (`alpha = 0` gives the zero function.)
pub fn dcf_gen(
    alpha: u64,
    beta: &[u64],
    n_bits: u32,
    rng: &mut (impl RngCore + CryptoRng),
) -> Result<(DcfKey, DcfKey), FssError> {
    gen_inner(alpha, beta, n_bits, false, rng)
}

/// Generates a pair of DCF keys for `f(x) = beta` if `x > alpha` else `0`
/// (unsigned, `n_bits` bits), by running [`dcf_gen`] on `!alpha` and
/// complementing inputs at evaluation. Same errors as [`dcf_gen`].
pub fn dcf_gen_gt(
    alpha: u64,
    beta: &[u64],
    n_bits: u32,
    rng: &mut (impl RngCore + CryptoRng),
) -> Result<(DcfKey, DcfKey), FssError> {
    gen_inner(alpha, beta, n_bits, true, rng)
}

fn gen_inner(
    alpha: u64,
    beta: &[u64],
    n_bits: u32,
    greater: bool,
    rng: &mut (impl RngCore + CryptoRng),
) -> Result<(DcfKey, DcfKey), FssError> {
    check_gen_params(alpha, beta, n_bits)?;
    let alpha = if greater {
        !alpha & domain_mask(n_bits)
    } else {
        alpha
    };
    let l = beta.len();
    let n = n_bits as usize;
    let p = prg();

    let roots = [random_u128(rng) & SEED_MASK, random_u128(rng) | 1];
    let mut nodes = roots;
    let mut cw_seeds = Vec::with_capacity(n);
    let mut cw_tr = 0u64;
    let mut cw_vals = Vec::with_capacity(n * l);
    // V_alpha: sum of the on-path value shares so far (party 0 minus party 1).
    let mut v_alpha = vec![0u64; l];
    let mut kids = [0u128; 4]; // [s0^L, s0^R, s1^L, s1^R] with control bits
                               // vals[b*2L ..][..2L] = v_b^L || v_b^R = Convert words 0..2L of s_b.
    let mut vals = vec![0u64; 4 * l];
    for i in 0..n {
        let a = (alpha >> (n - 1 - i)) & 1;
        p.expand_many(&nodes, &mut kids);
        p.convert_many(&nodes, &mut vals);
        let keep = a as usize;
        let lose = 1 - keep;
        // (-1)^{t1^(i-1)}
        let neg = nodes[1] & 1 == 1;
        let sgn = |v: u64| if neg { v.wrapping_neg() } else { v };
        for j in 0..l {
            let v0_lose = vals[lose * l + j];
            let v1_lose = vals[2 * l + lose * l + j];
            let v0_keep = vals[keep * l + j];
            let v1_keep = vals[2 * l + keep * l + j];
            // V_CW = (-1)^t1 [v1^Lose - v0^Lose - V_alpha (+ beta if Lose = L)]
            let mut v = v1_lose.wrapping_sub(v0_lose).wrapping_sub(v_alpha[j]);
            if lose == 0 {
                v = v.wrapping_add(beta[j]);
            }
            let v_cw = sgn(v);
            // V_alpha <- V_alpha - v1^Keep + v0^Keep + (-1)^t1 V_CW
            v_alpha[j] = v_alpha[j]
                .wrapping_sub(v1_keep)
                .wrapping_add(v0_keep)
                .wrapping_add(sgn(v_cw));
            cw_vals.push(v_cw);
        }
        let s_cw = (kids[lose] ^ kids[2 + lose]) & SEED_MASK;
        let t_l = ((kids[0] ^ kids[2]) & 1) as u64 ^ a ^ 1;
        let t_r = ((kids[1] ^ kids[3]) & 1) as u64 ^ a;
        let cw_l = s_cw | u128::from(t_l);
        let cw_r = s_cw | u128::from(t_r);
        cw_seeds.push(cw_l);
        cw_tr |= t_r << i;
        let cw_keep = if keep == 0 { cw_l } else { cw_r };
        for (b, node) in nodes.iter_mut().enumerate() {
            *node = kids[2 * b + keep] ^ (cw_keep & bit_mask(*node));
        }
    }
    // CW^(n+1) = (-1)^{t1^(n)} [Convert(s1^(n)) - Convert(s0^(n)) - V_alpha]
    let mut c0 = vec![0u64; l];
    let mut c1 = vec![0u64; l];
    p.convert(nodes[0], 0, &mut c0);
    p.convert(nodes[1], 0, &mut c1);
    let mut cw_out: Vec<u64> = (0..l)
        .map(|j| c1[j].wrapping_sub(c0[j]).wrapping_sub(v_alpha[j]))
        .collect();
    negate_if(nodes[1] & 1 == 1, &mut cw_out);

    let key = |party: bool| DcfKey {
        n_bits,
        out_len: l,
        party,
        greater,
        root: roots[usize::from(party)],
        cw_seeds: cw_seeds.clone(),
        cw_tr,
        cw_vals: cw_vals.clone(),
        cw_out: cw_out.clone(),
    };
    Ok((key(false), key(true)))
}

/// Keys per rayon task in [`eval_words_batch`].
const WORDS_PAR_CHUNK: usize = 256;

/// Evaluates many serialised DCF keys, each at its own point, without parsing them.
///
/// `words` holds `xs.len()` keys written by [`DcfKey::to_words`] back to back, all with
/// the same header (same `n`, `L`, party and flags, as one dealer request produces); key
/// `i` is evaluated at `xs[i]` (taken modulo `2^n`) and its `L` output words are
/// `out[i*L .. (i+1)*L]` of the result. The keys are walked down the tree 16 at a time in
/// lockstep (Boyle et al. EC'21 Fig. 3 `Eval` for each), so every `encrypt_blocks` call
/// gets 16 independent blocks instead of one dependent chain, straight from the key words
/// (no per-key allocation), and chunks of keys are spread over rayon threads. Results are
/// identical to [`DcfKey::eval`] on the parsed keys.
///
/// Errors (never panics) if the words do not split into `xs.len()` keys of the length the
/// first header declares, if a key's header differs from the first one, or if a root's
/// control bit does not match the party.
pub fn eval_words_batch(words: &[u64], xs: &[u64]) -> Result<Vec<u64>, FssError> {
    if xs.is_empty() {
        if words.is_empty() {
            return Ok(vec![]);
        }
        return Err(FssError::Malformed {
            field: "keys",
            reason: format!("{} key words for 0 points", words.len()),
        });
    }
    let h = Header::decode(words, KeyKind::Dcf)?;
    if h.flags & !FLAG_GREATER != 0 {
        return Err(FssError::Malformed {
            field: "header.flags",
            reason: format!("unknown flag bits {:#x}", h.flags & !FLAG_GREATER),
        });
    }
    let l = h.out_len;
    let kw = 4 + h.n_bits as usize * (2 + l) + l;
    let need = kw.checked_mul(xs.len()).ok_or(FssError::Malformed {
        field: "keys",
        reason: "length overflows".into(),
    })?;
    if words.len() != need {
        return Err(FssError::Malformed {
            field: "keys",
            reason: format!(
                "{} words for {} keys of {kw} words (n = {}, L = {l})",
                words.len(),
                xs.len(),
                h.n_bits
            ),
        });
    }
    let first = words[0];
    let mut out = vec![0u64; xs.len() * l];
    words
        .par_chunks(WORDS_PAR_CHUNK * kw)
        .zip(xs.par_chunks(WORDS_PAR_CHUNK))
        .zip(out.par_chunks_mut(WORDS_PAR_CHUNK * l))
        .try_for_each(|((wc, xc), oc)| {
            let mut scratch = vec![0u64; LANES * l];
            for ((wg, xg), og) in wc
                .chunks(LANES * kw)
                .zip(xc.chunks(LANES))
                .zip(oc.chunks_mut(LANES * l))
            {
                for key in wg.chunks_exact(kw) {
                    if key[0] != first {
                        return Err(FssError::Malformed {
                            field: "header",
                            reason: "keys of one batch must share one header".into(),
                        });
                    }
                    if (key[1] & 1 == 1) != h.party {
                        return Err(FssError::Malformed {
                            field: "root",
                            reason: "control bit does not match the party index".into(),
                        });
                    }
                }
                words_group(&h, kw, wg, xg, og, &mut scratch);
            }
            Ok(())
        })?;
    Ok(out)
}

/// Lockstep `Eval` of up to `LANES` serialised keys (validated by the caller), key `q` at
/// `xs[q]`. Word offsets follow [`DcfKey::to_words`]: root at 1, seed corrections at
/// `3 + 2i`, `t_CW^R` mask at `3 + 2n`, value corrections at `4 + 2n + i L`, final
/// correction at `4 + 2n + n L`.
fn words_group(h: &Header, kw: usize, keys: &[u64], xs: &[u64], out: &mut [u64], vals: &mut [u64]) {
    let k = xs.len();
    let l = h.out_len;
    let n = h.n_bits as usize;
    debug_assert!(k <= LANES && keys.len() == k * kw && out.len() == k * l);
    let p = prg();
    let mask = domain_mask(h.n_bits);
    let flip = if h.flags & FLAG_GREATER != 0 {
        u64::MAX
    } else {
        0
    };
    // One sequential pass over the group's key words (one stream the hardware prefetcher
    // follows) brings them into cache; the level-by-level walk below touches 16 keys at a
    // time and would otherwise miss on every level.
    std::hint::black_box(keys.iter().fold(0u64, |a, &w| a ^ w));
    let at = |q: usize, i: usize| super::join_u128(keys[q * kw + i], keys[q * kw + i + 1]);
    let mut xv = [0u64; LANES];
    let mut nodes = [0u128; LANES];
    for q in 0..k {
        xv[q] = (xs[q] ^ flip) & mask;
        nodes[q] = at(q, 1);
    }
    out.fill(0);
    let vals = &mut vals[..k * l];
    let mut seeds = [0u128; LANES];
    let mut conv = [0u128; LANES];
    let mut firsts = [0usize; LANES];
    let vbase = 4 + 2 * n;
    for i in 0..n {
        let shift = (n - 1 - i) as u32;
        for q in 0..k {
            let dir = (xv[q] >> shift) & 1;
            let s = nodes[q] & SEED_MASK;
            seeds[q] = s | u128::from(dir);
            // L = 1: block 0, half `dir`; L = 2: block `dir`, both halves.
            conv[q] = if l == 2 { s | u128::from(dir) } else { s };
            firsts[q] = dir as usize * l;
        }
        p.expand_dirs(&mut seeds[..k]);
        if l <= 2 {
            p.convert_blocks(&mut conv[..k]);
        } else {
            p.convert_ranges(&nodes[..k], &firsts[..k], vals);
        }
        for q in 0..k {
            let dir = (xv[q] >> shift) & 1;
            let t = nodes[q] & 1;
            let tm = 0u64.wrapping_sub(t as u64);
            let base = q * kw;
            let v_cw = &keys[base + vbase + i * l..base + vbase + (i + 1) * l];
            let o = &mut out[q * l..(q + 1) * l];
            match l {
                1 => {
                    let v = (conv[q] >> (64 * dir)) as u64;
                    o[0] = o[0].wrapping_add(v).wrapping_add(v_cw[0] & tm);
                }
                2 => {
                    o[0] = o[0].wrapping_add(conv[q] as u64).wrapping_add(v_cw[0] & tm);
                    o[1] = o[1]
                        .wrapping_add((conv[q] >> 64) as u64)
                        .wrapping_add(v_cw[1] & tm);
                }
                _ => {
                    for ((y, v), c) in o.iter_mut().zip(&vals[q * l..(q + 1) * l]).zip(v_cw) {
                        *y = y.wrapping_add(*v).wrapping_add(c & tm);
                    }
                }
            }
            let cw_l = at(q, 3 + 2 * i);
            let cw = if dir == 1 {
                (cw_l & SEED_MASK) | u128::from((keys[base + 3 + 2 * n] >> i) & 1)
            } else {
                cw_l
            };
            nodes[q] = seeds[q] ^ (cw & bit_mask(t));
        }
    }
    // V += Convert(s^(n)) + t^(n) CW^(n+1), then (-1)^b.
    if l <= 2 {
        for q in 0..k {
            conv[q] = nodes[q] & SEED_MASK;
        }
        p.convert_blocks(&mut conv[..k]);
        for q in 0..k {
            vals[q * l] = conv[q] as u64;
            if l == 2 {
                vals[q * l + 1] = (conv[q] >> 64) as u64;
            }
        }
    } else {
        let zeros = [0usize; LANES];
        p.convert_ranges(&nodes[..k], &zeros[..k], vals);
    }
    let obase = vbase + n * l;
    for q in 0..k {
        let tm = 0u64.wrapping_sub((nodes[q] & 1) as u64);
        let c_out = &keys[q * kw + obase..q * kw + obase + l];
        let o = &mut out[q * l..(q + 1) * l];
        for ((y, v), c) in o.iter_mut().zip(&vals[q * l..(q + 1) * l]).zip(c_out) {
            *y = y.wrapping_add(*v).wrapping_add(c & tm);
        }
        negate_if(h.party, o);
    }
}

impl DcfKey {
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

    /// True if the key computes `beta * [x > alpha]` rather than `[x < alpha]`.
    pub fn is_greater_than(&self) -> bool {
        self.greater
    }

    /// Evaluates this party's share of `f(x)` (`L` words). Only the low
    /// `n_bits` bits of `x` are used (inputs are reduced modulo `2^n`).
    pub fn eval(&self, x: u64) -> Vec<u64> {
        let mut out = vec![0u64; self.out_len];
        let mut scratch = vec![0u64; self.out_len];
        self.eval_group(&[x], &mut out, &mut scratch);
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
            "DcfKey::eval_into: out.len() must equal L"
        );
        if self.out_len == 1 {
            let mut scratch = [0u64; 1];
            self.eval_group(&[x], out, &mut scratch);
        } else {
            let mut scratch = vec![0u64; self.out_len];
            self.eval_group(&[x], out, &mut scratch);
        }
    }

    /// Evaluates the share at every `x` in `xs` in parallel (rayon), walking
    /// 16 points at a time down the tree in lockstep so AES calls are batched.
    /// Returns `xs.len() * L` words, the outputs for `xs[i]` at
    /// `[i*L, (i+1)*L)`.
    pub fn eval_batch(&self, xs: &[u64]) -> Vec<u64> {
        let l = self.out_len;
        let mut out = vec![0u64; xs.len() * l];
        xs.par_chunks(PAR_CHUNK)
            .zip(out.par_chunks_mut(PAR_CHUNK * l))
            .for_each(|(xc, oc)| {
                let mut scratch = vec![0u64; LANES * l];
                for (xg, og) in xc.chunks(LANES).zip(oc.chunks_mut(LANES * l)) {
                    self.eval_group(xg, og, &mut scratch);
                }
            });
        out
    }

    /// EC'21 Fig. 3 `Eval` for up to `LANES` points in lockstep. Per level and
    /// point: one AES block for the child seed on the path and one for the
    /// value `v^{x_i}` (Convert of the parent seed).
    fn eval_group(&self, xs: &[u64], out: &mut [u64], scratch: &mut [u64]) {
        if self.out_len == 1 {
            return self.eval_group_l1(xs, out);
        }
        let k = xs.len();
        let l = self.out_len;
        debug_assert!(k <= LANES && out.len() == k * l && scratch.len() >= k * l);
        let p = prg();
        let n = self.n_bits;
        let mask = domain_mask(n);
        let flip = if self.greater { u64::MAX } else { 0 };
        let mut xv = [0u64; LANES];
        for (v, &x) in xv.iter_mut().zip(xs) {
            *v = (x ^ flip) & mask;
        }
        out.fill(0);
        let vals = &mut scratch[..k * l];
        let mut nodes = [self.root; LANES];
        let mut buf = [0u128; LANES];
        let mut firsts = [0usize; LANES];
        for (i, &cw_l) in self.cw_seeds.iter().enumerate() {
            let shift = n - 1 - i as u32;
            let cw_r = (cw_l & SEED_MASK) | u128::from((self.cw_tr >> i) & 1);
            for q in 0..k {
                let dir = (xv[q] >> shift) & 1;
                firsts[q] = dir as usize * l;
                buf[q] = (nodes[q] & SEED_MASK) | u128::from(dir);
            }
            p.convert_ranges(&nodes[..k], &firsts[..k], vals);
            p.expand_dirs(&mut buf[..k]);
            let v_cw = &self.cw_vals[i * l..(i + 1) * l];
            for q in 0..k {
                // V += v^{x_i} + t * V_CW   (sign applied at the end)
                let tm = 0u64.wrapping_sub((nodes[q] & 1) as u64);
                for ((y, v), c) in out[q * l..(q + 1) * l]
                    .iter_mut()
                    .zip(&vals[q * l..(q + 1) * l])
                    .zip(v_cw)
                {
                    *y = y.wrapping_add(*v).wrapping_add(c & tm);
                }
                let cw = if (xv[q] >> shift) & 1 == 1 {
                    cw_r
                } else {
                    cw_l
                };
                nodes[q] = buf[q] ^ (cw & bit_mask(nodes[q]));
            }
        }
        // V += Convert(s^(n)) + t^(n) * CW^(n+1), then multiply by (-1)^b.
        let zeros = [0usize; LANES];
        p.convert_ranges(&nodes[..k], &zeros[..k], vals);
        for q in 0..k {
            let tm = 0u64.wrapping_sub((nodes[q] & 1) as u64);
            let o = &mut out[q * l..(q + 1) * l];
            for ((y, v), c) in o
                .iter_mut()
                .zip(&vals[q * l..(q + 1) * l])
                .zip(&self.cw_out)
            {
                *y = y.wrapping_add(*v).wrapping_add(c & tm);
            }
            negate_if(self.party, o);
        }
    }

    /// [`eval_group`](Self::eval_group) specialised to `L = 1`: the value
    /// `v^{x_i}` is the low or high half of block 0 of `Convert(s)`.
    fn eval_group_l1(&self, xs: &[u64], out: &mut [u64]) {
        let k = xs.len();
        debug_assert!(k <= LANES && out.len() == k);
        let p = prg();
        let n = self.n_bits;
        let mask = domain_mask(n);
        let flip = if self.greater { u64::MAX } else { 0 };
        let mut xv = [0u64; LANES];
        for (v, &x) in xv.iter_mut().zip(xs) {
            *v = (x ^ flip) & mask;
        }
        let mut acc = [0u64; LANES];
        let mut nodes = [self.root; LANES];
        let mut seeds = [0u128; LANES];
        let mut vals = [0u128; LANES];
        for (i, (&cw_l, &v_cw)) in self.cw_seeds.iter().zip(&self.cw_vals).enumerate() {
            let shift = n - 1 - i as u32;
            let cw_r = (cw_l & SEED_MASK) | u128::from((self.cw_tr >> i) & 1);
            for q in 0..k {
                let s = nodes[q] & SEED_MASK;
                seeds[q] = s | u128::from((xv[q] >> shift) & 1);
                vals[q] = s;
            }
            p.expand_dirs(&mut seeds[..k]);
            p.convert_blocks(&mut vals[..k]);
            for q in 0..k {
                let dir = (xv[q] >> shift) & 1;
                let t = nodes[q] & 1;
                let v = (vals[q] >> (64 * dir)) as u64;
                acc[q] = acc[q]
                    .wrapping_add(v)
                    .wrapping_add(v_cw & 0u64.wrapping_sub(t as u64));
                let cw = if dir == 1 { cw_r } else { cw_l };
                nodes[q] = seeds[q] ^ (cw & bit_mask(t));
            }
        }
        for q in 0..k {
            vals[q] = nodes[q] & SEED_MASK;
        }
        p.convert_blocks(&mut vals[..k]);
        for q in 0..k {
            let t = (nodes[q] & 1) as u64;
            let y = acc[q]
                .wrapping_add(vals[q] as u64)
                .wrapping_add(self.cw_out[0] & 0u64.wrapping_sub(t));
            out[q] = if self.party { y.wrapping_neg() } else { y };
        }
    }

    /// Number of `u64` words of the serialised key.
    fn word_count(&self) -> usize {
        4 + self.n_bits as usize * (2 + self.out_len) + self.out_len
    }

    /// Serialised size in bytes: `8 * (4 + n*(2 + L) + L)`.
    pub fn size_bytes(&self) -> usize {
        8 * self.word_count()
    }

    /// Serialises the key to `u64` words: header, root (2 words), `n` seed
    /// corrections (2 words each, `t_CW^L` in the low bit), the `t_CW^R` bit
    /// mask (1 word), `n * L` value corrections `V_CW` (level-major), and the
    /// final correction (`L` words). 128-bit values are (low, high) pairs.
    pub fn to_words(&self) -> Vec<u64> {
        let mut w = Vec::with_capacity(self.word_count());
        w.push(
            Header {
                kind: KeyKind::Dcf,
                n_bits: self.n_bits,
                party: self.party,
                flags: if self.greater { FLAG_GREATER } else { 0 },
                out_len: self.out_len,
            }
            .encode(),
        );
        push_u128(&mut w, self.root);
        for &s in &self.cw_seeds {
            push_u128(&mut w, s);
        }
        w.push(self.cw_tr);
        w.extend_from_slice(&self.cw_vals);
        w.extend_from_slice(&self.cw_out);
        debug_assert_eq!(w.len(), self.word_count());
        w
    }

    /// Parses a key written by [`to_words`](Self::to_words). Truncated,
    /// over-long or inconsistent input is an [`FssError`] naming the field at
    /// fault; this never panics.
    pub fn from_words(words: &[u64]) -> Result<Self, FssError> {
        let h = Header::decode(words, KeyKind::Dcf)?;
        if h.flags & !FLAG_GREATER != 0 {
            return Err(FssError::Malformed {
                field: "header.flags",
                reason: format!("unknown flag bits {:#x}", h.flags & !FLAG_GREATER),
            });
        }
        let n = h.n_bits as usize;
        let mut r = WordReader::new(words, 1);
        let root = r.take_u128("root")?;
        if (root & 1 == 1) != h.party {
            return Err(FssError::Malformed {
                field: "root",
                reason: "control bit does not match the party index".into(),
            });
        }
        let cw_seeds = r
            .take("cw_seeds", 2 * n)?
            .chunks_exact(2)
            .map(|c| super::join_u128(c[0], c[1]))
            .collect();
        let cw_tr = r.take("cw_tr", 1)?[0];
        if n < 64 && cw_tr >> n != 0 {
            return Err(FssError::Malformed {
                field: "cw_tr",
                reason: format!("bits set above the tree depth {n}"),
            });
        }
        let cw_vals = r.take("cw_vals", n * h.out_len)?.to_vec();
        let cw_out = r.take("cw_out", h.out_len)?.to_vec();
        r.finish()?;
        Ok(DcfKey {
            n_bits: h.n_bits,
            out_len: h.out_len,
            party: h.party,
            greater: h.flags & FLAG_GREATER != 0,
            root,
            cw_seeds,
            cw_tr,
            cw_vals,
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

    fn reconstruct(k0: &DcfKey, k1: &DcfKey, x: u64) -> Vec<u64> {
        k0.eval(x)
            .iter()
            .zip(k1.eval(x))
            .map(|(a, b)| a.wrapping_add(b))
            .collect()
    }

    fn expected(alpha: u64, beta: &[u64], x: u64, greater: bool) -> Vec<u64> {
        let hit = if greater { x > alpha } else { x < alpha };
        if hit {
            beta.to_vec()
        } else {
            vec![0; beta.len()]
        }
    }

    fn gen(alpha: u64, beta: &[u64], n: u32, greater: bool, rng: &mut StdRng) -> (DcfKey, DcfKey) {
        if greater {
            dcf_gen_gt(alpha, beta, n, rng).unwrap()
        } else {
            dcf_gen(alpha, beta, n, rng).unwrap()
        }
    }

    #[test]
    fn exhaustive_small_domains() {
        let mut rng = StdRng::seed_from_u64(11);
        for n in (1..=10).chain([12]) {
            let max = (1u64 << n) - 1;
            let mut alphas = vec![0, max];
            alphas.extend((0..4).map(|_| rng.gen_range(0..=max)));
            let xs: Vec<u64> = (0..=max).collect();
            for &alpha in &alphas {
                for l in [1, 3] {
                    for greater in [false, true] {
                        let beta: Vec<u64> = (0..l).map(|_| rng.gen()).collect();
                        let (k0, k1) = gen(alpha, &beta, n, greater, &mut rng);
                        let b0 = k0.eval_batch(&xs);
                        let b1 = k1.eval_batch(&xs);
                        for &x in &xs {
                            let e0 = k0.eval(x);
                            let e1 = k1.eval(x);
                            let i = x as usize * l;
                            assert_eq!(&b0[i..i + l], &e0[..]);
                            assert_eq!(&b1[i..i + l], &e1[..]);
                            let sum: Vec<u64> = e0
                                .iter()
                                .zip(&e1)
                                .map(|(a, b)| a.wrapping_add(*b))
                                .collect();
                            assert_eq!(
                                sum,
                                expected(alpha, &beta, x, greater),
                                "n={n} alpha={alpha} x={x} L={l} gt={greater}"
                            );
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn large_domains() {
        let mut rng = StdRng::seed_from_u64(12);
        for n in [64, 37] {
            let max = domain_mask(n);
            for alpha in [
                0,
                max,
                rng.gen::<u64>() & max,
                rng.gen::<u64>() & max,
                1,
                max - 1,
            ] {
                for l in [1, 3] {
                    for greater in [false, true] {
                        let beta: Vec<u64> = (0..l).map(|_| rng.gen()).collect();
                        let (k0, k1) = gen(alpha, &beta, n, greater, &mut rng);
                        let mut xs = vec![0, max, alpha];
                        if alpha < max {
                            xs.push(alpha + 1);
                        }
                        if alpha > 0 {
                            xs.push(alpha - 1);
                        }
                        xs.extend((0..200).map(|_| rng.gen::<u64>() & max));
                        xs.extend((0..64).map(|_| alpha ^ (1u64 << rng.gen_range(0..n))));
                        let b0 = k0.eval_batch(&xs);
                        let b1 = k1.eval_batch(&xs);
                        for (i, &x) in xs.iter().enumerate() {
                            let r = reconstruct(&k0, &k1, x);
                            assert_eq!(
                                r,
                                expected(alpha, &beta, x, greater),
                                "n={n} alpha={alpha:#x} x={x:#x}"
                            );
                            for j in 0..l {
                                assert_eq!(b0[i * l + j].wrapping_add(b1[i * l + j]), r[j]);
                            }
                        }
                        let mut o = vec![0u64; l];
                        k1.eval_into(alpha, &mut o);
                        assert_eq!(o, k1.eval(alpha));
                        if n < 64 {
                            assert_eq!(k0.eval(3 | (1 << n)), k0.eval(3));
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn single_key_looks_random() {
        let mut rng = StdRng::seed_from_u64(13);
        let alpha = 1 << 40;
        let (a0, _) = dcf_gen(alpha, &[1], 64, &mut rng).unwrap();
        let (b0, _) = dcf_gen(alpha, &[1], 64, &mut rng).unwrap();
        assert_ne!(a0.eval(alpha), b0.eval(alpha));
        assert_ne!(a0.eval(0), b0.eval(0));
        let xs: Vec<u64> = (0..1000).map(|i| i * 0x1234_5678_9abc).collect();
        let outs = a0.eval_batch(&xs);
        let ones: u32 = outs.iter().map(|w| w.count_ones()).sum();
        let bits = 64 * outs.len() as u32;
        assert!(
            ones > bits * 45 / 100 && ones < bits * 55 / 100,
            "{ones}/{bits}"
        );
    }

    #[test]
    fn serialisation_roundtrip_and_rejection() {
        let mut rng = StdRng::seed_from_u64(14);
        for (n, l, gt) in [(64, 1, false), (37, 1, true), (1, 1, false), (20, 3, true)] {
            let alpha = rng.gen::<u64>() & domain_mask(n);
            let beta: Vec<u64> = (0..l).map(|_| rng.gen()).collect();
            let (k0, k1) = gen(alpha, &beta, n, gt, &mut rng);
            for k in [&k0, &k1] {
                let w = k.to_words();
                assert_eq!(w.len() * 8, k.size_bytes());
                let back = DcfKey::from_words(&w).unwrap();
                assert_eq!(&back, k);
                assert_eq!(back.is_greater_than(), gt);
                assert_eq!(&DcfKey::from_bytes(&k.to_bytes()).unwrap(), k);
                for len in 0..w.len() {
                    let e = DcfKey::from_words(&w[..len]).unwrap_err();
                    assert!(matches!(e, FssError::Truncated { .. }), "{e}");
                }
                let mut long = w.clone();
                long.push(0);
                assert!(DcfKey::from_words(&long).is_err());
                for mask in [
                    0xffu64,
                    0xff << 8,
                    0x7f << 16,
                    1 << 23,
                    0xfe << 24,
                    0xffff_ffff << 32,
                ] {
                    let mut bad = w.clone();
                    bad[0] ^= mask;
                    assert!(
                        DcfKey::from_words(&bad).is_err(),
                        "header mask {mask:#x} accepted"
                    );
                }
            }
        }
        let (k0, _) = dcf_gen(3, &[1], 10, &mut rng).unwrap();
        let w = k0.to_words();
        for _ in 0..2000 {
            let mut bad = w.clone();
            let i = rng.gen_range(0..bad.len());
            bad[i] = rng.gen();
            let _ = DcfKey::from_words(&bad);
            let junk: Vec<u64> = (0..rng.gen_range(0..60)).map(|_| rng.gen()).collect();
            let _ = DcfKey::from_words(&junk);
        }
        let (d0, _) = crate::fss::dpf_gen(3, &[1], 10, &mut rng).unwrap();
        assert!(DcfKey::from_words(&d0.to_words()).is_err());
        let e = DcfKey::from_words(&w[..5]).unwrap_err().to_string();
        assert!(e.contains("cw_seeds"), "{e}");
    }

    #[test]
    fn word_batch_matches_single_evaluation() {
        let mut rng = StdRng::seed_from_u64(17);
        for (n, l, gt) in [
            (1u32, 1usize, false),
            (7, 1, true),
            (31, 2, false),
            (21, 2, true),
            (32, 1, false),
            (64, 1, true),
            (64, 2, false),
            (20, 3, false),
            (12, 7, true),
        ] {
            for count in [1usize, 5, 16, 17, 300] {
                let mut words = vec![];
                let mut keys = vec![];
                let mut xs = vec![];
                for _ in 0..count {
                    let alpha = rng.gen::<u64>() & domain_mask(n);
                    let beta: Vec<u64> = (0..l).map(|_| rng.gen()).collect();
                    let (k0, k1) = gen(alpha, &beta, n, gt, &mut rng);
                    words.extend(k1.to_words());
                    xs.push(match rng.gen_range(0..3) {
                        0 => alpha,
                        1 => alpha ^ 1,
                        _ => rng.gen(),
                    });
                    keys.push((k0, k1));
                }
                let got = eval_words_batch(&words, &xs).unwrap();
                let w0: Vec<u64> = keys.iter().flat_map(|k| k.0.to_words()).collect();
                let got0 = eval_words_batch(&w0, &xs).unwrap();
                for (i, (k0, k1)) in keys.iter().enumerate() {
                    assert_eq!(&got[i * l..(i + 1) * l], &k1.eval(xs[i])[..], "n={n} l={l}");
                    assert_eq!(&got0[i * l..(i + 1) * l], &k0.eval(xs[i])[..]);
                }
            }
        }
        let (k0, k1) = dcf_gen(3, &[1], 10, &mut rng).unwrap();
        let (j0, _) = dcf_gen(3, &[1], 11, &mut rng).unwrap();
        let w = k0.to_words();
        assert!(eval_words_batch(&w, &[1, 2]).is_err());
        assert!(eval_words_batch(&w[..w.len() - 1], &[1]).is_err());
        assert!(eval_words_batch(&w, &[]).is_err());
        assert!(eval_words_batch(&[], &[]).unwrap().is_empty());
        let mixed: Vec<u64> = [k0.to_words(), k1.to_words()].concat();
        assert!(eval_words_batch(&mixed, &[1, 2]).is_err());
        let mixed: Vec<u64> = [k0.to_words(), j0.to_words()].concat();
        assert!(eval_words_batch(&mixed, &[1, 2]).is_err());
        for _ in 0..500 {
            let mut bad = w.clone();
            let i = rng.gen_range(0..bad.len());
            bad[i] = rng.gen();
            let _ = eval_words_batch(&bad, &[5]);
        }
    }

    #[test]
    fn key_sizes() {
        let mut rng = StdRng::seed_from_u64(15);
        let (k, _) = dcf_gen(1, &[1], 64, &mut rng).unwrap();
        assert_eq!(k.size_bytes(), 1576);
        let (k, _) = dcf_gen(1, &[1], 37, &mut rng).unwrap();
        assert_eq!(k.size_bytes(), 928);
    }

    #[test]
    fn gen_errors() {
        let mut rng = StdRng::seed_from_u64(16);
        assert!(matches!(
            dcf_gen(0, &[1], 0, &mut rng),
            Err(FssError::InvalidBitWidth(0))
        ));
        assert!(matches!(
            dcf_gen(0, &[1], 65, &mut rng),
            Err(FssError::InvalidBitWidth(65))
        ));
        assert!(matches!(
            dcf_gen(1 << 37, &[1], 37, &mut rng),
            Err(FssError::AlphaOutOfRange { .. })
        ));
        assert!(matches!(
            dcf_gen_gt(1 << 37, &[1], 37, &mut rng),
            Err(FssError::AlphaOutOfRange { .. })
        ));
        assert!(matches!(
            dcf_gen(1, &[], 4, &mut rng),
            Err(FssError::EmptyBeta)
        ));
    }
}
