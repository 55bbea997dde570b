//! The party context: who I am, how I reach my peers, my randomness, my preprocessing, and
//! my round and byte counters.
//!
//! Protocol bodies are synchronous and only order the exchanges: compute locally, call
//! [`Party::exchange`] (send to and receive from several peers in one round), compute
//! locally. `exchange` queues every outgoing message before it waits for any incoming one,
//! so it never deadlocks whatever the message sizes.
//!
//! Party ids: 0 and 1 compute in both settings; id 2 is the dealer D in 2PC and the third
//! compute party P2 in 3PC, which also deals FSS keys and truncation material to P0 and P1.
//! At session start every pair agrees on a 128-bit seed (the lower id draws it from the OS
//! and sends it), from which all correlated randomness is derived: zero-sharings, input
//! masks, and the dealer's seed-compressed material.

use crate::error::{Error, PartyId, Result};
use crate::fixed::FixedPoint;
use crate::net::Transport;
use crate::preproc::{
    CorrectionLink, CorrectionSource, Dealer, Demand, Material, MaterialStore, Request,
};
use crate::prg::{Prg, Seed};
use std::sync::Arc;

/// The id that deals material: D in 2PC, P2 in 3PC.
pub const DEALER: PartyId = 2;

/// The two settings.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum Setting {
    /// Additive 2-of-2 sharing between P0 and P1, dealer D (id 2).
    #[serde(rename = "2pc")]
    TwoPc,
    /// Replicated 2-of-3 sharing among P0, P1, P2.
    #[serde(rename = "3pc")]
    ThreePc,
}

impl Setting {
    /// Endpoints in a session (always 3: two parties plus the dealer, or three parties).
    pub fn num_endpoints(&self) -> usize {
        3
    }
    /// Number of processes (endpoints) in a session of this setting.
    pub fn num_parties(self) -> usize {
        3
    }
    /// The dealer's party id, if the setting has a dealer that holds no shares.
    pub fn dealer(self) -> Option<PartyId> {
        match self {
            Setting::TwoPc => Some(DEALER),
            Setting::ThreePc => None,
        }
    }
    /// Parties that hold shares.
    pub fn num_compute(&self) -> usize {
        match self {
            Setting::TwoPc => 2,
            Setting::ThreePc => 3,
        }
    }
    /// "2pc" or "3pc".
    pub fn name(&self) -> &'static str {
        match self {
            Setting::TwoPc => "2pc",
            Setting::ThreePc => "3pc",
        }
    }
}

impl std::fmt::Display for Setting {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Setting {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "2pc" => Ok(Setting::TwoPc),
            "3pc" => Ok(Setting::ThreePc),
            o => Err(Error::Unsupported(format!(
                "unknown setting {o:?}: expected 2pc or 3pc"
            ))),
        }
    }
}

/// How truncation is done.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum TruncMode {
    /// Faithful: error at most 1 ulp for every input with |x| < 2^62 (dealer material and
    /// one opening; see `tessera-protocols::arith`).
    #[default]
    Faithful,
    /// SecureML's local truncation: no communication in 2PC, but each element fails with
    /// probability about |x| / 2^63. Opt-in only.
    Local,
}

/// Where preprocessing material comes from during the online phase.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum MaterialMode {
    /// 2PC: P1 asks the live dealer per request; 3PC: P2 deals inline.
    #[default]
    Live,
    /// The demand is known: the dealer streams everything before the online phase.
    Planned(Demand),
    /// Material was dealt ahead of time into files (`tessera dealer`): P0 and P1 load
    /// `p0.material` / `p1.material` from this directory; party 2 deals nothing.
    Files(std::path::PathBuf),
}

/// Session options shared by all parties.
#[derive(Clone, Debug, Default)]
pub struct SessionOptions {
    /// Fixed-point format.
    pub fixed: FixedPoint,
    /// Truncation method.
    pub trunc: TruncMode,
    /// Material mode.
    pub material: MaterialMode,
}

/// Communication counters of one party.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct CommStats {
    /// Online rounds (exchanges in which this party sent or received).
    pub rounds: u64,
    /// Online bytes sent.
    pub online_sent: u64,
    /// Online bytes received.
    pub online_recv: u64,
    /// Preprocessing bytes sent (dealer corrections, requests).
    pub offline_sent: u64,
    /// Preprocessing bytes received.
    pub offline_recv: u64,
}

