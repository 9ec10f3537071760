//! The background loop: ticks until cancelled, waking on `notify` or the poll interval, and
//! backing off or pausing after failures.
//!
//! The worker's backoff grows only while nothing is acknowledged: a failure right after an
//! acknowledged request starts again from the first step of the backoff, so a steady fault
//! rate never climbs to the cap while requests keep getting through.

use std::sync::Arc;
use std::time::SystemTime;

use tokio_util::sync::CancellationToken;
use tokio_util::task::AbortOnDropHandle;
use tracing::{error, info, warn};

use super::ship::{self, TickEnd};
use super::{db, lock, Inner};
use crate::error::Error;
use crate::stats::WorkerState;
use crate::target::TargetError;

pub(super) async fn run(inner: Arc<Inner>, cancel: CancellationToken) {
    info!(target_db = %inner.target.describe(), owner = %inner.owner, "d1-sync worker started");
    let mut st = inner.ship.lock().await;
    // The target gets ready beside the first read of the queue, not after it; the first
    // request waits for it (see `ship::tick`), and it stops with the loop.
    let target = inner.target.clone();
    st.preparing = Some(AbortOnDropHandle::new(tokio::spawn(async move {
        target.prepare().await
    })));
    // Transient failures since the last acknowledgement.
    let mut failures: u32 = 0;
    let mut wake: Option<tokio::time::Instant> = None;
    let mut hold = false;
    loop {
        if let Some(at) = wake {
            tokio::select! {
                biased;
                _ = cancel.cancelled() => break,
                _ = inner.notify.notified(), if !hold => {}
                _ = tokio::time::sleep_until(at) => {}
            }
        }
        if cancel.is_cancelled() {
            break;
        }
        let mut number = 0;
        inner.ticks.send_modify(|t| {
            t.begun += 1;
            number = t.begun;
        });
        let end = ship::tick(&inner, &mut st, true).await;
        let now = tokio::time::Instant::now();
        match end {
            TickEnd::Idle => {
                hold = false;
                lock(&inner.live).state = WorkerState::Running;
                inner.ticks.send_modify(|t| t.last_idle = number);
                wake = Some(now + inner.config.poll_interval);
            }
            TickEnd::Progress { acked } => {
                if acked {
                    failures = 0;
                }
                hold = false;
                lock(&inner.live).state = WorkerState::Running;
                wake = None;
            }
            TickEnd::Standby(holder) => {
                hold = false;
                lock(&inner.live).state = WorkerState::Standby { holder };
                wake = Some(now + inner.config.poll_interval);
            }
            TickEnd::Local(e @ Error::DefinitionMismatch { .. }) => {
                // A registry that disagrees with the queue stays so until the app is fixed.
                let delay = inner.config.pause;
                let reason = e.to_string();
                wait_out(&inner, &reason, delay, true);
                error!(error = %reason, pause_ms = delay.as_millis() as u64, "d1-sync paused: the registry disagrees with the queue; nothing is sent or dead-lettered");
                hold = true;
                wake = Some(now + delay);
            }
            TickEnd::Local(e) => {
                failures = failures.saturating_add(1);
                let delay = inner.config.backoff.delay(failures, &mut rand::rng(), None);
                let reason = format!("local queue: {e}");
                wait_out(&inner, &reason, delay, false);
                error!(error = %reason, delay_ms = delay.as_millis() as u64, "d1-sync backing off: the local queue failed");
                hold = true;
                wake = Some(now + delay);
            }
            TickEnd::Failed(e) => {
                failures = failures.saturating_add(1);
                let (delay, paused) = match &e {
                    TargetError::Auth { .. }
                    | TargetError::Config { .. }
                    | TargetError::MissingMigrations(_) => (inner.config.pause, true),
                    TargetError::RateLimited { retry_after, .. } => (
                        inner
                            .config
                            .backoff
                            .delay(failures, &mut rand::rng(), *retry_after),
                        false,
                    ),
                    _ => (
                        inner.config.backoff.delay(failures, &mut rand::rng(), None),
                        false,
                    ),
                };
                let reason = e.to_string();
                wait_out(&inner, &reason, delay, paused);
                if paused {
                    error!(error = %reason, pause_ms = delay.as_millis() as u64, "d1-sync paused: the target refused the request; nothing is dead-lettered");
                } else {
                    warn!(error = %reason, delay_ms = delay.as_millis() as u64, failures, "d1-sync backing off");
                }
                hold = true;
                wake = Some(now + delay);
            }
        }
    }
    st.settle().await;
    let owner = inner.owner.clone();
    if let Err(e) = db(&inner, move |o, c| o.release_lease(c, &owner)).await {
        warn!(error = %e, "could not release the queue's lease; it runs out by itself");
    }
    lock(&inner.live).state = WorkerState::Stopped;
    inner.ticks.send_modify(|t| t.stopped = true);
    info!("d1-sync worker stopped");
}

/// Records in the worker's live state that it waits `delay` for `reason`: paused (nothing is
/// wrong with the records; the cause must go) or backing off.
fn wait_out(inner: &Inner, reason: &str, delay: std::time::Duration, paused: bool) {
    let until = SystemTime::now() + delay;
    let reason = reason.to_string();
    let mut live = lock(&inner.live);
    live.last_error = Some(reason.clone());
    live.state = if paused {
        WorkerState::Paused { until, reason }
    } else {
        WorkerState::BackingOff { until, reason }
    };
}
