//! Model architectures, one per file.
pub mod llama;