impl CommStats {
    /// Counter-wise difference `self - before`.
    pub fn since(&self, before: &CommStats) -> CommStats {
        CommStats {
            rounds: self.rounds - before.rounds,
            online_sent: self.online_sent - before.online_sent,
            online_recv: self.online_recv - before.online_recv,
            offline_sent: self.offline_sent - before.offline_sent,
            offline_recv: self.offline_recv - before.offline_recv,
        }
    }
}

/// One party's context.
pub struct Party {
    id: PartyId,
    setting: Setting,
    opts: SessionOptions,
    net: Arc<dyn Transport>,
    stats: CommStats,
    private: Prg,
    common: Vec<Option<Prg>>,
    store: Option<MaterialStore>,
    dealer: Option<Dealer>,
    jit: JustInTime,
    /// When the last exchange returned: the time up to the next one is local compute,
    /// reported per exchange at debug level (`TESSERA_LOG=debug`).
    last_exchange: std::time::Instant,
}

/// Requests staged by [`Party::stage_lazily`]: each is dealt when a protocol takes it, so
/// a party holds one request's material at a time instead of a whole step's.
#[derive(Debug, Default)]
struct JustInTime {
    pending: std::collections::VecDeque<Request>,
    /// Counters of the dealing and of the barriers after it (offline work).
    stats: CommStats,
    /// Seconds spent dealing and waiting at those barriers.
    secs: f64,
}

impl std::fmt::Debug for Party {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Party({} of {})", self.id, self.setting.name())
    }
}

/// Message tag a 2PC P1 sends to the live dealer to end the session.
const LIVE_DONE: u64 = u64::MAX;

impl Party {
    /// Sets up a session over `net`: agrees pairwise seeds (one message per pair) and
    /// prepares the material store. In planned mode, the dealer streams the whole demand's
    /// corrections here and P1 receives them before returning (the offline phase).
    pub fn setup(setting: Setting, net: Arc<dyn Transport>, opts: SessionOptions) -> Result<Party> {
        let id = net.id();
        let n = net.num_parties();
        if n != setting.num_endpoints() || id >= n {
            return Err(Error::PartyId { id, n });
        }
        let mut seeds: Vec<Option<Seed>> = vec![None; n];
        for (j, slot) in seeds.iter_mut().enumerate().skip(id + 1) {
            let s = Seed::random();
            net.send(j, s.to_words().to_vec())?;
            *slot = Some(s);
        }
        for (j, slot) in seeds.iter_mut().enumerate().take(id) {
            let w = net.recv(j)?;
            if w.len() != 2 {
                return Err(Error::MessageLength {
                    peer: j,
                    got: w.len(),
                    expected: 2,
                    context: "session seed".into(),
                });
            }
            *slot = Some(Seed::from_words([w[0], w[1]]));
        }
        let common = seeds
            .iter()
            .map(|s| s.map(|s| Prg::new(s.derive(b"common"))))
            .collect();
        let material = |j: PartyId| seeds[j].expect("peer seed").derive(b"material");
        let planned = !matches!(opts.material, MaterialMode::Live);
        let (store, dealer) = match (id, &opts.material) {
            (0 | 1, MaterialMode::Files(dir)) => (Some(crate::preproc::load_file(dir, id)?), None),
            (0 | 1, _) => {
                let src = match setting {
                    _ if planned => CorrectionSource::Queue(Default::default()),
                    Setting::TwoPc if id == 1 => CorrectionSource::Live,
                    _ => CorrectionSource::Inline,
                };
                (Some(MaterialStore::new(id, material(DEALER), src)), None)
            }
            _ => (None, Some(Dealer::new(material(0), material(1)))),
        };
        let mut p = Party {
            id,
            setting,
            opts,
            net,
            stats: CommStats::default(),
            private: Prg::from_os(),
            common,
            store,
            dealer,
            jit: JustInTime::default(),
            last_exchange: std::time::Instant::now(),
        };
        if p.dealer_views() {
            if let Some(d) = p.dealer.as_mut() {
                d.keep_views();
            }
        }
        if let MaterialMode::Planned(d) = p.opts.material.clone() {
            p.offline_phase(&d)?;
        }
        Ok(p)
    }

