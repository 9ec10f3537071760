//! The durable outbox: a queue table in the application's own SQLite file.
//!
//! A change is enqueued in the application's transaction, so the row write and its record
//! commit together or not at all. Records of one row go out in the order they were written;
//! a record that waits (backoff, a claim by another worker, a dead letter) holds back the
//! later records of *its* row only. Claims take a lease, so a crash or a second process never
//! loses or double-sends a claim: an expired lease is claimed again.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rusqlite::{params, Connection, OptionalExtension, Transaction};

use crate::change::{Op, RawRecord};
use crate::codec;
use crate::error::{Error, Result};
use crate::row::SyncRow;
use crate::value::Value;

/// The queue schema version this build writes.
const QUEUE_VERSION: i64 = 1;

/// Milliseconds since the Unix epoch.
pub(crate) fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// Status of a queue record, as stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Status {
    /// Waiting to be sent (perhaps until `next_attempt_at`).
    Pending,
    /// Claimed by a worker under a lease.
    InFlight,
    /// Acknowledged by the target.
    Synced,
    /// Dead letter: never sent again unless retried.
    Failed,
}

impl Status {
    /// As stored.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Pending => "pending",
            Status::InFlight => "in_flight",
            Status::Synced => "synced",
            Status::Failed => "failed",
        }
    }
}

/// Counts of records by status.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct Counts {
    /// Waiting to be sent.
    pub pending: u64,
    /// Claimed by a worker.
    pub in_flight: u64,
    /// Acknowledged and not yet purged.
    pub synced: u64,
    /// Dead letters.
    pub failed: u64,
    /// `created_at` (ms) of the oldest pending or in-flight record.
    pub oldest_unsynced_ms: Option<i64>,
}

/// A dead letter.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct DeadLetter {
    /// Queue id.
    pub id: i64,
    /// Table.
    pub table: String,
    /// Row key (JSON array).
    pub row_key: String,
    /// Operation.
    pub op: String,
    /// Attempts charged.
    pub attempts: u32,
    /// Why it failed.
    pub last_error: String,
    /// When it was written (ms).
    pub created_at: i64,
}

/// A lease held by a worker.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Lease {
    /// The worker's id.
    pub owner: String,
    /// Records it holds.
    pub records: u64,
    /// When the lease ends (ms).
    pub until_ms: i64,
}

/// Which dead letters an operation applies to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Selection {
    /// One record.
    Id(i64),
    /// All dead letters.
    All,
}

/// The outbox: names the queue table and holds every query on it.
///
/// ```
/// use d1_sync::{D1Sync, Outbox};
/// # fn main() -> Result<(), d1_sync::Error> {
/// #[derive(D1Sync)]
/// #[d1(table = "notes")]
/// struct Note { #[d1(primary_key)] id: i64, body: String }
///
/// let mut conn = d1_sync::rusqlite::Connection::open_in_memory()?;
/// conn.execute_batch("CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT)")?;
/// let outbox = Outbox::new();
/// outbox.install(&conn)?;
///
/// let tx = conn.transaction()?;
/// outbox.save(&tx, &Note { id: 1, body: "hello".into() })?; // the row and its record...
/// tx.commit()?;                                               // ...commit together
/// assert_eq!(outbox.counts(&conn)?.pending, 1);
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outbox {
    table: String,
    q: String,
}

impl Default for Outbox {
    fn default() -> Self {
        Outbox::with_table(Outbox::DEFAULT_TABLE)
    }
}

impl Outbox {
    /// The default queue table name.
    pub const DEFAULT_TABLE: &'static str = "d1_sync_queue";

    /// The outbox in [`Outbox::DEFAULT_TABLE`].
    pub fn new() -> Outbox {
        Outbox::default()
    }

    /// The outbox in another table.
    pub fn with_table(name: impl Into<String>) -> Outbox {
        let table = name.into();
        let q = d1_sync_schema::sql::quote_ident(&table);
        Outbox { table, q }
    }

    /// The queue table's name.
    pub fn table_name(&self) -> &str {
        &self.table
    }

    fn index(&self, suffix: &str) -> String {
        d1_sync_schema::sql::quote_ident(&format!("{}_{suffix}", self.table))
    }

