// window: helpers shared by the kernels that work on 2x2 max-pool windows (max_pool.wgsl,
// batch_norm.wgsl's fused bn_pool / bn_pool_route). Not a kernel family of its own: the
// launchers prepend this file to those shaders' sources (src/gpu/max_pool.rs, batch_norm.rs).

// Position (0..3, row-major: top-left, top-right, bottom-left, bottom-right) of the first
// maximum of a window's values a, b, c, d; strict `>` keeps the earlier of equal values (and a
// NaN never wins over an earlier value), as the CPU reference does.
fn window_first_max(a: f32, b: f32, c: f32, d: f32) -> u32 {
    var best = 0u;
    var m = a;
    if (b > m) {
        best = 1u;
        m = b;
    }
    if (c > m) {
        best = 2u;
        m = c;
    }
    if (d > m) {
        best = 3u;
    }
    return best;
}

