//! Transport measurement (a `harness = false` bench, not a test): QUIC vs raw TCP on
//! loopback, in one run.
//!
//! * Throughput: one message of `TESSERA_BENCH_MB` MiB (default 256) from P0 to P1; the
//!   clock runs from `send` until P0 has the receiver's 8-byte acknowledgement, so the
//!   number includes the receiver allocating and filling its buffer. Best and median of
//!   `TESSERA_BENCH_REPS` (default 3) repetitions.
//! * Latency: round trip of an 8-byte (one-word) ping-pong, median and p99 over 2000
//!   exchanges after a warm-up.
//!
//! The QUIC side is a real 2PC session (P0, P1 and an idle dealer, keys from
//! `identity::keygen` in a temp directory); the TCP side is `std::net` with `TCP_NODELAY`,
//! length-prefixed frames and a fresh receive buffer per message, i.e. the same work
//! without encryption and congestion control in user space.
//!
//! QUIC uses the default [`QuicOptions`] (1472-byte UDP payloads, as on a real network).
//!
//! Run with `cargo bench --bench transport`.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::sync::mpsc;
use std::thread;
use std::time::Instant;
use tessera::config::Config;
use tessera::identity::{self, Identity};
use tessera::net::quic::{QuicOptions, QuicTransport};
use tessera::net::Transport;

const PINGS: usize = 2000;
const WARMUP: usize = 200;

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn free_udp_port() -> u16 {
    std::net::UdpSocket::bind("127.0.0.1:0")
        .and_then(|s| s.local_addr())
        .map(|a| a.port())
        .expect("no free UDP port")
}

/// A keyed 2PC session in a fresh temp directory; returns the config path.
fn session() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("tessera-bench-transport-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("temp dir");
    let path = dir.join("tessera.toml");
    let mut text = String::from(
        "setting = \"2pc\"\nfrac_bits = 16\nstart_timeout_s = 30\nio_timeout_s = 120\n\
         key_dir = \"keys\"\npreprocessing_dir = \"pre\"\n",
    );
    let ports = [free_udp_port(), free_udp_port(), free_udp_port()];
    for (id, port) in ports.iter().enumerate() {
        text.push_str(&format!(
            "[[party]]\nid = {id}\naddr = \"127.0.0.1:{port}\"\n"
        ));
    }
    std::fs::write(&path, text).expect("write config");
    identity::keygen(&path).expect("keygen");
    path
}

fn stats(mut xs: Vec<f64>) -> (f64, f64, f64) {
    xs.sort_by(|a, b| a.total_cmp(b));
    let pick = |q: f64| xs[((xs.len() - 1) as f64 * q).round() as usize];
    (pick(0.0), pick(0.5), pick(0.99))
}

/// Throughput times (s) and ping round trips (s) over QUIC.
fn quic(words: usize, reps: usize, options: QuicOptions) -> (Vec<f64>, Vec<f64>) {
    let path = session();
    let (res_tx, res_rx) = mpsc::channel();
    let handles: Vec<_> = (0..3)
        .map(|id| {
            let path = path.clone();
            let res_tx = res_tx.clone();
            let options = options.clone();
            thread::spawn(move || {
                let config = Config::load(&path).expect("config");
                let ident = Identity::load(&config, id).expect("identity");
                let t = QuicTransport::connect_with(&config, id, ident, options).expect("connect");
                match id {
                    0 => {
                        let payload: Vec<u64> = (0..words as u64).collect();
                        t.send(1, vec![0]).unwrap();
                        t.recv(1).unwrap();
                        let mut times = Vec::new();
                        for _ in 0..reps {
                            let msg = payload.clone();
                            let start = Instant::now();
                            t.send(1, msg).unwrap();
                            let ack = t.recv(1).unwrap();
                            times.push(start.elapsed().as_secs_f64());
                            assert_eq!(ack, vec![words as u64]);
                        }
                        let mut rtts = Vec::new();
                        for i in 0..WARMUP + PINGS {
                            let start = Instant::now();
                            t.send(1, vec![i as u64]).unwrap();
                            let pong = t.recv(1).unwrap();
                            if i >= WARMUP {
                                rtts.push(start.elapsed().as_secs_f64());
                            }
                            assert_eq!(pong[0], i as u64);
                        }
                        t.send(2, vec![]).unwrap(); // release the dealer
                        res_tx.send((times, rtts)).unwrap();
                    }
                    1 => {
                        t.recv(0).unwrap();
                        t.send(0, vec![0]).unwrap();
                        for _ in 0..reps {
                            let big = t.recv(0).unwrap();
                            t.send(0, vec![big.len() as u64]).unwrap();
                        }
                        for _ in 0..WARMUP + PINGS {
                            let ping = t.recv(0).unwrap();
                            t.send(0, ping).unwrap();
                        }
                    }
                    _ => {
                        t.recv(0).unwrap();
                    }
                }
            })
        })
        .collect();
    for h in handles {
        h.join().expect("party thread");
    }
    let _ = std::fs::remove_dir_all(path.parent().unwrap());
    res_rx.recv().unwrap()
}

