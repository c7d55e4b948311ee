//! The GPU path: wgpu device setup ([`context`]) and one launcher per kernel, grouped by family
//! in the same files as `shaders/<family>.wgsl` and `src/cpu/<family>.rs`.

pub mod adam;
pub mod batch_norm;
pub mod clip;
pub mod context;
pub mod conv2d;
pub mod distance;
pub mod gather;
pub mod matmul;
pub mod max_pool;
pub mod pair_loss;
pub mod prototypes;
pub mod softmax_xent;

use std::sync::Arc;

pub use context::{list_adapters, AdapterSummary, Gpu, GpuError, GpuPending, Kernel};

use crate::ops::{AdamStep, Backend, BatchNorm, ConvShape, NormShape, PoolShape};

/// A view of `len` 4-byte elements starting at element `offset` of a storage buffer.
/// Kernels bind the whole buffer and receive `offset` in their parameters, so views need no
/// alignment beyond 4 bytes.
#[derive(Clone, Debug)]
pub struct GpuTensor {
    pub buffer: Arc<wgpu::Buffer>,
    pub offset: usize,
    pub len: usize,
}

impl GpuTensor {
    /// The offset as a shader parameter word.
    pub fn off(&self) -> u32 {
        self.offset as u32
    }
}

impl Gpu {
    pub fn tensor(&self, len: usize) -> GpuTensor {
        GpuTensor {
            buffer: self.buffer(len),
            offset: 0,
            len,
        }
    }
    pub fn upload_f32(&self, data: &[f32]) -> GpuTensor {
        let t = self.tensor(data.len());
        self.write_bytes(&t.buffer, 0, bytemuck::cast_slice(data));
        t
    }
    pub fn upload_u32(&self, data: &[u32]) -> GpuTensor {
        let t = self.tensor(data.len());
        self.write_bytes(&t.buffer, 0, bytemuck::cast_slice(data));
        t
    }
    /// Blocking read of a view (flushes recorded work first).
    pub fn download(&self, t: &GpuTensor) -> Result<Vec<f32>, GpuError> {
        let pending = self.request_read(&t.buffer, t.offset, t.len);
        self.collect_read(&pending, true)
            .map(|d| d.unwrap_or_default())
    }
}

impl Backend for Gpu {
    type Tensor = GpuTensor;
    type Index = GpuTensor;
    type Pending = GpuPending;

