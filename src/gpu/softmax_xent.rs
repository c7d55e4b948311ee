//! Launchers for `shaders/softmax_xent.wgsl`.
use super::{Gpu, GpuTensor};

#[allow(clippy::too_many_arguments)]
pub fn softmax_xent(gpu: &Gpu, queries: usize, way: usize, distances: &GpuTensor, labels: &GpuTensor, grad_distances: &GpuTensor, correct: &GpuTensor, stats: &GpuTensor) {
    todo!()
}
