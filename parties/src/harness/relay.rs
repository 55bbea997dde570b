//! A user-space UDP relay that gives every QUIC connection a latency and a bottleneck.
//!
//! There is no `tc netem` on the machines we run on, so the launcher puts a relay in front
//! of every listening party: the other parties dial the relay's port, and the relay
//! forwards each datagram to the party's real port and the answers back. Every client
//! (dialing party) gets its own upstream socket and its own pair of [`Pipe`]s (one per
//! direction), so each pair of parties has an independent link, as on a switched network.
//!
//! A pipe models one direction of a link as a serialising bottleneck followed by a
//! propagation delay, in virtual time: a datagram of `s` bytes arriving at `a` starts
//! transmission at `max(a, link_free)`, occupies the link for `s / bandwidth`, and is
//! delivered `one_way` after its transmission ends. If the bytes already waiting for the
//! link exceed the queue limit (about 2x the bandwidth-delay product) the datagram is
//! dropped (drop-tail), so QUIC's congestion control sees a real bottleneck with loss.
//! Delivery times are non-decreasing, so one thread per pipe sleeps until the head is due
//! and sends it. Bandwidth counts UDP payload bytes (QUIC packets), not IP/UDP headers.

use super::profile::Profile;
use std::collections::{HashMap, VecDeque};
use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How often blocked threads look at the stop flag.
const POLL: Duration = Duration::from_millis(50);
/// Most a sender thread wakes up before a datagram is due (to make up for its lateness).
const MAX_EARLY: Duration = Duration::from_micros(500);
/// Largest UDP datagram.
const MAX_DATAGRAM: usize = 65536;
/// Socket buffer sizes the relay asks for (the OS caps them at net.core.rmem_max /
/// wmem_max). With the default ~200 KB, a relay thread that is descheduled for a few
/// milliseconds on a busy 2-core machine overflowed its receive buffer: ~10^4 datagrams
/// per BERT layer were dropped by the kernel under `lan`, each one a QUIC loss with its
/// retransmission and congestion-window cut (losses no real 5 Gbit/s LAN has).
const SOCKET_BUFFER: usize = 8 << 20;

/// A UDP socket bound to `addr` with [`SOCKET_BUFFER`]-sized buffers (best effort).
fn bind_udp(addr: SocketAddr) -> io::Result<UdpSocket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let s = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    let _ = s.set_recv_buffer_size(SOCKET_BUFFER);
    let _ = s.set_send_buffer_size(SOCKET_BUFFER);
    s.bind(&addr.into())?;
    Ok(s.into())
}

/// The link model of one direction: delay, bandwidth, queue.
#[derive(Clone, Copy, Debug)]
pub struct LinkModel {
    /// Propagation delay of this direction.
    pub one_way: Duration,
    /// Bytes per second, `None` for unlimited.
    pub bytes_per_s: Option<f64>,
    /// Drop-tail limit on the bytes waiting for the link.
    pub queue_bytes: usize,
}

impl LinkModel {
    /// The model of each direction of a link under `profile`.
    pub fn of(profile: &Profile) -> LinkModel {
        LinkModel {
            one_way: profile.one_way(),
            bytes_per_s: profile.bytes_per_s(),
            queue_bytes: profile.queue_bytes(),
        }
    }
}

/// Counters of a relay, all links together.
#[derive(Default, Debug)]
pub struct RelayStats {
    /// Datagrams forwarded.
    pub forwarded: AtomicU64,
    /// Datagrams dropped at a full queue.
    pub dropped: AtomicU64,
}

struct PipeState {
    queue: VecDeque<(Instant, Vec<u8>)>,
    link_free: Instant,
}

/// One direction of one link: a queue drained by its own sender thread.
struct Pipe {
    model: LinkModel,
    state: Mutex<PipeState>,
    ready: Condvar,
    stats: Arc<RelayStats>,
}

impl Pipe {
    fn new(model: LinkModel, stats: Arc<RelayStats>) -> Arc<Pipe> {
        Arc::new(Pipe {
            model,
            state: Mutex::new(PipeState {
                queue: VecDeque::new(),
                link_free: Instant::now(),
            }),
            ready: Condvar::new(),
            stats,
        })
    }

