//! Command implementations behind `src/main.rs` (kept in the library so tests and `compare`
//! reuse them).

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::{Args, ValueEnum};

use crate::cpu::Cpu;
use crate::data::{self, DatasetSource, LoadOptions, TrainSplit};
use crate::gpu::Gpu;
use crate::model::checkpoint::Checkpoint;
use crate::model::Conv4;
use crate::ops::Backend;
use crate::train::eval::{embed_all, evaluate, EvalResult};
use crate::train::step::PairLoss;
use crate::train::trainer::{default_rule, train, Method, Reporter, TrainConfig, TrainReport};

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum DeviceChoice {
    /// A hardware GPU when there is one, else the CPU path.
    Auto,
    /// wgpu on whatever adapter there is (software adapters included).
    Gpu,
    /// The CPU path.
    Cpu,
}

/// A backend chosen at run time.
pub enum AnyBackend {
    Cpu(Cpu),
    Gpu(Box<Gpu>),
}

/// Run `$body` with `$b` bound to the concrete backend.
#[macro_export]
macro_rules! with_backend {
    ($any:expr, $b:ident => $body:expr) => {
        match $any {
            $crate::cli::AnyBackend::Cpu($b) => $body,
            $crate::cli::AnyBackend::Gpu(g) => {
                let $b: &$crate::gpu::Gpu = g;
                $body
            }
        }
    };
}

impl AnyBackend {
    pub fn describe(&self) -> String {
        match self {
            AnyBackend::Cpu(c) => c.describe(),
            AnyBackend::Gpu(g) => g.describe(),
        }
    }
    pub fn kind(&self) -> &'static str {
        match self {
            AnyBackend::Cpu(_) => "cpu",
            AnyBackend::Gpu(_) => "gpu",
        }
    }
}

/// Open the requested device, printing the choice to stderr.
pub fn open_device(device: DeviceChoice, adapter: Option<&str>, quiet: bool) -> Result<AnyBackend> {
    let be = match device {
        DeviceChoice::Cpu => AnyBackend::Cpu(Cpu::new()),
        DeviceChoice::Gpu => AnyBackend::Gpu(Box::new(Gpu::new(adapter)?)),
        DeviceChoice::Auto => match Gpu::new(adapter) {
            Ok(g) if !g.adapter.is_software() => AnyBackend::Gpu(Box::new(g)),
            Ok(g) => {
                if !quiet {
                    eprintln!(
                        "note: the only GPU adapter is '{}', a software rasteriser slower than the CPU path; training on the CPU (use --device gpu to force it)",
                        g.adapter.name
                    );
                }
                AnyBackend::Cpu(Cpu::new())
            }
            Err(e) => {
                if !quiet {
                    eprintln!("note: no usable GPU adapter ({e}); training on the CPU");
                }
                AnyBackend::Cpu(Cpu::new())
            }
        },
    };
    if !quiet {
        eprintln!("device: {} — {}", be.kind(), be.describe());
    }
    Ok(be)
}

