//! [`Transport`] over QUIC: one long-lived, mutually authenticated connection per peer pair.
//!
//! # Design
//!
//! * **Synchronous facade, private runtime.** Protocol code is plain blocking Rust (rayon
//!   for compute, no async colouring), so the trait is synchronous. Each `QuicTransport`
//!   owns a small tokio runtime (multi-thread, 2 workers) that drives quinn; `send` hands a
//!   message to a per-peer queue and returns, `recv` blocks on a per-peer std channel with
//!   `recv_timeout(io_timeout)`.
//! * **Connections.** Every pair of endpoints shares one QUIC connection: the lower id dials
//!   the higher (retrying until `start_timeout_s`, since processes start in any order), the
//!   higher id listens on its configured address. After the TLS handshake the dialer opens
//!   one bidirectional stream and sends a 24-byte hello (magic, from, to), which the
//!   listener answers with its own hello; the stream's two halves then carry all messages
//!   of the pair, one direction each. [`QuicTransport::connect`] returns once every peer
//!   is up or fails with [`Error::ConnectTimeout`] naming the first missing one.
//! * **Authentication.** TLS 1.3 with client certificates. There is no CA: custom rustls
//!   verifiers accept a certificate iff the SHA-256 of its DER equals the fingerprint the
//!   config pins for the expected peer (the dialer knows whom it dials; the listener maps
//!   the presented fingerprint to a lower peer id and refuses anything else). Handshake
//!   signatures are still verified with the crypto provider's algorithms, so presenting a
//!   pinned certificate requires its private key. Refusals are logged with `warn!` (peer,
//!   address, presented fingerprint) and the connect keeps waiting for the right peer.
//! * **Tasks.** Per peer, a writer task drains an unbounded queue of `Vec<u64>` onto the
//!   send stream and a reader task turns frames into messages for the std channel. Because
//!   the queue is unbounded, `send` never blocks and two parties that both send before
//!   receiving cannot deadlock; quinn's flow-control windows are raised (see
//!   [`QuicOptions`]) so multi-megabyte tensors stream at full speed.
//! * **Framing.** A frame is the payload's byte length as 8-byte little-endian, then the
//!   words' bytes (`bytemuck::cast_slice`, no per-element encoding). The reader allocates a
//!   fresh `Vec<u64>` of the announced size and reads directly into
//!   `bytemuck::cast_slice_mut` of it. A length that is not a multiple of 8 or above
//!   [`QuicOptions::max_frame_bytes`] is [`Error::Frame`] (and closes the connection); an
//!   end of stream inside a frame is [`Error::Frame`] too; a clean end of stream or a lost
//!   connection is [`Error::PeerGone`], delivered after all messages that arrived before
//!   it.
//! * **Liveness apart from patience.** Keep-alives flow every `liveness_s / 4` and the
//!   QUIC idle timeout is `liveness_s` (a few seconds), so a peer whose process died or
//!   whose host vanished is noticed within `liveness_s` even while we wait on its long
//!   computation; `io_timeout` stays the deadline of one `recv` from a peer that is alive
//!   but slow ([`Error::Timeout`]). The errors say which: "no packet from it for N s",
//!   "the peer closed the connection", or [`Error::Aborted`] with the peer's reason.
//! * **Fail fast, name the origin.** MPC needs every party, so the first link that fails
//!   abnormally (lost, reset, aborted, malformed frame; not a peer's orderly shutdown)
//!   ends the whole session: the transport closes every other connection with an abort
//!   that carries the *origin* (the party whose failure started it) and the reason, and
//!   every later `send`/`recv` returns that first error. A cascade of aborts through
//!   three parties and the dealer therefore still names the party that really failed.
//!   [`Transport::abort`] does the same for a local failure.
//! * **Shutdown.** Dropping the transport (or [`QuicTransport::close`]) closes the queues,
//!   lets the writers drain them, finishes the streams and waits until the peer has
//!   acknowledged all stream data (bounded by `io_timeout`), then closes the connections
//!   and waits briefly for the close to go out. A party may therefore send its last
//!   message and exit. Do not drop a `QuicTransport` inside an async context.

use crate::config::Config;
use crate::error::{Error, PartyId, Result};
use crate::identity::{self, Identity};
use crate::net::{Transport, TransportStats};
use quinn::{Connection, ConnectionError, Endpoint, RecvStream, SendStream, VarInt};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{DigitallySignedStruct, DistinguishedName, SignatureScheme};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;
use tokio::time::Instant;
use tracing::{debug, warn};

/// ALPN protocol id of Tessera's wire format.
const ALPN: &[u8] = b"tessera/1";
/// Magic of the hello exchanged on a new connection.
const HELLO_MAGIC: &[u8; 8] = b"TSRA\x00\x00\x00\x01";
/// Hello: magic, sender id, receiver id (u64 LE each).
const HELLO_LEN: usize = 24;
/// How long one dial attempt may spend in the QUIC handshake before a fresh attempt.
const ATTEMPT_TIMEOUT: Duration = Duration::from_millis(1500);
/// Pause between dial attempts.
const RETRY_DELAY: Duration = Duration::from_millis(100);
/// Pause between dial attempts after the peer was refused or refused us.
const REFUSED_RETRY_DELAY: Duration = Duration::from_secs(1);
/// Messages up to this many bytes are written with their header in one write.
const SMALL_MSG: usize = 16 * 1024;
/// How long shutdown waits for the connection close to be sent.
const CLOSE_LINGER: Duration = Duration::from_millis(500);
/// Application close codes. `CODE_ABORT` reasons are `"{origin}|{text}"`.
const CODE_DONE: u32 = 0;
const CODE_REJECT: u32 = 1;
const CODE_FRAME: u32 = 2;
const CODE_ABORT: u32 = 3;

/// Tuning knobs of [`QuicTransport`]; [`QuicOptions::default`] suits most runs.
#[derive(Clone, Debug)]
pub struct QuicOptions {
    /// Largest accepted frame payload in bytes (default 4 GiB). Larger frames are
    /// [`Error::Frame`].
    pub max_frame_bytes: u64,
    /// Per-stream receive window in bytes (default 2.5 MiB). It also bounds how much data
    /// can wait behind a lost packet, and quinn closes a connection whose stream buffer
    /// holds more than 1024 separate pieces ("too many gaps in stream buffer", its
    /// defence against memory exhaustion). With 32 MiB (~23k packets in flight) a
    /// bottleneck that drops every other packet of a burst (drop-tail under a sender far
    /// above the link rate) hit that limit: the dealer's stream under the harness's `lan`
    /// profile failed about one run in ten. 2.5 MiB of 1472-byte packets is at most ~890
    /// gaps, and still 20 Gbit/s at 1 ms RTT and 500 Mbit/s at 40 ms.
    pub stream_receive_window: u64,
    /// Per-connection receive window in bytes (default 64 MiB).
    pub receive_window: u64,
    /// Per-connection send window in bytes (default 64 MiB).
    pub send_window: u64,
    /// UDP socket buffer sizes to request (default 8 MiB; the OS may cap them).
    pub socket_buffer_bytes: usize,
    /// Largest UDP payload to use (default 1472, right for 1500-byte Ethernet; at most
    /// 65527). MTU discovery probes up to this, so raising it on loopback or jumbo-frame
    /// links gives bigger packets and less per-packet work; a path that cannot carry them
    /// just keeps the smaller size. Discovery probes up to 20 bytes below this (room for
    /// an IPv6 header), as quinn's defaults do.
    pub max_udp_payload: u16,
    /// Keep-alive interval; `None` picks `liveness_s / 4` (at least 100 ms).
    pub keep_alive: Option<Duration>,
    /// Initial congestion window in bytes (default 1 MiB). MPC traffic is bursts of
    /// MB-sized messages on long-lived connections between known hosts; quinn's default
    /// (~14 kB) makes every fresh connection spend several round trips in slow start,
    /// which dominated WAN benchmarks. 1 MiB is about two bandwidth-delay products of a
    /// 100 Mbit/s, 40 ms path.
    pub initial_window: u64,
    /// Local address to bind instead of the party's configured address (e.g.
    /// `0.0.0.0:PORT` behind NAT, where the configured address is the public one).
    pub bind_addr: Option<SocketAddr>,
}

impl Default for QuicOptions {
    fn default() -> Self {
        QuicOptions {
            max_frame_bytes: 4 << 30,
            stream_receive_window: 5 << 19,
            receive_window: 64 << 20,
            send_window: 16 << 20,
            socket_buffer_bytes: 8 << 20,
            max_udp_payload: 1472,
            keep_alive: None,
            initial_window: 1 << 20,
            bind_addr: None,
        }
    }
}

