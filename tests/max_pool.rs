//! Max-pool 2x2 stride 2 (floor mode): GPU vs CPU reference, and the CPU backward against finite
//! differences.
mod common;

use common::*;
use fewshot::cpu::max_pool as cpu;
use fewshot::gpu::{Gpu, GpuTensor};
use fewshot::ops::PoolShape;
use fewshot::Backend;
use rand::seq::SliceRandom;

/// 7x7 -> 3x3 and 3x3 -> 1x1 (odd sizes drop a row and a column), batch 1, a 5x7 map, 2x2 -> 1x1,
/// and the Conv-4 block [4, 64, 14, 14] -> 7x7.
const SHAPES: [(usize, usize, usize, usize); 6] = [
    (1, 1, 7, 7),
    (1, 1, 3, 3),
    (2, 3, 5, 7),
    (3, 2, 2, 2),
    (1, 5, 6, 9),
    (4, 64, 14, 14),
];

fn shape((batch, channels, height, width): (usize, usize, usize, usize)) -> PoolShape {
    PoolShape {
        batch,
        channels,
        height,
        width,
    }
}

/// Random values rounded to multiples of 1/4, so many windows hold ties and the first-maximum
/// rule is exercised.
fn tied_input(rng: &mut rand_chacha::ChaCha8Rng, len: usize) -> Vec<f32> {
    random(rng, len)
        .iter()
        .map(|v| (v * 4.0).round() / 4.0)
        .collect()
}

/// A NaN-poisoned buffer with a view at offset 1 and a NaN guard after it.
fn poisoned_view(gpu: &Gpu, len: usize) -> (GpuTensor, GpuTensor) {
    let all = poisoned(gpu, len + 2);
    let view = gpu.view(&all, 1, len);
    (all, view)
}

fn read_view(gpu: &Gpu, all: &GpuTensor, what: &str) -> Vec<f32> {
    let data = gpu.read(all);
    assert!(
        data[0].is_nan() && data[data.len() - 1].is_nan(),
        "{what} wrote outside its view"
    );
    data[1..data.len() - 1].to_vec()
}

fn upload_at(gpu: &Gpu, data: &[f32], off: usize) -> GpuTensor {
    let t = gpu.upload_f32(&[vec![f32::NAN; off], data.to_vec()].concat());
    gpu.view(&t, off, data.len())
}

#[test]
fn max_pool_forward_matches_cpu() {
    let Some(gpu) = gpu() else { return };
    let mut rng = rng(21);
    for dims in SHAPES {
        let s = shape(dims);
        let x = tied_input(&mut rng, s.input_len());
        let mut want = vec![0.0; s.output_len()];
        cpu::max_pool_forward(&s, &x, &mut want);
        let (all, out) = poisoned_view(gpu, s.output_len());
        gpu.max_pool_forward(&s, &upload_at(gpu, &x, 3), &out);
        // Selection only: the GPU must reproduce the CPU values exactly.
        assert_close(
            &format!("max_pool_forward {dims:?}"),
            &read_view(gpu, &all, "max_pool_forward"),
            &want,
            0.0,
        );
    }
}

#[test]
fn max_pool_backward_matches_cpu() {
    let Some(gpu) = gpu() else { return };
    let mut rng = rng(22);
    for dims in SHAPES {
        let s = shape(dims);
        let x = tied_input(&mut rng, s.input_len());
        let dy = random(&mut rng, s.output_len());
        let mut want = vec![f32::NAN; s.input_len()];
        cpu::max_pool_backward(&s, &x, &dy, &mut want);
        let routed = want.iter().filter(|&&v| v != 0.0).count();
        assert_eq!(
            routed,
            s.output_len(),
            "each output gradient reaches exactly one input"
        );
        let (all, dx) = poisoned_view(gpu, s.input_len());
        gpu.max_pool_backward(&s, &upload_at(gpu, &x, 2), &upload_at(gpu, &dy, 5), &dx);
        assert_close(
            &format!("max_pool_backward {dims:?}"),
            &read_view(gpu, &all, "max_pool_backward"),
            &want,
            0.0,
        );
    }
}

#[test]
fn max_pool_backward_matches_finite_differences() {
    let mut rng = rng(23);
    for (batch, channels, height, width) in [(1, 1, 7, 7), (2, 2, 3, 5), (1, 1, 4, 4)] {
        let s = PoolShape {
            batch,
            channels,
            height,
            width,
        };
        // Distinct values 1/len apart, so no window has a tie within the step h.
        let mut x: Vec<f64> = (0..s.input_len())
            .map(|i| i as f64 / s.input_len() as f64)
            .collect();
        x.shuffle(&mut rng);
        let w = random_f64(&mut rng, s.output_len());
        let mut dx = vec![f64::NAN; s.input_len()];
        cpu::max_pool_backward(&s, &x, &w, &mut dx);
        let forward = |x: &[f64]| {
            let mut y = vec![0.0; s.output_len()];
            cpu::max_pool_forward(&s, x, &mut y);
            dot(&w, &y)
        };
        let numeric = finite_differences(&x, 1e-6, forward);
        assert_grad_close(
            &format!("max_pool [{batch}, {channels}, {height}, {width}]"),
            &dx,
            &numeric,
            1e-6,
        );
    }
}

/// 1x1x3x3 -> 1x1: only the top-left 2x2 window counts; the last row and column are dropped
/// (9 is the largest value but never the output), and they get zero gradient. A second input
/// with ties sends the gradient to the first maximum only.
#[test]
fn max_pool_floor_mode_drops_last_row_and_column() {
    let s = PoolShape {
        batch: 1,
        channels: 1,
        height: 3,
        width: 3,
    };
    let cases: [([f32; 9], f32, [f32; 9]); 2] = [
        (
            [1.0, 2.0, 9.0, 4.0, 5.0, 9.0, 9.0, 9.0, 9.0],
            5.0,
            [0.0, 0.0, 0.0, 0.0, 2.0, 0.0, 0.0, 0.0, 0.0],
        ),
        (
            [5.0, 5.0, 7.0, 5.0, 1.0, 7.0, 7.0, 7.0, 7.0],
            5.0,
            [2.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0],
        ),
    ];
    for (x, want_y, want_dx) in cases {
        let mut y = [f32::NAN];
        cpu::max_pool_forward(&s, &x, &mut y);
        assert_eq!(y, [want_y], "cpu forward {x:?}");
        let mut dx = [f32::NAN; 9];
        cpu::max_pool_backward(&s, &x, &[2.0], &mut dx);
        assert_eq!(dx, want_dx, "cpu backward {x:?}");
        if let Some(gpu) = gpu() {
            let xg = gpu.upload_f32(&x);
            let yg = poisoned(gpu, 1);
            gpu.max_pool_forward(&s, &xg, &yg);
            assert_eq!(gpu.read(&yg), vec![want_y], "gpu forward {x:?}");
            let dxg = poisoned(gpu, 9);
            gpu.max_pool_backward(&s, &xg, &gpu.upload_f32(&[2.0]), &dxg);
            assert_eq!(gpu.read(&dxg), want_dx.to_vec(), "gpu backward {x:?}");
        }
    }
}
