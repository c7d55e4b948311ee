//! Launchers for `shaders/max_pool.wgsl`: max-pool 2x2, stride 2, floor mode.
use super::{Gpu, GpuTensor, Kernel};
use crate::ops::PoolShape;

/// The shader, after the window helpers it shares with the other pooling kernels.
const SOURCE: &str = concat!(
    include_str!("../../shaders/window.wgsl"),
    include_str!("../../shaders/max_pool.wgsl")
);
const FORWARD: Kernel = Kernel {
    file: "max_pool.wgsl",
    source: SOURCE,
    entry: "max_pool_forward",
};
const BACKWARD: Kernel = Kernel {
    file: "max_pool.wgsl",
    source: SOURCE,
    entry: "max_pool_backward",
};

const WORKGROUP: u32 = 256;

/// A thread per output element.
pub fn max_pool_forward(gpu: &Gpu, s: &PoolShape, input: &GpuTensor, output: &GpuTensor) {
    assert_eq!(input.len, s.input_len(), "max_pool_forward: input length");
    assert_eq!(
        output.len,
        s.output_len(),
        "max_pool_forward: output length"
    );
    gpu.dispatch(
        &FORWARD,
        &[&input.buffer, &output.buffer],
        &[
            (s.batch * s.channels) as u32,
            s.height as u32,
            s.width as u32,
            input.off(),
            output.off(),
        ],
        gpu.groups_1d(s.output_len(), WORKGROUP),
    );
}

/// A thread per input element (recomputes its window's argmax; no atomics, every element written).
pub fn max_pool_backward(
    gpu: &Gpu,
    s: &PoolShape,
    input: &GpuTensor,
    grad_output: &GpuTensor,
    grad_input: &GpuTensor,
) {
    assert_eq!(input.len, s.input_len(), "max_pool_backward: input length");
    assert_eq!(
        grad_output.len,
        s.output_len(),
        "max_pool_backward: grad_output length"
    );
    assert_eq!(
        grad_input.len,
        s.input_len(),
        "max_pool_backward: grad_input length"
    );
    gpu.dispatch(
        &BACKWARD,
        &[&input.buffer, &grad_output.buffer, &grad_input.buffer],
        &[
            (s.batch * s.channels) as u32,
            s.height as u32,
            s.width as u32,
            input.off(),
            grad_output.off(),
            grad_input.off(),
        ],
        gpu.groups_1d(s.input_len(), WORKGROUP),
    );
}
