// clip: global L2-norm gradient clipping of a flat gradient buffer, on the device, in three
// dispatches (PyTorch's clip_grad_norm_ with its 1e-6):
//
// sumsq_partials: partials[w] = sum of grads[i]^2 over i = w * 256 + t + k * (groups * 256)
//                 (t = thread, k = 0, 1, ...): a grid-stride loop per thread, then a tree
//                 reduction in workgroup memory. Dispatch: [groups, 1, 1], groups =
//                 min(ceil(n / 256), 1024) (host side), 256 threads per workgroup.
// sumsq_finish:   norm[0] = sqrt(sum of partials): each thread sums partials t, t + 256, ...,
//                 then a tree reduction. Dispatch: [1, 1, 1], 256 threads.
// clip_scale:     grads[i] *= min(1, max_norm / (norm[0] + 1e-6)), in place.
//                 Dispatch: 1-D, one thread per element, 256 per workgroup, spilling into y
//                 (linear id = gid.x + gid.y * num_workgroups.x * 256).
// The summation order depends only on n, so the result is deterministic on any adapter.
// Layouts: grads [n] f32, partials [groups] f32 (scratch), norm [1] f32; views are element
// offsets (`*_off`). norm must live in a different buffer than grads (clip_scale binds both).

struct PartialParams {
    n: u32,
    groups: u32,      // number of workgroups of this dispatch (the grid stride is groups * 256)
    grads_off: u32,
}

@group(0) @binding(0) var<uniform> pp: PartialParams;
@group(0) @binding(1) var<storage, read> sq_grads: array<f32>;
@group(0) @binding(2) var<storage, read_write> sq_partials: array<f32>;

var<workgroup> partial_sums: array<f32, 256>;

@compute @workgroup_size(256)
fn sumsq_partials(@builtin(local_invocation_id) lid: vec3<u32>, @builtin(workgroup_id) wid: vec3<u32>) {
    let stride = pp.groups * 256u;
    var acc = 0.0;
    for (var i = wid.x * 256u + lid.x; i < pp.n; i += stride) {
        let g = sq_grads[pp.grads_off + i];
        acc += g * g;
    }
    partial_sums[lid.x] = acc;
    workgroupBarrier();
    for (var s = 128u; s > 0u; s >>= 1u) {
        if (lid.x < s) {
            partial_sums[lid.x] += partial_sums[lid.x + s];
        }
        workgroupBarrier();
    }
    if (lid.x == 0u) {
        sq_partials[wid.x] = partial_sums[0];
    }
}

struct FinishParams {
    count: u32,       // number of partial sums
    norm_off: u32,
}

@group(0) @binding(0) var<uniform> fp: FinishParams;
@group(0) @binding(1) var<storage, read> fin_partials: array<f32>;
@group(0) @binding(2) var<storage, read_write> fin_norm: array<f32>;

var<workgroup> finish_sums: array<f32, 256>;

@compute @workgroup_size(256)
fn sumsq_finish(@builtin(local_invocation_id) lid: vec3<u32>) {
    var acc = 0.0;
    for (var i = lid.x; i < fp.count; i += 256u) {
        acc += fin_partials[i];
    }
    finish_sums[lid.x] = acc;
    workgroupBarrier();
    for (var s = 128u; s > 0u; s >>= 1u) {
        if (lid.x < s) {
            finish_sums[lid.x] += finish_sums[lid.x + s];
        }
        workgroupBarrier();
    }
    if (lid.x == 0u) {
        fin_norm[fp.norm_off] = sqrt(finish_sums[0]);
    }
}

struct ScaleParams {
    n: u32,
    max_norm: f32,
    norm_off: u32,
    grads_off: u32,
}

@group(0) @binding(0) var<uniform> cp: ScaleParams;
@group(0) @binding(1) var<storage, read> scale_norm: array<f32>;
@group(0) @binding(2) var<storage, read_write> scale_grads: array<f32>;

@compute @workgroup_size(256)
fn clip_scale(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = gid.x + gid.y * nwg.x * 256u;
    if (i >= cp.n) {
        return;
    }
    let scale = min(1.0, cp.max_norm / (scale_norm[cp.norm_off] + 1e-6));
    scale_grads[cp.grads_off + i] *= scale;
}
