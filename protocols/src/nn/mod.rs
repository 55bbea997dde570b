//! Modules: layers that own their shared weights, their forward protocol and — derived
//! from that same forward code — their preprocessing demand (DESIGN.md §8; the shape of
//! candle-nn / crypten.nn).
//!
//! A model family is one file that composes modules ([`crate::models::bert`],
//! [`crate::models::llama`]); nothing at the model level states what material it needs.
//!
//! ## How the dealing plan comes from the forward pass
//! Every operation that consumes preprocessing material or talks to the peers goes through
//! a [`Cx`] (the forward context). A `Cx` runs in one of two modes:
//! - **run**: it calls the protocol, times it into a [`Breakdown`], and before every
//!   material-consuming operation calls the session's *stage hook* with the step's index,
//!   which deals that step's material just in time (so a party holds one step's keys);
//! - **plan**: on a [`Party::planner`] (no peers, no material), it records each step's
//!   [`Demand`] (and the 2PC dealer's online part, if any) and returns zeros of the output
//!   shape, so the local code between operations (reshapes, slices, residual adds, RoPE,
//!   the KV cache) runs unchanged.
//!
//! So the plan a dealer walks is produced by running the model's own `forward` in plan
//! mode: there is no second, hand-written tree of demands to keep in step with the model.
//! Softmax, GeLU and SiLU on more than `max_step_elems` elements are split into row
//! chunks, each its own step (bounded memory at the price of each chunk repeating the op's
//! rounds); both modes split the same way.

pub mod act;
pub mod attention;
pub mod conv;
pub mod embedding;
pub mod linear;
pub mod mlp;
pub mod norm;
pub mod train;

pub use act::Activation;
pub use attention::{Attention, AttentionMask, KvCache, Rope, RopeStyle, MASKED};
pub use conv::{AvgPool2d, Conv2d, ConvSpec, MaxPool2d};
pub use embedding::Embedding;
pub use linear::{Linear, Matrix, Vector};
pub use mlp::Mlp;
pub use norm::Norm;

use crate::arith::{self, demand as ad, PreparedWeight};
use crate::gelu::{gelu, gelu_demand, GeluMethod};
use crate::layernorm::{layernorm, layernorm_demand, LayerNormMethod};
use crate::lookup::{lookup_demand, lookup_rows, lookup_rows_dealer};
use crate::rmsnorm::{rmsnorm, rmsnorm_demand};
use crate::rsqrt::{rsqrt, rsqrt_demand, RsqrtMethod};
use crate::silu::{silu, silu_demand, SiluMethod};
use crate::softmax::{softmax, softmax_demand, SoftmaxMethod};
use std::time::{Duration, Instant};
use tessera::error::{Error, PartyId, Result};
use tessera::preproc::Demand;
use tessera::{CommStats, Party, Shared, Tensor};

/// The party that holds the model in the clear and shares it (DESIGN.md §8).
pub const MODEL_OWNER: PartyId = 1;
/// The party that holds the input and alone learns the output.
pub const DATA_OWNER: PartyId = 0;

/// Largest softmax / GeLU / SiLU step in elements by default: larger ones run in row
/// chunks, each its own step with its own material, so a party holds ~60 MB of keys at a
/// time (a BERT-base layer's GeLU keys are ~0.19 GB per party). Each chunk repeats the
/// op's rounds.
pub const BOUNDED_STEP_ELEMS: usize = 1 << 19;

/// Which approximation each nonlinear operation uses (every field selectable by name).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Methods {
    /// GeLU (BERT feed-forward).
    pub gelu: GeluMethod,
    /// SiLU (Llama SwiGLU).
    pub silu: SiluMethod,
    /// Softmax over attention scores.
    pub softmax: SoftmaxMethod,
    /// LayerNorm / RMSNorm's reciprocal square root.
    pub layernorm: LayerNormMethod,
}

