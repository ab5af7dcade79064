//! Endpoints as models: `distill.create_endpoint`, `alter_endpoint`, `drop_endpoint`, and the calls
//! `complete()` and friends make when a model name is an endpoint.
//!
//! Data leaves the database only through an endpoint, and only a superuser or a member of
//! `distill_endpoint_admin` can create one. The API key is never in a view, an error, a log line or
//! `pg_dump`'s output: given inline it is stored in `distill.endpoint_keys` (readable by the
//! extension's owner only, not dumped); `api_key_env` and `api_key_file` (read from the server's
//! environment or file system at call time) are a superuser's to give, since they read what the
//! server process can read and send it to a URL of the creator's choice.
//!
//! Each request runs on a signal-blocked thread (`distill_engine::endpoint`); the backend's main
//! thread waits in 50 ms slices and raises a query cancel or `statement_timeout` at once, leaving the
//! request to end at its own timeout.

use std::time::Duration;

use distill_engine::endpoint::{self, ChatRequest, Endpoint, EndpointSettings, InFlight, Next, Secret};
use distill_engine::infer::structured::ResponseFormat;
use distill_engine::{Error, GenerateOptions, Message, Result};
use pgrx::prelude::*;
use pgrx::JsonB;
use pgrx::PgSqlErrorCode::*;
use serde_json::{Map, Value};

use crate::complete::{Reply, Request};
use crate::endpoint_registry::{self as reg, EndpointRow, KeyChange};
use crate::errors::{invalid, report_sql, OrReport};
use crate::pg::{backend, interrupts};

/// Longest API key accepted (inline, from a file or the environment).
const MAX_KEY_BYTES: usize = 4096;

/// `distill.create_endpoint(name, base_url, model [, options])`: registers an OpenAI-compatible
/// chat-completions server; `complete(name, ...)` then asks it.
#[pg_extern(volatile, parallel_unsafe)]
fn create_endpoint(name: &str, base_url: &str, model: &str, options: default!(JsonB, "'{}'")) {
    crate::errors::refuse_on_standby("create_endpoint()");
    check_may_create();
    crate::finetune::check_model_name(name);
    if reg::exists(name) {
        crate::finetune::taken(name, "an endpoint");
    }
    if crate::model_cache::is_model(name) {
        crate::finetune::taken(name, "a model");
    }
    let (settings, key) = parse_options(options.0, None);
    let ep = endpoint(name, base_url.trim(), model.trim(), settings.clone(), None);
    ep.validate().or_report();
    let stored = serde_json::to_value(&settings).unwrap_or_default();
    if !reg::insert(name, base_url.trim(), model.trim(), compact(stored), key.as_deref()) {
        crate::finetune::taken(name, "an endpoint");
    }
}

/// `distill.alter_endpoint(name, changes)`: `base_url`, `model`, any setting (`null` restores its
/// default), `api_key` (a string sets it, `null` removes it): a key rotation.
#[pg_extern(volatile, parallel_unsafe)]
fn alter_endpoint(name: &str, changes: JsonB) {
    crate::errors::refuse_on_standby("alter_endpoint()");
    let row = owned(name, "alter it");
    let Value::Object(mut changes) = changes.0 else { invalid("changes must be a JSON object") };
    let text = |v: Option<Value>, what: &str, old: String| match v {
        None => old,
        Some(Value::String(s)) => s.trim().to_string(),
        Some(_) => invalid(format!("{what} must be a string")),
    };
    let base_url = text(changes.remove("base_url"), "base_url", row.base_url);
    let model = text(changes.remove("model"), "model", row.model);
    let key_change = match changes.remove("api_key") {
        None => None,
        Some(Value::Null) => Some(None),
        Some(v) => Some(Some(inline_key(v))),
    };
    let mut merged = match row.options {
        Value::Object(o) => o,
        _ => Map::new(),
    };
    for (k, v) in changes {
        match v {
            Value::Null => merged.remove(&k),
            v => merged.insert(k, v),
        };
    }
    let (settings, _) = parse_options(Value::Object(merged), Some(row.owner_is_superuser));
    let ep = endpoint(name, &base_url, &model, settings.clone(), None);
    ep.validate().or_report();
    let key = match &key_change {
        None => KeyChange::Keep,
        Some(None) => KeyChange::Clear,
        Some(Some(k)) => KeyChange::Set(k),
    };
    reg::update(name, &base_url, &model, compact(serde_json::to_value(&settings).unwrap_or_default()), key);
}

