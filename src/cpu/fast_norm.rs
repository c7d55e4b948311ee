//! Fast f32 batch norm (+ fused ReLU), ReLU, max-pool and copy for the [`crate::cpu::Cpu`]
//! backend. Same semantics as the references in [`crate::cpu::batch_norm`] and
//! [`crate::cpu::max_pool`] (the tests in `tests/fast_norm_cpu.rs` check them against those).
//!
//! These ops are memory-bound, so the aim is few passes over the data, all of them parallel:
//! - batch-norm statistics: data are `[batch, channels, spatial]`, so channel `c` is `batch`
//!   strided runs of `spatial` contiguous floats. One rayon task per channel reads its runs
//!   twice (sum, then squared deviations from the mean: the two-pass variance). Sums are
//!   blocked: [`LANES`] f32 lanes over [`BLOCK`] elements (SIMD), each block's lanes then added
//!   to f64 lane accumulators, so the long sums are far more accurate than the f32
//!   reference's sequential one (the tests measure both against an f64 reference); the
//!   second read of a channel is partly served by the cache;
//! - the elementwise passes (normalise + fused ReLU, the backward's gradient, ReLU, max-pool)
//!   run in parallel over `(image, channel)` planes or fixed-size chunks, branch-free (ReLU
//!   masks and max-pool winners are data-dependent, so branches would mispredict);
//! - backward: one parallel pass over channels for `sum(g)` and `sum(g * xhat)` (with the ReLU
//!   mask), then one elementwise pass.
//!
//! Determinism: every reduction is done by one task in a fixed order (blocks, lanes, then the
//! lanes summed in index order), so results are bitwise identical run to run and for any
//! number of threads. Nothing is allocated per call, except by the fused norm + pool ops: a
//! plane-sized scratch per rayon task and one pair of sums per plane.
//!
//! Measured alternative (not kept): fusing each channel's statistics with its elementwise
//! pass (one task per channel writing that channel's strided runs, which needs `unsafe`)
//! was no faster within the noise on a 2-core machine.

use rayon::prelude::*;

use crate::ops::{BatchNorm, NormShape, PoolShape};

/// Independent accumulators per reduction (a multiple of the SIMD width; the lanes are
/// combined in index order at the end).
const LANES: usize = 8;
/// Elements per rayon task, at least, for the elementwise passes.
const GRAIN: usize = 1 << 14;
/// Copies shorter than this run on the calling thread.
const PARALLEL_COPY_MIN: usize = 1 << 18;

/// Planes of `plane` elements per rayon task, at least.
fn planes_per_task(plane: usize) -> usize {
    (GRAIN / plane.max(1)).max(1)
}

/// Elements summed in f32 lanes (`BLOCK / LANES` terms per lane) before each lane is added to
/// its f64 accumulator: f32 SIMD speed, with f64 accuracy over the long sums.
const BLOCK: usize = 64;

/// `LANES` f64 partial sums, fed by blocks of f32 lane sums; combined in index order.
#[derive(Clone, Copy)]
struct Acc([f64; LANES]);

impl Acc {
    fn new() -> Self {
        Acc([0.0; LANES])
    }
    #[inline(always)]
    fn add(&mut self, lo: &[f32; LANES]) {
        for (hi, &lo) in self.0.iter_mut().zip(lo) {
            *hi += lo as f64;
        }
    }
    fn total(&self) -> f64 {
        self.0.iter().sum()
    }
}

/// `g` where `on`, else +0 (branchless: random masks would defeat the branch predictor).
#[inline(always)]
fn keep(g: f32, on: bool) -> f32 {
    f32::from_bits(g.to_bits() & (on as u32).wrapping_neg())
}

/// A `LANES`-long chunk as an array (constant bounds: no checks, and the compiler vectorises).
#[inline(always)]
fn lanes(chunk: &[f32]) -> &[f32; LANES] {
    chunk.try_into().unwrap()
}

/// The `batch` runs of channel `c` in `data` (`[batch, channels, spatial]`).
fn runs<'a>(s: &NormShape, data: &'a [f32], c: usize) -> impl Iterator<Item = &'a [f32]> + 'a {
    let (channels, spatial) = (s.channels, s.spatial);
    (0..s.batch).map(move |b| &data[(b * channels + c) * spatial..][..spatial])
}

