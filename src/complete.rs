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

/// With `"choices": [...]` in the options the reply is always exactly one of them (constrained
/// decoding); `"scores": true` then returns `{"choice": ..., "scores": {choice: probability}}` as text.
#[pg_extern(volatile, parallel_safe, name = "complete")]
fn complete_with_options(model: &str, prompt: &str, options: JsonB) -> String {
    match split_choices(options) {
        (Some((choices, scores)), _) => choose(model, prompt, &choices, scores),
        (None, options) => run(model, prompt, parse_options(options)),
    }
}

/// `distill.classify(model, text, labels)`: the label the model gives `text`, always one of `labels`.
/// The prompt names the labels and asks for one, which suits base models; a tuned model answers best
/// to the prompt it was trained on: use `complete(model, prompt, '{"choices": [...]}')` for that.
#[pg_extern(volatile, parallel_safe)]
fn classify(model: &str, text: &str, labels: Vec<Option<String>>) -> String {
    if text.trim().is_empty() {
        invalid("text is empty");
    }
    let labels: Vec<String> =
        labels.into_iter().map(|l| l.unwrap_or_else(|| invalid("labels must not contain NULL"))).collect();
    let prompt = format!(
        "Classify the following text into one of these categories: {}. Reply with the category only.\nText: {text}",
        labels.join(", ")
    );
    choose(model, &prompt, &labels, false)
}

#[pg_extern(immutable, parallel_safe)]
fn version() -> String {
    format!("pg_distill {} (engine {}, {})", env!("CARGO_PKG_VERSION"), distill_engine::VERSION, distill_engine::DEVICE)
}

fn run(model: &str, prompt: &str, opts: GenerateOptions) -> String {
    check_args(model, prompt);
    with_model(model, |m, adapter| m.complete_with(prompt, &opts, adapter)).or_report().text
}

fn choose(model: &str, prompt: &str, choices: &[String], scores: bool) -> String {
    check_args(model, prompt);
    distill_engine::choices::validate(choices).or_report();
    let c = with_model(model, |m, adapter| m.choose_with(prompt, choices, scores, adapter)).or_report();
    match c.scores {
        None => c.text,
        Some(p) => {
            let scores: serde_json::Map<String, serde_json::Value> =
                choices.iter().cloned().zip(p.into_iter().map(serde_json::Value::from)).collect();
            serde_json::json!({"choice": c.text, "scores": scores}).to_string()
        }
    }
}

/// Takes `choices` and `scores` out of the options; the rest are generation options, which do not
/// apply to constrained decoding (it is greedy over the choices).
fn split_choices(options: JsonB) -> (Option<(Vec<String>, bool)>, JsonB) {
    let serde_json::Value::Object(mut o) = options.0 else { return (None, options) };
    let Some(choices) = o.remove("choices") else {
        if o.contains_key("scores") {
            invalid("\"scores\" needs \"choices\"");
        }
        return (None, JsonB(serde_json::Value::Object(o)));
    };
    let choices: Vec<String> = serde_json::from_value(choices)
        .unwrap_or_else(|_| invalid("choices must be an array of strings, e.g. '{\"choices\": [\"yes\", \"no\"]}'"));
    let scores = match o.remove("scores") {
        None => false,
        Some(serde_json::Value::Bool(b)) => b,
        Some(_) => invalid("scores must be true or false"),
    };
    if let Some(k) = o.keys().next() {
        invalid(format!("option \"{k}\" does not apply with choices (decoding is greedy over the choices)"));
    }
    (Some((choices, scores)), JsonB(serde_json::Value::Object(o)))
}

/// Common to every call: a chance to cancel, and no blank model name or prompt.
fn check_args(model: &str, prompt: &str) {
    pgrx::check_for_interrupts!();
    if model.trim().is_empty() {
        invalid("model name is empty");
    }
    if prompt.trim().is_empty() {
        invalid("prompt is empty");
    }
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
