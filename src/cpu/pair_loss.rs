//! CPU reference for `shaders/pair_loss.wgsl` (contrastive loss and the Koch et al. head).
use num_traits::Float;

#[allow(clippy::too_many_arguments)]
pub fn contrastive_loss<T: Float>(pairs: usize, dim: usize, margin: f32, left: &[T], right: &[T], same: &[T], grad_left: &mut [T], grad_right: &mut [T], stats: &mut [T]) {
    todo!()
}
#[allow(clippy::too_many_arguments)]
pub fn koch_loss<T: Float>(pairs: usize, dim: usize, left: &[T], right: &[T], same: &[T], alpha: &[T], bias: &[T], grad_left: &mut [T], grad_right: &mut [T], grad_alpha: &mut [T], grad_bias: &mut [T], stats: &mut [T]) {
    todo!()
}
