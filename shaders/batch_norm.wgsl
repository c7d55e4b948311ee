// batch_norm: batch normalisation over [batch, channels, spatial] with an optional fused ReLU,
// and plain ReLU. CPU reference: src/cpu/batch_norm.rs.
//
// Layouts: x, y, dy, dx are [batch, channels, spatial] (element (b, c, k) at
// (b * channels + c) * spatial + k); gamma, beta, mean, inv_std, running stats and gradients of
// gamma/beta are [channels]. n = batch * spatial values per channel.
//
// bn_stats:        a workgroup per channel (256 threads striding over its n values, tree reduction
//                  in workgroup memory; two passes: mean, then sum of squared deviations). Writes
//                  mean, inv_std = 1/sqrt(var + eps), and updates running_mean / running_var
//                  (unbiased variance var * n / (n - 1), var itself when n = 1).
// bn_normalise:    thread per element: y = gamma * (x - mean) * inv_std + beta (+ReLU).
// bn_eval:         thread per element: y = gamma * (x - running_mean) / sqrt(running_var + eps) + beta (+ReLU).
// bn_backward_sums: a workgroup per channel: with g = dy * (y > 0) (relu) or dy, xhat = (x - mean) * inv_std,
//                  writes grad_beta = sum g, grad_gamma = sum g * xhat, and the same two sums to a
//                  scratch buffer [2 * channels] (sum g at c, sum g*xhat at channels + c).
// bn_backward_input: thread per element: dx = gamma * inv_std / n * (n * g - sum g - xhat * sum g*xhat),
//                  reading the sums from the scratch buffer (keeps the kernel at 8 storage bindings).
// relu_forward:    thread per element: y = x > 0 ? x : 0.
// relu_backward:   thread per element: dx = y > 0 ? dy : 0.
// bn_pool:         batch norm (+ReLU) fused with the 2x2 max-pool (floor mode), thread per POOLED
//                  element: normalises its window's four inputs (bn_normalise's formula with the
//                  saved statistics, or bn_eval's with the running ones when `eval`) and writes
//                  their maximum; the full-size normalised output is never written.
// bn_pool_route:   backward of bn_pool's pooling, thread per 2x2 CELL of the input (the odd last
//                  row/column make partial cells, which are in no window and get zeros): recomputes
//                  the window's four normalised values from x (the same formula, so the same values
//                  bn_pool compared), finds the first maximum (row-major, strict >) and writes the
//                  pooled gradient there if (with ReLU) it is positive, zeros elsewhere. The
//                  result is the gradient at the batch-norm input side of the ReLU, ready for
//                  bn_backward_sums / bn_backward_input with relu = 0 (they then never read y).
//
// Dispatch: per-channel kernels use one workgroup per channel, spilling into y past the
// per-dimension limit (channel = wid.x + wid.y * num_workgroups.x); element-wise kernels are 1-D
// over the elements, 256 threads per workgroup (i = gid.x + gid.y * num_workgroups.x * 256).
// Every binding is a whole buffer; tensor views are passed as element offsets (`*_off`).

const WG: u32 = 256u;

var<workgroup> red_a: array<f32, 256>;
var<workgroup> red_b: array<f32, 256>;

// Tree-reduce red_a (red_b too when `both`) into element 0. Call from uniform control flow after
// each thread has written its own slot (zero when it had no values); ends with a barrier so
// element 0 is visible to all. `n` (uniform) is the number of values per channel: with fewer than
// 256, only the first power of two >= n slots can be non-zero and the tree starts there (the
// skipped levels would only add exact zeros, so the result is the same).
fn tree_reduce(lid: u32, both: bool, n: u32) {
    workgroupBarrier();
    let used = min(n, WG);
    var start = 1u;
    while (2u * start < used) {
        start = start * 2u;
    }
    for (var s = start; s > 0u; s = s >> 1u) {
        if (lid < s) {
            red_a[lid] = red_a[lid] + red_a[lid + s];
            if (both) {
                red_b[lid] = red_b[lid] + red_b[lid + s];
            }
        }
        workgroupBarrier();
    }
}

// ---------------------------------------------------------------- bn_stats

struct StatsParams {
    channels: u32,
    spatial: u32,
    batch: u32,
    eps: f32,
    momentum: f32,
    x_off: u32,
    mean_off: u32,
    inv_std_off: u32,
    rmean_off: u32,
    rvar_off: u32,
}