    /// A party that only *plans*: it has no peers, no seeds and no material, and every
    /// exchange or material request fails with an error naming it. Model code runs its
    /// forward pass on such a party (with `tessera_protocols::nn::Cx` in planning mode)
    /// to derive the step-by-step preprocessing plan from the same code that computes,
    /// so the plan cannot drift from the protocol. It acts as party 0 of `setting`
    /// (replicated shares in 3PC have both components), and local operations on its
    /// tensors (reshape, add, slicing) run for real on zeros.
    pub fn planner(setting: Setting, fixed: FixedPoint) -> Party {
        let n = setting.num_endpoints();
        Party {
            id: 0,
            setting,
            opts: SessionOptions {
                fixed,
                material: MaterialMode::Planned(Demand::default()),
                ..Default::default()
            },
            net: Arc::new(PlanningTransport { n }),
            stats: CommStats::default(),
            private: Prg::from_os(),
            common: (0..n).map(|_| None).collect(),
            store: None,
            dealer: None,
            jit: JustInTime::default(),
            last_exchange: std::time::Instant::now(),
        }
    }

    /// Whether this is a [`Party::planner`].
    pub fn is_planner(&self) -> bool {
        self.store.is_none() && self.dealer.is_none()
    }

    /// Planned preprocessing: the dealer deals the whole demand and streams it to P0/P1.
    fn offline_phase(&mut self, d: &Demand) -> Result<()> {
        self.preprocess(d)
    }

    /// Runs an offline phase for `d` now, in a planned session: the dealer (party 2) deals
    /// the whole demand and streams it (one message per party); P0 and P1 queue it behind
    /// any material they already hold. Every endpoint must call this with the same demand
    /// at the same point (a layer-by-layer run calls it once per layer, so at most one
    /// layer's material is held at a time).
    pub fn preprocess(&mut self, d: &Demand) -> Result<()> {
        if !matches!(self.opts.material, MaterialMode::Planned(_)) {
            return Err(Error::Unsupported(
                "preprocess needs a session in planned material mode".into(),
            ));
        }
        match self.id {
            DEALER => {
                // Deal only when P1 asks: a 2PC dealer that ran ahead would compute the next
                // batch while the parties compute online, on the same cores.
                let go = self.net.recv(1)?;
                if go.len() != 1 {
                    return Err(Error::MessageLength {
                        peer: 1,
                        got: go.len(),
                        expected: 1,
                        context: "preprocessing request".into(),
                    });
                }
                self.stats.offline_recv += 8;
                // One frame per request and party, sent as soon as it is dealt: the dealer
                // holds one request's material at a time (a BERT layer's is ~1.8 GB), and
                // each party receives every request's words as its own vector (no copy).
                for r in &d.0 {
                    let dealer = self.dealer.as_mut().expect("dealer state");
                    for (party, words) in dealer.deal(r).into_iter().enumerate() {
                        if r.correction_len(party) == 0 {
                            continue;
                        }
                        self.stats.offline_sent += 8 * words.len() as u64;
                        self.net.send(party, words)?;
                    }
                }
            }
            me => {
                if me == 1 {
                    self.stats.offline_sent += 8;
                    self.net.send(DEALER, vec![d.0.len() as u64])?;
                }
                let mut words = Vec::with_capacity(d.0.len());
                for (i, r) in d.0.iter().enumerate() {
                    let want = r.correction_len(me);
                    if want == 0 {
                        words.push(vec![]);
                        continue;
                    }
                    let msg = self.net.recv(DEALER)?;
                    if msg.len() != want {
                        return Err(Error::MessageLength {
                            peer: DEALER,
                            got: msg.len(),
                            expected: want,
                            context: format!("planned preprocessing, request {i} of {}", d.0.len()),
                        });
                    }
                    self.stats.offline_recv += 8 * msg.len() as u64;
                    words.push(msg);
                }
                self.store
                    .as_mut()
                    .expect("store")
                    .append_planned(d.clone(), words);
            }
        }
        Ok(())
    }

