// Siamese pair losses: contrastive (Hadsell, Chopra & LeCun 2006) and the Koch, Zemel &
// Salakhutdinov (2015) weighted-L1 logistic head. Semantics: src/ops.rs, src/cpu/pair_loss.rs.
//
// Layouts: left, right, grad_left, grad_right [pairs, dim] row-major; same [pairs] (0 or 1);
// alpha, grad_alpha [dim]; bias, grad_bias [1]; stats [2] = [mean loss, accuracy].
// scratch [3 * pairs] (allocated by the launcher, offset 0):
//   scratch[i]             = coef_i: contrastive: dloss/d(l_i - r_i) = coef_i * (l_i - r_i);
//                            Koch: dz_i = dloss/dz_i
//   scratch[pairs + i]     = loss term of pair i (not yet divided by pairs)
//   scratch[2 * pairs + i] = 1 when pair i is classified correctly, else 0
//
// Each loss is three launches (Koch four), in this order:
//   *_pair:    one 64-thread workgroup per pair (tree reduction over dim); workgroups along x,
//              spilling into y: pair = wg.x + wg.y * num_workgroups.x.
//   *_grad:    one thread per element of grad_left/grad_right, 1-D, 256 per workgroup
//              (linear id = gid.x + gid.y * num_workgroups.x * 256).
//   koch_grad_alpha: one thread per j, looping over pairs (fixed order), 1-D, 256 per workgroup.
//   *_reduce:  a single 256-thread workgroup: strided partial sums, then a tree reduction, into
//              stats (and grad_bias for Koch). Deterministic: no atomics.
// Every binding is a whole buffer; tensor views are passed as element offsets (`*_off`).

const PAIR_WG: u32 = 64u;
const RED_WG: u32 = 256u;

var<workgroup> pair_sum: array<f32, 64>;

// Tree reduction of pair_sum[0..64]; the total ends up in pair_sum[0]. Uniform control flow.
fn reduce_pair_sum(t: u32) {
    workgroupBarrier();
    for (var s = PAIR_WG / 2u; s > 0u; s = s >> 1u) {
        if (t < s) {
            pair_sum[t] = pair_sum[t] + pair_sum[t + s];
        }
        workgroupBarrier();
    }
}

// ---------------------------------------------------------------- contrastive, per pair

struct ContrastivePairParams {
    pairs: u32,
    dim: u32,
    margin: f32,
    left_off: u32,
    right_off: u32,
    same_off: u32,
}

@group(0) @binding(0) var<uniform> cp: ContrastivePairParams;
@group(0) @binding(1) var<storage, read> cp_left: array<f32>;
@group(0) @binding(2) var<storage, read> cp_right: array<f32>;
@group(0) @binding(3) var<storage, read> cp_same: array<f32>;
@group(0) @binding(4) var<storage, read_write> cp_scratch: array<f32>;

@compute @workgroup_size(64)
fn contrastive_pair(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) t: u32,
) {
    let i = wg.x + wg.y * nwg.x;
    if (i >= cp.pairs) {
        return; // uniform across the workgroup
    }
    let base = i * cp.dim;
    var acc = 0.0;
    for (var k = t; k < cp.dim; k += PAIR_WG) {
        let diff = cp_left[cp.left_off + base + k] - cp_right[cp.right_off + base + k];
        acc += diff * diff;
    }
    pair_sum[t] = acc;
    reduce_pair_sum(t);
    if (t == 0u) {
        let d = sqrt(pair_sum[0] + 1e-12);
        let s = cp_same[cp.same_off + i];
        let hinge = max(cp.margin - d, 0.0);
        let n = f32(max(cp.pairs, 1u));
        cp_scratch[i] = (s - (1.0 - s) * hinge / d) / n;
        cp_scratch[cp.pairs + i] = 0.5 * (s * d * d + (1.0 - s) * hinge * hinge);
        cp_scratch[2u * cp.pairs + i] = select(0.0, 1.0, (d < cp.margin * 0.5) == (s > 0.5));
    }
}

// ---------------------------------------------------------------- contrastive, input gradients

