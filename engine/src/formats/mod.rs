//! File formats the engine reads and writes: GGUF checkpoints, the tokenizer and chat template they
//! carry, and PEFT adapter archives.

pub mod chat_template;
pub mod gguf;
pub mod peft_zip;
pub(crate) mod tokenizer;
