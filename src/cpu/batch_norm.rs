//! CPU reference for `shaders/batch_norm.wgsl` (batch norm with optional fused ReLU, and ReLU).
//!
//! Data is `[batch, channels, spatial]`; statistics are per channel over `batch * spatial`
//! values. Plain loops, generic over the float type so the tests can run them in f64.
use crate::ops::{BatchNorm, NormShape};
use num_traits::Float;

/// Index of element `k` of image `b`, channel `c`.
fn at(s: &NormShape, b: usize, c: usize, k: usize) -> usize {
    (b * s.channels + c) * s.spatial + k
}

fn check_lens(s: &NormShape, what: &str, data: &[usize], per_channel: &[usize]) {
    for &l in data {
        assert_eq!(l, s.len(), "{what}: data length");
    }
    for &l in per_channel {
        assert_eq!(l, s.channels, "{what}: per-channel length");
    }
}

/// Training-mode forward: batch mean and biased variance per channel (two passes: mean first,
/// then the sum of squared deviations), `saved_inv_std = 1 / sqrt(var + eps)`,
/// `y = gamma * (x - mean) * inv_std + beta` (then ReLU when `p.relu`), and the running
/// statistics updated with the unbiased variance (`var * n / (n - 1)`, `var` itself when n = 1).
#[allow(clippy::too_many_arguments)]
pub fn batch_norm_train<T: Float>(
    s: &NormShape,
    p: &BatchNorm,
    input: &[T],
    gamma: &[T],
    beta: &[T],
    output: &mut [T],
    saved_mean: &mut [T],
    saved_inv_std: &mut [T],
    running_mean: &mut [T],
    running_var: &mut [T],
) {
    check_lens(
        s,
        "batch_norm_train",
        &[input.len(), output.len()],
        &[
            gamma.len(),
            beta.len(),
            saved_mean.len(),
            saved_inv_std.len(),
            running_mean.len(),
            running_var.len(),
        ],
    );
    let n = s.batch * s.spatial;
    let nt = T::from(n).unwrap();
    let eps = T::from(p.eps).unwrap();
    let m = T::from(p.momentum).unwrap();
    for c in 0..s.channels {
        let mut sum = T::zero();
        for b in 0..s.batch {
            for k in 0..s.spatial {
                sum = sum + input[at(s, b, c, k)];
            }
        }
        let mean = sum / nt;
        let mut sq = T::zero();
        for b in 0..s.batch {
            for k in 0..s.spatial {
                let d = input[at(s, b, c, k)] - mean;
                sq = sq + d * d;
            }
        }
        let var = sq / nt;
        let inv_std = T::one() / (var + eps).sqrt();
        saved_mean[c] = mean;
        saved_inv_std[c] = inv_std;
        let unbiased = if n > 1 {
            var * nt / T::from(n - 1).unwrap()
        } else {
            var
        };
        running_mean[c] = (T::one() - m) * running_mean[c] + m * mean;
        running_var[c] = (T::one() - m) * running_var[c] + m * unbiased;
        for b in 0..s.batch {
            for k in 0..s.spatial {
                let i = at(s, b, c, k);
                let y = gamma[c] * (input[i] - mean) * inv_std + beta[c];
                output[i] = if p.relu { relu(y) } else { y };
            }
        }
    }
}

/// Evaluation mode: `y = gamma * (x - running_mean) / sqrt(running_var + eps) + beta` (+ReLU).
#[allow(clippy::too_many_arguments)]
pub fn batch_norm_eval<T: Float>(
    s: &NormShape,
    p: &BatchNorm,
    input: &[T],
    gamma: &[T],
    beta: &[T],
    running_mean: &[T],
    running_var: &[T],
    output: &mut [T],
) {
    check_lens(
        s,
        "batch_norm_eval",
        &[input.len(), output.len()],
        &[
            gamma.len(),
            beta.len(),
            running_mean.len(),
            running_var.len(),
        ],
    );
    let eps = T::from(p.eps).unwrap();
    for b in 0..s.batch {
        for c in 0..s.channels {
            let std = (running_var[c] + eps).sqrt();
            for k in 0..s.spatial {
                let i = at(s, b, c, k);
                let y = gamma[c] * (input[i] - running_mean[c]) / std + beta[c];
                output[i] = if p.relu { relu(y) } else { y };
            }
        }
    }
}

/// Backward of [`batch_norm_train`]. With `g = grad_output * (output > 0)` when `p.relu`
/// (else `grad_output`) and `xhat = (x - mean) * inv_std`:
/// `grad_beta = sum g`, `grad_gamma = sum g * xhat`,
/// `grad_input = gamma * inv_std / n * (n * g - sum g - xhat * sum(g * xhat))`.
#[allow(clippy::too_many_arguments)]
pub fn batch_norm_backward<T: Float>(
    s: &NormShape,
    p: &BatchNorm,
    input: &[T],
    output: &[T],
    grad_output: &[T],
    gamma: &[T],
    saved_mean: &[T],
    saved_inv_std: &[T],
    grad_input: &mut [T],
    grad_gamma: &mut [T],
    grad_beta: &mut [T],
) {
    check_lens(
        s,
        "batch_norm_backward",
        &[
            input.len(),
            output.len(),
            grad_output.len(),
            grad_input.len(),
        ],
        &[
            gamma.len(),
            saved_mean.len(),
            saved_inv_std.len(),
            grad_gamma.len(),
            grad_beta.len(),
        ],
    );
    let nt = T::from(s.batch * s.spatial).unwrap();
    let g_at = |i: usize| {
        if !p.relu || output[i] > T::zero() {
            grad_output[i]
        } else {
            T::zero()
        }
    };
    for c in 0..s.channels {
        let (mean, inv_std) = (saved_mean[c], saved_inv_std[c]);
        let mut sum_g = T::zero();
        let mut sum_gx = T::zero();
        for b in 0..s.batch {
            for k in 0..s.spatial {
                let i = at(s, b, c, k);
                let g = g_at(i);
                sum_g = sum_g + g;
                sum_gx = sum_gx + g * (input[i] - mean) * inv_std;
            }
        }
        grad_beta[c] = sum_g;
        grad_gamma[c] = sum_gx;
        let scale = gamma[c] * inv_std / nt;
        for b in 0..s.batch {
            for k in 0..s.spatial {
                let i = at(s, b, c, k);
                let xhat = (input[i] - mean) * inv_std;
                grad_input[i] = scale * (nt * g_at(i) - sum_g - xhat * sum_gx);
            }
        }
    }
}

fn relu<T: Float>(x: T) -> T {
    if x > T::zero() {
        x
    } else {
        T::zero()
    }
}

/// `output = max(input, 0)` (zero for NaN and -0).
pub fn relu_forward<T: Float>(input: &[T], output: &mut [T]) {
    assert_eq!(input.len(), output.len(), "relu_forward: length mismatch");
    for (y, &x) in output.iter_mut().zip(input) {
        *y = relu(x);
    }
}

/// `grad_input = grad_output * (output > 0)`.
pub fn relu_backward<T: Float>(output: &[T], grad_output: &[T], grad_input: &mut [T]) {
    assert_eq!(
        output.len(),
        grad_output.len(),
        "relu_backward: length mismatch"
    );
    assert_eq!(
        output.len(),
        grad_input.len(),
        "relu_backward: length mismatch"
    );
    for ((dx, &y), &dy) in grad_input.iter_mut().zip(output).zip(grad_output) {
        *dx = if y > T::zero() { dy } else { T::zero() };
    }
}
