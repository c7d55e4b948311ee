//! One training step, written once against [`Backend`]: on the GPU every op below is recorded
//! into one command submission (gather, forward, loss, backward, Adam) and only the two-float
//! `stats` tensor is read back, deferred.
//!
//! Gradient clipping (`--clip-grad`) is a setting of the step buffers: set `clip_grad` on a
//! [`ProtoBuffers`] or [`PairBuffers`] and each step clips the global gradient norm on the device
//! before Adam, leaving the norm before clipping in `grad_norm`.

use crate::model::{Activations, Conv4};
use crate::ops::{AdamStep, Backend};

/// Buffers of a ProtoNet episode of fixed way/shot/query, allocated once.
pub struct ProtoBuffers<B: Backend> {
    pub way: usize,
    pub shot: usize,
    pub query: usize,
    pub act: Activations<B>,
    /// Image indices into the device-resident dataset: support first, then query.
    pub indices: B::Index,
    support_labels: B::Index,
    query_labels: B::Index,
    prototypes: B::Tensor,
    grad_prototypes: B::Tensor,
    distances: B::Tensor,
    grad_distances: B::Tensor,
    pub correct: B::Tensor,
    /// `[mean loss, accuracy]` of the last step.
    pub stats: B::Tensor,
    /// Clip the global gradient norm to this before Adam (`None`: no clipping).
    pub clip_grad: Option<f32>,
    /// The gradient norm before clipping of the last step (written only with `clip_grad`).
    pub grad_norm: B::Tensor,
}

impl<B: Backend> ProtoBuffers<B> {
    pub fn new(backend: &B, model: &Conv4<B>, way: usize, shot: usize, query: usize) -> Self {
        let dim = model.cfg.embedding_dim();
        let n = way * (shot + query);
        let support_labels: Vec<u32> = (0..way * shot).map(|i| (i / shot) as u32).collect();
        let query_labels: Vec<u32> = (0..way * query).map(|i| (i / query) as u32).collect();
        ProtoBuffers {
            way,
            shot,
            query,
            act: model.activations(backend, n, true),
            indices: backend.index_from(&vec![0; n]),
            support_labels: backend.index_from(&support_labels),
            query_labels: backend.index_from(&query_labels),
            prototypes: backend.zeros(way * dim),
            grad_prototypes: backend.zeros(way * dim),
            distances: backend.zeros(way * query * way),
            grad_distances: backend.zeros(way * query * way),
            correct: backend.zeros(way * query),
            stats: backend.zeros(2),
            clip_grad: None,
            grad_norm: backend.zeros(1),
        }
    }
}

/// Forward + loss of a ProtoNet episode whose images are already in `buf.act.input`
/// (support first, class-major, then query). With `train`, also backward into `model.grads`.
pub fn protonet_loss<B: Backend>(
    backend: &B,
    model: &Conv4<B>,
    buf: &ProtoBuffers<B>,
    train: bool,
) {
    let dim = model.cfg.embedding_dim();
    let (way, n_support, n_query) = (buf.way, buf.way * buf.shot, buf.way * buf.query);
    model.forward(backend, &buf.act, train);
    let emb = buf.act.embedding();
    let support = backend.view(emb, 0, n_support * dim);
    let queries = backend.view(emb, n_support * dim, n_query * dim);
    backend.prototypes(way, dim, &support, &buf.support_labels, &buf.prototypes);
    backend.pairwise_sq_dist(n_query, way, dim, &queries, &buf.prototypes, &buf.distances);
    backend.softmax_xent(
        n_query,
        way,
        &buf.distances,
        &buf.query_labels,
        &buf.grad_distances,
        &buf.correct,
        &buf.stats,
    );
    if !train {
        return;
    }
    let grad_emb = buf.act.grad_embedding();
    let grad_support = backend.view(grad_emb, 0, n_support * dim);
    let grad_queries = backend.view(grad_emb, n_support * dim, n_query * dim);
    backend.pairwise_sq_dist_backward(
        n_query,
        way,
        dim,
        &queries,
        &buf.prototypes,
        &buf.grad_distances,
        &grad_queries,
        &buf.grad_prototypes,
    );
    backend.prototypes_backward(
        way,
        dim,
        &buf.support_labels,
        &buf.grad_prototypes,
        &grad_support,
    );
    model.backward(backend, &buf.act);
}

