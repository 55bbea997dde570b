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
    /// `rounds x RTT / 2` (one one-way delay per round).
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
        "| op | setting | profile | shape | online (median) | min .. max | predicted = compute + rounds x RTT/2 + bytes / bw | rounds | online bytes | offline bytes | max abs err |\n\
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

/// Index of `item` in `list`, appending it first if it is new (keeps first-seen order).
fn index_or_push(list: &mut Vec<String>, item: String) -> usize {
    match list.iter().position(|l| *l == item) {
        Some(i) => i,
        None => {
            list.push(item);
            list.len() - 1
        }
    }
}

/// `m x 10^e` as the nearest `f64` (so `1e-3` is exactly the literal `0.001`, which keeps
/// [`secs`] from printing `1000 us` for it).
fn pow10(m: u32, e: i32) -> f64 {
    format!("{m}e{e}").parse().unwrap_or(f64::NAN)
}

/// The y axis of [`plot_svg`] for data in `lo..hi`: its bounds, the last 1-2-5 x 10^e value
/// at or below `lo` and the first at or above `hi` (decades only when that spans more than
/// four of them), so it starts and ends on a tick; the bold (labelled) ticks, those values
/// less any whose [`secs`] label equals an earlier one's, so no label is printed twice; and
/// the light grid, 1..9 x 10^e strictly inside the bounds.
fn log_ticks(lo: f64, hi: f64) -> ((f64, f64), Vec<f64>, Vec<f64>) {
    let (e0, e1) = (lo.log10().floor() as i32, hi.log10().ceil() as i32);
    let mantissas: &[u32] = if e1 - e0 > 4 { &[1] } else { &[1, 2, 5] };
    let all: Vec<f64> = (e0..=e1)
        .flat_map(|e| mantissas.iter().map(move |&m| pow10(m, e)))
        .collect();
    let first = all.iter().rposition(|&t| t <= lo).unwrap_or(0);
    let last = all
        .iter()
        .position(|&t| t >= hi)
        .unwrap_or(all.len() - 1)
        .max(first + 1)
        .min(all.len() - 1);
    let mut labels: Vec<String> = Vec::new();
    let bold: Vec<f64> = all[first..=last]
        .iter()
        .copied()
        .filter(|&t| {
            let l = secs(t);
            let new = !labels.contains(&l);
            labels.push(l);
            new
        })
        .collect();
    let (a, b) = (all[first], all[last]);
    let light = (e0..=e1)
        .flat_map(|e| (1..=9).map(move |m| pow10(m, e)))
        .filter(|&t| t > a && t < b && !bold.contains(&t))
        .collect();
    ((a, b), bold, light)
}

/// The fill of series (`setting`, `profile`) in [`plot_svg`] (indices in first-seen order):
/// one hue per setting, lighter for the profiles seen first (`none`, `lan`) and darker for
/// later ones (`wan`), so both the setting and the network can be read off a bar.
fn series_colour(setting: usize, profile: usize, profiles: usize) -> RGBColor {
    const HUES: [f64; 6] = [0.58, 0.07, 0.33, 0.78, 0.0, 0.48];
    let l = if profiles <= 1 {
        0.5
    } else {
        0.74 - 0.44 * profile as f64 / (profiles - 1) as f64
    };
    let c = HSLColor(HUES[setting % HUES.len()], 0.65, l).to_backend_color();
    RGBColor(c.rgb.0, c.rgb.1, c.rgb.2)
}

