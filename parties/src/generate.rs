//! `generate`: private text generation with a Llama-family decoder, and `bench llama`.
//!
//! Roles (DESIGN.md §8): P0 is the user — it tokenises the prompt, feeds its ids through
//! the private embedding lookup, alone learns the logits of the last position and picks
//! the next token in its clear (greedy, or sampled with its own seed); P1 owns and shares
//! the weights. The prompt length and the number of generated tokens are public: after
//! every step P0 tells the others whether to go on (one word per peer, counted as a round).
//!
//! Material is dealt step by step from the plan of the model's own forward pass (prefill,
//! then one plan per decode step, whose attention width grows with the cache), so a
//! party holds the weights, the cache and one step's material.

use crate::infer::{exchange_lengths, run_dealer, staged_session, MethodArgs, StepDealer};
use crate::job::PartyReport;
use anyhow::{bail, Context, Result};
use clap::Args;
use rand::{Rng, SeedableRng};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;
use tessera::net::Transport;
use tessera::{FixedPoint, Party, Setting, Shared, Tensor};
use tessera_protocols::llama::load::ModelDir;
use tessera_protocols::llama::model::{LlamaConfig, LlamaWeights};
use tessera_protocols::models::llama::{Llama, LlamaCache, LlamaParams};
use tessera_protocols::nn::{plan_steps, Cx, Methods, Step, BOUNDED_STEP_ELEMS, DATA_OWNER};

/// `generate --model DIR (--prompt TEXT | --prompt-ids IDS) [--chat] [...]`.
#[derive(Args, Debug, Clone)]
pub struct GenerateArgs {
    /// Model directory: a GGUF file, or config.json + model.safetensors + tokenizer.json.
    /// Without it, the built-in tiny Llama (deterministic weights generated in code).
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// The prompt text (P0 tokenises it).
    #[arg(long, conflicts_with = "prompt_ids")]
    pub prompt: Option<String>,
    /// The prompt as token ids, e.g. 1,9690,198.
    #[arg(long, value_delimiter = ',')]
    pub prompt_ids: Option<Vec<u32>>,
    /// Wrap the prompt in the model's chat template (one user message).
    #[arg(long)]
    pub chat: bool,
    /// Most tokens to generate.
    #[arg(long, default_value_t = 32)]
    pub max_new_tokens: usize,
    /// Sampling temperature (0: greedy, the default).
    #[arg(long, default_value_t = 0.0)]
    pub temperature: f64,
    /// Sample among the k most likely tokens (0: all).
    #[arg(long, default_value_t = 0)]
    pub top_k: usize,
    /// Sample within the smallest set of probability >= p (1: all).
    #[arg(long, default_value_t = 1.0)]
    pub top_p: f64,
    /// P0's sampling seed.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Print one JSON line.
    #[arg(long)]
    pub json: bool,
    /// Also run the plaintext f64 model and compare (launcher).
    #[arg(long)]
    pub check: bool,
    /// Largest softmax / SiLU step in elements (0: no chunks).
    #[arg(long, default_value_t = BOUNDED_STEP_ELEMS)]
    pub step_elems: usize,
    /// Approximation methods.
    #[command(flatten)]
    pub methods: MethodArgs,
    /// P0 writes its results here (set by the launcher).
    #[arg(long)]
    pub output: Option<PathBuf>,
}

/// Built-in tiny model's prompt when none is given.
pub const DEMO_PROMPT_IDS: &[u32] = &[3, 17, 42, 5, 77, 12];

/// The public model description every party reads, and the parts only some need.
pub struct Loaded {
    /// Public architecture.
    pub config: LlamaConfig,
    dir: Option<ModelDir>,
}

impl Loaded {
    /// Opens `--model` (or the built-in model).
    pub fn open(model: Option<&Path>) -> Result<Loaded> {
        match model {
            None => Ok(Loaded {
                config: demo_config(),
                dir: None,
            }),
            Some(dir) => {
                let d = ModelDir::open(dir)
                    .with_context(|| format!("opening the model in {}", dir.display()))?;
                Ok(Loaded {
                    config: d.config().clone(),
                    dir: Some(d),
                })
            }
        }
    }

