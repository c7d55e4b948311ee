//! Batch norm (training forward, evaluation forward, backward; with and without the fused
//! ReLU) and ReLU: GPU vs CPU reference, and the CPU backward against finite differences.
mod common;

use common::*;
use fewshot::cpu::batch_norm as cpu;
use fewshot::gpu::{Gpu, GpuTensor};
use fewshot::ops::{BatchNorm, NormShape};
use fewshot::Backend;

/// Batch 1, odd spatial sizes (5x7), channel counts 1, 3 and 64, a single value per channel
/// (n = 1: the running variance takes the biased variance) and the Conv-4 block [4, 64, 14, 14].
const SHAPES: [(usize, usize, usize); 6] = [
    (1, 3, 35),
    (2, 1, 35),
    (3, 64, 9),
    (1, 3, 1),
    (5, 3, 49),
    (4, 64, 196),
];

fn shape((batch, channels, spatial): (usize, usize, usize)) -> NormShape {
    NormShape {
        batch,
        channels,
        spatial,
    }
}

fn settings(relu: bool) -> BatchNorm {
    BatchNorm {
        relu,
        ..BatchNorm::default()
    }
}

/// Upload `data` at element offset `off` of a larger buffer padded with NaN and return the view.
fn upload_at(gpu: &Gpu, data: &[f32], off: usize) -> GpuTensor {
    let mut all = vec![f32::NAN; off + data.len() + 1];
    all[off..off + data.len()].copy_from_slice(data);
    let t = gpu.upload_f32(&all);
    gpu.view(&t, off, data.len())
}

/// Random inputs with a per-channel shift and scale, so the statistics are not all ~(0, 1/3).
fn input_data(rng: &mut rand_chacha::ChaCha8Rng, s: &NormShape) -> Vec<f32> {
    let mut x = random(rng, s.len());
    for (i, v) in x.iter_mut().enumerate() {
        let c = (i / s.spatial) % s.channels;
        *v = *v * (1.0 + c as f32 % 3.0) + (c as f32 % 5.0 - 2.0);
    }
    x
}

fn positive(rng: &mut rand_chacha::ChaCha8Rng, len: usize) -> Vec<f32> {
    random(rng, len).iter().map(|v| v.abs() + 0.5).collect()
}

/// Poisoned output views in one buffer (at offsets 1, len+2, ...), read back with a check that
/// nothing outside the views was written.
struct Outputs {
    buffer: GpuTensor,
    views: Vec<GpuTensor>,
}

impl Outputs {
    fn new(gpu: &Gpu, lens: &[usize]) -> Self {
        let total = lens.iter().map(|l| l + 1).sum::<usize>() + 1;
        let buffer = poisoned(gpu, total);
        let mut at = 1;
        let views = lens
            .iter()
            .map(|&l| {
                let v = gpu.view(&buffer, at, l);
                at += l + 1;
                v
            })
            .collect();
        Outputs { buffer, views }
    }
    fn read(&self, gpu: &Gpu) -> Vec<Vec<f32>> {
        let all = gpu.read(&self.buffer);
        assert!(all[0].is_nan(), "a kernel wrote before its output view");
        self.views
            .iter()
            .map(|v| {
                let (start, end) = (
                    v.offset - self.buffer.offset,
                    v.offset - self.buffer.offset + v.len,
                );
                assert!(all[end].is_nan(), "a kernel wrote past its output view");
                all[start..end].to_vec()
            })
            .collect()
    }
}

