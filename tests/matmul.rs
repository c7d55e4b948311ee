//! The tiled sgemm kernel behind the bench's GPU compute ceiling: GPU vs a plain CPU loop.
mod common;

use common::*;
use fewshot::bench::matmul;
use fewshot::Backend;

/// `c[m, n] = a[m, k] x b[k, n]`, row-major, accumulated in f64 and rounded once.
fn matmul_reference(m: usize, n: usize, k: usize, a: &[f32], b: &[f32]) -> Vec<f32> {
    let mut c = vec![0.0f32; m * n];
    for i in 0..m {
        for j in 0..n {
            let mut sum = 0.0f64;
            for p in 0..k {
                sum += a[i * k + p] as f64 * b[p * n + j] as f64;
            }
            c[i * n + j] = sum as f32;
        }
    }
    c
}

#[test]
fn matmul_matches_cpu() {
    let Some(gpu) = gpu() else { return };
    let mut rng = rng(11);
    // (m, n, k): 1x1x1, shapes below one 64x64 tile and one 16-deep k slice, exactly one tile,
    // and shapes straddling tile and slice edges in every dimension (70 = 64 + 6, 33 = 2*16 + 1).
    for (m, n, k) in [
        (1, 1, 1),
        (5, 7, 3),
        (64, 64, 16),
        (70, 65, 33),
        (3, 130, 100),
        (129, 2, 47),
    ] {
        let a = random(&mut rng, m * k);
        let b = random(&mut rng, k * n);
        let want = matmul_reference(m, n, k, &a, &b);

        // Views at non-zero offsets inside larger buffers.
        let a_buf = gpu.upload_f32(&[vec![9.0; 3], a.clone()].concat());
        let a_view = gpu.view(&a_buf, 3, a.len());
        let b_buf = gpu.upload_f32(&[vec![-9.0; 5], b.clone(), vec![9.0; 2]].concat());
        let b_view = gpu.view(&b_buf, 5, b.len());
        let c_buf = poisoned(gpu, m * n + 2);
        let c_view = gpu.view(&c_buf, 1, m * n);
        matmul::matmul(gpu, m, n, k, &a_view, &b_view, &c_view);
        let all = gpu.read(&c_buf);
        assert!(
            all[0].is_nan() && all[all.len() - 1].is_nan(),
            "matmul {m}x{n}x{k} wrote outside its view"
        );
        // The f64 reference differs from the f32 kernel only by f32 rounding of a k-term sum.
        assert_close(
            &format!("matmul {m}x{n}x{k}"),
            &all[1..all.len() - 1],
            &want,
            F32_TOLERANCE,
        );
    }
    gpu.check().expect("no device errors");
}

#[test]
fn matmul_with_empty_inner_dimension_writes_zeros() {
    let Some(gpu) = gpu() else { return };
    let (m, n) = (3, 70);
    let a = gpu.zeros(0);
    let b = gpu.zeros(0);
    let c = poisoned(gpu, m * n);
    matmul::matmul(gpu, m, n, 0, &a, &b, &c);
    assert!(gpu.read(&c).iter().all(|&v| v == 0.0));
}
