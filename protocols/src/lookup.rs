//! Private row lookup in a secret table: the data owner (P0) knows the indices (its token
//! ids), the table is secret-shared (a model's word embeddings), and the parties end with
//! shares of the selected rows. Two-server PIR with DPF keys (Boyle-Gilboa-Ishai CCS'16
//! §1, full-domain evaluation as in Floram), on the share components that two parties
//! hold in common, so nothing of the size seq x vocab is ever sent.
//!
//! ## Why this shape
//! PUMA multiplies a one-hot [seq, vocab] input by the table: in 2PC that opens seq x vocab
//! words each way (31 MB per party for seq 128 and BERT's 30522 tokens). The issue's
//! alternative (open idx + r, evaluate a DPF over the domain, inner product with the table
//! shares) still needs the products of one party's DPF share with the *other* party's
//! table share. Here every DPF inner product runs on a table component that *both*
//! evaluating parties hold, so it is local:
//! - **3PC** (replicated W = W0 + W1 + W2, P_i holds W_i, W_{i+1}): P0 adds its own rows of
//!   W0 + W1; W2 is held by P1 and P2, so P0 deals a DPF key pair for each index to P1 and
//!   P2, who evaluate it over the whole domain and multiply by W2 (a [seq, 2^m] x
//!   [vocab, H] product). The three partial sums form a 3-of-3 sharing, re-randomised by a
//!   zero-sharing and reshared (1 round, seq x H words each).
//! - **2PC** (W prepared: F = W - B public to P0 and P1, B = B0 + B1 the fixed mask of the
//!   table's key, B0 derived from the P0-dealer seed and B1 from the P1-dealer seed): P0
//!   adds F and B0 rows; B1 is known to P1 and the dealer, so they are the two PIR servers.
//!   The dealer returns its sum to P0 masked by a pad from the stream it shares with P1
//!   (P1 subtracts the pad). The dealer takes part online here (one message per lookup
//!   from P0, one to it), and learns nothing: it sees a DPF key, and it never sees F.
//!
//! Security: a DPF key alone is pseudorandom (it hides the index from its evaluator); the
//! values P0 receives are masked by pads it does not know (zero-sharing in 3PC, the
//! dealer-P1 stream in 2PC). P0 knows the indices by definition (it is the data owner).
//! Online cost: 1 round of DPF keys from P0 (about 34 words per index for 15-bit domains)
//! plus 1 round of seq x H words (3PC reshare / 2PC dealer to P0). Local work: one
//! full-domain DPF evaluation per index and a [seq, vocab] x [vocab, H] u64 product at the
//! two servers.

use crate::arith::{reshare3, PreparedWeight};
use tessera::error::{Error, PartyId, Result};
use tessera::fss::dpf::{dpf_gen, DpfKey};
use tessera::party::DEALER;
use tessera::preproc::{Demand, Request};
use tessera::{Party, Setting, Shared, Tensor};

/// The party that knows the indices.
pub const INDEX_OWNER: PartyId = 0;

/// Input bits of the DPF for a table of `rows` rows.
fn domain_bits(rows: usize) -> u32 {
    (usize::BITS - (rows.max(2) - 1).leading_zeros()).max(1)
}

