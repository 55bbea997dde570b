//! Private transformer inference jobs: `infer` (a real model from a directory), `demo`
//! (the built-in deterministic BERT) and `bench bert` (random BERT layers at any shape).
//!
//! Roles: P1 is the model owner (loads the weights and shares them), P0 the data owner
//! (tokenises the text, shares the tokens, and alone learns the embedding). The sequence
//! lengths are public: P0 sends them to the other parties before the session starts, so
//! every party (and the dealer) can derive the preprocessing demand.

use crate::job::PartyReport;
use anyhow::{bail, Context, Result};
use clap::Args;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;
use tessera::net::Transport;
use tessera::preproc::Demand;
use tessera::{FixedPoint, MaterialMode, Party, SessionOptions, Setting, Shared, Tensor};
use tessera_protocols::bert::secure::{
    self, Breakdown, Methods, SecureBert, SecureLayer, DATA_OWNER,
};
use tessera_protocols::bert::{self as bert, BertConfig, BertWeights, Encoded};

/// Method choices shared by `infer`, `demo` and `bench bert`.
#[derive(Args, Debug, Clone, Default)]
pub struct MethodArgs {
    /// GeLU method (default: the accurate one).
    #[arg(long)]
    pub gelu: Option<String>,
    /// Softmax method (default: the exact-style one).
    #[arg(long)]
    pub softmax: Option<String>,
    /// LayerNorm method.
    #[arg(long)]
    pub layernorm: Option<String>,
}

impl MethodArgs {
    /// Parses the names (errors name the bad one).
    pub fn methods(&self) -> Result<Methods> {
        let mut m = Methods::default();
        if let Some(g) = &self.gelu {
            m.gelu = g.parse().map_err(|e| anyhow::anyhow!("--gelu {g}: {e}"))?;
        }
        if let Some(s) = &self.softmax {
            m.softmax = s
                .parse()
                .map_err(|e| anyhow::anyhow!("--softmax {s}: {e}"))?;
        }
        if let Some(l) = &self.layernorm {
            m.layernorm = l
                .parse()
                .map_err(|e| anyhow::anyhow!("--layernorm {l}: {e}"))?;
        }
        Ok(m)
    }
}

/// `infer --model DIR --text T [--text T ...] [--json]`.
#[derive(Args, Debug, Clone)]
pub struct InferArgs {
    /// Model directory with config.json, model.safetensors, tokenizer.json.
    #[arg(long)]
    pub model: PathBuf,
    /// A sentence to embed (repeatable).
    #[arg(long = "text", required = true)]
    pub texts: Vec<String>,
    /// Print one JSON object.
    #[arg(long)]
    pub json: bool,
    /// Longest token sequence.
    #[arg(long, default_value_t = 128)]
    pub max_len: usize,
    /// Approximation methods.
    #[command(flatten)]
    pub methods: MethodArgs,
    /// P0 writes {texts, embeddings} as JSON here (set by the launcher).
    #[arg(long)]
    pub output: Option<PathBuf>,
}

/// `demo`: the built-in BERT on a few sentences, checked against plaintext.
#[derive(Args, Debug, Clone)]
pub struct DemoArgs {
    /// Sentences (defaults to three built-in ones).
    #[arg(long = "text")]
    pub texts: Vec<String>,
    /// Approximation methods.
    #[command(flatten)]
    pub methods: MethodArgs,
}

/// The built-in demo sentences.
pub const DEMO_TEXTS: &[&str] = &[
    "the patient reports mild chest pain after exercise",
    "secure inference keeps the sentence private",
    "two servers compute the embedding without seeing it",
];

/// Tolerance of the demo's check against its plaintext f64 forward pass: the built-in
/// model is small (2 layers), so the fixed-point pipeline (f = 16, faithful truncation,
/// the default approximations within 1e-3 of exact) stays far below this; a protocol
/// error is orders of magnitude larger.
const DEMO_TOLERANCE: f64 = 1e-3;