@group(0) @binding(0) var<uniform> sp: StatsParams;
@group(0) @binding(1) var<storage, read> st_x: array<f32>;
@group(0) @binding(2) var<storage, read_write> st_mean: array<f32>;
@group(0) @binding(3) var<storage, read_write> st_inv_std: array<f32>;
@group(0) @binding(4) var<storage, read_write> st_rmean: array<f32>;
@group(0) @binding(5) var<storage, read_write> st_rvar: array<f32>;

@compute @workgroup_size(256)
fn bn_stats(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let c = wid.x + wid.y * nwg.x;
    if (c >= sp.channels) {
        return;
    }
    let n = sp.batch * sp.spatial;
    var acc = 0.0;
    for (var i = lid; i < n; i += WG) {
        let b = i / sp.spatial;
        acc += st_x[sp.x_off + (b * sp.channels + c) * sp.spatial + (i - b * sp.spatial)];
    }
    red_a[lid] = acc;
    tree_reduce(lid, false, n);
    let mean = red_a[0] / f32(n);
    workgroupBarrier(); // everyone has read red_a[0] before it is overwritten
    acc = 0.0;
    for (var i = lid; i < n; i += WG) {
        let b = i / sp.spatial;
        let d = st_x[sp.x_off + (b * sp.channels + c) * sp.spatial + (i - b * sp.spatial)] - mean;
        acc += d * d;
    }
    red_a[lid] = acc;
    tree_reduce(lid, false, n);
    if (lid == 0u) {
        let variance = red_a[0] / f32(n);
        st_mean[sp.mean_off + c] = mean;
        st_inv_std[sp.inv_std_off + c] = 1.0 / sqrt(variance + sp.eps);
        var unbiased = variance;
        if (n > 1u) {
            unbiased = variance * f32(n) / f32(n - 1u);
        }
        let keep = 1.0 - sp.momentum;
        st_rmean[sp.rmean_off + c] = keep * st_rmean[sp.rmean_off + c] + sp.momentum * mean;
        st_rvar[sp.rvar_off + c] = keep * st_rvar[sp.rvar_off + c] + sp.momentum * unbiased;
    }
}

// ---------------------------------------------------------------- bn_normalise

struct NormaliseParams {
    len: u32,
    channels: u32,
    spatial: u32,
    relu: u32,
    x_off: u32,
    gamma_off: u32,
    beta_off: u32,
    mean_off: u32,
    inv_std_off: u32,
    y_off: u32,
}

@group(0) @binding(0) var<uniform> np: NormaliseParams;
@group(0) @binding(1) var<storage, read> nm_x: array<f32>;
@group(0) @binding(2) var<storage, read> nm_gamma: array<f32>;
@group(0) @binding(3) var<storage, read> nm_beta: array<f32>;
@group(0) @binding(4) var<storage, read> nm_mean: array<f32>;
@group(0) @binding(5) var<storage, read> nm_inv_std: array<f32>;
@group(0) @binding(6) var<storage, read_write> nm_y: array<f32>;

@compute @workgroup_size(256)
fn bn_normalise(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = gid.x + gid.y * nwg.x * WG;
    if (i >= np.len) {
        return;
    }
    let c = (i / np.spatial) % np.channels;
    let y = nm_gamma[np.gamma_off + c] * (nm_x[np.x_off + i] - nm_mean[np.mean_off + c])
        * nm_inv_std[np.inv_std_off + c] + nm_beta[np.beta_off + c];
    nm_y[np.y_off + i] = select(y, select(0.0, y, y > 0.0), np.relu != 0u);
}

// ---------------------------------------------------------------- bn_eval

struct EvalParams {
    len: u32,
    channels: u32,
    spatial: u32,
    relu: u32,
    eps: f32,
    x_off: u32,
    gamma_off: u32,
    beta_off: u32,
    rmean_off: u32,
    rvar_off: u32,
    y_off: u32,
}

@group(0) @binding(0) var<uniform> ep: EvalParams;
@group(0) @binding(1) var<storage, read> ev_x: array<f32>;
@group(0) @binding(2) var<storage, read> ev_gamma: array<f32>;
@group(0) @binding(3) var<storage, read> ev_beta: array<f32>;
@group(0) @binding(4) var<storage, read> ev_rmean: array<f32>;
@group(0) @binding(5) var<storage, read> ev_rvar: array<f32>;
@group(0) @binding(6) var<storage, read_write> ev_y: array<f32>;

