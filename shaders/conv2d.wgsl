// conv2d: 2-D convolution, stride 1, square kernel of any size, symmetric zero padding, NCHW.
//
// Layouts (all f32, contiguous, each a view at element offset `*_off` of its bound buffer):
//   input  [N, C, H, W]      weight [O, C, K, K]      bias [O]
//   output [N, O, OH, OW]    with OH = H + 2 PAD + 1 - K, OW = W + 2 PAD + 1 - K
//
// conv2d_forward:         out[n,o,oy,ox] = bias[o] + sum_{c,kh,kw} w[o,c,kh,kw] in[n,c,oy+kh-PAD,ox+kw-PAD]
//                         One thread per output element (x fastest: neighbouring threads read
//                         neighbouring input pixels and the same weights).
// conv2d_backward_input:  gin[n,c,y,x] = sum_{o,kh,kw} gout[n,o,y+PAD-kh,x+PAD-kw] w[o,c,kh,kw]
//                         (the transposed convolution in gather form). One thread per input element.
// conv2d_backward_weight: gw[o,c,kh,kw] = sum_{n,oy,ox} gout[n,o,oy,ox] in[n,c,oy+kh-PAD,ox+kw-PAD]
//                         One 256-thread workgroup per weight element; threads stride over the
//                         N*OH*OW (n, oy, ox) positions, then a workgroup-memory tree reduction.
// conv2d_backward_bias:   gb[o] = sum_{n,oy,ox} gout[n,o,oy,ox]. One workgroup per output channel,
//                         same reduction.
// Out-of-range taps (zero padding) are skipped. Sums are in a fixed order: deterministic.
// Dispatch: the element-wise kernels are 1-D over their outputs (256 threads per workgroup);
// the reductions take one workgroup per output element. Both spill into y when x would exceed
// the adapter's limit: linear id = gid.x + gid.y * nwg.x * 256 (element-wise) or
// wid.x + wid.y * nwg.x (reductions), returning early past the end.

// ---------------------------------------------------------------- forward

struct ForwardParams {
    batch: u32,
    in_ch: u32,
    out_ch: u32,
    height: u32,
    width: u32,
    kernel: u32,
    pad: u32,
    out_h: u32,
    out_w: u32,
    input_off: u32,
    weight_off: u32,
    bias_off: u32,
    output_off: u32,
}

@group(0) @binding(0) var<uniform> fp: ForwardParams;
@group(0) @binding(1) var<storage, read> f_input: array<f32>;
@group(0) @binding(2) var<storage, read> f_weight: array<f32>;
@group(0) @binding(3) var<storage, read> f_bias: array<f32>;
@group(0) @binding(4) var<storage, read_write> f_output: array<f32>;

@compute @workgroup_size(256)
fn conv2d_forward(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = gid.x + gid.y * nwg.x * 256u;
    let out_hw = fp.out_h * fp.out_w;
    if (i >= fp.batch * fp.out_ch * out_hw) {
        return;
    }
    // i = ((n * O + o) * OH + oy) * OW + ox
    let ox = i % fp.out_w;
    let oy = (i / fp.out_w) % fp.out_h;
    let no = i / out_hw;
    let o = no % fp.out_ch;
    let n = no / fp.out_ch;

    // Valid taps: 0 <= oy + kh - pad < H, i.e. kh in [kh0, kh1) (likewise kw).
    // (Signed: with padding >= kernel an output can lie wholly in the padding, giving an empty range.)
    let k = fp.kernel;
    let kh0 = u32(max(0, i32(fp.pad) - i32(oy)));
    let kh1 = u32(clamp(i32(fp.height + fp.pad) - i32(oy), 0, i32(k)));
    let kw0 = u32(max(0, i32(fp.pad) - i32(ox)));
    let kw1 = u32(clamp(i32(fp.width + fp.pad) - i32(ox), 0, i32(k)));

    let hw = fp.height * fp.width;
    let kk = k * k;
    var acc = 0.0;
    var in_base = fp.input_off + n * fp.in_ch * hw;
    var w_base = fp.weight_off + o * fp.in_ch * kk;
    for (var c = 0u; c < fp.in_ch; c++) {
        for (var kh = kh0; kh < kh1; kh++) {
            // iy = oy + kh - pad >= 0 by the choice of kh0.
            let in_row = in_base + (oy + kh - fp.pad) * fp.width + ox - fp.pad;
            let w_row = w_base + kh * k;
            for (var kw = kw0; kw < kw1; kw++) {
                acc += f_weight[w_row + kw] * f_input[in_row + kw];
            }
        }
        in_base += hw;
        w_base += kk;
    }
    f_output[fp.output_off + i] = acc + f_bias[fp.bias_off + o];
}

