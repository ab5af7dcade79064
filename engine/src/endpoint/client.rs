//! One request to an endpoint, blocking, with the retry rules of OpenAI's own client (openai-python):
//! a 408, 409, 429 or 5xx, a timeout or a lost connection is tried again up to `max_retries` times,
//! after the server's `Retry-After` when it gives one (up to a minute), else after 0.5 s doubling to
//! at most 8 s, with jitter. Any other status is an error at once, with the server's own message.
//! Every message the server sends back passes through [`Endpoint::redact`] first.
//!
//! Run it on a thread of its own ([`crate::threads::spawn`]): it blocks for up to `timeout` per
//! attempt. [`Cancel`] stops it between attempts and during a backoff; an attempt in progress ends
//! at its timeout, when nobody waits for it any more.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use rand::Rng;
use serde_json::{json, Value};

use super::openai::{error_message, parse_reply, ChatReply, ChatRequest};
use super::Endpoint;
use crate::error::{EndpointFailure, Error, Result};

/// Set by whoever started the call when it no longer wants the answer (a cancelled query).
pub type Cancel = Arc<AtomicBool>;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CallStats {
    /// Requests sent (1 + retries).
    pub attempts: u32,
}

/// A `Retry-After` longer than this is not waited for: the call fails with the server's 429.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(60);
/// Bodies larger than this are refused (ureq's own limit on `into_string`, 10 MB).
const BODY_LIMIT_NOTE: &str = "a reply over 10 MB";

/// Agents keep connections alive between calls; one per connect timeout (an agent-wide setting).
fn agent(connect_timeout: Duration) -> ureq::Agent {
    static AGENTS: OnceLock<Mutex<HashMap<u128, ureq::Agent>>> = OnceLock::new();
    let mut agents = AGENTS.get_or_init(Default::default).lock();
    agents
        .entry(connect_timeout.as_millis())
        .or_insert_with(|| {
            ureq::AgentBuilder::new()
                .timeout_connect(connect_timeout)
                // A redirect could carry the key to another host; a server that moved is an error.
                .redirects(0)
                .user_agent(concat!("pg_distill/", env!("CARGO_PKG_VERSION")))
                .build()
        })
        .clone()
}

/// Asks `endpoint` for a chat completion.
pub fn call(endpoint: &Endpoint, request: &ChatRequest, cancel: &Cancel) -> Result<(ChatReply, CallStats)> {
    let mut body = request.body(&endpoint.model, endpoint.settings.response_format_style)?;
    if let (Some(extra), Some(o)) = (&endpoint.settings.extra_body, body.as_object_mut()) {
        o.extend(extra.clone());
    }
    let body = body.to_string();
    let url = format!("{}/chat/completions", endpoint.base_url.trim_end_matches('/'));
    let (text, stats) = post(endpoint, &url, &body, cancel)?;
    let reply =
        parse_reply(&text).map_err(|detail| failure(endpoint, EndpointFailure::BadReply, endpoint.redact(&detail)))?;
    Ok((reply, stats))
}

/// Tokens of `text` in the endpoint's tokenizer, through its `tokenize_url`.
pub fn tokenize(endpoint: &Endpoint, text: &str, cancel: &Cancel) -> Result<usize> {
    let Some(url) = &endpoint.settings.tokenize_url else {
        return Err(Error::InvalidInput(format!(
            "endpoint \"{}\" cannot count tokens: it has no tokenize_url (its owner can set one with distill.alter_endpoint)",
            endpoint.name
        )));
    };
    let body = json!({"model": endpoint.model, "input": text}).to_string();
    let (reply, _) = post(endpoint, url, &body, cancel)?;
    let v: Value = serde_json::from_str(&reply).map_err(|e| {
        failure(endpoint, EndpointFailure::BadReply, format!("the tokenize reply is not valid JSON ({e})"))
    })?;
    match (v.get("tokens").and_then(Value::as_array), v.get("count").and_then(Value::as_u64)) {
        (_, Some(n)) => Ok(n as usize),
        (Some(t), None) => Ok(t.len()),
        _ => Err(failure(
            endpoint,
            EndpointFailure::BadReply,
            "the tokenize reply has no \"tokens\" or \"count\"".into(),
        )),
    }
}

fn failure(endpoint: &Endpoint, kind: EndpointFailure, detail: String) -> Error {
    Error::Endpoint { endpoint: endpoint.name.clone(), detail, kind }
}

