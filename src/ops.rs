//! The op interface: every training op, implemented once for the GPU (wgpu + WGSL, `crate::gpu`)
//! and once for the CPU (`crate::cpu`). The model, losses and trainers are written against
//! [`Backend`] and so run on either path; the GPU-vs-CPU tests compare the two op by op.
//!
//! Layout conventions (both paths):
//! - images and feature maps are NCHW, f32, contiguous;
//! - a tensor is a *view*: a range `[offset, offset + len)` of an underlying buffer, so all
//!   parameters can live in one flat buffer (Adam updates it in one dispatch) while each layer
//!   sees only its slice;
//! - ops never accumulate into their outputs: every output element is written, which is what
//!   the NaN-poisoned tests check;
//! - within one op, an output view never overlaps any input view (GPU binding rules), and on
//!   the CPU two outputs of one op may share a buffer only when their ranges are disjoint.

/// 2-D convolution, stride 1, square kernel, symmetric zero padding.
/// Input `[batch, in_channels, height, width]`, weight `[out_channels, in_channels, kernel, kernel]`,
/// bias `[out_channels]`, output `[batch, out_channels, out_height, out_width]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConvShape {
    pub batch: usize,
    pub in_channels: usize,
    pub out_channels: usize,
    pub height: usize,
    pub width: usize,
    pub kernel: usize,
    pub padding: usize,
}

impl ConvShape {
    /// The Conv-4 block: 3x3 kernel, padding 1 (output size equals input size).
    pub fn same3x3(
        batch: usize,
        in_channels: usize,
        out_channels: usize,
        height: usize,
        width: usize,
    ) -> Self {
        ConvShape {
            batch,
            in_channels,
            out_channels,
            height,
            width,
            kernel: 3,
            padding: 1,
        }
    }
    pub fn out_height(&self) -> usize {
        self.height + 2 * self.padding + 1 - self.kernel
    }
    pub fn out_width(&self) -> usize {
        self.width + 2 * self.padding + 1 - self.kernel
    }
    pub fn input_len(&self) -> usize {
        self.batch * self.in_channels * self.height * self.width
    }
    pub fn weight_len(&self) -> usize {
        self.out_channels * self.in_channels * self.kernel * self.kernel
    }
    pub fn output_len(&self) -> usize {
        self.batch * self.out_channels * self.out_height() * self.out_width()
    }
    /// Multiply-adds times two of the forward pass (each backward pass costs the same).
    pub fn forward_flops(&self) -> f64 {
        2.0 * self.output_len() as f64 * (self.in_channels * self.kernel * self.kernel) as f64
    }
}

/// Batch norm over `[batch, channels, spatial]` (spatial = height * width): statistics per channel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NormShape {
    pub batch: usize,
    pub channels: usize,
    pub spatial: usize,
}

impl NormShape {
    pub fn len(&self) -> usize {
        self.batch * self.channels * self.spatial
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Batch-norm settings. `relu` fuses a ReLU after the affine transform (forward and backward).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BatchNorm {
    pub eps: f32,
    /// Running statistics update: `running = (1 - momentum) * running + momentum * batch`
    /// (PyTorch's convention; the running variance uses the unbiased batch variance).
    pub momentum: f32,
    pub relu: bool,
}

impl Default for BatchNorm {
    fn default() -> Self {
        BatchNorm {
            eps: 1e-5,
            momentum: 0.1,
            relu: true,
        }
    }
}

/// Max-pool 2x2, stride 2, floor mode: input `[batch, channels, height, width]`,
/// output `[batch, channels, height / 2, width / 2]` (an odd last row/column is dropped).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PoolShape {
    pub batch: usize,
    pub channels: usize,
    pub height: usize,
    pub width: usize,
}

impl PoolShape {
    pub fn out_height(&self) -> usize {
        self.height / 2
    }
    pub fn out_width(&self) -> usize {
        self.width / 2
    }
    pub fn input_len(&self) -> usize {
        self.batch * self.channels * self.height * self.width
    }
    pub fn output_len(&self) -> usize {
        self.batch * self.channels * self.out_height() * self.out_width()
    }
    /// The batch norm over the pool's input: `[batch, channels, height * width]`.
    pub fn norm_shape(&self) -> NormShape {
        NormShape {
            batch: self.batch,
            channels: self.channels,
            spatial: self.height * self.width,
        }
    }
}

/// One Adam step (Kingma & Ba; PyTorch's form with bias correction):
/// `m = b1 m + (1-b1) g; v = b2 v + (1-b2) g^2; p -= lr * (m / (1-b1^t)) / (sqrt(v / (1-b2^t)) + eps)`.
/// `grad_scale` multiplies every gradient first (1 normally; gradient clipping sets it).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AdamStep {
    pub lr: f32,
    pub beta1: f32,
    pub beta2: f32,
    pub eps: f32,
    /// 1-based step number, for the bias correction.
    pub step: u32,
    pub grad_scale: f32,
}

