//! Launchers for `shaders/batch_norm.wgsl`: batch norm (training forward, evaluation forward,
//! backward; optional fused ReLU) and ReLU.
use super::{Gpu, GpuTensor, Kernel};
use crate::ops::{BatchNorm, NormShape, PoolShape};

/// The shader, after the window helpers it shares with the other pooling kernels.
const SOURCE: &str = concat!(
    include_str!("../../shaders/window.wgsl"),
    include_str!("../../shaders/batch_norm.wgsl")
);
const STATS: Kernel = Kernel {
    file: "batch_norm.wgsl",
    source: SOURCE,
    entry: "bn_stats",
};
const NORMALISE: Kernel = Kernel {
    file: "batch_norm.wgsl",
    source: SOURCE,
    entry: "bn_normalise",
};
const EVAL: Kernel = Kernel {
    file: "batch_norm.wgsl",
    source: SOURCE,
    entry: "bn_eval",
};
const BACKWARD_SUMS: Kernel = Kernel {
    file: "batch_norm.wgsl",
    source: SOURCE,
    entry: "bn_backward_sums",
};
const BACKWARD_INPUT: Kernel = Kernel {
    file: "batch_norm.wgsl",
    source: SOURCE,
    entry: "bn_backward_input",
};
const RELU_FORWARD: Kernel = Kernel {
    file: "batch_norm.wgsl",
    source: SOURCE,
    entry: "relu_forward",
};
const RELU_BACKWARD: Kernel = Kernel {
    file: "batch_norm.wgsl",
    source: SOURCE,
    entry: "relu_backward",
};

const BN_POOL: Kernel = Kernel {
    file: "batch_norm.wgsl",
    source: SOURCE,
    entry: "bn_pool",
};
const BN_POOL_ROUTE: Kernel = Kernel {
    file: "batch_norm.wgsl",
    source: SOURCE,
    entry: "bn_pool_route",
};

const WORKGROUP: u32 = 256;

fn check_lens(s: &NormShape, what: &str, data: &[&GpuTensor], per_channel: &[&GpuTensor]) {
    for t in data {
        assert_eq!(t.len, s.len(), "{what}: data length");
    }
    for t in per_channel {
        assert_eq!(t.len, s.channels, "{what}: per-channel length");
    }
}

/// One workgroup per channel (spilling into y past the per-dimension limit).
fn per_channel_groups(gpu: &Gpu, s: &NormShape) -> [u32; 3] {
    gpu.groups_1d(s.channels, 1)
}

/// Statistics (a workgroup per channel: mean, inv_std, running-statistics update), then an
/// element-wise normalisation reading the saved statistics.
#[allow(clippy::too_many_arguments)]
pub fn batch_norm_train(
    gpu: &Gpu,
    s: &NormShape,
    p: &BatchNorm,
    input: &GpuTensor,
    gamma: &GpuTensor,
    beta: &GpuTensor,
    output: &GpuTensor,
    saved_mean: &GpuTensor,
    saved_inv_std: &GpuTensor,
    running_mean: &GpuTensor,
    running_var: &GpuTensor,
) {
    check_lens(
        s,
        "batch_norm_train",
        &[input, output],
        &[
            gamma,
            beta,
            saved_mean,
            saved_inv_std,
            running_mean,
            running_var,
        ],
    );
    stats(
        gpu,
        s,
        p,
        input,
        saved_mean,
        saved_inv_std,
        running_mean,
        running_var,
    );
    gpu.dispatch(
        &NORMALISE,
        &[
            &input.buffer,
            &gamma.buffer,
            &beta.buffer,
            &saved_mean.buffer,
            &saved_inv_std.buffer,
            &output.buffer,
        ],
        &[
            s.len() as u32,
            s.channels as u32,
            s.spatial as u32,
            p.relu as u32,
            input.off(),
            gamma.off(),
            beta.off(),
            saved_mean.off(),
            saved_inv_std.off(),
            output.off(),
        ],
        gpu.groups_1d(s.len(), WORKGROUP),
    );
}