    fn kind(&self) -> &'static str {
        "gpu"
    }
    fn describe(&self) -> String {
        Gpu::describe(self)
    }
    fn zeros(&self, len: usize) -> GpuTensor {
        self.tensor(len)
    }
    fn tensor_from(&self, data: &[f32]) -> GpuTensor {
        self.upload_f32(data)
    }
    fn index_from(&self, data: &[u32]) -> GpuTensor {
        self.upload_u32(data)
    }
    fn view(&self, t: &GpuTensor, offset: usize, len: usize) -> GpuTensor {
        assert!(
            offset + len <= t.len,
            "view [{offset}, {}) outside a tensor of {}",
            offset + len,
            t.len
        );
        GpuTensor {
            buffer: t.buffer.clone(),
            offset: t.offset + offset,
            len,
        }
    }
    fn len(&self, t: &GpuTensor) -> usize {
        t.len
    }
    fn write(&self, t: &GpuTensor, data: &[f32]) {
        assert_eq!(data.len(), t.len, "write: length mismatch");
        self.write_bytes(&t.buffer, t.offset as u64 * 4, bytemuck::cast_slice(data));
    }
    fn write_index(&self, t: &GpuTensor, data: &[u32]) {
        assert_eq!(data.len(), t.len, "write_index: length mismatch");
        self.write_bytes(&t.buffer, t.offset as u64 * 4, bytemuck::cast_slice(data));
    }
    fn fill(&self, t: &GpuTensor, value: f32) {
        gather::fill(self, t, value);
    }
    fn copy(&self, src: &GpuTensor, dst: &GpuTensor) {
        assert_eq!(src.len, dst.len, "copy: length mismatch");
        self.record_copy(
            &src.buffer,
            src.offset as u64 * 4,
            &dst.buffer,
            dst.offset as u64 * 4,
            src.len as u64 * 4,
        );
    }
    fn flush(&self) {
        Gpu::flush(self)
    }
    fn read(&self, t: &GpuTensor) -> Vec<f32> {
        match self.download(t) {
            Ok(d) => d,
            Err(e) => panic!("GPU read failed: {e}"),
        }
    }
    fn try_read(&self, t: &GpuTensor) -> Result<Vec<f32>, String> {
        self.download(t).map_err(|e| e.to_string())
    }
    fn read_deferred(&self, t: &GpuTensor) -> GpuPending {
        Gpu::request_read(self, &t.buffer, t.offset, t.len)
    }
    fn resolve(&self, pending: &GpuPending, block: bool) -> Result<Option<Vec<f32>>, String> {
        Gpu::collect_read(self, pending, block).map_err(|e| e.to_string())
    }

    fn max_tensor_len(&self) -> usize {
        let bytes = (self.limits.max_storage_buffer_binding_size).min(self.limits.max_buffer_size);
        (bytes / 4) as usize
    }

    fn check(&self) -> Result<(), String> {
        Gpu::check(self).map_err(|e| e.to_string())
    }

    fn conv2d_forward(
        &self,
        s: &ConvShape,
        input: &GpuTensor,
        weight: &GpuTensor,
        bias: &GpuTensor,
        output: &GpuTensor,
    ) {
        conv2d::conv2d_forward(self, s, input, weight, bias, output)
    }
    fn conv2d_backward_input(
        &self,
        s: &ConvShape,
        grad_output: &GpuTensor,
        weight: &GpuTensor,
        grad_input: &GpuTensor,
    ) {
        conv2d::conv2d_backward_input(self, s, grad_output, weight, grad_input)
    }
    fn conv2d_backward_weight(
        &self,
        s: &ConvShape,
        input: &GpuTensor,
        grad_output: &GpuTensor,
        grad_weight: &GpuTensor,
        grad_bias: &GpuTensor,
    ) {
        conv2d::conv2d_backward_weight(self, s, input, grad_output, grad_weight, grad_bias)
    }
    fn batch_norm_train(
        &self,
        s: &NormShape,
        p: &BatchNorm,
        input: &GpuTensor,
        gamma: &GpuTensor,
        beta: &GpuTensor,
        output: &GpuTensor,
        saved_mean: &GpuTensor,
        saved_inv_std: &GpuTensor,
        running_mean: &GpuTensor,
        running_var: &GpuTensor,
    ) {
        batch_norm::batch_norm_train(
            self,
            s,
            p,
            input,
            gamma,
            beta,
            output,
            saved_mean,
            saved_inv_std,
            running_mean,
            running_var,
        )
    }
    fn batch_norm_eval(
        &self,
        s: &NormShape,
        p: &BatchNorm,
        input: &GpuTensor,
        gamma: &GpuTensor,
        beta: &GpuTensor,
        running_mean: &GpuTensor,
        running_var: &GpuTensor,
        output: &GpuTensor,
    ) {
        batch_norm::batch_norm_eval(
            self,
            s,
            p,
            input,
            gamma,
            beta,
            running_mean,
            running_var,
            output,
        )
    }
    fn batch_norm_backward(
        &self,
        s: &NormShape,
        p: &BatchNorm,
        input: &GpuTensor,
        output: &GpuTensor,
        grad_output: &GpuTensor,
        gamma: &GpuTensor,
        saved_mean: &GpuTensor,
        saved_inv_std: &GpuTensor,
        grad_input: &GpuTensor,
        grad_gamma: &GpuTensor,
        grad_beta: &GpuTensor,
    ) {
        batch_norm::batch_norm_backward(
            self,
            s,
            p,
            input,
            output,
            grad_output,
            gamma,
            saved_mean,
            saved_inv_std,
            grad_input,
            grad_gamma,
            grad_beta,
        )
    }
    fn relu_forward(&self, input: &GpuTensor, output: &GpuTensor) {
        batch_norm::relu_forward(self, input, output)
    }
    fn relu_backward(&self, output: &GpuTensor, grad_output: &GpuTensor, grad_input: &GpuTensor) {
        batch_norm::relu_backward(self, output, grad_output, grad_input)
    }
    fn max_pool_forward(&self, s: &PoolShape, input: &GpuTensor, output: &GpuTensor) {
        max_pool::max_pool_forward(self, s, input, output)
    }
    fn max_pool_backward(
        &self,
        s: &PoolShape,
        input: &GpuTensor,
        grad_output: &GpuTensor,
        grad_input: &GpuTensor,
    ) {
        max_pool::max_pool_backward(self, s, input, grad_output, grad_input)
    }
    fn batch_norm_pool_train(
        &self,
        s: &PoolShape,
        p: &BatchNorm,
        input: &GpuTensor,
        gamma: &GpuTensor,
        beta: &GpuTensor,
        pooled: &GpuTensor,
        saved_mean: &GpuTensor,
        saved_inv_std: &GpuTensor,
        running_mean: &GpuTensor,
        running_var: &GpuTensor,
    ) {
        batch_norm::batch_norm_pool_train(
            self,
            s,
            p,
            input,
            gamma,
            beta,
            pooled,
            saved_mean,
            saved_inv_std,
            running_mean,
            running_var,
        )
    }
    fn batch_norm_pool_eval(
        &self,
        s: &PoolShape,
        p: &BatchNorm,
        input: &GpuTensor,
        gamma: &GpuTensor,
        beta: &GpuTensor,
        running_mean: &GpuTensor,
        running_var: &GpuTensor,
        pooled: &GpuTensor,
    ) {
        batch_norm::batch_norm_pool_eval(
            self,
            s,
            p,
            input,
            gamma,
            beta,
            running_mean,
            running_var,
            pooled,
        )
    }
    fn pool_batch_norm_backward(
        &self,
        s: &PoolShape,
        p: &BatchNorm,
        input: &GpuTensor,
        grad_pooled: &GpuTensor,
        gamma: &GpuTensor,
        beta: &GpuTensor,
        saved_mean: &GpuTensor,
        saved_inv_std: &GpuTensor,
        grad_output: &GpuTensor,
        grad_input: &GpuTensor,
        grad_gamma: &GpuTensor,
        grad_beta: &GpuTensor,
    ) {
        batch_norm::pool_batch_norm_backward(
            self,
            s,
            p,
            input,
            grad_pooled,
            gamma,
            beta,
            saved_mean,
            saved_inv_std,
            grad_output,
            grad_input,
            grad_gamma,
            grad_beta,
        )
    }
    fn pairwise_sq_dist(
        &self,
        rows_a: usize,
        rows_b: usize,
        dim: usize,
        a: &GpuTensor,
        b: &GpuTensor,
        out: &GpuTensor,
    ) {
        distance::pairwise_sq_dist(self, rows_a, rows_b, dim, a, b, out)
    }
    fn pairwise_sq_dist_backward(
        &self,
        rows_a: usize,
        rows_b: usize,
        dim: usize,
        a: &GpuTensor,
        b: &GpuTensor,
        grad_out: &GpuTensor,
        grad_a: &GpuTensor,
        grad_b: &GpuTensor,
    ) {
        distance::pairwise_sq_dist_backward(
            self, rows_a, rows_b, dim, a, b, grad_out, grad_a, grad_b,
        )
    }
    fn prototypes(
        &self,
        way: usize,
        dim: usize,
        support: &GpuTensor,
        labels: &GpuTensor,
        prototypes: &GpuTensor,
    ) {
        prototypes::prototypes(self, way, dim, support, labels, prototypes)
    }
    fn prototypes_backward(
        &self,
        way: usize,
        dim: usize,
        labels: &GpuTensor,
        grad_prototypes: &GpuTensor,
        grad_support: &GpuTensor,
    ) {
        prototypes::prototypes_backward(self, way, dim, labels, grad_prototypes, grad_support)
    }
    fn softmax_xent(
        &self,
        queries: usize,
        way: usize,
        distances: &GpuTensor,
        labels: &GpuTensor,
        grad_distances: &GpuTensor,
        correct: &GpuTensor,
        stats: &GpuTensor,
    ) {
        softmax_xent::softmax_xent(
            self,
            queries,
            way,
            distances,
            labels,
            grad_distances,
            correct,
            stats,
        )
    }
    fn contrastive_loss(
        &self,
        pairs: usize,
        dim: usize,
        margin: f32,
        left: &GpuTensor,
        right: &GpuTensor,
        same: &GpuTensor,
        grad_left: &GpuTensor,
        grad_right: &GpuTensor,
        stats: &GpuTensor,
    ) {
        pair_loss::contrastive_loss(
            self, pairs, dim, margin, left, right, same, grad_left, grad_right, stats,
        )
    }
    fn koch_loss(
        &self,
        pairs: usize,
        dim: usize,
        left: &GpuTensor,
        right: &GpuTensor,
        same: &GpuTensor,
        alpha: &GpuTensor,
        bias: &GpuTensor,
        grad_left: &GpuTensor,
        grad_right: &GpuTensor,
        grad_alpha: &GpuTensor,
        grad_bias: &GpuTensor,
        stats: &GpuTensor,
    ) {
        pair_loss::koch_loss(
            self, pairs, dim, left, right, same, alpha, bias, grad_left, grad_right, grad_alpha,
            grad_bias, stats,
        )
    }
    fn adam(
        &self,
        p: &AdamStep,
        params: &GpuTensor,
        grads: &GpuTensor,
        m: &GpuTensor,
        v: &GpuTensor,
    ) {
        adam::adam(self, p, params, grads, m, v)
    }
    fn clip_grad_norm(&self, max_norm: f32, grads: &GpuTensor, norm_out: &GpuTensor) {
        clip::clip_grad_norm(self, max_norm, grads, norm_out)
    }
    fn gather(
        &self,
        item_len: usize,
        dataset: &GpuTensor,
        indices: &GpuTensor,
        output: &GpuTensor,
    ) {
        gather::gather(self, item_len, dataset, indices, output)
    }
}