impl AdamStep {
    pub fn new(lr: f32, step: u32) -> Self {
        AdamStep {
            lr,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            step,
            grad_scale: 1.0,
        }
    }
    /// `1 - beta1^step`, computed in f64 so that both paths use the identical f32 value.
    pub fn bias_correction1(&self) -> f32 {
        (1.0 - (self.beta1 as f64).powi(self.step as i32)) as f32
    }
    pub fn bias_correction2(&self) -> f32 {
        (1.0 - (self.beta2 as f64).powi(self.step as i32)) as f32
    }
}

/// The op interface. `Tensor` is an f32 view, `Index` a u32 view (labels, image indices).
///
/// On the GPU, ops are *recorded* and run at the next [`Backend::flush`] (or any read), so a
/// whole training step is one command submission. On the CPU they run immediately.
pub trait Backend {
    type Tensor: Clone;
    type Index: Clone;
    /// A read that was requested now and can be collected later without stalling the device.
    type Pending;

    /// "cpu" or "gpu".
    fn kind(&self) -> &'static str;
    /// Human-readable adapter / device description (name and backend).
    fn describe(&self) -> String;
    /// The largest tensor (in f32 elements) one op can bind: the adapter's storage-binding limit.
    fn max_tensor_len(&self) -> usize {
        usize::MAX
    }

    /// A zero-filled tensor of `len` elements.
    fn zeros(&self, len: usize) -> Self::Tensor;
    fn tensor_from(&self, data: &[f32]) -> Self::Tensor;
    fn index_from(&self, data: &[u32]) -> Self::Index;
    /// The sub-range `[offset, offset + len)` of `t` (relative to `t`'s own start).
    fn view(&self, t: &Self::Tensor, offset: usize, len: usize) -> Self::Tensor;
    fn len(&self, t: &Self::Tensor) -> usize;
    /// Overwrite `t` with `data` (ordered after all work recorded so far).
    fn write(&self, t: &Self::Tensor, data: &[f32]);
    fn write_index(&self, t: &Self::Index, data: &[u32]);
    /// Fill every element of `t` with `value` (ordered after all work recorded so far).
    fn fill(&self, t: &Self::Tensor, value: f32);
    /// Copy `src` into `dst` (same length).
    fn copy(&self, src: &Self::Tensor, dst: &Self::Tensor);
    /// Submit all recorded work (GPU); no-op on the CPU.
    fn flush(&self);
    /// Blocking read: flushes, waits, returns the contents. Panics when the device failed: for
    /// tests and benchmarks; code that serves users calls [`Backend::try_read`].
    fn read(&self, t: &Self::Tensor) -> Vec<f32>;
    /// Blocking read that reports a failed device (lost, or a validation error) as an error.
    fn try_read(&self, t: &Self::Tensor) -> Result<Vec<f32>, String> {
        let pending = self.read_deferred(t);
        self.resolve(&pending, true)?
            .ok_or_else(|| "a blocking read returned no data".to_string())
    }
    /// Ask for `t`'s contents as of the work recorded so far; collect with [`Backend::resolve`].
    fn read_deferred(&self, t: &Self::Tensor) -> Self::Pending;
    /// The data of a deferred read: `Ok(None)` if not ready yet and `block` is false; an error
    /// when the device failed (lost, or a validation error).
    fn resolve(&self, pending: &Self::Pending, block: bool) -> Result<Option<Vec<f32>>, String>;
    /// The first device error since creation (a validation error, a lost device), if any.
    fn check(&self) -> Result<(), String> {
        Ok(())
    }

