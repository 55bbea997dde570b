//! Private fine-tuning: `finetune` trains a classification head on features that a frozen,
//! secret backbone computes from secret examples, with secret labels (BlindTuner's task,
//! run by MPC instead of CKKS; see [`tessera_protocols::nn::train`] for the protocol).
//!
//! Roles: P1 owns the backbone (a ResNet-style CNN or a BERT-family encoder) and shares
//! it; P0 owns the labelled examples, shares them and the one-hot labels, and alone learns
//! the mean training loss of each epoch and the classes of its test examples. The head is
//! trained from public initial weights (a public seed, as every framework's default
//! initialisation is data-independent), stays secret-shared and classifies P0's test split
//! in the same session, right after training. Public: the architecture, the head's shape,
//! the hyper-parameters, the example counts, the number of classes, the batch order and, for
//! text, each sentence's token count (as in `infer` and PUMA).
//!
//! Phases, each timed and counted apart (online only; dealing is offline): the backbone's
//! forward over the train and test examples (batches of images, one sentence at a time),
//! the head's training (one plan per epoch, dealt step by step), the test classification.
//! The launcher runs the plaintext twin — the same backbone in f64, the same initial
//! weights, batch order and hyper-parameters — and compares.

use crate::infer::{exchange_lengths, run_dealer, staged_session, StepDealer};
use crate::job::PartyReport;
use anyhow::{bail, Context, Result};
use clap::Args;
use rand::{Rng, SeedableRng};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;
use tessera::net::Transport;
use tessera::{CommStats, FixedPoint, Party, Setting, Shared, Tensor};
use tessera_protocols::bert::{self, BertConfig, BertWeights, Encoded};
use tessera_protocols::models::bert::Bert;
use tessera_protocols::models::resnet::{encode_images, ResNet};
use tessera_protocols::nn::train::{
    check_data, one_hot, training_steps, HeadFileMeta, HeadSpec, PlainHead, Sgd, TrainableHead,
};
use tessera_protocols::nn::{plan_steps, Cx, Methods, Step, DATA_OWNER, MODEL_OWNER};
use tessera_protocols::resnet::{Images, ResNetConfig, ResNetWeights};

/// Training and test examples of `--task text` unless `--limit` / `--test-limit` say.
const TEXT_TRAIN: usize = 300;
const TEXT_TEST: usize = 100;

/// Sentence lengths per message (`exchange_lengths` takes at most 4,096).
const LENGTHS_PER_MESSAGE: usize = 4096;

/// Largest step of the backbone's forward in elements (as `classify` and `infer`).
const STEP_ELEMS: usize = 1 << 18;

/// `finetune --task digits|text` or `--backbone DIR --data FILE` or `--synthetic NxDxC`.
#[derive(Args, Debug, Clone)]
pub struct FinetuneArgs {
    /// A task on committed or fetched data: `digits` (data/digits: the backbone pretrained
    /// on digits 0-4, the head trained on 5-9) or `text` (all-MiniLM-L6-v2 and the
    /// movie-review sentiment set: scripts/fetch-minilm.sh, scripts/fetch-text-data.sh).
    #[arg(long)]
    pub task: Option<String>,
    /// A backbone directory: a ResNet (config.toml + model.safetensors) or a BERT-family
    /// encoder (config.json + model.safetensors + tokenizer.json).
    #[arg(long)]
    pub backbone: Option<PathBuf>,
    /// The labelled data: for a ResNet, a safetensors file with `train_images` and
    /// `test_images` [N, C, H, W] and `train_labels`, `test_labels` [N]; for a BERT, a
    /// directory with train.jsonl and test.jsonl (`{"text": ..., "label": int}` a line).
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// No backbone: N random D-dimensional features in C classes (labels by a random
    /// linear teacher), plus N/4 test examples; measures the head's training alone.
    #[arg(long, value_name = "NxDxC")]
    pub synthetic: Option<String>,
    /// Passes over the training data (default: 20 for digits, 10 otherwise).
    #[arg(long)]
    pub epochs: Option<usize>,
    /// Learning rate (default: 0.1 for images and synthetic features, 1.0 for text,
    /// whose L2-normalised features are 10x smaller).
    #[arg(long)]
    pub lr: Option<f64>,
    /// SGD momentum.
    #[arg(long, default_value_t = 0.9)]
    pub momentum: f64,
    /// Examples per mini-batch.
    #[arg(long, default_value_t = 32)]
    pub batch: usize,
    /// Width of a hidden ReLU layer (an MLP head); none: a linear head.
    #[arg(long)]
    pub hidden: Option<usize>,
    /// Number of classes (default: the largest label + 1).
    #[arg(long)]
    pub classes: Option<usize>,
    /// Seed of the public initial weights and batch order.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Use only the first N training examples (`--task text`: 300 unless given).
    #[arg(long)]
    pub limit: Option<usize>,
    /// Use only the first N test examples (`--task text`: 100 unless given).
    #[arg(long)]
    pub test_limit: Option<usize>,
    /// Images per backbone forward pass (and test examples per head classification).
    #[arg(long, default_value_t = 64)]
    pub features_batch: usize,
    /// Longest token sequence (text).
    #[arg(long, default_value_t = 32)]
    pub max_len: usize,
    /// Each compute party writes its shares of the trained head to DIR/head-p<id>.bin, and
    /// P0 the public header to DIR/head.json, for `classify --head DIR` (on separate hosts,
    /// DIR is each host's own directory).
    #[arg(long, value_name = "DIR")]
    pub save_head: Option<PathBuf>,
    /// Print one JSON object.
    #[arg(long)]
    pub json: bool,
    /// P0 writes its result (classes, losses, phases) as JSON here (set by the launcher).
    #[arg(long)]
    pub output: Option<PathBuf>,
}

