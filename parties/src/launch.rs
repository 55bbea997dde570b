//! `tessera launch`: every party of a config as a separate process on this machine.
//!
//! The launcher spawns `tessera party --config F --id N -- JOB` for each endpoint (P0, P1
//! and the dealer or P2), prefixes their log lines with the party id, collects the one
//! result line each party prints, and exits non-zero if any party fails.
//!
//! **Faults.** The launcher reacts at once to a child that exits abnormally: it names the
//! party whose failure started it (the child itself when it was killed or failed on its
//! own; the party the child blames, from its failure line, in a cascade), tells every
//! remaining party over its stdin control channel to abort naming that origin (see
//! `control.rs`), kills any that linger after [`ABORT_GRACE`], and returns an error that
//! names the origin first ("party 1 exited with signal 9 (SIGKILL); stopped: ...").
//! A frozen party is named by its peers within `liveness_s` and killed in the same way.
//! The throw-away keys of a config without keys live in a temporary directory that is
//! removed when the run ends, however it ends (short of the launcher being killed).
//!
//! With a network profile (`--profile lan|wan|PATH`, `--rtt-ms`, `--bandwidth-mbit`) the
//! parties talk through user-space relays in the launcher process ([`Network`]).

use crate::harness::profile::Profile;
use crate::harness::relay::{LinkModel, Relay};
use crate::job::{FailureLine, Job, PartyReport, FAILURE_PREFIX, RESULT_PREFIX};
use anyhow::{anyhow, bail, Context, Result};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tessera::config::Config;

/// Outcome of a launch: each party's report, in id order.
pub struct LaunchOutput {
    /// Reports of parties 0..n.
    pub reports: Vec<PartyReport>,
}

/// How long parties told to abort may take to exit before they are killed.
pub const ABORT_GRACE: Duration = Duration::from_secs(2);
/// The same for a party its peers blame (gone silent or frozen): it is not expected to
/// answer, so it is killed sooner.
pub const BLAMED_GRACE: Duration = Duration::from_millis(500);

/// A config ready to run (see [`prepare_config`]); the temporary directory with its
/// throw-away keys, if one was made, is removed when this is dropped.
pub struct Prepared {
    /// The config file to use.
    pub path: PathBuf,
    temp_dir: Option<PathBuf>,
}

impl std::ops::Deref for Prepared {
    type Target = Path;
    fn deref(&self) -> &Path {
        &self.path
    }
}

impl AsRef<Path> for Prepared {
    fn as_ref(&self) -> &Path {
        &self.path
    }
}

impl Drop for Prepared {
    fn drop(&mut self) {
        if let Some(d) = &self.temp_dir {
            let _ = std::fs::remove_dir_all(d);
        }
    }
}

/// A temporary file removed when dropped (a party's output file, read by the launcher).
pub struct TempFile(pub PathBuf);

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// A config ready to run: if the given config has no usable keys (fingerprints missing or
/// key files absent), a copy with fresh keys is made in a private temporary directory so
/// the tracked file is never modified; the directory goes when the result is dropped.
pub fn prepare_config(path: &Path) -> Result<Prepared> {
    let cfg = Config::load(path)?;
    let ready = (0..cfg.num_parties()).all(|id| {
        cfg.party(id)
            .map(|p| p.fingerprint.is_some())
            .unwrap_or(false)
            && cfg.cert_path(id).map(|p| p.exists()).unwrap_or(false)
            && cfg.key_path(id).map(|p| p.exists()).unwrap_or(false)
    });
    if ready {
        return Ok(Prepared {
            path: path.to_path_buf(),
            temp_dir: None,
        });
    }
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let mut doc: toml_edit::DocumentMut = text
        .parse()
        .with_context(|| format!("parsing {}", path.display()))?;
    let stem = path
        .file_stem()
        .and_then(|s| s.to_str())
        .unwrap_or("config");
    let dir = std::env::temp_dir().join(format!("tessera-launch-{}-{}", stem, std::process::id()));
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    // From here on the directory is removed again, whatever happens.
    let prepared = Prepared {
        path: dir.join(format!("{stem}.toml")),
        temp_dir: Some(dir.clone()),
    };
    doc["key_dir"] = toml_edit::value(dir.join("keys").to_string_lossy().to_string());
    let pre = cfg.preprocessing_path();
    doc["preprocessing_dir"] = toml_edit::value(pre.to_string_lossy().to_string());
    let out = &prepared.path;
    std::fs::write(out, doc.to_string()).with_context(|| format!("writing {}", out.display()))?;
    tessera::identity::keygen(out)?;
    eprintln!(
        "[launch] {} has no keys yet: generated throw-away certificates for this run in {}",
        path.display(),
        dir.display()
    );
    Ok(prepared)
}