    /// Creates the queue table (and its indexes) if missing, or migrates it; refuses a queue
    /// made by a newer d1-sync. Idempotent; does not change the connection's pragmas.
    pub fn install(&self, conn: &Connection) -> Result<()> {
        conn.execute_batch(
            "CREATE TABLE IF NOT EXISTS d1_sync_meta (key TEXT PRIMARY KEY NOT NULL, value INTEGER NOT NULL)",
        )?;
        let key = format!("queue_version:{}", self.table);
        let found: Option<i64> = conn
            .query_row(
                "SELECT value FROM d1_sync_meta WHERE key = ?1",
                [&key],
                |r| r.get(0),
            )
            .optional()?;
        if let Some(found) = found {
            if found > QUEUE_VERSION {
                return Err(Error::QueueTooNew {
                    table: self.table.clone(),
                    found,
                    supported: QUEUE_VERSION,
                });
            }
            if found == QUEUE_VERSION {
                return Ok(());
            }
        }
        let q = &self.q;
        conn.execute_batch(&format!(
            "CREATE TABLE IF NOT EXISTS {q} (
               id INTEGER PRIMARY KEY AUTOINCREMENT,
               table_name TEXT NOT NULL,
               row_key TEXT NOT NULL,
               op TEXT NOT NULL,
               payload TEXT NOT NULL,
               status TEXT NOT NULL DEFAULT 'pending',
               attempts INTEGER NOT NULL DEFAULT 0,
               next_attempt_at INTEGER NOT NULL DEFAULT 0,
               lease_owner TEXT,
               lease_until INTEGER,
               last_error TEXT,
               created_at INTEGER NOT NULL,
               updated_at INTEGER NOT NULL,
               synced_at INTEGER
             );
             CREATE INDEX IF NOT EXISTS {status} ON {q} (status, id);
             CREATE INDEX IF NOT EXISTS {row} ON {q} (table_name, row_key, id, status, next_attempt_at);",
            status = self.index("status_id"),
            row = self.index("row"),
        ))?;
        conn.execute(
            "INSERT INTO d1_sync_meta (key, value) VALUES (?1, ?2) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            params![key, QUEUE_VERSION],
        )?;
        Ok(())
    }

    /// Checks, without writing, that the queue exists and that this build understands it.
    pub fn check(&self, conn: &Connection) -> Result<()> {
        let exists: bool = conn.query_row(
            "SELECT count(*) > 0 FROM sqlite_schema WHERE type = 'table' AND name = ?1",
            [&self.table],
            |r| r.get(0),
        )?;
        if !exists {
            return Err(Error::NotInstalled(self.table.clone()));
        }
        let meta: bool = conn.query_row(
            "SELECT count(*) > 0 FROM sqlite_schema WHERE type = 'table' AND name = 'd1_sync_meta'",
            [],
            |r| r.get(0),
        )?;
        if meta {
            let found: Option<i64> = conn
                .query_row(
                    "SELECT value FROM d1_sync_meta WHERE key = ?1",
                    [format!("queue_version:{}", self.table)],
                    |r| r.get(0),
                )
                .optional()?;
            if let Some(found) = found.filter(|f| *f > QUEUE_VERSION) {
                return Err(Error::QueueTooNew {
                    table: self.table.clone(),
                    found,
                    supported: QUEUE_VERSION,
                });
            }
        }
        Ok(())
    }

    fn map_missing(&self, e: rusqlite::Error) -> Error {
        if e.to_string().contains("no such table") {
            Error::NotInstalled(self.table.clone())
        } else {
            Error::Sqlite(e)
        }
    }

    /// Enqueues a record as stored text (no checks). The typed methods below are the normal
    /// way; this one exists for tools and tests that need to write arbitrary records.
    pub fn enqueue_raw(
        &self,
        conn: &Connection,
        table: &str,
        row_key: &str,
        op: &str,
        payload: &str,
    ) -> Result<i64> {
        let now = now_ms();
        conn.prepare_cached(&format!(
            "INSERT INTO {} (table_name, row_key, op, payload, created_at, updated_at) VALUES (?1, ?2, ?3, ?4, ?5, ?5)",
            self.q
        ))
        .and_then(|mut s| s.execute(params![table, row_key, op, payload, now]))
        .map_err(|e| self.map_missing(e))?;
        Ok(conn.last_insert_rowid())
    }

    fn enqueue<T: SyncRow>(
        &self,
        conn: &Connection,
        key: &[Value],
        op: Op,
        payload: String,
    ) -> Result<i64> {
        self.enqueue_raw(
            conn,
            T::TABLE,
            &codec::stored_array(key),
            op.as_str(),
            &payload,
        )
    }

    /// Enqueues an upsert of the whole row. Does not write the row locally: see [`Outbox::save`].
    pub fn upsert<T: SyncRow>(&self, tx: &Transaction<'_>, row: &T) -> Result<i64> {
        let values = row.values();
        let payload = codec::stored_object(T::COLUMNS.iter().copied().zip(values.iter()));
        self.enqueue::<T>(tx, &row.key_values(), Op::Upsert, payload)
    }

    /// Enqueues an update of some columns of an existing row: an `UPDATE` on D1, which
    /// leaves other columns alone and creates no row. Key and insert-only columns cannot be
    /// set; at least one other column must be.
    pub fn update<T: SyncRow>(
        &self,
        tx: &Transaction<'_>,
        row: &T,
        columns: &[&str],
    ) -> Result<i64> {
        if columns.is_empty() {
            return Err(Error::Config(format!(
                "an update of `{}` must name at least one column",
                T::TABLE
            )));
        }
        for c in columns {
            if !T::COLUMNS.contains(c) {
                return Err(Error::UnknownColumn {
                    table: T::TABLE.to_string(),
                    column: (*c).to_string(),
                });
            }
            if T::PRIMARY_KEY.contains(c) || T::INSERT_ONLY.contains(c) {
                return Err(Error::NotUpdatable {
                    table: T::TABLE.to_string(),
                    column: (*c).to_string(),
                });
            }
        }
        let values = row.values();
        let payload = codec::stored_object(
            T::COLUMNS
                .iter()
                .copied()
                .zip(values.iter())
                .filter(|(c, _)| T::PRIMARY_KEY.contains(c) || columns.contains(c)),
        );
        self.enqueue::<T>(tx, &row.key_values(), Op::Update, payload)
    }

    /// Enqueues a delete of the row. Does not delete locally: see [`Outbox::remove`].
    pub fn delete<T: SyncRow>(&self, tx: &Transaction<'_>, row: &T) -> Result<i64> {
        self.delete_key::<T>(tx, &row.key_values())
    }

    /// Enqueues a delete by key values, in `T::PRIMARY_KEY` order.
    pub fn delete_key<T: SyncRow>(&self, tx: &Transaction<'_>, key: &[Value]) -> Result<i64> {
        if key.len() != T::PRIMARY_KEY.len() {
            return Err(Error::KeyArity {
                table: T::TABLE.to_string(),
                want: T::PRIMARY_KEY.len(),
                got: key.len(),
            });
        }
        let payload = codec::stored_object(T::PRIMARY_KEY.iter().copied().zip(key.iter()));
        self.enqueue::<T>(tx, key, Op::Delete, payload)
    }

    /// Writes the row locally (`T::UPSERT_SQL`) and enqueues it, in the caller's transaction.
    pub fn save<T: SyncRow>(&self, tx: &Transaction<'_>, row: &T) -> Result<i64> {
        tx.prepare_cached(T::UPSERT_SQL)?
            .execute(rusqlite::params_from_iter(row.values()))?;
        self.upsert(tx, row)
    }

    /// Deletes the row locally (`T::DELETE_SQL`) and enqueues the delete, in the caller's
    /// transaction.
    pub fn remove<T: SyncRow>(&self, tx: &Transaction<'_>, row: &T) -> Result<i64> {
        tx.prepare_cached(T::DELETE_SQL)?
            .execute(rusqlite::params_from_iter(row.key_values()))?;
        self.delete(tx, row)
    }

    /// Counts by status, and the age of the oldest unsynced record.
    pub fn counts(&self, conn: &Connection) -> Result<Counts> {
        let mut c = Counts::default();
        let mut stmt = conn
            .prepare_cached(&format!(
                "SELECT status, count(*) FROM {} GROUP BY status",
                self.q
            ))
            .map_err(|e| self.map_missing(e))?;
        let mut rows = stmt.query([])?;
        while let Some(r) = rows.next()? {
            let status: String = r.get(0)?;
            let n = u64::try_from(r.get::<_, i64>(1)?).unwrap_or(0);
            match status.as_str() {
                "pending" => c.pending = n,
                "in_flight" => c.in_flight = n,
                "synced" => c.synced = n,
                "failed" => c.failed = n,
                _ => {}
            }
        }
        c.oldest_unsynced_ms = conn.query_row(
            &format!(
                "SELECT min(t) FROM (SELECT (SELECT created_at FROM {q} WHERE status = 'pending' ORDER BY id LIMIT 1) AS t
                 UNION ALL SELECT (SELECT created_at FROM {q} WHERE status = 'in_flight' ORDER BY id LIMIT 1))",
                q = self.q
            ),
            [],
            |r| r.get(0),
        )?;
        Ok(c)
    }

    /// Dead letters, oldest first, at most `limit`.
    pub fn failed(&self, conn: &Connection, limit: usize) -> Result<Vec<DeadLetter>> {
        let mut stmt = conn
            .prepare_cached(&format!(
                "SELECT id, table_name, row_key, op, attempts, coalesce(last_error, ''), created_at FROM {} WHERE status = 'failed' ORDER BY id LIMIT ?1",
                self.q
            ))
            .map_err(|e| self.map_missing(e))?;
        let rows = stmt
            .query_map([i64::try_from(limit).unwrap_or(i64::MAX)], |r| {
                let text = |i| -> rusqlite::Result<String> {
                    Ok(String::from_utf8_lossy(&bytes_of(r.get_ref(i)?)).into_owned())
                };
                Ok(DeadLetter {
                    id: r.get(0)?,
                    table: text(1)?,
                    row_key: text(2)?,
                    op: text(3)?,
                    attempts: attempts_of(r.get_ref(4)?),
                    last_error: text(5)?,
                    created_at: r.get::<_, Option<i64>>(6)?.unwrap_or(0),
                })
            })?
            .collect::<Result<Vec<_>, _>>()?;
        Ok(rows)
    }

    /// Puts dead letters back in line: pending, attempts reset, due now. Returns how many.
    pub fn retry(&self, conn: &Connection, which: Selection) -> Result<usize> {
        let sql = format!(
            "UPDATE {} SET status = 'pending', attempts = 0, next_attempt_at = 0, updated_at = ?1 WHERE status = 'failed' AND (?2 IS NULL OR id = ?2)",
            self.q
        );
        conn.execute(&sql, params![now_ms(), selection_id(which)])
            .map_err(|e| self.map_missing(e))
    }

    /// Deletes dead letters for good. Returns how many.
    pub fn drop_failed(&self, conn: &Connection, which: Selection) -> Result<usize> {
        let sql = format!(
            "DELETE FROM {} WHERE status = 'failed' AND (?1 IS NULL OR id = ?1)",
            self.q
        );
        conn.execute(&sql, params![selection_id(which)])
            .map_err(|e| self.map_missing(e))
    }

    /// Leases held now, by worker.
    pub fn leases(&self, conn: &Connection) -> Result<Vec<Lease>> {
        let mut stmt = conn
            .prepare_cached(&format!(
                "SELECT lease_owner, count(*), max(lease_until) FROM {} WHERE status = 'in_flight' AND lease_until > ?1 GROUP BY lease_owner",
                self.q
            ))
            .map_err(|e| self.map_missing(e))?;
        let rows = stmt
            .query_map([now_ms()], |r| {
                Ok(Lease {
                    owner: r.get::<_, Option<String>>(0)?.unwrap_or_default(),
                    records: u64::try_from(r.get::<_, i64>(1)?).unwrap_or(0),
                    until_ms: r.get(2)?,
                })
            })?
            .collect::<Result<Vec<_>, _>>()?;
        Ok(rows)
    }

    /// The last error of the newest dead letter or retried record.
    pub fn last_error(&self, conn: &Connection) -> Result<Option<String>> {
        conn.query_row(
                &format!(
                    "SELECT last_error FROM {} WHERE last_error IS NOT NULL ORDER BY updated_at DESC, id DESC LIMIT 1",
                    self.q
                ),
                [],
                |r| r.get(0),
            )
            .optional()
            .map_err(|e| self.map_missing(e))
    }

    /// Claims up to `limit` eligible records for `owner` until `now + lease`.
    ///
    /// Eligible: pending and due, or in flight under an expired lease; and no earlier record
    /// of the same row is waiting (failed, in flight, or pending but not yet due). Because
    /// that looks at *all* earlier records of the row, a held-back record holds back every
    /// later one of its row; records of other rows go on.
    pub(crate) fn claim(
        &self,
        conn: &mut Connection,
        owner: &str,
        now: i64,
        lease: Duration,
        limit: usize,
    ) -> Result<Vec<RawRecord>> {
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let q = &self.q;
        tx.prepare_cached(&format!(
            "UPDATE {q} SET status = 'pending', lease_owner = NULL, lease_until = NULL, updated_at = ?1 WHERE status = 'in_flight' AND lease_until <= ?1"
        ))?
        .execute([now])?;
        let records = {
            let mut stmt = tx.prepare_cached(&format!(
                "SELECT id, table_name, row_key, op, payload, attempts FROM {q} AS r
                 WHERE r.status = 'pending' AND r.next_attempt_at <= ?1
                   AND NOT EXISTS (
                     SELECT 1 FROM {q} AS e
                     WHERE e.table_name = r.table_name AND e.row_key = r.row_key AND e.id < r.id
                       AND (e.status IN ('failed', 'in_flight') OR (e.status = 'pending' AND e.next_attempt_at > ?1)))
                 ORDER BY r.id LIMIT ?2"
            ))?;
            let rows = stmt
                .query_map(
                    params![now, i64::try_from(limit).unwrap_or(i64::MAX)],
                    |r| {
                        // Whatever was written into the queue by hand must not stop the
                        // claim: read any storage class; `change::check` judges the content.
                        let text = |i| -> rusqlite::Result<String> {
                            Ok(String::from_utf8_lossy(&bytes_of(r.get_ref(i)?)).into_owned())
                        };
                        Ok(RawRecord {
                            id: r.get(0)?,
                            table: text(1)?,
                            row_key: text(2)?,
                            op: text(3)?,
                            payload: bytes_of(r.get_ref(4)?),
                            attempts: attempts_of(r.get_ref(5)?),
                        })
                    },
                )?
                .collect::<Result<Vec<_>, _>>()?;
            rows
        };
        let until = now.saturating_add(i64::try_from(lease.as_millis()).unwrap_or(i64::MAX));
        {
            let mut stmt = tx.prepare_cached(&format!(
                "UPDATE {q} SET status = 'in_flight', lease_owner = ?1, lease_until = ?2, updated_at = ?3 WHERE id = ?4"
            ))?;
            for r in &records {
                stmt.execute(params![owner, until, now, r.id])?;
            }
        }
        tx.commit()?;
        Ok(records)
    }

    /// Marks records synced, if `owner` still holds them.
    pub(crate) fn mark_synced(
        &self,
        conn: &mut Connection,
        owner: &str,
        ids: &[i64],
    ) -> Result<usize> {
        let now = now_ms();
        let tx = conn.transaction()?;
        let mut n = 0;
        {
            let mut stmt = tx.prepare_cached(&format!(
                "UPDATE {} SET status = 'synced', synced_at = ?1, updated_at = ?1, lease_owner = NULL, lease_until = NULL, last_error = NULL
                 WHERE id = ?2 AND status = 'in_flight' AND lease_owner = ?3",
                self.q
            ))?;
            for id in ids {
                n += stmt.execute(params![now, id, owner])?;
            }
        }
        tx.commit()?;
        Ok(n)
    }

    /// Gives claims back uncharged (the outcome is unknown or they were never sent).
    pub(crate) fn release(&self, conn: &mut Connection, owner: &str, ids: &[i64]) -> Result<usize> {
        let now = now_ms();
        let tx = conn.transaction()?;
        let mut n = 0;
        {
            let mut stmt = tx.prepare_cached(&format!(
                "UPDATE {} SET status = 'pending', lease_owner = NULL, lease_until = NULL, updated_at = ?1
                 WHERE id = ?2 AND status = 'in_flight' AND lease_owner = ?3",
                self.q
            ))?;
            for id in ids {
                n += stmt.execute(params![now, id, owner])?;
            }
        }
        tx.commit()?;
        Ok(n)
    }

    /// Gives back every claim `owner` holds (shutdown, or a task that was cut off).
    pub(crate) fn release_all(&self, conn: &Connection, owner: &str) -> Result<usize> {
        Ok(conn.execute(
            &format!(
                "UPDATE {} SET status = 'pending', lease_owner = NULL, lease_until = NULL, updated_at = ?1 WHERE status = 'in_flight' AND lease_owner = ?2",
                self.q
            ),
            params![now_ms(), owner],
        )?)
    }

    /// Charges failed records an attempt: back to pending due at its `next_at`, or to
    /// `failed` once `max_attempts` is reached. Each entry: id, error, next attempt time (ms).
    pub(crate) fn charge(
        &self,
        conn: &mut Connection,
        owner: &str,
        failures: &[(i64, String, i64)],
        max_attempts: u32,
    ) -> Result<()> {
        let now = now_ms();
        let tx = conn.transaction()?;
        {
            let mut stmt = tx.prepare_cached(&format!(
                "UPDATE {} SET attempts = attempts + 1, last_error = ?1, next_attempt_at = ?2, updated_at = ?3,
                   status = CASE WHEN attempts + 1 >= ?4 THEN 'failed' ELSE 'pending' END,
                   lease_owner = NULL, lease_until = NULL
                 WHERE id = ?5 AND status = 'in_flight' AND lease_owner = ?6",
                self.q
            ))?;
            for (id, err, next_at) in failures {
                stmt.execute(params![err, next_at, now, max_attempts, id, owner])?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    /// Dead-letters records that can never ship, with the reason.
    pub(crate) fn fail(
        &self,
        conn: &mut Connection,
        owner: &str,
        failures: &[(i64, String)],
    ) -> Result<()> {
        let now = now_ms();
        let tx = conn.transaction()?;
        {
            let mut stmt = tx.prepare_cached(&format!(
                "UPDATE {} SET status = 'failed', last_error = ?1, updated_at = ?2, lease_owner = NULL, lease_until = NULL
                 WHERE id = ?3 AND status = 'in_flight' AND lease_owner = ?4",
                self.q
            ))?;
            for (id, reason) in failures {
                stmt.execute(params![reason, now, id, owner])?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    /// Deletes synced records except the newest `keep`. Returns how many went.
    pub fn purge(&self, conn: &Connection, keep: usize) -> Result<usize> {
        Ok(conn.execute(
            &format!(
                "DELETE FROM {q} WHERE status = 'synced' AND id NOT IN
                   (SELECT id FROM {q} WHERE status = 'synced' ORDER BY id DESC LIMIT ?1)",
                q = self.q
            ),
            [i64::try_from(keep).unwrap_or(i64::MAX)],
        )?)
    }
}

/// The bytes of any SQLite value (numbers as their text; NULL as nothing).
fn bytes_of(v: rusqlite::types::ValueRef<'_>) -> Vec<u8> {
    use rusqlite::types::ValueRef;
    match v {
        ValueRef::Null => Vec::new(),
        ValueRef::Integer(i) => i.to_string().into_bytes(),
        ValueRef::Real(f) => f.to_string().into_bytes(),
        ValueRef::Text(t) | ValueRef::Blob(t) => t.to_vec(),
    }
}

/// An attempts count as stored; anything but a non-negative integer counts as 0.
fn attempts_of(v: rusqlite::types::ValueRef<'_>) -> u32 {
    match v {
        rusqlite::types::ValueRef::Integer(i) => u32::try_from(i).unwrap_or(0),
        _ => 0,
    }
}

fn selection_id(which: Selection) -> Option<i64> {
    match which {
        Selection::Id(id) => Some(id),
        Selection::All => None,
    }
}

/// Opens (creating if needed) the application's database with the settings the outbox wants
/// — WAL, `synchronous = FULL` (a returned commit survives power loss), foreign keys on, a 5 s
/// busy timeout — and installs the default outbox.
pub fn open(path: impl AsRef<std::path::Path>) -> Result<Connection> {
    let path = path.as_ref();
    let db = |source| Error::Database {
        path: path.to_path_buf(),
        source,
    };
    let conn = Connection::open(path).map_err(db)?;
    conn.execute_batch(
        "PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL; PRAGMA foreign_keys = ON; PRAGMA busy_timeout = 5000;",
    )
    .map_err(db)?;
    Outbox::new().install(&conn)?;
    Ok(conn)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::change::Op;

    fn setup() -> (Connection, Outbox) {
        let conn = Connection::open_in_memory().unwrap();
        let o = Outbox::new();
        o.install(&conn).unwrap();
        o.install(&conn).unwrap();
        (conn, o)
    }

    fn put(conn: &Connection, o: &Outbox, key: &str) -> i64 {
        o.enqueue_raw(
            conn,
            "t",
            &format!("[\"{key}\"]"),
            Op::Upsert.as_str(),
            &format!("{{\"id\":\"{key}\"}}"),
        )
        .unwrap()
    }

    fn ids(records: &[RawRecord]) -> Vec<i64> {
        records.iter().map(|r| r.id).collect()
    }

    const LEASE: Duration = Duration::from_secs(60);

    #[test]
    fn records_of_a_row_are_claimed_in_order_together() {
        let (mut conn, o) = setup();
        let a1 = put(&conn, &o, "a");
        let b1 = put(&conn, &o, "b");
        let a2 = put(&conn, &o, "a");
        let got = o.claim(&mut conn, "w", now_ms(), LEASE, 10).unwrap();
        assert_eq!(ids(&got), [a1, b1, a2]);
        assert!(
            o.claim(&mut conn, "w2", now_ms(), LEASE, 10)
                .unwrap()
                .is_empty(),
            "held under lease"
        );
    }

    #[test]
    fn a_record_in_backoff_holds_back_its_row_only() {
        let (mut conn, o) = setup();
        let a1 = put(&conn, &o, "a");
        let a2 = put(&conn, &o, "a");
        let b1 = put(&conn, &o, "b");
        o.claim(&mut conn, "w", now_ms(), LEASE, 10).unwrap();
        o.charge(
            &mut conn,
            "w",
            &[(a1, "boom".into(), now_ms() + 60_000)],
            10,
        )
        .unwrap();
        o.release(&mut conn, "w", &[a2, b1]).unwrap();
        let got = o.claim(&mut conn, "w", now_ms(), LEASE, 10).unwrap();
        assert_eq!(ids(&got), [b1], "a2 waits behind a1; b is free");
        o.mark_synced(&mut conn, "w", &[b1]).unwrap();
        // When a1 is due again, a1 then a2 go out, in order.
        let later = now_ms() + 61_000;
        assert_eq!(
            ids(&o.claim(&mut conn, "w", later, LEASE, 10).unwrap()),
            [a1, a2]
        );
    }

    #[test]
    fn a_dead_letter_holds_back_its_row_until_retried_or_dropped() {
        let (mut conn, o) = setup();
        let a1 = put(&conn, &o, "a");
        let a2 = put(&conn, &o, "a");
        o.claim(&mut conn, "w", now_ms(), LEASE, 10).unwrap();
        o.fail(&mut conn, "w", &[(a1, "bad".into())]).unwrap();
        o.release(&mut conn, "w", &[a2]).unwrap();
        assert!(o
            .claim(&mut conn, "w", now_ms(), LEASE, 10)
            .unwrap()
            .is_empty());
        let dead = o.failed(&conn, 10).unwrap();
        assert_eq!(
            (dead.len(), dead[0].id, dead[0].last_error.as_str()),
            (1, a1, "bad")
        );

        assert_eq!(o.retry(&conn, Selection::Id(a1)).unwrap(), 1);
        assert_eq!(
            ids(&o.claim(&mut conn, "w", now_ms(), LEASE, 10).unwrap()),
            [a1, a2]
        );
        o.fail(&mut conn, "w", &[(a1, "bad again".into())]).unwrap();
        o.release(&mut conn, "w", &[a2]).unwrap();
        assert_eq!(o.drop_failed(&conn, Selection::All).unwrap(), 1);
        assert_eq!(
            ids(&o.claim(&mut conn, "w", now_ms(), LEASE, 10).unwrap()),
            [a2]
        );
    }

    #[test]
    fn attempts_lead_to_failed_at_the_maximum() {
        let (mut conn, o) = setup();
        let a = put(&conn, &o, "a");
        for i in 1..=3 {
            let got = o
                .claim(&mut conn, "w", now_ms() + i * 1000, LEASE, 10)
                .unwrap();
            assert_eq!(ids(&got), [a]);
            assert_eq!(got[0].attempts as i64, i - 1);
            o.charge(&mut conn, "w", &[(a, format!("e{i}"), 0)], 3)
                .unwrap();
        }
        let c = o.counts(&conn).unwrap();
        assert_eq!((c.failed, c.pending), (1, 0));
        assert_eq!(o.failed(&conn, 1).unwrap()[0].last_error, "e3");
        assert_eq!(o.last_error(&conn).unwrap().as_deref(), Some("e3"));
    }

    #[test]
    fn expired_leases_are_claimed_again_and_only_the_holder_marks() {
        let (mut conn, o) = setup();
        let a = put(&conn, &o, "a");
        let t0 = now_ms();
        o.claim(&mut conn, "dead-worker", t0, Duration::from_millis(100), 10)
            .unwrap();
        assert_eq!(o.leases(&conn).unwrap()[0].owner, "dead-worker");
        assert!(o
            .claim(&mut conn, "w", t0 + 50, LEASE, 10)
            .unwrap()
            .is_empty());
        assert_eq!(
            ids(&o.claim(&mut conn, "w", t0 + 100, LEASE, 10).unwrap()),
            [a]
        );
        assert_eq!(
            o.mark_synced(&mut conn, "dead-worker", &[a]).unwrap(),
            0,
            "lost its lease"
        );
        assert_eq!(o.mark_synced(&mut conn, "w", &[a]).unwrap(), 1);
        assert_eq!(o.counts(&conn).unwrap().synced, 1);
    }

    #[test]
    fn release_all_gives_back_one_owners_claims() {
        let (mut conn, o) = setup();
        put(&conn, &o, "a");
        put(&conn, &o, "b");
        o.claim(&mut conn, "w", now_ms(), LEASE, 1).unwrap();
        o.claim(&mut conn, "other", now_ms(), LEASE, 1).unwrap();
        assert_eq!(o.release_all(&conn, "w").unwrap(), 1);
        let c = o.counts(&conn).unwrap();
        assert_eq!((c.pending, c.in_flight), (1, 1));
    }

    #[test]
    fn purge_keeps_the_newest_synced_records() {
        let (mut conn, o) = setup();
        let all: Vec<i64> = (0..10).map(|i| put(&conn, &o, &i.to_string())).collect();
        o.claim(&mut conn, "w", now_ms(), LEASE, 10).unwrap();
        o.mark_synced(&mut conn, "w", &all[..8]).unwrap();
        assert_eq!(o.purge(&conn, 3).unwrap(), 5);
        let kept: Vec<i64> = conn
            .prepare("SELECT id FROM d1_sync_queue WHERE status = 'synced' ORDER BY id")
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(kept, all[5..8]);
        assert_eq!(
            o.counts(&conn).unwrap().in_flight,
            2,
            "unsynced records are never purged"
        );
        assert_eq!(o.purge(&conn, 0).unwrap(), 3);
    }

    #[test]
    fn the_claim_walks_the_index_in_order_without_sorting() {
        let (conn, o) = setup();
        let sql = format!(
            "EXPLAIN QUERY PLAN SELECT id FROM {q} AS r WHERE r.status = 'pending' AND r.next_attempt_at <= 1
             AND NOT EXISTS (SELECT 1 FROM {q} AS e WHERE e.table_name = r.table_name AND e.row_key = r.row_key AND e.id < r.id
               AND (e.status IN ('failed', 'in_flight') OR (e.status = 'pending' AND e.next_attempt_at > 1)))
             ORDER BY r.id LIMIT 10",
            q = o.q
        );
        let plan: Vec<String> = conn
            .prepare(&sql)
            .unwrap()
            .query_map([], |r| r.get::<_, String>(3))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        let text = plan.join("\n");
        assert!(
            !text.contains("TEMP B-TREE"),
            "the claim must not sort the backlog:\n{text}"
        );
        assert!(text.contains("d1_sync_queue_status_id"), "{text}");
        assert!(text.contains("d1_sync_queue_row"), "{text}");
    }

    #[test]
    fn a_rolled_back_transaction_leaves_no_record() {
        let (mut conn, o) = setup();
        let tx = conn.transaction().unwrap();
        o.enqueue_raw(&tx, "t", "[1]", "upsert", "{}").unwrap();
        drop(tx);
        assert_eq!(o.counts(&conn).unwrap(), Counts::default());
    }

    #[test]
    fn a_newer_queue_is_refused_and_a_missing_one_explained() {
        let (conn, o) = setup();
        conn.execute("UPDATE d1_sync_meta SET value = 99", [])
            .unwrap();
        assert!(matches!(
            o.install(&conn),
            Err(Error::QueueTooNew { found: 99, .. })
        ));
        let other = Connection::open_in_memory().unwrap();
        let err = o.counts(&other).unwrap_err();
        assert!(matches!(err, Error::NotInstalled(_)), "{err}");
    }
}
