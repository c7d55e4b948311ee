//! `fewshot compare`: train ProtoNet and Siamese networks (contrastive and Koch losses) with the
//! same backbone, dataset, seed and budget, evaluate every final model on exactly the same test
//! episodes, and write `compare.json` and `compare.png` (accuracy against training time).
//!
//! Training is [`train`] and evaluation is [`embed_all`] + [`evaluate`]; this module only
//! sequences them. Each method is scored with its own rule ([`default_rule`]: class-mean
//! prototypes for ProtoNet, the mean score over support examples for Siamese). Every result
//! carries a fingerprint of the episodes it was scored on, and the run fails if two methods'
//! fingerprints differ.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, ensure, Context, Result};
use clap::{Args, ValueEnum};
use serde::{Deserialize, Serialize};

use crate::cli::{load_model, open_device, DataArgs, DeviceChoice};
use crate::data::{ClassSet, EpisodeSampler};
use crate::model::checkpoint::Checkpoint;
use crate::train::eval::{embed_all, evaluate, EvalResult};
use crate::train::step::PairLoss;
use crate::train::trainer::{default_rule, train, Method, Reporter, TrainConfig};
use crate::with_backend;

/// The (way, shot) test configurations every method is evaluated on, in table order.
pub const EVAL_CONFIGS: [(usize, usize); 4] = [(5, 1), (5, 5), (20, 1), (20, 5)];

/// Size of `compare.png` in pixels.
pub const PLOT_SIZE: (u32, u32) = (1000, 640);

/// Training episodes per method when neither `--episodes` nor `--time-budget` is given.
pub const DEFAULT_EPISODES: u64 = 500;

/// One method of the comparison.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CompareMethod {
    /// Prototypical network (episodic softmax over prototype distances).
    Protonet,
    /// Siamese network with the contrastive loss.
    Contrastive,
    /// Siamese network with Koch et al.'s weighted-L1 head and binary cross-entropy.
    Koch,
}

impl CompareMethod {
    pub fn name(&self) -> &'static str {
        match self {
            CompareMethod::Protonet => "protonet",
            CompareMethod::Contrastive => "contrastive",
            CompareMethod::Koch => "koch",
        }
    }
    fn method(&self) -> Method {
        match self {
            CompareMethod::Protonet => Method::Protonet,
            _ => Method::Siamese,
        }
    }
    fn pair_loss(&self) -> Option<PairLoss> {
        match self {
            CompareMethod::Protonet => None,
            CompareMethod::Contrastive => Some(PairLoss::Contrastive),
            CompareMethod::Koch => Some(PairLoss::Koch),
        }
    }
    /// The training loss, as shown in the table.
    pub fn loss_name(&self) -> &'static str {
        match self {
            CompareMethod::Protonet => "prototypical",
            CompareMethod::Contrastive => "contrastive",
            CompareMethod::Koch => "koch",
        }
    }
}

#[derive(Args, Clone, Debug)]
pub struct CompareArgs {
    #[command(flatten)]
    pub data: DataArgs,
    /// Methods to train and compare, comma-separated.
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "protonet,contrastive,koch"
    )]
    pub methods: Vec<CompareMethod>,
    /// Training episodes (ProtoNet) or pair batches (Siamese) per method [default: 500, or
    /// unlimited with --time-budget].
    #[arg(long)]
    pub episodes: Option<u64>,
    /// Seconds of training per method (validation included).
    #[arg(long)]
    pub time_budget: Option<f64>,
    /// Classes per ProtoNet training episode.
    #[arg(long, default_value_t = 20)]
    pub way: usize,
    /// Support images per class in ProtoNet training.
    #[arg(long, default_value_t = 1)]
    pub shot: usize,
    /// Query images per class in ProtoNet training.
    #[arg(long, default_value_t = 5)]
    pub query: usize,
    /// Pairs per Siamese step (2 images each; a 20-way 1-shot 5-query episode is 120 images).
    #[arg(long, default_value_t = 128)]
    pub pairs: usize,
    /// Contrastive-loss margin on the Euclidean distance.
    #[arg(long, default_value_t = 1.0)]
    pub margin: f32,
    #[arg(long, default_value_t = 1e-3)]
    pub lr: f32,
    /// Filters per conv layer.
    #[arg(long, default_value_t = 64)]
    pub hidden: usize,
    /// Images are resized to this many pixels square.
    #[arg(long, default_value_t = 28)]
    pub image_size: usize,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Validate (5-way 1-shot on validation classes) every this many episodes [default: a tenth
    /// of --episodes, or 100 with only --time-budget]; 0 disables.
    #[arg(long)]
    pub val_every: Option<u64>,
    /// Episodes per validation.
    #[arg(long, default_value_t = 200)]
    pub val_episodes: usize,
    /// Test episodes per (way, shot).
    #[arg(long, default_value_t = 1000)]
    pub eval_episodes: usize,
    /// Queries per class in test episodes.
    #[arg(long, default_value_t = 15)]
    pub eval_query: usize,
    #[arg(long, value_enum, default_value = "auto")]
    pub device: DeviceChoice,
    /// Use the GPU adapter whose name contains this.
    #[arg(long)]
    pub adapter: Option<String>,
    /// Output directory: compare.json, compare.png and one run directory per method.
    #[arg(long, default_value = "runs/compare")]
    pub out: PathBuf,
    /// Print one JSON object (compare.json) on stdout instead of the table.
    #[arg(long)]
    pub json: bool,
}

