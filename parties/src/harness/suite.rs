//! `tessera bench suite`: a sweep of ops x settings x profiles.
//!
//! Every run of a measurement is a fresh `tessera launch --config C --profile P -- bench
//! OP --shape S --json` child process (so it starts every party as its own process, with
//! its own relays, exactly as a user's `launch` would); `--warmup` runs are discarded and
//! `--repeat` runs give the median, min and max. A progress bar counts the runs.
//!
//! # Cost model
//!
//! For each measurement under an emulated profile the suite prints
//!
//! ```text
//! predicted = compute + rounds x RTT / 2 + max_party_bytes / bandwidth
//! ```
//!
//! A round is one dependent message: in an exchange every party sends, then waits for
//! its peers' messages, which were sent at the same moment, so each round costs one
//! one-way delay (RTT / 2), not a round trip. (Until stop 29 the model charged a full RTT;
//! it fitted because a barrier skew inflated the measurement by about the same amount:
//! the last party to reach each staged-dealing barrier started its next step one delay
//! early. `Party::sync` now releases the parties together.)
//!
//! where `compute` is the median online time of the *same* op, shape, method and setting
//! measured under the `none` profile (raw loopback) in the same sweep. That baseline is
//! local compute plus loopback communication, which is fast (GB/s, ~0.1 ms per round);
//! it is measured rather than derived by subtracting the model's own communication terms
//! from the emulated time, because the subtraction would make the prediction equal the
//! measurement by construction and hide exactly the deviations the model is for. The
//! suite therefore adds `none` to the sweep unless `--no-baseline` (then no prediction).
//! `max_party_bytes` is the online bytes sent by the busiest party: each link direction
//! has the profile's bandwidth, so a party that sends B bytes needs at least B / bandwidth
//! (a lower bound when it sends to two peers at once, an upper bound on that term when
//! its peers send the same amount back concurrently, which they do). A measured time well
//! above the prediction means congestion-control losses, a transport that does not
//! overlap sends and receives, or rounds the counters do not see.

use super::profile::Profile;
use super::report::{self, Record};
use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// Arguments of `tessera bench suite`.
#[derive(clap::Args, Debug, Clone)]
pub struct SuiteArgs {
    /// Profiles to sweep: names (configs/profiles/NAME.toml) or files, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "lan,wan")]
    pub profile: Vec<String>,
    /// Settings: 2pc, 3pc or both.
    #[arg(long, default_value = "both")]
    pub setting: String,
    /// Ops, comma-separated, each optionally with `:key=value` arguments passed to
    /// `bench` as `--key value` (`shape` sets the op's shape, `method` its method):
    /// e.g. `mul,matmul:shape=64x768x768,gelu:method=spline`. Default: mul, matmul,
    /// trunc and every other op `bench` knows.
    #[arg(long, value_delimiter = ',')]
    pub ops: Vec<String>,
    /// Shape for ops without a `:shape=` (use `x` between dimensions, e.g. 128x768).
    /// Default: matmul 128x768x768, others 128x768.
    #[arg(long)]
    pub shape: Option<String>,
    /// Timed runs per measurement.
    #[arg(long, default_value_t = 3)]
    pub repeat: usize,
    /// Discarded runs before the timed ones.
    #[arg(long, default_value_t = 1)]
    pub warmup: usize,
    /// JSON-lines results; the Markdown table and the SVG plot go beside it (.md, .svg).
    #[arg(long, default_value = "target/harness/results.jsonl")]
    pub out: PathBuf,
    /// Session config of the 2pc runs.
    #[arg(long, default_value = "configs/local-2pc.toml")]
    pub config_2pc: PathBuf,
    /// Session config of the 3pc runs.
    #[arg(long, default_value = "configs/local-3pc.toml")]
    pub config_3pc: PathBuf,
    /// Do not add the `none` baseline the cost model needs (no predictions then).
    #[arg(long)]
    pub no_baseline: bool,
}

/// One op of the sweep with its `bench` arguments.
#[derive(Clone, Debug, PartialEq)]
pub struct OpChoice {
    /// Op name.
    pub op: String,
    /// Shape (`x`-separated).
    pub shape: String,
    /// `--method`, if given.
    pub method: Option<String>,
    /// Other `key=value` arguments.
    pub args: Vec<(String, String)>,
}