/// Plots the measured online time per op as grouped bars into an SVG file.
///
/// One group per op (op label and shape) on the x axis; inside it one bar per (setting,
/// profile) series, always in the same slot and colour (hue per setting, shade per
/// profile), listed in the legend to the right of the chart. A bar's top is the median of
/// the runs; a thin black whisker with caps spans their min..max; where the record has a
/// cost-model prediction, a black tick (white halo, so it shows on dark bars) across the
/// bar marks it. Bars rather than lines: the ops are unrelated, and a line from one op to
/// the next would suggest a trend that is not there.
///
/// The y axis is logarithmic (times span decades from `none` to `wan`), so bars rise from
/// the chart's lower bound and only their tops are meaningful. Its ticks are chosen here
/// (1-2-5 x 10^e, see [`log_ticks`]) rather than by plotters, whose log-axis ticks rounded
/// by [`secs`] printed some labels twice. Failed records (`error` set) are left out.
pub fn plot_svg(path: &Path, records: &[Record], title: &str) -> Result<()> {
    const LEGEND_W: u32 = 190;
    const ROW_H: i32 = 20;
    let ok: Vec<&Record> = records.iter().filter(|r| r.error.is_none()).collect();
    let (mut groups, mut series) = (Vec::new(), Vec::new());
    let (mut settings, mut profiles) = (Vec::new(), Vec::new());
    // (group, series, record) per bar; the setting and profile index per series.
    let mut bars: Vec<(usize, usize, &Record)> = Vec::new();
    let mut series_sp: Vec<(usize, usize)> = Vec::new();
    for r in &ok {
        let g = index_or_push(&mut groups, format!("{} {}", r.op_label(), r.shape));
        let s = index_or_push(&mut series, format!("{} {}", r.setting, r.profile));
        let sp = (
            index_or_push(&mut settings, r.setting.clone()),
            index_or_push(&mut profiles, r.profile.clone()),
        );
        if s == series_sp.len() {
            series_sp.push(sp);
        }
        bars.push((g, s, r));
    }
    let colours: Vec<RGBColor> = series_sp
        .iter()
        .map(|&(s, p)| series_colour(s, p, profiles.len()))
        .collect();

    let values = ok
        .iter()
        .flat_map(|r| {
            [r.min_online_s, r.median_online_s, r.max_online_s]
                .into_iter()
                .chain(r.predicted_s)
        })
        .filter(|v| v.is_finite() && *v > 0.0);
    let (lo, hi) = values.fold((f64::INFINITY, 0.0f64), |(a, b), v| (a.min(v), b.max(v)));
    let (lo, hi) = if lo.is_finite() && hi > 0.0 {
        (lo / 1.5, hi * 1.5)
    } else {
        (1e-4, 1.0)
    };
    let ((lo, hi), y_ticks, y_light) = log_ticks(lo, hi);

    let n = groups.len().max(1);
    let slots = series.len().max(1);
    let longest = groups.iter().map(|g| g.chars().count()).max().unwrap_or(0) as u32;
    let group_w = 110.max(16 * slots as u32 + 40).max(7 * longest + 12);
    let width = (100 + group_w * n as u32).max(480) + LEGEND_W;
    let legend_rows = series.len() as i32 + 3;
    let height = 480.max(60 + ROW_H * legend_rows) as u32;

    // Bar geometry in x units (a group is 1 wide, centred on its index).
    let slot_w = 0.8 / slots as f64;
    let slot_x0 = |g: usize, s: usize| g as f64 - 0.4 + s as f64 * slot_w;

    let draw = || -> std::result::Result<(), Box<dyn std::error::Error>> {
        let root = SVGBackend::new(path, (width, height)).into_drawing_area();
        root.fill(&WHITE)?;
        let (plot, legend) = root.split_horizontally(width - LEGEND_W);
        let mut chart = ChartBuilder::on(&plot)
            .caption(title, ("sans-serif", 18))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(88)
            .build_cartesian_2d(
                // Plain f64 (plotters formats only its own key points): with at most n
                // labels its 1-2-5 steps land on the n group centres 0, 1, ...
                -0.5f64..(n as f64 - 0.5),
                (lo..hi)
                    .log_scale()
                    .with_key_points(y_ticks.clone())
                    .with_light_points(y_light.clone()),
            )?;
        let fmt_x = |x: &f64| {
            let i = x.round();
            if (x - i).abs() < 1e-6 && i >= 0.0 {
                groups.get(i as usize).cloned().unwrap_or_default()
            } else {
                String::new()
            }
        };
        chart
            .configure_mesh()
            .x_labels(n)
            .y_labels(y_ticks.len())
            .x_label_formatter(&fmt_x)
            .y_desc("median online time per op (log scale)")
            .y_label_formatter(&|y| secs(*y))
            .x_label_style(("sans-serif", 14))
            .y_label_style(("sans-serif", 14))
            .axis_desc_style(("sans-serif", 14))
            .disable_x_mesh()
            .light_line_style(BLACK.mix(0.06))
            .bold_line_style(BLACK.mix(0.18))
            .draw()?;

        // Bars first, then whiskers and predictions on top of all of them.
        chart.draw_series(bars.iter().map(|&(g, s, r)| {
            let x0 = slot_x0(g, s) + 0.1 * slot_w;
            Rectangle::new(
                [
                    (x0, lo),
                    (x0 + 0.8 * slot_w, r.median_online_s.clamp(lo, hi)),
                ],
                colours[s].filled(),
            )
        }))?;
        for &(g, s, r) in &bars {
            // One path: bottom cap, the line, top cap; over a white halo so it shows on
            // dark bars too.
            let c = slot_x0(g, s) + 0.5 * slot_w;
            let (min, max) = (r.min_online_s.clamp(lo, hi), r.max_online_s.clamp(lo, hi));
            let cap = 0.2 * slot_w;
            let path = vec![
                (c - cap, min),
                (c + cap, min),
                (c, min),
                (c, max),
                (c - cap, max),
                (c + cap, max),
            ];
            chart.draw_series([
                PathElement::new(path.clone(), WHITE.stroke_width(3)),
                PathElement::new(path, BLACK.stroke_width(1)),
            ])?;
        }
        for &(g, s, r) in &bars {
            let Some(p) = r.predicted_s.filter(|p| p.is_finite() && *p > 0.0) else {
                continue;
            };
            let p = p.clamp(lo, hi);
            let (x0, x1) = (slot_x0(g, s), slot_x0(g, s) + slot_w);
            chart.draw_series([
                PathElement::new(vec![(x0, p), (x1, p)], WHITE.stroke_width(5)),
                PathElement::new(vec![(x0, p), (x1, p)], BLACK.stroke_width(2)),
            ])?;
        }

        // The legend, beside the chart so it never hides a bar: per row its icon (filled
        // rectangles, corners relative to the row's top left) and its text.
        let grey = RGBColor(0xBB, 0xBB, 0xBB);
        type Icon = ([(i32, i32); 2], ShapeStyle);
        let mut rows: Vec<(Vec<Icon>, &str)> = series
            .iter()
            .zip(&colours)
            .map(|(name, c)| (vec![([(0, 0), (16, 11)], c.filled())], name.as_str()))
            .collect();
        rows.push((
            vec![
                ([(4, -1), (13, 0)], BLACK.filled()),
                ([(8, -1), (9, 12)], BLACK.filled()),
                ([(4, 11), (13, 12)], BLACK.filled()),
            ],
            "min..max of runs",
        ));
        rows.push((
            vec![
                ([(2, 0), (14, 11)], grey.filled()),
                ([(0, 4), (16, 6)], BLACK.filled()),
            ],
            "cost-model prediction",
        ));
        let font = ("sans-serif", 13).into_font();
        for (i, (icons, text)) in rows.into_iter().enumerate() {
            let (x, y) = (8, 48 + ROW_H * i as i32);
            for ([(ax, ay), (bx, by)], style) in icons {
                legend.draw(&Rectangle::new([(x + ax, y + ay), (x + bx, y + by)], style))?;
            }
            legend.draw(&Text::new(text, (x + 24, y - 1), font.clone()))?;
        }
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

    /// A temporary file name unique to this process and `tag`.
    fn temp_svg(tag: &str) -> std::path::PathBuf {
        std::env::temp_dir().join(format!("tessera-report-{tag}-{}.svg", std::process::id()))
    }

    /// The contents of every `<text ...>...</text>` element.
    fn svg_texts(svg: &str) -> Vec<String> {
        svg.split("<text")
            .skip(1)
            .filter_map(|t| {
                let body = &t[t.find('>')? + 1..];
                Some(body[..body.find("</text>")?].trim().to_string())
            })
            .collect()
    }

    /// The value of attribute `name` in an element's text.
    fn attr<'a>(element: &'a str, name: &str) -> Option<&'a str> {
        let start = element.find(&format!(" {name}=\""))? + name.len() + 3;
        Some(&element[start..start + element[start..].find('"')?])
    }

    /// The text of every element with this tag, up to its end.
    fn elements<'a>(svg: &'a str, tag: &str) -> Vec<&'a str> {
        svg.split(&format!("<{tag} "))
            .skip(1)
            .map(|e| &e[..e.find('>').unwrap_or(e.len())])
            .collect()
    }

    /// Is `t` a y tick label as [`secs`] prints one (`12.3 ms`, `1.00 s`, `45 us`)?
    fn is_secs_label(t: &str) -> bool {
        let Some((num, unit)) = t.split_once(' ') else {
            return false;
        };
        ["s", "ms", "us"].contains(&unit) && num.parse::<f64>().is_ok()
    }

    /// 2 ops x {2pc, 3pc} x {none, lan, wan}, times spanning 1 ms .. 2 s (around the
    /// `100 ms` label that used to be printed twice); predictions on lan and wan only.
    fn sweep() -> Vec<Record> {
        let mut out = Vec::new();
        for (op, shape, base) in [("mul", "10", 1.2e-3), ("matmul", "4x8x8", 4.1e-3)] {
            for (setting, f) in [("2pc", 1.0), ("3pc", 1.7)] {
                for (profile, net) in [("none", 0.0), ("lan", 0.02), ("wan", 0.45)] {
                    let t = base * f + net;
                    let mut r = rec(op, profile, t);
                    r.setting = setting.into();
                    r.shape = shape.into();
                    r.min_online_s = t * 0.9;
                    r.max_online_s = t * 1.2;
                    if profile != "none" {
                        r.predicted_s = Some(t * 0.8);
                    }
                    out.push(r);
                }
            }
        }
        out
    }

    #[test]
    fn plot_draws_grouped_bars_with_unique_ticks() {
        let records = sweep();
        let mut failed = rec("gelu", "lan", 0.0);
        failed.error = Some("boom".into());
        let path = temp_svg("grouped");
        let mut all = records.clone();
        all.push(failed);
        plot_svg(&path, &all, "test plot").unwrap();
        let svg = std::fs::read_to_string(&path).unwrap();
        let _ = std::fs::remove_file(&path);
        let texts = svg_texts(&svg);

        // Legend: one entry per series, the whisker and the prediction.
        for series in [
            "2pc none", "2pc lan", "2pc wan", "3pc none", "3pc lan", "3pc wan",
        ] {
            let n = texts.iter().filter(|t| *t == series).count();
            assert_eq!(n, 1, "legend entry {series:?}: {texts:?}");
        }
        assert!(
            texts.iter().any(|t| t == "cost-model prediction"),
            "{texts:?}"
        );
        assert!(texts.iter().any(|t| t == "min..max of runs"), "{texts:?}");
        // One x label per op group; the failed record drew nothing.
        for group in ["mul 10", "matmul 4x8x8"] {
            assert_eq!(texts.iter().filter(|t| *t == group).count(), 1, "{texts:?}");
        }
        assert!(!svg.contains("gelu"), "a failed record was drawn");

        // Bars: per series colour one rectangle per record plus its legend swatch.
        let rects = elements(&svg, "rect");
        let mut colours = Vec::new();
        for s in 0..2 {
            for p in 0..3 {
                let c = series_colour(s, p, 3);
                colours.push(format!("#{:02X}{:02X}{:02X}", c.0, c.1, c.2));
            }
        }
        let mut distinct = colours.clone();
        distinct.dedup();
        assert_eq!(distinct.len(), 6, "series colours collide: {colours:?}");
        for c in &colours {
            let n = rects.iter().filter(|r| attr(r, "fill") == Some(c)).count();
            assert_eq!(n, 2 + 1, "rectangles filled {c}");
        }

        // y ticks: several, each label once.
        let ticks: Vec<&String> = texts.iter().filter(|t| is_secs_label(t)).collect();
        assert!(ticks.len() >= 3, "{ticks:?}");
        for (i, t) in ticks.iter().enumerate() {
            assert!(!ticks[..i].contains(t), "tick label {t} repeats: {ticks:?}");
        }

        // Polylines: the axes (two lines, a mark per tick and per op), then 2 per bar (the
        // whisker with its caps, and its halo) and 2 per prediction (tick and halo). Inside the chart none
        // is wider than a bar's slot, so nothing joins points of different ops; the only
        // wide one is the x axis, horizontal below every bar.
        let polylines = elements(&svg, "polyline");
        let predicted = records.iter().filter(|r| r.predicted_s.is_some()).count();
        assert_eq!(
            polylines.len(),
            2 + ticks.len() + 2 + 2 * records.len() + 2 * predicted
        );
        let num = |e: &str, a: &str| -> f64 { attr(e, a).unwrap().parse().unwrap() };
        let label_x = |label: &str| -> f64 {
            let e = svg
                .split("<text")
                .find(|t| t.contains(&format!("\n{label}\n</text>")))
                .unwrap();
            num(e, "x")
        };
        let slot = (label_x("matmul 4x8x8") - label_x("mul 10")).abs() * 0.8 / 6.0;
        let bottom = rects
            .iter()
            .filter(|r| attr(r, "fill").is_some_and(|f| colours.iter().any(|c| c == f)))
            .map(|r| num(r, "y") + num(r, "height"))
            .fold(0.0, f64::max);
        for p in &polylines {
            let pts: Vec<(f64, f64)> = attr(p, "points")
                .unwrap()
                .split_whitespace()
                .map(|xy| {
                    let (x, y) = xy.split_once(',').unwrap();
                    (x.parse().unwrap(), y.parse().unwrap())
                })
                .collect();
            let xs = pts.iter().map(|p| p.0);
            let extent = xs.clone().fold(f64::MIN, f64::max) - xs.fold(f64::MAX, f64::min);
            let x_axis = pts.len() == 2 && pts[0].1 == pts[1].1 && pts[0].1 > bottom;
            assert!(
                x_axis || extent <= slot + 1.0,
                "polyline wider than a bar slot ({slot}): {p}"
            );
        }
    }

    #[test]
    fn plot_of_nothing_is_a_valid_svg() {
        let path = temp_svg("empty");
        plot_svg(&path, &[], "nothing").unwrap();
        let svg = std::fs::read_to_string(&path).unwrap();
        let _ = std::fs::remove_file(&path);
        assert!(
            svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"),
            "{svg}"
        );
        assert!(svg_texts(&svg).iter().any(|t| t == "cost-model prediction"));
        let ticks: Vec<String> = svg_texts(&svg)
            .into_iter()
            .filter(|t| is_secs_label(t))
            .collect();
        for (i, t) in ticks.iter().enumerate() {
            assert!(!ticks[..i].contains(t), "tick label {t} repeats: {ticks:?}");
        }
    }

    #[test]
    fn log_ticks_are_unique_and_cover_the_range() {
        for (lo, hi) in [
            (1e-3, 2.0),
            (0.05, 0.3),
            (2e-7, 30.0),
            (0.9995, 1.0005),
            (1e-4, 1.0),
        ] {
            let ((a, b), bold, light) = log_ticks(lo, hi);
            assert!(a <= lo && b >= hi, "{lo}..{hi}: {a}..{b}");
            assert_eq!(
                (bold[0], *bold.last().unwrap()),
                (a, b),
                "{lo}..{hi}: {bold:?}"
            );
            assert!(bold.len() >= 2 && bold.len() <= 16, "{lo}..{hi}: {bold:?}");
            let labels: Vec<String> = bold.iter().map(|&t| secs(t)).collect();
            for (i, l) in labels.iter().enumerate() {
                assert!(!labels[..i].contains(l), "{lo}..{hi}: {labels:?}");
            }
            assert!(light.iter().all(|t| !bold.contains(t)));
        }
        assert_eq!(secs(log_ticks(1e-3, 2e-3).1[0]), "1.0 ms");
        // Sub-microsecond values all print as `0 us`: one label, the bounds still apart.
        let ((a, b), bold, _) = log_ticks(1e-8, 4e-7);
        assert!(a < b && bold.len() == 1, "{a}..{b} {bold:?}");
    }
}
