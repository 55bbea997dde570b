//! Network profiles: a round-trip time and a bandwidth that the launcher imposes on every
//! link between parties (see [`super::relay`]).
//!
//! A profile is a small TOML file, by convention in `configs/profiles/NAME.toml`:
//!
//! ```toml
//! name = "wan"
//! rtt_ms = 40.0           # round-trip time; each direction is delayed by rtt_ms / 2
//! bandwidth_mbit = 100.0  # per link and direction (omit for unlimited)
//! queue_bdp = 2.0         # bottleneck queue in bandwidth-delay products (default 2)
//! ```
//!
//! `rtt_ms = 0` without `bandwidth_mbit` is the raw loopback (`none`): no relay at all.

use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Smallest bottleneck queue, whatever the bandwidth-delay product (a few full packets).
pub const MIN_QUEUE_BYTES: usize = 64 * 1024;

/// A network profile: what each link between two parties looks like.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Profile {
    /// Name reported in the bench JSON (`profile` field).
    pub name: String,
    /// Round-trip time in milliseconds (each direction gets half).
    pub rtt_ms: f64,
    /// Bandwidth per link and direction in Mbit/s (10^6 bit/s); `None` is unlimited.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bandwidth_mbit: Option<f64>,
    /// Bottleneck queue length in multiples of the bandwidth-delay product (drop-tail).
    #[serde(default = "default_queue_bdp")]
    pub queue_bdp: f64,
}

fn default_queue_bdp() -> f64 {
    2.0
}

impl Profile {
    /// The raw loopback: no emulation.
    pub fn none() -> Profile {
        Profile {
            name: "none".into(),
            rtt_ms: 0.0,
            bandwidth_mbit: None,
            queue_bdp: default_queue_bdp(),
        }
    }

    /// A profile from command-line numbers, named like `rtt20ms-50mbit`.
    pub fn custom(rtt_ms: Option<f64>, bandwidth_mbit: Option<f64>) -> Result<Profile> {
        let rtt = rtt_ms.unwrap_or(0.0);
        let name = match bandwidth_mbit {
            Some(b) => format!("rtt{rtt}ms-{b}mbit"),
            None => format!("rtt{rtt}ms"),
        };
        let p = Profile {
            name,
            rtt_ms: rtt,
            bandwidth_mbit,
            queue_bdp: default_queue_bdp(),
        };
        p.check().context("--rtt-ms / --bandwidth-mbit")?;
        Ok(p)
    }

    /// Parses profile text; `origin` names the file in errors.
    pub fn parse(text: &str, origin: &Path) -> Result<Profile> {
        let p: Profile = toml::from_str(text).map_err(|e| {
            anyhow::anyhow!("profile {}: {}", origin.display(), e.to_string().trim_end())
        })?;
        p.check()
            .with_context(|| format!("profile {}", origin.display()))?;
        Ok(p)
    }

    /// Loads a profile file.
    pub fn load(path: &Path) -> Result<Profile> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading profile {}", path.display()))?;
        Profile::parse(&text, path)
    }

    /// `NAME` (looked up as `configs/profiles/NAME.toml` under the current directory, then
    /// under the source tree this binary was built from) or a path to a profile file.
    pub fn resolve(name_or_path: &str) -> Result<Profile> {
        let direct = Path::new(name_or_path);
        if direct.is_file() {
            return Profile::load(direct);
        }
        let candidates = search_paths(name_or_path);
        for c in &candidates {
            if c.is_file() {
                return Profile::load(c);
            }
        }
        bail!(
            "no network profile {name_or_path:?}: not a file, and none of {} exists (built in: lan, wan, none)",
            candidates
                .iter()
                .map(|c| c.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        )
    }

    fn check(&self) -> Result<()> {
        if !(self.rtt_ms.is_finite() && self.rtt_ms >= 0.0) {
            bail!("rtt_ms = {}: must be a number >= 0", self.rtt_ms);
        }
        if self.rtt_ms > 60_000.0 {
            bail!(
                "rtt_ms = {}: more than a minute is not a network",
                self.rtt_ms
            );
        }
        if let Some(b) = self.bandwidth_mbit {
            if !(b.is_finite() && b > 0.0) {
                bail!("bandwidth_mbit = {b}: must be a number > 0 (omit it for unlimited)");
            }
        }
        if !(self.queue_bdp.is_finite() && self.queue_bdp > 0.0) {
            bail!("queue_bdp = {}: must be a number > 0", self.queue_bdp);
        }
        if self.name.is_empty() {
            bail!("name = \"\": a profile needs a name");
        }
        Ok(())
    }

    /// Whether any emulation is needed (a relay between the parties).
    pub fn is_emulated(&self) -> bool {
        self.rtt_ms > 0.0 || self.bandwidth_mbit.is_some()
    }

    /// Delay of each direction (half the round trip).
    pub fn one_way(&self) -> Duration {
        Duration::from_secs_f64(self.rtt_ms / 2e3)
    }

    /// Bandwidth in bytes per second (`None`: unlimited).
    pub fn bytes_per_s(&self) -> Option<f64> {
        self.bandwidth_mbit.map(|b| b * 1e6 / 8.0)
    }

    /// Drop-tail queue length of the bottleneck in bytes (`usize::MAX` when unlimited).
    pub fn queue_bytes(&self) -> usize {
        match self.bytes_per_s() {
            Some(bps) => {
                let bdp = bps * self.rtt_ms.max(1.0) / 1e3;
                ((self.queue_bdp * bdp) as usize).max(MIN_QUEUE_BYTES)
            }
            None => usize::MAX,
        }
    }

    /// One line for people: `wan (40 ms RTT, 100 Mbit/s)`.
    pub fn describe(&self) -> String {
        match self.bandwidth_mbit {
            Some(b) => format!("{} ({} ms RTT, {} Mbit/s)", self.name, self.rtt_ms, b),
            None if self.is_emulated() => format!("{} ({} ms RTT)", self.name, self.rtt_ms),
            None => format!("{} (raw loopback)", self.name),
        }
    }
}