/// Default shape of an op when neither `:shape=` nor `--shape` is given.
pub fn default_shape(op: &str) -> &'static str {
    match op {
        "matmul" => "128x768x768",
        "rtt" => "64",
        "throughput" => "10000000",
        // `bench bert` takes its shape from --layers/--hidden/--heads/--ffn/--seq (BERT-base
        // by default); the record names it.
        "bert" => "bert-base",
        _ => "128x768",
    }
}

/// Parses `op[:key=value]...`.
pub fn parse_op(s: &str, shape: Option<&str>) -> Result<OpChoice> {
    let mut parts = s.split(':');
    let op = parts.next().unwrap_or_default().trim().to_string();
    if op.is_empty() {
        bail!("--ops: empty op name in {s:?}");
    }
    let mut c = OpChoice {
        shape: shape.unwrap_or(default_shape(&op)).to_string(),
        op,
        method: None,
        args: Vec::new(),
    };
    for kv in parts {
        let (k, v) = kv
            .split_once('=')
            .ok_or_else(|| anyhow::anyhow!("--ops {s:?}: {kv:?} is not key=value"))?;
        match k {
            "shape" => c.shape = v.to_string(),
            "method" => c.method = Some(v.to_string()),
            _ => c.args.push((k.to_string(), v.to_string())),
        }
    }
    Ok(c)
}

/// The default op list: mul, matmul, trunc, then every other op `bench` knows, then one
/// BERT-base encoder layer end to end (`bert:layers=1`).
pub fn default_ops() -> Vec<String> {
    let mut v: Vec<String> = ["mul", "matmul", "trunc"].map(String::from).to_vec();
    for o in crate::ops::OPS {
        if !v.iter().any(|x| x == o) {
            v.push(o.to_string());
        }
    }
    v.push("bert:layers=1".to_string());
    v
}

impl OpChoice {
    /// The words after `--` for one run.
    pub fn job_words(&self) -> Vec<String> {
        let mut w = vec!["bench".to_string(), self.op.clone(), "--json".into()];
        if self.op != "bert" {
            w.push("--shape".into());
            w.push(self.shape.clone());
        }
        if let Some(m) = &self.method {
            w.push("--method".into());
            w.push(m.clone());
        }
        for (k, v) in &self.args {
            w.push(format!("--{k}"));
            w.push(v.clone());
        }
        w
    }
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    if v.is_empty() {
        return 0.0;
    }
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// Runs one `tessera launch ... --json` child and returns its JSON line.
fn launch_once(
    exe: &Path,
    config: &Path,
    profile_file: &Path,
    words: &[String],
) -> Result<serde_json::Value> {
    let out = Command::new(exe)
        .arg("launch")
        .arg("--config")
        .arg(config)
        .arg("--profile")
        .arg(profile_file)
        .arg("--")
        .args(words)
        .stdin(Stdio::null())
        .output()
        .context("starting `tessera launch`")?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        let tail: Vec<&str> = err
            .lines()
            .rev()
            .filter(|l| !l.trim().is_empty())
            .take(3)
            .collect();
        bail!(
            "`tessera launch -- {}` failed: {}",
            words.join(" "),
            tail.into_iter().rev().collect::<Vec<_>>().join(" / ")
        );
    }
    stdout
        .lines()
        .rev()
        .find_map(|l| serde_json::from_str::<serde_json::Value>(l.trim()).ok())
        .filter(|v| v.is_object())
        .ok_or_else(|| anyhow::anyhow!("`tessera launch` printed no JSON line: {stdout}"))
}

