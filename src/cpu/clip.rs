//! CPU reference for `shaders/clip.wgsl`: global L2-norm gradient clipping.

/// Added to the norm before dividing, as PyTorch's `clip_grad_norm_` does.
pub const CLIP_EPS: f32 = 1e-6;

/// `sqrt(sum grads[i]^2)`, accumulated in f64 (the GPU sums in f32 in a blocked tree order; the
/// two agree to about `log2(n)` f32 roundings, far inside the tests' 1e-4).
pub fn grad_norm(grads: &[f32]) -> f32 {
    grads
        .iter()
        .map(|&g| g as f64 * g as f64)
        .sum::<f64>()
        .sqrt() as f32
}

/// The factor the gradients are multiplied by: `min(1, max_norm / (norm + 1e-6))`, in f32 as
/// on the GPU.
pub fn clip_scale(max_norm: f32, norm: f32) -> f32 {
    (max_norm / (norm + CLIP_EPS)).min(1.0)
}

/// Clips `grads` in place to global L2 norm `max_norm` and returns the norm before clipping.
/// The scale is exactly 1 (gradients unchanged) whenever `norm + 1e-6 <= max_norm`. With a
/// non-finite gradient the result is unspecified on the GPU (here the scale becomes 1 for a NaN
/// norm); the trainer stops on the non-finite loss such gradients come from.
pub fn clip_grad_norm(max_norm: f32, grads: &mut [f32]) -> f32 {
    let norm = grad_norm(grads);
    let scale = clip_scale(max_norm, norm);
    for g in grads.iter_mut() {
        *g *= scale;
    }
    norm
}
