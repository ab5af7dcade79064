//! Inference: the forward's row ops, the prefix cache, generation, sampling and constrained choices.
//! The model's own forward is in `models/llama/`; its matmuls in `kernels/`.

pub mod choices;
pub mod generation;
pub(crate) mod kv_cache;
pub(crate) mod prefix_cache;
pub(crate) mod row_ops;
pub(crate) mod sampling;
