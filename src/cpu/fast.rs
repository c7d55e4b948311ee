//! Fast f32 convolution for the [`crate::cpu::Cpu`] backend: im2col + `gemm`, parallel over
//! chunks of images with rayon. Same semantics as the reference in [`crate::cpu::conv2d`]
//! (the tests check them against it).
//!
//! - forward: per chunk of `nb` images, `cols[C*k*k, nb*OH*OW] = im2col(input)`, then
//!   `y[O, nb*OH*OW] = W[O, C*k*k] x cols` (+ bias), scattered back to NCHW;
//! - backward input: the forward convolution of `grad_output` with the flipped, transposed
//!   kernel `W'[c, o, i, j] = W[o, c, k-1-i, k-1-j]` and padding `k - 1 - p` (negative padding
//!   crops), so it is written directly, with no col2im scatter-add;
//! - backward weight: `[dW | db][O, C*k*k + 1] = sum over chunks of dy[O, nb*OH*OW] x
//!   [cols; ones]^T` (a row of ones appended to the im2col matrix yields the bias gradient in
//!   the same gemm), accumulated per group of chunks, then summed group by group in order.
//!
//! Determinism: the chunk size and the grouping depend only on the shape, never on the thread
//! count or on scheduling, and every reduction runs in a fixed order, so results are bitwise
//! identical run to run (and for any number of threads).

use std::cell::RefCell;

use gemm::Parallelism;
use rayon::prelude::*;

use crate::ops::ConvShape;

/// Columns per gemm we aim for: small feature maps are batched across images up to this width.
const TARGET_COLUMNS: usize = 256;
/// Chunks a batch is split into at least (when it has that many images).
const MIN_CHUNKS: usize = 8;
/// Most partial weight gradients summed at the end of the backward-weight pass.
const MAX_GROUPS: usize = 32;

/// Geometry of one stride-1 convolution pass, with a signed padding (the backward-input pass
/// uses `k - 1 - p`, which is negative when `p >= k`).
#[derive(Clone, Copy, Debug)]
struct Geom {
    batch: usize,
    c_in: usize,
    c_out: usize,
    h: usize,
    w: usize,
    k: usize,
    pad: isize,
    oh: usize,
    ow: usize,
}

impl Geom {
    fn from_shape(s: &ConvShape) -> Self {
        assert!(
            s.height + 2 * s.padding >= s.kernel && s.width + 2 * s.padding >= s.kernel,
            "conv2d: kernel larger than padded input"
        );
        Geom {
            batch: s.batch,
            c_in: s.in_channels,
            c_out: s.out_channels,
            h: s.height,
            w: s.width,
            k: s.kernel,
            pad: s.padding as isize,
            oh: s.out_height(),
            ow: s.out_width(),
        }
    }
    /// The backward-input pass as a forward convolution of `grad_output`.
    fn transposed(&self) -> Self {
        Geom {
            batch: self.batch,
            c_in: self.c_out,
            c_out: self.c_in,
            h: self.oh,
            w: self.ow,
            k: self.k,
            pad: self.k as isize - 1 - self.pad,
            oh: self.h,
            ow: self.w,
        }
    }
    fn in_image(&self) -> usize {
        self.c_in * self.h * self.w
    }
    fn out_pixels(&self) -> usize {
        self.oh * self.ow
    }
    fn out_image(&self) -> usize {
        self.c_out * self.out_pixels()
    }
    /// Rows of the im2col matrix (the gemm inner dimension).
    fn patch(&self) -> usize {
        self.c_in * self.k * self.k
    }
    /// Images per chunk: enough that a gemm has about [`TARGET_COLUMNS`] columns, but at most
    /// a [`MIN_CHUNKS`]th of the batch, so that small maps still give the threads chunks to
    /// share (a shape-only rule: results never depend on the thread count).
    fn chunk_images(&self) -> usize {
        TARGET_COLUMNS
            .div_ceil(self.out_pixels().max(1))
            .min(self.batch.div_ceil(MIN_CHUNKS))
            .clamp(1, self.batch.max(1))
    }
    /// True when the im2col matrix of one image is the image itself.
    fn identity_cols(&self) -> bool {
        self.k == 1 && self.pad == 0
    }
}

