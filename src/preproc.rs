//! Preprocessing: Beaver triples, matrix triples and truncation material, dealt with seed
//! compression.
//!
//! Party 2 deals in both settings: the dealer D in 2PC, P2 acting as dealer for P0 and P1
//! in 3PC (for truncation and, later, FSS keys). The dealer shares one PRG seed with P0
//! and one with P1 (derived from the pairwise session seeds, or fresh for offline files).
//! P0 expands *every* component of its material from its seed; P1 expands the uniformly
//! random components (its shares of a, b, r, ...) from its seed; the dealer, who can run
//! both expansions, sends P1 only the correction words that make the sums right (c1 = ab -
//! c0 for a triple). So a Beaver triple of n elements costs n words of dealer traffic, not
//! 6n.
//!
//! A protocol states what it consumes as a [`Request`]; a [`Demand`] is the ordered list of
//! requests of a job. The same requests drive three ways of getting material:
//! *live* (P1 asks the dealer for each request as it goes; tests and demos), *planned*
//! (the dealer is told the demand and streams all corrections before the online phase, so
//! offline and online are timed apart) and *files* (the dealer writes one file per party
//! ahead of time). A consumer that was given a plan checks every request against it, so a
//! protocol whose declared demand is wrong fails loudly instead of computing garbage.
//!
//! ## Reusing B for a fixed weight matrix
//! [`Request::MatTripleFixedB`] gives triples (A_q, B, C_q = A_q B) with the *same* B for
//! every query q against one weight matrix W. The parties open F = W - B once per model
//! (B is uniform and used as a one-time pad for W exactly once, so F is uniform and
//! independent of W), and per query open only E_q = X_q - A_q, with a fresh uniform A_q.
//! Every opened value is masked by a fresh uniform pad, so the joint view of all openings
//! is uniform and independent of the inputs; C_q's shares are fresh uniform values too.
//! This removes the k x n weight opening from every query's online traffic.
//!
//! ## Weights the model owner holds in the clear (one-sided triples)
//! A model's weights are P1's own input, so P1 need not hold a *share* of them. With
//! [`Request::OwnerB`] the mask B of a weight comes from the P1-dealer seed alone: P1
//! publishes F = W - B to P0 once and keeps W; P0 keeps F. A product [X] W then takes a
//! [`Request::MatTripleOwner`]: P0 gets A, C0 from its seed, P1 gets C1 = A B - C0, P0
//! sends E = X_0 - A to P1 (one message, one direction), and
//! Z_0 = A F + C0 (input-independent: computed while the material is dealt),
//! Z_1 = (X_1 + E) W + C1, so Z_0 + Z_1 = A (F + B) + (X - A) W = X W.
//! P1 sees only E (masked by A, which P1 never learns), P0 only F (masked by B, which P0
//! never learns), the dealer nothing online. Against the shared-B triple each party runs
//! one product instead of two, nobody re-derives a share of B per query (for a decoder
//! token that is the whole model's worth of AES per party), the opening is half as large,
//! and in 3PC each party holds one weight-sized matrix instead of two replicated
//! components (P2 none).

use crate::error::{Error, Result};
use crate::fss::material::FssRequest;
use crate::prg::{Prg, Seed};
use crate::tensor::kernel::matmul_u64;
use std::collections::VecDeque;

/// One unit of preprocessing material a protocol consumes.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Request {
    /// n element-wise Beaver triples (a, b, c = a b).
    Beaver {
        /// Number of triples.
        n: usize,
    },
    /// `batch` independent matrix triples A (m x k), B (k x n), C = A B.
    MatTriple {
        /// Number of independent products.
        batch: usize,
        /// Rows of A.
        m: usize,
        /// Inner dimension.
        k: usize,
        /// Columns of B.
        n: usize,
    },
    /// A matrix triple whose B (k x n) is fixed per `key` (a model's weight matrix).
    MatTripleFixedB {
        /// Rows of A.
        m: usize,
        /// Inner dimension.
        k: usize,
        /// Columns of B.
        n: usize,
        /// Identifies the weight matrix; the same key gives the same B.
        key: u64,
    },
    /// A matrix triple (A_q, B, C_q = A_q B^T) with the fixed B of `key` read transposed:
    /// B is the n x k matrix of `FixedB { k: n, n: k, key }` (a prepared embedding table
    /// of n rows), A is m x k, C is m x n — the tied output head x E^T.
    MatTripleFixedBT {
        /// Rows of A.
        m: usize,
        /// Inner dimension (the table's row width).
        k: usize,
        /// Rows of the table (columns of C).
        n: usize,
        /// The table's key.
        key: u64,
    },
    /// Shares of a fixed B (k x n) for `key`, consumed once when the weight is prepared.
    FixedB {
        /// Rows of B.
        k: usize,
        /// Columns of B.
        n: usize,
        /// The weight matrix's key.
        key: u64,
    },
    /// The mask B (k x n) of an owner-held weight `key`, whole, to the model owner P1 (it
    /// comes from the P1-dealer seed; P0 gets nothing). Consumed once when the owner
    /// prepares the weight (publishes F = W - B to P0) and by the private row lookup.
    OwnerB {
        /// Rows of B.
        k: usize,
        /// Columns of B.
        n: usize,
        /// The weight matrix's key.
        key: u64,
    },
    /// A one-sided triple for an owner-held weight (see the module doc): A (m x k) and C0
    /// (m x n) to P0 from its seed, C1 = A B - C0 (or A B^T with `t`) to P1, where B is
    /// the [`Request::OwnerB`] of `key` (k x n, or n x k read transposed with `t`).
    MatTripleOwner {
        /// Rows of A.
        m: usize,
        /// Inner dimension.
        k: usize,
        /// Columns of C.
        n: usize,
        /// The weight's key.
        key: u64,
        /// B is the n x k table of the key, read transposed (a tied output head).
        t: bool,
    },
    /// Faithful-truncation material for n elements of the ring Z_2^bits: r uniform (its
    /// shares are 64-bit words; only r mod 2^bits is used), (r mod 2^bits) >> shift
    /// (logical) and bit bits - 1 of r, all additively shared. `bits` = 64 is the plain
    /// faithful truncation; a smaller ring (values known to satisfy |x| < 2^(bits - 2))
    /// lets the parties open only the low `bits` bits of the masked value
    /// (`tessera_protocols::arith::trunc2_ring`), with exact 64-bit shares out.
    Trunc {
        /// Number of elements.
        n: usize,
        /// Bits to shift.
        shift: u32,
        /// Width of the ring the masked value is opened in, shift + 2 ..= 64.
        #[serde(default = "full_ring")]
        bits: u32,
    },
    /// Function-secret-sharing material (DCF/DPF keys and masks); see
    /// [`crate::fss::material`].
    Fss(FssRequest),
    /// Masks for a row-normalisation product y = d (r ⊗ g) on a `rows` x `k` matrix d,
    /// a per-row vector r and a per-column vector g, with d also squared (LayerNorm).
    /// Components: a (rows x k), b (rows), c (k) uniform; then a², a∘b, a∘c, a∘b∘c and
    /// b⊗c (rows x k each; b broadcast along rows, c along columns). Opening d - a,
    /// r - b and g - c once each makes d², d r g and their row sums local products.
    NormMask {
        /// Rows of d (and length of r).
        rows: usize,
        /// Columns of d (and length of g).
        k: usize,
    },
    /// Masks for x y and x y² from one opening of each of x and y (n elements): alpha,
    /// beta uniform; beta², alpha beta, alpha beta² (a value times a degree-2 polynomial).
    MulSq {
        /// Number of elements.
        n: usize,
    },
    /// Masks for x1 y + x2 y² from one opening of each of x1, x2 and y (n elements): the
    /// value, slope and curvature of a degree-2 spline cell times the offset y and its
    /// square (`tessera_protocols::gelu`'s degree-2 splines). Components: alpha1, alpha2,
    /// beta uniform; then beta², alpha1 beta, alpha2 beta, alpha2 beta². The opening of
    /// y - beta can go out before x1 and x2 exist, so the product costs one round after
    /// them, as a Beaver product does.
    LinSq {
        /// Number of elements.
        n: usize,
    },
    /// A faithful truncation in Z_2^bits (as [`Request::Trunc`]) whose remainder l = x -
    /// 2^shift t later multiplies a value E as E l and E l² (the exponential's E Q(l),
    /// `tessera_protocols::exp`), with [`Request::MulSq`]'s masks fused in: r and alpha
    /// uniform; (r mod 2^bits) >> shift, bit bits - 1 of r, beta = -(r mod 2^shift),
    /// beta², alpha beta, alpha beta². The truncation's correction makes l = (c mod
    /// 2^shift) - (r mod 2^shift) exactly for the opened c = x + r, so l - beta is the
    /// opened c's low bits: the product needs no opening of l (SIGMA-style reuse of a
    /// mask whose masked value is already public).
    TruncSq {
        /// Number of elements.
        n: usize,
        /// Bits to shift.
        shift: u32,
        /// The ring Z_2^bits the masked value is opened in (shift + 2 ..= 64).
        bits: u32,
    },
    /// [`Request::TruncSq`] for [`Request::LinSq`]'s product: a faithful truncation in
    /// Z_2^bits whose remainder u = x - 2^shift t is the y of x1 y + x2 y² (a degree-2
    /// spline cell's offset, `tessera_protocols::gelu`): r, alpha1, alpha2 uniform;
    /// (r mod 2^bits) >> shift, bit bits - 1 of r, beta = -(r mod 2^shift), beta²,
    /// alpha1 beta, alpha2 beta, alpha2 beta². u - beta is the opened c's low bits.
    TruncLinSq {
        /// Number of elements.
        n: usize,
        /// Bits to shift.
        shift: u32,
        /// The ring Z_2^bits the masked value is opened in (shift + 2 ..= 64).
        bits: u32,
    },
    /// Faithful truncation of a `rows` x `k` matrix x whose result is then multiplied by a
    /// per-row vector r without opening the truncated value again: R (rows x k), rho (rows)
    /// uniform; with R' = R mod 2^bits, R' >> shift, bit bits - 1 of R, (R' >> shift) rho
    /// and (bit bits - 1 of R) rho. `bits` < 64: the truncation's ring, as in
    /// [`Request::Trunc`].
    TruncRowMul {
        /// Rows of x (and length of r).
        rows: usize,
        /// Columns of x.
        k: usize,
        /// Bits to shift.
        shift: u32,
        /// The ring Z_2^bits the masked value is opened in (shift + 2 ..= 64).
        bits: u32,
    },
}