/// Sends the public token counts from P0 to every other endpoint; returns them.
fn exchange_lengths(net: &Arc<dyn Transport>, lens: Option<Vec<usize>>) -> Result<Vec<usize>> {
    if net.id() == DATA_OWNER {
        let lens = lens.expect("P0 knows the lengths");
        let msg: Vec<u64> = lens.iter().map(|&l| l as u64).collect();
        for j in 0..net.num_parties() {
            if j != DATA_OWNER {
                net.send(j, msg.clone())?;
            }
        }
        Ok(lens)
    } else {
        let msg = net.recv(DATA_OWNER)?;
        if msg.is_empty() || msg.len() > 4096 || msg.iter().any(|&l| l == 0 || l > 1 << 16) {
            bail!("party {DATA_OWNER} sent malformed sequence lengths");
        }
        Ok(msg.iter().map(|&l| l as usize).collect())
    }
}

/// A session whose material is dealt later, step by step ([`deal_step`], [`StepDealer`]).
fn staged_session(
    setting: Setting,
    net: Arc<dyn Transport>,
    fixed: FixedPoint,
) -> tessera::error::Result<Party> {
    Party::setup(
        setting,
        net,
        SessionOptions {
            fixed,
            material: MaterialMode::Planned(Demand::default()),
            ..Default::default()
        },
    )
}

/// Deals one step's planned material (no exchange for an empty step, on every side alike).
fn deal_step(p: &mut Party, d: &Demand) -> tessera::error::Result<()> {
    if d.0.is_empty() {
        return Ok(());
    }
    p.preprocess(d)
}

/// Deals a run's steps just in time (the `stage` hook of the staged protocols): each step's
/// material, then a barrier so no party's online clock runs while another still receives
/// its material. Both are offline work; their time and counters are kept apart here so
/// the caller can subtract them from the online figures.
struct StepDealer {
    steps: Vec<Demand>,
    dealt_s: f64,
    staging: tessera::CommStats,
}

impl StepDealer {
    fn new(steps: Vec<Demand>) -> StepDealer {
        StepDealer {
            steps,
            dealt_s: 0.0,
            staging: tessera::CommStats::default(),
        }
    }

    fn stage(&mut self, p: &mut Party, i: usize) -> tessera::error::Result<()> {
        let t = Instant::now();
        let b = p.stats();
        let step = self.steps.get(i).ok_or_else(|| {
            tessera::Error::Unsupported(format!("step {i} of {} planned", self.steps.len()))
        })?;
        deal_step(p, step)?;
        p.sync()?;
        let d = p.stats().since(&b);
        self.staging.rounds += d.rounds;
        self.staging.online_sent += d.online_sent;
        self.staging.online_recv += d.online_recv;
        self.dealt_s += t.elapsed().as_secs_f64();
        Ok(())
    }

    /// The online part of `st` (counters since before the run).
    fn online(&self, st: &tessera::CommStats) -> (u64, u64, u64) {
        (
            st.rounds - self.staging.rounds,
            st.online_sent - self.staging.online_sent,
            st.online_recv - self.staging.online_recv,
        )
    }
}

/// Result of embedding a batch of sentences in one session.
struct Embedded {
    embeddings: Vec<Vec<f64>>,
    report: PartyReport,
}

