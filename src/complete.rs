//! `distill.complete()` and friends: run a model in the calling backend.

use std::borrow::Cow;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use distill_engine::{GenerateOptions, Message};
use pgrx::prelude::*;
use pgrx::JsonB;
use serde_json::{json, Map, Value};

use crate::errors::{invalid, report_sql, OrReport};
use crate::model_cache;
use crate::usage;

/// NULL prompt in, NULL out (the function is STRICT, the SQL convention); an empty prompt is an error.
/// A tuned classifier answers from its label set (see [`Request::ModelDefault`]).
#[pg_extern(volatile, parallel_safe)]
fn complete(model: &str, prompt: &str) -> String {
    reply(model, &[user(prompt)], &Request::ModelDefault { opts: GenerateOptions::default(), scores: false }).text
}

/// With `"choices": [...]` in the options the reply is always exactly one of them (constrained
/// decoding); `"scores": true` then returns `{"choice": ..., "scores": {choice: probability}}` as text.
#[pg_extern(volatile, parallel_safe, name = "complete")]
fn complete_with_options(model: &str, prompt: &str, options: JsonB) -> String {
    let r = reply(model, &[user(prompt)], &Request::parse(options));
    match r.scores {
        Some(scores) => json!({"choice": r.text, "scores": scores}).to_string(),
        None => r.text,
    }
}

/// The chat form, shaped like Cortex's COMPLETE with options: `messages` is an array of
/// `{"role", "content"}` (system, user, assistant), the reply
/// `{"choices": [{"messages": text, "finish_reason"}], "created", "model", "usage": {...}}`.
#[pg_extern(volatile, parallel_safe, name = "complete")]
fn complete_chat(model: &str, messages: JsonB, options: default!(JsonB, "'{}'")) -> JsonB {
    let messages = parse_messages(messages.0);
    let r = reply(model, &messages, &Request::parse(options));
    let mut choice = json!({"messages": r.text, "finish_reason": r.finish_reason});
    if let Some(scores) = r.scores {
        choice["scores"] = Value::Object(scores);
    }
    let created = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    JsonB(json!({
        "choices": [choice],
        "created": created,
        "model": model,
        "usage": {
            "prompt_tokens": r.prompt_tokens,
            "completion_tokens": r.completion_tokens,
            "total_tokens": r.prompt_tokens + r.completion_tokens,
        },
    }))
}

/// `distill.classify(model, text, labels)`: the label the model gives `text`, always one of `labels`.
/// The prompt names the labels and asks for one, which suits base models; a tuned model answers best
/// to the prompt it was trained on: use `complete(model, prompt, '{"choices": [...]}')` for that.
#[pg_extern(volatile, parallel_safe)]
fn classify(model: &str, text: &str, labels: Vec<Option<String>>) -> String {
    check_input_size("text", text.len());
    if text.trim().is_empty() {
        invalid("text is empty");
    }
    let labels: Vec<String> =
        labels.into_iter().map(|l| l.unwrap_or_else(|| invalid("labels must not contain NULL"))).collect();
    let prompt = format!(
        "Classify the following text into one of these categories: {}. Reply with the category only.\nText: {text}",
        labels.join(", ")
    );
    reply(model, &[user(&prompt)], &Request::Choose { choices: labels, scores: false }).text
}

/// Tokens of `text` in the model's tokenizer (a tuned model's is its base model's), without the chat
/// template: what the text adds to a prompt.
#[pg_extern(volatile, parallel_safe)]
fn count_tokens(model: &str, text: &str) -> i32 {
    check_model_name(model);
    check_input_size("text", text.len());
    let target = model_cache::resolve(model).or_report();
    if let Some(ep) = target.endpoint(model).or_report() {
        return crate::endpoints::count_tokens(&ep, text);
    }
    model_cache::with_resolved(model, target, |m, _| m.count_tokens(text)).or_report() as i32
}

/// `PG_DISTILL_BUILD`, when the build sets it (scripts/install_extension.sh), tells two builds of one
/// version apart: after an upgrade, a reconnecting session shows which library its server runs. The
/// device is the one `distill.device` gives this session now (hence STABLE, not IMMUTABLE).
#[pg_extern(stable, parallel_safe)]
fn version() -> String {
    let build = option_env!("PG_DISTILL_BUILD").map(|b| format!(", build {b}")).unwrap_or_default();
    let device = match crate::guc::device() {
        Ok(d) => distill_engine::device::device_name(&d),
        Err(_) => "no usable device (see distill.device)".into(),
    };
    format!(
        "pg_distill {} (engine {}, {}, models on {device}{build})",
        env!("CARGO_PKG_VERSION"),
        distill_engine::VERSION,
        distill_engine::BUILD
    )
}

