//! Pairwise squared Euclidean distance (forward and backward): GPU vs CPU, and the CPU
//! backward against finite differences.
mod common;

use common::*;
use fewshot::cpu;
use fewshot::gpu::{Gpu, GpuTensor};
use fewshot::Backend;

/// (rows_a, rows_b, dim): a single row on either side, dims that are not multiples of 4 or 64,
/// 60 prototypes x 300 queries x 64 dims (a 60-way episode), and a ResNet-sized 1600-dim embedding.
const SHAPES: [(usize, usize, usize); 7] = [
    (1, 1, 1),
    (1, 5, 37),
    (7, 1, 64),
    (13, 17, 37),
    (300, 60, 64),
    (75, 20, 1600),
    (3, 2, 1601),
];

/// `data` uploaded at element `pad` of a larger buffer, as a view.
fn view_of(gpu: &Gpu, data: &[f32], pad: usize) -> GpuTensor {
    let buf = gpu.upload_f32(&[vec![7.0; pad], data.to_vec()].concat());
    gpu.view(&buf, pad, data.len())
}

/// A NaN-poisoned output of `len` elements with one guard element on each side: (whole, view).
fn output(gpu: &Gpu, len: usize) -> (GpuTensor, GpuTensor) {
    let whole = poisoned(gpu, len + 2);
    let view = gpu.view(&whole, 1, len);
    (whole, view)
}

/// The view's contents, checking the guards around it are still NaN.
fn read_inside(gpu: &Gpu, whole: &GpuTensor, what: &str) -> Vec<f32> {
    let all = gpu.read(whole);
    assert!(
        all[0].is_nan() && all[all.len() - 1].is_nan(),
        "{what}: wrote outside its view"
    );
    all[1..all.len() - 1].to_vec()
}

#[test]
fn pairwise_sq_dist_matches_cpu() {
    let Some(gpu) = gpu() else { return };
    let mut rng = rng(11);
    for (rows_a, rows_b, dim) in SHAPES {
        let a = random(&mut rng, rows_a * dim);
        let b = random(&mut rng, rows_b * dim);
        let mut want = vec![0.0; rows_a * rows_b];
        cpu::distance::pairwise_sq_dist(rows_a, rows_b, dim, &a, &b, &mut want);

        let (whole, out) = output(gpu, rows_a * rows_b);
        gpu.pairwise_sq_dist(
            rows_a,
            rows_b,
            dim,
            &view_of(gpu, &a, 3),
            &view_of(gpu, &b, 5),
            &out,
        );
        let what = format!("pairwise_sq_dist {rows_a}x{rows_b}x{dim}");
        assert_close(
            &what,
            &read_inside(gpu, &whole, &what),
            &want,
            F32_TOLERANCE,
        );
    }
}

/// Points far from the origin and close to each other: `|a|^2 + |b|^2 - 2ab` would lose every
/// significant digit in f32 (|a|^2 ~ 6e7, the distance ~ 6e-3); the explicit sum of squared
/// differences keeps them. Compared against the exact f64 value.
#[test]
fn pairwise_sq_dist_does_not_cancel_far_from_the_origin() {
    let Some(gpu) = gpu() else { return };
    let mut rng = rng(12);
    let (rows_a, rows_b, dim) = (4, 3, 64);
    let delta = random(&mut rng, rows_a * dim);
    let a: Vec<f32> = delta.iter().map(|d| 1000.0 + 0.01 * d).collect();
    let b = vec![1000.0f32; rows_b * dim];
    let want: Vec<f32> = (0..rows_a * rows_b)
        .map(|t| {
            let i = t / rows_b;
            (0..dim)
                .map(|k| (a[i * dim + k] as f64 - 1000.0).powi(2))
                .sum::<f64>() as f32
        })
        .collect();
    let mut cpu_out = vec![0.0; rows_a * rows_b];
    cpu::distance::pairwise_sq_dist(rows_a, rows_b, dim, &a, &b, &mut cpu_out);
    assert_close(
        "pairwise_sq_dist far from the origin (cpu)",
        &cpu_out,
        &want,
        F32_TOLERANCE,
    );
    let out = poisoned(gpu, rows_a * rows_b);
    gpu.pairwise_sq_dist(
        rows_a,
        rows_b,
        dim,
        &gpu.upload_f32(&a),
        &gpu.upload_f32(&b),
        &out,
    );
    assert_close(
        "pairwise_sq_dist far from the origin (gpu)",
        &gpu.read(&out),
        &want,
        F32_TOLERANCE,
    );
}

