//! Calibration ops of the network itself: `bench rtt` and `bench throughput`.
//!
//! They bypass the secure-computation session (no dealer material, no shares): P0 and P1
//! talk over the raw [`Transport`], the other endpoint (dealer or P2) connects and leaves.
//! They validate a network profile (see `crate::harness::profile`): on an emulated link
//! `rtt` should read the profile's round-trip time and `throughput` its bandwidth.
//!
//! * `bench rtt --shape BYTES [--repeat K]`: after 3 warm-up round trips, P0 sends
//!   BYTES (rounded up to words, default shape 1000 is fine: "small") to P1, which echoes
//!   them; P0's `online_s` is the median of `max(K, 5)` timed round trips. One round;
//!   bytes are those of one round trip.
//! * `bench throughput --shape BYTES`: P0 first sends a warm-up transfer of
//!   `min(BYTES, 4 MiB)` that P1 acknowledges (so congestion control has opened its window
//!   and the link is idle again), then a one-word header immediately followed by BYTES.
//!   P1 times from the header's arrival to the bulk's arrival, so `online_s` is the
//!   transfer time without the propagation delay and `online_bytes / online_s` is the
//!   rate the link delivered (QUIC payload, i.e. goodput). P0 only queues the data; its
//!   `online_s` is 0. One round.

use crate::job::{BenchArgs, PartyReport};
use anyhow::{bail, Context, Result};
use std::sync::Arc;
use std::time::Instant;
use tessera::net::Transport;
use tessera::CommStats;

/// The calibration ops.
pub const NET_OPS: &[&str] = &["rtt", "throughput"];

/// Warm-up round trips of `rtt`.
const RTT_WARMUP: usize = 3;
/// Fewest timed round trips of `rtt`.
const RTT_MIN_SAMPLES: usize = 5;
/// Largest warm-up transfer of `throughput`.
const THROUGHPUT_WARMUP_BYTES: usize = 4 << 20;

/// Whether `op` is one of the calibration ops handled here.
pub fn handles(op: &str) -> bool {
    NET_OPS.contains(&op)
}

/// Checks the arguments of a calibration op.
pub fn validate(b: &BenchArgs) -> Result<()> {
    if !handles(&b.op) {
        bail!("{:?} is not a network op ({})", b.op, NET_OPS.join(", "));
    }
    if b.shape.0.is_empty() || b.shape.0.contains(&0) {
        bail!(
            "bench {}: --shape BYTES must be positive (got {:?})",
            b.op,
            b.shape.0
        );
    }
    Ok(())
}

fn words_of(b: &BenchArgs) -> usize {
    let bytes: usize = b.shape.0.iter().product();
    bytes.div_ceil(8).max(1)
}

/// Runs a calibration op as one party; the report carries `online_s` and the bytes of
/// the timed part.
pub fn run(net: Arc<dyn Transport>, b: &BenchArgs) -> Result<PartyReport> {
    validate(b)?;
    let id = net.id();
    if id > 1 {
        return Ok(PartyReport::default());
    }
    let words = words_of(b);
    match b.op.as_str() {
        "rtt" => rtt(&*net, id, words, b.repeat.max(RTT_MIN_SAMPLES)),
        "throughput" => throughput(&*net, id, words),
        o => bail!("unknown network op {o}"),
    }
}

/// One line for people from the launcher's JSON of a calibration op.
pub fn summary(j: &serde_json::Value) -> String {
    let online = j["online_s"].as_f64().unwrap_or(0.0);
    let bytes = j["online_bytes"].as_u64().unwrap_or(0);
    match j["op"].as_str() {
        Some("throughput") if online > 0.0 => format!(
            "throughput over profile {}: {bytes} bytes in {online:.4} s = {:.1} Mbit/s",
            j["profile"],
            bytes as f64 * 8.0 / online / 1e6
        ),
        _ => format!(
            "rtt over profile {}: {:.3} ms (median round trip)",
            j["profile"],
            online * 1e3
        ),
    }
}

fn report(online_s: f64, sent: usize, recv: usize) -> PartyReport {
    PartyReport {
        online_s,
        stats: CommStats {
            rounds: 1,
            online_sent: sent as u64 * 8,
            online_recv: recv as u64 * 8,
            ..Default::default()
        },
        ..Default::default()
    }
}

fn rtt(net: &dyn Transport, id: usize, words: usize, samples: usize) -> Result<PartyReport> {
    let total = RTT_WARMUP + samples;
    if id == 1 {
        for i in 0..total {
            let m = net
                .recv(0)
                .with_context(|| format!("rtt: waiting for ping {i} from P0"))?;
            net.send(0, m)?;
        }
        return Ok(report(0.0, words, words));
    }
    let mut times = Vec::with_capacity(samples);
    for i in 0..total {
        let t = Instant::now();
        net.send(1, vec![i as u64; words])?;
        let back = net
            .recv(1)
            .with_context(|| format!("rtt: waiting for echo {i} from P1"))?;
        let dt = t.elapsed().as_secs_f64();
        if back.len() != words {
            bail!("rtt: P1 echoed {} words, sent {words}", back.len());
        }
        if i >= RTT_WARMUP {
            times.push(dt);
        }
    }
    times.sort_by(f64::total_cmp);
    Ok(report(times[times.len() / 2], words, words))
}

fn throughput(net: &dyn Transport, id: usize, words: usize) -> Result<PartyReport> {
    let warm = words.min(THROUGHPUT_WARMUP_BYTES / 8);
    if id == 0 {
        net.send(1, vec![0; warm])?;
        net.recv(1)
            .context("throughput: waiting for P1 to acknowledge the warm-up")?;
        net.send(1, vec![words as u64])?;
        net.send(1, vec![1; words])?;
        return Ok(report(0.0, words + 1, 0));
    }
    let w = net.recv(0).context("throughput: warm-up from P0")?;
    if w.len() != warm {
        bail!("throughput: warm-up of {} words, expected {warm}", w.len());
    }
    net.send(0, vec![0])?;
    let header = net.recv(0).context("throughput: header from P0")?;
    let t = Instant::now();
    let bulk = net.recv(0).context("throughput: bulk transfer from P0")?;
    let online_s = t.elapsed().as_secs_f64();
    if header.first().copied() != Some(words as u64) || bulk.len() != words {
        bail!(
            "throughput: got {} words after a header of {:?}, expected {words}",
            bulk.len(),
            header
        );
    }
    Ok(report(online_s, 0, words + 1))
}
