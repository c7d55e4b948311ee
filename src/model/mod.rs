//! The Conv-4 embedding (Snell et al. 2017): 4 blocks of [3x3 conv (padding 1) -> batch norm
//! -> ReLU -> 2x2 max-pool], written once against [`Backend`] so it runs on either path.
//!
//! All trainable parameters live in one flat buffer (so Adam is one dispatch); batch-norm running
//! statistics in a second flat buffer. Activations are allocated per batch size and reused.

pub mod checkpoint;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::ops::{Backend, BatchNorm, ConvShape, PoolShape};

/// Architecture of the embedding (stored in checkpoints).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Conv4Config {
    pub in_channels: usize,
    pub image_size: usize,
    /// Filters per conv layer (64 in the paper).
    pub hidden: usize,
    /// Number of conv blocks (4 in the paper).
    pub blocks: usize,
    /// Learned Koch et al. head (`alpha`, `bias`) after the embedding parameters.
    pub koch_head: bool,
}

impl Conv4Config {
    pub fn new(in_channels: usize, image_size: usize, hidden: usize) -> Self {
        Conv4Config {
            in_channels,
            image_size,
            hidden,
            blocks: 4,
            koch_head: false,
        }
    }
    /// Spatial size entering block `b` (floor-mode pooling halves it each block).
    pub fn size_at(&self, b: usize) -> usize {
        self.image_size >> b
    }
    pub fn channels_at(&self, b: usize) -> usize {
        if b == 0 {
            self.in_channels
        } else {
            self.hidden
        }
    }
    pub fn embedding_dim(&self) -> usize {
        let s = self.size_at(self.blocks);
        self.hidden * s * s
    }
    /// Floats of the largest per-image activation (the first conv output, or the input).
    pub fn largest_activation_per_image(&self) -> usize {
        (self.hidden * self.image_size * self.image_size).max(self.image_len())
    }
    pub fn image_len(&self) -> usize {
        self.in_channels * self.image_size * self.image_size
    }
    /// Checks that the architecture is usable (every block keeps at least 1x1 pixels).
    pub fn validate(&self) -> Result<(), String> {
        if self.in_channels == 0 || self.hidden == 0 || self.blocks == 0 {
            return Err("channels, hidden width and blocks must be positive".into());
        }
        if self.size_at(self.blocks) == 0 {
            return Err(format!(
                "input size {} is too small for {} blocks of 2x2 pooling (needs at least {})",
                self.image_size,
                self.blocks,
                1usize << self.blocks
            ));
        }
        Ok(())
    }
}

/// One named parameter in the flat buffer.
#[derive(Clone, Debug)]
pub struct ParamEntry {
    pub name: String,
    pub offset: usize,
    pub shape: Vec<usize>,
}