@compute @workgroup_size(256)
fn bn_eval(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = gid.x + gid.y * nwg.x * WG;
    if (i >= ep.len) {
        return;
    }
    let c = (i / ep.spatial) % ep.channels;
    let sd = sqrt(ev_rvar[ep.rvar_off + c] + ep.eps);
    let y = ev_gamma[ep.gamma_off + c] * (ev_x[ep.x_off + i] - ev_rmean[ep.rmean_off + c]) / sd
        + ev_beta[ep.beta_off + c];
    ev_y[ep.y_off + i] = select(y, select(0.0, y, y > 0.0), ep.relu != 0u);
}

// ---------------------------------------------------------------- bn_backward_sums

struct SumsParams {
    channels: u32,
    spatial: u32,
    batch: u32,
    relu: u32,
    x_off: u32,
    y_off: u32,
    dy_off: u32,
    mean_off: u32,
    inv_std_off: u32,
    ggamma_off: u32,
    gbeta_off: u32,
}

@group(0) @binding(0) var<uniform> bp: SumsParams;
@group(0) @binding(1) var<storage, read> bs_x: array<f32>;
@group(0) @binding(2) var<storage, read> bs_y: array<f32>;
@group(0) @binding(3) var<storage, read> bs_dy: array<f32>;
@group(0) @binding(4) var<storage, read> bs_mean: array<f32>;
@group(0) @binding(5) var<storage, read> bs_inv_std: array<f32>;
@group(0) @binding(6) var<storage, read_write> bs_ggamma: array<f32>;
@group(0) @binding(7) var<storage, read_write> bs_gbeta: array<f32>;
@group(0) @binding(8) var<storage, read_write> bs_sums: array<f32>;

@compute @workgroup_size(256)
fn bn_backward_sums(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let c = wid.x + wid.y * nwg.x;
    if (c >= bp.channels) {
        return;
    }
    let n = bp.batch * bp.spatial;
    let mean = bs_mean[bp.mean_off + c];
    let inv_std = bs_inv_std[bp.inv_std_off + c];
    var sum_g = 0.0;
    var sum_gx = 0.0;
    for (var i = lid; i < n; i += WG) {
        let b = i / bp.spatial;
        let e = (b * bp.channels + c) * bp.spatial + (i - b * bp.spatial);
        var g = bs_dy[bp.dy_off + e];
        if (bp.relu != 0u && !(bs_y[bp.y_off + e] > 0.0)) {
            g = 0.0;
        }
        sum_g += g;
        sum_gx += g * (bs_x[bp.x_off + e] - mean) * inv_std;
    }
    red_a[lid] = sum_g;
    red_b[lid] = sum_gx;
    tree_reduce(lid, true, n);
    if (lid == 0u) {
        bs_gbeta[bp.gbeta_off + c] = red_a[0];
        bs_ggamma[bp.ggamma_off + c] = red_b[0];
        bs_sums[c] = red_a[0];
        bs_sums[bp.channels + c] = red_b[0];
    }
}

// ---------------------------------------------------------------- bn_backward_input

struct InputGradParams {
    len: u32,
    channels: u32,
    spatial: u32,
    batch: u32,
    relu: u32,
    x_off: u32,
    y_off: u32,
    dy_off: u32,
    gamma_off: u32,
    mean_off: u32,
    inv_std_off: u32,
    dx_off: u32,
}

@group(0) @binding(0) var<uniform> ip: InputGradParams;
@group(0) @binding(1) var<storage, read> bi_x: array<f32>;
@group(0) @binding(2) var<storage, read> bi_y: array<f32>;
@group(0) @binding(3) var<storage, read> bi_dy: array<f32>;
@group(0) @binding(4) var<storage, read> bi_gamma: array<f32>;
@group(0) @binding(5) var<storage, read> bi_mean: array<f32>;
@group(0) @binding(6) var<storage, read> bi_inv_std: array<f32>;
@group(0) @binding(7) var<storage, read> bi_sums: array<f32>;
@group(0) @binding(8) var<storage, read_write> bi_dx: array<f32>;

