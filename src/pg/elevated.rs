//! The one place that changes the current user: [`Elevated`], an RAII guard.
//!
//! Code that runs with more rights than its caller (registry SQL as the tables' owner, the worker's
//! own SQL as the bootstrap superuser) must not run anything the caller put on its `search_path`, and
//! code that runs a job's query as its owner must not let that query change anything that outlives it
//! (a `set_config(..., false)` of `search_path` would otherwise hijack the worker's next statement).
//! Each guard therefore opens its own GUC nest level, sets `search_path` in it, and on drop rolls
//! back *every* setting changed inside (`AtEOXact_GUC(false, ...)`, as PostgreSQL does after REFRESH
//! MATERIALIZED VIEW and VACUUM run user code) and restores the user id and security context. Drop
//! runs on unwind too, so an ERROR raised inside (a Rust panic here) restores everything before the
//! transaction's own abort.

use std::ffi::{CStr, CString};

use pgrx::pg_sys;
use pgrx::PgSqlErrorCode::*;

use crate::errors::report_sql;

/// The search path of every elevated section: nothing a user can create in comes before pg_catalog,
/// and pg_temp (never searched for functions or operators) comes last.
pub const SAFE_SEARCH_PATH: &CStr = c"pg_catalog, pg_temp";

#[must_use = "the identity and settings are restored when the guard is dropped"]
pub struct Elevated {
    user: pg_sys::Oid,
    context: i32,
    nest_level: i32,
    read_only: bool,
}

impl Elevated {
    /// As the owner of the registry tables, with [`SAFE_SEARCH_PATH`]: for functions that check the
    /// caller's rights themselves and then read or write the private tables, like SECURITY DEFINER.
    pub fn registry_owner() -> Self {
        let guard = Self::enter(SAFE_SEARCH_PATH);
        let owner = super::spi_select::select_one::<pg_sys::Oid>(
            "SELECT c.relowner FROM pg_catalog.pg_class c \
             WHERE c.oid OPERATOR(pg_catalog.=) pg_catalog.to_regclass('distill.job_registry')",
            &[],
        )
        .ok()
        .flatten()
        .unwrap_or_else(|| report_sql(ERRCODE_UNDEFINED_TABLE, "the pg_distill registry tables are missing", None));
        guard.become_user(owner, pg_sys::SECURITY_LOCAL_USERID_CHANGE);
        guard
    }

    /// As `role`, in a security-restricted operation (no SET ROLE back, no temp tables, no
    /// deferred triggers) and a read-only transaction, with the role's own `search_path`: how the
    /// worker reads a job's rows. Every setting the role's query changes is rolled back on drop.
    pub fn job_owner(role: pg_sys::Oid, search_path: &str) -> Self {
        let path = CString::new(search_path).unwrap_or_else(|_| {
            report_sql(ERRCODE_INVALID_PARAMETER_VALUE, "the job's search_path contains a NUL byte", None)
        });
        let guard = Self::enter(&path);
        guard.become_user(role, pg_sys::SECURITY_LOCAL_USERID_CHANGE | pg_sys::SECURITY_RESTRICTED_OPERATION);
        // SAFETY: XactReadOnly is the backend's own transaction flag, main thread; restored on drop.
        unsafe { pg_sys::XactReadOnly = true };
        guard
    }

    /// The worker's own SQL: same user (the bootstrap superuser), [`SAFE_SEARCH_PATH`], and whatever
    /// a statement inside changes rolled back on drop.
    pub fn worker() -> Self {
        Self::enter(SAFE_SEARCH_PATH)
    }

    fn enter(search_path: &CStr) -> Self {
        let (mut user, mut context) = (pg_sys::Oid::INVALID, 0i32);
        // SAFETY: plain reads of the backend's current user and GUC nesting; main thread, inside a
        // transaction (every caller runs SQL).
        let guard = unsafe {
            pg_sys::GetUserIdAndSecContext(&mut user, &mut context);
            Elevated { user, context, nest_level: pg_sys::NewGUCNestLevel(), read_only: pg_sys::XactReadOnly }
        };
        // SAFETY: both strings are NUL-terminated and live across the call; GUC_ACTION_SAVE ties the
        // value to this nest level, which the guard pops on drop (also if this call raises an ERROR).
        unsafe {
            pg_sys::set_config_option(
                c"search_path".as_ptr(),
                search_path.as_ptr(),
                if pg_sys::superuser() { pg_sys::GucContext::PGC_SUSET } else { pg_sys::GucContext::PGC_USERSET },
                pg_sys::GucSource::PGC_S_SESSION,
                pg_sys::GucAction::GUC_ACTION_SAVE,
                true,
                pgrx::PgLogLevel::ERROR as i32,
                false,
            );
        }
        guard
    }

    fn become_user(&self, role: pg_sys::Oid, flags: u32) {
        // SAFETY: sets the backend's current user id; the previous one is restored on drop.
        unsafe { pg_sys::SetUserIdAndSecContext(role, self.context | flags as i32) };
    }
}

impl Drop for Elevated {
    fn drop(&mut self) {
        // SAFETY: pops the nest level this guard pushed (false: roll back every change made in it,
        // not only the search_path set above), then restores what `enter` read.
        unsafe {
            pg_sys::AtEOXact_GUC(false, self.nest_level);
            pg_sys::SetUserIdAndSecContext(self.user, self.context);
            pg_sys::XactReadOnly = self.read_only;
        }
    }
}