    /// The model owner's weights, loaded part by part while they are shared.
    pub fn params(&self) -> Result<Box<dyn LlamaParams>> {
        Ok(match &self.dir {
            None => Box::new(demo_weights()),
            Some(d) => d.params()?,
        })
    }

    /// All weights at once (the launcher's plaintext reference).
    pub fn weights(&self) -> Result<LlamaWeights> {
        Ok(match &self.dir {
            None => demo_weights(),
            Some(d) => d.load_all()?,
        })
    }

    /// The prompt's token ids and the text decoder (P0).
    pub fn prompt(&self, a: &GenerateArgs) -> Result<Vec<u32>> {
        let ids = match (&a.prompt_ids, &a.prompt, &self.dir) {
            (Some(ids), _, _) => ids.clone(),
            (None, Some(text), Some(d)) => {
                let tok = d.tokenizer()?;
                let text = if a.chat {
                    tok.chat_prompt(text)?
                } else {
                    text.clone()
                };
                tok.encode(&text)?
            }
            (None, Some(_), None) => {
                bail!("the built-in tiny model has no tokenizer: give --prompt-ids")
            }
            (None, None, None) => DEMO_PROMPT_IDS.to_vec(),
            (None, None, Some(_)) => bail!("give --prompt TEXT or --prompt-ids IDS"),
        };
        if ids.is_empty() {
            bail!("the prompt is empty");
        }
        if let Some(&bad) = ids.iter().find(|&&i| i as usize >= self.config.vocab_size) {
            bail!(
                "prompt token id {bad} is outside the vocabulary of {}",
                self.config.vocab_size
            );
        }
        if ids.len() + a.max_new_tokens > self.config.max_position {
            bail!(
                "prompt of {} tokens + {} new tokens exceeds the model's context of {}",
                ids.len(),
                a.max_new_tokens,
                self.config.max_position
            );
        }
        Ok(ids)
    }

    /// Text of `ids` (the ids themselves for the built-in model).
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        match &self.dir {
            None => Ok(ids
                .iter()
                .map(|i| format!("<{i}>"))
                .collect::<Vec<_>>()
                .join("")),
            Some(d) => Ok(d.tokenizer()?.decode(ids)?),
        }
    }

    /// The end-of-sequence id.
    pub fn eos(&self) -> Option<u32> {
        match &self.dir {
            None => None,
            Some(d) => d.tokenizer().ok().and_then(|t| t.eos_id()),
        }
    }
}

/// The built-in tiny Llama's architecture: 2 layers, hidden 32, 4 query heads on 2 KV
/// heads, RoPE, SwiGLU, a tied head over 96 tokens.
pub fn demo_config() -> LlamaConfig {
    let mut c = LlamaConfig::demo();
    c.vocab_size = 96;
    c
}

/// The built-in tiny Llama (deterministic weights generated in code).
pub fn demo_weights() -> LlamaWeights {
    LlamaWeights::demo(&demo_config(), 11)
}

/// What P0 learns and reports per generation.
#[derive(serde::Serialize, serde::Deserialize, Debug, Clone, Default)]
pub struct Generation {
    /// Prompt ids.
    pub prompt_ids: Vec<u32>,
    /// Generated ids.
    pub generated_ids: Vec<u32>,
    /// Logits of every step (prefill's last position, then each decode step).
    pub logits: Vec<Vec<f64>>,
    /// Online seconds of each step (step 0 is the prefill).
    pub step_s: Vec<f64>,
    /// Rounds of each step.
    pub step_rounds: Vec<u64>,
    /// Online bytes sent by this party in each step.
    pub step_bytes: Vec<u64>,
    /// Words of the weight matrices P0 (as W - B) and P1 (as W) each hold (P2: none).
    pub weight_words: u64,
    /// Words of KV cache held at the end, per share component.
    pub cache_words: u64,
    /// Largest single step's dealt material received, in words.
    pub max_step_material_words: u64,
}

