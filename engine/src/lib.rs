//! pg_distill's model engine: plain Rust, no Postgres. Load a Llama-family GGUF, tokenize with its own
//! vocabulary, render its chat template, generate, and train LoRA adapters.
//!
//! Laid out by role: `formats/` (files in and out), `kernels/` (quantized matmuls per instruction
//! set), `infer/` (generation), `endpoint/` (remote OpenAI-compatible models), `train/`
//! (fine-tuning), `models/` (the transformer itself).

pub mod device;
pub mod endpoint;
mod error;
pub mod formats;
pub mod infer;
pub mod interrupt;
pub mod kernels;
mod lora;
pub mod metrics;
pub mod model_store;
pub mod models;
mod text_model;
pub mod threads;
pub mod train;

pub use error::{EndpointFailure, Error, Result};
pub use formats::chat_template::Message;
pub use infer::generation::{FinishReason, GenerateOptions, Generation};
pub use lora::{LoraAdapter, LoraConfig, LoraPair, Target};
pub use model_store::ModelStore;
pub use models::llama::WeightFormat;
pub use text_model::{TextModel, WeightSharing};
pub use train::{Example, MemoryEstimate, Progress, TrainConfig, TrainObserver, TrainReport};

pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// What this build can compute on (`device.rs` picks the device per session and job).
pub const BUILD: &str = if device::CUDA_BUILD { "CUDA build" } else { "CPU build" };
