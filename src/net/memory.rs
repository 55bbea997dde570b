//! In-memory transport: one thread per party, one channel per ordered pair.
//!
//! Used by unit tests, property tests and criterion benches. It behaves like the QUIC
//! transport at the trait level (non-blocking send, blocking receive with a deadline,
//! per-peer counters), so protocol round and byte counts measured here are the ones seen
//! on the network.

use super::{Transport, TransportStats};
use crate::error::{Error, PartyId, Result};
use std::sync::mpsc::{channel, Receiver, RecvTimeoutError, Sender};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// A message and the instant it may be delivered (its send time plus the link latency).
type Timed = (Instant, Vec<u64>);
type Inbox = Mutex<Receiver<Timed>>;

/// One party's end of an in-memory network.
pub struct MemoryTransport {
    id: PartyId,
    n: usize,
    // senders[j]: to party j; receivers[j]: from party j (None at our own index).
    senders: Vec<Option<Sender<Timed>>>,
    receivers: Vec<Option<Inbox>>,
    stats: Mutex<TransportStats>,
    timeout: Duration,
    latency: Duration,
}

impl MemoryTransport {
    /// A fully connected network of `n` endpoints; element `i` belongs to party `i`.
    pub fn network(n: usize, timeout: Duration) -> Vec<MemoryTransport> {
        let mut senders: Vec<Vec<Option<Sender<Timed>>>> =
            (0..n).map(|_| (0..n).map(|_| None).collect()).collect();
        let mut receivers: Vec<Vec<Option<Inbox>>> =
            (0..n).map(|_| (0..n).map(|_| None).collect()).collect();
        for i in 0..n {
            for j in 0..n {
                if i != j {
                    let (tx, rx) = channel();
                    senders[i][j] = Some(tx);
                    receivers[j][i] = Some(Mutex::new(rx));
                }
            }
        }
        senders
            .into_iter()
            .zip(receivers)
            .enumerate()
            .map(|(id, (s, r))| MemoryTransport {
                id,
                n,
                senders: s,
                receivers: r,
                stats: Mutex::new(TransportStats::new(n)),
                timeout,
                latency: Duration::ZERO,
            })
            .collect()
    }

    /// This endpoint with a one-way `latency` on every message it receives (a message
    /// is delivered no earlier than `latency` after it was sent), to test what depends
    /// on link delay (barriers, round counting under latency) without a network.
    pub fn with_latency(mut self, latency: Duration) -> MemoryTransport {
        self.latency = latency;
        self
    }

    fn check(&self, peer: PartyId) -> Result<()> {
        if peer >= self.n || peer == self.id {
            return Err(Error::PartyId {
                id: peer,
                n: self.n,
            });
        }
        Ok(())
    }
}

impl Transport for MemoryTransport {
    fn id(&self) -> PartyId {
        self.id
    }
    fn num_parties(&self) -> usize {
        self.n
    }
    fn send(&self, to: PartyId, msg: Vec<u64>) -> Result<()> {
        self.check(to)?;
        let bytes = (msg.len() * 8) as u64;
        let tx = self.senders[to]
            .as_ref()
            .ok_or(Error::PartyId { id: to, n: self.n })?;
        tx.send((Instant::now(), msg))
            .map_err(|_| Error::PeerGone {
                peer: to,
                detail: "in-memory peer thread has exited".into(),
            })?;
        let mut s = self.stats.lock().unwrap_or_else(|e| e.into_inner());
        s.bytes_sent[to] += bytes;
        s.msgs_sent[to] += 1;
        Ok(())
    }
    fn recv(&self, from: PartyId) -> Result<Vec<u64>> {
        self.check(from)?;
        let rx = self.receivers[from].as_ref().ok_or(Error::PartyId {
            id: from,
            n: self.n,
        })?;
        let rx = rx.lock().unwrap_or_else(|e| e.into_inner());
        let (sent, msg) = rx.recv_timeout(self.timeout).map_err(|e| match e {
            RecvTimeoutError::Timeout => Error::Timeout {
                peer: from,
                secs: self.timeout.as_secs_f64(),
                during: "waiting for a message".into(),
            },
            RecvTimeoutError::Disconnected => Error::PeerGone {
                peer: from,
                detail: "in-memory peer thread has exited".into(),
            },
        })?;
        drop(rx);
        let due = sent + self.latency;
        let now = Instant::now();
        if due > now {
            std::thread::sleep(due - now);
        }
        let mut s = self.stats.lock().unwrap_or_else(|e| e.into_inner());
        s.bytes_recv[from] += (msg.len() * 8) as u64;
        s.msgs_recv[from] += 1;
        Ok(msg)
    }
    fn stats(&self) -> TransportStats {
        self.stats.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
    fn io_timeout(&self) -> Duration {
        self.timeout
    }
    fn one_way_delay(&self, _peer: PartyId) -> Duration {
        self.latency
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_flow_and_are_counted() {
        let mut net = MemoryTransport::network(2, Duration::from_secs(5));
        let t1 = net.pop().unwrap();
        let t0 = net.pop().unwrap();
        t0.send(1, vec![1, 2, 3]).unwrap();
        assert_eq!(t1.recv(0).unwrap(), vec![1, 2, 3]);
        assert_eq!(t0.stats().bytes_sent[1], 24);
        assert_eq!(t1.stats().bytes_recv[0], 24);
        assert!(matches!(t0.send(0, vec![]), Err(Error::PartyId { .. })));
        assert!(matches!(
            t0.send(7, vec![]),
            Err(Error::PartyId { id: 7, .. })
        ));
    }

    #[test]
    fn silent_peer_times_out_and_dead_peer_is_named() {
        let mut net = MemoryTransport::network(2, Duration::from_millis(50));
        let t1 = net.pop().unwrap();
        let t0 = net.pop().unwrap();
        let e = t0.recv(1).unwrap_err().to_string();
        assert!(e.contains("party 1 timed out"), "{e}");
        drop(t1);
        let e = t0.recv(1).unwrap_err().to_string();
        assert!(e.contains("party 1"), "{e}");
    }
}