    /// Stages `d` to be dealt *just in time*, one request at a time: when a protocol takes
    /// the next staged request ([`Party::material`]), the dealer deals that request alone
    /// and the compute parties meet at a barrier before going on, so nobody's online
    /// clock runs while another still receives its material. Peak memory is then one
    /// request's material (e.g. a GeLU's DCF keys) instead of a whole step's (all of a
    /// GeLU's keys), which lets a large softmax or GeLU run as one step, in the op's own
    /// rounds, instead of in row chunks that repeat them. The dealing and the barriers
    /// are offline work: their counters and time are kept apart ([`Party::staged_totals`])
    /// so callers subtract them from online figures.
    ///
    /// Every endpoint stages the same demand at the same point; the 2PC dealer, which
    /// runs no protocol, deals the same requests one by one with [`Party::preprocess`].
    pub fn stage_lazily(&mut self, d: &Demand) -> Result<()> {
        if !matches!(self.opts.material, MaterialMode::Planned(_)) {
            return Err(Error::Unsupported(
                "stage_lazily needs a session in planned material mode".into(),
            ));
        }
        self.jit.pending.extend(d.0.iter().cloned());
        Ok(())
    }

    /// Counters and seconds of just-in-time dealing so far (see [`Party::stage_lazily`]):
    /// offline work that happened between online steps.
    pub fn staged_totals(&self) -> (CommStats, f64) {
        (self.jit.stats, self.jit.secs)
    }

    /// Deals the next staged request if `r` is it (see [`Party::stage_lazily`]).
    fn deal_staged(&mut self, r: &Request) -> Result<()> {
        let Some(next) = self.jit.pending.front() else {
            return Ok(());
        };
        if next != r {
            return Err(Error::Preprocessing(format!(
                "protocol asked for {r:?} but the staged plan's next request is {next:?}"
            )));
        }
        let next = self.jit.pending.pop_front().expect("front exists");
        let t = std::time::Instant::now();
        let before = self.stats;
        self.preprocess(&Demand(vec![next]))?;
        self.sync()?;
        let d = self.stats.since(&before);
        self.add_staged(&d, t.elapsed().as_secs_f64());
        Ok(())
    }

    /// Adds counters and seconds to [`Party::staged_totals`].
    fn add_staged(&mut self, d: &CommStats, secs: f64) {
        let j = &mut self.jit.stats;
        j.rounds += d.rounds;
        j.online_sent += d.online_sent;
        j.online_recv += d.online_recv;
        j.offline_sent += d.offline_sent;
        j.offline_recv += d.offline_recv;
        self.jit.secs += secs;
    }

    /// Whether `r` is the next request to be dealt just in time ([`Party::stage_lazily`]):
    /// then its dealing, and the input-independent work a protocol does on it right after
    /// ([`Party::offline_step`]), happen between online steps and count as offline.
    pub fn dealt_just_in_time(&self, r: &Request) -> bool {
        self.jit.pending.front() == Some(r)
    }

    /// Runs `f`, an input-independent step of the preprocessing of a request just dealt
    /// just in time (see [`Party::dealt_just_in_time`]): e.g. P0 handing P1 its masked
    /// share of an owner-held product, which depends only on dealt material and the
    /// public W - B (Delphi, USENIX Security'20, §4: input-independent work is offline).
    /// Its words count as offline (its exchanges move from this party's online counters
    /// to the offline ones) and its seconds as staged time ([`Party::staged_totals`]),
    /// which callers subtract from online time. Every party taking part calls it at the
    /// same point; a protocol calls it only where [`Party::dealt_just_in_time`] held, and
    /// otherwise does the same work online.
    pub fn offline_step<T>(&mut self, f: impl FnOnce(&mut Party) -> Result<T>) -> Result<T> {
        let t = std::time::Instant::now();
        let before = self.stats;
        let out = f(self)?;
        let d = self.stats.since(&before);
        let st = &mut self.stats;
        st.rounds -= d.rounds;
        st.online_sent -= d.online_sent;
        st.online_recv -= d.online_recv;
        st.offline_sent += d.online_sent;
        st.offline_recv += d.online_recv;
        let moved = CommStats {
            offline_sent: d.online_sent + d.offline_sent,
            offline_recv: d.online_recv + d.offline_recv,
            ..CommStats::default()
        };
        self.add_staged(&moved, t.elapsed().as_secs_f64());
        Ok(out)
    }

    /// Whether the 3PC dealer (P2) knows the masks it dealt at the time they are used, so a
    /// protocol may route part of an opening through it (see
    /// [`Request::dealer_view_len`]): 3PC with live or planned material; not with material
    /// from files, which P2 did not deal. The same answer at every party.
    pub fn dealer_views(&self) -> bool {
        self.setting == Setting::ThreePc && !matches!(self.opts.material, MaterialMode::Files(_))
    }