#[test]
fn batch_norm_train_matches_cpu() {
    let Some(gpu) = gpu() else { return };
    let mut rng = rng(11);
    for relu in [false, true] {
        let p = settings(relu);
        for dims in SHAPES {
            let s = shape(dims);
            let c = s.channels;
            let x = input_data(&mut rng, &s);
            let gamma = random(&mut rng, c);
            let beta = random(&mut rng, c);
            let rmean0 = random(&mut rng, c);
            let rvar0 = positive(&mut rng, c);
            let mut want = vec![0.0; s.len()];
            let (mut mean, mut inv_std) = (vec![0.0; c], vec![0.0; c]);
            let (mut rmean, mut rvar) = (rmean0.clone(), rvar0.clone());
            cpu::batch_norm_train(
                &s,
                &p,
                &x,
                &gamma,
                &beta,
                &mut want,
                &mut mean,
                &mut inv_std,
                &mut rmean,
                &mut rvar,
            );

            // gamma and beta share a buffer, as do the saved statistics (poisoned) and the running
            // statistics: the model keeps them in flat buffers.
            let params = upload_at(gpu, &[gamma.clone(), beta.clone()].concat(), 3);
            let (g_view, b_view) = (gpu.view(&params, 0, c), gpu.view(&params, c, c));
            let running = upload_at(gpu, &[rmean0.clone(), rvar0.clone()].concat(), 2);
            let (rm_view, rv_view) = (gpu.view(&running, 0, c), gpu.view(&running, c, c));
            let out = Outputs::new(gpu, &[s.len()]);
            let stats = Outputs::new(gpu, &[c, c]);
            gpu.batch_norm_train(
                &s,
                &p,
                &upload_at(gpu, &x, 5),
                &g_view,
                &b_view,
                &out.views[0],
                &stats.views[0],
                &stats.views[1],
                &rm_view,
                &rv_view,
            );
            let tag = format!("train relu={relu} {dims:?}");
            assert_close(
                &format!("{tag} output"),
                &out.read(gpu)[0],
                &want,
                F32_TOLERANCE,
            );
            let got_stats = stats.read(gpu);
            assert_close(
                &format!("{tag} saved_mean"),
                &got_stats[0],
                &mean,
                F32_TOLERANCE,
            );
            assert_close(
                &format!("{tag} saved_inv_std"),
                &got_stats[1],
                &inv_std,
                F32_TOLERANCE,
            );
            assert_close(
                &format!("{tag} running_mean"),
                &gpu.read(&rm_view),
                &rmean,
                F32_TOLERANCE,
            );
            assert_close(
                &format!("{tag} running_var"),
                &gpu.read(&rv_view),
                &rvar,
                F32_TOLERANCE,
            );
            if relu {
                assert!(want.contains(&0.0) && want.iter().any(|&v| v > 0.0) || s.len() < 8);
            }
        }
    }
}

#[test]
fn batch_norm_eval_matches_cpu() {
    let Some(gpu) = gpu() else { return };
    let mut rng = rng(12);
    for relu in [false, true] {
        let p = settings(relu);
        for dims in SHAPES {
            let s = shape(dims);
            let c = s.channels;
            let x = input_data(&mut rng, &s);
            let (gamma, beta, rmean) = (
                random(&mut rng, c),
                random(&mut rng, c),
                random(&mut rng, c),
            );
            let rvar = positive(&mut rng, c);
            let mut want = vec![0.0; s.len()];
            cpu::batch_norm_eval(&s, &p, &x, &gamma, &beta, &rmean, &rvar, &mut want);
            let out = Outputs::new(gpu, &[s.len()]);
            gpu.batch_norm_eval(
                &s,
                &p,
                &upload_at(gpu, &x, 1),
                &upload_at(gpu, &gamma, 2),
                &upload_at(gpu, &beta, 3),
                &upload_at(gpu, &rmean, 4),
                &upload_at(gpu, &rvar, 5),
                &out.views[0],
            );
            assert_close(
                &format!("eval relu={relu} {dims:?}"),
                &out.read(gpu)[0],
                &want,
                F32_TOLERANCE,
            );
        }
    }
}

