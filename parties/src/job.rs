//! Jobs: what every party process of a session runs (`bench OP`, `demo`), and the report
//! each party prints for the launcher.

use crate::ops::{self, OpSpec};
use anyhow::{bail, Context, Result};
use clap::{Args, Parser};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;
use tessera::config::Config;
use tessera::identity::Identity;
use tessera::net::quic::QuicTransport;
use tessera::net::{Transport, TransportStats};
use tessera::{CommStats, FixedPoint, MaterialMode, Party, SessionOptions, Setting};

/// The prefix of the one machine-readable line a party prints for the launcher.
pub const RESULT_PREFIX: &str = "@@tessera-result ";

/// Prefix of the line a launched party prints (on stderr) when it fails: a JSON
/// [`FailureLine`] naming the party it blames, so the launcher can name a cascade's origin.
pub const FAILURE_PREFIX: &str = "@@tessera-failed ";

/// What a failed party tells the launcher.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct FailureLine {
    /// The party that failed (the one printing this).
    pub id: usize,
    /// The party whose failure it blames (itself for a local error).
    pub origin: usize,
    /// Its error text.
    pub error: String,
}

/// The party an error of party `me` blames: the first peer named by a transport error in
/// the chain (a lost or silent peer, a malformed message, the origin of an abort), else
/// `me` itself.
pub fn origin_of(e: &anyhow::Error, me: usize) -> usize {
    e.chain()
        .filter_map(|c| c.downcast_ref::<tessera::Error>())
        .find_map(tessera::Error::origin)
        .unwrap_or(me)
}

/// A job, parsed from the words after `--`.
#[derive(Parser, Debug, Clone)]
#[command(name = "JOB", no_binary_name = true)]
pub enum Job {
    /// Measure one op: inputs already shared, output stays shared.
    Bench(BenchArgs),
    /// The main job: private inference with the built-in BERT, checked against plaintext.
    Demo(crate::infer::DemoArgs),
    /// Sentence embeddings of a real BERT-family model (e.g. all-MiniLM-L6-v2).
    Infer(crate::infer::InferArgs),
    /// Private text generation with a Llama-family decoder (e.g. SmolLM2-135M-Instruct).
    Generate(crate::generate::GenerateArgs),
    /// Private image classification with a ResNet-style CNN (e.g. the digits task).
    Classify(crate::classify::ClassifyArgs),
    /// Private fine-tuning: a head trained on a secret backbone's features of secret
    /// labelled examples (e.g. the digits or text task).
    Finetune(crate::finetune::FinetuneArgs),
}

/// `bench OP --shape DIMS [--json]`.
#[derive(Args, Debug, Clone)]
pub struct BenchArgs {
    /// The op: mul, matmul, trunc, gelu, silu, softmax, layernorm, rmsnorm, reciprocal,
    /// rsqrt, exp; bert or llama (model layers); resnet (a whole CNN); rtt, throughput
    /// (network).
    pub op: String,
    /// Shape: DIMS as 128x768 or 128,768 (matmul: M,K,N).
    #[arg(long, value_parser = parse_shape, default_value = "1000")]
    pub shape: Shape,
    /// Print one JSON line instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Inputs uniform in LO,HI (default: the op's documented range).
    #[arg(long, value_parser = parse_range, allow_hyphen_values = true)]
    pub range: Option<(f64, f64)>,
    /// Input seed (the launcher picks one).
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// P0 writes the revealed output (f64 little-endian) here, for the launcher.
    #[arg(long)]
    pub output: Option<PathBuf>,
    /// Run the op this many times in the session; online_s is the mean per run.
    #[arg(long, default_value_t = 1)]
    pub repeat: usize,
    /// Deal material live during the online phase instead of streaming it beforehand.
    #[arg(long)]
    pub live: bool,
    /// Approximation method of a nonlinear op (gelu, softmax, layernorm, reciprocal, rsqrt, exp).
    #[arg(long)]
    pub method: Option<String>,
    /// Model shape (for `bench bert` and `bench llama`).
    #[command(flatten)]
    pub bert: crate::infer::BertShape,
    /// Methods for `bench bert` and `bench llama`.
    #[command(flatten)]
    pub methods: crate::infer::MethodArgs,
    /// Model for `bench resnet`.
    #[command(flatten)]
    pub resnet: crate::classify::ResNetBenchArgs,
}

/// A shape given on the command line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Shape(pub Vec<usize>);

