//! What a worker reports about itself.

use std::time::{Duration, SystemTime};

use crate::outbox::Counts;

/// What the worker is doing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WorkerState {
    /// Not started, or shut down.
    Stopped,
    /// Draining or waiting for work.
    Running,
    /// Waiting after a transient failure (network, 5xx, 429) before trying again.
    BackingOff {
        /// When it tries again.
        until: SystemTime,
        /// Why.
        reason: String,
    },
    /// Another worker (another process, or another worker on this file) holds the queue's
    /// lease and sends it; this one waits to take over.
    Standby {
        /// The lease holder's id.
        holder: String,
    },
    /// Stopped sending until `until` because the target refused the credentials or the
    /// configuration; nothing is dead-lettered meanwhile. Fix the token or settings.
    Paused {
        /// When it tries again.
        until: SystemTime,
        /// Why.
        reason: String,
    },
}

/// A snapshot of a worker and its queue.
#[derive(Debug, Clone)]
pub struct Stats {
    /// What the worker is doing.
    pub state: WorkerState,
    /// Queue counts by status.
    pub queue: Counts,
    /// Age of the oldest record not yet synced.
    pub oldest_pending_age: Option<Duration>,
    /// When the target last acknowledged a request.
    pub last_success: Option<SystemTime>,
    /// The last error the worker met (transport, target or record).
    pub last_error: Option<String>,
    /// Records acknowledged since start.
    pub records_synced: u64,
    /// Records dead-lettered since start.
    pub records_failed: u64,
    /// Of `records_synced`, those the version guard refused since start: D1 held the same or a
    /// newer version of their row (see [`crate::Outbox::conflicts`]). Not an error.
    pub records_superseded: u64,
    /// Requests sent since start.
    pub requests: u64,
    /// Requests that failed since start.
    pub requests_failed: u64,
    /// Requests D1 had applied before, whose answer was lost: the ledger refused the replay
    /// and their records were marked synced without being applied twice.
    pub requests_replayed: u64,
    /// Records held back, uncharged, because their parent row waited (in backoff or
    /// dead-lettered).
    pub records_held: u64,
    /// Statements sent since start (each request also opens with a PRAGMA and the ledger
    /// write).
    pub statements: u64,
}

impl Stats {
    /// Records acknowledged per request sent.
    pub fn rows_per_request(&self) -> f64 {
        if self.requests == 0 {
            0.0
        } else {
            self.records_synced as f64 / self.requests as f64
        }
    }
}