#[test]
fn batch_norm_backward_matches_cpu() {
    let Some(gpu) = gpu() else { return };
    let mut rng = rng(13);
    for relu in [false, true] {
        let p = settings(relu);
        for dims in SHAPES {
            let s = shape(dims);
            let c = s.channels;
            let x = input_data(&mut rng, &s);
            let (gamma, beta) = (random(&mut rng, c), random(&mut rng, c));
            let mut y = vec![0.0; s.len()];
            let (mut mean, mut inv_std) = (vec![0.0; c], vec![0.0; c]);
            let (mut rm, mut rv) = (vec![0.0; c], vec![1.0; c]);
            cpu::batch_norm_train(
                &s,
                &p,
                &x,
                &gamma,
                &beta,
                &mut y,
                &mut mean,
                &mut inv_std,
                &mut rm,
                &mut rv,
            );
            let dy = random(&mut rng, s.len());
            let mut want_dx = vec![0.0; s.len()];
            let (mut want_dg, mut want_db) = (vec![0.0; c], vec![0.0; c]);
            cpu::batch_norm_backward(
                &s,
                &p,
                &x,
                &y,
                &dy,
                &gamma,
                &mean,
                &inv_std,
                &mut want_dx,
                &mut want_dg,
                &mut want_db,
            );

            let dx = Outputs::new(gpu, &[s.len()]);
            // grad_gamma and grad_beta share one (flat gradient) buffer.
            let dparams = Outputs::new(gpu, &[c, c]);
            gpu.batch_norm_backward(
                &s,
                &p,
                &upload_at(gpu, &x, 1),
                &upload_at(gpu, &y, 2),
                &upload_at(gpu, &dy, 3),
                &upload_at(gpu, &gamma, 4),
                &upload_at(gpu, &mean, 5),
                &upload_at(gpu, &inv_std, 6),
                &dx.views[0],
                &dparams.views[0],
                &dparams.views[1],
            );
            let tag = format!("backward relu={relu} {dims:?}");
            assert_close(
                &format!("{tag} grad_input"),
                &dx.read(gpu)[0],
                &want_dx,
                F32_TOLERANCE,
            );
            let got = dparams.read(gpu);
            assert_close(
                &format!("{tag} grad_gamma"),
                &got[0],
                &want_dg,
                F32_TOLERANCE,
            );
            assert_close(
                &format!("{tag} grad_beta"),
                &got[1],
                &want_db,
                F32_TOLERANCE,
            );
        }
    }
}

/// More channels than one dispatch dimension allows on many adapters (65535 workgroups): the
/// per-channel kernels must spill into y and still cover every channel.
#[test]
fn batch_norm_covers_more_channels_than_one_dispatch_dimension() {
    let Some(gpu) = gpu() else { return };
    let mut rng = rng(14);
    let s = NormShape {
        batch: 2,
        channels: 70_001,
        spatial: 1,
    };
    let limit = gpu.limits.max_compute_workgroups_per_dimension;
    eprintln!(
        "{} channels, adapter limit {limit} workgroups per dimension",
        s.channels
    );
    let p = settings(false);
    let c = s.channels;
    let x = random(&mut rng, s.len());
    let (gamma, beta) = (random(&mut rng, c), random(&mut rng, c));
    let mut want = vec![0.0; s.len()];
    let (mut mean, mut inv_std, mut rm, mut rv) =
        (vec![0.0; c], vec![0.0; c], vec![0.0; c], vec![1.0; c]);
    cpu::batch_norm_train(
        &s,
        &p,
        &x,
        &gamma,
        &beta,
        &mut want,
        &mut mean,
        &mut inv_std,
        &mut rm,
        &mut rv,
    );
    let dy = random(&mut rng, s.len());
    let (mut want_dx, mut want_dg, mut want_db) = (vec![0.0; s.len()], vec![0.0; c], vec![0.0; c]);
    cpu::batch_norm_backward(
        &s,
        &p,
        &x,
        &want,
        &dy,
        &gamma,
        &mean,
        &inv_std,
        &mut want_dx,
        &mut want_dg,
        &mut want_db,
    );

    let (g, b) = (gpu.upload_f32(&gamma), gpu.upload_f32(&beta));
    let (y, m, is) = (poisoned(gpu, s.len()), poisoned(gpu, c), poisoned(gpu, c));
    let (grm, grv) = (gpu.upload_f32(&vec![0.0; c]), gpu.upload_f32(&vec![1.0; c]));
    let xg = gpu.upload_f32(&x);
    gpu.batch_norm_train(&s, &p, &xg, &g, &b, &y, &m, &is, &grm, &grv);
    let (dx, dg, db) = (poisoned(gpu, s.len()), poisoned(gpu, c), poisoned(gpu, c));
    gpu.batch_norm_backward(
        &s,
        &p,
        &xg,
        &y,
        &gpu.upload_f32(&dy),
        &g,
        &m,
        &is,
        &dx,
        &dg,
        &db,
    );
    assert_close("many channels output", &gpu.read(&y), &want, F32_TOLERANCE);
    assert_close(
        "many channels running_var",
        &gpu.read(&grv),
        &rv,
        F32_TOLERANCE,
    );
    assert_close(
        "many channels grad_input",
        &gpu.read(&dx),
        &want_dx,
        F32_TOLERANCE,
    );
    assert_close(
        "many channels grad_gamma",
        &gpu.read(&dg),
        &want_dg,
        F32_TOLERANCE,
    );
    assert_close(
        "many channels grad_beta",
        &gpu.read(&db),
        &want_db,
        F32_TOLERANCE,
    );
}