    /// This party's id.
    pub fn id(&self) -> PartyId {
        self.id
    }
    /// The setting.
    pub fn setting(&self) -> Setting {
        self.setting
    }
    /// The fixed-point format.
    pub fn fixed(&self) -> FixedPoint {
        self.opts.fixed
    }
    /// The truncation mode.
    pub fn trunc_mode(&self) -> TruncMode {
        self.opts.trunc
    }
    /// Changes the truncation mode for the following operations.
    pub fn set_trunc_mode(&mut self, m: TruncMode) {
        self.opts.trunc = m;
    }
    /// True for parties that hold shares (not the 2PC dealer).
    pub fn is_compute(&self) -> bool {
        self.id < self.setting.num_compute()
    }
    /// Number of share-holding parties.
    pub fn num_compute(&self) -> usize {
        self.setting.num_compute()
    }
    /// Next party in the 3PC ring.
    pub fn next(&self) -> PartyId {
        (self.id + 1) % 3
    }
    /// Previous party in the 3PC ring.
    pub fn prev(&self) -> PartyId {
        (self.id + 2) % 3
    }
    /// The transport (for counters).
    pub fn transport(&self) -> &Arc<dyn Transport> {
        &self.net
    }
    /// Communication counters so far.
    pub fn stats(&self) -> CommStats {
        self.stats
    }
    /// The material consumed so far (the job's demand as observed).
    pub fn consumed_demand(&self) -> Demand {
        self.store
            .as_ref()
            .map(|s| s.consumed().clone())
            .unwrap_or_default()
    }

    /// The dealer's copy of party `party`'s (0 or 1) share of the fixed B (k x n) of
    /// `key` (a prepared weight's mask). Errors on a party that is not the dealer.
    pub fn dealer_fixed_b_share(
        &self,
        party: PartyId,
        key: u64,
        k: usize,
        n: usize,
    ) -> Result<Vec<u64>> {
        match (&self.dealer, party) {
            (Some(d), 0 | 1) => Ok(d.fixed_b_share(party, key, k, n)),
            (None, _) => Err(Error::Unsupported(format!(
                "party {} is not the dealer",
                self.id
            ))),
            _ => Err(Error::PartyId { id: party, n: 2 }),
        }
    }

    /// This party's private OS-seeded PRG.
    pub fn private_prg(&mut self) -> &mut Prg {
        &mut self.private
    }

    /// `n` words from the stream shared with `peer` (both must call this at the same step).
    pub fn common_words(&mut self, peer: PartyId, n: usize) -> Result<Vec<u64>> {
        let nn = self.common.len();
        self.common
            .get_mut(peer)
            .and_then(|p| p.as_mut())
            .map(|p| p.words(n))
            .ok_or(Error::PartyId { id: peer, n: nn })
    }

    /// 3PC zero-sharing: alpha_i = F(k_{i,i-1}) - F(k_{i,i+1}); the three sum to 0.
    pub fn zero_share(&mut self, n: usize) -> Result<Vec<u64>> {
        let a = self.common_words(self.prev(), n)?;
        let b = self.common_words(self.next(), n)?;
        Ok(a.iter().zip(&b).map(|(x, y)| x.wrapping_sub(*y)).collect())
    }

    /// One round: queue every message in `sends`, then receive one message from each peer
    /// in `recvs` (with its expected length in words). `what` names the step in errors.
    pub fn exchange(
        &mut self,
        sends: Vec<(PartyId, Vec<u64>)>,
        recvs: &[(PartyId, usize)],
        what: &str,
    ) -> Result<Vec<Vec<u64>>> {
        if sends.is_empty() && recvs.is_empty() {
            return Ok(vec![]);
        }
        self.stats.rounds += 1;
        let start = std::time::Instant::now();
        let compute = start - self.last_exchange;
        let words: usize = sends.iter().map(|(_, m)| m.len()).sum();
        for (to, m) in sends {
            self.send_counted(to, m)?;
        }
        let mut out = Vec::with_capacity(recvs.len());
        for &(from, len) in recvs {
            out.push(self.recv_checked(from, len, what)?);
        }
        self.trace_exchange(what, words, compute, start);
        Ok(out)
    }

