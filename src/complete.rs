//! `distill.complete()`: run a model on a prompt in the calling backend.

use distill_engine::GenerateOptions;
use pgrx::prelude::*;
use pgrx::JsonB;

use crate::errors::{invalid, OrReport};
use crate::model_cache::with_model;

/// NULL prompt in, NULL out (the function is STRICT, the SQL convention); an empty prompt is an error.
#[pg_extern(volatile, parallel_safe)]
fn complete(model: &str, prompt: &str) -> String {
    run(model, prompt, GenerateOptions::default())
}

#[pg_extern(volatile, parallel_safe, name = "complete")]
fn complete_with_options(model: &str, prompt: &str, options: JsonB) -> String {
    run(model, prompt, parse_options(options))
}

#[pg_extern(immutable, parallel_safe)]
fn version() -> String {
    format!("pg_distill {} (engine {}, {})", env!("CARGO_PKG_VERSION"), distill_engine::VERSION, distill_engine::DEVICE)
}

fn run(model: &str, prompt: &str, opts: GenerateOptions) -> String {
    pgrx::check_for_interrupts!();
    if model.trim().is_empty() {
        invalid("model name is empty");
    }
    if prompt.trim().is_empty() {
        invalid("prompt is empty");
    }
    with_model(model, |m, adapter| m.complete_with(prompt, &opts, adapter)).or_report().text
}

fn parse_options(options: JsonB) -> GenerateOptions {
    if !options.0.is_object() {
        invalid("options must be a JSON object, e.g. '{\"max_tokens\": 20}'");
    }
    let opts: GenerateOptions =
        serde_json::from_value(options.0).unwrap_or_else(|e| invalid(format!("invalid options: {e}")));
    opts.validate().or_report();
    opts
}