/// Serde default of [`Request::Trunc`]'s ring width (demands written before it existed).
fn full_ring() -> u32 {
    64
}

const TAG_BEAVER: u64 = 1;
const TAG_MAT: u64 = 2;
const TAG_MAT_FIXED: u64 = 3;
const TAG_FIXED_B: u64 = 4;
const TAG_TRUNC: u64 = 5;
const TAG_FSS: u64 = 6;
const TAG_NORM: u64 = 7;
const TAG_MUL_SQ: u64 = 8;
const TAG_TRUNC_ROW: u64 = 9;
const TAG_MAT_FIXED_T: u64 = 10;
const TAG_OWNER_B: u64 = 11;
const TAG_MAT_OWNER: u64 = 12;
const TAG_LIN_SQ: u64 = 13;
const TAG_TRUNC_RING: u64 = 14;
const TAG_TRUNC_ROW_RING: u64 = 15;
const TAG_TRUNC_SQ: u64 = 16;
const TAG_TRUNC_LIN_SQ: u64 = 17;

impl Request {
    /// Words the dealer sends to `party` (0 or 1) for this request. Arithmetic material
    /// is seed-compressed (P0 gets nothing, P1 one correction); FSS keys go to both.
    pub fn correction_len(&self, party: usize) -> usize {
        match (self, party) {
            (Request::Fss(f), _) => f.correction_len(party),
            (_, 0) => 0,
            (Request::Beaver { n }, _) => *n,
            (Request::MatTriple { batch, m, n, .. }, _) => batch * m * n,
            (Request::MatTripleFixedB { m, n, .. }, _) => m * n,
            (Request::MatTripleFixedBT { m, n, .. }, _) => m * n,
            (Request::FixedB { .. }, _) => 0,
            (Request::OwnerB { .. }, _) => 0,
            (Request::MatTripleOwner { m, n, .. }, _) => m * n,
            (Request::Trunc { n, .. }, _) => 2 * n,
            (Request::NormMask { rows, k }, _) => 5 * rows * k,
            (Request::MulSq { n }, _) => 3 * n,
            (Request::TruncSq { n, .. }, _) => 6 * n,
            (Request::TruncLinSq { n, .. }, _) => 7 * n,
            (Request::LinSq { n }, _) => 4 * n,
            (Request::TruncRowMul { rows, k, .. }, _) => 4 * rows * k,
        }
    }
    /// Words of the dealt masks a 3PC dealer (P2, which also holds shares) keeps for its
    /// own online use: `NormMask`'s a (rows x k), with which P2 takes over most of the
    /// opening of d - a (`tessera_protocols::layernorm`). Zero for every other kind.
    pub fn dealer_view_len(&self) -> usize {
        match *self {
            Request::NormMask { rows, k } => rows * k,
            _ => 0,
        }
    }