/// `distill.drop_endpoint(name)`: its owner or a superuser.
#[pg_extern(volatile, parallel_unsafe)]
fn drop_endpoint(name: &str) {
    crate::errors::refuse_on_standby("drop_endpoint()");
    owned(name, "drop it");
    reg::delete(name);
}

/// The caller may register endpoints: a superuser or a member of `distill_endpoint_admin`.
fn check_may_create() {
    if backend::is_superuser() {
        return;
    }
    let admin = Spi::get_one::<pg_sys::Oid>(
        "SELECT r.oid FROM pg_catalog.pg_roles r WHERE r.rolname OPERATOR(pg_catalog.=) 'distill_endpoint_admin'",
    )
    .ok()
    .flatten();
    if !admin.is_some_and(|a| backend::has_privs_of_role(backend::current_user(), a)) {
        report_sql(
            ERRCODE_INSUFFICIENT_PRIVILEGE,
            "permission denied to create an endpoint",
            Some("Rows sent to an endpoint leave the database: only superusers and members of distill_endpoint_admin may create one."),
        );
    }
}

/// The endpoint's row when the caller owns it; otherwise the same errors as for models.
fn owned(name: &str, what: &str) -> EndpointRow {
    match reg::owns(name) {
        None => report_sql(
            ERRCODE_UNDEFINED_OBJECT,
            &format!("endpoint \"{name}\" does not exist"),
            Some("SELECT name FROM distill.endpoints lists the ones you can use."),
        ),
        Some(false) => report_sql(
            ERRCODE_INSUFFICIENT_PRIVILEGE,
            &format!("must be the owner of endpoint \"{name}\" to {what}"),
            None,
        ),
        Some(true) => reg::find(name).unwrap_or_else(|| invalid(format!("endpoint \"{name}\" was dropped meanwhile"))),
    }
}

/// Settings and the inline key from `options`. `api_key_env`/`api_key_file` need a superuser (the
/// caller at create time; at alter time, the endpoint's owner or the caller).
fn parse_options(options: Value, owner_is_superuser: Option<bool>) -> (EndpointSettings, Option<String>) {
    let Value::Object(mut o) = options else { invalid("options must be a JSON object, e.g. '{\"timeout\": 60}'") };
    let key = o.remove("api_key").map(inline_key);
    let settings: EndpointSettings =
        serde_json::from_value(Value::Object(o)).unwrap_or_else(|e| invalid(format!("invalid endpoint options: {e}")));
    let reads_server = settings.api_key_env.is_some() || settings.api_key_file.is_some();
    if reads_server && !(backend::is_superuser() || owner_is_superuser == Some(true)) {
        report_sql(
            ERRCODE_INSUFFICIENT_PRIVILEGE,
            "only a superuser may take an endpoint's key from the server's environment or files (api_key_env, api_key_file)",
            Some("Give the key inline instead: '{\"api_key\": \"...\"}' (stored where only the extension's owner can read it)."),
        );
    }
    if key.is_some() && reads_server {
        invalid("give the key one way: api_key, api_key_env or api_key_file");
    }
    settings.validate().or_report();
    (settings, key)
}

fn inline_key(v: Value) -> String {
    match v {
        Value::String(k) if !k.trim().is_empty() && k.len() <= MAX_KEY_BYTES => k.trim().to_string(),
        _ => invalid(format!("api_key must be a non-empty string of at most {MAX_KEY_BYTES} bytes")),
    }
}

