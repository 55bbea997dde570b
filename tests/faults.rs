//! Kill campaign: `tessera launch` with a party killed (SIGKILL, SIGTERM) or frozen
//! (SIGSTOP) at a chosen moment, in both settings. Asserted for every run: the launcher
//! exits non-zero within 10 s of the kill and names the victim; no party process
//! survives; the launcher leaves nothing in its temporary directory; a frozen party is
//! named within `liveness_s` + 2 s. Prints the README's "Faults" table.
//!
//! The moments are fractions of a clean run's duration measured first (so they fall while
//! connecting, while dealing, mid-computation and while finishing on any machine); the
//! victim and the signal rotate over the runs.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_tessera");
/// The session's liveness_s: a frozen peer must be named within this + 2 s.
const LIVENESS_S: f64 = 2.0;
const JOB: &[&str] = &[
    "bench", "bert", "--layers", "4", "--hidden", "128", "--heads", "2", "--ffn", "512", "--seq",
    "128",
];

fn session(setting: &str, port_base: u16) -> (PathBuf, PathBuf) {
    let dir = std::env::temp_dir().join(format!(
        "tessera-faults-{}-{setting}-{port_base}",
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let mut toml = format!(
        "setting = \"{setting}\"\nfrac_bits = 16\nstart_timeout_s = 20\nio_timeout_s = 30\nliveness_s = {LIVENESS_S}\nkey_dir = \"keys\"\npreprocessing_dir = \"pre\"\n"
    );
    for id in 0..3u16 {
        toml.push_str(&format!(
            "\n[[party]]\nid = {id}\naddr = \"127.0.0.1:{}\"\n",
            port_base + id
        ));
    }
    let cfg = dir.join("session.toml");
    std::fs::write(&cfg, toml).unwrap();
    let o = Command::new(BIN)
        .args(["keygen", "--config", cfg.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let tmp = dir.join("tmp");
    std::fs::create_dir_all(&tmp).unwrap();
    (cfg, tmp)
}

/// One launch; `fault` = (victim, signal, delay after start) or none.
struct Run {
    ok: bool,
    /// Seconds from the signal to the launcher's exit.
    exit_after_kill: Option<f64>,
    /// Seconds from the signal to the launcher's first failure report.
    noticed_after_kill: Option<f64>,
    total_s: f64,
    stderr: String,
    pids: Vec<u32>,
    /// Whether the signal reached a live victim.
    delivered: bool,
}

fn launch(cfg: &Path, tmp: &Path, fault: Option<(usize, &str, Duration)>) -> Run {
    let start = Instant::now();
    let mut child = Command::new(BIN)
        .args(["launch", "--config", cfg.to_str().unwrap(), "--"])
        .args(JOB)
        .env("TMPDIR", tmp)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (tx, rx) = mpsc::channel::<(Instant, String)>();
    let err = child.stderr.take().unwrap();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(err).lines() {
            let Ok(line) = line else { break };
            let _ = tx.send((Instant::now(), line));
        }
    });
    let mut lines: Vec<(Instant, String)> = Vec::new();
    let mut pids: Vec<u32> = Vec::new();
    let mut killed_at: Option<Instant> = None;
    let mut delivered = false;
    let deadline = start + Duration::from_secs(120);
    let status = loop {
        while let Ok(l) = rx.try_recv() {
            if let Some(rest) = l.1.strip_prefix("[launch] started ") {
                pids = rest
                    .split("(pid ")
                    .skip(1)
                    .filter_map(|p| p.split(')').next()?.parse().ok())
                    .collect();
            }
            lines.push(l);
        }
        if let Some((victim, sig, delay)) = fault {
            if killed_at.is_none() && pids.len() == 3 && start.elapsed() >= delay {
                let alive = Path::new(&format!("/proc/{}", pids[victim])).exists();
                let o = Command::new("kill")
                    .args([&format!("-{sig}"), &pids[victim].to_string()])
                    .output()
                    .unwrap();
                delivered = alive && o.status.success();
                killed_at = Some(Instant::now());
            }
        }
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < deadline, "the launcher hangs");
        std::thread::sleep(Duration::from_millis(5));
    };
    let ended = Instant::now();
    reader.join().unwrap();
    lines.extend(rx.try_iter());
    let noticed = lines
        .iter()
        .find(|(_, l)| l.starts_with("[launch] party ") && l.contains("telling the others"))
        .map(|(t, _)| *t);
    Run {
        ok: status.success(),
        exit_after_kill: killed_at.map(|k| (ended - k).as_secs_f64()),
        noticed_after_kill: killed_at
            .zip(noticed)
            .map(|(k, n)| n.saturating_duration_since(k).as_secs_f64()),
        total_s: (ended - start).as_secs_f64(),
        stderr: lines.into_iter().map(|(_, l)| l + "\n").collect(),
        pids,
        delivered,
    }
}

fn assert_clean(run: &Run, tmp: &Path, what: &str) {
    std::thread::sleep(Duration::from_millis(300));
    for p in &run.pids {
        let stat = std::fs::read_to_string(format!("/proc/{p}/stat")).unwrap_or_default();
        // Gone, or a zombie about to be reaped by init.
        assert!(
            stat.is_empty() || stat.contains(") Z "),
            "{what}: party process {p} survived:\n{}",
            run.stderr
        );
    }
    let left: Vec<_> = std::fs::read_dir(tmp)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert!(left.is_empty(), "{what}: temporary files left: {left:?}");
}

#[derive(Default)]
struct Row {
    runs: usize,
    clear: usize,
    times: Vec<f64>,
}

#[test]
fn kill_campaign_names_the_victim_and_leaves_nothing() {
    let mut table: Vec<(String, String, Row)> = Vec::new();
    let base = 23000 + (std::process::id() % 500) as u16 * 12;
    for (si, setting) in ["2pc", "3pc"].into_iter().enumerate() {
        let (cfg, tmp) = session(setting, base + si as u16 * 6);
        let clean = launch(&cfg, &tmp, None);
        assert!(
            clean.ok,
            "{setting}: the clean run failed:\n{}",
            clean.stderr
        );
        assert_clean(&clean, &tmp, "clean run");
        let t = clean.total_s;
        eprintln!("{setting}: clean run {t:.2} s");
        // (moment, fraction of the clean run, victim, signal)
        let plan: [(&str, f64, usize, &str); 5] = [
            ("connecting", 0.0, (si + 1) % 3, "KILL"),
            ("dealing", 0.2, (si + 2) % 3, "TERM"),
            ("mid-computation", 0.5, si % 3, "KILL"),
            ("mid-computation", 0.7, (si + 1) % 3, "TERM"),
            ("finishing", 0.93, (si + 2) % 3, "KILL"),
        ];
        for (moment, frac, victim, sig) in plan {
            let delay = Duration::from_secs_f64(t * frac + if frac == 0.0 { 0.05 } else { 0.0 });
            let run = launch(&cfg, &tmp, Some((victim, sig, delay)));
            let what = format!("{setting} {moment} SIG{sig} party {victim}");
            assert_clean(&run, &tmp, &what);
            let key = format!("SIG{sig} while {moment}");
            let row = match table.iter_mut().find(|r| r.0 == key && r.1 == setting) {
                Some(r) => &mut r.2,
                None => {
                    table.push((key, setting.to_string(), Row::default()));
                    &mut table.last_mut().unwrap().2
                }
            };
            row.runs += 1;
            if run.ok {
                // Only acceptable if the victim had already finished when the signal came.
                assert!(!run.delivered, "{what}: the run succeeded:\n{}", run.stderr);
                eprintln!("{what}: the victim had finished before the signal");
                continue;
            }
            let exit = run.exit_after_kill.unwrap();
            assert!(
                exit < 10.0,
                "{what}: launcher took {exit:.1} s:\n{}",
                run.stderr
            );
            let last = run
                .stderr
                .lines()
                .rfind(|l| l.starts_with("error:"))
                .unwrap_or_default()
                .to_string();
            assert!(
                last.starts_with(&format!("error: party {victim} ")),
                "{what}: the victim is not named first: {last}\n{}",
                run.stderr
            );
            row.clear += 1;
            row.times.push(exit);
            eprintln!("{what}: exit {exit:.2} s after the signal; {last}");
        }
        // A frozen party: its peers name it within liveness_s + 2 s.
        let victim = (si + 1) % 3;
        let run = launch(
            &cfg,
            &tmp,
            Some((victim, "STOP", Duration::from_secs_f64(t * 0.5))),
        );
        let what = format!("{setting} SIGSTOP party {victim}");
        assert_clean(&run, &tmp, &what);
        assert!(!run.ok, "{what}: the run succeeded:\n{}", run.stderr);
        let noticed = run.noticed_after_kill.unwrap();
        assert!(
            noticed <= LIVENESS_S + 2.0,
            "{what}: noticed after {noticed:.1} s:\n{}",
            run.stderr
        );
        assert!(
            run.stderr
                .contains(&format!("error: party {victim} failed")),
            "{what}: victim not named:\n{}",
            run.stderr
        );
        let exit = run.exit_after_kill.unwrap();
        eprintln!("{what}: named after {noticed:.2} s, launcher exit {exit:.2} s");
        table.push((
            "SIGSTOP (frozen) mid-computation".into(),
            setting.into(),
            Row {
                runs: 1,
                clear: 1,
                times: vec![exit],
            },
        ));
        let _ = std::fs::remove_dir_all(cfg.parent().unwrap());
    }
    println!("| scenario | setting | runs | clear exits | median s to exit | max s to exit | hangs | leftover processes |");
    println!("|---|---|---|---|---|---|---|---|");
    for (k, s, r) in &table {
        let mut t = r.times.clone();
        t.sort_by(f64::total_cmp);
        let med = t.get(t.len() / 2).copied().unwrap_or(f64::NAN);
        let max = t.last().copied().unwrap_or(f64::NAN);
        println!(
            "| {k} | {s} | {} | {} | {med:.2} | {max:.2} | 0 | 0 |",
            r.runs, r.clear
        );
    }
}