    /// Compact word encoding (for live requests and files).
    pub fn encode(&self) -> Vec<u64> {
        match *self {
            Request::Fss(ref f) => {
                let mut w = vec![TAG_FSS];
                w.extend(f.encode());
                w
            }
            Request::Beaver { n } => vec![TAG_BEAVER, n as u64],
            Request::MatTriple { batch, m, k, n } => {
                vec![TAG_MAT, batch as u64, m as u64, k as u64, n as u64]
            }
            Request::MatTripleFixedB { m, k, n, key } => {
                vec![TAG_MAT_FIXED, m as u64, k as u64, n as u64, key]
            }
            Request::MatTripleFixedBT { m, k, n, key } => {
                vec![TAG_MAT_FIXED_T, m as u64, k as u64, n as u64, key]
            }
            Request::FixedB { k, n, key } => vec![TAG_FIXED_B, k as u64, n as u64, key],
            Request::OwnerB { k, n, key } => vec![TAG_OWNER_B, k as u64, n as u64, key],
            Request::MatTripleOwner { m, k, n, key, t } => {
                vec![
                    TAG_MAT_OWNER,
                    m as u64,
                    k as u64,
                    n as u64,
                    key,
                    u64::from(t),
                ]
            }
            Request::Trunc { n, shift, bits: 64 } => {
                vec![TAG_TRUNC, n as u64, shift as u64]
            }
            Request::Trunc { n, shift, bits } => {
                vec![TAG_TRUNC_RING, n as u64, shift as u64, u64::from(bits)]
            }
            Request::NormMask { rows, k } => vec![TAG_NORM, rows as u64, k as u64],
            Request::MulSq { n } => vec![TAG_MUL_SQ, n as u64],
            Request::TruncSq { n, shift, bits } => {
                vec![TAG_TRUNC_SQ, n as u64, u64::from(shift), u64::from(bits)]
            }
            Request::TruncLinSq { n, shift, bits } => {
                vec![
                    TAG_TRUNC_LIN_SQ,
                    n as u64,
                    u64::from(shift),
                    u64::from(bits),
                ]
            }
            Request::LinSq { n } => vec![TAG_LIN_SQ, n as u64],
            Request::TruncRowMul {
                rows,
                k,
                shift,
                bits: 64,
            } => vec![TAG_TRUNC_ROW, rows as u64, k as u64, u64::from(shift)],
            Request::TruncRowMul {
                rows,
                k,
                shift,
                bits,
            } => vec![
                TAG_TRUNC_ROW_RING,
                rows as u64,
                k as u64,
                u64::from(shift),
                u64::from(bits),
            ],
        }
    }
    /// Decodes one request from the front of `w`, returning it and the words used.
    pub fn decode(w: &[u64]) -> Result<(Request, usize)> {
        let bad = |what: &str| Error::Preprocessing(format!("malformed request: {what}"));
        let tag = *w.first().ok_or_else(|| bad("empty"))?;
        if tag == TAG_FSS {
            let (f, used) = FssRequest::decode(&w[1..])?;
            return Ok((Request::Fss(f), used + 1));
        }
        let need = match tag {
            TAG_BEAVER => 2,
            TAG_MAT => 5,
            TAG_MAT_FIXED => 5,
            TAG_MAT_FIXED_T => 5,
            TAG_FIXED_B => 4,
            TAG_OWNER_B => 4,
            TAG_MAT_OWNER => 6,
            TAG_TRUNC => 3,
            TAG_NORM => 3,
            TAG_MUL_SQ => 2,
            TAG_LIN_SQ => 2,
            TAG_TRUNC_ROW => 4,
            TAG_TRUNC_RING => 4,
            TAG_TRUNC_ROW_RING => 5,
            TAG_TRUNC_SQ | TAG_TRUNC_LIN_SQ => 4,
            t => return Err(bad(&format!("unknown tag {t}"))),
        };
        if w.len() < need {
            return Err(bad("truncated"));
        }
        // Sizes are bounded so a corrupted request cannot make the dealer allocate wildly.
        let sz = |x: u64| -> Result<usize> {
            if x > (1 << 34) {
                Err(bad(&format!("size {x} too large")))
            } else {
                Ok(x as usize)
            }
        };
        let r = match tag {
            TAG_BEAVER => Request::Beaver { n: sz(w[1])? },
            TAG_MAT => Request::MatTriple {
                batch: sz(w[1])?,
                m: sz(w[2])?,
                k: sz(w[3])?,
                n: sz(w[4])?,
            },
            TAG_MAT_FIXED => Request::MatTripleFixedB {
                m: sz(w[1])?,
                k: sz(w[2])?,
                n: sz(w[3])?,
                key: w[4],
            },
            TAG_MAT_FIXED_T => Request::MatTripleFixedBT {
                m: sz(w[1])?,
                k: sz(w[2])?,
                n: sz(w[3])?,
                key: w[4],
            },
            TAG_FIXED_B => Request::FixedB {
                k: sz(w[1])?,
                n: sz(w[2])?,
                key: w[3],
            },
            TAG_OWNER_B => Request::OwnerB {
                k: sz(w[1])?,
                n: sz(w[2])?,
                key: w[3],
            },
            TAG_MAT_OWNER => {
                if w[5] > 1 {
                    return Err(bad("transpose flag not 0 or 1"));
                }
                Request::MatTripleOwner {
                    m: sz(w[1])?,
                    k: sz(w[2])?,
                    n: sz(w[3])?,
                    key: w[4],
                    t: w[5] == 1,
                }
            }
            TAG_NORM => Request::NormMask {
                rows: sz(w[1])?,
                k: sz(w[2])?,
            },
            TAG_MUL_SQ => Request::MulSq { n: sz(w[1])? },
            TAG_LIN_SQ => Request::LinSq { n: sz(w[1])? },
            TAG_TRUNC_ROW => {
                if !(1..64).contains(&w[3]) {
                    return Err(bad("shift outside 1..64"));
                }
                Request::TruncRowMul {
                    rows: sz(w[1])?,
                    k: sz(w[2])?,
                    shift: w[3] as u32,
                    bits: 64,
                }
            }
            TAG_TRUNC_ROW_RING => {
                // 64-bit rings use TAG_TRUNC_ROW: one encoding per request.
                if !(3..64).contains(&w[4]) || w[3].saturating_add(2) > w[4] || w[3] == 0 {
                    return Err(bad("row truncation ring bits outside shift + 2 ..= 63"));
                }
                Request::TruncRowMul {
                    rows: sz(w[1])?,
                    k: sz(w[2])?,
                    shift: w[3] as u32,
                    bits: w[4] as u32,
                }
            }
            TAG_TRUNC_SQ | TAG_TRUNC_LIN_SQ => {
                if !(3..=64).contains(&w[3]) || w[2].saturating_add(2) > w[3] || w[2] == 0 {
                    return Err(bad("truncation ring bits outside shift + 2 ..= 64"));
                }
                let (n, shift, bits) = (sz(w[1])?, w[2] as u32, w[3] as u32);
                if tag == TAG_TRUNC_SQ {
                    Request::TruncSq { n, shift, bits }
                } else {
                    Request::TruncLinSq { n, shift, bits }
                }
            }
            TAG_TRUNC_RING => {
                // 64-bit rings use TAG_TRUNC: one encoding per request.
                if !(3..64).contains(&w[3]) || w[2].saturating_add(2) > w[3] || w[2] == 0 {
                    return Err(bad("truncation ring bits outside shift + 2 ..= 63"));
                }
                Request::Trunc {
                    n: sz(w[1])?,
                    shift: w[2] as u32,
                    bits: w[3] as u32,
                }
            }
            _ => {
                if w[2] >= 64 {
                    return Err(bad("shift >= 64"));
                }
                Request::Trunc {
                    n: sz(w[1])?,
                    shift: w[2] as u32,
                    bits: 64,
                }
            }
        };
        // Products of sizes are bounded too (each factor alone is): a corrupted request
        // must not overflow the word counts or make the dealer allocate wildly.
        let prod = |xs: &[usize]| {
            xs.iter()
                .try_fold(1usize, |a, &x| a.checked_mul(x))
                .filter(|&v| v <= 1 << 34)
        };
        let ok = match r {
            Request::MatTriple { batch, m, k, n } => {
                prod(&[batch, m, k]).is_some()
                    && prod(&[batch, k, n]).is_some()
                    && prod(&[batch, m, n]).is_some()
            }
            Request::MatTripleFixedB { m, k, n, .. }
            | Request::MatTripleFixedBT { m, k, n, .. }
            | Request::MatTripleOwner { m, k, n, .. } => {
                prod(&[m, k]).is_some() && prod(&[k, n]).is_some() && prod(&[m, n]).is_some()
            }
            Request::FixedB { k, n, .. } | Request::OwnerB { k, n, .. } => prod(&[k, n]).is_some(),
            Request::NormMask { rows, k } | Request::TruncRowMul { rows, k, .. } => {
                prod(&[rows, k]).is_some()
            }
            _ => true,
        };
        if !ok {
            return Err(bad("sizes multiply beyond 2^34"));
        }
        Ok((r, need))
    }
}

/// An ordered list of requests: what a job will consume.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Demand(pub Vec<Request>);

impl Demand {
    /// Appends a request.
    pub fn push(&mut self, r: Request) {
        self.0.push(r);
    }
    /// Appends all of another demand.
    pub fn extend(&mut self, other: Demand) {
        self.0.extend(other.0);
    }
    /// Total words the dealer will send to `party`.
    pub fn correction_words(&self, party: usize) -> usize {
        self.0.iter().map(|r| r.correction_len(party)).sum()
    }
    /// Word encoding of the whole list.
    pub fn encode(&self) -> Vec<u64> {
        let mut w = vec![self.0.len() as u64];
        for r in &self.0 {
            w.extend(r.encode());
        }
        w
    }
    /// Decodes a list encoded by [`Demand::encode`], returning it and the words used.
    pub fn decode(w: &[u64]) -> Result<(Demand, usize)> {
        let n = *w
            .first()
            .ok_or_else(|| Error::Preprocessing("malformed demand: empty".into()))?;
        let mut pos = 1;
        let mut d = Demand::default();
        for _ in 0..n {
            let (r, used) = Request::decode(&w[pos.min(w.len())..])?;
            pos += used;
            d.push(r);
        }
        Ok((d, pos))
    }
}

/// One party's material for one request: named components, each a flat vector.
#[derive(Clone, Debug, Default)]
pub struct Material {
    /// Components in the order the request kind defines (e.g. a, b, c).
    pub parts: Vec<Vec<u64>>,
}

/// Lengths of the components P0 and P1 both expand from their seeds (uniform parts),
/// and of the corrected parts, per request kind.
fn layout(r: &Request) -> (Vec<usize>, Vec<usize>) {
    match *r {
        Request::Beaver { n } => (vec![n, n], vec![n]),
        Request::MatTriple { batch, m, k, n } => {
            (vec![batch * m * k, batch * k * n], vec![batch * m * n])
        }
        Request::MatTripleFixedB { m, k, n, .. } | Request::MatTripleFixedBT { m, k, n, .. } => {
            (vec![m * k], vec![m * n])
        }
        Request::FixedB { .. } | Request::OwnerB { .. } => (vec![], vec![]),
        // P0 expands A and C0; P1 expands nothing (see `p1_uniform`).
        Request::MatTripleOwner { m, k, n, .. } => (vec![m * k], vec![m * n]),
        Request::Trunc { n, .. } => (vec![n], vec![n, n]),
        Request::NormMask { rows, k } => (vec![rows * k, rows, k], vec![rows * k; 5]),
        Request::MulSq { n } => (vec![n, n], vec![n; 3]),
        Request::TruncSq { n, .. } => (vec![n, n], vec![n; 6]),
        Request::TruncLinSq { n, .. } => (vec![n, n, n], vec![n; 7]),
        Request::LinSq { n } => (vec![n, n, n], vec![n; 4]),
        Request::TruncRowMul { rows, k, .. } => (vec![rows * k, rows], vec![rows * k; 4]),
        Request::Fss(_) => (vec![], vec![]),
    }
}

/// Lengths of the uniform parts P1 expands from its seed: [`layout`]'s, except for the
/// one-sided owner triple, of which P1 gets only its correction.
fn p1_uniform(r: &Request) -> Vec<usize> {
    match r {
        Request::MatTripleOwner { .. } => vec![],
        _ => layout(r).0,
    }
}

/// The PRG stream of the fixed B of `key` (k x n words, row-major).
fn fixed_b_prg(seed: &Seed, key: u64) -> Prg {
    let mut label = b"fixed-b".to_vec();
    label.extend_from_slice(&key.to_le_bytes());
    Prg::new(seed.derive(&label))
}