    /// Admits a datagram that arrived now (or drops it at a full queue).
    fn push(&self, data: Vec<u8>) {
        let now = Instant::now();
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let start = st.link_free.max(now);
        let deliver = match self.model.bytes_per_s {
            Some(bps) => {
                let waiting = (start - now).as_secs_f64() * bps;
                if waiting > self.model.queue_bytes as f64 {
                    self.stats.dropped.fetch_add(1, Ordering::Relaxed);
                    return;
                }
                st.link_free = start + Duration::from_secs_f64(data.len() as f64 / bps);
                st.link_free + self.model.one_way
            }
            None => now + self.model.one_way,
        };
        let was_empty = st.queue.is_empty();
        st.queue.push_back((deliver, data));
        drop(st);
        // A sender waiting for a later head needs no wake-up: the new tail is due later.
        if was_empty {
            self.ready.notify_one();
        }
    }

    /// Sender thread body: sends each datagram when it is due.
    ///
    /// A timed wait wakes up late by the timer slack and scheduling (tens of
    /// microseconds, which would add ~15% to a 1 ms round trip), so the thread keeps a
    /// running estimate of its own lateness and wakes up that much early.
    fn drain(&self, stop: &AtomicBool, mut send: impl FnMut(&[u8])) {
        let mut due: Vec<Vec<u8>> = Vec::new();
        let mut early = Duration::from_micros(50);
        while !stop.load(Ordering::Relaxed) {
            {
                let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
                let now = Instant::now();
                let Some((at, _)) = st.queue.front() else {
                    let _ = self.ready.wait_timeout(st, POLL);
                    continue;
                };
                let wake = at.checked_sub(early).unwrap_or(*at);
                if wake > now {
                    let wait = wake - now;
                    let (_guard, r) = self
                        .ready
                        .wait_timeout(st, wait.min(POLL))
                        .unwrap_or_else(|e| e.into_inner());
                    if r.timed_out() && wait <= POLL {
                        let late = Instant::now().saturating_duration_since(wake);
                        early = ((early * 7 + late) / 8).min(MAX_EARLY);
                    }
                    continue;
                }
                while let Some((at, _)) = st.queue.front() {
                    if at.checked_sub(early).unwrap_or(*at) > now {
                        break;
                    }
                    if let Some((_, d)) = st.queue.pop_front() {
                        due.push(d);
                    }
                }
            }
            for d in due.drain(..) {
                self.stats.forwarded.fetch_add(1, Ordering::Relaxed);
                send(&d);
            }
        }
    }
}

/// A relay in front of one listening party: peers dial [`Relay::addr`] instead of the
/// party's own address. Stops (and joins its threads) when dropped.
pub struct Relay {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    threads: Arc<Mutex<Vec<JoinHandle<()>>>>,
    /// Counters of all links through this relay.
    pub stats: Arc<RelayStats>,
}

impl Relay {
    /// Starts a relay for the party listening at `target`, on an ephemeral port of the
    /// same IP, with `model` in each direction.
    pub fn start(target: SocketAddr, model: LinkModel) -> io::Result<Relay> {
        let mut bind = target;
        bind.set_port(0);
        let front = bind_udp(bind)?;
        front.set_read_timeout(Some(POLL))?;
        let addr = front.local_addr()?;
        let stop = Arc::new(AtomicBool::new(false));
        let stats = Arc::new(RelayStats::default());
        let threads = Arc::new(Mutex::new(Vec::new()));
        let ctx = FrontCtx {
            front,
            target,
            model,
            stop: stop.clone(),
            stats: stats.clone(),
            threads: threads.clone(),
        };
        let h = std::thread::Builder::new()
            .name(format!("relay-{}", target.port()))
            .spawn(move || ctx.run())?;
        threads.lock().unwrap_or_else(|e| e.into_inner()).push(h);
        Ok(Relay {
            addr,
            stop,
            threads,
            stats,
        })
    }

    /// The address peers should dial.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // The front thread may still add threads while stopping: take until none are left.
        loop {
            let batch: Vec<_> =
                std::mem::take(&mut *self.threads.lock().unwrap_or_else(|e| e.into_inner()));
            if batch.is_empty() {
                break;
            }
            for h in batch {
                let _ = h.join();
            }
        }
    }
}

struct FrontCtx {
    front: UdpSocket,
    target: SocketAddr,
    model: LinkModel,
    stop: Arc<AtomicBool>,
    stats: Arc<RelayStats>,
    threads: Arc<Mutex<Vec<JoinHandle<()>>>>,
}

