//! Moving words between parties.
//!
//! The [`Transport`] trait is the only thing protocols see of the network. It is
//! deliberately synchronous and message-oriented: `send` queues a message and returns at
//! once (the implementation owns the buffer and writes it in the background), `recv`
//! blocks until the next message from that peer arrives or the I/O deadline passes.
//! Because sends never wait for the peer to read, two parties that both send 100 MB and
//! then receive can never deadlock, whatever the flow-control windows are.
//!
//! Messages are `Vec<u64>`: every protocol message in Tessera is a vector of ring
//! elements (FSS keys are serialised to words too), the wire carries their little-endian
//! bytes through a bytemuck view with no per-element encoding, and the receiver gets an
//! aligned buffer back without a copy into a second vector.

pub mod memory;
pub mod quic;

use crate::error::{PartyId, Result};
use std::time::Duration;

/// Byte and message counters of one transport endpoint, per peer.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct TransportStats {
    /// Bytes sent to each peer (index = peer id), payload only.
    pub bytes_sent: Vec<u64>,
    /// Bytes received from each peer.
    pub bytes_recv: Vec<u64>,
    /// Messages sent to each peer.
    pub msgs_sent: Vec<u64>,
    /// Messages received from each peer.
    pub msgs_recv: Vec<u64>,
}

impl TransportStats {
    /// Zeroed counters for `n` endpoints.
    pub fn new(n: usize) -> Self {
        TransportStats {
            bytes_sent: vec![0; n],
            bytes_recv: vec![0; n],
            msgs_sent: vec![0; n],
            msgs_recv: vec![0; n],
        }
    }
    /// Total bytes sent to all peers.
    pub fn total_sent(&self) -> u64 {
        self.bytes_sent.iter().sum()
    }
    /// Total bytes received from all peers.
    pub fn total_recv(&self) -> u64 {
        self.bytes_recv.iter().sum()
    }
    /// Counter-wise difference `self - earlier` (for per-op statistics).
    pub fn since(&self, earlier: &TransportStats) -> TransportStats {
        let d = |a: &[u64], b: &[u64]| -> Vec<u64> {
            a.iter()
                .enumerate()
                .map(|(i, x)| x - b.get(i).copied().unwrap_or(0))
                .collect()
        };
        TransportStats {
            bytes_sent: d(&self.bytes_sent, &earlier.bytes_sent),
            bytes_recv: d(&self.bytes_recv, &earlier.bytes_recv),
            msgs_sent: d(&self.msgs_sent, &earlier.msgs_sent),
            msgs_recv: d(&self.msgs_recv, &earlier.msgs_recv),
        }
    }
}

/// A party's connection to all its peers.
///
/// Implementations: [`memory::MemoryTransport`] (threads and channels, for tests and
/// benches) and `quic::QuicTransport` (one QUIC connection per peer pair).
pub trait Transport: Send + Sync {
    /// This endpoint's party id.
    fn id(&self) -> PartyId;
    /// Number of endpoints in the session (parties plus the dealer in 2PC).
    fn num_parties(&self) -> usize;
    /// Queue `msg` for `to`. Returns once the transport owns the message; never waits for
    /// the peer to read it. Errors if `to` is out of range or the connection is gone.
    fn send(&self, to: PartyId, msg: Vec<u64>) -> Result<()>;
    /// The next message from `from` (messages from one peer arrive in order). Errors with
    /// [`crate::Error::Timeout`] after the I/O deadline, [`crate::Error::PeerGone`] if the
    /// peer went away, [`crate::Error::Frame`] on a malformed frame.
    fn recv(&self, from: PartyId) -> Result<Vec<u64>>;
    /// Counters since the transport was created.
    fn stats(&self) -> TransportStats;
    /// The I/O deadline of one `recv`.
    fn io_timeout(&self) -> Duration;
    /// Tells every peer that this party is giving up because party `origin` failed (this
    /// party's own id for a local failure), with the reason, so their errors name the
    /// party that really failed ([`crate::Error::Aborted`]) rather than just this one.
    /// Best effort and immediate; the default does nothing.
    fn abort(&self, _origin: PartyId, _reason: &str) {}
    /// Estimated one-way delay to `peer`: half the smallest round-trip time seen on the
    /// link (an idle link's handshake gives it). Barriers use it to release every party
    /// at the same moment (see `Party::sync`). Zero where the transport has no latency.
    fn one_way_delay(&self, _peer: PartyId) -> Duration {
        Duration::ZERO
    }
}