/// What a party's output pumps collect: its result line and its failure line.
#[derive(Default)]
struct Collected {
    result: Option<String>,
    failure: Option<FailureLine>,
}

fn pump(
    reader: impl std::io::Read + Send + 'static,
    prefix: String,
    to_stdout: bool,
    got: Arc<Mutex<Collected>>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        for line in BufReader::new(reader).lines() {
            let Ok(line) = line else { break };
            if let Some(r) = line.strip_prefix(RESULT_PREFIX) {
                got.lock().unwrap_or_else(|e| e.into_inner()).result = Some(r.to_string());
            } else if let Some(f) = line.strip_prefix(FAILURE_PREFIX) {
                if let Ok(f) = serde_json::from_str::<FailureLine>(f) {
                    got.lock().unwrap_or_else(|e| e.into_inner()).failure = Some(f);
                }
            } else if to_stdout {
                println!("{prefix} {line}");
            } else {
                eprintln!("{prefix} {line}");
            }
        }
    })
}

/// Spawns every party and waits for them. `job_words` are passed after `--`; `extra_for`
/// adds per-party words (e.g. the output file for P0). Party stdout goes to our stdout
/// unless `quiet_stdout` (then to stderr, so a JSON line stays alone on stdout).
///
/// `net` says which config file each party reads ([`Network::start`] rewrites them so the
/// parties talk through the emulated network of a profile).
pub fn launch(
    net: &Network,
    job_words: &[String],
    extra_for: impl Fn(usize) -> Vec<String>,
    preprocessing: Option<&Path>,
    quiet_stdout: bool,
) -> Result<LaunchOutput> {
    let cfg = Config::load(&net.config)?;
    let exe = std::env::current_exe().context("locating the tessera executable")?;
    let n = cfg.num_parties();
    let mut kids: Vec<Kid> = Vec::new();
    for id in 0..n {
        let mut cmd = Command::new(&exe);
        cmd.arg("party")
            .arg("--config")
            .arg(net.config_for(id))
            .arg("--id")
            .arg(id.to_string())
            .arg("--launched");
        if let Some(dir) = preprocessing {
            cmd.arg("--preprocessing").arg(dir);
        }
        cmd.arg("--").args(job_words).args(extra_for(id));
        cmd.stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .stdin(Stdio::piped());
        let mut child = match cmd.spawn() {
            Ok(c) => c,
            Err(e) => {
                for k in &mut kids {
                    let _ = k.child.kill();
                    let _ = k.child.wait();
                }
                return Err(anyhow!("starting party {id} ({}): {e}", exe.display()));
            }
        };
        let got = Arc::new(Mutex::new(Collected::default()));
        let role = if Some(id) == cfg.setting.dealer() {
            "D ".to_string()
        } else {
            format!("p{id}")
        };
        let mut pumps = Vec::new();
        if let Some(out) = child.stdout.take() {
            pumps.push(pump(out, format!("[{role}]"), !quiet_stdout, got.clone()));
        }
        if let Some(err) = child.stderr.take() {
            pumps.push(pump(err, format!("[{role}]"), false, got.clone()));
        }
        kids.push(Kid {
            id,
            stdin: child.stdin.take(),
            child,
            pumps,
            got,
            status: None,
            note: None,
            kill_at: None,
        });
    }
    eprintln!(
        "[launch] started {}",
        kids.iter()
            .map(|k| format!("party {} (pid {})", k.id, k.child.id()))
            .collect::<Vec<_>>()
            .join(", ")
    );
    let origin = supervise(&mut kids)?;
    if let Some((_, what)) = origin {
        let stopped: Vec<String> = kids
            .iter()
            .filter(|k| k.note.is_some())
            .map(|k| format!("party {} ({})", k.id, k.note.clone().unwrap_or_default()))
            .collect();
        if stopped.is_empty() {
            bail!("{what}");
        }
        bail!("{what}; stopped: {}", stopped.join(", "));
    }
    let reports = kids
        .iter()
        .map(|k| {
            let line = k
                .got
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .result
                .clone()
                .ok_or_else(|| anyhow!("party {} printed no result", k.id))?;
            serde_json::from_str::<PartyReport>(&line)
                .with_context(|| format!("party {}'s result line", k.id))
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(LaunchOutput { reports })
}

/// One launched party process.
struct Kid {
    id: usize,
    child: Child,
    stdin: Option<ChildStdin>,
    pumps: Vec<std::thread::JoinHandle<()>>,
    got: Arc<Mutex<Collected>>,
    status: Option<ExitStatus>,
    /// How it ended, for parties stopped after another failed.
    note: Option<String>,
    /// When it is killed if it has not exited (set when it is told to abort).
    kill_at: Option<Instant>,
}

/// "exited with code 1" / "exited with signal 9 (SIGKILL)".
pub fn describe_exit(status: ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    if let Some(sig) = status.signal() {
        let name = match sig {
            1 => " (SIGHUP)",
            2 => " (SIGINT)",
            6 => " (SIGABRT)",
            9 => " (SIGKILL)",
            11 => " (SIGSEGV)",
            15 => " (SIGTERM)",
            _ => "",
        };
        return format!("exited with signal {sig}{name}");
    }
    match status.code() {
        Some(c) => format!("exited with code {c}"),
        None => "exited".into(),
    }
}

/// Waits for every party. At the first abnormal exit, finds the origin (the party itself,
/// or the one it blames in its failure line), tells the others to abort, kills any still
/// running after [`ABORT_GRACE`] ([`BLAMED_GRACE`] for the blamed party). Returns the
/// origin and what happened, if anything failed.
fn supervise(kids: &mut [Kid]) -> Result<Option<(usize, String)>> {
    let n = kids.len();
    let mut origin: Option<(usize, String)> = None;
    loop {
        for k in kids.iter_mut() {
            if k.status.is_some() {
                continue;
            }
            let Some(s) = k.child.try_wait().context("waiting for the parties")? else {
                continue;
            };
            k.status = Some(s);
            drop(k.stdin.take());
            // Its output is complete once the process is gone: read its failure line.
            for p in k.pumps.drain(..) {
                let _ = p.join();
            }
            if origin.is_some() {
                k.note = Some(describe_exit(s));
                continue;
            }
            if s.success() {
                continue;
            }
            let line = k
                .got
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .failure
                .clone();
            let found = match line {
                Some(f) if f.origin != k.id && f.origin < n => (
                    f.origin,
                    format!(
                        "party {} failed (as party {} reports: {})",
                        f.origin, k.id, f.error
                    ),
                ),
                Some(f) => (k.id, format!("party {} failed: {}", k.id, f.error)),
                None => (k.id, format!("party {} {}", k.id, describe_exit(s))),
            };
            let exit = format!("party {} {}", k.id, describe_exit(s));
            if found.1 == exit {
                eprintln!("[launch] {exit}; telling the others to stop");
            } else {
                eprintln!("[launch] {exit}: {}; telling the others to stop", found.1);
            }
            origin = Some(found);
        }
        if let Some((o, what)) = &origin {
            // Tell every party still running, once; a write to one that has just exited
            // fails harmlessly. Its stdin stays open: closing it reads as "the launcher is
            // gone".
            let line = crate::control::abort_line(*o, &format!("stopped by the launcher: {what}"));
            for k in kids
                .iter_mut()
                .filter(|k| k.status.is_none() && k.note.is_none())
            {
                if let Some(stdin) = k.stdin.as_mut() {
                    let _ = stdin.write_all(line.as_bytes());
                    let _ = stdin.flush();
                }
                k.note = Some("told to abort".into());
                let grace = if k.id == *o {
                    BLAMED_GRACE
                } else {
                    ABORT_GRACE
                };
                k.kill_at = Some(Instant::now() + grace);
            }
        }
        if kids.iter().all(|k| k.status.is_some()) {
            break;
        }
        let now = Instant::now();
        for k in kids
            .iter_mut()
            .filter(|k| k.status.is_none() && k.kill_at.is_some_and(|t| now > t))
        {
            let grace = if origin.as_ref().is_some_and(|o| o.0 == k.id) {
                BLAMED_GRACE
            } else {
                ABORT_GRACE
            };
            eprintln!(
                "[launch] killing party {}: still running {:.1} s after being told to stop",
                k.id,
                grace.as_secs_f64()
            );
            let _ = k.child.kill();
            let _ = k.child.wait();
            k.status = Some(ExitStatus::default());
            k.note = Some(format!("killed after {:.1} s", grace.as_secs_f64()));
            for p in k.pumps.drain(..) {
                let _ = p.join();
            }
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    Ok(origin)
}

/// Parses the job the same way the parties will (to fail early on a typo).
pub fn check_job(words: &[String]) -> Result<Job> {
    let job = Job::parse(words)?;
    if let Job::Bench(b) = &job {
        if crate::netops::handles(&b.op) {
            crate::netops::validate(b)?;
        } else if b.op == "bert" {
            b.bert.config()?;
            b.methods.methods()?;
        } else if b.op == "llama" {
            crate::generate::llama_shape(&b.bert)?;
            b.methods.methods()?;
        } else if b.op == "resnet" {
            b.resnet.config()?;
        } else {
            b.spec().validate()?;
        }
    }
    if let Job::Classify(c) = &job {
        c.validate()?;
    }
    if let Job::Finetune(f) = &job {
        f.validate(tessera::FixedPoint::default().frac_bits())?;
    }
    if let Job::Generate(g) = &job {
        g.methods.methods()?;
        if g.max_new_tokens == 0 {
            bail!("--max-new-tokens must be at least 1");
        }
        if g.prompt.is_none() && g.prompt_ids.is_none() && g.model.is_some() {
            bail!("give --prompt TEXT or --prompt-ids IDS");
        }
    }
    Ok(job)
}

/// The network the parties of a launch talk over: either the configured addresses as
/// they are (no emulation), or a [`Relay`] in front of every listening party and one
/// rewritten config per party in which the *other* parties' addresses are their relays'
/// (each party still binds its own configured address, so no transport hook is needed).
/// Dropping it stops the relays and removes the rewritten configs.
pub struct Network {
    /// The config the session is described by (the prepared one, with keys).
    pub config: PathBuf,
    /// The profile applied.
    pub profile: Profile,
    per_party: Vec<PathBuf>,
    relays: Vec<Relay>,
    dir: Option<PathBuf>,
}

impl Network {
    /// The parties talk over the addresses of `config` directly (profile `none`).
    pub fn direct(config: &Path) -> Network {
        Network {
            config: config.to_path_buf(),
            profile: Profile::none(),
            per_party: Vec::new(),
            relays: Vec::new(),
            dir: None,
        }
    }

    /// Applies `profile` to the session of `config` (a config ready to run, see
    /// [`prepare_config`]): starts the relays and writes the per-party configs.
    pub fn start(config: &Path, profile: &Profile) -> Result<Network> {
        if !profile.is_emulated() {
            let mut n = Network::direct(config);
            n.profile = profile.clone();
            return Ok(n);
        }
        let cfg = Config::load(config)?;
        let n = cfg.num_parties();
        let model = LinkModel::of(profile);
        // The lower id dials the higher: every party but 0 is listened for.
        let mut relay_addr: Vec<Option<String>> = vec![None; n];
        let mut relays = Vec::new();
        for (j, slot) in relay_addr.iter_mut().enumerate().skip(1) {
            let mut target = cfg.socket_addr(j)?;
            if target.ip().is_unspecified() {
                target.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
            }
            let relay = Relay::start(target, model)
                .with_context(|| format!("starting the network relay for party {j} ({target})"))?;
            *slot = Some(relay.addr().to_string());
            relays.push(relay);
        }
        let text = std::fs::read_to_string(config)
            .with_context(|| format!("reading {}", config.display()))?;
        let dir = std::env::temp_dir().join(format!(
            "tessera-net-{}-{}",
            std::process::id(),
            NEXT_NET.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let mut per_party = Vec::with_capacity(n);
        for i in 0..n {
            let mut doc: toml_edit::DocumentMut = text
                .parse()
                .with_context(|| format!("parsing {}", config.display()))?;
            let abs = |p: PathBuf| toml_edit::value(p.to_string_lossy().to_string());
            doc["key_dir"] = abs(cfg.key_dir_path());
            doc["preprocessing_dir"] = abs(cfg.preprocessing_path());
            let tables = doc["party"]
                .as_array_of_tables_mut()
                .ok_or_else(|| anyhow!("{}: no [[party]] tables", config.display()))?;
            for t in tables.iter_mut() {
                let id = t
                    .get("id")
                    .and_then(|v| v.as_integer())
                    .ok_or_else(|| anyhow!("{}: a [[party]] without id", config.display()))?
                    as usize;
                t["cert"] = abs(cfg.cert_path(id)?);
                t["key"] = abs(cfg.key_path(id)?);
                if id != i {
                    if let Some(a) = relay_addr.get(id).cloned().flatten() {
                        t["addr"] = toml_edit::value(a);
                    }
                }
            }
            let path = dir.join(format!("p{i}-{}.toml", sanitize(&profile.name)));
            std::fs::write(&path, doc.to_string())
                .with_context(|| format!("writing {}", path.display()))?;
            per_party.push(path);
        }
        Ok(Network {
            config: config.to_path_buf(),
            profile: profile.clone(),
            per_party,
            relays,
            dir: Some(dir),
        })
    }

    /// The config file party `id` reads.
    pub fn config_for(&self, id: usize) -> &Path {
        self.per_party.get(id).unwrap_or(&self.config)
    }

    /// Datagrams dropped at the emulated bottlenecks so far.
    pub fn dropped(&self) -> u64 {
        self.relays
            .iter()
            .map(|r| r.stats.dropped.load(std::sync::atomic::Ordering::Relaxed))
            .sum()
    }
}

impl Drop for Network {
    fn drop(&mut self) {
        if !self.relays.is_empty() {
            let forwarded: u64 = self
                .relays
                .iter()
                .map(|r| r.stats.forwarded.load(std::sync::atomic::Ordering::Relaxed))
                .sum();
            eprintln!(
                "[launch] network {}: {forwarded} datagrams relayed, {} dropped at the bottleneck queues",
                self.profile.name,
                self.dropped()
            );
        }
        self.relays.clear();
        if let Some(d) = &self.dir {
            let _ = std::fs::remove_dir_all(d);
        }
    }
}

static NEXT_NET: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

fn sanitize(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect()
}
