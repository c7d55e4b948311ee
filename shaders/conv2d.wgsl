// conv2d: 2-D convolution, stride 1, square kernel of any size, symmetric zero padding, NCHW,
// as implicit GEMMs (the im2col matrix is never stored: its tiles are gathered on the fly).
//
// Layouts (all f32, contiguous, each a view at element offset `*_off` of its bound buffer):
//   input  [N, C, H, W]      weight [O, C, K, K]      bias [O]
//   output [N, O, OH, OW]    with OH = H + 2 PAD + 1 - K, OW = W + 2 PAD + 1 - K
//
// conv2d_gemm (forward and input gradient; one kernel, two readings of it):
//   dst[n, d, y, x] = bias[d] + sum_{s, kh, kw} src[n, s, y + T(kh), x + T(kw)] * weight[d * WD + s * WS + kh * K + kw]
//   with out-of-range taps reading zero and
//   forward:         src = input,       d = o, s = c, T(k) = k - PAD, WD = C K K, WS = K K, bias
//   backward_input:  src = grad_output, d = c, s = o, T(k) = PAD - k, WD = K K, WS = C K K, no bias
//   (gin[n,c,y,x] = sum_{o,kh,kw} gout[n,o,y+PAD-kh,x+PAD-kw] w[o,c,kh,kw]: the transposed
//   convolution in gather form). As a GEMM: M = N*DH*DW destination pixels, N' = destination
//   channels, K' = source channels * K * K taps; A[m, k] = the (implicit im2col) source value,
//   B[k, d] = the weight.
//   conv2d_direct computes the same with one thread per destination element; the launcher
//   picks it for fewer than 8 destination channels (a 64-column tile would be mostly idle).
// conv2d_weight_partial (weight and bias gradients, split-K):
//   gw[o, j] = sum_p gout[n, o, q] * in[n, c, oy + kh - PAD, ox + kw - PAD],  j = (c, kh, kw),
//   p = (n, q = (oy, ox)); gb[o] = sum_p gout[n, o, q]. As a GEMM: M = O, N' = C K K,
//   K' = N*OH*OW (huge: 470k at batch 600 on 28x28) while M*N' is small (36864 for 64->64 3x3),
//   so K' is split into `splits` chunks; each workgroup computes one tile over one chunk and
//   writes its partial sums to scratch [splits, O, C K K] (then the bias partials,
//   [splits, O], from the workgroups of the first column tile).
// conv2d_sum_splits: out[i] = sum_{s < splits} scratch[off + s * len + i], s ascending (fixed
//   order: deterministic, no atomics). Run once for the weight gradient, once for the bias.
//
// GEMM tiling (both GEMM kernels): 256 threads per workgroup compute a 64 x 64 tile of the
// result, each thread a 4 x 4 register block (4 vec4 accumulators; rows and columns strided by
// 16 so that neighbouring threads read neighbouring workgroup-memory words and write
// neighbouring output elements). K' is walked in slices of 16: the threads cooperatively gather
// the 16 x 64 slices of A and B into workgroup memory (4 values each, zero outside the matrix
// and in the padding), barrier, 16 rank-1 updates from workgroup memory, barrier. Workgroup
// memory: at most 2 x 16 x 66 floats = 8.25 KiB, well inside WebGPU's 16 KiB (slices stored
// transposed use rows padded to 66, so those stores are free of bank conflicts). Every bound
// (M, N', K' of any size) is checked; the barriers sit in uniform control flow (loop bounds and
// early returns depend only on uniforms and workgroup ids).
//
// Dispatch: the GEMM kernels take one workgroup per tile (per tile and split), linear id
// wid.x + wid.y * nwg.x (spilling into y past the adapter's per-dimension limit), returning
// early past the end; conv2d_direct and conv2d_sum_splits are 1-D, 256 threads per
// workgroup, index gid.x + gid.y * nwg.x * 256.
//
// Expected effect on real GPUs (vs the previous one-thread-per-output / one-workgroup-per-
// weight kernels): each value brought into workgroup memory is used 64 times (vs once from
// L1/L2 per FMA before), each thread does 16 FMAs per 8 workgroup-memory loads, and the weight
// gradient runs a few hundred workgroups that each stream a contiguous K' chunk instead of
// 36864 workgroups each re-reading the whole batch with a strided index and a 256-wide tree.
// Typical for this structure: 30-60 % of fp32 peak for the forward and input gradient at the
// Conv-4 shapes (64 channels: K' = 576), i.e. roughly 5-20x the direct kernels, and 10-50x on
// the weight gradient, whose old form was bound by redundant global reads. (Not measured on a
// real GPU; on lavapipe, the 64-channel layers at batch 60 went from 0.06-0.3 to 0.8-1.8 GFLOP/s.)
// Known waste: the single-channel first layer's weight gradient (N' = 9) fills 9 of 64 tile
// columns; it is bound by reading grad_output anyway.

