//! Why a fine-tuning job, or one step of it in the worker, failed: its message (what DESCRIBE shows,
//! with the HINT when there is one) and its SQLSTATE, kept from the ERROR or engine error it came from,
//! so a cancelled query (57014), a privilege revoked before the job ran (42501) or a limit (54000)
//! stay what they were. DESCRIBE shows the code as `data.error_sqlstate`.

use pgrx::pg_sys::panic::CaughtError;
use pgrx::PgSqlErrorCode;

#[derive(Debug, Clone, PartialEq)]
pub struct JobError {
    pub code: PgSqlErrorCode,
    pub message: String,
}

impl JobError {
    pub fn new(code: PgSqlErrorCode, message: impl Into<String>) -> Self {
        Self { code, message: message.into() }
    }

    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(PgSqlErrorCode::ERRCODE_INTERNAL_ERROR, message)
    }

    /// The five-character SQLSTATE, e.g. `57014`.
    pub fn sqlstate(&self) -> String {
        sqlstate(self.code)
    }
}

/// PostgreSQL's MAKE_SQLSTATE undone: five 6-bit characters, offset from '0'.
pub fn sqlstate(code: PgSqlErrorCode) -> String {
    let packed = code as isize as u32;
    (0..5).map(|i| (((packed >> (6 * i)) & 0x3F) as u8 + b'0') as char).collect()
}

impl std::fmt::Display for JobError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl From<distill_engine::Error> for JobError {
    fn from(e: distill_engine::Error) -> Self {
        let message = match e.hint() {
            Some(h) => format!("{e} (hint: {h})"),
            None => e.to_string(),
        };
        Self::new(crate::errors::code_of(&e), message)
    }
}

impl From<&CaughtError> for JobError {
    fn from(e: &CaughtError) -> Self {
        let r = match e {
            CaughtError::PostgresError(r) | CaughtError::ErrorReport(r) => r,
            CaughtError::RustPanic { ereport, .. } => ereport,
        };
        let message = match r.hint() {
            Some(h) => format!("{} (hint: {h})", r.message()),
            None => r.message().to_string(),
        };
        Self::new(r.sql_error_code(), message)
    }
}

impl From<pgrx::spi::SpiError> for JobError {
    fn from(e: pgrx::spi::SpiError) -> Self {
        Self::internal(e.to_string())
    }
}

#[cfg(any(test, feature = "pg_test"))]
#[pgrx::pg_schema]
mod tests {
    use pgrx::prelude::*;
    use pgrx::PgSqlErrorCode::*;

    #[pg_test]
    fn sqlstates_are_unpacked() {
        assert_eq!(super::sqlstate(ERRCODE_QUERY_CANCELED), "57014");
        assert_eq!(super::sqlstate(ERRCODE_INSUFFICIENT_PRIVILEGE), "42501");
        assert_eq!(super::sqlstate(ERRCODE_INTERNAL_ERROR), "XX000");
        let e: super::JobError = distill_engine::Error::PromptTooLong { tokens: 9, context: 8 }.into();
        assert_eq!((e.sqlstate().as_str(), e.message.contains("(hint: ")), ("54000", true));
    }
}