/// What to do with the conversation: generate freely, pick one of a fixed set of replies, or (no
/// `choices` option) whichever the model calls for.
#[derive(Clone)]
pub enum Request {
    Generate(GenerateOptions),
    Choose {
        choices: Vec<String>,
        scores: bool,
    },
    /// The model's stored label set when it has one (a tuned classifier, see
    /// `distill_engine::train::label_set`), else free generation with these options.
    ModelDefault {
        opts: GenerateOptions,
        scores: bool,
    },
}

impl Request {
    /// `choices` (a list, or `false` for free text) and `scores` select constrained decoding; the
    /// other keys are generation options, which do not apply to it (it is greedy over the choices).
    pub fn parse(options: JsonB) -> Self {
        let Value::Object(mut o) = options.0 else {
            invalid("options must be a JSON object, e.g. '{\"max_tokens\": 20}'")
        };
        let scores = match o.remove("scores") {
            None => None,
            Some(Value::Bool(b)) => Some(b),
            Some(_) => invalid("scores must be true or false"),
        };
        let generate = |o: Map<String, Value>| -> GenerateOptions {
            let opts: GenerateOptions =
                serde_json::from_value(Value::Object(o)).unwrap_or_else(|e| invalid(format!("invalid options: {e}")));
            opts.validate().or_report();
            opts
        };
        let choices = match o.remove("choices") {
            None => return Request::ModelDefault { opts: generate(o), scores: scores.unwrap_or(false) },
            Some(Value::Bool(false)) => {
                if scores.is_some() {
                    invalid("\"scores\" needs choices (\"choices\": false asks for free text)");
                }
                return Request::Generate(generate(o));
            }
            Some(choices) => choices,
        };
        let choices: Vec<String> = serde_json::from_value(choices).unwrap_or_else(|_| {
            invalid("choices must be an array of strings, or false, e.g. '{\"choices\": [\"yes\", \"no\"]}'")
        });
        let scores = scores.unwrap_or(false);
        if let Some(k) = o.keys().next() {
            invalid(format!("option \"{k}\" does not apply with choices (decoding is greedy over the choices)"));
        }
        distill_engine::infer::choices::validate(&choices).or_report();
        Request::Choose { choices, scores }
    }

    /// [`Request::ModelDefault`] made definite for `model`: its label set, or free generation (one
    /// registry lookup); any other request as it is.
    pub fn for_model(&self, model: &str) -> Cow<'_, Request> {
        self.with_labels(model, || model_cache::stored_labels(model).or_report())
    }

    /// [`Request::for_model`] with the model's label set given (`labels` is asked only when the
    /// request leaves the choice to the model).
    fn with_labels(&self, model: &str, labels: impl FnOnce() -> Option<Vec<String>>) -> Cow<'_, Request> {
        let Request::ModelDefault { opts, scores } = self else { return Cow::Borrowed(self) };
        // A response_format asks for that shape, not for the model's labels.
        if opts.response_format.is_some() {
            if *scores {
                invalid("\"scores\" needs choices; it does not apply with response_format");
            }
            return Cow::Owned(Request::Generate(opts.clone()));
        }
        match labels() {
            Some(choices) => {
                if opts.temperature > 0.0 {
                    invalid(format!(
                        "model \"{model}\" answers from its label set, which is decoded greedily; add \"choices\": false to sample free text"
                    ));
                }
                Cow::Owned(Request::Choose { choices, scores: *scores })
            }
            None if *scores => invalid(format!(
                "\"scores\" needs choices: pass a \"choices\" list (model \"{model}\" has no label set)"
            )),
            None => Cow::Owned(Request::Generate(opts.clone())),
        }
    }
}

/// A model's reply, with what usage accounting and the chat form report.
pub struct Reply {
    pub text: String,
    pub scores: Option<Map<String, Value>>,
    pub prompt_tokens: usize,
    /// Generated tokens; for choices, the forward passes after the prompt.
    pub completion_tokens: usize,
    pub finish_reason: &'static str,
}

/// Runs `model` on `messages`; counts the call in [`usage`].
pub fn reply(model: &str, messages: &[Message], request: &Request) -> Reply {
    try_reply(model, messages, request).or_report()
}

