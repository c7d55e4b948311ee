//! CPU reference for `shaders/max_pool.wgsl`: max-pool 2x2, stride 2, floor mode.
use crate::ops::PoolShape;
use num_traits::Float;

/// Element indices of the window of output `(plane, oy, ox)` in row-major order
/// (top-left, top-right, bottom-left, bottom-right).
fn window(s: &PoolShape, plane: usize, oy: usize, ox: usize) -> [usize; 4] {
    let base = plane * s.height * s.width + 2 * oy * s.width + 2 * ox;
    [base, base + 1, base + s.width, base + s.width + 1]
}

/// Position in `window` of its first maximum (strict `>` keeps the earlier of equal values).
fn first_max<T: Float>(input: &[T], w: &[usize; 4]) -> usize {
    let mut best = 0;
    for j in 1..4 {
        if input[w[j]] > input[w[best]] {
            best = j;
        }
    }
    best
}

fn check_lens(s: &PoolShape, what: &str, input: usize, output: usize) {
    assert_eq!(input, s.input_len(), "{what}: input length");
    assert_eq!(output, s.output_len(), "{what}: output length");
}

/// `output[n, c, oy, ox] = max of input[n, c, 2oy..2oy+2, 2ox..2ox+2]`.
pub fn max_pool_forward<T: Float>(s: &PoolShape, input: &[T], output: &mut [T]) {
    check_lens(s, "max_pool_forward", input.len(), output.len());
    let (oh, ow) = (s.out_height(), s.out_width());
    for plane in 0..s.batch * s.channels {
        for oy in 0..oh {
            for ox in 0..ow {
                let w = window(s, plane, oy, ox);
                output[(plane * oh + oy) * ow + ox] = input[w[first_max(input, &w)]];
            }
        }
    }
}

/// Each output gradient goes to the first maximum of its window; every other input element
/// (including a dropped odd last row/column) gets zero.
pub fn max_pool_backward<T: Float>(
    s: &PoolShape,
    input: &[T],
    grad_output: &[T],
    grad_input: &mut [T],
) {
    check_lens(s, "max_pool_backward", input.len(), grad_output.len());
    assert_eq!(
        grad_input.len(),
        s.input_len(),
        "max_pool_backward: grad_input length"
    );
    grad_input.fill(T::zero());
    let (oh, ow) = (s.out_height(), s.out_width());
    for plane in 0..s.batch * s.channels {
        for oy in 0..oh {
            for ox in 0..ow {
                let w = window(s, plane, oy, ox);
                grad_input[w[first_max(input, &w)]] = grad_output[(plane * oh + oy) * ow + ox];
            }
        }
    }
}