/// Inputs for the ReLU tests: random values with exact zeros and negative zeros mixed in.
fn relu_input(rng: &mut rand_chacha::ChaCha8Rng, len: usize) -> Vec<f32> {
    let mut x = random(rng, len);
    for (i, v) in x.iter_mut().enumerate() {
        match i % 7 {
            2 => *v = 0.0,
            5 => *v = -0.0,
            _ => {}
        }
    }
    x
}

#[test]
fn relu_forward_matches_cpu() {
    let Some(gpu) = gpu() else { return };
    let mut rng = rng(15);
    for len in [1usize, 255, 257, 70_001] {
        let x = relu_input(&mut rng, len);
        let mut want = vec![0.0; len];
        cpu::relu_forward(&x, &mut want);
        assert!(want.iter().all(|&v| v >= 0.0) && want.iter().any(|&v| v > 0.0) || len < 8);
        let out = Outputs::new(gpu, &[len]);
        gpu.relu_forward(&upload_at(gpu, &x, 3), &out.views[0]);
        let got = out.read(gpu).remove(0);
        assert_close(&format!("relu_forward {len}"), &got, &want, 0.0);
        assert!(
            got.iter()
                .zip(&want)
                .all(|(g, w)| g.to_bits() == w.to_bits()),
            "relu_forward: bits differ"
        );
    }
}

#[test]
fn relu_backward_matches_cpu() {
    let Some(gpu) = gpu() else { return };
    let mut rng = rng(16);
    for len in [1usize, 255, 257, 70_001] {
        let mut y = vec![0.0; len];
        cpu::relu_forward(&relu_input(&mut rng, len), &mut y);
        let dy = random(&mut rng, len);
        let mut want = vec![0.0; len];
        cpu::relu_backward(&y, &dy, &mut want);
        let out = Outputs::new(gpu, &[len]);
        gpu.relu_backward(
            &upload_at(gpu, &y, 1),
            &upload_at(gpu, &dy, 2),
            &out.views[0],
        );
        assert_close(
            &format!("relu_backward {len}"),
            &out.read(gpu).remove(0),
            &want,
            0.0,
        );
    }
}

#[test]
fn relu_backward_masks_non_positive_outputs() {
    let y = [2.0f32, 0.0, -0.0, 0.5];
    let dy = [1.0f32, 2.0, 3.0, 4.0];
    let mut dx = [f32::NAN; 4];
    cpu::relu_backward(&y, &dy, &mut dx);
    assert_eq!(dx, [1.0, 0.0, 0.0, 4.0]);
}

/// Forward in f64 with throw-away running statistics; returns (output, mean, inv_std).
fn forward_f64(
    s: &NormShape,
    p: &BatchNorm,
    x: &[f64],
    gamma: &[f64],
    beta: &[f64],
) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
    let c = s.channels;
    let mut y = vec![0.0; s.len()];
    let (mut mean, mut inv_std, mut rm, mut rv) =
        (vec![0.0; c], vec![0.0; c], vec![0.0; c], vec![1.0; c]);
    cpu::batch_norm_train(
        s,
        p,
        x,
        gamma,
        beta,
        &mut y,
        &mut mean,
        &mut inv_std,
        &mut rm,
        &mut rv,
    );
    (y, mean, inv_std)
}

