//! CPU reference for `shaders/softmax_xent.wgsl`: softmax cross-entropy over negative distances.
use num_traits::Float;

/// For each query row `q` of `distances [queries, way]`, with logits `l = -distances[q]`:
/// `nll_q = -log_softmax(l)[label_q]` (max-subtracted), `correct[q] = 1` when the first argmax of
/// `l` (the first minimum distance) is `label_q`, else 0, and
/// `grad_distances[q, j] = -(softmax(l)_j - onehot(label_q)_j) / queries` (the gradient of the
/// mean NLL with respect to the distances). `stats = [mean nll, mean correct]`.
/// Every label must be below `way`; `way` and `queries` must be at least 1.
#[allow(clippy::too_many_arguments)]
pub fn softmax_xent<T: Float>(
    queries: usize,
    way: usize,
    distances: &[T],
    labels: &[u32],
    grad_distances: &mut [T],
    correct: &mut [T],
    stats: &mut [T],
) {
    assert!(
        queries >= 1 && way >= 1,
        "softmax_xent: needs at least one query and one class"
    );
    assert_eq!(
        distances.len(),
        queries * way,
        "softmax_xent: distances length"
    );
    assert_eq!(labels.len(), queries, "softmax_xent: labels length");
    assert_eq!(
        grad_distances.len(),
        queries * way,
        "softmax_xent: grad_distances length"
    );
    assert_eq!(correct.len(), queries, "softmax_xent: correct length");
    assert_eq!(stats.len(), 2, "softmax_xent: stats length");
    let q_count = T::from(queries).unwrap();
    let mut nll_sum = T::zero();
    let mut correct_sum = T::zero();
    for q in 0..queries {
        let row = &distances[q * way..(q + 1) * way];
        let label = labels[q] as usize;
        assert!(
            label < way,
            "softmax_xent: label {label} is not below way = {way}"
        );
        // First minimum distance = first maximum logit.
        let mut best = 0;
        for j in 1..way {
            if row[j] < row[best] {
                best = j;
            }
        }
        let max_logit = -row[best];
        let mut sum = T::zero();
        for &d in row {
            sum = sum + (-d - max_logit).exp();
        }
        let log_sum = sum.ln();
        // -logp[label] = -((-d[label]) - max_logit - log_sum)
        let nll = -(-row[label] - max_logit - log_sum);
        nll_sum = nll_sum + nll;
        let c = if best == label { T::one() } else { T::zero() };
        correct[q] = c;
        correct_sum = correct_sum + c;
        for j in 0..way {
            let p = (-row[j] - max_logit).exp() / sum;
            let onehot = if j == label { T::one() } else { T::zero() };
            grad_distances[q * way + j] = -(p - onehot) / q_count;
        }
    }
    stats[0] = nll_sum / q_count;
    stats[1] = correct_sum / q_count;
}
