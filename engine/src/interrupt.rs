//! Cancelling engine work from outside: a Postgres backend cannot unwind out of a long generation or
//! scoring loop when the user presses ^C, so those loops ask here between steps (once per token or
//! per forward pass) and stop with [`Error::Interrupted`] once someone has asked them to.
//!
//! One flag per process: a backend runs one query at a time, and [`crate::threads::run_watched`]
//! clears the flag before and after each call it watches.

use std::sync::atomic::{AtomicBool, Ordering};

use crate::error::{Error, Result};

static REQUESTED: AtomicBool = AtomicBool::new(false);

/// Asks all engine work in this process to stop at its next check.
pub fn request() {
    REQUESTED.store(true, Ordering::SeqCst);
}

/// Lets engine work run again.
pub fn clear() {
    REQUESTED.store(false, Ordering::SeqCst);
}

pub fn requested() -> bool {
    REQUESTED.load(Ordering::Relaxed)
}

/// `Err(Error::Interrupted)` once [`request`] was called (and not yet cleared).
pub fn check() -> Result<()> {
    if requested() {
        Err(Error::Interrupted)
    } else {
        Ok(())
    }
}