/// Only what differs from the defaults, so that a later change of a default reaches old endpoints.
fn compact(v: Value) -> Value {
    let defaults = serde_json::to_value(EndpointSettings::default()).unwrap_or_default();
    match v {
        Value::Object(o) => {
            Value::Object(o.into_iter().filter(|(k, v)| !v.is_null() && defaults.get(k) != Some(v)).collect())
        }
        v => v,
    }
}

fn endpoint(name: &str, base_url: &str, model: &str, settings: EndpointSettings, key: Option<Secret>) -> Endpoint {
    Endpoint { name: name.into(), base_url: base_url.into(), model: model.into(), api_key: key, settings }
}

/// The endpoint of `row` as a call needs it, its key read; an error when the caller may not use it.
pub fn resolve(name: &str, row: &EndpointRow) -> Result<Endpoint> {
    if !row.usable {
        return Err(Error::PermissionDenied(format!("permission denied for model \"{name}\"")));
    }
    let settings: EndpointSettings = serde_json::from_value(row.options.clone())
        .map_err(|e| Error::InvalidInput(format!("endpoint \"{name}\" has unusable settings: {e}")))?;
    let key = match (&settings.api_key_env, &settings.api_key_file, &row.stored_key) {
        (_, _, Some(k)) => Some(k.clone()),
        (Some(_), _, _) | (_, Some(_), _) if !row.owner_is_superuser => {
            return Err(Error::PermissionDenied(format!(
                "endpoint \"{name}\" reads its key from the server, which only a superuser's endpoint may do"
            )))
        }
        (Some(var), _, _) => Some(std::env::var(var).map_err(|_| {
            Error::InvalidInput(format!("endpoint \"{name}\": the server has no environment variable {var}"))
        })?),
        (_, Some(path), _) => Some(read_key_file(name, path)?),
        _ => None,
    };
    let key = key.and_then(Secret::new);
    Ok(endpoint(name, &row.base_url, &row.model, settings, key))
}

fn read_key_file(name: &str, path: &str) -> Result<String> {
    let unreadable =
        |why: String| Error::InvalidInput(format!("endpoint \"{name}\": cannot read its api_key_file ({why})"));
    let meta = std::fs::metadata(path).map_err(|e| unreadable(e.kind().to_string()))?;
    if meta.len() > MAX_KEY_BYTES as u64 {
        return Err(unreadable(format!("larger than {MAX_KEY_BYTES} bytes")));
    }
    std::fs::read_to_string(path).map_err(|e| unreadable(e.kind().to_string()))
}

/// Runs `request` on the endpoint: one chat request, waited for with cancel serviced.
pub fn reply(ep: &Endpoint, messages: &[Message], request: &Request) -> Result<Reply> {
    let (opts, choices) = plan(ep, request)?;
    let mut batch = start(ep, vec![ChatRequest { messages: messages.to_vec(), opts: opts.clone() }], 1)?;
    let Some((_, answer)) = wait(&mut batch) else {
        return Err(Error::Io(std::io::Error::other("the request's thread ended without an answer")));
    };
    let r = answer?.0;
    let text = check_reply(ep, r.text, choices.as_deref(), &opts)?;
    let finish_reason = match r.finish_reason {
        distill_engine::FinishReason::Stop => "stop",
        distill_engine::FinishReason::Length => "length",
    };
    Ok(Reply {
        text,
        scores: None,
        prompt_tokens: r.prompt_tokens,
        completion_tokens: r.completion_tokens,
        finish_reason,
    })
}

