//! Composite tests: the whole Conv-4 embedding, a ProtoNet step and Siamese steps, GPU vs CPU.
#![allow(clippy::too_many_arguments)]
mod common;

use common::*;
use fewshot::cpu::Cpu;
use fewshot::model::{init_params, Conv4, Conv4Config};
use fewshot::ops::{AdamStep, Backend};
use fewshot::train::step::{
    protonet_loss, protonet_step, siamese_step, PairBuffers, PairLoss, ProtoBuffers,
};
use rand::Rng;

/// A small Conv-4: 28x28x1 input (so the 7x7 -> 3x3 floor-mode pooling is exercised), 16 filters.
fn small_config() -> Conv4Config {
    Conv4Config::new(1, 28, 16)
}

fn random_images(seed: u64, count: usize, len: usize) -> Vec<f32> {
    let mut r = rng(seed);
    (0..count * len)
        .map(|_| r.random_range(0.0f32..1.0))
        .collect()
}

#[test]
fn conv4_forward_and_backward_match_cpu() {
    let Some(gpu) = gpu() else { return };
    let cpu = Cpu::new();
    let cfg = small_config();
    let (params, stats) = init_params(&cfg, 3);
    let batch = 5;
    let images = random_images(4, batch, cfg.image_len());
    let dim = cfg.embedding_dim();
    let upstream = random(&mut rng(5), batch * dim);

    fn run<B: Backend>(
        b: &B,
        cfg: &Conv4Config,
        params: &[f32],
        stats: &[f32],
        images: &[f32],
        upstream: &[f32],
        batch: usize,
    ) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
        let model = Conv4::new(b, cfg.clone(), params, stats);
        let act = model.activations(b, batch, true);
        b.write(&act.input, images);
        model.forward(b, &act, true);
        b.write(act.grad_embedding(), upstream);
        model.backward(b, &act);
        (
            b.read(act.embedding()),
            b.read(&model.grads),
            b.read(&model.stats),
        )
    }
    let (emb_g, grads_g, stats_g) = run(gpu, &cfg, &params, &stats, &images, &upstream, batch);
    let (emb_c, grads_c, stats_c) = run(&cpu, &cfg, &params, &stats, &images, &upstream, batch);
    assert_close("conv4 embedding", &emb_g, &emb_c, F32_TOLERANCE);
    assert_close(
        "conv4 running statistics",
        &stats_g,
        &stats_c,
        F32_TOLERANCE,
    );
    // Per parameter tensor, so a failure names the layer. The conv biases feed batch norm,
    // which removes any per-channel shift: their true gradient is exactly zero and both paths
    // produce rounding noise around it, so they are checked against the scale of the
    // neighbouring weight gradient instead.
    let model = Conv4::new(&cpu, cfg.clone(), &params, &stats);
    for e in &model.layout.params {
        let (g, c) = (
            &grads_g[e.offset..e.offset + e.len()],
            &grads_c[e.offset..e.offset + e.len()],
        );
        if e.name.ends_with("conv.bias") {
            let w = model.layout.param(&e.name.replace("bias", "weight"));
            let scale = grads_c[w.offset..w.offset + w.len()]
                .iter()
                .map(|v| v.abs())
                .fold(0.0f32, f32::max);
            for (a, b) in g.iter().zip(c) {
                assert!(
                    a.is_finite() && (a - b).abs() <= 1e-3 * scale,
                    "{}: {a} vs {b} (weight-gradient scale {scale})",
                    e.name
                );
            }
        } else {
            assert_close(&format!("conv4 gradient {}", e.name), g, c, F32_TOLERANCE);
        }
    }
}