/// Picks the next token from logits in P0's clear.
pub fn pick(logits: &[f64], a: &GenerateArgs, rng: &mut rand::rngs::StdRng) -> u32 {
    let argmax = || {
        logits
            .iter()
            .enumerate()
            .fold((0, f64::MIN), |b, (i, &v)| if v > b.1 { (i, v) } else { b })
            .0 as u32
    };
    if a.temperature <= 0.0 {
        return argmax();
    }
    let mut idx: Vec<usize> = (0..logits.len()).collect();
    idx.sort_by(|&x, &y| logits[y].total_cmp(&logits[x]));
    if a.top_k > 0 {
        idx.truncate(a.top_k);
    }
    let mx = logits[idx[0]];
    let mut probs: Vec<f64> = idx
        .iter()
        .map(|&i| ((logits[i] - mx) / a.temperature).exp())
        .collect();
    let z: f64 = probs.iter().sum();
    probs.iter_mut().for_each(|v| *v /= z);
    if a.top_p < 1.0 {
        let mut acc = 0.0;
        let mut keep = probs.len();
        for (i, v) in probs.iter().enumerate() {
            acc += v;
            if acc >= a.top_p {
                keep = i + 1;
                break;
            }
        }
        probs.truncate(keep);
        idx.truncate(keep);
        let z: f64 = probs.iter().sum();
        probs.iter_mut().for_each(|v| *v /= z);
    }
    let mut u: f64 = rng.gen();
    for (i, v) in probs.iter().enumerate() {
        if u < *v {
            return idx[i] as u32;
        }
        u -= v;
    }
    idx[probs.len() - 1] as u32
}

fn plan_of(
    model: &Llama,
    setting: Setting,
    fixed: FixedPoint,
    methods: Methods,
    step_elems: usize,
    cache: &mut LlamaCache,
    count: usize,
) -> Result<Vec<Step>> {
    Ok(plan_steps(setting, fixed, methods, step_elems, |p, cx| {
        model.forward(p, cx, None, count, cache).map(|_| ())
    })?)
}

/// `generate` as one party: the session, then P0 writes its results for the launcher.
pub fn run_generate(
    setting: Setting,
    net: Arc<dyn Transport>,
    fixed: FixedPoint,
    a: &GenerateArgs,
) -> Result<PartyReport> {
    let (report, g) = generate_session(setting, net.clone(), fixed, a)?;
    if net.id() == DATA_OWNER {
        if let Some(path) = &a.output {
            std::fs::write(path, serde_json::to_string(&g)?)
                .with_context(|| format!("writing {}", path.display()))?;
        }
    }
    Ok(report)
}