/// One measurement: warm-ups, then timed runs; a failure becomes a record with `error`.
#[allow(clippy::too_many_arguments)]
fn measure(
    exe: &Path,
    config: &Path,
    setting: &str,
    profile: &Profile,
    profile_file: &Path,
    op: &OpChoice,
    warmup: usize,
    repeat: usize,
    bar: &indicatif::ProgressBar,
) -> Record {
    let mut rec = Record {
        op: op.op.clone(),
        setting: setting.to_string(),
        profile: profile.name.clone(),
        rtt_ms: profile.rtt_ms,
        bandwidth_mbit: profile.bandwidth_mbit,
        shape: op.shape.clone(),
        method: op.method.clone(),
        args: op.args.iter().map(|(k, v)| format!("{k}={v}")).collect(),
        repeat,
        ..Default::default()
    };
    let words = op.job_words();
    let mut online = Vec::new();
    let mut offline = Vec::new();
    for i in 0..warmup + repeat {
        let j = match launch_once(exe, config, profile_file, &words) {
            Ok(j) => j,
            Err(e) => {
                bar.inc((warmup + repeat - i) as u64);
                rec.error = Some(format!("{e:#}"));
                return rec;
            }
        };
        bar.inc(1);
        if i < warmup {
            continue;
        }
        let f = |k: &str| j[k].as_f64().unwrap_or(0.0);
        let u = |k: &str| j[k].as_u64().unwrap_or(0);
        online.push(f("online_s"));
        offline.push(f("offline_s"));
        rec.online_bytes = u("online_bytes");
        rec.offline_bytes = u("offline_bytes");
        rec.max_party_bytes = u("max_party_bytes");
        rec.rounds = u("rounds");
        rec.max_abs_err = rec.max_abs_err.max(f("max_abs_err"));
    }
    rec.min_online_s = online.iter().copied().fold(f64::INFINITY, f64::min);
    rec.max_online_s = online.iter().copied().fold(0.0, f64::max);
    rec.median_online_s = median(&mut online);
    rec.offline_s = median(&mut offline);
    rec
}

/// Fills in the cost model from the `none` rows of the same sweep (see the module docs).
pub fn predict(records: &mut [Record]) {
    let baseline: Vec<(String, f64)> = records
        .iter()
        .filter(|r| r.error.is_none() && r.rtt_ms == 0.0 && r.bandwidth_mbit.is_none())
        .map(|r| (base_key(r), r.median_online_s))
        .collect();
    for r in records.iter_mut() {
        if r.error.is_some() || (r.rtt_ms == 0.0 && r.bandwidth_mbit.is_none()) {
            continue;
        }
        let Some((_, compute)) = baseline.iter().find(|(k, _)| *k == base_key(r)) else {
            continue;
        };
        let latency = r.rounds as f64 * r.rtt_ms / 2e3;
        let bw = match r.bandwidth_mbit {
            Some(b) => r.max_party_bytes as f64 * 8.0 / (b * 1e6),
            None => 0.0,
        };
        r.predicted_compute_s = Some(*compute);
        r.predicted_latency_s = Some(latency);
        r.predicted_bandwidth_s = Some(bw);
        r.predicted_s = Some(compute + latency + bw);
    }
}

fn base_key(r: &Record) -> String {
    format!(
        "{} {} {} {:?} {:?}",
        r.op, r.setting, r.shape, r.method, r.args
    )
}