const TILE: u32 = 64u; // BM = BN
const SLICE: u32 = 16u; // BK
const ROW: u32 = 66u; // padded workgroup-memory row (TILE + 2)

// ---------------------------------------------------------------- conv2d_gemm

struct GemmParams {
    batch: u32,
    src_ch: u32,
    src_h: u32,
    src_w: u32,
    dst_ch: u32,
    dst_h: u32,
    dst_w: u32,
    kernel: u32,
    pad: u32,
    // 0: taps at y + kh - PAD (forward); 1: taps at y + PAD - kh (input gradient).
    flip: u32,
    w_dst_stride: u32,
    w_src_stride: u32,
    has_bias: u32,
    // Column tiles (destination channels / 64, rounded up) and all tiles.
    n_tiles: u32,
    tiles: u32,
    src_off: u32,
    weight_off: u32,
    bias_off: u32,
    dst_off: u32,
}

@group(0) @binding(0) var<uniform> gp: GemmParams;
@group(0) @binding(1) var<storage, read> g_src: array<f32>;
@group(0) @binding(2) var<storage, read> g_weight: array<f32>;
// Forward: the bias. Input gradient: the weight buffer again (never read).
@group(0) @binding(3) var<storage, read> g_bias: array<f32>;
@group(0) @binding(4) var<storage, read_write> g_dst: array<f32>;

// A slice [k][m] (row stride TILE: stored along m, conflict-free) and B slice [k][n] (row
// stride ROW: stored along k, transposing).
var<workgroup> g_a: array<f32, 1024>; // SLICE * TILE
var<workgroup> g_b: array<f32, 1056>; // SLICE * ROW