/// Shares the model, embeds each sentence, reveals the embeddings to P0.
fn embed_all(
    setting: Setting,
    net: Arc<dyn Transport>,
    fixed: FixedPoint,
    config: &BertConfig,
    weights: Option<&BertWeights>,
    encoded: Option<Vec<Encoded>>,
    methods: Methods,
) -> Result<Embedded> {
    let lens = exchange_lengths(
        &net,
        encoded
            .as_ref()
            .map(|e| e.iter().map(Encoded::len).collect()),
    )?;
    let f = fixed.frac_bits();
    // Material is dealt step by step (the weights' masks first, then each step of each
    // sentence just before it, softmax and GeLU in steps of at most BOUNDED_STEP_ELEMS
    // elements), so a party holds one step's material at a time, whatever the model.
    let step_elems = secure::BOUNDED_STEP_ELEMS;
    let steps_of = |l: usize| {
        secure::sentence_embedding_step_demands(config, l, methods, setting, f, step_elems)
    };
    let t = Instant::now();
    let mut p = staged_session(setting, net, fixed)?;
    deal_step(&mut p, &secure::share_demand(config, setting))?;
    let mut offline_s = t.elapsed().as_secs_f64();
    if !p.is_compute() {
        // The 2PC dealer deals every step and is the second server of each sentence's
        // word lookup, right after the first step.
        for &l in &lens {
            let t = Instant::now();
            let steps = steps_of(l)?;
            deal_step(&mut p, &steps[0])?;
            secure::encoder_dealer(&mut p, config, l)?;
            for d in &steps[1..] {
                deal_step(&mut p, d)?;
            }
            offline_s += t.elapsed().as_secs_f64();
        }
        return Ok(Embedded {
            embeddings: vec![],
            report: PartyReport {
                offline_s,
                stats: p.stats(),
                ..Default::default()
            },
        });
    }
    let t = Instant::now();
    let model = SecureBert::share(&mut p, weights, config)?;
    tracing::info!(
        secs = t.elapsed().as_secs_f64(),
        "model shared (weights prepared)"
    );
    let mut embeddings = vec![];
    let mut online_s = 0.0;
    let mut stats = tessera::CommStats::default();
    for (i, &l) in lens.iter().enumerate() {
        let enc = encoded.as_ref().map(|e| &e[i]);
        let mask: Vec<u32> = vec![1; l];
        let ids = enc.map(|e| e.ids.as_slice());
        let mut sd = StepDealer::new(steps_of(l)?);
        p.sync()?;
        let before = p.stats();
        let t = Instant::now();
        let mut br = Breakdown::default();
        let mut stage = |p: &mut Party, i: usize| sd.stage(p, i);
        let mut stages = secure::Stages::new(step_elems, &mut stage);
        let emb = secure::sentence_embedding_staged(
            &mut p,
            &model,
            ids,
            &mask,
            methods,
            &mut br,
            |_| {},
            &mut stages,
        )?;
        online_s += t.elapsed().as_secs_f64() - sd.dealt_s;
        offline_s += sd.dealt_s;
        let (r, sent, recv) = sd.online(&p.stats().since(&before));
        stats.rounds += r;
        stats.online_sent += sent;
        stats.online_recv += recv;
        if let Some(y) = p.reveal_to(DATA_OWNER, &emb)? {
            embeddings.push(fixed.decode_tensor(&y).into_data());
        }
    }
    let offline = p.stats();
    stats.offline_sent = offline.offline_sent;
    stats.offline_recv = offline.offline_recv;
    p.finish()?;
    Ok(Embedded {
        embeddings,
        report: PartyReport {
            offline_s,
            online_s,
            stats,
            ..Default::default()
        },
    })
}

/// `infer` as one party.
pub fn run_infer(
    setting: Setting,
    net: Arc<dyn Transport>,
    fixed: FixedPoint,
    a: &InferArgs,
) -> Result<PartyReport> {
    let methods = a.methods.methods()?;
    let config = BertConfig::from_json_file(&a.model.join("config.json"))?;
    let id = net.id();
    let weights = if id == secure::MODEL_OWNER {
        Some(BertWeights::load(&a.model)?)
    } else {
        None
    };
    let encoded = if id == DATA_OWNER {
        let tok = bert::Tokenizer::from_file(&a.model.join("tokenizer.json"))?;
        let max = a.max_len.min(config.max_position);
        Some(
            a.texts
                .iter()
                .map(|t| tok.encode(t, max))
                .collect::<tessera::Result<Vec<_>>>()?,
        )
    } else {
        None
    };
    let out = embed_all(
        setting,
        net,
        fixed,
        &config,
        weights.as_ref(),
        encoded,
        methods,
    )?;
    if id == DATA_OWNER {
        for (t, e) in a.texts.iter().zip(&out.embeddings) {
            println!(
                "embedding of {t:?}: [{}, ...] ({} dims)",
                fmt4(&e[..e.len().min(6)]),
                e.len()
            );
        }
        if let Some(path) = &a.output {
            let j = serde_json::json!({ "texts": a.texts, "embeddings": out.embeddings });
            std::fs::write(path, j.to_string())
                .with_context(|| format!("writing {}", path.display()))?;
        }
    }
    Ok(out.report)
}

