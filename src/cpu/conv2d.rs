//! CPU reference for `shaders/conv2d.wgsl`: 2-D convolution (cross-correlation, as in PyTorch),
//! stride 1, square kernel, symmetric zero padding, NCHW. Plain loops, generic over the float
//! type so the tests can run them in f64. The [`crate::cpu::Cpu`] backend uses the fast f32
//! versions in [`crate::cpu::fast`], which the tests check against these.
//!
//! `output[b, o, y, x] = bias[o] + sum_{c, i, j} weight[o, c, i, j] * input[b, c, y + i - p, x + j - p]`
//! with out-of-range input pixels reading zero.
use crate::ops::ConvShape;
use num_traits::Float;

fn check_lengths(s: &ConvShape, input: usize, weight: usize, output: usize) {
    assert!(
        s.height + 2 * s.padding >= s.kernel && s.width + 2 * s.padding >= s.kernel,
        "conv2d: kernel larger than padded input"
    );
    assert_eq!(input, s.input_len(), "conv2d: input length");
    assert_eq!(weight, s.weight_len(), "conv2d: weight length");
    assert_eq!(output, s.output_len(), "conv2d: output length");
}

/// The input row/column read by output position `o` and kernel tap `t`, or `None` in the padding.
#[inline]
fn source(o: usize, t: usize, padding: usize, size: usize) -> Option<usize> {
    let pos = (o + t).checked_sub(padding)?;
    (pos < size).then_some(pos)
}

pub fn conv2d_forward<T: Float>(
    s: &ConvShape,
    input: &[T],
    weight: &[T],
    bias: &[T],
    output: &mut [T],
) {
    check_lengths(s, input.len(), weight.len(), output.len());
    assert_eq!(bias.len(), s.out_channels, "conv2d: bias length");
    let (c_in, c_out, h, w, k, p) = (
        s.in_channels,
        s.out_channels,
        s.height,
        s.width,
        s.kernel,
        s.padding,
    );
    let (oh, ow) = (s.out_height(), s.out_width());
    for b in 0..s.batch {
        for o in 0..c_out {
            for y in 0..oh {
                for x in 0..ow {
                    let mut acc = bias[o];
                    for c in 0..c_in {
                        for i in 0..k {
                            let Some(iy) = source(y, i, p, h) else {
                                continue;
                            };
                            for j in 0..k {
                                let Some(ix) = source(x, j, p, w) else {
                                    continue;
                                };
                                acc = acc
                                    + weight[((o * c_in + c) * k + i) * k + j]
                                        * input[((b * c_in + c) * h + iy) * w + ix];
                            }
                        }
                    }
                    output[((b * c_out + o) * oh + y) * ow + x] = acc;
                }
            }
        }
    }
}

/// `grad_input[b, c, iy, ix] = sum over (o, i, j) with a valid output position
/// (y, x) = (iy + p - i, ix + p - j) of weight[o, c, i, j] * grad_output[b, o, y, x]`.
pub fn conv2d_backward_input<T: Float>(
    s: &ConvShape,
    grad_output: &[T],
    weight: &[T],
    grad_input: &mut [T],
) {
    check_lengths(s, grad_input.len(), weight.len(), grad_output.len());
    let (c_in, c_out, h, w, k, p) = (
        s.in_channels,
        s.out_channels,
        s.height,
        s.width,
        s.kernel,
        s.padding,
    );
    let (oh, ow) = (s.out_height(), s.out_width());
    for b in 0..s.batch {
        for c in 0..c_in {
            for iy in 0..h {
                for ix in 0..w {
                    let mut acc = T::zero();
                    for o in 0..c_out {
                        for i in 0..k {
                            // output row y with y + i - p == iy
                            let Some(y) = (iy + p).checked_sub(i) else {
                                continue;
                            };
                            if y >= oh {
                                continue;
                            }
                            for j in 0..k {
                                let Some(x) = (ix + p).checked_sub(j) else {
                                    continue;
                                };
                                if x >= ow {
                                    continue;
                                }
                                acc = acc
                                    + weight[((o * c_in + c) * k + i) * k + j]
                                        * grad_output[((b * c_out + o) * oh + y) * ow + x];
                            }
                        }
                    }
                    grad_input[((b * c_in + c) * h + iy) * w + ix] = acc;
                }
            }
        }
    }
}

/// `grad_weight[o, c, i, j] = sum_{b, y, x} grad_output[b, o, y, x] * input[b, c, y + i - p, x + j - p]`,
/// `grad_bias[o] = sum_{b, y, x} grad_output[b, o, y, x]`.
pub fn conv2d_backward_weight<T: Float>(
    s: &ConvShape,
    input: &[T],
    grad_output: &[T],
    grad_weight: &mut [T],
    grad_bias: &mut [T],
) {
    check_lengths(s, input.len(), grad_weight.len(), grad_output.len());
    assert_eq!(grad_bias.len(), s.out_channels, "conv2d: grad_bias length");
    let (c_in, c_out, h, w, k, p) = (
        s.in_channels,
        s.out_channels,
        s.height,
        s.width,
        s.kernel,
        s.padding,
    );
    let (oh, ow) = (s.out_height(), s.out_width());
    for o in 0..c_out {
        for c in 0..c_in {
            for i in 0..k {
                for j in 0..k {
                    let mut acc = T::zero();
                    for b in 0..s.batch {
                        for y in 0..oh {
                            let Some(iy) = source(y, i, p, h) else {
                                continue;
                            };
                            for x in 0..ow {
                                let Some(ix) = source(x, j, p, w) else {
                                    continue;
                                };
                                acc = acc
                                    + grad_output[((b * c_out + o) * oh + y) * ow + x]
                                        * input[((b * c_in + c) * h + iy) * w + ix];
                            }
                        }
                    }
                    grad_weight[((o * c_in + c) * k + i) * k + j] = acc;
                }
            }
        }
        let mut acc = T::zero();
        for b in 0..s.batch {
            let start = (b * c_out + o) * oh * ow;
            for &g in &grad_output[start..start + oh * ow] {
                acc = acc + g;
            }
        }
        grad_bias[o] = acc;
    }
}