/// A full ProtoNet training step. With a device-resident `dataset`, the images are gathered on
/// the device by the indices already written to `buf.indices`; with `None` they must already
/// be in `buf.act.input` (streamed from the host when the dataset does not fit the device).
/// After the backward pass: gradient clipping when `buf.clip_grad` is set, then Adam.
pub fn protonet_step<B: Backend>(
    backend: &B,
    model: &Conv4<B>,
    buf: &ProtoBuffers<B>,
    dataset: Option<&B::Tensor>,
    adam: &AdamStep,
) {
    if let Some(dataset) = dataset {
        backend.gather(model.cfg.image_len(), dataset, &buf.indices, &buf.act.input);
    }
    protonet_loss(backend, model, buf, true);
    optimise(backend, model, buf.clip_grad, &buf.grad_norm, adam);
}

/// The end of every training step: optional global gradient-norm clipping (on the device,
/// no host round trip), then Adam over the flat parameter buffer.
fn optimise<B: Backend>(
    backend: &B,
    model: &Conv4<B>,
    clip_grad: Option<f32>,
    grad_norm: &B::Tensor,
    adam: &AdamStep,
) {
    if let Some(max_norm) = clip_grad {
        backend.clip_grad_norm(max_norm, &model.grads, grad_norm);
    }
    backend.adam(
        adam,
        &model.params,
        &model.grads,
        &model.adam_m,
        &model.adam_v,
    );
}

/// Which Siamese loss.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize, clap::ValueEnum,
)]
#[serde(rename_all = "lowercase")]
pub enum PairLoss {
    Contrastive,
    Koch,
}

/// Buffers of a Siamese step of `pairs` pairs: one batch of 2 * pairs images, left images
/// first, so both sides go through the same weights in one forward pass.
pub struct PairBuffers<B: Backend> {
    pub pairs: usize,
    pub act: Activations<B>,
    pub indices: B::Index,
    pub same: B::Tensor,
    pub stats: B::Tensor,
    /// As in [`ProtoBuffers`]: clip the global gradient norm to this before Adam.
    pub clip_grad: Option<f32>,
    /// The gradient norm before clipping of the last step (written only with `clip_grad`).
    pub grad_norm: B::Tensor,
}

impl<B: Backend> PairBuffers<B> {
    pub fn new(backend: &B, model: &Conv4<B>, pairs: usize) -> Self {
        PairBuffers {
            pairs,
            act: model.activations(backend, 2 * pairs, true),
            indices: backend.index_from(&vec![0; 2 * pairs]),
            same: backend.zeros(pairs),
            stats: backend.zeros(2),
            clip_grad: None,
            grad_norm: backend.zeros(1),
        }
    }
}

/// A full Siamese training step: gather (as in [`protonet_step`]), forward, pair loss,
/// backward, optional gradient clipping (`buf.clip_grad`), Adam.
pub fn siamese_step<B: Backend>(
    backend: &B,
    model: &Conv4<B>,
    buf: &PairBuffers<B>,
    dataset: Option<&B::Tensor>,
    loss: PairLoss,
    margin: f32,
    adam: &AdamStep,
) {
    if let Some(dataset) = dataset {
        backend.gather(model.cfg.image_len(), dataset, &buf.indices, &buf.act.input);
    }
    siamese_loss(backend, model, buf, loss, margin);
    optimise(backend, model, buf.clip_grad, &buf.grad_norm, adam);
}

/// Forward, pair loss and backward of a Siamese batch already in `buf.act.input`.
pub fn siamese_loss<B: Backend>(
    backend: &B,
    model: &Conv4<B>,
    buf: &PairBuffers<B>,
    loss: PairLoss,
    margin: f32,
) {
    let dim = model.cfg.embedding_dim();
    let p = buf.pairs;
    model.forward(backend, &buf.act, true);
    let emb = buf.act.embedding();
    let grad = buf.act.grad_embedding();
    let (left, right) = (
        backend.view(emb, 0, p * dim),
        backend.view(emb, p * dim, p * dim),
    );
    let (grad_left, grad_right) = (
        backend.view(grad, 0, p * dim),
        backend.view(grad, p * dim, p * dim),
    );
    match loss {
        PairLoss::Contrastive => backend.contrastive_loss(
            p,
            dim,
            margin,
            &left,
            &right,
            &buf.same,
            &grad_left,
            &grad_right,
            &buf.stats,
        ),
        PairLoss::Koch => backend.koch_loss(
            p,
            dim,
            &left,
            &right,
            &buf.same,
            &model.param(backend, "head.alpha"),
            &model.param(backend, "head.bias"),
            &grad_left,
            &grad_right,
            &model.grad(backend, "head.alpha"),
            &model.grad(backend, "head.bias"),
            &buf.stats,
        ),
    }
    model.backward(backend, &buf.act);
}
