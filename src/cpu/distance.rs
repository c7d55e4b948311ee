//! CPU reference for `shaders/distance.wgsl`.
use num_traits::Float;

pub fn pairwise_sq_dist<T: Float>(rows_a: usize, rows_b: usize, dim: usize, a: &[T], b: &[T], out: &mut [T]) {
    todo!()
}
#[allow(clippy::too_many_arguments)]
pub fn pairwise_sq_dist_backward<T: Float>(rows_a: usize, rows_b: usize, dim: usize, a: &[T], b: &[T], grad_out: &[T], grad_a: &mut [T], grad_b: &mut [T]) {
    todo!()
}
