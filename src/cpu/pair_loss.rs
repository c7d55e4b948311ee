//! CPU reference for `shaders/pair_loss.wgsl` (contrastive loss and the Koch et al. head).
//!
//! Both losses average over pairs; `stats = [loss, accuracy]`. Gradients are of that mean loss.
//! Every output element is written (gradients are overwritten, never accumulated).
use num_traits::Float;

/// The constant added under the square root of the contrastive distance (keeps `d > 0`).
const DIST_EPS: f64 = 1e-12;

#[allow(clippy::too_many_arguments)]
fn check_lengths<T>(
    pairs: usize,
    dim: usize,
    left: &[T],
    right: &[T],
    same: &[T],
    grad_left: &[T],
    grad_right: &[T],
    stats: &[T],
) {
    let n = pairs * dim;
    assert_eq!(left.len(), n, "pair loss: left length");
    assert_eq!(right.len(), n, "pair loss: right length");
    assert_eq!(same.len(), pairs, "pair loss: same length");
    assert_eq!(grad_left.len(), n, "pair loss: grad_left length");
    assert_eq!(grad_right.len(), n, "pair loss: grad_right length");
    assert_eq!(stats.len(), 2, "pair loss: stats length");
}

/// `sign(x)` with `sign(0) = 0` (`Float::signum` gives 1 for +0).
fn sign<T: Float>(x: T) -> T {
    if x > T::zero() {
        T::one()
    } else if x < T::zero() {
        -T::one()
    } else {
        T::zero()
    }
}

/// Hadsell, Chopra & LeCun (2006): `d_i = sqrt(|l_i - r_i|^2 + 1e-12)`,
/// `loss = mean_i 0.5 (same_i d_i^2 + (1 - same_i) max(0, margin - d_i)^2)`,
/// `stats = [loss, mean_i [(d_i < margin / 2) == same_i]]`, `grad_right = -grad_left`.
#[allow(clippy::too_many_arguments)]
pub fn contrastive_loss<T: Float>(
    pairs: usize,
    dim: usize,
    margin: f32,
    left: &[T],
    right: &[T],
    same: &[T],
    grad_left: &mut [T],
    grad_right: &mut [T],
    stats: &mut [T],
) {
    check_lengths(pairs, dim, left, right, same, grad_left, grad_right, stats);
    let margin = T::from(margin).unwrap();
    let half = T::from(0.5).unwrap();
    let eps = T::from(DIST_EPS).unwrap();
    let n = T::from(pairs.max(1)).unwrap();
    let mut loss = T::zero();
    let mut correct = T::zero();
    for (i, &s) in same.iter().enumerate() {
        let row = i * dim..(i + 1) * dim;
        let (l, r) = (&left[row.clone()], &right[row.clone()]);
        let sq = l
            .iter()
            .zip(r)
            .fold(T::zero(), |acc, (&a, &b)| acc + (a - b) * (a - b));
        let d = (sq + eps).sqrt();
        let hinge = (margin - d).max(T::zero());
        loss = loss + half * (s * d * d + (T::one() - s) * hinge * hinge);
        if (d < margin * half) == (s > half) {
            correct = correct + T::one();
        }
        // d(0.5 d^2)/dl = l - r;  d(0.5 max(0, m - d)^2)/dl = -max(0, m - d) (l - r) / d.
        let coef = (s - (T::one() - s) * hinge / d) / n;
        for ((k, &a), &b) in row.zip(l).zip(r) {
            let g = coef * (a - b);
            grad_left[k] = g;
            grad_right[k] = -g;
        }
    }
    stats[0] = loss / n;
    stats[1] = correct / n;
}

/// Koch, Zemel & Salakhutdinov (2015) head: `z_i = sum_j alpha_j |l_ij - r_ij| + bias[0]`,
/// `loss = mean_i BCE-with-logits(z_i, same_i)` (computed stably),
/// `stats = [loss, mean_i [(z_i > 0) == same_i]]`. With `dz_i = (sigmoid(z_i) - same_i) / pairs`:
/// `grad_alpha_j = sum_i dz_i |l_ij - r_ij|`, `grad_bias = sum_i dz_i`,
/// `grad_left_ij = dz_i alpha_j sign(l_ij - r_ij)` (`sign(0) = 0`), `grad_right = -grad_left`.
#[allow(clippy::too_many_arguments)]
pub fn koch_loss<T: Float>(
    pairs: usize,
    dim: usize,
    left: &[T],
    right: &[T],
    same: &[T],
    alpha: &[T],
    bias: &[T],
    grad_left: &mut [T],
    grad_right: &mut [T],
    grad_alpha: &mut [T],
    grad_bias: &mut [T],
    stats: &mut [T],
) {
    check_lengths(pairs, dim, left, right, same, grad_left, grad_right, stats);
    assert_eq!(alpha.len(), dim, "koch loss: alpha length");
    assert_eq!(bias.len(), 1, "koch loss: bias length");
    assert_eq!(grad_alpha.len(), dim, "koch loss: grad_alpha length");
    assert_eq!(grad_bias.len(), 1, "koch loss: grad_bias length");
    let half = T::from(0.5).unwrap();
    let n = T::from(pairs.max(1)).unwrap();
    grad_alpha.iter_mut().for_each(|g| *g = T::zero());
    let mut gbias = T::zero();
    let mut loss = T::zero();
    let mut correct = T::zero();
    for (i, &y) in same.iter().enumerate() {
        let row = i * dim..(i + 1) * dim;
        let (l, r) = (&left[row.clone()], &right[row.clone()]);
        let z = l
            .iter()
            .zip(r)
            .zip(alpha)
            .fold(bias[0], |acc, ((&a, &b), &w)| acc + w * (a - b).abs());
        // max(z, 0) - z y + log(1 + exp(-|z|)): no overflow for any z.
        loss = loss + z.max(T::zero()) - z * y + (-z.abs()).exp().ln_1p();
        if (z > T::zero()) == (y > half) {
            correct = correct + T::one();
        }
        let sigmoid = if z >= T::zero() {
            T::one() / (T::one() + (-z).exp())
        } else {
            let e = z.exp();
            e / (T::one() + e)
        };
        let dz = (sigmoid - y) / n;
        gbias = gbias + dz;
        for (j, ((k, &a), &b)) in row.zip(l).zip(r).enumerate() {
            let diff = a - b;
            grad_alpha[j] = grad_alpha[j] + dz * diff.abs();
            let g = dz * alpha[j] * sign(diff);
            grad_left[k] = g;
            grad_right[k] = -g;
        }
    }
    grad_bias[0] = gbias;
    stats[0] = loss / n;
    stats[1] = correct / n;
}