thread_local! {
    static COLS: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
    static STAGE: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// Runs `f` on a scratch buffer of at least `len` floats (contents unspecified): the thread's
/// cached buffer, or a fresh one if that is already in use further up this thread's stack.
fn with_scratch<R>(
    key: &'static std::thread::LocalKey<RefCell<Vec<f32>>>,
    len: usize,
    f: impl FnOnce(&mut [f32]) -> R,
) -> R {
    key.with(|cell| match cell.try_borrow_mut() {
        Ok(mut buf) => {
            if buf.len() < len {
                buf.resize(len, 0.0);
            }
            f(&mut buf[..len])
        }
        Err(_) => f(&mut vec![0.0; len]),
    })
}

/// `cols[(c*k + i)*k + j, b*OH*OW + y*OW + x] = input[b, c, y + i - pad, x + j - pad]` (zero
/// outside the image) for the `nb` images of `input`.
fn im2col(g: &Geom, nb: usize, input: &[f32], cols: &mut [f32]) {
    let (k, h, w, oh, ow, pad) = (g.k, g.h as isize, g.w, g.oh, g.ow, g.pad);
    let n = nb * oh * ow;
    debug_assert_eq!(cols.len(), g.patch() * n);
    debug_assert_eq!(input.len(), nb * g.in_image());
    if oh == g.h && ow == w {
        return im2col_same(g, nb, input, cols);
    }
    for c in 0..g.c_in {
        for i in 0..k {
            for j in 0..k {
                let row = &mut cols[((c * k + i) * k + j) * n..][..n];
                // Output columns x whose source column x + j - pad lies inside the image.
                let shift = j as isize - pad;
                let x0 = (-shift).clamp(0, ow as isize) as usize;
                let x1 = (w as isize - shift).clamp(x0 as isize, ow as isize) as usize;
                for b in 0..nb {
                    let plane = &input[(b * g.c_in + c) * g.h * w..][..g.h * w];
                    for y in 0..oh {
                        let seg = &mut row[(b * oh + y) * ow..][..ow];
                        let iy = y as isize + i as isize - pad;
                        if iy < 0 || iy >= h {
                            seg.fill(0.0);
                            continue;
                        }
                        let src = &plane[iy as usize * w..][..w];
                        seg[..x0].fill(0.0);
                        if x1 > x0 {
                            let s0 = (x0 as isize + shift) as usize;
                            seg[x0..x1].copy_from_slice(&src[s0..s0 + (x1 - x0)]);
                        }
                        seg[x1..].fill(0.0);
                    }
                }
            }
        }
    }
}

/// [`im2col`] for a "same" convolution (output size = input size): the row of tap `(i, j)` is
/// the whole image plane shifted by `(i - pad) * w + (j - pad)`, so it is one copy per plane,
/// then the elements that wrapped around a row edge (or fell off the plane) are zeroed.
fn im2col_same(g: &Geom, nb: usize, input: &[f32], cols: &mut [f32]) {
    let (k, w, pad) = (g.k, g.w, g.pad);
    let plane_len = g.h * w;
    let n = nb * plane_len;
    for c in 0..g.c_in {
        for i in 0..k {
            for j in 0..k {
                let row = &mut cols[((c * k + i) * k + j) * n..][..n];
                let dy = i as isize - pad;
                let dx = j as isize - pad;
                let shift = dy * w as isize + dx;
                // Destination range whose source index t + shift lies inside the plane.
                let t0 = (-shift).clamp(0, plane_len as isize) as usize;
                let t1 =
                    (plane_len as isize - shift).clamp(t0 as isize, plane_len as isize) as usize;
                // Output columns whose source column x + dx lies outside the image.
                let x_lo = (-dx).clamp(0, w as isize) as usize;
                let x_hi = (w as isize - dx).clamp(x_lo as isize, w as isize) as usize;
                for b in 0..nb {
                    let plane = &input[(b * g.c_in + c) * plane_len..][..plane_len];
                    let dst = &mut row[b * plane_len..][..plane_len];
                    dst[..t0].fill(0.0);
                    if t1 > t0 {
                        let s0 = (t0 as isize + shift) as usize;
                        dst[t0..t1].copy_from_slice(&plane[s0..s0 + (t1 - t0)]);
                    }
                    dst[t1..].fill(0.0);
                    // Column by column (strided stores): the zeroed margins are as wide as the
                    // padding (usually 1), and a `fill` per line would be a memset call per line.
                    for x in (0..x_lo).chain(x_hi..w) {
                        for v in dst[x..].iter_mut().step_by(w) {
                            *v = 0.0;
                        }
                    }
                }
            }
        }
    }
}

/// `dst[m, n] = (read_dst ? dst : 0) + lhs[m, k] x rhs[k, n]`, all dense; `rhs_t` says that
/// `rhs` is stored transposed (`[n, k]` row-major).
#[allow(clippy::too_many_arguments)]
fn matmul(
    m: usize,
    n: usize,
    k: usize,
    dst: &mut [f32],
    read_dst: bool,
    lhs: &[f32],
    rhs: &[f32],
    rhs_t: bool,
    par: Parallelism,
) {
    assert!(dst.len() >= m * n && lhs.len() >= m * k && rhs.len() >= k * n);
    if m == 0 || n == 0 {
        return;
    }
    let (rhs_cs, rhs_rs) = if rhs_t {
        (k as isize, 1)
    } else {
        (1, n as isize)
    };
    // SAFETY: the three buffers are live slices of at least the sizes the strides address
    // (checked above), and `dst` is exclusively borrowed, so it aliases neither input.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            n as isize,
            read_dst,
            lhs.as_ptr(),
            1,
            k as isize,
            rhs.as_ptr(),
            rhs_cs,
            rhs_rs,
            1.0,
            1.0,
            false,
            false,
            false,
            par,
        )
    }
}

