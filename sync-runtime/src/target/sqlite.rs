//! [`SqliteTarget`]: the same changes applied to a local SQLite file — the embedded default
//! (`d1sync demo`) and a mirror without Cloudflare.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use d1_sync_schema::guard;
use d1_sync_schema::sql::{delete_sql, update_sql, upsert_sql};
use rusqlite::{params_from_iter, Connection, ErrorCode};

use super::{
    Applied, Batch, BoxFuture, PackLimits, RequestId, StaleCheck, Statement, Superseded, Target,
    TargetError,
};
use crate::change::{Change, Op};
use crate::error::Error;
use crate::ledger;
use crate::outbox::BUSY_TIMEOUT;
use crate::pack::DEFER_FOREIGN_KEYS;
use crate::row::TableDef;
use crate::txn::set_wal;
use crate::value::Value;

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
        conn.busy_timeout(BUSY_TIMEOUT)
            .and_then(|()| set_wal(&conn, BUSY_TIMEOUT))
            .and_then(|()| {
                conn.execute_batch("PRAGMA synchronous = NORMAL; PRAGMA foreign_keys = ON;")
            })
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
        blocking(move || apply_statements(&mut lock(&conn), &statements, &[]).map(drop)).await
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

/// Runs `statements` in one transaction; the result rows `(i, v)` of the statements `checks`
/// name come back with the check's index in `checks`.
fn apply_statements(
    conn: &mut Connection,
    statements: &[Statement],
    checks: &[StaleCheck],
) -> Result<Vec<(usize, i64, Option<i64>)>, TargetError> {
    let tx = conn.transaction().map_err(classify)?;
    let mut refused = Vec::new();
    for (n, s) in statements.iter().enumerate() {
        let mut stmt = tx.prepare_cached(&s.sql).map_err(classify)?;
        match checks.iter().position(|c| c.statement == n) {
            Some(k) => {
                let mut rows = stmt
                    .query(params_from_iter(s.params.iter()))
                    .map_err(classify)?;
                while let Some(r) = rows.next().map_err(classify)? {
                    let i: i64 = r.get(0).map_err(classify)?;
                    let v: Option<String> = r.get(1).map_err(classify)?;
                    refused.push((k, i, v.and_then(|v| v.parse().ok())));
                }
            }
            None => {
                stmt.execute(params_from_iter(s.params.iter()))
                    .map_err(classify)?;
            }
        }
    }
    tx.commit().map_err(classify)?;
    Ok(refused)
}

/// The one-row SQL of a change's shape: for a versioned change, the read of the versions the
/// target holds for its key (see [`guard::refusing`]), then the guarded statements.
struct RowSql {
    trigger: Option<String>,
    versions: Option<String>,
    apply: Vec<String>,
    /// A versioned upsert's statement for a row that no tombstone can refuse: the row guard
    /// alone ([`guard::save_sql`]), which writes what `apply` writes then; and the read of
    /// whether a tombstone of the row's key is as new as the write
    /// ([`guard::newer_tombstone_sql`]).
    untombstoned: Option<(String, String)>,
}

/// Which tables hold no tombstone in the target, as read in the request's transaction, until
/// a write could have made one.
#[derive(Default)]
struct Tombstones<'a> {
    none: std::collections::HashMap<&'a str, bool>,
}

impl<'a> Tombstones<'a> {
    /// Whether the target holds no tombstone of `table` (read once, then remembered).
    fn none_of(
        &mut self,
        tx: &rusqlite::Transaction<'_>,
        table: &'a str,
    ) -> Result<bool, TargetError> {
        if let Some(&none) = self.none.get(table) {
            return Ok(none);
        }
        let any: bool = tx
            .prepare_cached(&guard::any_tombstone_sql())
            .and_then(|mut st| st.query_row([table], |r| r.get(0)))
            .map_err(classify)?;
        self.none.insert(table, !any);
        Ok(!any)
    }

