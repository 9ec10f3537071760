//! Following a draining worker with a progress bar: the rows synced, the queue, and why it
//! waits; shared by `push` and `demo`.

use std::time::{Duration, Instant, SystemTime};

use d1_sync::{SyncWorker, WorkerState};
use indicatif::ProgressBar;

use crate::error::CliError;

/// Waits for `worker.flush()` while updating `bar` a few times a second (stats count the
/// queue, which walks it: more often is wasted). Stops with an error when the worker pauses
/// (the target refuses the credentials, or the registry disagrees with the queue), or, with `give_up_after`, when it made no progress
/// for that long while backing off or standing by.
pub async fn follow(
    worker: &SyncWorker,
    bar: &ProgressBar,
    total: u64,
    target: &str,
    give_up_after: Option<Duration>,
) -> Result<(), CliError> {
    let mut last_progress = Instant::now();
    let mut last_synced = 0;
    let mut flush = Box::pin(worker.flush());
    loop {
        tokio::select! {
            r = &mut flush => return r.map_err(CliError::from),
            _ = tokio::time::sleep(Duration::from_millis(250)) => {}
        }
        let s = worker.stats().await?;
        bar.set_position(s.records_synced.min(total));
        bar.set_message(waiting(&s.state, s.queue.pending));
        if s.records_synced != last_synced {
            last_synced = s.records_synced;
            last_progress = Instant::now();
        }
        let stalled = give_up_after.is_some_and(|g| last_progress.elapsed() > g);
        match &s.state {
            WorkerState::Paused { reason, .. } => {
                return Err(CliError::Failed(format!(
                    "the worker paused, sending nothing to {target}: {reason}"
                )));
            }
            WorkerState::Standby { holder } if stalled => {
                return Err(CliError::Failed(format!(
                    "another worker ({holder}) is sending this outbox; stop it, or wait for its lease to run out"
                )));
            }
            WorkerState::BackingOff { reason, .. } if stalled => {
                return Err(CliError::Failed(format!(
                    "gave up after {} s without progress: {reason}",
                    give_up_after.map_or(0, |g| g.as_secs())
                )));
            }
            _ => {}
        }
    }
}

/// The progress line's message: the queue, and why the worker waits, if it does.
fn waiting(state: &WorkerState, pending: u64) -> String {
    match state {
        WorkerState::BackingOff { until, reason } => format!(
            "queue {pending}; waiting {} s after: {reason}",
            until
                .duration_since(SystemTime::now())
                .map_or(0, |d| d.as_secs() + 1)
        ),
        WorkerState::Standby { holder } => {
            format!("queue {pending}; waiting for worker {holder}, which holds the queue")
        }
        _ => format!("queue {pending}"),
    }
}
