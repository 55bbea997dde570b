//! `tessera launch`: every party of a config as a separate process on this machine.
//!
//! The launcher spawns `tessera party --config F --id N -- JOB` for each endpoint (P0, P1
//! and the dealer or P2), prefixes their log lines with the party id, collects the one
//! result line each party prints, and exits non-zero if any party fails. When a party
//! fails, the others are given the I/O deadline to notice and exit on their own (they
//! name the failed peer), then are killed.

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
pub fn launch(
    config_path: &Path,
    job_words: &[String],
    extra_for: impl Fn(usize) -> Vec<String>,
    preprocessing: Option<&Path>,
    quiet_stdout: bool,
) -> Result<LaunchOutput> {
    let cfg = Config::load(config_path)?;
    let exe = std::env::current_exe().context("locating the tessera executable")?;
    let n = cfg.num_parties();
    let mut children: Vec<(usize, Child)> = Vec::new();
    let mut pumps = Vec::new();
    let mut results = Vec::new();
    for id in 0..n {
        let mut cmd = Command::new(&exe);
        cmd.arg("party")
            .arg("--config")
            .arg(config_path)
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
        b.spec().validate()?;
    }
    Ok(job)
}