/// One generation session as one party; P0's [`Generation`] holds the tokens and logits.
pub fn generate_session(
    setting: Setting,
    net: Arc<dyn Transport>,
    fixed: FixedPoint,
    a: &GenerateArgs,
) -> Result<(PartyReport, Generation)> {
    let methods = a.methods.methods()?;
    let id = net.id();
    let loaded = Loaded::open(a.model.as_deref())?;
    let config = loaded.config.clone();
    let prompt = if id == DATA_OWNER {
        Some(loaded.prompt(a)?)
    } else {
        None
    };
    // Public: the prompt length and the most tokens to generate.
    let lens = exchange_lengths(
        &net,
        prompt.as_ref().map(|p| vec![p.len(), a.max_new_tokens]),
    )?;
    if lens.len() != 2 || lens[0] + lens[1] > config.max_position {
        bail!("party {DATA_OWNER} sent an invalid prompt length");
    }
    let (prompt_len, max_new) = (lens[0], lens[1]);
    let step_elems = match a.step_elems {
        0 => usize::MAX,
        s => s,
    };
    let mut model = Llama::new(&config)?;
    let share_steps = plan_steps(setting, fixed, methods, step_elems, |p, cx| {
        model.clone().share(p, cx, None)
    })?;
    let plan_model = model.clone();
    let mut plan_cache = LlamaCache::new(config.layers);
    let t = Instant::now();
    let mut p = staged_session(setting, net.clone(), fixed)?;
    let mut offline_s = t.elapsed().as_secs_f64();
    if !p.is_compute() {
        // The 2PC dealer: deal every step, serve the lookups, follow P0's go / stop.
        let t = Instant::now();
        run_dealer(&mut p, &share_steps)?;
        let mut count = prompt_len;
        for _ in 0..max_new {
            let steps = plan_of(
                &plan_model,
                setting,
                fixed,
                methods,
                step_elems,
                &mut plan_cache,
                count,
            )?;
            run_dealer(&mut p, &steps)?;
            if !go_on(&mut p)? {
                break;
            }
            count = 1;
        }
        offline_s += t.elapsed().as_secs_f64();
        return Ok((
            PartyReport {
                offline_s,
                stats: p.stats(),
                ..Default::default()
            },
            Generation::default(),
        ));
    }
    // Share the weights (the owner loads them part by part).
    let t = Instant::now();
    let params = if id == tessera_protocols::nn::MODEL_OWNER {
        Some(loaded.params()?)
    } else {
        None
    };
    {
        let mut sd = StepDealer::new(share_steps);
        let mut hook = |p: &mut Party, i: usize| sd.stage(p, i);
        let mut cx = Cx::staged(methods, step_elems, &mut hook);
        model.share(&mut p, &mut cx, params.as_deref())?;
    }
    drop(params);
    offline_s += t.elapsed().as_secs_f64();
    tracing::info!(
        secs = t.elapsed().as_secs_f64(),
        "model shared (weights prepared)"
    );
    let mut cache = LlamaCache::new(config.layers);
    let mut g = Generation {
        prompt_ids: prompt.clone().unwrap_or_default(),
        weight_words: weight_words(&config, setting),
        ..Default::default()
    };
    let mut rng = rand::rngs::StdRng::seed_from_u64(a.seed);
    let eos = (id == DATA_OWNER).then(|| loaded.eos()).flatten();
    let mut ids: Option<Vec<u32>> = prompt.clone();
    let mut count = prompt_len;
    let mut stats = tessera::CommStats::default();
    let mut online_s = 0.0;
    for step in 0..max_new {
        let steps = plan_of(
            &plan_model,
            setting,
            fixed,
            methods,
            step_elems,
            &mut plan_cache,
            count,
        )?;
        let material: u64 = steps
            .iter()
            .map(|s| s.demand.correction_words(id.min(1)) as u64)
            .max()
            .unwrap_or(0);
        g.max_step_material_words = g.max_step_material_words.max(material);
        let mut sd = StepDealer::new(steps);
        p.sync()?;
        let before = p.stats();
        let t = Instant::now();
        let logits = {
            let mut hook = |p: &mut Party, i: usize| sd.stage(p, i);
            let mut cx = Cx::staged(methods, step_elems, &mut hook);
            let y = model.forward(&mut p, &mut cx, ids.as_deref(), count, &mut cache)?;
            p.reveal_to(DATA_OWNER, &y)?
        };
        // P0 picks the next token and says whether to go on.
        let next = logits.map(|l| {
            let l = fixed.decode_tensor(&l).into_data();
            let tok = pick(&l, a, &mut rng);
            g.logits.push(l);
            tok
        });
        let more = if id == DATA_OWNER {
            let tok = next.expect("P0 has the logits");
            g.generated_ids.push(tok);
            if !a.json {
                let text = loaded.decode(&[tok]).unwrap_or_default();
                eprintln!(
                    "[p0] token {:>3}: {tok:>6} {text:?} ({:.3} s)",
                    step + 1,
                    t.elapsed().as_secs_f64() - sd.dealt_s(&p)
                );
            }
            let more = Some(tok) != eos && step + 1 < max_new;
            tell(&mut p, more)?;
            more
        } else {
            go_on(&mut p)?
        };
        let secs = t.elapsed().as_secs_f64() - sd.dealt_s(&p);
        online_s += secs;
        offline_s += sd.dealt_s(&p);
        let (r, sent, recv) = sd.online(&p, &p.stats().since(&before));
        stats.rounds += r;
        stats.online_sent += sent;
        stats.online_recv += recv;
        g.step_s.push(secs);
        g.step_rounds.push(r);
        g.step_bytes.push(sent);
        if !more {
            break;
        }
        count = 1;
        ids = next.map(|t| vec![t]);
    }
    g.cache_words = cache.words() as u64;
    let all = p.stats();
    stats.offline_sent = all.offline_sent;
    stats.offline_recv = all.offline_recv;
    p.finish()?;
    let mut extra = serde_json::to_value(&g)?;
    extra["logits"] = serde_json::Value::Null;
    Ok((
        PartyReport {
            offline_s,
            online_s,
            stats,
            extra: Some(extra),
            ..Default::default()
        },
        g,
    ))
}

