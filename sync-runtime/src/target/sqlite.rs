//! [`SqliteTarget`]: the same changes applied to a local SQLite file — the embedded default
//! (`d1sync demo`) and a mirror without Cloudflare.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use d1_sync_schema::sql::{delete_sql, update_sql, upsert_sql};
use rusqlite::{params_from_iter, Connection, ErrorCode};

use super::{Applied, Batch, BoxFuture, PackLimits, RequestId, Statement, Target, TargetError};
use crate::change::{Change, Op};
use crate::error::Error;
use crate::ledger;
use crate::pack::DEFER_FOREIGN_KEYS;
use crate::row::TableDef;

/// How a [`SqliteTarget`] applies a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SqliteMode {
    /// Binds each change's values to a cached one-row statement: the fastest way, and exact by
    /// construction (no text on the way). A request is the whole batch the worker claimed, in
    /// one transaction. The default.
    Rows,
    /// Runs the very statements D1 would receive (`json_each` and all): for testing the wire
    /// form without D1.
    Statements,
}

/// A local SQLite file standing in for D1: one transaction per request, foreign keys on and
/// deferred to the end of the request (as on D1), and any error rolls the whole request back
/// (as a D1 batch does).
pub struct SqliteTarget {
    conn: Arc<Mutex<Connection>>,
    /// Whether the ledger is known to exist in the file.
    ledger_ready: Arc<AtomicBool>,
    path: PathBuf,
    limits: PackLimits,
    mode: SqliteMode,
}

impl std::fmt::Debug for SqliteTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteTarget")
            .field("path", &self.path)
            .field("mode", &self.mode)
            .finish()
    }
}

impl SqliteTarget {
    /// Opens (creating if needed) the file at `path`, in [`SqliteMode::Rows`].
    pub fn open(path: impl AsRef<Path>) -> Result<SqliteTarget, Error> {
        let path = path.as_ref().to_path_buf();
        let conn = Connection::open(&path).map_err(|e| Error::Database {
            path: path.clone(),
            source: e,
        })?;
        conn.execute_batch(
            "PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL; PRAGMA foreign_keys = ON; PRAGMA busy_timeout = 5000;",
        )
        .map_err(|e| Error::Database {
            path: path.clone(),
            source: e,
        })?;
        // One statement text per shape (table, operation, columns): more than rusqlite's 16.
        conn.set_prepared_statement_cache_capacity(256);
        Ok(SqliteTarget {
            conn: Arc::new(Mutex::new(conn)),
            ledger_ready: Arc::new(AtomicBool::new(false)),
            path,
            limits: PackLimits::default(),
            mode: SqliteMode::Rows,
        })
    }

    /// Switches how batches are applied.
    pub fn with_mode(mut self, mode: SqliteMode) -> SqliteTarget {
        self.mode = mode;
        self
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Runs `f` on the target's connection (set-up and inspection).
    pub fn with_connection<R>(&self, f: impl FnOnce(&Connection) -> R) -> R {
        f(&lock(&self.conn))
    }

    /// Runs statements in one transaction (set-up, or D1's wire form).
    pub async fn execute_statements(&self, statements: &[Statement]) -> Result<(), TargetError> {
        let conn = self.conn.clone();
        let statements = statements.to_vec();
        blocking(move || apply_statements(&mut lock(&conn), &statements)).await
    }
}

use crate::guard::lock;

async fn blocking<F, R>(f: F) -> Result<R, TargetError>
where
    F: FnOnce() -> Result<R, TargetError> + Send + 'static,
    R: Send + 'static,
{
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| TargetError::Transient(format!("the SQLite task failed: {e}")))?
}

fn classify(e: rusqlite::Error) -> TargetError {
    match e.sqlite_error_code() {
        Some(
            ErrorCode::DatabaseBusy
            | ErrorCode::DatabaseLocked
            | ErrorCode::SystemIoFailure
            | ErrorCode::DiskFull,
        ) => TargetError::Transient(e.to_string()),
        _ => TargetError::Rejected(match &e {
            rusqlite::Error::SqliteFailure(_, Some(m)) => m.clone(),
            other => other.to_string(),
        }),
    }
}

fn apply_statements(conn: &mut Connection, statements: &[Statement]) -> Result<(), TargetError> {
    let tx = conn.transaction().map_err(classify)?;
    for s in statements {
        let mut stmt = tx.prepare_cached(&s.sql).map_err(classify)?;
        stmt.execute(params_from_iter(s.params.iter()))
            .map_err(classify)?;
    }
    tx.commit().map_err(classify)
}

/// The one-row SQL of a change's shape.
fn row_sql(c: &Change) -> String {
    let cols: Vec<&str> = c.columns.iter().map(String::as_str).collect();
    let pk: Vec<&str> = c.table.primary_key.iter().map(String::as_str).collect();
    match c.op {
        Op::Upsert => {
            let io: Vec<&str> = c.table.insert_only.iter().map(String::as_str).collect();
            upsert_sql(&c.table.name, &cols, &pk, &io)
        }
        Op::Update => update_sql(&c.table.name, &pk, &cols[pk.len().min(cols.len())..]),
        Op::Delete => delete_sql(&c.table.name, &cols),
    }
}