/// Runs the sweep, writes the JSON lines, the Markdown table and the plot, and prints the
/// table. Returns the records.
pub fn run(args: &SuiteArgs) -> Result<Vec<Record>> {
    let exe = std::env::current_exe().context("locating the tessera executable")?;
    let settings: Vec<&str> = match args.setting.as_str() {
        "2pc" => vec!["2pc"],
        "3pc" => vec!["3pc"],
        "both" => vec!["2pc", "3pc"],
        s => bail!("--setting {s:?}: expected 2pc, 3pc or both"),
    };
    let mut profiles = Vec::new();
    for p in &args.profile {
        profiles.push(Profile::resolve(p.trim()).with_context(|| format!("--profile {p}"))?);
    }
    if !args.no_baseline && !profiles.iter().any(|p| !p.is_emulated()) {
        profiles.insert(0, Profile::none());
    }
    let op_words = if args.ops.is_empty() {
        default_ops()
    } else {
        args.ops.clone()
    };
    let ops: Vec<OpChoice> = op_words
        .iter()
        .map(|o| parse_op(o, args.shape.as_deref()))
        .collect::<Result<_>>()?;
    let repeat = args.repeat.max(1);
    // Profiles go to the children as files (keeping their names), configs with keys.
    let work = std::env::temp_dir().join(format!("tessera-suite-{}", std::process::id()));
    std::fs::create_dir_all(&work).with_context(|| format!("creating {}", work.display()))?;
    let mut profile_files = Vec::new();
    for (i, p) in profiles.iter().enumerate() {
        let f = work.join(format!("profile-{i}.toml"));
        std::fs::write(&f, toml::to_string(p)?)
            .with_context(|| format!("writing {}", f.display()))?;
        profile_files.push(f);
    }
    let mut configs = Vec::new();
    for s in &settings {
        let c = if *s == "2pc" {
            &args.config_2pc
        } else {
            &args.config_3pc
        };
        configs.push(crate::launch::prepare_config(c).with_context(|| format!("{s} config"))?);
    }
    let total = (settings.len() * profiles.len() * ops.len() * (args.warmup + repeat)) as u64;
    let bar = indicatif::ProgressBar::new(total);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{elapsed_precise} [{bar:30}] {pos}/{len} runs (eta {eta}) {msg}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
        .progress_chars("=> "),
    );
    let mut records = Vec::new();
    for (si, s) in settings.iter().enumerate() {
        for (pi, p) in profiles.iter().enumerate() {
            for op in &ops {
                bar.set_message(format!("{s} {} {} {}", p.name, op.op, op.shape));
                let r = measure(
                    &exe,
                    &configs[si],
                    s,
                    p,
                    &profile_files[pi],
                    op,
                    args.warmup,
                    repeat,
                    &bar,
                );
                if let Some(e) = &r.error {
                    bar.println(format!("[suite] {s} {} {}: {e}", p.name, op.op));
                }
                records.push(r);
            }
        }
    }
    bar.finish_and_clear();
    let _ = std::fs::remove_dir_all(&work);
    predict(&mut records);
    write_reports(&args.out, &records)?;
    println!("{}", report::markdown(&records));
    eprintln!(
        "[suite] wrote {}, {}, {}",
        args.out.display(),
        args.out.with_extension("md").display(),
        args.out.with_extension("svg").display()
    );
    Ok(records)
}

/// Writes `out` (JSON lines), `out.md` (Markdown) and `out.svg` (plot).
pub fn write_reports(out: &Path, records: &[Record]) -> Result<()> {
    report::write_jsonl(out, records)?;
    let md = out.with_extension("md");
    std::fs::write(&md, report::markdown(records))
        .with_context(|| format!("writing {}", md.display()))?;
    report::plot_svg(
        &out.with_extension("svg"),
        records,
        "Tessera: online time per op",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn op_choices() {
        let c = parse_op("gelu:method=spline:shape=4x8:range=-2,2", None).unwrap();
        assert_eq!(c.method.as_deref(), Some("spline"));
        assert_eq!(c.shape, "4x8");
        assert!(c.job_words().ends_with(&["--range".into(), "-2,2".into()]));
        assert_eq!(parse_op("matmul", None).unwrap().shape, "128x768x768");
        assert_eq!(parse_op("mul", Some("10")).unwrap().shape, "10");
        assert!(parse_op("mul:bad", None).is_err());
        assert!(default_ops().starts_with(&["mul".into(), "matmul".into(), "trunc".into()]));
    }

    #[test]
    fn prediction_uses_the_baseline() {
        let mut rs = vec![
            Record {
                op: "mul".into(),
                setting: "2pc".into(),
                median_online_s: 0.01,
                ..Default::default()
            },
            Record {
                op: "mul".into(),
                setting: "2pc".into(),
                rtt_ms: 40.0,
                bandwidth_mbit: Some(100.0),
                rounds: 2,
                max_party_bytes: 1_250_000,
                ..Default::default()
            },
        ];
        predict(&mut rs);
        assert_eq!(rs[0].predicted_s, None);
        let p = rs[1].predicted_s.unwrap();
        // 2 rounds of one 20 ms one-way delay each; 1.25 MB at 100 Mbit/s.
        assert!((p - (0.01 + 0.04 + 0.1)).abs() < 1e-12, "{p}");
    }
}