#[test]
fn conv4_eval_mode_matches_cpu_and_ignores_the_batch() {
    let Some(gpu) = gpu() else { return };
    let cpu = Cpu::new();
    let cfg = small_config();
    let (params, mut stats) = init_params(&cfg, 7);
    // Non-trivial running statistics.
    let mut r = rng(8);
    for (i, s) in stats.iter_mut().enumerate() {
        *s = if (i / cfg.hidden).is_multiple_of(2) {
            r.random_range(-0.5..0.5)
        } else {
            r.random_range(0.5..2.0)
        };
    }
    let images = random_images(9, 3, cfg.image_len());
    fn embed<B: Backend>(
        b: &B,
        cfg: &Conv4Config,
        params: &[f32],
        stats: &[f32],
        images: &[f32],
        batch: usize,
    ) -> Vec<f32> {
        let model = Conv4::new(b, cfg.clone(), params, stats);
        let act = model.activations(b, batch, false);
        b.write(&act.input, images);
        model.forward(b, &act, false);
        b.read(act.embedding())
    }
    let g = embed(gpu, &cfg, &params, &stats, &images, 3);
    let c = embed(&cpu, &cfg, &params, &stats, &images, 3);
    assert_close("conv4 eval embedding", &g, &c, F32_TOLERANCE);
    // In eval mode an image's embedding does not depend on its batch.
    let alone = embed(&cpu, &cfg, &params, &stats, &images[..cfg.image_len()], 1);
    assert_close(
        "eval embedding of image 0 alone vs in a batch",
        &alone,
        &c[..cfg.embedding_dim()],
        1e-6,
    );
}

/// Parameters after one optimizer step, compared per tensor. Adam's first step is
/// `lr * g / |g|`: it turns any non-zero gradient, however tiny, into a step of size `lr`. Some
/// gradients are analytically zero and come out as f32 rounding noise of either sign on both
/// paths: conv biases (batch norm removes per-channel shifts) and, for losses that depend only
/// on differences of embeddings (all of ours), the last batch-norm shift. Elements whose CPU
/// gradient is below 1e-5 of the largest gradient are therefore only required to have moved
/// by at most `lr` on each path (difference <= 2 lr); every other element within 1e-4.
fn assert_params_close(
    cfg: &Conv4Config,
    got: &[f32],
    want: &[f32],
    grads: &[f32],
    lr: f32,
    what: &str,
) {
    let layout = fewshot::model::Layout::new(cfg);
    let noise = 1e-5 * grads.iter().map(|g| g.abs()).fold(0.0f32, f32::max);
    let mut masked = 0;
    for e in &layout.params {
        let r = e.offset..e.offset + e.len();
        let (mut g, mut c) = (Vec::new(), Vec::new());
        for i in r {
            if grads[i].abs() <= noise {
                masked += 1;
                assert!(
                    got[i].is_finite() && (got[i] - want[i]).abs() <= 2.0 * lr * 1.0001,
                    "{what} {}[{i}]: {} vs {}",
                    e.name,
                    got[i],
                    want[i]
                );
            } else {
                g.push(got[i]);
                c.push(want[i]);
            }
        }
        assert_close(&format!("{what} {}", e.name), &g, &c, F32_TOLERANCE);
    }
    eprintln!("{what}: {masked} elements with noise-level gradients checked against 2 lr");
}

#[test]
fn protonet_step_matches_cpu() {
    let Some(gpu) = gpu() else { return };
    let cpu = Cpu::new();
    let cfg = small_config();
    let (params, stats) = init_params(&cfg, 11);
    let (way, shot, query) = (3, 2, 2);
    let dataset = random_images(12, 20, cfg.image_len());
    let indices: Vec<u32> = (0..way * (shot + query))
        .map(|i| ((i * 7) % 20) as u32)
        .collect();
    let adam = AdamStep::new(1e-3, 1);
    fn run<B: Backend>(
        b: &B,
        cfg: &Conv4Config,
        params: &[f32],
        stats: &[f32],
        dataset: &[f32],
        indices: &[u32],
        adam: &AdamStep,
        wsq: (usize, usize, usize),
    ) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
        let model = Conv4::new(b, cfg.clone(), params, stats);
        let buf = ProtoBuffers::new(b, &model, wsq.0, wsq.1, wsq.2);
        let data = b.tensor_from(dataset);
        b.write_index(&buf.indices, indices);
        protonet_step(b, &model, &buf, Some(&data), adam);
        (
            b.read(&buf.stats),
            b.read(&model.grads),
            b.read(&model.params),
        )
    }
    let (stats_g, grads_g, params_g) = run(
        gpu,
        &cfg,
        &params,
        &stats,
        &dataset,
        &indices,
        &adam,
        (way, shot, query),
    );
    let (stats_c, grads_c, params_c) = run(
        &cpu,
        &cfg,
        &params,
        &stats,
        &dataset,
        &indices,
        &adam,
        (way, shot, query),
    );
    assert_close(
        "protonet step [loss, accuracy]",
        &stats_g,
        &stats_c,
        F32_TOLERANCE,
    );
    let layout = fewshot::model::Layout::new(&cfg);
    let w = layout.param("blocks.1.conv.weight");
    assert_close(
        "protonet step conv 1 weight gradient",
        &grads_g[w.offset..w.offset + w.len()],
        &grads_c[w.offset..w.offset + w.len()],
        F32_TOLERANCE,
    );
    assert_params_close(
        &cfg,
        &params_g,
        &params_c,
        &grads_c,
        adam.lr,
        "protonet step, weights after Adam:",
    );
    assert!(
        params_c.iter().zip(&params).any(|(a, b)| a != b),
        "Adam changed nothing"
    );
}