/// Shared state of one peer link.
#[derive(Default)]
struct PeerShared {
    /// Why the link is gone, once it is.
    dead: Mutex<Option<String>>,
}

impl PeerShared {
    fn set_dead(&self, why: String) {
        let mut d = self.dead.lock().unwrap_or_else(|e| e.into_inner());
        if d.is_none() {
            *d = Some(why);
        }
    }
    fn reason(&self) -> String {
        self.dead
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
            .unwrap_or_else(|| "connection closed".into())
    }
}

/// How the session failed, recorded once by the first link that failed (or by
/// [`Transport::abort`]); later errors on every link repeat it.
#[derive(Clone, Debug)]
enum Failure {
    /// The link to `peer` broke (timed out, reset, closed abnormally).
    Gone { peer: PartyId, detail: String },
    /// `peer` aborted because `origin` failed.
    Aborted {
        peer: PartyId,
        origin: PartyId,
        reason: String,
    },
    /// `peer` sent a malformed frame.
    Frame { peer: PartyId, detail: String },
    /// This party aborted the session itself (origin as given to `abort`).
    Local { origin: PartyId, reason: String },
}

impl Failure {
    fn origin(&self) -> PartyId {
        match self {
            Failure::Gone { peer, .. } | Failure::Frame { peer, .. } => *peer,
            Failure::Aborted { origin, .. } | Failure::Local { origin, .. } => *origin,
        }
    }

    fn to_error(&self, me: PartyId) -> Error {
        match self.clone() {
            Failure::Gone { peer, detail } => Error::PeerGone { peer, detail },
            Failure::Aborted {
                peer,
                origin,
                reason,
            } => Error::Aborted {
                peer,
                origin,
                reason,
            },
            Failure::Frame { peer, detail } => Error::Frame { peer, detail },
            Failure::Local { origin, reason } => Error::Aborted {
                peer: me,
                origin,
                reason,
            },
        }
    }

    /// The text sent to the other peers when this failure ends the session.
    fn reason(&self, me: PartyId) -> String {
        match self {
            Failure::Local { reason, .. } => reason.clone(),
            other => other.to_error(me).to_string(),
        }
    }
}

/// The session-wide failure state shared by all links of one transport.
struct Session {
    me: PartyId,
    failure: Mutex<Option<Failure>>,
    /// Every peer connection, to close them all when the session fails.
    conns: Mutex<Vec<Connection>>,
}

impl Session {
    fn failure(&self) -> Option<Failure> {
        self.failure
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Records `f` if it is the first failure and closes every connection with an abort
    /// naming its origin. Later failures (the cascade) are ignored.
    fn fail(&self, f: Failure) {
        {
            let mut slot = self.failure.lock().unwrap_or_else(|e| e.into_inner());
            if slot.is_some() {
                return;
            }
            *slot = Some(f.clone());
        }
        let text = format!("{}|{}", f.origin(), f.reason(self.me));
        let reason = truncate_utf8(&text, 500);
        debug!(
            party = self.me,
            origin = f.origin(),
            "session failed: closing every link"
        );
        for c in self.conns.lock().unwrap_or_else(|e| e.into_inner()).iter() {
            c.close(VarInt::from_u32(CODE_ABORT), reason.as_bytes());
        }
    }
}

/// The first at most `max` bytes of `s`, cut at a character boundary (QUIC close
/// reasons must fit in one packet).
fn truncate_utf8(s: &str, max: usize) -> &str {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// Splits an abort reason `"{origin}|{text}"`; a reason without a valid origin (an older
/// peer, or an abort during the handshake) is attributed to the sender.
fn parse_abort(sender: PartyId, n: usize, reason: &[u8]) -> (PartyId, String) {
    let text = String::from_utf8_lossy(reason).into_owned();
    if let Some((o, rest)) = text.split_once('|') {
        if let Ok(origin) = o.parse::<PartyId>() {
            if origin < n {
                return (origin, rest.to_string());
            }
        }
    }
    (sender, text)
}

/// One peer's side of the transport.
struct Peer {
    tx: Option<tokio::sync::mpsc::UnboundedSender<Vec<u64>>>,
    rx: Mutex<mpsc::Receiver<Result<Vec<u64>>>>,
    conn: Connection,
    shared: Arc<PeerShared>,
    writer: Option<tokio::task::JoinHandle<()>>,
    reader: Option<tokio::task::JoinHandle<()>>,
    bytes_sent: AtomicU64,
    bytes_recv: AtomicU64,
    msgs_sent: AtomicU64,
    msgs_recv: AtomicU64,
    /// Smallest round-trip time seen, in nanoseconds (see [`Transport::one_way_delay`]).
    min_rtt_ns: AtomicU64,
}

/// A connected QUIC stream pair to one peer, after the hello exchange.
struct Link {
    conn: Connection,
    send: SendStream,
    recv: RecvStream,
}

/// A party's QUIC connections to all its peers. See the [module docs](self) for the design.
pub struct QuicTransport {
    id: PartyId,
    n: usize,
    io_timeout: Duration,
    session: Arc<Session>,
    peers: Vec<Option<Peer>>,
    endpoint: Option<Endpoint>,
    runtime: Option<tokio::runtime::Runtime>,
}

impl std::fmt::Debug for QuicTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QuicTransport")
            .field("id", &self.id)
            .field("n", &self.n)
            .field("io_timeout", &self.io_timeout)
            .finish_non_exhaustive()
    }
}

impl QuicTransport {
    /// Connect party `id` to all other endpoints of the session with default
    /// [`QuicOptions`]; blocks until every connection is up, or fails with
    /// [`Error::ConnectTimeout`] after `start_timeout_s`.
    pub fn connect(config: &Config, id: PartyId, identity: Identity) -> Result<QuicTransport> {
        QuicTransport::connect_with(config, id, identity, QuicOptions::default())
    }

    /// [`QuicTransport::connect`] with explicit options.
    pub fn connect_with(
        config: &Config,
        id: PartyId,
        identity: Identity,
        options: QuicOptions,
    ) -> Result<QuicTransport> {
        let n = config.num_parties();
        if id >= n {
            return Err(Error::PartyId { id, n });
        }
        let mut fingerprints = Vec::with_capacity(n);
        let mut addrs = Vec::with_capacity(n);
        for p in 0..n {
            fingerprints.push(config.fingerprint(p)?.to_ascii_lowercase());
            addrs.push(config.socket_addr(p)?);
        }
        if fingerprints[id] != identity.fingerprint() {
            warn!(
                party = id,
                ours = identity.fingerprint(),
                pinned = %fingerprints[id],
                "our certificate does not match the fingerprint the config pins for us; peers will refuse it"
            );
        }
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name(format!("tessera-quic-p{id}"))
            .enable_all()
            .build()
            .map_err(|e| Error::PeerGone {
                peer: id,
                detail: format!("cannot start the network runtime: {e}"),
            })?;
        let io_timeout = config.io_timeout();
        let liveness = config.liveness();
        let max_frame = options.max_frame_bytes;
        let setup = Setup {
            me: id,
            n,
            identity,
            fingerprints,
            addrs,
            addr_strings: (0..n)
                .map(|p| config.party(p).map(|c| c.addr.clone()))
                .collect::<Result<_>>()?,
            liveness,
            start_timeout_s: config.start_timeout_s,
            bind_addr: options.bind_addr.unwrap_or(config.socket_addr(id)?),
            options,
            config_path: config.path.clone(),
        };
        let (endpoint, links) = runtime.block_on(setup.run())?;

        let session = Arc::new(Session {
            me: id,
            failure: Mutex::new(None),
            conns: Mutex::new(links.iter().flatten().map(|l| l.conn.clone()).collect()),
        });
        let mut peers: Vec<Option<Peer>> = (0..n).map(|_| None).collect();
        for (peer, link) in links.into_iter().enumerate() {
            let Some(link) = link else { continue };
            let shared = Arc::new(PeerShared::default());
            let (qtx, qrx) = tokio::sync::mpsc::unbounded_channel();
            let (ctx, crx) = mpsc::channel();
            let writer = runtime.spawn(write_loop(peer, link.send, qrx, shared.clone()));
            let reader = runtime.spawn(read_loop(
                ReadCtx {
                    peer,
                    n,
                    liveness,
                    max_frame,
                    shared: shared.clone(),
                    session: session.clone(),
                },
                link.recv,
                link.conn.clone(),
                ctx,
            ));
            // The handshake and the hello exchange ran on an idle link: their RTT
            // estimate is the propagation delay, before any queueing.
            let min_rtt_ns = AtomicU64::new(link.conn.rtt().as_nanos() as u64);
            peers[peer] = Some(Peer {
                min_rtt_ns,
                tx: Some(qtx),
                rx: Mutex::new(crx),
                conn: link.conn,
                shared,
                writer: Some(writer),
                reader: Some(reader),
                bytes_sent: AtomicU64::new(0),
                bytes_recv: AtomicU64::new(0),
                msgs_sent: AtomicU64::new(0),
                msgs_recv: AtomicU64::new(0),
            });
        }
        Ok(QuicTransport {
            id,
            n,
            io_timeout,
            session,
            peers,
            endpoint: Some(endpoint),
            runtime: Some(runtime),
        })
    }