@compute @workgroup_size(256)
fn conv2d_gemm(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let t = wid.x + wid.y * nwg.x;
    if (t >= gp.tiles) {
        return; // uniform: depends on the workgroup id only
    }
    let m0 = (t / gp.n_tiles) * TILE;
    let n0 = (t % gp.n_tiles) * TILE;
    let k = gp.kernel;
    let kk = k * k;
    let dst_hw = gp.dst_h * gp.dst_w;
    let src_hw = gp.src_h * gp.src_w;
    let rows = gp.batch * dst_hw; // M
    let cols = gp.dst_ch; // N'
    let depth = gp.src_ch * kk; // K'

    // This thread's A row (fixed for all slices): destination pixel m0 + lid % 64, decoded once.
    let am = m0 + lid % TILE;
    let a_row_ok = am < rows;
    let a_n = am / dst_hw;
    let a_p = am % dst_hw;
    // Tap position for kh = 0: y + T(0); T(kh) = T(0) + kh (forward) or T(0) - kh (gradient).
    let a_y0 = i32(a_p / gp.dst_w) + select(-i32(gp.pad), i32(gp.pad), gp.flip == 1u);
    let a_x0 = i32(a_p % gp.dst_w) + select(-i32(gp.pad), i32(gp.pad), gp.flip == 1u);
    let a_sgn = select(1, -1, gp.flip == 1u);
    let a_base = gp.src_off + a_n * gp.src_ch * src_hw;
    let a_k = lid / TILE; // this thread loads A slice rows a_k, a_k + 4, a_k + 8, a_k + 12
    // This thread's B slice row (fixed): k offset lid % 16; columns lid / 16 + 16 r.
    let b_k = lid % SLICE;
    let b_n = lid / SLICE;

    // Compute mapping: rows m0 + tm + 16 i, columns n0 + tn + 16 j.
    let tm = lid % 16u;
    let tn = lid / 16u;
    var acc0 = vec4<f32>(0.0);
    var acc1 = vec4<f32>(0.0);
    var acc2 = vec4<f32>(0.0);
    var acc3 = vec4<f32>(0.0);

    for (var k0 = 0u; k0 < depth; k0 += SLICE) {
        // Gather the A slice: the source values under taps k0 .. k0 + 15 of 64 pixels.
        for (var r = 0u; r < 4u; r++) {
            let kr = a_k + 4u * r;
            let kg = k0 + kr;
            var v = 0.0;
            if (a_row_ok && kg < depth) {
                let s = kg / kk;
                let tap = kg % kk;
                let sy = a_y0 + a_sgn * i32(tap / k);
                let sx = a_x0 + a_sgn * i32(tap % k);
                if (sy >= 0 && sy < i32(gp.src_h) && sx >= 0 && sx < i32(gp.src_w)) {
                    v = g_src[a_base + s * src_hw + u32(sy) * gp.src_w + u32(sx)];
                }
            }
            g_a[kr * TILE + am - m0] = v;
        }
        // Load the B slice: weights of taps k0 .. k0 + 15 for 64 destination channels.
        let bk = k0 + b_k;
        let b_s = bk / kk;
        let b_tap = bk % kk;
        for (var r = 0u; r < 4u; r++) {
            let nr = b_n + 16u * r;
            let ng = n0 + nr;
            var v = 0.0;
            if (bk < depth && ng < cols) {
                v = g_weight[gp.weight_off + ng * gp.w_dst_stride + b_s * gp.w_src_stride + b_tap];
            }
            g_b[b_k * ROW + nr] = v;
        }
        workgroupBarrier();
        for (var q = 0u; q < SLICE; q++) {
            let a = vec4<f32>(g_a[q * TILE + tm], g_a[q * TILE + tm + 16u], g_a[q * TILE + tm + 32u], g_a[q * TILE + tm + 48u]);
            let b = vec4<f32>(g_b[q * ROW + tn], g_b[q * ROW + tn + 16u], g_b[q * ROW + tn + 32u], g_b[q * ROW + tn + 48u]);
            acc0 = fma(vec4<f32>(a.x), b, acc0);
            acc1 = fma(vec4<f32>(a.y), b, acc1);
            acc2 = fma(vec4<f32>(a.z), b, acc2);
            acc3 = fma(vec4<f32>(a.w), b, acc3);
        }
        workgroupBarrier();
    }

    gemm_store(m0 + tm, n0 + tn, rows, cols, dst_hw, acc0);
    gemm_store(m0 + tm + 16u, n0 + tn, rows, cols, dst_hw, acc1);
    gemm_store(m0 + tm + 32u, n0 + tn, rows, cols, dst_hw, acc2);
    gemm_store(m0 + tm + 48u, n0 + tn, rows, cols, dst_hw, acc3);
}

// Row m of the result (destination pixel), columns n, n + 16, n + 32, n + 48.
fn gemm_store(m: u32, n: u32, rows: u32, cols: u32, dst_hw: u32, v: vec4<f32>) {
    if (m >= rows) {
        return;
    }
    let img = m / dst_hw;
    let base = gp.dst_off + img * cols * dst_hw + m % dst_hw;
    for (var j = 0u; j < 4u; j++) {
        let d = n + 16u * j;
        if (d < cols) {
            var b = 0.0;
            if (gp.has_bias == 1u) {
                b = g_bias[gp.bias_off + d];
            }
            g_dst[base + d * dst_hw] = v[j] + b;
        }
    }
}

// ---------------------------------------------------------------- conv2d_direct

