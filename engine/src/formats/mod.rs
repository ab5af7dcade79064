//! File formats the engine reads and writes: GGUF checkpoints, the tokenizer and chat template they
//! carry, PEFT adapter archives, and the prepared weights shared between processes.

pub mod chat_template;
pub mod gguf;
pub mod peft_zip;
pub mod prepared;
pub(crate) mod tokenizer;