#[test]
fn batch_norm_backward_matches_finite_differences() {
    let mut rng = rng(17);
    for relu in [false, true] {
        let p = settings(relu);
        for (batch, channels, spatial) in [(3, 2, 5), (1, 3, 7), (4, 1, 1)] {
            let s = NormShape {
                batch,
                channels,
                spatial,
            };
            let x = random_f64(&mut rng, s.len());
            let gamma: Vec<f64> = random_f64(&mut rng, channels)
                .iter()
                .map(|g| g + 1.5)
                .collect();
            let beta = random_f64(&mut rng, channels);
            let w = random_f64(&mut rng, s.len());
            let (y, mean, inv_std) = forward_f64(&s, &p, &x, &gamma, &beta);
            if relu {
                // A finite difference straddling the ReLU kink would be meaningless; this seed
                // keeps every pre-activation well away from it, and both sides of it occur.
                let (y_lin, _, _) = forward_f64(&s, &settings(false), &x, &gamma, &beta);
                assert!(
                    y_lin.iter().all(|v| v.abs() > 1e-3),
                    "pre-activation too close to 0"
                );
                assert!(y.contains(&0.0) && y.iter().any(|&v| v > 0.0));
            }
            let (mut dx, mut dg, mut db) =
                (vec![0.0; s.len()], vec![0.0; channels], vec![0.0; channels]);
            cpu::batch_norm_backward(
                &s, &p, &x, &y, &w, &gamma, &mean, &inv_std, &mut dx, &mut dg, &mut db,
            );

            let h = 1e-6;
            let tag = format!("relu={relu} [{batch}, {channels}, {spatial}]");
            let num_dx =
                finite_differences(&x, h, |x| dot(&w, &forward_f64(&s, &p, x, &gamma, &beta).0));
            assert_grad_close(&format!("{tag} grad_input"), &dx, &num_dx, 1e-6);
            let num_dg =
                finite_differences(&gamma, h, |g| dot(&w, &forward_f64(&s, &p, &x, g, &beta).0));
            assert_grad_close(&format!("{tag} grad_gamma"), &dg, &num_dg, 1e-6);
            let num_db =
                finite_differences(&beta, h, |b| dot(&w, &forward_f64(&s, &p, &x, &gamma, b).0));
            assert_grad_close(&format!("{tag} grad_beta"), &db, &num_db, 1e-6);
        }
    }
}

/// Hand-checkable: two channels, eps = 0. Channel 0: running mean 1, variance 4 (std 2), gamma 2,
/// beta 0.5: x = [1, 3, -3] -> [0.5, 2.5, -3.5]. Channel 1: mean 2, variance 0.25 (std 0.5),
/// gamma 1, beta -1: x = [2, 4, 1] -> [-1, 3, -3]. The batch statistics (means 1/3 and 7/3)
/// would give different values, so this proves the running statistics are used.
#[test]
fn batch_norm_eval_uses_running_statistics() {
    let s = NormShape {
        batch: 1,
        channels: 2,
        spatial: 3,
    };
    let x = [1.0f32, 3.0, -3.0, 2.0, 4.0, 1.0];
    let (gamma, beta, rmean, rvar) = ([2.0f32, 1.0], [0.5f32, -1.0], [1.0f32, 2.0], [4.0f32, 0.25]);
    let linear = [0.5f32, 2.5, -3.5, -1.0, 3.0, -3.0];
    let rectified = [0.5f32, 2.5, 0.0, 0.0, 3.0, 0.0];
    for (relu, want) in [(false, linear), (true, rectified)] {
        let p = BatchNorm {
            eps: 0.0,
            momentum: 0.1,
            relu,
        };
        let mut got = [f32::NAN; 6];
        cpu::batch_norm_eval(&s, &p, &x, &gamma, &beta, &rmean, &rvar, &mut got);
        assert_eq!(got, want, "cpu eval relu={relu}");
        if let Some(gpu) = gpu() {
            let out = poisoned(gpu, 6);
            let up = |d: &[f32]| gpu.upload_f32(d);
            gpu.batch_norm_eval(
                &s,
                &p,
                &up(&x),
                &up(&gamma),
                &up(&beta),
                &up(&rmean),
                &up(&rvar),
                &out,
            );
            let got = gpu.read(&out);
            for (g, w) in got.iter().zip(&want) {
                assert!(
                    (g - w).abs() <= 1e-6,
                    "gpu eval relu={relu}: got {got:?}, want {want:?}"
                );
            }
        }
    }
}

/// Hand-checkable training statistics: one channel, x = [1, 2, 3, 6] (mean 3, biased variance
/// 3.5, unbiased 14/3), momentum 0.5 from running (1, 1): running mean 2, running var 17/6.
#[test]
fn batch_norm_train_statistics_by_hand() {
    let s = NormShape {
        batch: 2,
        channels: 1,
        spatial: 2,
    };
    let p = BatchNorm {
        eps: 0.0,
        momentum: 0.5,
        relu: false,
    };
    let x = [1.0f64, 2.0, 3.0, 6.0];
    let mut y = [0.0f64; 4];
    let (mut mean, mut inv_std, mut rm, mut rv) = ([0.0], [0.0], [1.0], [1.0]);
    cpu::batch_norm_train(
        &s,
        &p,
        &x,
        &[1.0],
        &[0.0],
        &mut y,
        &mut mean,
        &mut inv_std,
        &mut rm,
        &mut rv,
    );
    let close = |a: f64, b: f64| (a - b).abs() < 1e-12;
    assert!(
        close(mean[0], 3.0) && close(inv_std[0], 1.0 / 3.5f64.sqrt()),
        "{mean:?} {inv_std:?}"
    );
    assert!(
        close(rm[0], 2.0) && close(rv[0], 17.0 / 6.0),
        "{rm:?} {rv:?}"
    );
    let sd = 3.5f64.sqrt();
    for (got, want) in y.iter().zip([-2.0 / sd, -1.0 / sd, 0.0, 3.0 / sd]) {
        assert!(close(*got, want), "{y:?}");
    }
}

