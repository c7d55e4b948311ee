//! The training loop shared by ProtoNet and Siamese training, generic over the backend.
//!
//! Per step the host writes a few hundred image indices, the backend records gather, forward,
//! loss, backward and Adam (one submission on the GPU) and a deferred read of `[loss, accuracy]`
//! that is collected a step or two later, so the host samples the next episode while the
//! device runs the current one.

use std::collections::VecDeque;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

use crate::data::{Dataset, EpisodeSampler, PairSampler};
use crate::model::checkpoint::{Checkpoint, CheckpointMeta, FORMAT_VERSION};
use crate::model::{init_params, Conv4, Conv4Config};
use crate::ops::{AdamStep, Backend};
use crate::train::eval::{embed_all, evaluate, EvalResult, Metric, Rule};
use crate::train::step::{protonet_step, siamese_step, PairBuffers, PairLoss, ProtoBuffers};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Method {
    Protonet,
    Siamese,
}

impl Method {
    pub fn name(&self) -> &'static str {
        match self {
            Method::Protonet => "protonet",
            Method::Siamese => "siamese",
        }
    }
}

/// Everything that defines a training run (saved in checkpoints as `train`).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TrainConfig {
    pub method: Method,
    pub loss: Option<PairLoss>,
    pub margin: f32,
    pub way: usize,
    pub shot: usize,
    pub query: usize,
    pub pairs: usize,
    pub episodes: u64,
    pub time_budget: Option<f64>,
    pub lr: f32,
    /// Halve the learning rate every this many episodes.
    pub lr_step: u64,
    pub lr_gamma: f32,
    pub hidden: usize,
    pub seed: u64,
    pub val_every: u64,
    pub val_episodes: usize,
    pub val_way: usize,
    pub eval_episodes: usize,
    pub eval_query: usize,
    pub log_every: u64,
    /// Refresh `last.safetensors` at least this often (seconds of training).
    pub checkpoint_every: f64,
    pub clip_grad: Option<f32>,
    pub dataset: String,
}

impl TrainConfig {
    pub fn validate(&self) -> Result<()> {
        if self.way < 2 && self.method == Method::Protonet {
            bail!("--way must be at least 2 (got {})", self.way);
        }
        if self.shot == 0 || self.query == 0 {
            bail!(
                "--shot and --query must be at least 1 (got shot {}, query {})",
                self.shot,
                self.query
            );
        }
        if self.method == Method::Siamese && self.pairs < 2 {
            bail!("--pairs must be at least 2 (got {})", self.pairs);
        }
        if self.method == Method::Protonet && self.loss.is_some() {
            bail!("--loss applies to --method siamese only (protonet always uses the prototypical softmax loss)");
        }
        if !(self.lr > 0.0 && self.lr.is_finite()) {
            bail!("--lr must be a positive number (got {})", self.lr);
        }
        if self.lr_step == 0 {
            bail!("--lr-step must be at least 1");
        }
        if let Some(c) = self.clip_grad {
            if !(c > 0.0 && c.is_finite()) {
                bail!("--clip-grad must be a positive number (got {c})");
            }
        }
        if self.episodes == 0 && self.time_budget.is_none() {
            bail!("--episodes must be at least 1 (or give --time-budget)");
        }
        Ok(())
    }
    pub fn lr_at(&self, episode: u64) -> f32 {
        self.lr * self.lr_gamma.powi((episode / self.lr_step) as i32)
    }
    pub fn loss_name(&self) -> Option<&'static str> {
        self.loss.map(|l| match l {
            PairLoss::Contrastive => "contrastive",
            PairLoss::Koch => "koch",
        })
    }
    /// Training images per step.
    pub fn images_per_step(&self) -> usize {
        match self.method {
            Method::Protonet => self.way * (self.shot + self.query),
            Method::Siamese => 2 * self.pairs,
        }
    }
}