/// POSTs `body` with retries; the reply's body on a 2xx.
fn post(endpoint: &Endpoint, url: &str, body: &str, cancel: &Cancel) -> Result<(String, CallStats)> {
    let s = &endpoint.settings;
    let agent = agent(Duration::from_secs_f64(s.connect_timeout));
    let timeout = Duration::from_secs_f64(s.timeout);
    let mut stats = CallStats::default();
    loop {
        if cancel.load(Ordering::Relaxed) {
            return Err(Error::Interrupted);
        }
        stats.attempts += 1;
        let mut req = agent.post(url).timeout(timeout).set("Content-Type", "application/json");
        if let Some(key) = &endpoint.api_key {
            req = req.set("Authorization", &format!("Bearer {}", key.expose()));
        }
        let started = Instant::now();
        let (kind, detail, retry_after) = match req.send_string(body) {
            Ok(resp) => match resp.into_string() {
                Ok(text) => return Ok((text, stats)),
                Err(e) if started.elapsed() >= timeout => {
                    (EndpointFailure::Timeout, format!("no complete reply within {} s ({e})", s.timeout), None)
                }
                Err(e) => (
                    EndpointFailure::Unreachable,
                    format!("reading the reply failed ({e}; or {BODY_LIMIT_NOTE})"),
                    None,
                ),
            },
            Err(ureq::Error::Status(code, resp)) => {
                let retry_after = resp.header("Retry-After").and_then(parse_retry_after);
                let message = error_message(&resp.into_string().unwrap_or_default());
                (EndpointFailure::Http(code), format!("HTTP {code}: {message}"), retry_after)
            }
            Err(ureq::Error::Transport(t)) => {
                // Kind and message without ureq's URL (a path or query string may hold something private).
                let mut parts = vec![t.kind().to_string()];
                parts.extend(t.message().map(str::to_string));
                parts.extend(std::error::Error::source(&t).map(|e| e.to_string()));
                let text = parts.join(": ");
                let text = if text.contains("Unexpected EOF") {
                    "the connection closed without a reply".to_string()
                } else {
                    text
                };
                if started.elapsed() >= timeout || text.contains("timed out") {
                    (
                        EndpointFailure::Timeout,
                        format!("no reply within {} s", elapsed_limit(started, timeout, s)),
                        None,
                    )
                } else {
                    (EndpointFailure::Unreachable, format!("cannot reach {}: {text}", origin(url)), None)
                }
            }
        };
        let retryable = match kind {
            EndpointFailure::Http(code) => matches!(code, 408 | 409 | 429) || code >= 500,
            EndpointFailure::Timeout | EndpointFailure::Unreachable => true,
            EndpointFailure::BadReply => false,
        };
        let detail = endpoint.redact(&detail);
        let wait = match retry_after {
            Some(w) if w > MAX_RETRY_AFTER => None,
            Some(w) => Some(w),
            None => Some(backoff(stats.attempts)),
        };
        match wait {
            Some(wait) if retryable && stats.attempts <= s.max_retries => sleep_unless_cancelled(wait, cancel)?,
            _ => {
                let tries = match stats.attempts {
                    1 => String::new(),
                    n => format!(" (after {n} attempts)"),
                };
                return Err(failure(endpoint, kind, format!("{detail}{tries}")));
            }
        }
    }
}

/// The seconds a timed-out attempt was allowed: the request timeout, or the connect timeout when the
/// connection itself was not made in time.
fn elapsed_limit(started: Instant, timeout: Duration, s: &super::EndpointSettings) -> f64 {
    if started.elapsed() + Duration::from_millis(100) < timeout {
        s.connect_timeout
    } else {
        s.timeout
    }
}

/// `scheme://host[:port]` of a URL: what a connection error names (never a path or query string,
/// which may hold something private).
fn origin(url: &str) -> &str {
    let after_scheme = url.find("://").map_or(0, |i| i + 3);
    match url[after_scheme..].find('/') {
        Some(i) => &url[..after_scheme + i],
        None => url,
    }
}

/// 0.5 s doubling per attempt, at most 8 s, minus up to a quarter at random (openai-python's rule).
fn backoff(attempt: u32) -> Duration {
    let base = (0.5 * 2f64.powi(attempt.saturating_sub(1) as i32)).min(8.0);
    let jitter = 1.0 - 0.25 * rand::rng().random::<f64>();
    Duration::from_secs_f64(base * jitter)
}

/// `Retry-After` as seconds (`"2"`, `"1.5"`); an HTTP date is not parsed (rare on these APIs) and
/// falls back to the backoff.
fn parse_retry_after(v: &str) -> Option<Duration> {
    let secs: f64 = v.trim().parse().ok()?;
    (secs.is_finite() && secs >= 0.0).then(|| Duration::from_secs_f64(secs))
}

fn sleep_unless_cancelled(wait: Duration, cancel: &Cancel) -> Result<()> {
    let until = Instant::now() + wait;
    while Instant::now() < until {
        if cancel.load(Ordering::Relaxed) {
            return Err(Error::Interrupted);
        }
        std::thread::sleep((until - Instant::now()).min(Duration::from_millis(50)));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_and_backoff() {
        assert_eq!(parse_retry_after("2"), Some(Duration::from_secs(2)));
        assert_eq!(parse_retry_after(" 0.5 "), Some(Duration::from_millis(500)));
        assert_eq!(parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT"), None);
        assert!(backoff(1) <= Duration::from_millis(500) && backoff(1) >= Duration::from_millis(375));
        assert!(backoff(10) <= Duration::from_secs(8));
        assert_eq!(origin("http://127.0.0.1:8000/v1/chat/completions"), "http://127.0.0.1:8000");
    }
}
