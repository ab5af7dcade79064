//! Engine errors as Postgres errors, each with its SQLSTATE and, where the engine has one, a HINT.

use distill_engine::{EndpointFailure, Error};
use pgrx::{PgLogLevel, PgSqlErrorCode};

pub trait OrReport<T> {
    /// The value, or an ERROR raised in the calling backend.
    fn or_report(self) -> T;
}

impl<T> OrReport<T> for distill_engine::Result<T> {
    fn or_report(self) -> T {
        match self {
            Ok(v) => v,
            Err(e) => report(e),
        }
    }
}

/// The SQLSTATE an engine error is reported with.
pub fn code_of(e: &Error) -> PgSqlErrorCode {
    use PgSqlErrorCode::*;
    match e {
        Error::ModelNotFound { .. } => ERRCODE_UNDEFINED_OBJECT,
        Error::InvalidModelName(..) | Error::InvalidInput(_) | Error::ReplyIncomplete { .. } => {
            ERRCODE_INVALID_PARAMETER_VALUE
        }
        Error::PermissionDenied(_) | Error::DownloadDenied { .. } => ERRCODE_INSUFFICIENT_PRIVILEGE,
        Error::PromptTooLong { .. } => ERRCODE_PROGRAM_LIMIT_EXCEEDED,
        Error::HubUnavailable { .. } => ERRCODE_CONNECTION_FAILURE,
        Error::BadModelFile { .. } => ERRCODE_DATA_CORRUPTED,
        Error::Unsupported(_) | Error::DeviceUnavailable(_) => ERRCODE_FEATURE_NOT_SUPPORTED,
        Error::Tokenizer(_) | Error::Template(_) => ERRCODE_DATA_EXCEPTION,
        Error::Io(_) => ERRCODE_IO_ERROR,
        Error::ModelDirNotWritable { .. } => ERRCODE_INSUFFICIENT_RESOURCES,
        Error::Candle(_) => ERRCODE_INTERNAL_ERROR,
        Error::Interrupted => ERRCODE_QUERY_CANCELED,
        Error::Endpoint { kind, .. } => match kind {
            EndpointFailure::Unreachable | EndpointFailure::Timeout => ERRCODE_CONNECTION_FAILURE,
            EndpointFailure::Http(401 | 403) => ERRCODE_INVALID_AUTHORIZATION_SPECIFICATION,
            EndpointFailure::Http(_) | EndpointFailure::BadReply => ERRCODE_EXTERNAL_ROUTINE_EXCEPTION,
        },
    }
}

pub fn report(e: Error) -> ! {
    let code = code_of(&e);
    let (message, hint) = (e.to_string(), e.hint());
    // distill.model_dir is a superuser-only setting: other roles learn a model is missing, not where
    // the server keeps its files.
    let dir = match crate::pg::backend::is_superuser() {
        true => String::new(),
        false => crate::guc::model_dir().display().to_string(),
    };
    let hide = |s: &str| if dir.is_empty() { s.to_string() } else { s.replace(&dir, "distill.model_dir") };
    report_sql(code, &hide(&message), hint.map(|h| hide(&h)).as_deref())
}

/// An ERROR with this SQLSTATE, message and optional HINT.
pub fn report_sql(code: PgSqlErrorCode, message: &str, hint: Option<&str>) -> ! {
    let mut report = pgrx::pg_sys::panic::ErrorReport::new(code, message.to_string(), "pg_distill");
    if let Some(hint) = hint {
        report = report.set_hint(hint);
    }
    report.report(PgLogLevel::ERROR);
    unreachable!("ERROR does not return")
}

/// On a hot standby, an ERROR saying `what` writes and belongs on the primary; models still answer
/// there (complete, evaluate, count_tokens, the views), since they only read the registry.
pub fn refuse_on_standby(what: &str) {
    if crate::pg::backend::hot_standby() {
        report_sql(
            PgSqlErrorCode::ERRCODE_READ_ONLY_SQL_TRANSACTION,
            &format!("read-only: {what} changes the registry, and this server is a hot standby; run it on the primary"),
            Some("complete(), evaluate(), count_tokens() and the views work on a standby; writes replicate from the primary."),
        );
    }
}

/// An ERROR for bad SQL-level input.
pub fn invalid(message: impl Into<String>) -> ! {
    report(Error::InvalidInput(message.into()))
}