/// Shares of rows `ids` of the prepared table `table` ([vocab, H]). `ids` is `Some` at
/// [`INDEX_OWNER`] (each below vocab) and `None` elsewhere; every party passes `count`,
/// the public number of indices. The 2PC dealer calls [`lookup_rows_dealer`] instead.
pub fn lookup_rows(
    p: &mut Party,
    table: &PreparedWeight,
    ids: Option<&[u32]>,
    count: usize,
) -> Result<Shared> {
    let [vocab, h] = table.shape();
    let me = p.id();
    let ids = match ids {
        Some(ids) if me == INDEX_OWNER => {
            if ids.len() != count {
                return Err(Error::shape(
                    "lookup",
                    format!("{} indices for {count} rows", ids.len()),
                ));
            }
            if let Some(&bad) = ids.iter().find(|&&i| i as usize >= vocab) {
                return Err(Error::shape(
                    "lookup",
                    format!("index {bad} >= table rows {vocab}"),
                ));
            }
            Some(ids)
        }
        _ => None,
    };
    let nb = domain_bits(vocab);
    let kw = tessera::fss::material::dpf_key_words(nb, 1);
    // The two PIR servers for the component both hold, and the words P0 sends each.
    let servers: [PartyId; 2] = match p.setting() {
        Setting::ThreePc => [1, 2],
        Setting::TwoPc => [1, DEALER],
    };
    let out_shape = [count, h];
    match (p.setting(), me) {
        (_, INDEX_OWNER) => {
            let ids = ids.ok_or_else(|| {
                Error::Unsupported("the index owner must provide the indices".into())
            })?;
            // Rows this party adds on its own: an owner-held table's F; a shared table's
            // W0 + W1 (3PC) or F + B0 (2PC).
            let local: Vec<u64> = match p.setting() {
                _ if table.is_owned() => {
                    p.material(&owner_b(table))?;
                    let f = table.public_f().ok_or_else(|| {
                        Error::Unsupported("P0 holds no W - B for this table".into())
                    })?;
                    gather_sum(&[f.data()], ids, h)
                }
                Setting::ThreePc => {
                    let (a, b) = table.shared()?.parts();
                    let b = b.expect("3pc share");
                    gather_sum(&[a.data(), b.data()], ids, h)
                }
                Setting::TwoPc => {
                    let b0 = p.material(&Request::FixedB {
                        k: vocab,
                        n: h,
                        key: table.key(),
                    })?;
                    let f = table.public_f().ok_or_else(|| {
                        Error::Unsupported("2PC lookup needs a prepared table".into())
                    })?;
                    gather_sum(&[f.data(), &b0.parts[0]], ids, h)
                }
            };
            let mut keys = [
                Vec::with_capacity(count * kw),
                Vec::with_capacity(count * kw),
            ];
            for &id in ids {
                let (k0, k1) = dpf_gen(u64::from(id), &[1], nb, p.private_prg())
                    .map_err(|e| Error::Preprocessing(format!("lookup key generation: {e}")))?;
                keys[0].extend(k0.to_words());
                keys[1].extend(k1.to_words());
            }
            let [ka, kb] = keys;
            match p.setting() {
                Setting::ThreePc => {
                    p.exchange(vec![(servers[0], ka), (servers[1], kb)], &[], "lookup keys")?;
                    let mut z = local;
                    add_assign(&mut z, &p.zero_share(count * h)?);
                    reshare3(p, &out_shape, z, "lookup reshare")
                }
                Setting::TwoPc => {
                    let got = p
                        .exchange(
                            vec![(servers[0], ka), (servers[1], kb)],
                            &[(DEALER, count * h)],
                            "lookup keys / dealer rows",
                        )?
                        .remove(0);
                    let mut z = local;
                    add_assign(&mut z, &got);
                    Shared::from_parts(Tensor::from_vec(&out_shape, z)?, None)
                }
            }
        }
        (Setting::ThreePc, _) => {
            // Material first, in P0's order: a just-in-time dealt request ends with a
            // barrier, which must not cross the keys.
            let owned_m = if table.is_owned() {
                Some(p.material(&owner_b(table))?)
            } else {
                None
            };
            let keys = p
                .exchange(vec![], &[(INDEX_OWNER, count * kw)], "lookup keys")?
                .remove(0);
            // The servers' common table: an owner-held table's mask B (P1 from its seed,
            // P2 as the dealer); a shared table's W2 (P1's second component, P2's first).
            let owned_b;
            let w2: &[u64] = if let Some(m) = owned_m {
                owned_b = if me == 1 {
                    m.parts.into_iter().next().ok_or_else(|| {
                        Error::Preprocessing("no mask for the owner-held table".into())
                    })?
                } else {
                    p.dealer_fixed_b_share(1, table.key(), vocab, h)?
                };
                &owned_b
            } else {
                let (a, b) = table.shared()?.parts();
                if me == 1 {
                    b.expect("3pc share").data()
                } else {
                    a.data()
                }
            };
            let mut z = pir(&keys, count, kw, w2, vocab, h)?;
            add_assign(&mut z, &p.zero_share(count * h)?);
            reshare3(p, &out_shape, z, "lookup reshare")
        }
        (Setting::TwoPc, _) => {
            // B1 of a shared table; the whole B of an owner-held one (the dealer derives
            // the same words from the seed it shares with P1).
            let b1 = if table.is_owned() {
                p.material(&owner_b(table))?
            } else {
                p.material(&Request::FixedB {
                    k: vocab,
                    n: h,
                    key: table.key(),
                })?
            };
            let b1 = b1
                .parts
                .first()
                .filter(|b| b.len() == vocab * h)
                .ok_or_else(|| Error::Preprocessing("table mask of the wrong size".into()))?;
            let keys = p
                .exchange(vec![], &[(INDEX_OWNER, count * kw)], "lookup keys")?
                .remove(0);
            let mut z = pir(&keys, count, kw, b1, vocab, h)?;
            let pad = p.common_words(DEALER, count * h)?;
            z.iter_mut()
                .zip(&pad)
                .for_each(|(v, r)| *v = v.wrapping_sub(*r));
            Shared::from_parts(Tensor::from_vec(&out_shape, z)?, None)
        }
    }
}

