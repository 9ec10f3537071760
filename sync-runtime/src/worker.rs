//! The sync worker: a tokio task that drains the outbox to a [`Target`].
//!
//! One task owns the loop; [`SyncWorker`] is the handle (`start`, `notify`, `flush`, `stats`,
//! `shutdown`). Each tick takes (or renews) the queue's lease and reads a batch — only the
//! lease holder sends, so a second process waits in `Standby` — dead-letters records that can never
//! ship, packs the rest into as few requests as the target's limits allow, and marks records
//! synced only after the target acknowledged their request. Failures are sorted by
//! [`TargetError`]: transient ones back the whole worker off without charging records,
//! rate limits wait at least `Retry-After`, refused credentials pause it, and an SQL error
//! splits the request until the records at fault are found; only those are charged.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use rusqlite::Connection;
use tokio::sync::{watch, Notify};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::AbortOnDropHandle;
use tracing::{debug, error, info, warn};

use crate::backoff::Backoff;
use crate::change::{self, Change, RawRecord};
use crate::error::{Error, Result};
use crate::outbox::{now_ms, Claim, Outbox};
use crate::pack::{pack_with, PackLimits};
use crate::registry::Registry;
use crate::row::SyncRow;
use crate::stats::{Stats, WorkerState};
use crate::target::{Batch, Target, TargetError};

/// How a worker behaves. The defaults follow the TypeScript worker it replaces where that was
/// right (10 attempts, backoff from 1 s to 5 min, keep 1000 synced records).
#[derive(Debug, Clone)]
pub struct WorkerConfig {
    /// How often to look for work when nothing wakes the worker (default 1 s).
    pub poll_interval: Duration,
    /// Records claimed per tick, and so the most rows per request (default 2000). D1 allows
    /// about 4 API requests a second, so under load rows per request set the sustained rate:
    /// about 6,600 rows/s within [`crate::D1Http`]'s default budget.
    pub batch_size: usize,
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
    /// How long to pause after refused credentials or configuration (default 60 s).
    pub pause: Duration,
}

impl Default for WorkerConfig {
    fn default() -> Self {
        WorkerConfig {
            poll_interval: Duration::from_secs(1),
            batch_size: 2000,
            max_attempts: 10,
            backoff: Backoff::default(),
            purge_keep: 1000,
            lease: Duration::from_secs(45),
            shutdown_timeout: Duration::from_secs(10),
            pause: Duration::from_secs(60),
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
        // Stats count the queue on a connection of their own: a count walks the whole queue,
        // and on the worker's connection it would hold the worker up for as long.
        let reader = open_queue_connection(&self.db_path)?;
        let (ticks, _) = watch::channel(Ticks::default());
        Ok(SyncWorker {
            inner: Arc::new(Inner {
                owner: format!("{}-{:016x}", std::process::id(), rand::random::<u64>()),
                config: self.config,
                outbox: self.outbox,
                target: self.target,
                registry: self.registry,
                conn: Arc::new(Mutex::new(conn)),
                reader: Arc::new(Mutex::new(reader)),
                notify: Notify::new(),
                control: Mutex::new(Control::default()),
                live: Mutex::new(Live::default()),
                ticks,
            }),
        })
    }
}

fn open_queue_connection(path: &Path) -> Result<Connection> {
    // The worker's own writes (marks, charges) need not be FULL: a mark lost to a power cut
    // only re-sends an idempotent statement.
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
    conn: Arc<Mutex<Connection>>,
    /// For [`SyncWorker::stats`]: reads only.
    reader: Arc<Mutex<Connection>>,
    owner: String,
    notify: Notify,
    control: Mutex<Control>,
    live: Mutex<Live>,
    ticks: watch::Sender<Ticks>,
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
    records_failed: u64,
    requests: u64,
    requests_failed: u64,
    statements: u64,
}

impl Default for Live {
    fn default() -> Self {
        Live {
            state: WorkerState::Stopped,
            last_success: None,
            last_error: None,
            records_synced: 0,
            records_failed: 0,
            requests: 0,
            requests_failed: 0,
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

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    match m.lock() {
        Ok(g) => g,
        Err(poisoned) => poisoned.into_inner(),
    }
}

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
        control.task = Some(handle.spawn(run(self.inner.clone(), cancel.clone())));
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
            .map_err(|e| Error::Config(format!("the database task failed: {e}")))??;
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
            records_failed: live.records_failed,
            requests: live.requests,
            requests_failed: live.requests_failed,
            statements: live.statements,
        })
    }

    /// Runs one tick here instead of in the background task: claim a batch, ship it, mark
    /// what the target acknowledged. For callers that drive syncing themselves (and for
    /// deterministic tests). Refused while the background task runs. A failure is returned
    /// in [`Step::Failed`]; backing off before the next step is the caller's choice.
    pub async fn step(&self) -> Result<Step> {
        if self.is_running() {
            return Err(Error::Config(
                "SyncWorker::step cannot run beside the started worker".into(),
            ));
        }
        Ok(
            match tick(&self.inner, &CancellationToken::new(), None).await {
                TickEnd::Idle => Step::Idle,
                TickEnd::Progress | TickEnd::Cancelled => Step::Progress,
                TickEnd::Standby(holder) => Step::Standby(holder),
                TickEnd::Failed(e) => {
                    lock(&self.inner.live).last_error = Some(e.to_string());
                    Step::Failed(e)
                }
            },
        )
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
    tokio::task::spawn_blocking(move || f(&outbox, &mut lock(&conn)))
        .await
        .map_err(|e| Error::Config(format!("the database task failed: {e}")))?
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
    /// The target failed in a way that backs the whole worker off or pauses it; the batch
    /// went back to the queue uncharged.
    Failed(TargetError),
}