/// Element-wise normalisation with the running statistics.
#[allow(clippy::too_many_arguments)]
pub fn batch_norm_eval(
    gpu: &Gpu,
    s: &NormShape,
    p: &BatchNorm,
    input: &GpuTensor,
    gamma: &GpuTensor,
    beta: &GpuTensor,
    running_mean: &GpuTensor,
    running_var: &GpuTensor,
    output: &GpuTensor,
) {
    check_lens(
        s,
        "batch_norm_eval",
        &[input, output],
        &[gamma, beta, running_mean, running_var],
    );
    gpu.dispatch(
        &EVAL,
        &[
            &input.buffer,
            &gamma.buffer,
            &beta.buffer,
            &running_mean.buffer,
            &running_var.buffer,
            &output.buffer,
        ],
        &[
            s.len() as u32,
            s.channels as u32,
            s.spatial as u32,
            p.relu as u32,
            p.eps.to_bits(),
            input.off(),
            gamma.off(),
            beta.off(),
            running_mean.off(),
            running_var.off(),
            output.off(),
        ],
        gpu.groups_1d(s.len(), WORKGROUP),
    );
}

/// Per-channel sums (a workgroup per channel; writes grad_gamma, grad_beta and a scratch copy of
/// both sums), then an element-wise grad_input kernel. The scratch buffer keeps each kernel
/// within 8 storage bindings, the WebGPU default limit.
#[allow(clippy::too_many_arguments)]
pub fn batch_norm_backward(
    gpu: &Gpu,
    s: &NormShape,
    p: &BatchNorm,
    input: &GpuTensor,
    output: &GpuTensor,
    grad_output: &GpuTensor,
    gamma: &GpuTensor,
    saved_mean: &GpuTensor,
    saved_inv_std: &GpuTensor,
    grad_input: &GpuTensor,
    grad_gamma: &GpuTensor,
    grad_beta: &GpuTensor,
) {
    check_lens(
        s,
        "batch_norm_backward",
        &[input, output, grad_output, grad_input],
        &[gamma, saved_mean, saved_inv_std, grad_gamma, grad_beta],
    );
    gpu.with_scratch("batch_norm_backward.sums", 2 * s.channels, |sums| {
        gpu.dispatch(
            &BACKWARD_SUMS,
            &[
                &input.buffer,
                &output.buffer,
                &grad_output.buffer,
                &saved_mean.buffer,
                &saved_inv_std.buffer,
                &grad_gamma.buffer,
                &grad_beta.buffer,
                sums,
            ],
            &[
                s.channels as u32,
                s.spatial as u32,
                s.batch as u32,
                p.relu as u32,
                input.off(),
                output.off(),
                grad_output.off(),
                saved_mean.off(),
                saved_inv_std.off(),
                grad_gamma.off(),
                grad_beta.off(),
            ],
            per_channel_groups(gpu, s),
        );
        gpu.dispatch(
            &BACKWARD_INPUT,
            &[
                &input.buffer,
                &output.buffer,
                &grad_output.buffer,
                &gamma.buffer,
                &saved_mean.buffer,
                &saved_inv_std.buffer,
                sums,
                &grad_input.buffer,
            ],
            &[
                s.len() as u32,
                s.channels as u32,
                s.spatial as u32,
                s.batch as u32,
                p.relu as u32,
                input.off(),
                output.off(),
                grad_output.off(),
                gamma.off(),
                saved_mean.off(),
                saved_inv_std.off(),
                grad_input.off(),
            ],
            gpu.groups_1d(s.len(), WORKGROUP),
        );
    })
}

