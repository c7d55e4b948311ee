//! Shared helpers for the GPU-vs-CPU op tests.
#![allow(dead_code)]

use std::sync::OnceLock;

use fewshot::gpu::{Gpu, GpuTensor};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// Set this variable to run the test suite on a machine without any GPU adapter: GPU tests
/// then print that they were skipped instead of failing. CI never sets it.
pub const OPT_OUT_VAR: &str = "FEWSHOT_SKIP_GPU_TESTS";

/// The shared GPU context of this test binary, or `None` when there is no adapter and the
/// opt-out variable is set. Without an adapter and without the variable: a panic whose
/// message says how to get one.
pub fn gpu() -> Option<&'static Gpu> {
    static GPU: OnceLock<Result<Gpu, String>> = OnceLock::new();
    match GPU.get_or_init(|| {
        Gpu::new(std::env::var("FEWSHOT_ADAPTER").ok().as_deref()).map_err(|e| e.to_string())
    }) {
        Ok(gpu) => Some(gpu),
        Err(e) => {
            if std::env::var_os(OPT_OUT_VAR).is_some() {
                eprintln!("GPU test SKIPPED ({OPT_OUT_VAR} is set): {e}");
                None
            } else {
                panic!("{e}\n(to run only the CPU tests on a machine without any adapter, set {OPT_OUT_VAR}=1)")
            }
        }
    }
}

pub fn rng(seed: u64) -> ChaCha8Rng {
    ChaCha8Rng::seed_from_u64(seed)
}

/// Uniform random values in [-1, 1).
pub fn random(rng: &mut ChaCha8Rng, len: usize) -> Vec<f32> {
    (0..len).map(|_| rng.random_range(-1.0f32..1.0)).collect()
}

pub fn random_f64(rng: &mut ChaCha8Rng, len: usize) -> Vec<f64> {
    (0..len).map(|_| rng.random_range(-1.0f64..1.0)).collect()
}

/// A GPU output buffer filled with NaN, so any element the kernel fails to write fails the test.
pub fn poisoned(gpu: &Gpu, len: usize) -> GpuTensor {
    gpu.upload_f32(&vec![f32::NAN; len])
}

/// Relative error of `got` against `want`, element-wise, with the denominator floored at the
/// mean magnitude of `want`: an element that cancels to near zero is judged on the scale of
/// the tensor, not on its own tiny value (where f32 summation order alone exceeds any bound).
/// NaN anywhere gives infinity.
pub fn max_rel_error(got: &[f32], want: &[f32]) -> f64 {
    assert_eq!(got.len(), want.len(), "length mismatch");
    if want.is_empty() {
        return 0.0;
    }
    let mean_abs = want.iter().map(|w| w.abs() as f64).sum::<f64>() / want.len() as f64;
    let floor = mean_abs.max(1e-30);
    let mut worst = 0.0f64;
    for (g, w) in got.iter().zip(want) {
        if !g.is_finite() || !w.is_finite() {
            if g.to_bits() == w.to_bits() && !g.is_nan() {
                continue;
            }
            return f64::INFINITY;
        }
        let e = (*g as f64 - *w as f64).abs() / (w.abs() as f64).max(floor);
        worst = worst.max(e);
    }
    worst
}

/// The relative error bound for f32 kernels against the f32 CPU reference.
pub const F32_TOLERANCE: f64 = 1e-4;

/// Assert that a GPU result matches the CPU reference within `tol` (see [`max_rel_error`]).
#[track_caller]
pub fn assert_close(what: &str, got: &[f32], want: &[f32], tol: f64) {
    let e = max_rel_error(got, want);
    eprintln!(
        "{what}: max relative error {e:.2e} over {} elements",
        want.len()
    );
    if e > tol {
        let (i, g, w) = got
            .iter()
            .zip(want)
            .enumerate()
            .map(|(i, (g, w))| (i, *g, *w))
            .max_by(|a, b| {
                let ea = (a.1 - a.2).abs();
                let eb = (b.1 - b.2).abs();
                ea.partial_cmp(&eb).unwrap_or(std::cmp::Ordering::Greater)
            })
            .unwrap();
        panic!("{what}: max relative error {e:.3e} > {tol:.1e} (worst at {i}: gpu {g}, cpu {w})");
    }
}

/// Central finite differences of a scalar function of `x`, in f64.
pub fn finite_differences(x: &[f64], h: f64, mut f: impl FnMut(&[f64]) -> f64) -> Vec<f64> {
    let mut x = x.to_vec();
    (0..x.len())
        .map(|i| {
            let orig = x[i];
            x[i] = orig + h;
            let plus = f(&x);
            x[i] = orig - h;
            let minus = f(&x);
            x[i] = orig;
            (plus - minus) / (2.0 * h)
        })
        .collect()
}

/// Assert an analytic f64 gradient equals the finite-difference one within `tol` relative
/// error (floored at the mean magnitude, as in [`max_rel_error`]).
#[track_caller]
pub fn assert_grad_close(what: &str, analytic: &[f64], numeric: &[f64], tol: f64) {
    assert_eq!(analytic.len(), numeric.len());
    let mean_abs = numeric.iter().map(|v| v.abs()).sum::<f64>() / numeric.len().max(1) as f64;
    let floor = mean_abs.max(1e-12);
    let mut worst = (0.0f64, 0usize);
    for (i, (a, n)) in analytic.iter().zip(numeric).enumerate() {
        let e = (a - n).abs() / n.abs().max(floor);
        if e > worst.0 || e.is_nan() {
            worst = (e, i);
        }
    }
    eprintln!("{what}: finite-difference relative error {:.2e}", worst.0);
    assert!(
        worst.0 <= tol,
        "{what}: analytic gradient {} vs finite difference {} at {} (relative error {:.3e} > {tol:.1e})",
        analytic[worst.1],
        numeric[worst.1],
        worst.1,
        worst.0
    );
}

/// Weighted sum `sum_i w_i y_i`: the scalar whose gradient with respect to `y` is `w`, used to
/// turn a tensor-valued op into a scalar for finite differences.
pub fn dot(w: &[f64], y: &[f64]) -> f64 {
    w.iter().zip(y).map(|(a, b)| a * b).sum()
}
