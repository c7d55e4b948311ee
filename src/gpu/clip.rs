//! Launchers for `shaders/clip.wgsl`: global gradient-norm clipping, entirely on the device.

use std::sync::Arc;

use super::{Gpu, GpuTensor, Kernel};

const SOURCE: &str = include_str!("../../shaders/clip.wgsl");
const PARTIALS: Kernel = Kernel {
    file: "clip.wgsl",
    source: SOURCE,
    entry: "sumsq_partials",
};
const FINISH: Kernel = Kernel {
    file: "clip.wgsl",
    source: SOURCE,
    entry: "sumsq_finish",
};
const SCALE: Kernel = Kernel {
    file: "clip.wgsl",
    source: SOURCE,
    entry: "clip_scale",
};

/// Most workgroups of the partial-sum pass (each loops over the buffer with a grid stride);
/// the single-workgroup finish pass then sums at most this many partials.
const MAX_PARTIALS: usize = 1024;

/// Writes `sqrt(sum grads[i]^2)` (the norm before clipping) to `norm_out` and multiplies the
/// gradients in place by `min(1, max_norm / (norm + 1e-6))`: three dispatches (partial sums of
/// squares per workgroup into a scratch buffer, one workgroup summing them in a fixed order,
/// an elementwise scale), no host round trip. `norm_out` must not live in `grads`' buffer.
pub fn clip_grad_norm(gpu: &Gpu, max_norm: f32, grads: &GpuTensor, norm_out: &GpuTensor) {
    assert_eq!(norm_out.len, 1, "clip_grad_norm: norm_out holds one float");
    assert!(
        !Arc::ptr_eq(&grads.buffer, &norm_out.buffer),
        "clip_grad_norm: norm_out must not share the gradients' buffer"
    );
    let n = grads.len;
    let groups = n.div_ceil(256).clamp(1, MAX_PARTIALS);
    // Scratch for the partial sums; freed once the submission that uses it has run.
    gpu.with_scratch("clip_grad_norm.partials", groups, |partials| {
        gpu.dispatch(
            &PARTIALS,
            &[&grads.buffer, partials],
            &[n as u32, groups as u32, grads.off()],
            [groups as u32, 1, 1],
        );
        gpu.dispatch(
            &FINISH,
            &[partials, &norm_out.buffer],
            &[groups as u32, norm_out.off()],
            [1, 1, 1],
        );
        gpu.dispatch(
            &SCALE,
            &[&norm_out.buffer, &grads.buffer],
            &[n as u32, max_norm.to_bits(), norm_out.off(), grads.off()],
            gpu.groups_1d(n, 256),
        );
    })
}
