//! Party identities: self-signed certificates pinned by fingerprint.
//!
//! There is no certificate authority. [`keygen`] gives every party of a session a fresh
//! self-signed certificate (ECDSA P-256, subject alt name `tessera-p{id}`) and writes the
//! SHA-256 fingerprint of each DER certificate into the session's config file. The QUIC
//! transport then accepts a peer iff the certificate it presents hashes to the fingerprint
//! pinned for that peer, so distributing the config file (which holds no secrets)
//! distributes trust; the private keys (`p{id}.key`, mode 0600) stay on their hosts.
//!
//! Private keys are never logged: [`Identity`]'s `Debug` shows only the fingerprint.

use crate::config::Config;
use crate::error::{Error, PartyId, Result};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use sha2::{Digest, Sha256};
use std::io::Write;
use std::path::Path;

/// The TLS server name / subject alt name of party `id`'s certificate.
pub fn server_name(id: PartyId) -> String {
    format!("tessera-p{id}")
}

/// Lower-case hex SHA-256 of a DER certificate: the value pinned in the config.
pub fn fingerprint(cert_der: &[u8]) -> String {
    let digest = Sha256::digest(cert_der);
    let mut s = String::with_capacity(64);
    for b in digest {
        s.push_str(&format!("{b:02x}"));
    }
    s
}

/// A party's certificate and private key.
pub struct Identity {
    cert: CertificateDer<'static>,
    key: PrivateKeyDer<'static>,
    fingerprint: String,
}

impl Clone for Identity {
    fn clone(&self) -> Self {
        Identity {
            cert: self.cert.clone(),
            key: self.key.clone_key(),
            fingerprint: self.fingerprint.clone(),
        }
    }
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Identity")
            .field("fingerprint", &self.fingerprint)
            .field("key", &"<redacted>")
            .finish()
    }
}

impl Identity {
    /// Load party `id`'s certificate and key from the files the config names
    /// ([`Config::cert_path`], [`Config::key_path`]). Errors name the file. If the config
    /// already pins a fingerprint for `id` and the certificate does not match it, that is
    /// an error too (the peers would refuse this party).
    pub fn load(config: &Config, id: PartyId) -> Result<Identity> {
        let cert_path = config.cert_path(id)?;
        let key_path = config.key_path(id)?;
        let identity = Identity::from_pem_files(&cert_path, &key_path)?;
        if let Some(pinned) = &config.party(id)?.fingerprint {
            if !pinned.eq_ignore_ascii_case(&identity.fingerprint) {
                return Err(Error::Identity(format!(
                    "certificate {} of party {id} has fingerprint {} but {} pins {}; \
                     rerun keygen or use the config written with these keys",
                    cert_path.display(),
                    identity.fingerprint,
                    config.path.display(),
                    pinned
                )));
            }
        }
        Ok(identity)
    }

    /// Load a certificate and a PKCS#8 / SEC1 / PKCS#1 private key from PEM files.
    pub fn from_pem_files(cert_path: &Path, key_path: &Path) -> Result<Identity> {
        let cert_pem = read(cert_path)?;
        let key_pem = read(key_path)?;
        let cert = CertificateDer::from_pem_slice(&cert_pem).map_err(|e| {
            Error::Identity(format!(
                "{}: no PEM certificate found ({e})",
                cert_path.display()
            ))
        })?;
        // The key's parse error is deliberately vague: never echo key material.
        let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|_| {
            Error::Identity(format!("{}: no PEM private key found", key_path.display()))
        })?;
        Ok(Identity::from_der(cert, key))
    }

    /// Build an identity from DER parts.
    pub fn from_der(cert: CertificateDer<'static>, key: PrivateKeyDer<'static>) -> Identity {
        let fingerprint = fingerprint(&cert);
        Identity {
            cert,
            key,
            fingerprint,
        }
    }

    /// A fresh in-memory identity for party `id` (nothing is written).
    pub fn generate(id: PartyId) -> Result<Identity> {
        let ck = rcgen::generate_simple_self_signed(vec![server_name(id)]).map_err(|e| {
            Error::Identity(format!("generating a certificate for party {id}: {e}"))
        })?;
        let key = PrivateKeyDer::try_from(ck.key_pair.serialize_der())
            .map_err(|e| Error::Identity(format!("encoding party {id}'s key: {e}")))?;
        Ok(Identity::from_der(ck.cert.der().clone(), key))
    }

    /// The DER certificate.
    pub fn cert_der(&self) -> &CertificateDer<'static> {
        &self.cert
    }

    /// The private key (DER).
    pub fn key_der(&self) -> &PrivateKeyDer<'static> {
        &self.key
    }

    /// Lower-case hex SHA-256 of the DER certificate.
    pub fn fingerprint(&self) -> &str {
        &self.fingerprint
    }
}

