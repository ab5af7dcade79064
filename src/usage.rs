//! Completion usage per model and role (calls, prompt and completion tokens, time), counted in shared
//! memory by every backend, as pg_stat_statements counts queries: writing a table row per call would
//! make `SELECT complete(...)` a writing query (no read replicas, no read-only transactions) and
//! serialise concurrent sessions on one row. Training usage needs no counters: the job registry has it.
//! The `distill.usage` view joins both. Counters start at zero when the server starts.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use pgrx::pg_shmem_init;
use pgrx::prelude::*;

use crate::pg::backend;
use crate::pg::shmem::USAGE;

/// Model/role pairs counted separately; past that, further pairs are counted under `(other)`.
const SLOTS: usize = 1024;
const NAME_BYTES: usize = 128;
const OTHER: &str = "(other)";

#[derive(Copy, Clone)]
struct Entry {
    name: [u8; NAME_BYTES],
    name_len: usize,
    role: u32,
    calls: u64,
    prompt_tokens: u64,
    completion_tokens: u64,
    micros: u64,
}

#[derive(Copy, Clone)]
pub struct UsageTable {
    used: usize,
    entries: [Entry; SLOTS],
}

impl UsageTable {
    fn new() -> Self {
        let empty = Entry {
            name: [0; NAME_BYTES],
            name_len: 0,
            role: 0,
            calls: 0,
            prompt_tokens: 0,
            completion_tokens: 0,
            micros: 0,
        };
        Self { used: 0, entries: [empty; SLOTS] }
    }

    fn slot(&mut self, name: &str, role: u32) -> &mut Entry {
        let name = truncate(name);
        let found =
            self.entries[..self.used].iter().position(|e| e.role == role && &e.name[..e.name_len] == name.as_bytes());
        let i = match found {
            Some(i) => i,
            // The last slot is kept for (other).
            None if self.used < SLOTS - 1 => {
                self.used += 1;
                self.used - 1
            }
            None => return self.other(),
        };
        let e = &mut self.entries[i];
        if e.name_len == 0 {
            e.name[..name.len()].copy_from_slice(name.as_bytes());
            e.name_len = name.len();
            e.role = role;
        }
        e
    }

    fn other(&mut self) -> &mut Entry {
        let e = &mut self.entries[SLOTS - 1];
        e.name[..OTHER.len()].copy_from_slice(OTHER.as_bytes());
        e.name_len = OTHER.len();
        e
    }
}

/// At most NAME_BYTES - 1 bytes, cut at a character boundary.
fn truncate(name: &str) -> &str {
    let mut end = name.len().min(NAME_BYTES - 1);
    while !name.is_char_boundary(end) {
        end -= 1;
    }
    &name[..end]
}

/// Set in the postmaster when the library is preloaded; backends inherit it through fork.
static COUNTING: AtomicBool = AtomicBool::new(false);

/// Called from `_PG_init` while `shared_preload_libraries` loads (shared memory is requested then only).
pub fn init() {
    pg_shmem_init!(USAGE = UsageTable::new());
    COUNTING.store(true, Ordering::Relaxed);
}

/// Counts one completion call by the current role. Only ever called on the backend's main thread.
pub fn record(model: &str, prompt_tokens: usize, completion_tokens: usize, elapsed: Duration) {
    if !COUNTING.load(Ordering::Relaxed) {
        return;
    }
    let role = backend::current_user().to_u32();
    let mut table = USAGE.exclusive();
    let e = table.slot(model, role);
    e.calls += 1;
    e.prompt_tokens += prompt_tokens as u64;
    e.completion_tokens += completion_tokens as u64;
    e.micros += elapsed.as_micros() as u64;
}

/// The counters the current role may see: its own and those of roles it has the privileges of
/// (all, for a superuser). Used by the `distill.usage` view.
#[pg_extern(volatile, parallel_safe)]
fn completion_usage() -> TableIterator<
    'static,
    (
        name!(model, String),
        name!(role, pg_sys::Oid),
        name!(calls, i64),
        name!(prompt_tokens, i64),
        name!(completion_tokens, i64),
        name!(seconds, f64),
    ),
> {
    if !COUNTING.load(Ordering::Relaxed) {
        crate::errors::report_sql(
            PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
            "completion usage is counted only when pg_distill is in shared_preload_libraries",
            Some("Add pg_distill to shared_preload_libraries in postgresql.conf and restart the server."),
        );
    }
    let me = backend::current_user();
    let rows: Vec<Entry> = {
        let table = USAGE.share();
        table.entries[..table.used]
            .iter()
            .chain(table.entries[SLOTS - 1..].iter().filter(|e| e.calls > 0))
            .copied()
            .collect()
    };
    let rows: Vec<_> = rows
        .into_iter()
        .filter(|e| backend::has_privs_of_role(me, pg_sys::Oid::from(e.role)))
        .map(|e| {
            (
                String::from_utf8_lossy(&e.name[..e.name_len]).into_owned(),
                pg_sys::Oid::from(e.role),
                e.calls as i64,
                e.prompt_tokens as i64,
                e.completion_tokens as i64,
                e.micros as f64 / 1e6,
            )
        })
        .collect();
    TableIterator::new(rows)
}

/// Zeroes the completion counters (superusers only, like pg_stat_statements_reset()).
#[pg_extern(volatile)]
fn reset_usage() {
    if !backend::is_superuser() {
        crate::errors::report_sql(
            PgSqlErrorCode::ERRCODE_INSUFFICIENT_PRIVILEGE,
            "only a superuser may reset usage counters",
            None,
        );
    }
    if COUNTING.load(Ordering::Relaxed) {
        *USAGE.exclusive() = UsageTable::new();
    }
}
