//! CPU reference for `shaders/softmax_xent.wgsl`.
use num_traits::Float;

#[allow(clippy::too_many_arguments)]
pub fn softmax_xent<T: Float>(queries: usize, way: usize, distances: &[T], labels: &[u32], grad_distances: &mut [T], correct: &mut [T], stats: &mut [T]) {
    todo!()
}