impl CompareArgs {
    /// (episodes, time budget) per method.
    fn budget(&self) -> (u64, Option<f64>) {
        let episodes = match (self.episodes, self.time_budget) {
            (Some(e), _) => e,
            (None, Some(_)) => 0,
            (None, None) => DEFAULT_EPISODES,
        };
        (episodes, self.time_budget)
    }

    fn val_every(&self) -> u64 {
        match (self.val_every, self.budget().0) {
            (Some(v), _) => v,
            (None, 0) => 100,
            (None, e) => (e / 10).max(1),
        }
    }

    fn train_config(&self, m: CompareMethod) -> TrainConfig {
        let (episodes, time_budget) = self.budget();
        TrainConfig {
            method: m.method(),
            loss: m.pair_loss(),
            margin: self.margin,
            way: self.way,
            shot: self.shot,
            query: self.query,
            pairs: self.pairs,
            episodes,
            time_budget,
            lr: self.lr,
            lr_step: 2000,
            lr_gamma: 0.5,
            hidden: self.hidden,
            seed: self.seed,
            val_every: self.val_every(),
            val_episodes: self.val_episodes,
            val_way: 5,
            // Compare evaluates the final weights itself; the trainer's own test evaluation
            // is not used (0 episodes).
            eval_episodes: 0,
            eval_query: self.eval_query,
            log_every: 50,
            checkpoint_every: 60.0,
            clip_grad: None,
            dataset: self.data.dataset.clone(),
        }
    }

    fn validate(&self) -> Result<()> {
        ensure!(!self.methods.is_empty(), "--methods lists no method");
        for (i, m) in self.methods.iter().enumerate() {
            ensure!(
                !self.methods[..i].contains(m),
                "--methods lists {} twice",
                m.name()
            );
        }
        if let Some(t) = self.time_budget {
            ensure!(
                t > 0.0 && t.is_finite(),
                "--time-budget must be a positive number of seconds (got {t})"
            );
        }
        ensure!(
            self.eval_episodes > 0 && self.eval_query > 0,
            "--eval-episodes and --eval-query must be at least 1"
        );
        for m in &self.methods {
            self.train_config(*m).validate()?;
        }
        Ok(())
    }
}

/// An evaluation result and the fingerprint of the episodes it was scored on.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct CompareEval {
    #[serde(flatten)]
    pub result: EvalResult,
    pub fingerprint: String,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct MethodResult {
    /// `protonet`, `contrastive` or `koch` (the key of `curves` and the run directory name).
    pub name: String,
    /// `protonet` or `siamese`.
    pub method: String,
    /// `prototypical`, `contrastive` or `koch`.
    pub loss: String,
    pub images_seen: u64,
    /// Training seconds (periodic validation included).
    pub seconds: f64,
    pub episodes: u64,
    pub final_loss: Option<f64>,
    /// One per [`EVAL_CONFIGS`] entry, in that order.
    pub eval: Vec<CompareEval>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Budget {
    /// Episodes (ProtoNet) or pair batches (Siamese) per method; 0: only the time budget.
    pub episodes: u64,
    pub time_budget: Option<f64>,
}

/// The content of `compare.json`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct CompareReport {
    pub dataset: String,
    pub device: String,
    pub adapter: String,
    pub seed: u64,
    pub budget: Budget,
    pub results: Vec<MethodResult>,
    /// Per method name: `[seconds, validation accuracy]` points from its metrics.jsonl.
    pub curves: BTreeMap<String, Vec<[f64; 2]>>,
}

