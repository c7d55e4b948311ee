// distance: pairwise squared Euclidean distance and its backward pass.
//
// sq_dist:          out[i * rows_b + j] = sum_k (a[i * dim + k] - b[j * dim + k])^2
//                   a [rows_a, dim], b [rows_b, dim], out [rows_a, rows_b]; an explicit sum of
//                   squared differences over k in order (no |a|^2 + |b|^2 - 2ab cancellation).
//                   One thread per output element.
// sq_dist_backward: grad_a[i, k] =  sum_j 2 g[i, j] (a[i, k] - b[j, k])   (j in order)
//                   grad_b[j, k] = -sum_i 2 g[i, j] (a[i, k] - b[j, k])   (i in order)
//                   One thread per gradient element: linear ids [0, rows_a * dim) write grad_a,
//                   [rows_a * dim, (rows_a + rows_b) * dim) write grad_b.
// Dispatch (both): 1-D, 256 threads per workgroup, spilling into y past the adapter limit
// (linear id = gid.x + gid.y * num_workgroups.x * 256). Whole buffers are bound; tensor views
// are passed as element offsets (`*_off`).

struct DistParams {
    rows_a: u32,
    rows_b: u32,
    dim: u32,
    a_off: u32,
    b_off: u32,
    out_off: u32,
}

@group(0) @binding(0) var<uniform> dp: DistParams;
@group(0) @binding(1) var<storage, read> dist_a: array<f32>;
@group(0) @binding(2) var<storage, read> dist_b: array<f32>;
@group(0) @binding(3) var<storage, read_write> dist_out: array<f32>;

@compute @workgroup_size(256)
fn sq_dist(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let t = gid.x + gid.y * nwg.x * 256u;
    if (t >= dp.rows_a * dp.rows_b) {
        return;
    }
    let i = t / dp.rows_b;
    let j = t - i * dp.rows_b;
    let a0 = dp.a_off + i * dp.dim;
    let b0 = dp.b_off + j * dp.dim;
    var sum = 0.0;
    for (var k = 0u; k < dp.dim; k++) {
        let d = dist_a[a0 + k] - dist_b[b0 + k];
        sum += d * d;
    }
    dist_out[dp.out_off + t] = sum;
}

struct DistBackParams {
    rows_a: u32,
    rows_b: u32,
    dim: u32,
    a_off: u32,
    b_off: u32,
    grad_out_off: u32,
    grad_a_off: u32,
    grad_b_off: u32,
}

@group(0) @binding(0) var<uniform> bp: DistBackParams;
@group(0) @binding(1) var<storage, read> back_a: array<f32>;
@group(0) @binding(2) var<storage, read> back_b: array<f32>;
@group(0) @binding(3) var<storage, read> back_grad_out: array<f32>;
@group(0) @binding(4) var<storage, read_write> back_grad_a: array<f32>;
@group(0) @binding(5) var<storage, read_write> back_grad_b: array<f32>;

@compute @workgroup_size(256)
fn sq_dist_backward(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let t = gid.x + gid.y * nwg.x * 256u;
    let n_a = bp.rows_a * bp.dim;
    if (t < n_a) {
        let i = t / bp.dim;
        let k = t - i * bp.dim;
        let ai = back_a[bp.a_off + t];
        let g0 = bp.grad_out_off + i * bp.rows_b;
        var sum = 0.0;
        for (var j = 0u; j < bp.rows_b; j++) {
            sum += 2.0 * back_grad_out[g0 + j] * (ai - back_b[bp.b_off + j * bp.dim + k]);
        }
        back_grad_a[bp.grad_a_off + t] = sum;
        return;
    }
    let u = t - n_a;
    if (u >= bp.rows_b * bp.dim) {
        return;
    }
    let j = u / bp.dim;
    let k = u - j * bp.dim;
    let bj = back_b[bp.b_off + u];
    var sum = 0.0;
    for (var i = 0u; i < bp.rows_a; i++) {
        sum += 2.0 * back_grad_out[bp.grad_out_off + i * bp.rows_b + j] * (back_a[bp.a_off + i * bp.dim + k] - bj);
    }
    back_grad_b[bp.grad_b_off + u] = -sum;
}
