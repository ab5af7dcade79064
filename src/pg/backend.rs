//! Safe reads and writes of this backend's own state: who is running, what it may do, what
//! pg_stat_activity shows, and the worker's process life. Every function runs on the backend's main
//! thread (the only thread that may call into Postgres; see `distill_engine::threads`).

use std::ffi::{CStr, CString};

use pgrx::pg_sys;

/// The current user (`GetUserId()`: the role privileges are checked against, SECURITY DEFINER aware).
pub fn current_user() -> pg_sys::Oid {
    // SAFETY: a read of the backend's current user id; main thread.
    unsafe { pg_sys::GetUserId() }
}

/// Whether the current user is a superuser.
pub fn is_superuser() -> bool {
    // SAFETY: a catalog-cache lookup of the current user; main thread, in a transaction.
    unsafe { pg_sys::superuser() }
}

/// Whether `member` has the privileges of `role` (is it, inherits from it, or is a superuser).
pub fn has_privs_of_role(member: pg_sys::Oid, role: pg_sys::Oid) -> bool {
    // SAFETY: role membership lookups in the catalog cache; main thread, in a transaction.
    unsafe { pg_sys::has_privs_of_role(member, role) }
}

/// Whether this server is a hot standby (in recovery): it answers reads only.
pub fn hot_standby() -> bool {
    // SAFETY: reads the shared recovery state; main thread.
    unsafe { pg_sys::RecoveryInProgress() }
}

/// Runs `f` under a new snapshot (at READ COMMITTED, one that sees every commit so far): for a loop
/// that polls the registry with read-only reads, which otherwise see the statement's snapshot.
pub fn with_fresh_snapshot<R>(f: impl FnOnce() -> R) -> R {
    struct Pop;
    impl Drop for Pop {
        fn drop(&mut self) {
            // SAFETY: pops the snapshot pushed below, also when `f` raises an ERROR (unwinding).
            unsafe { pg_sys::PopActiveSnapshot() };
        }
    }
    // SAFETY: main thread, in a transaction; GetTransactionSnapshot returns a registered snapshot
    // that PushActiveSnapshot copies, and Pop removes it again.
    unsafe { pg_sys::PushActiveSnapshot(pg_sys::GetTransactionSnapshot()) };
    let _pop = Pop;
    f()
}

/// Whether the current transaction runs at REPEATABLE READ or SERIALIZABLE.
pub fn repeatable_read_or_stricter() -> bool {
    // SAFETY: a read of the backend's transaction isolation level; main thread.
    unsafe { pg_sys::XactIsoLevel >= pg_sys::XACT_REPEATABLE_READ as i32 }
}

/// True while the postmaster loads `shared_preload_libraries` (the only time shared memory and
/// background workers can be requested).
pub fn preloading_libraries() -> bool {
    // SAFETY: a read of a flag the postmaster sets while it loads preloaded libraries.
    unsafe { pg_sys::process_shared_preload_libraries_in_progress }
}

/// The installation's share directory (`pg_config --sharedir`, relocated with the binaries).
pub fn share_dir() -> String {
    let mut buf = [0 as std::ffi::c_char; pg_sys::MAXPGPATH as usize];
    // SAFETY: my_exec_path is set at backend start; get_share_path writes at most MAXPGPATH bytes,
    // NUL-terminated.
    unsafe {
        pg_sys::get_share_path(std::ptr::addr_of!(pg_sys::my_exec_path) as *const _, buf.as_mut_ptr());
        CStr::from_ptr(buf.as_ptr()).to_string_lossy().into_owned()
    }
}

/// What pg_stat_activity shows for this process.
pub fn report_activity(state: pg_sys::BackendState::Type, text: &str) {
    let c = CString::new(text).unwrap_or_default();
    // SAFETY: copies the string into this backend's activity slot; main thread.
    unsafe { pg_sys::pgstat_report_activity(state, c.as_ptr()) };
}

/// True once the postmaster asked this process to exit (SIGTERM).
pub fn shutdown_requested() -> bool {
    // SAFETY: a volatile read of a flag the SIGTERM handler sets; main thread.
    unsafe { std::ptr::read_volatile(&raw const pg_sys::ShutdownRequestPending) != 0 }
}

/// Rereads postgresql.conf, as any backend does on SIGHUP.
pub fn reload_config() {
    // SAFETY: main thread, between transactions, as a backend does it on SIGHUP.
    unsafe { pg_sys::ProcessConfigFile(pg_sys::GucContext::PGC_SIGHUP) };
}

/// Ends a background worker with exit code 1: the postmaster starts it again if it is still running
/// (e.g. after pg_terminate_backend); at shutdown nothing is restarted.
pub fn exit_worker() -> ! {
    // SAFETY: ends this process the way Postgres ends a worker; the caller has nothing left to drop.
    unsafe { pg_sys::proc_exit(1) }
}
