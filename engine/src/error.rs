//! One error type for the whole engine; the SQL layer maps it to Postgres errors (with hints).

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("model \"{name}\" not found in {dir}")]
    ModelNotFound { name: String, dir: PathBuf, hint: String },

    #[error("invalid model name \"{0}\": {1}")]
    InvalidModelName(String, String),

    #[error("could not fetch \"{repo}\" from the Hugging Face Hub: {reason}")]
    HubUnavailable { repo: String, reason: String },

    #[error("cannot read model file {path}: {reason}")]
    BadModelFile { path: PathBuf, reason: String },

    #[error("cannot download into the model directory {dir}: {reason}")]
    ModelDirNotWritable { dir: PathBuf, reason: String },

    #[error("unsupported model: {0}")]
    Unsupported(String),

    /// The device a setting asks for cannot run models here (`device.rs` says why).
    #[error("{0}")]
    DeviceUnavailable(String),

    #[error("tokenizer: {0}")]
    Tokenizer(String),

    #[error("chat template: {0}")]
    Template(String),

    #[error("{0}")]
    InvalidInput(String),

    #[error("{0}")]
    PermissionDenied(String),

    #[error("may not download \"{repo}\" from the Hugging Face Hub: {reason}")]
    DownloadDenied { repo: String, reason: String },

    #[error("prompt is too long: {tokens} tokens, the model's context holds {context}")]
    PromptTooLong { tokens: usize, context: usize },

    /// A structured reply (`response_format`) reached max_tokens before it was complete.
    #[error(
        "the reply reached max_tokens ({max_tokens}) before it completed its response_format; raise max_tokens (the reply so far: {partial})"
    )]
    ReplyIncomplete { max_tokens: usize, partial: String },

    /// A request to an endpoint failed (after its retries); `detail` never holds the API key.
    #[error("endpoint \"{endpoint}\": {detail}")]
    Endpoint { endpoint: String, detail: String, kind: EndpointFailure },

    /// [`crate::interrupt::request`] was called (the query was cancelled) while this work ran.
    #[error("interrupted")]
    Interrupted,

    #[error("tensor computation failed: {0}")]
    Candle(#[from] candle_core::Error),

    #[error("io: {0}")]
    Io(#[from] std::io::Error),
}

impl Error {
    /// A hint for the user on how to fix the problem, when there is one.
    pub fn hint(&self) -> Option<String> {
        match self {
            Error::ModelNotFound { hint, .. } => Some(hint.clone()),
            Error::HubUnavailable { .. } => Some(
                "Without internet access, download the model's .gguf file elsewhere and copy it into \
                 distill.model_dir (SHOW distill.model_dir;), then call it by its file name without .gguf."
                    .into(),
            ),
            Error::PromptTooLong { .. } => Some("Shorten the prompt or lower max_tokens.".into()),
            Error::ModelDirNotWritable { .. } => Some(
                "Make distill.model_dir writable by the database server's OS user (and give it free space), \
                 or copy the .gguf file in by hand."
                    .into(),
            ),
            Error::DownloadDenied { .. } => Some(
                "Ask a superuser to run it once (the file is then cached for everyone), or to copy the .gguf file into distill.model_dir."
                    .into(),
            ),
            Error::Endpoint { endpoint, kind, .. } => match kind {
                EndpointFailure::Http(401 | 403) => Some(format!(
                    "Check the endpoint's API key; its owner can set a new one: SELECT distill.alter_endpoint('{endpoint}', '{{\"api_key\": \"...\"}}');"
                )),
                EndpointFailure::Http(429) => {
                    Some("The server is rate limiting: lower max_in_flight, or raise max_retries on the endpoint.".into())
                }
                EndpointFailure::Timeout => Some(format!(
                    "Raise the endpoint's timeout: SELECT distill.alter_endpoint('{endpoint}', '{{\"timeout\": 300}}');"
                )),
                _ => None,
            },
            Error::PermissionDenied(_) => {
                Some("The model's owner can share it: SELECT distill.grant_model('model', 'role');".into())
            }
            _ => None,
        }
    }
}

/// How a request to an endpoint failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EndpointFailure {
    /// No connection, or it was lost before a reply.
    Unreachable,
    /// No (complete) reply within the timeout.
    Timeout,
    /// The server answered with this status.
    Http(u16),
    /// A 200 whose body is not a chat completion.
    BadReply,
}

impl From<tokenizers::Error> for Error {
    fn from(e: tokenizers::Error) -> Self {
        Error::Tokenizer(e.to_string())
    }
}

impl From<minijinja::Error> for Error {
    fn from(e: minijinja::Error) -> Self {
        // `{:#}` includes the template line that failed, which is what a user fixing a template needs.
        Error::Template(format!("{e:#}"))
    }
}

pub type Result<T> = std::result::Result<T, Error>;