pub fn relu_forward(gpu: &Gpu, input: &GpuTensor, output: &GpuTensor) {
    assert_eq!(input.len, output.len, "relu_forward: length mismatch");
    gpu.dispatch(
        &RELU_FORWARD,
        &[&input.buffer, &output.buffer],
        &[input.len as u32, input.off(), output.off()],
        gpu.groups_1d(input.len, WORKGROUP),
    );
}

pub fn relu_backward(
    gpu: &Gpu,
    output: &GpuTensor,
    grad_output: &GpuTensor,
    grad_input: &GpuTensor,
) {
    assert_eq!(
        output.len, grad_output.len,
        "relu_backward: length mismatch"
    );
    assert_eq!(output.len, grad_input.len, "relu_backward: length mismatch");
    gpu.dispatch(
        &RELU_BACKWARD,
        &[&output.buffer, &grad_output.buffer, &grad_input.buffer],
        &[
            output.len as u32,
            output.off(),
            grad_output.off(),
            grad_input.off(),
        ],
        gpu.groups_1d(output.len, WORKGROUP),
    );
}

/// The statistics pass of training mode: a workgroup per channel writes the saved mean and
/// inverse standard deviation and updates the running statistics.
#[allow(clippy::too_many_arguments)]
fn stats(
    gpu: &Gpu,
    s: &NormShape,
    p: &BatchNorm,
    input: &GpuTensor,
    saved_mean: &GpuTensor,
    saved_inv_std: &GpuTensor,
    running_mean: &GpuTensor,
    running_var: &GpuTensor,
) {
    gpu.dispatch(
        &STATS,
        &[
            &input.buffer,
            &saved_mean.buffer,
            &saved_inv_std.buffer,
            &running_mean.buffer,
            &running_var.buffer,
        ],
        &[
            s.channels as u32,
            s.spatial as u32,
            s.batch as u32,
            p.eps.to_bits(),
            p.momentum.to_bits(),
            input.off(),
            saved_mean.off(),
            saved_inv_std.off(),
            running_mean.off(),
            running_var.off(),
        ],
        per_channel_groups(gpu, s),
    );
}

/// `bn_pool`: a thread per pooled element; `a`, `b` are the saved mean and inverse standard
/// deviation (training) or the running mean and variance (`eval`).
#[allow(clippy::too_many_arguments)]
fn norm_pool(
    gpu: &Gpu,
    s: &PoolShape,
    p: &BatchNorm,
    eval: bool,
    input: &GpuTensor,
    gamma: &GpuTensor,
    beta: &GpuTensor,
    a: &GpuTensor,
    b: &GpuTensor,
    pooled: &GpuTensor,
) {
    assert_eq!(input.len, s.input_len(), "batch_norm_pool: input length");
    assert_eq!(pooled.len, s.output_len(), "batch_norm_pool: pooled length");
    for t in [gamma, beta, a, b] {
        assert_eq!(t.len, s.channels, "batch_norm_pool: per-channel length");
    }
    if s.output_len() == 0 {
        return;
    }
    gpu.dispatch(
        &BN_POOL,
        &[
            &input.buffer,
            &gamma.buffer,
            &beta.buffer,
            &a.buffer,
            &b.buffer,
            &pooled.buffer,
        ],
        &[
            (s.batch * s.channels) as u32,
            s.channels as u32,
            s.height as u32,
            s.width as u32,
            p.relu as u32,
            eval as u32,
            p.eps.to_bits(),
            input.off(),
            gamma.off(),
            beta.off(),
            a.off(),
            b.off(),
            pooled.off(),
        ],
        gpu.groups_1d(s.output_len(), WORKGROUP),
    );
}

