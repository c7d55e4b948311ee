//! CPU reference for `shaders/prototypes.wgsl`.
use num_traits::Float;

pub fn prototypes<T: Float>(way: usize, dim: usize, support: &[T], labels: &[u32], prototypes: &mut [T]) {
    todo!()
}
pub fn prototypes_backward<T: Float>(way: usize, dim: usize, labels: &[u32], grad_prototypes: &[T], grad_support: &mut [T]) {
    todo!()
}
