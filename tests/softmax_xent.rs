//! Softmax cross-entropy over negative distances (gradient, per-query correctness, mean loss
//! and accuracy): GPU vs CPU, the CPU gradient against finite differences of the mean NLL, and a
//! hand-checked episode with a tie.
mod common;

use common::*;
use fewshot::cpu;
use fewshot::gpu::Gpu;
use fewshot::Backend;
use rand::seq::SliceRandom;
use rand::Rng;

/// The CPU reference in f32: (grad_distances, correct, stats).
fn reference(
    queries: usize,
    way: usize,
    distances: &[f32],
    labels: &[u32],
) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let mut grad = vec![0.0; queries * way];
    let mut correct = vec![0.0; queries];
    let mut stats = vec![0.0; 2];
    cpu::softmax_xent::softmax_xent(
        queries,
        way,
        distances,
        labels,
        &mut grad,
        &mut correct,
        &mut stats,
    );
    (grad, correct, stats)
}

/// The GPU op with every input and output a view at a non-zero offset, outputs NaN-poisoned
/// with NaN guards on both sides that must survive: (grad_distances, correct, stats).
fn on_gpu(
    gpu: &Gpu,
    queries: usize,
    way: usize,
    distances: &[f32],
    labels: &[u32],
) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let dist_buf = gpu.upload_f32(&[vec![7.0; 3], distances.to_vec()].concat());
    let dist = gpu.view(&dist_buf, 3, distances.len());
    let label_buf = gpu.upload_u32(&[vec![0; 2], labels.to_vec()].concat());
    let label_view = gpu.view(&label_buf, 2, labels.len());
    let grad_buf = poisoned(gpu, queries * way + 2);
    // correct and stats in one buffer, as disjoint views: [guard, correct.., guard, stats.., guard].
    let small = poisoned(gpu, queries + 5);
    let grad = gpu.view(&grad_buf, 1, queries * way);
    let correct = gpu.view(&small, 1, queries);
    let stats = gpu.view(&small, queries + 2, 2);
    gpu.softmax_xent(queries, way, &dist, &label_view, &grad, &correct, &stats);
    let g = gpu.read(&grad_buf);
    let s = gpu.read(&small);
    assert!(
        g[0].is_nan() && g[g.len() - 1].is_nan(),
        "grad_distances written outside its view"
    );
    assert!(
        s[0].is_nan() && s[queries + 1].is_nan() && s[queries + 4].is_nan(),
        "correct/stats written outside their views"
    );
    (
        g[1..g.len() - 1].to_vec(),
        s[1..queries + 1].to_vec(),
        s[queries + 2..queries + 4].to_vec(),
    )
}

#[test]
fn softmax_xent_matches_cpu() {
    let Some(gpu) = gpu() else { return };
    let mut rng = rng(31);
    // (queries, way, distance scale): 1 query, way 1, 1 query per class (Q = way), a 60-way
    // 5-query episode (300 rows: more rows than the 256 threads), 600 rows, and peaked
    // softmaxes (distances up to 100, as with unnormalised embeddings).
    let shapes = [
        (1, 1, 1.0),
        (1, 5, 1.0),
        (5, 1, 1.0),
        (5, 5, 1.0),
        (20, 20, 100.0),
        (37, 7, 3.0),
        (300, 60, 1.0),
        (300, 60, 100.0),
        (600, 5, 10.0),
    ];
    for (queries, way, scale) in shapes {
        let distances: Vec<f32> = (0..queries * way)
            .map(|_| rng.random_range(0.0..scale))
            .collect();
        let labels: Vec<u32> = if queries == way {
            let mut l: Vec<u32> = (0..way as u32).collect();
            l.shuffle(&mut rng);
            l
        } else {
            (0..queries)
                .map(|_| rng.random_range(0..way as u32))
                .collect()
        };
        check(
            gpu,
            queries,
            way,
            &distances,
            &labels,
            &format!("softmax_xent {queries}x{way} scale {scale}"),
        );
    }
    // Integer distances in 0..3: many ties, which both paths must resolve to the first minimum.
    let (queries, way) = (50, 5);
    let distances: Vec<f32> = (0..queries * way)
        .map(|_| rng.random_range(0..3) as f32)
        .collect();
    let labels: Vec<u32> = (0..queries)
        .map(|_| rng.random_range(0..way as u32))
        .collect();
    check(
        gpu,
        queries,
        way,
        &distances,
        &labels,
        "softmax_xent with ties",
    );
}

