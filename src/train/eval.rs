//! Evaluation: embed every image of a split once (batch norm in eval mode, so an embedding
//! does not depend on the rest of its batch), then score N-way K-shot episodes on the host.

use serde::{Deserialize, Serialize};

use crate::data::{ClassSet, EpisodeSampler};
use crate::model::{Activations, Conv4};
use crate::ops::Backend;

/// Images embedded per forward pass during evaluation.
pub const EVAL_CHUNK: usize = 256;

/// Embed `count` images (`image_len` floats each) in eval mode; returns `[count, dim]`, or an
/// error when the device failed.
pub fn embed_all<B: Backend>(
    backend: &B,
    model: &Conv4<B>,
    images: &[f32],
    count: usize,
) -> anyhow::Result<Vec<f32>> {
    let image_len = model.cfg.image_len();
    let dim = model.cfg.embedding_dim();
    assert_eq!(
        images.len(),
        count * image_len,
        "embed_all: image buffer length"
    );
    let mut out = Vec::with_capacity(count * dim);
    let mut act: Option<Activations<B>> = None;
    // Chunks small enough that the largest activation fits one storage binding of the device.
    let chunk = EVAL_CHUNK
        .min(backend.max_tensor_len() / model.cfg.largest_activation_per_image())
        .max(1);
    for start in (0..count).step_by(chunk) {
        let n = chunk.min(count - start);
        if act.as_ref().is_none_or(|a| a.batch != n) {
            act = Some(model.activations(backend, n, false));
        }
        let a = act.as_ref().expect("activations");
        backend.write(
            &a.input,
            &images[start * image_len..(start + n) * image_len],
        );
        model.forward(backend, a, false);
        let emb = backend.try_read(a.embedding()).map_err(|e| {
            anyhow::anyhow!(
                "device error while embedding images {start}..{}: {e}",
                start + n
            )
        })?;
        out.extend(emb);
    }
    Ok(out)
}

/// How a query is matched to the support set.
#[derive(Clone, Debug, PartialEq)]
pub enum Metric {
    /// Squared Euclidean distance (smaller is closer): ProtoNet and contrastive Siamese.
    Euclidean,
    /// Koch et al. score `sum_j alpha_j |q_j - s_j| + bias` (larger is closer).
    Koch { alpha: Vec<f32>, bias: f32 },
}

impl Metric {
    /// Similarity: larger means closer.
    pub fn similarity(&self, a: &[f32], b: &[f32]) -> f64 {
        match self {
            Metric::Euclidean => -a
                .iter()
                .zip(b)
                .map(|(x, y)| ((x - y) as f64).powi(2))
                .sum::<f64>(),
            Metric::Koch { alpha, bias } => {
                alpha
                    .iter()
                    .zip(a.iter().zip(b))
                    .map(|(w, (x, y))| (*w as f64) * ((x - y) as f64).abs())
                    .sum::<f64>()
                    + *bias as f64
            }
        }
    }
}

/// Decision rule: compare with class-mean prototypes, or with every support example and take
/// the class with the best mean similarity.
#[derive(Clone, Debug, PartialEq)]
pub struct Rule {
    pub metric: Metric,
    pub prototypes: bool,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct EvalResult {
    pub way: usize,
    pub shot: usize,
    pub query: usize,
    pub episodes: usize,
    /// Mean per-episode accuracy, as a fraction.
    pub accuracy: f64,
    /// Half-width of the 95% confidence interval: 1.96 * std / sqrt(episodes).
    pub ci95: f64,
}

/// Predict the class (0..way) of `query` given `support` grouped class-major (`shot` per class).
pub fn classify(
    rule: &Rule,
    dim: usize,
    way: usize,
    shot: usize,
    support: &[&[f32]],
    query: &[f32],
) -> usize {
    let mut best = (f64::NEG_INFINITY, 0);
    for c in 0..way {
        let members = &support[c * shot..(c + 1) * shot];
        let score = if rule.prototypes {
            let mut proto = vec![0.0f32; dim];
            for s in members {
                for (p, v) in proto.iter_mut().zip(s.iter()) {
                    *p += v;
                }
            }
            proto.iter_mut().for_each(|p| *p /= shot as f32);
            rule.metric.similarity(query, &proto)
        } else {
            members
                .iter()
                .map(|s| rule.metric.similarity(query, s))
                .sum::<f64>()
                / shot as f64
        };
        if score > best.0 {
            best = (score, c);
        }
    }
    best.1
}

/// Accuracy over `episodes` seeded episodes of the split whose embeddings are `embeddings`
/// (`[classes.num_images(), dim]`, in the split's image order).
#[allow(clippy::too_many_arguments)]
pub fn evaluate(
    classes: &ClassSet,
    embeddings: &[f32],
    dim: usize,
    rule: &Rule,
    way: usize,
    shot: usize,
    query: usize,
    episodes: usize,
    seed: u64,
) -> Result<EvalResult, crate::data::DataError> {
    let mut sampler = EpisodeSampler::new(classes, way, shot, query, seed)?;
    let emb = |i: u32| &embeddings[i as usize * dim..(i as usize + 1) * dim];
    let mut accs = Vec::with_capacity(episodes);
    for _ in 0..episodes {
        let ep = sampler.next();
        let support: Vec<&[f32]> = ep.support.iter().map(|&i| emb(i)).collect();
        let correct = ep
            .query
            .iter()
            .enumerate()
            .filter(|(qi, &i)| classify(rule, dim, way, shot, &support, emb(i)) == qi / query)
            .count();
        accs.push(correct as f64 / ep.query.len() as f64);
    }
    Ok(summarize(way, shot, query, &accs))
}

pub fn summarize(way: usize, shot: usize, query: usize, accs: &[f64]) -> EvalResult {
    let n = accs.len().max(1) as f64;
    let mean = accs.iter().sum::<f64>() / n;
    let var = accs.iter().map(|a| (a - mean).powi(2)).sum::<f64>() / n;
    EvalResult {
        way,
        shot,
        query,
        episodes: accs.len(),
        accuracy: mean,
        ci95: 1.96 * var.sqrt() / n.sqrt(),
    }
}
