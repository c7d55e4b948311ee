//! Launchers for `shaders/pair_loss.wgsl`.
use super::{Gpu, GpuTensor};

#[allow(clippy::too_many_arguments)]
pub fn contrastive_loss(gpu: &Gpu, pairs: usize, dim: usize, margin: f32, left: &GpuTensor, right: &GpuTensor, same: &GpuTensor, grad_left: &GpuTensor, grad_right: &GpuTensor, stats: &GpuTensor) {
    todo!()
}
#[allow(clippy::too_many_arguments)]
pub fn koch_loss(gpu: &Gpu, pairs: usize, dim: usize, left: &GpuTensor, right: &GpuTensor, same: &GpuTensor, alpha: &GpuTensor, bias: &GpuTensor, grad_left: &GpuTensor, grad_right: &GpuTensor, grad_alpha: &GpuTensor, grad_bias: &GpuTensor, stats: &GpuTensor) {
    todo!()
}
