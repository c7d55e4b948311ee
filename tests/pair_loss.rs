//! Siamese pair losses (contrastive, Koch et al. head): GPU vs CPU, and the CPU reference's
//! backward against finite differences.
mod common;

use common::*;
use fewshot::cpu;
use fewshot::Backend;
use rand::Rng;
use rand_chacha::ChaCha8Rng;

/// (pairs, dim) for the GPU tests: batch 1, a dim that is not a multiple of the 64-thread
/// per-pair workgroup, an episode-sized 128 x 64, more pairs than the 256-thread reduction
/// workgroup with dim > 64.
const SHAPES: [(usize, usize); 5] = [(1, 1), (1, 37), (9, 37), (128, 64), (300, 130)];

/// Pairs at varied distances: `right = left + scale_i * noise` with `scale_i` in [0.05, 1.3],
/// so `d_i` is spread around `sqrt(dim / 3)`. The first `identical` pairs have `right = left`
/// (d = 0), with `same` alternating 1, 0 there; the rest get random labels.
fn make_pairs(
    rng: &mut ChaCha8Rng,
    pairs: usize,
    dim: usize,
    identical: usize,
) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let left = random(rng, pairs * dim);
    let mut right = left.clone();
    let mut same = vec![0.0; pairs];
    for i in 0..pairs {
        if i < identical {
            same[i] = if i % 2 == 0 { 1.0 } else { 0.0 };
            continue;
        }
        same[i] = if rng.random_bool(0.5) { 1.0 } else { 0.0 };
        let scale = rng.random_range(0.05f32..1.3);
        for k in 0..dim {
            right[i * dim + k] += scale * rng.random_range(-1.0f32..1.0);
        }
    }
    (left, right, same)
}

fn to_f64(x: &[f32]) -> Vec<f64> {
    x.iter().map(|&v| v as f64).collect()
}

/// Like `assert_close`, for sums whose terms may cancel: element k's error is judged against
/// `max(|want_k|, scale_k)` where `scale_k` is the sum of the magnitudes of its terms (f32
/// summation error is proportional to that, not to the possibly tiny result).
#[track_caller]
fn assert_close_scaled(what: &str, got: &[f32], want: &[f32], scale: &[f64], tol: f64) {
    assert_eq!(got.len(), want.len());
    let mut worst = (0.0f64, 0usize);
    for (k, (g, w)) in got.iter().zip(want).enumerate() {
        let e = (*g as f64 - *w as f64).abs() / (w.abs() as f64).max(scale[k]).max(1e-30);
        if e > worst.0 || e.is_nan() {
            worst = (e, k);
        }
    }
    eprintln!(
        "{what}: max scaled error {:.2e} over {} elements",
        worst.0,
        want.len()
    );
    let k = worst.1;
    assert!(
        worst.0 <= tol,
        "{what}: error {:.3e} > {tol:.1e} at {k}: gpu {}, cpu {}",
        worst.0,
        got[k],
        want[k]
    );
}

/// The upload of `data` at element offset `pad` of a larger buffer, as a view.
fn upload_view(gpu: &fewshot::gpu::Gpu, data: &[f32], pad: usize) -> fewshot::gpu::GpuTensor {
    let big = gpu.upload_f32(&[vec![3.0; pad], data.to_vec(), vec![3.0; 2]].concat());
    gpu.view(&big, pad, data.len())
}

/// `[NaN; 1] ++ [NaN; a] ++ [NaN; b] ++ [NaN; 1]`, and views of its two middle parts.
fn poisoned_pair(
    gpu: &fewshot::gpu::Gpu,
    a: usize,
    b: usize,
) -> (
    fewshot::gpu::GpuTensor,
    fewshot::gpu::GpuTensor,
    fewshot::gpu::GpuTensor,
) {
    let all = poisoned(gpu, a + b + 2);
    let va = gpu.view(&all, 1, a);
    let vb = gpu.view(&all, 1 + a, b);
    (all, va, vb)
}

#[track_caller]
fn assert_guards(what: &str, all: &[f32]) {
    assert!(
        all[0].is_nan() && all[all.len() - 1].is_nan(),
        "{what} wrote outside its views"
    );
}