    /// One round with `peer` whose messages travel in pieces: `produce(i)` builds the
    /// i-th of `send` pieces just before it is queued, and each piece the peer sends
    /// (expected lengths `recv`, in order) goes to `consume(i, piece)` as it arrives.
    ///
    /// Why: on a bandwidth-bound link a large opening's transfer and the work on either
    /// side of it were serial (compute, then the whole message on the wire, then compute
    /// on all of it). In pieces, piece i is on the wire while piece i + 1 is computed, and
    /// the receiver works on piece i while i + 1 arrives, so a step costs about the larger
    /// of its transfer and its compute instead of their sum. The bytes and the round are
    /// those of one [`Party::exchange`] of the concatenated pieces.
    pub fn exchange_pieces(
        &mut self,
        peer: PartyId,
        send: usize,
        mut produce: impl FnMut(usize) -> Result<Vec<u64>>,
        recv: &[usize],
        mut consume: impl FnMut(usize, Vec<u64>) -> Result<()>,
        what: &str,
    ) -> Result<()> {
        if send == 0 && recv.is_empty() {
            return Ok(());
        }
        self.stats.rounds += 1;
        let start = std::time::Instant::now();
        let compute = start - self.last_exchange;
        let mut words = 0;
        for i in 0..send {
            let m = produce(i)?;
            words += m.len();
            self.send_counted(peer, m)?;
        }
        for (i, &len) in recv.iter().enumerate() {
            let m = self.recv_checked(peer, len, what)?;
            consume(i, m)?;
        }
        self.trace_exchange(what, words, compute, start);
        Ok(())
    }

    fn send_counted(&mut self, to: PartyId, m: Vec<u64>) -> Result<()> {
        self.stats.online_sent += 8 * m.len() as u64;
        self.net.send(to, m)
    }

    /// The next message from `from`, which must have `len` words.
    fn recv_checked(&mut self, from: PartyId, len: usize, what: &str) -> Result<Vec<u64>> {
        let m = self.net.recv(from)?;
        if m.len() != len {
            return Err(Error::MessageLength {
                peer: from,
                got: m.len(),
                expected: len,
                context: what.to_string(),
            });
        }
        self.stats.online_recv += 8 * m.len() as u64;
        Ok(m)
    }

    /// Reports an exchange at debug level (`TESSERA_LOG=debug`): its step, the words this
    /// party sent, the local compute since the previous exchange and the time it waited
    /// (sizes and times only, never contents).
    fn trace_exchange(
        &mut self,
        what: &str,
        words: usize,
        compute: std::time::Duration,
        start: std::time::Instant,
    ) {
        self.last_exchange = std::time::Instant::now();
        tracing::debug!(
            step = what,
            words,
            compute_ms = compute.as_secs_f64() * 1e3,
            wait_ms = (self.last_exchange - start).as_secs_f64() * 1e3,
            "exchange"
        );
    }

    /// A barrier among the compute parties: every one sends one word to every other and
    /// waits for theirs (one round). Used before timing a step, so one party's timer does
    /// not include waiting for another to finish an earlier, unequal step (e.g. sharing
    /// the model, where only the owner works).
    ///
    /// The parties leave together: a plain exchange lets the last to arrive leave at once
    /// while the others leave one link delay later, when its word reaches them, so the
    /// last one's next timed step starts a delay early and its timer counts a delay of
    /// waiting that no party would see with its material already at hand. Staged dealing
    /// puts a barrier before every request, so on a 40 ms RTT link this skew alone added
    /// ~2 s to P1's online time per BERT-base layer (and none to P0's). Each party
    /// therefore holds until one delay after its own arrival ([`barrier_hold`]), which is
    /// when the last word reaches the others.
    pub fn sync(&mut self) -> Result<()> {
        let peers: Vec<PartyId> = (0..self.num_compute()).filter(|&j| j != self.id).collect();
        let sends = peers.iter().map(|&j| (j, vec![0u64])).collect();
        let recvs: Vec<(PartyId, usize)> = peers.iter().map(|&j| (j, 1)).collect();
        let t = std::time::Instant::now();
        self.exchange(sends, &recvs, "sync")?;
        let delay = peers
            .iter()
            .map(|&j| self.net.one_way_delay(j))
            .max()
            .unwrap_or_default();
        let hold = barrier_hold(t.elapsed(), delay);
        if !hold.is_zero() {
            std::thread::sleep(hold);
        }
        Ok(())
    }