fn search_paths(name: &str) -> Vec<PathBuf> {
    let file = format!("{name}.toml");
    let mut v = vec![PathBuf::from("configs/profiles").join(&file)];
    let built = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../configs/profiles")
        .join(&file);
    if !v.contains(&built) {
        v.push(built);
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_names_bad_fields() {
        let p = Profile::parse(
            "name = \"x\"\nrtt_ms = 40\nbandwidth_mbit = 100\n",
            Path::new("x.toml"),
        )
        .unwrap();
        assert_eq!(p.one_way(), Duration::from_millis(20));
        assert_eq!(p.bytes_per_s(), Some(12.5e6));
        assert_eq!(p.queue_bytes(), 1_000_000);
        let e = Profile::parse("name = \"x\"\nrtt_ms = -1\n", Path::new("bad.toml")).unwrap_err();
        let e = format!("{e:#}");
        assert!(e.contains("bad.toml") && e.contains("rtt_ms"), "{e}");
        let e = Profile::parse(
            "name = \"x\"\nrtt_ms = 1\nbandwidth = 3\n",
            Path::new("b.toml"),
        )
        .unwrap_err();
        let e = format!("{e:#}");
        assert!(e.contains("b.toml") && e.contains("bandwidth"), "{e}");
        let e = Profile::parse("name = \"x\"\n", Path::new("c.toml")).unwrap_err();
        assert!(format!("{e:#}").contains("rtt_ms"));
    }

    #[test]
    fn builtin_profiles_resolve() {
        for (name, rtt) in [("lan", 1.0), ("wan", 40.0), ("none", 0.0)] {
            let p = Profile::resolve(name).unwrap();
            assert_eq!(p.name, name);
            assert_eq!(p.rtt_ms, rtt);
        }
        assert!(!Profile::resolve("none").unwrap().is_emulated());
        assert!(Profile::resolve("nope").is_err());
        assert_eq!(
            Profile::custom(Some(20.0), Some(50.0)).unwrap().name,
            "rtt20ms-50mbit"
        );
    }

    /// Fuzzing (issue 14): `Profile::parse` of random text and of valid profiles with
    /// values and TOML tokens spliced in never panics, names the file when it rejects,
    /// and what it accepts is usable (delays, queue sizes, description). 10,000 cases, or
    /// `TESSERA_FUZZ_CASES`; the allocation bound of the same TOML parser is measured by
    /// the `Config::parse` target of `tests/fuzz.rs`.
    #[test]
    fn fuzz_parse() {
        use proptest::prelude::*;
        use proptest::sample::{select, Index};
        use proptest::test_runner::{Config, RngAlgorithm, TestRng, TestRunner};
        const TOKENS: &[&str] = &[
            "-1",
            "0",
            "1e400",
            "1e-300",
            "nan",
            "inf",
            "-inf",
            "60001",
            "59999.9",
            "1e308",
            "\"\"",
            "\"x\"",
            "=",
            "\n",
            "[t]",
            "true",
            "[]",
            "{}",
            "99999999999999999999",
        ];
        const VALID: &[&str] = &[
            "name = \"wan\"\nrtt_ms = 40.0\nbandwidth_mbit = 100.0\nqueue_bdp = 2.0\n",
            "name = \"lan\"\nrtt_ms = 1\n",
        ];
        let text = prop_oneof![
            1 => "\\PC{0,120}",
            4 => (
                select(VALID),
                prop::collection::vec((any::<Index>(), select(TOKENS), any::<bool>()), 1..4)
            )
                .prop_map(|(v, edits)| {
                    let mut v = v.as_bytes().to_vec();
                    for (i, tok, replace) in edits {
                        let p = i.index(v.len() + 1);
                        let end = if replace {
                            p + v[p..].iter().take_while(|b| b.is_ascii_alphanumeric() || **b == b'.').count()
                        } else {
                            p
                        };
                        v.splice(p..end, tok.bytes());
                    }
                    String::from_utf8_lossy(&v).into_owned()
                }),
        ];
        let cases = std::env::var("TESSERA_FUZZ_CASES")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(10_000);
        let config = Config {
            cases,
            failure_persistence: None,
            ..Config::default()
        };
        let rng = TestRng::from_seed(RngAlgorithm::ChaCha, &[14; 32]);
        TestRunner::new_with_rng(config, rng)
            .run(&text, |t| {
                match Profile::parse(&t, Path::new("fuzz.toml")) {
                    Ok(p) => {
                        p.one_way();
                        p.queue_bytes();
                        p.describe();
                    }
                    Err(e) => assert!(format!("{e:#}").contains("fuzz.toml"), "{e:#}"),
                }
                Ok(())
            })
            .unwrap();
    }
}
