//! Many requests to one endpoint, `n` at a time: a batch of rows labelled by a teacher spends most of
//! its time waiting on the network, so one connection per worker thread keeps the server busy.
//!
//! The caller polls [`InFlight::next`] with a short wait (a backend's main thread checks for cancel
//! between polls). Dropping an `InFlight` cancels what has not been sent; requests already in flight
//! finish on their threads (bounded by the request timeout) and their answers are thrown away.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;

use super::client::{call, CallStats, Cancel};
use super::openai::{ChatReply, ChatRequest};
use super::Endpoint;
use crate::error::Result;

pub type Answer = (usize, Result<(ChatReply, CallStats)>);

pub struct InFlight {
    results: Receiver<Answer>,
    cancel: Cancel,
    pending: usize,
}

/// What [`InFlight::next`] found.
pub enum Next {
    Answer(Answer),
    /// Nothing finished within the wait.
    Waiting,
    /// Every request has been answered.
    Done,
}

impl InFlight {
    /// Starts `n` worker threads (signals blocked) that send `requests` in order, each answered by its
    /// index.
    pub fn start(endpoint: Endpoint, requests: Vec<ChatRequest>, n: usize) -> std::io::Result<Self> {
        let pending = requests.len();
        let queue: Arc<Mutex<VecDeque<(usize, ChatRequest)>>> =
            Arc::new(Mutex::new(requests.into_iter().enumerate().collect()));
        let cancel: Cancel = Arc::new(AtomicBool::new(false));
        let endpoint = Arc::new(endpoint);
        let (tx, results) = mpsc::channel();
        for i in 0..n.clamp(1, pending.max(1)) {
            let (queue, cancel, endpoint, tx) = (queue.clone(), cancel.clone(), endpoint.clone(), tx.clone());
            crate::threads::spawn(&format!("distill-http-{i}"), move || loop {
                if cancel.load(Ordering::Relaxed) {
                    return;
                }
                let Some((index, request)) = queue.lock().pop_front() else { return };
                let answer = call(&endpoint, &request, &cancel);
                if tx.send((index, answer)).is_err() {
                    return;
                }
            })?;
        }
        Ok(Self { results, cancel, pending })
    }

    /// The next answer, waiting at most `wait`.
    pub fn next(&mut self, wait: Duration) -> Next {
        if self.pending == 0 {
            return Next::Done;
        }
        match self.results.recv_timeout(wait) {
            Ok(answer) => {
                self.pending -= 1;
                Next::Answer(answer)
            }
            Err(RecvTimeoutError::Timeout) => Next::Waiting,
            // Every worker gone with answers missing: only when a worker panicked.
            Err(RecvTimeoutError::Disconnected) => {
                self.pending = 0;
                Next::Done
            }
        }
    }

    /// Requests not yet answered.
    pub fn pending(&self) -> usize {
        self.pending
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.cancel.store(true, Ordering::Relaxed);
    }
}
