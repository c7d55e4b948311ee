// max_pool: max-pool 2x2, stride 2, floor mode. CPU reference: src/cpu/max_pool.rs.
//
// Layouts: input x / grad_input dx are [planes, height, width], output y / grad_output dy are
// [planes, height / 2, width / 2], planes = batch * channels (NCHW). The window of output
// (p, oy, ox) is input rows 2oy..2oy+1, columns 2ox..2ox+1; an odd last row/column is in no window.
//
// max_pool_forward:  thread per output element: the window's maximum.
// max_pool_backward: thread per INPUT element: the element finds its window, recomputes the
//                    window's first maximum in row-major order (top-left, top-right, bottom-left,
//                    bottom-right; strict `>` keeps the earlier of equal values) and writes dy of
//                    the window if it is that maximum, else 0 (also 0 outside every window).
//                    No atomics; every element of dx is written.
// Dispatch (both): 1-D over the elements written, 256 threads per workgroup, spilling into y
// (i = gid.x + gid.y * num_workgroups.x * 256).
// Every binding is a whole buffer; tensor views are passed as element offsets (`*_off`).

const WG: u32 = 256u;

// window_first_max: shaders/window.wgsl (prepended by the launcher).

struct ForwardParams {
    planes: u32,
    height: u32,
    width: u32,
    x_off: u32,
    y_off: u32,
}

@group(0) @binding(0) var<uniform> fp: ForwardParams;
@group(0) @binding(1) var<storage, read> fw_x: array<f32>;
@group(0) @binding(2) var<storage, read_write> fw_y: array<f32>;

@compute @workgroup_size(256)
fn max_pool_forward(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = gid.x + gid.y * nwg.x * WG;
    let oh = fp.height / 2u;
    let ow = fp.width / 2u;
    if (i >= fp.planes * oh * ow) {
        return;
    }
    let p = i / (oh * ow);
    let r = i - p * oh * ow;
    let oy = r / ow;
    let ox = r - oy * ow;
    let base = fp.x_off + p * fp.height * fp.width + 2u * oy * fp.width + 2u * ox;
    // The same strict comparisons as window_first_max (and the CPU reference), so NaN handling agrees.
    var m = fw_x[base];
    let b = fw_x[base + 1u];
    if (b > m) {
        m = b;
    }
    let c = fw_x[base + fp.width];
    if (c > m) {
        m = c;
    }
    let d = fw_x[base + fp.width + 1u];
    if (d > m) {
        m = d;
    }
    fw_y[fp.y_off + i] = m;
}

struct BackwardParams {
    planes: u32,
    height: u32,
    width: u32,
    x_off: u32,
    dy_off: u32,
    dx_off: u32,
}

@group(0) @binding(0) var<uniform> bp: BackwardParams;
@group(0) @binding(1) var<storage, read> bw_x: array<f32>;
@group(0) @binding(2) var<storage, read> bw_dy: array<f32>;
@group(0) @binding(3) var<storage, read_write> bw_dx: array<f32>;

@compute @workgroup_size(256)
fn max_pool_backward(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = gid.x + gid.y * nwg.x * WG;
    let hw = bp.height * bp.width;
    if (i >= bp.planes * hw) {
        return;
    }
    let p = i / hw;
    let r = i - p * hw;
    let y = r / bp.width;
    let x = r - y * bp.width;
    let oh = bp.height / 2u;
    let ow = bp.width / 2u;
    var grad = 0.0;
    if (y < 2u * oh && x < 2u * ow) {
        let oy = y / 2u;
        let ox = x / 2u;
        let base = bp.x_off + p * hw + 2u * oy * bp.width + 2u * ox;
        let best = window_first_max(bw_x[base], bw_x[base + 1u], bw_x[base + bp.width], bw_x[base + bp.width + 1u]);
        if (best == (y & 1u) * 2u + (x & 1u)) {
            grad = bw_dy[bp.dy_off + (p * oh + oy) * ow + ox];
        }
    }
    bw_dx[bp.dx_off + i] = grad;
}