/// `acc += sum(x - shift)` over `run`, or `sum((x - shift)^2)` when `SQUARE` (the two passes
/// of the variance: the sum with `shift = 0`, then the squared deviations from the mean).
#[inline(always)]
fn sum_run<const SQUARE: bool>(run: &[f32], shift: f32, acc: &mut Acc) {
    #[inline(always)]
    fn step<const SQUARE: bool>(x: &[f32; LANES], shift: f32, lo: &mut [f32; LANES]) {
        for j in 0..LANES {
            let d = x[j] - shift;
            lo[j] += if SQUARE { d * d } else { d };
        }
    }
    for block in run.chunks(BLOCK) {
        let mut lo = [0f32; LANES];
        let mut it = block.chunks_exact(LANES);
        for ch in &mut it {
            step::<SQUARE>(lanes(ch), shift, &mut lo);
        }
        // The remainder one by one (padding would add `(0 - shift)` terms).
        for (j, &x) in it.remainder().iter().enumerate() {
            let d = x - shift;
            lo[j] += if SQUARE { d * d } else { d };
        }
        acc.add(&lo);
    }
}

/// Per-channel mean and biased variance in f64: the sum, then the sum of squared deviations
/// from the (f32) mean.
#[inline(never)]
fn channel_stats(s: &NormShape, input: &[f32], c: usize) -> (f64, f64) {
    let nf = (s.batch * s.spatial) as f64;
    let mut acc = Acc::new();
    for run in runs(s, input, c) {
        sum_run::<false>(run, 0.0, &mut acc);
    }
    let mean = acc.total() / nf;
    let mean32 = mean as f32;
    let mut acc = Acc::new();
    for run in runs(s, input, c) {
        sum_run::<true>(run, mean32, &mut acc);
    }
    // Deviations were taken from the rounded mean: remove that offset's contribution.
    let delta = mean32 as f64 - mean;
    let var = acc.total() / nf - delta * delta;
    // Rounding can take a constant channel's variance a hair below zero (NaN stays NaN).
    (mean, if var < 0.0 { 0.0 } else { var })
}

fn check_norm(s: &NormShape, what: &str, data: &[usize], per_channel: &[usize]) {
    for &l in data {
        assert_eq!(l, s.len(), "{what}: data length");
    }
    for &l in per_channel {
        assert_eq!(l, s.channels, "{what}: per-channel length");
    }
}

/// `y = (x - mean) * scale + shift`, then ReLU when `relu`, over one plane.
#[inline]
fn affine(x: &[f32], y: &mut [f32], mean: f32, scale: f32, shift: f32, relu: bool) {
    if relu {
        for (y, &x) in y.iter_mut().zip(x) {
            let v = (x - mean) * scale + shift;
            *y = keep(v, v > 0.0);
        }
    } else {
        for (y, &x) in y.iter_mut().zip(x) {
            *y = (x - mean) * scale + shift;
        }
    }
}

/// The batch statistics of training mode: saved mean and inverse standard deviation, and the
/// running statistics' momentum update (unbiased variance), one rayon task per channel.
fn train_stats(
    s: &NormShape,
    p: &BatchNorm,
    input: &[f32],
    saved_mean: &mut [f32],
    saved_inv_std: &mut [f32],
    running_mean: &mut [f32],
    running_var: &mut [f32],
) {
    let n = s.batch * s.spatial;
    let (eps, m) = (p.eps as f64, p.momentum as f64);
    saved_mean
        .par_iter_mut()
        .zip(saved_inv_std.par_iter_mut())
        .zip(running_mean.par_iter_mut().zip(running_var.par_iter_mut()))
        .enumerate()
        .for_each(|(c, ((mean_out, inv_std_out), (rm, rv)))| {
            let (mean, var) = channel_stats(s, input, c);
            *mean_out = mean as f32;
            *inv_std_out = (1.0 / (var + eps).sqrt()) as f32;
            let unbiased = if n > 1 {
                var * n as f64 / (n - 1) as f64
            } else {
                var
            };
            *rm = ((1.0 - m) * *rm as f64 + m * mean) as f32;
            *rv = ((1.0 - m) * *rv as f64 + m * unbiased) as f32;
        });
}

/// Training-mode forward; semantics of [`crate::cpu::batch_norm::batch_norm_train`].
#[allow(clippy::too_many_arguments)]
pub fn batch_norm_train(
    s: &NormShape,
    p: &BatchNorm,
    input: &[f32],
    gamma: &[f32],
    beta: &[f32],
    output: &mut [f32],
    saved_mean: &mut [f32],
    saved_inv_std: &mut [f32],
    running_mean: &mut [f32],
    running_var: &mut [f32],
) {
    check_norm(
        s,
        "batch_norm_train",
        &[input.len(), output.len()],
        &[
            gamma.len(),
            beta.len(),
            saved_mean.len(),
            saved_inv_std.len(),
            running_mean.len(),
            running_var.len(),
        ],
    );
    train_stats(
        s,
        p,
        input,
        saved_mean,
        saved_inv_std,
        running_mean,
        running_var,
    );
    if output.is_empty() {
        return;
    }
    let (saved_mean, saved_inv_std) = (&*saved_mean, &*saved_inv_std);
    output
        .par_chunks_mut(s.spatial)
        .zip(input.par_chunks(s.spatial))
        .enumerate()
        .with_min_len(planes_per_task(s.spatial))
        .for_each(|(i, (y, x))| {
            let c = i % s.channels;
            let scale = gamma[c] * saved_inv_std[c];
            affine(x, y, saved_mean[c], scale, beta[c], p.relu);
        });
}