/// Runs `f(chunk_index, parallelism)` for every chunk: in parallel over chunks with
/// single-threaded gemms when there are enough chunks to keep the threads busy, otherwise
/// one chunk at a time with multi-threaded gemms. (gemm never splits the inner dimension, so
/// the results are the same either way.)
fn parallel_plan(chunks: usize) -> (bool, Parallelism) {
    let threads = rayon::current_num_threads();
    if threads <= 1 {
        (false, Parallelism::None)
    } else if chunks >= 2 * threads {
        (true, Parallelism::None)
    } else {
        (false, Parallelism::Rayon(threads))
    }
}

/// Forward convolution for geometry `g` with weight matrix `weight[O, C*k*k + bias]`: when
/// `bias`, its last column is the bias, matched by a row of ones appended to the im2col
/// matrix, so the gemm writes the finished output in one pass.
fn forward(g: &Geom, input: &[f32], weight: &[f32], bias: bool, output: &mut [f32]) {
    assert_eq!(input.len(), g.batch * g.in_image(), "conv2d: input length");
    assert_eq!(
        weight.len(),
        g.c_out * (g.patch() + bias as usize),
        "conv2d: weight length"
    );
    assert_eq!(
        output.len(),
        g.batch * g.out_image(),
        "conv2d: output length"
    );
    if output.is_empty() {
        return;
    }
    let nb = g.chunk_images();
    let chunks = g.batch.div_ceil(nb);
    let (parallel, par) = parallel_plan(chunks);
    let run =
        |(input, output): (&[f32], &mut [f32])| forward_chunk(g, input, weight, bias, output, par);
    let ins = input.chunks(nb * g.in_image());
    let outs = output.chunks_mut(nb * g.out_image());
    if parallel {
        ins.collect::<Vec<_>>()
            .into_par_iter()
            .zip(outs.collect::<Vec<_>>())
            .for_each(run);
    } else {
        ins.zip(outs).for_each(run);
    }
}

