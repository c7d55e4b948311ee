//! fewshot: few-shot image classification (prototypical and Siamese networks) with WGSL
//! compute kernels run through wgpu, every kernel checked against a CPU reference.

pub mod cpu;
pub mod gpu;
pub mod ops;

pub use ops::Backend;
