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
    /// Threads held by live processes other than `me`; entries of dead processes are cleared.
    fn others(&mut self, me: i32) -> usize {
        let mut total = 0;
        for e in self.entries.iter_mut().filter(|e| e.threads > 0 && e.pid != me) {
            if distill_engine::threads::process_alive(e.pid) {
                total += e.threads as usize;
            } else {
                *e = Entry::default();
            }
        }
        total
    }

    fn slot(&mut self, me: i32) -> Option<&mut Entry> {
        let i = self.entries.iter().position(|e| e.pid == me && e.threads > 0);
        let i = i.or_else(|| self.entries.iter().position(|e| e.threads == 0))?;
        Some(&mut self.entries[i])
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
            let me = unsafe { pg_sys::MyProcPid };
            if let Some(e) = THREADS.exclusive().entries.iter_mut().find(|e| e.pid == me) {
                *e = Entry::default();
            }
        }
    }
}

/// Up to `want` threads for one call: `want` less what exceeds `distill.max_threads` with the threads
/// other processes hold now, and at least one. Only on the backend's main thread (it takes an LWLock).
pub fn reserve(want: usize) -> Reservation {
    let want = want.max(1);
    if !COUNTING.load(Ordering::Relaxed) {
        return Reservation { threads: want, counted: false };
    }
    // SAFETY: as in Drop.
    let me = unsafe { pg_sys::MyProcPid };
    let mut table = THREADS.exclusive();
    let threads = want.min(guc::max_threads().saturating_sub(table.others(me))).max(1);
    match table.slot(me) {
        Some(e) => {
            *e = Entry { pid: me, threads: threads as u32 };
            Reservation { threads, counted: true }
        }
        None => Reservation { threads: 1, counted: false },
    }
}

/// Threads held by every process now.
#[cfg_attr(not(any(test, feature = "pg_test")), allow(dead_code))]
pub fn in_use() -> usize {
    if !COUNTING.load(Ordering::Relaxed) {
        return 0;
    }
    THREADS.exclusive().others(0)
}

#[cfg(any(test, feature = "pg_test"))]
#[pgrx::pg_schema]
mod tests {
    use super::*;
    use pgrx::prelude::*;

    fn hold(pid: i32, threads: u32) {
        let mut table = THREADS.exclusive();
        let e = table.entries.iter_mut().find(|e| e.threads == 0).expect("a free entry");
        *e = Entry { pid, threads };
    }

    fn clear(pid: i32) {
        for e in THREADS.exclusive().entries.iter_mut().filter(|e| e.pid == pid) {
            *e = Entry::default();
        }
    }

    /// Threads this backend's entry holds.
    fn mine() -> u32 {
        // SAFETY: set for the life of the process.
        let me = unsafe { pg_sys::MyProcPid };
        THREADS.exclusive().entries.iter().filter(|e| e.pid == me).map(|e| e.threads).sum()
    }

    #[pg_test]
    fn calls_share_the_cap_and_dead_holders_are_reclaimed() {
        let cap = guc::max_threads();
        assert!(COUNTING.load(Ordering::Relaxed), "the tests preload pg_distill");
        // Alone (no other process computes in the test server): what it asks for, up to the cap.
        let r = reserve(cap + 5);
        assert_eq!(r.threads(), cap);
        assert_eq!(mine() as usize, cap, "counted while held");
        drop(r);
        assert_eq!(mine(), 0, "given back when dropped");
        assert_eq!(in_use(), 0);

        // A live process (the postmaster stands in for a busy session) holds all of them: one thread;
        // holding one, the rest.
        // SAFETY: set for the life of the server.
        let postmaster = unsafe { pg_sys::PostmasterPid };
        hold(postmaster, cap as u32);
        assert_eq!(in_use(), cap);
        assert_eq!(reserve(cap).threads(), 1, "never fewer than one");
        clear(postmaster);
        if cap >= 2 {
            hold(postmaster, 1);
            assert_eq!(reserve(cap).threads(), cap - 1);
            clear(postmaster);
        }

        // A process that is gone (exited without giving its threads back) is not counted, and its
        // entry is cleared.
        let mut child = std::process::Command::new("true").spawn().expect("spawn true");
        let dead = child.id() as i32;
        child.wait().expect("wait");
        hold(dead, 64);
        assert_eq!(reserve(cap).threads(), cap);
        assert!(THREADS.exclusive().entries.iter().all(|e| e.pid != dead || e.threads == 0));
    }
}
