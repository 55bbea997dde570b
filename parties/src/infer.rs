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
use tessera_protocols::bert::{self as bert, BertConfig, BertWeights, Encoded};
use tessera_protocols::models::bert::{additive_mask, Bert};
use tessera_protocols::nn::train::TrainableHead;
use tessera_protocols::nn::{
    plan_steps, AttentionMask, Breakdown, Cx, Methods, Step, BOUNDED_STEP_ELEMS, DATA_OWNER,
    MODEL_OWNER,
};

/// Method choices shared by `infer`, `demo` and `bench bert`.
#[derive(Args, Debug, Clone, Default)]
pub struct MethodArgs {
    /// GeLU method (default: the accurate one).
    #[arg(long)]
    pub gelu: Option<String>,
    /// Softmax method (default: the exact-style one).
    #[arg(long)]
    pub softmax: Option<String>,
    /// LayerNorm / RMSNorm method.
    #[arg(long)]
    pub layernorm: Option<String>,
    /// SiLU method (Llama).
    #[arg(long)]
    pub silu: Option<String>,
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
        if let Some(v) = &self.silu {
            m.silu = v.parse().map_err(|e| anyhow::anyhow!("--silu {v}: {e}"))?;
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
    /// A head trained by `finetune --save-head DIR` on this model's sentence embeddings:
    /// P0 learns each sentence's class instead of its embedding.
    #[arg(long, value_name = "DIR")]
    pub head: Option<PathBuf>,
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
pub(crate) fn exchange_lengths(
    net: &Arc<dyn Transport>,
    lens: Option<Vec<usize>>,
) -> Result<Vec<usize>> {
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
pub(crate) fn staged_session(
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
pub(crate) fn deal_step(p: &mut Party, d: &Demand) -> tessera::error::Result<()> {
    if d.0.is_empty() {
        return Ok(());
    }
    p.preprocess(d)
}

/// The 2PC dealer's side of a planned run: deals each step in order and runs its online
/// part (the second server of a private lookup) where the step has one. A step without
/// one is dealt request by request, as the compute parties take them
/// ([`Party::stage_lazily`], see [`StepDealer`]).
pub(crate) fn run_dealer(p: &mut Party, steps: &[Step]) -> tessera::error::Result<()> {
    for s in steps {
        if let Some(task) = &s.dealer {
            deal_step(p, &s.demand)?;
            task.run(p)?;
        } else {
            for r in &s.demand.0 {
                p.preprocess(&Demand(vec![r.clone()]))?;
            }
        }
    }
    Ok(())
}

/// Deals a run's steps just in time (the stage hook of [`Cx::staged`]). A step is staged
/// lazily ([`Party::stage_lazily`]): each of its requests is dealt when the protocol takes
/// it, followed by a barrier, so a party holds one request's material at a time and a
/// large softmax or GeLU needs no row chunks (whose rounds add up). A step with a 2PC
/// dealer task (a private lookup, where the dealer also computes) is dealt whole before
/// it, then a barrier. Both are offline work; their time and counters are kept apart here
/// so the caller can subtract them from the online figures.
pub(crate) struct StepDealer {
    steps: Vec<Step>,
    dealt_s: f64,
    staging: tessera::CommStats,
    /// The party's just-in-time totals when this run began.
    base: Option<(tessera::CommStats, f64)>,
}

impl StepDealer {
    pub(crate) fn new(steps: Vec<Step>) -> StepDealer {
        StepDealer {
            steps,
            dealt_s: 0.0,
            staging: tessera::CommStats::default(),
            base: None,
        }
    }

    pub(crate) fn stage(&mut self, p: &mut Party, i: usize) -> tessera::error::Result<()> {
        if self.base.is_none() {
            self.base = Some(p.staged_totals());
        }
        let step = self.steps.get(i).ok_or_else(|| {
            tessera::Error::Unsupported(format!("step {i} of {} planned", self.steps.len()))
        })?;
        if step.demand.0.is_empty() {
            return Ok(());
        }
        if step.dealer.is_none() {
            return p.stage_lazily(&step.demand);
        }
        let t = Instant::now();
        let b = p.stats();
        deal_step(p, &step.demand)?;
        p.sync()?;
        let d = p.stats().since(&b);
        self.staging.rounds += d.rounds;
        self.staging.online_sent += d.online_sent;
        self.staging.online_recv += d.online_recv;
        self.dealt_s += t.elapsed().as_secs_f64();
        Ok(())
    }

    /// Just-in-time dealing at `p` since this run began.
    fn lazy(&self, p: &Party) -> (tessera::CommStats, f64) {
        let (now, secs) = p.staged_totals();
        match self.base {
            Some((b, s)) => (now.since(&b), secs - s),
            None => Default::default(),
        }
    }

    /// Seconds of dealing (and the barriers after it) in this run so far.
    pub(crate) fn dealt_s(&self, p: &Party) -> f64 {
        self.dealt_s + self.lazy(p).1
    }

    /// The online part of `st` (counters since before the run): rounds, bytes sent, bytes
    /// received.
    pub(crate) fn online(&self, p: &Party, st: &tessera::CommStats) -> (u64, u64, u64) {
        let l = self.lazy(p).0;
        (
            st.rounds - self.staging.rounds - l.rounds,
            st.online_sent - self.staging.online_sent - l.online_sent,
            st.online_recv - self.staging.online_recv - l.online_recv,
        )
    }
}

/// A loaded head: this party's shares (none at the 2PC dealer), the public header, its
/// directory.
pub(crate) type HeadRef = (
    Option<TrainableHead>,
    tessera_protocols::nn::train::HeadFileMeta,
    PathBuf,
);

/// Result of embedding a batch of sentences in one session.
struct Embedded {
    embeddings: Vec<Vec<f64>>,
    /// Classes by a trained head (`infer --head`), P0 only.
    classes: Vec<usize>,
    report: PartyReport,
}

/// Shares the model, embeds each sentence, reveals the embeddings to P0 (or, with a
/// trained head, each sentence's class).
#[allow(clippy::too_many_arguments)]
fn embed_all(
    setting: Setting,
    net: Arc<dyn Transport>,
    fixed: FixedPoint,
    config: &BertConfig,
    weights: Option<&BertWeights>,
    encoded: Option<Vec<Encoded>>,
    methods: Methods,
    head: Option<&HeadRef>,
) -> Result<Embedded> {
    let lens = exchange_lengths(
        &net,
        encoded
            .as_ref()
            .map(|e| e.iter().map(Encoded::len).collect()),
    )?;
    // Material is dealt step by step (the weights' masks first, then each step of each
    // sentence just before it, softmax and GeLU in steps of at most BOUNDED_STEP_ELEMS
    // elements), so a party holds one step's material at a time, whatever the model. The
    // plan is the model's own share / forward code run on a planner.
    let step_elems = BOUNDED_STEP_ELEMS;
    let mut model = Bert::new(config)?;
    let share_steps = plan_steps(setting, fixed, methods, step_elems, |p, cx| {
        model.clone().share(p, cx, None)
    })?;
    let plan_model = model.clone();
    let head_spec = head.map(|h| h.1.spec());
    let steps_of = |l: usize| {
        let mask = vec![1u32; l];
        plan_steps(setting, fixed, methods, step_elems, |p, cx| {
            let e = plan_model.sentence_embedding(p, cx, None, &mask, |_| {})?;
            if let Some(spec) = head_spec {
                let h = TrainableHead::new(p, spec, &spec.init(0))?;
                h.classify(p, cx, &e.reshape(&[1, spec.input])?)?;
            }
            Ok(())
        })
    };
    let t = Instant::now();
    let mut p = staged_session(setting, net, fixed)?;
    let mut offline_s = t.elapsed().as_secs_f64();
    if !p.is_compute() {
        // The 2PC dealer deals every step and is the second server of each sentence's
        // word lookup.
        let t = Instant::now();
        run_dealer(&mut p, &share_steps)?;
        for &l in &lens {
            run_dealer(&mut p, &steps_of(l)?)?;
        }
        offline_s += t.elapsed().as_secs_f64();
        return Ok(Embedded {
            embeddings: vec![],
            classes: vec![],
            report: PartyReport {
                offline_s,
                stats: p.stats(),
                ..Default::default()
            },
        });
    }
    let t = Instant::now();
    {
        let mut sd = StepDealer::new(share_steps);
        let mut hook = |p: &mut Party, i: usize| sd.stage(p, i);
        let mut cx = Cx::staged(methods, step_elems, &mut hook);
        model.share(&mut p, &mut cx, weights)?;
    }
    tracing::info!(
        secs = t.elapsed().as_secs_f64(),
        "model shared (weights prepared)"
    );
    if let Some((_, meta, dir)) = head {
        crate::finetune::agree_on_head(&mut p, meta, dir)?;
    }
    let mut embeddings = vec![];
    let mut classes = vec![];
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
        let (emb, class) = {
            let mut hook = |p: &mut Party, i: usize| sd.stage(p, i);
            let mut cx = Cx::staged(methods, step_elems, &mut hook);
            let e = model.sentence_embedding(&mut p, &mut cx, ids, &mask, |_| {})?;
            match head.and_then(|h| h.0.as_ref()) {
                Some(h) => {
                    let d = e.len();
                    let c = h.classify(&mut p, &mut cx, &e.reshape(&[1, d])?)?;
                    (None, Some(c))
                }
                None => (Some(e), None),
            }
        };
        online_s += t.elapsed().as_secs_f64() - sd.dealt_s(&p);
        offline_s += sd.dealt_s(&p);
        let (r, sent, recv) = sd.online(&p, &p.stats().since(&before));
        stats.rounds += r;
        stats.online_sent += sent;
        stats.online_recv += recv;
        if let Some(emb) = emb {
            if let Some(y) = p.reveal_to(DATA_OWNER, &emb)? {
                embeddings.push(fixed.decode_tensor(&y).into_data());
            }
        }
        if let Some(Some(c)) = class {
            classes.extend(c);
        }
    }
    let offline = p.stats();
    stats.offline_sent = offline.offline_sent;
    stats.offline_recv = offline.offline_recv;
    p.finish()?;
    Ok(Embedded {
        embeddings,
        classes,
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
    let weights = if id == MODEL_OWNER {
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
    let head = match &a.head {
        Some(dir) => {
            let (h, meta) = crate::finetune::load_head(dir, id, setting, fixed.frac_bits())?;
            if meta.input != config.hidden {
                bail!(
                    "--head {}: a head of {} inputs for a model of hidden size {}",
                    dir.display(),
                    meta.input,
                    config.hidden
                );
            }
            Some((h, meta, dir.clone()))
        }
        None => None,
    };
    let out = embed_all(
        setting,
        net,
        fixed,
        &config,
        weights.as_ref(),
        encoded,
        methods,
        head.as_ref(),
    )?;
    if id == DATA_OWNER {
        for (t, e) in a.texts.iter().zip(&out.embeddings) {
            println!(
                "embedding of {t:?}: [{}, ...] ({} dims)",
                fmt4(&e[..e.len().min(6)]),
                e.len()
            );
        }
        for (t, c) in a.texts.iter().zip(&out.classes) {
            println!("class of {t:?}: {c}");
        }
        if let Some(path) = &a.output {
            let j = serde_json::json!({
                "texts": a.texts, "embeddings": out.embeddings, "classes": out.classes,
            });
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
        net.clone(),
        fixed,
        &w.config.clone(),
        (id == MODEL_OWNER).then_some(&w),
        (id == DATA_OWNER).then(|| encoded.clone()),
        methods,
        None,
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
    // Then the built-in tiny Llama generates 8 tokens in a second session.
    let args = crate::generate::GenerateArgs {
        model: None,
        prompt: None,
        prompt_ids: None,
        chat: false,
        max_new_tokens: DEMO_LLAMA_TOKENS,
        temperature: 0.0,
        top_k: 0,
        top_p: 1.0,
        seed: 0,
        json: true,
        check: false,
        step_elems: BOUNDED_STEP_ELEMS,
        methods: a.methods.clone(),
        output: None,
    };
    let (r2, g) = crate::generate::generate_session(setting, net, fixed, &args)?;
    report.online_s += r2.online_s;
    report.offline_s += r2.offline_s;
    report.stats.rounds += r2.stats.rounds;
    report.stats.online_sent += r2.stats.online_sent;
    report.stats.online_recv += r2.stats.online_recv;
    report.stats.offline_sent += r2.stats.offline_sent;
    report.stats.offline_recv += r2.stats.offline_recv;
    if id == DATA_OWNER {
        let w = crate::generate::demo_weights();
        let c = crate::generate::check(&w, &g, 0.0)?;
        let err = c.steps.iter().map(|s| s.2).fold(0.0, f64::max);
        let want: Vec<u32> = c.steps.iter().map(|s| s.0).collect();
        println!(
            "demo ({setting}): built-in tiny Llama ({} layers, hidden {}, {} heads / {} kv heads), greedy generation from prompt ids {:?}; only P0 learns the logits",
            w.config.layers, w.config.hidden, w.config.heads, w.config.kv_heads, g.prompt_ids
        );
        println!("    secure    tokens {:?}", g.generated_ids);
        println!("    plaintext tokens {want:?} (greedy f64 reference, fed the same tokens)");
        println!(
            "    logits max abs error {err:.2e} (tolerance {DEMO_LLAMA_TOLERANCE:e}); prefill {:.3} s, {:.3} s per token",
            g.step_s.first().copied().unwrap_or(0.0),
            g.step_s.iter().skip(1).sum::<f64>() / (g.step_s.len().max(2) - 1) as f64
        );
        if c.first_diff.is_some() || err >= DEMO_LLAMA_TOLERANCE {
            bail!(
                "secure generation differs from the plaintext reference (first differing token {:?}, logits error {err:.3e})",
                c.first_diff
            );
        }
        println!("  check of the generation against the plaintext f64 model: OK");
    }
    Ok(report)
}

/// Tokens the demo's tiny Llama generates.
const DEMO_LLAMA_TOKENS: usize = 8;

/// Tolerance of the demo's Llama logits against plaintext: a 2-layer model at f = 16
/// with the default approximations stays near 1e-3; a protocol error is far larger.
const DEMO_LLAMA_TOLERANCE: f64 = 2e-2;

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

/// Model shape for `bench bert` and `bench llama` (unset dimensions take the model's
/// default: BERT-base for `bert`, SmolLM2-135M for `llama`).
#[derive(Args, Debug, Clone)]
pub struct BertShape {
    /// Layers (bert 12, llama 30).
    #[arg(long)]
    pub layers: Option<usize>,
    /// Hidden size (bert 768, llama 576).
    #[arg(long)]
    pub hidden: Option<usize>,
    /// Attention heads (bert 12, llama 9).
    #[arg(long)]
    pub heads: Option<usize>,
    /// Key/value heads (llama only, default 3).
    #[arg(long)]
    pub kv_heads: Option<usize>,
    /// Feed-forward size (bert 3072, llama 1536).
    #[arg(long)]
    pub ffn: Option<usize>,
    /// Sequence length (bert 128; llama: the prefill's new tokens, default 32; a decode
    /// step has 1).
    #[arg(long)]
    pub seq: Option<usize>,
    /// Llama phase: `prefill` (seq new tokens, empty cache) or `decode` (one token).
    #[arg(long, default_value = "decode")]
    pub phase: String,
    /// Llama decode: positions already in the KV cache.
    #[arg(long, default_value_t = 64)]
    pub cache: usize,
    /// Largest softmax / GeLU step in elements: bigger ones run in chunks, each dealt just
    /// before it, which bounds memory at the price of rounds (0: no chunks).
    #[arg(long, default_value_t = BOUNDED_STEP_ELEMS)]
    pub step_elems: usize,
}

impl BertShape {
    /// BERT layers.
    pub fn layers(&self) -> usize {
        self.layers.unwrap_or(12)
    }
    /// BERT sequence length.
    pub fn seq(&self) -> usize {
        self.seq.unwrap_or(128)
    }
    /// The BERT config of these shapes (random weights; vocabulary unused by the bench).
    pub fn config(&self) -> Result<BertConfig> {
        let c = BertConfig {
            vocab_size: 2,
            hidden: self.hidden.unwrap_or(768),
            heads: self.heads.unwrap_or(12),
            layers: self.layers(),
            intermediate: self.ffn.unwrap_or(3072),
            max_position: self.seq().max(1),
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
    let step_elems = match shape.step_elems {
        0 => usize::MAX,
        s => s,
    };
    let seq = shape.seq();
    // Material is dealt step by step (the weights' before each layer, then each op's
    // just before the op: an offline phase per step, timed apart), so a party holds one
    // layer's weights and one step's material at a time. The plans come from the layer's
    // own share / forward code.
    let mut model = Bert::new(&cfg)?;
    let amask = AttentionMask::Keys(additive_mask(&vec![1; seq]));
    let share_steps = |model: &Bert, li: usize| {
        plan_steps(setting, fixed, methods, step_elems, |p, cx| {
            model.layers[li].clone().share(p, cx, None, &cfg)
        })
    };
    let forward_steps = |model: &Bert, li: usize| {
        plan_steps(setting, fixed, methods, step_elems, |p, cx| {
            let x = Shared::zeros(p, &[seq, cfg.hidden]);
            model.layers[li].forward(p, cx, &x, &amask).map(|_| ())
        })
    };
    let id = net.id();
    let t = Instant::now();
    let mut p = staged_session(setting, net, fixed)?;
    let mut offline_s = t.elapsed().as_secs_f64();
    if !p.is_compute() {
        for li in 0..cfg.layers {
            let t = Instant::now();
            run_dealer(&mut p, &share_steps(&model, li)?)?;
            run_dealer(&mut p, &forward_steps(&model, li)?)?;
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
        let lw = (id == MODEL_OWNER).then(|| random_layer(&cfg, li));
        {
            let mut sd = StepDealer::new(share_steps(&model, li)?);
            let mut hook = |p: &mut Party, i: usize| sd.stage(p, i);
            let mut cx = Cx::staged(methods, step_elems, &mut hook);
            model.layers[li].share(&mut p, &mut cx, lw.as_ref(), &cfg)?;
        }
        offline_s += t.elapsed().as_secs_f64();
        let steps = forward_steps(&model, li)?;
        p.sync()?;
        let before = p.stats();
        let t = Instant::now();
        let mut sd = StepDealer::new(steps);
        {
            let mut hook = |p: &mut Party, i: usize| sd.stage(p, i);
            let mut cx = Cx::staged(methods, step_elems, &mut hook);
            x = model.layers[li].forward(&mut p, &mut cx, &x, &amask)?;
            br.merge(&cx.breakdown);
        }
        model.layers[li].release();
        offline_s += sd.dealt_s(&p);
        layer_s.push(t.elapsed().as_secs_f64() - sd.dealt_s(&p));
        let (r, sent, recv) = sd.online(&p, &p.stats().since(&before));
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
    let mut x = bench_input(&cfg, shape.seq());
    let mask = vec![1u32; shape.seq()];
    for li in 0..cfg.layers {
        x = bert::plain::encoder_layer(&cfg, &random_layer(&cfg, li), &x, &mask);
    }
    Ok(x)
}