@compute @workgroup_size(256)
fn bn_backward_input(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = gid.x + gid.y * nwg.x * WG;
    if (i >= ip.len) {
        return;
    }
    let c = (i / ip.spatial) % ip.channels;
    var g = bi_dy[ip.dy_off + i];
    if (ip.relu != 0u && !(bi_y[ip.y_off + i] > 0.0)) {
        g = 0.0;
    }
    let n = f32(ip.batch * ip.spatial);
    let inv_std = bi_inv_std[ip.inv_std_off + c];
    let xhat = (bi_x[ip.x_off + i] - bi_mean[ip.mean_off + c]) * inv_std;
    let scale = bi_gamma[ip.gamma_off + c] * inv_std / n;
    bi_dx[ip.dx_off + i] = scale * (n * g - bi_sums[c] - xhat * bi_sums[ip.channels + c]);
}

// ---------------------------------------------------------------- relu_forward / relu_backward

struct ReluParams {
    len: u32,
    x_off: u32,
    y_off: u32,
}

@group(0) @binding(0) var<uniform> rp: ReluParams;
@group(0) @binding(1) var<storage, read> rf_x: array<f32>;
@group(0) @binding(2) var<storage, read_write> rf_y: array<f32>;

@compute @workgroup_size(256)
fn relu_forward(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = gid.x + gid.y * nwg.x * WG;
    if (i >= rp.len) {
        return;
    }
    let x = rf_x[rp.x_off + i];
    rf_y[rp.y_off + i] = select(0.0, x, x > 0.0);
}

struct ReluBackParams {
    len: u32,
    y_off: u32,
    dy_off: u32,
    dx_off: u32,
}

@group(0) @binding(0) var<uniform> rbp: ReluBackParams;
@group(0) @binding(1) var<storage, read> rb_y: array<f32>;
@group(0) @binding(2) var<storage, read> rb_dy: array<f32>;
@group(0) @binding(3) var<storage, read_write> rb_dx: array<f32>;

@compute @workgroup_size(256)
fn relu_backward(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = gid.x + gid.y * nwg.x * WG;
    if (i >= rbp.len) {
        return;
    }
    rb_dx[rbp.dx_off + i] = select(0.0, rb_dy[rbp.dy_off + i], rb_y[rbp.y_off + i] > 0.0);
}

// ---------------------------------------------------------------- bn_pool

// window_first_max: shaders/window.wgsl (prepended by the launcher).

struct PoolNormParams {
    planes: u32,
    channels: u32,
    height: u32,
    width: u32,
    relu: u32,
    eval: u32,
    eps: f32,
    x_off: u32,
    gamma_off: u32,
    beta_off: u32,
    a_off: u32,
    b_off: u32,
    y_off: u32,
}

@group(0) @binding(0) var<uniform> pp: PoolNormParams;
@group(0) @binding(1) var<storage, read> pn_x: array<f32>;
@group(0) @binding(2) var<storage, read> pn_gamma: array<f32>;
@group(0) @binding(3) var<storage, read> pn_beta: array<f32>;
// Training: saved mean and inv_std; evaluation: running mean and running variance.
@group(0) @binding(4) var<storage, read> pn_a: array<f32>;
@group(0) @binding(5) var<storage, read> pn_b: array<f32>;
@group(0) @binding(6) var<storage, read_write> pn_y: array<f32>;

fn pn_value(x: f32, c: u32) -> f32 {
    var y: f32;
    if (pp.eval != 0u) {
        let sd = sqrt(pn_b[pp.b_off + c] + pp.eps);
        y = pn_gamma[pp.gamma_off + c] * (x - pn_a[pp.a_off + c]) / sd + pn_beta[pp.beta_off + c];
    } else {
        y = pn_gamma[pp.gamma_off + c] * (x - pn_a[pp.a_off + c]) * pn_b[pp.b_off + c]
            + pn_beta[pp.beta_off + c];
    }
    return select(y, select(0.0, y, y > 0.0), pp.relu != 0u);
}