// ---------------------------------------------------------------- backward: input gradient

struct BackInputParams {
    batch: u32,
    in_ch: u32,
    out_ch: u32,
    height: u32,
    width: u32,
    kernel: u32,
    pad: u32,
    out_h: u32,
    out_w: u32,
    grad_output_off: u32,
    weight_off: u32,
    grad_input_off: u32,
}

@group(0) @binding(0) var<uniform> bip: BackInputParams;
@group(0) @binding(1) var<storage, read> bi_grad_output: array<f32>;
@group(0) @binding(2) var<storage, read> bi_weight: array<f32>;
@group(0) @binding(3) var<storage, read_write> bi_grad_input: array<f32>;

@compute @workgroup_size(256)
fn conv2d_backward_input(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = gid.x + gid.y * nwg.x * 256u;
    let hw = bip.height * bip.width;
    if (i >= bip.batch * bip.in_ch * hw) {
        return;
    }
    // i = ((n * C + c) * H + y) * W + x
    let x = i % bip.width;
    let y = (i / bip.width) % bip.height;
    let nc = i / hw;
    let c = nc % bip.in_ch;
    let n = nc / bip.in_ch;

    // Valid taps: oy = y + pad - kh in [0, OH), i.e. kh in [kh0, kh1) (likewise kw).
    let k = bip.kernel;
    let yp = y + bip.pad;
    let xp = x + bip.pad;
    let kh0 = select(0u, yp + 1u - bip.out_h, yp >= bip.out_h);
    let kh1 = min(k, yp + 1u);
    let kw0 = select(0u, xp + 1u - bip.out_w, xp >= bip.out_w);
    let kw1 = min(k, xp + 1u);

    let out_hw = bip.out_h * bip.out_w;
    let kk = k * k;
    let ckk = bip.in_ch * kk;
    var acc = 0.0;
    var g_base = bip.grad_output_off + n * bip.out_ch * out_hw;
    var w_base = bip.weight_off + c * kk;
    for (var o = 0u; o < bip.out_ch; o++) {
        for (var kh = kh0; kh < kh1; kh++) {
            let g_row = g_base + (yp - kh) * bip.out_w + xp;
            let w_row = w_base + kh * k;
            for (var kw = kw0; kw < kw1; kw++) {
                acc += bi_grad_output[g_row - kw] * bi_weight[w_row + kw];
            }
        }
        g_base += out_hw;
        w_base += ckk;
    }
    bi_grad_input[bip.grad_input_off + i] = acc;
}

// ---------------------------------------------------------------- backward: weight gradient

struct BackWeightParams {
    batch: u32,
    in_ch: u32,
    out_ch: u32,
    height: u32,
    width: u32,
    kernel: u32,
    pad: u32,
    out_h: u32,
    out_w: u32,
    input_off: u32,
    grad_output_off: u32,
    grad_weight_off: u32,
}

@group(0) @binding(0) var<uniform> bwp: BackWeightParams;
@group(0) @binding(1) var<storage, read> bw_input: array<f32>;
@group(0) @binding(2) var<storage, read> bw_grad_output: array<f32>;
@group(0) @binding(3) var<storage, read_write> bw_grad_weight: array<f32>;

var<workgroup> bw_partial: array<f32, 256>;

