//! Private image classification with ResNet-style CNNs: `classify` (a model directory and
//! an images file, or the committed digits task) and `bench resnet` (ResNet-18 at CIFAR
//! shape, ResNet-50 at ImageNet shape, random trained-scale weights).
//!
//! Roles: P1 is the model owner (loads the weights, folds BatchNorm, shares them), P0 the
//! data owner (shares its images and alone learns the classes, by a private argmax opened
//! to it). The architecture (every party reads `config.toml`), the number of images and
//! the batch size are public: P0 sends the image count first. Material is dealt just in
//! time, step by step, as for BERT ([`crate::infer::StepDealer`]).

use crate::infer::{exchange_lengths, run_dealer, staged_session, StepDealer};
use crate::job::PartyReport;
use anyhow::{bail, Context, Result};
use clap::Args;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;
use tessera::net::Transport;
use tessera::{CommStats, FixedPoint, Party, Setting, Tensor};
use tessera_protocols::models::resnet::{encode_images, ResNet};
use tessera_protocols::nn::train::{HeadSpec, TrainableHead};
use tessera_protocols::nn::{plan_steps, Cx, Methods, Step, DATA_OWNER, MODEL_OWNER};
use tessera_protocols::resnet::{Images, ResNetConfig, ResNetWeights};

/// `classify --model DIR --images FILE [--batch B] [--json]` or `classify --task digits`.
#[derive(Args, Debug, Clone)]
pub struct ClassifyArgs {
    /// Model directory with config.toml and model.safetensors (see `resnet` import).
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// Images file (safetensors: `images` [N, C, H, W], optional `labels` [N]).
    #[arg(long)]
    pub images: Option<PathBuf>,
    /// A committed task instead of --model/--images: `digits` (data/digits).
    #[arg(long)]
    pub task: Option<String>,
    /// Digits task variant: `relu` or `poly`.
    #[arg(long, default_value = "relu")]
    pub act: String,
    /// Images per batch (one forward pass each).
    #[arg(long, default_value_t = 64)]
    pub batch: usize,
    /// Classify only the first N images.
    #[arg(long)]
    pub limit: Option<usize>,
    /// A head trained by `finetune --save-head DIR`: the model's features (its trunk and
    /// global average pool) go through this secret-shared head instead of its own
    /// classifier.
    #[arg(long, value_name = "DIR")]
    pub head: Option<PathBuf>,
    /// Read tensors `SPLIT_images` and `SPLIT_labels` (e.g. `test` of a fine-tuning data
    /// file) instead of `images` and `labels`.
    #[arg(long)]
    pub split: Option<String>,
    /// Largest ReLU step in elements (bigger ones run in chunks, each dealt just before).
    #[arg(long, default_value_t = 1 << 18)]
    pub step_elems: usize,
    /// Print one JSON object.
    #[arg(long)]
    pub json: bool,
    /// P0 writes its result (classes, timings) as JSON here (set by the launcher).
    #[arg(long)]
    pub output: Option<PathBuf>,
}

/// Where the committed digits models and test split live: `data/digits` under the current
/// directory, else under the source tree this binary was built from.
pub fn digits_dir() -> PathBuf {
    let local = PathBuf::from("data/digits");
    if local.join("test.safetensors").exists() {
        return local;
    }
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../data/digits")
}

impl ClassifyArgs {
    /// The model directory and the images file these arguments name.
    pub fn paths(&self) -> Result<(PathBuf, PathBuf)> {
        match (&self.task, &self.model, &self.images) {
            (Some(t), None, None) if t == "digits" => {
                if self.act != "relu" && self.act != "poly" {
                    bail!(
                        "--act {:?}: the digits task has `relu` and `poly`",
                        self.act
                    );
                }
                let d = digits_dir();
                Ok((d.join(&self.act), d.join("test.safetensors")))
            }
            (Some(t), None, None) => bail!("unknown --task {t:?} (known: digits)"),
            (None, Some(m), Some(i)) => Ok((m.clone(), i.clone())),
            _ => bail!("give --task digits, or both --model DIR and --images FILE"),
        }
    }