/// The 2PC dealer's part of [`lookup_rows`] for a table of `vocab` x `h` under `key`:
/// the second PIR server on B1 (which it derives from the seed it shares with P1).
pub fn lookup_rows_dealer(
    p: &mut Party,
    vocab: usize,
    h: usize,
    key: u64,
    count: usize,
) -> Result<()> {
    if p.setting() != Setting::TwoPc || p.id() != DEALER {
        return Err(Error::Unsupported(
            "lookup_rows_dealer is the 2PC dealer's part".into(),
        ));
    }
    let nb = domain_bits(vocab);
    let kw = tessera::fss::material::dpf_key_words(nb, 1);
    let keys = p
        .exchange(vec![], &[(INDEX_OWNER, count * kw)], "lookup keys")?
        .remove(0);
    let b1 = p.dealer_fixed_b_share(1, key, vocab, h)?;
    let mut z = pir(&keys, count, kw, &b1, vocab, h)?;
    let pad = p.common_words(1, count * h)?;
    z.iter_mut()
        .zip(&pad)
        .for_each(|(v, r)| *v = v.wrapping_add(*r));
    p.exchange(vec![(INDEX_OWNER, z)], &[], "lookup dealer rows")?;
    Ok(())
}

/// Material [`lookup_rows`] consumes for an owner-held table (the table's mask B, to P1;
/// both settings).
pub fn lookup_demand(vocab: usize, h: usize, key: u64) -> Demand {
    Demand(vec![Request::OwnerB {
        k: vocab,
        n: h,
        key,
    }])
}

/// Material [`lookup_rows`] consumes for a shared table (2PC: the table's fixed B share,
/// to P0 and P1; 3PC: none).
pub fn lookup_demand_shared(setting: Setting, vocab: usize, h: usize, key: u64) -> Demand {
    match setting {
        Setting::TwoPc => Demand(vec![Request::FixedB {
            k: vocab,
            n: h,
            key,
        }]),
        Setting::ThreePc => Demand::default(),
    }
}

/// The owner mask request of an owner-held table.
fn owner_b(table: &PreparedWeight) -> Request {
    let [k, n] = table.shape();
    Request::OwnerB {
        k,
        n,
        key: table.key(),
    }
}

/// Sum over `tables` of rows `ids` (each table [rows, h], flat).
fn gather_sum(tables: &[&[u64]], ids: &[u32], h: usize) -> Vec<u64> {
    let mut out = vec![0u64; ids.len() * h];
    for (row, &id) in out.chunks_mut(h).zip(ids) {
        let at = id as usize * h;
        for t in tables {
            for (o, v) in row.iter_mut().zip(&t[at..at + h]) {
                *o = o.wrapping_add(*v);
            }
        }
    }
    out
}

fn add_assign(z: &mut [u64], y: &[u64]) {
    z.iter_mut()
        .zip(y)
        .for_each(|(a, b)| *a = a.wrapping_add(*b));
}