#[test]
fn contrastive_loss_matches_cpu() {
    let Some(gpu) = gpu() else { return };
    let mut rng = rng(11);
    for (pairs, dim) in SHAPES {
        let identical = if pairs >= 9 { 4 } else { 0 };
        let (left, right, same) = make_pairs(&mut rng, pairs, dim, identical);
        // Around the typical distance, so that hinges are both active and inactive and both
        // predictions occur.
        let margin = 0.9 * (dim as f32 / 3.0).sqrt();
        let n = pairs * dim;
        let (mut gl, mut gr, mut stats) = (vec![0.0; n], vec![0.0; n], vec![0.0; 2]);
        cpu::pair_loss::contrastive_loss(
            pairs, dim, margin, &left, &right, &same, &mut gl, &mut gr, &mut stats,
        );

        // left and right are the two halves of one embedding buffer, as in the model.
        let emb = upload_view(gpu, &[left.clone(), right.clone()].concat(), 3);
        let (l, r) = (gpu.view(&emb, 0, n), gpu.view(&emb, n, n));
        let s = upload_view(gpu, &same, 1);
        let (grads, gl_v, gr_v) = poisoned_pair(gpu, n, n);
        let stats_all = poisoned(gpu, 4);
        let stats_v = gpu.view(&stats_all, 1, 2);
        gpu.contrastive_loss(pairs, dim, margin, &l, &r, &s, &gl_v, &gr_v, &stats_v);
        let g = gpu.read(&grads);
        let st = gpu.read(&stats_all);
        assert_guards("contrastive_loss grads", &g);
        assert_guards("contrastive_loss stats", &st);
        let what = format!("contrastive {pairs}x{dim}");
        eprintln!("{what}: cpu stats {stats:?}");
        assert_close(&format!("{what} grad_left"), &g[1..=n], &gl, F32_TOLERANCE);
        assert_close(
            &format!("{what} grad_right"),
            &g[n + 1..=2 * n],
            &gr,
            F32_TOLERANCE,
        );
        assert_close(
            &format!("{what} loss"),
            &st[1..2],
            &stats[..1],
            F32_TOLERANCE,
        );
        assert_close(
            &format!("{what} accuracy"),
            &st[2..3],
            &stats[1..],
            F32_TOLERANCE,
        );
        if identical > 0 {
            // d = 0 pairs: zero gradient whatever the label (same = 1 and 0 both occur).
            assert!(
                g[1..=identical * dim].iter().all(|&v| v == 0.0),
                "{what}: identical pairs got a gradient"
            );
        }
    }
}

/// `dz_i` of the Koch head, in f64: the scale of the grad_alpha and grad_bias sums.
fn koch_dz(
    pairs: usize,
    dim: usize,
    left: &[f32],
    right: &[f32],
    same: &[f32],
    alpha: &[f32],
    bias: f32,
) -> Vec<f64> {
    (0..pairs)
        .map(|i| {
            let z: f64 = bias as f64
                + (0..dim)
                    .map(|j| {
                        alpha[j] as f64
                            * (left[i * dim + j] as f64 - right[i * dim + j] as f64).abs()
                    })
                    .sum::<f64>();
            (1.0 / (1.0 + (-z).exp()) - same[i] as f64) / pairs as f64
        })
        .collect()
}

