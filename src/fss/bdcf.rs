//! Bit-output distributed comparison functions with early termination: XOR shares of
//! `[x < alpha]` for `n`-bit unsigned `x`.
//!
//! This is the DCF of Boyle et al. EC'21 Fig. 3 over the group Z_2 (SIGMA, Gupta et al.
//! PETS'24 §3, uses the same bit-output DCF for DReLU): every per-level value `v^L, v^R`
//! and value correction `V_CW` is one bit, so a level costs one 128-bit seed correction
//! and three bits instead of `2 + L` words. The last [`BDCF_EARLY`] levels are replaced
//! by one 128-bit leaf (early termination, as BGI CCS'16 §3.2.1 does for DPFs): the leaf
//! seed is converted into 2^e bits, bit `j` being position `j` of the block under the
//! leaf, and one leaf correction of 2^e bits makes the on-path leaf output `[j < alpha mod
//! 2^e]`. Off-path leaves have equal seeds in both keys and cancel, like every level below
//! the point where `x` leaves `alpha`'s path.
//!
//! Why bits: a comparison whose result is consumed through a masked opening (DReLU in
//! [`crate::fss::material::FssRequest::DreluBit`]) needs no Z_2^64 payload. An 18-level
//! ReLU key shrinks from 78 words (payload `L = 2`) to 4 + 2 (18 - 7) + 1 + 2 = 29 words,
//! and evaluation needs one AES block per level instead of two.
//!
//! Per level the child block `H(seed | dir)` provides the control bit (bit 0), the value
//! bit (bit 1) and the 126-bit child seed (bits 2..128).
//!
//! Key words: header, root (2), `d = n - e` seed corrections with `t_CW^L` in the low
//! bit (2 each), the `t_CW^R` bits, the `V_CW` bits, then the leaf correction (2^e bits
//! in 1 or 2 words): `5 + 2d + ceil(2^e / 64)` words.

use super::dpf::random_u128;
use super::prg::prg;
use super::{domain_mask, join_u128, push_u128, FssError, Header, KeyKind};
use rand::{CryptoRng, RngCore};
use rayon::prelude::*;

/// Early-termination levels of a full-width key: a 128-bit leaf holds 2^7 outputs.
pub const BDCF_EARLY: u32 = 7;
/// Seed bits of a node: bit 0 is the control bit, bit 1 the value bit of the expansion.
const SEED: u128 = !3;
/// Evaluations walked in lockstep.
const LANES: usize = 16;
/// Evaluations per rayon task.
const PAR_CHUNK: usize = 1024;

/// Early-termination levels of an `n_bits` key.
fn early(n_bits: u32) -> u32 {
    n_bits.min(BDCF_EARLY)
}

/// Words of the leaf correction of an `n_bits` key.
fn leaf_words(n_bits: u32) -> usize {
    (1usize << early(n_bits)).div_ceil(64)
}

/// Words of one serialised bit-DCF key on `n_bits` input bits.
pub fn bdcf_key_words(n_bits: u32) -> usize {
    let d = (n_bits - early(n_bits)) as usize;
    5 + 2 * d + leaf_words(n_bits)
}

/// The low `2^e` bits of `Convert(seed)` (one AES block of the Convert key).
fn leaf_bits(seed: u128) -> u128 {
    let mut b = [seed & SEED];
    prg().convert_blocks(&mut b);
    b[0]
}

/// Mask of the low `k` bits of a u128 (`k <= 128`).
fn low128(k: u32) -> u128 {
    if k >= 128 {
        u128::MAX
    } else {
        (1u128 << k) - 1
    }
}