/// One line of `metrics.jsonl`.
#[derive(Serialize)]
struct MetricsLine<'a> {
    event: &'a str,
    episode: u64,
    seconds: f64,
    loss: Option<f64>,
    accuracy: Option<f64>,
    lr: Option<f32>,
    val_accuracy: Option<f64>,
    val_ci95: Option<f64>,
    /// With `--clip-grad`: the gradient norm before clipping of the last step before this line.
    #[serde(skip_serializing_if = "Option::is_none")]
    grad_norm: Option<f64>,
}

/// The result of a training run.
#[derive(Clone, Debug, Serialize)]
pub struct TrainReport {
    pub method: String,
    pub loss: Option<String>,
    pub device: String,
    pub adapter: String,
    pub episodes: u64,
    pub images_seen: u64,
    pub seconds: f64,
    pub final_loss: Option<f64>,
    pub final_accuracy: Option<f64>,
    pub best_val_accuracy: Option<f64>,
    pub eval: Vec<EvalResult>,
    pub out: PathBuf,
}

/// How the model scores a query against support examples for this method.
pub fn default_rule(
    method: &str,
    loss: Option<&str>,
    params: &[f32],
    cfg: &Conv4Config,
    prototypes: Option<bool>,
) -> Rule {
    let metric = if loss == Some("koch") {
        let layout = crate::model::Layout::new(cfg);
        let a = layout.param("head.alpha");
        let b = layout.param("head.bias");
        Metric::Koch {
            alpha: params[a.offset..a.offset + a.len()].to_vec(),
            bias: params[b.offset],
        }
    } else {
        Metric::Euclidean
    };
    Rule {
        metric,
        prototypes: prototypes.unwrap_or(method == "protonet"),
    }
}

/// Set by the Ctrl-C handler: the trainer saves `last.safetensors` and stops at the end of the
/// current step.
pub static INTERRUPTED: AtomicBool = AtomicBool::new(false);

/// Training stopped by Ctrl-C after saving its state.
#[derive(Debug, thiserror::Error)]
#[error("interrupted at episode {episode}: saved {checkpoint}; continue with `fewshot train --resume {dir}` and the same options")]
pub struct Interrupted {
    pub episode: u64,
    pub checkpoint: String,
    pub dir: String,
}

/// Progress/log output policy.
pub struct Reporter {
    pub progress: bool,
    pub quiet: bool,
}

