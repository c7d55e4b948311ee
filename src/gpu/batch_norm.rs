//! Launchers for `shaders/batch_norm.wgsl`.
use super::{Gpu, GpuTensor};
use crate::ops::{BatchNorm, NormShape};

#[allow(clippy::too_many_arguments)]
pub fn batch_norm_train(gpu: &Gpu, s: &NormShape, p: &BatchNorm, input: &GpuTensor, gamma: &GpuTensor, beta: &GpuTensor, output: &GpuTensor, saved_mean: &GpuTensor, saved_inv_std: &GpuTensor, running_mean: &GpuTensor, running_var: &GpuTensor) {
    todo!()
}
#[allow(clippy::too_many_arguments)]
pub fn batch_norm_eval(gpu: &Gpu, s: &NormShape, p: &BatchNorm, input: &GpuTensor, gamma: &GpuTensor, beta: &GpuTensor, running_mean: &GpuTensor, running_var: &GpuTensor, output: &GpuTensor) {
    todo!()
}
#[allow(clippy::too_many_arguments)]
pub fn batch_norm_backward(gpu: &Gpu, s: &NormShape, p: &BatchNorm, input: &GpuTensor, output: &GpuTensor, grad_output: &GpuTensor, gamma: &GpuTensor, saved_mean: &GpuTensor, saved_inv_std: &GpuTensor, grad_input: &GpuTensor, grad_gamma: &GpuTensor, grad_beta: &GpuTensor) {
    todo!()
}
pub fn relu_forward(gpu: &Gpu, input: &GpuTensor, output: &GpuTensor) {
    todo!()
}
pub fn relu_backward(gpu: &Gpu, output: &GpuTensor, grad_output: &GpuTensor, grad_input: &GpuTensor) {
    todo!()
}