    fn peer(&self, p: PartyId) -> Result<&Peer> {
        if p == self.id {
            return Err(Error::PartyId { id: p, n: self.n });
        }
        self.peers
            .get(p)
            .and_then(|x| x.as_ref())
            .ok_or(Error::PartyId { id: p, n: self.n })
    }

    /// Flush all queued messages, wait (at most `io_timeout`) until the peers have
    /// acknowledged them, and close the connections. Dropping does the same.
    pub fn close(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        let Some(runtime) = self.runtime.take() else {
            return;
        };
        let endpoint = self.endpoint.take();
        let mut writers = Vec::new();
        let mut conns = Vec::new();
        for p in self.peers.iter_mut().flatten() {
            // Closing the queue tells the writer to finish the stream once it is drained.
            drop(p.tx.take());
            if let Some(w) = p.writer.take() {
                writers.push(w);
            }
            if let Some(r) = p.reader.take() {
                r.abort();
            }
            conns.push(p.conn.clone());
        }
        let deadline = self.io_timeout;
        runtime.block_on(async move {
            let flush = async {
                for w in writers {
                    let _ = w.await;
                }
            };
            if tokio::time::timeout(deadline, flush).await.is_err() {
                warn!("closing the transport before all messages were acknowledged (after {deadline:?})");
            }
            for c in &conns {
                c.close(VarInt::from_u32(CODE_DONE), b"done");
            }
            if let Some(ep) = endpoint {
                let _ = tokio::time::timeout(CLOSE_LINGER, ep.wait_idle()).await;
            }
        });
        runtime.shutdown_timeout(Duration::from_millis(100));
    }
}

impl Drop for QuicTransport {
    fn drop(&mut self) {
        self.shutdown();
    }
}

impl Transport for QuicTransport {
    fn id(&self) -> PartyId {
        self.id
    }

    fn num_parties(&self) -> usize {
        self.n
    }

    fn send(&self, to: PartyId, msg: Vec<u64>) -> Result<()> {
        let p = self.peer(to)?;
        let len = msg.len() as u64 * 8;
        if let Some(f) = self.session.failure() {
            return Err(f.to_error(self.id));
        }
        if let Some(why) = p
            .shared
            .dead
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
        {
            return Err(Error::PeerGone {
                peer: to,
                detail: why,
            });
        }
        let tx = p.tx.as_ref().ok_or_else(|| Error::PeerGone {
            peer: to,
            detail: "transport is shutting down".into(),
        })?;
        tx.send(msg).map_err(|_| Error::PeerGone {
            peer: to,
            detail: p.shared.reason(),
        })?;
        p.bytes_sent.fetch_add(len, Ordering::Relaxed);
        p.msgs_sent.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    fn recv(&self, from: PartyId) -> Result<Vec<u64>> {
        let p = self.peer(from)?;
        if let Some(f) = self.session.failure() {
            return Err(f.to_error(self.id));
        }
        let rx = p.rx.lock().unwrap_or_else(|e| e.into_inner());
        match rx.recv_timeout(self.io_timeout) {
            Ok(Ok(msg)) => {
                p.bytes_recv
                    .fetch_add(msg.len() as u64 * 8, Ordering::Relaxed);
                p.msgs_recv.fetch_add(1, Ordering::Relaxed);
                Ok(msg)
            }
            Ok(Err(e)) => Err(e),
            Err(mpsc::RecvTimeoutError::Timeout) => Err(Error::Timeout {
                peer: from,
                secs: self.io_timeout.as_secs_f64(),
                during: "waiting for a message".into(),
            }),
            Err(mpsc::RecvTimeoutError::Disconnected) => Err(Error::PeerGone {
                peer: from,
                detail: p.shared.reason(),
            }),
        }
    }

    fn stats(&self) -> TransportStats {
        let mut s = TransportStats::new(self.n);
        for (i, p) in self.peers.iter().enumerate() {
            if let Some(p) = p {
                s.bytes_sent[i] = p.bytes_sent.load(Ordering::Relaxed);
                s.bytes_recv[i] = p.bytes_recv.load(Ordering::Relaxed);
                s.msgs_sent[i] = p.msgs_sent.load(Ordering::Relaxed);
                s.msgs_recv[i] = p.msgs_recv.load(Ordering::Relaxed);
            }
        }
        s
    }

    fn io_timeout(&self) -> Duration {
        self.io_timeout
    }

    fn one_way_delay(&self, peer: PartyId) -> Duration {
        let Ok(p) = self.peer(peer) else {
            return Duration::ZERO;
        };
        let now = p.conn.rtt().as_nanos() as u64;
        let min = p.min_rtt_ns.fetch_min(now, Ordering::Relaxed).min(now);
        Duration::from_nanos(min / 2)
    }

    fn abort(&self, origin: PartyId, reason: &str) {
        self.session.fail(Failure::Local {
            origin,
            reason: reason.to_string(),
        });
    }
}

/// Everything the connection phase needs, moved into the runtime.
struct Setup {
    me: PartyId,
    n: usize,
    identity: Identity,
    fingerprints: Vec<String>,
    addrs: Vec<SocketAddr>,
    addr_strings: Vec<String>,
    liveness: Duration,
    start_timeout_s: u64,
    bind_addr: SocketAddr,
    options: QuicOptions,
    config_path: std::path::PathBuf,
}

impl Setup {
    /// Bind, dial the higher ids, accept the lower ids; all links or `ConnectTimeout`.
    async fn run(self) -> Result<(Endpoint, Vec<Option<Link>>)> {
        let me = self.me;
        let deadline = Instant::now() + Duration::from_secs(self.start_timeout_s);
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let transport = Arc::new(transport_config(&self.options, self.liveness));
        // Lower ids dial us: pin their fingerprints for the listener.
        let lower: HashMap<String, PartyId> =
            (0..me).map(|p| (self.fingerprints[p].clone(), p)).collect();
        let server = if me > 0 {
            Some(server_config(
                &self.identity,
                me,
                lower.clone(),
                provider.clone(),
                transport.clone(),
            )?)
        } else {
            None
        };
        let endpoint =
            make_endpoint(self.bind_addr, server, &self.options).map_err(|e| Error::Config {
                path: self.config_path.clone(),
                detail: format!("party {me}: cannot bind {}: {e}", self.bind_addr),
            })?;

        let (found_tx, mut found_rx) = tokio::sync::mpsc::unbounded_channel::<(PartyId, Link)>();
        let mut tasks = Vec::new();
        if me > 0 {
            tasks.push(tokio::spawn(accept_loop(
                endpoint.clone(),
                me,
                lower,
                found_tx.clone(),
            )));
        }
        for peer in me + 1..self.n {
            let cfg = client_config(
                &self.identity,
                peer,
                self.fingerprints[peer].clone(),
                self.addr_strings[peer].clone(),
                provider.clone(),
                transport.clone(),
            )?;
            tasks.push(tokio::spawn(dial_loop(
                endpoint.clone(),
                cfg,
                me,
                peer,
                self.addrs[peer],
                self.identity.fingerprint().to_string(),
                deadline,
                found_tx.clone(),
            )));
        }
        drop(found_tx);

        let mut links: Vec<Option<Link>> = (0..self.n).map(|_| None).collect();
        let mut missing = self.n - 1;
        while missing > 0 {
            match tokio::time::timeout_at(deadline, found_rx.recv()).await {
                Ok(Some((peer, link))) => {
                    if let Some(old) = links[peer].replace(link) {
                        debug!(
                            party = me,
                            peer, "peer reconnected; dropping the older connection"
                        );
                        old.conn.close(VarInt::from_u32(CODE_ABORT), b"superseded");
                    } else {
                        missing -= 1;
                    }
                }
                Ok(None) | Err(_) => break,
            }
        }
        for t in &tasks {
            t.abort();
        }
        // No more incoming connections: the session's topology is complete (or failed).
        endpoint.set_server_config(None);
        if missing > 0 {
            let peer = (0..self.n)
                .find(|&p| p != me && links[p].is_none())
                .unwrap_or(me);
            for l in links.iter().flatten() {
                l.conn.close(VarInt::from_u32(CODE_ABORT), b"start timeout");
            }
            endpoint.close(VarInt::from_u32(CODE_ABORT), b"start timeout");
            return Err(Error::ConnectTimeout {
                peer,
                addr: self.addr_strings[peer].clone(),
                secs: self.start_timeout_s,
            });
        }
        debug!(party = me, "all peers connected");
        Ok((endpoint, links))
    }
}

fn var(x: u64) -> VarInt {
    VarInt::from_u64(x).unwrap_or(VarInt::MAX)
}

/// quinn transport parameters: big windows, keep-alives every `liveness / 4`, idle
/// timeout = `liveness`.
fn transport_config(options: &QuicOptions, liveness: Duration) -> quinn::TransportConfig {
    let mut t = quinn::TransportConfig::default();
    t.stream_receive_window(var(options.stream_receive_window))
        .receive_window(var(options.receive_window))
        .send_window(options.send_window)
        .max_concurrent_uni_streams(VarInt::from_u32(0))
        .max_concurrent_bidi_streams(VarInt::from_u32(4))
        .keep_alive_interval(Some(
            options
                .keep_alive
                .unwrap_or_else(|| (liveness / 4).max(Duration::from_millis(100))),
        ))
        .max_idle_timeout(quinn::IdleTimeout::try_from(liveness).ok());
    let mut cubic = quinn::congestion::CubicConfig::default();
    cubic.initial_window(options.initial_window);
    t.congestion_controller_factory(Arc::new(cubic));
    let mut mtu = quinn::MtuDiscoveryConfig::default();
    mtu.upper_bound(options.max_udp_payload.saturating_sub(20).max(1200));
    t.mtu_discovery_config(Some(mtu));
    t
}

fn tls_err(e: rustls::Error) -> Error {
    Error::Identity(format!("TLS configuration: {e}"))
}

fn server_config(
    identity: &Identity,
    me: PartyId,
    lower: HashMap<String, PartyId>,
    provider: Arc<CryptoProvider>,
    transport: Arc<quinn::TransportConfig>,
) -> Result<quinn::ServerConfig> {
    let verifier = Arc::new(PinnedClientVerifier {
        me,
        pinned: lower,
        provider: provider.clone(),
    });
    let mut tls = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(tls_err)?
        .with_client_cert_verifier(verifier)
        .with_single_cert(
            vec![identity.cert_der().clone()],
            identity.key_der().clone_key(),
        )
        .map_err(tls_err)?;
    tls.alpn_protocols = vec![ALPN.to_vec()];
    let quic = quinn::crypto::rustls::QuicServerConfig::try_from(tls)
        .map_err(|e| Error::Identity(format!("QUIC server TLS configuration: {e}")))?;
    let mut server = quinn::ServerConfig::with_crypto(Arc::new(quic));
    server.transport_config(transport);
    Ok(server)
}

fn client_config(
    identity: &Identity,
    peer: PartyId,
    fingerprint: String,
    addr: String,
    provider: Arc<CryptoProvider>,
    transport: Arc<quinn::TransportConfig>,
) -> Result<quinn::ClientConfig> {
    let verifier = Arc::new(PinnedServerVerifier {
        peer,
        addr,
        pinned: fingerprint,
        provider: provider.clone(),
    });
    let mut tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(tls_err)?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_client_auth_cert(
            vec![identity.cert_der().clone()],
            identity.key_der().clone_key(),
        )
        .map_err(tls_err)?;
    tls.alpn_protocols = vec![ALPN.to_vec()];
    let quic = quinn::crypto::rustls::QuicClientConfig::try_from(tls)
        .map_err(|e| Error::Identity(format!("QUIC client TLS configuration: {e}")))?;
    let mut client = quinn::ClientConfig::new(Arc::new(quic));
    client.transport_config(transport);
    Ok(client)
}

fn make_endpoint(
    bind: SocketAddr,
    server: Option<quinn::ServerConfig>,
    options: &QuicOptions,
) -> std::io::Result<Endpoint> {
    let socket = std::net::UdpSocket::bind(bind)?;
    if let Ok(state) = quinn::udp::UdpSocketState::new((&socket).into()) {
        // Best effort: the OS may cap these (net.core.rmem_max / wmem_max).
        let _ = state.set_recv_buffer_size((&socket).into(), options.socket_buffer_bytes);
        let _ = state.set_send_buffer_size((&socket).into(), options.socket_buffer_bytes);
    }
    let mut config = quinn::EndpointConfig::default();
    config
        .max_udp_payload_size(options.max_udp_payload.clamp(1200, 65527))
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e.to_string()))?;
    Endpoint::new(config, server, socket, Arc::new(quinn::TokioRuntime))
}