// The same convolution (same parameters and bindings as conv2d_gemm), one thread per
// destination element, for few destination channels (below 8: the input gradient of the
// single-channel first layer), where a 64-column tile would be mostly idle. Taps are visited
// in the same (s, kh, kw) order.
@compute @workgroup_size(256)
fn conv2d_direct(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = gid.x + gid.y * nwg.x * 256u;
    let dst_hw = gp.dst_h * gp.dst_w;
    if (i >= gp.batch * gp.dst_ch * dst_hw) {
        return;
    }
    // i = ((n * dst_ch + d) * DH + y) * DW + x
    let p = i % dst_hw;
    let nd = i / dst_hw;
    let d = nd % gp.dst_ch;
    let n = nd / gp.dst_ch;
    let off = select(-i32(gp.pad), i32(gp.pad), gp.flip == 1u);
    let sgn = select(1, -1, gp.flip == 1u);
    let y0 = i32(p / gp.dst_w) + off;
    let x0 = i32(p % gp.dst_w) + off;
    let k = gp.kernel;
    let src_hw = gp.src_h * gp.src_w;
    var acc = 0.0;
    for (var s = 0u; s < gp.src_ch; s++) {
        let src_base = gp.src_off + (n * gp.src_ch + s) * src_hw;
        let w_base = gp.weight_off + d * gp.w_dst_stride + s * gp.w_src_stride;
        for (var kh = 0u; kh < k; kh++) {
            let sy = y0 + sgn * i32(kh);
            if (sy < 0 || sy >= i32(gp.src_h)) {
                continue;
            }
            for (var kw = 0u; kw < k; kw++) {
                let sx = x0 + sgn * i32(kw);
                if (sx >= 0 && sx < i32(gp.src_w)) {
                    acc += g_src[src_base + u32(sy) * gp.src_w + u32(sx)] * g_weight[w_base + kh * k + kw];
                }
            }
        }
    }
    if (gp.has_bias == 1u) {
        acc += g_bias[gp.bias_off + d];
    }
    g_dst[gp.dst_off + i] = acc;
}

// ---------------------------------------------------------------- conv2d_weight_partial

struct PartialParams {
    batch: u32,
    in_ch: u32,
    out_ch: u32,
    height: u32,
    width: u32,
    kernel: u32,
    pad: u32,
    out_h: u32,
    out_w: u32,
    // Column tiles (C K K / 64, rounded up), tiles per split, K' positions per split
    // (a multiple of 16) and the number of splits.
    n_tiles: u32,
    tiles: u32,
    chunk: u32,
    splits: u32,
    input_off: u32,
    grad_output_off: u32,
    scratch_off: u32,
}

@group(0) @binding(0) var<uniform> pp: PartialParams;
@group(0) @binding(1) var<storage, read> p_input: array<f32>;
@group(0) @binding(2) var<storage, read> p_grad_output: array<f32>;
@group(0) @binding(3) var<storage, read_write> p_scratch: array<f32>;

// A slice [k][m] (grad_output, transposed on store) and B slice [k][n] (input), both
// stored along k with row stride ROW.
var<workgroup> p_a: array<f32, 1056>; // SLICE * ROW
var<workgroup> p_b: array<f32, 1056>; // SLICE * ROW

