//! What an operator asks of a queue: counts, dead letters (list, retry, drop), the lease, the
//! last error. Dead letters are read through the partial index that holds them.

use rusqlite::{params, Connection, OptionalExtension};

use super::{attempts_of, now_ms, sql, text_at, Outbox};
use crate::error::{Error, Result};
use crate::row::TableDef;

/// Counts of records by status.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct Counts {
    /// Waiting to be sent (including records in backoff and records held behind one).
    pub pending: u64,
    /// Of `pending`, those not due now: in backoff after a refusal, or held behind a parent
    /// row that waits.
    pub waiting: u64,
    /// Of `pending`, those in requests journaled as in flight: sent, or about to be, and sent
    /// again unchanged until D1's answer is known.
    pub in_flight: u64,
    /// Entries in the synced log: the newest acknowledged records, kept for reference (see
    /// [`Outbox::purge`]).
    pub synced: u64,
    /// Dead letters.
    pub failed: u64,
    /// Entries in the conflicts log: the newest records the version guard refused because D1
    /// held the same or a newer version of their row (see [`Outbox::conflicts`]).
    pub superseded: u64,
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

/// Which dead letters an operation applies to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Selection {
    /// One record.
    Id(i64),
    /// All dead letters.
    All,
}

impl Outbox {
    /// The table definitions records were queued under, oldest first (see
    /// [`crate::SyncRow::DEFINITION`]). A definition stays while the queue lives; one that
    /// cannot be read is an [`Error::Config`] naming it. None when nothing was stored: no
    /// queue yet, or one written before queue version 4, which stored no definitions.
    pub fn definitions(&self, conn: &Connection) -> Result<Vec<TableDef>> {
        if !crate::txn::table_exists(conn, &self.tables_table_name())? {
            return Ok(Vec::new());
        }
        let mut stmt = conn.prepare(&format!(
            "SELECT id, definition FROM {} ORDER BY created_at, id",
            self.tables
        ))?;
        let rows = stmt
            .query_map([], |r| Ok((r.get::<_, i64>(0)?, text_at(r, 1)?)))?
            .collect::<Result<Vec<_>, _>>()?;
        rows.into_iter()
            .map(|(id, text)| {
                TableDef::from_definition(&text).map_err(|e| {
                    Error::Config(format!(
                        "{}: definition {id}: {e}",
                        self.tables_table_name()
                    ))
                })
            })
            .collect()
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
            .prepare_cached(&format!("SELECT count(*) FROM {}", sql::dead_letters(self)))?
            .query_row([], |r| r.get(0))?;
        c.failed = u64::try_from(failed).unwrap_or(0);
        c.pending = u64::try_from(total - failed).unwrap_or(0);
        let waiting: i64 = conn
            .prepare_cached(&sql::waiting(self))?
            .query_row([now_ms()], |r| r.get(0))?;
        c.waiting = u64::try_from(waiting).unwrap_or(0);
        let in_flight: i64 = conn
            .prepare_cached(&sql::in_flight(self))
            .and_then(|mut s| s.query_row([], |r| r.get(0)))
            .map_err(|e| self.map_missing(e))?;
        c.in_flight = u64::try_from(in_flight).unwrap_or(0);
        c.synced = conn
            .prepare_cached(&format!("SELECT count(*) FROM {}", self.log))
            .and_then(|mut s| s.query_row([], |r| r.get::<_, i64>(0)))
            .map_err(|e| self.map_missing(e))
            .map(|n| u64::try_from(n).unwrap_or(0))?;
        c.superseded = self.conflicts_logged(conn)?;
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
            .prepare_cached(&sql::failed(self))
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
        conn.execute(&sql::retry(self), params![now_ms(), selection_id(which)])
            .map_err(|e| self.map_missing(e))
    }

    /// Deletes dead letters for good. Returns how many.
    pub fn drop_failed(&self, conn: &Connection, which: Selection) -> Result<usize> {
        conn.execute(&sql::drop_failed(self), params![selection_id(which)])
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
}

fn selection_id(which: Selection) -> Option<i64> {
    match which {
        Selection::Id(id) => Some(id),
        Selection::All => None,
    }
}
