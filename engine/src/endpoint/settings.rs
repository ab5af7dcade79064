//! The options an endpoint is registered with (`create_endpoint(..., options)`), with their defaults
//! and limits. Unknown keys are errors: a misspelt `timout` must not silently keep the default.

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EndpointSettings {
    /// Seconds to open the connection (DNS, TCP, TLS).
    pub connect_timeout: f64,
    /// Seconds one attempt may take in all, from sending the request to the reply's last byte.
    pub timeout: f64,
    /// Further attempts after a 408, 409, 429, 5xx, a timeout or a lost connection (0 = none).
    pub max_retries: u32,
    /// Requests `complete_rows` keeps in flight at once, unless its own options say.
    pub max_in_flight: usize,
    /// How a JSON schema `response_format` is sent (servers disagree).
    pub response_format_style: ResponseFormatStyle,
    /// A URL that counts tokens (`POST {"model", "input"}` → `{"tokens": [...]}`, as
    /// llama-cpp-python's `/extras/tokenize`); without it `count_tokens()` on the endpoint is an error.
    pub tokenize_url: Option<String>,
    /// Fields added to every chat request, for what a server offers beyond OpenAI's API (llama.cpp's
    /// `repeat_penalty`, vLLM's `guided_regex`, ...); they may not replace `model` or `messages`.
    pub extra_body: Option<serde_json::Map<String, serde_json::Value>>,
    /// The API key is the value of this environment variable of the database server (superusers only).
    pub api_key_env: Option<String>,
    /// The API key is the contents of this file on the database server (superusers only).
    pub api_key_file: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ResponseFormatStyle {
    /// OpenAI's `{"type": "json_schema", "json_schema": {"name", "schema", "strict"}}` (OpenAI, vLLM,
    /// Ollama, LiteLLM).
    JsonSchema,
    /// `{"type": "json_object", "schema": ...}` (llama-cpp-python's server).
    JsonObject,
}

impl Default for EndpointSettings {
    fn default() -> Self {
        Self {
            connect_timeout: 10.0,
            timeout: 120.0,
            max_retries: 2,
            max_in_flight: 8,
            response_format_style: ResponseFormatStyle::JsonSchema,
            tokenize_url: None,
            extra_body: None,
            api_key_env: None,
            api_key_file: None,
        }
    }
}

/// Most requests in flight from one call: each is a thread and a connection.
pub const MAX_IN_FLIGHT: usize = 64;

impl EndpointSettings {
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(Error::InvalidInput(m));
        if !(self.connect_timeout > 0.0 && self.connect_timeout <= 300.0) {
            return bad(format!("connect_timeout must be in (0, 300] seconds, got {}", self.connect_timeout));
        }
        if !(self.timeout > 0.0 && self.timeout <= 3600.0) {
            return bad(format!("timeout must be in (0, 3600] seconds, got {}", self.timeout));
        }
        if self.max_retries > 10 {
            return bad(format!("max_retries must be at most 10, got {}", self.max_retries));
        }
        if self.max_in_flight == 0 || self.max_in_flight > MAX_IN_FLIGHT {
            return bad(format!("max_in_flight must be 1 to {MAX_IN_FLIGHT}, got {}", self.max_in_flight));
        }
        if let Some(u) = &self.tokenize_url {
            if !(u.starts_with("http://") || u.starts_with("https://")) {
                return bad(format!("tokenize_url must start with http:// or https://, got \"{u}\""));
            }
        }
        if let Some(extra) = &self.extra_body {
            if let Some(k) = extra.keys().find(|k| matches!(k.as_str(), "model" | "messages" | "stream")) {
                return bad(format!("extra_body may not set \"{k}\""));
            }
            if serde_json::to_string(extra).map_or(0, |s| s.len()) > 16 * 1024 {
                return bad("extra_body is larger than 16 kB".into());
            }
        }
        if self.api_key_env.is_some() && self.api_key_file.is_some() {
            return bad("give at most one of api_key_env and api_key_file".into());
        }
        Ok(())
    }
}