/// A stable hash (FNV-1a, 64 bits) of the `episodes` episodes that
/// [`evaluate`]`(set, .., way, shot, query, episodes, seed)` scores: the same episode sampler,
/// arguments and seed, so equal fingerprints mean the same classes, support and query images.
pub fn episode_fingerprint(
    set: &ClassSet,
    way: usize,
    shot: usize,
    query: usize,
    episodes: usize,
    seed: u64,
) -> Result<String> {
    let mut sampler = EpisodeSampler::new(set, way, shot, query, seed)?;
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut put = |v: u64| {
        for b in v.to_le_bytes() {
            h = (h ^ b as u64).wrapping_mul(0x0000_0100_0000_01b3);
        }
    };
    for v in [way, shot, query, episodes] {
        put(v as u64);
    }
    for _ in 0..episodes {
        let ep = sampler.next();
        ep.classes.iter().for_each(|&c| put(c as u64));
        ep.support
            .iter()
            .chain(&ep.query)
            .for_each(|&i| put(i as u64));
    }
    Ok(format!("{h:016x}"))
}

/// Train every method, evaluate, write `compare.json` and `compare.png` into `args.out`.
pub fn run_compare(args: &CompareArgs) -> Result<CompareReport> {
    args.validate()?;
    let t0 = std::time::Instant::now();
    let dataset = args.data.load(args.seed, args.image_size)?;
    eprintln!(
        "dataset: {} — train {} classes, val {}, test {} ({:.1} s to load)",
        dataset.name,
        dataset.train.classes.len(),
        dataset.val.classes.len(),
        dataset.test.classes.len(),
        t0.elapsed().as_secs_f64()
    );
    let eval_seed = args.seed ^ 0x7e57;
    // The episodes every method must be scored on; sampling them first also checks that the
    // test split supports every (way, shot) before any training.
    let expected = EVAL_CONFIGS
        .iter()
        .map(|&(way, shot)| {
            episode_fingerprint(
                &dataset.test,
                way,
                shot,
                args.eval_query,
                args.eval_episodes,
                eval_seed,
            )
            .with_context(|| format!("test split, {way}-way {shot}-shot"))
        })
        .collect::<Result<Vec<_>>>()?;

    let backend = open_device(args.device, args.adapter.as_deref(), false)?;
    let adapter = backend.describe();
    let reporter = Reporter {
        progress: false,
        quiet: false,
    };
    let mut results = Vec::new();
    let mut curves = BTreeMap::new();
    for &m in &args.methods {
        let cfg = args.train_config(m);
        let dir = args.out.join(m.name());
        // metrics.jsonl is appended to: drop the curve of an earlier comparison.
        match std::fs::remove_file(dir.join("metrics.jsonl")) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(e).context(format!("removing {}", dir.join("metrics.jsonl").display()))
            }
            _ => {}
        }
        eprintln!(
            "== {} ({} loss): {} images per step",
            m.name(),
            m.loss_name(),
            cfg.images_per_step()
        );
        let report = with_backend!(&backend, b => train(b, &adapter, &dataset, &cfg, args.image_size, &dir, None, &reporter))
            .with_context(|| format!("training {}", m.name()))?;
        // Evaluate the final weights: the budget is what counts, not the best validation.
        let ck = Checkpoint::load(&dir.join("last.safetensors"))?;
        let emb = with_backend!(&backend, b => {
            let model = load_model(b, &ck);
            embed_all(b, &model, &dataset.test.images, dataset.test.num_images())
        })?;
        let rule = default_rule(
            &ck.meta.method,
            ck.meta.loss.as_deref(),
            &ck.params,
            &ck.meta.arch,
            None,
        );
        let dim = ck.meta.arch.embedding_dim();
        let mut eval = Vec::new();
        for (&(way, shot), expected) in EVAL_CONFIGS.iter().zip(&expected) {
            let (query, episodes) = (args.eval_query, args.eval_episodes);
            let result = evaluate(
                &dataset.test,
                &emb,
                dim,
                &rule,
                way,
                shot,
                query,
                episodes,
                eval_seed,
            )?;
            let fingerprint =
                episode_fingerprint(&dataset.test, way, shot, query, episodes, eval_seed)?;
            ensure!(
                &fingerprint == expected,
                "{} was evaluated {way}-way {shot}-shot on other episodes than the other methods",
                m.name()
            );
            eval.push(CompareEval {
                result,
                fingerprint,
            });
        }
        curves.insert(
            m.name().to_string(),
            read_curve(&dir.join("metrics.jsonl"))?,
        );
        results.push(MethodResult {
            name: m.name().into(),
            method: report.method,
            loss: m.loss_name().into(),
            images_seen: report.images_seen,
            seconds: report.seconds,
            episodes: report.episodes,
            final_loss: report.final_loss,
            eval,
        });
    }
    let (episodes, time_budget) = args.budget();
    let report = CompareReport {
        dataset: args.data.dataset.clone(),
        device: backend.kind().into(),
        adapter,
        seed: args.seed,
        budget: Budget {
            episodes,
            time_budget,
        },
        results,
        curves,
    };
    let json_path = args.out.join("compare.json");
    std::fs::write(&json_path, serde_json::to_string_pretty(&report)?)
        .with_context(|| format!("writing {}", json_path.display()))?;
    let png_path = args.out.join("compare.png");
    plot(&report, &png_path).with_context(|| format!("writing {}", png_path.display()))?;
    eprintln!("wrote {} and {}", json_path.display(), png_path.display());
    Ok(report)
}