@compute @workgroup_size(256)
fn conv2d_weight_partial(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let t = wid.x + wid.y * nwg.x;
    if (t >= pp.tiles * pp.splits) {
        return; // uniform
    }
    let split = t / pp.tiles;
    let tile = t % pp.tiles;
    let n_tile = tile % pp.n_tiles;
    let m0 = (tile / pp.n_tiles) * TILE;
    let n0 = n_tile * TILE;
    let k = pp.kernel;
    let kk = k * k;
    let hw = pp.height * pp.width;
    let out_hw = pp.out_h * pp.out_w;
    let rows = pp.out_ch; // M
    let cols = pp.in_ch * kk; // N'
    let total = pp.batch * out_hw; // K'
    let k_begin = split * pp.chunk;
    let k_end = min(k_begin + pp.chunk, total);

    // Loads: this thread handles K' offset lid % 16 of each slice, rows/columns lid / 16 + 16 r.
    let l_k = lid % SLICE;
    let l_n = lid / SLICE;
    // Compute mapping: rows (out channels) m0 + tm + 16 i, columns n0 + tn + 16 j; columns
    // fastest across threads so the scratch writes are contiguous.
    let tn = lid % 16u;
    let tm = lid / 16u;
    var acc0 = vec4<f32>(0.0);
    var acc1 = vec4<f32>(0.0);
    var acc2 = vec4<f32>(0.0);
    var acc3 = vec4<f32>(0.0);
    var bias_acc = 0.0;
    let bias_tile = n_tile == 0u; // uniform

    for (var k0 = k_begin; k0 < k_end; k0 += SLICE) {
        // The output position p = (n, oy, ox) this thread loads, decoded once per slice.
        let p = k0 + l_k;
        let p_ok = p < k_end;
        let n = p / out_hw;
        let q = p % out_hw;
        let oy = q / pp.out_w;
        let ox = q % pp.out_w;
        // A slice: grad_output[n, o, oy, ox] for 64 output channels o.
        let go_base = pp.grad_output_off + n * rows * out_hw + q;
        for (var r = 0u; r < 4u; r++) {
            let mr = l_n + 16u * r;
            let o = m0 + mr;
            var v = 0.0;
            if (p_ok && o < rows) {
                v = p_grad_output[go_base + o * out_hw];
            }
            p_a[l_k * ROW + mr] = v;
        }
        // B slice: input[n, c, oy + kh - PAD, ox + kw - PAD] for 64 weight columns (c, kh, kw).
        let in_base = pp.input_off + n * pp.in_ch * hw;
        for (var r = 0u; r < 4u; r++) {
            let nr = l_n + 16u * r;
            let j = n0 + nr;
            var v = 0.0;
            if (p_ok && j < cols) {
                let c = j / kk;
                let tap = j % kk;
                let iy = i32(oy + tap / k) - i32(pp.pad);
                let ix = i32(ox + tap % k) - i32(pp.pad);
                if (iy >= 0 && iy < i32(pp.height) && ix >= 0 && ix < i32(pp.width)) {
                    v = p_input[in_base + c * hw + u32(iy) * pp.width + u32(ix)];
                }
            }
            p_b[l_k * ROW + nr] = v;
        }
        workgroupBarrier();
        for (var s = 0u; s < SLICE; s++) {
            let a = vec4<f32>(p_a[s * ROW + tm], p_a[s * ROW + tm + 16u], p_a[s * ROW + tm + 32u], p_a[s * ROW + tm + 48u]);
            let b = vec4<f32>(p_b[s * ROW + tn], p_b[s * ROW + tn + 16u], p_b[s * ROW + tn + 32u], p_b[s * ROW + tn + 48u]);
            acc0 = fma(vec4<f32>(a.x), b, acc0);
            acc1 = fma(vec4<f32>(a.y), b, acc1);
            acc2 = fma(vec4<f32>(a.z), b, acc2);
            acc3 = fma(vec4<f32>(a.w), b, acc3);
        }
        // The bias gradient: the first column tile's threads 0..63 also sum their A column.
        if (bias_tile && lid < TILE) {
            for (var s = 0u; s < SLICE; s++) {
                bias_acc += p_a[s * ROW + lid];
            }
        }
        workgroupBarrier();
    }

    let base = pp.scratch_off + split * rows * cols;
    partial_store(base, m0 + tm, n0 + tn, rows, cols, acc0);
    partial_store(base, m0 + tm + 16u, n0 + tn, rows, cols, acc1);
    partial_store(base, m0 + tm + 32u, n0 + tn, rows, cols, acc2);
    partial_store(base, m0 + tm + 48u, n0 + tn, rows, cols, acc3);
    if (bias_tile && lid < TILE && m0 + lid < rows) {
        p_scratch[pp.scratch_off + pp.splits * rows * cols + split * rows + m0 + lid] = bias_acc;
    }
}

fn partial_store(base: u32, m: u32, n: u32, rows: u32, cols: u32, v: vec4<f32>) {
    if (m >= rows) {
        return;
    }
    for (var j = 0u; j < 4u; j++) {
        let c = n + 16u * j;
        if (c < cols) {
            p_scratch[base + m * cols + c] = v[j];
        }
    }
}

// ---------------------------------------------------------------- conv2d_sum_splits

struct SumParams {
    len: u32,
    splits: u32,
    scratch_off: u32,
    out_off: u32,
}

@group(0) @binding(0) var<uniform> sp: SumParams;
@group(0) @binding(1) var<storage, read> s_scratch: array<f32>;
@group(0) @binding(2) var<storage, read_write> s_out: array<f32>;

@compute @workgroup_size(256)
fn conv2d_sum_splits(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = gid.x + gid.y * nwg.x * 256u;
    if (i >= sp.len) {
        return;
    }
    var acc = 0.0;
    var at = sp.scratch_off + i;
    for (var s = 0u; s < sp.splits; s++) {
        acc += s_scratch[at];
        at += sp.len;
    }
    s_out[sp.out_off + i] = acc;
}