fn forward_chunk(
    g: &Geom,
    input: &[f32],
    weight: &[f32],
    bias: bool,
    output: &mut [f32],
    par: Parallelism,
) {
    let nb = input.len() / g.in_image().max(1);
    let pixels = g.out_pixels();
    let n = nb * pixels;
    let rows = g.patch() + bias as usize;
    let gemm_into = |dst: &mut [f32], cols: &[f32]| {
        matmul(g.c_out, n, rows, dst, false, weight, cols, false, par)
    };
    // With one image per chunk the output image [O, OH*OW] is the gemm destination itself;
    // otherwise the gemm writes [O, nb*OH*OW] to a staging buffer that is copied out per image.
    let mut finish = |cols: &[f32]| {
        if nb == 1 {
            gemm_into(output, cols);
        } else {
            with_scratch(&STAGE, g.c_out * n, |stage| {
                gemm_into(stage, cols);
                for (b, image) in output.chunks_mut(g.out_image()).enumerate() {
                    for (o, row) in image.chunks_mut(pixels).enumerate() {
                        row.copy_from_slice(&stage[o * n + b * pixels..][..pixels]);
                    }
                }
            })
        }
    };
    if g.identity_cols() && nb == 1 && !bias {
        finish(input)
    } else {
        with_scratch(&COLS, rows * n, |cols| {
            let (patches, ones) = cols.split_at_mut(g.patch() * n);
            im2col(g, nb, input, patches);
            ones.fill(1.0);
            finish(cols)
        })
    }
}

/// Fast [`crate::cpu::conv2d::conv2d_forward`].
pub fn conv2d_forward(
    s: &ConvShape,
    input: &[f32],
    weight: &[f32],
    bias: &[f32],
    output: &mut [f32],
) {
    assert_eq!(weight.len(), s.weight_len(), "conv2d: weight length");
    assert_eq!(bias.len(), s.out_channels, "conv2d: bias length");
    let patch = s.in_channels * s.kernel * s.kernel;
    let mut weight_bias = Vec::with_capacity(weight.len() + bias.len());
    for (row, &b) in weight.chunks(patch).zip(bias) {
        weight_bias.extend_from_slice(row);
        weight_bias.push(b);
    }
    forward(&Geom::from_shape(s), input, &weight_bias, true, output)
}

/// Fast [`crate::cpu::conv2d::conv2d_backward_input`].
pub fn conv2d_backward_input(
    s: &ConvShape,
    grad_output: &[f32],
    weight: &[f32],
    grad_input: &mut [f32],
) {
    let g = Geom::from_shape(s);
    assert_eq!(weight.len(), s.weight_len(), "conv2d: weight length");
    let (c_in, c_out, k) = (s.in_channels, s.out_channels, s.kernel);
    // W'[c, o, i, j] = W[o, c, k-1-i, k-1-j]
    let mut flipped = vec![0.0f32; weight.len()];
    for o in 0..c_out {
        for c in 0..c_in {
            let src = &weight[(o * c_in + c) * k * k..][..k * k];
            let dst = &mut flipped[(c * c_out + o) * k * k..][..k * k];
            for (d, s) in dst.iter_mut().zip(src.iter().rev()) {
                *d = *s;
            }
        }
    }
    forward(&g.transposed(), grad_output, &flipped, false, grad_input)
}