/// Evaluation mode; semantics of [`crate::cpu::batch_norm::batch_norm_eval`].
#[allow(clippy::too_many_arguments)]
pub fn batch_norm_eval(
    s: &NormShape,
    p: &BatchNorm,
    input: &[f32],
    gamma: &[f32],
    beta: &[f32],
    running_mean: &[f32],
    running_var: &[f32],
    output: &mut [f32],
) {
    check_norm(
        s,
        "batch_norm_eval",
        &[input.len(), output.len()],
        &[
            gamma.len(),
            beta.len(),
            running_mean.len(),
            running_var.len(),
        ],
    );
    if output.is_empty() {
        return;
    }
    output
        .par_chunks_mut(s.spatial)
        .zip(input.par_chunks(s.spatial))
        .enumerate()
        .with_min_len(planes_per_task(s.spatial))
        .for_each(|(i, (y, x))| {
            let c = i % s.channels;
            let scale = gamma[c] / (running_var[c] + p.eps).sqrt();
            affine(x, y, running_mean[c], scale, beta[c], p.relu);
        });
}

/// Channel `c`'s `sum(g)` and `sum(g * (x - mean))` in f64, `g` the gradient through the
/// ReLU mask when `RELU`.
///
/// Per block: first the masked terms into two small arrays (an elementwise loop the compiler
/// vectorises, selects included), then their blocked lane sums. The mask is applied after the
/// arithmetic (a masked element contributes +0 to both sums, as in the reference), so `dy` is
/// loaded unconditionally: a select on a loaded value can otherwise be turned into a branch
/// around the load, which randomly masked data mispredicts.
#[inline(never)]
fn backward_sums<const RELU: bool>(
    s: &NormShape,
    input: &[f32],
    output: &[f32],
    grad_output: &[f32],
    mean: f32,
    c: usize,
) -> (f64, f64) {
    let (mut sg, mut sgx) = (Acc::new(), Acc::new());
    let (mut g, mut gx) = ([0f32; BLOCK], [0f32; BLOCK]);
    let it = runs(s, input, c)
        .zip(runs(s, output, c))
        .zip(runs(s, grad_output, c));
    for ((x, y), dy) in it {
        let blocks = x.chunks(BLOCK).zip(y.chunks(BLOCK)).zip(dy.chunks(BLOCK));
        for ((x, y), dy) in blocks {
            let n = x.len();
            let terms = g[..n]
                .iter_mut()
                .zip(&mut gx[..n])
                .zip(x.iter().zip(y).zip(dy));
            for ((g, gx), ((&x, &y), &dy)) in terms {
                let on = !RELU || y > 0.0;
                *g = keep(dy, on);
                *gx = keep(dy * (x - mean), on);
            }
            sum_run::<false>(&g[..n], 0.0, &mut sg);
            sum_run::<false>(&gx[..n], 0.0, &mut sgx);
        }
    }
    (sg.total(), sgx.total())
}