/// A B (m x n) for the fixed B (k x n) of `key` under `seed`, or A B^T (m x n) for the
/// n x k table with `t`, streaming B in blocks of rows so it is never held whole (for a
/// SmolLM2 decode step B is the whole 1.1 GB model; materialising it cost a page-zeroing
/// pass per token on top of the AES).
fn fixed_b_product(
    seed: &Seed,
    key: u64,
    a: &[u64],
    m: usize,
    k: usize,
    n: usize,
    t: bool,
) -> Vec<u64> {
    use crate::tensor::kernel::{matmul_nt_u64, matmul_u64_acc};
    let mut prg = fixed_b_prg(seed, key);
    let mut c = vec![0u64; m * n];
    // B's rows are n words (k rows) or k words (n rows, transposed): ~2 MiB per block.
    let width = if t { k } else { n };
    let total = if t { n } else { k };
    let block = ((1 << 18) / width.max(1)).clamp(1, total.max(1));
    let mut buf = vec![0u64; block * width];
    let mut apack = Vec::new();
    let mut r0 = 0;
    while r0 < total {
        let h = block.min(total - r0);
        let b = &mut buf[..h * width];
        prg.fill(b);
        if t {
            // C[:, r0..r0 + h] = A (m x k) . B_blk^T (h x k)^T
            let part = matmul_nt_u64(a, b, m, k, h);
            for i in 0..m {
                c[i * n + r0..i * n + r0 + h].copy_from_slice(&part[i * h..(i + 1) * h]);
            }
        } else {
            // C += A[:, r0..r0 + h] . B_blk (h x n)
            apack.clear();
            for i in 0..m {
                apack.extend_from_slice(&a[i * k + r0..i * k + r0 + h]);
            }
            matmul_u64_acc(&apack, b, &mut c, m, h, n);
        }
        r0 += h;
    }
    c
}

/// Per-key seeds for fixed B matrices.
fn fixed_b(seed: &Seed, key: u64, k: usize, n: usize) -> Vec<u64> {
    fixed_b_prg(seed, key).words(k * n)
}

/// Party `party`'s material for `r` from its seed stream and the dealer's words.
fn expand(
    party: usize,
    prg: &mut Prg,
    seed: &Seed,
    r: &Request,
    correction: Vec<u64>,
) -> Result<Material> {
    let want = r.correction_len(party);
    if correction.len() != want {
        return Err(Error::Preprocessing(format!(
            "dealer words for {r:?} to party {party}: got {}, expected {want}",
            correction.len()
        )));
    }
    match (r, party) {
        (Request::Fss(f), _) => f.expand(party, prg, correction),
        (_, 0) => Ok(expand_p0(prg, seed, r)),
        _ => expand_p1(prg, seed, r, correction),
    }
}

/// P0's view: everything from the seed.
fn expand_p0(prg: &mut Prg, seed: &Seed, r: &Request) -> Material {
    let (uni, cor) = layout(r);
    let mut parts: Vec<Vec<u64>> = uni.iter().chain(&cor).map(|&l| prg.words(l)).collect();
    if let Request::MatTripleFixedB { k, n, key, .. }
    | Request::MatTripleFixedBT { k, n, key, .. }
    | Request::FixedB { k, n, key } = *r
    {
        let b = fixed_b(seed, key, k, n);
        if matches!(r, Request::FixedB { .. }) {
            parts = vec![b];
        } else {
            parts.insert(1, b); // a, b, c
        }
    }
    Material { parts }
}

/// P1's view: uniform parts from the seed, the rest from the dealer's correction.
fn expand_p1(prg: &mut Prg, seed: &Seed, r: &Request, correction: Vec<u64>) -> Result<Material> {
    let (_, cor) = layout(r);
    let want: usize = cor.iter().sum();
    if correction.len() != want {
        return Err(Error::Preprocessing(format!(
            "correction for {r:?} has {} words, expected {want}",
            correction.len()
        )));
    }
    let mut parts: Vec<Vec<u64>> = p1_uniform(r).iter().map(|&l| prg.words(l)).collect();
    let mut off = 0;
    for l in cor {
        parts.push(correction[off..off + l].to_vec());
        off += l;
    }
    if let Request::MatTripleFixedB { k, n, key, .. }
    | Request::MatTripleFixedBT { k, n, key, .. }
    | Request::FixedB { k, n, key } = *r
    {
        let b = fixed_b(seed, key, k, n);
        if matches!(r, Request::FixedB { .. }) {
            parts = vec![b];
        } else {
            parts.insert(1, b);
        }
    }
    if let Request::OwnerB { k, n, key } = *r {
        parts = vec![fixed_b(seed, key, k, n)];
    }
    Ok(Material { parts })
}

fn wadd(a: &[u64], b: &[u64]) -> Vec<u64> {
    a.iter().zip(b).map(|(x, y)| x.wrapping_add(*y)).collect()
}
fn wsub(a: &[u64], b: &[u64]) -> Vec<u64> {
    a.iter().zip(b).map(|(x, y)| x.wrapping_sub(*y)).collect()
}

/// The dealer: knows both seeds, produces P1's corrections.
pub struct Dealer {
    seed0: Seed,
    seed1: Seed,
    prg0: Prg,
    prg1: Prg,
    /// Recently used fixed B matrices (at most [`FIXED_B_CACHE`]), oldest first; an
    /// evicted one is re-derived from the seeds if asked for again.
    fixed: VecDeque<(u64, Vec<u64>)>,
    /// 3PC only (the dealer is P2, which also holds shares): the values of dealt masks P2
    /// uses online, in dealing order (see [`Request::dealer_view_len`]). `None` when the
    /// dealer is a separate process that consumes nothing (2PC, `tessera dealer`).
    views: Option<VecDeque<Vec<u64>>>,
}

/// Fixed B matrices the dealer keeps: a BERT layer has 4 weights, so one layer's worth
/// (staged runs prepare a layer's weights just before its matmuls, so they hit); keeping
/// every layer's (57 MB each at BERT-base) made the dealer grow by ~0.2 GB a layer, and
/// two layers' worth put the 2pc dealer at 0.49 GB for 12 layers.
const FIXED_B_CACHE: usize = 4;

impl std::fmt::Debug for Dealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Dealer(..)")
    }
}

impl Dealer {
    /// A dealer for the material seeds it shares with P0 and P1.
    pub fn new(seed0: Seed, seed1: Seed) -> Dealer {
        Dealer {
            seed0,
            seed1,
            prg0: Prg::new(seed0),
            prg1: Prg::new(seed1),
            fixed: VecDeque::new(),
            views: None,
        }
    }

    /// Makes this dealer keep the mask values it will use itself as a share-holding party
    /// (3PC's P2): each request with a non-empty [`Request::dealer_view_len`] queues one
    /// view when dealt, and [`Dealer::take_view`] hands them out in the same order.
    pub fn keep_views(&mut self) {
        self.views.get_or_insert_with(VecDeque::new);
    }

    /// The oldest kept view, which must belong to `r` (its length is checked): requests are
    /// consumed in the order they were dealt.
    pub fn take_view(&mut self, r: &Request) -> Result<Vec<u64>> {
        let want = r.dealer_view_len();
        let got = self.views.as_mut().and_then(|v| v.pop_front());
        match got {
            Some(v) if v.len() == want => Ok(v),
            Some(v) => Err(Error::Preprocessing(format!(
                "dealer view for {r:?}: {} words kept, {want} expected (out of order)",
                v.len()
            ))),
            None => Err(Error::Preprocessing(format!(
                "dealer view for {r:?}: none kept (was it dealt?)"
            ))),
        }
    }

    /// Party `party`'s (0 or 1) share of the fixed B (k x n) of `key`, as that party
    /// derives it: what a helper holding the same seed needs to serve lookups in that
    /// share (two-server PIR, `tessera_protocols::lookup`).
    pub fn fixed_b_share(&self, party: usize, key: u64, k: usize, n: usize) -> Vec<u64> {
        let seed = if party == 0 { &self.seed0 } else { &self.seed1 };
        fixed_b(seed, key, k, n)
    }

    /// The fixed B (k x n) of `key`, from the cache or derived from both seeds.
    fn fixed_b(&mut self, key: u64, k: usize, n: usize) -> &[u64] {
        let pos = match self
            .fixed
            .iter()
            .position(|(q, b)| *q == key && b.len() == k * n)
        {
            Some(i) => i,
            None => {
                if self.fixed.len() >= FIXED_B_CACHE {
                    self.fixed.pop_front();
                }
                let b = wadd(
                    &fixed_b(&self.seed0, key, k, n),
                    &fixed_b(&self.seed1, key, k, n),
                );
                self.fixed.push_back((key, b));
                self.fixed.len() - 1
            }
        };
        &self.fixed[pos].1
    }

    /// Produces the words for P0 and P1 for `r`, advancing both streams exactly as P0 and
    /// P1 will.
    pub fn deal(&mut self, r: &Request) -> [Vec<u64>; 2] {
        if let Request::Fss(f) = r {
            return f.deal(&mut self.prg0, &mut self.prg1);
        }
        [vec![], self.deal_arith(r)]
    }

