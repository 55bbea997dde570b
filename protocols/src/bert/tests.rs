//! Tests of model import (round trips through a hand-written safetensors file, errors
//! that name the thing at fault) and, when `models/all-MiniLM-L6-v2` is present, of the
//! real model against an independent numpy reference (`scripts/minilm_reference.py`).

use std::path::{Path, PathBuf};

use serde_json::{json, Value};
use tessera::Tensor;

use super::model::{bf16_to_f64, f16_to_f64};
use super::*;

/// The repository root (the workspace holds `protocols/` one level down).
fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("protocols/ has a parent")
        .to_path_buf()
}

/// A fresh scratch directory for one test.
fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("tessera-bert-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create scratch dir");
    dir
}

fn tiny_config() -> BertConfig {
    BertConfig {
        vocab_size: 20,
        hidden: 8,
        heads: 2,
        layers: 2,
        intermediate: 16,
        max_position: 10,
        type_vocab_size: 2,
        layer_norm_eps: 1e-12,
    }
}

fn config_json(c: &BertConfig) -> Value {
    json!({
        "architectures": ["BertModel"],
        "model_type": "bert",
        "hidden_act": "gelu",
        "vocab_size": c.vocab_size,
        "hidden_size": c.hidden,
        "num_attention_heads": c.heads,
        "num_hidden_layers": c.layers,
        "intermediate_size": c.intermediate,
        "max_position_embeddings": c.max_position,
        "type_vocab_size": c.type_vocab_size,
        "layer_norm_eps": c.layer_norm_eps,
    })
}

/// The weights under Hugging Face names, in the checkpoint's `[out, in]` layout.
fn hf_tensors(w: &BertWeights) -> Vec<(String, Vec<usize>, Vec<f64>)> {
    let mut out = Vec::new();
    let mut table = |name: &str, t: &Tensor<f64>| {
        out.push((name.to_string(), t.shape().to_vec(), t.data().to_vec()));
    };
    table("embeddings.word_embeddings.weight", &w.word_emb);
    table("embeddings.position_embeddings.weight", &w.pos_emb);
    table("embeddings.token_type_embeddings.weight", &w.type_emb);
    for (i, l) in w.layers.iter().enumerate() {
        let p = format!("encoder.layer.{i}");
        for (name, t) in [
            ("attention.self.query", &l.wq),
            ("attention.self.key", &l.wk),
            ("attention.self.value", &l.wv),
            ("attention.output.dense", &l.wo),
            ("intermediate.dense", &l.w1),
            ("output.dense", &l.w2),
        ] {
            table(&format!("{p}.{name}.weight"), &t.transpose());
        }
    }
    let mut vector = |name: String, v: &[f64]| out.push((name, vec![v.len()], v.to_vec()));
    vector("embeddings.LayerNorm.weight".into(), &w.emb_ln_g);
    vector("embeddings.LayerNorm.bias".into(), &w.emb_ln_b);
    for (i, l) in w.layers.iter().enumerate() {
        let p = format!("encoder.layer.{i}");
        for (name, v) in [
            ("attention.self.query.bias", &l.bq),
            ("attention.self.key.bias", &l.bk),
            ("attention.self.value.bias", &l.bv),
            ("attention.output.dense.bias", &l.bo),
            ("attention.output.LayerNorm.weight", &l.ln1_g),
            ("attention.output.LayerNorm.bias", &l.ln1_b),
            ("intermediate.dense.bias", &l.b1),
            ("output.dense.bias", &l.b2),
            ("output.LayerNorm.weight", &l.ln2_g),
            ("output.LayerNorm.bias", &l.ln2_b),
        ] {
            vector(format!("{p}.{name}"), v);
        }
    }
    out
}

#[derive(Clone, Copy)]
enum Dt {
    F64,
    F32,
    Bf16,
}