    /// A write may have left a tombstone: read again.
    fn forget(&mut self) {
        self.none.clear();
    }
}

fn row_sql(c: &Change) -> RowSql {
    let cols: Vec<&str> = c.columns.iter().map(String::as_str).collect();
    let pk: Vec<&str> = c.table.primary_key.iter().map(String::as_str).collect();
    let io: Vec<&str> = c.table.insert_only.iter().map(String::as_str).collect();
    let set = &cols[pk.len().min(cols.len())..];
    let name = &c.table.name;
    match c.table.version.as_deref().filter(|_| c.version.is_some()) {
        None => RowSql {
            trigger: None,
            versions: None,
            apply: vec![match c.op {
                Op::Upsert => upsert_sql(name, &cols, &pk, &io),
                Op::Update => update_sql(name, &pk, set),
                Op::Delete => delete_sql(name, &cols),
            }],
            untombstoned: None,
        },
        Some(v) => RowSql {
            trigger: Some(guard::tombstone_trigger_sql(name, &pk, v)),
            versions: Some(guard::versions_row_sql(name, &pk, v)),
            apply: match c.op {
                Op::Upsert => vec![guard::upsert_row_sql(name, &cols, &pk, &io, v)],
                Op::Update => vec![guard::update_row_sql(name, &pk, set, v)],
                Op::Delete => guard::delete_row_sql(name, &pk, v).to_vec(),
            },
            untombstoned: (c.op == Op::Upsert).then(|| {
                (
                    guard::save_sql(name, &cols, &pk, &io, v),
                    guard::newer_tombstone_sql(name, &pk),
                )
            }),
        },
    }
}

/// The values of `c`'s key, in key order, from its `values`.
fn key_values<'v>(c: &Change, values: &'v [Value]) -> Vec<&'v Value> {
    c.table
        .primary_key
        .iter()
        .filter_map(|k| c.columns.iter().position(|x| x == k))
        .filter_map(|i| values.get(i))
        .collect()
}

/// Whether the target holds a tombstone of `c`'s key at its version or newer (`newer`:
/// [`guard::newer_tombstone_sql`]), read in `tx`. A change without a version may be refused
/// by any: `true`.
fn newer_tombstone(
    tx: &rusqlite::Transaction<'_>,
    newer: &str,
    c: &Change,
    values: &[Value],
) -> Result<bool, TargetError> {
    let Some(version) = c.version.map(Value::Integer) else {
        return Ok(true);
    };
    let mut params = key_values(c, values);
    params.push(&version);
    tx.prepare_cached(newer)
        .and_then(|mut st| st.query_row(params_from_iter(params), |r| r.get(0)))
        .map_err(classify)
}