    /// Preprocessing material for `r`: P0 and P1 get their parts; the dealer party (P2 in
    /// 3PC, dealing inline) sends P1's correction and gets an empty [`Material`], or, for a
    /// request with a [`Request::dealer_view_len`], one part: the mask it dealt.
    pub fn material(&mut self, r: &Request) -> Result<Material> {
        self.deal_staged(r)?;
        if self.id == DEALER {
            if self.setting == Setting::TwoPc {
                return Err(Error::Unsupported(
                    "the 2PC dealer holds no shares and consumes no material".into(),
                ));
            }
            if matches!(self.opts.material, MaterialMode::Live) {
                let words = self.dealer.as_mut().expect("dealer state").deal(r);
                self.send_dealt(words, false)?;
            }
            if r.dealer_view_len() > 0 && self.dealer_views() {
                let view = self.dealer.as_mut().expect("dealer state").take_view(r)?;
                return Ok(Material { parts: vec![view] });
            }
            return Ok(Material::default());
        }
        let Some(mut store) = self.store.take() else {
            return Err(Error::Unsupported(format!(
                "material {r:?} requested from a planning party (a protocol ran outside nn::Cx)"
            )));
        };
        let res = store.take(r, &mut Link { party: self });
        self.store = Some(store);
        res
    }

    /// [`Party::material`], then `prep`: an input-independent transformation of the
    /// material by this party (e.g. a prepared product's A_i F + C_i, which depends only
    /// on the dealt mask and the public W - B). When the request is dealt just in time
    /// ([`Party::stage_lazily`]), `prep` belongs to the dealing and its seconds count as
    /// offline; otherwise it runs as part of the online step.
    pub fn material_then(
        &mut self,
        r: &Request,
        prep: impl FnOnce(&mut Material) -> Result<()>,
    ) -> Result<Material> {
        let lazy = self.dealt_just_in_time(r);
        let mut m = self.material(r)?;
        let t = std::time::Instant::now();
        prep(&mut m)?;
        if lazy {
            self.jit.secs += t.elapsed().as_secs_f64();
        }
        Ok(m)
    }

    /// 2PC dealer: serve P1's live requests until it says it is done.
    pub fn serve_dealer(&mut self) -> Result<()> {
        if self.dealer.is_none() {
            return Err(Error::Unsupported(format!(
                "party {} is not the dealer",
                self.id
            )));
        }
        loop {
            let req = self.net.recv(1)?;
            let dealer = self.dealer.as_mut().expect("checked above");
            self.stats.offline_recv += 8 * req.len() as u64;
            if req.first() == Some(&LIVE_DONE) {
                return Ok(());
            }
            let (r, _) = Request::decode(&req)?;
            let words = dealer.deal(&r);
            // P1 asked, so P1 always gets a reply (possibly empty).
            self.send_dealt(words, true)?;
        }
    }

    /// Sends dealt words to P0 and P1 (nothing for an empty part, except to P1 when it
    /// asked and waits for a reply).
    fn send_dealt(&mut self, words: [Vec<u64>; 2], reply_to_p1: bool) -> Result<()> {
        for (party, w) in words.into_iter().enumerate() {
            if !w.is_empty() || (reply_to_p1 && party == 1) {
                self.stats.offline_sent += 8 * w.len() as u64;
                self.net.send(party, w)?;
            }
        }
        Ok(())
    }

    /// Ends the session cleanly (tells a live 2PC dealer to stop).
    pub fn finish(&mut self) -> Result<()> {
        if self.setting == Setting::TwoPc
            && self.id == 1
            && matches!(self.opts.material, MaterialMode::Live)
        {
            self.net.send(DEALER, vec![LIVE_DONE])?;
        }
        Ok(())
    }
}

struct Link<'a> {
    party: &'a mut Party,
}

impl CorrectionLink for Link<'_> {
    fn ask(&mut self, req: &Request) -> Result<()> {
        let w = req.encode();
        self.party.stats.offline_sent += 8 * w.len() as u64;
        self.party.net.send(DEALER, w)
    }
    fn receive(&mut self, expected: usize) -> Result<Vec<u64>> {
        let c = self.party.net.recv(DEALER)?;
        if c.len() != expected {
            return Err(Error::MessageLength {
                peer: DEALER,
                got: c.len(),
                expected,
                context: "dealer correction".into(),
            });
        }
        self.party.stats.offline_recv += 8 * c.len() as u64;
        Ok(c)
    }
}

