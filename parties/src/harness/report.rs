//! Results of a sweep: one [`Record`] per measurement, written as JSON lines, rendered as a
//! Markdown table and an SVG plot, and compared across two files.

use anyhow::{Context, Result};
use plotters::prelude::*;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

/// One measurement: an op at a shape (and method) in a setting under a profile.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Record {
    /// The op (`mul`, `matmul`, ...).
    pub op: String,
    /// `2pc` or `3pc`.
    pub setting: String,
    /// Network profile name.
    pub profile: String,
    /// The profile's round-trip time in ms.
    pub rtt_ms: f64,
    /// The profile's bandwidth in Mbit/s (`None`: unlimited).
    pub bandwidth_mbit: Option<f64>,
    /// The shape argument, e.g. `128x768x768`.
    pub shape: String,
    /// The op's `--method`, if one was given.
    #[serde(default)]
    pub method: Option<String>,
    /// Other per-op arguments passed to `bench`, as `key=value` words.
    #[serde(default)]
    pub args: Vec<String>,
    /// Timed runs (each a fresh launch of all parties).
    pub repeat: usize,
    /// Median of the runs' online seconds.
    pub median_online_s: f64,
    /// Fastest run.
    pub min_online_s: f64,
    /// Slowest run.
    pub max_online_s: f64,
    /// Median offline (setup and preprocessing) seconds.
    pub offline_s: f64,
    /// Online bytes sent by all parties together.
    pub online_bytes: u64,
    /// Offline bytes (dealer material) of all parties together.
    pub offline_bytes: u64,
    /// Online bytes sent by the busiest party.
    pub max_party_bytes: u64,
    /// Online rounds (max over parties).
    pub rounds: u64,
    /// Largest absolute error against the plaintext reference, over all runs.
    pub max_abs_err: f64,
    /// Cost-model time: compute + latency + bandwidth terms (see [`super::suite`]).
    #[serde(default)]
    pub predicted_s: Option<f64>,
    /// Local compute term of the prediction.
    #[serde(default)]
    pub predicted_compute_s: Option<f64>,
    /// `rounds x RTT`.
    #[serde(default)]
    pub predicted_latency_s: Option<f64>,
    /// `max_party_bytes / bandwidth`.
    #[serde(default)]
    pub predicted_bandwidth_s: Option<f64>,
    /// Why the measurement failed (the other fields are then meaningless).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl Record {
    /// What identifies a measurement across files: op, setting, profile, shape, method, args.
    pub fn key(&self) -> String {
        let mut k = format!(
            "{} {} {} {}",
            self.op, self.setting, self.profile, self.shape
        );
        if let Some(m) = &self.method {
            let _ = write!(k, " method={m}");
        }
        for a in &self.args {
            let _ = write!(k, " {a}");
        }
        k
    }

    /// The op column of a table: op, method and other arguments.
    pub fn op_label(&self) -> String {
        let mut s = self.op.clone();
        if let Some(m) = &self.method {
            let _ = write!(s, "[{m}]");
        }
        for a in &self.args {
            let _ = write!(s, " {a}");
        }
        s
    }
}

/// Writes records as JSON lines.
pub fn write_jsonl(path: &Path, records: &[Record]) -> Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let mut text = String::new();
    for r in records {
        text.push_str(&serde_json::to_string(r)?);
        text.push('\n');
    }
    std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))
}

/// Reads a JSON-lines result file (blank lines are skipped; a bad line is named).
pub fn read_jsonl(path: &Path) -> Result<Vec<Record>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| {
            serde_json::from_str(l)
                .with_context(|| format!("{} line {}: not a harness record", path.display(), i + 1))
        })
        .collect()
}

/// Seconds for people: `12.3 ms`, `1.23 s`, `45 us`.
pub fn secs(s: f64) -> String {
    if s >= 1.0 {
        format!("{s:.2} s")
    } else if s >= 1e-3 {
        format!("{:.1} ms", s * 1e3)
    } else {
        format!("{:.0} us", s * 1e6)
    }
}