/// The version that refuses a versioned change, if any: read from the target in `tx`.
fn refused_by(
    tx: &rusqlite::Transaction<'_>,
    versions: &str,
    c: &Change,
    values: &[Value],
) -> Result<Option<i64>, TargetError> {
    let Some(sent) = c.version else {
        return Ok(None);
    };
    let key = key_values(c, values);
    let (row, tombstone): (Option<i64>, Option<i64>) = tx
        .prepare_cached(versions)
        .and_then(|mut st| st.query_row(params_from_iter(key), |r| Ok((r.get(0)?, r.get(1)?))))
        .map_err(classify)?;
    Ok(guard::refusing(c.op.guarded(), sent, row, tombstone))
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
    let mut sql = RowSql {
        trigger: None,
        versions: None,
        apply: Vec::new(),
        untombstoned: None,
    };
    let mut prev: Option<&Change> = None;
    let mut superseded = Vec::new();
    let mut tombstones = Tombstones::default();
    for c in changes {
        if !prev.is_some_and(|p| same_shape(p, c)) {
            sql = row_sql(c);
            if let Some(trigger) = &sql.trigger {
                tx.prepare_cached(trigger)
                    .and_then(|mut st| st.execute([]))
                    .map_err(classify)?;
            }
        }
        prev = Some(c);
        let values = c.values();
        let apply = match &sql.untombstoned {
            Some((plain, newer))
                if tombstones.none_of(&tx, &c.table.name)?
                    || !newer_tombstone(&tx, newer, c, &values)? =>
            {
                std::slice::from_ref(plain)
            }
            _ => &sql.apply[..],
        };
        let before = tx.total_changes();
        let (mut changed, mut direct) = (0, 0);
        for apply in apply {
            let mut stmt = tx.prepare_cached(apply).map_err(classify)?;
            changed = stmt
                .execute(params_from_iter(values.iter()))
                .map_err(classify)?;
            direct += changed as u64;
        }
        // A delete leaves a tombstone; so may a trigger or a foreign-key action, whose rows
        // count in the connection's total but not in the statements' own.
        if c.op == Op::Delete || tx.total_changes() - before != direct {
            tombstones.forget();
        }
        // The guarded statement (the last) changed nothing: refused, or (an update or delete)
        // no such row. The versions the target holds now are the ones the guard saw.
        if let (Some(versions), 0) = (&sql.versions, changed) {
            if let Some(held) = refused_by(&tx, versions, c, &values)? {
                superseded.push(Superseded {
                    id: c.id,
                    held: Some(held),
                });
            }
        }
    }
    tx.commit().map_err(classify)?;
    Ok(Applied::Now { superseded })
}

impl Target for SqliteTarget {
    fn execute<'a>(&'a self, batch: Batch<'a>) -> BoxFuture<'a, Result<Applied, TargetError>> {
        let (conn, ready) = (self.conn.clone(), self.ledger_ready.clone());
        match self.mode {
            SqliteMode::Statements => {
                let (statements, checks) = (batch.statements.to_vec(), batch.checks.to_vec());
                Box::pin(async move {
                    let refused = blocking(move || {
                        let mut conn = lock(&conn);
                        ensure_ledger(&conn, &ready)?;
                        match apply_statements(&mut conn, &statements, &checks) {
                            Ok(rows) => Ok(Some(rows)),
                            // A ledger refusal (`None`: applied before), or an error.
                            Err(e) => ledger_missing(ledger::outcome(Err(e)), &ready).map(|_| None),
                        }
                    })
                    .await?;
                    Ok(match refused {
                        None => Applied::Before,
                        Some(rows) => Applied::Now {
                            superseded: rows
                                .into_iter()
                                .flat_map(|(k, i, v)| batch.superseded(&batch.checks[k], [(i, v)]))
                                .collect(),
                        },
                    })
                })
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
            // One transaction of one-row statements: nothing on the way to bound, and no
            // request budget to save, so a request is 2,000 rows: larger transactions gain a
            // local file nothing and hold more of the backlog in memory.
            SqliteMode::Rows => PackLimits {
                max_statements: usize::MAX,
                max_rows_per_request: self.limits.max_rows_per_request.min(2_000),
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

    fn deleted<'a>(
        &'a self,
        table: &'a TableDef,
        row_key: &'a str,
    ) -> BoxFuture<'a, Result<Option<i64>, TargetError>> {
        let (conn, table, key) = (self.conn.clone(), table.clone(), row_key.to_string());
        Box::pin(blocking(move || {
            let pk: Vec<&str> = table.primary_key.iter().map(String::as_str).collect();
            let sql = guard::deleted_sql(&table.name, &pk);
            let conn = lock(&conn);
            let found: rusqlite::Result<Option<String>> = conn
                .prepare_cached(&sql)
                .and_then(|mut st| st.query_row([&key], |r| r.get(0)));
            match found {
                Ok(v) => Ok(v.and_then(|v| v.parse().ok())),
                Err(rusqlite::Error::QueryReturnedNoRows) => Ok(None),
                Err(e) if e.to_string().contains("no such table") => Ok(None),
                Err(e) => Err(classify(e)),
            }
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