/// Words of weights P0 and P1 each hold (embedding, layers, head; matrices are owner-held:
/// P0 keeps W - B, P1 W, see `tessera::preproc`).
fn weight_words(c: &LlamaConfig, _s: Setting) -> u64 {
    let (h, f) = (c.hidden, c.ffn);
    let layer =
        h * (c.heads + 2 * c.kv_heads) * c.head_dim + c.heads * c.head_dim * h + 3 * h * f + 2 * h;
    let tables = if c.tied_head { 1 } else { 2 };
    (tables * c.vocab_size * h + c.layers * layer + h) as u64
}

/// P0 tells every other endpoint whether another step follows (one word each).
fn tell(p: &mut Party, more: bool) -> Result<()> {
    let n = p.transport().num_parties();
    let sends = (1..n).map(|j| (j, vec![u64::from(more)])).collect();
    p.exchange(sends, &[], "generation go / stop")?;
    Ok(())
}

/// Receives P0's go / stop.
fn go_on(p: &mut Party) -> Result<bool> {
    let m = p.exchange(vec![], &[(DATA_OWNER, 1)], "generation go / stop")?;
    match m[0][0] {
        0 => Ok(false),
        1 => Ok(true),
        v => bail!("party {DATA_OWNER} sent {v} for go / stop"),
    }
}

/// The launcher's plaintext check: teacher-forced on the secure tokens, the reference's
/// logits at each step, the first step where its greedy token differs, and the max abs
/// error of the logits.
pub struct Check {
    /// Per step: (reference argmax, its top-2 margin, max abs error of the logits).
    pub steps: Vec<(u32, f64, f64)>,
    /// First step whose secure token differs from the reference's greedy one.
    pub first_diff: Option<usize>,
    /// First differing step at which the reference's top-2 margin exceeds `margin`.
    pub first_diff_above_margin: Option<usize>,
}

/// Runs the f64 reference over the prompt and the generated tokens.
pub fn check(w: &LlamaWeights, g: &Generation, margin: f64) -> Result<Check> {
    let mut cache = tessera_protocols::llama::plain::KvCache::new(&w.config);
    let mut steps = vec![];
    let mut first_diff = None;
    let mut first_bad = None;
    let mut input: Vec<u32> = g.prompt_ids.clone();
    for (i, got) in g.logits.iter().enumerate() {
        let l = tessera_protocols::llama::plain::forward(w, &input, &mut cache)?;
        let v = l.data().len() / input.len();
        let last: &[f64] = &l.data()[(input.len() - 1) * v..];
        let (best, m) = top2(last);
        let err = last
            .iter()
            .zip(got)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f64::max);
        steps.push((best, m, err));
        let tok = g.generated_ids.get(i).copied();
        if tok.is_some() && tok != Some(best) {
            first_diff.get_or_insert(i);
            if m > margin {
                first_bad.get_or_insert(i);
            }
        }
        match tok {
            Some(t) => input = vec![t],
            None => break,
        }
    }
    Ok(Check {
        steps,
        first_diff,
        first_diff_above_margin: first_bad,
    })
}

/// (argmax, top-1 minus top-2).
pub fn top2(v: &[f64]) -> (u32, f64) {
    let mut best = (0usize, f64::MIN);
    let mut second = f64::MIN;
    for (i, &x) in v.iter().enumerate() {
        if x > best.1 {
            second = best.1;
            best = (i, x);
        } else if x > second {
            second = x;
        }
    }
    (best.0 as u32, best.1 - second)
}