    // ---- convolution (shaders/conv2d.wgsl, src/cpu/conv2d.rs)
    fn conv2d_forward(
        &self,
        s: &ConvShape,
        input: &Self::Tensor,
        weight: &Self::Tensor,
        bias: &Self::Tensor,
        output: &Self::Tensor,
    );
    fn conv2d_backward_input(
        &self,
        s: &ConvShape,
        grad_output: &Self::Tensor,
        weight: &Self::Tensor,
        grad_input: &Self::Tensor,
    );
    fn conv2d_backward_weight(
        &self,
        s: &ConvShape,
        input: &Self::Tensor,
        grad_output: &Self::Tensor,
        grad_weight: &Self::Tensor,
        grad_bias: &Self::Tensor,
    );

    // ---- batch norm (+ fused ReLU) and ReLU (shaders/batch_norm.wgsl, src/cpu/batch_norm.rs)
    /// Training mode: normalise with batch statistics, save mean and 1/sqrt(var + eps) for the
    /// backward pass, update the running statistics in place.
    #[allow(clippy::too_many_arguments)]
    fn batch_norm_train(
        &self,
        s: &NormShape,
        p: &BatchNorm,
        input: &Self::Tensor,
        gamma: &Self::Tensor,
        beta: &Self::Tensor,
        output: &Self::Tensor,
        saved_mean: &Self::Tensor,
        saved_inv_std: &Self::Tensor,
        running_mean: &Self::Tensor,
        running_var: &Self::Tensor,
    );
    /// Evaluation mode: normalise with the running statistics.
    #[allow(clippy::too_many_arguments)]
    fn batch_norm_eval(
        &self,
        s: &NormShape,
        p: &BatchNorm,
        input: &Self::Tensor,
        gamma: &Self::Tensor,
        beta: &Self::Tensor,
        running_mean: &Self::Tensor,
        running_var: &Self::Tensor,
        output: &Self::Tensor,
    );
    /// Backward of training-mode batch norm (and of the fused ReLU when `p.relu`, using
    /// `output > 0` as the mask).
    #[allow(clippy::too_many_arguments)]
    fn batch_norm_backward(
        &self,
        s: &NormShape,
        p: &BatchNorm,
        input: &Self::Tensor,
        output: &Self::Tensor,
        grad_output: &Self::Tensor,
        gamma: &Self::Tensor,
        saved_mean: &Self::Tensor,
        saved_inv_std: &Self::Tensor,
        grad_input: &Self::Tensor,
        grad_gamma: &Self::Tensor,
        grad_beta: &Self::Tensor,
    );
    fn relu_forward(&self, input: &Self::Tensor, output: &Self::Tensor);
    /// `grad_input = grad_output * (output > 0)`.
    fn relu_backward(
        &self,
        output: &Self::Tensor,
        grad_output: &Self::Tensor,
        grad_input: &Self::Tensor,
    );

    // ---- max pool 2x2 stride 2 (shaders/max_pool.wgsl, src/cpu/max_pool.rs)
    fn max_pool_forward(&self, s: &PoolShape, input: &Self::Tensor, output: &Self::Tensor);
    /// Routes each output gradient to the first maximum of its window (row-major order);
    /// inputs outside every window (floor mode) get zero.
    fn max_pool_backward(
        &self,
        s: &PoolShape,
        input: &Self::Tensor,
        grad_output: &Self::Tensor,
        grad_input: &Self::Tensor,
    );