/// How long a party holds at a barrier after its exchange returned, so that all parties
/// leave at the same moment (see [`Party::sync`]). A party that arrived at `a` and waited
/// `waited` for the last word leaves at `a + max(waited, delay)`: the last word was sent
/// at `a + waited - delay` (or the party itself was the last, at `a`), so every other
/// party receives it at that moment, `delay` after it was sent.
pub fn barrier_hold(
    waited: std::time::Duration,
    delay: std::time::Duration,
) -> std::time::Duration {
    delay.saturating_sub(waited)
}

/// The transport of a [`Party::planner`]: it has no peers; every send and receive fails.
struct PlanningTransport {
    n: usize,
}

impl Transport for PlanningTransport {
    fn id(&self) -> PartyId {
        0
    }
    fn num_parties(&self) -> usize {
        self.n
    }
    fn send(&self, to: PartyId, _msg: Vec<u64>) -> Result<()> {
        Err(Error::Unsupported(format!(
            "a planning party cannot send to party {to} (a protocol ran outside nn::Cx)"
        )))
    }
    fn recv(&self, from: PartyId) -> Result<Vec<u64>> {
        Err(Error::Unsupported(format!(
            "a planning party cannot receive from party {from} (a protocol ran outside nn::Cx)"
        )))
    }
    fn stats(&self) -> crate::net::TransportStats {
        crate::net::TransportStats::new(self.n)
    }
    fn io_timeout(&self) -> std::time::Duration {
        std::time::Duration::ZERO
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::net::memory::MemoryTransport;
    use std::time::{Duration, Instant};

    #[test]
    fn barrier_hold_is_the_delay_not_yet_waited() {
        let ms = Duration::from_millis;
        assert_eq!(barrier_hold(ms(0), ms(20)), ms(20));
        assert_eq!(barrier_hold(ms(5), ms(20)), ms(15));
        assert_eq!(barrier_hold(ms(20), ms(20)), ms(0));
        assert_eq!(barrier_hold(ms(90), ms(20)), ms(0));
        assert_eq!(barrier_hold(ms(3), ms(0)), ms(0));
    }

    /// Parties that reach the barrier at different times over a slow link leave it
    /// together. Without the hold, the last to arrive leaves a full link delay (100 ms)
    /// before the others; the tolerance (40 ms) leaves room for thread scheduling on a
    /// loaded machine while still failing on the unaligned barrier.
    #[test]
    fn sync_releases_every_party_at_the_same_moment() {
        let delay = Duration::from_millis(100);
        for setting in [Setting::TwoPc, Setting::ThreePc] {
            let nets = MemoryTransport::network(setting.num_endpoints(), Duration::from_secs(10));
            let start = Instant::now();
            let exits: Vec<Option<Duration>> = std::thread::scope(|s| {
                let hs: Vec<_> = nets
                    .into_iter()
                    .map(|t| {
                        s.spawn(move || -> Result<Option<Duration>> {
                            let id = t.id();
                            let net: Arc<dyn Transport> = Arc::new(t.with_latency(delay));
                            let opts = SessionOptions {
                                material: MaterialMode::Planned(Default::default()),
                                ..Default::default()
                            };
                            let mut p = Party::setup(setting, net, opts)?;
                            if !p.is_compute() {
                                return Ok(None);
                            }
                            p.sync()?;
                            // Party 1 arrives last, after the others' words are in.
                            if id == 1 {
                                std::thread::sleep(3 * delay);
                            }
                            let before = p.stats();
                            p.sync()?;
                            assert_eq!(p.stats().since(&before).rounds, 1);
                            let exit = start.elapsed();
                            p.finish()?;
                            Ok(Some(exit))
                        })
                    })
                    .collect();
                hs.into_iter()
                    .map(|h| h.join().expect("party thread").expect("party"))
                    .collect()
            });
            let exits: Vec<Duration> = exits.into_iter().flatten().collect();
            assert_eq!(exits.len(), setting.num_compute());
            let spread = *exits.iter().max().unwrap() - *exits.iter().min().unwrap();
            assert!(
                spread < Duration::from_millis(40),
                "{setting}: parties left the barrier {spread:?} apart"
            );
        }
    }
}
