//! The bodies of OpenAI's chat-completions API: the request built from our options, the reply and
//! the error a server sends back.

use serde_json::{json, Map, Value};

use super::settings::ResponseFormatStyle;
use crate::error::{Error, Result};
use crate::formats::chat_template::Message;
use crate::infer::generation::{FinishReason, GenerateOptions};
use crate::infer::structured::ResponseFormat;

/// One chat completion to ask for.
#[derive(Clone)]
pub struct ChatRequest {
    pub messages: Vec<Message>,
    pub opts: GenerateOptions,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ChatReply {
    pub text: String,
    /// From the server's `usage`; 0 when it sends none.
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
    pub finish_reason: FinishReason,
}

/// OpenAI allows at most 4 stop strings.
const MAX_STOP: usize = 4;

impl ChatRequest {
    /// The JSON body for `model`. Greedy (temperature 0) is sent as such; the seed always, so that
    /// servers that honour it sample reproducibly.
    pub fn body(&self, model: &str, style: ResponseFormatStyle) -> Result<Value> {
        let o = &self.opts;
        let messages: Vec<Value> =
            self.messages.iter().map(|m| json!({"role": m.role, "content": m.content})).collect();
        let mut body = Map::new();
        body.insert("model".into(), json!(model));
        body.insert("messages".into(), Value::Array(messages));
        body.insert("max_tokens".into(), json!(o.max_tokens));
        body.insert("temperature".into(), json!(o.temperature));
        if let Some(p) = o.top_p {
            body.insert("top_p".into(), json!(p));
        }
        body.insert("seed".into(), json!(o.seed));
        if !o.stop.is_empty() {
            if o.stop.len() > MAX_STOP {
                return Err(Error::InvalidInput(format!(
                    "an endpoint takes at most {MAX_STOP} stop strings (OpenAI's limit), got {}",
                    o.stop.len()
                )));
            }
            body.insert("stop".into(), json!(o.stop));
        }
        match &o.response_format {
            None => {}
            Some(ResponseFormat::Json { schema }) => {
                let schema = match schema {
                    None => json!({"type": "object"}),
                    // A schema given as text (to keep its key order) is sent as the JSON it holds.
                    Some(Value::String(text)) => serde_json::from_str(text)
                        .map_err(|e| Error::InvalidInput(format!("response_format schema is not valid JSON: {e}")))?,
                    Some(s) => s.clone(),
                };
                let format = match style {
                    ResponseFormatStyle::JsonSchema => {
                        json!({"type": "json_schema", "json_schema": {"name": "reply", "schema": schema, "strict": true}})
                    }
                    ResponseFormatStyle::JsonObject => json!({"type": "json_object", "schema": schema}),
                };
                body.insert("response_format".into(), format);
            }
            Some(ResponseFormat::Regex { .. }) => {
                return Err(Error::InvalidInput(
                    "an endpoint takes no regex response_format (OpenAI's API has none); use a JSON schema".into(),
                ))
            }
        }
        Ok(Value::Object(body))
    }
}

/// The reply in a 200's body; `None` says what is wrong with it.
pub fn parse_reply(body: &str) -> std::result::Result<ChatReply, String> {
    let v: Value = serde_json::from_str(body).map_err(|e| format!("the reply is not valid JSON ({e})"))?;
    let choice = v.get("choices").and_then(|c| c.get(0)).ok_or("the reply has no \"choices\"")?;
    let text = choice
        .get("message")
        .and_then(|m| m.get("content"))
        .and_then(Value::as_str)
        .ok_or("the reply's first choice has no message content")?;
    let finish_reason = match choice.get("finish_reason").and_then(Value::as_str) {
        Some("length") => FinishReason::Length,
        _ => FinishReason::Stop,
    };
    let count = |k: &str| v.get("usage").and_then(|u| u.get(k)).and_then(Value::as_u64).unwrap_or(0) as usize;
    Ok(ChatReply {
        text: text.to_string(),
        prompt_tokens: count("prompt_tokens"),
        completion_tokens: count("completion_tokens"),
        finish_reason,
    })
}

/// The message in an error body: OpenAI's `{"error": {"message"}}`, FastAPI's `{"detail"}`, or the
/// text itself, cut to 300 characters.
pub fn error_message(body: &str) -> String {
    let v: Option<Value> = serde_json::from_str(body).ok();
    let m = v.as_ref().and_then(|v| {
        v.get("error")
            .and_then(|e| {
                e.get("message").and_then(Value::as_str).map(str::to_string).or_else(|| e.as_str().map(str::to_string))
            })
            .or_else(|| v.get("detail").map(|d| d.as_str().map_or_else(|| d.to_string(), str::to_string)))
            .or_else(|| v.get("message").and_then(Value::as_str).map(str::to_string))
    });
    let m = m.unwrap_or_else(|| body.trim().to_string());
    let cut: String = m.chars().take(300).collect();
    if cut.len() < m.len() {
        format!("{cut}...")
    } else {
        cut
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replies_and_errors_parse() {
        let r = parse_reply(
            r#"{"choices":[{"message":{"role":"assistant","content":"Hi"},"finish_reason":"length"}],"usage":{"prompt_tokens":5,"completion_tokens":1}}"#,
        )
        .unwrap();
        assert_eq!((r.text.as_str(), r.prompt_tokens, r.completion_tokens), ("Hi", 5, 1));
        assert_eq!(r.finish_reason, FinishReason::Length);
        assert!(parse_reply(r#"{"choices": [{"message": "#).unwrap_err().starts_with("the reply is not valid JSON"));
        assert_eq!(parse_reply(r#"{"object": "x"}"#).unwrap_err(), "the reply has no \"choices\"");
        assert_eq!(error_message(r#"{"error": {"message": "Rate limit reached"}}"#), "Rate limit reached");
        assert_eq!(error_message(r#"{"detail": "Not Found"}"#), "Not Found");
        assert_eq!(error_message("Bad Gateway\n"), "Bad Gateway");
    }

    #[test]
    fn request_body_carries_the_options() {
        let req = ChatRequest {
            messages: vec![Message::user("Hi")],
            opts: GenerateOptions { max_tokens: 7, stop: vec!["\n".into()], ..Default::default() },
        };
        let b = req.body("gpt", ResponseFormatStyle::JsonSchema).unwrap();
        assert_eq!(b["model"], "gpt");
        assert_eq!(b["max_tokens"], 7);
        assert_eq!(b["temperature"], 0.0);
        assert_eq!(b["stop"], json!(["\n"]));
        assert_eq!(b["messages"], json!([{"role": "user", "content": "Hi"}]));
    }
}
