//! Process control of a party: it stops *at once and says why* when told to.
//!
//! * **Signals.** SIGTERM and SIGINT make the party abort its session (every peer learns
//!   at once, with this party named as the origin, instead of waiting `liveness_s` to
//!   notice a silent peer) and exit with 128 + the signal number.
//! * **The launcher's word.** Under `tessera launch` (`party --launched`) the party's
//!   stdin is a control channel: a line `abort ORIGIN TEXT` makes it abort the session
//!   naming party `ORIGIN` (the party the launcher saw fail first) and exit with
//!   [`EXIT_ABORTED`]; the end of stdin means the launcher itself is gone, and the party
//!   stops too, so no process outlives its launcher. A launched party also prints one
//!   machine-readable failure line ([`FAILURE_PREFIX`]) saying whom it blames, so the
//!   launcher can name the origin of a cascade.
//!
//! The abort goes through the session's transport (registered with [`register`] once it
//! is connected; only a weak reference is kept, so the normal shutdown is unaffected).

use crate::job::{FailureLine, FAILURE_PREFIX};
use std::io::BufRead;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;
use tessera::net::Transport;

/// Exit code of a party stopped by the launcher's `abort` (or by the launcher's end).
pub const EXIT_ABORTED: i32 = 3;

/// How long a stopping party lets its abort reach the peers before it exits.
const ABORT_LINGER: Duration = Duration::from_millis(150);

static TRANSPORT: Mutex<Option<Weak<dyn Transport>>> = Mutex::new(None);
static LAUNCHED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Makes `net` the transport an abort goes through (until [`unregister`]).
pub fn register(net: &Arc<dyn Transport>) {
    *TRANSPORT.lock().unwrap_or_else(|e| e.into_inner()) = Some(Arc::downgrade(net));
}

/// Forgets the registered transport (the session is over).
pub fn unregister() {
    *TRANSPORT.lock().unwrap_or_else(|e| e.into_inner()) = None;
}

/// Whether this party runs under `tessera launch` (prints a failure line on error).
pub fn launched() -> bool {
    LAUNCHED.load(std::sync::atomic::Ordering::Relaxed)
}

/// Prints the machine-readable failure line for the launcher (only when launched).
pub fn report_failure(id: usize, origin: usize, error: &str) {
    if launched() {
        let line = FailureLine {
            id,
            origin,
            error: error.to_string(),
        };
        if let Ok(j) = serde_json::to_string(&line) {
            eprintln!("{FAILURE_PREFIX}{j}");
        }
    }
}

/// Aborts the session (if connected) naming `origin`, reports, and exits with `code`.
fn stop(id: usize, origin: usize, reason: &str, code: i32) -> ! {
    let net = TRANSPORT
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .as_ref()
        .and_then(Weak::upgrade);
    if let Some(net) = net {
        net.abort(origin, reason);
        std::thread::sleep(ABORT_LINGER);
    }
    eprintln!("error: party {id}: {reason}");
    report_failure(id, origin, reason);
    std::process::exit(code)
}

/// Starts the control threads of party `id`: signal handling always, the launcher's
/// stdin channel when `launched`.
pub fn start(id: usize, launched: bool) {
    LAUNCHED.store(launched, std::sync::atomic::Ordering::Relaxed);
    let signals = std::thread::Builder::new()
        .name("tessera-signals".into())
        .spawn(move || {
            let rt = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    tracing::warn!("cannot watch for signals: {e}");
                    return;
                }
            };
            rt.block_on(async move {
                use tokio::signal::unix::{signal, SignalKind};
                let (Ok(mut term), Ok(mut int)) = (
                    signal(SignalKind::terminate()),
                    signal(SignalKind::interrupt()),
                ) else {
                    tracing::warn!("cannot install the SIGTERM/SIGINT handlers");
                    return;
                };
                let (name, num) = tokio::select! {
                    _ = term.recv() => ("SIGTERM", 15),
                    _ = int.recv() => ("SIGINT", 2),
                };
                stop(id, id, &format!("party {id} received {name}"), 128 + num);
            });
        });
    if let Err(e) = signals {
        tracing::warn!("cannot start the signal thread: {e}");
    }
    if !launched {
        return;
    }
    let stdin = std::thread::Builder::new()
        .name("tessera-control".into())
        .spawn(move || {
            for line in std::io::stdin().lock().lines() {
                let Ok(line) = line else { break };
                if let Some((origin, text)) = parse_abort(&line) {
                    stop(id, origin, &text, EXIT_ABORTED);
                }
                tracing::warn!("ignoring an unknown control line from the launcher");
            }
            stop(
                id,
                id,
                "the launcher is gone (its control channel closed); stopping",
                EXIT_ABORTED,
            );
        });
    if let Err(e) = stdin {
        tracing::warn!("cannot start the control thread: {e}");
    }
}

/// The launcher's control line telling a party to abort: `abort ORIGIN TEXT`.
pub fn abort_line(origin: usize, text: &str) -> String {
    format!("abort {origin} {}\n", text.replace('\n', " "))
}

fn parse_abort(line: &str) -> Option<(usize, String)> {
    let rest = line.strip_prefix("abort ")?;
    let (o, text) = rest.split_once(' ').unwrap_or((rest, ""));
    Some((o.parse().ok()?, text.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn abort_lines_round_trip() {
        let l = abort_line(2, "party 2 exited with signal 9 (SIGKILL)\nx");
        assert_eq!(l.matches('\n').count(), 1);
        assert_eq!(
            parse_abort(l.trim_end()),
            Some((2, "party 2 exited with signal 9 (SIGKILL) x".into()))
        );
        assert_eq!(parse_abort("abort x y"), None);
        assert_eq!(parse_abort("hello"), None);
        assert_eq!(parse_abort("abort 1"), Some((1, String::new())));
    }
}
