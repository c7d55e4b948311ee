//! Launchers for `shaders/prototypes.wgsl`: class prototypes (per-class means) and backward.
use super::{Gpu, GpuTensor, Kernel};

const SOURCE: &str = include_str!("../../shaders/prototypes.wgsl");
const PROTOTYPES: Kernel = Kernel {
    file: "prototypes.wgsl",
    source: SOURCE,
    entry: "prototypes",
};
const PROTOTYPES_BACKWARD: Kernel = Kernel {
    file: "prototypes.wgsl",
    source: SOURCE,
    entry: "prototypes_backward",
};

/// `labels` is a u32 view with one label (below `way`) per support row.
pub fn prototypes(
    gpu: &Gpu,
    way: usize,
    dim: usize,
    support: &GpuTensor,
    labels: &GpuTensor,
    prototypes: &GpuTensor,
) {
    let rows = labels.len;
    assert_eq!(support.len, rows * dim, "prototypes: support length");
    assert_eq!(prototypes.len, way * dim, "prototypes: prototypes length");
    gpu.dispatch(
        &PROTOTYPES,
        &[&support.buffer, &labels.buffer, &prototypes.buffer],
        &[
            way as u32,
            dim as u32,
            rows as u32,
            support.off(),
            labels.off(),
            prototypes.off(),
        ],
        gpu.groups_1d(way * dim, 256),
    );
}

pub fn prototypes_backward(
    gpu: &Gpu,
    way: usize,
    dim: usize,
    labels: &GpuTensor,
    grad_prototypes: &GpuTensor,
    grad_support: &GpuTensor,
) {
    let rows = labels.len;
    assert_eq!(
        grad_prototypes.len,
        way * dim,
        "prototypes_backward: grad_prototypes length"
    );
    assert_eq!(
        grad_support.len,
        rows * dim,
        "prototypes_backward: grad_support length"
    );
    gpu.dispatch(
        &PROTOTYPES_BACKWARD,
        &[
            &labels.buffer,
            &grad_prototypes.buffer,
            &grad_support.buffer,
        ],
        &[
            way as u32,
            dim as u32,
            rows as u32,
            labels.off(),
            grad_prototypes.off(),
            grad_support.off(),
        ],
        gpu.groups_1d(rows * dim, 256),
    );
}
