//! The session configuration file.
//!
//! One TOML file describes a whole session: the setting (2PC with a dealer, or 3PC), the
//! fixed-point format, the deadlines, where keys and preprocessing material live, and one
//! `[[party]]` table per endpoint with its address and the SHA-256 fingerprint of its
//! certificate (written by [`crate::identity::keygen`]). Every process of a session reads
//! the same file; relative paths are resolved against the directory of the file, so a
//! session directory can be moved or copied to another host as a whole.
//!
//! ```toml
//! setting = "2pc"            # "2pc" (P0, P1 + dealer id 2) or "3pc" (P0, P1, P2)
//! frac_bits = 16             # 12..=24
//! start_timeout_s = 30       # peers must connect within this
//! io_timeout_s = 60          # any single receive waits at most this (a slow peer)
//! liveness_s = 5             # optional: a peer silent this long is gone (a dead peer)
//! key_dir = "keys"           # relative to the config file's directory
//! preprocessing_dir = "out/preprocessing"
//! [[party]]
//! id = 0
//! addr = "127.0.0.1:17100"
//! fingerprint = "..."        # optional until keygen has run
//! # cert = "...", key = "..." (default key_dir/p{id}.crt|.key)
//! ```
//!
//! [`Config::load`] parses and validates; every error names the file and the field.

use crate::error::{Error, PartyId, Result};
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Default [`Config::liveness_s`]: a dead peer is noticed within this many seconds.
pub const DEFAULT_LIVENESS_S: f64 = 5.0;

fn default_liveness_s() -> f64 {
    DEFAULT_LIVENESS_S
}

/// Supported range of fractional bits.
pub const FRAC_BITS_RANGE: std::ops::RangeInclusive<u32> = 12..=24;

pub use crate::party::Setting;

/// One `[[party]]` table: an endpoint of the session.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PartyConfig {
    /// The party id (0, 1, 2; in 2PC id 2 is the dealer).
    pub id: PartyId,
    /// Where the party listens, `IP:PORT` or `HOST:PORT`.
    pub addr: String,
    /// Lower-case hex SHA-256 of the party's DER certificate (absent before keygen).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fingerprint: Option<String>,
    /// Certificate file (PEM); default `key_dir/p{id}.crt`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert: Option<PathBuf>,
    /// Private key file (PEM, PKCS#8); default `key_dir/p{id}.key`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<PathBuf>,
}

/// A validated session configuration.
///
/// Fields are public so that tools can adjust a loaded config (for instance the address
/// a party binds to on a multi-host run, see [`Config::override_addr`]); call
/// [`Config::validate`] again after editing by hand.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// 2PC with dealer or 3PC.
    pub setting: Setting,
    /// Fractional bits of the fixed-point encoding, in 12..=24.
    pub frac_bits: u32,
    /// Seconds within which all peers must have connected.
    pub start_timeout_s: u64,
    /// Seconds any single receive may wait: the patience for a peer that is alive but
    /// slow (a long local computation on the other side).
    pub io_timeout_s: u64,
    /// Seconds after which a peer from which no packet at all arrived is declared gone
    /// (default [`DEFAULT_LIVENESS_S`]). QUIC keep-alives flow every `liveness_s / 4`
    /// while both processes live, even during long computations, so a silence this long
    /// means the peer's process or host is gone (or frozen): liveness apart from patience.
    #[serde(default = "default_liveness_s")]
    pub liveness_s: f64,
    /// Directory with certificates and keys, relative to the config file's directory.
    pub key_dir: PathBuf,
    /// Directory with preprocessing material, relative to the config file's directory.
    pub preprocessing_dir: PathBuf,
    /// The endpoints, one `[[party]]` table each.
    #[serde(rename = "party")]
    pub parties: Vec<PartyConfig>,
    /// The file this config was loaded from (empty if built in memory).
    #[serde(skip)]
    pub path: PathBuf,
}