fn parse_shape(s: &str) -> Result<Shape, String> {
    s.split(['x', ','])
        .map(|d| {
            d.trim()
                .parse::<usize>()
                .map_err(|e| format!("bad dimension {d:?} in {s:?}: {e}"))
        })
        .collect::<Result<Vec<_>, _>>()
        .map(Shape)
}

fn parse_range(s: &str) -> Result<(f64, f64), String> {
    let (a, b) = s
        .split_once(',')
        .ok_or_else(|| format!("range {s:?} must be LO,HI"))?;
    let p = |x: &str| {
        x.trim()
            .parse::<f64>()
            .map_err(|e| format!("bad number {x:?}: {e}"))
    };
    Ok((p(a)?, p(b)?))
}

impl Job {
    /// Parses the words after `--`.
    pub fn parse(words: &[String]) -> Result<Job> {
        Job::try_parse_from(words).map_err(|e| anyhow::anyhow!("{e}"))
    }
}

impl BenchArgs {
    /// The op spec of these arguments.
    pub fn spec(&self) -> OpSpec {
        OpSpec {
            op: self.op.clone(),
            shape: self.shape.0.clone(),
            range: self.range,
            seed: self.seed,
            method: self.method.clone(),
        }
    }
}

/// What one party reports after a job.
#[derive(serde::Serialize, serde::Deserialize, Debug, Clone, Default)]
pub struct PartyReport {
    /// Party id.
    pub id: usize,
    /// Seconds to connect to all peers.
    pub connect_s: f64,
    /// Seconds of session setup including the planned offline phase.
    pub offline_s: f64,
    /// Seconds of the measured online part.
    pub online_s: f64,
    /// Counters of the measured part (offline counters: the whole session).
    pub stats: CommStats,
    /// Transport counters of the whole session.
    pub transport: TransportStats,
    /// Errors measured by P0 when it checked the result itself (demo).
    pub max_abs_err: Option<f64>,
    /// Job-specific details (e.g. the per-op breakdown of `bench bert`).
    pub extra: Option<serde_json::Value>,
    /// Peak resident memory of this party's process in bytes (Linux VmHWM), if known.
    pub peak_rss_bytes: Option<u64>,
}

/// Peak resident set size of this process (Linux: VmHWM in /proc/self/status).
pub fn peak_rss_bytes() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = s.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// Runs `job` as party `id` of the session in `config`, over QUIC.
pub fn run_party(
    config: &Config,
    id: usize,
    job: &Job,
    preprocessing: Option<PathBuf>,
) -> Result<PartyReport> {
    let identity = Identity::load(config, id)?;
    let t = Instant::now();
    let net = QuicTransport::connect(config, id, identity)?;
    let connect_s = t.elapsed().as_secs_f64();
    tracing::info!(party = id, secs = connect_s, "connected to all peers");
    let net: Arc<dyn Transport> = Arc::new(net);
    crate::control::register(&net);
    let fixed = FixedPoint::new(config.frac_bits)?;
    let result = (|| -> Result<PartyReport> {
        Ok(match job {
            Job::Bench(b) if crate::netops::handles(&b.op) => crate::netops::run(net.clone(), b)?,
            Job::Bench(b) => run_bench(config.setting, net.clone(), fixed, b, preprocessing)?,
            Job::Demo(d) => crate::infer::run_demo(config.setting, net.clone(), fixed, d)?,
            Job::Infer(a) => crate::infer::run_infer(config.setting, net.clone(), fixed, a)?,
            Job::Generate(a) => {
                crate::generate::run_generate(config.setting, net.clone(), fixed, a)?
            }
            Job::Classify(a) => {
                crate::classify::run_classify(config.setting, net.clone(), fixed, a)?
            }
            Job::Finetune(a) => {
                crate::finetune::run_finetune(config.setting, net.clone(), fixed, a)?
            }
        })
    })();
    crate::control::unregister();
    let mut report = match result {
        Ok(r) => r,
        Err(e) => {
            // Tell the peers why, so their errors name the party that really failed.
            net.abort(origin_of(&e, id), &format!("{e:#}"));
            return Err(e);
        }
    };
    report.id = id;
    report.connect_s = connect_s;
    report.transport = net.stats();
    report.peak_rss_bytes = peak_rss_bytes();
    Ok(report)
}

