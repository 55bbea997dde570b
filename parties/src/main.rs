//! The `tessera` binary: run one party (`party`), all parties of a config on this machine
//! (`launch`), offline dealing into files (`dealer`), and certificate generation
//! (`keygen`). See README.md for the commands.
#![deny(unsafe_code)]
#![warn(missing_docs)]

mod classify;
mod control;
mod finetune;
mod generate;
mod harness;
mod infer;
mod job;
mod launch;
mod netops;
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
        /// Started by `tessera launch`: stdin is the launcher's control channel (see
        /// `control.rs`) and a failure is reported in a machine-readable line.
        #[arg(long, hide = true)]
        launched: bool,
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
        #[command(flatten)]
        net: NetFlags,
        /// The job: `bench OP --shape DIMS [--json]` or `demo`.
        #[arg(last = true, required = true)]
        job: Vec<String>,
    },
    /// The benchmark harness: `bench suite` sweeps ops x settings x network profiles.
    Bench {
        #[command(subcommand)]
        cmd: BenchCmd,
    },
    /// Put two result files of `bench suite` side by side with ratios (B / A).
    Compare {
        /// Baseline results (JSON lines).
        a: PathBuf,
        /// Results to compare against the baseline (JSON lines).
        b: PathBuf,
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

/// Subcommands of `tessera bench`.
#[derive(Subcommand, Debug)]
enum BenchCmd {
    /// Sweep ops x settings x profiles, each run a fresh launch of all parties; write JSON
    /// lines, a Markdown table and an SVG plot.
    Suite(harness::suite::SuiteArgs),
}

/// The network a launch emulates between its parties.
#[derive(clap::Args, Debug, Clone)]
struct NetFlags {
    /// Network profile: a name from configs/profiles (lan, wan, none) or a TOML file.
    #[arg(long, conflicts_with_all = ["rtt_ms", "bandwidth_mbit"])]
    profile: Option<String>,
    /// Emulated round-trip time in milliseconds (instead of --profile).
    #[arg(long)]
    rtt_ms: Option<f64>,
    /// Emulated bandwidth per link and direction in Mbit/s (instead of --profile).
    #[arg(long)]
    bandwidth_mbit: Option<f64>,
}

impl NetFlags {
    fn profile(&self) -> Result<harness::profile::Profile> {
        use harness::profile::Profile;
        match (&self.profile, self.rtt_ms, self.bandwidth_mbit) {
            (Some(p), _, _) => Profile::resolve(p),
            (None, None, None) => Ok(Profile::none()),
            (None, rtt, bw) => Profile::custom(rtt, bw),
        }
    }
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
            launched,
            job,
        } => {
            control::start(id, launched);
            let run = || -> Result<PartyReport> {
                let cfg = Config::load(&config)?;
                let job = Job::parse(&job)?;
                job::run_party(&cfg, id, &job, preprocessing)
            };
            match run() {
                Ok(report) => {
                    println!("{RESULT_PREFIX}{}", serde_json::to_string(&report)?);
                    Ok(())
                }
                Err(e) => {
                    control::report_failure(id, job::origin_of(&e, id), &format!("{e:#}"));
                    Err(e.context(format!("party {id}")))
                }
            }
        }
        Cmd::Launch {
            config,
            preprocessing,
            net,
            job,
        } => launch_cmd(&config, preprocessing.as_deref(), &net.profile()?, &job),
        Cmd::Bench {
            cmd: BenchCmd::Suite(args),
        } => harness::suite::run(&args).map(|_| ()),
        Cmd::Compare { a, b } => {
            let ra = harness::report::read_jsonl(&a)?;
            let rb = harness::report::read_jsonl(&b)?;
            print!(
                "{}",
                harness::report::compare(
                    &ra,
                    &rb,
                    &a.display().to_string(),
                    &b.display().to_string()
                )
            );
            Ok(())
        }
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

/// A fresh temporary file name for P0's output, removed when the guard drops (also when
/// the run fails).
fn tmp_path(ext: &str) -> launch::TempFile {
    launch::TempFile(std::env::temp_dir().join(format!(
        "tessera-out-{}-{}.{ext}",
        std::process::id(),
        rand::random::<u32>()
    )))
}

fn compute_reports(r: &[PartyReport], setting: tessera::Setting) -> Vec<&PartyReport> {
    r.iter()
        .filter(|p| Some(p.id) != setting.dealer())
        .collect()
}

fn totals(r: &[PartyReport], setting: tessera::Setting) -> serde_json::Value {
    serde_json::json!({
        "setting": setting.name(),
        "parties": setting.num_compute(),
        "online_s": compute_reports(r, setting).iter().map(|p| p.online_s).fold(0.0, f64::max),
        "offline_s": r.iter().map(|p| p.offline_s).fold(0.0, f64::max),
        "online_bytes": r.iter().map(|p| p.stats.online_sent).sum::<u64>(),
        "offline_bytes": r.iter().map(|p| p.stats.offline_sent).sum::<u64>(),
        "rounds": r.iter().map(|p| p.stats.rounds).max().unwrap_or(0),
    })
}

fn launch_cmd(
    config: &std::path::Path,
    preprocessing: Option<&std::path::Path>,
    profile: &harness::profile::Profile,
    words: &[String],
) -> Result<()> {
    let job = launch::check_job(words)?;
    let config = launch::prepare_config(config)?;
    let cfg = Config::load(&config)?;
    let setting = cfg.setting;
    // The network profile (harness): relays between the parties, per-party configs.
    let net = launch::Network::start(&config, profile)?;
    if profile.is_emulated() {
        eprintln!("[launch] network profile {}", profile.describe());
    }
    let totals = |r: &[PartyReport], setting: tessera::Setting| {
        let mut j = totals(r, setting);
        j["profile"] = net.profile.name.clone().into();
        let busiest = r.iter().map(|p| p.stats.online_sent).max().unwrap_or(0);
        j["max_party_bytes"] = busiest.into();
        j
    };
    match &job {
        Job::Demo(_) => {
            let out = launch::launch(&net, words, |_| vec![], preprocessing, false)?;
            print_table(&out.reports, setting);
            Ok(())
        }
        Job::Infer(a) => {
            let tmp = tmp_path("json");
            let tmp_arg = tmp.0.to_string_lossy().to_string();
            let out = launch::launch(&net, words, p0_output(&tmp_arg), preprocessing, a.json)?;
            let text = std::fs::read_to_string(&tmp.0)
                .with_context(|| format!("reading P0's output {}", tmp.0.display()))?;
            let _ = std::fs::remove_file(&tmp.0);
            let got: serde_json::Value = serde_json::from_str(&text)?;
            if a.head.is_some() {
                // A secret trained head: P0 learnt classes, not embeddings (no plaintext
                // reference here: the head's weights exist only as shares).
                let classes: Vec<usize> = serde_json::from_value(got["classes"].clone())?;
                let mut j = totals(&out.reports, setting);
                j["texts"] = serde_json::json!(a.texts);
                j["classes"] = serde_json::json!(classes);
                if a.json {
                    println!("{j}");
                } else {
                    print_table(&out.reports, setting);
                    for (t, c) in a.texts.iter().zip(&classes) {
                        println!("{t:?}: class {c}");
                    }
                }
                return Ok(());
            }
            let embeddings: Vec<Vec<f64>> = serde_json::from_value(got["embeddings"].clone())?;
            // The launcher's plaintext f64 reference (it has the model files on this machine).
            let w = tessera_protocols::bert::BertWeights::load(&a.model)?;
            let tok =
                tessera_protocols::bert::Tokenizer::from_file(&a.model.join("tokenizer.json"))?;
            let mut cos = vec![];
            for (t, e) in a.texts.iter().zip(&embeddings) {
                let enc = tok.encode(t, a.max_len.min(w.config.max_position))?;
                let want = tessera_protocols::bert::sentence_embedding(&w, &enc);
                cos.push(infer::cosine(e, &want));
            }
            let mut j = totals(&out.reports, setting);
            j["texts"] = serde_json::json!(a.texts);
            j["embeddings"] = serde_json::json!(embeddings);
            j["cosine_vs_plaintext"] = serde_json::json!(cos);
            j["methods"] = serde_json::json!(format!("{:?}", a.methods.methods()?));
            if a.json {
                println!("{j}");
            } else {
                print_table(&out.reports, setting);
                for (t, c) in a.texts.iter().zip(&cos) {
                    println!("{t:?}: cosine(secure, plaintext f64) = {c:.6}");
                }
                println!(
                    "online {:.3} s, {} rounds, {} online bytes, {} offline bytes",
                    j["online_s"].as_f64().unwrap_or(0.0),
                    j["rounds"],
                    j["online_bytes"],
                    j["offline_bytes"]
                );
            }
            Ok(())
        }
        Job::Generate(a) => {
            let tmp = tmp_path("json");
            let tmp_arg = tmp.0.to_string_lossy().to_string();
            let out = launch::launch(&net, words, p0_output(&tmp_arg), preprocessing, a.json)?;
            let text = std::fs::read_to_string(&tmp.0)
                .with_context(|| format!("reading P0's output {}", tmp.0.display()))?;
            let _ = std::fs::remove_file(&tmp.0);
            let g: generate::Generation = serde_json::from_str(&text)?;
            let loaded = generate::Loaded::open(a.model.as_deref())?;
            let median = |v: &[f64]| -> f64 {
                if v.is_empty() {
                    return 0.0;
                }
                let mut s = v.to_vec();
                s.sort_by(f64::total_cmp);
                s[s.len() / 2]
            };
            let decode_s: Vec<f64> = g.step_s.iter().skip(1).copied().collect();
            let decode_r: Vec<f64> = g.step_rounds.iter().skip(1).map(|&r| r as f64).collect();
            let mut j = totals(&out.reports, setting);
            j["prompt_ids"] = serde_json::json!(g.prompt_ids);
            j["generated_ids"] = serde_json::json!(g.generated_ids);
            j["text"] = loaded
                .decode(&g.generated_ids)
                .unwrap_or_else(|e| format!("(no text: {e})"))
                .into();
            j["prefill_s"] = g.step_s.first().copied().unwrap_or(0.0).into();
            j["decode_s_per_token"] = median(&decode_s).into();
            j["prefill_rounds"] = g.step_rounds.first().copied().unwrap_or(0).into();
            j["rounds_per_token"] = median(&decode_r).into();
            j["step_s"] = serde_json::json!(g.step_s);
            j["weights_mb"] = (g.weight_words as f64 * 8.0 / 1e6).into();
            j["cache_mb_per_component"] = (g.cache_words as f64 * 8.0 / 1e6).into();
            j["max_step_material_mb"] = (g.max_step_material_words as f64 * 8.0 / 1e6).into();
            j["methods"] = serde_json::json!(format!("{:?}", a.methods.methods()?));
            let peaks = peaks_mb(&out.reports);
            j["peak_mb"] = serde_json::json!(peaks);
            if a.check {
                let w = loaded.weights()?;
                let c = generate::check(&w, &g, 0.05)?;
                j["check_first_diff"] = serde_json::json!(c.first_diff);
                j["check_first_diff_above_margin"] = serde_json::json!(c.first_diff_above_margin);
                j["check_max_logit_err"] = c.steps.iter().map(|s| s.2).fold(0.0, f64::max).into();
                j["check_reference_ids"] =
                    serde_json::json!(c.steps.iter().map(|s| s.0).collect::<Vec<_>>());
                j["check_margins"] =
                    serde_json::json!(c.steps.iter().map(|s| s.1).collect::<Vec<_>>());
            }
            if a.json {
                println!("{j}");
            } else {
                print_table(&out.reports, setting);
                println!("prompt ({} tokens): {:?}", g.prompt_ids.len(), g.prompt_ids);
                println!(
                    "generated ({} tokens): {}",
                    g.generated_ids.len(),
                    j["text"]
                );
                println!("step | online s | rounds | bytes sent by P0");
                for (i, ((s, r), b)) in g
                    .step_s
                    .iter()
                    .zip(&g.step_rounds)
                    .zip(&g.step_bytes)
                    .enumerate()
                {
                    let name = if i == 0 {
                        "prefill".to_string()
                    } else {
                        format!("token {}", i + 1)
                    };
                    println!("{name:>8} | {s:>8.3} | {r:>6} | {b:>12}");
                }
                println!(
                    "prefill {:.3} s, decode {:.3} s per token (median), {} rounds per token; online {:.1} MB, offline {:.1} MB; weights {:.0} MB at P0 (W - B) and at P1 (W), P2 none; cache {:.2} MB per share component; largest step's material {:.1} MB; peak memory per party {:?} MB",
                    j["prefill_s"].as_f64().unwrap_or(0.0),
                    j["decode_s_per_token"].as_f64().unwrap_or(0.0),
                    j["rounds_per_token"],
                    j["online_bytes"].as_u64().unwrap_or(0) as f64 / 1e6,
                    j["offline_bytes"].as_u64().unwrap_or(0) as f64 / 1e6,
                    j["weights_mb"].as_f64().unwrap_or(0.0),
                    j["cache_mb_per_component"].as_f64().unwrap_or(0.0),
                    j["max_step_material_mb"].as_f64().unwrap_or(0.0),
                    peaks.iter().map(|v| v.round()).collect::<Vec<_>>(),
                );
                if a.check {
                    println!(
                        "check vs plaintext f64: first differing token {:?} (with the reference's top-2 margin > 0.05: {:?}); logits max abs error {:.3e}",
                        j["check_first_diff"], j["check_first_diff_above_margin"], j["check_max_logit_err"].as_f64().unwrap_or(0.0)
                    );
                }
            }
            Ok(())
        }
        Job::Classify(a) => {
            let tmp = tmp_path("json");
            let tmp_arg = tmp.0.to_string_lossy().to_string();
            let out = launch::launch(&net, words, p0_output(&tmp_arg), preprocessing, a.json)?;
            let text = std::fs::read_to_string(&tmp.0)
                .with_context(|| format!("reading P0's output {}", tmp.0.display()))?;
            let got: classify::ClassifyOutput = serde_json::from_str(&text)?;
            // The launcher's plaintext f64 reference (it has the files on this machine).
            let (model_dir, images_path) = a.paths()?;
            let w = tessera_protocols::resnet::ResNetWeights::load(&model_dir)?;
            let im = a.load_images(&images_path)?;
            let n = im.images.shape()[0];
            // With a trained head (its weights exist only as shares) there is no plaintext
            // reference here: `agree` and `plain_acc` come from `finetune`'s twin instead.
            let plain = if a.head.is_some() {
                got.classes.clone()
            } else {
                tessera_protocols::resnet::classify_plain(&w, &im.images)?
            };
            if got.classes.len() != n {
                anyhow::bail!("P0 reported {} classes for {n} images", got.classes.len());
            }
            let agree = got
                .classes
                .iter()
                .zip(&plain)
                .filter(|(a, b)| a == b)
                .count() as f64
                / n as f64;
            let mut j = totals(&out.reports, setting);
            j["op"] = "classify".into();
            j["model"] = model_dir.display().to_string().into();
            j["activation"] = match &w.config.activation {
                tessera_protocols::nn::Activation::Relu => "relu".to_string(),
                tessera_protocols::nn::Activation::Poly(c) => format!("poly{c:?}"),
            }
            .into();
            j["n"] = n.into();
            j["agree"] = agree.into();
            if let Some(labels) = &im.labels {
                let acc = |cl: &[usize]| {
                    cl.iter().zip(labels).filter(|(a, b)| a == b).count() as f64 / n as f64
                };
                j["secure_acc"] = acc(&got.classes).into();
                j["plain_acc"] = acc(&plain).into();
            }
            if let Some(dir) = &a.head {
                j["head"] = dir.display().to_string().into();
                j["agree"] = serde_json::Value::Null;
                j["plain_acc"] = serde_json::Value::Null;
            }
            let online = j["online_s"].as_f64().unwrap_or(0.0);
            j["batch"] = a.batch.into();
            j["batches"] = got.batch_s.len().into();
            j["online_s_per_image"] = (online / n as f64).into();
            j["online_s_per_batch"] = serde_json::json!(got.batch_s);
            j["online_bytes_per_image"] =
                (j["online_bytes"].as_u64().unwrap_or(0) as f64 / n as f64).into();
            j["offline_bytes_per_image"] =
                (j["offline_bytes"].as_u64().unwrap_or(0) as f64 / n as f64).into();
            j["rounds_per_batch"] = serde_json::json!(got.batch_rounds);
            j["peak_rss_mb"] = serde_json::json!(peaks_mb(&out.reports));
            if a.json {
                println!("{j}");
            } else {
                print_table(&out.reports, setting);
                println!(
                    "classify {} images ({}, batches of {}): agree {}, secure acc {}, plain acc {}; online {:.3} s ({:.4} s/image, {:.3} s/batch), {:.2} MB online/image, {:.1} MB offline/image, {} rounds/batch",
                    n,
                    j["activation"].as_str().unwrap_or(""),
                    a.batch,
                    if a.head.is_some() {
                        "- (a secret trained head: no plaintext reference)".to_string()
                    } else {
                        format!("{agree:.4}")
                    },
                    j["secure_acc"],
                    j["plain_acc"],
                    online,
                    online / n as f64,
                    got.batch_s.iter().sum::<f64>() / got.batch_s.len().max(1) as f64,
                    j["online_bytes_per_image"].as_f64().unwrap_or(0.0) / 1e6,
                    j["offline_bytes_per_image"].as_f64().unwrap_or(0.0) / 1e6,
                    got.batch_rounds.first().copied().unwrap_or(0),
                );
            }
            Ok(())
        }
        Job::Finetune(a) => {
            let tmp = tmp_path("json");
            let tmp_arg = tmp.0.to_string_lossy().to_string();
            let out = launch::launch(&net, words, p0_output(&tmp_arg), preprocessing, a.json)?;
            let text = std::fs::read_to_string(&tmp.0)
                .with_context(|| format!("reading P0's output {}", tmp.0.display()))?;
            let got: finetune::FinetuneOutput = serde_json::from_str(&text)?;
            // The plaintext twin, run here (the launcher has the files on this machine).
            let data = a.load_data()?;
            let twin = finetune::twin(a, &data, cfg.frac_bits)?;
            let sgd = a.sgd()?;
            let n_test = data.test_labels.len();
            let n_train = data.train_labels.len();
            if got.classes.len() != n_test || got.losses.len() != sgd.epochs {
                anyhow::bail!(
                    "P0 reported {} classes for {n_test} test examples and {} losses for {} epochs",
                    got.classes.len(),
                    got.losses.len(),
                    sgd.epochs
                );
            }
            let acc = |cl: &[usize]| {
                cl.iter()
                    .zip(&data.test_labels)
                    .filter(|(a, b)| a == b)
                    .count() as f64
                    / n_test as f64
            };
            let agree = got
                .classes
                .iter()
                .zip(&twin.classes)
                .filter(|(a, b)| a == b)
                .count() as f64
                / n_test as f64;
            // Per phase: P0's online seconds and rounds, bytes sent by all parties.
            let phase = |name: &str| -> (f64, u64, u64) {
                let get = |r: &PartyReport, k: &str| {
                    r.extra
                        .as_ref()
                        .map_or(serde_json::Value::Null, |e| e[name][k].clone())
                };
                let p0 = out.reports.iter().find(|r| r.id == 0);
                (
                    p0.and_then(|r| get(r, "online_s").as_f64()).unwrap_or(0.0),
                    p0.and_then(|r| get(r, "rounds").as_u64()).unwrap_or(0),
                    out.reports
                        .iter()
                        .filter_map(|r| get(r, "sent").as_u64())
                        .sum(),
                )
            };
            let (bb_s, bb_r, bb_b) = phase("backbone");
            let (tr_s, tr_r, tr_b) = phase("train");
            let (te_s, te_r, te_b) = phase("test");
            let n_all = (n_train + n_test) as f64;
            let trained = (n_train * sgd.epochs) as f64;
            let mut j = totals(&out.reports, setting);
            j["op"] = "finetune".into();
            j["task"] = match a.source()? {
                finetune::Source::Images { backbone, .. } => {
                    format!("images:{}", backbone.display())
                }
                finetune::Source::Text { backbone, .. } => format!("text:{}", backbone.display()),
                finetune::Source::Synthetic { n, d, c } => format!("synthetic:{n}x{d}x{c}"),
            }
            .into();
            j["n_train"] = n_train.into();
            j["n_test"] = n_test.into();
            j["classes"] = data.classes.into();
            j["hidden"] = serde_json::json!(a.hidden);
            j["epochs"] = sgd.epochs.into();
            j["lr"] = sgd.lr.into();
            j["momentum"] = sgd.momentum.into();
            j["batch"] = sgd.batch.into();
            j["seed"] = sgd.seed.into();
            j["secure_test_acc"] = acc(&got.classes).into();
            j["test_classes"] = serde_json::json!(got.classes);
            j["plain_test_acc"] = acc(&twin.classes).into();
            j["agree"] = agree.into();
            j["losses"] = serde_json::json!(got.losses);
            j["plain_losses"] = serde_json::json!(twin.losses);
            j["backbone_s"] = bb_s.into();
            j["backbone_rounds"] = bb_r.into();
            j["backbone_bytes"] = bb_b.into();
            j["backbone_examples_per_s"] = (if bb_s > 0.0 { n_all / bb_s } else { 0.0 }).into();
            j["backbone_bytes_per_example"] = (bb_b as f64 / n_all).into();
            j["train_s"] = tr_s.into();
            j["train_rounds"] = tr_r.into();
            j["train_bytes"] = tr_b.into();
            j["epoch_s"] = (tr_s / sgd.epochs as f64).into();
            j["train_examples_per_s"] = (if tr_s > 0.0 { trained / tr_s } else { 0.0 }).into();
            j["train_bytes_per_example"] = (tr_b as f64 / trained).into();
            j["test_s"] = te_s.into();
            j["test_rounds"] = te_r.into();
            j["test_bytes"] = te_b.into();
            j["plain_features_s"] = twin.features_s.into();
            j["peak_rss_mb"] = serde_json::json!(peaks_mb(&out.reports));
            if a.json {
                println!("{j}");
            } else {
                print_table(&out.reports, setting);
                println!("epoch | secure loss | twin loss");
                for (e, (s, t)) in got.losses.iter().zip(&twin.losses).enumerate() {
                    println!("{:>5} | {s:>11.5} | {t:>9.5}", e + 1);
                }
                println!(
                    "finetune {} ({n_train} train, {n_test} test, {} classes, {} epochs, lr {}, momentum {}, batch {}): secure test acc {:.4}, plaintext twin {:.4}, agree {:.4}",
                    j["task"].as_str().unwrap_or(""),
                    data.classes,
                    sgd.epochs,
                    sgd.lr,
                    sgd.momentum,
                    sgd.batch,
                    acc(&got.classes),
                    acc(&twin.classes),
                    agree
                );
                println!(
                    "backbone: {bb_s:.3} s, {:.1} examples/s, {:.2} MB/example, {bb_r} rounds; head training: {tr_s:.3} s ({:.3} s/epoch), {:.0} examples/s, {:.1} KB/example, {tr_r} rounds; test: {te_s:.3} s, {te_r} rounds, {:.2} MB",
                    n_all / bb_s.max(1e-9),
                    bb_b as f64 / n_all / 1e6,
                    tr_s / sgd.epochs as f64,
                    trained / tr_s.max(1e-9),
                    tr_b as f64 / trained / 1e3,
                    te_b as f64 / 1e6,
                );
            }
            Ok(())
        }
        Job::Bench(b) if b.op == "resnet" => {
            let tmp = tmp_path("bin");
            let tmp_arg = tmp.0.to_string_lossy().to_string();
            let out = launch::launch(&net, words, p0_output(&tmp_arg), preprocessing, b.json)?;
            let got = read_f64(&tmp.0)?;
            let cfg = b.resnet.config()?;
            let w = b.resnet.weights()?;
            let want = w.forward_plain(&b.resnet.input(&cfg)?)?;
            let (max_abs_err, mean_abs_err) = ops::errors(&got, want.data());
            let mut j = totals(&out.reports, setting);
            j["op"] = "resnet".into();
            j["depth"] = b.resnet.depth.into();
            j["activation"] = b.resnet.act.clone().into();
            j["images"] = b.resnet.images.into();
            j["shape"] = serde_json::json!([cfg.image_size.0, cfg.image_size.1, cfg.in_channels]);
            j["relu_step_elems"] = b.resnet.relu_step_elems.into();
            j["max_activation_input"] = w.max_activation_input(&b.resnet.input(&cfg)?)?.into();
            j["max_abs_err"] = max_abs_err.into();
            j["mean_abs_err"] = mean_abs_err.into();
            let got_t = tessera::Tensor::from_vec(want.shape(), got)?;
            j["top1_agree"] = (tessera_protocols::nn::act::argmax_plain(&got_t)
                == tessera_protocols::nn::act::argmax_plain(&want))
            .into();
            j["max_abs_logit"] = want.data().iter().fold(0f64, |a, b| a.max(b.abs())).into();
            j["breakdown_p0"] = out.reports[0].extra.clone().unwrap_or_default();
            j["peak_rss_mb"] = serde_json::json!(peaks_mb(&out.reports));
            if b.json {
                println!("{j}");
            } else {
                print_table(&out.reports, setting);
                print_breakdown(&j, "p0");
                println!(
                    "resnet-{} ({}, {} image(s) {}x{}x{}): online {:.3} s, {} rounds, {:.1} MB online, {:.1} MB offline; peak memory per party {:?} MB; logits max |err| vs plaintext f64 {:.2e} (max |logit| {:.2})",
                    b.resnet.depth, b.resnet.act, b.resnet.images, cfg.image_size.0, cfg.image_size.1, cfg.in_channels,
                    j["online_s"].as_f64().unwrap_or(0.0), j["rounds"],
                    j["online_bytes"].as_u64().unwrap_or(0) as f64 / 1e6, j["offline_bytes"].as_u64().unwrap_or(0) as f64 / 1e6,
                    j["peak_rss_mb"], max_abs_err, j["max_abs_logit"].as_f64().unwrap_or(0.0)
                );
            }
            Ok(())
        }
        Job::Bench(b) if b.op == "llama" => {
            let tmp = tmp_path("bin");
            let tmp_arg = tmp.0.to_string_lossy().to_string();
            let out = launch::launch(&net, words, p0_output(&tmp_arg), preprocessing, b.json)?;
            let got = read_f64(&tmp.0)?;
            let want = generate::bench_llama_reference(&b.bert)?;
            let (max_abs_err, mean_abs_err) = ops::errors(&got, want.data());
            let (c, decode, seq, cache) = generate::llama_shape(&b.bert)?;
            let mut j = totals(&out.reports, setting);
            j["op"] = "llama".into();
            j["shape"] = serde_json::json!({"layers": c.layers, "hidden": c.hidden, "heads": c.heads, "kv_heads": c.kv_heads, "ffn": c.ffn, "phase": if decode {"decode"} else {"prefill"}, "seq": seq, "cache": cache, "step_elems": b.bert.step_elems});
            j["methods"] = serde_json::json!(format!("{:?}", b.methods.methods()?));
            j["max_abs_err"] = max_abs_err.into();
            j["mean_abs_err"] = mean_abs_err.into();
            let layers = c.layers.max(1) as f64;
            j["online_s_per_layer"] = (j["online_s"].as_f64().unwrap_or(0.0) / layers).into();
            j["rounds_per_layer"] = (j["rounds"].as_u64().unwrap_or(0) as f64 / layers).into();
            j["online_bytes_per_layer"] =
                (j["online_bytes"].as_u64().unwrap_or(0) as f64 / layers).into();
            j["offline_bytes_per_layer"] =
                (j["offline_bytes"].as_u64().unwrap_or(0) as f64 / layers).into();
            j["breakdown_p0"] = out.reports[0].extra.clone().unwrap_or_default();
            j["breakdown_p1"] = out.reports[1].extra.clone().unwrap_or_default();
            j["peak_rss_mb_max"] = (out
                .reports
                .iter()
                .filter_map(|r| r.peak_rss_bytes)
                .max()
                .unwrap_or(0) as f64
                / 1e6)
                .into();
            if b.json {
                println!("{j}");
            } else {
                print_table(&out.reports, setting);
                println!(
                    "llama {} layers ({}): online {:.3} s ({:.4} s/layer), {} rounds, {:.2} MB online, {:.1} MB offline; max |err| vs plaintext f64 {:.2e}",
                    c.layers, j["shape"]["phase"], j["online_s"].as_f64().unwrap_or(0.0), j["online_s_per_layer"].as_f64().unwrap_or(0.0), j["rounds"],
                    j["online_bytes"].as_u64().unwrap_or(0) as f64 / 1e6, j["offline_bytes"].as_u64().unwrap_or(0) as f64 / 1e6, max_abs_err
                );
            }
            Ok(())
        }
        Job::Bench(b) if b.op == "bert" => {
            let tmp = tmp_path("bin");
            let tmp_arg = tmp.0.to_string_lossy().to_string();
            let out = launch::launch(&net, words, p0_output(&tmp_arg), preprocessing, b.json)?;
            let got = read_f64(&tmp.0)?;
            let want = infer::bench_bert_reference(&b.bert)?;
            let (max_abs_err, mean_abs_err) = ops::errors(&got, want.data());
            let mut j = totals(&out.reports, setting);
            j["op"] = "bert".into();
            let c = b.bert.config()?;
            j["shape"] = serde_json::json!({"layers": c.layers, "hidden": c.hidden, "heads": c.heads, "ffn": c.intermediate, "seq": b.bert.seq(), "step_elems": b.bert.step_elems});
            j["methods"] = serde_json::json!(format!("{:?}", b.methods.methods()?));
            j["max_abs_err"] = max_abs_err.into();
            j["mean_abs_err"] = mean_abs_err.into();
            let layers = b.bert.layers().max(1) as f64;
            j["online_s_per_layer"] = (j["online_s"].as_f64().unwrap_or(0.0) / layers).into();
            j["online_bytes_per_layer"] =
                (j["online_bytes"].as_u64().unwrap_or(0) as f64 / layers).into();
            j["offline_bytes_per_layer"] =
                (j["offline_bytes"].as_u64().unwrap_or(0) as f64 / layers).into();
            j["breakdown_p0"] = out.reports[0].extra.clone().unwrap_or_default();
            j["breakdown_p1"] = out.reports[1].extra.clone().unwrap_or_default();
            j["peak_rss_mb_max"] = (out
                .reports
                .iter()
                .filter_map(|r| r.peak_rss_bytes)
                .max()
                .unwrap_or(0) as f64
                / 1e6)
                .into();
            if b.json {
                println!("{j}");
            } else {
                print_table(&out.reports, setting);
                print_breakdown(&j, "p0");
                print_breakdown(&j, "p1");
                println!(
                    "peak memory of the largest party: {:.0} MB",
                    j["peak_rss_mb_max"].as_f64().unwrap_or(0.0)
                );
                println!(
                    "bert {} layers: online {:.3} s ({:.3} s/layer), {} rounds, {:.1} MB online, {:.1} MB offline; max |err| vs plaintext f64 {:.2e}, mean {:.2e}",
                    b.bert.layers(), j["online_s"].as_f64().unwrap_or(0.0), j["online_s_per_layer"].as_f64().unwrap_or(0.0), j["rounds"],
                    j["online_bytes"].as_u64().unwrap_or(0) as f64 / 1e6, j["offline_bytes"].as_u64().unwrap_or(0) as f64 / 1e6, max_abs_err, mean_abs_err
                );
            }
            Ok(())
        }
        // Network calibration ops (harness): no output to check against a reference.
        Job::Bench(b) if netops::handles(&b.op) => {
            let out = launch::launch(&net, words, |_| vec![], preprocessing, b.json)?;
            let mut j = totals(&out.reports, setting);
            j["relay_dropped"] = net.dropped().into();
            j["op"] = b.op.clone().into();
            j["shape"] = serde_json::json!(b.shape.0);
            j["max_abs_err"] = 0.0.into();
            j["mean_abs_err"] = 0.0.into();
            if b.json {
                println!("{j}");
            } else {
                print_table(&out.reports, setting);
                println!("{}", netops::summary(&j));
            }
            Ok(())
        }
        Job::Bench(b) => {
            let seed: u64 = rand::random::<u32>() as u64;
            let tmp = tmp_path("bin");
            let tmp_arg = tmp.0.clone();
            let extra = move |id: usize| {
                let mut v = vec!["--seed".to_string(), seed.to_string()];
                if id == 0 {
                    v.push("--output".into());
                    v.push(tmp_arg.to_string_lossy().to_string());
                }
                v
            };
            let out = launch::launch(&net, words, extra, preprocessing, b.json)?;
            let mut spec = b.spec();
            spec.seed = seed;
            let got = read_f64(&tmp.0)?;
            let want = spec.reference(&spec.inputs()?, cfg.frac_bits)?;
            if got.len() != want.len() {
                anyhow::bail!(
                    "P0's output has {} values, the reference {}",
                    got.len(),
                    want.len()
                );
            }
            let (max_abs_err, mean_abs_err) = ops::errors(&got, want.data());
            let mut j = totals(&out.reports, setting);
            j["op"] = b.op.clone().into();
            j["shape"] = serde_json::json!(b.shape.0);
            j["max_abs_err"] = max_abs_err.into();
            j["mean_abs_err"] = mean_abs_err.into();
            if spec.relative() {
                j["max_rel_err"] = ops::max_rel_error(&got, want.data(), 0.0).into();
                // The same with one ulp of output rounding allowed: at f = 16 an output of
                // 1e-4 is only 6.5 ulp, so a relative bound cannot hold below ~1.5e-2.
                let ulp = 1.0 / (1u64 << cfg.frac_bits) as f64;
                j["max_rel_err_beyond_1ulp"] = ops::max_rel_error(&got, want.data(), ulp).into();
            }
            if let Some(m) = &b.method {
                j["method"] = m.clone().into();
            }
            if b.json {
                println!("{j}");
            } else {
                print_table(&out.reports, setting);
                println!(
                    "{} {} {:?}: online {:.4} s, {} rounds, {} online bytes, {} offline bytes; max |err| {:.2e}, mean {:.2e}",
                    setting, b.op, b.shape.0, j["online_s"].as_f64().unwrap_or(0.0), j["rounds"], j["online_bytes"], j["offline_bytes"], max_abs_err, mean_abs_err
                );
            }
            Ok(())
        }
    }
}

/// Extra job words per party: `--output FILE` for P0 only (where it writes the revealed result).
fn p0_output(path: &str) -> impl Fn(usize) -> Vec<String> + '_ {
    move |id| {
        if id == 0 {
            vec!["--output".into(), path.to_string()]
        } else {
            vec![]
        }
    }
}