    /// Checks the arguments before any party starts.
    pub fn validate(&self) -> Result<()> {
        if self.batch == 0 || self.batch > 4096 {
            bail!("--batch {} must be in 1..=4096", self.batch);
        }
        let (m, _) = self.paths()?;
        let config = ResNetConfig::from_toml_file(&m.join("config.toml"))?;
        if let Some(dir) = &self.head {
            let meta = crate::finetune::read_head_header(dir)?;
            if meta.input != config.features() {
                bail!(
                    "--head {}: a head of {} inputs for a model of {} features",
                    dir.display(),
                    meta.input,
                    config.features()
                );
            }
        }
        Ok(())
    }

    /// Loads the images file (the `--split` tensors if given).
    pub fn load_images(&self, path: &Path) -> Result<Images> {
        let im = match &self.split {
            Some(s) => Images::load_named(path, &format!("{s}_images"), &format!("{s}_labels"))?,
            None => Images::load(path)?,
        };
        Ok(match self.limit {
            Some(n) => im.take(n)?,
            None => im,
        })
    }
}

/// What P0 writes for the launcher.
#[derive(serde::Serialize, serde::Deserialize, Debug, Clone, Default)]
pub struct ClassifyOutput {
    /// The class of each image.
    pub classes: Vec<usize>,
    /// Online seconds per batch.
    pub batch_s: Vec<f64>,
    /// Images per batch.
    pub batch_n: Vec<usize>,
    /// Online bytes sent by P0 per batch.
    pub batch_bytes_p0: Vec<u64>,
    /// Rounds per batch.
    pub batch_rounds: Vec<u64>,
}

/// The forward (and argmax) steps for a batch of `n`.
fn forward_steps(
    model: &ResNet,
    setting: Setting,
    fixed: FixedPoint,
    n: usize,
    step_elems: usize,
    argmax: bool,
) -> Result<Vec<Step>> {
    forward_steps_with(model, None, setting, fixed, n, step_elems, argmax)
}

/// As [`forward_steps`], through a trained head of shape `head` if given.
fn forward_steps_with(
    model: &ResNet,
    head: Option<HeadSpec>,
    setting: Setting,
    fixed: FixedPoint,
    n: usize,
    step_elems: usize,
    argmax: bool,
) -> Result<Vec<Step>> {
    let (h, w) = model.config.image_size;
    let c = model.config.in_channels;
    Ok(plan_steps(
        setting,
        fixed,
        Methods::default(),
        step_elems,
        |p, cx| {
            let x = tessera::Shared::zeros(p, &[n, h, w, c]);
            if let Some(spec) = head {
                let f = model.features(p, cx, &x)?;
                TrainableHead::new(p, spec, &spec.init(0))?
                    .classify(p, cx, &f)
                    .map(|_| ())
            } else if argmax {
                model.classify(p, cx, &x).map(|_| ())
            } else {
                model.forward(p, cx, &x).map(|_| ())
            }
        },
    )?)
}

fn share_steps(model: &ResNet, setting: Setting, fixed: FixedPoint) -> Result<Vec<Step>> {
    Ok(plan_steps(
        setting,
        fixed,
        Methods::default(),
        usize::MAX,
        |p, cx| model.clone().share(p, cx, None),
    )?)
}

fn batches(total: usize, batch: usize) -> Vec<usize> {
    let mut v = vec![];
    let mut left = total;
    while left > 0 {
        let b = left.min(batch);
        v.push(b);
        left -= b;
    }
    v
}

