//! Launchers for `shaders/pair_loss.wgsl`: the contrastive loss and the Koch et al. head.
//!
//! Per-pair intermediate results (`3 * pairs` floats) pass through the context's reusable
//! scratch buffer (`Gpu::with_scratch`), so a training step allocates nothing.
use super::{Gpu, GpuTensor, Kernel};

const SOURCE: &str = include_str!("../../shaders/pair_loss.wgsl");
const CONTRASTIVE_PAIR: Kernel = Kernel {
    file: "pair_loss.wgsl",
    source: SOURCE,
    entry: "contrastive_pair",
};
const CONTRASTIVE_GRAD: Kernel = Kernel {
    file: "pair_loss.wgsl",
    source: SOURCE,
    entry: "contrastive_grad",
};
const CONTRASTIVE_REDUCE: Kernel = Kernel {
    file: "pair_loss.wgsl",
    source: SOURCE,
    entry: "contrastive_reduce",
};
const KOCH_PAIR: Kernel = Kernel {
    file: "pair_loss.wgsl",
    source: SOURCE,
    entry: "koch_pair",
};
const KOCH_GRAD: Kernel = Kernel {
    file: "pair_loss.wgsl",
    source: SOURCE,
    entry: "koch_grad",
};
const KOCH_GRAD_ALPHA: Kernel = Kernel {
    file: "pair_loss.wgsl",
    source: SOURCE,
    entry: "koch_grad_alpha",
};
const KOCH_REDUCE: Kernel = Kernel {
    file: "pair_loss.wgsl",
    source: SOURCE,
    entry: "koch_reduce",
};

#[allow(clippy::too_many_arguments)]
fn check_lengths(
    op: &str,
    pairs: usize,
    dim: usize,
    left: &GpuTensor,
    right: &GpuTensor,
    same: &GpuTensor,
    grad_left: &GpuTensor,
    grad_right: &GpuTensor,
    stats: &GpuTensor,
) {
    let n = pairs * dim;
    assert_eq!(left.len, n, "{op}: left length");
    assert_eq!(right.len, n, "{op}: right length");
    assert_eq!(same.len, pairs, "{op}: same length");
    assert_eq!(grad_left.len, n, "{op}: grad_left length");
    assert_eq!(grad_right.len, n, "{op}: grad_right length");
    assert_eq!(stats.len, 2, "{op}: stats length");
}

#[allow(clippy::too_many_arguments)]
pub fn contrastive_loss(
    gpu: &Gpu,
    pairs: usize,
    dim: usize,
    margin: f32,
    left: &GpuTensor,
    right: &GpuTensor,
    same: &GpuTensor,
    grad_left: &GpuTensor,
    grad_right: &GpuTensor,
    stats: &GpuTensor,
) {
    check_lengths(
        "contrastive_loss",
        pairs,
        dim,
        left,
        right,
        same,
        grad_left,
        grad_right,
        stats,
    );
    gpu.with_scratch("contrastive_loss.scratch", 3 * pairs, |scratch| {
        gpu.dispatch(
            &CONTRASTIVE_PAIR,
            &[&left.buffer, &right.buffer, &same.buffer, scratch],
            &[
                pairs as u32,
                dim as u32,
                margin.to_bits(),
                left.off(),
                right.off(),
                same.off(),
            ],
            gpu.groups_1d(pairs, 1),
        );
        gpu.dispatch(
            &CONTRASTIVE_GRAD,
            &[
                &left.buffer,
                &right.buffer,
                scratch,
                &grad_left.buffer,
                &grad_right.buffer,
            ],
            &[
                pairs as u32,
                dim as u32,
                left.off(),
                right.off(),
                grad_left.off(),
                grad_right.off(),
            ],
            gpu.groups_1d(pairs * dim, 256),
        );
        gpu.dispatch(
            &CONTRASTIVE_REDUCE,
            &[scratch, &stats.buffer],
            &[pairs as u32, stats.off(), 0],
            [1, 1, 1],
        );
    })
}

#[allow(clippy::too_many_arguments)]
pub fn koch_loss(
    gpu: &Gpu,
    pairs: usize,
    dim: usize,
    left: &GpuTensor,
    right: &GpuTensor,
    same: &GpuTensor,
    alpha: &GpuTensor,
    bias: &GpuTensor,
    grad_left: &GpuTensor,
    grad_right: &GpuTensor,
    grad_alpha: &GpuTensor,
    grad_bias: &GpuTensor,
    stats: &GpuTensor,
) {
    check_lengths(
        "koch_loss",
        pairs,
        dim,
        left,
        right,
        same,
        grad_left,
        grad_right,
        stats,
    );
    assert_eq!(alpha.len, dim, "koch_loss: alpha length");
    assert_eq!(bias.len, 1, "koch_loss: bias length");
    assert_eq!(grad_alpha.len, dim, "koch_loss: grad_alpha length");
    assert_eq!(grad_bias.len, 1, "koch_loss: grad_bias length");
    gpu.with_scratch("koch_loss.scratch", 3 * pairs, |scratch| {
        gpu.dispatch(
            &KOCH_PAIR,
            &[
                &left.buffer,
                &right.buffer,
                &same.buffer,
                &alpha.buffer,
                &bias.buffer,
                scratch,
            ],
            &[
                pairs as u32,
                dim as u32,
                left.off(),
                right.off(),
                same.off(),
                alpha.off(),
                bias.off(),
            ],
            gpu.groups_1d(pairs, 1),
        );
        gpu.dispatch(
            &KOCH_GRAD,
            &[
                &left.buffer,
                &right.buffer,
                &alpha.buffer,
                scratch,
                &grad_left.buffer,
                &grad_right.buffer,
            ],
            &[
                pairs as u32,
                dim as u32,
                left.off(),
                right.off(),
                alpha.off(),
                grad_left.off(),
                grad_right.off(),
            ],
            gpu.groups_1d(pairs * dim, 256),
        );
        gpu.dispatch(
            &KOCH_GRAD_ALPHA,
            &[&left.buffer, &right.buffer, scratch, &grad_alpha.buffer],
            &[
                pairs as u32,
                dim as u32,
                left.off(),
                right.off(),
                grad_alpha.off(),
            ],
            gpu.groups_1d(dim, 256),
        );
        gpu.dispatch(
            &KOCH_REDUCE,
            &[scratch, &stats.buffer, &grad_bias.buffer],
            &[pairs as u32, stats.off(), grad_bias.off()],
            [1, 1, 1],
        );
    })
}