struct ContrastiveGradParams {
    pairs: u32,
    dim: u32,
    left_off: u32,
    right_off: u32,
    grad_left_off: u32,
    grad_right_off: u32,
}

@group(0) @binding(0) var<uniform> cg: ContrastiveGradParams;
@group(0) @binding(1) var<storage, read> cg_left: array<f32>;
@group(0) @binding(2) var<storage, read> cg_right: array<f32>;
@group(0) @binding(3) var<storage, read> cg_scratch: array<f32>;
@group(0) @binding(4) var<storage, read_write> cg_grad_left: array<f32>;
@group(0) @binding(5) var<storage, read_write> cg_grad_right: array<f32>;

@compute @workgroup_size(256)
fn contrastive_grad(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let e = gid.x + gid.y * nwg.x * 256u;
    if (e >= cg.pairs * cg.dim) {
        return;
    }
    let i = e / cg.dim;
    let g = cg_scratch[i] * (cg_left[cg.left_off + e] - cg_right[cg.right_off + e]);
    cg_grad_left[cg.grad_left_off + e] = g;
    cg_grad_right[cg.grad_right_off + e] = -g;
}

// ---------------------------------------------------------------- Koch head, per pair

struct KochPairParams {
    pairs: u32,
    dim: u32,
    left_off: u32,
    right_off: u32,
    same_off: u32,
    alpha_off: u32,
    bias_off: u32,
}

@group(0) @binding(0) var<uniform> kp: KochPairParams;
@group(0) @binding(1) var<storage, read> kp_left: array<f32>;
@group(0) @binding(2) var<storage, read> kp_right: array<f32>;
@group(0) @binding(3) var<storage, read> kp_same: array<f32>;
@group(0) @binding(4) var<storage, read> kp_alpha: array<f32>;
@group(0) @binding(5) var<storage, read> kp_bias: array<f32>;
@group(0) @binding(6) var<storage, read_write> kp_scratch: array<f32>;

@compute @workgroup_size(64)
fn koch_pair(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) t: u32,
) {
    let i = wg.x + wg.y * nwg.x;
    if (i >= kp.pairs) {
        return; // uniform across the workgroup
    }
    let base = i * kp.dim;
    var acc = 0.0;
    for (var j = t; j < kp.dim; j += PAIR_WG) {
        let diff = kp_left[kp.left_off + base + j] - kp_right[kp.right_off + base + j];
        acc += kp_alpha[kp.alpha_off + j] * abs(diff);
    }
    pair_sum[t] = acc;
    reduce_pair_sum(t);
    if (t == 0u) {
        let z = pair_sum[0] + kp_bias[kp.bias_off];
        let y = kp_same[kp.same_off + i];
        let n = f32(max(kp.pairs, 1u));
        // Stable BCE with logits and sigmoid: exp only of non-positive arguments.
        let ez = exp(-abs(z));
        let sigmoid = select(ez / (1.0 + ez), 1.0 / (1.0 + ez), z >= 0.0);
        kp_scratch[i] = (sigmoid - y) / n;
        kp_scratch[kp.pairs + i] = max(z, 0.0) - z * y + log(1.0 + ez);
        kp_scratch[2u * kp.pairs + i] = select(0.0, 1.0, (z > 0.0) == (y > 0.5));
    }
}

// ---------------------------------------------------------------- Koch head, input gradients

struct KochGradParams {
    pairs: u32,
    dim: u32,
    left_off: u32,
    right_off: u32,
    alpha_off: u32,
    grad_left_off: u32,
    grad_right_off: u32,
}

@group(0) @binding(0) var<uniform> kg: KochGradParams;
@group(0) @binding(1) var<storage, read> kg_left: array<f32>;
@group(0) @binding(2) var<storage, read> kg_right: array<f32>;
@group(0) @binding(3) var<storage, read> kg_alpha: array<f32>;
@group(0) @binding(4) var<storage, read> kg_scratch: array<f32>;
@group(0) @binding(5) var<storage, read_write> kg_grad_left: array<f32>;
@group(0) @binding(6) var<storage, read_write> kg_grad_right: array<f32>;

