//! Small-domain lookup tables by a DPF (Boyle-Gilboa-Ishai CCS'16; the full-domain
//! "one-hot" lookup of Boyle et al. EC'21 §3.2 / SIGMA §4.4).
//!
//! For an index x of `bits` bits (x taken mod 2^bits) and a public table T of 2^bits ring
//! elements: the dealer deals a mask r and DPF keys for the point function [z == r mod
//! 2^bits]; the parties open c = x + r, each evaluates its key over the whole domain
//! and takes the inner product with the table rotated by c:
//! sum_z e_b(z) T\[(c - z) mod 2^bits\], which at z = r is T\[x\]. One round after the
//! opening; 3PC runs it between P0 and P1 with P2 dealing and returns a pair.

use crate::compare::{fss_material, open_masked};
use tessera::error::{Error, Result};
use tessera::fss::material::{dpf_lookup, FssRequest, MAX_LUT_BITS};
use tessera::{Party, Shared};

/// \[T\[x mod 2^bits\]\] for a public table of 2^bits ring elements (bits in
/// 1..=[`MAX_LUT_BITS`]; a signed x in [-2^(bits-1), 2^(bits-1)) indexes by its two's
/// complement, so a table for signed inputs stores its negative half at the top).
///
/// Rounds: 1 in both settings (3PC returns a pair). Online words sent per party: n for
/// P0 and P1, 0 for P2. Dealer: one DPF key per element per party, 8 (2 bits + 4)
/// bytes (160 B for bits = 8). Local work: a full-domain DPF evaluation and a
/// 2^bits inner product per element. BGI CCS'16 §3 (DPF), Boyle et al. EC'21 §3.2.
pub fn lut(p: &mut Party, x: &Shared, table: &[u64], bits: u32) -> Result<Shared> {
    if !(1..=MAX_LUT_BITS).contains(&bits) {
        return Err(Error::Unsupported(format!(
            "lut: bits = {bits} outside 1..={MAX_LUT_BITS}"
        )));
    }
    if table.len() != 1 << bits {
        return Err(Error::shape(
            "lut",
            format!(
                "table of {} entries for a {bits}-bit index (needs {})",
                table.len(),
                1u64 << bits
            ),
        ));
    }
    let y = p.additive_view(x);
    let z = lut2(p, &y, table, bits)?;
    Shared::pair(p, x.shape(), z)
}

/// [`lut`] on 2-of-2 shares (P2: zeros), without the 3PC conversions.
pub(crate) fn lut2(p: &mut Party, y: &[u64], table: &[u64], bits: u32) -> Result<Vec<u64>> {
    let n = y.len();
    let Some(m) = fss_material(p, FssRequest::Lut { n, bits })? else {
        return Ok(vec![0; n]);
    };
    let c = open_masked(p, y, &m.parts[0], "lut open")?;
    Ok(dpf_lookup(&m.parts[1], &c, &[table])?.remove(0))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compare::tests::{assert_one_opening, unary, SETTINGS};
    use rand::Rng;
    use tessera::{Setting, Tensor};

    #[test]
    fn lut_is_exact_over_the_whole_8_bit_domain() {
        let bits = 8;
        let mut r = crate::compare::tests::rng();
        let table: Vec<u64> = (0..256).map(|_| r.gen()).collect();
        // Every index, plus the same indices with garbage above bit 8 (ignored).
        let mut v: Vec<u64> = (0..256).collect();
        v.extend((0..256u64).map(|i| i | (r.gen::<u64>() << 8)));
        let x = Tensor::from_vec(&[v.len()], v.clone()).unwrap();
        for s in SETTINGS {
            let (z, st) = unary(s, &x, |p, a| lut(p, a, &table, bits));
            assert_one_opening(s, &st, v.len());
            for (i, got) in v.iter().zip(z.data()) {
                assert_eq!(*got, table[(*i & 255) as usize], "{s:?} index {i}");
            }
        }
    }

    #[test]
    fn lut_small_and_signed_domains() {
        // A 4-bit signed table: T[x] = 3x for x in [-8, 8).
        let bits = 4;
        let table: Vec<u64> = (0..16i64)
            .map(|z| (3 * if z >= 8 { z - 16 } else { z }) as u64)
            .collect();
        let v: Vec<u64> = (-8i64..8).map(|x| x as u64).collect();
        let x = Tensor::from_vec(&[4, 4], v.clone()).unwrap();
        for s in [Setting::ThreePc, Setting::TwoPc] {
            let (z, _) = unary(s, &x, |p, a| lut(p, a, &table, bits));
            for (a, b) in v.iter().zip(z.data()) {
                assert_eq!(*b as i64, 3 * (*a as i64));
            }
            let (z, _) = unary(s, &x, |p, a| lut(p, a, &[5, 9], 1));
            for (a, b) in v.iter().zip(z.data()) {
                assert_eq!(*b, if a & 1 == 1 { 9 } else { 5 });
            }
        }
        let e = tessera::runtime::run(Setting::TwoPc, |p| {
            let x = Shared::zeros(p, &[2]);
            lut(p, &x, &[1, 2, 3], 2).map(|_| ())
        })
        .unwrap_err();
        assert!(e.to_string().contains("lut"), "{e}");
    }
}
