//! fewshot: few-shot image classification (prototypical and Siamese networks) with WGSL
//! compute kernels run through wgpu, every kernel checked against a CPU reference.

pub mod cpu;
pub mod data;
pub mod gpu;
pub mod ops;

pub use ops::Backend;
pub mod bench;
pub mod cli;
pub mod compare;
pub mod info;
pub mod model;
pub mod train;
