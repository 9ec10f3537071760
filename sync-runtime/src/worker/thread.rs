//! The queue connection's own thread: every call a worker makes on its queue connection runs
//! on one long-lived thread, in the order the calls were made.
//!
//! Claims, packing, journal writes and acknowledgements used to run on tokio's blocking pool,
//! which hands each call to whichever of its threads is free. With glibc's allocator every
//! thread that allocates gets an arena of its own, and each arena keeps the pages its freed
//! batches leave behind: draining a large backlog grew the process by one batch's worth of
//! memory per pool thread. On one thread, a batch's memory is reused by the next batch.
//! The calls lose no parallelism: they share one connection, behind one lock, anyway.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::mpsc;

use crate::error::{Error, Result};

type Job = Box<dyn FnOnce() + Send>;

/// A thread that runs closures one at a time; it ends when its handle is dropped.
pub(super) struct QueueThread {
    jobs: mpsc::Sender<Job>,
}

impl QueueThread {
    /// Starts the thread.
    pub(super) fn spawn() -> Result<QueueThread> {
        let (jobs, rx) = mpsc::channel::<Job>();
        std::thread::Builder::new()
            .name("d1-sync-queue".into())
            .spawn(move || {
                for job in rx {
                    job();
                }
            })
            .map_err(|e| Error::Task(format!("could not start the queue thread: {e}")))?;
        Ok(QueueThread { jobs })
    }

    /// Runs `f` on the thread and waits for its result without blocking the runtime. A panic
    /// in `f` is an [`Error::Task`], and the thread goes on with the next call.
    pub(super) async fn run<R, F>(&self, f: F) -> Result<R>
    where
        R: Send + 'static,
        F: FnOnce() -> R + Send + 'static,
    {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.jobs
            .send(Box::new(move || {
                if let Ok(r) = catch_unwind(AssertUnwindSafe(f)) {
                    let _ = tx.send(r);
                }
            }))
            .map_err(|_| Error::Task("the queue thread has stopped".into()))?;
        rx.await
            .map_err(|_| Error::Task("a call on the queue thread panicked".into()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn calls_run_in_order_on_one_thread_and_a_panic_is_an_error() {
        let t = QueueThread::spawn().unwrap();
        let first = t.run(|| std::thread::current().id()).await.unwrap();
        let panicked = t.run(|| -> u8 { panic!("boom") }).await;
        assert!(matches!(panicked, Err(Error::Task(_))), "{panicked:?}");
        let second = t.run(|| std::thread::current().id()).await.unwrap();
        assert_eq!(first, second, "the thread survives a panic");
        assert_ne!(first, std::thread::current().id());
    }
}
