//! pg_distill's model engine: plain Rust, no Postgres. Load a Llama-family GGUF, tokenize with its own
//! vocabulary, render its chat template and generate. The SQL layer is a thin wrapper over this crate.

pub mod adapter_archive;
pub mod amx;
pub mod attention;
pub mod chat_template;
pub mod choices;
pub mod error;
pub mod generation;
pub mod gguf;
pub mod infer_ops;
pub mod interrupt;
pub mod lora;
pub mod metrics;
pub mod model_store;
pub mod models;
pub mod ops;
pub mod prefix_cache;
pub mod quant_matmul;
pub mod sampling;
pub mod text_model;
pub mod threads;
pub mod tokenizer;
pub mod train;

pub use chat_template::Message;
pub use error::{Error, Result};
pub use generation::{FinishReason, GenerateOptions, Generation};
pub use lora::{LoraAdapter, LoraConfig, Target};
pub use model_store::ModelStore;
pub use models::llama::WeightFormat;
pub use text_model::TextModel;
pub use train::{Example, MemoryEstimate, Progress, TrainConfig, TrainObserver, TrainReport};

pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// Where tensors are computed: every model loads on the CPU. (The `cuda` feature builds candle's CUDA
/// kernels, but no code creates a CUDA device yet, so a CUDA build must not claim one.)
pub const DEVICE: &str = "cpu";
