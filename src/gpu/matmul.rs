//! Launcher for `shaders/matmul.wgsl`: a tiled sgemm (64 x 64 tiles, 4 x 4 register blocks),
//! used by `fewshot bench` as the GPU's compute ceiling. Not part of the training path.

use crate::gpu::{Gpu, GpuTensor, Kernel};

const SOURCE: &str = include_str!("../../shaders/matmul.wgsl");
const MATMUL: Kernel = Kernel {
    file: "matmul.wgsl",
    source: SOURCE,
    entry: "matmul",
};

/// Rows and columns of `c` computed by one workgroup.
pub const TILE: usize = 64;

/// `c[m, n] = a[m, k] x b[k, n]`, all row-major views; `c` is overwritten.
pub fn matmul(
    gpu: &Gpu,
    m: usize,
    n: usize,
    k: usize,
    a: &GpuTensor,
    b: &GpuTensor,
    c: &GpuTensor,
) {
    assert_eq!(a.len, m * k, "matmul: a length");
    assert_eq!(b.len, k * n, "matmul: b length");
    assert_eq!(c.len, m * n, "matmul: c length");
    let groups = [n.div_ceil(TILE) as u32, m.div_ceil(TILE) as u32, 1];
    gpu.dispatch(
        &MATMUL,
        &[&a.buffer, &b.buffer, &c.buffer],
        &[m as u32, n as u32, k as u32, a.off(), b.off(), c.off()],
        groups,
    );
}

/// Floating-point operations of one [`matmul`] (a multiply and an add per term).
pub fn flops(m: usize, n: usize, k: usize) -> f64 {
    2.0 * m as f64 * n as f64 * k as f64
}
