//! The sync worker: a tokio task that drains the outbox to a [`Target`].
//!
//! One task owns the loop (`run`); [`SyncWorker`] is the handle (`start`, `notify`, `flush`,
//! `stats`, `shutdown`). Only the holder of the queue's lease sends, so a second process waits
//! in `Standby`. Each tick sends one request (`ship`): a batch is claimed, sorted
//! (`prepare`: records that can never ship are dead-lettered, records whose row or parent row
//! waits are held back uncharged), packed once, and its requests are journaled locally before
//! they go, so that D1's ledger recognises a request sent again after a lost answer and every
//! record is applied exactly once. Failures are sorted by [`TargetError`]: transient ones back
//! the whole worker off without charging records, rate limits wait at least `Retry-After`,
//! refused credentials pause it, and an SQL error splits the request until the records at
//! fault are found; only those are charged.

mod plan;
mod prepare;
mod read;
mod run;
mod ship;
mod thread;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use rusqlite::Connection;
use tokio::sync::{watch, Notify};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::warn;

use crate::backoff::Backoff;
use crate::commute::Commute;
use crate::error::{Error, Result};
use crate::outbox::{now_ms, Outbox};
use crate::registry::Registry;
use crate::row::SyncRow;
use crate::sizing::Sizing;
use crate::stats::{Stats, WorkerState};
use crate::target::{Target, TargetError};

/// How a worker behaves. The defaults follow the TypeScript worker it replaces where that was
/// right (10 attempts, backoff from 1 s to 5 min, keep 1000 synced records).
#[derive(Debug, Clone)]
pub struct WorkerConfig {
    /// How often to look for work when nothing wakes the worker (default 1 s).
    pub poll_interval: Duration,
    /// Records claimed per tick, and so the most rows per request (default 10,000, D1's
    /// advice for one bulk write; never more than the target's
    /// [`PackLimits::max_rows_per_request`](crate::target::PackLimits), 2,000 for a
    /// [`crate::SqliteTarget`]). D1 allows
    /// about 4 API requests a second, so under load rows per request set the sustained rate:
    /// up to about 33,000 rows/s within [`crate::D1Http`]'s default budget.
    pub batch_size: usize,
    /// The longest a request should take to apply (default 10 s, a third of D1's 30 s per
    /// request). A slower answer makes the next requests smaller in proportion (see
    /// [`crate::sizing`]).
    pub expected_request_time: Duration,
    /// Attempts before a record is dead-lettered (default 10).
    pub max_attempts: u32,
    /// Backoff of records and of the whole worker (default 1 s to 5 min, full jitter).
    pub backoff: Backoff,
    /// Entries kept in the synced log, `<queue>_synced` (default 1000).
    pub purge_keep: usize,
    /// The queue's lease: only its holder sends, and it renews the lease before every
    /// request. After a crash another worker takes the queue over once it runs out (default
    /// 45 s; keep it above the target's request timeout, 35 s for [`crate::D1Http`]).
    pub lease: Duration,
    /// How long `shutdown` waits for the request in flight (default 10 s).
    pub shutdown_timeout: Duration,
    /// How long to pause after refused credentials or configuration, or while D1 lacks a
    /// migration the application's file has (default 60 s).
    pub pause: Duration,
    /// The migrations table of the application's file and of D1 (default `d1_migrations`, as
    /// wrangler names it). When D1 refuses a record for a missing table or column and lacks a
    /// migration the app's file records there, the worker pauses instead of charging it.
    pub migrations_table: String,
}

impl Default for WorkerConfig {
    fn default() -> Self {
        WorkerConfig {
            poll_interval: Duration::from_secs(1),
            batch_size: 10_000,
            expected_request_time: Duration::from_secs(10),
            max_attempts: 10,
            backoff: Backoff::default(),
            purge_keep: 1000,
            lease: Duration::from_secs(45),
            shutdown_timeout: Duration::from_secs(10),
            pause: Duration::from_secs(60),
            migrations_table: d1_sync_schema::migrations::DEFAULT_TABLE.to_string(),
        }
    }
}