/// The `[seconds, val_accuracy]` points of a run's metrics.jsonl (its `val` events).
pub fn read_curve(path: &Path) -> Result<Vec<[f64; 2]>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let mut points = Vec::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let v: serde_json::Value =
            serde_json::from_str(line).with_context(|| format!("parsing {}", path.display()))?;
        if v["event"] == "val" {
            if let (Some(s), Some(a)) = (v["seconds"].as_f64(), v["val_accuracy"].as_f64()) {
                points.push([s, a]);
            }
        }
    }
    Ok(points)
}

/// Print the comparison table (accuracies in % with 95% confidence intervals).
pub fn print_table(report: &CompareReport) {
    println!(
        "{} test classes, {} ({}); the same {} episodes per column for every method",
        report.dataset,
        report.device,
        report.adapter,
        report
            .results
            .first()
            .map_or(0, |r| r.eval.first().map_or(0, |e| e.result.episodes))
    );
    print!(
        "{:<12} {:<13} {:>11} {:>9}",
        "method", "loss", "images seen", "train s"
    );
    for (way, shot) in EVAL_CONFIGS {
        print!(" {:>15}", format!("{way}w{shot}s"));
    }
    println!();
    for r in &report.results {
        print!(
            "{:<12} {:<13} {:>11} {:>9.1}",
            r.method, r.loss, r.images_seen, r.seconds
        );
        for e in &r.eval {
            let cell = format!(
                "{:.2}% ± {:.2}",
                100.0 * e.result.accuracy,
                100.0 * e.result.ci95
            );
            print!(" {cell:>15}");
        }
        println!();
    }
}

const COLORS: [(u8, u8, u8); 6] = [
    (31, 119, 180),
    (214, 39, 40),
    (44, 160, 44),
    (148, 103, 189),
    (255, 127, 14),
    (140, 86, 75),
];