/// The built-in demo model (deterministic weights generated in code).
pub fn demo_model() -> BertWeights {
    BertWeights::demo(&BertWeights::demo_config(), 7)
}

/// `demo` as one party: the built-in BERT, checked against its plaintext f64 forward pass.
pub fn run_demo(
    setting: Setting,
    net: Arc<dyn Transport>,
    fixed: FixedPoint,
    a: &crate::infer::DemoArgs,
) -> Result<PartyReport> {
    let methods = a.methods.methods()?;
    let w = demo_model();
    let texts: Vec<String> = if a.texts.is_empty() {
        DEMO_TEXTS.iter().map(|s| s.to_string()).collect()
    } else {
        a.texts.clone()
    };
    let id = net.id();
    let max = w.config.max_position;
    let encoded: Vec<Encoded> = texts
        .iter()
        .map(|t| bert::demo_tokenize(t, w.config.vocab_size, max))
        .collect();
    let out = embed_all(
        setting,
        net,
        fixed,
        &w.config.clone(),
        (id == secure::MODEL_OWNER).then_some(&w),
        (id == DATA_OWNER).then(|| encoded.clone()),
        methods,
    )?;
    let mut report = out.report;
    if id == DATA_OWNER {
        println!(
            "demo ({setting}, parties as processes over QUIC): built-in BERT ({} layers, hidden {}, {} heads, ffn {}), P1 shares the weights, P0 the tokens; only P0 learns the sentence embeddings",
            w.config.layers, w.config.hidden, w.config.heads, w.config.intermediate
        );
        let mut worst: f64 = 0.0;
        for ((t, e), enc) in texts.iter().zip(&out.embeddings).zip(&encoded) {
            let want = bert::sentence_embedding(&w, enc);
            let err = e
                .iter()
                .zip(&want)
                .map(|(a, b)| (a - b).abs())
                .fold(0.0, f64::max);
            let cos = cosine(e, &want);
            worst = worst.max(err);
            println!("  {t:?} ({} tokens)", enc.len());
            println!("    secure    [{} ...]", fmt4(&e[..6.min(e.len())]));
            println!("    plaintext [{} ...]", fmt4(&want[..6.min(want.len())]));
            println!("    max |secure - plaintext| = {err:.2e}, cosine {cos:.6}");
        }
        println!(
            "  check against the plaintext f64 forward pass: max abs error {worst:.2e} (tolerance {DEMO_TOLERANCE:e}): {}",
            if worst < DEMO_TOLERANCE { "OK" } else { "FAILED" }
        );
        println!(
            "  online {:.3} s, {} rounds, P0 sent {} bytes online; offline (dealer) {:.3} s",
            report.online_s, report.stats.rounds, report.stats.online_sent, report.offline_s
        );
        if worst >= DEMO_TOLERANCE {
            bail!("secure embedding differs from the plaintext reference by {worst:.3e}");
        }
        report.max_abs_err = Some(worst);
    }
    Ok(report)
}

/// Cosine similarity.
pub fn cosine(a: &[f64], b: &[f64]) -> f64 {
    let dot: f64 = a.iter().zip(b).map(|(x, y)| x * y).sum();
    let na: f64 = a.iter().map(|x| x * x).sum::<f64>().sqrt();
    let nb: f64 = b.iter().map(|x| x * x).sum::<f64>().sqrt();
    dot / (na * nb).max(1e-300)
}