impl Config {
    /// Read, parse and validate the config file at `path`.
    pub fn load(path: impl AsRef<Path>) -> Result<Config> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|source| Error::File {
            path: path.to_path_buf(),
            cause: source,
        })?;
        Config::parse(&text, path)
    }

    /// Parse and validate config text; `path` is where it came from (used to resolve
    /// relative directories and in error messages).
    pub fn parse(text: &str, path: impl AsRef<Path>) -> Result<Config> {
        let path = path.as_ref();
        let mut config: Config = toml::from_str(text).map_err(|e| Error::Config {
            path: path.to_path_buf(),
            detail: e.to_string().trim_end().to_string(),
        })?;
        config.path = path.to_path_buf();
        config.validate()?;
        Ok(config)
    }

    /// Check the invariants `load` guarantees: ids exactly `0..n` for the setting, no
    /// duplicates, `frac_bits` in range, parsable addresses and fingerprints, non-zero
    /// timeouts.
    pub fn validate(&self) -> Result<()> {
        let err = |detail: String| Error::Config {
            path: self.path.clone(),
            detail,
        };
        if !FRAC_BITS_RANGE.contains(&self.frac_bits) {
            return Err(err(format!(
                "frac_bits = {} is out of range: must be in {}..={}",
                self.frac_bits,
                FRAC_BITS_RANGE.start(),
                FRAC_BITS_RANGE.end()
            )));
        }
        if self.start_timeout_s == 0 {
            return Err(err("start_timeout_s must be at least 1".into()));
        }
        if self.io_timeout_s == 0 {
            return Err(err("io_timeout_s must be at least 1".into()));
        }
        if !(0.5..=3600.0).contains(&self.liveness_s) {
            return Err(err(format!(
                "liveness_s = {} is out of range: must be in 0.5..=3600 seconds",
                self.liveness_s
            )));
        }
        let n = self.setting.num_parties();
        let mut seen = BTreeSet::new();
        for (i, p) in self.parties.iter().enumerate() {
            if !seen.insert(p.id) {
                return Err(err(format!(
                    "party[{i}]: duplicate id = {} (each [[party]] needs its own id)",
                    p.id
                )));
            }
            if p.id >= n {
                return Err(err(format!(
                    "party[{i}]: id = {} is out of range: setting \"{}\" has parties 0..{}",
                    p.id,
                    self.setting,
                    n - 1
                )));
            }
            if let Err(detail) = check_addr(&p.addr) {
                return Err(err(format!(
                    "party[{i}] (id {}): addr = {:?}: {detail}",
                    p.id, p.addr
                )));
            }
            if let Some(fp) = &p.fingerprint {
                if !is_fingerprint(fp) {
                    return Err(err(format!(
                        "party[{i}] (id {}): fingerprint = {fp:?} is not 64 hex digits (SHA-256); rerun keygen",
                        p.id
                    )));
                }
            }
        }
        let dealer = self.setting.dealer();
        let missing: Vec<String> = (0..n)
            .filter(|id| !seen.contains(id))
            .map(|id| match dealer {
                Some(d) if d == id => format!("{id} (the dealer)"),
                _ => id.to_string(),
            })
            .collect();
        if !missing.is_empty() {
            return Err(err(format!(
                "setting \"{}\" needs [[party]] tables with ids 0..={}; missing id {}",
                self.setting,
                n - 1,
                missing.join(", ")
            )));
        }
        Ok(())
    }

    /// Number of endpoints (3 in both settings: P0, P1 and the dealer or P2).
    pub fn num_parties(&self) -> usize {
        self.setting.num_parties()
    }

    /// The `[[party]]` table of `id`.
    pub fn party(&self, id: PartyId) -> Result<&PartyConfig> {
        self.parties
            .iter()
            .find(|p| p.id == id)
            .ok_or(Error::PartyId {
                id,
                n: self.num_parties(),
            })
    }

    fn party_mut(&mut self, id: PartyId) -> Result<&mut PartyConfig> {
        let n = self.num_parties();
        self.parties
            .iter_mut()
            .find(|p| p.id == id)
            .ok_or(Error::PartyId { id, n })
    }

    /// The directory relative paths are resolved against (the config file's directory).
    pub fn base_dir(&self) -> PathBuf {
        match self.path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        }
    }

    fn resolve(&self, p: &Path) -> PathBuf {
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            self.base_dir().join(p)
        }
    }

    /// The key directory, resolved against the config file's directory.
    pub fn key_dir_path(&self) -> PathBuf {
        self.resolve(&self.key_dir)
    }

    /// The preprocessing directory, resolved against the config file's directory.
    pub fn preprocessing_path(&self) -> PathBuf {
        self.resolve(&self.preprocessing_dir)
    }

    /// Certificate file of party `id`: its `cert` field, else `key_dir/p{id}.crt`.
    pub fn cert_path(&self, id: PartyId) -> Result<PathBuf> {
        let p = self.party(id)?;
        Ok(match &p.cert {
            Some(c) => self.resolve(c),
            None => self.key_dir_path().join(format!("p{id}.crt")),
        })
    }

    /// Private key file of party `id`: its `key` field, else `key_dir/p{id}.key`.
    pub fn key_path(&self, id: PartyId) -> Result<PathBuf> {
        let p = self.party(id)?;
        Ok(match &p.key {
            Some(k) => self.resolve(k),
            None => self.key_dir_path().join(format!("p{id}.key")),
        })
    }

    /// The pinned certificate fingerprint of `id`, or an error telling to run keygen.
    pub fn fingerprint(&self, id: PartyId) -> Result<&str> {
        self.party(id)?
            .fingerprint
            .as_deref()
            .ok_or_else(|| Error::Config {
                path: self.path.clone(),
                detail: format!(
                    "party {id} has no fingerprint field; run keygen (or copy the config written by keygen)"
                ),
            })
    }

    /// Resolve the address of `id` (DNS names are looked up; the first result wins).
    pub fn socket_addr(&self, id: PartyId) -> Result<SocketAddr> {
        let p = self.party(id)?;
        if let Ok(a) = p.addr.parse::<SocketAddr>() {
            return Ok(a);
        }
        let err = |detail: String| Error::Config {
            path: self.path.clone(),
            detail: format!("party {id}: addr = {:?}: {detail}", p.addr),
        };
        p.addr
            .to_socket_addrs()
            .map_err(|e| err(format!("cannot resolve: {e}")))?
            .next()
            .ok_or_else(|| err("resolves to no address".into()))
    }

    /// Replace the address of `id` (e.g. from a command-line flag on a multi-host run).
    pub fn override_addr(&mut self, id: PartyId, addr: impl Into<String>) -> Result<()> {
        let addr = addr.into();
        if let Err(detail) = check_addr(&addr) {
            return Err(Error::Config {
                path: self.path.clone(),
                detail: format!("address override for party {id}: {addr:?}: {detail}"),
            });
        }
        self.party_mut(id)?.addr = addr;
        Ok(())
    }

    /// `start_timeout_s` as a duration.
    pub fn start_timeout(&self) -> Duration {
        Duration::from_secs(self.start_timeout_s)
    }

    /// `liveness_s` as a duration.
    pub fn liveness(&self) -> Duration {
        Duration::from_secs_f64(self.liveness_s)
    }

    /// `io_timeout_s` as a duration.
    pub fn io_timeout(&self) -> Duration {
        Duration::from_secs(self.io_timeout_s)
    }
}

