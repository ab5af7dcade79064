//! Inference: the forward's row ops, the prefix cache, generation, sampling, constrained choices and
//! structured outputs (JSON schema, regex).
//! The model's own forward is in `models/llama/`; its matmuls in `kernels/`.

pub mod choices;
pub mod generation;
pub(crate) mod kv_cache;
pub(crate) mod prefix_cache;
pub(crate) mod row_ops;
pub(crate) mod sampling;
pub mod structured;
