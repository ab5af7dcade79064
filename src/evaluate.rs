//! `distill.evaluate(model, sql [, options])`: a model's replies to the query's prompts scored against
//! its completions (exact match after trimming, accuracy, macro-F1, per-label precision/recall/F1,
//! confusion), the numbers an analyst needs before trusting a model on a million rows.

use std::collections::HashMap;
use std::time::Instant;

use distill_engine::metrics::{default_metric_kind, reply_budget, score, MetricKind};
use distill_engine::Message;
use pgrx::prelude::*;
use pgrx::JsonB;
use serde_json::{json, Value};

use crate::complete::{check_model_name, try_reply, Request};
use crate::errors::{invalid, report, OrReport};
use crate::model_cache::with_model;
use crate::user_query;

/// Options: those of `complete()`; `"choices": true` constrains replies to the distinct completions
/// of the query; without `choices`, a model with a label set answers from it (as `complete()` does),
/// `"choices": false` generates free text. Without `max_tokens`, free replies get the longest
/// completion's tokens plus 16.
/// `"metrics"`: a list of `"labels"`, `"json"`, `"generation"` (or `"accuracy"`, `"rouge"`, `"bleu"`,
/// `"chrf"`); by default labels for replies constrained to labels, else what the completions call for.
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
    let kinds = options.remove("metrics").map(metric_kinds);
    // Made definite once, not per row: without "choices", a classifier answers from its label set
    // (as complete() does); free replies get a token budget from the expected completions.
    let mut request = Request::parse(JsonB(Value::Object(options.clone()))).for_model(model).into_owned();
    let stored_labels = match &request {
        Request::Choose { choices, .. } if !options.contains_key("choices") => Some(choices.clone()),
        _ => None,
    };
    if let Request::Generate(opts) = &mut request {
        // An endpoint keeps the default: its tokenizer is the server's.
        if !options.contains_key("max_tokens") && crate::model_cache::endpoint(model).or_report().is_none() {
            opts.max_tokens = with_model(model, |m, _| reply_budget(m, expected())).or_report();
            options.insert("max_tokens".into(), json!(opts.max_tokens));
        }
    }
    // Replies constrained to labels are scored as labels; otherwise the data decides (see
    // distill_engine::metrics::default_metric_kind) unless "metrics" says.
    let kinds = kinds.unwrap_or_else(|| match &request {
        Request::Choose { .. } => vec![MetricKind::Labels],
        _ => vec![default_metric_kind(&expected().collect::<Vec<_>>())],
    });
    let started = Instant::now();
    // One reply per distinct prompt: the same prompt gets the same reply (greedy, or seeded sampling),
    // and generation data repeats prompts (one per reference).
    // A structured reply cut by max_tokens scores as an empty (invalid) reply, counted in
    // `incomplete_replies`, rather than ending the evaluation; any other error ends it.
    let mut replies: HashMap<&str, String> = HashMap::new();
    let mut incomplete = 0;
    for e in &rows.examples {
        if !replies.contains_key(e.prompt.as_str()) {
            let text = match try_reply(model, &[Message::user(&e.prompt)], &request) {
                Ok(r) => r.text,
                Err(distill_engine::Error::ReplyIncomplete { .. }) => {
                    incomplete += 1;
                    String::new()
                }
                Err(e) => report(e),
            };
            replies.insert(&e.prompt, text);
        }
    }
    let scored: Vec<(&str, &str, &str)> = rows
        .examples
        .iter()
        .map(|e| (e.prompt.as_str(), e.completion.as_str(), replies[e.prompt.as_str()].as_str()))
        .collect();
    let mut out = score(&kinds, &scored).or_report();
    out["model"] = json!(model);
    out["skipped_rows"] = json!(rows.skipped);
    out["incomplete_replies"] = json!(incomplete);
    out["seconds"] = json!((started.elapsed().as_secs_f64() * 10.0).round() / 10.0);
    out["options"] = Value::Object(options);
    if let Some(labels) = stored_labels {
        out["labels"] = json!(labels);
    }
    JsonB(out)
}

fn metric_kinds(v: Value) -> Vec<MetricKind> {
    let bad = || -> ! {
        invalid("metrics must be a non-empty array of \"labels\", \"json\" or \"generation\" (or \"accuracy\", \"rouge\", \"bleu\", \"chrf\")")
    };
    let Value::Array(names) = v else { bad() };
    let mut kinds = Vec::new();
    for n in names {
        let kind = n.as_str().and_then(MetricKind::parse).unwrap_or_else(|| bad());
        if !kinds.contains(&kind) {
            kinds.push(kind);
        }
    }
    if kinds.is_empty() {
        bad()
    }
    kinds
}
