//! CPU reference for `shaders/conv2d.wgsl`.
use crate::ops::ConvShape;
use num_traits::Float;

pub fn conv2d_forward<T: Float>(s: &ConvShape, input: &[T], weight: &[T], bias: &[T], output: &mut [T]) {
    todo!()
}
pub fn conv2d_backward_input<T: Float>(s: &ConvShape, grad_output: &[T], weight: &[T], grad_input: &mut [T]) {
    todo!()
}
pub fn conv2d_backward_weight<T: Float>(s: &ConvShape, input: &[T], grad_output: &[T], grad_weight: &mut [T], grad_bias: &mut [T]) {
    todo!()
}
