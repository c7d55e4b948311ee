// matmul: tiled single-precision GEMM, the GPU's compute ceiling for `fewshot bench`.
//
// c[i * n + j] = sum_k a[i * k_len + k] * b[k * n + j]
//   a [m, k_len], b [k_len, n], c [m, n]: row-major f32 views (element offsets `*_off`).
//   Correct for any m, n, k_len: tile loads outside the matrices read 0, and only elements
//   inside c are written (every one of them, exactly once; c is overwritten, not accumulated).
//
// Tiling: a workgroup of 16 x 16 threads computes a 64 x 64 tile of c, stepping through k in
// slices of 16. Each slice of a (64 x 16) and b (16 x 64) is staged in workgroup memory
// (2 x 4 KiB), each thread loading 4 elements of each with consecutive threads reading
// consecutive addresses. Each thread then accumulates a 4 x 4 register block (4 vec4s): rows
// `ty + 16 r` and columns `tx + 16 s` of the tile (strided, so the threads of a row read
// consecutive workgroup-memory words and write consecutive words of c). The k-slice loop count
// is uniform across the workgroup, so both barriers are in uniform control flow.
//
// Dispatch: [ceil(n / 64), ceil(m / 64), 1] workgroups (x over columns, y over rows).

struct MatmulParams {
    m: u32,
    n: u32,
    k_len: u32,
    a_off: u32,
    b_off: u32,
    c_off: u32,
}

@group(0) @binding(0) var<uniform> mp: MatmulParams;
@group(0) @binding(1) var<storage, read> mm_a: array<f32>;
@group(0) @binding(2) var<storage, read> mm_b: array<f32>;
@group(0) @binding(3) var<storage, read_write> mm_c: array<f32>;

const TILE: u32 = 64u;
const SLICE: u32 = 16u;

// a slice stored k-major: tile_a[kk * TILE + row]; b slice: tile_b[kk * TILE + col].
var<workgroup> tile_a: array<f32, 1024>;
var<workgroup> tile_b: array<f32, 1024>;

@compute @workgroup_size(16, 16)
fn matmul(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(local_invocation_id) lid: vec3<u32>,
    @builtin(local_invocation_index) lidx: u32,
) {
    let row0 = wid.y * TILE;
    let col0 = wid.x * TILE;
    let tx = lid.x;
    let ty = lid.y;

    // acc_i[j] accumulates c[row0 + ty + 16 i][col0 + tx + 16 j]. Plain vec4 variables, not
    // an indexed array, so every compiler keeps them in registers.
    var acc0 = vec4<f32>(0.0);
    var acc1 = vec4<f32>(0.0);
    var acc2 = vec4<f32>(0.0);
    var acc3 = vec4<f32>(0.0);

    let slices = (mp.k_len + SLICE - 1u) / SLICE;
    for (var s = 0u; s < slices; s++) {
        let k0 = s * SLICE;
        // Stage a[row0 .. row0 + 64, k0 .. k0 + 16] and b[k0 .. k0 + 16, col0 .. col0 + 64].
        for (var r = 0u; r < 4u; r++) {
            let e = lidx + 256u * r;
            // a: 16 consecutive threads read one row's 16 k values.
            let ar = e / SLICE;
            let ak = e - ar * SLICE;
            var av = 0.0;
            if (row0 + ar < mp.m && k0 + ak < mp.k_len) {
                av = mm_a[mp.a_off + (row0 + ar) * mp.k_len + k0 + ak];
            }
            tile_a[ak * TILE + ar] = av;
            // b: 64 consecutive threads read one row of 64 columns.
            let bk = e / TILE;
            let bc = e - bk * TILE;
            var bv = 0.0;
            if (k0 + bk < mp.k_len && col0 + bc < mp.n) {
                bv = mm_b[mp.b_off + (k0 + bk) * mp.n + col0 + bc];
            }
            tile_b[bk * TILE + bc] = bv;
        }
        workgroupBarrier();
        for (var kk = 0u; kk < SLICE; kk++) {
            let base = kk * TILE;
            let b = vec4<f32>(
                tile_b[base + tx],
                tile_b[base + tx + 16u],
                tile_b[base + tx + 32u],
                tile_b[base + tx + 48u],
            );
            acc0 = fma(vec4<f32>(tile_a[base + ty]), b, acc0);
            acc1 = fma(vec4<f32>(tile_a[base + ty + 16u]), b, acc1);
            acc2 = fma(vec4<f32>(tile_a[base + ty + 32u]), b, acc2);
            acc3 = fma(vec4<f32>(tile_a[base + ty + 48u]), b, acc3);
        }
        workgroupBarrier();
    }

    store_row(row0 + ty, col0 + tx, acc0);
    store_row(row0 + ty + 16u, col0 + tx, acc1);
    store_row(row0 + ty + 32u, col0 + tx, acc2);
    store_row(row0 + ty + 48u, col0 + tx, acc3);
}

// c[row][col + 16 j] = v[j] for the j that fall inside c.
fn store_row(row: u32, col: u32, v: vec4<f32>) {
    if (row >= mp.m) {
        return;
    }
    let at = mp.c_off + row * mp.n;
    for (var j = 0u; j < 4u; j++) {
        if (col + 16u * j < mp.n) {
            mm_c[at + col + 16u * j] = v[j];
        }
    }
}
