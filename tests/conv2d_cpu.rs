//! Convolution on the CPU: the f64 reference backward passes against finite differences of the
//! reference forward, and the fast f32 versions (im2col + gemm, used by the Cpu backend) against
//! the f32 reference.
mod common;

use common::*;
use fewshot::cpu::{conv2d, fast};
use fewshot::ops::ConvShape;

fn shape(
    batch: usize,
    in_channels: usize,
    out_channels: usize,
    height: usize,
    width: usize,
    kernel: usize,
    padding: usize,
) -> ConvShape {
    ConvShape {
        batch,
        in_channels,
        out_channels,
        height,
        width,
        kernel,
        padding,
    }
}

/// Tiny shapes for finite differences: batch 1, odd and non-square sizes, kernel 3 pad 1,
/// kernel 1 pad 0, kernel 5 pad 2, kernel 3 pad 0 (output smaller than input) and kernel 2
/// pad 1 (output larger than input).
fn fd_shapes() -> Vec<ConvShape> {
    vec![
        shape(1, 1, 1, 3, 3, 3, 1),
        shape(2, 2, 3, 5, 4, 3, 1),
        shape(1, 3, 2, 3, 5, 1, 0),
        shape(2, 2, 2, 5, 5, 5, 2),
        shape(1, 2, 3, 5, 4, 3, 0),
        shape(2, 2, 2, 3, 4, 2, 1),
    ]
}

fn forward64(s: &ConvShape, input: &[f64], weight: &[f64], bias: &[f64]) -> Vec<f64> {
    let mut out = vec![0.0; s.output_len()];
    conv2d::conv2d_forward(s, input, weight, bias, &mut out);
    out
}

#[test]
fn conv2d_forward_matches_hand_computed_values() {
    // One 3x3 image, one 3x3 kernel of ones, padding 1: each output is bias + the sum of its
    // in-bounds 3x3 neighbourhood.
    let s = shape(1, 1, 1, 3, 3, 3, 1);
    let input: Vec<f64> = (1..=9).map(f64::from).collect();
    let out = forward64(&s, &input, &[1.0; 9], &[0.5]);
    let want = [12.0, 21.0, 16.0, 27.0, 45.0, 33.0, 24.0, 39.0, 28.0].map(|v| v + 0.5);
    assert_eq!(out, want);
    // Kernel 1, two channels in, one out: a per-pixel weighted sum.
    let s = shape(1, 2, 1, 1, 2, 1, 0);
    let out = forward64(&s, &[1.0, 2.0, 3.0, 4.0], &[10.0, 100.0], &[0.0]);
    assert_eq!(out, [310.0, 420.0]);
}

#[test]
fn conv2d_backward_input_matches_finite_differences() {
    let mut rng = rng(11);
    for s in fd_shapes() {
        let input = random_f64(&mut rng, s.input_len());
        let weight = random_f64(&mut rng, s.weight_len());
        let bias = random_f64(&mut rng, s.out_channels);
        let w = random_f64(&mut rng, s.output_len());
        let mut grad_input = vec![f64::NAN; s.input_len()];
        conv2d::conv2d_backward_input(&s, &w, &weight, &mut grad_input);
        let numeric =
            finite_differences(&input, 1e-6, |x| dot(&w, &forward64(&s, x, &weight, &bias)));
        assert_grad_close(
            &format!("conv2d grad_input {s:?}"),
            &grad_input,
            &numeric,
            1e-6,
        );
    }
}

#[test]
fn conv2d_backward_weight_matches_finite_differences() {
    let mut rng = rng(12);
    for s in fd_shapes() {
        let input = random_f64(&mut rng, s.input_len());
        let weight = random_f64(&mut rng, s.weight_len());
        let bias = random_f64(&mut rng, s.out_channels);
        let w = random_f64(&mut rng, s.output_len());
        let mut grad_weight = vec![f64::NAN; s.weight_len()];
        let mut grad_bias = vec![f64::NAN; s.out_channels];
        conv2d::conv2d_backward_weight(&s, &input, &w, &mut grad_weight, &mut grad_bias);
        let numeric =
            finite_differences(&weight, 1e-6, |x| dot(&w, &forward64(&s, &input, x, &bias)));
        assert_grad_close(
            &format!("conv2d grad_weight {s:?}"),
            &grad_weight,
            &numeric,
            1e-6,
        );
        let numeric =
            finite_differences(&bias, 1e-6, |x| dot(&w, &forward64(&s, &input, &weight, x)));
        assert_grad_close(
            &format!("conv2d grad_bias {s:?}"),
            &grad_bias,
            &numeric,
            1e-6,
        );
    }
}