/// Fast [`crate::cpu::conv2d::conv2d_backward_weight`].
pub fn conv2d_backward_weight(
    s: &ConvShape,
    input: &[f32],
    grad_output: &[f32],
    grad_weight: &mut [f32],
    grad_bias: &mut [f32],
) {
    let g = Geom::from_shape(s);
    assert_eq!(input.len(), s.input_len(), "conv2d: input length");
    assert_eq!(grad_output.len(), s.output_len(), "conv2d: output length");
    assert_eq!(grad_weight.len(), s.weight_len(), "conv2d: weight length");
    assert_eq!(grad_bias.len(), s.out_channels, "conv2d: grad_bias length");
    if s.batch == 0 || g.out_pixels() == 0 {
        grad_weight.fill(0.0);
        grad_bias.fill(0.0);
        return;
    }
    let nb = g.chunk_images();
    let chunks = g.batch.div_ceil(nb);
    let groups = chunks.min(MAX_GROUPS);
    let (parallel, par) = parallel_plan(groups);
    let ext = g.patch() + 1;
    // Group `gi` covers chunks [gi * chunks / groups, (gi + 1) * chunks / groups) and returns
    // its partial [O, C*k*k + 1] (weight gradient with the bias gradient as a last column).
    let run = |gi: usize| -> Vec<f32> {
        let mut partial = vec![0.0f32; g.c_out * ext];
        let first = gi * chunks / groups;
        let last = (gi + 1) * chunks / groups;
        for (ci, chunk) in (first..last).enumerate() {
            let b0 = chunk * nb;
            let b1 = (b0 + nb).min(g.batch);
            let x = &input[b0 * g.in_image()..b1 * g.in_image()];
            let dy = &grad_output[b0 * g.out_image()..b1 * g.out_image()];
            backward_weight_chunk(&g, b1 - b0, x, dy, &mut partial, ci > 0, par);
        }
        partial
    };
    let partials: Vec<Vec<f32>> = if parallel {
        (0..groups).into_par_iter().map(run).collect()
    } else {
        (0..groups).map(run).collect()
    };
    // Sum the partials in group order (a fixed order, so the result is deterministic).
    let patch = g.patch();
    for (gi, partial) in partials.iter().enumerate() {
        for (o, row) in partial.chunks(ext).enumerate() {
            let dw = &mut grad_weight[o * patch..][..patch];
            if gi == 0 {
                dw.copy_from_slice(&row[..patch]);
                grad_bias[o] = row[patch];
            } else {
                dw.iter_mut().zip(&row[..patch]).for_each(|(a, b)| *a += b);
                grad_bias[o] += row[patch];
            }
        }
    }
}

/// `partial[O, C*k*k + 1] (+)= dy[O, nb*OH*OW] x [cols; ones]^T` for one chunk of `nb` images:
/// the extra row of ones in the im2col matrix makes the last column the bias gradient.
fn backward_weight_chunk(
    g: &Geom,
    nb: usize,
    input: &[f32],
    grad_output: &[f32],
    partial: &mut [f32],
    accumulate: bool,
    par: Parallelism,
) {
    let pixels = g.out_pixels();
    let n = nb * pixels;
    let ext = g.patch() + 1;
    with_scratch(&COLS, ext * n, |cols| {
        let (patches, ones) = cols.split_at_mut(g.patch() * n);
        im2col(g, nb, input, patches);
        ones.fill(1.0);
        if nb == 1 {
            matmul(
                g.c_out,
                ext,
                n,
                partial,
                accumulate,
                grad_output,
                cols,
                true,
                par,
            );
        } else {
            with_scratch(&STAGE, g.c_out * n, |stage| {
                // dy of the chunk as one [O, nb*OH*OW] matrix
                for (b, image) in grad_output.chunks(g.out_image()).enumerate() {
                    for (o, row) in image.chunks(pixels).enumerate() {
                        stage[o * n + b * pixels..][..pixels].copy_from_slice(row);
                    }
                }
                matmul(g.c_out, ext, n, partial, accumulate, stage, cols, true, par);
            })
        }
    });
}
