//! Launcher for `shaders/softmax_xent.wgsl`: softmax cross-entropy over negative distances.
use super::{Gpu, GpuTensor, Kernel};

const SOURCE: &str = include_str!("../../shaders/softmax_xent.wgsl");
const SOFTMAX_XENT: Kernel = Kernel {
    file: "softmax_xent.wgsl",
    source: SOURCE,
    entry: "softmax_xent",
};

/// One workgroup does the whole episode (queries x way is tiny): see the shader header.
#[allow(clippy::too_many_arguments)]
pub fn softmax_xent(
    gpu: &Gpu,
    queries: usize,
    way: usize,
    distances: &GpuTensor,
    labels: &GpuTensor,
    grad_distances: &GpuTensor,
    correct: &GpuTensor,
    stats: &GpuTensor,
) {
    assert!(
        queries >= 1 && way >= 1,
        "softmax_xent: needs at least one query and one class"
    );
    assert_eq!(
        distances.len,
        queries * way,
        "softmax_xent: distances length"
    );
    assert_eq!(labels.len, queries, "softmax_xent: labels length");
    assert_eq!(
        grad_distances.len,
        queries * way,
        "softmax_xent: grad_distances length"
    );
    assert_eq!(correct.len, queries, "softmax_xent: correct length");
    assert_eq!(stats.len, 2, "softmax_xent: stats length");
    gpu.dispatch(
        &SOFTMAX_XENT,
        &[
            &distances.buffer,
            &labels.buffer,
            &grad_distances.buffer,
            &correct.buffer,
            &stats.buffer,
        ],
        &[
            queries as u32,
            way as u32,
            distances.off(),
            labels.off(),
            grad_distances.off(),
            correct.off(),
            stats.off(),
        ],
        [1, 1, 1],
    );
}
