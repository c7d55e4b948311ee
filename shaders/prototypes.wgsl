// prototypes: class prototypes (per-class means of support embeddings) and their backward pass.
//
// prototypes:          proto[c * dim + k] = (sum over i with labels[i] == c of support[i * dim + k])
//                      / count(c), rows summed in order; 0 for a class without support.
//                      support [S, dim] f32, labels [S] u32 (each below way), proto [way, dim].
//                      One thread per output element; each scans the S labels (S is an episode's
//                      support set, small), so no atomics and a fixed summation order.
// prototypes_backward: grad_support[i * dim + k] = grad_proto[labels[i] * dim + k] / count(labels[i]).
//                      One thread per grad_support element (scans the labels to count).
//                      A label not below way (invalid input) gets a zero gradient.
// Dispatch (both): 1-D, 256 threads per workgroup, spilling into y past the adapter limit
// (linear id = gid.x + gid.y * num_workgroups.x * 256). Whole buffers are bound; tensor views
// are passed as element offsets (`*_off`).

struct ProtoParams {
    way: u32,
    dim: u32,
    support_rows: u32,
    support_off: u32,
    labels_off: u32,
    proto_off: u32,
}

@group(0) @binding(0) var<uniform> pp: ProtoParams;
@group(0) @binding(1) var<storage, read> proto_support: array<f32>;
@group(0) @binding(2) var<storage, read> proto_labels: array<u32>;
@group(0) @binding(3) var<storage, read_write> proto_out: array<f32>;

@compute @workgroup_size(256)
fn prototypes(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let t = gid.x + gid.y * nwg.x * 256u;
    if (t >= pp.way * pp.dim) {
        return;
    }
    let c = t / pp.dim;
    let k = t - c * pp.dim;
    var sum = 0.0;
    var count = 0u;
    for (var i = 0u; i < pp.support_rows; i++) {
        if (proto_labels[pp.labels_off + i] == c) {
            sum += proto_support[pp.support_off + i * pp.dim + k];
            count += 1u;
        }
    }
    var mean = 0.0;
    if (count > 0u) {
        mean = sum / f32(count);
    }
    proto_out[pp.proto_off + t] = mean;
}

struct ProtoBackParams {
    way: u32,
    dim: u32,
    support_rows: u32,
    labels_off: u32,
    grad_proto_off: u32,
    grad_support_off: u32,
}

@group(0) @binding(0) var<uniform> pb: ProtoBackParams;
@group(0) @binding(1) var<storage, read> back_labels: array<u32>;
@group(0) @binding(2) var<storage, read> back_grad_proto: array<f32>;
@group(0) @binding(3) var<storage, read_write> back_grad_support: array<f32>;

@compute @workgroup_size(256)
fn prototypes_backward(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let t = gid.x + gid.y * nwg.x * 256u;
    if (t >= pb.support_rows * pb.dim) {
        return;
    }
    let i = t / pb.dim;
    let k = t - i * pb.dim;
    let c = back_labels[pb.labels_off + i];
    var g = 0.0;
    if (c < pb.way) {
        var count = 0u;
        for (var m = 0u; m < pb.support_rows; m++) {
            if (back_labels[pb.labels_off + m] == c) {
                count += 1u;
            }
        }
        g = back_grad_proto[pb.grad_proto_off + c * pb.dim + k] / f32(count);
    }
    back_grad_support[pb.grad_support_off + t] = g;
}
