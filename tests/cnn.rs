//! Private CNN classification over processes (QUIC on loopback): the committed digits
//! ResNet (ReLU and polynomial variants) in both settings, and `bench resnet` end to end.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicU16, Ordering};

const BIN: &str = env!("CARGO_BIN_EXE_tessera");

static NEXT_PORT: AtomicU16 = AtomicU16::new(0);

/// A fresh directory and a config with three free-ish ports (distinct per test process;
/// a different port range from tests/multiprocess.rs).
fn session(setting: &str) -> (PathBuf, PathBuf) {
    let base = 42000 + (std::process::id() % 1000) as u16 * 10;
    let off = NEXT_PORT.fetch_add(3, Ordering::SeqCst);
    let dir = std::env::temp_dir().join(format!("tessera-cnn-{}-{}", std::process::id(), off));
    std::fs::create_dir_all(&dir).unwrap();
    let mut toml = format!(
        "setting = \"{setting}\"\nfrac_bits = 16\nstart_timeout_s = 30\nio_timeout_s = 120\nkey_dir = \"keys\"\npreprocessing_dir = \"pre\"\n"
    );
    for id in 0..3u16 {
        toml.push_str(&format!(
            "\n[[party]]\nid = {id}\naddr = \"127.0.0.1:{}\"\n",
            base + off + id
        ));
    }
    let cfg = dir.join("session.toml");
    std::fs::write(&cfg, toml).unwrap();
    (dir, cfg)
}

fn run(cfg: &Path, job: &[&str]) -> (Output, String) {
    let mut a = vec!["launch", "--config", cfg.to_str().unwrap(), "--"];
    a.extend(job);
    let o = Command::new(BIN)
        .args(&a)
        .current_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join(".."))
        .stdin(Stdio::null())
        .output()
        .expect("run tessera");
    let t = format!(
        "{}\n{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    (o, t)
}

fn json(cfg: &Path, job: &[&str]) -> serde_json::Value {
    let (o, t) = run(cfg, job);
    assert!(o.status.success(), "{job:?}:\n{t}");
    let out = String::from_utf8_lossy(&o.stdout);
    let line = out.lines().last().expect("a JSON line");
    serde_json::from_str(line).unwrap_or_else(|e| panic!("bad JSON {line:?}: {e}"))
}

/// The committed digits models on the first 200 test images, both variants, both
/// settings: the secure classes agree with the plaintext model's on >= 99.5% (the issue's
/// bar; in practice all), the secure accuracy equals the plaintext one within 0.5 points,
/// and the rounds of a batch are held (2pc: ReLU 28, poly 33; 3pc: 33 and 38: five
/// activations, six conv products (the downsample included), the classifier and a
/// 4-level argmax; 3pc adds the input's sharing round and, per argmax level, the reshare
/// its select's product needs. 45 / 45 in 3pc before stop 35 left the activations' and
/// products' results as pairs instead of resharing each).
#[test]
fn classify_digits_agrees_with_plaintext_in_both_settings() {
    for (s, relu_rounds, poly_rounds) in [("2pc", 28, 33), ("3pc", 33, 38)] {
        let (_d, cfg) = session(s);
        for (act, rounds) in [("relu", relu_rounds), ("poly", poly_rounds)] {
            let j = json(
                &cfg,
                &[
                    "classify", "--task", "digits", "--act", act, "--limit", "200", "--batch",
                    "100", "--json",
                ],
            );
            assert_eq!(j["n"], 200, "{s} {act}: {j}");
            assert!(j["agree"].as_f64().unwrap() >= 0.995, "{s} {act}: {j}");
            let (sa, pa) = (
                j["secure_acc"].as_f64().unwrap(),
                j["plain_acc"].as_f64().unwrap(),
            );
            assert!((sa - pa).abs() <= 0.005 && pa > 0.95, "{s} {act}: {j}");
            assert_eq!(j["rounds_per_batch"][0], rounds, "{s} {act}: {j}");
            assert_eq!(j["batches"], 2, "{s} {act}: {j}");
        }
    }
}

/// Bad input to `classify` is refused before any party starts, naming what is wrong.
#[test]
fn classify_refuses_bad_input() {
    let (dir, cfg) = session("2pc");
    let (o, t) = run(&cfg, &["classify", "--task", "cifar"]);
    assert!(
        !o.status.success() && t.contains("unknown --task \"cifar\""),
        "{t}"
    );
    let (o, t) = run(&cfg, &["classify", "--task", "digits", "--act", "gelu"]);
    assert!(!o.status.success() && t.contains("--act \"gelu\""), "{t}");
    let missing = dir.join("no-model");
    let (o, t) = run(
        &cfg,
        &[
            "classify",
            "--model",
            missing.to_str().unwrap(),
            "--images",
            "data/digits/test.safetensors",
        ],
    );
    assert!(
        !o.status.success() && t.contains("no-model/config.toml"),
        "{t}"
    );
    let (o, t) = run(&cfg, &["bench", "resnet", "--depth", "34"]);
    assert!(!o.status.success() && t.contains("--depth 34"), "{t}");
}

/// `bench resnet` end to end: ResNet-18 at CIFAR shape in 2pc, logits within 1e-2 of the
/// f64 forward pass (fixed-point error through 20 layers; measured ~1.3e-3) and the same
/// top class.
#[test]
fn bench_resnet18_matches_plaintext() {
    let (_d, cfg) = session("2pc");
    let j = json(&cfg, &["bench", "resnet", "--depth", "18", "--json"]);
    assert!(j["max_abs_err"].as_f64().unwrap() < 1e-2, "{j}");
    assert_eq!(j["top1_agree"], true, "{j}");
    assert!(j["rounds"].as_u64().unwrap() > 40, "{j}");
}
