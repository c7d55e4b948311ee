//! Launchers for `shaders/prototypes.wgsl`.
use super::{Gpu, GpuTensor};

pub fn prototypes(gpu: &Gpu, way: usize, dim: usize, support: &GpuTensor, labels: &GpuTensor, prototypes: &GpuTensor) {
    todo!()
}
pub fn prototypes_backward(gpu: &Gpu, way: usize, dim: usize, labels: &GpuTensor, grad_prototypes: &GpuTensor, grad_support: &GpuTensor) {
    todo!()
}