impl ParamEntry {
    pub fn len(&self) -> usize {
        self.shape.iter().product()
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Where each tensor lives in the flat buffers.
#[derive(Clone, Debug)]
pub struct Layout {
    pub params: Vec<ParamEntry>,
    pub param_len: usize,
    /// Batch-norm running statistics (`blocks.B.bn.running_mean` / `running_var`).
    pub stats: Vec<ParamEntry>,
    pub stats_len: usize,
}

impl Layout {
    pub fn new(cfg: &Conv4Config) -> Self {
        let mut params = Vec::new();
        let mut offset = 0;
        let push =
            |list: &mut Vec<ParamEntry>, offset: &mut usize, name: String, shape: Vec<usize>| {
                let e = ParamEntry {
                    name,
                    offset: *offset,
                    shape,
                };
                *offset += e.len();
                list.push(e);
            };
        for b in 0..cfg.blocks {
            let (c, o) = (cfg.channels_at(b), cfg.hidden);
            push(
                &mut params,
                &mut offset,
                format!("blocks.{b}.conv.weight"),
                vec![o, c, 3, 3],
            );
            push(
                &mut params,
                &mut offset,
                format!("blocks.{b}.conv.bias"),
                vec![o],
            );
            push(
                &mut params,
                &mut offset,
                format!("blocks.{b}.bn.weight"),
                vec![o],
            );
            push(
                &mut params,
                &mut offset,
                format!("blocks.{b}.bn.bias"),
                vec![o],
            );
        }
        if cfg.koch_head {
            push(
                &mut params,
                &mut offset,
                "head.alpha".into(),
                vec![cfg.embedding_dim()],
            );
            push(&mut params, &mut offset, "head.bias".into(), vec![1]);
        }
        let param_len = offset;
        let mut stats = Vec::new();
        let mut offset = 0;
        for b in 0..cfg.blocks {
            push(
                &mut stats,
                &mut offset,
                format!("blocks.{b}.bn.running_mean"),
                vec![cfg.hidden],
            );
            push(
                &mut stats,
                &mut offset,
                format!("blocks.{b}.bn.running_var"),
                vec![cfg.hidden],
            );
        }
        Layout {
            params,
            param_len,
            stats,
            stats_len: offset,
        }
    }
    pub fn param(&self, name: &str) -> &ParamEntry {
        self.params
            .iter()
            .find(|e| e.name == name)
            .unwrap_or_else(|| panic!("no parameter {name}"))
    }
    pub fn stat(&self, name: &str) -> &ParamEntry {
        self.stats
            .iter()
            .find(|e| e.name == name)
            .unwrap_or_else(|| panic!("no statistic {name}"))
    }
}

/// Seeded initial parameters: He (Kaiming) normal for conv weights (fan-in, as for ReLU nets),
/// PyTorch's uniform(+-1/sqrt(fan_in)) for conv biases, gamma 1, beta 0; the Koch head as
/// PyTorch's nn.Linear(dim, 1). Running mean 0, running variance 1.
pub fn init_params(cfg: &Conv4Config, seed: u64) -> (Vec<f32>, Vec<f32>) {
    let layout = Layout::new(cfg);
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x5eed_c0de);
    let mut params = vec![0.0f32; layout.param_len];
    for e in &layout.params {
        let slot = &mut params[e.offset..e.offset + e.len()];
        if e.name.ends_with("conv.weight") {
            let fan_in = (e.shape[1] * e.shape[2] * e.shape[3]) as f32;
            let std = (2.0 / fan_in).sqrt();
            for v in slot.iter_mut() {
                *v = std * standard_normal(&mut rng);
            }
        } else if e.name.ends_with("conv.bias") {
            let fan_in = (cfg.channels_at(block_of(&e.name)) * 9) as f32;
            let bound = 1.0 / fan_in.sqrt();
            for v in slot.iter_mut() {
                *v = rng.random_range(-bound..bound);
            }
        } else if e.name.ends_with("bn.weight") {
            slot.fill(1.0);
        } else if e.name == "head.alpha" || e.name == "head.bias" {
            let bound = 1.0 / (cfg.embedding_dim() as f32).sqrt();
            for v in slot.iter_mut() {
                *v = rng.random_range(-bound..bound);
            }
        }
    }
    let mut stats = vec![0.0f32; layout.stats_len];
    for e in &layout.stats {
        if e.name.ends_with("running_var") {
            stats[e.offset..e.offset + e.len()].fill(1.0);
        }
    }
    (params, stats)
}

fn block_of(name: &str) -> usize {
    name.split('.')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

fn standard_normal(rng: &mut ChaCha8Rng) -> f32 {
    // Box-Muller; deterministic given the RNG stream.
    let u1: f64 = rng.random_range(f64::MIN_POSITIVE..1.0);
    let u2: f64 = rng.random_range(0.0..1.0);
    ((-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()) as f32
}

/// Per-block activations of one batch size, allocated once and reused every step.
pub struct Activations<B: Backend> {
    pub batch: usize,
    /// The input batch `[batch, C, H, W]`.
    pub input: B::Tensor,
    /// `pooled[b]` is the input of block b+1; `pooled[blocks-1]` is the embedding `[batch, D]`.
    pooled: Vec<B::Tensor>,
    conv_out: Vec<B::Tensor>,
    saved_mean: Vec<B::Tensor>,
    saved_inv_std: Vec<B::Tensor>,
    // Gradients (training only).
    grad_pooled: Vec<B::Tensor>,
    /// Scratch of the fused pool + batch-norm backward (the routed gradient).
    grad_bn_out: Vec<B::Tensor>,
    grad_conv_out: Vec<B::Tensor>,
}

impl<B: Backend> Activations<B> {
    pub fn embedding(&self) -> &B::Tensor {
        self.pooled.last().expect("at least one block")
    }
    /// Gradient of the loss with respect to the embedding: the losses write it.
    pub fn grad_embedding(&self) -> &B::Tensor {
        self.grad_pooled.last().expect("at least one block")
    }
}

/// The Conv-4 network on a backend: parameters, gradients, Adam moments, running statistics.
pub struct Conv4<B: Backend> {
    pub cfg: Conv4Config,
    pub layout: Layout,
    pub params: B::Tensor,
    pub grads: B::Tensor,
    pub adam_m: B::Tensor,
    pub adam_v: B::Tensor,
    pub stats: B::Tensor,
    pub bn: BatchNorm,
}

impl<B: Backend> Conv4<B> {
    pub fn new(backend: &B, cfg: Conv4Config, params: &[f32], stats: &[f32]) -> Self {
        let layout = Layout::new(&cfg);
        assert_eq!(params.len(), layout.param_len, "parameter count");
        assert_eq!(stats.len(), layout.stats_len, "statistics count");
        Conv4 {
            params: backend.tensor_from(params),
            grads: backend.zeros(layout.param_len),
            adam_m: backend.zeros(layout.param_len),
            adam_v: backend.zeros(layout.param_len),
            stats: backend.tensor_from(stats),
            layout,
            cfg,
            bn: BatchNorm::default(),
        }
    }

    pub fn param(&self, backend: &B, name: &str) -> B::Tensor {
        let e = self.layout.param(name);
        backend.view(&self.params, e.offset, e.len())
    }
    pub fn grad(&self, backend: &B, name: &str) -> B::Tensor {
        let e = self.layout.param(name);
        backend.view(&self.grads, e.offset, e.len())
    }
    fn stat(&self, backend: &B, name: &str) -> B::Tensor {
        let e = self.layout.stat(name);
        backend.view(&self.stats, e.offset, e.len())
    }

    fn conv_shape(&self, b: usize, batch: usize) -> ConvShape {
        let s = self.cfg.size_at(b);
        ConvShape::same3x3(batch, self.cfg.channels_at(b), self.cfg.hidden, s, s)
    }

    /// Buffers for a batch of `batch` images (`training`: with gradient buffers).
    pub fn activations(&self, backend: &B, batch: usize, training: bool) -> Activations<B> {
        let mut a = Activations {
            batch,
            input: backend.zeros(batch * self.cfg.image_len()),
            pooled: vec![],
            conv_out: vec![],
            saved_mean: vec![],
            saved_inv_std: vec![],
            grad_pooled: vec![],
            grad_bn_out: vec![],
            grad_conv_out: vec![],
        };
        for b in 0..self.cfg.blocks {
            let s = self.cfg.size_at(b);
            let conv_len = batch * self.cfg.hidden * s * s;
            let pooled_len = batch * self.cfg.hidden * (s / 2) * (s / 2);
            a.conv_out.push(backend.zeros(conv_len));
            a.pooled.push(backend.zeros(pooled_len));
            a.saved_mean.push(backend.zeros(self.cfg.hidden));
            a.saved_inv_std.push(backend.zeros(self.cfg.hidden));
            if training {
                a.grad_conv_out.push(backend.zeros(conv_len));
                a.grad_bn_out.push(backend.zeros(conv_len));
                a.grad_pooled.push(backend.zeros(pooled_len));
            }
        }
        a
    }

    /// Forward pass over `act.input`. `training`: batch statistics (and running-stat update);
    /// otherwise running statistics.
    pub fn forward(&self, backend: &B, act: &Activations<B>, training: bool) {
        let n = act.batch;
        for b in 0..self.cfg.blocks {
            let cs = self.conv_shape(b, n);
            let x = if b == 0 {
                &act.input
            } else {
                &act.pooled[b - 1]
            };
            backend.conv2d_forward(
                &cs,
                x,
                &self.param(backend, &format!("blocks.{b}.conv.weight")),
                &self.param(backend, &format!("blocks.{b}.conv.bias")),
                &act.conv_out[b],
            );
            let ps = PoolShape {
                batch: n,
                channels: cs.out_channels,
                height: cs.height,
                width: cs.width,
            };
            let gamma = self.param(backend, &format!("blocks.{b}.bn.weight"));
            let beta = self.param(backend, &format!("blocks.{b}.bn.bias"));
            let rm = self.stat(backend, &format!("blocks.{b}.bn.running_mean"));
            let rv = self.stat(backend, &format!("blocks.{b}.bn.running_var"));
            if training {
                backend.batch_norm_pool_train(
                    &ps,
                    &self.bn,
                    &act.conv_out[b],
                    &gamma,
                    &beta,
                    &act.pooled[b],
                    &act.saved_mean[b],
                    &act.saved_inv_std[b],
                    &rm,
                    &rv,
                );
            } else {
                backend.batch_norm_pool_eval(
                    &ps,
                    &self.bn,
                    &act.conv_out[b],
                    &gamma,
                    &beta,
                    &rm,
                    &rv,
                    &act.pooled[b],
                );
            }
        }
    }

    /// Backward pass from `act.grad_embedding()` (written by the loss) into `self.grads`.
    pub fn backward(&self, backend: &B, act: &Activations<B>) {
        let n = act.batch;
        for b in (0..self.cfg.blocks).rev() {
            let cs = self.conv_shape(b, n);
            let ps = PoolShape {
                batch: n,
                channels: cs.out_channels,
                height: cs.height,
                width: cs.width,
            };
            backend.pool_batch_norm_backward(
                &ps,
                &self.bn,
                &act.conv_out[b],
                &act.grad_pooled[b],
                &self.param(backend, &format!("blocks.{b}.bn.weight")),
                &self.param(backend, &format!("blocks.{b}.bn.bias")),
                &act.saved_mean[b],
                &act.saved_inv_std[b],
                &act.grad_bn_out[b],
                &act.grad_conv_out[b],
                &self.grad(backend, &format!("blocks.{b}.bn.weight")),
                &self.grad(backend, &format!("blocks.{b}.bn.bias")),
            );
            let x = if b == 0 {
                &act.input
            } else {
                &act.pooled[b - 1]
            };
            backend.conv2d_backward_weight(
                &cs,
                x,
                &act.grad_conv_out[b],
                &self.grad(backend, &format!("blocks.{b}.conv.weight")),
                &self.grad(backend, &format!("blocks.{b}.conv.bias")),
            );
            if b > 0 {
                backend.conv2d_backward_input(
                    &cs,
                    &act.grad_conv_out[b],
                    &self.param(backend, &format!("blocks.{b}.conv.weight")),
                    &act.grad_pooled[b - 1],
                );
            }
        }
    }

    /// Copy parameters and statistics back to the host; an error when the device failed.
    pub fn download(&self, backend: &B) -> Result<(Vec<f32>, Vec<f32>), String> {
        Ok((
            backend.try_read(&self.params)?,
            backend.try_read(&self.stats)?,
        ))
    }
}