/// What to send for `request`, and the choices the reply must name. The API has no constrained
/// choice, so choices are asked for through structured outputs, `{"label": one of them}` (OpenAI's
/// strict schemas need an object at the top), which OpenAI, vLLM, llama.cpp and Ollama enforce with
/// a grammar; scores would need the server's token probabilities.
pub fn plan(ep: &Endpoint, request: &Request) -> Result<(GenerateOptions, Option<Vec<String>>)> {
    match request {
        Request::Generate(opts) | Request::ModelDefault { opts, scores: false } => Ok((opts.clone(), None)),
        Request::Choose { choices, scores: false } => {
            let schema = serde_json::json!({
                "type": "object",
                "properties": {"label": {"type": "string", "enum": choices}},
                "required": ["label"],
                "additionalProperties": false,
            });
            let longest = choices.iter().map(|c| c.len()).max().unwrap_or(1);
            let opts = GenerateOptions {
                // The label's bytes bound its tokens; the JSON around it takes a few more.
                max_tokens: longest + 32,
                response_format: Some(ResponseFormat::Json { schema: Some(schema) }),
                ..Default::default()
            };
            Ok((opts, Some(choices.clone())))
        }
        Request::Choose { scores: true, .. } | Request::ModelDefault { scores: true, .. } => {
            Err(Error::InvalidInput(format!(
                "\"scores\" does not apply to endpoint \"{}\" (it would need the server's token probabilities)",
                ep.name
            )))
        }
    }
}

/// A reply as the request asked for it: the choice it names (the `label` of a structured reply, or,
/// from a server that ignored the format, the text itself, equal ignoring case, surrounding space,
/// quotes and a final period); valid JSON under a response_format (the server is trusted with the
/// schema itself).
pub fn check_reply(ep: &Endpoint, text: String, choices: Option<&[String]>, opts: &GenerateOptions) -> Result<String> {
    let bad = |why: &str| {
        let shown: String = text.chars().take(120).collect();
        Error::Endpoint {
            endpoint: ep.name.clone(),
            detail: ep.redact(&format!("the reply \"{shown}\" is {why}")),
            kind: distill_engine::EndpointFailure::BadReply,
        }
    };
    if let Some(choices) = choices {
        let parsed: Option<Value> = serde_json::from_str(&text).ok();
        let label = parsed.as_ref().and_then(|v| v.get("label")).and_then(Value::as_str).unwrap_or(&text);
        let norm = |s: &str| s.trim().trim_matches(['"', '\'', '.', '`']).trim().to_lowercase();
        let r = norm(label);
        return choices.iter().find(|c| norm(c) == r).cloned().ok_or_else(|| bad("none of the choices"));
    }
    if opts.response_format.is_some() && serde_json::from_str::<Value>(&text).is_err() {
        return Err(bad("not the JSON its response_format asks for"));
    }
    Ok(text)
}

/// Starts `requests` on `n` threads.
pub fn start(ep: &Endpoint, requests: Vec<ChatRequest>, n: usize) -> Result<InFlight> {
    Ok(InFlight::start(ep.clone(), requests, n)?)
}

/// The next answer, waiting with query cancel serviced: a pending cancel is raised here, and the
/// batch, dropped as the ERROR unwinds, stops its threads taking requests.
pub fn wait(batch: &mut InFlight) -> Option<endpoint::Answer> {
    loop {
        match batch.next(Duration::from_millis(50)) {
            Next::Answer(a) => return Some(a),
            Next::Done => return None,
            Next::Waiting => {
                if interrupts::cancel_pending() {
                    pgrx::check_for_interrupts!();
                }
            }
        }
    }
}

/// Tokens of `text` as the endpoint's server counts them.
pub fn count_tokens(ep: &Endpoint, text: &str) -> i32 {
    let (ep, text) = (ep.clone(), text.to_string());
    let cancel = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flag = cancel.clone();
    let (tx, rx) = std::sync::mpsc::channel();
    distill_engine::threads::spawn("distill-http-tokenize", move || {
        let _ = tx.send(endpoint::tokenize(&ep, &text, &flag));
    })
    .map_err(Error::Io)
    .or_report();
    loop {
        match rx.recv_timeout(Duration::from_millis(50)) {
            Ok(r) => return r.or_report() as i32,
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                crate::errors::report(Error::Io(std::io::Error::other("the tokenize request's thread ended")))
            }
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                if interrupts::cancel_pending() {
                    cancel.store(true, std::sync::atomic::Ordering::Relaxed);
                    pgrx::check_for_interrupts!();
                }
            }
        }
    }
}