/// Shapes for the fast path: batch 1, odd sizes (7x7, 3x3, non-square), in_channels 1 and
/// more, kernels 3/1/5/2 with various paddings, and batches large enough that small feature
/// maps are grouped several images per gemm, with a ragged last chunk, and more chunks (37
/// single-image chunks at 23x23) than backward-weight groups (32), so groups are uneven.
fn fast_shapes() -> Vec<ConvShape> {
    vec![
        shape(1, 1, 4, 7, 7, 3, 1),
        shape(3, 1, 8, 28, 28, 3, 1),
        shape(1, 5, 6, 3, 3, 3, 1),
        shape(13, 6, 5, 7, 7, 3, 1),
        shape(70, 4, 3, 3, 3, 3, 1),
        shape(41, 3, 4, 3, 5, 3, 1),
        shape(37, 2, 3, 23, 23, 3, 1),
        shape(2, 3, 4, 6, 5, 1, 0),
        shape(5, 2, 3, 9, 8, 5, 2),
        shape(4, 3, 2, 7, 6, 3, 0),
        shape(3, 2, 3, 4, 5, 2, 1),
        shape(2, 2, 3, 4, 4, 3, 3),
    ]
}

/// A NaN-filled output with one guard element on each side, to catch writes outside it.
fn guarded(len: usize) -> Vec<f32> {
    vec![f32::NAN; len + 2]
}

#[track_caller]
fn assert_guards_untouched(what: &str, buf: &[f32]) {
    assert!(
        buf[0].is_nan() && buf[buf.len() - 1].is_nan(),
        "{what}: wrote outside its output"
    );
}

#[test]
fn fast_conv2d_matches_reference() {
    let mut rng = rng(13);
    for s in fast_shapes() {
        let input = random(&mut rng, s.input_len());
        let weight = random(&mut rng, s.weight_len());
        let bias = random(&mut rng, s.out_channels);
        let grad_output = random(&mut rng, s.output_len());

        let mut want = vec![0.0; s.output_len()];
        conv2d::conv2d_forward(&s, &input, &weight, &bias, &mut want);
        let mut got = guarded(s.output_len());
        let n = got.len() - 1;
        fast::conv2d_forward(&s, &input, &weight, &bias, &mut got[1..n]);
        assert_guards_untouched("forward", &got);
        assert_close(
            &format!("fast forward {s:?}"),
            &got[1..n],
            &want,
            F32_TOLERANCE,
        );

        let mut want = vec![0.0; s.input_len()];
        conv2d::conv2d_backward_input(&s, &grad_output, &weight, &mut want);
        let mut got = guarded(s.input_len());
        let n = got.len() - 1;
        fast::conv2d_backward_input(&s, &grad_output, &weight, &mut got[1..n]);
        assert_guards_untouched("backward_input", &got);
        assert_close(
            &format!("fast grad_input {s:?}"),
            &got[1..n],
            &want,
            F32_TOLERANCE,
        );

        let mut want_w = vec![0.0; s.weight_len()];
        let mut want_b = vec![0.0; s.out_channels];
        conv2d::conv2d_backward_weight(&s, &input, &grad_output, &mut want_w, &mut want_b);
        let mut got_w = guarded(s.weight_len());
        let mut got_b = guarded(s.out_channels);
        let (nw, nb) = (got_w.len() - 1, got_b.len() - 1);
        fast::conv2d_backward_weight(
            &s,
            &input,
            &grad_output,
            &mut got_w[1..nw],
            &mut got_b[1..nb],
        );
        assert_guards_untouched("backward_weight", &got_w);
        assert_guards_untouched("backward_bias", &got_b);
        assert_close(
            &format!("fast grad_weight {s:?}"),
            &got_w[1..nw],
            &want_w,
            F32_TOLERANCE,
        );
        assert_close(
            &format!("fast grad_bias {s:?}"),
            &got_b[1..nb],
            &want_b,
            F32_TOLERANCE,
        );
    }
}

