//! The `tessera` binary: run one party (`party`), all parties of a config on this machine
//! (`launch`), offline dealing into files (`dealer`), and certificate generation
//! (`keygen`). See README.md for the commands.
#![deny(unsafe_code)]
#![warn(missing_docs)]

mod demo;
mod job;
mod launch;
mod ops;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use job::{Job, PartyReport, RESULT_PREFIX};
use std::path::PathBuf;
use tessera::config::Config;

#[derive(Parser, Debug)]
#[command(
    name = "tessera",
    version,
    about = "Two- and three-party secure computation for private transformer inference"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Generate each party's certificate and key; write the fingerprints into the config.
    Keygen {
        /// The session config (TOML).
        #[arg(long)]
        config: PathBuf,
    },
    /// Run one party of a session (what runs on each host): `party --config F --id N -- JOB`.
    Party {
        /// The session config (TOML).
        #[arg(long)]
        config: PathBuf,
        /// This party's id.
        #[arg(long)]
        id: usize,
        /// Use offline material from this directory (written by `tessera dealer`).
        #[arg(long)]
        preprocessing: Option<PathBuf>,
        /// The job: `bench OP --shape DIMS [--json]` or `demo`.
        #[arg(last = true, required = true)]
        job: Vec<String>,
    },
    /// Start every party of the config as a separate process on this machine.
    Launch {
        /// The session config (TOML).
        #[arg(long)]
        config: PathBuf,
        /// Use offline material from this directory (written by `tessera dealer`).
        #[arg(long)]
        preprocessing: Option<PathBuf>,
        /// The job: `bench OP --shape DIMS [--json]` or `demo`.
        #[arg(last = true, required = true)]
        job: Vec<String>,
    },
    /// Write the offline preprocessing of a job into one file per party.
    Dealer {
        /// The session config (TOML).
        #[arg(long)]
        config: PathBuf,
        /// Output directory.
        #[arg(long)]
        out: PathBuf,
        /// The job the material is for.
        #[arg(last = true, required = true)]
        job: Vec<String>,
    },
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("TESSERA_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,quinn=warn,rustls=warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false)
        .try_init();
}

fn main() -> std::process::ExitCode {
    init_logging();
    match run(Cli::parse()) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<()> {
    match cli.cmd {
        Cmd::Keygen { config } => {
            let fps = tessera::identity::keygen(&config)?;
            for (id, fp) in fps.iter().enumerate() {
                println!("party {id}: {fp}");
            }
            println!("fingerprints written to {}", config.display());
            Ok(())
        }
        Cmd::Party {
            config,
            id,
            preprocessing,
            job,
        } => {
            let cfg = Config::load(&config)?;
            let job = Job::parse(&job)?;
            let report = job::run_party(&cfg, id, &job, preprocessing)
                .with_context(|| format!("party {id}"))?;
            println!("{RESULT_PREFIX}{}", serde_json::to_string(&report)?);
            Ok(())
        }
        Cmd::Launch {
            config,
            preprocessing,
            job,
        } => launch_cmd(&config, preprocessing.as_deref(), &job),
        Cmd::Dealer { config, out, job } => {
            let cfg = Config::load(&config)?;
            let parsed = Job::parse(&job)?;
            let demand = job::job_demand(&parsed, cfg.setting, cfg.frac_bits)?;
            let t = std::time::Instant::now();
            let sizes = tessera::preproc::write_files(&out, &demand)?;
            println!(
                "wrote {} requests: p0.material {} bytes, p1.material {} bytes in {} ({:.3} s)",
                demand.0.len(),
                sizes[0],
                sizes[1],
                out.display(),
                t.elapsed().as_secs_f64()
            );
            Ok(())
        }
    }
}

fn launch_cmd(
    config: &std::path::Path,
    preprocessing: Option<&std::path::Path>,
    words: &[String],
) -> Result<()> {
    let job = launch::check_job(words)?;
    let config = launch::prepare_config(config)?;
    let cfg = Config::load(&config)?;
    match &job {
        Job::Demo(_) => {
            let out = launch::launch(&config, words, |_| vec![], preprocessing, false)?;
            print_table(&out.reports, cfg.setting);
            Ok(())
        }
        Job::Bench(b) => {
            let seed: u64 = rand::random::<u32>() as u64;
            let tmp =
                std::env::temp_dir().join(format!("tessera-out-{}-{seed}.bin", std::process::id()));
            let tmp_arg = tmp.clone();
            let extra = move |id: usize| {
                let mut v = vec!["--seed".to_string(), seed.to_string()];
                if id == 0 {
                    v.push("--output".into());
                    v.push(tmp_arg.to_string_lossy().to_string());
                }
                v
            };
            let out = launch::launch(&config, words, extra, preprocessing, b.json)?;
            let mut spec = b.spec();
            spec.seed = seed;
            let bytes = std::fs::read(&tmp)
                .with_context(|| format!("reading P0's output {}", tmp.display()))?;
            let _ = std::fs::remove_file(&tmp);
            let got: Vec<f64> = bytes
                .chunks_exact(8)
                .map(|c| f64::from_le_bytes(c.try_into().expect("8 bytes")))
                .collect();
            let want = spec.reference(&spec.inputs()?)?;
            if got.len() != want.len() {
                anyhow::bail!(
                    "P0's output has {} values, the reference {}",
                    got.len(),
                    want.len()
                );
            }
            let (max_abs_err, mean_abs_err) = ops::errors(&got, want.data());
            let r = &out.reports;
            let compute: Vec<&PartyReport> = r
                .iter()
                .filter(|p| Some(p.id) != cfg.setting.dealer())
                .collect();
            let json = serde_json::json!({
                "op": b.op,
                "setting": cfg.setting.name(),
                "parties": cfg.setting.num_compute(),
                "shape": b.shape.0,
                "online_s": compute.iter().map(|p| p.online_s).fold(0.0, f64::max),
                "offline_s": r.iter().map(|p| p.offline_s).fold(0.0, f64::max),
                "online_bytes": r.iter().map(|p| p.stats.online_sent).sum::<u64>(),
                "offline_bytes": r.iter().map(|p| p.stats.offline_sent).sum::<u64>(),
                "rounds": r.iter().map(|p| p.stats.rounds).max().unwrap_or(0),
                "max_abs_err": max_abs_err,
                "mean_abs_err": mean_abs_err,
            });
            if b.json {
                println!("{json}");
            } else {
                print_table(r, cfg.setting);
                println!(
                    "{} {} {:?}: online {:.4} s, {} rounds, {} online bytes, {} offline bytes; max |err| {:.2e}, mean {:.2e}",
                    cfg.setting, b.op, b.shape.0, json["online_s"].as_f64().unwrap_or(0.0), json["rounds"], json["online_bytes"], json["offline_bytes"], max_abs_err, mean_abs_err
                );
            }
            Ok(())
        }
    }
}

fn print_table(reports: &[PartyReport], setting: tessera::Setting) {
    println!("party | online s | rounds | online sent B | online recv B | offline sent B | offline recv B");
    for r in reports {
        let name = if Some(r.id) == setting.dealer() {
            "D".to_string()
        } else {
            format!("P{}", r.id)
        };
        println!(
            "{name:>5} | {:>8.4} | {:>6} | {:>13} | {:>13} | {:>14} | {:>14}",
            r.online_s,
            r.stats.rounds,
            r.stats.online_sent,
            r.stats.online_recv,
            r.stats.offline_sent,
            r.stats.offline_recv
        );
    }
}
