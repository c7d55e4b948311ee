//! CPU reference for `shaders/max_pool.wgsl`.
use crate::ops::PoolShape;
use num_traits::Float;

pub fn max_pool_forward<T: Float>(s: &PoolShape, input: &[T], output: &mut [T]) {
    todo!()
}
pub fn max_pool_backward<T: Float>(s: &PoolShape, input: &[T], grad_output: &[T], grad_input: &mut [T]) {
    todo!()
}