/// Generates the two parties' serialised keys for `[x < alpha]` on `n_bits`-bit inputs
/// (XOR-shared output bit). Errors if `n_bits` is not in `1..=64` or `alpha` does not
/// fit. (`alpha = 0` gives the zero function.)
pub fn bdcf_gen(
    alpha: u64,
    n_bits: u32,
    rng: &mut (impl RngCore + CryptoRng),
) -> Result<[Vec<u64>; 2], FssError> {
    super::check_gen_params(alpha, &[1], n_bits)?;
    let e = early(n_bits);
    let d = (n_bits - e) as usize;
    let p = prg();
    let roots = [random_u128(rng) & SEED, (random_u128(rng) & SEED) | 1];
    let mut nodes = roots;
    let mut cw = Vec::with_capacity(2 * d);
    let (mut tr_bits, mut v_bits) = (0u64, 0u64);
    let mut v_alpha = 0u64;
    let mut kids = [0u128; 4];
    for i in 0..d {
        let a = (alpha >> (n_bits as usize - 1 - i)) & 1;
        p.expand_many(&nodes, &mut kids);
        let (keep, lose) = (a as usize, 1 - a as usize);
        let v = |b: usize, dir: usize| ((kids[2 * b + dir] >> 1) & 1) as u64;
        let v_cw = v(0, lose) ^ v(1, lose) ^ v_alpha ^ u64::from(lose == 0);
        v_alpha ^= v(0, keep) ^ v(1, keep) ^ v_cw;
        let s_cw = (kids[lose] ^ kids[2 + lose]) & SEED;
        let t_l = ((kids[0] ^ kids[2]) & 1) as u64 ^ a ^ 1;
        let t_r = ((kids[1] ^ kids[3]) & 1) as u64 ^ a;
        let cw_l = s_cw | u128::from(t_l);
        let cw_keep = s_cw | u128::from(if keep == 0 { t_l } else { t_r });
        push_u128(&mut cw, cw_l);
        tr_bits |= t_r << i;
        v_bits |= v_cw << i;
        for (b, node) in nodes.iter_mut().enumerate() {
            let kid = kids[2 * b + keep] & !2;
            *node = kid ^ (cw_keep & super::bit_mask(*node));
        }
    }
    let low = alpha & ((1u64 << e) - 1);
    let mut leaf = leaf_bits(nodes[0]) ^ leaf_bits(nodes[1]) ^ low128(low as u32);
    if v_alpha == 1 {
        leaf ^= u128::MAX;
    }
    leaf &= low128(1 << e);
    let key = |party: bool| {
        let h = Header {
            kind: KeyKind::Bdcf,
            n_bits,
            party,
            flags: e as u8,
            out_len: 1,
        };
        let mut w = Vec::with_capacity(bdcf_key_words(n_bits));
        w.push(h.encode());
        push_u128(&mut w, roots[usize::from(party)]);
        w.extend_from_slice(&cw);
        w.push(tr_bits);
        w.push(v_bits);
        w.push(leaf as u64);
        if leaf_words(n_bits) == 2 {
            w.push((leaf >> 64) as u64);
        }
        w
    };
    Ok([key(false), key(true)])
}

