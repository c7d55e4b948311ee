//! CPU reference for `shaders/prototypes.wgsl`: class prototypes (per-class means).
use num_traits::Float;

/// `prototypes[c, k] = mean of support[i, k] over the rows i with labels[i] == c` (summed in
/// row order, then divided by the count), zero for a class without support.
/// support `[labels.len(), dim]`, prototypes `[way, dim]`; every label must be below `way`.
pub fn prototypes<T: Float>(
    way: usize,
    dim: usize,
    support: &[T],
    labels: &[u32],
    prototypes: &mut [T],
) {
    assert_eq!(
        support.len(),
        labels.len() * dim,
        "prototypes: support length"
    );
    assert_eq!(prototypes.len(), way * dim, "prototypes: prototypes length");
    assert!(
        labels.iter().all(|&l| (l as usize) < way),
        "prototypes: a label is not below way = {way}"
    );
    for c in 0..way {
        for k in 0..dim {
            let mut sum = T::zero();
            let mut count = 0u32;
            for (i, &l) in labels.iter().enumerate() {
                if l as usize == c {
                    sum = sum + support[i * dim + k];
                    count += 1;
                }
            }
            prototypes[c * dim + k] = if count == 0 {
                T::zero()
            } else {
                sum / T::from(count).unwrap()
            };
        }
    }
}

/// `grad_support[i, k] = grad_prototypes[labels[i], k] / count(labels[i])`.
pub fn prototypes_backward<T: Float>(
    way: usize,
    dim: usize,
    labels: &[u32],
    grad_prototypes: &[T],
    grad_support: &mut [T],
) {
    assert_eq!(
        grad_prototypes.len(),
        way * dim,
        "prototypes_backward: grad_prototypes length"
    );
    assert_eq!(
        grad_support.len(),
        labels.len() * dim,
        "prototypes_backward: grad_support length"
    );
    assert!(
        labels.iter().all(|&l| (l as usize) < way),
        "prototypes_backward: a label is not below way = {way}"
    );
    for (i, &l) in labels.iter().enumerate() {
        let c = l as usize;
        let count = labels.iter().filter(|&&m| m == l).count();
        for k in 0..dim {
            grad_support[i * dim + k] = grad_prototypes[c * dim + k] / T::from(count).unwrap();
        }
    }
}