/// One PIR server: for each of the `count` DPF keys in `words` (kw words each), the full
/// domain evaluation restricted to the table's rows, then U [count, vocab] x T [vocab, h].
fn pir(
    words: &[u64],
    count: usize,
    kw: usize,
    table: &[u64],
    vocab: usize,
    h: usize,
) -> Result<Vec<u64>> {
    use rayon::prelude::*;
    let bad = |e: String| Error::Preprocessing(format!("lookup: malformed DPF key: {e}"));
    let rows: Vec<Vec<u64>> = words
        .par_chunks(kw)
        .map(|w| -> Result<Vec<u64>> {
            let k = DpfKey::from_words(w).map_err(|e| bad(e.to_string()))?;
            if k.out_len() != 1 || k.n_bits() != domain_bits(vocab) {
                return Err(bad(format!(
                    "{} output words on {} bits",
                    k.out_len(),
                    k.n_bits()
                )));
            }
            let mut all = k.eval_all().map_err(|e| bad(e.to_string()))?;
            all.truncate(vocab);
            Ok(all)
        })
        .collect::<Result<_>>()?;
    if rows.len() != count {
        return Err(bad(format!("{} keys for {count} indices", rows.len())));
    }
    let u: Vec<u64> = rows.concat();
    Ok(tessera::tensor::kernel::matmul_u64(
        &u, table, count, vocab, h,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::arith::prepare_weight;
    use crate::compare::tests::SETTINGS;
    use tessera::runtime::{run_all_parties, run_parties};
    use tessera::{CommStats, MaterialMode, SessionOptions};

    /// Rows of a secret random table at P0's indices (edges 0 and vocab - 1, repeats)
    /// come out exactly (lookups are exact ring arithmetic), in both settings, with the
    /// stated rounds and bytes; the servers' views are DPF keys only.
    #[test]
    fn lookup_is_exact_with_stated_cost() {
        let (vocab, h) = (1000usize, 24usize);
        let table: Vec<u64> = (0..vocab * h)
            .map(|i| (i as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15))
            .collect();
        let t = Tensor::from_vec(&[vocab, h], table.clone()).unwrap();
        let ids: Vec<u32> = vec![0, 999, 5, 5, 512, 1, 998];
        let count = ids.len();
        for s in SETTINGS {
            let mut demand = crate::arith::demand::prepare_weight(s, vocab, h, 7);
            demand.extend(lookup_demand_shared(s, vocab, h, 7));
            let opts = SessionOptions {
                material: MaterialMode::Planned(demand),
                ..Default::default()
            };
            let outs = run_all_parties(s, opts, |p| -> Result<Option<(Vec<u64>, CommStats)>> {
                if !p.is_compute() {
                    lookup_rows_dealer(p, vocab, h, 7, count)?;
                    return Ok(None);
                }
                let w = p.share_input(1, (p.id() == 1).then_some(&t), &[vocab, h])?;
                let pw = prepare_weight(p, &w, 7)?;
                let before = p.stats();
                let y = lookup_rows(p, &pw, (p.id() == 0).then_some(&ids[..]), count)?;
                let st = p.stats().since(&before);
                Ok(Some((p.open(&y)?.data().to_vec(), st)))
            })
            .unwrap();
            let (got, st0) = outs[0].value.clone().unwrap();
            for (r, &id) in got.chunks(h).zip(&ids) {
                let at = id as usize * h;
                assert_eq!(r, &table[at..at + h], "{s:?} row {id}");
            }
            let kw = tessera::fss::material::dpf_key_words(domain_bits(vocab), 1);
            let (_, st1) = outs[1].value.clone().unwrap();
            match s {
                Setting::ThreePc => {
                    // P0: keys to P1 and P2, then the reshare; P1: the reshare only
                    assert_eq!(st0.rounds, 2);
                    assert_eq!(st0.online_sent, 8 * (2 * count * kw + count * h) as u64);
                    assert_eq!(st1.online_sent, 8 * (count * h) as u64);
                }
                Setting::TwoPc => {
                    assert_eq!(st0.rounds, 1);
                    assert_eq!(st0.online_sent, 8 * (2 * count * kw) as u64);
                    assert_eq!(st0.online_recv, 8 * (count * h) as u64);
                    assert_eq!(st1.online_sent, 0);
                }
            }
        }
    }

    #[test]
    fn lookup_rejects_bad_indices_and_keys() {
        let vocab = 10;
        let t = Tensor::from_vec(&[vocab, 2], vec![1u64; 20]).unwrap();
        let err = run_parties(
            Setting::ThreePc,
            SessionOptions::default(),
            |p| -> Result<()> {
                let w = p.share_input(1, (p.id() == 1).then_some(&t), &[vocab, 2])?;
                let pw = prepare_weight(p, &w, 3)?;
                lookup_rows(p, &pw, (p.id() == 0).then_some(&[3, 10][..]), 2)?;
                Ok(())
            },
        )
        .unwrap_err();
        assert!(err.to_string().contains("index 10"), "{err}");
        // A corrupted key is an error naming the lookup, not a panic.
        let bad = pir(&[7u64; 40], 1, 40, &[0; 16], 16, 1).unwrap_err();
        assert!(bad.to_string().contains("lookup"), "{bad}");
    }
}