#[test]
fn protonet_eval_loss_matches_cpu_with_one_query_per_class() {
    let Some(gpu) = gpu() else { return };
    let cpu = Cpu::new();
    let cfg = small_config();
    let (params, stats) = init_params(&cfg, 13);
    let (way, shot, query) = (4, 1, 1);
    let images = random_images(14, way * (shot + query), cfg.image_len());
    fn run<B: Backend>(
        b: &B,
        cfg: &Conv4Config,
        params: &[f32],
        stats: &[f32],
        images: &[f32],
        wsq: (usize, usize, usize),
    ) -> (Vec<f32>, Vec<f32>) {
        let model = Conv4::new(b, cfg.clone(), params, stats);
        let buf = ProtoBuffers::new(b, &model, wsq.0, wsq.1, wsq.2);
        b.write(&buf.act.input, images);
        protonet_loss(b, &model, &buf, false);
        (b.read(&buf.stats), b.read(&buf.correct))
    }
    let (sg, cg) = run(gpu, &cfg, &params, &stats, &images, (way, shot, query));
    let (sc, cc) = run(&cpu, &cfg, &params, &stats, &images, (way, shot, query));
    assert_close("protonet eval-mode loss", &sg, &sc, F32_TOLERANCE);
    assert_eq!(cg, cc, "per-query correctness");
    assert_eq!(
        sc[1],
        cc.iter().sum::<f32>() / way as f32,
        "accuracy is the mean of per-query correctness"
    );
}

fn siamese_step_matches_cpu(loss: PairLoss) {
    let Some(gpu) = gpu() else { return };
    let cpu = Cpu::new();
    let mut cfg = small_config();
    cfg.koch_head = loss == PairLoss::Koch;
    let (params, stats) = init_params(&cfg, 21);
    let pairs = 4;
    let dataset = random_images(22, 16, cfg.image_len());
    let indices: Vec<u32> = (0..2 * pairs).map(|i| ((i * 5) % 16) as u32).collect();
    let same = [1.0, 1.0, 0.0, 0.0];
    let adam = AdamStep::new(1e-3, 1);
    fn run<B: Backend>(
        b: &B,
        cfg: &Conv4Config,
        params: &[f32],
        stats: &[f32],
        dataset: &[f32],
        indices: &[u32],
        same: &[f32],
        loss: PairLoss,
        adam: &AdamStep,
    ) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
        let model = Conv4::new(b, cfg.clone(), params, stats);
        let buf = PairBuffers::new(b, &model, same.len());
        let data = b.tensor_from(dataset);
        b.write_index(&buf.indices, indices);
        b.write(&buf.same, same);
        siamese_step(b, &model, &buf, Some(&data), loss, 1.0, adam);
        (
            b.read(&buf.stats),
            b.read(&model.params),
            b.read(&model.grads),
        )
    }
    let (sg, pg, _) = run(
        gpu, &cfg, &params, &stats, &dataset, &indices, &same, loss, &adam,
    );
    let (sc, pc, gc) = run(
        &cpu, &cfg, &params, &stats, &dataset, &indices, &same, loss, &adam,
    );
    assert_close(
        &format!("siamese {loss:?} step [loss, accuracy]"),
        &sg,
        &sc,
        F32_TOLERANCE,
    );
    assert_params_close(
        &cfg,
        &pg,
        &pc,
        &gc,
        adam.lr,
        &format!("siamese {loss:?} step, weights after Adam:"),
    );
}

#[test]
fn siamese_contrastive_step_matches_cpu() {
    siamese_step_matches_cpu(PairLoss::Contrastive);
}

#[test]
fn siamese_koch_step_matches_cpu() {
    siamese_step_matches_cpu(PairLoss::Koch);
}