#[test]
fn koch_loss_matches_cpu() {
    let Some(gpu) = gpu() else { return };
    let mut rng = rng(12);
    for (pairs, dim) in SHAPES {
        let identical = if pairs >= 9 { 4 } else { 0 };
        let (left, right, same) = make_pairs(&mut rng, pairs, dim, identical);
        // Logits of order 1 whatever dim, so that both labels are predicted.
        let alpha: Vec<f32> = random(&mut rng, dim)
            .iter()
            .map(|a| a * 3.0 / (dim as f32).sqrt())
            .collect();
        let bias = rng.random_range(-1.0f32..1.0);
        let n = pairs * dim;
        let (mut gl, mut gr, mut ga, mut gb, mut stats) = (
            vec![0.0; n],
            vec![0.0; n],
            vec![0.0; dim],
            vec![0.0; 1],
            vec![0.0; 2],
        );
        cpu::pair_loss::koch_loss(
            pairs,
            dim,
            &left,
            &right,
            &same,
            &alpha,
            &[bias],
            &mut gl,
            &mut gr,
            &mut ga,
            &mut gb,
            &mut stats,
        );

        let emb = upload_view(gpu, &[left.clone(), right.clone()].concat(), 3);
        let (l, r) = (gpu.view(&emb, 0, n), gpu.view(&emb, n, n));
        let s = upload_view(gpu, &same, 1);
        // alpha and bias are views of one flat parameter buffer, their gradients of another.
        let head = upload_view(gpu, &[alpha.clone(), vec![bias]].concat(), 2);
        let (a_v, b_v) = (gpu.view(&head, 0, dim), gpu.view(&head, dim, 1));
        let (grads, gl_v, gr_v) = poisoned_pair(gpu, n, n);
        let (head_grads, ga_v, gb_v) = poisoned_pair(gpu, dim, 1);
        let stats_all = poisoned(gpu, 4);
        let stats_v = gpu.view(&stats_all, 1, 2);
        gpu.koch_loss(
            pairs, dim, &l, &r, &s, &a_v, &b_v, &gl_v, &gr_v, &ga_v, &gb_v, &stats_v,
        );
        let g = gpu.read(&grads);
        let hg = gpu.read(&head_grads);
        let st = gpu.read(&stats_all);
        assert_guards("koch_loss grads", &g);
        assert_guards("koch_loss head grads", &hg);
        assert_guards("koch_loss stats", &st);
        let what = format!("koch {pairs}x{dim}");
        eprintln!("{what}: cpu stats {stats:?}");
        assert_close(&format!("{what} grad_left"), &g[1..=n], &gl, F32_TOLERANCE);
        assert_close(
            &format!("{what} grad_right"),
            &g[n + 1..=2 * n],
            &gr,
            F32_TOLERANCE,
        );
        assert_close(
            &format!("{what} loss"),
            &st[1..2],
            &stats[..1],
            F32_TOLERANCE,
        );
        assert_close(
            &format!("{what} accuracy"),
            &st[2..3],
            &stats[1..],
            F32_TOLERANCE,
        );
        // grad_alpha and grad_bias are sums over pairs of terms of both signs.
        let dz = koch_dz(pairs, dim, &left, &right, &same, &alpha, bias);
        let alpha_scale: Vec<f64> = (0..dim)
            .map(|j| {
                (0..pairs)
                    .map(|i| dz[i].abs() * (left[i * dim + j] - right[i * dim + j]).abs() as f64)
                    .sum()
            })
            .collect();
        let bias_scale = dz.iter().map(|d| d.abs()).sum::<f64>();
        assert_close_scaled(
            &format!("{what} grad_alpha"),
            &hg[1..=dim],
            &ga,
            &alpha_scale,
            F32_TOLERANCE,
        );
        assert_close_scaled(
            &format!("{what} grad_bias"),
            &hg[dim + 1..dim + 2],
            &gb,
            &[bias_scale],
            F32_TOLERANCE,
        );
        if identical > 0 {
            assert!(
                g[1..=identical * dim].iter().all(|&v| v == 0.0),
                "{what}: identical pairs got a gradient"
            );
        }
    }
}

#[test]
fn contrastive_loss_matches_hand_computed_values() {
    // Pair 0: d = |(3, 4)| = 5, same: loss 0.5 * 25, predicted different (5 >= 2 / 2): wrong.
    // Pair 1: d = |(0.6, 0.8)| = 1, different, margin 2: loss 0.5 * (2 - 1)^2, predicted
    // different (1 >= 1): right. Mean loss (12.5 + 0.5) / 2, accuracy 1 / 2.
    let (left, right, same) = ([0.0, 0.0, 0.0, 0.0], [3.0, 4.0, 0.6, 0.8], [1.0, 0.0]);
    let (mut gl, mut gr, mut stats) = ([0.0f64; 4], [0.0f64; 4], [0.0f64; 2]);
    cpu::pair_loss::contrastive_loss(
        2, 2, 2.0, &left, &right, &same, &mut gl, &mut gr, &mut stats,
    );
    assert!(
        (stats[0] - 6.5).abs() < 1e-9 && stats[1] == 0.5,
        "stats {stats:?}"
    );
    // dL/dleft: pair 0: (l - r) / 2; pair 1: -(2 - 1) (l - r) / 1 / 2.
    let want = [-1.5, -2.0, 0.3, 0.4];
    for k in 0..4 {
        assert!(
            (gl[k] - want[k]).abs() < 1e-9 && gr[k] == -gl[k],
            "grad {gl:?} {gr:?}"
        );
    }
}

