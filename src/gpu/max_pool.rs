//! Launchers for `shaders/max_pool.wgsl`.
use super::{Gpu, GpuTensor};
use crate::ops::PoolShape;

pub fn max_pool_forward(gpu: &Gpu, s: &PoolShape, input: &GpuTensor, output: &GpuTensor) {
    todo!()
}
pub fn max_pool_backward(gpu: &Gpu, s: &PoolShape, input: &GpuTensor, grad_output: &GpuTensor, grad_input: &GpuTensor) {
    todo!()
}
