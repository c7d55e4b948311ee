//! Launchers for `shaders/conv2d.wgsl`.
use super::{Gpu, GpuTensor};
use crate::ops::ConvShape;

pub fn conv2d_forward(gpu: &Gpu, s: &ConvShape, input: &GpuTensor, weight: &GpuTensor, bias: &GpuTensor, output: &GpuTensor) {
    todo!()
}
pub fn conv2d_backward_input(gpu: &Gpu, s: &ConvShape, grad_output: &GpuTensor, weight: &GpuTensor, grad_input: &GpuTensor) {
    todo!()
}
pub fn conv2d_backward_weight(gpu: &Gpu, s: &ConvShape, input: &GpuTensor, grad_output: &GpuTensor, grad_weight: &GpuTensor, grad_bias: &GpuTensor) {
    todo!()
}