    fn deal_arith(&mut self, r: &Request) -> Vec<u64> {
        let m0 = expand_p0(&mut self.prg0, &self.seed0, r);
        // P1's uniform parts: expand with an empty correction slot (filled below).
        let u1: Vec<Vec<u64>> = p1_uniform(r).iter().map(|&l| self.prg1.words(l)).collect();
        match *r {
            Request::Beaver { .. } => {
                let a = wadd(&m0.parts[0], &u1[0]);
                let b = wadd(&m0.parts[1], &u1[1]);
                let c: Vec<u64> = a.iter().zip(&b).map(|(x, y)| x.wrapping_mul(*y)).collect();
                wsub(&c, &m0.parts[2])
            }
            Request::MatTriple { batch, m, k, n } => {
                let a = wadd(&m0.parts[0], &u1[0]);
                let b = wadd(&m0.parts[1], &u1[1]);
                let mut c = Vec::with_capacity(batch * m * n);
                for i in 0..batch {
                    c.extend(matmul_u64(
                        &a[i * m * k..(i + 1) * m * k],
                        &b[i * k * n..(i + 1) * k * n],
                        m,
                        k,
                        n,
                    ));
                }
                wsub(&c, &m0.parts[2])
            }
            Request::MatTripleFixedB { m, k, n, key } => {
                let b = self.fixed_b(key, k, n);
                let a = wadd(&m0.parts[0], &u1[0]);
                let c = matmul_u64(&a, b, m, k, n);
                wsub(&c, &m0.parts[2])
            }
            Request::MatTripleFixedBT { m, k, n, key } => {
                // B is the n x k table of the key (same words as FixedB { k: n, n: k }).
                let b = self.fixed_b(key, n, k).to_vec();
                let a = wadd(&m0.parts[0], &u1[0]);
                let c = crate::tensor::kernel::matmul_nt_u64(&a, &b, m, k, n);
                wsub(&c, &m0.parts[2])
            }
            Request::MatTripleOwner { m, k, n, key, t } => {
                let c = fixed_b_product(&self.seed1, key, &m0.parts[0], m, k, n, t);
                wsub(&c, &m0.parts[1])
            }
            Request::FixedB { .. } | Request::OwnerB { .. } | Request::Fss(_) => vec![],
            Request::NormMask { rows, k } => {
                let a = wadd(&m0.parts[0], &u1[0]);
                let b = wadd(&m0.parts[1], &u1[1]);
                let c = wadd(&m0.parts[2], &u1[2]);
                let n = rows * k;
                if let Some(v) = self.views.as_mut() {
                    v.push_back(a.clone());
                }
                let mut out = vec![0u64; 5 * n];
                let (a2, rest) = out.split_at_mut(n);
                let (ab, rest) = rest.split_at_mut(n);
                let (ac, rest) = rest.split_at_mut(n);
                let (abc, bc) = rest.split_at_mut(n);
                for (i, &bv) in b.iter().enumerate() {
                    for (j, &cv) in c.iter().enumerate() {
                        let e = i * k + j;
                        let av = a[e];
                        a2[e] = av.wrapping_mul(av).wrapping_sub(m0.parts[3][e]);
                        ab[e] = av.wrapping_mul(bv).wrapping_sub(m0.parts[4][e]);
                        ac[e] = av.wrapping_mul(cv).wrapping_sub(m0.parts[5][e]);
                        abc[e] = av
                            .wrapping_mul(bv)
                            .wrapping_mul(cv)
                            .wrapping_sub(m0.parts[6][e]);
                        bc[e] = bv.wrapping_mul(cv).wrapping_sub(m0.parts[7][e]);
                    }
                }
                out
            }
            Request::MulSq { n } => {
                let a = wadd(&m0.parts[0], &u1[0]);
                let b = wadd(&m0.parts[1], &u1[1]);
                let mut out = Vec::with_capacity(3 * n);
                let b2: Vec<u64> = b.iter().map(|v| v.wrapping_mul(*v)).collect();
                out.extend(b2.iter().zip(&m0.parts[2]).map(|(v, s)| v.wrapping_sub(*s)));
                out.extend((0..n).map(|i| a[i].wrapping_mul(b[i]).wrapping_sub(m0.parts[3][i])));
                out.extend((0..n).map(|i| a[i].wrapping_mul(b2[i]).wrapping_sub(m0.parts[4][i])));
                out
            }
            Request::TruncSq { n, shift, bits } | Request::TruncLinSq { n, shift, bits } => {
                let lin = matches!(r, Request::TruncLinSq { .. });
                let uniform = if lin { 3 } else { 2 };
                let [rm, a1, a2]: [Vec<u64>; 3] = std::array::from_fn(|j| {
                    if j < uniform {
                        wadd(&m0.parts[j], &u1[j])
                    } else {
                        vec![]
                    }
                });
                let low = u64::MAX >> (64 - bits);
                let beta: Vec<u64> = rm
                    .iter()
                    .map(|v| (v & ((1u64 << shift) - 1)).wrapping_neg())
                    .collect();
                let b2: Vec<u64> = beta.iter().map(|v| v.wrapping_mul(*v)).collect();
                let prod = |a: &[u64], b: &[u64]| -> Vec<u64> {
                    a.iter().zip(b).map(|(x, y)| x.wrapping_mul(*y)).collect()
                };
                // TruncSq: alpha beta, alpha beta²; TruncLinSq: alpha1 beta, alpha2 beta,
                // alpha2 beta².
                let products = if lin {
                    vec![prod(&a1, &beta), prod(&a2, &beta), prod(&a2, &b2)]
                } else {
                    vec![prod(&a1, &beta), prod(&a1, &b2)]
                };
                let mut vals = vec![
                    rm.iter().map(|v| (v & low) >> shift).collect(),
                    rm.iter().map(|v| (v >> (bits - 1)) & 1).collect(),
                    beta,
                    b2,
                ];
                vals.extend(products);
                let mut out = Vec::with_capacity(vals.len() * n);
                for (j, v) in vals.iter().enumerate() {
                    out.extend(
                        v.iter()
                            .zip(&m0.parts[uniform + j])
                            .map(|(x, s)| x.wrapping_sub(*s)),
                    );
                }
                out
            }
            Request::LinSq { n } => {
                let a1 = wadd(&m0.parts[0], &u1[0]);
                let a2 = wadd(&m0.parts[1], &u1[1]);
                let b = wadd(&m0.parts[2], &u1[2]);
                let b2: Vec<u64> = b.iter().map(|v| v.wrapping_mul(*v)).collect();
                let mut out = Vec::with_capacity(4 * n);
                out.extend(b2.iter().zip(&m0.parts[3]).map(|(v, s)| v.wrapping_sub(*s)));
                out.extend((0..n).map(|i| a1[i].wrapping_mul(b[i]).wrapping_sub(m0.parts[4][i])));
                out.extend((0..n).map(|i| a2[i].wrapping_mul(b[i]).wrapping_sub(m0.parts[5][i])));
                out.extend((0..n).map(|i| a2[i].wrapping_mul(b2[i]).wrapping_sub(m0.parts[6][i])));
                out
            }
            Request::TruncRowMul {
                rows,
                k,
                shift,
                bits,
            } => {
                let r = wadd(&m0.parts[0], &u1[0]);
                let rho = wadd(&m0.parts[1], &u1[1]);
                let n = rows * k;
                let low = u64::MAX >> (64 - bits);
                let rt = |i: usize| (r[i] & low) >> shift;
                let top = |i: usize| (r[i] >> (bits - 1)) & 1;
                let mut out = Vec::with_capacity(4 * n);
                out.extend((0..n).map(|i| rt(i).wrapping_sub(m0.parts[2][i])));
                out.extend((0..n).map(|i| top(i).wrapping_sub(m0.parts[3][i])));
                out.extend(
                    (0..n).map(|i| rt(i).wrapping_mul(rho[i / k]).wrapping_sub(m0.parts[4][i])),
                );
                out.extend(
                    (0..n).map(|i| top(i).wrapping_mul(rho[i / k]).wrapping_sub(m0.parts[5][i])),
                );
                out
            }
            Request::Trunc { n, shift, bits } => {
                let r_full = wadd(&m0.parts[0], &u1[0]);
                let low = u64::MAX >> (64 - bits);
                let mut out = Vec::with_capacity(2 * n);
                out.extend(
                    r_full
                        .iter()
                        .zip(&m0.parts[1])
                        .map(|(r, s0)| ((r & low) >> shift).wrapping_sub(*s0)),
                );
                out.extend(
                    r_full
                        .iter()
                        .zip(&m0.parts[2])
                        .map(|(r, s0)| ((r >> (bits - 1)) & 1).wrapping_sub(*s0)),
                );
                out
            }
        }
    }