/// Time and communication per kind of step, for the per-op breakdown.
#[derive(Clone, Debug, Default)]
pub struct Breakdown {
    /// (name, time, communication) per category, in first-use order.
    pub items: Vec<(&'static str, Duration, CommStats)>,
}

impl Breakdown {
    /// Adds every category of `other`.
    pub fn merge(&mut self, other: &Breakdown) {
        for (n, d, c) in &other.items {
            self.add(n, *d, *c);
        }
    }
    /// Adds `d` and `c` to category `name`.
    pub fn add(&mut self, name: &'static str, d: Duration, c: CommStats) {
        if let Some(e) = self.items.iter_mut().find(|e| e.0 == name) {
            e.1 += d;
            e.2 = add_stats(&e.2, &c);
        } else {
            self.items.push((name, d, c));
        }
    }
}

fn add_stats(a: &CommStats, b: &CommStats) -> CommStats {
    CommStats {
        rounds: a.rounds + b.rounds,
        online_sent: a.online_sent + b.online_sent,
        online_recv: a.online_recv + b.online_recv,
        offline_sent: a.offline_sent + b.offline_sent,
        offline_recv: a.offline_recv + b.offline_recv,
    }
}

/// What the 2PC dealer does online in a step, after dealing its material.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DealerTask {
    /// Second server of a private row lookup ([`crate::lookup::lookup_rows_dealer`]).
    Lookup {
        /// Table rows.
        vocab: usize,
        /// Table width.
        h: usize,
        /// The prepared table's key.
        key: u64,
        /// Number of indices.
        count: usize,
    },
}

impl DealerTask {
    /// Runs the task on the 2PC dealer.
    pub fn run(&self, p: &mut Party) -> Result<()> {
        match *self {
            DealerTask::Lookup {
                vocab,
                h,
                key,
                count,
            } => lookup_rows_dealer(p, vocab, h, key, count),
        }
    }
}

/// One step of a plan: the material dealt just before it and, in 2PC, the dealer's online
/// part (the dealer walks the plan: deal, then its task).
#[derive(Clone, Debug, Default)]
pub struct Step {
    /// Category of the operation (as in the breakdown).
    pub name: &'static str,
    /// Material the step consumes.
    pub demand: Demand,
    /// The 2PC dealer's online part.
    pub dealer: Option<DealerTask>,
}

/// The stage hook of a run: called with the party and the step's index before each step.
pub type StageHook<'h> = &'h mut dyn FnMut(&mut Party, usize) -> Result<()>;

enum Mode<'h> {
    Run(Option<StageHook<'h>>),
    Plan(Vec<Step>),
}

/// The forward context: runs (or plans) every material-consuming operation of a model.
/// See the module doc.
pub struct Cx<'h> {
    /// The approximations of the nonlinear operations.
    pub methods: Methods,
    mode: Mode<'h>,
    next: usize,
    max_step_elems: usize,
    /// Time and communication per category (run mode).
    pub breakdown: Breakdown,
}

impl Cx<'static> {
    /// Runs without staging (material already planned or live) and without chunks.
    pub fn run(methods: Methods) -> Cx<'static> {
        Cx {
            methods,
            mode: Mode::Run(None),
            next: 0,
            max_step_elems: usize::MAX,
            breakdown: Breakdown::default(),
        }
    }

    /// Plans: records the steps a run with the same `max_step_elems` would take (use it on
    /// a [`Party::planner`]).
    pub fn plan(methods: Methods, max_step_elems: usize) -> Cx<'static> {
        Cx {
            methods,
            mode: Mode::Plan(vec![]),
            next: 0,
            max_step_elems: max_step_elems.max(1),
            breakdown: Breakdown::default(),
        }
    }
}