#[test]
fn relu_backward_matches_finite_differences() {
    let mut r = rng(77);
    // Values kept at least 0.05 away from the kink at zero, where ReLU is not differentiable.
    let x: Vec<f64> = random_f64(&mut r, 97)
        .into_iter()
        .map(|v| {
            if v.abs() < 0.05 {
                v.signum() * 0.05 + v
            } else {
                v
            }
        })
        .collect();
    let w = random_f64(&mut r, x.len());
    let forward = |x: &[f64]| {
        let mut y = vec![0.0; x.len()];
        cpu::relu_forward(x, &mut y);
        dot(&w, &y)
    };
    let mut y = vec![0.0; x.len()];
    cpu::relu_forward(&x, &mut y);
    let mut analytic = vec![0.0; x.len()];
    cpu::relu_backward(&y, &w, &mut analytic);
    let numeric = finite_differences(&x, 1e-6, forward);
    assert_grad_close("relu backward", &analytic, &numeric, 1e-6);
}

// ---------------------------------------------------------------- fused batch norm + pool

/// Inputs whose 2x2 windows hold four well-separated values in a random order (a window base
/// plus 0.25 x a random permutation of 0..3): the first maximum is then the same under any
/// rounding of the statistics, so GPU and CPU route every gradient to the same element.
fn window_input(rng: &mut rand_chacha::ChaCha8Rng, s: &fewshot::ops::PoolShape) -> Vec<f32> {
    use rand::seq::SliceRandom;
    let (h, w) = (s.height, s.width);
    let mut x = random(rng, s.input_len());
    for plane in x.chunks_mut(h * w) {
        for oy in 0..h / 2 {
            for ox in 0..w / 2 {
                let mut perm = [0.0f32, 1.0, 2.0, 3.0];
                perm.shuffle(rng);
                let base = random(rng, 1)[0] * 2.0;
                for (k, v) in perm.iter().enumerate() {
                    plane[(2 * oy + k / 2) * w + 2 * ox + k % 2] = base + 0.25 * v;
                }
            }
        }
    }
    x
}

