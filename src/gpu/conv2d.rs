//! Launchers for `shaders/conv2d.wgsl`: the convolution and its input gradient as one
//! implicit-GEMM kernel (64 x 64 tiles, 16-deep slices, 4 x 4 register blocks), the weight and
//! bias gradients as a split-K implicit GEMM into a cached scratch buffer followed by a
//! fixed-order sum of the splits.

use super::{Gpu, GpuTensor, Kernel};
use crate::ops::ConvShape;

const SOURCE: &str = include_str!("../../shaders/conv2d.wgsl");
const GEMM: Kernel = Kernel {
    file: "conv2d.wgsl",
    source: SOURCE,
    entry: "conv2d_gemm",
};
const DIRECT: Kernel = Kernel {
    file: "conv2d.wgsl",
    source: SOURCE,
    entry: "conv2d_direct",
};
const WEIGHT_PARTIAL: Kernel = Kernel {
    file: "conv2d.wgsl",
    source: SOURCE,
    entry: "conv2d_weight_partial",
};
const SUM_SPLITS: Kernel = Kernel {
    file: "conv2d.wgsl",
    source: SOURCE,
    entry: "conv2d_sum_splits",
};

/// Rows and columns of one GEMM tile (the shader's `TILE`).
const TILE: usize = 64;
/// Depth of one K' slice (the shader's `SLICE`).
const SLICE: usize = 16;
/// Fewer destination channels than this take `conv2d_direct` instead of the tiled GEMM.
const DIRECT_BELOW: usize = 8;
/// Threads per workgroup of `conv2d_direct` and `conv2d_sum_splits`.
const WORKGROUP: u32 = 256;
/// The weight gradient aims at about this many workgroups (tiles x splits): a few per
/// compute unit on any current GPU (a 4090 has 128 SMs, an M2 Max 38 cores).
const TARGET_WORKGROUPS: usize = 512;
/// Each split walks at least this many slices, so the partial sums stay worth their traffic.
const MIN_SLICES_PER_SPLIT: usize = 8;
/// Upper bound of the split-K scratch buffer, in floats (64 MiB).
const MAX_SCRATCH: usize = 16 << 20;

fn check_shape(s: &ConvShape) {
    assert!(s.kernel >= 1, "conv2d: kernel size must be at least 1");
    assert!(
        s.height + 2 * s.padding >= s.kernel && s.width + 2 * s.padding >= s.kernel,
        "conv2d: kernel {} larger than the padded {}x{} input",
        s.kernel,
        s.height,
        s.width
    );
}

