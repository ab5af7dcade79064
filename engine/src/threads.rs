//! Thread pools for tensor work that are safe inside a Postgres backend.
//!
//! Postgres handles signals (SIGINT for cancel, SIGTERM, SIGUSR1 latches) in its main thread and its
//! handlers touch backend state. A signal delivered to one of our threads would run such a handler on
//! the wrong thread. Every pool thread therefore blocks all signals, from birth: the mask is set in
//! the spawning thread around the spawn (threads inherit it) and again in the start handler.

use crate::error::Result;

pub fn pool(threads: usize) -> Result<rayon::ThreadPool> {
    let _blocked = SignalsBlocked::new();
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads.max(1))
        .thread_name(|i| format!("distill-{i}"))
        .start_handler(|_| block_all_signals())
        .build()
        .map_err(|e| crate::error::Error::Io(std::io::Error::other(e.to_string())))
}

/// Makes rayon's global pool (used by any code that runs outside `pool.install`) signal-safe too.
/// Call before anything touches rayon; later calls do nothing.
pub fn init_global_pool(threads: usize) {
    let _blocked = SignalsBlocked::new();
    let _ = rayon::ThreadPoolBuilder::new()
        .num_threads(threads.max(1))
        .thread_name(|i| format!("distill-global-{i}"))
        .start_handler(|_| block_all_signals())
        .build_global();
}

/// A named OS thread that blocks all signals, for long engine work (training) driven from a backend
/// that must keep serving its own latch and signals meanwhile.
pub fn spawn<T: Send + 'static>(name: &str, f: impl FnOnce() -> T + Send + 'static) -> std::io::Result<std::thread::JoinHandle<T>> {
    let _blocked = SignalsBlocked::new();
    std::thread::Builder::new().name(name.into()).spawn(f)
}

fn block_all_signals() {
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigfillset(&mut set);
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
    }
}

/// Blocks all signals in the current thread until dropped, then restores the previous mask.
struct SignalsBlocked(libc::sigset_t);

impl SignalsBlocked {
    fn new() -> Self {
        unsafe {
            let mut all: libc::sigset_t = std::mem::zeroed();
            let mut old: libc::sigset_t = std::mem::zeroed();
            libc::sigfillset(&mut all);
            libc::pthread_sigmask(libc::SIG_BLOCK, &all, &mut old);
            Self(old)
        }
    }
}

impl Drop for SignalsBlocked {
    fn drop(&mut self) {
        unsafe {
            libc::pthread_sigmask(libc::SIG_SETMASK, &self.0, std::ptr::null_mut());
        }
    }
}
