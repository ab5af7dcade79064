//! `distill.evaluate(model, sql [, options])`: a model's replies to the query's prompts scored against
//! its completions (exact match after trimming, accuracy, macro-F1, per-label precision/recall/F1,
//! confusion), the numbers an analyst needs before trusting a model on a million rows.

use std::time::Instant;

use distill_engine::metrics::{classification_metrics, reply_budget};
use distill_engine::Message;
use pgrx::prelude::*;
use pgrx::JsonB;
use serde_json::{json, Value};

use crate::complete::{check_model_name, reply, Request};
use crate::errors::{invalid, OrReport};
use crate::model_cache::with_model;
use crate::user_query;

/// Options: those of `complete()`; `"choices": true` constrains replies to the distinct completions
/// of the query; without `choices`, a model with a label set answers from it (as `complete()` does),
/// `"choices": false` generates free text. Without `max_tokens`, free replies get the longest
/// completion's tokens plus 16.
#[pg_extern(volatile, parallel_unsafe)]
fn evaluate(model: &str, sql: &str, options: default!(JsonB, "'{}'")) -> JsonB {
    check_model_name(model);
    let Value::Object(mut options) = options.0 else {
        invalid("options must be a JSON object, e.g. '{\"choices\": true}'")
    };
    // Bounded as a fine-tuning job's queries are: the rows are all held at once.
    let mut budget = user_query::Budget::training();
    let rows = user_query::read("evaluation query", sql, &mut budget);
    if rows.examples.is_empty() {
        invalid(format!(
            "the evaluation query returned no usable rows ({} skipped for a NULL or blank prompt or completion)",
            rows.skipped
        ));
    }
    let expected = || rows.examples.iter().map(|e| e.completion.as_str());
    if options.get("choices") == Some(&Value::Bool(true)) {
        let mut labels: Vec<&str> = expected().map(str::trim).collect();
        labels.sort_unstable();
        labels.dedup();
        options.insert("choices".into(), json!(labels));
    }
    // Made definite once, not per row: without "choices", a classifier answers from its label set
    // (as complete() does); free replies get a token budget from the expected completions.
    let mut request = Request::parse(JsonB(Value::Object(options.clone()))).for_model(model).into_owned();
    let stored_labels = match &request {
        Request::Choose { choices, .. } if !options.contains_key("choices") => Some(choices.clone()),
        _ => None,
    };
    if let Request::Generate(opts) = &mut request {
        if !options.contains_key("max_tokens") {
            opts.max_tokens = with_model(model, |m, _| reply_budget(m, expected())).or_report();
            options.insert("max_tokens".into(), json!(opts.max_tokens));
        }
    }
    let started = Instant::now();
    let predicted: Vec<String> =
        rows.examples.iter().map(|e| reply(model, &[Message::user(&e.prompt)], &request).text).collect();
    let metrics = classification_metrics(expected().zip(predicted.iter().map(String::as_str)));
    let mut out = serde_json::to_value(metrics).expect("metrics serialise");
    out["model"] = json!(model);
    out["skipped_rows"] = json!(rows.skipped);
    out["seconds"] = json!((started.elapsed().as_secs_f64() * 10.0).round() / 10.0);
    out["options"] = Value::Object(options);
    if let Some(labels) = stored_labels {
        out["labels"] = json!(labels);
    }
    JsonB(out)
}
