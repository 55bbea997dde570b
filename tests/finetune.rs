//! Private fine-tuning over processes (QUIC on loopback): the digits task (the committed
//! backbone pretrained on digits 0-4, a head trained privately on 5-9), an MLP head on
//! synthetic features, the text task on the fetched MiniLM and movie-review data (skipped,
//! with a printed reason, where they are not fetched), and bad input. Each run is compared
//! with the plaintext twin the launcher trains in f64 from the same initial weights, batch
//! order and hyper-parameters.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicU16, Ordering};

const BIN: &str = env!("CARGO_BIN_EXE_tessera");

static NEXT_PORT: AtomicU16 = AtomicU16::new(0);

/// A fresh directory and a config with three ports (a range apart from the other tests').
fn session(setting: &str) -> (PathBuf, PathBuf) {
    let base = 47000 + (std::process::id() % 1000) as u16 * 10;
    let off = NEXT_PORT.fetch_add(3, Ordering::SeqCst);
    let dir = std::env::temp_dir().join(format!("tessera-ft-{}-{}", std::process::id(), off));
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

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn run(cfg: &Path, job: &[&str]) -> (Output, String) {
    let mut a = vec!["launch", "--config", cfg.to_str().unwrap(), "--"];
    a.extend(job);
    let o = Command::new(BIN)
        .args(&a)
        .current_dir(root())
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

fn f(j: &serde_json::Value, k: &str) -> f64 {
    j[k].as_f64()
        .unwrap_or_else(|| panic!("{k} missing in {j}"))
}

fn losses(j: &serde_json::Value, k: &str) -> Vec<f64> {
    j[k].as_array()
        .unwrap_or_else(|| panic!("{k} missing in {j}"))
        .iter()
        .map(|v| v.as_f64().unwrap())
        .collect()
}

/// The secure run follows its twin: the same test accuracy within 1 point (the issue's
/// bar), the per-epoch losses within 2e-3 (the secure loss is a sum of logarithms within
/// 1e-4 each, of softmax outputs within ~1e-4, over weights that stay within ~1e-4 of the
/// twin's), and the loss decreases.
fn assert_follows_twin(j: &serde_json::Value, what: &str) {
    let (sa, pa) = (f(j, "secure_test_acc"), f(j, "plain_test_acc"));
    assert!(
        (sa - pa).abs() <= 0.01,
        "{what}: acc {sa} vs twin {pa}: {j}"
    );
    let (ls, lp) = (losses(j, "losses"), losses(j, "plain_losses"));
    assert_eq!(ls.len(), lp.len(), "{what}");
    for (e, (a, b)) in ls.iter().zip(&lp).enumerate() {
        assert!(
            (a - b).abs() < 2e-3,
            "{what}: epoch {e} loss {a} vs twin {b}"
        );
    }
    assert!(
        ls.last().unwrap() < &(ls[0] * 0.8),
        "{what}: the loss did not decrease: {ls:?}"
    );
}

/// The digits task on a subset (160 training, 100 test images, 10 epochs), both settings:
/// the trained head is far above chance (measured 83% on digits 5-9 from 160 examples; the
/// whole task reaches 96%) and follows the twin; the training's rounds are held.
#[test]
fn finetune_digits_follows_the_twin_in_both_settings() {
    for s in ["2pc", "3pc"] {
        let (_d, cfg) = session(s);
        let j = json(
            &cfg,
            &[
                "finetune",
                "--task",
                "digits",
                "--limit",
                "160",
                "--test-limit",
                "100",
                "--epochs",
                "10",
                "--json",
            ],
        );
        println!("digits {s}: {j}");
        assert_eq!(j["n_train"], 160);
        assert_eq!(j["n_test"], 100);
        assert_eq!(j["classes"], 5);
        assert_follows_twin(&j, &format!("digits {s}"));
        assert!(f(&j, "plain_test_acc") > 0.75, "{s}: {j}");
        assert!(f(&j, "agree") >= 0.99, "{s}: {j}");
        // 10 epochs x (5 steps + the loss's opening to P0), plus the labels' input in 3pc.
        // A step over processes with material dealt just in time takes one round more
        // than the in-memory count of the unit test (21 / 22; 3pc 24 before stop 35's pair
        // form; 27 / 30 before stop 34's 3-round softmax reciprocal and logarithm).
        let want = if s == "2pc" {
            10 * (5 * 22 + 1)
        } else {
            10 * (5 * 23 + 1) + 1
        };
        assert_eq!(j["train_rounds"], want, "{s}: {j}");
    }
}

/// An MLP head (one hidden ReLU layer) on synthetic features, both settings: it follows
/// the twin through the hidden layer's backward pass.
#[test]
fn finetune_mlp_head_on_synthetic_features() {
    for s in ["2pc", "3pc"] {
        let (_d, cfg) = session(s);
        let j = json(
            &cfg,
            &[
                "finetune",
                "--synthetic",
                "240x24x4",
                "--hidden",
                "16",
                "--epochs",
                "4",
                "--json",
            ],
        );
        println!("mlp {s}: {j}");
        assert_eq!(j["n_test"], 60);
        assert_follows_twin(&j, &format!("mlp {s}"));
        assert!(f(&j, "agree") >= 0.95, "{s}: {j}");
    }
}

/// The text task where MiniLM and the movie-review set are fetched (CI fetches them):
/// 16 training and 8 test sentences (each ~2.4 s of MiniLM under MPC, dealing included),
/// both settings.
#[test]
fn finetune_text_follows_the_twin_where_fetched() {
    let m = root().join("models");
    for need in [
        m.join("all-MiniLM-L6-v2/model.safetensors"),
        m.join("text-cls/train.jsonl"),
    ] {
        if !need.exists() {
            println!(
                "SKIPPED finetune_text_follows_the_twin_where_fetched: {} is missing (run \
                 scripts/fetch-minilm.sh and scripts/fetch-text-data.sh)",
                need.display()
            );
            return;
        }
    }
    for s in ["2pc", "3pc"] {
        let (dir, cfg) = session(s);
        let head = dir.join("text-head");
        let head_s = head.to_string_lossy().to_string();
        let j = json(
            &cfg,
            &[
                "finetune",
                "--task",
                "text",
                "--limit",
                "16",
                "--test-limit",
                "8",
                "--epochs",
                "3",
                "--save-head",
                &head_s,
                "--json",
            ],
        );
        // The saved head classifies the first two test sentences as the session did.
        let test = std::fs::read_to_string(m.join("text-cls/test.jsonl")).unwrap();
        let mut job = vec![
            "infer",
            "--model",
            "models/all-MiniLM-L6-v2",
            "--max-len",
            "32",
            "--head",
            &head_s,
            "--json",
        ];
        let texts: Vec<String> = test
            .lines()
            .take(2)
            .map(|l| {
                let v: serde_json::Value = serde_json::from_str(l).unwrap();
                v["text"].as_str().unwrap().to_string()
            })
            .collect();
        for t in &texts {
            job.extend(["--text", t.as_str()]);
        }
        let ji = json(&cfg, &job);
        let want = &j["test_classes"].as_array().unwrap()[..2];
        assert_eq!(
            ji["classes"].as_array().unwrap().as_slice(),
            want,
            "{s}: {ji}"
        );
        println!("text {s}: {j}");
        assert_eq!(j["classes"], 2);
        let (sa, pa) = (f(&j, "secure_test_acc"), f(&j, "plain_test_acc"));
        assert!((sa - pa).abs() <= 0.01, "{s}: {j}");
        for (a, b) in losses(&j, "losses").iter().zip(losses(&j, "plain_losses")) {
            assert!((a - b).abs() < 2e-3, "{s}: loss {a} vs {b}");
        }
    }
}

/// Bad input gets a clear error naming what is wrong, before or as the parties start.
#[test]
fn finetune_refuses_bad_input() {
    let (dir, cfg) = session("3pc");
    let cases: Vec<(Vec<String>, &str)> = vec![
        (
            vec![
                "--task".into(),
                "digits".into(),
                "--lr".into(),
                "100000".into(),
            ],
            "would overflow the fixed-point range",
        ),
        (
            vec![
                "--task".into(),
                "digits".into(),
                "--lr".into(),
                "1e-9".into(),
            ],
            "below the update's resolution",
        ),
        (
            vec![
                "--task".into(),
                "digits".into(),
                "--limit".into(),
                "0".into(),
            ],
            "--limit and --test-limit must be at least 1",
        ),
        (
            vec![
                "--task".into(),
                "digits".into(),
                "--classes".into(),
                "3".into(),
            ],
            "out of range for 3 classes",
        ),
        (vec!["--task".into(), "speech".into()], "unknown --task"),
        (
            vec![
                "--backbone".into(),
                "data/digits/backbone".into(),
                "--data".into(),
                "data/digits/test.safetensors".into(),
            ],
            "missing tensor `train_images`",
        ),
        (
            vec![
                "--backbone".into(),
                "data/digits/relu".into(),
                "--data".into(),
                "data/digits/finetune.safetensors".into(),
                "--limit".into(),
                "8".into(),
            ],
            // the relu model has 10 classes but the same image shape: accepted; a head of
            // the data's 5 classes is trained
            "",
        ),
        (vec!["--synthetic".into(), "10x0x3".into()], "--synthetic"),
        (
            vec![
                "--task".into(),
                "digits".into(),
                "--momentum".into(),
                "1.5".into(),
            ],
            "momentum 1.5 must be in [0, 1)",
        ),
    ];
    // a data file whose images do not fit the backbone (6x6 instead of 8x8)
    let bad = dir.join("bad.safetensors");
    write_images(&bad, 6);
    for (args, want) in cases.into_iter().chain([(
        vec![
            "--backbone".into(),
            "data/digits/backbone".into(),
            "--data".into(),
            bad.to_string_lossy().to_string(),
        ],
        "for a backbone of 8x8x1",
    )]) {
        let mut job = vec!["finetune"];
        job.extend(args.iter().map(String::as_str));
        job.extend(["--epochs", "1", "--test-limit", "4"]);
        let (o, t) = run(&cfg, &job);
        if want.is_empty() {
            assert!(o.status.success(), "{args:?}:\n{t}");
            continue;
        }
        assert!(!o.status.success(), "{args:?} was accepted:\n{t}");
        assert!(t.contains(want), "{args:?}: want {want:?} in:\n{t}");
        assert!(!t.contains("panicked"), "{args:?} panicked:\n{t}");
    }
}

/// A safetensors file with 4 train and 4 test images of `side` x `side`, labels 0..3.
fn write_images(path: &Path, side: usize) {
    let n = 4;
    let img: Vec<u8> = (0..n * side * side)
        .flat_map(|i| ((i % 7) as f32 * 0.1).to_le_bytes())
        .collect();
    let lab: Vec<u8> = (0..n as i64).flat_map(|l| l.to_le_bytes()).collect();
    let mut tensors = vec![];
    let mut off = 0;
    let mut data = vec![];
    for (name, dtype, shape, bytes) in [
        ("train_images", "F32", vec![n, 1, side, side], &img),
        ("train_labels", "I64", vec![n], &lab),
        ("test_images", "F32", vec![n, 1, side, side], &img),
        ("test_labels", "I64", vec![n], &lab),
    ] {
        tensors.push(format!(
            "\"{name}\":{{\"dtype\":\"{dtype}\",\"shape\":{shape:?},\"data_offsets\":[{off},{}]}}",
            off + bytes.len()
        ));
        off += bytes.len();
        data.extend_from_slice(bytes);
    }
    let mut header = format!("{{{}}}", tensors.join(",")).into_bytes();
    while header.len() % 8 != 0 {
        header.push(b' ');
    }
    let mut file = (header.len() as u64).to_le_bytes().to_vec();
    file.extend(header);
    file.extend(data);
    std::fs::write(path, file).unwrap();
}

/// `finetune --save-head` then `classify --head` (2pc): the saved shares classify the same
/// test images with the accuracy the training session reported; a corrupted share file,
/// a share file of another training and files of another setting are refused, naming
/// the file.
#[test]
fn saved_head_classifies_and_bad_head_files_are_refused() {
    let (dir, cfg) = session("2pc");
    let (_d3, cfg3) = session("3pc");
    let train = |head: &Path, seed: &str| {
        json(
            &cfg,
            &[
                "finetune",
                "--task",
                "digits",
                "--limit",
                "64",
                "--test-limit",
                "32",
                "--epochs",
                "3",
                "--seed",
                seed,
                "--save-head",
                head.to_str().unwrap(),
                "--json",
            ],
        )
    };
    let (a, b) = (dir.join("head-a"), dir.join("head-b"));
    let ja = train(&a, "1");
    train(&b, "2");
    for f in ["head-p0.bin", "head-p1.bin", "head.json"] {
        assert!(a.join(f).exists(), "{f} missing");
    }
    assert!(
        !a.join("head-p2.bin").exists(),
        "the 2pc dealer holds no shares"
    );
    let classify = |cfg: &Path, head: &Path| {
        run(
            cfg,
            &[
                "classify",
                "--model",
                "data/digits/backbone",
                "--images",
                "data/digits/finetune.safetensors",
                "--split",
                "test",
                "--limit",
                "32",
                "--head",
                head.to_str().unwrap(),
                "--json",
            ],
        )
    };
    let (o, t) = classify(&cfg, &a);
    assert!(o.status.success(), "{t}");
    let line = String::from_utf8_lossy(&o.stdout)
        .lines()
        .last()
        .unwrap()
        .to_string();
    let j: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(j["n"], 32);
    // The same shares in a new session (fresh randomness in every truncation: logits move
    // by ~1e-4), so an example within that of a tie could flip: one of 32 is allowed.
    let (now, then) = (f(&j, "secure_acc"), f(&ja, "secure_test_acc"));
    assert!((now - then).abs() <= 1.0 / 32.0 + 1e-9, "{j} vs {ja}");
    // a flipped byte in P1's shares
    let c = dir.join("head-c");
    std::fs::create_dir_all(&c).unwrap();
    for f in ["head-p0.bin", "head-p1.bin", "head.json"] {
        std::fs::copy(a.join(f), c.join(f)).unwrap();
    }
    let mut bytes = std::fs::read(c.join("head-p1.bin")).unwrap();
    let k = bytes.len() / 2;
    bytes[k] ^= 0x10;
    std::fs::write(c.join("head-p1.bin"), bytes).unwrap();
    let (o, t) = classify(&cfg, &c);
    assert!(
        !o.status.success() && t.contains("head-p1.bin") && t.contains("checksum"),
        "{t}"
    );
    // P1's shares from another training
    std::fs::copy(b.join("head-p1.bin"), c.join("head-p1.bin")).unwrap();
    let (o, t) = classify(&cfg, &c);
    assert!(
        !o.status.success() && t.contains("different trainings"),
        "{t}"
    );
    // 2pc files in a 3pc session (P2 has none; P0's and P1's are for 2pc)
    let (o, t) = classify(&cfg3, &a);
    assert!(!o.status.success() && t.contains("head-p"), "{t}");
    assert!(!t.contains("panicked"), "{t}");
}