/// The Llama layer shape of `bench llama` (SmolLM2-135M's by default), whether it is a
/// decode step, its new tokens and the positions already cached.
pub fn llama_shape(s: &crate::infer::BertShape) -> Result<(LlamaConfig, bool, usize, usize)> {
    let base = LlamaConfig::smollm2_135m();
    let decode = match s.phase.as_str() {
        "decode" => true,
        "prefill" => false,
        other => bail!("--phase {other}: expected prefill or decode"),
    };
    let hidden = s.hidden.unwrap_or(base.hidden);
    let heads = s.heads.unwrap_or(base.heads);
    if heads == 0 || !hidden.is_multiple_of(heads) {
        bail!("--hidden {hidden} is not a multiple of --heads {heads}");
    }
    let (seq, cache) = if decode {
        (1, s.cache)
    } else {
        (s.seq.unwrap_or(32), 0)
    };
    if seq == 0 {
        bail!("--seq must be at least 1");
    }
    let c = LlamaConfig {
        vocab_size: 2,
        hidden,
        layers: s.layers.unwrap_or(base.layers),
        heads,
        kv_heads: s.kv_heads.unwrap_or(if s.heads.is_some() {
            heads
        } else {
            base.kv_heads
        }),
        head_dim: hidden / heads,
        ffn: s.ffn.unwrap_or(base.ffn),
        max_position: seq + cache,
        ..base
    };
    c.validate()?;
    Ok((c, decode, seq, cache))
}

/// Deterministic pseudo-random weights of one layer of `bench llama`.
fn random_llama_layer(
    c: &LlamaConfig,
    li: usize,
) -> tessera_protocols::llama::model::LlamaLayerWeights {
    let mut one = c.clone();
    one.layers = 1;
    LlamaWeights::demo(&one, 1000 + li as u64).layers.remove(0)
}

/// Deterministic values in [-scale, scale).
fn det_values(n: usize, salt: u64, scale: f64) -> Vec<f64> {
    (0..n as u64)
        .map(|i| {
            let v = (i ^ salt.rotate_left(17))
                .wrapping_add(salt)
                .wrapping_mul(0x9E37_79B9_7F4A_7C15);
            ((v >> 40) as f64 / (1u64 << 24) as f64 - 0.5) * 2.0 * scale
        })
        .collect()
}

/// Per layer: cached keys (as after RoPE) and values, [C, G d] row-major.
type PresetCache = Vec<(Vec<f64>, Vec<f64>)>;

/// The input hidden states and, per layer, the cached keys and values of `bench llama`.
fn llama_bench_inputs(c: &LlamaConfig, seq: usize, cache: usize) -> (Tensor<f64>, PresetCache) {
    let x = Tensor::from_vec(&[seq, c.hidden], det_values(seq * c.hidden, 1, 1.0)).expect("shape");
    let kv = (0..c.layers)
        .map(|li| {
            let n = cache * c.kv_heads * c.head_dim;
            (
                det_values(n, 100 + 2 * li as u64, 2.0),
                det_values(n, 101 + 2 * li as u64, 1.0),
            )
        })
        .collect();
    (x, kv)
}

/// What `bench llama` reports beyond the party report.
#[derive(serde::Serialize, serde::Deserialize, Debug, Clone, Default)]
pub struct LlamaBench {
    /// Per-op (name, seconds, rounds, online bytes sent by this party).
    pub breakdown: Vec<(String, f64, u64, u64)>,
    /// Per-layer online seconds.
    pub layer_s: Vec<f64>,
}

