//! Launchers for `shaders/distance.wgsl`: pairwise squared Euclidean distance and its backward.
use super::{Gpu, GpuTensor, Kernel};

const SOURCE: &str = include_str!("../../shaders/distance.wgsl");
const SQ_DIST: Kernel = Kernel {
    file: "distance.wgsl",
    source: SOURCE,
    entry: "sq_dist",
};
const SQ_DIST_BACKWARD: Kernel = Kernel {
    file: "distance.wgsl",
    source: SOURCE,
    entry: "sq_dist_backward",
};

pub fn pairwise_sq_dist(
    gpu: &Gpu,
    rows_a: usize,
    rows_b: usize,
    dim: usize,
    a: &GpuTensor,
    b: &GpuTensor,
    out: &GpuTensor,
) {
    assert_eq!(a.len, rows_a * dim, "pairwise_sq_dist: a length");
    assert_eq!(b.len, rows_b * dim, "pairwise_sq_dist: b length");
    assert_eq!(out.len, rows_a * rows_b, "pairwise_sq_dist: out length");
    gpu.dispatch(
        &SQ_DIST,
        &[&a.buffer, &b.buffer, &out.buffer],
        &[
            rows_a as u32,
            rows_b as u32,
            dim as u32,
            a.off(),
            b.off(),
            out.off(),
        ],
        gpu.groups_1d(rows_a * rows_b, 256),
    );
}

#[allow(clippy::too_many_arguments)]
pub fn pairwise_sq_dist_backward(
    gpu: &Gpu,
    rows_a: usize,
    rows_b: usize,
    dim: usize,
    a: &GpuTensor,
    b: &GpuTensor,
    grad_out: &GpuTensor,
    grad_a: &GpuTensor,
    grad_b: &GpuTensor,
) {
    assert_eq!(a.len, rows_a * dim, "pairwise_sq_dist_backward: a length");
    assert_eq!(b.len, rows_b * dim, "pairwise_sq_dist_backward: b length");
    assert_eq!(
        grad_out.len,
        rows_a * rows_b,
        "pairwise_sq_dist_backward: grad_out length"
    );
    assert_eq!(
        grad_a.len,
        rows_a * dim,
        "pairwise_sq_dist_backward: grad_a length"
    );
    assert_eq!(
        grad_b.len,
        rows_b * dim,
        "pairwise_sq_dist_backward: grad_b length"
    );
    // One dispatch covers both gradients: ids [0, rows_a * dim) write grad_a, the rest grad_b.
    gpu.dispatch(
        &SQ_DIST_BACKWARD,
        &[
            &a.buffer,
            &b.buffer,
            &grad_out.buffer,
            &grad_a.buffer,
            &grad_b.buffer,
        ],
        &[
            rows_a as u32,
            rows_b as u32,
            dim as u32,
            a.off(),
            b.off(),
            grad_out.off(),
            grad_a.off(),
            grad_b.off(),
        ],
        gpu.groups_1d((rows_a + rows_b) * dim, 256),
    );
}
