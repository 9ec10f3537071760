//! The durable outbox: a queue table in the application's own SQLite file.
//!
//! A change is enqueued in the application's transaction, so the row write and its record
//! commit together or not at all. Records of one row go out in the order they were written;
//! a record that waits (backoff, a dead letter) holds back the later records of *its* row
//! only.
//!
//! One worker at a time sends a queue: it holds the queue's **lease** (a row of
//! `d1_sync_leases`), renewed before every request. A second process waits while the lease
//! is held, so nothing is ever sent twice at once or out of order; a crashed worker's lease
//! runs out and another takes the queue over. Requests that may be in flight are journaled
//! in `<queue>_requests` before they are sent, and whoever sends the queue next sends them
//! again unchanged, so D1's ledger recognises the ones it applied (see [`crate::ledger`]).
//! Records themselves are only ever written when their state changes: inserted,
//! acknowledged, charged, held, dead-lettered, purged.
//!
//! An acknowledged record leaves the queue table: it is deleted there and a slim entry (ids,
//! table, key, operation, times; no payload) goes to the synced log `<queue>_synced`, which
//! keeps the newest entries (see [`Outbox::purge`]). The queue table so holds only work
//! (pending records and dead letters), and an acknowledgement never rewrites a payload.

use std::time::Duration;

use rusqlite::{params, Connection, OptionalExtension, Transaction};

use crate::change::{row_digest, Op, RawRecord};
use crate::codec;
use crate::error::{Error, Result};
use crate::ledger::RequestId;
use crate::row::SyncRow;
use crate::value::Value;

/// Dead letters, in a form that implies the partial index holding them (its condition first):
/// the queries on dead letters name that index, so with a backlog of pending records and a few
/// dead letters they read the index, not the backlog.
const DEAD: &str = "(status = 'failed' OR next_attempt_at > 0) AND status = 'failed'";

/// The queue schema version this build writes.
///
/// 1. The first queue: synced records stayed in the queue table, status `synced`.
/// 2. Synced records move to the slim log `<queue>_synced`.
/// 3. Requests in flight are journaled in `<queue>_requests`, under the queue's stream id
///    (`d1_sync_meta`), for exactly-once delivery.
const QUEUE_VERSION: i64 = 3;

pub(crate) use crate::clock::now_ms;

/// Counts of records by status.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct Counts {
    /// Waiting to be sent (including records in backoff and records held behind one).
    pub pending: u64,
    /// Entries in the synced log: the newest acknowledged records, kept for reference (see
    /// [`Outbox::purge`]).
    pub synced: u64,
    /// Dead letters.
    pub failed: u64,
    /// `created_at` (ms) of the oldest pending record.
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

/// The queue's lease: which worker sends it, until when.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Lease {
    /// The worker's id (`<pid>-<random>`).
    pub owner: String,
    /// When the lease ends unless renewed (ms).
    pub until_ms: i64,
}

/// Who claims, when, for how long, and how many records at most.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Claimant<'a> {
    pub(crate) owner: &'a str,
    pub(crate) now: i64,
    pub(crate) lease: Duration,
    pub(crate) limit: usize,
}

