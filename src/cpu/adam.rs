//! CPU reference for `shaders/adam.wgsl`.
use crate::ops::AdamStep;

pub fn adam(p: &AdamStep, params: &mut [f32], grads: &[f32], m: &mut [f32], v: &mut [f32]) {
    todo!()
}