#[test]
fn fast_conv2d_is_deterministic() {
    // Enough images for many chunks and groups (one image per chunk at 23x23), so parallel
    // scheduling would show up if the reductions depended on it.
    let s = shape(100, 4, 8, 23, 23, 3, 1);
    let mut rng = rng(14);
    let input = random(&mut rng, s.input_len());
    let weight = random(&mut rng, s.weight_len());
    let bias = random(&mut rng, s.out_channels);
    let grad_output = random(&mut rng, s.output_len());
    let run = || {
        let mut y = vec![0.0; s.output_len()];
        let mut gi = vec![0.0; s.input_len()];
        let mut gw = vec![0.0; s.weight_len()];
        let mut gb = vec![0.0; s.out_channels];
        fast::conv2d_forward(&s, &input, &weight, &bias, &mut y);
        fast::conv2d_backward_input(&s, &grad_output, &weight, &mut gi);
        fast::conv2d_backward_weight(&s, &input, &grad_output, &mut gw, &mut gb);
        [y, gi, gw, gb].map(|v| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>())
    };
    let first = run();
    for _ in 0..3 {
        assert!(run() == first, "fast conv2d results differ between runs");
    }
}

#[test]
fn cpu_backend_uses_views_for_conv2d() {
    // The backend on views at non-zero offsets of shared buffers, with the weight and bias
    // gradients side by side in one flat buffer, as the model lays them out.
    use fewshot::cpu::Cpu;
    use fewshot::Backend;
    let cpu = Cpu::new();
    let s = shape(3, 2, 4, 5, 5, 3, 1);
    let mut rng = rng(15);
    let input = random(&mut rng, s.input_len());
    let weight = random(&mut rng, s.weight_len());
    let bias = random(&mut rng, s.out_channels);
    let grad_output = random(&mut rng, s.output_len());
    let params = cpu.tensor_from(&[vec![9.0; 3], weight.clone(), bias.clone()].concat());
    let w_view = cpu.view(&params, 3, s.weight_len());
    let b_view = cpu.view(&params, 3 + s.weight_len(), s.out_channels);
    let x = cpu.tensor_from(&[vec![9.0; 2], input.clone()].concat());
    let x_view = cpu.view(&x, 2, s.input_len());
    let dy = cpu.tensor_from(&[vec![9.0; 1], grad_output.clone()].concat());
    let dy_view = cpu.view(&dy, 1, s.output_len());

    let y = cpu.tensor_from(&guarded(s.output_len()));
    cpu.conv2d_forward(
        &s,
        &x_view,
        &w_view,
        &b_view,
        &cpu.view(&y, 1, s.output_len()),
    );
    let gi = cpu.tensor_from(&guarded(s.input_len()));
    cpu.conv2d_backward_input(&s, &dy_view, &w_view, &cpu.view(&gi, 1, s.input_len()));
    let grads = cpu.tensor_from(&vec![f32::NAN; 2 + s.weight_len() + s.out_channels]);
    let gw_view = cpu.view(&grads, 1, s.weight_len());
    let gb_view = cpu.view(&grads, 1 + s.weight_len(), s.out_channels);
    cpu.conv2d_backward_weight(&s, &x_view, &dy_view, &gw_view, &gb_view);

    let mut want = vec![0.0; s.output_len()];
    conv2d::conv2d_forward(&s, &input, &weight, &bias, &mut want);
    let y = cpu.read(&y);
    assert_guards_untouched("backend forward", &y);
    assert_close("backend forward", &y[1..y.len() - 1], &want, F32_TOLERANCE);
    let mut want = vec![0.0; s.input_len()];
    conv2d::conv2d_backward_input(&s, &grad_output, &weight, &mut want);
    let gi = cpu.read(&gi);
    assert_guards_untouched("backend grad_input", &gi);
    assert_close(
        "backend grad_input",
        &gi[1..gi.len() - 1],
        &want,
        F32_TOLERANCE,
    );
    let mut want_w = vec![0.0; s.weight_len()];
    let mut want_b = vec![0.0; s.out_channels];
    conv2d::conv2d_backward_weight(&s, &input, &grad_output, &mut want_w, &mut want_b);
    assert_close(
        "backend grad_weight",
        &cpu.read(&gw_view),
        &want_w,
        F32_TOLERANCE,
    );
    assert_close(
        "backend grad_bias",
        &cpu.read(&gb_view),
        &want_b,
        F32_TOLERANCE,
    );
    let all = cpu.read(&grads);
    assert!(
        all[0].is_nan() && all[all.len() - 1].is_nan(),
        "backend backward_weight wrote outside its views"
    );
}