/// What a claim found.
#[derive(Debug)]
pub(crate) enum Claim {
    /// Records to send, in queue order (none if nothing is eligible).
    Records(Vec<RawRecord>),
    /// Another worker holds the queue's lease.
    HeldBy(String),
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
    /// The quoted name of the synced log.
    log: String,
    /// The quoted name of the journal of requests in flight.
    journal: String,
    insert_sql: String,
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
        let insert_sql = format!(
            "INSERT INTO {q} (table_name, row_key, op, payload, created_at, updated_at) VALUES (?1, ?2, ?3, ?4, ?5, ?5)"
        );
        let log = d1_sync_schema::sql::quote_ident(&format!("{table}_synced"));
        let journal = d1_sync_schema::sql::quote_ident(&format!("{table}_requests"));
        Outbox {
            table,
            q,
            log,
            journal,
            insert_sql,
        }
    }

    /// The queue table's name.
    pub fn table_name(&self) -> &str {
        &self.table
    }

    /// The synced log's name: `<queue>_synced`.
    pub fn log_table_name(&self) -> String {
        format!("{}_synced", self.table)
    }

    /// The journal's name: `<queue>_requests`, the requests that may be in flight.
    pub fn journal_table_name(&self) -> String {
        format!("{}_requests", self.table)
    }

    fn index(&self, suffix: &str) -> String {
        d1_sync_schema::sql::quote_ident(&format!("{}_{suffix}", self.table))
    }

    /// `<queue> INDEXED BY <blocking index> WHERE <dead letter>`: the dead letters, read
    /// through the partial index that holds them.
    fn dead_letters(&self) -> String {
        format!(
            "{} INDEXED BY {} WHERE {DEAD}",
            self.q,
            self.index("blocking")
        )
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
        // A savepoint, not a transaction: the caller may be inside its own.
        conn.execute_batch("SAVEPOINT d1_sync_install")?;
        let migrated = self.migrate(conn);
        let done = match migrated {
            Ok(()) => conn.execute_batch("RELEASE d1_sync_install"),
            Err(_) => conn.execute_batch("ROLLBACK TO d1_sync_install; RELEASE d1_sync_install"),
        };
        migrated?;
        done?;
        Ok(())
    }

    /// Creates what is missing and moves an older queue to this version.
    fn migrate(&self, conn: &Connection) -> Result<()> {
        let (q, log) = (&self.q, &self.log);
        // No AUTOINCREMENT: a new id is always above every id in the table, which is all the
        // ordering needs, and it saves a write per enqueue. The table holds only work (pending
        // records and dead letters), so claims walk it in id order and need no status index:
        // an enqueue writes the record and nothing else. The one index is partial and holds
        // only records that can block their row (dead letters and records in backoff). The log
        // has its own sequence: a queue emptied to the last record may give a later record an
        // id the log has seen.
        conn.execute_batch(&format!(
            "CREATE TABLE IF NOT EXISTS {q} (
               id INTEGER PRIMARY KEY,
               table_name TEXT NOT NULL,
               row_key TEXT NOT NULL,
               op TEXT NOT NULL,
               payload TEXT NOT NULL,
               status TEXT NOT NULL DEFAULT 'pending',
               attempts INTEGER NOT NULL DEFAULT 0,
               next_attempt_at INTEGER NOT NULL DEFAULT 0,
               last_error TEXT,
               created_at INTEGER NOT NULL,
               updated_at INTEGER NOT NULL
             );
             CREATE INDEX IF NOT EXISTS {blocking} ON {q} (table_name, row_key, id)
               WHERE status = 'failed' OR next_attempt_at > 0;
             CREATE TABLE IF NOT EXISTS {log} (
               seq INTEGER PRIMARY KEY,
               id INTEGER NOT NULL,
               table_name TEXT NOT NULL,
               row_key TEXT NOT NULL,
               op TEXT NOT NULL,
               attempts INTEGER NOT NULL,
               created_at INTEGER NOT NULL,
               synced_at INTEGER NOT NULL
             );
             CREATE TABLE IF NOT EXISTS d1_sync_leases (
               queue TEXT PRIMARY KEY NOT NULL,
               owner TEXT NOT NULL,
               until INTEGER NOT NULL
             );
             CREATE TABLE IF NOT EXISTS {journal} (
               seq INTEGER PRIMARY KEY AUTOINCREMENT,
               nonce TEXT NOT NULL,
               ids TEXT NOT NULL,
               created_at INTEGER NOT NULL
             );",
            blocking = self.index("blocking"),
            journal = self.journal,
        ))?;
        // The queue's stream: the ledger in D1 keeps this queue's requests under it.
        conn.execute(
            "INSERT INTO d1_sync_meta (key, value) VALUES (?1, ?2) ON CONFLICT (key) DO NOTHING",
            params![self.stream_key(), rand::random::<i64>()],
        )?;
        let old_layout: bool = conn.query_row(
            "SELECT count(*) > 0 FROM pragma_table_info(?1) WHERE name = 'synced_at'",
            [&self.table],
            |r| r.get(0),
        )?;
        if old_layout {
            // Version 1 kept synced records in the queue, with a `synced_at` column.
            conn.execute_batch(&format!(
                "INSERT INTO {log} (id, table_name, row_key, op, attempts, created_at, synced_at)
                   SELECT id, table_name, row_key, op, attempts, created_at, coalesce(synced_at, updated_at)
                   FROM {q} WHERE status = 'synced' ORDER BY id;
                 DELETE FROM {q} WHERE status = 'synced';
                 ALTER TABLE {q} DROP COLUMN synced_at;
                 DROP INDEX IF EXISTS {status};",
                status = self.index("status_id"),
            ))?;
        }
        conn.execute(
            "INSERT INTO d1_sync_meta (key, value) VALUES (?1, ?2) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            params![format!("queue_version:{}", self.table), QUEUE_VERSION],
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
        conn.prepare_cached(&self.insert_sql)
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

    /// Writes the row to the local file (upsert) **and** queues its upsert for D1, in the
    /// caller's transaction.
    ///
    /// Locally it runs `T::UPSERT_SQL` (insert-only columns kept on update); D1 gets the same.
    pub fn save<T: SyncRow>(&self, tx: &Transaction<'_>, row: &T) -> Result<i64> {
        let values = row.values();
        tx.prepare_cached(T::UPSERT_SQL)?
            .execute(rusqlite::params_from_iter(values.iter()))?;
        let payload = codec::stored_object(T::COLUMNS.iter().copied().zip(values.iter()));
        self.enqueue::<T>(tx, &row.key_values(), Op::Upsert, payload)
    }

    /// Updates the named columns of the row in the local file **and** queues the same
    /// `UPDATE` for D1, in the caller's transaction.
    ///
    /// Other columns are left alone on both sides, and a row that does not exist is not
    /// created. Key and insert-only columns cannot be set; at least one other column must be.
    ///
    /// ```
    /// use d1_sync::{D1Sync, Outbox};
    /// # fn main() -> Result<(), d1_sync::Error> {
    /// #[derive(D1Sync)]
    /// #[d1(table = "notes")]
    /// struct Note { #[d1(primary_key)] id: i64, body: String, pinned: bool }
    ///
    /// let mut conn = d1_sync::open(":memory:")?;
    /// conn.execute_batch("CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT, pinned INTEGER)")?;
    /// let outbox = Outbox::new();
    /// let tx = conn.transaction()?;
    /// outbox.save(&tx, &Note { id: 1, body: "hello".into(), pinned: false })?;
    /// outbox.patch(&tx, &Note { id: 1, body: "not written".into(), pinned: true }, &["pinned"])?;
    /// tx.commit()?;
    /// let (body, pinned): (String, bool) =
    ///     conn.query_row("SELECT body, pinned FROM notes", [], |r| Ok((r.get(0)?, r.get(1)?)))?;
    /// assert_eq!((body.as_str(), pinned), ("hello", true));
    /// # Ok(()) }
    /// ```
    pub fn patch<T: SyncRow>(
        &self,
        tx: &Transaction<'_>,
        row: &T,
        columns: &[&str],
    ) -> Result<i64> {
        check_patch::<T>(columns)?;
        let set: Vec<&str> = T::COLUMNS
            .iter()
            .copied()
            .filter(|c| columns.contains(c))
            .collect();
        let sql = d1_sync_schema::sql::update_sql(T::TABLE, T::PRIMARY_KEY, &set);
        let values = row.values();
        let value_of = |c: &str| T::COLUMNS.iter().position(|x| *x == c).map(|i| &values[i]);
        let params: Vec<&Value> = T::PRIMARY_KEY
            .iter()
            .chain(set.iter())
            .filter_map(|c| value_of(c))
            .collect();
        tx.prepare_cached(&sql)?
            .execute(rusqlite::params_from_iter(params))?;
        self.enqueue_update(tx, row, columns)
    }

    /// Deletes the row from the local file (by key) **and** queues its delete for D1, in the
    /// caller's transaction. Foreign keys cascade locally as they will on D1.
    pub fn remove<T: SyncRow>(&self, tx: &Transaction<'_>, row: &T) -> Result<i64> {
        tx.prepare_cached(T::DELETE_SQL)?
            .execute(rusqlite::params_from_iter(row.key_values()))?;
        self.enqueue_delete(tx, row)
    }

    /// Only queues an upsert of the whole row for D1; writes nothing locally (see
    /// [`Outbox::save`]). For rows you write yourself in the same transaction.
    pub fn enqueue_upsert<T: SyncRow>(&self, tx: &Transaction<'_>, row: &T) -> Result<i64> {
        let values = row.values();
        let payload = codec::stored_object(T::COLUMNS.iter().copied().zip(values.iter()));
        self.enqueue::<T>(tx, &row.key_values(), Op::Upsert, payload)
    }

    /// Only queues an `UPDATE` of some columns for D1; writes nothing locally (see
    /// [`Outbox::patch`]). D1 leaves other columns alone and creates no row. Key and
    /// insert-only columns cannot be set; at least one other column must be.
    pub fn enqueue_update<T: SyncRow>(
        &self,
        tx: &Transaction<'_>,
        row: &T,
        columns: &[&str],
    ) -> Result<i64> {
        check_patch::<T>(columns)?;
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

    /// Only queues a delete of the row for D1; deletes nothing locally (see
    /// [`Outbox::remove`]).
    pub fn enqueue_delete<T: SyncRow>(&self, tx: &Transaction<'_>, row: &T) -> Result<i64> {
        self.enqueue_delete_key::<T>(tx, &row.key_values())
    }

    /// Only queues a delete by key values (in `T::PRIMARY_KEY` order) for D1; deletes nothing
    /// locally.
    pub fn enqueue_delete_key<T: SyncRow>(
        &self,
        tx: &Transaction<'_>,
        key: &[Value],
    ) -> Result<i64> {
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

    /// Counts by status, and the age of the oldest unsynced record.
    ///
    /// Counting the pending records walks the queue table (about 0.1 s per million records
    /// here), so poll it at human pace, not per record. Every record in the queue that is not
    /// a dead letter counts as pending.
    pub fn counts(&self, conn: &Connection) -> Result<Counts> {
        let mut c = Counts::default();
        // count(*) only counts the table's cells; the dead letters come from their index.
        let total: i64 = conn
            .prepare_cached(&format!("SELECT count(*) FROM {}", self.q))
            .and_then(|mut s| s.query_row([], |r| r.get(0)))
            .map_err(|e| self.map_missing(e))?;
        let failed: i64 = conn
            .prepare_cached(&format!("SELECT count(*) FROM {}", self.dead_letters()))?
            .query_row([], |r| r.get(0))?;
        c.failed = u64::try_from(failed).unwrap_or(0);
        c.pending = u64::try_from(total - failed).unwrap_or(0);
        c.synced = conn
            .prepare_cached(&format!("SELECT count(*) FROM {}", self.log))
            .and_then(|mut s| s.query_row([], |r| r.get::<_, i64>(0)))
            .map_err(|e| self.map_missing(e))
            .map(|n| u64::try_from(n).unwrap_or(0))?;
        c.oldest_unsynced_ms = conn
            .query_row(
                &format!(
                    "SELECT created_at FROM {} WHERE status = 'pending' ORDER BY id LIMIT 1",
                    self.q
                ),
                [],
                |r| r.get(0),
            )
            .optional()?;
        Ok(c)
    }

    /// Dead letters, oldest first, at most `limit`.
    pub fn failed(&self, conn: &Connection, limit: usize) -> Result<Vec<DeadLetter>> {
        let mut stmt = conn
            .prepare_cached(&format!(
                "SELECT id, table_name, row_key, op, attempts, coalesce(last_error, ''), created_at FROM {} ORDER BY id LIMIT ?1",
                self.dead_letters(),
            ))
            .map_err(|e| self.map_missing(e))?;
        let rows = stmt
            .query_map([i64::try_from(limit).unwrap_or(i64::MAX)], |r| {
                Ok(DeadLetter {
                    id: r.get(0)?,
                    table: text_at(r, 1)?,
                    row_key: text_at(r, 2)?,
                    op: text_at(r, 3)?,
                    attempts: attempts_of(r.get_ref(4)?),
                    last_error: text_at(r, 5)?,
                    created_at: r.get::<_, Option<i64>>(6)?.unwrap_or(0),
                })
            })?
            .collect::<Result<Vec<_>, _>>()?;
        Ok(rows)
    }

    /// Puts dead letters back in line: pending, attempts reset, due now. Returns how many.
    pub fn retry(&self, conn: &Connection, which: Selection) -> Result<usize> {
        let sql = format!(
            "UPDATE {} INDEXED BY {} SET status = 'pending', attempts = 0, next_attempt_at = 1, updated_at = ?1 WHERE {DEAD} AND (?2 IS NULL OR id = ?2)",
            self.q,
            self.index("blocking"),
        );
        conn.execute(&sql, params![now_ms(), selection_id(which)])
            .map_err(|e| self.map_missing(e))
    }

    /// Deletes dead letters for good. Returns how many.
    pub fn drop_failed(&self, conn: &Connection, which: Selection) -> Result<usize> {
        let sql = format!(
            "DELETE FROM {} AND (?1 IS NULL OR id = ?1)",
            self.dead_letters(),
        );
        conn.execute(&sql, params![selection_id(which)])
            .map_err(|e| self.map_missing(e))
    }

    /// The queue's lease, if a worker holds it now.
    pub fn lease(&self, conn: &Connection) -> Result<Option<Lease>> {
        conn.query_row(
            "SELECT owner, until FROM d1_sync_leases WHERE queue = ?1 AND until > ?2",
            params![self.table, now_ms()],
            |r| {
                Ok(Lease {
                    owner: r.get(0)?,
                    until_ms: r.get(1)?,
                })
            },
        )
        .optional()
        .map_err(|e| self.map_missing(e))
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

    /// Takes or renews the queue's lease for `owner` until `until`; `Err(holder)` when
    /// another worker holds it. `Ok(true)` when no other worker held it since `owner` last did
    /// (so what it planned before is still its own to send), `Ok(false)` when it takes it anew.
    pub(crate) fn acquire(
        &self,
        conn: &Connection,
        owner: &str,
        now: i64,
        until: i64,
    ) -> Result<Result<bool, String>> {
        // Nobody else sent in between if the lease still names `owner`, even if it ran out:
        // whoever takes a lease writes their name into it.
        let held: bool = conn
            .prepare_cached(
                "SELECT count(*) > 0 FROM d1_sync_leases WHERE queue = ?1 AND owner = ?2",
            )?
            .query_row(params![self.table, owner], |r| r.get(0))?;
        let n = conn
            .prepare_cached(
                "INSERT INTO d1_sync_leases (queue, owner, until) VALUES (?1, ?2, ?3)
                 ON CONFLICT (queue) DO UPDATE SET owner = excluded.owner, until = excluded.until
                 WHERE d1_sync_leases.owner = excluded.owner OR d1_sync_leases.until <= ?4",
            )?
            .execute(params![self.table, owner, until, now])?;
        if n == 1 {
            return Ok(Ok(held));
        }
        let holder: Option<String> = conn
            .query_row(
                "SELECT owner FROM d1_sync_leases WHERE queue = ?1",
                [&self.table],
                |r| r.get(0),
            )
            .optional()?;
        Ok(Err(holder.unwrap_or_default()))
    }

    /// Gives the lease up (on shutdown), if `owner` holds it.
    pub(crate) fn release_lease(&self, conn: &Connection, owner: &str) -> Result<()> {
        conn.execute(
            "UPDATE d1_sync_leases SET until = 0 WHERE queue = ?1 AND owner = ?2",
            params![self.table, owner],
        )?;
        Ok(())
    }

    /// Takes (or renews) the queue's lease and reads up to `limit` eligible records.
    ///
    /// Eligible: pending and due, and no earlier record of the same row is waiting (a dead
    /// letter, or pending but not yet due). Because that looks at *all* earlier records of the
    /// row, a held-back record holds back every later one of its row; other rows go on.
    pub(crate) fn claim(
        &self,
        conn: &mut Connection,
        owner: &str,
        now: i64,
        lease: Duration,
        limit: usize,
    ) -> Result<Claim> {
        let who = Claimant {
            owner,
            now,
            lease,
            limit,
        };
        self.claim_from(conn, &who, 0)
    }

    /// [`Outbox::claim`] of the records after `cursor`, read while the batch up to it is still
    /// in flight (the worker's prefetch); the flag says whether it stopped short (see below).
    ///
    /// It must be exactly the records a claim after that batch would take, in order, with
    /// nothing passed over that may still go first; so it stops at the first record whose row
    /// is in flight (`in_flight` holds their [`row_digest`]s), or whose row has a pending
    /// record at or below the cursor that waited (charged or retried: it may be due again,
    /// and only a claim from the start sends it).
    pub(crate) fn claim_after(
        &self,
        conn: &mut Connection,
        who: &Claimant<'_>,
        cursor: i64,
        in_flight: &std::collections::HashSet<u64>,
    ) -> Result<(Claim, bool)> {
        let records = match self.claim_from(conn, who, cursor)? {
            Claim::Records(r) => r,
            held => return Ok((held, false)),
        };
        let waited: std::collections::HashSet<u64> = conn
            .prepare_cached(&format!(
                "SELECT DISTINCT table_name, row_key FROM {} WHERE (status = 'failed' OR next_attempt_at > 0)
                 AND status = 'pending' AND id <= ?1",
                self.q
            ))?
            .query_map([cursor], |r| {
                Ok(row_digest(&text_at(r, 0)?, &text_at(r, 1)?))
            })?
            .collect::<Result<_, _>>()?;
        let stop = records
            .iter()
            .position(|r| {
                let row = row_digest(&r.table, &r.row_key);
                in_flight.contains(&row) || waited.contains(&row)
            })
            .unwrap_or(records.len());
        let mut records = records;
        let cut = stop < records.len();
        records.truncate(stop);
        Ok((Claim::Records(records), cut))
    }

    fn claim_from(&self, conn: &mut Connection, who: &Claimant<'_>, cursor: i64) -> Result<Claim> {
        let Claimant {
            owner,
            now,
            lease,
            limit,
        } = *who;
        let until = now.saturating_add(i64::try_from(lease.as_millis()).unwrap_or(i64::MAX));
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        if let Err(holder) = self.acquire(&tx, owner, now, until)? {
            tx.commit()?;
            return Ok(Claim::HeldBy(holder));
        }
        let records = {
            let q = &self.q;
            let mut stmt = tx.prepare_cached(&format!(
                "SELECT id, table_name, row_key, op, payload, attempts FROM {q} AS r
                 WHERE r.status = 'pending' AND r.next_attempt_at <= ?1 AND r.id > ?3
                   AND NOT EXISTS (
                     SELECT 1 FROM {q} AS e
                     WHERE e.table_name = r.table_name AND e.row_key = r.row_key AND e.id < r.id
                       AND (e.status = 'failed' OR e.next_attempt_at > 0)
                       AND (e.status = 'failed' OR (e.status = 'pending' AND e.next_attempt_at > ?1)))
                 ORDER BY r.id LIMIT ?2"
            ))?;
            let rows = stmt
                .query_map(
                    params![now, i64::try_from(limit).unwrap_or(i64::MAX), cursor],
                    raw_record,
                )?
                .collect::<Result<Vec<_>, _>>()?;
            rows
        };
        tx.commit()?;
        Ok(Claim::Records(records))
    }

    /// Marks records synced (they must still be pending): moves them from the queue to the
    /// synced log and forgets the journaled request `seq` that carried them, in one
    /// transaction. Returns how many moved.
    pub(crate) fn mark_synced(
        &self,
        conn: &mut Connection,
        ids: &[i64],
        seq: Option<i64>,
    ) -> Result<usize> {
        let (q, log) = (&self.q, &self.log);
        let ids = ids_json(ids);
        let tx = conn.transaction()?;
        if let Some(seq) = seq {
            self.unjournal(&tx, seq)?;
        }
        tx.prepare_cached(&format!(
            "INSERT INTO {log} (id, table_name, row_key, op, attempts, created_at, synced_at)
             SELECT id, table_name, row_key, op, attempts, created_at, ?1 FROM {q}
             WHERE id IN (SELECT value FROM json_each(?2)) AND status = 'pending' ORDER BY id"
        ))?
        .execute(params![now_ms(), ids])?;
        let n = tx
            .prepare_cached(&format!(
                "DELETE FROM {q} WHERE id IN (SELECT value FROM json_each(?1)) AND status = 'pending'"
            ))?
            .execute([ids])?;
        tx.commit()?;
        Ok(n)
    }

    /// Charges failed records an attempt: due again at `next_at`, or `failed` once
    /// `max_attempts` is reached. Each entry: id, error, next attempt time (ms).
    pub(crate) fn charge(
        &self,
        conn: &mut Connection,
        failures: &[(i64, String, i64)],
        max_attempts: u32,
    ) -> Result<()> {
        let now = now_ms();
        let tx = conn.transaction()?;
        {
            let mut stmt = tx.prepare_cached(&format!(
                "UPDATE {} SET attempts = attempts + 1, last_error = ?1, next_attempt_at = ?2, updated_at = ?3,
                   status = CASE WHEN attempts + 1 >= ?4 THEN 'failed' ELSE 'pending' END
                 WHERE id = ?5 AND status = 'pending'",
                self.q
            ))?;
            for (id, err, next_at) in failures {
                stmt.execute(params![err, next_at.max(&1), now, max_attempts, id])?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    /// Dead-letters records that can never ship, with the reason.
    pub(crate) fn fail(&self, conn: &mut Connection, failures: &[(i64, String)]) -> Result<()> {
        let now = now_ms();
        let tx = conn.transaction()?;
        {
            let mut stmt = tx.prepare_cached(&format!(
                "UPDATE {} SET status = 'failed', last_error = ?1, updated_at = ?2 WHERE id = ?3 AND status = 'pending'",
                self.q
            ))?;
            for (id, reason) in failures {
                stmt.execute(params![reason, now, id])?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    fn stream_key(&self) -> String {
        format!("stream:{}", self.table)
    }

    /// The queue's stream id, as the ledger in D1 names it (16 hex digits).
    pub(crate) fn stream(&self, conn: &Connection) -> Result<String> {
        let v: i64 = conn
            .prepare_cached("SELECT value FROM d1_sync_meta WHERE key = ?1")?
            .query_row([self.stream_key()], |r| r.get(0))
            .map_err(|e| self.map_missing(e))?;
        Ok(format!("{:016x}", v as u64))
    }

    /// Journals a request before it is sent: its records' ids get a new sequence number and
    /// a random nonce. From here until [`Outbox::mark_synced`] or [`Outbox::unjournal`] the
    /// request counts as in flight, and whoever sends this queue next sends it again first.
    ///
    /// The entry is written durably (`synchronous = FULL` for this one commit, which also makes
    /// every earlier commit of the file durable), so not even a power cut loses a request that
    /// may reach D1; marks may stay `NORMAL`: a lost mark leaves its request journaled, and
    /// the ledger answers for it when it goes again.
    pub(crate) fn journal(&self, conn: &Connection, ids: &[i64]) -> Result<RequestId> {
        let stream = self.stream(conn)?;
        let mut id = RequestId::new(stream, 0);
        let level: i64 = conn.query_row("PRAGMA synchronous", [], |r| r.get(0))?;
        conn.execute_batch("PRAGMA synchronous = FULL")?;
        let inserted = conn
            .prepare_cached(&format!(
                "INSERT INTO {} (nonce, ids, created_at) VALUES (?1, ?2, ?3)",
                self.journal
            ))
            .and_then(|mut s| s.execute(params![id.nonce, ids_json(ids), now_ms()]));
        conn.execute_batch(&format!("PRAGMA synchronous = {level}"))?;
        inserted?;
        id.seq = conn.last_insert_rowid();
        Ok(id)
    }

    /// Forgets a journaled request that was definitely not applied (refused as a whole, or
    /// never sent).
    pub(crate) fn unjournal(&self, conn: &Connection, seq: i64) -> Result<()> {
        conn.prepare_cached(&format!("DELETE FROM {} WHERE seq = ?1", self.journal))?
            .execute([seq])?;
        Ok(())
    }

    /// The journaled requests, oldest first, with their records' ids.
    pub(crate) fn journaled(&self, conn: &Connection) -> Result<Vec<(RequestId, Vec<i64>)>> {
        let stream = self.stream(conn)?;
        let mut stmt = conn
            .prepare_cached(&format!(
                "SELECT seq, nonce, ids FROM {} ORDER BY seq",
                self.journal
            ))
            .map_err(|e| self.map_missing(e))?;
        let rows = stmt
            .query_map([], |r| {
                Ok((r.get::<_, i64>(0)?, text_at(r, 1)?, text_at(r, 2)?))
            })?
            .collect::<Result<Vec<_>, _>>()?;
        Ok(rows
            .into_iter()
            .map(|(seq, nonce, ids)| {
                let ids: Vec<i64> = serde_json::from_str(&ids).unwrap_or_default();
                (
                    RequestId {
                        stream: stream.clone(),
                        seq,
                        nonce,
                    },
                    ids,
                )
            })
            .collect())
    }

    /// The pending records with these ids, in queue order (what a journaled request carries).
    pub(crate) fn records(&self, conn: &Connection, ids: &[i64]) -> Result<Vec<RawRecord>> {
        let mut stmt = conn.prepare_cached(&format!(
            "SELECT id, table_name, row_key, op, payload, attempts FROM {}
             WHERE id IN (SELECT value FROM json_each(?1)) AND status = 'pending' ORDER BY id",
            self.q
        ))?;
        let rows = stmt
            .query_map([ids_json(ids)], raw_record)?
            .collect::<Result<Vec<_>, _>>()?;
        Ok(rows)
    }

    /// The rows that have a record waiting (a dead letter, or pending and not due at `now`),
    /// as [`row_digest`]s, each with the id of its first waiting record and the time that
    /// record is due (`i64::MAX` for a dead letter). Read through the partial index that holds
    /// only such records.
    pub(crate) fn waiting_rows(
        &self,
        conn: &Connection,
        now: i64,
    ) -> Result<std::collections::HashMap<u64, (i64, i64)>> {
        let mut stmt = conn.prepare_cached(&format!(
            "SELECT table_name, row_key, min(id), min(CASE WHEN status = 'failed' THEN {max} ELSE next_attempt_at END)
             FROM {} INDEXED BY {} WHERE (status = 'failed' OR next_attempt_at > 0)
               AND (status = 'failed' OR next_attempt_at > ?1)
             GROUP BY table_name, row_key",
            self.q,
            self.index("blocking"),
            max = i64::MAX
        ))?;
        let rows = stmt
            .query_map([now], |r| {
                Ok((
                    row_digest(&text_at(r, 0)?, &text_at(r, 1)?),
                    (r.get::<_, i64>(2)?, r.get::<_, i64>(3)?),
                ))
            })?
            .collect::<Result<_, _>>()?;
        Ok(rows)
    }

    /// Holds records back without charging them: they wait until `next_at` (ms) because a
    /// record they depend on waits, and say why in `last_error`. Each entry: id, reason, time.
    pub(crate) fn hold(&self, conn: &mut Connection, held: &[(i64, String, i64)]) -> Result<()> {
        let now = now_ms();
        let tx = conn.transaction()?;
        {
            let mut stmt = tx.prepare_cached(&format!(
                "UPDATE {} SET last_error = ?1, next_attempt_at = ?2, updated_at = ?3
                 WHERE id = ?4 AND status = 'pending'",
                self.q
            ))?;
            for (id, reason, next_at) in held {
                stmt.execute(params![reason, next_at.max(&1), now, id])?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    /// Trims the synced log to its newest `keep` entries. Returns how many went. Pending
    /// records and dead letters are never touched.
    pub fn purge(&self, conn: &Connection, keep: usize) -> Result<usize> {
        // Only the log's low end is ever deleted, so the newest `keep` entries are those above
        // `max(seq) - keep`: the cut is one subtraction, the delete a range of the rowid.
        let log = &self.log;
        conn.prepare_cached(&format!(
            "DELETE FROM {log} WHERE seq <= (SELECT max(seq) FROM {log}) - ?1"
        ))?
        .execute([i64::try_from(keep).unwrap_or(i64::MAX)])
        .map_err(|e| self.map_missing(e))
    }
}

/// A record as `SELECT id, table_name, row_key, op, payload, attempts` reads it. Whatever was
/// written into the queue by hand must not stop a claim: any storage class is read, and
/// `change::check` judges the content.
fn raw_record(r: &rusqlite::Row<'_>) -> rusqlite::Result<RawRecord> {
    Ok(RawRecord {
        id: r.get(0)?,
        table: text_at(r, 1)?,
        row_key: text_at(r, 2)?,
        op: text_at(r, 3)?,
        payload: bytes_of(r.get_ref(4)?),
        attempts: attempts_of(r.get_ref(5)?),
    })
}

/// The columns a patch may set: named, in the whitelist, not key or insert-only.
fn check_patch<T: SyncRow>(columns: &[&str]) -> Result<()> {
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
    Ok(())
}

fn ids_json(ids: &[i64]) -> String {
    let mut s = String::with_capacity(ids.len() * 8 + 2);
    s.push('[');
    for (i, id) in ids.iter().enumerate() {
        if i > 0 {
            s.push(',');
        }
        s.push_str(&id.to_string());
    }
    s.push(']');
    s
}

/// Column `i` as text, whatever its storage class (invalid UTF-8 replaced).
fn text_at(r: &rusqlite::Row<'_>, i: usize) -> rusqlite::Result<String> {
    use rusqlite::types::ValueRef;
    Ok(match r.get_ref(i)? {
        ValueRef::Text(t) | ValueRef::Blob(t) => String::from_utf8_lossy(t).into_owned(),
        other => String::from_utf8_lossy(&bytes_of(other)).into_owned(),
    })
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
    let conn = open_with(path.as_ref(), "FULL")?;
    conn.execute_batch("PRAGMA foreign_keys = ON;")?;
    Outbox::new().install(&conn)?;
    Ok(conn)
}

/// Opens a database in WAL mode with `synchronous = <synchronous>` and a 5 s busy timeout.
pub(crate) fn open_with(path: &std::path::Path, synchronous: &str) -> Result<Connection> {
    let db = |source| Error::Database {
        path: path.to_path_buf(),
        source,
    };
    let conn = Connection::open(path).map_err(db)?;
    conn.execute_batch(&format!(
        "PRAGMA journal_mode = WAL; PRAGMA synchronous = {synchronous}; PRAGMA busy_timeout = 5000;"
    ))
    .map_err(db)?;
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

    const LEASE: Duration = Duration::from_secs(60);

    fn who() -> Claimant<'static> {
        Claimant {
            owner: "w",
            now: now_ms(),
            lease: LEASE,
            limit: 10,
        }
    }

    fn claim(conn: &mut Connection, o: &Outbox, owner: &str, now: i64) -> Vec<i64> {
        match o.claim(conn, owner, now, LEASE, 10).unwrap() {
            Claim::Records(r) => r.iter().map(|r| r.id).collect(),
            Claim::HeldBy(h) => panic!("lease held by {h}"),
        }
    }

    #[test]
    fn records_of_a_row_are_claimed_in_order_together() {
        let (mut conn, o) = setup();
        let a1 = put(&conn, &o, "a");
        let b1 = put(&conn, &o, "b");
        let a2 = put(&conn, &o, "a");
        assert_eq!(claim(&mut conn, &o, "w", now_ms()), [a1, b1, a2]);
    }

    #[test]
    fn one_worker_at_a_time_holds_the_queue() {
        let (mut conn, o) = setup();
        put(&conn, &o, "a");
        let t0 = now_ms();
        assert_eq!(claim(&mut conn, &o, "w1", t0).len(), 1);
        assert!(
            matches!(o.claim(&mut conn, "w2", t0 + 10, LEASE, 10).unwrap(), Claim::HeldBy(h) if h == "w1")
        );
        assert_eq!(o.lease(&conn).unwrap().unwrap().owner, "w1");
        // The holder renews at will; after the lease runs out another worker takes over.
        assert_eq!(claim(&mut conn, &o, "w1", t0 + 20).len(), 1);
        let later = t0 + 20 + 60_000;
        assert_eq!(
            claim(&mut conn, &o, "w2", later).len(),
            1,
            "the expired lease is taken over"
        );
        // A released lease is free at once.
        o.release_lease(&conn, "w2").unwrap();
        assert_eq!(claim(&mut conn, &o, "w3", later + 1).len(), 1);
        assert!(o.lease(&conn).unwrap().is_some());
    }

    #[test]
    fn a_record_in_backoff_holds_back_its_row_only() {
        let (mut conn, o) = setup();
        let a1 = put(&conn, &o, "a");
        let a2 = put(&conn, &o, "a");
        let b1 = put(&conn, &o, "b");
        o.charge(&mut conn, &[(a1, "boom".into(), now_ms() + 60_000)], 10)
            .unwrap();
        assert_eq!(
            claim(&mut conn, &o, "w", now_ms()),
            [b1],
            "a2 waits behind a1; b is free"
        );
        o.mark_synced(&mut conn, &[b1], None).unwrap();
        // When a1 is due again, a1 then a2 go out, in order.
        assert_eq!(claim(&mut conn, &o, "w", now_ms() + 61_000), [a1, a2]);
    }

    #[test]
    fn a_prefetch_never_passes_a_record_that_waited() {
        let (mut conn, o) = setup();
        let a1 = put(&conn, &o, "a");
        let b1 = put(&conn, &o, "b");
        let a2 = put(&conn, &o, "a");
        let b2 = put(&conn, &o, "b");
        // a1 was charged and is due again, but it is not in the batch in flight (b1 is):
        // a prefetch after b1 must not send a2 ahead of it.
        o.charge(&mut conn, &[(a1, "boom".into(), 1)], 10).unwrap();
        let none = std::collections::HashSet::new();
        let next = match o.claim_after(&mut conn, &who(), b1, &none).unwrap().0 {
            Claim::Records(r) => r.iter().map(|r| r.id).collect::<Vec<_>>(),
            Claim::HeldBy(_) => unreachable!(),
        };
        assert!(
            next.is_empty(),
            "a2 must not pass a1, and nothing after a2 may go either: {next:?}"
        );
        // Rows in flight stop the prefetch the same way.
        let mut b_in_flight = std::collections::HashSet::new();
        b_in_flight.insert(row_digest("t", "[\"b\"]"));
        o.mark_synced(&mut conn, &[a1], None).unwrap();
        let next = match o
            .claim_after(&mut conn, &who(), b1, &b_in_flight)
            .unwrap()
            .0
        {
            Claim::Records(r) => r.iter().map(|r| r.id).collect::<Vec<_>>(),
            Claim::HeldBy(_) => unreachable!(),
        };
        assert_eq!(
            next,
            [a2],
            "b2 waits for b1 in flight, and stops the prefetch"
        );
        // A retried dead letter counts as having waited too.
        let a3 = put(&conn, &o, "a");
        o.fail(&mut conn, &[(a2, "dead".into())]).unwrap();
        o.retry(&conn, Selection::Id(a2)).unwrap();
        let next = match o.claim_after(&mut conn, &who(), a2, &none).unwrap().0 {
            Claim::Records(r) => r.iter().map(|r| r.id).collect::<Vec<_>>(),
            Claim::HeldBy(_) => unreachable!(),
        };
        assert!(
            !next.contains(&a3),
            "a3 must not pass the retried a2: {next:?}"
        );
        // A plain claim takes them all, in order.
        assert_eq!(claim(&mut conn, &o, "w", now_ms()), [b1, a2, b2, a3]);
    }

    #[test]
    fn a_dead_letter_holds_back_its_row_until_retried_or_dropped() {
        let (mut conn, o) = setup();
        let a1 = put(&conn, &o, "a");
        let a2 = put(&conn, &o, "a");
        o.fail(&mut conn, &[(a1, "bad".into())]).unwrap();
        assert!(claim(&mut conn, &o, "w", now_ms()).is_empty());
        let dead = o.failed(&conn, 10).unwrap();
        assert_eq!(
            (dead.len(), dead[0].id, dead[0].last_error.as_str()),
            (1, a1, "bad")
        );

        assert_eq!(o.retry(&conn, Selection::Id(a1)).unwrap(), 1);
        assert_eq!(claim(&mut conn, &o, "w", now_ms()), [a1, a2]);
        o.fail(&mut conn, &[(a1, "bad again".into())]).unwrap();
        assert_eq!(o.drop_failed(&conn, Selection::All).unwrap(), 1);
        assert_eq!(claim(&mut conn, &o, "w", now_ms()), [a2]);
    }

    #[test]
    fn attempts_lead_to_failed_at_the_maximum() {
        let (mut conn, o) = setup();
        let a = put(&conn, &o, "a");
        for i in 1..=3 {
            let got = match o
                .claim(&mut conn, "w", now_ms() + i * 1000, LEASE, 10)
                .unwrap()
            {
                Claim::Records(r) => r,
                Claim::HeldBy(_) => unreachable!(),
            };
            assert_eq!(got.len(), 1);
            assert_eq!(got[0].attempts as i64, i - 1);
            o.charge(&mut conn, &[(a, format!("e{i}"), 0)], 3).unwrap();
        }
        let c = o.counts(&conn).unwrap();
        assert_eq!((c.failed, c.pending), (1, 0));
        assert_eq!(o.failed(&conn, 1).unwrap()[0].last_error, "e3");
        assert_eq!(o.last_error(&conn).unwrap().as_deref(), Some("e3"));
    }

    #[test]
    fn only_pending_records_are_marked() {
        let (mut conn, o) = setup();
        let a = put(&conn, &o, "a");
        let b = put(&conn, &o, "b");
        o.fail(&mut conn, &[(b, "dead".into())]).unwrap();
        assert_eq!(o.mark_synced(&mut conn, &[a, b], None).unwrap(), 1);
        assert_eq!(o.mark_synced(&mut conn, &[a], None).unwrap(), 0, "once");
        let c = o.counts(&conn).unwrap();
        assert_eq!((c.synced, c.failed), (1, 1));
    }

    #[test]
    fn purge_keeps_the_newest_synced_records() {
        let (mut conn, o) = setup();
        let all: Vec<i64> = (0..10).map(|i| put(&conn, &o, &i.to_string())).collect();
        o.mark_synced(&mut conn, &all[..8], None).unwrap();
        assert_eq!(o.counts(&conn).unwrap().synced, 8);
        assert_eq!(o.purge(&conn, 3).unwrap(), 5);
        let kept: Vec<i64> = column(&conn, "SELECT id FROM d1_sync_queue_synced ORDER BY seq");
        assert_eq!(kept, all[5..8]);
        assert_eq!(
            o.counts(&conn).unwrap().pending,
            2,
            "unsynced records are never purged"
        );
        assert_eq!(o.purge(&conn, 100).unwrap(), 0);
        assert_eq!(o.purge(&conn, 0).unwrap(), 3);
        assert_eq!(o.counts(&conn).unwrap().synced, 0);
    }

    #[test]
    fn an_acknowledged_record_leaves_the_queue_for_the_log() {
        let (mut conn, o) = setup();
        let a = put(&conn, &o, "a");
        o.mark_synced(&mut conn, &[a], None).unwrap();
        let in_queue: i64 = conn
            .query_row("SELECT count(*) FROM d1_sync_queue", [], |r| r.get(0))
            .unwrap();
        let logged: (i64, String, String, String) = conn
            .query_row(
                "SELECT id, table_name, row_key, op FROM d1_sync_queue_synced",
                [],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
            )
            .unwrap();
        assert_eq!(in_queue, 0);
        assert_eq!(logged, (a, "t".into(), "[\"a\"]".into(), "upsert".into()));
    }

    #[test]
    fn a_version_1_queue_is_migrated_without_losing_a_record() {
        let conn = Connection::open_in_memory().unwrap();
        conn.execute_batch(
            "CREATE TABLE d1_sync_meta (key TEXT PRIMARY KEY NOT NULL, value INTEGER NOT NULL);
             INSERT INTO d1_sync_meta VALUES ('queue_version:d1_sync_queue', 1);
             CREATE TABLE d1_sync_queue (
               id INTEGER PRIMARY KEY, table_name TEXT NOT NULL, row_key TEXT NOT NULL,
               op TEXT NOT NULL, payload TEXT NOT NULL, status TEXT NOT NULL DEFAULT 'pending',
               attempts INTEGER NOT NULL DEFAULT 0, next_attempt_at INTEGER NOT NULL DEFAULT 0,
               last_error TEXT, created_at INTEGER NOT NULL, updated_at INTEGER NOT NULL,
               synced_at INTEGER);
             CREATE INDEX d1_sync_queue_status_id ON d1_sync_queue (status, id);
             INSERT INTO d1_sync_queue (id, table_name, row_key, op, payload, status, created_at, updated_at, synced_at)
             VALUES (1, 't', '[\"a\"]', 'upsert', '{\"id\":\"a\"}', 'synced', 10, 11, 12),
                    (2, 't', '[\"b\"]', 'upsert', '{\"id\":\"b\"}', 'pending', 20, 20, NULL),
                    (3, 't', '[\"c\"]', 'upsert', '{\"id\":\"c\"}', 'failed', 30, 31, NULL);",
        )
        .unwrap();
        let o = Outbox::new();
        o.install(&conn).unwrap();
        let c = o.counts(&conn).unwrap();
        assert_eq!((c.pending, c.failed, c.synced), (1, 1, 1));
        let synced_at: i64 = conn
            .query_row(
                "SELECT synced_at FROM d1_sync_queue_synced WHERE id = 1",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(synced_at, 12);
        let version: i64 = conn
            .query_row("SELECT value FROM d1_sync_meta", [], |r| r.get(0))
            .unwrap();
        assert_eq!(version, QUEUE_VERSION);
        let indexes: Vec<String> = column(
            &conn,
            "SELECT name FROM sqlite_schema WHERE type = 'index' AND tbl_name = 'd1_sync_queue' ORDER BY name",
        );
        assert_eq!(
            indexes,
            ["d1_sync_queue_blocking"],
            "the status index is gone"
        );
        o.install(&conn).unwrap();
        assert_eq!(
            o.counts(&conn).unwrap(),
            c,
            "installing again changes nothing"
        );
    }

    #[test]
    fn install_works_inside_the_callers_transaction() {
        let mut conn = Connection::open_in_memory().unwrap();
        let tx = conn.transaction().unwrap();
        Outbox::new().install(&tx).unwrap();
        tx.commit().unwrap();
        assert_eq!(Outbox::new().counts(&conn).unwrap(), Counts::default());
    }

    /// The first column of every row of `sql`.
    fn column<T: rusqlite::types::FromSql>(conn: &Connection, sql: &str) -> Vec<T> {
        conn.prepare(sql)
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap()
    }

    fn plan(conn: &Connection, sql: &str) -> String {
        conn.prepare(&format!("EXPLAIN QUERY PLAN {sql}"))
            .unwrap()
            .query_map([], |r| r.get::<_, String>(3))
            .unwrap()
            .collect::<Result<Vec<_>, _>>()
            .unwrap()
            .join("\n")
    }

    #[test]
    fn the_hot_queries_walk_indexes_without_sorting() {
        let (conn, o) = setup();
        let q = &o.q;
        let claim = plan(
            &conn,
            &format!(
                "SELECT id FROM {q} AS r WHERE r.status = 'pending' AND r.next_attempt_at <= 1 AND r.id > 5
                 AND NOT EXISTS (SELECT 1 FROM {q} AS e WHERE e.table_name = r.table_name AND e.row_key = r.row_key AND e.id < r.id
                   AND (e.status = 'failed' OR e.next_attempt_at > 0)
                   AND (e.status = 'failed' OR (e.status = 'pending' AND (e.next_attempt_at > 1 OR e.id <= 5))))
                 ORDER BY r.id LIMIT 10"
            ),
        );
        assert!(
            !claim.contains("TEMP B-TREE"),
            "the claim must not sort the backlog:\n{claim}"
        );
        assert!(
            claim.contains("SEARCH r USING INTEGER PRIMARY KEY (rowid>?)"),
            "the claim walks the queue from the cursor in id order:\n{claim}"
        );
        assert!(
            claim.contains("d1_sync_queue_blocking"),
            "the row check uses the partial index:\n{claim}"
        );
        let by = o.index("blocking");
        for dead in [
            format!("SELECT id, last_error FROM {q} INDEXED BY {by} WHERE {DEAD} ORDER BY id LIMIT 10"),
            format!("UPDATE {q} INDEXED BY {by} SET status = 'pending' WHERE {DEAD} AND (NULL IS NULL OR id = NULL)"),
            format!("DELETE FROM {q} INDEXED BY {by} WHERE {DEAD} AND (7 IS NULL OR id = 7)"),
        ] {
            let dead = plan(&conn, &dead);
            assert!(
                dead.lines()
                    .filter(|l| l.contains("d1_sync_queue"))
                    .all(|l| l.contains("INDEX d1_sync_queue_blocking")),
                "dead letters are found through their partial index, not the backlog:\n{dead}"
            );
        }
        let log = &o.log;
        let purge = plan(
            &conn,
            &format!("DELETE FROM {log} WHERE seq <= (SELECT max(seq) FROM {log}) - 5"),
        );
        assert!(
            !purge.contains("TEMP B-TREE") && !purge.contains("SCAN d1_sync_queue_synced"),
            "the purge cuts a range of the log:\n{purge}"
        );
        for mark in [
            format!("DELETE FROM {q} WHERE id IN (SELECT value FROM json_each('[1]')) AND status = 'pending'"),
            format!("SELECT id FROM {q} WHERE id IN (SELECT value FROM json_each('[1]')) AND status = 'pending' ORDER BY id"),
        ] {
            let mark = plan(&conn, &mark);
            assert!(
                mark.contains("SEARCH d1_sync_queue ") && !mark.contains("SCAN d1_sync_queue "),
                "the acknowledgement looks records up by id:\n{mark}"
            );
        }
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
        assert!(matches!(
            o.check(&conn),
            Err(Error::QueueTooNew { found: 99, .. })
        ));
        let other = Connection::open_in_memory().unwrap();
        let err = o.counts(&other).unwrap_err();
        assert!(matches!(err, Error::NotInstalled(_)), "{err}");
        assert!(matches!(o.check(&other), Err(Error::NotInstalled(_))));
    }
}
