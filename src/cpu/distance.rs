//! CPU reference for `shaders/distance.wgsl`: pairwise squared Euclidean distance.
use num_traits::Float;

/// `out[i * rows_b + j] = sum_k (a[i, k] - b[j, k])^2`, a `[rows_a, dim]`, b `[rows_b, dim]`.
/// An explicit sum of squared differences (never `|a|^2 + |b|^2 - 2 a.b`, which cancels),
/// summed over `k` in increasing order like the kernel.
pub fn pairwise_sq_dist<T: Float>(
    rows_a: usize,
    rows_b: usize,
    dim: usize,
    a: &[T],
    b: &[T],
    out: &mut [T],
) {
    assert_eq!(a.len(), rows_a * dim, "pairwise_sq_dist: a length");
    assert_eq!(b.len(), rows_b * dim, "pairwise_sq_dist: b length");
    assert_eq!(out.len(), rows_a * rows_b, "pairwise_sq_dist: out length");
    for i in 0..rows_a {
        for j in 0..rows_b {
            let mut sum = T::zero();
            for k in 0..dim {
                let d = a[i * dim + k] - b[j * dim + k];
                sum = sum + d * d;
            }
            out[i * rows_b + j] = sum;
        }
    }
}

/// `grad_a[i, k] = sum_j 2 g[i, j] (a[i, k] - b[j, k])` (summed over `j` in order) and
/// `grad_b[j, k] = -sum_i 2 g[i, j] (a[i, k] - b[j, k])` (summed over `i` in order).
#[allow(clippy::too_many_arguments)]
pub fn pairwise_sq_dist_backward<T: Float>(
    rows_a: usize,
    rows_b: usize,
    dim: usize,
    a: &[T],
    b: &[T],
    grad_out: &[T],
    grad_a: &mut [T],
    grad_b: &mut [T],
) {
    assert_eq!(a.len(), rows_a * dim, "pairwise_sq_dist_backward: a length");
    assert_eq!(b.len(), rows_b * dim, "pairwise_sq_dist_backward: b length");
    assert_eq!(
        grad_out.len(),
        rows_a * rows_b,
        "pairwise_sq_dist_backward: grad_out length"
    );
    assert_eq!(
        grad_a.len(),
        rows_a * dim,
        "pairwise_sq_dist_backward: grad_a length"
    );
    assert_eq!(
        grad_b.len(),
        rows_b * dim,
        "pairwise_sq_dist_backward: grad_b length"
    );
    let two = T::from(2.0).unwrap();
    for i in 0..rows_a {
        for k in 0..dim {
            let mut sum = T::zero();
            for j in 0..rows_b {
                sum = sum + two * grad_out[i * rows_b + j] * (a[i * dim + k] - b[j * dim + k]);
            }
            grad_a[i * dim + k] = sum;
        }
    }
    for j in 0..rows_b {
        for k in 0..dim {
            let mut sum = T::zero();
            for i in 0..rows_a {
                sum = sum + two * grad_out[i * rows_b + j] * (a[i * dim + k] - b[j * dim + k]);
            }
            grad_b[j * dim + k] = -sum;
        }
    }
}