/// `classify` as one party.
pub fn run_classify(
    setting: Setting,
    net: Arc<dyn Transport>,
    fixed: FixedPoint,
    a: &ClassifyArgs,
) -> Result<PartyReport> {
    let (model_dir, images_path) = a.paths()?;
    let config = ResNetConfig::from_toml_file(&model_dir.join("config.toml"))?;
    let id = net.id();
    let images = if id == DATA_OWNER {
        Some(a.load_images(&images_path)?)
    } else {
        None
    };
    let head = a
        .head
        .as_ref()
        .map(|d| crate::finetune::load_head(d, id, setting, fixed.frac_bits()))
        .transpose()?;
    if let Some((_, meta)) = &head {
        if meta.input != config.features() {
            bail!(
                "--head: a head of {} inputs for a model of {} features",
                meta.input,
                config.features()
            );
        }
    }
    let head_spec = head.as_ref().map(|(_, m)| m.spec());
    let weights = if id == MODEL_OWNER {
        Some(ResNetWeights::load(&model_dir)?)
    } else {
        None
    };
    if let Some(im) = &images {
        let s = im.images.shape();
        if (s[1], s[2]) != config.image_size || s[3] != config.in_channels {
            bail!(
                "{}: images of {}x{}x{} for a model of {}x{}x{}",
                images_path.display(),
                s[1],
                s[2],
                s[3],
                config.image_size.0,
                config.image_size.1,
                config.in_channels
            );
        }
    }
    let n = exchange_lengths(&net, images.as_ref().map(|im| vec![im.images.shape()[0]]))?;
    let total = n[0];
    let parts = batches(total, a.batch);
    let mut model = ResNet::new(&config)?;
    // The plans come from an unshared copy of the same modules.
    let shape = model.clone();
    let t = Instant::now();
    let mut p = staged_session(setting, net, fixed)?;
    let step_elems = if a.step_elems == 0 {
        usize::MAX
    } else {
        a.step_elems
    };
    let plan =
        |n: usize| forward_steps_with(&shape, head_spec, setting, fixed, n, step_elems, true);
    let mut offline_s = t.elapsed().as_secs_f64();
    if !p.is_compute() {
        let t = Instant::now();
        run_dealer(&mut p, &share_steps(&model, setting, fixed)?)?;
        for &b in &parts {
            run_dealer(&mut p, &plan(b)?)?;
        }
        return Ok(PartyReport {
            offline_s: offline_s + t.elapsed().as_secs_f64(),
            stats: p.stats(),
            ..Default::default()
        });
    }
    let t = Instant::now();
    {
        let mut sd = StepDealer::new(share_steps(&model, setting, fixed)?);
        let mut hook = |p: &mut Party, i: usize| sd.stage(p, i);
        let mut cx = Cx::staged(Methods::default(), usize::MAX, &mut hook);
        model.share(&mut p, &mut cx, weights.as_ref())?;
    }
    offline_s += t.elapsed().as_secs_f64();
    if let Some((_, meta)) = &head {
        crate::finetune::agree_on_head(&mut p, meta, a.head.as_deref().unwrap_or(Path::new("")))?;
    }
    let head = head.and_then(|(h, _)| h);
    let (h, w) = config.image_size;
    let c = config.in_channels;
    let per = h * w * c;
    let mut out = ClassifyOutput::default();
    let mut stats = CommStats::default();
    let mut online_s = 0.0;
    let mut start = 0;
    let bar = (id == DATA_OWNER && parts.len() > 1).then(|| {
        let b = indicatif::ProgressBar::new(parts.len() as u64);
        b.set_style(
            indicatif::ProgressStyle::with_template("batch {pos}/{len} {bar:30} {elapsed_precise}")
                .expect("template"),
        );
        b
    });
    for &b in &parts {
        let x = images
            .as_ref()
            .map(|im| {
                Tensor::from_vec(
                    &[b, h, w, c],
                    im.images.data()[start * per..(start + b) * per].to_vec(),
                )
            })
            .transpose()?;
        start += b;
        let enc = encode_images(&p, x.as_ref())?;
        let steps = plan(b)?;
        p.sync()?;
        let before = p.stats();
        let t = Instant::now();
        let mut sd = StepDealer::new(steps);
        let classes = {
            let mut hook = |p: &mut Party, i: usize| sd.stage(p, i);
            let mut cx = Cx::staged(Methods::default(), step_elems, &mut hook);
            let xs = cx.input(&mut p, DATA_OWNER, enc.as_ref(), &[b, h, w, c])?;
            match &head {
                Some(hd) => {
                    let f = model.features(&mut p, &mut cx, &xs)?;
                    hd.classify(&mut p, &mut cx, &f)?
                }
                None => model.classify(&mut p, &mut cx, &xs)?,
            }
        };
        let el = t.elapsed().as_secs_f64() - sd.dealt_s(&p);
        offline_s += sd.dealt_s(&p);
        online_s += el;
        let (r, sent, recv) = sd.online(&p, &p.stats().since(&before));
        stats.rounds += r;
        stats.online_sent += sent;
        stats.online_recv += recv;
        if let Some(cl) = classes {
            out.classes.extend(cl);
        }
        out.batch_s.push(el);
        out.batch_n.push(b);
        out.batch_bytes_p0.push(sent);
        out.batch_rounds.push(r);
        if let Some(bar) = &bar {
            bar.inc(1);
        }
    }
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    let all = p.stats();
    stats.offline_sent = all.offline_sent;
    stats.offline_recv = all.offline_recv;
    p.finish()?;
    if id == DATA_OWNER {
        if let Some(path) = &a.output {
            std::fs::write(path, serde_json::to_vec(&out)?)
                .with_context(|| format!("writing {}", path.display()))?;
        }
    }
    Ok(PartyReport {
        offline_s,
        online_s,
        stats,
        ..Default::default()
    })
}