fn read_f64(path: &std::path::Path) -> Result<Vec<f64>> {
    let bytes =
        std::fs::read(path).with_context(|| format!("reading P0's output {}", path.display()))?;
    let _ = std::fs::remove_file(path);
    Ok(bytes
        .chunks_exact(8)
        .map(|c| f64::from_le_bytes(c.try_into().expect("8 bytes")))
        .collect())
}

/// Each party's peak resident memory in MB (0 where unknown).
fn peaks_mb(reports: &[PartyReport]) -> Vec<f64> {
    reports
        .iter()
        .map(|r| r.peak_rss_bytes.unwrap_or(0) as f64 / 1e6)
        .collect()
}

/// Prints a bench's per-op breakdown of party `who` ("p0", "p1") from its JSON record
/// (`breakdown_<who>`), if it has one.
fn print_breakdown(j: &serde_json::Value, who: &str) {
    let Some(items) = j[format!("breakdown_{who}")]["breakdown"].as_array() else {
        return;
    };
    println!(
        "per-op breakdown ({}): op | seconds | rounds | bytes sent by it",
        who.to_uppercase()
    );
    for it in items {
        println!(
            "  {:<10} | {:>8.3} | {:>6} | {:>12}",
            it[0].as_str().unwrap_or(""),
            it[1].as_f64().unwrap_or(0.0),
            it[2],
            it[3]
        );
    }
}

fn print_table(reports: &[PartyReport], setting: tessera::Setting) {
    println!("party | online s | rounds | online sent B | online recv B | offline sent B | offline recv B | peak MB");
    for r in reports {
        let name = if Some(r.id) == setting.dealer() {
            "D".to_string()
        } else {
            format!("P{}", r.id)
        };
        println!(
            "{name:>5} | {:>8.4} | {:>6} | {:>13} | {:>13} | {:>14} | {:>14} | {:>7}",
            r.online_s,
            r.stats.rounds,
            r.stats.online_sent,
            r.stats.online_recv,
            r.stats.offline_sent,
            r.stats.offline_recv,
            r.peak_rss_bytes
                .map_or("-".to_string(), |b| format!("{:.0}", b as f64 / 1e6))
        );
    }
}