    // ---- batch norm (+ ReLU) then max-pool, fused (CPU: src/cpu/fast_norm.rs; GPU: bn_pool
    // and bn_pool_route in shaders/batch_norm.wgsl). What the model runs: the full-size
    // batch-norm output is never materialised (the backward recomputes it from `input`).
    /// `pooled = max_pool(batch_norm_train(input))`: the saved and running statistics of
    /// [`Backend::batch_norm_train`], then [`Backend::max_pool_forward`] of its output (`s` is
    /// the pool's shape; the norm's spatial size is `h * w`).
    #[allow(clippy::too_many_arguments)]
    fn batch_norm_pool_train(
        &self,
        s: &PoolShape,
        p: &BatchNorm,
        input: &Self::Tensor,
        gamma: &Self::Tensor,
        beta: &Self::Tensor,
        pooled: &Self::Tensor,
        saved_mean: &Self::Tensor,
        saved_inv_std: &Self::Tensor,
        running_mean: &Self::Tensor,
        running_var: &Self::Tensor,
    );
    /// `pooled = max_pool(batch_norm_eval(input))`.
    #[allow(clippy::too_many_arguments)]
    fn batch_norm_pool_eval(
        &self,
        s: &PoolShape,
        p: &BatchNorm,
        input: &Self::Tensor,
        gamma: &Self::Tensor,
        beta: &Self::Tensor,
        running_mean: &Self::Tensor,
        running_var: &Self::Tensor,
        pooled: &Self::Tensor,
    );
    /// Backward of [`Backend::batch_norm_pool_train`]: [`Backend::max_pool_backward`] of
    /// `grad_pooled` (routed by the batch-norm output, recomputed from `input`, `gamma`, `beta`
    /// and the saved statistics) followed by [`Backend::batch_norm_backward`] into
    /// `grad_input`, `grad_gamma` and `grad_beta`. `grad_output` (input-sized) is scratch: it
    /// ends holding the routed gradient through the ReLU mask.
    #[allow(clippy::too_many_arguments)]
    fn pool_batch_norm_backward(
        &self,
        s: &PoolShape,
        p: &BatchNorm,
        input: &Self::Tensor,
        grad_pooled: &Self::Tensor,
        gamma: &Self::Tensor,
        beta: &Self::Tensor,
        saved_mean: &Self::Tensor,
        saved_inv_std: &Self::Tensor,
        grad_output: &Self::Tensor,
        grad_input: &Self::Tensor,
        grad_gamma: &Self::Tensor,
        grad_beta: &Self::Tensor,
    );

    // ---- pairwise squared Euclidean distance (shaders/distance.wgsl, src/cpu/distance.rs)
    /// `out[i, j] = sum_k (a[i, k] - b[j, k])^2`, a `[rows_a, dim]`, b `[rows_b, dim]`.
    fn pairwise_sq_dist(
        &self,
        rows_a: usize,
        rows_b: usize,
        dim: usize,
        a: &Self::Tensor,
        b: &Self::Tensor,
        out: &Self::Tensor,
    );
    #[allow(clippy::too_many_arguments)]
    fn pairwise_sq_dist_backward(
        &self,
        rows_a: usize,
        rows_b: usize,
        dim: usize,
        a: &Self::Tensor,
        b: &Self::Tensor,
        grad_out: &Self::Tensor,
        grad_a: &Self::Tensor,
        grad_b: &Self::Tensor,
    );

    // ---- class prototypes (shaders/prototypes.wgsl, src/cpu/prototypes.rs)
    /// `prototypes[c] = mean of support[i] with labels[i] == c` (zero for a class without
    /// support); support `[labels.len(), dim]`, prototypes `[way, dim]`.
    fn prototypes(
        &self,
        way: usize,
        dim: usize,
        support: &Self::Tensor,
        labels: &Self::Index,
        prototypes: &Self::Tensor,
    );
    fn prototypes_backward(
        &self,
        way: usize,
        dim: usize,
        labels: &Self::Index,
        grad_prototypes: &Self::Tensor,
        grad_support: &Self::Tensor,
    );

