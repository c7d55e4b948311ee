//! Launchers for `shaders/gather.wgsl`: gather (episode assembly from a device-resident
//! dataset) and fill.

use super::{Gpu, GpuTensor, Kernel};

const SOURCE: &str = include_str!("../../shaders/gather.wgsl");
const GATHER: Kernel = Kernel {
    file: "gather.wgsl",
    source: SOURCE,
    entry: "gather",
};
const FILL: Kernel = Kernel {
    file: "gather.wgsl",
    source: SOURCE,
    entry: "fill",
};

pub fn gather(
    gpu: &Gpu,
    item_len: usize,
    dataset: &GpuTensor,
    indices: &GpuTensor,
    output: &GpuTensor,
) {
    let count = indices.len;
    assert_eq!(output.len, count * item_len, "gather: output length");
    gpu.dispatch(
        &GATHER,
        &[&dataset.buffer, &indices.buffer, &output.buffer],
        &[
            count as u32,
            item_len as u32,
            dataset.off(),
            indices.off(),
            output.off(),
        ],
        gpu.groups_1d(count * item_len, 256),
    );
}

pub fn fill(gpu: &Gpu, t: &GpuTensor, value: f32) {
    gpu.dispatch(
        &FILL,
        &[&t.buffer],
        &[t.len as u32, value.to_bits(), t.off()],
        gpu.groups_1d(t.len, 256),
    );
}
