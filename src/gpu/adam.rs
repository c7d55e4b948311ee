//! Launchers for `shaders/adam.wgsl`.
use super::{Gpu, GpuTensor, Kernel};
use crate::ops::AdamStep;

const SOURCE: &str = include_str!("../../shaders/adam.wgsl");
const ADAM: Kernel = Kernel {
    file: "adam.wgsl",
    source: SOURCE,
    entry: "adam",
};

/// One Adam step over the whole flat buffer in one dispatch; the bias corrections are computed
/// on the host so that both paths use the identical f32 values.
pub fn adam(
    gpu: &Gpu,
    p: &AdamStep,
    params: &GpuTensor,
    grads: &GpuTensor,
    m: &GpuTensor,
    v: &GpuTensor,
) {
    let n = params.len;
    assert_eq!(grads.len, n, "adam: grads length");
    assert_eq!(m.len, n, "adam: m length");
    assert_eq!(v.len, n, "adam: v length");
    gpu.dispatch(
        &ADAM,
        &[&params.buffer, &grads.buffer, &m.buffer, &v.buffer],
        &[
            n as u32,
            p.lr.to_bits(),
            p.beta1.to_bits(),
            p.beta2.to_bits(),
            p.eps.to_bits(),
            p.bias_correction1().to_bits(),
            p.bias_correction2().to_bits(),
            p.grad_scale.to_bits(),
            params.off(),
            grads.off(),
            m.off(),
            v.off(),
        ],
        gpu.groups_1d(n, 256),
    );
}