/// Plot validation accuracy against training seconds, one line per method, with each
/// method's final test 5-way 1-shot accuracy as a triangle at its end. Text is drawn with an
/// embedded font (DejaVu Sans), so no system fonts are needed.
pub fn plot(report: &CompareReport, path: &Path) -> Result<()> {
    use plotters::prelude::*;
    static FONT: std::sync::Once = std::sync::Once::new();
    FONT.call_once(|| {
        let _ = plotters::style::register_font(
            "sans-serif",
            FontStyle::Normal,
            dejavu::sans::regular(),
        );
    });
    let test_5w1s = |r: &MethodResult| {
        r.eval
            .iter()
            .find(|e| (e.result.way, e.result.shot) == (5, 1))
            .map(|e| 100.0 * e.result.accuracy)
    };
    let mut xs = vec![0.0f64];
    let mut ys = vec![20.0f64];
    for r in &report.results {
        xs.push(r.seconds);
        ys.extend(test_5w1s(r));
    }
    for c in report.curves.values() {
        xs.extend(c.iter().map(|p| p[0]));
        ys.extend(c.iter().map(|p| 100.0 * p[1]));
    }
    let x_max = xs.iter().cloned().fold(0.0, f64::max).max(1e-3) * 1.05;
    let y_min = ys.iter().cloned().fold(100.0, f64::min);
    let y_lo = ((y_min - 5.0) / 10.0).floor().clamp(0.0, 9.0) * 10.0;

    let (w, h) = PLOT_SIZE;
    let mut pixels = vec![255u8; (w * h * 3) as usize];
    {
        let root = BitMapBackend::with_buffer(&mut pixels, (w, h)).into_drawing_area();
        let err = |e: DrawingAreaErrorKind<_>| anyhow::anyhow!("drawing the plot: {e}");
        root.fill(&WHITE).map_err(err)?;
        let (left, legend) = root.split_horizontally(w - 240);
        let mut chart = ChartBuilder::on(&left)
            .caption(
                format!(
                    "{}: 5-way 1-shot accuracy against training time",
                    report.dataset
                ),
                ("sans-serif", 22),
            )
            .margin(16)
            .x_label_area_size(50)
            .y_label_area_size(60)
            .build_cartesian_2d(0.0..x_max, y_lo..100.0)
            .map_err(err)?;
        chart
            .configure_mesh()
            .x_desc(format!(
                "training seconds ({}, validation included)",
                report.device
            ))
            .y_desc("accuracy (%)")
            .y_label_formatter(&|v| format!("{v:.0}"))
            .light_line_style(RGBColor(238, 238, 238))
            .label_style(("sans-serif", 16))
            .axis_desc_style(("sans-serif", 18))
            .draw()
            .map_err(err)?;
        let font = ("sans-serif", 16).into_font();
        let mut y = 70;
        for (i, r) in report.results.iter().enumerate() {
            // A fixed colour per method, so plots of different comparisons match.
            let k = CompareMethod::value_variants()
                .iter()
                .position(|m| m.name() == r.name)
                .unwrap_or(i);
            let (cr, cg, cb) = COLORS[k % COLORS.len()];
            let color = RGBColor(cr, cg, cb);
            let points: Vec<(f64, f64)> = report
                .curves
                .get(&r.name)
                .map(|c| c.iter().map(|p| (p[0], 100.0 * p[1])).collect())
                .unwrap_or_default();
            chart
                .draw_series(LineSeries::new(points.clone(), color.stroke_width(2)))
                .map_err(err)?;
            chart
                .draw_series(points.iter().map(|&p| Circle::new(p, 3, color.filled())))
                .map_err(err)?;
            legend
                .draw(&PathElement::new(
                    vec![(8, y), (38, y)],
                    color.stroke_width(3),
                ))
                .map_err(err)?;
            legend
                .draw(&Text::new(
                    if r.method == "siamese" {
                        format!("siamese, {} loss", r.loss)
                    } else {
                        r.method.clone()
                    },
                    (48, y - 9),
                    font.clone(),
                ))
                .map_err(err)?;
            y += 24;
            if let Some(acc) = test_5w1s(r) {
                chart
                    .draw_series(std::iter::once(TriangleMarker::new(
                        (r.seconds, acc),
                        9,
                        color.filled(),
                    )))
                    .map_err(err)?;
                legend
                    .draw(&TriangleMarker::new((23, y), 7, color.filled()))
                    .map_err(err)?;
                legend
                    .draw(&Text::new(
                        format!("test {acc:.1}%"),
                        (48, y - 9),
                        font.clone(),
                    ))
                    .map_err(err)?;
            }
            y += 36;
        }
        for line in [
            "lines: validation classes,",
            "during training",
            "triangles: test classes,",
            "final weights",
        ] {
            legend
                .draw(&Text::new(line, (8, y), font.clone()))
                .map_err(err)?;
            y += 22;
        }
        root.present().map_err(err)?;
    }
    let Some(img) = image::RgbImage::from_raw(w, h, pixels) else {
        bail!("plot buffer size");
    };
    img.save(path)?;
    Ok(())
}
