//! `tessera launch`: every party of a config as a separate process on this machine.
//!
//! The launcher spawns `tessera party --config F --id N -- JOB` for each endpoint (P0, P1
//! and the dealer or P2), prefixes their log lines with the party id, collects the one
//! result line each party prints, and exits non-zero if any party fails. When a party
//! fails, the others are given the I/O deadline to notice and exit on their own (they
//! name the failed peer), then are killed.
//!
//! With a network profile (`--profile lan|wan|PATH`, `--rtt-ms`, `--bandwidth-mbit`) the
//! parties talk through user-space relays in the launcher process ([`Network`]).

use crate::harness::profile::Profile;
use crate::harness::relay::{LinkModel, Relay};
use crate::job::{Job, PartyReport, RESULT_PREFIX};
use anyhow::{anyhow, bail, Context, Result};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tessera::config::Config;

/// Outcome of a launch: each party's report, in id order.
pub struct LaunchOutput {
    /// Reports of parties 0..n.
    pub reports: Vec<PartyReport>,
}

/// A config ready to run: if the given config has no usable keys (fingerprints missing or
/// key files absent), a copy with fresh keys is made in a private temporary directory so
/// the tracked file is never modified. Returns the path to use.
pub fn prepare_config(path: &Path) -> Result<PathBuf> {
    let cfg = Config::load(path)?;
    let ready = (0..cfg.num_parties()).all(|id| {
        cfg.party(id)
            .map(|p| p.fingerprint.is_some())
            .unwrap_or(false)
            && cfg.cert_path(id).map(|p| p.exists()).unwrap_or(false)
            && cfg.key_path(id).map(|p| p.exists()).unwrap_or(false)
    });
    if ready {
        return Ok(path.to_path_buf());
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
    std::fs::create_dir_all(&dir)?;
    doc["key_dir"] = toml_edit::value(dir.join("keys").to_string_lossy().to_string());
    let pre = cfg.preprocessing_path();
    doc["preprocessing_dir"] = toml_edit::value(pre.to_string_lossy().to_string());
    let out = dir.join(format!("{stem}.toml"));
    std::fs::write(&out, doc.to_string())?;
    tessera::identity::keygen(&out)?;
    eprintln!(
        "[launch] {} has no keys yet: generated fresh certificates for this run in {}",
        path.display(),
        dir.display()
    );
    Ok(out)
}

fn pump(
    reader: impl std::io::Read + Send + 'static,
    prefix: String,
    to_stdout: bool,
    result: Arc<Mutex<Option<String>>>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        for line in BufReader::new(reader).lines() {
            let Ok(line) = line else { break };
            if let Some(r) = line.strip_prefix(RESULT_PREFIX) {
                *result.lock().unwrap_or_else(|e| e.into_inner()) = Some(r.to_string());
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
    let mut children: Vec<(usize, Child)> = Vec::new();
    let mut pumps = Vec::new();
    let mut results = Vec::new();
    for id in 0..n {
        let mut cmd = Command::new(&exe);
        cmd.arg("party")
            .arg("--config")
            .arg(net.config_for(id))
            .arg("--id")
            .arg(id.to_string());
        if let Some(dir) = preprocessing {
            cmd.arg("--preprocessing").arg(dir);
        }
        cmd.arg("--").args(job_words).args(extra_for(id));
        cmd.stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .stdin(Stdio::null());
        let mut child = cmd
            .spawn()
            .with_context(|| format!("starting party {id}"))?;
        let res = Arc::new(Mutex::new(None));
        let role = if Some(id) == cfg.setting.dealer() {
            "D ".to_string()
        } else {
            format!("p{id}")
        };
        pumps.push(pump(
            child.stdout.take().expect("piped"),
            format!("[{role}]"),
            !quiet_stdout,
            res.clone(),
        ));
        pumps.push(pump(
            child.stderr.take().expect("piped"),
            format!("[{role}]"),
            false,
            res.clone(),
        ));
        results.push(res);
        children.push((id, child));
    }
    // Wait; after the first failure give the others the I/O deadline (+ slack) to exit.
    let mut status: Vec<Option<std::process::ExitStatus>> = vec![None; n];
    let mut first_failure: Option<(usize, Instant)> = None;
    let grace = cfg.io_timeout() + Duration::from_secs(5);
    loop {
        for (id, child) in children.iter_mut() {
            if status[*id].is_none() {
                if let Some(s) = child.try_wait()? {
                    if !s.success() && first_failure.is_none() {
                        first_failure = Some((*id, Instant::now()));
                    }
                    status[*id] = Some(s);
                }
            }
        }
        if status.iter().all(Option::is_some) {
            break;
        }
        if let Some((_, t)) = first_failure {
            if t.elapsed() > grace {
                for (id, child) in children.iter_mut() {
                    if status[*id].is_none() {
                        eprintln!(
                            "[launch] killing party {id}: still running {}s after a peer failed",
                            grace.as_secs()
                        );
                        let _ = child.kill();
                        status[*id] = child.wait().ok();
                    }
                }
                break;
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    for p in pumps {
        let _ = p.join();
    }
    let failed: Vec<String> = status
        .iter()
        .enumerate()
        .filter(|(_, s)| !s.map(|s| s.success()).unwrap_or(false))
        .map(|(id, s)| {
            format!(
                "party {id} ({})",
                s.map(|s| s.to_string()).unwrap_or_else(|| "killed".into())
            )
        })
        .collect();
    if !failed.is_empty() {
        bail!("{} failed", failed.join(", "));
    }
    let reports = results
        .iter()
        .enumerate()
        .map(|(id, r)| {
            let line = r
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone()
                .ok_or_else(|| anyhow!("party {id} printed no result"))?;
            serde_json::from_str::<PartyReport>(&line)
                .with_context(|| format!("party {id}'s result line"))
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(LaunchOutput { reports })
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
        } else {
            b.spec().validate()?;
        }
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
