//! Launchers for `shaders/adam.wgsl`.
use super::{Gpu, GpuTensor};
use crate::ops::AdamStep;

pub fn adam(gpu: &Gpu, p: &AdamStep, params: &GpuTensor, grads: &GpuTensor, m: &GpuTensor, v: &GpuTensor) {
    todo!()
}