/// The presented certificate is not the pinned one.
#[derive(Debug)]
struct Unpinned(String);

impl std::fmt::Display for Unpinned {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Unpinned {}

fn unpinned(msg: String) -> rustls::Error {
    rustls::Error::InvalidCertificate(rustls::CertificateError::Other(rustls::OtherError(
        Arc::new(Unpinned(msg)),
    )))
}

/// Dialer side: accept the server certificate iff it is the pinned one of `peer`.
#[derive(Debug)]
struct PinnedServerVerifier {
    peer: PartyId,
    addr: String,
    pinned: String,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for PinnedServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> std::result::Result<ServerCertVerified, rustls::Error> {
        let fp = identity::fingerprint(end_entity);
        if fp == self.pinned {
            Ok(ServerCertVerified::assertion())
        } else {
            warn!(
                peer = self.peer,
                addr = %self.addr,
                presented = %fp,
                pinned = %self.pinned,
                "refusing connection: the server's certificate is not the one pinned for this party"
            );
            Err(unpinned(format!(
                "party {} at {} presented certificate {fp}, pinned is {}",
                self.peer, self.addr, self.pinned
            )))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// Listener side: accept a client certificate iff it is pinned for a lower party id.
#[derive(Debug)]
struct PinnedClientVerifier {
    me: PartyId,
    pinned: HashMap<String, PartyId>,
    provider: Arc<CryptoProvider>,
}

impl ClientCertVerifier for PinnedClientVerifier {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> std::result::Result<ClientCertVerified, rustls::Error> {
        let fp = identity::fingerprint(end_entity);
        if self.pinned.contains_key(&fp) {
            Ok(ClientCertVerified::assertion())
        } else {
            Err(unpinned(format!(
                "client certificate {fp} is not pinned for any party that dials party {}",
                self.me
            )))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

fn hello(from: PartyId, to: PartyId) -> [u8; HELLO_LEN] {
    let mut h = [0u8; HELLO_LEN];
    h[..8].copy_from_slice(HELLO_MAGIC);
    h[8..16].copy_from_slice(&(from as u64).to_le_bytes());
    h[16..].copy_from_slice(&(to as u64).to_le_bytes());
    h
}

/// Why a dial attempt failed.
enum DialError {
    /// The peer (or our verifier) actively refused: wrong certificate, wrong hello.
    Refused(String),
    /// Our own verifier refused the peer (it has already logged why).
    RefusedHere(String),
    /// Not reachable (yet), or a transient failure.
    Other(String),
}

fn classify(e: ConnectionError) -> DialError {
    match e {
        ConnectionError::TransportError(_) => DialError::RefusedHere(e.to_string()),
        ConnectionError::ConnectionClosed(_)
        | ConnectionError::ApplicationClosed(_)
        | ConnectionError::VersionMismatch => DialError::Refused(e.to_string()),
        _ => DialError::Other(e.to_string()),
    }
}

/// One dial attempt: handshake (bounded by `ATTEMPT_TIMEOUT`), then the hello exchange.
async fn dial_once(
    endpoint: &Endpoint,
    cfg: quinn::ClientConfig,
    me: PartyId,
    peer: PartyId,
    addr: SocketAddr,
    hello_deadline: Instant,
) -> std::result::Result<Link, DialError> {
    let connecting = endpoint
        .connect_with(cfg, addr, &identity::server_name(peer))
        .map_err(|e| DialError::Other(e.to_string()))?;
    let conn = match tokio::time::timeout(ATTEMPT_TIMEOUT, connecting).await {
        Ok(Ok(c)) => c,
        Ok(Err(e)) => return Err(classify(e)),
        Err(_) => return Err(DialError::Other("no answer".into())),
    };
    let exchange = async {
        let (mut send, mut recv) = conn.open_bi().await.map_err(classify)?;
        send.write_all(&hello(me, peer))
            .await
            .map_err(|e| DialError::Other(e.to_string()))?;
        let mut ack = [0u8; HELLO_LEN];
        recv.read_exact(&mut ack).await.map_err(|e| match e {
            quinn::ReadExactError::ReadError(quinn::ReadError::ConnectionLost(c)) => classify(c),
            e => DialError::Other(e.to_string()),
        })?;
        if ack != hello(peer, me) {
            return Err(DialError::Refused(format!(
                "unexpected hello {ack:02x?}, expected one from party {peer} to party {me}"
            )));
        }
        Ok((send, recv))
    };
    match tokio::time::timeout_at(
        hello_deadline.max(Instant::now() + ATTEMPT_TIMEOUT),
        exchange,
    )
    .await
    {
        Ok(Ok((send, recv))) => Ok(Link { conn, send, recv }),
        Ok(Err(e)) => {
            conn.close(VarInt::from_u32(CODE_ABORT), b"hello failed");
            Err(e)
        }
        Err(_) => {
            conn.close(VarInt::from_u32(CODE_ABORT), b"hello timeout");
            Err(DialError::Other("no hello from the peer".into()))
        }
    }
}

/// Dial `peer` until connected or `deadline`.
#[allow(clippy::too_many_arguments)]
async fn dial_loop(
    endpoint: Endpoint,
    cfg: quinn::ClientConfig,
    me: PartyId,
    peer: PartyId,
    addr: SocketAddr,
    our_fingerprint: String,
    deadline: Instant,
    found: tokio::sync::mpsc::UnboundedSender<(PartyId, Link)>,
) {
    while Instant::now() < deadline {
        match dial_once(&endpoint, cfg.clone(), me, peer, addr, deadline).await {
            Ok(link) => {
                debug!(party = me, peer, %addr, "connected");
                let _ = found.send((peer, link));
                return;
            }
            Err(DialError::Refused(why)) => warn!(
                party = me,
                peer,
                %addr,
                ours = %our_fingerprint,
                "connection refused: {why}; retrying until the start deadline"
            ),
            Err(DialError::RefusedHere(why)) => {
                debug!(party = me, peer, %addr, "refused the peer: {why}")
            }
            Err(DialError::Other(why)) => {
                debug!(party = me, peer, %addr, "not connected yet: {why}");
                tokio::time::sleep_until(deadline.min(Instant::now() + RETRY_DELAY)).await;
                continue;
            }
        }
        // After a refusal, retry slowly: someone has to fix a config or restart a party.
        tokio::time::sleep_until(deadline.min(Instant::now() + REFUSED_RETRY_DELAY)).await;
    }
}

/// Accept connections from lower ids until aborted.
async fn accept_loop(
    endpoint: Endpoint,
    me: PartyId,
    pinned: HashMap<String, PartyId>,
    found: tokio::sync::mpsc::UnboundedSender<(PartyId, Link)>,
) {
    let pinned = Arc::new(pinned);
    while let Some(incoming) = endpoint.accept().await {
        tokio::spawn(accept_one(incoming, me, pinned.clone(), found.clone()));
    }
}

async fn accept_one(
    incoming: quinn::Incoming,
    me: PartyId,
    pinned: Arc<HashMap<String, PartyId>>,
    found: tokio::sync::mpsc::UnboundedSender<(PartyId, Link)>,
) {
    let remote = incoming.remote_address();
    let conn = match incoming.await {
        Ok(c) => c,
        Err(e @ ConnectionError::TransportError(_)) => {
            warn!(party = me, from = %remote, "refused an incoming connection: {e}");
            return;
        }
        Err(e) => {
            debug!(party = me, from = %remote, "incoming connection failed: {e}");
            return;
        }
    };
    let fp = conn
        .peer_identity()
        .and_then(|any| any.downcast::<Vec<CertificateDer<'static>>>().ok())
        .and_then(|certs| certs.first().map(|c| identity::fingerprint(c)));
    let Some(peer) = fp.as_ref().and_then(|fp| pinned.get(fp).copied()) else {
        // The verifier already refuses these; this is a second line of defence.
        warn!(party = me, from = %remote, presented = ?fp, "refusing a connection with an unpinned certificate");
        conn.close(VarInt::from_u32(CODE_REJECT), b"certificate not pinned");
        return;
    };
    let exchange = async {
        let (mut send, mut recv) = conn.accept_bi().await.map_err(|e| e.to_string())?;
        let mut h = [0u8; HELLO_LEN];
        recv.read_exact(&mut h).await.map_err(|e| e.to_string())?;
        if h != hello(peer, me) {
            return Err(format!(
                "unexpected hello {h:02x?} (expected one from party {peer} to party {me})"
            ));
        }
        send.write_all(&hello(me, peer))
            .await
            .map_err(|e| e.to_string())?;
        Ok((send, recv))
    };
    match tokio::time::timeout(Duration::from_secs(10), exchange).await {
        Ok(Ok((send, recv))) => {
            debug!(party = me, peer, from = %remote, "accepted");
            let _ = found.send((peer, Link { conn, send, recv }));
        }
        Ok(Err(why)) => {
            warn!(party = me, peer, from = %remote, "refusing connection: {why}");
            conn.close(VarInt::from_u32(CODE_REJECT), b"bad hello");
        }
        Err(_) => {
            debug!(party = me, peer, from = %remote, "no hello; dropping the connection");
            conn.close(VarInt::from_u32(CODE_ABORT), b"hello timeout");
        }
    }
}

/// Drain the queue onto the stream; at the end finish it and wait for the peer's ack.
async fn write_loop(
    peer: PartyId,
    mut send: SendStream,
    mut queue: tokio::sync::mpsc::UnboundedReceiver<Vec<u64>>,
    shared: Arc<PeerShared>,
) {
    let mut small = Vec::with_capacity(8 + SMALL_MSG);
    while let Some(msg) = queue.recv().await {
        let bytes: &[u8] = bytemuck::cast_slice(&msg);
        let header = (bytes.len() as u64).to_le_bytes();
        let res = if bytes.len() <= SMALL_MSG {
            small.clear();
            small.extend_from_slice(&header);
            small.extend_from_slice(bytes);
            send.write_all(&small).await
        } else {
            match send.write_all(&header).await {
                Ok(()) => send.write_all(bytes).await,
                Err(e) => Err(e),
            }
        };
        if let Err(e) = res {
            debug!(peer, "send failed: {e}");
            shared.set_dead(format!("sending failed: {e}"));
            return;
        }
    }
    // Queue closed by shutdown: everything is written; make sure it arrives.
    if send.finish().is_ok() {
        match send.stopped().await {
            Ok(None) => {}
            Ok(Some(code)) => debug!(peer, "peer stopped reading (code {code})"),
            Err(e) => debug!(
                peer,
                "peer gone before acknowledging our last messages: {e}"
            ),
        }
    }
}

/// What a link's reader needs besides its stream.
struct ReadCtx {
    peer: PartyId,
    n: usize,
    liveness: Duration,
    max_frame: u64,
    shared: Arc<PeerShared>,
    session: Arc<Session>,
}

/// How a link ended, as the reader saw it.
enum LinkEnd {
    /// The peer shut down in order (finished its stream, or closed with `CODE_DONE`):
    /// not a fault by itself; a later `recv` from it is [`Error::PeerGone`].
    Orderly(String),
    /// We closed the connection ourselves (shutdown, or the session failed elsewhere).
    Local,
    /// The link failed: the session fails with this.
    Fault(Failure),
}

/// Read frames into fresh `Vec<u64>`s and hand them to `recv`; when the link ends,
/// classify how (see [`LinkEnd`]), fail the session on a fault and hand the error on.
async fn read_loop(
    cx: ReadCtx,
    mut recv: RecvStream,
    conn: Connection,
    out: mpsc::Sender<Result<Vec<u64>>>,
) {
    let peer = cx.peer;
    let end = match read_frames(&mut recv, &out, cx.max_frame).await {
        Ok(()) => return, // the transport was dropped
        Err(ReadEnd::Frame(detail)) => {
            warn!(peer, "closing the connection: malformed frame: {detail}");
            conn.close(VarInt::from_u32(CODE_FRAME), b"malformed frame");
            LinkEnd::Fault(Failure::Frame { peer, detail })
        }
        Err(ReadEnd::Finished) => {
            LinkEnd::Orderly("the peer finished its stream (it shut down)".into())
        }
        Err(ReadEnd::Lost(e)) => classify_link_end(&cx, e),
    };
    let err = match end {
        LinkEnd::Orderly(detail) => {
            cx.shared.set_dead(detail.clone());
            Error::PeerGone { peer, detail }
        }
        LinkEnd::Local => match cx.session.failure() {
            Some(f) => f.to_error(cx.session.me),
            None => return, // our own shutdown
        },
        LinkEnd::Fault(f) => {
            debug!(peer, "link failed: {}", f.to_error(cx.session.me));
            cx.session.fail(f.clone());
            // The session's first failure (maybe another link's) is what we report.
            cx.session.failure().unwrap_or(f).to_error(cx.session.me)
        }
    };
    cx.shared.set_dead(err.to_string());
    let _ = out.send(Err(err));
}

/// Classify a lost connection: orderly shutdown, our own close, or a fault saying what
/// happened (no packet for `liveness`, reset, aborted with a reason).
fn classify_link_end(cx: &ReadCtx, e: quinn::ReadError) -> LinkEnd {
    let peer = cx.peer;
    let gone = |detail: String| LinkEnd::Fault(Failure::Gone { peer, detail });
    let quinn::ReadError::ConnectionLost(lost) = e else {
        return gone(format!("reading failed: {e}"));
    };
    match lost {
        ConnectionError::ApplicationClosed(c) if c.error_code == VarInt::from_u32(CODE_DONE) => {
            LinkEnd::Orderly("the peer closed the connection (it shut down)".into())
        }
        ConnectionError::ApplicationClosed(c) if c.error_code == VarInt::from_u32(CODE_ABORT) => {
            let (origin, reason) = parse_abort(peer, cx.n, &c.reason);
            LinkEnd::Fault(Failure::Aborted {
                peer,
                origin,
                reason,
            })
        }
        ConnectionError::ApplicationClosed(c) if c.error_code == VarInt::from_u32(CODE_FRAME) => {
            gone("the peer closed the connection: it received a malformed frame from us".into())
        }
        ConnectionError::ApplicationClosed(c) => gone(format!(
            "the peer closed the connection (code {}: {})",
            c.error_code,
            String::from_utf8_lossy(&c.reason)
        )),
        ConnectionError::TimedOut => gone(format!(
            "no packet from it for {:.1} s (liveness_s): its process or host is gone, or frozen",
            cx.liveness.as_secs_f64()
        )),
        ConnectionError::Reset => {
            gone("the peer reset the connection (its process restarted?)".into())
        }
        ConnectionError::ConnectionClosed(c) => {
            gone(format!("the peer closed the connection: {c}"))
        }
        ConnectionError::LocallyClosed => LinkEnd::Local,
        other => gone(other.to_string()),
    }
}

/// Why [`read_frames`] stopped.
enum ReadEnd {
    /// The peer finished its stream at a frame boundary.
    Finished,
    /// A malformed frame (bad length, end of stream inside a frame).
    Frame(String),
    /// The connection was lost.
    Lost(quinn::ReadError),
}

/// The payload size in words announced by a frame header, or why the header is
/// malformed: the length must be a multiple of 8 and at most `max_frame` bytes, and it is
/// checked before anything is allocated.
pub fn frame_words(header: [u8; 8], max_frame: u64) -> std::result::Result<usize, String> {
    let len = u64::from_le_bytes(header);
    if !len.is_multiple_of(8) {
        return Err(format!("frame length {len} bytes is not a multiple of 8"));
    }
    if len > max_frame {
        return Err(format!(
            "frame length {len} bytes exceeds the limit of {max_frame} bytes"
        ));
    }
    usize::try_from(len / 8).map_err(|_| format!("frame length {len} bytes does not fit in memory"))
}

async fn read_frames(
    recv: &mut RecvStream,
    out: &mpsc::Sender<Result<Vec<u64>>>,
    max_frame: u64,
) -> std::result::Result<(), ReadEnd> {
    let frame = ReadEnd::Frame;
    let gone = ReadEnd::Lost;
    loop {
        let mut header = [0u8; 8];
        match recv.read_exact(&mut header).await {
            Ok(()) => {}
            Err(quinn::ReadExactError::FinishedEarly(0)) => return Err(ReadEnd::Finished),
            Err(quinn::ReadExactError::FinishedEarly(k)) => {
                return Err(frame(format!(
                    "stream ended inside a frame header ({k} of 8 bytes)"
                )))
            }
            Err(quinn::ReadExactError::ReadError(e)) => return Err(gone(e)),
        }
        let words = frame_words(header, max_frame).map_err(frame)?;
        let len = words * 8;
        let mut msg = vec![0u64; words];
        match recv.read_exact(bytemuck::cast_slice_mut(&mut msg)).await {
            Ok(()) => {}
            Err(quinn::ReadExactError::FinishedEarly(k)) => {
                return Err(frame(format!(
                    "stream ended inside a frame after {k} of {len} payload bytes"
                )))
            }
            Err(quinn::ReadExactError::ReadError(e)) => return Err(gone(e)),
        }
        if out.send(Ok(msg)).is_err() {
            return Ok(());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::tests::{temp_dir, write_config};
    use std::path::PathBuf;
    use std::thread;
    use std::time::Instant as StdInstant;

    fn free_ports() -> [u16; 3] {
        let socks: Vec<std::net::UdpSocket> = (0..3)
            .map(|_| std::net::UdpSocket::bind("127.0.0.1:0").unwrap())
            .collect();
        let p: Vec<u16> = socks
            .iter()
            .map(|s| s.local_addr().unwrap().port())
            .collect();
        [p[0], p[1], p[2]]
    }

    /// A keyed session in a fresh temp dir; returns the config path.
    /// Start-up deadline of the tests whose peers all come up: generous, since the test
    /// binary runs them side by side on a loaded 2-core CI machine (a 10 s deadline once
    /// expired there while a 100 MB transfer test ran beside it); a healthy start takes
    /// milliseconds, so only a broken one waits this long.
    const START_S: u64 = 60;

    fn session(tag: &str, setting: &str, start_s: u64, io_s: u64) -> PathBuf {
        let dir = temp_dir(tag);
        let path = write_config(&dir, setting, free_ports(), start_s, io_s);
        crate::identity::keygen(&path).unwrap();
        path
    }

    fn connect(path: &PathBuf, id: PartyId) -> Result<QuicTransport> {
        let config = Config::load(path).unwrap();
        let ident = Identity::load(&config, id).unwrap();
        QuicTransport::connect(&config, id, ident)
    }

    fn pattern(seed: u64, n: usize) -> Vec<u64> {
        (0..n as u64)
            .map(|i| i.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ seed)
            .collect()
    }

    #[test]
    fn three_parties_exchange_messages() {
        let path = session("exchange", "3pc", START_S, 10);
        let handles: Vec<_> = (0..3)
            .map(|id| {
                let path = path.clone();
                thread::spawn(move || {
                    // Listeners start late: dialers must retry.
                    thread::sleep(Duration::from_millis(400 * id as u64));
                    let t = connect(&path, id).unwrap();
                    assert_eq!(t.id(), id);
                    assert_eq!(t.num_parties(), 3);
                    assert!(matches!(
                        t.send(id, vec![1]),
                        Err(Error::PartyId { id: i, n: 3 }) if i == id
                    ));
                    assert!(matches!(t.send(3, vec![1]), Err(Error::PartyId { .. })));
                    assert!(matches!(t.recv(7), Err(Error::PartyId { .. })));
                    for to in (0..3).filter(|&p| p != id) {
                        let seed = (id * 10 + to) as u64;
                        t.send(to, vec![seed]).unwrap();
                        t.send(to, vec![]).unwrap();
                        t.send(to, pattern(seed, 1 << 20)).unwrap();
                    }
                    for from in (0..3).filter(|&p| p != id) {
                        let seed = (from * 10 + id) as u64;
                        assert_eq!(t.recv(from).unwrap(), vec![seed]);
                        assert_eq!(t.recv(from).unwrap(), Vec::<u64>::new());
                        assert_eq!(t.recv(from).unwrap(), pattern(seed, 1 << 20));
                    }
                    let s = t.stats();
                    for p in (0..3).filter(|&p| p != id) {
                        assert_eq!(s.msgs_sent[p], 3);
                        assert_eq!(s.msgs_recv[p], 3);
                        assert_eq!(s.bytes_sent[p], 8 + 8 * (1 << 20));
                        assert_eq!(s.bytes_recv[p], 8 + 8 * (1 << 20));
                    }
                    assert_eq!(s.bytes_sent[id], 0);
                })
            })
            .collect();
        for h in handles {
            h.join().unwrap();
        }
    }

    #[test]
    fn both_send_100mb_before_receiving() {
        let path = session("bulk", "2pc", START_S, 30);
        const WORDS: usize = 100_000_000 / 8;
        let handles: Vec<_> = (0..3)
            .map(|id| {
                let path = path.clone();
                thread::spawn(move || {
                    let t = connect(&path, id).unwrap();
                    if id == 2 {
                        // The dealer only has to be there.
                        return;
                    }
                    let other = 1 - id;
                    let start = StdInstant::now();
                    t.send(other, pattern(id as u64, WORDS)).unwrap();
                    let got = t.recv(other).unwrap();
                    let secs = start.elapsed().as_secs_f64();
                    assert_eq!(got.len(), WORDS);
                    assert!(got == pattern(other as u64, WORDS), "payload corrupted");
                    eprintln!("party {id}: 100 MB each way in {secs:.2}s");
                    t.send(other, vec![42]).unwrap();
                    assert_eq!(t.recv(other).unwrap(), vec![42]);
                })
            })
            .collect();
        for h in handles {
            h.join().unwrap();
        }
    }

    #[test]
    fn missing_peer_is_a_connect_timeout() {
        let path = session("timeout", "2pc", 2, 10);
        let config = Config::load(&path).unwrap();
        let addr2 = config.party(2).unwrap().addr.clone();
        let handles: Vec<_> = (0..2)
            .map(|id| {
                let path = path.clone();
                thread::spawn(move || {
                    let start = StdInstant::now();
                    let e = connect(&path, id).unwrap_err();
                    (e, start.elapsed())
                })
            })
            .collect();
        for h in handles {
            let (e, took) = h.join().unwrap();
            assert!(
                matches!(
                    e,
                    Error::ConnectTimeout {
                        peer: 2,
                        secs: 2,
                        ..
                    }
                ),
                "{e}"
            );
            assert_eq!(
                e.to_string(),
                format!("party 2 at {addr2} did not connect within 2s")
            );
            assert!(took < Duration::from_secs(5), "{took:?}");
        }
    }

    #[test]
    fn wrong_certificate_is_refused() {
        let path = session("wrongcert", "2pc", 2, 10);
        let handles: Vec<_> = (0..3)
            .map(|id| {
                let path = path.clone();
                thread::spawn(move || {
                    let config = Config::load(&path).unwrap();
                    let ident = if id == 1 {
                        Identity::generate(1).unwrap() // not the pinned one
                    } else {
                        Identity::load(&config, id).unwrap()
                    };
                    QuicTransport::connect(&config, id, ident).map(|_| ())
                })
            })
            .collect();
        let results: Vec<_> = handles.into_iter().map(|h| h.join().unwrap()).collect();
        // P0 refuses P1's server certificate; P2 refuses P1's client certificate.
        for id in [0, 2] {
            match &results[id] {
                Err(e @ Error::ConnectTimeout { peer: 1, .. }) => {
                    assert!(e.to_string().contains("party 1 at"), "{e}")
                }
                other => panic!("party {id}: expected a timeout naming party 1, got {other:?}"),
            }
        }
        // The impostor never gets a working connection to anyone.
        assert!(matches!(results[1], Err(Error::ConnectTimeout { .. })));
    }

    #[test]
    fn dropped_peer_is_reported_promptly_after_its_last_message() {
        let path = session("drop", "3pc", START_S, 30);
        let handles: Vec<_> = (0..3)
            .map(|id| {
                let path = path.clone();
                thread::spawn(move || {
                    let t = connect(&path, id).unwrap();
                    match id {
                        1 => {
                            // Send a last (large) message and go away at once.
                            t.send(0, pattern(7, 4 << 20)).unwrap();
                            drop(t);
                        }
                        0 => {
                            thread::sleep(Duration::from_millis(1500));
                            assert!(t.recv(1).unwrap() == pattern(7, 4 << 20));
                            let start = StdInstant::now();
                            let e = t.recv(1).unwrap_err();
                            assert!(matches!(e, Error::PeerGone { peer: 1, .. }), "{e}");
                            assert!(e.to_string().contains("party 1"), "{e}");
                            assert!(start.elapsed() < Duration::from_secs(3));
                            // Later calls keep failing the same way, sends too.
                            assert!(matches!(t.recv(1), Err(Error::PeerGone { peer: 1, .. })));
                            thread::sleep(Duration::from_millis(200));
                            assert!(matches!(
                                t.send(1, vec![1]),
                                Err(Error::PeerGone { peer: 1, .. })
                            ));
                            // P2 is still fine.
                            t.send(2, vec![5]).unwrap();
                            assert_eq!(t.recv(2).unwrap(), vec![6]);
                        }
                        _ => {
                            assert_eq!(t.recv(0).unwrap(), vec![5]);
                            t.send(0, vec![6]).unwrap();
                        }
                    }
                })
            })
            .collect();
        for h in handles {
            h.join().unwrap();
        }
    }

    #[test]
    fn silent_peer_is_a_timeout() {
        let path = session("silent", "3pc", START_S, 1);
        let handles: Vec<_> = (0..3)
            .map(|id| {
                let path = path.clone();
                thread::spawn(move || {
                    let t = connect(&path, id).unwrap();
                    if id == 0 {
                        t.send(1, vec![1]).unwrap();
                        let start = StdInstant::now();
                        let e = t.recv(2).unwrap_err();
                        assert!(matches!(e, Error::Timeout { peer: 2, .. }), "{e}");
                        assert!(start.elapsed() >= Duration::from_millis(900));
                    } else if id == 1 {
                        assert_eq!(t.recv(0).unwrap(), vec![1]);
                    } else {
                        // Connected but silent; stay up until P0 has seen its timeout.
                        thread::sleep(Duration::from_millis(2500));
                    }
                })
            })
            .collect();
        for h in handles {
            h.join().unwrap();
        }
    }

    /// Sets `liveness_s` in a session config written by [`session`].
    fn with_liveness(path: &PathBuf, secs: f64) {
        let text = std::fs::read_to_string(path).unwrap();
        let text = text.replacen(
            "io_timeout_s",
            &format!("liveness_s = {secs}\nio_timeout_s"),
            1,
        );
        std::fs::write(path, text).unwrap();
    }

    /// A local abort names its origin on every other party, through the cascade, long
    /// before the 30 s I/O deadline: P0 and P1 wait on each other while P2 aborts.
    #[test]
    fn an_abort_names_its_origin_through_the_cascade() {
        let path = session("cascade", "3pc", START_S, 30);
        let handles: Vec<_> = (0..3)
            .map(|id| {
                let path = path.clone();
                thread::spawn(move || {
                    let t = connect(&path, id).unwrap();
                    if id == 2 {
                        thread::sleep(Duration::from_millis(300));
                        t.abort(2, "disk full");
                        thread::sleep(Duration::from_millis(300));
                        return;
                    }
                    let start = StdInstant::now();
                    let e = t.recv(1 - id).unwrap_err();
                    assert!(start.elapsed() < Duration::from_secs(3), "{e}");
                    assert_eq!(e.origin(), Some(2), "{e}");
                    assert!(matches!(e, Error::Aborted { origin: 2, .. }), "{e}");
                    let text = e.to_string();
                    assert!(
                        text.contains("party 2") && text.contains("disk full"),
                        "{text}"
                    );
                    // The session is over on every link, with the same origin.
                    assert_eq!(t.send(1 - id, vec![1]).unwrap_err().origin(), Some(2));
                })
            })
            .collect();
        for h in handles {
            h.join().unwrap();
        }
    }

    /// Party 0 connects (raw quinn, hello and all) and then vanishes without a word (its
    /// runtime is torn down, as when a host loses power): P1 and P2 notice within
    /// `liveness_s` although their I/O deadline is 30 s, and say so.
    #[test]
    fn a_vanished_peer_is_noticed_within_liveness() {
        let path = session("vanish", "3pc", START_S, 30);
        with_liveness(&path, 1.0);
        let handles: Vec<_> = (1..3)
            .map(|id| {
                let path = path.clone();
                thread::spawn(move || {
                    let t = connect(&path, id).unwrap();
                    let start = StdInstant::now();
                    let e = t.recv(0).unwrap_err();
                    let took = start.elapsed();
                    // Seen on its own link, or first through the other party's abort:
                    // either way party 0 is named, with what happened.
                    assert_eq!(e.origin(), Some(0), "{e}");
                    assert!(e.to_string().contains("no packet from it for 1.0 s"), "{e}");
                    assert!(took < Duration::from_secs(4), "{took:?}");
                    // The other link fails with the same origin at once.
                    let e = t.recv(3 - id).unwrap_err();
                    assert_eq!(e.origin(), Some(0), "{e}");
                })
            })
            .collect();
        let config = Config::load(&path).unwrap();
        let ident = Identity::load(&config, 0).unwrap();
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let links = rt.block_on(async {
            let provider = Arc::new(rustls::crypto::ring::default_provider());
            let transport = Arc::new(transport_config(
                &QuicOptions::default(),
                Duration::from_secs(1),
            ));
            let endpoint = make_endpoint(
                "127.0.0.1:0".parse().unwrap(),
                None,
                &QuicOptions::default(),
            )
            .unwrap();
            let deadline = Instant::now() + Duration::from_secs(START_S);
            let mut links = Vec::new();
            for peer in 1..3 {
                let cfg = client_config(
                    &ident,
                    peer,
                    config.fingerprint(peer).unwrap().to_string(),
                    config.party(peer).unwrap().addr.clone(),
                    provider.clone(),
                    transport.clone(),
                )
                .unwrap();
                let addr = config.socket_addr(peer).unwrap();
                let link = loop {
                    if let Ok(l) = dial_once(&endpoint, cfg.clone(), 0, peer, addr, deadline).await
                    {
                        break l;
                    }
                    assert!(Instant::now() < deadline, "raw client could not connect");
                    tokio::time::sleep(RETRY_DELAY).await;
                };
                links.push(link);
            }
            // Let both peers finish their connect before vanishing.
            tokio::time::sleep(Duration::from_millis(300)).await;
            (endpoint, links)
        });
        // Vanish: no close, no packet ever again.
        rt.shutdown_background();
        std::mem::forget(links);
        for h in handles {
            h.join().unwrap();
        }
    }

    /// Party 0 as a raw quinn client with the right identity, sending bad frames.
    #[test]
    fn malformed_frames_are_errors() {
        let path = session("frame", "3pc", START_S, 10);
        let handles: Vec<_> = (1..3)
            .map(|id| {
                let path = path.clone();
                thread::spawn(move || {
                    let config = Config::load(&path).unwrap();
                    let ident = Identity::load(&config, id).unwrap();
                    let options = QuicOptions {
                        max_frame_bytes: 1024,
                        ..QuicOptions::default()
                    };
                    let t = QuicTransport::connect_with(&config, id, ident, options).unwrap();
                    let (own, theirs) = if id == 1 {
                        ("not a multiple of 8", "exceeds the limit")
                    } else {
                        ("exceeds the limit", "not a multiple of 8")
                    };
                    // Either this party rejects P0's frame itself, or the other honest
                    // party rejected its own first and its abort (naming P0) arrived
                    // here first: both orders are correct, and both blame party 0.
                    let e = t.recv(0).unwrap_err();
                    assert_eq!(e.origin(), Some(0), "{e}");
                    let text = e.to_string();
                    match e {
                        Error::Frame { peer: 0, .. } => assert!(text.contains(own), "{text}"),
                        Error::Aborted { .. } => assert!(text.contains(theirs), "{text}"),
                        _ => panic!("unexpected error: {text}"),
                    }
                    // A malformed frame ends the session: every later call repeats the
                    // first failure, naming party 0, on every link.
                    assert_eq!(t.recv(0).unwrap_err().origin(), Some(0));
                    let other = 3 - id;
                    let e = t.recv(other).unwrap_err();
                    assert_eq!(e.origin(), Some(0), "{e}");
                    let e = t.send(other, vec![9]).unwrap_err();
                    assert_eq!(e.origin(), Some(0), "{e}");
                })
            })
            .collect();

        let config = Config::load(&path).unwrap();
        let ident = Identity::load(&config, 0).unwrap();
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let provider = Arc::new(rustls::crypto::ring::default_provider());
            let transport = Arc::new(transport_config(
                &QuicOptions::default(),
                Duration::from_secs(10),
            ));
            let endpoint = make_endpoint(
                "127.0.0.1:0".parse().unwrap(),
                None,
                &QuicOptions::default(),
            )
            .unwrap();
            let deadline = Instant::now() + Duration::from_secs(START_S);
            let mut links = Vec::new();
            for peer in 1..3 {
                let cfg = client_config(
                    &ident,
                    peer,
                    config.fingerprint(peer).unwrap().to_string(),
                    config.party(peer).unwrap().addr.clone(),
                    provider.clone(),
                    transport.clone(),
                )
                .unwrap();
                let addr = config.socket_addr(peer).unwrap();
                let link = loop {
                    if let Ok(l) = dial_once(&endpoint, cfg.clone(), 0, peer, addr, deadline).await
                    {
                        break l;
                    }
                    assert!(Instant::now() < deadline, "raw client could not connect");
                    tokio::time::sleep(RETRY_DELAY).await;
                };
                links.push(link);
            }
            // To P1: a length that is not a multiple of 8.
            links[0].send.write_all(&12u64.to_le_bytes()).await.unwrap();
            // The receiver may reject the header and close before the payload is written:
            // a failed payload write is expected, not an error of the test.
            let _ = links[0].send.write_all(&[0u8; 12]).await;
            // To P2: a frame above its 1 KiB cap.
            let _ = links[1].send.write_all(&(1u64 << 20).to_le_bytes()).await;
            for l in &links {
                let _ = tokio::time::timeout(Duration::from_secs(5), l.conn.closed()).await;
            }
        });
        for h in handles {
            h.join().unwrap();
        }
    }

    #[test]
    fn end_of_stream_inside_a_frame_is_an_error() {
        // Drive read_frames directly over a loopback connection.
        let path = session("eof", "3pc", START_S, 10);
        let config = Config::load(&path).unwrap();
        let id0 = Identity::load(&config, 0).unwrap();
        let id1 = Identity::load(&config, 1).unwrap();
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let provider = Arc::new(rustls::crypto::ring::default_provider());
            let transport = Arc::new(transport_config(
                &QuicOptions::default(),
                Duration::from_secs(10),
            ));
            let pinned: HashMap<String, PartyId> = [(id0.fingerprint().to_string(), 0)].into();
            let server =
                server_config(&id1, 1, pinned.clone(), provider.clone(), transport.clone())
                    .unwrap();
            let listener = make_endpoint(
                "127.0.0.1:0".parse().unwrap(),
                Some(server),
                &QuicOptions::default(),
            )
            .unwrap();
            let addr = listener.local_addr().unwrap();
            let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
            tokio::spawn(accept_loop(listener.clone(), 1, pinned, tx));
            let dialer = make_endpoint(
                "127.0.0.1:0".parse().unwrap(),
                None,
                &QuicOptions::default(),
            )
            .unwrap();
            let cfg = client_config(
                &id0,
                1,
                id1.fingerprint().to_string(),
                addr.to_string(),
                provider,
                transport,
            )
            .unwrap();
            let deadline = Instant::now() + Duration::from_secs(5);
            let Ok(mut link) = dial_once(&dialer, cfg, 0, 1, addr, deadline).await else {
                panic!("dial failed")
            };
            let (_, mut server_link) = rx.recv().await.unwrap();
            link.send.write_all(&16u64.to_le_bytes()).await.unwrap();
            link.send.write_all(&[1u8; 8]).await.unwrap();
            link.send.finish().unwrap();
            let (out, inbox) = mpsc::channel();
            let e = read_frames(&mut server_link.recv, &out, 1 << 30)
                .await
                .unwrap_err();
            let ReadEnd::Frame(e) = e else {
                panic!("expected a frame error")
            };
            assert!(e.contains("8 of 16 payload bytes"), "{e}");
            assert!(inbox.try_recv().is_err());
        });
    }
}
