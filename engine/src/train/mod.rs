//! LoRA training: the loop (`trainer.rs`: epochs, AdamW, the best epoch kept, early stopping), whether
//! completions are a classifier's closed label set (`label_set.rs`), what a batch is made of
//! (`packed_batch.rs`, `dropout.rs`),
//! and the differentiable ops with their hand-written backward (`ops.rs`, `attention.rs`: the backward
//! of attention; `frozen_matmul.rs`: the frozen matmul of the device path, for CPU and CUDA). The
//! model's training forward and step are in `models/llama/`.

pub mod attention;
pub(crate) mod dropout;
pub mod frozen_matmul;
pub mod label_set;
pub mod ops;
pub(crate) mod packed_batch;
mod trainer;

pub use trainer::*;