/// Training-mode batch norm (+ ReLU) fused with the 2x2 max-pool: the statistics pass, then
/// `bn_pool` (the full-size normalised output is never written).
#[allow(clippy::too_many_arguments)]
pub fn batch_norm_pool_train(
    gpu: &Gpu,
    s: &PoolShape,
    p: &BatchNorm,
    input: &GpuTensor,
    gamma: &GpuTensor,
    beta: &GpuTensor,
    pooled: &GpuTensor,
    saved_mean: &GpuTensor,
    saved_inv_std: &GpuTensor,
    running_mean: &GpuTensor,
    running_var: &GpuTensor,
) {
    let ns = s.norm_shape();
    check_lens(
        &ns,
        "batch_norm_pool_train",
        &[input],
        &[saved_mean, saved_inv_std, running_mean, running_var],
    );
    stats(
        gpu,
        &ns,
        p,
        input,
        saved_mean,
        saved_inv_std,
        running_mean,
        running_var,
    );
    norm_pool(
        gpu,
        s,
        p,
        false,
        input,
        gamma,
        beta,
        saved_mean,
        saved_inv_std,
        pooled,
    );
}

/// Evaluation-mode batch norm (+ ReLU) fused with the max-pool: `bn_pool` alone.
#[allow(clippy::too_many_arguments)]
pub fn batch_norm_pool_eval(
    gpu: &Gpu,
    s: &PoolShape,
    p: &BatchNorm,
    input: &GpuTensor,
    gamma: &GpuTensor,
    beta: &GpuTensor,
    running_mean: &GpuTensor,
    running_var: &GpuTensor,
    pooled: &GpuTensor,
) {
    norm_pool(
        gpu,
        s,
        p,
        true,
        input,
        gamma,
        beta,
        running_mean,
        running_var,
        pooled,
    );
}

/// Backward of [`batch_norm_pool_train`]: `bn_pool_route` writes the gradient at the batch-norm
/// output (routed and through the ReLU mask, recomputed from `input`) into `grad_output`, then
/// the batch-norm backward runs without the ReLU (already applied), so it never reads `y`.
#[allow(clippy::too_many_arguments)]
pub fn pool_batch_norm_backward(
    gpu: &Gpu,
    s: &PoolShape,
    p: &BatchNorm,
    input: &GpuTensor,
    grad_pooled: &GpuTensor,
    gamma: &GpuTensor,
    beta: &GpuTensor,
    saved_mean: &GpuTensor,
    saved_inv_std: &GpuTensor,
    grad_output: &GpuTensor,
    grad_input: &GpuTensor,
    grad_gamma: &GpuTensor,
    grad_beta: &GpuTensor,
) {
    let ns = s.norm_shape();
    check_lens(
        &ns,
        "pool_batch_norm_backward",
        &[input, grad_output, grad_input],
        &[
            gamma,
            beta,
            saved_mean,
            saved_inv_std,
            grad_gamma,
            grad_beta,
        ],
    );
    assert_eq!(
        grad_pooled.len,
        s.output_len(),
        "pool_batch_norm_backward: grad_pooled length"
    );
    if s.input_len() > 0 {
        gpu.dispatch(
            &BN_POOL_ROUTE,
            &[
                &input.buffer,
                &gamma.buffer,
                &beta.buffer,
                &saved_mean.buffer,
                &saved_inv_std.buffer,
                &grad_pooled.buffer,
                &grad_output.buffer,
            ],
            &[
                (s.batch * s.channels) as u32,
                s.channels as u32,
                s.height as u32,
                s.width as u32,
                p.relu as u32,
                input.off(),
                gamma.off(),
                beta.off(),
                saved_mean.off(),
                saved_inv_std.off(),
                grad_pooled.off(),
                grad_output.off(),
            ],
            gpu.groups_1d(
                s.batch * s.channels * s.height.div_ceil(2) * s.width.div_ceil(2),
                WORKGROUP,
            ),
        );
    }
    let linear = BatchNorm { relu: false, ..*p };
    // With the ReLU off the backward never reads `y`: `input` stands in for it.
    batch_norm_backward(
        gpu,
        &ns,
        &linear,
        input,
        input,
        grad_output,
        gamma,
        saved_mean,
        saved_inv_std,
        grad_input,
        grad_gamma,
        grad_beta,
    );
}
