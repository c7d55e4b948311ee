//! The CPU path. Each `src/cpu/<family>.rs` holds the plain reference implementation of its ops,
//! generic over the float type so the tests can run them in f64 for finite differences; the
//! [`Cpu`] backend runs them in f32 (with fast versions where speed matters, checked against
//! the reference in the tests).

pub mod adam;
pub mod batch_norm;
pub mod clip;
pub mod conv2d;
pub mod distance;
pub mod fast;
pub mod fast_norm;
pub mod gather;
pub mod max_pool;
pub mod pair_loss;
pub mod prototypes;
pub mod softmax_xent;

use std::cell::{Ref, RefCell, RefMut};
use std::rc::Rc;

use crate::ops::{AdamStep, Backend, BatchNorm, ConvShape, NormShape, PoolShape};

/// A view `[offset, offset + len)` of a shared host buffer.
#[derive(Debug)]
pub struct CpuBuf<T> {
    pub data: Rc<RefCell<Vec<T>>>,
    pub offset: usize,
    pub len: usize,
}

impl<T> Clone for CpuBuf<T> {
    fn clone(&self) -> Self {
        CpuBuf {
            data: self.data.clone(),
            offset: self.offset,
            len: self.len,
        }
    }
}

impl<T: Copy + Default> CpuBuf<T> {
    pub fn new(data: Vec<T>) -> Self {
        let len = data.len();
        CpuBuf {
            data: Rc::new(RefCell::new(data)),
            offset: 0,
            len,
        }
    }
    pub fn get(&self) -> Ref<'_, [T]> {
        Ref::map(self.data.borrow(), |d| {
            &d[self.offset..self.offset + self.len]
        })
    }
    pub fn get_mut(&self) -> RefMut<'_, [T]> {
        RefMut::map(self.data.borrow_mut(), |d| {
            &mut d[self.offset..self.offset + self.len]
        })
    }
}

pub type CpuTensor = CpuBuf<f32>;

/// Mutable access to two outputs of one op that may share a buffer (e.g. a weight gradient
/// and a bias gradient in the flat gradient buffer). Their ranges must not overlap.
pub fn with_two_mut<R>(
    a: &CpuTensor,
    b: &CpuTensor,
    f: impl FnOnce(&mut [f32], &mut [f32]) -> R,
) -> R {
    if Rc::ptr_eq(&a.data, &b.data) {
        let mut data = a.data.borrow_mut();
        let (a_first, lo, hi) = if a.offset <= b.offset {
            (true, a, b)
        } else {
            (false, b, a)
        };
        assert!(
            lo.offset + lo.len <= hi.offset,
            "with_two_mut: overlapping outputs"
        );
        let (head, tail) = data.split_at_mut(hi.offset);
        let lo_slice = &mut head[lo.offset..lo.offset + lo.len];
        let hi_slice = &mut tail[..hi.len];
        if a_first {
            f(lo_slice, hi_slice)
        } else {
            f(hi_slice, lo_slice)
        }
    } else {
        f(&mut a.get_mut(), &mut b.get_mut())
    }
}

/// The CPU backend. Ops run immediately on the calling thread (fast kernels use rayon inside).
pub struct Cpu {
    max_tensor_len: usize,
    /// Test hook: after this many collected reads the "device" reports itself lost.
    fail_after_reads: Option<std::cell::Cell<u64>>,
}

impl Default for Cpu {
    fn default() -> Self {
        Cpu {
            fail_after_reads: None,
            max_tensor_len: usize::MAX,
        }
    }
}

impl Cpu {
    pub fn new() -> Self {
        Cpu::default()
    }
    /// A CPU backend that claims a binding limit, as a GPU has: lets tests exercise the code
    /// paths for datasets that do not fit the device.
    pub fn with_max_tensor_len(max_tensor_len: usize) -> Self {
        Cpu {
            max_tensor_len,
            ..Cpu::default()
        }
    }
    /// A CPU backend whose deferred reads fail after `reads` successful ones, as reads from a
    /// lost GPU do: lets tests check that training ends with an error and an intact checkpoint.
    pub fn failing_after_reads(reads: u64) -> Self {
        Cpu::default().with_reads_failing_after(reads)
    }
    /// This backend, with its reads failing after `reads` successful ones.
    pub fn with_reads_failing_after(self, reads: u64) -> Self {
        Cpu {
            fail_after_reads: Some(std::cell::Cell::new(reads)),
            ..self
        }
    }
}

/// A deferred read on the CPU is just the data.
pub struct CpuPending(Vec<f32>);

impl Backend for Cpu {
    type Tensor = CpuTensor;
    type Index = CpuBuf<u32>;
    type Pending = CpuPending;