/// Writes a safetensors file by hand (8-byte header length, JSON header, data), so the
/// test does not depend on the writer of the crate under test.
fn write_safetensors(path: &Path, tensors: &[(String, Vec<usize>, Vec<f64>)], dt: Dt) {
    let mut header = serde_json::Map::new();
    header.insert("__metadata__".into(), json!({"format": "pt"}));
    let mut data = Vec::new();
    for (name, shape, values) in tensors {
        let start = data.len();
        for &v in values {
            match dt {
                Dt::F64 => data.extend_from_slice(&v.to_le_bytes()),
                Dt::F32 => data.extend_from_slice(&(v as f32).to_le_bytes()),
                Dt::Bf16 => {
                    data.extend_from_slice(&(((v as f32).to_bits() >> 16) as u16).to_le_bytes())
                }
            }
        }
        let dtype = match dt {
            Dt::F64 => "F64",
            Dt::F32 => "F32",
            Dt::Bf16 => "BF16",
        };
        header.insert(
            name.clone(),
            json!({"dtype": dtype, "shape": shape, "data_offsets": [start, data.len()]}),
        );
    }
    let mut h = serde_json::to_vec(&Value::Object(header)).expect("header");
    h.resize(h.len().next_multiple_of(8), b' ');
    let mut bytes = (h.len() as u64).to_le_bytes().to_vec();
    bytes.extend_from_slice(&h);
    bytes.extend_from_slice(&data);
    std::fs::write(path, bytes).expect("write safetensors");
}

/// Writes `config.json` and `model.safetensors` for `w` into a scratch directory.
fn write_checkpoint(name: &str, w: &BertWeights, prefix: &str, dt: Dt) -> PathBuf {
    let dir = scratch(name);
    let cfg = serde_json::to_string_pretty(&config_json(&w.config)).expect("json");
    std::fs::write(dir.join("config.json"), cfg).expect("write config");
    let tensors: Vec<_> = hf_tensors(w)
        .into_iter()
        .map(|(n, s, d)| (format!("{prefix}{n}"), s, d))
        .collect();
    write_safetensors(&dir.join("model.safetensors"), &tensors, dt);
    dir
}

fn max_diff(a: &[f64], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).fold(0.0, |m, (x, y)| m.max((x - y).abs()))
}

fn all_values(w: &BertWeights) -> Vec<f64> {
    hf_tensors(w).into_iter().flat_map(|(_, _, d)| d).collect()
}