/// Backward of training-mode batch norm (+ fused ReLU); semantics of
/// [`crate::cpu::batch_norm::batch_norm_backward`]:
/// `grad_input = gamma * inv_std * g - gamma * inv_std / n * (sum g + xhat * sum(g * xhat))`.
#[allow(clippy::too_many_arguments)]
pub fn batch_norm_backward(
    s: &NormShape,
    p: &BatchNorm,
    input: &[f32],
    output: &[f32],
    grad_output: &[f32],
    gamma: &[f32],
    saved_mean: &[f32],
    saved_inv_std: &[f32],
    grad_input: &mut [f32],
    grad_gamma: &mut [f32],
    grad_beta: &mut [f32],
) {
    check_norm(
        s,
        "batch_norm_backward",
        &[
            input.len(),
            output.len(),
            grad_output.len(),
            grad_input.len(),
        ],
        &[
            gamma.len(),
            saved_mean.len(),
            saved_inv_std.len(),
            grad_gamma.len(),
            grad_beta.len(),
        ],
    );
    let relu = p.relu;
    // 1. Per channel: sum(g) and sum(g * (x - mean)), in f64 lanes.
    grad_gamma
        .par_iter_mut()
        .zip(grad_beta.par_iter_mut())
        .enumerate()
        .for_each(|(c, (gg, gb))| {
            let (x, y, dy, mean) = (input, output, grad_output, saved_mean[c]);
            let (sum_g, sum_gx) = if relu {
                backward_sums::<true>(s, x, y, dy, mean, c)
            } else {
                backward_sums::<false>(s, x, y, dy, mean, c)
            };
            *gb = sum_g as f32;
            *gg = (sum_gx * saved_inv_std[c] as f64) as f32;
        });
    if grad_input.is_empty() {
        return;
    }
    // 2. Elementwise, per plane (`InputGrad`).
    let nf = (s.batch * s.spatial) as f32;
    let (grad_gamma, grad_beta) = (&*grad_gamma, &*grad_beta);
    grad_input
        .par_chunks_mut(s.spatial)
        .zip(input.par_chunks(s.spatial))
        .zip(
            output
                .par_chunks(s.spatial)
                .zip(grad_output.par_chunks(s.spatial)),
        )
        .enumerate()
        .with_min_len(planes_per_task(s.spatial))
        .for_each(|(i, ((dx, x), (y, dy)))| {
            let ig = InputGrad::of(
                i % s.channels,
                nf,
                gamma,
                saved_mean,
                saved_inv_std,
                grad_gamma,
                grad_beta,
            );
            if relu {
                for (((dx, &x), &y), &dy) in dx.iter_mut().zip(x).zip(y).zip(dy) {
                    *dx = ig.at(x, keep(dy, y > 0.0));
                }
            } else {
                for ((dx, &x), &dy) in dx.iter_mut().zip(x).zip(dy) {
                    *dx = ig.at(x, dy);
                }
            }
        });
}

/// Channel `c`'s coefficients of the batch-norm input gradient, in the reference's form
/// `scale * (n * g - sum_g - (x - mean) * k)`: keeping `n * g - sum_g` together makes the
/// cancellation exact where the reference's is (e.g. n = 1).
struct InputGrad {
    mean: f32,
    scale: f32,
    nf: f32,
    sum_g: f32,
    k: f32,
}

impl InputGrad {
    #[allow(clippy::too_many_arguments)]
    fn of(
        c: usize,
        nf: f32,
        gamma: &[f32],
        saved_mean: &[f32],
        saved_inv_std: &[f32],
        grad_gamma: &[f32],
        grad_beta: &[f32],
    ) -> Self {
        let inv_std = saved_inv_std[c];
        InputGrad {
            mean: saved_mean[c],
            scale: gamma[c] * inv_std / nf,
            nf,
            sum_g: grad_beta[c],
            k: inv_std * grad_gamma[c],
        }
    }
    /// The input gradient of an element `x` whose (masked) output gradient is `g`.
    #[inline(always)]
    fn at(&self, x: f32, g: f32) -> f32 {
        self.scale * (self.nf * g - self.sum_g - (x - self.mean) * self.k)
    }
}

/// `output = max(input, 0)` (zero for NaN and -0), in parallel chunks.
pub fn relu_forward(input: &[f32], output: &mut [f32]) {
    assert_eq!(input.len(), output.len(), "relu_forward: length mismatch");
    output
        .par_chunks_mut(GRAIN)
        .zip(input.par_chunks(GRAIN))
        .for_each(|(y, x)| {
            for (y, &x) in y.iter_mut().zip(x) {
                *y = keep(x, x > 0.0);
            }
        });
}

/// `grad_input = grad_output * (output > 0)`, in parallel chunks.
pub fn relu_backward(output: &[f32], grad_output: &[f32], grad_input: &mut [f32]) {
    assert_eq!(
        output.len(),
        grad_output.len(),
        "relu_backward: length mismatch"
    );
    assert_eq!(
        output.len(),
        grad_input.len(),
        "relu_backward: length mismatch"
    );
    grad_input
        .par_chunks_mut(GRAIN)
        .zip(output.par_chunks(GRAIN).zip(grad_output.par_chunks(GRAIN)))
        .for_each(|(dx, (y, dy))| {
            for ((dx, &y), &dy) in dx.iter_mut().zip(y).zip(dy) {
                *dx = keep(dy, y > 0.0);
            }
        });
}

fn check_pool(s: &PoolShape, what: &str, input: usize, output: usize) {
    assert_eq!(input, s.input_len(), "{what}: input length");
    assert_eq!(output, s.output_len(), "{what}: output length");
}