/// [`reply`], with the engine's error returned (a failed reply is not counted).
pub fn try_reply(model: &str, messages: &[Message], request: &Request) -> distill_engine::Result<Reply> {
    check_model_name(model);
    let started = Instant::now();
    // One lookup of the name serves the endpoint check, the label set and the model itself.
    let target = model_cache::resolve(model)?;
    if let Some(ep) = target.endpoint(model)? {
        // An endpoint has no label set.
        let r = crate::endpoints::reply(&ep, messages, &request.with_labels(model, || None))?;
        usage::record(model, r.prompt_tokens, r.completion_tokens, started.elapsed());
        return Ok(r);
    }
    let r = match &*request.with_labels(model, || target.labels()) {
        Request::ModelDefault { .. } => unreachable!("with_labels makes the request definite"),
        Request::Generate(opts) => {
            let g = model_cache::with_resolved(model, target, |m, a| m.chat_with(messages, opts, a))?;
            let finish_reason = match g.finish_reason {
                distill_engine::FinishReason::Stop => "stop",
                distill_engine::FinishReason::Length => "length",
            };
            Reply {
                text: g.text,
                scores: None,
                prompt_tokens: g.prompt_tokens,
                completion_tokens: g.tokens.len(),
                finish_reason,
            }
        }
        Request::Choose { choices, scores } => {
            let c = model_cache::with_resolved(model, target, |m, a| m.choose_chat(messages, choices, *scores, a))?;
            let scores = c.scores.map(|p| choices.iter().cloned().zip(p.into_iter().map(Value::from)).collect());
            Reply {
                text: c.text,
                scores,
                prompt_tokens: c.prompt_tokens,
                completion_tokens: c.steps,
                finish_reason: "stop",
            }
        }
    };
    usage::record(model, r.prompt_tokens, r.completion_tokens, started.elapsed());
    Ok(r)
}

/// Refuses an input longer than `distill.max_input_bytes` before any work (tokenizing a 12 MB text
/// takes seconds and over a GB, and no cancel can stop the tokenizer).
pub fn check_input_size(what: &str, bytes: usize) {
    let limit = crate::guc::max_input_bytes();
    if bytes > limit {
        report_sql(
            PgSqlErrorCode::ERRCODE_PROGRAM_LIMIT_EXCEEDED,
            &format!("{what} is {bytes} bytes long, more than distill.max_input_bytes ({limit})"),
            Some("Shorten it, or ask an administrator to raise distill.max_input_bytes."),
        );
    }
}

/// A prompt as one user message; a blank prompt is an error.
fn user(prompt: &str) -> Message {
    check_input_size("prompt", prompt.len());
    if prompt.trim().is_empty() {
        invalid("prompt is empty");
    }
    Message::user(prompt)
}

/// Common to every call: a chance to cancel, and no blank model name.
pub fn check_model_name(model: &str) {
    pgrx::check_for_interrupts!();
    if model.trim().is_empty() {
        invalid("model name is empty");
    }
}

/// A chat: `[{"role": "system"|"user"|"assistant", "content": "..."}]`, a system message only first,
/// ending with the user's turn (the model writes the next assistant turn).
fn parse_messages(v: Value) -> Vec<Message> {
    let bad = |m: String| -> ! {
        report_sql(
            PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
            &format!("invalid messages: {m}"),
            Some(
                r#"Pass a JSON array such as '[{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": "Hello"}]'."#,
            ),
        )
    };
    let Value::Array(items) = v else { bad("not a JSON array".into()) };
    let content_bytes: usize =
        items.iter().filter_map(|m| m.get("content").and_then(Value::as_str)).map(str::len).sum();
    check_input_size("messages", content_bytes);
    if items.is_empty() {
        bad("the array is empty".into());
    }
    let n = items.len();
    let messages: Vec<Message> = items
        .into_iter()
        .enumerate()
        .map(|(i, item)| {
            let Value::Object(o) = item else { bad(format!("message {} is not an object", i + 1)) };
            if let Some(k) = o.keys().find(|k| *k != "role" && *k != "content") {
                bad(format!("message {} has an unknown key \"{k}\"", i + 1));
            }
            let (Some(Value::String(role)), Some(Value::String(content))) = (o.get("role"), o.get("content")) else {
                bad(format!("message {} needs string values for \"role\" and \"content\"", i + 1))
            };
            match role.as_str() {
                "system" if i > 0 => bad(format!("message {} is a system message; only the first may be", i + 1)),
                "system" | "user" | "assistant" => {}
                other => bad(format!("message {} has role \"{other}\" (use system, user or assistant)", i + 1)),
            }
            if i == n - 1 && role != "user" {
                bad("the last message must be the user's (the model replies to it)".into());
            }
            if role == "user" && content.trim().is_empty() {
                bad(format!("message {} (user) is empty", i + 1));
            }
            Message::new(role, content)
        })
        .collect();
    messages
}