#[test]
fn koch_loss_matches_hand_computed_values() {
    // z = 1 * |1 - 0| + (-2) * |0 - 1| + 0.5 = -0.5 with same = 1: loss log(1 + e^0.5),
    // predicted different (z <= 0): wrong. dz = sigmoid(-0.5) - 1.
    let (left, right, alpha, bias) = ([1.0, 0.0], [0.0, 1.0], [1.0, -2.0], [0.5]);
    let (mut gl, mut gr, mut ga, mut gb, mut stats) = (
        [0.0f64; 2],
        [0.0f64; 2],
        [0.0f64; 2],
        [0.0f64; 1],
        [0.0f64; 2],
    );
    cpu::pair_loss::koch_loss(
        1,
        2,
        &left,
        &right,
        &[1.0],
        &alpha,
        &bias,
        &mut gl,
        &mut gr,
        &mut ga,
        &mut gb,
        &mut stats,
    );
    let dz = 1.0 / (1.0 + 0.5f64.exp()) - 1.0;
    assert!(
        (stats[0] - (1.0 + 0.5f64.exp()).ln()).abs() < 1e-12 && stats[1] == 0.0,
        "stats {stats:?}"
    );
    assert!((gb[0] - dz).abs() < 1e-12, "grad_bias {gb:?}");
    assert!(
        (ga[0] - dz).abs() < 1e-12 && (ga[1] - dz).abs() < 1e-12,
        "grad_alpha {ga:?}"
    );
    // sign(l - r) = (+1, -1): grad_left = dz * (1, 2).
    assert!(
        (gl[0] - dz).abs() < 1e-12 && (gl[1] - 2.0 * dz).abs() < 1e-12,
        "grad_left {gl:?}"
    );
    assert!(gr[0] == -gl[0] && gr[1] == -gl[1], "grad_right {gr:?}");
}

#[test]
fn contrastive_loss_backward_matches_finite_differences() {
    let mut rng = rng(13);
    let (pairs, dim) = (8, 5);
    let margin = 1.0f32;
    // Distances set exactly, away from 0 and from the margin (the kinks); same = 0 pairs at
    // 0.5 and 0.4 have an active hinge, at 1.4 and 1.8 not.
    let dists = [0.3, 0.5, 0.7, 1.4, 1.6, 0.4, 1.8, 0.6];
    let same = [1.0, 0.0, 1.0, 0.0, 1.0, 0.0, 0.0, 1.0];
    let left = random_f64(&mut rng, pairs * dim);
    let mut right = left.clone();
    for i in 0..pairs {
        let dir = random_f64(&mut rng, dim);
        let norm = dir.iter().map(|v| v * v).sum::<f64>().sqrt();
        for k in 0..dim {
            right[i * dim + k] += dists[i] * dir[k] / norm;
        }
    }
    let loss = |l: &[f64], r: &[f64]| {
        let (mut gl, mut gr, mut stats) =
            (vec![0.0; pairs * dim], vec![0.0; pairs * dim], vec![0.0; 2]);
        cpu::pair_loss::contrastive_loss(
            pairs, dim, margin, l, r, &same, &mut gl, &mut gr, &mut stats,
        );
        (stats[0], gl, gr)
    };
    let (_, gl, gr) = loss(&left, &right);
    let h = 1e-6;
    let fd_left = finite_differences(&left, h, |x| loss(x, &right).0);
    let fd_right = finite_differences(&right, h, |x| loss(&left, x).0);
    assert_grad_close("contrastive grad_left", &gl, &fd_left, 1e-6);
    assert_grad_close("contrastive grad_right", &gr, &fd_right, 1e-6);
}