/// The value of the first maximum of a window, in row-major order (strict `>`, as the
/// reference: a NaN never wins, and a NaN first element stays).
#[inline]
fn first_max(a: f32, b: f32, c: f32, d: f32) -> f32 {
    let m = if b > a { b } else { a };
    let m = if c > m { c } else { m };
    if d > m {
        d
    } else {
        m
    }
}

/// Max-pool 2x2 stride 2 forward; semantics of [`crate::cpu::max_pool::max_pool_forward`]
/// (bitwise identical: no arithmetic, the same comparisons in the same order).
pub fn max_pool_forward(s: &PoolShape, input: &[f32], output: &mut [f32]) {
    check_pool(s, "max_pool_forward", input.len(), output.len());
    if output.is_empty() {
        return;
    }
    let (w, oh, ow) = (s.width, s.out_height(), s.out_width());
    let (plane_in, plane_out) = (s.height * w, oh * ow);
    output
        .par_chunks_mut(plane_out)
        .zip(input.par_chunks(plane_in))
        .with_min_len(planes_per_task(plane_in))
        .for_each(|(y, x)| pool_plane(w, ow, x, y));
}

/// Max-pool of one plane `x` (`w` wide) into `y` (`ow` wide).
#[inline]
fn pool_plane(w: usize, ow: usize, x: &[f32], y: &mut [f32]) {
    for (oy, yr) in y.chunks_exact_mut(ow).enumerate() {
        let r0 = &x[2 * oy * w..][..2 * ow];
        let r1 = &x[(2 * oy + 1) * w..][..2 * ow];
        for ((y, p0), p1) in yr
            .iter_mut()
            .zip(r0.chunks_exact(2))
            .zip(r1.chunks_exact(2))
        {
            *y = first_max(p0[0], p0[1], p1[0], p1[1]);
        }
    }
}

/// The gradient `g` of one window `[a, b; c, d]` routed to its first maximum (row-major,
/// strict `>`), zero elsewhere: `[to a, to b, to c, to d]`.
///
/// `m` is a copy of the winner, so the winner is the first element with `m`'s bits: no
/// earlier element can have them (it would equal the winner, which then could not have
/// compared greater), and a NaN first element (which wins: nothing compares greater) matches
/// itself. Integer compares and `&` (not `&&`) keep this branch-free even in scalar code
/// (a float `==` would branch on the unordered flag).
#[inline(always)]
fn route(a: f32, b: f32, c: f32, d: f32, g: f32) -> [f32; 4] {
    let m = first_max(a, b, c, d).to_bits();
    let s0 = a.to_bits() == m;
    let s1 = !s0 & (b.to_bits() == m);
    let s2 = !(s0 | s1) & (c.to_bits() == m);
    let s3 = !(s0 | s1 | s2);
    [keep(g, s0), keep(g, s1), keep(g, s2), keep(g, s3)]
}

/// Windows routed per step of [`route_row`] (one SSE vector): fixed-size arrays, so the
/// compiler vectorises the (de)interleaving and the selects, with no branches.
const ROUTE_GROUP: usize = 4;

/// [`route`] over `ROUTE_GROUP` consecutive windows.
#[inline(always)]
fn route_group(
    p0: &[f32; 2 * ROUTE_GROUP],
    p1: &[f32; 2 * ROUTE_GROUP],
    g: &[f32; ROUTE_GROUP],
    q0: &mut [f32; 2 * ROUTE_GROUP],
    q1: &mut [f32; 2 * ROUTE_GROUP],
) {
    for k in 0..ROUTE_GROUP {
        let o = route(p0[2 * k], p0[2 * k + 1], p1[2 * k], p1[2 * k + 1], g[k]);
        q0[2 * k] = o[0];
        q0[2 * k + 1] = o[1];
        q1[2 * k] = o[2];
        q1[2 * k + 1] = o[3];
    }
}