fn check(gpu: &Gpu, queries: usize, way: usize, distances: &[f32], labels: &[u32], what: &str) {
    let (want_grad, want_correct, want_stats) = reference(queries, way, distances, labels);
    let (grad, correct, stats) = on_gpu(gpu, queries, way, distances, labels);
    assert_close(&format!("{what} grad"), &grad, &want_grad, F32_TOLERANCE);
    assert_eq!(correct, want_correct, "{what}: correct");
    assert_close(
        &format!("{what} loss"),
        &stats[..1],
        &want_stats[..1],
        F32_TOLERANCE,
    );
    // Sums of 0/1 values are exact in f32, and both divide by the same count.
    assert_eq!(stats[1], want_stats[1], "{what}: accuracy");
}

#[test]
fn softmax_xent_backward_matches_finite_differences() {
    let mut rng = rng(32);
    for (queries, way) in [(1, 1), (1, 3), (4, 1), (3, 4), (5, 5), (7, 6)] {
        let distances: Vec<f64> = (0..queries * way)
            .map(|_| rng.random_range(0.0..3.0))
            .collect();
        let labels: Vec<u32> = (0..queries)
            .map(|_| rng.random_range(0..way as u32))
            .collect();
        let run = |d: &[f64]| {
            let mut grad = vec![0.0; queries * way];
            let mut correct = vec![0.0; queries];
            let mut stats = vec![0.0; 2];
            cpu::softmax_xent::softmax_xent(
                queries,
                way,
                d,
                &labels,
                &mut grad,
                &mut correct,
                &mut stats,
            );
            (grad, stats)
        };
        let (grad, _) = run(&distances);
        let numeric = finite_differences(&distances, 1e-6, |d| run(d).1[0]);
        assert_grad_close(
            &format!("softmax_xent {queries}x{way}"),
            &grad,
            &numeric,
            1e-6,
        );
    }
}

/// 3-way, one query per class. Query 0 ties classes 0 and 1 and is labelled 0: the tie goes to
/// the first minimum, so it is right. Query 1 ties classes 0 and 1 and is labelled 1: wrong.
/// Query 2 is clearly right. Accuracy is exactly 2/3; the NLLs and one gradient row are
/// computed by hand.
#[test]
fn softmax_xent_accuracy_with_one_query_per_class() {
    let (queries, way) = (3, 3);
    let distances = [
        1.0, 1.0, 3.0, // label 0
        0.5, 0.5, 2.0, // label 1
        3.0, 2.0, 1.0, // label 2
    ];
    let labels = [0u32, 1, 2];
    let e = |x: f64| x.exp();
    let nll = [
        (2.0 + e(-2.0)).ln(),
        (2.0 + e(-1.5)).ln(),
        (1.0 + e(-1.0) + e(-2.0)).ln(),
    ];
    let want_loss = nll.iter().sum::<f64>() / 3.0;
    // Row 1: softmax = [1, 1, e^-1.5] / (2 + e^-1.5); grad = -(p - onehot(1)) / 3.
    let z = 2.0 + e(-1.5);
    let want_row1 = [
        -(1.0 / z) / 3.0,
        -(1.0 / z - 1.0) / 3.0,
        -(e(-1.5) / z) / 3.0,
    ];

    let cpu_result = reference(queries, way, &distances, &labels);
    let mut results = vec![("cpu", cpu_result)];
    if let Some(gpu) = gpu() {
        results.push(("gpu", on_gpu(gpu, queries, way, &distances, &labels)));
    }
    for (path, (grad, correct, stats)) in results {
        assert_eq!(correct, [1.0, 0.0, 1.0], "{path}: correct");
        assert_eq!(stats[1], 2.0f32 / 3.0, "{path}: accuracy");
        assert!(
            (stats[0] as f64 - want_loss).abs() < 1e-6,
            "{path}: loss {} vs {want_loss}",
            stats[0]
        );
        for (j, want) in want_row1.iter().enumerate() {
            assert!(
                (grad[3 + j] as f64 - want).abs() < 1e-7,
                "{path}: grad[1, {j}] {} vs {want}",
                grad[3 + j]
            );
        }
        // Each row's gradient sums to zero (softmax and one-hot both sum to one).
        for q in 0..queries {
            let s: f32 = grad[q * way..(q + 1) * way].iter().sum();
            assert!(s.abs() < 1e-7, "{path}: row {q} gradient sums to {s}");
        }
    }
}

/// An out-of-range label is invalid input: the GPU reports it as a NaN loss rather than a
/// plausible number (the CPU reference panics).
#[test]
fn softmax_xent_invalid_label_gives_nan_loss() {
    let Some(gpu) = gpu() else { return };
    let (_, correct, stats) = on_gpu(gpu, 2, 3, &[1.0, 2.0, 3.0, 3.0, 2.0, 1.0], &[0, 3]);
    assert!(stats[0].is_nan(), "loss {} with an invalid label", stats[0]);
    assert_eq!(correct, [1.0, 0.0]);
    assert_eq!(stats[1], 0.5);
}