    fn kind(&self) -> &'static str {
        "cpu"
    }
    fn describe(&self) -> String {
        format!("CPU ({} threads)", rayon::current_num_threads())
    }
    fn max_tensor_len(&self) -> usize {
        self.max_tensor_len
    }
    fn zeros(&self, len: usize) -> CpuTensor {
        CpuBuf::new(vec![0.0; len])
    }
    fn tensor_from(&self, data: &[f32]) -> CpuTensor {
        CpuBuf::new(data.to_vec())
    }
    fn index_from(&self, data: &[u32]) -> CpuBuf<u32> {
        CpuBuf::new(data.to_vec())
    }
    fn view(&self, t: &CpuTensor, offset: usize, len: usize) -> CpuTensor {
        assert!(
            offset + len <= t.len,
            "view [{offset}, {}) outside a tensor of {}",
            offset + len,
            t.len
        );
        CpuBuf {
            data: t.data.clone(),
            offset: t.offset + offset,
            len,
        }
    }
    fn len(&self, t: &CpuTensor) -> usize {
        t.len
    }
    fn write(&self, t: &CpuTensor, data: &[f32]) {
        t.get_mut().copy_from_slice(data);
    }
    fn write_index(&self, t: &CpuBuf<u32>, data: &[u32]) {
        t.get_mut().copy_from_slice(data);
    }
    fn fill(&self, t: &CpuTensor, value: f32) {
        t.get_mut().fill(value);
    }
    fn copy(&self, src: &CpuTensor, dst: &CpuTensor) {
        assert_eq!(src.len, dst.len, "copy: length mismatch");
        if Rc::ptr_eq(&src.data, &dst.data) {
            let mut data = src.data.borrow_mut();
            fast_norm::copy_within(&mut data, src.offset, dst.offset, src.len);
        } else {
            fast_norm::copy(&src.get(), &mut dst.get_mut());
        }
    }
    fn flush(&self) {}
    fn read(&self, t: &CpuTensor) -> Vec<f32> {
        t.get().to_vec()
    }
    fn read_deferred(&self, t: &CpuTensor) -> CpuPending {
        CpuPending(t.get().to_vec())
    }
    fn resolve(&self, pending: &CpuPending, _block: bool) -> Result<Option<Vec<f32>>, String> {
        if let Some(left) = &self.fail_after_reads {
            if left.get() == 0 {
                return Err("device lost (simulated)".into());
            }
            left.set(left.get() - 1);
        }
        Ok(Some(pending.0.clone()))
    }

    fn conv2d_forward(
        &self,
        s: &ConvShape,
        input: &CpuTensor,
        weight: &CpuTensor,
        bias: &CpuTensor,
        output: &CpuTensor,
    ) {
        fast::conv2d_forward(
            s,
            &input.get(),
            &weight.get(),
            &bias.get(),
            &mut output.get_mut(),
        )
    }
    fn conv2d_backward_input(
        &self,
        s: &ConvShape,
        grad_output: &CpuTensor,
        weight: &CpuTensor,
        grad_input: &CpuTensor,
    ) {
        fast::conv2d_backward_input(
            s,
            &grad_output.get(),
            &weight.get(),
            &mut grad_input.get_mut(),
        )
    }
    fn conv2d_backward_weight(
        &self,
        s: &ConvShape,
        input: &CpuTensor,
        grad_output: &CpuTensor,
        grad_weight: &CpuTensor,
        grad_bias: &CpuTensor,
    ) {
        let (input, grad_output) = (input.get(), grad_output.get());
        with_two_mut(grad_weight, grad_bias, |gw, gb| {
            fast::conv2d_backward_weight(s, &input, &grad_output, gw, gb)
        })
    }
    fn batch_norm_train(
        &self,
        s: &NormShape,
        p: &BatchNorm,
        input: &CpuTensor,
        gamma: &CpuTensor,
        beta: &CpuTensor,
        output: &CpuTensor,
        saved_mean: &CpuTensor,
        saved_inv_std: &CpuTensor,
        running_mean: &CpuTensor,
        running_var: &CpuTensor,
    ) {
        let (input, gamma, beta) = (input.get(), gamma.get(), beta.get());
        let mut output = output.get_mut();
        with_two_mut(saved_mean, saved_inv_std, |mean, inv_std| {
            with_two_mut(running_mean, running_var, |rm, rv| {
                fast_norm::batch_norm_train(
                    s,
                    p,
                    &input,
                    &gamma,
                    &beta,
                    &mut output,
                    mean,
                    inv_std,
                    rm,
                    rv,
                )
            })
        })
    }
    fn batch_norm_eval(
        &self,
        s: &NormShape,
        p: &BatchNorm,
        input: &CpuTensor,
        gamma: &CpuTensor,
        beta: &CpuTensor,
        running_mean: &CpuTensor,
        running_var: &CpuTensor,
        output: &CpuTensor,
    ) {
        fast_norm::batch_norm_eval(
            s,
            p,
            &input.get(),
            &gamma.get(),
            &beta.get(),
            &running_mean.get(),
            &running_var.get(),
            &mut output.get_mut(),
        )
    }
    fn batch_norm_backward(
        &self,
        s: &NormShape,
        p: &BatchNorm,
        input: &CpuTensor,
        output: &CpuTensor,
        grad_output: &CpuTensor,
        gamma: &CpuTensor,
        saved_mean: &CpuTensor,
        saved_inv_std: &CpuTensor,
        grad_input: &CpuTensor,
        grad_gamma: &CpuTensor,
        grad_beta: &CpuTensor,
    ) {
        let (input, output, grad_output) = (input.get(), output.get(), grad_output.get());
        let (gamma, mean, inv_std) = (gamma.get(), saved_mean.get(), saved_inv_std.get());
        let mut grad_input = grad_input.get_mut();
        with_two_mut(grad_gamma, grad_beta, |gg, gb| {
            fast_norm::batch_norm_backward(
                s,
                p,
                &input,
                &output,
                &grad_output,
                &gamma,
                &mean,
                &inv_std,
                &mut grad_input,
                gg,
                gb,
            )
        })
    }
    fn relu_forward(&self, input: &CpuTensor, output: &CpuTensor) {
        fast_norm::relu_forward(&input.get(), &mut output.get_mut())
    }
    fn relu_backward(&self, output: &CpuTensor, grad_output: &CpuTensor, grad_input: &CpuTensor) {
        fast_norm::relu_backward(&output.get(), &grad_output.get(), &mut grad_input.get_mut())
    }
    fn max_pool_forward(&self, s: &PoolShape, input: &CpuTensor, output: &CpuTensor) {
        fast_norm::max_pool_forward(s, &input.get(), &mut output.get_mut())
    }
    fn max_pool_backward(
        &self,
        s: &PoolShape,
        input: &CpuTensor,
        grad_output: &CpuTensor,
        grad_input: &CpuTensor,
    ) {
        fast_norm::max_pool_backward(
            s,
            &input.get(),
            &grad_output.get(),
            &mut grad_input.get_mut(),
        )
    }
    fn batch_norm_pool_train(
        &self,
        s: &PoolShape,
        p: &BatchNorm,
        input: &CpuTensor,
        gamma: &CpuTensor,
        beta: &CpuTensor,
        pooled: &CpuTensor,
        saved_mean: &CpuTensor,
        saved_inv_std: &CpuTensor,
        running_mean: &CpuTensor,
        running_var: &CpuTensor,
    ) {
        let (input, gamma, beta) = (input.get(), gamma.get(), beta.get());
        let mut pooled = pooled.get_mut();
        with_two_mut(saved_mean, saved_inv_std, |mean, inv_std| {
            with_two_mut(running_mean, running_var, |rm, rv| {
                fast_norm::batch_norm_pool_train(
                    s,
                    p,
                    &input,
                    &gamma,
                    &beta,
                    &mut pooled,
                    mean,
                    inv_std,
                    rm,
                    rv,
                )
            })
        })
    }
    fn batch_norm_pool_eval(
        &self,
        s: &PoolShape,
        p: &BatchNorm,
        input: &CpuTensor,
        gamma: &CpuTensor,
        beta: &CpuTensor,
        running_mean: &CpuTensor,
        running_var: &CpuTensor,
        pooled: &CpuTensor,
    ) {
        fast_norm::batch_norm_pool_eval(
            s,
            p,
            &input.get(),
            &gamma.get(),
            &beta.get(),
            &running_mean.get(),
            &running_var.get(),
            &mut pooled.get_mut(),
        )
    }
    fn pool_batch_norm_backward(
        &self,
        s: &PoolShape,
        p: &BatchNorm,
        input: &CpuTensor,
        grad_pooled: &CpuTensor,
        gamma: &CpuTensor,
        beta: &CpuTensor,
        saved_mean: &CpuTensor,
        saved_inv_std: &CpuTensor,
        grad_output: &CpuTensor,
        grad_input: &CpuTensor,
        grad_gamma: &CpuTensor,
        grad_beta: &CpuTensor,
    ) {
        let (input, grad_pooled) = (input.get(), grad_pooled.get());
        let (gamma, beta) = (gamma.get(), beta.get());
        let (mean, inv_std) = (saved_mean.get(), saved_inv_std.get());
        let mut grad_output = grad_output.get_mut();
        let mut grad_input = grad_input.get_mut();
        with_two_mut(grad_gamma, grad_beta, |gg, gb| {
            fast_norm::pool_batch_norm_backward(
                s,
                p,
                &input,
                &grad_pooled,
                &gamma,
                &beta,
                &mean,
                &inv_std,
                &mut grad_output,
                &mut grad_input,
                gg,
                gb,
            )
        })
    }
    fn pairwise_sq_dist(
        &self,
        rows_a: usize,
        rows_b: usize,
        dim: usize,
        a: &CpuTensor,
        b: &CpuTensor,
        out: &CpuTensor,
    ) {
        distance::pairwise_sq_dist(rows_a, rows_b, dim, &a.get(), &b.get(), &mut out.get_mut())
    }
    fn pairwise_sq_dist_backward(
        &self,
        rows_a: usize,
        rows_b: usize,
        dim: usize,
        a: &CpuTensor,
        b: &CpuTensor,
        grad_out: &CpuTensor,
        grad_a: &CpuTensor,
        grad_b: &CpuTensor,
    ) {
        let (a, b, grad_out) = (a.get(), b.get(), grad_out.get());
        with_two_mut(grad_a, grad_b, |ga, gb| {
            distance::pairwise_sq_dist_backward(rows_a, rows_b, dim, &a, &b, &grad_out, ga, gb)
        })
    }
    fn prototypes(
        &self,
        way: usize,
        dim: usize,
        support: &CpuTensor,
        labels: &CpuBuf<u32>,
        prototypes: &CpuTensor,
    ) {
        prototypes::prototypes(
            way,
            dim,
            &support.get(),
            &labels.get(),
            &mut prototypes.get_mut(),
        )
    }
    fn prototypes_backward(
        &self,
        way: usize,
        dim: usize,
        labels: &CpuBuf<u32>,
        grad_prototypes: &CpuTensor,
        grad_support: &CpuTensor,
    ) {
        prototypes::prototypes_backward(
            way,
            dim,
            &labels.get(),
            &grad_prototypes.get(),
            &mut grad_support.get_mut(),
        )
    }
    fn softmax_xent(
        &self,
        queries: usize,
        way: usize,
        distances: &CpuTensor,
        labels: &CpuBuf<u32>,
        grad_distances: &CpuTensor,
        correct: &CpuTensor,
        stats: &CpuTensor,
    ) {
        softmax_xent::softmax_xent(
            queries,
            way,
            &distances.get(),
            &labels.get(),
            &mut grad_distances.get_mut(),
            &mut correct.get_mut(),
            &mut stats.get_mut(),
        )
    }
    fn contrastive_loss(
        &self,
        pairs: usize,
        dim: usize,
        margin: f32,
        left: &CpuTensor,
        right: &CpuTensor,
        same: &CpuTensor,
        grad_left: &CpuTensor,
        grad_right: &CpuTensor,
        stats: &CpuTensor,
    ) {
        let (left, right, same) = (left.get(), right.get(), same.get());
        let mut stats = stats.get_mut();
        with_two_mut(grad_left, grad_right, |gl, gr| {
            pair_loss::contrastive_loss(
                pairs, dim, margin, &left, &right, &same, gl, gr, &mut stats,
            )
        })
    }
    fn koch_loss(
        &self,
        pairs: usize,
        dim: usize,
        left: &CpuTensor,
        right: &CpuTensor,
        same: &CpuTensor,
        alpha: &CpuTensor,
        bias: &CpuTensor,
        grad_left: &CpuTensor,
        grad_right: &CpuTensor,
        grad_alpha: &CpuTensor,
        grad_bias: &CpuTensor,
        stats: &CpuTensor,
    ) {
        let (left, right, same, alpha, bias) =
            (left.get(), right.get(), same.get(), alpha.get(), bias.get());
        let mut stats = stats.get_mut();
        with_two_mut(grad_left, grad_right, |gl, gr| {
            with_two_mut(grad_alpha, grad_bias, |ga, gb| {
                pair_loss::koch_loss(
                    pairs, dim, &left, &right, &same, &alpha, &bias, gl, gr, ga, gb, &mut stats,
                )
            })
        })
    }
    fn adam(
        &self,
        p: &AdamStep,
        params: &CpuTensor,
        grads: &CpuTensor,
        m: &CpuTensor,
        v: &CpuTensor,
    ) {
        let grads = grads.get();
        let mut params = params.get_mut();
        with_two_mut(m, v, |m, v| adam::adam(p, &mut params, &grads, m, v))
    }
    fn clip_grad_norm(&self, max_norm: f32, grads: &CpuTensor, norm_out: &CpuTensor) {
        assert_eq!(norm_out.len, 1, "clip_grad_norm: norm_out holds one float");
        let norm = clip::clip_grad_norm(max_norm, &mut grads.get_mut());
        norm_out.get_mut()[0] = norm;
    }
    fn gather(
        &self,
        item_len: usize,
        dataset: &CpuTensor,
        indices: &CpuBuf<u32>,
        output: &CpuTensor,
    ) {
        gather::gather(
            item_len,
            &dataset.get(),
            &indices.get(),
            &mut output.get_mut(),
        )
    }
}