#[test]
fn bert_load_round_trips_f64_without_prefix() {
    let w = BertWeights::demo(&tiny_config(), 11);
    let dir = write_checkpoint("f64", &w, "", Dt::F64);
    let loaded = BertWeights::load(&dir).expect("load");
    assert_eq!(loaded, w, "f64 checkpoint loads exactly");
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn bert_load_round_trips_f32_and_bf16_with_bert_prefix() {
    let w = BertWeights::demo(&tiny_config(), 12);
    let dir = write_checkpoint("f32", &w, "bert.", Dt::F32);
    let loaded = BertWeights::load(&dir).expect("load f32");
    assert_eq!(loaded.config, w.config);
    assert!(max_diff(&all_values(&loaded), &all_values(&w)) < 1e-7);
    assert_eq!(loaded.layers[1].w1.shape(), &[8, 16]);
    assert_eq!(loaded.layers[1].w2.shape(), &[16, 8]);
    let _ = std::fs::remove_dir_all(dir);

    let dir = write_checkpoint("bf16", &w, "bert.", Dt::Bf16);
    let loaded = BertWeights::load(&dir).expect("load bf16");
    // bf16 keeps 8 significant bits; values are below 1.2 in magnitude.
    assert!(max_diff(&all_values(&loaded), &all_values(&w)) < 1.2 / 128.0);
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn bert_half_precision_conversions_are_exact() {
    assert_eq!(f16_to_f64(0x3C00), 1.0);
    assert_eq!(f16_to_f64(0xC000), -2.0);
    assert_eq!(f16_to_f64(0x7BFF), 65504.0);
    assert_eq!(f16_to_f64(0x0001), 2f64.powi(-24));
    assert_eq!(f16_to_f64(0x3555), 0.333_251_953_125);
    assert_eq!(f16_to_f64(0x8000), 0.0);
    assert_eq!(f16_to_f64(0x7C00), f64::INFINITY);
    assert!(f16_to_f64(0x7E00).is_nan());
    assert_eq!(bf16_to_f64(0x3F80), 1.0);
    assert_eq!(bf16_to_f64(0xC0A0), -5.0);
    assert_eq!(bf16_to_f64(0x3E80), 0.25);
}

#[test]
fn bert_demo_is_deterministic() {
    let c = BertWeights::demo_config();
    assert_eq!(c.head_dim(), 16);
    c.validate().expect("demo config is valid");
    let a = BertWeights::demo(&c, 42);
    let b = BertWeights::demo(&c, 42);
    assert_eq!(a, b);
    assert_ne!(a, BertWeights::demo(&c, 43));
    assert_eq!(a.word_emb.shape(), &[512, 64]);
    assert_eq!(a.pos_emb.shape(), &[64, 64]);
    assert_eq!(a.type_emb.shape(), &[2, 64]);
    assert_eq!(a.layers.len(), 2);
    assert_eq!(a.layers[0].w1.shape(), &[64, 256]);
    assert_eq!(a.layers[0].w2.shape(), &[256, 64]);
    // Pinned values: the demo model must not change silently (the secure demo and its
    // printed check rely on it).
    let first = a.word_emb.data()[0];
    let last = a.layers[1].ln2_b[63];
    assert_eq!(
        (first.to_bits(), last.to_bits()),
        (DEMO_FIRST_BITS, DEMO_LAST_BITS)
    );
    // Realistic scales.
    let std = |v: &[f64]| (v.iter().map(|x| x * x).sum::<f64>() / v.len() as f64).sqrt();
    assert!((std(a.word_emb.data()) - 0.05).abs() < 0.005);
    assert!((std(a.layers[0].wq.data()) - 0.125).abs() < 0.01);
    let g_mean = a.layers[0].ln1_g.iter().sum::<f64>() / 64.0;
    assert!((g_mean - 1.0).abs() < 0.03);
}

const DEMO_FIRST_BITS: u64 = 4580612714892989287;
const DEMO_LAST_BITS: u64 = 4568085211827746262;

#[test]
fn bert_config_errors_name_the_field() {
    let dir = scratch("config");
    let path = dir.join("config.json");
    let base = config_json(&tiny_config());

    let mut v = base.clone();
    v.as_object_mut().unwrap().remove("hidden_size");
    std::fs::write(&path, v.to_string()).unwrap();
    let e = BertConfig::from_json_file(&path).unwrap_err().to_string();
    assert!(
        e.contains("hidden_size") && e.contains("config.json"),
        "{e}"
    );

    let mut v = base.clone();
    v["num_attention_heads"] = json!(3);
    std::fs::write(&path, v.to_string()).unwrap();
    let e = BertConfig::from_json_file(&path).unwrap_err().to_string();
    assert!(
        e.contains("num_attention_heads") && e.contains("multiple"),
        "{e}"
    );

    let mut v = base.clone();
    v["intermediate_size"] = json!("big");
    std::fs::write(&path, v.to_string()).unwrap();
    let e = BertConfig::from_json_file(&path).unwrap_err().to_string();
    assert!(e.contains("intermediate_size"), "{e}");

    let mut v = base.clone();
    v["hidden_act"] = json!("relu");
    std::fs::write(&path, v.to_string()).unwrap();
    let e = BertConfig::from_json_file(&path).unwrap_err().to_string();
    assert!(e.contains("hidden_act"), "{e}");

    let mut v = base;
    v.as_object_mut().unwrap().remove("layer_norm_eps");
    std::fs::write(&path, v.to_string()).unwrap();
    let c = BertConfig::from_json_file(&path).expect("eps defaults");
    assert_eq!(c.layer_norm_eps, 1e-12);

    std::fs::write(&path, "{ not json").unwrap();
    let e = BertConfig::from_json_file(&path).unwrap_err().to_string();
    assert!(e.contains("config.json") && e.contains("JSON"), "{e}");

    let missing = dir.join("nope").join("config.json");
    let e = BertConfig::from_json_file(&missing)
        .unwrap_err()
        .to_string();
    assert!(e.contains("nope/config.json"), "{e}");

    let mut c = tiny_config();
    c.layers = 0;
    let e = c.validate().unwrap_err().to_string();
    assert!(e.contains("num_hidden_layers"), "{e}");
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn bert_load_errors_name_the_tensor() {
    let w = BertWeights::demo(&tiny_config(), 13);
    let tensors = hf_tensors(&w);
    let dir = write_checkpoint("errors", &w, "", Dt::F32);
    let st = dir.join("model.safetensors");

    // Missing tensor.
    let name = "encoder.layer.1.attention.self.key.weight";
    let without: Vec<_> = tensors.iter().filter(|t| t.0 != name).cloned().collect();
    write_safetensors(&st, &without, Dt::F32);
    let e = BertWeights::load(&dir).unwrap_err().to_string();
    assert!(
        e.contains(name) && e.contains("missing") && e.contains("model.safetensors"),
        "{e}"
    );

    // Wrong shape: intermediate.dense stored [in, out] instead of [out, in].
    let name = "encoder.layer.0.intermediate.dense.weight";
    let mut bad = tensors.clone();
    for t in bad.iter_mut().filter(|t| t.0 == name) {
        t.1 = vec![8, 16];
    }
    write_safetensors(&st, &bad, Dt::F32);
    let e = BertWeights::load(&dir).unwrap_err().to_string();
    assert!(
        e.contains(name) && e.contains("[8, 16]") && e.contains("[16, 8]"),
        "{e}"
    );

    // Fewer layers in the file than in config.json.
    let one_layer: Vec<_> = tensors
        .iter()
        .filter(|t| !t.0.starts_with("encoder.layer.1."))
        .cloned()
        .collect();
    write_safetensors(&st, &one_layer, Dt::F32);
    let e = BertWeights::load(&dir).unwrap_err().to_string();
    assert!(e.contains("encoder.layer.1."), "{e}");

    // Not a safetensors file at all.
    std::fs::write(&st, b"garbage").unwrap();
    let e = BertWeights::load(&dir).unwrap_err().to_string();
    assert!(e.contains("model.safetensors"), "{e}");

    // No weights file.
    std::fs::remove_file(&st).unwrap();
    let e = BertWeights::load(&dir).unwrap_err().to_string();
    assert!(e.contains("model.safetensors"), "{e}");
    let _ = std::fs::remove_dir_all(dir);
}

/// The fetched MiniLM, or `None` (with the reason printed) when it is absent.
fn minilm() -> Option<PathBuf> {
    let dir = repo_root().join(MINILM_DIR);
    if dir.join("model.safetensors").is_file() && dir.join("tokenizer.json").is_file() {
        Some(dir)
    } else {
        println!(
            "skipped: {} not present (run scripts/fetch-minilm.sh)",
            dir.display()
        );
        None
    }
}

#[test]
fn bert_minilm_loads_with_expected_shapes() {
    let Some(dir) = minilm() else { return };
    let w = BertWeights::load(&dir).expect("load MiniLM");
    let c = &w.config;
    assert_eq!(
        (c.vocab_size, c.hidden, c.heads, c.layers, c.intermediate),
        (30522, 384, 12, 6, 1536)
    );
    assert_eq!(
        (c.max_position, c.type_vocab_size, c.head_dim()),
        (512, 2, 32)
    );
    assert_eq!(c.layer_norm_eps, 1e-12);
    assert_eq!(w.word_emb.shape(), &[30522, 384]);
    assert_eq!(w.pos_emb.shape(), &[512, 384]);
    assert_eq!(w.type_emb.shape(), &[2, 384]);
    assert_eq!(w.layers.len(), 6);
    for l in &w.layers {
        assert_eq!(l.wq.shape(), &[384, 384]);
        assert_eq!(l.wo.shape(), &[384, 384]);
        assert_eq!(l.w1.shape(), &[384, 1536]);
        assert_eq!(l.w2.shape(), &[1536, 384]);
        assert_eq!((l.b1.len(), l.b2.len(), l.ln2_g.len()), (1536, 384, 384));
    }
}

#[test]
fn bert_minilm_matches_numpy_reference() {
    let Some(dir) = minilm() else { return };
    let reference: Value = serde_json::from_str(
        &std::fs::read_to_string(repo_root().join("tests/data/minilm_reference.json"))
            .expect("tests/data/minilm_reference.json"),
    )
    .expect("reference JSON");
    let w = BertWeights::load(&dir).expect("load MiniLM");
    let tok = Tokenizer::from_file(&dir.join("tokenizer.json")).expect("tokenizer");
    let floats = |v: &Value| -> Vec<f64> {
        v.as_array()
            .expect("array")
            .iter()
            .map(|x| x.as_f64().expect("number"))
            .collect()
    };
    let mut worst: f64 = 0.0;
    for s in reference["sentences"].as_array().expect("sentences") {
        let text = s["text"].as_str().expect("text");
        let enc = tok.encode(text, 128).expect("encode");
        let want_ids: Vec<u32> = floats(&s["ids"]).iter().map(|&x| x as u32).collect();
        assert_eq!(enc.ids, want_ids, "token ids of {text:?}");
        assert!(enc.type_ids.iter().all(|&t| t == 0));
        assert!(enc.attention_mask.iter().all(|&m| m == 1));

        let hidden = plain::forward(&w, &enc);
        let pooled = plain::mean_pool(&hidden, &enc.attention_mask);
        let norm = pooled.iter().map(|x| x * x).sum::<f64>().sqrt();
        let e = sentence_embedding(&w, &enc);
        let weighted: f64 = e
            .iter()
            .enumerate()
            .map(|(i, x)| x * ((i % 7) as f64 - 3.0))
            .sum();
        let mut errs = vec![
            (norm - s["pooled_norm"].as_f64().unwrap()).abs(),
            (e.iter().sum::<f64>() - s["sum"].as_f64().unwrap()).abs(),
            (weighted - s["weighted_sum"].as_f64().unwrap()).abs(),
        ];
        errs.extend(
            e.iter()
                .zip(floats(&s["first8"]))
                .map(|(a, b)| (a - b).abs()),
        );
        let err = errs.iter().fold(0.0f64, |m, &x| m.max(x));
        println!("{text:?}: max abs error vs numpy {err:.2e}");
        assert!(err < 1e-5, "{text:?}: errors {errs:?}");
        worst = worst.max(err);
    }
    println!("MiniLM golden check: worst abs error {worst:.2e}");
}

#[test]
fn bert_minilm_truncates_keeping_special_tokens() {
    let Some(dir) = minilm() else { return };
    let tok = Tokenizer::from_file(&dir.join("tokenizer.json")).expect("tokenizer");
    let long = "word ".repeat(300);
    let enc = tok.encode(&long, 16).expect("encode");
    assert_eq!(enc.ids.len(), 16);
    assert_eq!((enc.ids[0], enc.ids[15]), (101, 102));
    assert_eq!(tok.encode(&long, 600).expect("encode").ids.len(), 302);
    assert!(tok.encode("hi", 2).is_err());
}