@compute @workgroup_size(256)
fn bn_pool(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = gid.x + gid.y * nwg.x * WG;
    let oh = pp.height / 2u;
    let ow = pp.width / 2u;
    if (i >= pp.planes * oh * ow) {
        return;
    }
    let p = i / (oh * ow);
    let r = i - p * oh * ow;
    let oy = r / ow;
    let ox = r - oy * ow;
    let c = p % pp.channels;
    let base = pp.x_off + p * pp.height * pp.width + 2u * oy * pp.width + 2u * ox;
    var m = pn_value(pn_x[base], c);
    let b = pn_value(pn_x[base + 1u], c);
    if (b > m) {
        m = b;
    }
    let d = pn_value(pn_x[base + pp.width], c);
    if (d > m) {
        m = d;
    }
    let e = pn_value(pn_x[base + pp.width + 1u], c);
    if (e > m) {
        m = e;
    }
    pn_y[pp.y_off + i] = m;
}

// ---------------------------------------------------------------- bn_pool_route

struct RouteParams {
    planes: u32,
    channels: u32,
    height: u32,
    width: u32,
    relu: u32,
    x_off: u32,
    gamma_off: u32,
    beta_off: u32,
    mean_off: u32,
    inv_std_off: u32,
    gp_off: u32,
    dy_off: u32,
}

@group(0) @binding(0) var<uniform> rt: RouteParams;
@group(0) @binding(1) var<storage, read> rt_x: array<f32>;
@group(0) @binding(2) var<storage, read> rt_gamma: array<f32>;
@group(0) @binding(3) var<storage, read> rt_beta: array<f32>;
@group(0) @binding(4) var<storage, read> rt_mean: array<f32>;
@group(0) @binding(5) var<storage, read> rt_inv_std: array<f32>;
@group(0) @binding(6) var<storage, read> rt_gp: array<f32>;
@group(0) @binding(7) var<storage, read_write> rt_dy: array<f32>;

// bn_pool's training-mode value, from this entry point's bindings.
fn rt_value(x: f32, c: u32) -> f32 {
    let y = rt_gamma[rt.gamma_off + c] * (x - rt_mean[rt.mean_off + c]) * rt_inv_std[rt.inv_std_off + c]
        + rt_beta[rt.beta_off + c];
    return select(y, select(0.0, y, y > 0.0), rt.relu != 0u);
}

@compute @workgroup_size(256)
fn bn_pool_route(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    // A thread per 2x2 cell of the input (cells cover the odd last row/column too): a full cell
    // is a window, whose four values are normalised once and its four gradients written; a
    // partial cell (odd edge) is in no window and gets zeros.
    let i = gid.x + gid.y * nwg.x * WG;
    let ch = (rt.height + 1u) / 2u;
    let cw = (rt.width + 1u) / 2u;
    if (i >= rt.planes * ch * cw) {
        return;
    }
    let p = i / (ch * cw);
    let r = i - p * ch * cw;
    let cy = r / cw;
    let cx = r - cy * cw;
    let oh = rt.height / 2u;
    let ow = rt.width / 2u;
    let base = p * rt.height * rt.width + 2u * cy * rt.width + 2u * cx;
    if (cy < oh && cx < ow) {
        let c = p % rt.channels;
        let xb = rt.x_off + base;
        let v0 = rt_value(rt_x[xb], c);
        let v1 = rt_value(rt_x[xb + 1u], c);
        let v2 = rt_value(rt_x[xb + rt.width], c);
        let v3 = rt_value(rt_x[xb + rt.width + 1u], c);
        let best = window_first_max(v0, v1, v2, v3);
        let vbest = select(select(select(v0, v1, best == 1u), v2, best == 2u), v3, best == 3u);
        var g = rt_gp[rt.gp_off + (p * oh + cy) * ow + cx];
        if (rt.relu != 0u && !(vbest > 0.0)) {
            g = 0.0;
        }
        let db = rt.dy_off + base;
        rt_dy[db] = select(0.0, g, best == 0u);
        rt_dy[db + 1u] = select(0.0, g, best == 1u);
        rt_dy[db + rt.width] = select(0.0, g, best == 2u);
        rt_dy[db + rt.width + 1u] = select(0.0, g, best == 3u);
    } else {
        let db = rt.dy_off + base;
        let two_cols = 2u * cx + 1u < rt.width;
        let two_rows = 2u * cy + 1u < rt.height;
        rt_dy[db] = 0.0;
        if (two_cols) {
            rt_dy[db + 1u] = 0.0;
        }
        if (two_rows) {
            rt_dy[db + rt.width] = 0.0;
            if (two_cols) {
                rt_dy[db + rt.width + 1u] = 0.0;
            }
        }
    }
}