    /// The words for a whole demand, per party, one entry per request.
    pub fn deal_all(&mut self, d: &Demand) -> [Vec<Vec<u64>>; 2] {
        let mut out = [Vec::with_capacity(d.0.len()), Vec::with_capacity(d.0.len())];
        for r in &d.0 {
            let [a, b] = self.deal(r);
            out[0].push(a);
            out[1].push(b);
        }
        out
    }
}

/// Where a party's dealer words come from.
#[derive(Debug)]
pub enum CorrectionSource {
    /// Prefetched words (planned stream or file), in request order.
    Queue(VecDeque<Vec<u64>>),
    /// Ask the dealer (party 2) for each request as it comes (2PC live dealer, P1).
    Live,
    /// The dealer sends unasked: it deals at the same point of the protocol (3PC, P2) or
    /// when P1 asks (2PC live dealer, P0's part).
    Inline,
}

/// A compute party's preprocessing store.
pub struct MaterialStore {
    party: usize,
    source: CorrectionSource,
    seed: Seed,
    prg: Prg,
    plan: Option<VecDeque<Request>>,
    consumed: Demand,
}

impl std::fmt::Debug for MaterialStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MaterialStore(..)")
    }
}

/// What [`MaterialStore::take`] needs from the network for live and inline sources.
pub trait CorrectionLink {
    /// Sends a request to the dealer (live mode).
    fn ask(&mut self, req: &Request) -> Result<()>;
    /// Receives the next correction from the dealer.
    fn receive(&mut self, expected: usize) -> Result<Vec<u64>>;
}

impl MaterialStore {
    /// Party `party`'s (0 or 1) store: uniform parts from `seed`, dealer words from
    /// `source`.
    pub fn new(party: usize, seed: Seed, source: CorrectionSource) -> Self {
        MaterialStore {
            party,
            source,
            seed,
            prg: Prg::new(seed),
            plan: None,
            consumed: Demand::default(),
        }
    }
    /// P0's store with an inline source (arithmetic material needs nothing from the
    /// dealer; FSS keys arrive unasked).
    pub fn p0(seed: Seed) -> Self {
        MaterialStore {
            party: 0,
            source: CorrectionSource::Inline,
            seed,
            prg: Prg::new(seed),
            plan: None,
            consumed: Demand::default(),
        }
    }
    /// P1's store: uniform parts from `seed`, corrections from `source`.
    pub fn p1(seed: Seed, source: CorrectionSource) -> Self {
        MaterialStore {
            party: 1,
            source,
            seed,
            prg: Prg::new(seed),
            plan: None,
            consumed: Demand::default(),
        }
    }
    /// Installs a plan; every later `take` must match it in order.
    pub fn set_plan(&mut self, d: Demand) {
        self.plan = Some(d.0.into());
    }
    /// Appends a planned batch: its requests to the plan and its dealer words to the queue
    /// (the source becomes a queue if it was not one).
    pub fn append_planned(&mut self, d: Demand, words: Vec<Vec<u64>>) {
        match &mut self.source {
            CorrectionSource::Queue(q) => q.extend(words),
            other => *other = CorrectionSource::Queue(words.into()),
        }
        match &mut self.plan {
            Some(p) => p.extend(d.0),
            None => self.plan = Some(d.0.into()),
        }
    }

    /// Replaces the correction source (e.g. after prefetching a planned stream).
    pub fn set_source(&mut self, s: CorrectionSource) {
        self.source = s;
    }
    /// Everything consumed so far (the job's demand, as observed).
    pub fn consumed(&self) -> &Demand {
        &self.consumed
    }

    /// This party's material for `r`.
    pub fn take(&mut self, r: &Request, link: &mut dyn CorrectionLink) -> Result<Material> {
        if let Some(plan) = &mut self.plan {
            match plan.pop_front() {
                Some(p) if &p == r => {}
                Some(p) => {
                    return Err(Error::Preprocessing(format!(
                        "protocol asked for {r:?} but the plan's next item is {p:?}"
                    )))
                }
                None => {
                    return Err(Error::Preprocessing(format!(
                        "protocol asked for {r:?} but the plan is exhausted"
                    )))
                }
            }
        }
        self.consumed.push(r.clone());
        let want = r.correction_len(self.party);
        let corr = match &mut self.source {
            CorrectionSource::Queue(q) => q.pop_front().ok_or_else(|| {
                Error::Preprocessing(format!("no prefetched material left for {r:?}"))
            })?,
            CorrectionSource::Live => {
                link.ask(r)?;
                link.receive(want)?
            }
            CorrectionSource::Inline if want == 0 => vec![],
            CorrectionSource::Inline => link.receive(want)?,
        };
        expand(self.party, &mut self.prg, &self.seed, r, corr)
    }
}

/// Magic word at the start of a material file ("TSSRMATL").
const FILE_MAGIC: u64 = u64::from_le_bytes(*b"TSSRMATL");
const FILE_VERSION: u64 = 1;

/// Name of party `id`'s material file inside an offline-preprocessing directory.
pub fn material_file(dir: &std::path::Path, id: usize) -> std::path::PathBuf {
    dir.join(format!("p{id}.material"))
}

/// Offline dealing into files: writes `p0.material` (seed + demand) and `p1.material`
/// (seed + demand + corrections) into `dir`, with fresh OS-seeded material seeds. The
/// files hold secrets: they are created with mode 0600 on unix. Returns the bytes written
/// per party.
pub fn write_files(dir: &std::path::Path, demand: &Demand) -> Result<[u64; 2]> {
    std::fs::create_dir_all(dir).map_err(|e| Error::File {
        path: dir.to_path_buf(),
        cause: e,
    })?;
    let seeds = [Seed::random(), Seed::random()];
    let mut dealer = Dealer::new(seeds[0], seeds[1]);
    let mut sizes = [0u64; 2];
    let mut file_words: Vec<Vec<u64>> = Vec::new();
    for (id, seed) in seeds.iter().enumerate() {
        let mut w = vec![FILE_MAGIC, FILE_VERSION, id as u64];
        w.extend(seed.to_words());
        w.extend(demand.encode());
        file_words.push(w);
    }
    for (id, words) in dealer.deal_all(demand).into_iter().enumerate() {
        for c in words {
            file_words[id].extend(c);
        }
    }
    for (id, w) in file_words.iter().enumerate() {
        let path = material_file(dir, id);
        let bytes: &[u8] = bytemuck::cast_slice(w);
        write_secret(&path, bytes).map_err(|e| Error::File {
            path: path.clone(),
            cause: e,
        })?;
        sizes[id] = bytes.len() as u64;
    }
    Ok(sizes)
}

fn write_secret(path: &std::path::Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let mut o = std::fs::OpenOptions::new();
    o.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        o.mode(0o600);
    }
    o.open(path)?.write_all(bytes)
}

/// Loads party `id`'s store from an offline-preprocessing directory; the store carries the
/// file's demand as its plan. Errors name the file and what is wrong with it.
pub fn load_file(dir: &std::path::Path, id: usize) -> Result<MaterialStore> {
    let path = material_file(dir, id);
    let bytes = std::fs::read(&path).map_err(|e| Error::File {
        path: path.clone(),
        cause: e,
    })?;
    load_bytes(&bytes, id, &path)
}

