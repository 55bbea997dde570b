//! Running a session's parties in one process, over the in-memory transport.
//!
//! [`run_parties`] is what makes a protocol test ten lines long: it builds the network,
//! runs the session setup on one thread per endpoint, runs the closure on every compute
//! party, and (in 2PC) a live dealer on the third thread. The result of each compute
//! party comes back in id order, with its communication counters.

use crate::error::{Error, Result};
use crate::net::memory::MemoryTransport;
use crate::net::Transport;
use crate::party::{CommStats, MaterialMode, Party, SessionOptions, Setting, DEALER};
use std::sync::Arc;
use std::time::Duration;

/// What one compute party returned, with its counters for the closure's run only.
#[derive(Debug)]
pub struct PartyOutput<T> {
    /// The closure's value.
    pub value: T,
    /// Rounds and bytes of the closure (session setup and planned offline phase excluded).
    pub stats: CommStats,
}

/// Runs `f` on every compute party of an in-memory session and returns their outputs in
/// id order. In 2PC the dealer runs on its own thread (live, or planned if `opts` says
/// so). An error of any party is returned (the first by id); a party that fails makes its
/// peers fail with a PeerGone/Timeout error instead of hanging.
pub fn run_parties<T, F>(
    setting: Setting,
    opts: SessionOptions,
    f: F,
) -> Result<Vec<PartyOutput<T>>>
where
    T: Send,
    F: Fn(&mut Party) -> Result<T> + Sync,
{
    run_inner(setting, opts, f, false)
}

/// As [`run_parties`], but the 2PC dealer runs `f` too after setup (for protocols where
/// the dealer takes part online, such as `tessera_protocols::lookup`); its output is
/// last. Planned or file material only: a live dealer must serve requests instead.
pub fn run_all_parties<T, F>(
    setting: Setting,
    opts: SessionOptions,
    f: F,
) -> Result<Vec<PartyOutput<T>>>
where
    T: Send,
    F: Fn(&mut Party) -> Result<T> + Sync,
{
    run_inner(setting, opts, f, true)
}

fn run_inner<T, F>(
    setting: Setting,
    opts: SessionOptions,
    f: F,
    dealer_runs: bool,
) -> Result<Vec<PartyOutput<T>>>
where
    T: Send,
    F: Fn(&mut Party) -> Result<T> + Sync,
{
    let nets = MemoryTransport::network(setting.num_endpoints(), Duration::from_secs(60));
    let f = &f;
    let opts = &opts;
    let results: Vec<Result<Option<PartyOutput<T>>>> = std::thread::scope(|s| {
        let handles: Vec<_> = nets
            .into_iter()
            .map(|t| {
                s.spawn(move || -> Result<Option<PartyOutput<T>>> {
                    let id = t.id();
                    let net: Arc<dyn Transport> = Arc::new(t);
                    let mut p = Party::setup(setting, net, opts.clone())?;
                    if setting == Setting::TwoPc && id == DEALER && !dealer_runs {
                        if matches!(opts.material, MaterialMode::Live) {
                            p.serve_dealer()?;
                        }
                        return Ok(None);
                    }
                    let before = p.stats();
                    let value = f(&mut p)?;
                    let stats = p.stats().since(&before);
                    p.finish()?;
                    Ok(Some(PartyOutput { value, stats }))
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(Error::Unsupported("a party thread panicked".into())))
            })
            .collect()
    });
    let mut out = Vec::new();
    for r in results {
        if let Some(v) = r? {
            out.push(v);
        }
    }
    Ok(out)
}

/// [`run_parties`] with default options (live material, faithful truncation, f = 16).
pub fn run<T, F>(setting: Setting, f: F) -> Result<Vec<PartyOutput<T>>>
where
    T: Send,
    F: Fn(&mut Party) -> Result<T> + Sync,
{
    run_parties(setting, SessionOptions::default(), f)
}