/// Bytes for people: `1.23 MB` (10^6).
pub fn bytes(b: u64) -> String {
    let b = b as f64;
    if b >= 1e9 {
        format!("{:.2} GB", b / 1e9)
    } else if b >= 1e6 {
        format!("{:.2} MB", b / 1e6)
    } else if b >= 1e3 {
        format!("{:.1} kB", b / 1e3)
    } else {
        format!("{b:.0} B")
    }
}

/// The Markdown table of a sweep: one row per measurement, the cost model beside the
/// measured time.
pub fn markdown(records: &[Record]) -> String {
    let mut s = String::from(
        "| op | setting | profile | shape | online (median) | min .. max | predicted = compute + rounds x RTT + bytes / bw | rounds | online bytes | offline bytes | max abs err |\n\
         |---|---|---|---|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    for r in records {
        if let Some(e) = &r.error {
            let _ = writeln!(
                s,
                "| {} | {} | {} | {} | failed: {} | | | | | | |",
                r.op_label(),
                r.setting,
                r.profile,
                r.shape,
                e.replace('|', "/").lines().next().unwrap_or("")
            );
            continue;
        }
        let predicted = match (
            r.predicted_s,
            r.predicted_compute_s,
            r.predicted_latency_s,
            r.predicted_bandwidth_s,
        ) {
            (Some(p), Some(c), Some(l), Some(b)) => {
                format!("{} = {} + {} + {}", secs(p), secs(c), secs(l), secs(b))
            }
            _ => "—".into(),
        };
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} | {} .. {} | {} | {} | {} | {} | {:.1e} |",
            r.op_label(),
            r.setting,
            r.profile,
            r.shape,
            secs(r.median_online_s),
            secs(r.min_online_s),
            secs(r.max_online_s),
            predicted,
            r.rounds,
            bytes(r.online_bytes),
            bytes(r.offline_bytes),
            r.max_abs_err
        );
    }
    s
}

/// `tessera compare`: the measurements of `b` beside those of `a` (matched by
/// [`Record::key`]) with ratios b / a, as a Markdown table; unmatched rows are listed.
pub fn compare(a: &[Record], b: &[Record], a_name: &str, b_name: &str) -> String {
    let index = |rs: &[Record]| -> BTreeMap<String, Record> {
        rs.iter()
            .filter(|r| r.error.is_none())
            .map(|r| (r.key(), r.clone()))
            .collect()
    };
    let (ia, ib) = (index(a), index(b));
    let mut s = format!(
        "A = {a_name}, B = {b_name}\n\n\
         | op | setting | profile | shape | A online | B online | B / A | A bytes | B bytes | B / A | A rounds | B rounds |\n\
         |---|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|\n"
    );
    let ratio = |x: f64, y: f64| {
        if x > 0.0 {
            format!("{:.2}x", y / x)
        } else {
            "—".into()
        }
    };
    for (k, ra) in &ia {
        let Some(rb) = ib.get(k) else { continue };
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            ra.op_label(),
            ra.setting,
            ra.profile,
            ra.shape,
            secs(ra.median_online_s),
            secs(rb.median_online_s),
            ratio(ra.median_online_s, rb.median_online_s),
            bytes(ra.online_bytes),
            bytes(rb.online_bytes),
            ratio(ra.online_bytes as f64, rb.online_bytes as f64),
            ra.rounds,
            rb.rounds
        );
    }
    let only = |x: &BTreeMap<String, Record>, y: &BTreeMap<String, Record>| -> Vec<String> {
        x.keys().filter(|k| !y.contains_key(*k)).cloned().collect()
    };
    for (name, list) in [("A", only(&ia, &ib)), ("B", only(&ib, &ia))] {
        if !list.is_empty() {
            let _ = writeln!(s, "\nonly in {name}: {}", list.join("; "));
        }
    }
    s
}

