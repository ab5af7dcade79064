//! A transaction of the worker's own, outside any query: started, committed, or aborted on ERROR.

use std::panic::AssertUnwindSafe;

use pgrx::pg_sys;
use pgrx::PgTryBuilder;

use crate::job_error::JobError;
use crate::pg::elevated::Elevated;

/// Runs `f` in a transaction of its own and commits it, under [`Elevated::worker`] (a fixed
/// search_path; settings changed inside are rolled back). An ERROR (or a Rust panic) inside aborts the
/// transaction and comes back as a [`JobError`] with its SQLSTATE, so the worker lives on.
pub fn transaction<R>(f: impl FnOnce() -> R) -> Result<R, JobError> {
    // SAFETY: the worker's main thread, between transactions: starts one with a snapshot for SPI.
    unsafe {
        pg_sys::SetCurrentStatementStartTimestamp();
        pg_sys::StartTransactionCommand();
        pg_sys::PushActiveSnapshot(pg_sys::GetTransactionSnapshot());
    }
    PgTryBuilder::new(AssertUnwindSafe(move || {
        let r = {
            let _settings = Elevated::worker();
            f()
        };
        // SAFETY: pops the snapshot pushed above and commits the transaction started above.
        unsafe {
            pg_sys::PopActiveSnapshot();
            pg_sys::CommitTransactionCommand();
        }
        Ok(r)
    }))
    .catch_others(|e| {
        // SAFETY: the ERROR left the transaction started above in an aborted state; end it.
        unsafe { pg_sys::AbortCurrentTransaction() };
        Err(JobError::from(&e))
    })
    .execute()
}