/// `bench resnet` options.
#[derive(Args, Debug, Clone)]
pub struct ResNetBenchArgs {
    /// ResNet depth: 18 (CIFAR shape 32x32x3) or 50 (ImageNet shape 224x224x3).
    #[arg(long, default_value_t = 18)]
    pub depth: usize,
    /// Activation: `relu` or `poly` (degree 2, the digits model's ReLU fit on [-4, 4]).
    #[arg(long, default_value = "relu")]
    pub act: String,
    /// Images per forward pass.
    #[arg(long, default_value_t = 1)]
    pub images: usize,
    /// Largest ReLU / max-pool step in elements (bigger ones run in chunks, each dealt
    /// just before it: ReLU keys are ~1.2 KB per element and party, so 2^18 elements hold
    /// ~0.3 GB; 0: no chunks).
    #[arg(long, default_value_t = 1 << 18)]
    pub relu_step_elems: usize,
}

/// The degree-2 activation of the committed digits model (least squares of ReLU on
/// [-4, 4]).
pub const POLY2: [f64; 3] = [0.375, 0.5, 0.1171875];

impl ResNetBenchArgs {
    /// The architecture of these arguments.
    pub fn config(&self) -> Result<ResNetConfig> {
        let mut c = match self.depth {
            18 => ResNetConfig::resnet18_cifar(),
            50 => ResNetConfig::resnet50_imagenet(),
            d => {
                bail!("--depth {d}: supported depths are 18 (CIFAR shape) and 50 (ImageNet shape)")
            }
        };
        c.activation = match self.act.as_str() {
            "relu" => tessera_protocols::nn::Activation::Relu,
            "poly" => tessera_protocols::nn::Activation::poly(&POLY2)?,
            a => bail!("--act {a:?}: use relu or poly"),
        };
        if self.images == 0 || self.images > 64 {
            bail!("--images {} must be in 1..=64", self.images);
        }
        Ok(c)
    }