@compute @workgroup_size(256)
fn koch_grad(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let e = gid.x + gid.y * nwg.x * 256u;
    if (e >= kg.pairs * kg.dim) {
        return;
    }
    let i = e / kg.dim;
    let j = e - i * kg.dim;
    // WGSL sign(0) = 0, as the reference requires.
    let diff = kg_left[kg.left_off + e] - kg_right[kg.right_off + e];
    let g = kg_scratch[i] * kg_alpha[kg.alpha_off + j] * sign(diff);
    kg_grad_left[kg.grad_left_off + e] = g;
    kg_grad_right[kg.grad_right_off + e] = -g;
}

// ---------------------------------------------------------------- Koch head, grad_alpha

struct KochAlphaParams {
    pairs: u32,
    dim: u32,
    left_off: u32,
    right_off: u32,
    grad_alpha_off: u32,
}

@group(0) @binding(0) var<uniform> ka: KochAlphaParams;
@group(0) @binding(1) var<storage, read> ka_left: array<f32>;
@group(0) @binding(2) var<storage, read> ka_right: array<f32>;
@group(0) @binding(3) var<storage, read> ka_scratch: array<f32>;
@group(0) @binding(4) var<storage, read_write> ka_grad_alpha: array<f32>;

@compute @workgroup_size(256)
fn koch_grad_alpha(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let j = gid.x + gid.y * nwg.x * 256u;
    if (j >= ka.dim) {
        return;
    }
    var acc = 0.0;
    for (var i = 0u; i < ka.pairs; i++) {
        let e = i * ka.dim + j;
        acc += ka_scratch[i] * abs(ka_left[ka.left_off + e] - ka_right[ka.right_off + e]);
    }
    ka_grad_alpha[ka.grad_alpha_off + j] = acc;
}

// ---------------------------------------------------------------- reductions over pairs

struct ReduceParams {
    pairs: u32,
    stats_off: u32,
    grad_bias_off: u32, // koch_reduce only
}

@group(0) @binding(0) var<uniform> rp: ReduceParams;
@group(0) @binding(1) var<storage, read> rd_scratch: array<f32>;
@group(0) @binding(2) var<storage, read_write> rd_stats: array<f32>;
@group(0) @binding(3) var<storage, read_write> rd_grad_bias: array<f32>; // koch_reduce only

var<workgroup> red_coef: array<f32, 256>;
var<workgroup> red_loss: array<f32, 256>;
var<workgroup> red_correct: array<f32, 256>;

// Sums the three scratch columns over pairs into red_*[0]. Uniform control flow.
fn reduce_scratch(t: u32) {
    var coef = 0.0;
    var loss = 0.0;
    var correct = 0.0;
    for (var i = t; i < rp.pairs; i += RED_WG) {
        coef += rd_scratch[i];
        loss += rd_scratch[rp.pairs + i];
        correct += rd_scratch[2u * rp.pairs + i];
    }
    red_coef[t] = coef;
    red_loss[t] = loss;
    red_correct[t] = correct;
    workgroupBarrier();
    for (var s = RED_WG / 2u; s > 0u; s = s >> 1u) {
        if (t < s) {
            red_coef[t] = red_coef[t] + red_coef[t + s];
            red_loss[t] = red_loss[t] + red_loss[t + s];
            red_correct[t] = red_correct[t] + red_correct[t + s];
        }
        workgroupBarrier();
    }
}

@compute @workgroup_size(256)
fn contrastive_reduce(@builtin(local_invocation_index) t: u32) {
    reduce_scratch(t);
    if (t == 0u) {
        let n = f32(max(rp.pairs, 1u));
        rd_stats[rp.stats_off] = red_loss[0] / n;
        rd_stats[rp.stats_off + 1u] = red_correct[0] / n;
    }
}

@compute @workgroup_size(256)
fn koch_reduce(@builtin(local_invocation_index) t: u32) {
    reduce_scratch(t);
    if (t == 0u) {
        let n = f32(max(rp.pairs, 1u));
        rd_stats[rp.stats_off] = red_loss[0] / n;
        rd_stats[rp.stats_off + 1u] = red_correct[0] / n;
        rd_grad_bias[rp.grad_bias_off] = red_coef[0];
    }
}