fn write_frame(s: &mut TcpStream, bytes: &[u8]) {
    s.write_all(&(bytes.len() as u64).to_le_bytes()).unwrap();
    s.write_all(bytes).unwrap();
}

fn read_frame(s: &mut TcpStream) -> Vec<u8> {
    let mut h = [0u8; 8];
    s.read_exact(&mut h).unwrap();
    let mut buf = vec![0u8; u64::from_le_bytes(h) as usize];
    s.read_exact(&mut buf).unwrap();
    buf
}

/// The same over std TCP.
fn tcp(words: usize, reps: usize) -> (Vec<f64>, Vec<f64>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let server = thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        s.set_nodelay(true).unwrap();
        for _ in 0..reps {
            let big = read_frame(&mut s);
            write_frame(&mut s, &(big.len() as u64).to_le_bytes());
        }
        for _ in 0..WARMUP + PINGS {
            let ping = read_frame(&mut s);
            write_frame(&mut s, &ping);
        }
    });
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_nodelay(true).unwrap();
    let payload: Vec<u8> = (0..words as u64).flat_map(|w| w.to_le_bytes()).collect();
    let mut times = Vec::new();
    for _ in 0..reps {
        let start = Instant::now();
        write_frame(&mut s, &payload);
        let ack = read_frame(&mut s);
        times.push(start.elapsed().as_secs_f64());
        assert_eq!(ack, (payload.len() as u64).to_le_bytes());
    }
    let mut rtts = Vec::new();
    for i in 0..WARMUP + PINGS {
        let start = Instant::now();
        write_frame(&mut s, &(i as u64).to_le_bytes());
        let pong = read_frame(&mut s);
        if i >= WARMUP {
            rtts.push(start.elapsed().as_secs_f64());
        }
        assert_eq!(pong, (i as u64).to_le_bytes());
    }
    server.join().unwrap();
    (times, rtts)
}

fn report(name: &str, mib: usize, times: Vec<f64>, rtts: Vec<f64>) {
    let (best, median, _) = stats(times);
    let (_, rtt_med, rtt_p99) = stats(rtts);
    println!(
        "{name}: {mib} MiB in {median:.3}s median ({:.0} MiB/s; best {best:.3}s = {:.0} MiB/s) | \
         8-byte RTT median {:.1} us, p99 {:.1} us",
        mib as f64 / median,
        mib as f64 / best,
        rtt_med * 1e6,
        rtt_p99 * 1e6
    );
}

fn main() {
    let mib = env_usize("TESSERA_BENCH_MB", 256);
    let reps = env_usize("TESSERA_BENCH_REPS", 3).max(1);
    let words = mib * (1 << 20) / 8;
    println!(
        "transport: one {mib} MiB message P0 -> P1 (x{reps}), then {PINGS} 8-byte ping-pongs; loopback, {} CPUs",
        thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
    );
    let start = Instant::now();
    let (qt, qr) = quic(words, reps, QuicOptions::default());
    report("QUIC", mib, qt, qr);
    let (tt, tr) = tcp(words, reps);
    report("TCP", mib, tt, tr);
    println!("(total {:.1?})", start.elapsed());
}
