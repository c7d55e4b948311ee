//! Class prototypes (per-class means of the support embeddings), forward and backward: GPU vs
//! CPU, the CPU backward against finite differences, and hand-checked empty classes.
mod common;

use common::*;
use fewshot::cpu;
use fewshot::gpu::{Gpu, GpuTensor};
use fewshot::Backend;
use rand::seq::SliceRandom;
use rand::Rng;
use rand_chacha::ChaCha8Rng;

/// `data` uploaded at element `pad` of a larger buffer, as a view.
fn view_of(gpu: &Gpu, data: &[f32], pad: usize) -> GpuTensor {
    let buf = gpu.upload_f32(&[vec![7.0; pad], data.to_vec()].concat());
    gpu.view(&buf, pad, data.len())
}

fn labels_view(gpu: &Gpu, labels: &[u32], pad: usize) -> GpuTensor {
    let buf = gpu.upload_u32(&[vec![0; pad], labels.to_vec()].concat());
    gpu.view(&buf, pad, labels.len())
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

/// (way, dim, labels): one support row; 5-way 1-shot at dim 37; 60-way 5-shot (300 rows) at
/// dim 64, shuffled; 20 classes with 40 random labels at dim 1600 (uneven counts, maybe
/// empty classes); 3 classes, 7 random labels, dim 300.
fn cases(rng: &mut ChaCha8Rng) -> Vec<(usize, usize, Vec<u32>)> {
    let mut shuffled = |way: u32, shot: usize| {
        let mut l: Vec<u32> = (0..way)
            .flat_map(|c| std::iter::repeat_n(c, shot))
            .collect();
        l.shuffle(rng);
        l
    };
    let one_shot = shuffled(5, 1);
    let five_shot = shuffled(60, 5);
    let uneven: Vec<u32> = (0..40).map(|_| rng.random_range(0..20)).collect();
    let small: Vec<u32> = (0..7).map(|_| rng.random_range(0..3)).collect();
    vec![
        (1, 1, vec![0]),
        (5, 37, one_shot),
        (60, 64, five_shot),
        (20, 1600, uneven),
        (3, 300, small),
    ]
}

#[test]
fn prototypes_matches_cpu() {
    let Some(gpu) = gpu() else { return };
    let mut rng = rng(21);
    for (way, dim, labels) in cases(&mut rng) {
        let support = random(&mut rng, labels.len() * dim);
        let mut want = vec![0.0; way * dim];
        cpu::prototypes::prototypes(way, dim, &support, &labels, &mut want);

        let (whole, out) = output(gpu, way * dim);
        gpu.prototypes(
            way,
            dim,
            &view_of(gpu, &support, 3),
            &labels_view(gpu, &labels, 2),
            &out,
        );
        let what = format!("prototypes {way}-way {} rows x {dim}", labels.len());
        assert_close(
            &what,
            &read_inside(gpu, &whole, &what),
            &want,
            F32_TOLERANCE,
        );
    }
}

#[test]
fn prototypes_backward_matches_cpu() {
    let Some(gpu) = gpu() else { return };
    let mut rng = rng(22);
    for (way, dim, labels) in cases(&mut rng) {
        let grad_proto = random(&mut rng, way * dim);
        let mut want = vec![0.0; labels.len() * dim];
        cpu::prototypes::prototypes_backward(way, dim, &labels, &grad_proto, &mut want);

        let (whole, out) = output(gpu, labels.len() * dim);
        gpu.prototypes_backward(
            way,
            dim,
            &labels_view(gpu, &labels, 1),
            &view_of(gpu, &grad_proto, 4),
            &out,
        );
        let what = format!(
            "prototypes_backward {way}-way {} rows x {dim}",
            labels.len()
        );
        assert_close(
            &what,
            &read_inside(gpu, &whole, &what),
            &want,
            F32_TOLERANCE,
        );
    }
}

#[test]
fn prototypes_backward_matches_finite_differences() {
    let mut rng = rng(23);
    // Class 3 has no support (its weights must not matter), classes have 1, 2 and 3 rows.
    for (way, dim, labels) in [
        (1, 1, vec![0u32]),
        (4, 5, vec![2, 0, 2, 1, 2, 0]),
        (3, 37, vec![1, 0, 2, 2]),
    ] {
        let support = random_f64(&mut rng, labels.len() * dim);
        let w = random_f64(&mut rng, way * dim);
        let mut grad = vec![0.0; labels.len() * dim];
        cpu::prototypes::prototypes_backward(way, dim, &labels, &w, &mut grad);
        let numeric = finite_differences(&support, 1e-6, |s| {
            let mut out = vec![0.0; way * dim];
            cpu::prototypes::prototypes(way, dim, s, &labels, &mut out);
            dot(&w, &out)
        });
        let what = format!("prototypes {way}-way {} rows x {dim}", labels.len());
        assert_grad_close(&what, &grad, &numeric, 1e-6);
    }
}

/// 4-way, labels [0, 2, 2, 0]: classes 1 and 3 (the last one) have no support and get exactly
/// zero; classes 0 and 2 get hand-computed means; the backward splits each class gradient
/// evenly over its two rows.
#[test]
fn prototypes_of_class_without_support_is_zero() {
    let (way, dim) = (4, 3);
    let labels = [0u32, 2, 2, 0];
    let support = [
        1.0, 2.0, -4.0, //
        10.0, 0.5, 3.0, //
        20.0, 1.5, 5.0, //
        3.0, 6.0, 0.0,
    ];
    let want = [
        2.0, 4.0, -2.0, //
        0.0, 0.0, 0.0, //
        15.0, 1.0, 4.0, //
        0.0, 0.0, 0.0,
    ];
    let grad_proto = [
        1.0, -2.0, 4.0, //
        100.0, 100.0, 100.0, //
        0.5, 3.0, -1.0, //
        100.0, 100.0, 100.0,
    ];
    let want_grad = [
        0.5, -1.0, 2.0, //
        0.25, 1.5, -0.5, //
        0.25, 1.5, -0.5, //
        0.5, -1.0, 2.0,
    ];
    let mut got = [f32::NAN; 12];
    cpu::prototypes::prototypes(way, dim, &support, &labels, &mut got);
    assert_eq!(got, want, "cpu prototypes");
    let mut got_grad = [f32::NAN; 12];
    cpu::prototypes::prototypes_backward(way, dim, &labels, &grad_proto, &mut got_grad);
    assert_eq!(got_grad, want_grad, "cpu prototypes_backward");

    let Some(gpu) = gpu() else { return };
    let out = poisoned(gpu, way * dim);
    let label_buf = gpu.upload_u32(&labels);
    gpu.prototypes(way, dim, &gpu.upload_f32(&support), &label_buf, &out);
    assert_eq!(gpu.read(&out), want, "gpu prototypes");
    let grad = poisoned(gpu, labels.len() * dim);
    gpu.prototypes_backward(way, dim, &label_buf, &gpu.upload_f32(&grad_proto), &grad);
    assert_eq!(gpu.read(&grad), want_grad, "gpu prototypes_backward");
}