/// Evaluates serialised bit-DCF keys stored back to back in `words` (all with one
/// header, as one dealer request produces), key `i` at the `per_key` points
/// `xs[i * per_key .. (i + 1) * per_key]` (taken modulo 2^n). Returns this party's share
/// bit (0/1) of `[x < alpha]` for every point, in the order of `xs`.
///
/// Evaluations are walked down the tree 16 at a time (one `encrypt_blocks` call per level
/// for 16 independent blocks) and spread over rayon threads. Errors (never panics) if the
/// words do not split into `xs.len() / per_key` keys of one header, or a root's control
/// bit does not match the party.
pub fn bdcf_eval_words(words: &[u64], xs: &[u64], per_key: usize) -> Result<Vec<u8>, FssError> {
    let bad = |field: &'static str, reason: String| FssError::Malformed { field, reason };
    if per_key == 0 || !xs.len().is_multiple_of(per_key) {
        return Err(bad(
            "points",
            format!("{} points for {per_key} per key", xs.len()),
        ));
    }
    let count = xs.len() / per_key;
    if count == 0 {
        return if words.is_empty() {
            Ok(vec![])
        } else {
            Err(bad("keys", format!("{} key words for 0 keys", words.len())))
        };
    }
    let h = Header::decode(words, KeyKind::Bdcf)?;
    let n = h.n_bits;
    if u32::from(h.flags) != early(n) || h.out_len != 1 {
        return Err(bad(
            "header",
            format!(
                "flags {} / L {} for a {n}-bit bit-DCF key (expected {} / 1)",
                h.flags,
                h.out_len,
                early(n)
            ),
        ));
    }
    let kw = bdcf_key_words(n);
    if Some(words.len()) != kw.checked_mul(count) {
        return Err(bad(
            "keys",
            format!("{} words for {count} keys of {kw} words", words.len()),
        ));
    }
    let first = words[0];
    for key in words.chunks_exact(kw) {
        if key[0] != first {
            return Err(bad(
                "header",
                "keys of one batch must share one header".into(),
            ));
        }
        if (key[1] & 1 == 1) != h.party {
            return Err(bad(
                "root",
                "control bit does not match the party index".into(),
            ));
        }
    }
    let e = early(n);
    let d = (n - e) as usize;
    let mask = domain_mask(n);
    let mut out = vec![0u8; xs.len()];
    out.par_chunks_mut(PAR_CHUNK)
        .zip(xs.par_chunks(PAR_CHUNK))
        .enumerate()
        .for_each(|(ci, (oc, xc))| {
            let base = ci * PAR_CHUNK;
            for (g, (og, xg)) in oc.chunks_mut(LANES).zip(xc.chunks(LANES)).enumerate() {
                let start = base + g * LANES;
                let k = xg.len();
                // Each lane's key offset, computed once (not a division per level).
                let mut koff = [0usize; LANES];
                for (q, o) in koff.iter_mut().enumerate().take(k) {
                    *o = (start + q) / per_key * kw;
                }
                let key_of = |q: usize| &words[koff[q]..][..kw];
                let mut nodes = [0u128; LANES];
                let mut acc = [0u64; LANES];
                let mut blocks = [0u128; LANES];
                let mut xv = [0u64; LANES];
                for q in 0..k {
                    let key = key_of(q);
                    nodes[q] = join_u128(key[1], key[2]);
                    xv[q] = xg[q] & mask;
                }
                for i in 0..d {
                    let shift = n as usize - 1 - i;
                    for q in 0..k {
                        let dir = (xv[q] >> shift) & 1;
                        blocks[q] = (nodes[q] & SEED) | u128::from(dir);
                    }
                    prg().expand_dirs(&mut blocks[..k]);
                    for q in 0..k {
                        let key = key_of(q);
                        let dir = (xv[q] >> shift) & 1;
                        let t = (nodes[q] & 1) as u64;
                        let v_cw = (key[4 + 2 * d] >> i) & 1;
                        acc[q] ^= ((blocks[q] >> 1) as u64 & 1) ^ (t & v_cw);
                        let cw_l = join_u128(key[3 + 2 * i], key[4 + 2 * i]);
                        // The right child's control correction replaces the low bit when
                        // dir = 1; arithmetic, not a branch on the (random) direction.
                        let l0 = cw_l & 1;
                        let tr = u128::from((key[3 + 2 * d] >> i) & 1);
                        let cw = (cw_l & !1) | (l0 ^ (u128::from(dir) & (l0 ^ tr)));
                        nodes[q] = (blocks[q] & !2) ^ (cw & super::bit_mask(nodes[q]));
                    }
                }
                for q in 0..k {
                    blocks[q] = nodes[q] & SEED;
                }
                prg().convert_blocks(&mut blocks[..k]);
                for q in 0..k {
                    let key = key_of(q);
                    let j = (xv[q] & ((1u64 << e) - 1)) as u32;
                    let lw = 5 + 2 * d;
                    let leaf_cw = if j >= 64 { key[lw + 1] } else { key[lw] };
                    let t = (nodes[q] & 1) as u64;
                    let bit = ((blocks[q] >> j) as u64 & 1) ^ (t & (leaf_cw >> (j % 64)) & 1);
                    og[q] = (acc[q] ^ bit) as u8;
                }
            }
        });
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    fn both(keys: &[Vec<u64>; 2], xs: &[u64]) -> Vec<u8> {
        let a = bdcf_eval_words(&keys[0], xs, xs.len()).unwrap();
        let b = bdcf_eval_words(&keys[1], xs, xs.len()).unwrap();
        a.iter().zip(&b).map(|(x, y)| x ^ y).collect()
    }

    #[test]
    fn exhaustive_small_domains() {
        let mut rng = StdRng::seed_from_u64(5);
        for n in 1..=12u32 {
            let max = (1u64 << n) - 1;
            let mut alphas = vec![0, 1, max, max / 2];
            alphas.extend((0..6).map(|_| rng.gen_range(0..=max)));
            let xs: Vec<u64> = (0..=max).collect();
            for &alpha in &alphas {
                let keys = bdcf_gen(alpha, n, &mut rng).unwrap();
                assert_eq!(keys[0].len(), bdcf_key_words(n));
                let got = both(&keys, &xs);
                for (&x, &g) in xs.iter().zip(&got) {
                    assert_eq!(g, u8::from(x < alpha), "n {n} alpha {alpha} x {x}");
                }
            }
        }
    }

    #[test]
    fn random_wide_domains_and_edges() {
        let mut rng = StdRng::seed_from_u64(6);
        for n in [13u32, 18, 23, 31, 40, 63, 64] {
            let mask = domain_mask(n);
            for _ in 0..20 {
                let alpha = rng.gen::<u64>() & mask;
                let keys = bdcf_gen(alpha, n, &mut rng).unwrap();
                let mut xs: Vec<u64> = (0..200).map(|_| rng.gen::<u64>() & mask).collect();
                for dx in [0u64, 1, 2, 127, 128, 129] {
                    xs.push(alpha.wrapping_add(dx) & mask);
                    xs.push(alpha.wrapping_sub(dx) & mask);
                }
                xs.extend([0, mask]);
                let got = both(&keys, &xs);
                for (&x, &g) in xs.iter().zip(&got) {
                    assert_eq!(g, u8::from(x < alpha), "n {n} alpha {alpha:#x} x {x:#x}");
                }
                // Inputs are reduced modulo 2^n.
                if n < 64 {
                    let hi: Vec<u64> = xs.iter().map(|x| x | (1u64 << n)).collect();
                    assert_eq!(both(&keys, &hi), got);
                }
            }
        }
    }

    #[test]
    fn many_keys_many_points_in_one_batch() {
        let mut rng = StdRng::seed_from_u64(7);
        let n = 18;
        let alphas: Vec<u64> = (0..300)
            .map(|_| rng.gen::<u64>() & domain_mask(n))
            .collect();
        let mut w = [vec![], vec![]];
        for &a in &alphas {
            let k = bdcf_gen(a, n, &mut rng).unwrap();
            w[0].extend(&k[0]);
            w[1].extend(&k[1]);
        }
        let xs: Vec<u64> = (0..900)
            .map(|_| rng.gen::<u64>() & domain_mask(n))
            .collect();
        let a = bdcf_eval_words(&w[0], &xs, 3).unwrap();
        let b = bdcf_eval_words(&w[1], &xs, 3).unwrap();
        for (i, &x) in xs.iter().enumerate() {
            assert_eq!(a[i] ^ b[i], u8::from(x < alphas[i / 3]));
        }
    }

    #[test]
    fn one_key_alone_is_uniform_in_alpha() {
        // A single party's output bits at fixed points look the same for two alphas.
        let mut rng = StdRng::seed_from_u64(8);
        let n = 10;
        let count = |alpha: u64, rng: &mut StdRng| -> usize {
            (0..2000)
                .map(|_| {
                    let k = bdcf_gen(alpha, n, rng).unwrap();
                    usize::from(bdcf_eval_words(&k[0], &[5], 1).unwrap()[0])
                })
                .sum()
        };
        let (a, b) = (count(0, &mut rng), count(1000, &mut rng));
        assert!(
            (800..1200).contains(&a) && (800..1200).contains(&b),
            "{a} {b}"
        );
    }

    #[test]
    fn malformed_keys_are_errors() {
        let mut rng = StdRng::seed_from_u64(9);
        let k = bdcf_gen(77, 20, &mut rng).unwrap();
        assert!(bdcf_eval_words(&k[0][..k[0].len() - 1], &[1], 1).is_err());
        let mut bad = k[0].clone();
        bad[1] ^= 1;
        assert!(bdcf_eval_words(&bad, &[1], 1).is_err());
        let mut bad = k[0].clone();
        bad[0] ^= 1 << 24;
        assert!(bdcf_eval_words(&bad, &[1], 1).is_err());
        assert!(bdcf_eval_words(&k[0], &[1, 2, 3], 2).is_err());
        assert!(bdcf_gen(1 << 20, 20, &mut rng).is_err());
        assert!(bdcf_gen(0, 0, &mut rng).is_err());
    }
}