/// `bench llama` as one party: Llama layers at the given shapes with random trained-scale
/// weights, shared one at a time; for a decode step each layer's KV cache is preset with
/// `--cache` positions of secret keys and values (input by P0, not timed).
pub fn run_bench_llama(
    setting: Setting,
    net: Arc<dyn Transport>,
    fixed: FixedPoint,
    shape: &crate::infer::BertShape,
    methods: Methods,
    output: Option<&Path>,
) -> Result<(PartyReport, LlamaBench)> {
    use tessera_protocols::nn::{Breakdown, KvCache};
    let (cfg, _decode, seq, cached) = llama_shape(shape)?;
    let step_elems = match shape.step_elems {
        0 => usize::MAX,
        s => s,
    };
    let (g, d) = (cfg.kv_heads, cfg.head_dim);
    let mut model = Llama::new(&cfg)?;
    let to_heads = |t: Shared| -> tessera::Result<Shared> { t.reshape(&[cached, g, d])?.swap01() };
    let share_plan = |model: &Llama, li: usize| {
        plan_steps(setting, fixed, methods, step_elems, |p, cx| {
            model.layers[li].clone().share(p, cx, None, &cfg)
        })
    };
    let forward_plan = |model: &Llama, li: usize| {
        plan_steps(setting, fixed, methods, step_elems, |p, cx| {
            let x = Shared::zeros(p, &[seq, cfg.hidden]);
            let mut c = if cached > 0 {
                let z = Shared::zeros(p, &[g, cached, d]);
                KvCache::preset(z.clone(), z)?
            } else {
                KvCache::new()
            };
            model.layers[li]
                .forward(p, cx, &x, cached, &mut c)
                .map(|_| ())
        })
    };
    let id = net.id();
    let t = Instant::now();
    let mut p = staged_session(setting, net, fixed)?;
    let mut offline_s = t.elapsed().as_secs_f64();
    if !p.is_compute() {
        for li in 0..cfg.layers {
            let t = Instant::now();
            run_dealer(&mut p, &share_plan(&model, li)?)?;
            run_dealer(&mut p, &forward_plan(&model, li)?)?;
            offline_s += t.elapsed().as_secs_f64();
        }
        return Ok((
            PartyReport {
                offline_s,
                stats: p.stats(),
                ..Default::default()
            },
            LlamaBench::default(),
        ));
    }
    let (x0, kv) = llama_bench_inputs(&cfg, seq, cached);
    let enc = (id == DATA_OWNER)
        .then(|| fixed.encode_tensor(&x0))
        .transpose()?;
    let mut x = p.share_input(DATA_OWNER, enc.as_ref(), &[seq, cfg.hidden])?;
    let mut br = Breakdown::default();
    let mut layer_s = vec![];
    let mut stats = tessera::CommStats::default();
    for (li, (kc, vc)) in kv.iter().enumerate() {
        let t = Instant::now();
        let lw = (id == tessera_protocols::nn::MODEL_OWNER).then(|| random_llama_layer(&cfg, li));
        {
            let mut sd = StepDealer::new(share_plan(&model, li)?);
            let mut hook = |p: &mut Party, i: usize| sd.stage(p, i);
            let mut cx = Cx::staged(methods, step_elems, &mut hook);
            model.layers[li].share(&mut p, &mut cx, lw.as_ref(), &cfg)?;
        }
        let mut cache = if cached > 0 {
            let mut share = |v: &[f64]| -> Result<Shared> {
                let t = Tensor::from_vec(&[cached, g * d], v.to_vec())?;
                let e = (id == DATA_OWNER)
                    .then(|| fixed.encode_tensor(&t))
                    .transpose()?;
                Ok(to_heads(p.share_input(
                    DATA_OWNER,
                    e.as_ref(),
                    &[cached, g * d],
                )?)?)
            };
            let k = share(kc)?;
            let v = share(vc)?;
            KvCache::preset(k, v)?
        } else {
            KvCache::new()
        };
        offline_s += t.elapsed().as_secs_f64();
        let steps = forward_plan(&model, li)?;
        p.sync()?;
        let before = p.stats();
        let t = Instant::now();
        let mut sd = StepDealer::new(steps);
        {
            let mut hook = |p: &mut Party, i: usize| sd.stage(p, i);
            let mut cx = Cx::staged(methods, step_elems, &mut hook);
            x = model.layers[li].forward(&mut p, &mut cx, &x, cached, &mut cache)?;
            br.merge(&cx.breakdown);
        }
        model.layers[li].release();
        offline_s += sd.dealt_s(&p);
        layer_s.push(t.elapsed().as_secs_f64() - sd.dealt_s(&p));
        let (r, sent, recv) = sd.online(&p, &p.stats().since(&before));
        stats.rounds += r;
        stats.online_sent += sent;
        stats.online_recv += recv;
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
        LlamaBench { breakdown, layer_s },
    ))
}

/// The plaintext f64 reference of `bench llama` (same weights, cache and input).
pub fn bench_llama_reference(shape: &crate::infer::BertShape) -> Result<Tensor<f64>> {
    use tessera_protocols::llama::plain;
    let (cfg, _, seq, cached) = llama_shape(shape)?;
    let (mut x, kv) = llama_bench_inputs(&cfg, seq, cached);
    for (li, (k, v)) in kv.into_iter().enumerate() {
        let mut c = plain::KvLayer::new(cfg.kv_dim());
        c.k = k;
        c.v = v;
        x = plain::layer(&random_llama_layer(&cfg, li), &cfg, &x, &mut c, cached);
    }
    Ok(x)
}