#[test]
fn pairwise_sq_dist_backward_matches_cpu() {
    let Some(gpu) = gpu() else { return };
    let mut rng = rng(13);
    for (rows_a, rows_b, dim) in SHAPES {
        let a = random(&mut rng, rows_a * dim);
        let b = random(&mut rng, rows_b * dim);
        let g = random(&mut rng, rows_a * rows_b);
        let mut want_a = vec![0.0; rows_a * dim];
        let mut want_b = vec![0.0; rows_b * dim];
        cpu::distance::pairwise_sq_dist_backward(
            rows_a,
            rows_b,
            dim,
            &a,
            &b,
            &g,
            &mut want_a,
            &mut want_b,
        );

        let (whole_a, grad_a) = output(gpu, rows_a * dim);
        let (whole_b, grad_b) = output(gpu, rows_b * dim);
        gpu.pairwise_sq_dist_backward(
            rows_a,
            rows_b,
            dim,
            &view_of(gpu, &a, 1),
            &view_of(gpu, &b, 2),
            &view_of(gpu, &g, 3),
            &grad_a,
            &grad_b,
        );
        let what = format!("pairwise_sq_dist_backward {rows_a}x{rows_b}x{dim}");
        assert_close(
            &format!("{what} grad_a"),
            &read_inside(gpu, &whole_a, &what),
            &want_a,
            F32_TOLERANCE,
        );
        assert_close(
            &format!("{what} grad_b"),
            &read_inside(gpu, &whole_b, &what),
            &want_b,
            F32_TOLERANCE,
        );
    }
}

/// Both gradients written into disjoint views of one buffer (as in a flat gradient buffer).
#[test]
fn pairwise_sq_dist_backward_into_one_buffer() {
    let Some(gpu) = gpu() else { return };
    let mut rng = rng(14);
    let (rows_a, rows_b, dim) = (9, 4, 37);
    let a = random(&mut rng, rows_a * dim);
    let b = random(&mut rng, rows_b * dim);
    let g = random(&mut rng, rows_a * rows_b);
    let mut want_a = vec![0.0; rows_a * dim];
    let mut want_b = vec![0.0; rows_b * dim];
    cpu::distance::pairwise_sq_dist_backward(
        rows_a,
        rows_b,
        dim,
        &a,
        &b,
        &g,
        &mut want_a,
        &mut want_b,
    );
    let grads = poisoned(gpu, (rows_a + rows_b) * dim);
    let grad_b = gpu.view(&grads, 0, rows_b * dim);
    let grad_a = gpu.view(&grads, rows_b * dim, rows_a * dim);
    gpu.pairwise_sq_dist_backward(
        rows_a,
        rows_b,
        dim,
        &gpu.upload_f32(&a),
        &gpu.upload_f32(&b),
        &gpu.upload_f32(&g),
        &grad_a,
        &grad_b,
    );
    let all = gpu.read(&grads);
    assert_close(
        "one-buffer grad_b",
        &all[..rows_b * dim],
        &want_b,
        F32_TOLERANCE,
    );
    assert_close(
        "one-buffer grad_a",
        &all[rows_b * dim..],
        &want_a,
        F32_TOLERANCE,
    );
}

#[test]
fn pairwise_sq_dist_backward_matches_finite_differences() {
    let mut rng = rng(15);
    for (rows_a, rows_b, dim) in [(1, 1, 1), (3, 4, 5), (2, 3, 37), (5, 1, 6)] {
        let a = random_f64(&mut rng, rows_a * dim);
        let b = random_f64(&mut rng, rows_b * dim);
        let w = random_f64(&mut rng, rows_a * rows_b);
        let forward = |a: &[f64], b: &[f64]| {
            let mut out = vec![0.0; rows_a * rows_b];
            cpu::distance::pairwise_sq_dist(rows_a, rows_b, dim, a, b, &mut out);
            dot(&w, &out)
        };
        let mut grad_a = vec![0.0; rows_a * dim];
        let mut grad_b = vec![0.0; rows_b * dim];
        cpu::distance::pairwise_sq_dist_backward(
            rows_a,
            rows_b,
            dim,
            &a,
            &b,
            &w,
            &mut grad_a,
            &mut grad_b,
        );
        let num_a = finite_differences(&a, 1e-6, |x| forward(x, &b));
        let num_b = finite_differences(&b, 1e-6, |x| forward(&a, x));
        let what = format!("pairwise_sq_dist {rows_a}x{rows_b}x{dim}");
        assert_grad_close(&format!("{what} grad_a"), &grad_a, &num_a, 1e-6);
        assert_grad_close(&format!("{what} grad_b"), &grad_b, &num_b, 1e-6);
    }
}
