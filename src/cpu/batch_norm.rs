//! CPU reference for `shaders/batch_norm.wgsl` (batch norm with optional fused ReLU, and ReLU).
use crate::ops::{BatchNorm, NormShape};
use num_traits::Float;

#[allow(clippy::too_many_arguments)]
pub fn batch_norm_train<T: Float>(s: &NormShape, p: &BatchNorm, input: &[T], gamma: &[T], beta: &[T], output: &mut [T], saved_mean: &mut [T], saved_inv_std: &mut [T], running_mean: &mut [T], running_var: &mut [T]) {
    todo!()
}
#[allow(clippy::too_many_arguments)]
pub fn batch_norm_eval<T: Float>(s: &NormShape, p: &BatchNorm, input: &[T], gamma: &[T], beta: &[T], running_mean: &[T], running_var: &[T], output: &mut [T]) {
    todo!()
}
#[allow(clippy::too_many_arguments)]
pub fn batch_norm_backward<T: Float>(s: &NormShape, p: &BatchNorm, input: &[T], output: &[T], grad_output: &[T], gamma: &[T], saved_mean: &[T], saved_inv_std: &[T], grad_input: &mut [T], grad_gamma: &mut [T], grad_beta: &mut [T]) {
    todo!()
}
pub fn relu_forward<T: Float>(input: &[T], output: &mut [T]) {
    todo!()
}
pub fn relu_backward<T: Float>(output: &[T], grad_output: &[T], grad_input: &mut [T]) {
    todo!()
}