    /// The deterministic input batch (NHWC, ~N(0, 1) like normalised images).
    pub fn input(&self, c: &ResNetConfig) -> Result<Tensor<f64>> {
        let (h, w) = c.image_size;
        let n = self.images * h * w * c.in_channels;
        let data = (0..n)
            .map(|i| {
                let u = ((i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 40) as f64
                    / (1u64 << 24) as f64;
                (u - 0.5) * 3.4
            })
            .collect();
        Ok(Tensor::from_vec(&[self.images, h, w, c.in_channels], data)?)
    }

    /// The random weights (BatchNorm calibrated on the input batch).
    pub fn weights(&self) -> Result<ResNetWeights> {
        let c = self.config()?;
        Ok(ResNetWeights::random(
            &c,
            50 + self.depth as u64,
            &self.input(&c)?,
        )?)
    }
}

/// `bench resnet` as one party: the logits of the bench batch, revealed to P0 after timing
/// and written to `output` (f64 little-endian) for the launcher's check.
pub fn run_bench_resnet(
    setting: Setting,
    net: Arc<dyn Transport>,
    fixed: FixedPoint,
    r: &ResNetBenchArgs,
    output: Option<&Path>,
) -> Result<PartyReport> {
    let config = r.config()?;
    let id = net.id();
    let step_elems = if r.relu_step_elems == 0 {
        usize::MAX
    } else {
        r.relu_step_elems
    };
    let mut model = ResNet::new(&config)?;
    let n = r.images;
    let weights = (id == MODEL_OWNER).then(|| r.weights()).transpose()?;
    let t = Instant::now();
    let mut p = staged_session(setting, net, fixed)?;
    let mut offline_s = t.elapsed().as_secs_f64();
    let steps = forward_steps(&model, setting, fixed, n, step_elems, false)?;
    if !p.is_compute() {
        let t = Instant::now();
        run_dealer(&mut p, &share_steps(&model, setting, fixed)?)?;
        run_dealer(&mut p, &steps)?;
        return Ok(PartyReport {
            offline_s: offline_s + t.elapsed().as_secs_f64(),
            stats: p.stats(),
            ..Default::default()
        });
    }
    let t = Instant::now();
    {
        let mut sd = StepDealer::new(share_steps(&model, setting, fixed)?);
        let mut hook = |p: &mut Party, i: usize| sd.stage(p, i);
        let mut cx = Cx::staged(Methods::default(), usize::MAX, &mut hook);
        model.share(&mut p, &mut cx, weights.as_ref())?;
    }
    drop(weights);
    offline_s += t.elapsed().as_secs_f64();
    let x = (id == DATA_OWNER).then(|| r.input(&config)).transpose()?;
    let enc = encode_images(&p, x.as_ref())?;
    let (h, w) = config.image_size;
    let xs = p.share_input(DATA_OWNER, enc.as_ref(), &[n, h, w, config.in_channels])?;
    p.sync()?;
    let before = p.stats();
    let t = Instant::now();
    let mut sd = StepDealer::new(steps);
    let (logits, breakdown) = {
        let mut hook = |p: &mut Party, i: usize| sd.stage(p, i);
        let mut cx = Cx::staged(Methods::default(), step_elems, &mut hook);
        let y = model.forward(&mut p, &mut cx, &xs)?;
        (y, cx.breakdown)
    };
    let online_s = t.elapsed().as_secs_f64() - sd.dealt_s(&p);
    offline_s += sd.dealt_s(&p);
    let (rounds, sent, recv) = sd.online(&p, &p.stats().since(&before));
    let all = p.stats();
    let stats = CommStats {
        rounds,
        online_sent: sent,
        online_recv: recv,
        offline_sent: all.offline_sent,
        offline_recv: all.offline_recv,
    };
    if let Some(y) = p.reveal_to(DATA_OWNER, &logits)? {
        if let Some(path) = output {
            let y = fixed.decode_tensor(&y);
            let bytes: Vec<u8> = y.data().iter().flat_map(|v| v.to_le_bytes()).collect();
            std::fs::write(path, bytes).with_context(|| format!("writing {}", path.display()))?;
        }
    }
    p.finish()?;
    let extra: Vec<(String, f64, u64, u64)> = breakdown
        .items
        .iter()
        .map(|(n, d, c)| (n.to_string(), d.as_secs_f64(), c.rounds, c.online_sent))
        .collect();
    Ok(PartyReport {
        offline_s,
        online_s,
        stats,
        extra: Some(serde_json::json!({ "breakdown": extra })),
        ..Default::default()
    })
}