/// The kernel for a convolution with `dst.0` destination channels (tiled GEMM, or direct for
/// few channels), its parameter words up to (excluding) the four offsets, and its workgroups.
#[allow(clippy::too_many_arguments)]
fn gemm_words(
    gpu: &Gpu,
    s: &ConvShape,
    src: (usize, usize, usize),
    dst: (usize, usize, usize),
    flip: bool,
    w_strides: (usize, usize),
    has_bias: bool,
) -> (Kernel, Vec<u32>, [u32; 3]) {
    check_shape(s);
    let rows = s.batch * dst.1 * dst.2;
    let n_tiles = dst.0.div_ceil(TILE);
    let tiles = rows.div_ceil(TILE) * n_tiles;
    let words = vec![
        s.batch as u32,
        src.0 as u32,
        src.1 as u32,
        src.2 as u32,
        dst.0 as u32,
        dst.1 as u32,
        dst.2 as u32,
        s.kernel as u32,
        s.padding as u32,
        flip as u32,
        w_strides.0 as u32,
        w_strides.1 as u32,
        has_bias as u32,
        n_tiles as u32,
        tiles as u32,
    ];
    if dst.0 < DIRECT_BELOW {
        (DIRECT, words, gpu.groups_1d(rows * dst.0, WORKGROUP))
    } else {
        (GEMM, words, gpu.groups_1d(tiles, 1))
    }
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
    let kk = s.kernel * s.kernel;
    let (kernel, mut params, groups) = gemm_words(
        gpu,
        s,
        (s.in_channels, s.height, s.width),
        (s.out_channels, s.out_height(), s.out_width()),
        false,
        (s.in_channels * kk, kk),
        true,
    );
    params.extend([input.off(), weight.off(), bias.off(), output.off()]);
    gpu.dispatch(
        &kernel,
        &[&input.buffer, &weight.buffer, &bias.buffer, &output.buffer],
        &params,
        groups,
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
    let kk = s.kernel * s.kernel;
    let (kernel, mut params, groups) = gemm_words(
        gpu,
        s,
        (s.out_channels, s.out_height(), s.out_width()),
        (s.in_channels, s.height, s.width),
        true,
        (kk, s.in_channels * kk),
        false,
    );
    // No bias: the bias binding gets the weight buffer, which the kernel then never reads.
    params.extend([grad_output.off(), weight.off(), 0, grad_input.off()]);
    gpu.dispatch(
        &kernel,
        &[
            &grad_output.buffer,
            &weight.buffer,
            &weight.buffer,
            &grad_input.buffer,
        ],
        &params,
        groups,
    );
}

/// How the weight gradient's K' = batch * out_h * out_w positions are split: `(splits, chunk)`
/// with `chunk` a multiple of [`SLICE`] and no empty split. Depends on the shape only, so the
/// summation order (hence the result) is the same on every call.
fn split_plan(rows: usize, cols: usize, depth: usize, max_scratch: usize) -> (usize, usize) {
    let tiles = (rows.div_ceil(TILE) * cols.div_ceil(TILE)).max(1);
    let slices = depth.div_ceil(SLICE).max(1);
    let by_work = (slices / MIN_SLICES_PER_SPLIT).max(1);
    let by_memory = (max_scratch / (rows * cols + rows).max(1)).max(1);
    let splits = TARGET_WORKGROUPS
        .div_ceil(tiles)
        .clamp(1, by_work.min(by_memory));
    let chunk_slices = slices.div_ceil(splits);
    (slices.div_ceil(chunk_slices), chunk_slices * SLICE)
}

/// Three dispatches: the split-K partial sums of both gradients into the scratch buffer, then
/// the sums of the splits into the weight gradient and into the bias gradient (separate
/// launches, so that the two outputs may be disjoint views of one flat gradient buffer).
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
    check_shape(s);
    let rows = s.out_channels;
    let cols = s.in_channels * s.kernel * s.kernel;
    let depth = s.batch * s.out_height() * s.out_width();
    let binding_floats = (gpu.limits.max_storage_buffer_binding_size / 4) as usize;
    let (splits, chunk) = split_plan(rows, cols, depth, MAX_SCRATCH.min(binding_floats));
    let n_tiles = cols.div_ceil(TILE);
    let tiles = rows.div_ceil(TILE) * n_tiles;
    let needed = splits * (rows * cols + rows);

    gpu.with_scratch("conv2d_backward_weight.partials", needed, |scratch| {
        let mut params = vec![
            s.batch as u32,
            s.in_channels as u32,
            s.out_channels as u32,
            s.height as u32,
            s.width as u32,
            s.kernel as u32,
            s.padding as u32,
            s.out_height() as u32,
            s.out_width() as u32,
            n_tiles as u32,
            tiles as u32,
            chunk as u32,
            splits as u32,
        ];
        params.extend([input.off(), grad_output.off(), 0]);
        gpu.dispatch(
            &WEIGHT_PARTIAL,
            &[&input.buffer, &grad_output.buffer, scratch],
            &params,
            gpu.groups_1d(tiles * splits, 1),
        );
        let weights = rows * cols;
        gpu.dispatch(
            &SUM_SPLITS,
            &[scratch, &grad_weight.buffer],
            &[weights as u32, splits as u32, 0, grad_weight.off()],
            gpu.groups_1d(weights, WORKGROUP),
        );
        gpu.dispatch(
            &SUM_SPLITS,
            &[scratch, &grad_bias.buffer],
            &[
                rows as u32,
                splits as u32,
                (splits * weights) as u32,
                grad_bias.off(),
            ],
            gpu.groups_1d(rows, WORKGROUP),
        );
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_plan_covers_depth_without_empty_splits() {
        for &(rows, cols, depth) in &[
            (64, 576, 600 * 28 * 28),
            (64, 9, 600 * 28 * 28),
            (64, 576, 45),
            (4, 27, 42),
            (270, 260, 1),
            (64, 576, 0),
            (7, 45, 3 * 63),
        ] {
            let (splits, chunk) = split_plan(rows, cols, depth, MAX_SCRATCH);
            assert!(splits >= 1 && chunk % SLICE == 0 && chunk > 0);
            assert!(splits * chunk >= depth, "{rows} {cols} {depth}");
            assert!(
                depth == 0 || (splits - 1) * chunk < depth,
                "empty split: {rows} {cols} {depth}"
            );
            assert!(splits * (rows * cols + rows) <= MAX_SCRATCH.max(rows * cols + rows));
        }
    }
}