fn read(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|source| Error::File {
        path: path.to_path_buf(),
        cause: source,
    })
}

fn write_file(path: &Path, data: &[u8], secret: bool) -> Result<()> {
    let file_err = |source| Error::File {
        path: path.to_path_buf(),
        cause: source,
    };
    if secret {
        // Recreate the file so that the mode applies even if it existed with another one.
        match std::fs::remove_file(path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(file_err(e)),
        }
    }
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    if secret {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts.open(path).map_err(file_err)?;
    f.write_all(data).map_err(file_err)?;
    f.sync_all().map_err(file_err)
}

/// Generate a certificate and key for every party of the session described by the config
/// file at `config_path`, write them as PEM to the files the config names (by default
/// `key_dir/p{id}.crt` and `key_dir/p{id}.key`, creating `key_dir`; keys get mode 0600 on
/// unix), and write each certificate's fingerprint into that party's `fingerprint` field
/// of the config file, keeping the rest of the file (comments, order) as it was.
///
/// Existing keys are replaced. Returns the fingerprints, indexed by party id.
pub fn keygen(config_path: impl AsRef<Path>) -> Result<Vec<String>> {
    let config_path = config_path.as_ref();
    let config = Config::load(config_path)?;
    let mut fingerprints = Vec::with_capacity(config.num_parties());
    for id in 0..config.num_parties() {
        let cert_path = config.cert_path(id)?;
        let key_path = config.key_path(id)?;
        for dir in [&cert_path, &key_path].iter().filter_map(|p| p.parent()) {
            std::fs::create_dir_all(dir).map_err(|source| Error::File {
                path: dir.to_path_buf(),
                cause: source,
            })?;
        }
        let ck = rcgen::generate_simple_self_signed(vec![server_name(id)]).map_err(|e| {
            Error::Identity(format!("generating a certificate for party {id}: {e}"))
        })?;
        write_file(&key_path, ck.key_pair.serialize_pem().as_bytes(), true)?;
        write_file(&cert_path, ck.cert.pem().as_bytes(), false)?;
        let fp = fingerprint(ck.cert.der());
        tracing::info!(party = id, cert = %cert_path.display(), fingerprint = %fp, "generated certificate");
        fingerprints.push(fp);
    }
    write_fingerprints(config_path, &fingerprints)?;
    Ok(fingerprints)
}

/// Set `fingerprint = "..."` in every `[[party]]` table of the config file, keeping the
/// file's formatting and comments.
pub fn write_fingerprints(config_path: &Path, fingerprints: &[String]) -> Result<()> {
    let text = std::fs::read_to_string(config_path).map_err(|source| Error::File {
        path: config_path.to_path_buf(),
        cause: source,
    })?;
    let cfg_err = |detail: String| Error::Config {
        path: config_path.to_path_buf(),
        detail,
    };
    let mut doc: toml_edit::DocumentMut = text
        .parse()
        .map_err(|e: toml_edit::TomlError| cfg_err(e.to_string()))?;
    let mut done = vec![false; fingerprints.len()];
    let mut set = |id: Option<i64>| -> Option<String> {
        let id = usize::try_from(id?).ok()?;
        let fp = fingerprints.get(id)?;
        done[id] = true;
        Some(fp.clone())
    };
    match doc.get_mut("party") {
        Some(toml_edit::Item::ArrayOfTables(tables)) => {
            for t in tables.iter_mut() {
                if let Some(fp) = set(t.get("id").and_then(|v| v.as_integer())) {
                    t["fingerprint"] = toml_edit::value(fp);
                }
            }
        }
        Some(toml_edit::Item::Value(toml_edit::Value::Array(arr))) => {
            for v in arr.iter_mut() {
                if let Some(t) = v.as_inline_table_mut() {
                    if let Some(fp) = set(t.get("id").and_then(|v| v.as_integer())) {
                        t.insert("fingerprint", fp.into());
                    }
                }
            }
        }
        _ => {
            return Err(cfg_err(
                "no [[party]] tables to write fingerprints into".into(),
            ))
        }
    }
    if let Some(id) = done.iter().position(|d| !d) {
        return Err(cfg_err(format!("no [[party]] table with id = {id}")));
    }
    write_file(config_path, doc.to_string().as_bytes(), false)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::path::PathBuf;

    /// A fresh empty directory under the system temp dir.
    pub(crate) fn temp_dir(tag: &str) -> PathBuf {
        use std::sync::atomic::{AtomicUsize, Ordering};
        static N: AtomicUsize = AtomicUsize::new(0);
        let d = std::env::temp_dir().join(format!(
            "tessera-test-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    pub(crate) fn write_config(
        dir: &Path,
        setting: &str,
        ports: [u16; 3],
        start_s: u64,
        io_s: u64,
    ) -> PathBuf {
        let path = dir.join("tessera.toml");
        let mut text = format!(
            "# session config\nsetting = \"{setting}\"\nfrac_bits = 16\nstart_timeout_s = {start_s}\n\
             io_timeout_s = {io_s}\nkey_dir = \"keys\" # next to this file\npreprocessing_dir = \"pre\"\n"
        );
        for (id, port) in ports.iter().enumerate() {
            text.push_str(&format!(
                "\n[[party]] # party {id}\nid = {id}\naddr = \"127.0.0.1:{port}\"\n"
            ));
        }
        std::fs::write(&path, text).unwrap();
        path
    }

    #[test]
    fn keygen_writes_keys_and_fingerprints() {
        let dir = temp_dir("keygen");
        let path = write_config(&dir, "3pc", [1, 2, 3], 30, 60);
        let fps = keygen(&path).unwrap();
        assert_eq!(fps.len(), 3);
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.contains("# session config"), "comments kept:\n{text}");
        assert!(
            text.contains("# next to this file"),
            "comments kept:\n{text}"
        );
        let config = Config::load(&path).unwrap();
        for (id, fp) in fps.iter().enumerate() {
            assert_eq!(config.fingerprint(id).unwrap(), fp);
            let ident = Identity::load(&config, id).unwrap();
            assert_eq!(ident.fingerprint(), fp);
            assert!(!format!("{ident:?}").contains("PRIVATE"));
            #[cfg(unix)]
            {
                use std::os::unix::fs::PermissionsExt;
                let mode = std::fs::metadata(config.key_path(id).unwrap())
                    .unwrap()
                    .permissions()
                    .mode();
                assert_eq!(mode & 0o777, 0o600);
            }
        }
        assert_ne!(fps[0], fps[1]);
        // Keygen again: new keys, fingerprints replaced in place.
        let fps2 = keygen(&path).unwrap();
        assert_ne!(fps, fps2);
        let config = Config::load(&path).unwrap();
        assert_eq!(config.fingerprint(2).unwrap(), fps2[2]);
        assert_eq!(
            std::fs::read_to_string(&path)
                .unwrap()
                .matches("fingerprint")
                .count(),
            3
        );
    }

    #[test]
    fn missing_key_file_is_named() {
        let dir = temp_dir("nokey");
        let path = write_config(&dir, "2pc", [1, 2, 3], 30, 60);
        keygen(&path).unwrap();
        let config = Config::load(&path).unwrap();
        let key = config.key_path(1).unwrap();
        std::fs::remove_file(&key).unwrap();
        let e = Identity::load(&config, 1).unwrap_err().to_string();
        assert!(e.contains(&key.display().to_string()), "{e}");
        std::fs::write(&key, "garbage").unwrap();
        let e = Identity::load(&config, 1).unwrap_err().to_string();
        assert!(e.contains(&key.display().to_string()), "{e}");
    }

    #[test]
    fn mismatched_certificate_is_reported() {
        let dir = temp_dir("mismatch");
        let path = write_config(&dir, "2pc", [1, 2, 3], 30, 60);
        keygen(&path).unwrap();
        let mut config = Config::load(&path).unwrap();
        config.parties[0].fingerprint = Some("ab".repeat(32));
        let e = Identity::load(&config, 0).unwrap_err().to_string();
        assert!(e.contains("p0.crt") && e.contains("pins"), "{e}");
    }
}
