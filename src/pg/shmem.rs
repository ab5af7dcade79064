//! Shared memory of the extension: the completion-usage counters (`usage.rs`) and the model threads
//! in use (`thread_budget.rs`), each under its own LWLock.

use pgrx::{PGRXSharedMemory, PgLwLock};

use crate::thread_budget::ThreadTable;
use crate::usage::UsageTable;

// SAFETY: plain old data (counters and fixed-size names, no pointers), so it means the same in every
// process that maps the segment.
unsafe impl PGRXSharedMemory for UsageTable {}

// SAFETY: the lock is initialised in shared memory by pg_shmem_init! in _PG_init (usage::init), before
// any use; nothing reads it when the library was not preloaded (usage.rs checks COUNTING first).
pub static USAGE: PgLwLock<UsageTable> = unsafe { PgLwLock::new(c"pg_distill_usage") };

// SAFETY: plain old data (process ids and counts).
unsafe impl PGRXSharedMemory for ThreadTable {}

// SAFETY: initialised by pg_shmem_init! in _PG_init (thread_budget::init) before any use; nothing reads
// it when the library was not preloaded (thread_budget.rs checks COUNTING first).
pub static THREADS: PgLwLock<ThreadTable> = unsafe { PgLwLock::new(c"pg_distill_threads") };
