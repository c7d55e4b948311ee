// adam: one Adam step (PyTorch's form, with bias correction) over a flat parameter buffer.
//
//   g = grads[i] * grad_scale
//   m[i] = beta1 m[i] + (1 - beta1) g
//   v[i] = beta2 v[i] + (1 - beta2) g^2
//   params[i] -= lr * (m[i] / bc1) / (sqrt(v[i] / bc2) + eps)
// bc1 = 1 - beta1^t and bc2 = 1 - beta2^t are computed on the host (AdamStep::bias_correction*).
// Layouts: params, grads, m, v: [n] f32 each (views: element offsets `*_off`).
// Dispatch: 1-D, one thread per element, 256 per workgroup, spilling into y
// (linear id = gid.x + gid.y * num_workgroups.x * 256).

struct AdamParams {
    n: u32,
    lr: f32,
    beta1: f32,
    beta2: f32,
    eps: f32,
    bc1: f32,
    bc2: f32,
    grad_scale: f32,
    params_off: u32,
    grads_off: u32,
    m_off: u32,
    v_off: u32,
}

@group(0) @binding(0) var<uniform> ap: AdamParams;
@group(0) @binding(1) var<storage, read_write> params: array<f32>;
@group(0) @binding(2) var<storage, read> grads: array<f32>;
@group(0) @binding(3) var<storage, read_write> m: array<f32>;
@group(0) @binding(4) var<storage, read_write> v: array<f32>;

@compute @workgroup_size(256)
fn adam(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = gid.x + gid.y * nwg.x * 256u;
    if (i >= ap.n) {
        return;
    }
    let g = grads[ap.grads_off + i] * ap.grad_scale;
    let mi = ap.beta1 * m[ap.m_off + i] + (1.0 - ap.beta1) * g;
    let vi = ap.beta2 * v[ap.v_off + i] + (1.0 - ap.beta2) * (g * g);
    m[ap.m_off + i] = mi;
    v[ap.v_off + i] = vi;
    params[ap.params_off + i] -= ap.lr * (mi / ap.bc1) / (sqrt(vi / ap.bc2) + ap.eps);
}