/// Builds a [`SyncWorker`].
pub struct WorkerBuilder {
    db_path: PathBuf,
    target: Arc<dyn Target>,
    registry: Registry,
    outbox: Outbox,
    config: WorkerConfig,
}

macro_rules! setter {
    ($(#[$m:meta])* $name:ident: $t:ty) => {
        $(#[$m])*
        pub fn $name(mut self, value: $t) -> Self {
            self.config.$name = value;
            self
        }
    };
}

impl WorkerBuilder {
    /// Syncs the table of row type `T`.
    pub fn register<T: SyncRow>(mut self) -> Self {
        self.registry.register::<T>();
        self
    }

    /// Syncs the tables of `registry` (added to those registered so far).
    pub fn registry(mut self, registry: Registry) -> Self {
        for name in registry.names() {
            if let Some(def) = registry.get(name) {
                self.registry.add((**def).clone());
            }
        }
        self
    }

    /// Uses another queue table than [`Outbox::DEFAULT_TABLE`].
    pub fn outbox(mut self, outbox: Outbox) -> Self {
        self.outbox = outbox;
        self
    }

    /// Replaces the whole configuration.
    pub fn config(mut self, config: WorkerConfig) -> Self {
        self.config = config;
        self
    }

    setter!(/// See [`WorkerConfig::poll_interval`].
        poll_interval: Duration);
    setter!(/// See [`WorkerConfig::batch_size`].
        batch_size: usize);
    setter!(/// See [`WorkerConfig::expected_request_time`].
        expected_request_time: Duration);
    setter!(/// See [`WorkerConfig::max_attempts`].
        max_attempts: u32);
    setter!(/// See [`WorkerConfig::backoff`].
        backoff: Backoff);
    setter!(/// See [`WorkerConfig::purge_keep`].
        purge_keep: usize);
    setter!(/// See [`WorkerConfig::lease`].
        lease: Duration);
    setter!(/// See [`WorkerConfig::shutdown_timeout`].
        shutdown_timeout: Duration);
    setter!(/// See [`WorkerConfig::pause`].
        pause: Duration);

    /// See [`WorkerConfig::migrations_table`].
    pub fn migrations_table(mut self, table: impl Into<String>) -> Self {
        self.config.migrations_table = table.into();
        self
    }

    /// Opens the database, installs the outbox and returns the (not yet started) worker.
    pub fn build(self) -> Result<SyncWorker> {
        if self.registry.is_empty() {
            return Err(Error::Config(
                "the worker syncs no tables: register row types or a registry first".into(),
            ));
        }
        if self.config.batch_size == 0 || self.config.max_attempts == 0 {
            return Err(Error::Config(
                "batch_size and max_attempts must be at least 1".into(),
            ));
        }
        let conn = open_queue_connection(&self.db_path)?;
        self.outbox.install(&conn)?;
        let deps = Arc::new(prepare::Deps::read(&conn, &self.registry));
        let commute = Arc::new(
            Commute::read(&conn, self.registry.names())
                .map(|c| {
                    let defs = self.registry.names().filter_map(|n| self.registry.get(n));
                    c.with_tombstones(defs.map(|d| &**d))
                })
                .unwrap_or_else(|e| {
                warn!(error = %e, "could not read the schema's foreign keys; every request keeps the queue's order");
                Commute::none()
            }),
        );
        for u in commute.unindexed() {
            warn!(table = %u.child, parent = %u.parent, "{u}");
        }
        // Stats count the queue on a connection of their own: a count walks the whole queue,
        // and on the worker's connection it would hold the worker up for as long.
        let reader = open_queue_connection(&self.db_path)?;
        let (ticks, _) = watch::channel(Ticks::default());
        let sizing = Sizing::new(&self.target.limits(), self.config.expected_request_time);
        Ok(SyncWorker {
            inner: Arc::new(Inner {
                owner: format!("{}-{:016x}", std::process::id(), rand::random::<u64>()),
                config: self.config,
                outbox: self.outbox,
                target: self.target,
                registry: self.registry,
                deps,
                commute,
                conn: Arc::new(Mutex::new(conn)),
                queue: thread::QueueThread::spawn()?,
                sizing: Mutex::new(sizing),
                reader: Arc::new(Mutex::new(reader)),
                notify: Notify::new(),
                control: Mutex::new(Control::default()),
                live: Mutex::new(Live::default()),
                ship: tokio::sync::Mutex::new(ship::ShipState::default()),
                ticks,
            }),
        })
    }
}

fn open_queue_connection(path: &Path) -> Result<Connection> {
    // The worker's own writes (marks, charges) need not be FULL: a mark lost to a power cut
    // leaves its request journaled, and D1's ledger recognises it when it goes again. The
    // journal entry itself is written FULL (see `Outbox::journal`), which also makes the marks
    // before it durable, so at most the last two requests' marks can be lost, well inside the
    // ledger's slots.
    let conn = crate::outbox::open_with(path, "NORMAL")?;
    conn.set_prepared_statement_cache_capacity(64);
    Ok(conn)
}

/// The handle of a sync worker. Cheap to clone; all clones control the same worker.
///
/// ```no_run
/// use d1_sync::{D1Config, D1Http, SyncWorker};
/// # #[derive(d1_sync::D1Sync)] struct Message { #[d1(primary_key)] id: String }
/// # async fn run() -> Result<(), d1_sync::Error> {
/// let target = D1Http::new(D1Config::from_env()?)?;
/// let worker = SyncWorker::builder("app.db", target).register::<Message>().build()?;
/// worker.start()?;
/// // ... the application enqueues changes and calls worker.notify() ...
/// worker.flush().await?;    // everything eligible has been sent
/// println!("{:?}", worker.stats().await?);
/// worker.shutdown().await?; // the request in flight finishes; claims are given back
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct SyncWorker {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for SyncWorker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SyncWorker")
            .field("target", &self.inner.target.describe())
            .field("owner", &self.inner.owner)
            .finish()
    }
}

struct Inner {
    config: WorkerConfig,
    outbox: Outbox,
    target: Arc<dyn Target>,
    registry: Registry,
    /// Which tables depend on which (the app file's foreign keys).
    deps: Arc<prepare::Deps>,
    /// Which changes may trade places inside a request (the app file's schema).
    commute: Arc<Commute>,
    conn: Arc<Mutex<Connection>>,
    /// How large the next request may be (see [`crate::sizing`]).
    sizing: Mutex<Sizing>,
    /// Where every call on `conn` runs (see [`thread`]).
    queue: thread::QueueThread,
    /// For [`SyncWorker::stats`]: reads only.
    reader: Arc<Mutex<Connection>>,
    owner: String,
    notify: Notify,
    control: Mutex<Control>,
    live: Mutex<Live>,
    /// The plan and pipeline between ticks: one tick at a time holds it.
    ship: tokio::sync::Mutex<ship::ShipState>,
    ticks: watch::Sender<Ticks>,
}

impl Inner {
    /// The limits of the next batch's requests: the target's, narrowed by its answers.
    fn limits(&self) -> crate::target::PackLimits {
        lock(&self.sizing).limits(&self.target.limits())
    }
}

#[derive(Default)]
struct Control {
    cancel: Option<CancellationToken>,
    task: Option<JoinHandle<()>>,
}

#[derive(Clone)]
struct Live {
    state: WorkerState,
    last_success: Option<SystemTime>,
    last_error: Option<String>,
    records_synced: u64,
    records_superseded: u64,
    records_failed: u64,
    requests: u64,
    requests_failed: u64,
    requests_replayed: u64,
    records_held: u64,
    statements: u64,
}

impl Default for Live {
    fn default() -> Self {
        Live {
            state: WorkerState::Stopped,
            last_success: None,
            last_error: None,
            records_synced: 0,
            records_superseded: 0,
            records_failed: 0,
            requests: 0,
            requests_failed: 0,
            requests_replayed: 0,
            records_held: 0,
            statements: 0,
        }
    }
}

/// Tick bookkeeping for `flush`: a tick counts only if it began after `flush` was called.
#[derive(Clone, Copy, Default)]
struct Ticks {
    begun: u64,
    last_idle: u64,
    stopped: bool,
}

use crate::guard::lock;

impl SyncWorker {
    /// Starts building a worker that drains the outbox of the SQLite file at `db_path` to
    /// `target`.
    pub fn builder(db_path: impl AsRef<Path>, target: impl Target) -> WorkerBuilder {
        WorkerBuilder {
            db_path: db_path.as_ref().to_path_buf(),
            target: Arc::new(target),
            registry: Registry::new(),
            outbox: Outbox::new(),
            config: WorkerConfig::default(),
        }
    }

    /// Starts the worker on the current tokio runtime. Returns `false` (and does nothing) if
    /// it is already running.
    pub fn start(&self) -> Result<bool> {
        let handle = tokio::runtime::Handle::try_current().map_err(|_| {
            Error::Config("SyncWorker::start must be called inside a tokio runtime".into())
        })?;
        let mut control = lock(&self.inner.control);
        if control.task.as_ref().is_some_and(|t| !t.is_finished()) {
            return Ok(false);
        }
        let cancel = CancellationToken::new();
        lock(&self.inner.live).state = WorkerState::Running;
        self.inner.ticks.send_modify(|t| t.stopped = false);
        control.task = Some(handle.spawn(run::run(self.inner.clone(), cancel.clone())));
        control.cancel = Some(cancel);
        Ok(true)
    }

    /// Whether the worker's task is running.
    pub fn is_running(&self) -> bool {
        lock(&self.inner.control)
            .task
            .as_ref()
            .is_some_and(|t| !t.is_finished())
    }

    /// Wakes the worker now instead of at its next poll (unless it is backing off or
    /// paused). Call it after committing an enqueue.
    pub fn notify(&self) {
        self.inner.notify.notify_one();
    }

    /// Waits until a tick that began after this call found nothing eligible to send: every
    /// record written before the call has been synced, dead-lettered, or is waiting on its
    /// backoff. Waits through worker backoffs and pauses; wrap it in a timeout if needed.
    pub async fn flush(&self) -> Result<()> {
        if !self.is_running() {
            return Err(Error::NotRunning);
        }
        let mut rx = self.inner.ticks.subscribe();
        let begun = rx.borrow_and_update().begun;
        self.notify();
        loop {
            {
                let t = *rx.borrow_and_update();
                if t.last_idle > begun {
                    return Ok(());
                }
                if t.stopped {
                    return Err(Error::NotRunning);
                }
            }
            if rx.changed().await.is_err() {
                return Err(Error::NotRunning);
            }
        }
    }

    /// The worker's state and counters, and the queue's counts.
    ///
    /// The counts are read on a connection of the worker's own, so they never hold up
    /// sending; counting walks the queue (see [`Outbox::counts`]), so poll at human pace.
    pub async fn stats(&self) -> Result<Stats> {
        let (reader, outbox) = (self.inner.reader.clone(), self.inner.outbox.clone());
        let counts = tokio::task::spawn_blocking(move || outbox.counts(&lock(&reader)))
            .await
            .map_err(|e| Error::Task(e.to_string()))??;
        let live = lock(&self.inner.live).clone();
        let now = now_ms();
        Ok(Stats {
            state: live.state,
            oldest_pending_age: counts
                .oldest_unsynced_ms
                .map(|t| Duration::from_millis(u64::try_from(now.saturating_sub(t)).unwrap_or(0))),
            queue: counts,
            last_success: live.last_success,
            last_error: live.last_error,
            records_synced: live.records_synced,
            records_superseded: live.records_superseded,
            records_failed: live.records_failed,
            requests: live.requests,
            requests_failed: live.requests_failed,
            requests_replayed: live.requests_replayed,
            records_held: live.records_held,
            statements: live.statements,
        })
    }

    /// Runs the worker here instead of in the background task, until the batch it claims is
    /// sent: claim a batch, send its requests, mark what the target acknowledged, split what it
    /// refused. For callers that drive syncing themselves (and for deterministic tests).
    /// Refused while the background task runs. A failure of the target is returned in
    /// [`Step::Failed`]: the request stays journaled and the next step sends it again first;
    /// backing off before that is the caller's choice. A failure of the local queue is an
    /// `Err`.
    pub async fn step(&self) -> Result<Step> {
        if self.is_running() {
            return Err(Error::Config(
                "SyncWorker::step cannot run beside the started worker".into(),
            ));
        }
        let mut st = self.inner.ship.lock().await;
        let mut moved = false;
        loop {
            match ship::tick(&self.inner, &mut st, false).await {
                ship::TickEnd::Idle if moved => return Ok(Step::Progress),
                ship::TickEnd::Idle => return Ok(Step::Idle),
                ship::TickEnd::Progress { .. } if st.busy() => moved = true,
                ship::TickEnd::Progress { .. } => return Ok(Step::Progress),
                ship::TickEnd::Standby(holder) => return Ok(Step::Standby(holder)),
                ship::TickEnd::Failed(e) => {
                    lock(&self.inner.live).last_error = Some(e.to_string());
                    return Ok(Step::Failed(e));
                }
                ship::TickEnd::Local(e) => return Err(e),
            }
        }
    }

    /// Stops the worker: the request in flight may finish within
    /// [`WorkerConfig::shutdown_timeout`], then the task is cut off. Claims not acknowledged
    /// are given back (pending, uncharged). Idempotent.
    pub async fn shutdown(&self) -> Result<()> {
        let (cancel, task) = {
            let mut c = lock(&self.inner.control);
            (c.cancel.take(), c.task.take())
        };
        let Some(task) = task else {
            return Ok(());
        };
        if let Some(c) = cancel {
            c.cancel();
        }
        let abort = task.abort_handle();
        let cut_off = tokio::time::timeout(self.inner.config.shutdown_timeout, task)
            .await
            .is_err();
        if cut_off {
            warn!(
                timeout_ms = self.inner.config.shutdown_timeout.as_millis() as u64,
                "d1-sync worker did not stop in time; cutting off the request in flight and keeping the queue's lease until it runs out"
            );
            abort.abort();
        } else {
            // Another worker may take the queue over at once; nothing is in flight, and
            // whatever was not acknowledged is still pending. After a cut-off request the
            // lease is kept instead: D1 may still run that request (for up to 30 s), and a
            // successor sending newer changes first could see them overwritten by it. The
            // lease (45 s by default) runs out after D1 is done with it.
            let owner = self.inner.owner.clone();
            db(&self.inner, move |o, c| o.release_lease(c, &owner)).await?;
        }
        lock(&self.inner.live).state = WorkerState::Stopped;
        self.inner.ticks.send_modify(|t| t.stopped = true);
        Ok(())
    }
}

/// Runs `f` on the queue connection on the blocking pool.
async fn db<R, F>(inner: &Arc<Inner>, f: F) -> Result<R>
where
    R: Send + 'static,
    F: FnOnce(&Outbox, &mut Connection) -> Result<R> + Send + 'static,
{
    let conn = inner.conn.clone();
    let outbox = inner.outbox.clone();
    inner
        .queue
        .run(move || f(&outbox, &mut lock(&conn)))
        .await?
}

/// What one [`SyncWorker::step`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Nothing was eligible to send.
    Idle,
    /// Records were shipped, dead-lettered or charged.
    Progress,
    /// Another worker holds the queue's lease; nothing was sent.
    Standby(String),
    /// The target failed in a way that backs the whole worker off or pauses it; nothing was
    /// charged, and the request goes again, unchanged, at the next step.
    Failed(TargetError),
}

#[cfg(test)]
mod tests;