/// One output row of the max-pool backward: input rows `r0`, `r1` and gradient rows `d0`,
/// `d1` (each `2 * dy.len()` long), output gradients `dy`. A last partial group goes through
/// zero-padded copies (a zero window with a zero gradient), so it takes the same vectorised
/// path, unless the row is shorter than one group.
#[inline]
fn route_row(r0: &[f32], r1: &[f32], dy: &[f32], d0: &mut [f32], d1: &mut [f32]) {
    const G: usize = ROUTE_GROUP;
    let groups = r0
        .chunks_exact(2 * G)
        .zip(r1.chunks_exact(2 * G))
        .zip(dy.chunks_exact(G))
        .zip(d0.chunks_exact_mut(2 * G).zip(d1.chunks_exact_mut(2 * G)));
    for (((p0, p1), g), (q0, q1)) in groups {
        route_group(
            p0.try_into().unwrap(),
            p1.try_into().unwrap(),
            g.try_into().unwrap(),
            q0.try_into().unwrap(),
            q1.try_into().unwrap(),
        );
    }
    let rest = dy.len() % G;
    if rest > 0 && rest == dy.len() {
        // A row of fewer windows than a group (small maps): scalar, cheaper than padding.
        for (i, &g) in dy.iter().enumerate() {
            let o = route(r0[2 * i], r0[2 * i + 1], r1[2 * i], r1[2 * i + 1], g);
            d0[2 * i] = o[0];
            d0[2 * i + 1] = o[1];
            d1[2 * i] = o[2];
            d1[2 * i + 1] = o[3];
        }
    } else if rest > 0 {
        let (i, e) = (dy.len() - rest, 2 * rest);
        let (mut p0, mut p1, mut g) = ([0f32; 2 * G], [0f32; 2 * G], [0f32; G]);
        let (mut q0, mut q1) = ([0f32; 2 * G], [0f32; 2 * G]);
        p0[..e].copy_from_slice(&r0[2 * i..]);
        p1[..e].copy_from_slice(&r1[2 * i..]);
        g[..rest].copy_from_slice(&dy[i..]);
        route_group(&p0, &p1, &g, &mut q0, &mut q1);
        d0[2 * i..].copy_from_slice(&q0[..e]);
        d1[2 * i..].copy_from_slice(&q1[..e]);
    }
}

/// Max-pool backward; semantics of [`crate::cpu::max_pool::max_pool_backward`]: each output
/// gradient goes to the first maximum of its window, every other input element gets zero.
/// Every element of `grad_input` is written once (no fill-then-scatter).
pub fn max_pool_backward(
    s: &PoolShape,
    input: &[f32],
    grad_output: &[f32],
    grad_input: &mut [f32],
) {
    check_pool(s, "max_pool_backward", input.len(), grad_output.len());
    assert_eq!(
        grad_input.len(),
        s.input_len(),
        "max_pool_backward: grad_input length"
    );
    let (h, w, oh, ow) = (s.height, s.width, s.out_height(), s.out_width());
    if grad_output.is_empty() {
        // No windows (or no planes): nothing is routed anywhere.
        grad_input.fill(0.0);
        return;
    }
    let (plane_in, plane_out) = (h * w, oh * ow);
    grad_input
        .par_chunks_mut(plane_in)
        .zip(
            input
                .par_chunks(plane_in)
                .zip(grad_output.par_chunks(plane_out)),
        )
        .with_min_len(planes_per_task(plane_in))
        .for_each(|(dx, (x, dy))| route_plane(h, w, ow, x, dy, dx));
}

/// Max-pool backward of one plane: `x` (`h` x `w`), pooled gradient `dy` (`ow` wide), every
/// element of `dx` written.
#[inline]
fn route_plane(h: usize, w: usize, ow: usize, x: &[f32], dy: &[f32], dx: &mut [f32]) {
    for (oy, dyr) in dy.chunks_exact(ow).enumerate() {
        let r0 = &x[2 * oy * w..][..2 * ow];
        let r1 = &x[(2 * oy + 1) * w..][..2 * ow];
        let (d0, d1) = dx[2 * oy * w..(2 * oy + 2) * w].split_at_mut(w);
        route_row(r0, r1, dyr, &mut d0[..2 * ow], &mut d1[..2 * ow]);
        if w % 2 == 1 {
            d0[w - 1] = 0.0;
            d1[w - 1] = 0.0;
        }
    }
    if h % 2 == 1 {
        dx[(h - 1) * w..].fill(0.0);
    }
}

// ---------------------------------------------------------------------------------------------
// Batch norm (+ ReLU) and 2x2 max-pool, fused
//
// The unfused ops write the batch-norm output `y` (as large as the convolution output), read
// it back to pool, then in the backward write the routed gradient `dy` (as large again) and
// read `x`, `y` and `dy` twice more. Fused, the forward reads `x` for the statistics and once
// more to write only the pooled map; the backward recomputes `y` from `x` (the same formula
// and statistics, so bit for bit the values the forward pooled) where it needs the winners
// and the ReLU mask: two reads of `x` and a quarter-size gradient, one write of `dx`.

/// Per-channel `(mean, scale, shift)` of the normalisation `y = (x - mean) * scale + shift`.
type Coefficients<'a> = &'a (dyn Fn(usize) -> (f32, f32, f32) + Sync);