/// Train on `dataset` with `backend`, writing checkpoints and metrics to `out`.
#[allow(clippy::too_many_arguments)]
pub fn train<B: Backend>(
    backend: &B,
    adapter: &str,
    dataset: &Dataset,
    cfg: &TrainConfig,
    image_size: usize,
    out: &Path,
    resume: Option<Checkpoint>,
    reporter: &Reporter,
) -> Result<TrainReport> {
    cfg.validate()?;
    // Every device failure (lost device, validation error) ends the run with this error: the
    // checkpoints on disk are the last good state.
    let device_error = |e: String| {
        anyhow::anyhow!(
            "device error during training: {e}; the last checkpoint is {}",
            out.join("last.safetensors").display()
        )
    };
    std::fs::create_dir_all(out)
        .with_context(|| format!("creating output directory {}", out.display()))?;
    // Temporary files of checkpoint writes that a kill interrupted (the checkpoints themselves
    // are intact: writes are atomic).
    if let Ok(entries) = std::fs::read_dir(out) {
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') && name.contains(".safetensors.tmp-") {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }
    let mut arch = Conv4Config::new(dataset.spec.channels, image_size, cfg.hidden);
    arch.koch_head = cfg.loss == Some(PairLoss::Koch);
    arch.validate().map_err(anyhow::Error::msg)?;

    let (params, stats, optimizer, start_episode, sampler_state, mut best_val, elapsed0) =
        match resume {
            Some(ck) => {
                if ck.meta.arch != arch {
                    bail!(
                    "cannot resume: the checkpoint's architecture {:?} differs from this run's {:?}",
                    ck.meta.arch,
                    arch
                );
                }
                (
                    ck.params,
                    ck.stats,
                    ck.optimizer,
                    ck.meta.episode,
                    ck.meta.sampler,
                    ck.meta.best_val_accuracy,
                    ck.meta.elapsed_seconds,
                )
            }
            None => {
                let (p, s) = init_params(&arch, cfg.seed);
                (p, s, None, 0, None, None, 0.0)
            }
        };
    // Refuse a batch whose activations exceed what the device can bind, before allocating.
    let per_image = arch.largest_activation_per_image();
    let batch = cfg.images_per_step();
    if batch.saturating_mul(per_image) > backend.max_tensor_len() {
        bail!(
            "a training batch of {batch} images of {0}x{0}x{1} needs {2} MiB for one activation, more than this device's largest storage binding ({3} MiB); use a smaller --way/--shot/--query or --pairs, a smaller --image-size or --hidden",
            arch.image_size,
            arch.in_channels,
            (batch * per_image * 4) >> 20,
            (backend.max_tensor_len().saturating_mul(4)) >> 20
        );
    }
    let model = Conv4::new(backend, arch.clone(), &params, &stats);
    if let Some((m, v)) = &optimizer {
        backend.write(&model.adam_m, m);
        backend.write(&model.adam_v, v);
    }

    // The training split lives on the device for the whole run and steps upload indices only;
    // a split larger than the device can bind is streamed instead: the host assembles each
    // batch and uploads its images.
    let resident = dataset.train.images.len() <= backend.max_tensor_len();
    let train_images = resident.then(|| backend.tensor_from(&dataset.train.images));
    if !resident && !reporter.quiet {
        eprintln!(
            "note: the training split ({} MiB) exceeds the device's largest binding ({} MiB); streaming batches from the host",
            (dataset.train.images.len() * 4) >> 20,
            backend.max_tensor_len().saturating_mul(4) >> 20
        );
    }
    let stream = |idx: &[u32], input: &B::Tensor| {
        let mut batch = Vec::with_capacity(idx.len() * arch.image_len());
        for &i in idx {
            batch.extend_from_slice(dataset.train.image(i as usize));
        }
        backend.write(input, &batch);
    };

    enum Sampler<B: Backend> {
        Proto(EpisodeSampler, ProtoBuffers<B>),
        Pair(PairSampler, PairBuffers<B>),
    }
    let mut sampler = match cfg.method {
        Method::Protonet => {
            let mut s = EpisodeSampler::new(&dataset.train, cfg.way, cfg.shot, cfg.query, cfg.seed)
                .context("training split")?;
            if let Some(st) = &sampler_state {
                s.restore(
                    &serde_json::from_value(st.clone()).context("sampler state in checkpoint")?,
                );
            }
            let mut buf = ProtoBuffers::new(backend, &model, cfg.way, cfg.shot, cfg.query);
            buf.clip_grad = cfg.clip_grad;
            Sampler::Proto(s, buf)
        }
        Method::Siamese => {
            let mut s =
                PairSampler::new(&dataset.train, cfg.pairs, cfg.seed).context("training split")?;
            if let Some(st) = &sampler_state {
                s.restore(
                    &serde_json::from_value(st.clone()).context("sampler state in checkpoint")?,
                );
            }
            let mut buf = PairBuffers::new(backend, &model, cfg.pairs);
            buf.clip_grad = cfg.clip_grad;
            Sampler::Pair(s, buf)
        }
    };

    let metrics_path = out.join("metrics.jsonl");
    let mut metrics = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&metrics_path)
        .with_context(|| format!("opening {}", metrics_path.display()))?;

    let total = cfg.episodes;
    let bar = if reporter.progress && !reporter.quiet {
        let bar = indicatif::ProgressBar::new(total.max(start_episode));
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "{bar:30} {pos}/{len} episodes  {msg}  {per_sec}  ETA {eta}",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        bar.set_position(start_episode);
        Some(bar)
    } else {
        None
    };
    let log = |msg: String| {
        if reporter.quiet {
            return;
        }
        match &bar {
            Some(b) => b.println(msg),
            None => eprintln!("{msg}"),
        }
    };

    let method = cfg.method.name().to_string();
    let loss_name = cfg.loss_name().map(str::to_string);
    let save = |path: &Path,
                model: &Conv4<B>,
                episode: u64,
                sampler_json: serde_json::Value,
                best: Option<f64>,
                elapsed: f64,
                with_opt: bool|
     -> Result<()> {
        let (params, stats) = model.download(backend).map_err(device_error)?;
        // ReLU and max pooling swallow NaN, so weights can overflow or turn NaN while the loss
        // stays finite (batch norm collapses the embeddings): never overwrite a good
        // checkpoint with weights that `Checkpoint::load` refuses.
        if params.iter().chain(&stats).any(|v| !v.is_finite()) {
            bail!(
                "the weights became NaN or infinite by episode {episode}: training stopped without saving (the last good checkpoint is {}); try a lower --lr",
                out.join("last.safetensors").display()
            );
        }
        let optimizer = match with_opt {
            true => Some((
                backend.try_read(&model.adam_m).map_err(device_error)?,
                backend.try_read(&model.adam_v).map_err(device_error)?,
            )),
            false => None,
        };
        let ck = Checkpoint {
            meta: CheckpointMeta {
                format: FORMAT_VERSION,
                method: method.clone(),
                loss: loss_name.clone(),
                margin: cfg.margin,
                arch: model.cfg.clone(),
                normalization: "pixels in [0, 1] (Omniglot: strokes = 1)".into(),
                dataset: cfg.dataset.clone(),
                episode,
                seed: cfg.seed,
                train: serde_json::to_value(cfg)?,
                sampler: Some(sampler_json),
                best_val_accuracy: best,
                elapsed_seconds: elapsed,
            },
            params,
            stats,
            optimizer,
        };
        ck.save(path)
            .with_context(|| format!("saving checkpoint {}", path.display()))
    };

    let started = Instant::now();
    let mut last_save = Instant::now();
    let mut pending: VecDeque<(u64, B::Pending)> = VecDeque::new();
    let mut window = (0.0f64, 0.0f64, 0u64);
    let mut last_stats: Option<(f64, f64)> = None;
    let mut episode = start_episode;
    let budget = cfg.time_budget.map(Duration::from_secs_f64);

    let sampler_json = |s: &Sampler<B>| -> serde_json::Value {
        match s {
            Sampler::Proto(s, _) => serde_json::to_value(s.state()).unwrap_or_default(),
            Sampler::Pair(s, _) => serde_json::to_value(s.state()).unwrap_or_default(),
        }
    };

    // Collect finished deferred reads; with `all`, wait for every one.
    let collect = |pending: &mut VecDeque<(u64, B::Pending)>,
                   all: bool,
                   window: &mut (f64, f64, u64),
                   last: &mut Option<(f64, f64)>|
     -> Result<()> {
        backend.check().map_err(device_error)?;
        while let Some((ep, p)) = pending.front() {
            let must = all || pending.len() > 2;
            let read = backend.resolve(p, must).map_err(device_error)?;
            let Some(v) = read else { break };
            let (ep, loss, acc) = (*ep, v[0] as f64, v[1] as f64);
            pending.pop_front();
            if !loss.is_finite() {
                bail!(
                    "the training loss became {loss} at episode {}: training stopped (the last good checkpoint is {}); try a lower --lr or --clip-grad",
                    ep + 1,
                    out.join("last.safetensors").display()
                );
            }
            window.0 += loss;
            window.1 += acc;
            window.2 += 1;
            *last = Some((loss, acc));
        }
        Ok(())
    };

    let dim = arch.embedding_dim();
    let val_every = if cfg.val_every > 0 && dataset.val.classes.len() < 2 {
        log(format!(
            "warning: the validation split has {} classes; validation is off and best.safetensors is the last model",
            dataset.val.classes.len()
        ));
        0
    } else {
        cfg.val_every
    };
    let validate = |model: &Conv4<B>| -> Result<EvalResult> {
        let emb = embed_all(
            backend,
            model,
            &dataset.val.images,
            dataset.val.num_images(),
        )
        .map_err(|e| device_error(format!("{e:#}")))?;
        let params = backend.try_read(&model.params).map_err(device_error)?;
        let rule = default_rule(&method, loss_name.as_deref(), &params, &model.cfg, None);
        let way = cfg.val_way.min(dataset.val.classes.len());
        Ok(evaluate(
            &dataset.val,
            &emb,
            dim,
            &rule,
            way,
            1,
            cfg.eval_query.min(5),
            cfg.val_episodes,
            cfg.seed ^ 0x7a1,
        )?)
    };

    while episode < total || (total == 0 && budget.is_some()) {
        if let Some(b) = budget {
            if started.elapsed() >= b {
                break;
            }
        }
        if INTERRUPTED.load(Ordering::SeqCst) {
            collect(&mut pending, true, &mut window, &mut last_stats)?;
            let path = out.join("last.safetensors");
            let elapsed = elapsed0 + started.elapsed().as_secs_f64();
            save(
                &path,
                &model,
                episode,
                sampler_json(&sampler),
                best_val,
                elapsed,
                true,
            )?;
            if let Some(b) = &bar {
                b.abandon();
            }
            return Err(Interrupted {
                episode,
                checkpoint: path.display().to_string(),
                dir: out.display().to_string(),
            }
            .into());
        }
        let adam = AdamStep::new(cfg.lr_at(episode), (episode + 1) as u32);
        match &mut sampler {
            Sampler::Proto(s, buf) => {
                let ep = s.next();
                let idx: Vec<u32> = ep.support.iter().chain(&ep.query).copied().collect();
                match &train_images {
                    Some(_) => backend.write_index(&buf.indices, &idx),
                    None => stream(&idx, &buf.act.input),
                }
                protonet_step(backend, &model, buf, train_images.as_ref(), &adam);
                pending.push_back((episode, backend.read_deferred(&buf.stats)));
            }
            Sampler::Pair(s, buf) => {
                let batch = s.next();
                let idx: Vec<u32> = batch.left.iter().chain(&batch.right).copied().collect();
                match &train_images {
                    Some(_) => backend.write_index(&buf.indices, &idx),
                    None => stream(&idx, &buf.act.input),
                }
                backend.write(&buf.same, &batch.same);
                siamese_step(
                    backend,
                    &model,
                    buf,
                    train_images.as_ref(),
                    cfg.loss.unwrap_or(PairLoss::Contrastive),
                    cfg.margin,
                    &adam,
                );
                pending.push_back((episode, backend.read_deferred(&buf.stats)));
            }
        }
        backend.flush();
        episode += 1;
        collect(&mut pending, false, &mut window, &mut last_stats)?;
        if let Some(b) = &bar {
            b.set_position(episode);
            if let Some((l, a)) = last_stats {
                b.set_message(format!("loss {l:.3} acc {:.1}%", 100.0 * a));
            }
        }
        let at_log = episode % cfg.log_every == 0;
        let at_val = val_every > 0 && episode % val_every == 0;
        if at_log || at_val {
            collect(&mut pending, true, &mut window, &mut last_stats)?;
            let (loss, acc) = if window.2 > 0 {
                (
                    Some(window.0 / window.2 as f64),
                    Some(window.1 / window.2 as f64),
                )
            } else {
                (None, None)
            };
            window = (0.0, 0.0, 0);
            let mut line = MetricsLine {
                event: "train",
                episode,
                seconds: elapsed0 + started.elapsed().as_secs_f64(),
                loss,
                accuracy: acc,
                lr: Some(cfg.lr_at(episode - 1)),
                val_accuracy: None,
                val_ci95: None,
                grad_norm: match cfg.clip_grad {
                    Some(_) => {
                        let norm = match &sampler {
                            Sampler::Proto(_, buf) => &buf.grad_norm,
                            Sampler::Pair(_, buf) => &buf.grad_norm,
                        };
                        Some(backend.try_read(norm).map_err(device_error)?[0] as f64)
                    }
                    None => None,
                },
            };
            if at_val {
                let v = validate(&model)?;
                line.event = "val";
                line.val_accuracy = Some(v.accuracy);
                line.val_ci95 = Some(v.ci95);
                let improved = best_val.is_none_or(|b| v.accuracy > b);
                log(format!(
                    "episode {episode}: val {}-way 1-shot {:.2}% ± {:.2}{}",
                    v.way,
                    100.0 * v.accuracy,
                    100.0 * v.ci95,
                    if improved { " (best)" } else { "" }
                ));
                if improved {
                    best_val = Some(v.accuracy);
                    let elapsed = elapsed0 + started.elapsed().as_secs_f64();
                    save(
                        &out.join("best.safetensors"),
                        &model,
                        episode,
                        sampler_json(&sampler),
                        best_val,
                        elapsed,
                        false,
                    )?;
                }
            }
            writeln!(metrics, "{}", serde_json::to_string(&line)?)
                .context("writing metrics.jsonl")?;
        }
        if last_save.elapsed().as_secs_f64() >= cfg.checkpoint_every {
            collect(&mut pending, true, &mut window, &mut last_stats)?;
            let elapsed = elapsed0 + started.elapsed().as_secs_f64();
            save(
                &out.join("last.safetensors"),
                &model,
                episode,
                sampler_json(&sampler),
                best_val,
                elapsed,
                true,
            )?;
            last_save = Instant::now();
        }
    }
    collect(&mut pending, true, &mut window, &mut last_stats)?;
    let seconds = started.elapsed().as_secs_f64();
    let elapsed = elapsed0 + seconds;
    save(
        &out.join("last.safetensors"),
        &model,
        episode,
        sampler_json(&sampler),
        best_val,
        elapsed,
        true,
    )?;
    if best_val.is_none() {
        // No validation ran: the last weights are the best we have.
        save(
            &out.join("best.safetensors"),
            &model,
            episode,
            sampler_json(&sampler),
            best_val,
            elapsed,
            false,
        )?;
    }
    if let Some(b) = &bar {
        b.finish_and_clear();
    }

    // Final evaluation on the test classes: 5-way 1-shot and the trained shot.
    let test_emb = embed_all(
        backend,
        &model,
        &dataset.test.images,
        dataset.test.num_images(),
    )
    .map_err(|e| device_error(format!("{e:#}")))?;
    let params = backend.try_read(&model.params).map_err(device_error)?;
    let rule = default_rule(&method, loss_name.as_deref(), &params, &arch, None);
    let mut shots = vec![1];
    if cfg.method == Method::Protonet && cfg.shot != 1 {
        shots.push(cfg.shot);
    }
    let mut eval = Vec::new();
    if cfg.eval_episodes == 0 {
        shots.clear();
    }
    for shot in shots {
        let way = 5.min(dataset.test.classes.len());
        eval.push(evaluate(
            &dataset.test,
            &test_emb,
            dim,
            &rule,
            way,
            shot,
            cfg.eval_query,
            cfg.eval_episodes,
            cfg.seed ^ 0x7e57,
        )?);
    }
    Ok(TrainReport {
        method,
        loss: loss_name,
        device: backend.kind().to_string(),
        adapter: adapter.to_string(),
        episodes: episode,
        images_seen: episode * cfg.images_per_step() as u64,
        seconds: elapsed,
        final_loss: last_stats.map(|s| s.0),
        final_accuracy: last_stats.map(|s| s.1),
        best_val_accuracy: best_val,
        eval,
        out: out.to_path_buf(),
    })
}