/// Parses the bytes of party `id`'s material file (what [`load_file`] reads); `path` only
/// names the file in errors. Never panics, and allocates no more than the bytes given
/// (a demand or correction length the file does not hold is an error before any copy).
pub fn load_bytes(bytes: &[u8], id: usize, path: &std::path::Path) -> Result<MaterialStore> {
    let bad = |what: String| Error::Preprocessing(format!("{}: {what}", path.display()));
    if !bytes.len().is_multiple_of(8) {
        return Err(bad(format!(
            "length {} is not a whole number of words",
            bytes.len()
        )));
    }
    let w: Vec<u64> = bytemuck::pod_collect_to_vec(bytes);
    if w.len() < 5 || w[0] != FILE_MAGIC {
        return Err(bad("not a tessera material file".into()));
    }
    if w[1] != FILE_VERSION {
        return Err(bad(format!("version {} (expected {FILE_VERSION})", w[1])));
    }
    if w[2] != id as u64 {
        return Err(bad(format!("file is for party {}, not {id}", w[2])));
    }
    let seed = Seed::from_words([w[3], w[4]]);
    let (demand, used) = Demand::decode(&w[5..]).map_err(|e| bad(e.to_string()))?;
    let mut pos = 5 + used;
    let mut q = VecDeque::with_capacity(demand.0.len());
    for r in &demand.0 {
        let l = r.correction_len(id);
        let part = pos
            .checked_add(l)
            .and_then(|end| w.get(pos..end))
            .ok_or_else(|| bad(format!("truncated: corrections for {r:?} missing")))?;
        q.push_back(part.to_vec());
        pos += l;
    }
    let mut store = MaterialStore::new(id, seed, CorrectionSource::Queue(q));
    if pos != w.len() {
        return Err(bad(format!("{} trailing words", w.len() - pos)));
    }
    store.set_plan(demand);
    Ok(store)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn material_files_roundtrip_and_reject_damage() {
        let dir = std::env::temp_dir().join(format!("tessera-mat-{}", std::process::id()));
        let d = Demand(vec![
            Request::Beaver { n: 10 },
            Request::Trunc {
                n: 5,
                shift: 16,
                bits: 64,
            },
        ]);
        write_files(&dir, &d).unwrap();
        let mut p0 = load_file(&dir, 0).unwrap();
        let mut p1 = load_file(&dir, 1).unwrap();
        let a0 = p0.take(&d.0[0], &mut NoLink).unwrap();
        let a1 = p1.take(&d.0[0], &mut NoLink).unwrap();
        for i in 0..10 {
            let a = a0.parts[0][i].wrapping_add(a1.parts[0][i]);
            let b = a0.parts[1][i].wrapping_add(a1.parts[1][i]);
            let c = a0.parts[2][i].wrapping_add(a1.parts[2][i]);
            assert_eq!(a.wrapping_mul(b), c);
        }
        let path = material_file(&dir, 1);
        let bytes = std::fs::read(&path).unwrap();
        std::fs::write(&path, &bytes[..bytes.len() - 8]).unwrap();
        let e = load_file(&dir, 1).unwrap_err().to_string();
        assert!(e.contains("p1.material") && e.contains("truncated"), "{e}");
        std::fs::write(&path, &bytes[..bytes.len() - 3]).unwrap();
        assert!(load_file(&dir, 1)
            .unwrap_err()
            .to_string()
            .contains("whole number"));
        let e = load_file(&dir, 7).unwrap_err().to_string();
        assert!(e.contains("p7.material"), "{e}");
        std::fs::remove_dir_all(&dir).ok();
    }

    struct NoLink;
    impl CorrectionLink for NoLink {
        fn ask(&mut self, _: &Request) -> Result<()> {
            unreachable!()
        }
        fn receive(&mut self, _: usize) -> Result<Vec<u64>> {
            unreachable!()
        }
    }

    fn pair(d: &Demand) -> (Vec<Material>, Vec<Material>) {
        let (s0, s1) = (Seed::random(), Seed::random());
        let mut dealer = Dealer::new(s0, s1);
        let [c0, c1] = dealer.deal_all(d);
        let mut p0 = MaterialStore::new(0, s0, CorrectionSource::Queue(c0.into()));
        let mut p1 = MaterialStore::new(1, s1, CorrectionSource::Queue(c1.into()));
        p1.set_plan(d.clone());
        let m0 =
            d.0.iter()
                .map(|r| p0.take(r, &mut NoLink).unwrap())
                .collect();
        let m1 =
            d.0.iter()
                .map(|r| p1.take(r, &mut NoLink).unwrap())
                .collect();
        (m0, m1)
    }

    #[test]
    fn triples_and_trunc_material_are_correct() {
        let d = Demand(vec![
            Request::Beaver { n: 100 },
            Request::MatTriple {
                batch: 2,
                m: 3,
                k: 4,
                n: 5,
            },
            Request::Trunc {
                n: 50,
                shift: 16,
                bits: 64,
            },
            Request::MatTripleFixedB {
                m: 2,
                k: 3,
                n: 4,
                key: 9,
            },
            Request::MatTripleFixedB {
                m: 1,
                k: 3,
                n: 4,
                key: 9,
            },
        ]);
        let (m0, m1) = pair(&d);
        let open = |i: usize, j: usize| wadd(&m0[i].parts[j], &m1[i].parts[j]);
        let (a, b, c) = (open(0, 0), open(0, 1), open(0, 2));
        for i in 0..100 {
            assert_eq!(a[i].wrapping_mul(b[i]), c[i]);
        }
        let (a, b, c) = (open(1, 0), open(1, 1), open(1, 2));
        for i in 0..2 {
            let ci = matmul_u64(&a[i * 12..(i + 1) * 12], &b[i * 20..(i + 1) * 20], 3, 4, 5);
            assert_eq!(&c[i * 15..(i + 1) * 15], &ci[..]);
        }
        let (r, rt, msb) = (open(2, 0), open(2, 1), open(2, 2));
        for i in 0..50 {
            assert_eq!(rt[i], r[i] >> 16);
            assert_eq!(msb[i], r[i] >> 63);
        }
        // The fixed B is the same in both triples; C = A B.
        assert_eq!(open(3, 1), open(4, 1));
        assert_eq!(open(3, 2), matmul_u64(&open(3, 0), &open(3, 1), 2, 3, 4));
        assert_eq!(open(4, 2), matmul_u64(&open(4, 0), &open(4, 1), 1, 3, 4));
        // In a 34-bit ring: (r mod 2^34) >> 13 and bit 33 of r.
        let d = Demand(vec![Request::Trunc {
            n: 200,
            shift: 13,
            bits: 34,
        }]);
        let (m0, m1) = pair(&d);
        let open = |j: usize| wadd(&m0[0].parts[j], &m1[0].parts[j]);
        let (r, rt, msb) = (open(0), open(1), open(2));
        for i in 0..200 {
            assert_eq!(rt[i], (r[i] & ((1 << 34) - 1)) >> 13);
            assert_eq!(msb[i], (r[i] >> 33) & 1);
        }
        assert!(msb.contains(&1) && msb.contains(&0));
    }

    #[test]
    fn owner_triples_are_one_sided_and_correct() {
        // B (k x n, or the n x k table with t) reaches P1 whole and P0 not at all; A and C0
        // are P0's alone, P1 holds only C1, and C0 + C1 = A B (A B^T). Sizes above one
        // streamed block of the dealer (2^18 words) check the block seams.
        let cases = [
            (2, 3, 4, false),
            (3, 700, 600, false),
            (2, 600, 700, true),
            (1, 5, 3, true),
        ];
        let mut d = Demand::default();
        for (i, &(m, k, n, t)) in cases.iter().enumerate() {
            let (bk, bn) = if t { (n, k) } else { (k, n) };
            let key = 100 + i as u64;
            d.push(Request::OwnerB { k: bk, n: bn, key });
            d.push(Request::MatTripleOwner { m, k, n, key, t });
        }
        for r in &d.0 {
            assert_eq!(Request::decode(&r.encode()).unwrap().0, *r);
            assert_eq!(r.correction_len(0), 0);
        }
        let (m0, m1) = pair(&d);
        for (i, &(m, k, n, t)) in cases.iter().enumerate() {
            let (ob, tri) = (2 * i, 2 * i + 1);
            assert!(m0[ob].parts.is_empty(), "P0 gets no mask");
            let b = &m1[ob].parts[0];
            assert_eq!(m0[tri].parts.len(), 2);
            assert_eq!(m1[tri].parts.len(), 1);
            let (a, c0, c1) = (&m0[tri].parts[0], &m0[tri].parts[1], &m1[tri].parts[0]);
            let want = if t {
                crate::tensor::kernel::matmul_nt_u64(a, b, m, k, n)
            } else {
                matmul_u64(a, b, m, k, n)
            };
            assert_eq!(wadd(c0, c1), want, "case {i}");
        }
        // A bad transpose flag is refused.
        let mut w = Request::MatTripleOwner {
            m: 1,
            k: 1,
            n: 1,
            key: 1,
            t: true,
        }
        .encode();
        w[5] = 2;
        assert!(Request::decode(&w).is_err());
    }

    #[test]
    fn fixed_b_survives_dealer_cache_eviction() {
        // More weights than the dealer caches, then the first again: re-derived B.
        let mut reqs: Vec<Request> = (0..FIXED_B_CACHE as u64 + 2)
            .map(|key| Request::MatTripleFixedB {
                m: 2,
                k: 3,
                n: 2,
                key,
            })
            .collect();
        reqs.push(reqs[0].clone());
        let last = reqs.len() - 1;
        let (m0, m1) = pair(&Demand(reqs));
        let open = |i: usize, j: usize| wadd(&m0[i].parts[j], &m1[i].parts[j]);
        assert_eq!(open(0, 1), open(last, 1));
        for i in 0..=last {
            assert_eq!(
                open(i, 2),
                matmul_u64(&open(i, 0), &open(i, 1), 2, 3, 2),
                "{i}"
            );
        }
    }

    #[test]
    fn norm_mask_material_is_correct_and_round_trips() {
        let (rows, k) = (3, 5);
        let r = Request::NormMask { rows, k };
        let (w, used) = Request::decode(&r.encode()).unwrap();
        assert_eq!((w, used), (r.clone(), 3));
        let (m0, m1) = pair(&Demand(vec![r]));
        let open = |j: usize| wadd(&m0[0].parts[j], &m1[0].parts[j]);
        let (a, b, c) = (open(0), open(1), open(2));
        let (a2, ab, ac, abc, bc) = (open(3), open(4), open(5), open(6), open(7));
        for (i, &bi) in b.iter().enumerate() {
            for (j, &cj) in c.iter().enumerate() {
                let e = i * k + j;
                assert_eq!(a2[e], a[e].wrapping_mul(a[e]));
                assert_eq!(ab[e], a[e].wrapping_mul(bi));
                assert_eq!(ac[e], a[e].wrapping_mul(cj));
                assert_eq!(abc[e], a[e].wrapping_mul(bi).wrapping_mul(cj));
                assert_eq!(bc[e], bi.wrapping_mul(cj));
            }
        }
    }

    #[test]
    fn mul_sq_and_trunc_row_material_are_correct() {
        let (rows, k, n) = (3, 4, 12);
        let reqs = [
            Request::MulSq { n },
            Request::TruncRowMul {
                rows,
                k,
                shift: 20,
                bits: 64,
            },
            Request::TruncRowMul {
                rows,
                k,
                shift: 20,
                bits: 60,
            },
            Request::LinSq { n },
        ];
        for r in &reqs {
            assert_eq!(Request::decode(&r.encode()).unwrap().0, *r);
        }
        let (m0, m1) = pair(&Demand(reqs.to_vec()));
        let open = |q: usize, j: usize| wadd(&m0[q].parts[j], &m1[q].parts[j]);
        let (a, b) = (open(0, 0), open(0, 1));
        for i in 0..n {
            let b2 = b[i].wrapping_mul(b[i]);
            assert_eq!(open(0, 2)[i], b2);
            assert_eq!(open(0, 3)[i], a[i].wrapping_mul(b[i]));
            assert_eq!(open(0, 4)[i], a[i].wrapping_mul(b2));
        }
        for (q, bits) in [(1, 64u32), (2, 60)] {
            let (r, rho) = (open(q, 0), open(q, 1));
            let low = u64::MAX >> (64 - bits);
            for i in 0..n {
                let (rt, top) = ((r[i] & low) >> 20, (r[i] >> (bits - 1)) & 1);
                assert_eq!(open(q, 2)[i], rt, "ring {bits}");
                assert_eq!(open(q, 3)[i], top, "ring {bits}");
                assert_eq!(open(q, 4)[i], rt.wrapping_mul(rho[i / k]));
                assert_eq!(open(q, 5)[i], top.wrapping_mul(rho[i / k]));
            }
        }
        let (a1, a2, b) = (open(3, 0), open(3, 1), open(3, 2));
        for i in 0..n {
            let b2 = b[i].wrapping_mul(b[i]);
            assert_eq!(open(3, 3)[i], b2);
            assert_eq!(open(3, 4)[i], a1[i].wrapping_mul(b[i]));
            assert_eq!(open(3, 5)[i], a2[i].wrapping_mul(b[i]));
            assert_eq!(open(3, 6)[i], a2[i].wrapping_mul(b2));
        }
        for (shift, bits) in [(20, 21), (20, 64), (0, 30), (20, 65)] {
            let e = Request::decode(&[TAG_TRUNC_ROW_RING, 2, 3, shift, bits]).unwrap_err();
            assert!(e.to_string().contains("ring bits"), "{e}");
        }
        let bad = Request::decode(&[TAG_TRUNC_ROW, 1, 1, 64]).unwrap_err();
        assert!(bad.to_string().contains("shift"), "{bad}");
        for w in [
            vec![TAG_NORM, 1 << 30, 1 << 30],
            vec![TAG_MAT, 1 << 20, 1 << 20, 1 << 20, 1],
        ] {
            let bad = Request::decode(&w).unwrap_err();
            assert!(bad.to_string().contains("2^34"), "{bad}");
        }
    }

    #[test]
    fn trunc_sq_material_masks_the_remainder_with_the_truncation_mask() {
        let n = 50;
        let reqs = [
            Request::TruncSq {
                n,
                shift: 13,
                bits: 38,
            },
            Request::TruncSq {
                n,
                shift: 13,
                bits: 64,
            },
        ];
        for r in &reqs {
            assert_eq!(Request::decode(&r.encode()).unwrap().0, *r);
        }
        let (m0, m1) = pair(&Demand(reqs.to_vec()));
        let open = |q: usize, j: usize| wadd(&m0[q].parts[j], &m1[q].parts[j]);
        let lin = Request::TruncLinSq {
            n,
            shift: 13,
            bits: 34,
        };
        assert_eq!(Request::decode(&lin.encode()).unwrap().0, lin);
        let (l0, l1) = pair(&Demand(vec![lin]));
        let lopen = |j: usize| wadd(&l0[0].parts[j], &l1[0].parts[j]);
        assert_eq!(l0[0].parts.len(), 10);
        let (r, a1, a2) = (lopen(0), lopen(1), lopen(2));
        for i in 0..n {
            let beta = (r[i] & ((1 << 13) - 1)).wrapping_neg();
            let b2 = beta.wrapping_mul(beta);
            assert_eq!(lopen(3)[i], (r[i] & ((1 << 34) - 1)) >> 13);
            assert_eq!(lopen(4)[i], (r[i] >> 33) & 1);
            assert_eq!((lopen(5)[i], lopen(6)[i]), (beta, b2));
            assert_eq!(lopen(7)[i], a1[i].wrapping_mul(beta));
            assert_eq!(lopen(8)[i], a2[i].wrapping_mul(beta));
            assert_eq!(lopen(9)[i], a2[i].wrapping_mul(b2));
        }
        for (q, bits) in [(0, 38u32), (1, 64)] {
            assert_eq!(m0[q].parts.len(), 8);
            let (r, a) = (open(q, 0), open(q, 1));
            let low = u64::MAX >> (64 - bits);
            for i in 0..n {
                let beta = (r[i] & ((1 << 13) - 1)).wrapping_neg();
                let b2 = beta.wrapping_mul(beta);
                assert_eq!(open(q, 2)[i], (r[i] & low) >> 13, "ring {bits}");
                assert_eq!(open(q, 3)[i], (r[i] >> (bits - 1)) & 1, "ring {bits}");
                assert_eq!(open(q, 4)[i], beta);
                assert_eq!(open(q, 5)[i], b2);
                assert_eq!(open(q, 6)[i], a[i].wrapping_mul(beta));
                assert_eq!(open(q, 7)[i], a[i].wrapping_mul(b2));
            }
        }
        // (u64::MAX, 40): the fuzzer's find, a shift that wrapped the bound check
        for (shift, bits) in [(13, 14), (13, 65), (0, 30), (u64::MAX, 40)] {
            let e = Request::decode(&[TAG_TRUNC_SQ, 2, shift, bits]).unwrap_err();
            assert!(e.to_string().contains("ring bits"), "{e}");
            let e = Request::decode(&[TAG_TRUNC_RING, 2, shift, bits]).unwrap_err();
            assert!(e.to_string().contains("ring bits"), "{e}");
            let e = Request::decode(&[TAG_TRUNC_ROW_RING, 2, 2, shift, bits]).unwrap_err();
            assert!(e.to_string().contains("ring bits"), "{e}");
        }
    }

    #[test]
    fn plan_mismatch_and_bad_encodings_are_errors() {
        let mut p0 = MaterialStore::p0(Seed::random());
        p0.set_plan(Demand(vec![Request::Beaver { n: 3 }]));
        let e = p0.take(&Request::Beaver { n: 4 }, &mut NoLink).unwrap_err();
        assert!(e.to_string().contains("plan's next item"), "{e}");
        let d = Demand(vec![
            Request::Trunc {
                n: 3,
                shift: 12,
                bits: 64,
            },
            Request::Beaver { n: 1 },
        ]);
        assert_eq!(Demand::decode(&d.encode()).unwrap().0, d);
        let mut w = d.encode();
        w.truncate(3);
        assert!(Demand::decode(&w).is_err());
        assert!(Request::decode(&[99]).is_err());
        // Ring truncations encode their width and decode only shift + 2 <= bits <= 64.
        let ring = Request::Trunc {
            n: 5,
            shift: 13,
            bits: 34,
        };
        assert_eq!(Request::decode(&ring.encode()).unwrap(), (ring, 4));
        for (shift, bits) in [(13, 14), (13, 65), (13, 64), (0, 34), (1, 2)] {
            let e = Request::decode(&[TAG_TRUNC_RING, 5, shift, bits]).unwrap_err();
            assert!(e.to_string().contains("ring bits"), "{e}");
        }
        assert!(Request::decode(&[TAG_BEAVER, 1 << 40]).is_err());
    }
}