/// Where the examples come from.
#[derive(Clone, Debug)]
pub enum Source {
    /// A ResNet backbone and an images file.
    Images {
        /// Model directory.
        backbone: PathBuf,
        /// The data file.
        data: PathBuf,
    },
    /// A BERT-family backbone and a directory of jsonl files.
    Text {
        /// Model directory.
        backbone: PathBuf,
        /// The data directory.
        data: PathBuf,
    },
    /// Random features, no backbone.
    Synthetic {
        /// Training examples.
        n: usize,
        /// Feature width.
        d: usize,
        /// Classes.
        c: usize,
    },
}

/// The examples of one split as P0 holds them.
#[derive(Clone, Debug)]
pub enum Inputs {
    /// NHWC images.
    Images(Tensor<f64>),
    /// Tokenised sentences.
    Texts(Vec<Encoded>),
    /// Features `[n, d]`.
    Features(Tensor<f64>),
}

impl Inputs {
    /// Number of examples.
    pub fn len(&self) -> usize {
        match self {
            Inputs::Images(t) | Inputs::Features(t) => t.shape()[0],
            Inputs::Texts(v) => v.len(),
        }
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A labelled data set (P0's, and the launcher's for the twin).
#[derive(Clone, Debug)]
pub struct Data {
    /// Training examples.
    pub train: Inputs,
    /// Their labels.
    pub train_labels: Vec<usize>,
    /// Test examples.
    pub test: Inputs,
    /// Their labels.
    pub test_labels: Vec<usize>,
    /// Number of classes.
    pub classes: usize,
}

/// The committed digits data (see [`crate::classify::digits_dir`]).
fn digits() -> (PathBuf, PathBuf) {
    let d = crate::classify::digits_dir();
    (d.join("backbone"), d.join("finetune.safetensors"))
}

/// `models/` under the current directory, else under the source tree.
fn models_dir() -> PathBuf {
    let local = PathBuf::from("models");
    if local.exists() {
        return local;
    }
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../models")
}

fn parse_synthetic(s: &str) -> Result<(usize, usize, usize)> {
    let v: Vec<usize> = s
        .split(['x', ','])
        .map(|t| t.trim().parse::<usize>())
        .collect::<std::result::Result<_, _>>()
        .with_context(|| format!("--synthetic {s:?}: expected NxDxC, e.g. 1000x384x10"))?;
    match v[..] {
        [n, d, c] if n > 0 && d > 0 && c >= 2 && n <= 1 << 16 && d <= 1 << 14 && c <= 1 << 12 => {
            Ok((n, d, c))
        }
        _ => bail!("--synthetic {s:?}: N in 1..=65536, D in 1..=16384, C in 2..=4096"),
    }
}

impl FinetuneArgs {
    /// The data source these arguments name.
    pub fn source(&self) -> Result<Source> {
        match (&self.task, &self.backbone, &self.data, &self.synthetic) {
            (Some(t), None, None, None) if t == "digits" => {
                let (backbone, data) = digits();
                Ok(Source::Images { backbone, data })
            }
            (Some(t), None, None, None) if t == "text" => {
                let m = models_dir();
                Ok(Source::Text {
                    backbone: m.join("all-MiniLM-L6-v2"),
                    data: m.join("text-cls"),
                })
            }
            (Some(t), None, None, None) => bail!("unknown --task {t:?} (known: digits, text)"),
            (None, Some(b), Some(d), None) => {
                if b.join("config.toml").exists() {
                    Ok(Source::Images {
                        backbone: b.clone(),
                        data: d.clone(),
                    })
                } else if b.join("config.json").exists() {
                    Ok(Source::Text {
                        backbone: b.clone(),
                        data: d.clone(),
                    })
                } else {
                    bail!(
                        "--backbone {}: no config.toml (ResNet) or config.json (BERT) there",
                        b.display()
                    )
                }
            }
            (None, None, None, Some(s)) => {
                let (n, d, c) = parse_synthetic(s)?;
                Ok(Source::Synthetic { n, d, c })
            }
            _ => bail!(
                "give --task digits|text, or --backbone DIR and --data FILE, or --synthetic NxDxC"
            ),
        }
    }

    /// The optimiser's hyper-parameters.
    pub fn sgd(&self) -> Result<Sgd> {
        let src = self.source()?;
        let digits = self.task.as_deref() == Some("digits");
        let text = matches!(src, Source::Text { .. });
        Ok(Sgd {
            lr: self.lr.unwrap_or(if text { 1.0 } else { 0.1 }),
            momentum: self.momentum,
            batch: self.batch,
            epochs: self.epochs.unwrap_or(if digits { 20 } else { 10 }),
            seed: self.seed,
        })
    }

    /// Checks the arguments before any party starts (the learning rate against the
    /// fixed-point range at `frac_bits`).
    pub fn validate(&self, frac_bits: u32) -> Result<()> {
        let src = self.source()?;
        self.sgd()?.check(frac_bits)?;
        if self.features_batch == 0 || self.features_batch > 4096 {
            bail!(
                "--features-batch {} must be in 1..=4096",
                self.features_batch
            );
        }
        if self.hidden == Some(0) || self.classes.is_some_and(|c| c < 2) {
            bail!("--hidden must be positive and --classes at least 2");
        }
        if self.limit == Some(0) || self.test_limit == Some(0) {
            bail!("--limit and --test-limit must be at least 1");
        }
        match &src {
            Source::Images { backbone, data } => {
                ResNetConfig::from_toml_file(&backbone.join("config.toml"))?;
                if !data.is_file() {
                    bail!("--data {}: no such file", data.display());
                }
            }
            Source::Text { backbone, data } => {
                for f in [
                    backbone.join("config.json"),
                    backbone.join("model.safetensors"),
                    data.join("train.jsonl"),
                    data.join("test.jsonl"),
                ] {
                    if !f.is_file() {
                        bail!(
                            "{}: missing (run scripts/fetch-minilm.sh and scripts/fetch-text-data.sh)",
                            f.display()
                        );
                    }
                }
            }
            Source::Synthetic { .. } => {}
        }
        Ok(())
    }

    /// Loads (P0, or the launcher) the labelled data, cut to the limits, with the
    /// labels checked against the class count.
    pub fn load_data(&self) -> Result<Data> {
        let (train, train_labels, test, test_labels) = match self.source()? {
            Source::Images { data, .. } => {
                let tr = Images::load_named(&data, "train_images", "train_labels")?;
                let te = Images::load_named(&data, "test_images", "test_labels")?;
                let tr = tr.take(self.limit.unwrap_or(usize::MAX))?;
                let te = te.take(self.test_limit.unwrap_or(usize::MAX))?;
                let need = |l: Option<Vec<usize>>, name: &str| {
                    l.with_context(|| format!("{}: missing tensor `{name}`", data.display()))
                };
                (
                    Inputs::Images(tr.images),
                    need(tr.labels, "train_labels")?,
                    Inputs::Images(te.images),
                    need(te.labels, "test_labels")?,
                )
            }
            Source::Text { backbone, data } => {
                let config = BertConfig::from_json_file(&backbone.join("config.json"))?;
                let tok = bert::Tokenizer::from_file(&backbone.join("tokenizer.json"))?;
                let max = self.max_len.min(config.max_position);
                let read = |name: &str, limit: Option<usize>| -> Result<(Inputs, Vec<usize>)> {
                    let (texts, labels) = read_jsonl(&data.join(name))?;
                    let n = texts.len().min(limit.unwrap_or(usize::MAX));
                    let enc = texts[..n]
                        .iter()
                        .map(|t| tok.encode(t, max))
                        .collect::<tessera::Result<Vec<_>>>()?;
                    Ok((Inputs::Texts(enc), labels[..n].to_vec()))
                };
                // The text task's default subset: each sentence costs ~1.1 s online and ~2.4 s
                // of dealing through MiniLM on 2 cores, so the whole set (2,500) is opt-in.
                let task = self.task.is_some();
                let (tr, trl) = read("train.jsonl", self.limit.or(task.then_some(TEXT_TRAIN)))?;
                let (te, tel) = read("test.jsonl", self.test_limit.or(task.then_some(TEXT_TEST)))?;
                (tr, trl, te, tel)
            }
            Source::Synthetic { n, d, c } => {
                let (x, y) = synthetic(n + n / 4, d, c, self.seed);
                let ntr = n.min(self.limit.unwrap_or(usize::MAX));
                let nte = (n / 4).max(1).min(self.test_limit.unwrap_or(usize::MAX));
                (
                    Inputs::Features(rows(&x, 0, ntr)?),
                    y[..ntr].to_vec(),
                    Inputs::Features(rows(&x, n, n + nte)?),
                    y[n..n + nte].to_vec(),
                )
            }
        };
        if train.is_empty() || test.is_empty() {
            bail!(
                "the data set is empty: {} training and {} test examples",
                train.len(),
                test.len()
            );
        }
        let largest = train_labels.iter().chain(&test_labels).max().copied();
        let classes = match (self.classes, largest) {
            (Some(c), _) => c,
            (None, Some(l)) => (l + 1).max(2),
            (None, None) => 2,
        };
        for (name, labels) in [("train", &train_labels), ("test", &test_labels)] {
            if let Some((i, l)) = labels.iter().enumerate().find(|(_, &l)| l >= classes) {
                bail!("{name} label {l} of example {i} is out of range for {classes} classes");
            }
        }
        Ok(Data {
            train,
            train_labels,
            test,
            test_labels,
            classes,
        })
    }
}

/// Texts and labels of a jsonl file (`{"text": ..., "label": int}` a line).
fn read_jsonl(path: &Path) -> Result<(Vec<String>, Vec<usize>)> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let (mut texts, mut labels) = (vec![], vec![]);
    for (i, line) in text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
    {
        let v: serde_json::Value = serde_json::from_str(line)
            .with_context(|| format!("{} line {}: not JSON", path.display(), i + 1))?;
        let t = v["text"].as_str();
        let l = v["label"].as_u64();
        match (t, l) {
            (Some(t), Some(l)) => {
                texts.push(t.to_string());
                labels.push(usize::try_from(l)?);
            }
            _ => bail!(
                "{} line {}: expected {{\"text\": string, \"label\": non-negative integer}}",
                path.display(),
                i + 1
            ),
        }
    }
    Ok((texts, labels))
}

/// `n` random features in [-1, 1]^d and their classes under a random linear teacher.
pub fn synthetic(n: usize, d: usize, c: usize, seed: u64) -> (Tensor<f64>, Vec<usize>) {
    let mut r = rand::rngs::StdRng::seed_from_u64(seed ^ 0x7E55_E7A5_F17E_7E57);
    let x: Vec<f64> = (0..n * d).map(|_| r.gen_range(-1.0..1.0)).collect();
    let t: Vec<f64> = (0..d * c).map(|_| r.gen_range(-1.0..1.0)).collect();
    let y = x
        .chunks(d)
        .map(|row| {
            let z: Vec<f64> = (0..c)
                .map(|j| row.iter().enumerate().map(|(k, v)| v * t[k * c + j]).sum())
                .collect();
            (0..c).fold(0, |b, j| if z[j] > z[b] { j } else { b })
        })
        .collect();
    (Tensor::from_vec(&[n, d], x).expect("n d"), y)
}

/// Online counters of one phase at one party.
#[derive(serde::Serialize, serde::Deserialize, Debug, Clone, Copy, Default)]
pub struct Phase {
    /// Online seconds (dealing subtracted).
    pub online_s: f64,
    /// Rounds.
    pub rounds: u64,
    /// Online bytes sent by this party.
    pub sent: u64,
    /// Seconds of just-in-time dealing.
    pub dealt_s: f64,
}

/// What P0 writes for the launcher.
#[derive(serde::Serialize, serde::Deserialize, Debug, Clone, Default)]
pub struct FinetuneOutput {
    /// Mean training loss of each epoch (opened to P0).
    pub losses: Vec<f64>,
    /// The trained head's class for each test example (opened to P0).
    pub classes: Vec<usize>,
}

/// The backbone as the parties hold it.
enum Backbone {
    ResNet(Box<ResNet>),
    Bert(Box<Bert>),
    None,
}

/// Runs one planned part: the dealer deals it; a compute party runs `f` with the material
/// dealt step by step and adds its online counters to `phase`.
fn planned<T>(
    p: &mut Party,
    steps: Vec<Step>,
    step_elems: usize,
    phase: &mut Phase,
    f: impl FnOnce(&mut Party, &mut Cx) -> tessera::Result<T>,
) -> Result<Option<T>> {
    if !p.is_compute() {
        run_dealer(p, &steps)?;
        return Ok(None);
    }
    p.sync()?;
    let before = p.stats();
    let t = Instant::now();
    let mut sd = StepDealer::new(steps);
    let out = {
        let mut hook = |p: &mut Party, i: usize| sd.stage(p, i);
        let mut cx = Cx::staged(Methods::default(), step_elems, &mut hook);
        f(p, &mut cx)?
    };
    let dealt = sd.dealt_s(p);
    phase.online_s += t.elapsed().as_secs_f64() - dealt;
    phase.dealt_s += dealt;
    let (r, sent, _) = sd.online(p, &p.stats().since(&before));
    phase.rounds += r;
    phase.sent += sent;
    Ok(Some(out))
}

/// P0's `value` shared among the compute parties, its online counters added to `phase`.
fn input_timed(
    p: &mut Party,
    value: Option<&Tensor<u64>>,
    shape: &[usize],
    phase: &mut Phase,
) -> Result<Shared> {
    p.sync()?;
    let before = p.stats();
    let t = Instant::now();
    let x = p.share_input(DATA_OWNER, value, shape)?;
    phase.online_s += t.elapsed().as_secs_f64();
    let d = p.stats().since(&before);
    phase.rounds += d.rounds;
    phase.sent += d.online_sent;
    Ok(x)
}

fn batches(total: usize, batch: usize) -> Vec<(usize, usize)> {
    (0..total)
        .step_by(batch.max(1))
        .map(|a| (a, (a + batch).min(total)))
        .collect()
}

fn rows(t: &Tensor<f64>, a: usize, b: usize) -> Result<Tensor<f64>> {
    let k: usize = t.shape()[1..].iter().product();
    let mut shape = t.shape().to_vec();
    shape[0] = b - a;
    Ok(Tensor::from_vec(&shape, t.data()[a * k..b * k].to_vec())?)
}

/// `finetune` as one party.
pub fn run_finetune(
    setting: Setting,
    net: Arc<dyn Transport>,
    fixed: FixedPoint,
    a: &FinetuneArgs,
) -> Result<PartyReport> {
    let src = a.source()?;
    let sgd = a.sgd()?;
    sgd.check(fixed.frac_bits())?;
    let id = net.id();
    let data = (id == DATA_OWNER).then(|| a.load_data()).transpose()?;
    let header = exchange_lengths(
        &net,
        data.as_ref()
            .map(|d| vec![d.train.len(), d.test.len(), d.classes]),
    )?;
    let [n_train, n_test, classes] = header[..] else {
        bail!("party {DATA_OWNER} sent a malformed data header");
    };
    // Text: each sentence's token count is public (train first, then test), sent in
    // messages of at most LENGTHS_PER_MESSAGE.
    let lens = match &src {
        Source::Text { .. } => {
            let all: Option<Vec<usize>> = data.as_ref().map(|d| {
                [&d.train, &d.test]
                    .iter()
                    .flat_map(|s| match s {
                        Inputs::Texts(v) => v.iter().map(Encoded::len).collect(),
                        _ => vec![],
                    })
                    .collect()
            });
            let total = n_train + n_test;
            let mut l = Vec::with_capacity(total);
            while l.len() < total {
                let k = (total - l.len()).min(LENGTHS_PER_MESSAGE);
                let part = all.as_ref().map(|a| a[l.len()..l.len() + k].to_vec());
                let got = exchange_lengths(&net, part)?;
                if got.len() != k {
                    bail!(
                        "party {DATA_OWNER} sent {} sentence lengths, not {k}",
                        got.len()
                    );
                }
                l.extend(got);
            }
            l
        }
        _ => vec![],
    };
    let (mut backbone, dim) = match &src {
        Source::Images { backbone, .. } => {
            let c = ResNetConfig::from_toml_file(&backbone.join("config.toml"))?;
            let d = c.features();
            (Backbone::ResNet(Box::new(ResNet::new(&c)?)), d)
        }
        Source::Text { backbone, .. } => {
            let c = BertConfig::from_json_file(&backbone.join("config.json"))?;
            let d = c.hidden;
            (Backbone::Bert(Box::new(Bert::new(&c)?)), d)
        }
        Source::Synthetic { d, .. } => (Backbone::None, *d),
    };
    let spec = HeadSpec {
        input: dim,
        hidden: a.hidden,
        classes,
    };
    if let Some(d) = &data {
        check_data(&spec, &[n_train, dim], &d.train_labels)?;
        if let Backbone::ResNet(m) = &backbone {
            let (h, w) = m.config.image_size;
            let c = m.config.in_channels;
            for x in [&d.train, &d.test] {
                if let Inputs::Images(im) = x {
                    if im.shape()[1..] != [h, w, c] {
                        bail!(
                            "images of {:?} (HWC) for a backbone of {h}x{w}x{c}",
                            &im.shape()[1..]
                        );
                    }
                }
            }
        }
    }
    let t0 = Instant::now();
    let mut p = staged_session(setting, net, fixed)?;
    let mut offline_s = t0.elapsed().as_secs_f64();

    // --- backbone: share the weights, then the features of every example ---
    let t = Instant::now();
    match (&mut backbone, &src) {
        (Backbone::ResNet(m), Source::Images { backbone, .. }) => {
            let w = (id == MODEL_OWNER)
                .then(|| ResNetWeights::load(backbone))
                .transpose()?;
            let shape = m.clone();
            let steps = plan_steps(setting, fixed, Methods::default(), usize::MAX, |p, cx| {
                shape.clone().share(p, cx, None)
            })?;
            planned(&mut p, steps, usize::MAX, &mut Phase::default(), |p, cx| {
                m.share(p, cx, w.as_ref())
            })?;
        }
        (Backbone::Bert(m), Source::Text { backbone, .. }) => {
            let w = (id == MODEL_OWNER)
                .then(|| BertWeights::load(backbone))
                .transpose()?;
            let shape = m.clone();
            let steps = plan_steps(setting, fixed, Methods::default(), STEP_ELEMS, |p, cx| {
                shape.clone().share(p, cx, None)
            })?;
            planned(&mut p, steps, STEP_ELEMS, &mut Phase::default(), |p, cx| {
                m.share(p, cx, w.as_ref())
            })?;
        }
        _ => {}
    }
    offline_s += t.elapsed().as_secs_f64();
    let mut bb = Phase::default();
    let mut features = |p: &mut Party, inputs: Option<&Inputs>, n: usize, offset: usize| {
        features_of(
            p,
            setting,
            fixed,
            &backbone,
            inputs,
            n,
            dim,
            lens.get(offset..).unwrap_or(&[]),
            a.features_batch,
            &mut bb,
        )
    };
    let x_train = features(&mut p, data.as_ref().map(|d| &d.train), n_train, 0)?;
    let x_test = features(&mut p, data.as_ref().map(|d| &d.test), n_test, n_train)?;

    // --- the head's training ---
    let mut head_phase = Phase::default();
    let mut head = if p.is_compute() {
        Some(TrainableHead::new(&p, spec, &spec.init(sgd.seed))?)
    } else {
        None
    };
    let y_train = if p.is_compute() {
        let oh = data.as_ref().map(|d| one_hot(&d.train_labels, classes));
        Some(input_timed(
            &mut p,
            oh.as_ref(),
            &[n_train, classes],
            &mut head_phase,
        )?)
    } else {
        None
    };
    let mut out = FinetuneOutput::default();
    let bar = (id == DATA_OWNER).then(|| {
        let b = indicatif::ProgressBar::new(sgd.epochs as u64);
        b.set_style(
            indicatif::ProgressStyle::with_template(
                "epoch {pos}/{len} {bar:30} {elapsed_precise} {msg}",
            )
            .expect("template"),
        );
        b
    });
    for epoch in 0..sgd.epochs {
        let steps = training_steps(setting, fixed, spec, &sgd, n_train, epoch)?;
        let loss = planned(&mut p, steps, usize::MAX, &mut head_phase, |p, cx| {
            let (h, x, y) = (
                head.as_mut().expect("compute"),
                x_train.as_ref().expect("compute"),
                y_train.as_ref().expect("compute"),
            );
            let l = h.epoch(p, cx, x, y, &sgd, epoch)?;
            cx.reveal_to(p, DATA_OWNER, &l)
        })?;
        if let Some(Some(l)) = loss {
            let mean = fixed.decode_tensor(&l).data()[0] / n_train as f64;
            out.losses.push(mean);
            if let Some(b) = &bar {
                b.set_message(format!("loss {mean:.4}"));
            }
        }
        if let Some(b) = &bar {
            b.inc(1);
        }
    }
    if let Some(b) = bar {
        b.finish_and_clear();
    }

    // --- the trained head classifies the test split (classes to P0 only) ---
    let mut test_phase = Phase::default();
    let init = spec.init(sgd.seed);
    for (s, e) in batches(n_test, a.features_batch) {
        let steps = plan_steps(setting, fixed, Methods::default(), usize::MAX, |p, cx| {
            let h = TrainableHead::new(p, spec, &init)?;
            h.classify(p, cx, &Shared::zeros(p, &[e - s, dim]))
                .map(|_| ())
        })?;
        let idx: Vec<usize> = (s..e).collect();
        let cl = planned(&mut p, steps, usize::MAX, &mut test_phase, |p, cx| {
            let x =
                tessera_protocols::nn::train::gather_rows(x_test.as_ref().expect("compute"), &idx)?;
            head.as_ref().expect("compute").classify(p, cx, &x)
        })?;
        if let Some(Some(cl)) = cl {
            out.classes.extend(cl);
        }
    }
    if let (Some(dir), Some(h)) = (&a.save_head, &mut head) {
        save_head(&mut p, dir, h)?;
    }
    let all = p.stats();
    p.finish()?;
    if id == DATA_OWNER {
        if let Some(path) = &a.output {
            std::fs::write(path, serde_json::to_vec(&out)?)
                .with_context(|| format!("writing {}", path.display()))?;
        }
    }
    let phases = [bb, head_phase, test_phase];
    let stats = CommStats {
        rounds: phases.iter().map(|f| f.rounds).sum(),
        online_sent: phases.iter().map(|f| f.sent).sum(),
        online_recv: 0,
        offline_sent: all.offline_sent,
        offline_recv: all.offline_recv,
    };
    offline_s += phases.iter().map(|f| f.dealt_s).sum::<f64>();
    Ok(PartyReport {
        offline_s,
        online_s: phases.iter().map(|f| f.online_s).sum(),
        stats,
        extra: Some(serde_json::json!({
            "backbone": bb, "train": head_phase, "test": test_phase,
        })),
        ..Default::default()
    })
}

/// Writes this compute party's shares of `head` to `dir/head-p<id>.bin` (and, at P0, the
/// public header to `dir/head.json`), tagged with a public random tag P0 draws from the OS
/// and opens to all, so files of different trainings are never combined.
fn save_head(p: &mut Party, dir: &Path, head: &mut TrainableHead) -> Result<()> {
    let id = p.id();
    head.replicate(p)?;
    let draw = (id == DATA_OWNER).then(|| {
        use rand::RngCore;
        let mut r = rand::rngs::OsRng;
        Tensor::from_vec(&[2], vec![r.next_u64(), r.next_u64()])
    });
    let draw = draw.transpose()?;
    let t = p.share_input(DATA_OWNER, draw.as_ref(), &[2])?;
    let tag = p.open(&t)?;
    let meta = HeadFileMeta {
        party: id,
        setting: p.setting().name().to_string(),
        frac_bits: p.fixed().frac_bits(),
        input: head.spec.input,
        hidden: head.spec.hidden,
        classes: head.spec.classes,
        tag: format!("{:016x}{:016x}", tag.data()[0], tag.data()[1]),
    };
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let path = dir.join(format!("head-p{id}.bin"));
    std::fs::write(&path, head.to_file_bytes(&meta)?)
        .with_context(|| format!("writing {}", path.display()))?;
    if id == DATA_OWNER {
        let public = dir.join("head.json");
        std::fs::write(&public, serde_json::to_vec_pretty(&meta)?)
            .with_context(|| format!("writing {}", public.display()))?;
    }
    Ok(())
}

/// The public header `dir/head.json` of a saved head (errors name the file).
pub fn read_head_header(dir: &Path) -> Result<HeadFileMeta> {
    let public = dir.join("head.json");
    let text = std::fs::read(&public).with_context(|| {
        format!(
            "reading {} (written by finetune --save-head)",
            public.display()
        )
    })?;
    let meta: HeadFileMeta = serde_json::from_slice(&text)
        .with_context(|| format!("{}: malformed head header", public.display()))?;
    meta.spec().check()?;
    Ok(meta)
}

/// A saved head as party `me` holds it: its shares (compute parties) and the public
/// header (every party, the 2PC dealer from `head.json`). Errors name the file.
pub fn load_head(
    dir: &Path,
    me: usize,
    setting: Setting,
    frac_bits: u32,
) -> Result<(Option<TrainableHead>, HeadFileMeta)> {
    let meta = read_head_header(dir)?;
    let public = dir.join("head.json");
    if Some(me) == setting.dealer() {
        return Ok((None, meta));
    }
    let path = dir.join(format!("head-p{me}.bin"));
    let bytes = std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
    let (h, m) = TrainableHead::from_file_bytes(&bytes, &path, me, setting, frac_bits)?;
    if (m.spec(), &m.tag) != (meta.spec(), &meta.tag) {
        bail!(
            "{} and {} are from different trainings (tags {} and {})",
            path.display(),
            public.display(),
            m.tag,
            meta.tag
        );
    }
    Ok((Some(h), m))
}

/// Checks that every compute party loaded shares of the same training: P0 opens its
/// file's tag to all, each compares with its own.
pub fn agree_on_head(p: &mut Party, meta: &HeadFileMeta, dir: &Path) -> Result<()> {
    if !p.is_compute() {
        return Ok(());
    }
    let parse = |t: &str| -> Option<Vec<u64>> {
        if t.len() != 32 {
            return None;
        }
        let a = u64::from_str_radix(&t[..16], 16).ok()?;
        let b = u64::from_str_radix(&t[16..], 16).ok()?;
        Some(vec![a, b])
    };
    let mine = parse(&meta.tag)
        .with_context(|| format!("{}: malformed tag {:?}", dir.display(), meta.tag))?;
    let v = (p.id() == DATA_OWNER)
        .then(|| Tensor::from_vec(&[2], mine.clone()))
        .transpose()?;
    let t = p.share_input(DATA_OWNER, v.as_ref(), &[2])?;
    let p0 = p.open(&t)?;
    if p0.data() != mine.as_slice() {
        bail!(
            "{}: party {}'s head shares are from another training than party {DATA_OWNER}'s (tag {} vs {:016x}{:016x})",
            dir.display(),
            p.id(),
            meta.tag,
            p0.data()[0],
            p0.data()[1]
        );
    }
    Ok(())
}

/// The backbone's features `[n, dim]` of P0's examples (`Some` at compute parties).
#[allow(clippy::too_many_arguments)]
fn features_of(
    p: &mut Party,
    setting: Setting,
    fixed: FixedPoint,
    backbone: &Backbone,
    inputs: Option<&Inputs>,
    n: usize,
    dim: usize,
    lens: &[usize],
    batch: usize,
    phase: &mut Phase,
) -> Result<Option<Shared>> {
    let mut parts: Vec<Shared> = vec![];
    match backbone {
        Backbone::ResNet(m) => {
            let (h, w) = m.config.image_size;
            let c = m.config.in_channels;
            for (s, e) in batches(n, batch) {
                let b = e - s;
                let steps = plan_steps(setting, fixed, Methods::default(), STEP_ELEMS, |p, cx| {
                    m.features(p, cx, &Shared::zeros(p, &[b, h, w, c]))
                        .map(|_| ())
                })?;
                let x = match inputs {
                    Some(Inputs::Images(im)) => Some(rows(im, s, e)?),
                    _ => None,
                };
                let enc = encode_images(p, x.as_ref())?;
                if let Some(f) = planned(p, steps, STEP_ELEMS, phase, |p, cx| {
                    let xs = cx.input(p, DATA_OWNER, enc.as_ref(), &[b, h, w, c])?;
                    m.features(p, cx, &xs)
                })? {
                    parts.push(f);
                }
            }
        }
        Backbone::Bert(m) => {
            let mut plans: HashMap<usize, Vec<Step>> = HashMap::new();
            for (i, &l) in lens.iter().take(n).enumerate() {
                if let std::collections::hash_map::Entry::Vacant(e) = plans.entry(l) {
                    let mask = vec![1u32; l];
                    e.insert(plan_steps(
                        setting,
                        fixed,
                        Methods::default(),
                        STEP_ELEMS,
                        |p, cx| m.sentence_embedding(p, cx, None, &mask, |_| {}).map(|_| ()),
                    )?);
                }
                let ids = match inputs {
                    Some(Inputs::Texts(v)) => Some(v[i].ids.as_slice()),
                    _ => None,
                };
                let mask = vec![1u32; l];
                if let Some(f) = planned(p, plans[&l].clone(), STEP_ELEMS, phase, |p, cx| {
                    m.sentence_embedding(p, cx, ids, &mask, |_| {})
                })? {
                    parts.push(f.reshape(&[1, dim])?);
                }
            }
        }
        Backbone::None => {
            if p.is_compute() {
                let enc = match inputs {
                    Some(Inputs::Features(t)) => Some(fixed.encode_tensor(t)?),
                    _ => None,
                };
                parts.push(input_timed(p, enc.as_ref(), &[n, dim], phase)?);
            }
        }
    }
    if !p.is_compute() {
        return Ok(None);
    }
    let all = Shared::concat_flat(&parts.iter().collect::<Vec<_>>())?;
    Ok(Some(all.reshape(&[n, dim])?))
}

/// The plaintext twin (run by the launcher, which has the files): the backbone's f64
/// features, the same training in f64, its test classes and per-epoch mean losses.
pub struct Twin {
    /// Mean training loss per epoch.
    pub losses: Vec<f64>,
    /// Test classes.
    pub classes: Vec<usize>,
    /// Seconds to compute the f64 features.
    pub features_s: f64,
}

/// Runs the plaintext twin of `a` on `data` (the launcher's copy of P0's).
pub fn twin(a: &FinetuneArgs, data: &Data, frac_bits: u32) -> Result<Twin> {
    let sgd = a.sgd()?;
    let t = Instant::now();
    // The backbone is loaded once for both splits.
    let backbone = match a.source()? {
        Source::Images { backbone, .. } => Some(Ok(ResNetWeights::load(&backbone)?)),
        Source::Text { backbone, .. } => Some(Err(BertWeights::load(&backbone)?)),
        Source::Synthetic { .. } => None,
    };
    let feats = |inputs: &Inputs| -> Result<Tensor<f64>> {
        Ok(match (inputs, &backbone) {
            (Inputs::Images(x), Some(Ok(w))) => w.features_plain(x)?,
            (Inputs::Texts(v), Some(Err(w))) => {
                let d = w.config.hidden;
                let rows: Vec<Vec<f64>> = {
                    use rayon::prelude::*;
                    v.par_iter()
                        .map(|e| bert::plain::sentence_embedding(w, e))
                        .collect()
                };
                Tensor::from_vec(&[v.len(), d], rows.concat())?
            }
            (Inputs::Features(x), _) => x.clone(),
            _ => bail!("inputs do not match the backbone"),
        })
    };
    let xtr = feats(&data.train)?;
    let xte = feats(&data.test)?;
    let features_s = t.elapsed().as_secs_f64();
    let spec = HeadSpec {
        input: xtr.shape()[1],
        hidden: a.hidden,
        classes: data.classes,
    };
    let mut head = PlainHead::new(spec, spec.init(sgd.seed), frac_bits);
    let n = data.train_labels.len() as f64;
    let mut losses = vec![];
    for e in 0..sgd.epochs {
        losses.push(head.epoch(&xtr, &data.train_labels, &sgd, e)? / n);
    }
    Ok(Twin {
        losses,
        classes: head.classify(&xte)?,
        features_s,
    })
}
