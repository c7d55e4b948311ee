//! Launchers for `shaders/conv2d.wgsl`: convolution forward, input gradient (transposed
//! convolution, gather form), weight and bias gradients (workgroup tree reductions).
use super::{Gpu, GpuTensor, Kernel};
use crate::ops::ConvShape;

const SOURCE: &str = include_str!("../../shaders/conv2d.wgsl");
const FORWARD: Kernel = Kernel {
    file: "conv2d.wgsl",
    source: SOURCE,
    entry: "conv2d_forward",
};
const BACKWARD_INPUT: Kernel = Kernel {
    file: "conv2d.wgsl",
    source: SOURCE,
    entry: "conv2d_backward_input",
};
const BACKWARD_WEIGHT: Kernel = Kernel {
    file: "conv2d.wgsl",
    source: SOURCE,
    entry: "conv2d_backward_weight",
};
const BACKWARD_BIAS: Kernel = Kernel {
    file: "conv2d.wgsl",
    source: SOURCE,
    entry: "conv2d_backward_bias",
};

/// Threads per workgroup of every conv2d kernel (the shader's `@workgroup_size`).
const WORKGROUP: u32 = 256;

/// The shape words every kernel's Params struct starts with (except the bias kernel's).
fn shape_words(s: &ConvShape) -> [u32; 9] {
    assert!(s.kernel >= 1, "conv2d: kernel size must be at least 1");
    assert!(
        s.height + 2 * s.padding >= s.kernel && s.width + 2 * s.padding >= s.kernel,
        "conv2d: kernel {} larger than the padded {}x{} input",
        s.kernel,
        s.height,
        s.width
    );
    [
        s.batch as u32,
        s.in_channels as u32,
        s.out_channels as u32,
        s.height as u32,
        s.width as u32,
        s.kernel as u32,
        s.padding as u32,
        s.out_height() as u32,
        s.out_width() as u32,
    ]
}

pub fn conv2d_forward(
    gpu: &Gpu,
    s: &ConvShape,
    input: &GpuTensor,
    weight: &GpuTensor,
    bias: &GpuTensor,
    output: &GpuTensor,
) {
    assert_eq!(input.len, s.input_len(), "conv2d_forward: input length");
    assert_eq!(weight.len, s.weight_len(), "conv2d_forward: weight length");
    assert_eq!(bias.len, s.out_channels, "conv2d_forward: bias length");
    assert_eq!(output.len, s.output_len(), "conv2d_forward: output length");
    let mut params = shape_words(s).to_vec();
    params.extend([input.off(), weight.off(), bias.off(), output.off()]);
    gpu.dispatch(
        &FORWARD,
        &[&input.buffer, &weight.buffer, &bias.buffer, &output.buffer],
        &params,
        gpu.groups_1d(s.output_len(), WORKGROUP),
    );
}

pub fn conv2d_backward_input(
    gpu: &Gpu,
    s: &ConvShape,
    grad_output: &GpuTensor,
    weight: &GpuTensor,
    grad_input: &GpuTensor,
) {
    assert_eq!(
        grad_output.len,
        s.output_len(),
        "conv2d_backward_input: grad_output length"
    );
    assert_eq!(
        weight.len,
        s.weight_len(),
        "conv2d_backward_input: weight length"
    );
    assert_eq!(
        grad_input.len,
        s.input_len(),
        "conv2d_backward_input: grad_input length"
    );
    let mut params = shape_words(s).to_vec();
    params.extend([grad_output.off(), weight.off(), grad_input.off()]);
    gpu.dispatch(
        &BACKWARD_INPUT,
        &[&grad_output.buffer, &weight.buffer, &grad_input.buffer],
        &params,
        gpu.groups_1d(s.input_len(), WORKGROUP),
    );
}

/// Two dispatches: the weight gradient (one workgroup per weight element) and the bias
/// gradient (one workgroup per output channel). They are separate launches so that the two
/// outputs may be disjoint views of one flat gradient buffer without binding it twice.
pub fn conv2d_backward_weight(
    gpu: &Gpu,
    s: &ConvShape,
    input: &GpuTensor,
    grad_output: &GpuTensor,
    grad_weight: &GpuTensor,
    grad_bias: &GpuTensor,
) {
    assert_eq!(
        input.len,
        s.input_len(),
        "conv2d_backward_weight: input length"
    );
    assert_eq!(
        grad_output.len,
        s.output_len(),
        "conv2d_backward_weight: grad_output length"
    );
    assert_eq!(
        grad_weight.len,
        s.weight_len(),
        "conv2d_backward_weight: grad_weight length"
    );
    assert_eq!(
        grad_bias.len, s.out_channels,
        "conv2d_backward_weight: grad_bias length"
    );
    let mut params = shape_words(s).to_vec();
    params.extend([input.off(), grad_output.off(), grad_weight.off()]);
    // groups_1d with a "workgroup" of 1 gives one workgroup per element, spilled into y.
    gpu.dispatch(
        &BACKWARD_WEIGHT,
        &[&input.buffer, &grad_output.buffer, &grad_weight.buffer],
        &params,
        gpu.groups_1d(s.weight_len(), 1),
    );
    let out_hw = s.out_height() * s.out_width();
    gpu.dispatch(
        &BACKWARD_BIAS,
        &[&grad_output.buffer, &grad_bias.buffer],
        &[
            s.batch as u32,
            s.out_channels as u32,
            out_hw as u32,
            grad_output.off(),
            grad_bias.off(),
        ],
        gpu.groups_1d(s.out_channels, 1),
    );
}