@compute @workgroup_size(256)
fn conv2d_backward_weight(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    // One workgroup per weight element (uniform across the workgroup, so the early return and
    // the barriers below stay in uniform control flow).
    let e = wid.x + wid.y * nwg.x;
    let k = bwp.kernel;
    let kk = k * k;
    if (e >= bwp.out_ch * bwp.in_ch * kk) {
        return;
    }
    // e = ((o * C + c) * K + kh) * K + kw
    let kw = e % k;
    let kh = (e / k) % k;
    let oc = e / kk;
    let c = oc % bwp.in_ch;
    let o = oc / bwp.in_ch;

    // Output rows/columns whose tap (kh, kw) lands inside the image:
    // 0 <= oy + kh - pad < H  <=>  oy in [oy0, oy1) (likewise ox).
    // (Signed, as a range can be empty when padding >= kernel.)
    let oy0 = u32(max(0, i32(bwp.pad) - i32(kh)));
    let oy1 = u32(clamp(i32(bwp.height + bwp.pad) - i32(kh), 0, i32(bwp.out_h)));
    let ox0 = u32(max(0, i32(bwp.pad) - i32(kw)));
    let ox1 = u32(clamp(i32(bwp.width + bwp.pad) - i32(kw), 0, i32(bwp.out_w)));

    let hw = bwp.height * bwp.width;
    let out_hw = bwp.out_h * bwp.out_w;
    let total = bwp.batch * out_hw;
    var acc = 0.0;
    // Threads stride over the flattened (n, oy, ox) positions, x fastest (coalesced reads).
    for (var j = lid; j < total; j += 256u) {
        let ox = j % bwp.out_w;
        let oy = (j / bwp.out_w) % bwp.out_h;
        if (oy >= oy0 && oy < oy1 && ox >= ox0 && ox < ox1) {
            let n = j / out_hw;
            let g = bw_grad_output[bwp.grad_output_off + (n * bwp.out_ch + o) * out_hw + oy * bwp.out_w + ox];
            let iy = oy + kh - bwp.pad;
            let ix = ox + kw - bwp.pad;
            acc += g * bw_input[bwp.input_off + (n * bwp.in_ch + c) * hw + iy * bwp.width + ix];
        }
    }
    bw_partial[lid] = acc;
    workgroupBarrier();
    for (var stride = 128u; stride > 0u; stride >>= 1u) {
        if (lid < stride) {
            bw_partial[lid] += bw_partial[lid + stride];
        }
        workgroupBarrier();
    }
    if (lid == 0u) {
        bw_grad_weight[bwp.grad_weight_off + e] = bw_partial[0];
    }
}

// ---------------------------------------------------------------- backward: bias gradient

struct BackBiasParams {
    batch: u32,
    out_ch: u32,
    out_hw: u32,
    grad_output_off: u32,
    grad_bias_off: u32,
}

@group(0) @binding(0) var<uniform> bbp: BackBiasParams;
@group(0) @binding(1) var<storage, read> bb_grad_output: array<f32>;
@group(0) @binding(2) var<storage, read_write> bb_grad_bias: array<f32>;

var<workgroup> bb_partial: array<f32, 256>;

@compute @workgroup_size(256)
fn conv2d_backward_bias(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let o = wid.x + wid.y * nwg.x;
    if (o >= bbp.out_ch) {
        return;
    }
    let total = bbp.batch * bbp.out_hw;
    var acc = 0.0;
    for (var j = lid; j < total; j += 256u) {
        let n = j / bbp.out_hw;
        let p = j - n * bbp.out_hw;
        acc += bb_grad_output[bbp.grad_output_off + (n * bbp.out_ch + o) * bbp.out_hw + p];
    }
    bb_partial[lid] = acc;
    workgroupBarrier();
    for (var stride = 128u; stride > 0u; stride >>= 1u) {
        if (lid < stride) {
            bb_partial[lid] += bb_partial[lid + stride];
        }
        workgroupBarrier();
    }
    if (lid == 0u) {
        bb_grad_bias[bbp.grad_bias_off + o] = bb_partial[0];
    }
}