/// Dataset options shared by train, eval and predict.
#[derive(Args, Clone, Debug)]
pub struct DataArgs {
    /// `synthetic` (built in), `omniglot:PATH` (official layout, folders or zips) or `folder:PATH`.
    #[arg(long, default_value = "synthetic")]
    pub dataset: String,
    /// Vinyals et al. split files (train.txt, val.txt, test.txt, trainval.txt) for Omniglot.
    #[arg(long)]
    pub split_dir: Option<PathBuf>,
    /// Which split file trains the model when --split-dir is given.
    #[arg(long, value_enum, default_value = "train")]
    pub train_split: TrainSplitArg,
    /// Do not add 90/180/270-degree rotations of Omniglot characters as new classes.
    #[arg(long)]
    pub no_rotations: bool,
    /// Skip unreadable images (counted in a warning) instead of failing.
    #[arg(long)]
    pub skip_bad_images: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum TrainSplitArg {
    Train,
    Trainval,
}

impl DataArgs {
    pub fn load(&self, seed: u64, image_size: usize) -> Result<data::Dataset> {
        let source: DatasetSource = self.dataset.parse()?;
        let opts = LoadOptions {
            seed,
            image_size,
            rotations: !self.no_rotations,
            split_dir: self.split_dir.clone(),
            train_split: match self.train_split {
                TrainSplitArg::Train => TrainSplit::Train,
                TrainSplitArg::Trainval => TrainSplit::TrainVal,
            },
            skip_bad_images: self.skip_bad_images,
        };
        Ok(data::load(&source, &opts)?)
    }
}

#[derive(Args, Clone, Debug)]
pub struct TrainArgs {
    #[command(flatten)]
    pub data: DataArgs,
    #[arg(long, value_enum, default_value = "protonet")]
    pub method: Method,
    /// Siamese loss (siamese only; default contrastive).
    #[arg(long, value_enum)]
    pub loss: Option<PairLoss>,
    /// Contrastive-loss margin on the Euclidean distance.
    #[arg(long, default_value_t = 1.0)]
    pub margin: f32,
    /// Classes per training episode (ProtoNet).
    #[arg(long, default_value_t = 20)]
    pub way: usize,
    /// Support images per class (ProtoNet).
    #[arg(long, default_value_t = 1)]
    pub shot: usize,
    /// Query images per class (ProtoNet).
    #[arg(long, default_value_t = 5)]
    pub query: usize,
    /// Pairs per Siamese step (half same-class, half different).
    #[arg(long, default_value_t = 128)]
    pub pairs: usize,
    /// Training episodes (ProtoNet) or pair batches (Siamese).
    #[arg(long, default_value_t = 600)]
    pub episodes: u64,
    /// Stop after this many seconds of training even if --episodes are not done.
    #[arg(long)]
    pub time_budget: Option<f64>,
    #[arg(long, default_value_t = 1e-3)]
    pub lr: f32,
    /// Halve the learning rate every this many episodes.
    #[arg(long, default_value_t = 2000)]
    pub lr_step: u64,
    /// Clip the global L2 norm of the gradients to MAX_NORM before each Adam step (computed
    /// on the device; the norm before clipping is logged as grad_norm in metrics.jsonl).
    #[arg(long, value_name = "MAX_NORM")]
    pub clip_grad: Option<f32>,
    /// Filters per conv layer.
    #[arg(long, default_value_t = 64)]
    pub hidden: usize,
    /// Images are resized to this many pixels square.
    #[arg(long, default_value_t = 28)]
    pub image_size: usize,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Validate (N-way 1-shot on validation classes) every this many episodes; 0 disables.
    #[arg(long, default_value_t = 200)]
    pub val_every: u64,
    #[arg(long, default_value_t = 200)]
    pub val_episodes: usize,
    /// Classes per validation episode.
    #[arg(long, default_value_t = 5)]
    pub val_way: usize,
    /// Test episodes of the final evaluation.
    #[arg(long, default_value_t = 1000)]
    pub eval_episodes: usize,
    /// Queries per class in validation and the final evaluation.
    #[arg(long, default_value_t = 15)]
    pub eval_query: usize,
    #[arg(long, default_value_t = 50)]
    pub log_every: u64,
    /// Refresh DIR/last.safetensors at least this often (seconds).
    #[arg(long, default_value_t = 60.0)]
    pub checkpoint_every: f64,
    /// Output directory: best.safetensors, last.safetensors, metrics.jsonl.
    #[arg(long, default_value = "runs/latest")]
    pub out: PathBuf,
    /// Continue the run saved in this directory (its last.safetensors).
    #[arg(long)]
    pub resume: Option<PathBuf>,
    #[arg(long, value_enum, default_value = "auto")]
    pub device: DeviceChoice,
    /// Use the GPU adapter whose name contains this.
    #[arg(long)]
    pub adapter: Option<String>,
    /// Print one JSON object on stdout at the end (everything else goes to stderr).
    #[arg(long)]
    pub json: bool,
    /// No progress bar.
    #[arg(long)]
    pub no_progress: bool,
}

impl TrainArgs {
    pub fn config(&self) -> TrainConfig {
        TrainConfig {
            method: self.method,
            loss: match self.method {
                Method::Siamese => Some(self.loss.unwrap_or(PairLoss::Contrastive)),
                Method::Protonet => self.loss,
            },
            margin: self.margin,
            way: self.way,
            shot: self.shot,
            query: self.query,
            pairs: self.pairs,
            episodes: self.episodes,
            time_budget: self.time_budget,
            lr: self.lr,
            lr_step: self.lr_step,
            lr_gamma: 0.5,
            hidden: self.hidden,
            seed: self.seed,
            val_every: self.val_every,
            val_episodes: self.val_episodes,
            val_way: self.val_way,
            eval_episodes: self.eval_episodes,
            eval_query: self.eval_query,
            log_every: self.log_every.max(1),
            checkpoint_every: self.checkpoint_every,
            clip_grad: self.clip_grad,
            dataset: self.data.dataset.clone(),
        }
    }
}

pub fn run_train(args: &TrainArgs) -> Result<TrainReport> {
    let cfg = args.config();
    cfg.validate()?;
    let resume = match &args.resume {
        Some(dir) => {
            let path = if dir.is_dir() {
                dir.join("last.safetensors")
            } else {
                dir.clone()
            };
            let ck = Checkpoint::load(&path)?;
            if ck.optimizer.is_none() {
                bail!(
                    "{}: has no optimizer state; resume from a run directory's last.safetensors",
                    path.display()
                );
            }
            eprintln!(
                "resuming from {} at episode {}",
                path.display(),
                ck.meta.episode
            );
            Some(ck)
        }
        None => None,
    };
    let t0 = std::time::Instant::now();
    let dataset = args.data.load(args.seed, args.image_size)?;
    eprintln!(
        "dataset: {} — train {} classes / {} images, val {} / {}, test {} / {} ({:.1} s to load)",
        dataset.name,
        dataset.train.classes.len(),
        dataset.train.num_images(),
        dataset.val.classes.len(),
        dataset.val.num_images(),
        dataset.test.classes.len(),
        dataset.test.num_images(),
        t0.elapsed().as_secs_f64()
    );
    let backend = open_device(args.device, args.adapter.as_deref(), false)?;
    let adapter = backend.describe();
    let reporter = Reporter {
        progress: !args.no_progress && !args.json,
        quiet: false,
    };
    let report = with_backend!(&backend, b => train(b, &adapter, &dataset, &cfg, args.image_size, &args.out, resume, &reporter))?;
    Ok(report)
}

pub fn print_eval_table(results: &[EvalResult]) {
    println!(
        "{:>5} {:>5} {:>6} {:>9} {:>18}",
        "way", "shot", "query", "episodes", "accuracy (95% CI)"
    );
    for r in results {
        println!(
            "{:>5} {:>5} {:>6} {:>9} {:>10.2}% ± {:.2}",
            r.way,
            r.shot,
            r.query,
            r.episodes,
            100.0 * r.accuracy,
            100.0 * r.ci95
        );
    }
}

#[derive(Args, Clone, Debug)]
pub struct EvalArgs {
    #[arg(long)]
    pub checkpoint: PathBuf,
    /// Dataset to evaluate on (default: the one in the checkpoint).
    #[arg(long)]
    pub dataset: Option<String>,
    #[arg(long)]
    pub split_dir: Option<PathBuf>,
    #[arg(long)]
    pub no_rotations: bool,
    #[arg(long)]
    pub skip_bad_images: bool,
    /// Comma-separated ways.
    #[arg(long, value_delimiter = ',', default_value = "5,20")]
    pub way: Vec<usize>,
    /// Comma-separated shots.
    #[arg(long, value_delimiter = ',', default_value = "1,5")]
    pub shot: Vec<usize>,
    #[arg(long, default_value_t = 15)]
    pub query: usize,
    #[arg(long, default_value_t = 1000)]
    pub episodes: usize,
    /// Episode sampling seed (the same seed gives the same test episodes).
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Compare queries with class-mean prototypes (ProtoNet's rule) even for a Siamese model;
    /// `--prototypes false` compares with every support example (the Siamese rule).
    #[arg(long)]
    pub prototypes: Option<bool>,
    /// Run Lake et al.'s 20-way within-alphabet one-shot benchmark instead: a folder of
    /// `runNN/` folders (class_labels.txt, training/, test/) or the official all_runs.zip.
    #[arg(long)]
    pub lake_runs: Option<PathBuf>,
    #[arg(long, value_enum, default_value = "auto")]
    pub device: DeviceChoice,
    #[arg(long)]
    pub adapter: Option<String>,
    #[arg(long)]
    pub json: bool,
}

/// The result of `fewshot eval --lake-runs`.
#[derive(serde::Serialize)]
pub struct LakeEvalReport {
    pub method: String,
    pub loss: Option<String>,
    pub device: String,
    pub adapter: String,
    pub checkpoint: PathBuf,
    pub rule: String,
    #[serde(flatten)]
    pub report: crate::train::lake::LakeReport,
}

pub fn run_lake_eval(args: &EvalArgs, runs_path: &Path) -> Result<LakeEvalReport> {
    let ck = Checkpoint::load(&args.checkpoint)?;
    if ck.meta.arch.in_channels != 1 {
        bail!(
            "{}: Lake's runs are grayscale but the model takes {}-channel images",
            args.checkpoint.display(),
            ck.meta.arch.in_channels
        );
    }
    let runs = data::lake::load_lake_runs(runs_path, ck.meta.arch.image_size)?;
    let backend = open_device(args.device, args.adapter.as_deref(), args.json)?;
    let rule = default_rule(
        &ck.meta.method,
        ck.meta.loss.as_deref(),
        &ck.params,
        &ck.meta.arch,
        args.prototypes,
    );
    let report = with_backend!(&backend, b => {
        let model = load_model(b, &ck);
        crate::train::lake::evaluate_lake(&runs, &rule, &mut |images: &[f32], n: usize| embed_all(b, &model, images, n))
    })?;
    Ok(LakeEvalReport {
        method: ck.meta.method.clone(),
        loss: ck.meta.loss.clone(),
        device: backend.kind().into(),
        adapter: backend.describe(),
        checkpoint: args.checkpoint.clone(),
        rule: if ck.meta.loss.as_deref() == Some("koch") {
            "highest Koch score".into()
        } else {
            "nearest (Euclidean)".into()
        },
        report,
    })
}

#[derive(serde::Serialize)]
pub struct EvalReport {
    pub method: String,
    pub loss: Option<String>,
    pub device: String,
    pub adapter: String,
    pub checkpoint: PathBuf,
    pub dataset: String,
    pub prototypes: bool,
    pub eval: Vec<EvalResult>,
}

/// Load a checkpoint onto a backend.
pub fn load_model<B: Backend>(backend: &B, ck: &Checkpoint) -> Conv4<B> {
    Conv4::new(backend, ck.meta.arch.clone(), &ck.params, &ck.stats)
}

pub fn run_eval(args: &EvalArgs) -> Result<EvalReport> {
    let ck = Checkpoint::load(&args.checkpoint)?;
    if args.way.iter().chain(&args.shot).any(|&v| v == 0) || args.query == 0 || args.episodes == 0 {
        bail!("--way, --shot, --query and --episodes must all be at least 1");
    }
    let data_args = DataArgs {
        dataset: args
            .dataset
            .clone()
            .unwrap_or_else(|| ck.meta.dataset.clone()),
        split_dir: args.split_dir.clone(),
        train_split: TrainSplitArg::Train,
        no_rotations: args.no_rotations,
        skip_bad_images: args.skip_bad_images,
    };
    let dataset = data_args.load(ck.meta.seed, ck.meta.arch.image_size)?;
    check_spec(&ck, dataset.spec.channels, &args.checkpoint)?;
    let backend = open_device(args.device, args.adapter.as_deref(), false)?;
    let dim = ck.meta.arch.embedding_dim();
    let emb = with_backend!(&backend, b => {
        let model = load_model(b, &ck);
        embed_all(b, &model, &dataset.test.images, dataset.test.num_images())
    })?;
    let rule = default_rule(
        &ck.meta.method,
        ck.meta.loss.as_deref(),
        &ck.params,
        &ck.meta.arch,
        args.prototypes,
    );
    let mut eval = Vec::new();
    for &way in &args.way {
        for &shot in &args.shot {
            eval.push(evaluate(
                &dataset.test,
                &emb,
                dim,
                &rule,
                way,
                shot,
                args.query,
                args.episodes,
                args.seed,
            )?);
        }
    }
    Ok(EvalReport {
        method: ck.meta.method.clone(),
        loss: ck.meta.loss.clone(),
        device: backend.kind().into(),
        adapter: backend.describe(),
        checkpoint: args.checkpoint.clone(),
        dataset: data_args.dataset,
        prototypes: rule.prototypes,
        eval,
    })
}

fn check_spec(ck: &Checkpoint, channels: usize, path: &Path) -> Result<()> {
    if ck.meta.arch.in_channels != channels {
        bail!(
            "{}: the model takes {}-channel images but the dataset has {} channels",
            path.display(),
            ck.meta.arch.in_channels,
            channels
        );
    }
    Ok(())
}

#[derive(Args, Clone, Debug)]
pub struct PredictArgs {
    #[arg(long)]
    pub checkpoint: PathBuf,
    /// A folder with one sub-folder of labelled images per class.
    #[arg(long)]
    pub support: PathBuf,
    /// Images to classify.
    #[arg(required = true)]
    pub queries: Vec<PathBuf>,
    #[arg(long)]
    pub prototypes: Option<bool>,
    /// Invert pixel values (1 - x): for dark-on-light images with a model trained on light-on-dark
    /// strokes (Omniglot and the synthetic set are strokes = 1 on 0).
    #[arg(long)]
    pub invert: bool,
    #[arg(long, value_enum, default_value = "auto")]
    pub device: DeviceChoice,
    #[arg(long)]
    pub adapter: Option<String>,
    #[arg(long)]
    pub json: bool,
}

#[derive(serde::Serialize)]
pub struct Prediction {
    pub image: PathBuf,
    pub class: String,
    /// Distance (squared Euclidean) or, for a Koch head, negative score to each class,
    /// in the order of `classes`.
    pub distances: Vec<f64>,
}

#[derive(serde::Serialize)]
pub struct PredictReport {
    pub classes: Vec<String>,
    pub rule: String,
    pub predictions: Vec<Prediction>,
}

pub fn run_predict(args: &PredictArgs) -> Result<PredictReport> {
    let ck = Checkpoint::load(&args.checkpoint)?;
    let arch = &ck.meta.arch;
    let mut support =
        data::load_support_folder(&args.support, arch.image_size, arch.in_channels)
            .with_context(|| format!("reading the support set {}", args.support.display()))?;
    if support.classes.is_empty() {
        bail!("{}: no class folders with images", args.support.display());
    }
    let mut query_images = Vec::new();
    for q in &args.queries {
        query_images.extend(data::load_image_file(q, arch.image_size, arch.in_channels)?);
    }
    if args.invert {
        support
            .images
            .iter_mut()
            .chain(query_images.iter_mut())
            .for_each(|v| *v = 1.0 - *v);
    }
    let backend = open_device(args.device, args.adapter.as_deref(), true)?;
    let dim = arch.embedding_dim();
    let n_support = support.num_images();
    let (support_emb, query_emb) = with_backend!(&backend, b => {
        let model = load_model(b, &ck);
        (embed_all(b, &model, &support.images, n_support)?, embed_all(b, &model, &query_images, args.queries.len())?)
    });
    let rule = default_rule(
        &ck.meta.method,
        ck.meta.loss.as_deref(),
        &ck.params,
        arch,
        args.prototypes,
    );
    let classes: Vec<String> = support.classes.iter().map(|c| c.name.clone()).collect();
    let mut predictions = Vec::new();
    for (qi, q) in args.queries.iter().enumerate() {
        let qe = &query_emb[qi * dim..(qi + 1) * dim];
        let mut distances = Vec::new();
        for c in &support.classes {
            let members: Vec<&[f32]> = (c.start..c.start + c.count)
                .map(|i| &support_emb[i * dim..(i + 1) * dim])
                .collect();
            let score = if rule.prototypes {
                let mut proto = vec![0.0f32; dim];
                for m in &members {
                    proto
                        .iter_mut()
                        .zip(m.iter())
                        .for_each(|(p, v)| *p += v / members.len() as f32);
                }
                rule.metric.similarity(qe, &proto)
            } else {
                members
                    .iter()
                    .map(|m| rule.metric.similarity(qe, m))
                    .sum::<f64>()
                    / members.len() as f64
            };
            distances.push(-score);
        }
        let best = distances
            .iter()
            .enumerate()
            .min_by(|a, b| a.1.partial_cmp(b.1).unwrap_or(std::cmp::Ordering::Equal))
            .map(|(i, _)| i)
            .unwrap_or(0);
        predictions.push(Prediction {
            image: q.clone(),
            class: classes[best].clone(),
            distances,
        });
    }
    Ok(PredictReport {
        classes,
        rule: if rule.prototypes {
            "nearest class-mean prototype".into()
        } else {
            "best mean score over support examples".into()
        },
        predictions,
    })
}
