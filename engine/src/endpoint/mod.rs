//! Endpoints: OpenAI-compatible chat-completions servers (OpenAI, vLLM, llama.cpp's server, Ollama,
//! LiteLLM, ...) used as models, the teachers of distillation.
//!
//! `settings.rs` the options an endpoint is registered with, `openai.rs` the request and reply
//! bodies, `client.rs` one call (timeouts, retries with backoff honouring `Retry-After`, errors that
//! never show the key), `in_flight.rs` many calls at once on their own threads.
//!
//! Every request runs on a thread of its own (signals blocked, nothing of Postgres on it): the
//! calling backend's main thread keeps servicing query cancel while it waits, and abandons a request
//! it no longer wants (the thread ends at the request's own timeout).

mod client;
mod in_flight;
mod openai;
mod settings;

pub use client::{call, tokenize, CallStats, Cancel};
pub use in_flight::{Answer, InFlight, Next};
pub use openai::{ChatReply, ChatRequest};
pub use settings::{EndpointSettings, ResponseFormatStyle};

/// An endpoint as a call needs it: where, which model, the key (never printed) and the settings.
#[derive(Clone)]
pub struct Endpoint {
    /// The name it was registered under (what `complete()` is called with); appears in errors.
    pub name: String,
    /// Up to and including the API version, e.g. `https://api.openai.com/v1`; `/chat/completions` is
    /// appended.
    pub base_url: String,
    /// The server's model id, sent as `"model"`.
    pub model: String,
    pub api_key: Option<Secret>,
    pub settings: EndpointSettings,
}

/// An API key: its Debug and Display never show it, and [`Secret::redact`] takes it out of any text
/// a server sends back (OpenAI's 401 repeats the key it was given).
#[derive(Clone)]
pub struct Secret(String);

impl Secret {
    pub fn new(key: String) -> Option<Self> {
        let key = key.trim().to_string();
        (!key.is_empty()).then_some(Self(key))
    }

    pub(crate) fn expose(&self) -> &str {
        &self.0
    }

    /// `text` with every occurrence of the key, and of its first and last halves when they are long
    /// enough to identify it, replaced by `[redacted]`.
    pub fn redact(&self, text: &str) -> String {
        let mut out = text.replace(&self.0, "[redacted]");
        let half = self.0.len() / 2;
        if half >= 8 && self.0.is_char_boundary(half) {
            out = out.replace(&self.0[..half], "[redacted]").replace(&self.0[half..], "[redacted]");
        }
        out
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret([redacted])")
    }
}

impl Endpoint {
    /// `text` with the key taken out (see [`Secret::redact`]).
    pub fn redact(&self, text: &str) -> String {
        match &self.api_key {
            Some(k) => k.redact(text),
            None => text.to_string(),
        }
    }

    /// Checks what can be checked without a request: an http(s) URL with a host, a model id.
    pub fn validate(&self) -> crate::Result<()> {
        let bad = |m: String| Err(crate::Error::InvalidInput(m));
        let url = self.base_url.as_str();
        let rest = url.strip_prefix("https://").or_else(|| url.strip_prefix("http://"));
        match rest {
            None => return bad(format!("base_url must start with http:// or https://, got \"{url}\"")),
            Some(r) if r.is_empty() || r.starts_with('/') => return bad(format!("base_url has no host: \"{url}\"")),
            Some(_) => {}
        }
        if url.len() > 2048 || url.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return bad("base_url must be one URL of at most 2048 characters without spaces".into());
        }
        if self.model.trim().is_empty() || self.model.len() > 256 {
            return bad("the endpoint's model id must be 1 to 256 characters".into());
        }
        self.settings.validate()
    }
}