fn run_bench(
    setting: Setting,
    net: Arc<dyn Transport>,
    fixed: FixedPoint,
    b: &BenchArgs,
    preprocessing: Option<PathBuf>,
) -> Result<PartyReport> {
    if b.op == "llama" {
        let methods = b.methods.methods()?;
        let (mut r, extra) = crate::generate::run_bench_llama(
            setting,
            net,
            fixed,
            &b.bert,
            methods,
            b.output.as_deref(),
        )?;
        r.extra = Some(serde_json::to_value(extra)?);
        return Ok(r);
    }
    if b.op == "resnet" {
        return crate::classify::run_bench_resnet(
            setting,
            net,
            fixed,
            &b.resnet,
            b.output.as_deref(),
        );
    }
    if b.op == "bert" {
        let methods = b.methods.methods()?;
        let (mut r, extra) = crate::infer::run_bench_bert(
            setting,
            net,
            fixed,
            &b.bert,
            methods,
            b.output.as_deref(),
        )?;
        r.extra = Some(serde_json::to_value(extra)?);
        return Ok(r);
    }
    let spec = b.spec();
    spec.validate()?;
    let f = fixed.frac_bits();
    let repeat = b.repeat.max(1);
    let material = match preprocessing {
        Some(dir) => MaterialMode::Files(dir),
        None if b.live => MaterialMode::Live,
        None => MaterialMode::Planned(job_demand(&Job::Bench(b.clone()), setting, f)?),
    };
    let id = net.id();
    let live = matches!(material, MaterialMode::Live);
    let t = Instant::now();
    let mut p = Party::setup(
        setting,
        net,
        SessionOptions {
            fixed,
            material,
            ..Default::default()
        },
    )?;
    let offline_s = t.elapsed().as_secs_f64();
    let offline = p.stats();
    if !p.is_compute() {
        if live {
            p.serve_dealer()?;
        }
        return Ok(PartyReport {
            offline_s,
            stats: p.stats(),
            ..Default::default()
        });
    }
    let inputs = spec.inputs()?;
    let mut shared = Vec::with_capacity(inputs.len());
    for (i, input) in inputs.iter().enumerate() {
        let enc = if id == input.owner {
            Some(ops::encode_input(&spec, i, input, f)?)
        } else {
            None
        };
        shared.push(p.share_input(input.owner, enc.as_ref(), input.value.shape())?);
    }
    p.sync()?;
    let before = p.stats();
    let t = Instant::now();
    let mut out = spec.run(&mut p, &shared)?;
    for _ in 1..repeat {
        out = spec.run(&mut p, &shared)?;
    }
    let online_s = t.elapsed().as_secs_f64() / repeat as f64;
    let mut stats = p.stats().since(&before);
    stats.offline_sent = offline.offline_sent;
    stats.offline_recv = offline.offline_recv;
    // Not measured: reveal the output to P0 so the result can be checked.
    let revealed = p.reveal_to(0, &out)?;
    let mut max_abs_err = None;
    if let Some(y) = revealed {
        let y = fixed.decode_tensor(&y);
        match &b.output {
            Some(path) => {
                let bytes: Vec<u8> = y.data().iter().flat_map(|v| v.to_le_bytes()).collect();
                std::fs::write(path, bytes)
                    .with_context(|| format!("writing {}", path.display()))?;
            }
            None => {
                let want = spec.reference(&inputs, f)?;
                max_abs_err = Some(ops::errors(y.data(), want.data()).0);
            }
        }
    }
    p.finish()?;
    Ok(PartyReport {
        offline_s,
        online_s,
        stats,
        max_abs_err,
        ..Default::default()
    })
}

/// The dealer words a job needs, for `tessera dealer`.
pub fn job_demand(job: &Job, setting: Setting, frac_bits: u32) -> Result<tessera::preproc::Demand> {
    match job {
        Job::Bench(b) if b.op == "bert" || b.op == "llama" || b.op == "resnet" => bail!("`bench {}` streams its material from the dealer; offline files are for the single-op benches", b.op),
        Job::Bench(b) => {
            let spec = b.spec();
            spec.validate()?;
            let one = spec.demand(setting, frac_bits)?;
            let mut d = tessera::preproc::Demand::default();
            for _ in 0..b.repeat.max(1) {
                d.extend(one.clone());
            }
            Ok(d)
        }
        Job::Demo(_) | Job::Infer(_) | Job::Generate(_) | Job::Classify(_) | Job::Finetune(_) => bail!("inference and training jobs stream their material from the dealer; offline files are for `bench` jobs"),
    }
}
