//! CPU reference for `shaders/gather.wgsl`.

/// `output[i] = dataset[indices[i]]`, items of `item_len` values. Panics on an index outside
/// the dataset (the samplers never produce one; the GPU kernel would read out of range).
pub fn gather<T: Copy>(item_len: usize, dataset: &[T], indices: &[u32], output: &mut [T]) {
    assert_eq!(
        output.len(),
        indices.len() * item_len,
        "gather: output length"
    );
    for (out, &idx) in output.chunks_exact_mut(item_len.max(1)).zip(indices) {
        let start = idx as usize * item_len;
        out.copy_from_slice(&dataset[start..start + item_len]);
    }
}