fn same_shape(a: &Change, b: &Change) -> bool {
    Arc::ptr_eq(&a.table, &b.table) && a.op == b.op && a.columns == b.columns
}

/// Creates the ledger in the target file unless this target already did.
fn ensure_ledger(conn: &Connection, ready: &AtomicBool) -> Result<(), TargetError> {
    if ready.load(Ordering::Acquire) {
        return Ok(());
    }
    for s in ledger::create_statements() {
        conn.execute_batch(&s.sql).map_err(classify)?;
    }
    ready.store(true, Ordering::Release);
    Ok(())
}

/// A missing ledger (dropped by hand) is made again before the retry; the request is not
/// charged.
fn ledger_missing(
    answer: Result<Applied, TargetError>,
    ready: &AtomicBool,
) -> Result<Applied, TargetError> {
    match answer {
        Err(TargetError::Rejected(m)) if ledger::is_missing(&m) => {
            ready.store(false, Ordering::Release);
            Err(TargetError::Transient(m))
        }
        other => other,
    }
}

fn apply_rows(
    conn: &mut Connection,
    ready: &AtomicBool,
    request: &RequestId,
    changes: &[Change],
) -> Result<Applied, TargetError> {
    ensure_ledger(conn, ready)?;
    let tx = conn.transaction().map_err(classify)?;
    tx.execute_batch(DEFER_FOREIGN_KEYS).map_err(classify)?;
    let record = request.statement();
    let recorded = tx
        .prepare_cached(&record.sql)
        .and_then(|mut st| st.execute(params_from_iter(record.params.iter())))
        .map_err(classify);
    if let Err(e) = recorded {
        // Dropping the transaction rolls it back: a replay applies nothing.
        return ledger::outcome(Err(e));
    }
    let mut sql = String::new();
    let mut prev: Option<&Change> = None;
    for c in changes {
        if !prev.is_some_and(|p| same_shape(p, c)) {
            sql = row_sql(c);
        }
        prev = Some(c);
        let mut stmt = tx.prepare_cached(&sql).map_err(classify)?;
        stmt.execute(params_from_iter(c.values()))
            .map_err(classify)?;
    }
    tx.commit().map_err(classify)?;
    Ok(Applied::Now)
}

impl Target for SqliteTarget {
    fn execute<'a>(&'a self, batch: Batch<'a>) -> BoxFuture<'a, Result<Applied, TargetError>> {
        let (conn, ready) = (self.conn.clone(), self.ledger_ready.clone());
        match self.mode {
            SqliteMode::Statements => {
                let statements = batch.statements.to_vec();
                Box::pin(blocking(move || {
                    let mut conn = lock(&conn);
                    ensure_ledger(&conn, &ready)?;
                    let answer = ledger::outcome(apply_statements(&mut conn, &statements));
                    ledger_missing(answer, &ready)
                }))
            }
            SqliteMode::Rows => {
                // On a multi-threaded runtime the batch is applied in place (no copy of the
                // changes); elsewhere on the blocking pool.
                let multi = tokio::runtime::Handle::try_current().is_ok_and(|h| {
                    h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread
                });
                let request = batch.request;
                if multi {
                    let changes = batch.changes;
                    Box::pin(async move {
                        tokio::task::block_in_place(|| {
                            let answer = apply_rows(&mut lock(&conn), &ready, request, changes);
                            ledger_missing(answer, &ready)
                        })
                    })
                } else {
                    let (changes, request) = (batch.changes.to_vec(), request.clone());
                    Box::pin(blocking(move || {
                        let answer = apply_rows(&mut lock(&conn), &ready, &request, &changes);
                        ledger_missing(answer, &ready)
                    }))
                }
            }
        }
    }

    fn limits(&self) -> PackLimits {
        match self.mode {
            // One transaction of one-row statements: nothing on the way to bound, so a
            // request is the whole batch the worker claimed.
            SqliteMode::Rows => PackLimits {
                max_statements: usize::MAX,
                ..self.limits
            },
            SqliteMode::Statements => self.limits,
        }
    }

    fn wants_statements(&self) -> bool {
        self.mode == SqliteMode::Statements
    }

    fn describe(&self) -> String {
        format!("SQLite file {}", self.path.display())
    }

    fn applied_migrations<'a>(
        &'a self,
        table: &'a str,
    ) -> BoxFuture<'a, Result<Option<Vec<String>>, TargetError>> {
        let (conn, table) = (self.conn.clone(), table.to_string());
        Box::pin(blocking(move || {
            crate::migrate::recorded_local(&lock(&conn), &table)
                .map(|r| Some(r.names))
                .map_err(|e| TargetError::Transient(e.to_string()))
        }))
    }

    fn dump<'a>(
        &'a self,
        table: &'a TableDef,
    ) -> BoxFuture<'a, Result<Option<Vec<String>>, TargetError>> {
        let (conn, table) = (self.conn.clone(), table.clone());
        Box::pin(blocking(move || {
            crate::verify::dump_local(&lock(&conn), &table)
                .map(Some)
                .map_err(|e| TargetError::Transient(e.to_string()))
        }))
    }
}