fn fmt4(v: &[f64]) -> String {
    v.iter()
        .map(|x| format!("{x:.4}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// BERT shape for `bench bert`.
#[derive(Args, Debug, Clone)]
pub struct BertShape {
    /// Encoder layers.
    #[arg(long, default_value_t = 12)]
    pub layers: usize,
    /// Hidden size.
    #[arg(long, default_value_t = 768)]
    pub hidden: usize,
    /// Attention heads.
    #[arg(long, default_value_t = 12)]
    pub heads: usize,
    /// Feed-forward size.
    #[arg(long, default_value_t = 3072)]
    pub ffn: usize,
    /// Sequence length.
    #[arg(long, default_value_t = 128)]
    pub seq: usize,
    /// Largest softmax / GeLU step in elements: bigger ones run in chunks, each dealt just
    /// before it, which bounds memory at the price of rounds (0: no chunks).
    #[arg(long, default_value_t = secure::BOUNDED_STEP_ELEMS)]
    pub step_elems: usize,
}

impl BertShape {
    /// The config of these shapes (random weights; vocabulary unused by the layer bench).
    pub fn config(&self) -> Result<BertConfig> {
        let c = BertConfig {
            vocab_size: 2,
            hidden: self.hidden,
            heads: self.heads,
            layers: self.layers,
            intermediate: self.ffn,
            max_position: self.seq.max(1),
            type_vocab_size: 1,
            layer_norm_eps: 1e-12,
        };
        c.validate()?;
        Ok(c)
    }
}

/// Deterministic pseudo-random weights of one layer (trained-BERT-like scales).
fn random_layer(cfg: &BertConfig, li: usize) -> bert::LayerWeights {
    let mut c = cfg.clone();
    c.layers = 1;
    let mut w = BertWeights::demo(&c, 1000 + li as u64);
    w.layers.remove(0)
}

/// Deterministic hidden states fed to the first layer.
pub fn bench_input(cfg: &BertConfig, seq: usize) -> Tensor<f64> {
    let n = seq * cfg.hidden;
    let data = (0..n)
        .map(|i| {
            (((i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 40) as f64 / (1u64 << 24) as f64
                - 0.5)
                * 2.0
        })
        .collect();
    Tensor::from_vec(&[seq, cfg.hidden], data).expect("shape")
}

/// What `bench bert` reports beyond the party report.
#[derive(serde::Serialize, serde::Deserialize, Debug, Clone, Default)]
pub struct BertBench {
    /// Per-op (name, seconds, rounds, online bytes sent by this party).
    pub breakdown: Vec<(String, f64, u64, u64)>,
    /// Per-layer online seconds.
    pub layer_s: Vec<f64>,
}

/// `bench bert` as one party: layers are shared one at a time (sharing is not timed) so a
/// party holds one layer's weights at a time; the hidden state flows through all layers.
pub fn run_bench_bert(
    setting: Setting,
    net: Arc<dyn Transport>,
    fixed: FixedPoint,
    shape: &BertShape,
    methods: Methods,
    output: Option<&std::path::Path>,
) -> Result<(PartyReport, BertBench)> {
    let cfg = shape.config()?;
    let f = fixed.frac_bits();
    let step_elems = match shape.step_elems {
        0 => usize::MAX,
        s => s,
    };
    let seq = shape.seq;
    // Material is dealt step by step (the weights' before each layer, then each op's
    // just before the op: an offline phase per step, timed apart), so a party holds one
    // layer's weights and one step's material at a time.
    let share_demand = |li: usize| secure::layer_share_demand(&cfg, setting, secure::layer_key(li));
    let step_demands = |li: usize| -> Result<Vec<Demand>> {
        Ok(secure::layer_step_demands(
            &cfg,
            seq,
            secure::layer_key(li),
            methods,
            setting,
            f,
            step_elems,
        )?)
    };
    let id = net.id();
    let t = Instant::now();
    let mut p = staged_session(setting, net, fixed)?;
    let mut offline_s = t.elapsed().as_secs_f64();
    if !p.is_compute() {
        for li in 0..cfg.layers {
            let t = Instant::now();
            deal_step(&mut p, &share_demand(li))?;
            for d in step_demands(li)? {
                deal_step(&mut p, &d)?;
            }
            offline_s += t.elapsed().as_secs_f64();
        }
        return Ok((
            PartyReport {
                offline_s,
                stats: p.stats(),
                ..Default::default()
            },
            BertBench::default(),
        ));
    }
    let x0 = bench_input(&cfg, seq);
    let enc = (id == DATA_OWNER)
        .then(|| fixed.encode_tensor(&x0))
        .transpose()?;
    let mut x: Shared = p.share_input(DATA_OWNER, enc.as_ref(), &[seq, cfg.hidden])?;
    let amask = secure::additive_mask(&vec![1; seq]);
    let bar = (id == DATA_OWNER).then(|| {
        let b = indicatif::ProgressBar::new(cfg.layers as u64);
        b.set_style(
            indicatif::ProgressStyle::with_template("layer {pos}/{len} {bar:30} {elapsed_precise}")
                .expect("template"),
        );
        b
    });
    let mut br = Breakdown::default();
    let mut layer_s = vec![];
    let mut stats = tessera::CommStats::default();
    for li in 0..cfg.layers {
        let t = Instant::now();
        deal_step(&mut p, &share_demand(li))?;
        offline_s += t.elapsed().as_secs_f64();
        let steps = step_demands(li)?;
        let lw = (id == secure::MODEL_OWNER).then(|| random_layer(&cfg, li));
        let sl = SecureLayer::share(&mut p, lw.as_ref(), &cfg, secure::layer_key(li))?;
        p.sync()?;
        let before = p.stats();
        let t = Instant::now();
        let mut sd = StepDealer::new(steps);
        x = secure::layer_staged(
            &mut p,
            &cfg,
            &sl,
            &x,
            &amask,
            methods,
            &mut br,
            step_elems,
            &mut |p, i| sd.stage(p, i),
        )?;
        offline_s += sd.dealt_s;
        layer_s.push(t.elapsed().as_secs_f64() - sd.dealt_s);
        let (r, sent, recv) = sd.online(&p.stats().since(&before));
        stats.rounds += r;
        stats.online_sent += sent;
        stats.online_recv += recv;
        if let Some(b) = &bar {
            b.inc(1);
        }
    }
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    let all = p.stats();
    stats.offline_sent = all.offline_sent;
    stats.offline_recv = all.offline_recv;
    let online_s: f64 = layer_s.iter().sum();
    if let Some(y) = p.reveal_to(DATA_OWNER, &x)? {
        if let Some(path) = output {
            let y = fixed.decode_tensor(&y);
            let bytes: Vec<u8> = y.data().iter().flat_map(|v| v.to_le_bytes()).collect();
            std::fs::write(path, bytes).with_context(|| format!("writing {}", path.display()))?;
        }
    }
    p.finish()?;
    let breakdown = br
        .items
        .iter()
        .map(|(n, d, c)| (n.to_string(), d.as_secs_f64(), c.rounds, c.online_sent))
        .collect();
    Ok((
        PartyReport {
            offline_s,
            online_s,
            stats,
            ..Default::default()
        },
        BertBench { breakdown, layer_s },
    ))
}

/// The plaintext f64 reference of `bench bert` (same deterministic weights and input).
pub fn bench_bert_reference(shape: &BertShape) -> Result<Tensor<f64>> {
    let cfg = shape.config()?;
    let mut x = bench_input(&cfg, shape.seq);
    let mask = vec![1u32; shape.seq];
    for li in 0..cfg.layers {
        x = bert::plain::encoder_layer(&cfg, &random_layer(&cfg, li), &x, &mask);
    }
    Ok(x)
}