/// `IP:PORT`, or `HOST:PORT` with a plausible host name (resolved only when connecting).
fn check_addr(addr: &str) -> std::result::Result<(), String> {
    if addr.parse::<SocketAddr>().is_ok() {
        return Ok(());
    }
    let bad = || "not an address: expected IP:PORT or HOST:PORT, e.g. \"127.0.0.1:17100\"";
    let (host, port) = addr.rsplit_once(':').ok_or_else(|| bad().to_string())?;
    if port.parse::<u16>().is_err() {
        return Err(format!("bad port {port:?}; {}", bad()));
    }
    let host_ok = !host.is_empty()
        && host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.')
        && !host.starts_with(['-', '.']);
    if !host_ok {
        return Err(format!("bad host {host:?}; {}", bad()));
    }
    Ok(())
}

/// 64 hex digits.
pub(crate) fn is_fingerprint(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
setting = "2pc"
frac_bits = 16
start_timeout_s = 30
io_timeout_s = 60
key_dir = "keys"
preprocessing_dir = "out/preprocessing"
[[party]]
id = 0
addr = "127.0.0.1:17100"
[[party]]
id = 1
addr = "127.0.0.1:17101"
[[party]]
id = 2
addr = "localhost:17102"
"#;

    fn parse(text: &str) -> Result<Config> {
        Config::parse(text, "/tmp/session/tessera.toml")
    }

    fn err_text(text: &str) -> String {
        parse(text).unwrap_err().to_string()
    }

    #[test]
    fn good_config_and_paths() {
        let c = parse(GOOD).unwrap();
        assert_eq!(c.setting, Setting::TwoPc);
        assert_eq!(c.num_parties(), 3);
        assert_eq!(c.setting.dealer(), Some(2));
        assert_eq!(
            c.cert_path(1).unwrap(),
            PathBuf::from("/tmp/session/keys/p1.crt")
        );
        assert_eq!(
            c.key_path(2).unwrap(),
            PathBuf::from("/tmp/session/keys/p2.key")
        );
        assert_eq!(
            c.preprocessing_path(),
            PathBuf::from("/tmp/session/out/preprocessing")
        );
        assert_eq!(
            c.socket_addr(0).unwrap(),
            "127.0.0.1:17100".parse().unwrap()
        );
        assert!(c.party(3).is_err());
        assert!(c.fingerprint(0).unwrap_err().to_string().contains("keygen"));
    }

    #[test]
    fn explicit_cert_and_override() {
        let text = GOOD.replace(
            "addr = \"127.0.0.1:17101\"",
            "addr = \"127.0.0.1:17101\"\ncert = \"/etc/p1.pem\"\nkey = \"k/p1.pem\"",
        );
        let mut c = parse(&text).unwrap();
        assert_eq!(c.cert_path(1).unwrap(), PathBuf::from("/etc/p1.pem"));
        assert_eq!(
            c.key_path(1).unwrap(),
            PathBuf::from("/tmp/session/k/p1.pem")
        );
        c.override_addr(1, "0.0.0.0:9000").unwrap();
        assert_eq!(c.party(1).unwrap().addr, "0.0.0.0:9000");
        assert!(c.override_addr(1, "nope").is_err());
    }

    #[test]
    fn missing_field_is_named() {
        let e = err_text(&GOOD.replace("frac_bits = 16\n", ""));
        assert!(e.contains("frac_bits"), "{e}");
        assert!(e.contains("tessera.toml"), "{e}");
        let e = err_text(&GOOD.replace("addr = \"127.0.0.1:17101\"\n", ""));
        assert!(e.contains("addr"), "{e}");
    }

    #[test]
    fn unknown_field_is_named() {
        let e = err_text(&GOOD.replace("frac_bits = 16", "frac_bits = 16\nfrac_bitz = 3"));
        assert!(e.contains("frac_bitz"), "{e}");
    }

    #[test]
    fn duplicate_id() {
        let e = err_text(&GOOD.replace("id = 2", "id = 1"));
        assert!(e.contains("duplicate id = 1"), "{e}");
    }

    #[test]
    fn wrong_ids() {
        let e = err_text(&GOOD.replace("id = 2", "id = 3"));
        assert!(e.contains("id = 3 is out of range"), "{e}");
        let three = GOOD.replace("setting = \"2pc\"", "setting = \"3pc\"");
        let cut = three.find("[[party]]\nid = 2").unwrap();
        let e = err_text(&three[..cut]);
        assert!(e.contains("missing id 2"), "{e}");
        let e = err_text(&GOOD[..GOOD.find("[[party]]\nid = 2").unwrap()]);
        assert!(e.contains("missing id 2 (the dealer)"), "{e}");
        let e = err_text(&GOOD.replace("\"2pc\"", "\"4pc\""));
        assert!(e.contains("setting") || e.contains("4pc"), "{e}");
    }

    #[test]
    fn bad_frac_bits() {
        let e = err_text(&GOOD.replace("frac_bits = 16", "frac_bits = 30"));
        assert!(e.contains("frac_bits = 30 is out of range"), "{e}");
        let e = err_text(&GOOD.replace("frac_bits = 16", "frac_bits = 11"));
        assert!(e.contains("frac_bits"), "{e}");
    }

    #[test]
    fn bad_addr_and_timeouts() {
        let e = err_text(&GOOD.replace("127.0.0.1:17101", "127.0.0.1"));
        assert!(e.contains("addr = \"127.0.0.1\""), "{e}");
        let e = err_text(&GOOD.replace("127.0.0.1:17101", "127.0.0.1:99999"));
        assert!(e.contains("addr"), "{e}");
        let e = err_text(&GOOD.replace("io_timeout_s = 60", "io_timeout_s = 0"));
        assert!(e.contains("io_timeout_s"), "{e}");
        let e = err_text(&GOOD.replace("start_timeout_s = 30", "start_timeout_s = 0"));
        assert!(e.contains("start_timeout_s"), "{e}");
        for bad in ["0.1", "-1", "1e9", "nan"] {
            let e = err_text(&GOOD.replace(
                "io_timeout_s = 60",
                &format!("io_timeout_s = 60\nliveness_s = {bad}"),
            ));
            assert!(e.contains("liveness_s"), "{bad}: {e}");
        }
        let e =
            err_text(&GOOD.replace("io_timeout_s = 60", "io_timeout_s = 60\nliveness_s = \"x\""));
        assert!(e.contains("liveness_s"), "{e}");
    }

    #[test]
    fn liveness_defaults_and_parses() {
        assert_eq!(parse(GOOD).unwrap().liveness_s, DEFAULT_LIVENESS_S);
        let c = parse(&GOOD.replace("io_timeout_s = 60", "io_timeout_s = 60\nliveness_s = 1.5"))
            .unwrap();
        assert_eq!(c.liveness(), Duration::from_millis(1500));
    }

    #[test]
    fn bad_fingerprint() {
        let e = err_text(&GOOD.replace(
            "addr = \"127.0.0.1:17100\"",
            "addr = \"127.0.0.1:17100\"\nfingerprint = \"abc\"",
        ));
        assert!(e.contains("fingerprint"), "{e}");
    }

    #[test]
    fn missing_file_is_named() {
        let e = Config::load("/nonexistent/tessera.toml")
            .unwrap_err()
            .to_string();
        assert!(e.contains("/nonexistent/tessera.toml"), "{e}");
    }
}