/// `batch_norm_pool_train`, `batch_norm_pool_eval` and `pool_batch_norm_backward` on the GPU
/// (the fused `bn_pool` and `bn_pool_route` kernels) against the CPU references of the ops in
/// sequence (batch norm, then max-pool), ReLU on and off, odd sizes and maps with no windows;
/// outputs poisoned views, inputs views at offsets.
#[test]
fn fused_batch_norm_pool_matches_cpu() {
    use fewshot::cpu::max_pool;
    use fewshot::ops::PoolShape;
    let Some(gpu) = gpu() else { return };
    let mut rng = rng(17);
    let shapes = [
        (1, 3, 5, 7),
        (2, 1, 4, 6),
        (3, 64, 3, 3),
        (2, 3, 1, 5),
        (5, 3, 7, 7),
        (4, 64, 14, 14),
        (2, 16, 28, 28),
    ];
    for relu in [false, true] {
        let p = settings(relu);
        for (batch, channels, height, width) in shapes {
            let s = PoolShape {
                batch,
                channels,
                height,
                width,
            };
            let n = s.norm_shape();
            let c = channels;
            let tag = format!("fused relu={relu} {s:?}");
            let x = window_input(&mut rng, &s);
            let gamma: Vec<f32> = random(&mut rng, c)
                .iter()
                .map(|v| v.signum() * (0.5 + v.abs()))
                .collect();
            let beta = random(&mut rng, c);
            let (rm0, rv0) = (random(&mut rng, c), positive(&mut rng, c));

            // CPU: batch norm, then max-pool (and the backward in the same order).
            let mut y = vec![0.0; n.len()];
            let (mut mean, mut inv_std) = (vec![0.0; c], vec![0.0; c]);
            let (mut rm, mut rv) = (rm0.clone(), rv0.clone());
            cpu::batch_norm_train(
                &n,
                &p,
                &x,
                &gamma,
                &beta,
                &mut y,
                &mut mean,
                &mut inv_std,
                &mut rm,
                &mut rv,
            );
            let mut pooled = vec![0.0; s.output_len()];
            max_pool::max_pool_forward(&s, &y, &mut pooled);
            let mut y_eval = vec![0.0; n.len()];
            cpu::batch_norm_eval(&n, &p, &x, &gamma, &beta, &rm0, &rv0, &mut y_eval);
            let mut pooled_eval = vec![0.0; s.output_len()];
            max_pool::max_pool_forward(&s, &y_eval, &mut pooled_eval);
            let g = random(&mut rng, s.output_len());
            let mut dy = vec![0.0; n.len()];
            max_pool::max_pool_backward(&s, &y, &g, &mut dy);
            let mut dx = vec![0.0; n.len()];
            let (mut dg, mut db) = (vec![0.0; c], vec![0.0; c]);
            cpu::batch_norm_backward(
                &n, &p, &x, &y, &dy, &gamma, &mean, &inv_std, &mut dx, &mut dg, &mut db,
            );
            // The fused kernel's routed gradient has the ReLU mask applied already.
            let routed_want: Vec<f32> = dy
                .iter()
                .zip(&y)
                .map(|(&d, &v)| if !relu || v > 0.0 { d } else { 0.0 })
                .collect();

            // GPU, fused.
            let gx = upload_at(gpu, &x, 1);
            let (ggamma, gbeta) = (upload_at(gpu, &gamma, 2), upload_at(gpu, &beta, 3));
            // Pooled maps and statistics in separate buffers, as in the model (bn_pool reads
            // the statistics and writes the pooled map).
            let out = Outputs::new(gpu, &[s.output_len(), s.output_len()]);
            let saved = Outputs::new(gpu, &[c, c]);
            let running = Outputs::new(gpu, &[c, c]);
            gpu.write(&running.views[0], &rm0);
            gpu.write(&running.views[1], &rv0);
            gpu.batch_norm_pool_train(
                &s,
                &p,
                &gx,
                &ggamma,
                &gbeta,
                &out.views[0],
                &saved.views[0],
                &saved.views[1],
                &running.views[0],
                &running.views[1],
            );
            let (rm0_gpu, rv0_gpu) = (upload_at(gpu, &rm0, 4), upload_at(gpu, &rv0, 5));
            gpu.batch_norm_pool_eval(
                &s,
                &p,
                &gx,
                &ggamma,
                &gbeta,
                &rm0_gpu,
                &rv0_gpu,
                &out.views[1],
            );
            // The routed gradient (scratch), grad_input and the parameter gradients in three
            // buffers, as in the model (a buffer read by one kernel and written by the same one
            // is a usage conflict).
            let (routed, dxo, dparams) = (
                Outputs::new(gpu, &[n.len()]),
                Outputs::new(gpu, &[n.len()]),
                Outputs::new(gpu, &[c, c]),
            );
            gpu.pool_batch_norm_backward(
                &s,
                &p,
                &gx,
                &upload_at(gpu, &g, 6),
                &ggamma,
                &gbeta,
                &saved.views[0],
                &saved.views[1],
                &routed.views[0],
                &dxo.views[0],
                &dparams.views[0],
                &dparams.views[1],
            );
            let got = out.read(gpu);
            let got_saved = saved.read(gpu);
            let got_running = running.read(gpu);
            let got_back = [
                routed.read(gpu).remove(0),
                dxo.read(gpu).remove(0),
                dparams.read(gpu)[0].clone(),
                dparams.read(gpu)[1].clone(),
            ];
            for (what, a, b) in [
                ("pooled", &got[0], &pooled),
                ("saved_mean", &got_saved[0], &mean),
                ("saved_inv_std", &got_saved[1], &inv_std),
                ("eval pooled", &got[1], &pooled_eval),
                ("running_mean", &got_running[0], &rm),
                ("running_var", &got_running[1], &rv),
                ("routed gradient", &got_back[0], &routed_want),
                ("grad_input", &got_back[1], &dx),
                ("grad_gamma", &got_back[2], &dg),
                ("grad_beta", &got_back[3], &db),
            ] {
                assert_close(&format!("{tag} {what}"), a, b, F32_TOLERANCE);
            }
            eprintln!("{tag}: ok");
        }
    }
}