/// Plots median online time per op (x) for every (setting, profile) series (log y) into
/// an SVG file; min..max of the runs as a vertical bar.
pub fn plot_svg(path: &Path, records: &[Record], title: &str) -> Result<()> {
    let ok: Vec<&Record> = records.iter().filter(|r| r.error.is_none()).collect();
    let mut labels: Vec<String> = Vec::new();
    let mut series: BTreeMap<String, Vec<(usize, &Record)>> = BTreeMap::new();
    for r in &ok {
        let label = format!("{} {}", r.op_label(), r.shape);
        let x = match labels.iter().position(|l| *l == label) {
            Some(x) => x,
            None => {
                labels.push(label);
                labels.len() - 1
            }
        };
        series
            .entry(format!("{} {}", r.setting, r.profile))
            .or_default()
            .push((x, r));
    }
    let lo = ok
        .iter()
        .map(|r| r.min_online_s)
        .filter(|v| *v > 0.0)
        .fold(f64::INFINITY, f64::min);
    let hi = ok.iter().map(|r| r.max_online_s).fold(0.0, f64::max);
    let (lo, hi) = if lo.is_finite() && hi > 0.0 {
        (lo / 2.0, hi * 2.0)
    } else {
        (1e-4, 1.0)
    };
    let n = labels.len().max(1);
    let width = (160 + 110 * n as u32).max(640);
    let draw = || -> std::result::Result<(), Box<dyn std::error::Error>> {
        let root = SVGBackend::new(path, (width, 480)).into_drawing_area();
        root.fill(&WHITE)?;
        let mut chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 18))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(70)
            .build_cartesian_2d(-0.5f64..(n as f64 - 0.5), (lo..hi).log_scale())?;
        let fmt_x = |x: &f64| {
            let i = x.round();
            if (x - i).abs() < 1e-6 && i >= 0.0 {
                labels.get(i as usize).cloned().unwrap_or_default()
            } else {
                String::new()
            }
        };
        chart
            .configure_mesh()
            .x_labels(n)
            .x_label_formatter(&fmt_x)
            .y_desc("online time per op (s)")
            .y_label_formatter(&|y| secs(*y))
            .disable_x_mesh()
            .draw()?;
        for (i, (name, pts)) in series.iter().enumerate() {
            let color = Palette99::pick(i).to_rgba();
            let mut line: Vec<(f64, f64)> = pts
                .iter()
                .map(|(x, r)| (*x as f64, r.median_online_s.max(lo)))
                .collect();
            line.sort_by(|a, b| a.0.total_cmp(&b.0));
            chart
                .draw_series(LineSeries::new(line.clone(), color.stroke_width(2)))?
                .label(name.as_str())
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(2))
                });
            chart.draw_series(
                line.iter()
                    .map(|&(x, y)| Circle::new((x, y), 4, color.filled())),
            )?;
            for (x, r) in pts {
                let x = *x as f64;
                chart.draw_series(LineSeries::new(
                    vec![(x, r.min_online_s.max(lo)), (x, r.max_online_s.max(lo))],
                    color.stroke_width(1),
                ))?;
            }
        }
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .position(SeriesLabelPosition::UpperLeft)
            .draw()?;
        root.present()?;
        Ok(())
    };
    draw().map_err(|e| anyhow::anyhow!("drawing the plot {}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(op: &str, profile: &str, t: f64) -> Record {
        Record {
            op: op.into(),
            setting: "2pc".into(),
            profile: profile.into(),
            shape: "10".into(),
            repeat: 1,
            median_online_s: t,
            min_online_s: t,
            max_online_s: t,
            online_bytes: 100,
            rounds: 2,
            ..Default::default()
        }
    }

    #[test]
    fn compare_pairs_by_key() {
        let a = vec![rec("mul", "lan", 0.01), rec("trunc", "lan", 0.01)];
        let b = vec![rec("mul", "lan", 0.02), rec("matmul", "lan", 0.1)];
        let s = compare(&a, &b, "a", "b");
        assert!(s.contains("2.00x"), "{s}");
        assert!(s.contains("only in A: trunc"), "{s}");
        assert!(s.contains("only in B: matmul"), "{s}");
    }

    #[test]
    fn markdown_marks_failures() {
        let mut r = rec("gelu", "wan", 0.0);
        r.error = Some("boom | bang".into());
        let s = markdown(&[rec("mul", "wan", 0.5), r]);
        assert!(s.contains("| mul | 2pc | wan | 10 | 500.0 ms |"), "{s}");
        assert!(s.contains("failed: boom / bang"), "{s}");
    }
}
