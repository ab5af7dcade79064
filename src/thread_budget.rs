//! `distill.max_threads`: the threads that models compute with, counted across every backend and
//! worker of the server in shared memory, so that N sessions running models at once do not start
//! N x cores threads. A call reserves threads for as long as it runs ([`reserve`]) and gets what is
//! left under the cap, never fewer than one (a session always has its own process, as a query does):
//! sessions that run models at the same time share the cores instead of each assuming it has them all.
//!
//! Entries are keyed by process id. One whose process is gone (a backend that exited by FATAL
//! without dropping its [`Reservation`]) is reclaimed by the next reservation that looks.

use std::sync::atomic::{AtomicBool, Ordering};

use pgrx::{pg_guard, pg_shmem_init, pg_sys};

use crate::guc;
use crate::pg::shmem::THREADS;

/// Processes that can hold threads at once; beyond that a call runs on one thread, uncounted.
const SLOTS: usize = 1024;

#[derive(Clone, Copy)]
pub struct ThreadTable {
    entries: [Entry; SLOTS],
}

#[derive(Clone, Copy, Default)]
struct Entry {
    pid: i32,
    threads: u32,
}

impl Default for ThreadTable {
    fn default() -> Self {
        Self { entries: [Entry::default(); SLOTS] }
    }
}

impl ThreadTable {
    /// Threads held by processes other than `me` that are `alive`; entries of dead ones are cleared.
    fn others(&mut self, me: i32, alive: &dyn Fn(i32) -> bool) -> usize {
        let mut total = 0;
        for e in self.entries.iter_mut().filter(|e| e.threads > 0 && e.pid != me) {
            if alive(e.pid) {
                total += e.threads as usize;
            } else {
                *e = Entry::default();
            }
        }
        total
    }

    /// Records `me` holding up to `want` threads under `cap` beside the others (at least one); None
    /// when the table is full (the caller then runs on one thread, uncounted).
    fn grant(&mut self, me: i32, want: usize, cap: usize, alive: &dyn Fn(i32) -> bool) -> Option<usize> {
        let threads = want.max(1).min(cap.saturating_sub(self.others(me, alive))).max(1);
        let i = self.entries.iter().position(|e| e.pid == me && e.threads > 0);
        let i = i.or_else(|| self.entries.iter().position(|e| e.threads == 0))?;
        self.entries[i] = Entry { pid: me, threads: threads as u32 };
        Some(threads)
    }

    fn release(&mut self, me: i32) {
        for e in self.entries.iter_mut().filter(|e| e.pid == me) {
            *e = Entry::default();
        }
    }
}

/// Set in the postmaster when the library is preloaded (shared memory exists); backends inherit it.
static COUNTING: AtomicBool = AtomicBool::new(false);

/// Called from `_PG_init` while `shared_preload_libraries` loads.
pub fn init() {
    pg_shmem_init!(THREADS = ThreadTable::default());
    COUNTING.store(true, Ordering::Relaxed);
}

/// Threads reserved for one call; given back when dropped.
pub struct Reservation {
    threads: usize,
    counted: bool,
}

impl Reservation {
    pub fn threads(&self) -> usize {
        self.threads
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if self.counted {
            // SAFETY: MyProcPid is set for the life of the process; read on its main thread.
            THREADS.exclusive().release(unsafe { pg_sys::MyProcPid });
        }
    }
}

/// Up to `want` threads for one call: `want` less what exceeds `distill.max_threads` with the threads
/// other processes hold now, and at least one. Only on the backend's main thread (it takes an LWLock).
pub fn reserve(want: usize) -> Reservation {
    if !COUNTING.load(Ordering::Relaxed) {
        return Reservation { threads: want.max(1), counted: false };
    }
    // SAFETY: as in Drop.
    let me = unsafe { pg_sys::MyProcPid };
    let alive = distill_engine::threads::process_alive;
    match THREADS.exclusive().grant(me, want, guc::max_threads(), &alive) {
        Some(threads) => Reservation { threads, counted: true },
        None => Reservation { threads: 1, counted: false },
    }
}

/// Threads held by every live process now.
#[cfg_attr(not(any(test, feature = "pg_test")), allow(dead_code))]
pub fn in_use() -> usize {
    if !COUNTING.load(Ordering::Relaxed) {
        return 0;
    }
    THREADS.exclusive().others(0, &distill_engine::threads::process_alive)
}

#[cfg(any(test, feature = "pg_test"))]
#[pgrx::pg_schema]
mod tests {
    use super::*;
    use pgrx::prelude::*;

    #[pg_test]
    fn calls_share_the_cap_and_dead_holders_are_reclaimed() {
        // The accounting on a table of its own: other tests' backends use the shared one meanwhile.
        let mut t = ThreadTable::default();
        let (alive, dead) = (|pid: i32| pid != 13, 13);
        assert_eq!(t.grant(1, 8, 4, &alive), Some(4), "alone: what it asks, up to the cap");
        assert_eq!(t.grant(2, 8, 4, &alive), Some(1), "the cap taken: never fewer than one");
        t.release(1);
        assert_eq!(t.grant(3, 2, 4, &alive), Some(2), "given back, then taken by another");
        assert_eq!(t.grant(2, 8, 4, &alive), Some(2), "a holder's next call counts the others, not itself");
        t.release(2);
        t.release(3);
        assert_eq!(t.grant(dead, 4, 4, &|_| true), Some(4));
        assert_eq!(t.grant(4, 4, 4, &alive), Some(4), "a process that exited holding threads is not counted");
        assert!(t.entries.iter().all(|e| e.pid != dead), "and its entry is cleared");
        let mut full = ThreadTable { entries: [Entry { pid: 99, threads: 1 }; SLOTS] };
        assert_eq!(full.grant(5, 4, 4096, &|_| true), None, "a full table: the caller runs uncounted");

        // The shared table: this backend's reservation is recorded while held and cleared when dropped.
        assert!(COUNTING.load(Ordering::Relaxed), "the tests preload pg_distill");
        // SAFETY: set for the life of the process.
        let me = unsafe { pg_sys::MyProcPid };
        let mine =
            || THREADS.exclusive().entries.iter().filter(|e| e.pid == me).map(|e| e.threads as usize).sum::<usize>();
        let r = reserve(guc::max_threads() + 5);
        assert!((1..=guc::max_threads()).contains(&r.threads()));
        assert_eq!(mine(), r.threads());
        assert!(in_use() >= r.threads());
        drop(r);
        assert_eq!(mine(), 0);
    }
}