/// `pooled = max_pool(norm(input))` plane by plane, `norm` given by `coef` per channel.
fn norm_pool(s: &PoolShape, relu: bool, input: &[f32], pooled: &mut [f32], coef: Coefficients) {
    let (w, oh, ow) = (s.width, s.out_height(), s.out_width());
    let (plane_in, plane_out) = (s.height * w, oh * ow);
    if pooled.is_empty() {
        return;
    }
    pooled
        .par_chunks_mut(plane_out)
        .zip(input.par_chunks(plane_in))
        .enumerate()
        .with_min_len(planes_per_task(plane_in))
        .for_each_init(
            || vec![0f32; plane_in],
            |y, (i, (pooled, x))| {
                let (mean, scale, shift) = coef(i % s.channels);
                affine(x, y, mean, scale, shift, relu);
                pool_plane(w, ow, y, pooled);
            },
        );
}

/// Training-mode batch norm (+ ReLU when `p.relu`) and max-pool in one op: the statistics and
/// `pooled` of [`batch_norm_train`] followed by [`max_pool_forward`], without writing the
/// batch-norm output.
#[allow(clippy::too_many_arguments)]
pub fn batch_norm_pool_train(
    s: &PoolShape,
    p: &BatchNorm,
    input: &[f32],
    gamma: &[f32],
    beta: &[f32],
    pooled: &mut [f32],
    saved_mean: &mut [f32],
    saved_inv_std: &mut [f32],
    running_mean: &mut [f32],
    running_var: &mut [f32],
) {
    let ns = s.norm_shape();
    check_norm(
        &ns,
        "batch_norm_pool_train",
        &[input.len()],
        &[
            gamma.len(),
            beta.len(),
            saved_mean.len(),
            saved_inv_std.len(),
            running_mean.len(),
            running_var.len(),
        ],
    );
    assert_eq!(
        pooled.len(),
        s.output_len(),
        "batch_norm_pool_train: pooled length"
    );
    train_stats(
        &ns,
        p,
        input,
        saved_mean,
        saved_inv_std,
        running_mean,
        running_var,
    );
    let (mean, inv_std) = (&*saved_mean, &*saved_inv_std);
    norm_pool(s, p.relu, input, pooled, &|c| {
        (mean[c], gamma[c] * inv_std[c], beta[c])
    });
}

/// Evaluation-mode batch norm (+ ReLU) and max-pool in one op: [`batch_norm_eval`] followed
/// by [`max_pool_forward`], without writing the batch-norm output.
#[allow(clippy::too_many_arguments)]
pub fn batch_norm_pool_eval(
    s: &PoolShape,
    p: &BatchNorm,
    input: &[f32],
    gamma: &[f32],
    beta: &[f32],
    running_mean: &[f32],
    running_var: &[f32],
    pooled: &mut [f32],
) {
    let ns = s.norm_shape();
    check_norm(
        &ns,
        "batch_norm_pool_eval",
        &[input.len()],
        &[
            gamma.len(),
            beta.len(),
            running_mean.len(),
            running_var.len(),
        ],
    );
    assert_eq!(
        pooled.len(),
        s.output_len(),
        "batch_norm_pool_eval: pooled length"
    );
    norm_pool(s, p.relu, input, pooled, &|c| {
        (
            running_mean[c],
            gamma[c] / (running_var[c] + p.eps).sqrt(),
            beta[c],
        )
    });
}

/// The gradient reaching the batch-norm input plane `x`: each pooled gradient of `g` routed
/// to its window's first maximum of the recomputed output `y`, through the ReLU mask; zero
/// outside every window. `y` and `d` are plane-sized scratch.
#[inline]
fn routed_plane(
    s: &PoolShape,
    x: &[f32],
    g: &[f32],
    (mean, scale, shift): (f32, f32, f32),
    relu: bool,
    y: &mut [f32],
    d: &mut [f32],
) {
    affine(x, y, mean, scale, shift, relu);
    route_plane(s.height, s.width, s.out_width(), y, g, d);
    if relu {
        for (d, &y) in d.iter_mut().zip(y.iter()) {
            *d = keep(*d, y > 0.0);
        }
    }
}