    // ---- softmax cross-entropy over negative distances (shaders/softmax_xent.wgsl)
    /// distances `[queries, way]`; logits are `-distances`. Writes the gradient of the mean NLL
    /// to the distances, `correct[q]` (1 when the first argmax of the logits is the label, else 0)
    /// and `stats = [mean NLL, accuracy]`.
    #[allow(clippy::too_many_arguments)]
    fn softmax_xent(
        &self,
        queries: usize,
        way: usize,
        distances: &Self::Tensor,
        labels: &Self::Index,
        grad_distances: &Self::Tensor,
        correct: &Self::Tensor,
        stats: &Self::Tensor,
    );

    // ---- Siamese pair losses (shaders/pair_loss.wgsl, src/cpu/pair_loss.rs)
    /// Hadsell et al. 2006 on `d = sqrt(|left - right|^2 + 1e-12)`:
    /// `mean(0.5 * (same d^2 + (1 - same) max(0, margin - d)^2))`; `stats = [loss, accuracy]`
    /// with a pair predicted "same" when `d < margin / 2`.
    #[allow(clippy::too_many_arguments)]
    fn contrastive_loss(
        &self,
        pairs: usize,
        dim: usize,
        margin: f32,
        left: &Self::Tensor,
        right: &Self::Tensor,
        same: &Self::Tensor,
        grad_left: &Self::Tensor,
        grad_right: &Self::Tensor,
        stats: &Self::Tensor,
    );
    /// Koch et al. 2015 head: `logit = sum_j alpha_j |left_j - right_j| + bias`, binary
    /// cross-entropy with logits against `same`, averaged over pairs; `stats = [loss, accuracy]`
    /// with a pair predicted "same" when `logit > 0`.
    #[allow(clippy::too_many_arguments)]
    fn koch_loss(
        &self,
        pairs: usize,
        dim: usize,
        left: &Self::Tensor,
        right: &Self::Tensor,
        same: &Self::Tensor,
        alpha: &Self::Tensor,
        bias: &Self::Tensor,
        grad_left: &Self::Tensor,
        grad_right: &Self::Tensor,
        grad_alpha: &Self::Tensor,
        grad_bias: &Self::Tensor,
        stats: &Self::Tensor,
    );

    // ---- optimiser (shaders/adam.wgsl, src/cpu/adam.rs): one dispatch over the flat buffer
    fn adam(
        &self,
        p: &AdamStep,
        params: &Self::Tensor,
        grads: &Self::Tensor,
        m: &Self::Tensor,
        v: &Self::Tensor,
    );

    // ---- gradient clipping (shaders/clip.wgsl, src/cpu/clip.rs)
    /// Global L2-norm clipping of a flat gradient buffer, in place, without a host round trip
    /// (PyTorch's `clip_grad_norm_`): writes `norm = sqrt(sum_i grads[i]^2)`, the norm *before*
    /// clipping, to `norm_out` (one float, in a different buffer than `grads`) and multiplies
    /// every gradient by `min(1, max_norm / (norm + 1e-6))`. The sum is deterministic (a fixed
    /// order per length); the CPU path accumulates in f64.
    fn clip_grad_norm(&self, max_norm: f32, grads: &Self::Tensor, norm_out: &Self::Tensor);

    // ---- gather (shaders/gather.wgsl, src/cpu/gather.rs)
    /// `output[i] = dataset[indices[i]]`, items of `item_len` floats (one image each).
    fn gather(
        &self,
        item_len: usize,
        dataset: &Self::Tensor,
        indices: &Self::Index,
        output: &Self::Tensor,
    );
}