#[test]
fn koch_loss_backward_matches_finite_differences() {
    let mut rng = rng(14);
    let (pairs, dim) = (8, 6);
    let same = [1.0, 0.0, 1.0, 0.0, 1.0, 0.0, 0.0, 1.0];
    let left = random_f64(&mut rng, pairs * dim);
    // |l - r| in [0.1, 1): far from the kink of |.| at 0.
    let right: Vec<f64> = left
        .iter()
        .map(|l| l + rng.random_range(0.1f64..1.0) * if rng.random_bool(0.5) { 1.0 } else { -1.0 })
        .collect();
    let alpha = random_f64(&mut rng, dim);
    let bias = random_f64(&mut rng, 1);
    type Grads = (f64, Vec<f64>, Vec<f64>, Vec<f64>, Vec<f64>);
    let loss = |l: &[f64], r: &[f64], a: &[f64], b: &[f64]| -> Grads {
        let n = pairs * dim;
        let (mut gl, mut gr, mut ga, mut gb, mut stats) = (
            vec![0.0; n],
            vec![0.0; n],
            vec![0.0; dim],
            vec![0.0; 1],
            vec![0.0; 2],
        );
        cpu::pair_loss::koch_loss(
            pairs, dim, l, r, &same, a, b, &mut gl, &mut gr, &mut ga, &mut gb, &mut stats,
        );
        (stats[0], gl, gr, ga, gb)
    };
    let (_, gl, gr, ga, gb) = loss(&left, &right, &alpha, &bias);
    let h = 1e-6;
    let fd_left = finite_differences(&left, h, |x| loss(x, &right, &alpha, &bias).0);
    let fd_right = finite_differences(&right, h, |x| loss(&left, x, &alpha, &bias).0);
    let fd_alpha = finite_differences(&alpha, h, |x| loss(&left, &right, x, &bias).0);
    let fd_bias = finite_differences(&bias, h, |x| loss(&left, &right, &alpha, x).0);
    assert_grad_close("koch grad_left", &gl, &fd_left, 1e-6);
    assert_grad_close("koch grad_right", &gr, &fd_right, 1e-6);
    assert_grad_close("koch grad_alpha", &ga, &fd_alpha, 1e-6);
    assert_grad_close("koch grad_bias", &gb, &fd_bias, 1e-6);
}

#[test]
fn cpu_reference_is_the_same_in_f32_and_f64() {
    // The f64 instantiation (used for finite differences) and the f32 one (used against the
    // GPU) are the same computation.
    let mut rng = rng(15);
    let (pairs, dim) = (9, 37);
    let (left, right, same) = make_pairs(&mut rng, pairs, dim, 4);
    let alpha = random(&mut rng, dim);
    let n = pairs * dim;
    let (mut gl, mut gr, mut ga, mut gb, mut st) = (
        vec![0.0f32; n],
        vec![0.0f32; n],
        vec![0.0f32; dim],
        vec![0.0f32; 1],
        vec![0.0f32; 2],
    );
    cpu::pair_loss::koch_loss(
        pairs,
        dim,
        &left,
        &right,
        &same,
        &alpha,
        &[0.2],
        &mut gl,
        &mut gr,
        &mut ga,
        &mut gb,
        &mut st,
    );
    let (l64, r64, s64, a64) = (to_f64(&left), to_f64(&right), to_f64(&same), to_f64(&alpha));
    let (mut gl2, mut gr2, mut ga2, mut gb2, mut st2) = (
        vec![0.0; n],
        vec![0.0; n],
        vec![0.0; dim],
        vec![0.0; 1],
        vec![0.0; 2],
    );
    cpu::pair_loss::koch_loss(
        pairs,
        dim,
        &l64,
        &r64,
        &s64,
        &a64,
        &[0.2f32 as f64],
        &mut gl2,
        &mut gr2,
        &mut ga2,
        &mut gb2,
        &mut st2,
    );
    let f = |v: &[f64]| v.iter().map(|&x| x as f32).collect::<Vec<_>>();
    assert_close("koch f32 vs f64 grad_left", &gl, &f(&gl2), 1e-5);
    assert_close("koch f32 vs f64 stats", &st, &f(&st2), 1e-5);

    let (mut cl, mut cr, mut cs) = (vec![0.0f32; n], vec![0.0f32; n], vec![0.0f32; 2]);
    cpu::pair_loss::contrastive_loss(
        pairs, dim, 3.0, &left, &right, &same, &mut cl, &mut cr, &mut cs,
    );
    let (mut cl2, mut cr2, mut cs2) = (vec![0.0; n], vec![0.0; n], vec![0.0; 2]);
    cpu::pair_loss::contrastive_loss(
        pairs, dim, 3.0, &l64, &r64, &s64, &mut cl2, &mut cr2, &mut cs2,
    );
    assert_close("contrastive f32 vs f64 grad_left", &cl, &f(&cl2), 1e-5);
    assert_close("contrastive f32 vs f64 stats", &cs, &f(&cs2), 1e-5);
}
