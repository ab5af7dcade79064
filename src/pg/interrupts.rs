//! Interrupts seen from code that must not raise them yet.
//!
//! `CHECK_FOR_INTERRUPTS()` raises an ERROR (a longjmp, here a Rust panic) on the thread that calls
//! it. While an engine thread computes, the backend's main thread only *reads* the flags Postgres's
//! signal handlers set (query cancel, `statement_timeout`, termination), tells the engine to stop,
//! waits for it, and only then lets `check_for_interrupts!` raise the ERROR.

use std::time::Duration;

use pgrx::pg_sys;

/// Whether a query cancel (Ctrl-C, pg_cancel_backend, statement_timeout) or termination is pending.
pub fn cancel_pending() -> bool {
    // SAFETY: volatile reads of sig_atomic_t flags that signal handlers write; main thread.
    unsafe {
        std::ptr::read_volatile(&raw const pg_sys::QueryCancelPending) != 0
            || std::ptr::read_volatile(&raw const pg_sys::ProcDiePending) != 0
    }
}

/// Forgets a query cancel that arrived for a statement that is over (the worker's job query was
/// cancelled just as it finished): the worker's next statement must not fail for it.
pub fn forget_query_cancel() {
    // SAFETY: a volatile write of the flag the SIGINT handler sets; main thread. InterruptPending
    // stays set, so the next CHECK_FOR_INTERRUPTS still looks at every other flag.
    unsafe { std::ptr::write_volatile(&raw mut pg_sys::QueryCancelPending, 0) };
}

/// Sleeps on the process latch up to `timeout`, or until it is set, or exits if the postmaster died.
/// Unlike pgrx's `BackgroundWorker::wait_latch`, raises nothing: a stray query cancel between two of
/// the worker's transactions must not become an ERROR outside any transaction, which kills a worker.
pub fn wait_latch(timeout: Duration) {
    // SAFETY: MyLatch is this process's latch; main thread.
    unsafe {
        pg_sys::WaitLatch(
            pg_sys::MyLatch,
            (pg_sys::WL_LATCH_SET | pg_sys::WL_TIMEOUT | pg_sys::WL_EXIT_ON_PM_DEATH) as i32,
            timeout.as_millis().min(i32::MAX as u128) as _,
            pg_sys::PG_WAIT_EXTENSION,
        );
        pg_sys::ResetLatch(pg_sys::MyLatch);
    }
}
