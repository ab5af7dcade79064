//! Thread pools for tensor work that are safe inside a Postgres backend.
//!
//! Postgres handles signals (SIGINT for cancel, SIGTERM, SIGUSR1 latches) in its main thread and its
//! handlers touch backend state. A signal delivered to one of our threads would run such a handler on
//! the wrong thread. Every pool thread therefore blocks all signals, from birth: the mask is set in
//! the spawning thread around the spawn (threads inherit it) and again in the start handler.

use std::sync::mpsc::{self, RecvTimeoutError};
use std::time::Duration;

use crate::error::Result;
use crate::interrupt;

pub fn pool(threads: usize) -> Result<rayon::ThreadPool> {
    let _blocked = SignalsBlocked::new();
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads.max(1))
        .thread_name(|i| format!("distill-{i}"))
        .start_handler(|_| block_all_signals())
        .build()
        .map_err(|e| crate::error::Error::Io(std::io::Error::other(e.to_string())))
}

/// A [`pool`] kept for reuse and remade only when a caller is granted another number of threads
/// (`distill.max_threads` grants each call what is left; the old pool's threads exit when dropped).
#[derive(Default)]
pub struct SizedPool(Option<(usize, std::sync::Arc<rayon::ThreadPool>)>);

impl SizedPool {
    pub fn of_size(&mut self, threads: usize) -> Result<std::sync::Arc<rayon::ThreadPool>> {
        match &self.0 {
            Some((n, pool)) if *n == threads => Ok(pool.clone()),
            _ => {
                let pool = std::sync::Arc::new(self::pool(threads)?);
                self.0 = Some((threads, pool.clone()));
                Ok(pool)
            }
        }
    }

    /// The pool last made, if any.
    pub fn current(&self) -> Option<std::sync::Arc<rayon::ThreadPool>> {
        self.0.as_ref().map(|(_, pool)| pool.clone())
    }
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
pub fn spawn<T: Send + 'static>(
    name: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> std::io::Result<std::thread::JoinHandle<T>> {
    let _blocked = SignalsBlocked::new();
    std::thread::Builder::new().name(name.into()).spawn(f)
}

/// Runs `work` on a signal-blocked thread while the calling thread (a backend's main thread, which
/// owns the signal handlers) watches `stop`, e.g. Postgres's `QueryCancelPending`: every 50 ms
/// without a result it asks `stop`, and the first time `stop` says yes it calls
/// [`interrupt::request`], which the engine's loops see at their next step (they then return
/// [`Error::Interrupted`](crate::error::Error::Interrupted)). A result that comes sooner is returned
/// at once. The interrupt flag is clear before `work` starts and after this returns. `work` may use
/// a rayon pool (`pool.install`) as usual. A panic in `work` resumes on the calling thread.
pub fn run_watched<R: Send>(work: impl FnOnce() -> R + Send, mut stop: impl FnMut() -> bool) -> R {
    /// Clears the flag however this returns (a panic included), so the next call starts clean.
    struct ClearOnDrop;
    impl Drop for ClearOnDrop {
        fn drop(&mut self) {
            interrupt::clear();
        }
    }
    interrupt::clear();
    let _clear = ClearOnDrop;
    let (done_tx, done_rx) = mpsc::channel::<()>();
    // Borrowed by the thread, so that `work` is still here when no thread can be started.
    let slot = parking_lot::Mutex::new(Some(work));
    let slot = &slot;
    std::thread::scope(|scope| {
        let spawned = {
            let _blocked = SignalsBlocked::new();
            // The stack of a backend's main thread rather than a spawned thread's 2 MiB: `work` renders
            // chat templates (recursive) before it reaches the pool.
            std::thread::Builder::new().name("distill-watched".into()).stack_size(8 << 20).spawn_scoped(
                scope,
                move || {
                    let work = slot.lock().take().expect("the work runs once");
                    let result = work();
                    // Dropping the sender without sending also wakes the watcher (when `work` panics).
                    let _ = done_tx.send(());
                    result
                },
            )
        };
        let handle = match spawned {
            Ok(h) => h,
            // No thread to be had (a resource limit): run here, unwatched, as without this function.
            Err(_) => return slot.lock().take().expect("the thread never started")(),
        };
        let mut asked = false;
        loop {
            match done_rx.recv_timeout(Duration::from_millis(50)) {
                Ok(()) | Err(RecvTimeoutError::Disconnected) => break,
                Err(RecvTimeoutError::Timeout) => {
                    if !asked && stop() {
                        interrupt::request();
                        asked = true;
                    }
                }
            }
        }
        match handle.join() {
            Ok(result) => result,
            Err(panic) => std::panic::resume_unwind(panic),
        }
    })
}

fn block_all_signals() {
    // SAFETY: fills a local signal set and changes this thread's own mask.
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
        // SAFETY: local signal sets; changes this thread's own mask, saving the old one for drop.
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
        // SAFETY: restores the mask saved by new() on this same thread.
        unsafe {
            libc::pthread_sigmask(libc::SIG_SETMASK, &self.0, std::ptr::null_mut());
        }
    }
}

/// A pointer into a buffer whose disjoint parts parallel tasks write (the one such type in the engine:
/// kernels, training ops and attention share it). Each write through it says, at its `unsafe`, why no
/// two tasks touch the same element.
#[derive(Clone, Copy)]
pub(crate) struct SendPtr<T>(pub(crate) *mut T);
// SAFETY: tasks only write disjoint elements through the pointer, and the buffer's owner waits for all
// of them (a rayon parallel iterator or scope) before it reads, moves or frees the buffer.
unsafe impl<T> Send for SendPtr<T> {}
// SAFETY: as for Send: shared references only ever write disjoint elements.
unsafe impl<T> Sync for SendPtr<T> {}

/// Hands memory that the allocator holds freed back to the system (glibc keeps freed pages in each
/// thread's arena and the heap). A backend that served a model otherwise keeps the peak of its last
/// call (activations, caches of finished prompts) for the rest of its life; with many sessions that
/// is most of what each one costs once the weights are shared. A few hundred microseconds.
pub fn release_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only returns free memory to the system; it is thread-safe in glibc.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// True while process `pid` exists (signal 0 checks without sending anything).
pub fn process_alive(pid: i32) -> bool {
    // SAFETY: kill with signal 0 sends nothing; it only reports whether the process exists.
    let r = unsafe { libc::kill(pid, 0) };
    r == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}
