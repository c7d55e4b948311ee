// gather: assemble a batch from a device-resident dataset, and fill (constant fill).
//
// gather:  output[i * item_len + k] = dataset[indices[i] * item_len + k]
//          dataset, output: f32; indices: u32. One thread per output element.
// fill:    output[i] = value. One thread per element.
// Dispatch (both): 1-D over the output, 256 threads per workgroup, spilling into y when the
// x dimension would exceed the adapter limit (linear id = gid.x + gid.y * num_workgroups.x * 256).
// Every binding is a whole buffer; tensor views are passed as element offsets (`*_off`).

struct GatherParams {
    count: u32,       // number of items gathered
    item_len: u32,    // floats per item
    dataset_off: u32,
    indices_off: u32,
    output_off: u32,
}

@group(0) @binding(0) var<uniform> gp: GatherParams;
@group(0) @binding(1) var<storage, read> dataset: array<f32>;
@group(0) @binding(2) var<storage, read> indices: array<u32>;
@group(0) @binding(3) var<storage, read_write> gathered: array<f32>;

@compute @workgroup_size(256)
fn gather(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = gid.x + gid.y * nwg.x * 256u;
    if (i >= gp.count * gp.item_len) {
        return;
    }
    let item = i / gp.item_len;
    let k = i - item * gp.item_len;
    let src = indices[gp.indices_off + item];
    gathered[gp.output_off + i] = dataset[gp.dataset_off + src * gp.item_len + k];
}

struct FillParams {
    len: u32,
    value: f32,
    output_off: u32,
}

@group(0) @binding(0) var<uniform> fp: FillParams;
@group(0) @binding(1) var<storage, read_write> filled: array<f32>;

@compute @workgroup_size(256)
fn fill(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = gid.x + gid.y * nwg.x * 256u;
    if (i >= fp.len) {
        return;
    }
    filled[fp.output_off + i] = fp.value;
}