impl FrontCtx {
    fn spawn(&self, name: String, f: impl FnOnce() + Send + 'static) -> io::Result<()> {
        let h = std::thread::Builder::new().name(name).spawn(f)?;
        self.threads
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(h);
        Ok(())
    }

    /// A new client: an upstream socket, a pipe each way, their threads.
    fn add_client(&self, client: SocketAddr) -> io::Result<Arc<Pipe>> {
        let mut bind = self.target;
        bind.set_port(0);
        let upstream = bind_udp(bind)?;
        upstream.connect(self.target)?;
        upstream.set_read_timeout(Some(POLL))?;
        let up = Pipe::new(self.model, self.stats.clone());
        let down = Pipe::new(self.model, self.stats.clone());
        let port = self.target.port();
        {
            let (pipe, sock, stop) = (up.clone(), upstream.try_clone()?, self.stop.clone());
            self.spawn(format!("relay-{port}-up"), move || {
                pipe.drain(&stop, |d| {
                    let _ = sock.send(d);
                })
            })?;
        }
        {
            let (pipe, sock, stop) = (down.clone(), self.front.try_clone()?, self.stop.clone());
            self.spawn(format!("relay-{port}-down"), move || {
                pipe.drain(&stop, |d| {
                    let _ = sock.send_to(d, client);
                })
            })?;
        }
        {
            let stop = self.stop.clone();
            self.spawn(format!("relay-{port}-rx"), move || {
                let mut buf = vec![0u8; MAX_DATAGRAM];
                while !stop.load(Ordering::Relaxed) {
                    match upstream.recv(&mut buf) {
                        Ok(n) => down.push(buf[..n].to_vec()),
                        Err(e) if is_timeout(&e) => {}
                        // ICMP port unreachable before the party binds, or after it exits.
                        Err(_) => std::thread::sleep(Duration::from_millis(1)),
                    }
                }
            })?;
        }
        Ok(up)
    }

    fn run(self) {
        let mut clients: HashMap<SocketAddr, Arc<Pipe>> = HashMap::new();
        let mut buf = vec![0u8; MAX_DATAGRAM];
        while !self.stop.load(Ordering::Relaxed) {
            let (n, from) = match self.front.recv_from(&mut buf) {
                Ok(x) => x,
                Err(e) if is_timeout(&e) => continue,
                Err(_) => {
                    std::thread::sleep(Duration::from_millis(1));
                    continue;
                }
            };
            let pipe = match clients.get(&from) {
                Some(p) => p.clone(),
                None => match self.add_client(from) {
                    Ok(p) => {
                        clients.insert(from, p.clone());
                        p
                    }
                    Err(e) => {
                        eprintln!("[relay] cannot relay {from} -> {}: {e}", self.target);
                        continue;
                    }
                },
            };
            pipe.push(buf[..n].to_vec());
        }
    }
}

fn is_timeout(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut | io::ErrorKind::Interrupted
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relays_both_ways_and_counts() {
        let server = UdpSocket::bind("127.0.0.1:0").unwrap();
        server
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let model = LinkModel {
            one_way: Duration::ZERO,
            bytes_per_s: None,
            queue_bytes: usize::MAX,
        };
        let relay = Relay::start(server.local_addr().unwrap(), model).unwrap();
        let client = UdpSocket::bind("127.0.0.1:0").unwrap();
        client
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        client.send_to(b"ping", relay.addr()).unwrap();
        let mut buf = [0u8; 16];
        let (n, from) = server.recv_from(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"ping");
        server.send_to(b"pong", from).unwrap();
        let (n, back) = client.recv_from(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"pong");
        assert_eq!(back, relay.addr());
        assert_eq!(relay.stats.forwarded.load(Ordering::Relaxed), 2);
    }

    #[test]
    fn full_queue_drops_tail() {
        let model = LinkModel {
            one_way: Duration::ZERO,
            bytes_per_s: Some(1000.0),
            queue_bytes: 2500,
        };
        let stats = Arc::new(RelayStats::default());
        let pipe = Pipe::new(model, stats.clone());
        for _ in 0..5 {
            pipe.push(vec![0u8; 1000]);
        }
        // 1 s per datagram: the first starts at once, two more wait, the rest are dropped.
        assert_eq!(stats.dropped.load(Ordering::Relaxed), 2);
        assert_eq!(pipe.state.lock().unwrap().queue.len(), 3);
    }
}