/// Backward of [`batch_norm_pool_train`]: [`max_pool_backward`] (on the batch-norm output,
/// recomputed plane by plane in cache) followed by [`batch_norm_backward`]. The routed
/// gradient goes to `grad_output` (scratch) in the same pass that sums it, so the full-size
/// batch-norm output is never read.
#[allow(clippy::too_many_arguments)]
pub fn pool_batch_norm_backward(
    s: &PoolShape,
    p: &BatchNorm,
    input: &[f32],
    grad_pooled: &[f32],
    gamma: &[f32],
    beta: &[f32],
    saved_mean: &[f32],
    saved_inv_std: &[f32],
    grad_output: &mut [f32],
    grad_input: &mut [f32],
    grad_gamma: &mut [f32],
    grad_beta: &mut [f32],
) {
    let ns = s.norm_shape();
    check_norm(
        &ns,
        "pool_batch_norm_backward",
        &[input.len(), grad_output.len(), grad_input.len()],
        &[
            gamma.len(),
            beta.len(),
            saved_mean.len(),
            saved_inv_std.len(),
            grad_gamma.len(),
            grad_beta.len(),
        ],
    );
    assert_eq!(
        grad_pooled.len(),
        s.output_len(),
        "pool_batch_norm_backward: grad_pooled length"
    );
    let (plane_in, plane_out) = (s.height * s.width, s.out_height() * s.out_width());
    if grad_pooled.is_empty() {
        // No windows, no gradient: every term of the batch-norm backward is zero.
        grad_gamma.fill(0.0);
        grad_beta.fill(0.0);
        grad_input.fill(0.0);
        return;
    }
    let relu = p.relu;
    let coef = |c: usize| (saved_mean[c], gamma[c] * saved_inv_std[c], beta[c]);
    // 1. Per plane: the routed gradient, and its partial sums sum(g) and sum(g * (x - mean)).
    let mut partial = vec![(0f64, 0f64); s.batch * s.channels];
    grad_output
        .par_chunks_mut(plane_in)
        .zip(input.par_chunks(plane_in))
        .zip(
            grad_pooled
                .par_chunks(plane_out)
                .zip(partial.par_iter_mut()),
        )
        .enumerate()
        .with_min_len(planes_per_task(plane_in))
        .for_each_init(
            || vec![0f32; 2 * plane_in],
            |buf, (i, ((d, x), (g, part)))| {
                let c = i % s.channels;
                let (y, gx) = buf.split_at_mut(plane_in);
                routed_plane(s, x, g, coef(c), relu, y, d);
                let mean = saved_mean[c];
                for ((gx, &d), &x) in gx.iter_mut().zip(&*d).zip(x) {
                    *gx = d * (x - mean);
                }
                let (mut sg, mut sgx) = (Acc::new(), Acc::new());
                sum_run::<false>(d, 0.0, &mut sg);
                sum_run::<false>(gx, 0.0, &mut sgx);
                *part = (sg.total(), sgx.total());
            },
        );
    // Per channel, the planes' sums in image order (fixed: deterministic).
    for c in 0..s.channels {
        let (mut sg, mut sgx) = (0f64, 0f64);
        for b in 0..s.batch {
            let (g, gx) = partial[b * s.channels + c];
            sg += g;
            sgx += gx;
        }
        grad_beta[c] = sg as f32;
        grad_gamma[c] = (sgx * saved_inv_std[c] as f64) as f32;
    }
    // 2. Elementwise, per plane, in `batch_norm_backward`'s form.
    let nf = (s.batch * plane_in) as f32;
    let (grad_gamma, grad_beta) = (&*grad_gamma, &*grad_beta);
    grad_input
        .par_chunks_mut(plane_in)
        .zip(
            input
                .par_chunks(plane_in)
                .zip(grad_output.par_chunks(plane_in)),
        )
        .enumerate()
        .with_min_len(planes_per_task(plane_in))
        .for_each(|(i, (dx, (x, d)))| {
            let ig = InputGrad::of(
                i % s.channels,
                nf,
                gamma,
                saved_mean,
                saved_inv_std,
                grad_gamma,
                grad_beta,
            );
            for ((dx, &x), &g) in dx.iter_mut().zip(x).zip(d) {
                *dx = ig.at(x, g);
            }
        });
}

/// `dst = src` for two distinct slices, in parallel chunks when long.
pub fn copy(src: &[f32], dst: &mut [f32]) {
    assert_eq!(src.len(), dst.len(), "copy: length mismatch");
    if src.len() < PARALLEL_COPY_MIN {
        dst.copy_from_slice(src);
    } else {
        dst.par_chunks_mut(PARALLEL_COPY_MIN / 4)
            .zip(src.par_chunks(PARALLEL_COPY_MIN / 4))
            .for_each(|(d, s)| d.copy_from_slice(s));
    }
}

/// Within one buffer: `data[dst..dst + len] = data[src..src + len]` (the ranges may overlap).
pub fn copy_within(data: &mut [f32], src: usize, dst: usize, len: usize) {
    if src == dst {
        return;
    }
    if src + len <= dst || dst + len <= src {
        // Disjoint: split and copy in parallel.
        let (lo, hi) = data.split_at_mut(src.max(dst));
        if src < dst {
            copy(&lo[src..src + len], &mut hi[..len]);
        } else {
            copy(&hi[..len], &mut lo[dst..dst + len]);
        }
    } else {
        data.copy_within(src..src + len, dst);
    }
}