enum TickEnd {
    Idle,
    Progress,
    Cancelled,
    /// Another worker holds the queue's lease.
    Standby(String),
    Failed(TargetError),
}

async fn run(inner: Arc<Inner>, cancel: CancellationToken) {
    info!(target_db = %inner.target.describe(), owner = %inner.owner, "d1-sync worker started");
    let mut failures: u32 = 0;
    let mut wake: Option<tokio::time::Instant> = None;
    let mut hold = false;
    let mut pipe = Pipeline::default();
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
        let end = tick(&inner, &cancel, Some(&mut pipe)).await;
        if !matches!(end, TickEnd::Progress) {
            pipe.prefetched = None;
        }
        let now = tokio::time::Instant::now();
        match end {
            TickEnd::Idle => {
                hold = false;
                lock(&inner.live).state = WorkerState::Running;
                inner.ticks.send_modify(|t| t.last_idle = number);
                wake = Some(now + inner.config.poll_interval);
            }
            TickEnd::Progress => {
                failures = 0;
                hold = false;
                lock(&inner.live).state = WorkerState::Running;
                wake = None;
            }
            TickEnd::Cancelled => break,
            TickEnd::Standby(holder) => {
                hold = false;
                lock(&inner.live).state = WorkerState::Standby { holder };
                wake = Some(now + inner.config.poll_interval);
            }
            TickEnd::Failed(e) => {
                failures = failures.saturating_add(1);
                let (delay, paused) = match &e {
                    TargetError::Auth { .. } | TargetError::Config { .. } => {
                        (inner.config.pause, true)
                    }
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
                let until = SystemTime::now() + delay;
                let reason = e.to_string();
                {
                    let mut live = lock(&inner.live);
                    live.last_error = Some(reason.clone());
                    live.state = if paused {
                        WorkerState::Paused {
                            until,
                            reason: reason.clone(),
                        }
                    } else {
                        WorkerState::BackingOff {
                            until,
                            reason: reason.clone(),
                        }
                    };
                }
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
    pipe.settle().await;
    let owner = inner.owner.clone();
    if let Err(e) = db(&inner, move |o, c| o.release_lease(c, &owner)).await {
        warn!(error = %e, "could not release the queue's lease; it runs out by itself");
    }
    lock(&inner.live).state = WorkerState::Stopped;
    inner.ticks.send_modify(|t| t.stopped = true);
    info!("d1-sync worker stopped");
}

/// The background loop's overlap of the queue's bookkeeping with the target's work: while
/// batch N is at the target, the acknowledgement of batch N-1 is written, the synced log is
/// trimmed and batch N+1 is read. A prefetched batch holds no claim (reading writes nothing),
/// so dropping it is free.
#[derive(Default)]
struct Pipeline {
    /// Batch N+1, read, checked and packed while batch N was in flight.
    prefetched: Option<Prepared>,
    /// Marking batch N synced, after the target acknowledged it; `true` once written.
    marking: Option<JoinHandle<bool>>,
}

/// A claimed batch, sorted: the changes to ship (and, read ahead, their requests already
/// packed) and the records that can never ship.
struct Prepared {
    raw: Vec<RawRecord>,
    changes: Vec<Change>,
    /// Id, table and reason of each record to dead-letter.
    invalid: Vec<(i64, String, String)>,
    requests: Option<Vec<crate::pack::Request>>,
    /// The rows of `raw` ([`change::row_digest`]s): while it is in flight, the next read
    /// stops at them.
    rows: HashSet<u64>,
}

/// Checks a claimed batch. Later records of a row with a new dead letter are left out: they
/// stay pending behind it. With `pack`, also packs the changes into requests.
fn prepare(raw: Vec<RawRecord>, registry: &Registry, pack: Option<(PackLimits, bool)>) -> Prepared {
    let mut changes = Vec::with_capacity(raw.len());
    let mut invalid = Vec::new();
    let mut columns = change::ColumnsCache::default();
    // The first dead record of each row: later records of that row wait behind it.
    let mut dead_rows: HashMap<u64, i64> = HashMap::new();
    for r in &raw {
        match change::check_with(r, registry, &mut columns) {
            Ok(c) => changes.push(c),
            Err(reason) => {
                dead_rows
                    .entry(change::row_digest(&r.table, &r.row_key))
                    .or_insert(r.id);
                invalid.push((r.id, r.table.clone(), reason));
            }
        }
    }
    changes.retain(|c| {
        dead_rows
            .get(&change::row_digest(&c.table.name, &c.row_key))
            .is_none_or(|first| c.id < *first)
    });
    let requests = pack.map(|(limits, sql)| pack_with(&changes, &limits, sql));
    let rows = raw
        .iter()
        .map(|r| change::row_digest(&r.table, &r.row_key))
        .collect();
    Prepared {
        raw,
        changes,
        invalid,
        requests,
        rows,
    }
}

impl Pipeline {
    /// Waits until the last acknowledgement is written.
    async fn settle(&mut self) {
        if let Some(m) = self.marking.take() {
            let _ = m.await;
        }
    }
}

async fn tick(
    inner: &Arc<Inner>,
    cancel: &CancellationToken,
    mut pipe: Option<&mut Pipeline>,
) -> TickEnd {
    let prefetched = pipe.as_mut().and_then(|p| p.prefetched.take());
    let mut prepared = match prefetched {
        Some(p) => p,
        None => {
            // Records of the last batch stay pending until their mark is written.
            if let Some(p) = pipe.as_mut() {
                p.settle().await;
            }
            let (owner, lease, limit) = (
                inner.owner.clone(),
                inner.config.lease,
                inner.config.batch_size,
            );
            let claimed = db(inner, move |o, c| {
                o.claim(c, &owner, now_ms(), lease, limit)
            })
            .await;
            match claimed {
                Ok(Claim::Records(r)) => prepare(r, &inner.registry, None),
                Ok(Claim::HeldBy(holder)) => return TickEnd::Standby(holder),
                Err(e) => {
                    return TickEnd::Failed(TargetError::Transient(format!("local queue: {e}")))
                }
            }
        }
    };
    if prepared.raw.is_empty() {
        return TickEnd::Idle;
    }
    debug!(records = prepared.raw.len(), "claimed");
    if !prepared.invalid.is_empty() {
        for (id, table, reason) in &prepared.invalid {
            warn!(id, table = %table, reason = %reason, "dead-lettering a record that can never be sent");
        }
        let invalid: Vec<(i64, String)> = prepared
            .invalid
            .iter()
            .map(|(id, _, r)| (*id, r.clone()))
            .collect();
        let n = invalid.len() as u64;
        let last = invalid.last().map(|(_, r)| r.clone());
        if let Err(e) = db(inner, move |o, c| o.fail(c, &invalid)).await {
            return TickEnd::Failed(TargetError::Transient(format!("local queue: {e}")));
        }
        let mut live = lock(&inner.live);
        live.records_failed += n;
        live.last_error = last;
    }
    if let Some(p) = pipe {
        match pipelined(inner, p, &mut prepared).await {
            Some(end) => return end,
            None => p.settle().await,
        }
    }
    ship(inner, prepared.changes, cancel).await
}

/// The common case, overlapped: the batch fits one request, which goes to the target while
/// the queue connection settles the previous batch, purges and reads the next one. `None`
/// when the batch needs the careful path (several requests, or the target refused it): the
/// prefetch is then dropped and [`ship`] handles the batch.
async fn pipelined(
    inner: &Arc<Inner>,
    pipe: &mut Pipeline,
    prepared: &mut Prepared,
) -> Option<TickEnd> {
    let limits = inner.target.limits();
    let with_sql = inner.target.wants_statements();
    if prepared.changes.is_empty() {
        return None;
    }
    let mut requests = match prepared.requests.take() {
        Some(r) => r,
        None => pack_with(&prepared.changes, &limits, with_sql),
    };
    if requests.len() != 1 {
        return None;
    }
    let request = requests.pop()?;
    let (raw, changes) = (&prepared.raw, &prepared.changes);
    // Everything up to the last claimed id is in flight (or dead); the next read starts
    // after it and leaves out the rows in flight.
    let cursor = raw.last().map_or(0, |r| r.id);
    let in_flight = std::mem::take(&mut prepared.rows);
    {
        let mut live = lock(&inner.live);
        live.requests += 1;
        live.statements += request.statements.len() as u64;
    }
    let batch = Batch {
        statements: &request.statements,
        changes,
    };
    let previous = pipe.marking.take();
    // Its own task: a target that works in place (`block_in_place`) holds this task's
    // thread, and a read-ahead polled beside it would not start until the target is done.
    let reader = inner.clone();
    // Aborted if this tick is dropped (the worker's task stopped mid-tick), so a read-ahead
    // never outlives the loop that would use it.
    let prefetch = AbortOnDropHandle::new(tokio::spawn(async move {
        let inner = &reader;
        // Records whose acknowledgement could not be written are still pending below the
        // cursor: no prefetch may pass them; a claim from the start comes next.
        if let Some(m) = previous {
            if !m.await.unwrap_or(false) {
                return None;
            }
        }
        let keep = inner.config.purge_keep;
        if let Err(e) = db(inner, move |o, c| o.purge(c, keep)).await {
            warn!(error = %e, "could not purge synced records");
        }
        let (owner, lease, limit) = (
            inner.owner.clone(),
            inner.config.lease,
            inner.config.batch_size,
        );
        let registry = inner.registry.clone();
        let read = db(inner, move |o, c| {
            let who = crate::outbox::Claimant {
                owner: &owner,
                now: now_ms(),
                lease,
                limit,
            };
            let (next, cut) = o.claim_after(c, &who, cursor, &in_flight)?;
            // Checked and packed here too, off the critical path. A read-ahead cut short
            // (at a row still in flight) is dropped when less than half full: the claim after
            // this batch takes a full one, and requests stay large.
            Ok(match next {
                Claim::Records(raw) if !(raw.is_empty() || cut && raw.len() < limit / 2) => {
                    Some(prepare(raw, &registry, Some((limits, with_sql))))
                }
                _ => None,
            })
        })
        .await;
        read.ok().flatten()
    }));
    let (result, next) = tokio::join!(inner.target.execute(batch), prefetch);
    let next = next.ok().flatten();
    match result {
        Ok(()) => {
            let ids = request.ids;
            let inner2 = inner.clone();
            // The finished batch is freed on the blocking pool once its mark is written: its
            // tens of thousands of allocations would otherwise be freed here, between this
            // response and the next request.
            let spent = (
                std::mem::take(&mut prepared.raw),
                std::mem::take(&mut prepared.changes),
                request.statements,
            );
            pipe.marking = Some(tokio::spawn(async move {
                let marked = db(&inner2, move |o, c| o.mark_synced(c, &ids)).await;
                // Freed after the mark is written and known, so the read-ahead does not wait.
                tokio::task::spawn_blocking(move || drop(spent));
                match marked {
                    Ok(n) => {
                        let mut live = lock(&inner2.live);
                        live.records_synced += n as u64;
                        live.last_success = Some(SystemTime::now());
                        true
                    }
                    // D1 has the rows; the records stay pending and go again, harmlessly.
                    Err(e) => {
                        warn!(error = %e, "could not mark records synced; they will be sent again");
                        false
                    }
                }
            }));
            pipe.prefetched = next;
            Some(TickEnd::Progress)
        }
        Err(TargetError::Rejected(_)) => {
            // Found by splitting, on the careful path (one more request, in a rare case).
            lock(&inner.live).requests_failed += 1;
            None
        }
        Err(e) => {
            lock(&inner.live).requests_failed += 1;
            Some(TickEnd::Failed(e))
        }
    }
}

/// Sends changes in order, splitting rejected requests until the records at fault are found.
/// Whatever is not acknowledged simply stays pending: there is no claim to give back.
async fn ship(inner: &Arc<Inner>, changes: Vec<Change>, cancel: &CancellationToken) -> TickEnd {
    let limits = inner.target.limits();
    let with_sql = inner.target.wants_statements();
    // One segment per request of the first packing; popped from the end, so reversed.
    let mut stack: Vec<Vec<Change>> = Vec::new();
    split_into(&mut stack, changes, &limits, with_sql);
    let mut blocked: HashSet<u64> = HashSet::new();
    let mut renewed = tokio::time::Instant::now();

    while let Some(segment) = stack.pop() {
        if cancel.is_cancelled() {
            return TickEnd::Cancelled;
        }
        let segment: Vec<Change> = segment
            .into_iter()
            .filter(|c| !blocked.contains(&change::row_digest(&c.table.name, &c.row_key)))
            .collect();
        if segment.is_empty() {
            continue;
        }
        let mut requests = pack_with(&segment, &limits, with_sql);
        if requests.len() > 1 {
            split_into(&mut stack, segment, &limits, with_sql);
            continue;
        }
        let Some(request) = requests.pop() else {
            continue;
        };
        // Keep the queue's lease well ahead of the request's own timeout.
        if renewed.elapsed() > inner.config.lease / 4 {
            let (owner, until) = (
                inner.owner.clone(),
                now_ms().saturating_add(
                    i64::try_from(inner.config.lease.as_millis()).unwrap_or(i64::MAX),
                ),
            );
            match db(inner, move |o, c| o.acquire(c, &owner, now_ms(), until)).await {
                Ok(Ok(())) => renewed = tokio::time::Instant::now(),
                Ok(Err(holder)) => return TickEnd::Standby(holder),
                Err(e) => {
                    return TickEnd::Failed(TargetError::Transient(format!("local queue: {e}")))
                }
            }
        }
        {
            let mut live = lock(&inner.live);
            live.requests += 1;
            live.statements += request.statements.len() as u64;
        }
        let batch = Batch {
            statements: &request.statements,
            changes: &segment,
        };
        match inner.target.execute(batch).await {
            Ok(()) => {
                let ids = request.ids;
                match db(inner, move |o, c| o.mark_synced(c, &ids)).await {
                    Ok(n) => {
                        let mut live = lock(&inner.live);
                        live.records_synced += n as u64;
                        live.last_success = Some(SystemTime::now());
                    }
                    Err(e) => {
                        // D1 has the rows; the records stay pending and are sent again:
                        // harmless, as every statement is idempotent.
                        return TickEnd::Failed(TargetError::Transient(format!(
                            "local queue: {e}"
                        )));
                    }
                }
            }
            Err(TargetError::Rejected(message)) if segment.len() == 1 => {
                let c = &segment[0];
                let attempts = c.attempts.saturating_add(1);
                let delay = inner.config.backoff.delay(attempts, &mut rand::rng(), None);
                let next_at =
                    now_ms().saturating_add(i64::try_from(delay.as_millis()).unwrap_or(i64::MAX));
                let dead = attempts >= inner.config.max_attempts;
                if dead {
                    warn!(id = c.id, table = %c.table.name, attempts, error = %message, "dead-lettering a record the target keeps refusing");
                } else {
                    debug!(id = c.id, table = %c.table.name, attempts, error = %message, "record refused; retrying later");
                }
                blocked.insert(change::row_digest(&c.table.name, &c.row_key));
                let failures = vec![(c.id, message.clone(), next_at)];
                let max = inner.config.max_attempts;
                if let Err(e) = db(inner, move |o, conn| o.charge(conn, &failures, max)).await {
                    return TickEnd::Failed(TargetError::Transient(format!("local queue: {e}")));
                }
                let mut live = lock(&inner.live);
                live.requests_failed += 1;
                live.last_error = Some(message);
                if dead {
                    live.records_failed += 1;
                }
            }
            Err(TargetError::Rejected(message)) => {
                debug!(records = segment.len(), error = %message, "request refused; splitting it to find the records at fault");
                lock(&inner.live).requests_failed += 1;
                let mut left = segment;
                let right = left.split_off(left.len() / 2);
                stack.push(right);
                stack.push(left);
            }
            Err(e) => {
                lock(&inner.live).requests_failed += 1;
                return TickEnd::Failed(e);
            }
        }
    }
    let keep = inner.config.purge_keep;
    if let Err(e) = db(inner, move |o, c| o.purge(c, keep)).await {
        warn!(error = %e, "could not purge synced records");
    }
    TickEnd::Progress
}

/// Pushes `changes` onto `stack` as one segment per request, the first request on top.
fn split_into(
    stack: &mut Vec<Vec<Change>>,
    changes: Vec<Change>,
    limits: &PackLimits,
    with_sql: bool,
) {
    let requests = pack_with(&changes, limits, with_sql);
    let mut it = changes.into_iter();
    let segments: Vec<Vec<Change>> = requests
        .iter()
        .map(|r| it.by_ref().take(r.range.len()).collect())
        .collect();
    stack.extend(segments.into_iter().rev());
}