impl<'h> Cx<'h> {
    /// Runs with `hook(p, i)` called before step i (its material dealt just in time) and
    /// softmax / GeLU / SiLU split into steps of at most `max_step_elems` elements.
    pub fn staged(methods: Methods, max_step_elems: usize, hook: StageHook<'h>) -> Cx<'h> {
        Cx {
            methods,
            mode: Mode::Run(Some(hook)),
            next: 0,
            max_step_elems: max_step_elems.max(1),
            breakdown: Breakdown::default(),
        }
    }

    /// Whether this context only plans.
    pub fn is_planning(&self) -> bool {
        matches!(self.mode, Mode::Plan(_))
    }

    /// Steps taken so far.
    pub fn steps_taken(&self) -> usize {
        self.next
    }

    /// The planned steps (empty in run mode).
    pub fn into_steps(self) -> Vec<Step> {
        match self.mode {
            Mode::Plan(s) => s,
            Mode::Run(_) => vec![],
        }
    }

    /// One step: in plan mode records `demand` (and the dealer's task) and returns
    /// `planned(p)`; in run mode calls the stage hook, then times `run(p)`.
    fn step<T>(
        &mut self,
        p: &mut Party,
        name: &'static str,
        demand: impl FnOnce(&Party) -> Result<Demand>,
        dealer: Option<DealerTask>,
        planned: impl FnOnce(&Party) -> Result<T>,
        run: impl FnOnce(&mut Party) -> Result<T>,
    ) -> Result<T> {
        self.next += 1;
        match &mut self.mode {
            Mode::Plan(steps) => {
                steps.push(Step {
                    name,
                    demand: demand(p)?,
                    dealer,
                });
                planned(p)
            }
            Mode::Run(hook) => {
                if let Some(h) = hook.as_mut() {
                    h(p, self.next - 1)?;
                }
                self.timed(p, name, run)
            }
        }
    }

    /// Times `f` into the breakdown under `name` (run mode; no step).
    fn timed<T>(
        &mut self,
        p: &mut Party,
        name: &'static str,
        f: impl FnOnce(&mut Party) -> Result<T>,
    ) -> Result<T> {
        let before = p.stats();
        let (lazy0, lazy_s0) = p.staged_totals();
        let t = Instant::now();
        let out = f(p)?;
        let el = t.elapsed();
        // Material dealt just in time inside `f` is offline work: not the op's.
        let (lazy1, lazy_s1) = p.staged_totals();
        let lazy = lazy1.since(&lazy0);
        let mut st = p.stats().since(&before);
        st.rounds -= lazy.rounds;
        st.online_sent -= lazy.online_sent;
        st.online_recv -= lazy.online_recv;
        let el = el.saturating_sub(Duration::from_secs_f64((lazy_s1 - lazy_s0).max(0.0)));
        self.breakdown.add(name, el, st);
        Ok(out)
    }

    /// `x` as a replicated sharing ([`Party::replicate`]: one round if it is a 3PC pair,
    /// none otherwise), timed under `name`. For a value that several replicated products
    /// take (attention's Q, K and V, a KV cache), so it is reshared once.
    pub fn replicate(&mut self, p: &mut Party, name: &'static str, x: Shared) -> Result<Shared> {
        if self.is_planning() || !x.is_pair() {
            return Ok(x);
        }
        self.timed(p, name, |p| Ok(p.replicate(&[&x])?.remove(0).into_owned()))
    }

    /// A party's input (no material): `value` at `owner`, `None` elsewhere.
    pub fn input(
        &mut self,
        p: &mut Party,
        owner: PartyId,
        value: Option<&Tensor<u64>>,
        shape: &[usize],
    ) -> Result<Shared> {
        if self.is_planning() {
            return Ok(Shared::zeros(p, shape));
        }
        self.timed(p, "input", |p| {
            p.share_input(owner, value.filter(|_| p.id() == owner), shape)
        })
    }

    /// Reveals `x` to `to` only (no material; `None` elsewhere and when planning).
    pub fn reveal_to(
        &mut self,
        p: &mut Party,
        to: PartyId,
        x: &Shared,
    ) -> Result<Option<Tensor<u64>>> {
        if self.is_planning() {
            return Ok(None);
        }
        self.timed(p, "reveal", |p| p.reveal_to(to, x))
    }

    /// Shares a vector of the model owner (`Some` there); `None` when planning.
    pub fn share_vector(
        &mut self,
        p: &mut Party,
        value: Option<&[f64]>,
        len: usize,
    ) -> Result<Option<Shared>> {
        if self.is_planning() {
            return Ok(None);
        }
        if let Some(v) = value.filter(|_| p.id() == MODEL_OWNER) {
            if v.len() != len {
                return Err(Error::shape(
                    "share vector",
                    format!("{} values for a vector of {len}", v.len()),
                ));
            }
        }
        let t = value
            .map(|v| Tensor::from_vec(&[v.len()], v.to_vec()))
            .transpose()?;
        share_f64(p, t.as_ref(), &[len]).map(Some)
    }

    /// Shares a k x n matrix of the model owner and prepares it for products under `key`
    /// (2PC opens W - B once, see [`arith::prepare_weight`]): one step. `None` when
    /// planning.
    pub fn share_matrix(
        &mut self,
        p: &mut Party,
        value: Option<&Tensor<f64>>,
        k: usize,
        n: usize,
        key: u64,
    ) -> Result<Option<PreparedWeight>> {
        if let Some(v) = value.filter(|_| p.id() == MODEL_OWNER) {
            if v.shape() != [k, n] {
                return Err(Error::shape(
                    "share matrix",
                    format!("weight of shape {:?} for a {k} x {n} matrix", v.shape()),
                ));
            }
        }
        self.step(
            p,
            "share",
            |_| Ok(ad::prepare_owned(k, n, key)),
            None,
            |_| Ok(None),
            |p| {
                let enc = match value {
                    Some(v) if p.id() == MODEL_OWNER => Some(p.fixed().encode_tensor(v)?),
                    _ => None,
                };
                arith::prepare_owned(p, enc.as_ref(), k, n, key).map(Some)
            },
        )
    }

    /// x W for a prepared weight, truncated ([`arith::matmul_prepared_trunc`]).
    pub fn matmul_prepared(&mut self, p: &mut Party, x: &Shared, w: &Matrix) -> Result<Shared> {
        let k = *x.shape().last().unwrap_or(&0);
        if k != w.k {
            return Err(Error::shape(
                "linear",
                format!("input {:?} for a {} x {} weight", x.shape(), w.k, w.n),
            ));
        }
        let rows = x.len() / k.max(1);
        let mut out_shape = x.shape().to_vec();
        *out_shape.last_mut().expect("non-empty") = w.n;
        self.step(
            p,
            "matmul",
            |p| {
                Ok(ad::matmul_owned_trunc(
                    rows,
                    w.k,
                    w.n,
                    w.key,
                    false,
                    p.fixed().frac_bits(),
                    p.fixed().frac_bits(),
                ))
            },
            None,
            |p| Ok(Shared::zeros(p, &out_shape)),
            |p| {
                let pw = w.get()?;
                let y = arith::matmul_prepared_trunc(p, &x.reshape(&[rows, k])?, pw)?;
                y.reshape(&out_shape)
            },
        )
    }

    /// x W for a prepared weight with a public Z_2^64-linear `map` applied to the product
    /// before one truncation by f + `extra_bits` ([`arith::matmul_prepared_map_trunc`]:
    /// the map costs nothing).
    pub fn matmul_prepared_map(
        &mut self,
        p: &mut Party,
        x: &Shared,
        w: &Matrix,
        extra_bits: u32,
        map: &(dyn Fn(&mut [u64]) + Sync),
    ) -> Result<Shared> {
        if x.shape().len() != 2 || x.shape()[1] != w.k {
            return Err(Error::shape(
                "linear",
                format!("input {:?} for a {} x {} weight", x.shape(), w.k, w.n),
            ));
        }
        let rows = x.shape()[0];
        self.step(
            p,
            "matmul",
            |p| {
                Ok(ad::matmul_owned_trunc(
                    rows,
                    w.k,
                    w.n,
                    w.key,
                    false,
                    p.fixed().frac_bits() + extra_bits,
                    p.fixed().frac_bits(),
                ))
            },
            None,
            |p| Ok(Shared::zeros(p, &[rows, w.n])),
            |p| {
                let shift = p.fixed().frac_bits() + extra_bits;
                arith::matmul_prepared_map_trunc(p, x, w.get()?, shift, map)
            },
        )
    }

    /// x E^T for a prepared table E [n, k] (`table.k` = n rows of `table.n` = k), truncated
    /// ([`arith::matmul_prepared_t_trunc`]): a tied output head on the embedding table.
    pub fn matmul_prepared_t(
        &mut self,
        p: &mut Party,
        x: &Shared,
        table: &Matrix,
    ) -> Result<Shared> {
        let (n, k) = (table.k, table.n);
        if x.shape().len() != 2 || x.shape()[1] != k {
            return Err(Error::shape(
                "tied head",
                format!("input {:?} for a table of {n} x {k}", x.shape()),
            ));
        }
        let rows = x.shape()[0];
        self.step(
            p,
            "head",
            |p| {
                Ok(ad::matmul_owned_trunc(
                    rows,
                    k,
                    n,
                    table.key,
                    true,
                    p.fixed().frac_bits(),
                    p.fixed().frac_bits(),
                ))
            },
            None,
            |p| Ok(Shared::zeros(p, &[rows, n])),
            |p| arith::matmul_prepared_t_trunc(p, x, table.get()?),
        )
    }

    /// x y of two shared tensors (batched), truncated ([`arith::matmul_trunc`]).
    pub fn matmul(&mut self, p: &mut Party, x: &Shared, y: &Shared) -> Result<Shared> {
        let dims = tessera::tensor::MatmulDims::new(x.shape(), y.shape())?;
        self.step(
            p,
            "matmul",
            |p| ad::matmul_trunc(p.setting(), x.shape(), y.shape(), p.fixed().frac_bits()),
            None,
            |p| Ok(Shared::zeros(p, &dims.out_shape)),
            |p| arith::matmul_trunc(p, x, y),
        )
    }

    /// x * y element-wise, truncated ([`arith::mul_trunc`]).
    pub fn mul(
        &mut self,
        p: &mut Party,
        name: &'static str,
        x: &Shared,
        y: &Shared,
    ) -> Result<Shared> {
        self.step(
            p,
            name,
            |p| Ok(ad::mul_trunc(p.setting(), x.len(), p.fixed().frac_bits())),
            None,
            |p| Ok(Shared::zeros(p, x.shape())),
            |p| arith::mul_trunc(p, x, y),
        )
    }

    /// Faithful truncation by the session's f ([`arith::truncate`]).
    pub fn truncate(&mut self, p: &mut Party, name: &'static str, x: &Shared) -> Result<Shared> {
        self.step(
            p,
            name,
            |p| Ok(ad::truncate(x.len(), p.fixed().frac_bits())),
            None,
            |p| Ok(Shared::zeros(p, x.shape())),
            |p| arith::truncate(p, x),
        )
    }

    /// Faithful truncation by `shift` bits ([`arith::truncate_by`]).
    pub fn truncate_by(
        &mut self,
        p: &mut Party,
        name: &'static str,
        x: &Shared,
        shift: u32,
    ) -> Result<Shared> {
        self.step(
            p,
            name,
            |_| Ok(ad::truncate(x.len(), shift)),
            None,
            |p| Ok(Shared::zeros(p, x.shape())),
            |p| arith::truncate_by(p, x, shift),
        )
    }

    /// Element-wise reciprocal square root ([`crate::rsqrt::rsqrt`]).
    pub fn rsqrt(
        &mut self,
        p: &mut Party,
        name: &'static str,
        x: &Shared,
        method: RsqrtMethod,
    ) -> Result<Shared> {
        self.step(
            p,
            name,
            |p| {
                Ok(rsqrt_demand(
                    x.len(),
                    method,
                    p.setting(),
                    p.fixed().frac_bits(),
                ))
            },
            None,
            |p| Ok(Shared::zeros(p, x.shape())),
            |p| rsqrt(p, x, method),
        )
    }

    /// LayerNorm over the last axis ([`crate::layernorm::layernorm`]).
    pub fn layernorm(
        &mut self,
        p: &mut Party,
        x: &Shared,
        gamma: &Vector,
        beta: &Vector,
        eps: f64,
    ) -> Result<Shared> {
        let method = self.methods.layernorm;
        self.step(
            p,
            "layernorm",
            |p| {
                Ok(layernorm_demand(
                    x.shape(),
                    method,
                    p.setting(),
                    p.fixed().frac_bits(),
                ))
            },
            None,
            |p| Ok(Shared::zeros(p, x.shape())),
            |p| layernorm(p, x, gamma.get()?, beta.get()?, eps, method),
        )
    }

    /// RMSNorm over the last axis ([`crate::rmsnorm::rmsnorm`]).
    pub fn rmsnorm(
        &mut self,
        p: &mut Party,
        x: &Shared,
        gamma: &Vector,
        eps: f64,
    ) -> Result<Shared> {
        let method = self.methods.layernorm;
        self.step(
            p,
            "rmsnorm",
            |p| {
                Ok(rmsnorm_demand(
                    x.shape(),
                    method,
                    p.setting(),
                    p.fixed().frac_bits(),
                ))
            },
            None,
            |p| Ok(Shared::zeros(p, x.shape())),
            |p| rmsnorm(p, x, gamma.get()?, eps, method),
        )
    }

    /// Softmax over the last axis with a public mask, in row chunks of at most
    /// `max_step_elems` elements (each its own step).
    pub fn softmax(&mut self, p: &mut Party, x: &Shared, mask: &AttentionMask) -> Result<Shared> {
        let method = self.methods.softmax;
        let k = *x.shape().last().unwrap_or(&1);
        let shape = x.shape().to_vec();
        self.chunked(p, x, k, |cx, p, part, row0| {
            let rows = part.len() / k.max(1);
            let m = mask.rows(row0, rows, k)?;
            cx.step(
                p,
                "softmax",
                |p| {
                    Ok(softmax_demand(
                        part.shape(),
                        method,
                        p.setting(),
                        p.fixed().frac_bits(),
                    ))
                },
                None,
                |p| Ok(Shared::zeros(p, part.shape())),
                |p| softmax(p, part, m.as_deref(), method),
            )
        })?
        .reshape(&shape)
    }

    /// GeLU, in row chunks (see [`Cx::softmax`]).
    pub fn gelu(&mut self, p: &mut Party, x: &Shared) -> Result<Shared> {
        let method = self.methods.gelu;
        let k = *x.shape().last().unwrap_or(&1);
        let shape = x.shape().to_vec();
        self.chunked(p, x, k, |cx, p, part, _| {
            cx.step(
                p,
                "gelu",
                |p| {
                    Ok(gelu_demand(
                        part.len(),
                        method,
                        p.setting(),
                        p.fixed().frac_bits(),
                    ))
                },
                None,
                |p| Ok(Shared::zeros(p, part.shape())),
                |p| gelu(p, part, method),
            )
        })?
        .reshape(&shape)
    }

    /// SiLU, in row chunks (see [`Cx::softmax`]).
    pub fn silu(&mut self, p: &mut Party, x: &Shared) -> Result<Shared> {
        let method = self.methods.silu;
        let k = *x.shape().last().unwrap_or(&1);
        let shape = x.shape().to_vec();
        self.chunked(p, x, k, |cx, p, part, _| {
            cx.step(
                p,
                "silu",
                |p| {
                    Ok(silu_demand(
                        part.len(),
                        method,
                        p.setting(),
                        p.fixed().frac_bits(),
                    ))
                },
                None,
                |p| Ok(Shared::zeros(p, part.shape())),
                |p| silu(p, part, method),
            )
        })?
        .reshape(&shape)
    }

    /// Rows `ids` of a prepared table, the indices known to [`DATA_OWNER`] only
    /// ([`crate::lookup::lookup_rows`]); in 2PC the dealer serves as the second server.
    pub fn lookup(
        &mut self,
        p: &mut Party,
        table: &Matrix,
        ids: Option<&[u32]>,
        count: usize,
    ) -> Result<Shared> {
        let (vocab, h, key) = (table.k, table.n, table.key);
        let dealer = (p.setting() == tessera::Setting::TwoPc).then_some(DealerTask::Lookup {
            vocab,
            h,
            key,
            count,
        });
        self.step(
            p,
            "embedding",
            |_| Ok(lookup_demand(vocab, h, key)),
            dealer,
            |p| Ok(Shared::zeros(p, &[count, h])),
            |p| lookup_rows(p, table.get()?, ids, count),
        )
    }

    /// Applies `f` to row chunks of `x` (rows of `k` elements, at most `max_step_elems`
    /// elements per chunk; `f` gets the chunk and its first row) and joins the results.
    fn chunked(
        &mut self,
        p: &mut Party,
        x: &Shared,
        k: usize,
        mut f: impl FnMut(&mut Self, &mut Party, &Shared, usize) -> Result<Shared>,
    ) -> Result<Shared> {
        let k = k.max(1);
        let rows = x.len() / k;
        let parts = chunks(rows, k, self.max_step_elems);
        if parts.len() == 1 {
            return f(self, p, &x.reshape(&[rows, k])?, 0);
        }
        let mut outs = Vec::with_capacity(parts.len());
        let mut row0 = 0;
        for r in parts {
            let part = x.try_map_local(|t| {
                Tensor::from_vec(&[r, k], t.data()[row0 * k..(row0 + r) * k].to_vec())
            })?;
            outs.push(f(self, p, &part, row0)?);
            row0 += r;
        }
        Shared::concat_flat(&outs.iter().collect::<Vec<_>>())
    }
}

/// Splits `total` units of `unit` elements each into near-equal chunks of at most
/// `max_elems` elements (at least one unit per chunk).
pub fn chunks(total: usize, unit: usize, max_elems: usize) -> Vec<usize> {
    let per = (max_elems / unit.max(1)).max(1);
    let parts = total.div_ceil(per).max(1);
    let mut out = vec![];
    let mut left = total;
    for i in 0..parts {
        let c = left.div_ceil(parts - i);
        out.push(c);
        left -= c;
    }
    out
}

/// Shares a plaintext tensor of the model owner (other parties pass `None`).
pub fn share_f64(p: &mut Party, t: Option<&Tensor<f64>>, shape: &[usize]) -> Result<Shared> {
    let fx = p.fixed();
    let enc = match t {
        Some(t) if p.id() == MODEL_OWNER => Some(fx.encode_tensor(t)?),
        _ => None,
    };
    if p.id() == MODEL_OWNER && enc.is_none() {
        return Err(Error::Unsupported(
            "the model owner must provide the weights".into(),
        ));
    }
    p.share_input(MODEL_OWNER, enc.as_ref(), shape)
}

/// Plans `f` (a model's share or forward code) on a planner party: the steps a run of the
/// same code takes, in order.
pub fn plan_steps(
    setting: tessera::Setting,
    fixed: tessera::FixedPoint,
    methods: Methods,
    max_step_elems: usize,
    f: impl FnOnce(&mut Party, &mut Cx) -> Result<()>,
) -> Result<Vec<Step>> {
    let mut p = Party::planner(setting, fixed);
    let mut cx = Cx::plan(methods, max_step_elems);
    f(&mut p, &mut cx)?;
    Ok(cx.into_steps())
}

/// All material of `steps` as one demand.
pub fn total_demand(steps: &[Step]) -> Demand {
    let mut d = Demand::default();
    for s in steps {
        d.extend(s.demand.clone());
    }
    d
}

#[cfg(test)]
mod cnn_tests;
