//! CPU reference for `shaders/adam.wgsl`.
use crate::ops::AdamStep;

/// One Adam step over the flat buffers, in place (see [`AdamStep`]):
/// `g = grad_scale grads[i]; m = b1 m + (1-b1) g; v = b2 v + (1-b2) g^2;`
/// `params -= lr (m / bc1) / (sqrt(v / bc2) + eps)`, with the bias corrections computed once
/// on the host ([`AdamStep::bias_correction1`], [`AdamStep::bias_correction2`]) as the GPU path does.
pub fn adam(p: &AdamStep, params: &mut [f32], grads: &[f32], m: &mut [f32], v: &mut [f32]) {
    let n = params.len();
    assert_eq!(grads.len(), n, "adam: grads length");
    assert_eq!(m.len(), n, "adam: m length");
    assert_eq!(v.len(), n, "adam: v length");
    let (bc1, bc2) = (p.bias_correction1(), p.bias_correction2());
    let (b1, b2) = (p.beta1, p.beta2);
    for i in 0..n {
        let g = grads[i] * p.grad_scale;
        let mi = b1 * m[i] + (1.0 - b1) * g;
        let vi = b2 * v[i] + (1.0 - b2) * (g * g);
        m[i] = mi;
        v[i] = vi;
        params[i] -= p.lr * (mi / bc1) / ((vi / bc2).sqrt() + p.eps);
    }
}
