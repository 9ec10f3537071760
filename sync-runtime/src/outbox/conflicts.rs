//! The conflicts log: records the version guard refused because D1 held the same or a newer
//! version of their row (see [`d1_sync_schema::guard`]), or whose parent row another device
//! deleted (D1 refused them for the foreign key, and holds the parent's tombstone). Such a
//! record is *superseded*: it is done, marked synced like any other, and logged here with the
//! version it carried and the one D1 held. Bounded like the synced log (see [`Outbox::purge`]).

use rusqlite::{params, Connection, Transaction};

use super::{now_ms, Outbox};
use crate::error::Result;

/// A superseded record, as the conflicts log keeps it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Conflict {
    /// The record's queue id.
    pub id: i64,
    /// Table.
    pub table: String,
    /// Row key (JSON array).
    pub row_key: String,
    /// Operation.
    pub op: String,
    /// The version the record carried (`None` for a row of a table without one, superseded
    /// because another device deleted its parent).
    pub sent_version: Option<i64>,
    /// The version D1 held (of its row, or of a delete of it), where it could be read.
    pub held_version: Option<i64>,
    /// Why: `newer version` (D1 held the same or a newer version of the row, or of a delete
    /// of it), or `parent deleted: <table> <key>` (another device deleted the row's parent,
    /// and `held_version` is that delete's).
    pub reason: String,
    /// When D1 answered (ms).
    pub at_ms: i64,
}

/// A record the guard refused, on its way to the log: its id, the version it carried, and the
/// one the target held.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Stale {
    pub(crate) id: i64,
    pub(crate) sent: Option<i64>,
    pub(crate) held: Option<i64>,
    /// The parent row whose delete superseded it (`table key`), if that is why.
    pub(crate) parent: Option<String>,
}

impl Outbox {
    /// The conflicts log's name: `<queue>_conflicts`.
    pub fn conflicts_table_name(&self) -> String {
        format!("{}_conflicts", self.table)
    }

    pub(super) fn create_conflicts_sql(&self) -> String {
        format!(
            "CREATE TABLE IF NOT EXISTS {} (
               seq INTEGER PRIMARY KEY,
               id INTEGER NOT NULL,
               table_name TEXT NOT NULL,
               row_key TEXT NOT NULL,
               op TEXT NOT NULL,
               sent_version INTEGER,
               held_version INTEGER,
               reason TEXT NOT NULL,
               at INTEGER NOT NULL
             )",
            self.conflicts
        )
    }

    /// Logs records the guard refused (they must still be in the queue), in the caller's
    /// transaction, before they leave the queue.
    pub(super) fn log_conflicts(&self, tx: &Transaction<'_>, stale: &[Stale]) -> Result<()> {
        if stale.is_empty() {
            return Ok(());
        }
        let mut stmt = tx.prepare_cached(&format!(
            "INSERT INTO {} (id, table_name, row_key, op, sent_version, held_version, reason, at)
             SELECT id, table_name, row_key, op, ?2, ?3, ?4, ?5 FROM {} WHERE id = ?1",
            self.conflicts, self.q
        ))?;
        let now = now_ms();
        for s in stale {
            let reason = match &s.parent {
                Some(p) => format!("parent deleted: {p}"),
                None => "newer version".to_string(),
            };
            stmt.execute(params![s.id, s.sent, s.held, reason, now])?;
        }
        Ok(())
    }

    /// The newest entries of the conflicts log, newest first, at most `limit`. Empty for a
    /// queue an older d1-sync wrote (it kept no such log).
    ///
    /// ```
    /// # fn main() -> Result<(), d1_sync::Error> {
    /// let conn = d1_sync::open(":memory:")?;
    /// assert!(d1_sync::Outbox::new().conflicts(&conn, 10)?.is_empty());
    /// # Ok(()) }
    /// ```
    pub fn conflicts(&self, conn: &Connection, limit: usize) -> Result<Vec<Conflict>> {
        if !self.has_conflicts_log(conn)? {
            return Ok(Vec::new());
        }
        let mut stmt = conn.prepare(&format!(
            "SELECT id, table_name, row_key, op, sent_version, held_version, reason, at FROM {} ORDER BY seq DESC LIMIT ?1",
            self.conflicts
        ))?;
        let rows = stmt
            .query_map([i64::try_from(limit).unwrap_or(i64::MAX)], |r| {
                Ok(Conflict {
                    id: r.get(0)?,
                    table: r.get(1)?,
                    row_key: r.get(2)?,
                    op: r.get(3)?,
                    sent_version: r.get(4)?,
                    held_version: r.get(5)?,
                    reason: r.get(6)?,
                    at_ms: r.get(7)?,
                })
            })?
            .collect::<Result<Vec<_>, _>>()?;
        Ok(rows)
    }

    /// Entries in the conflicts log.
    pub(super) fn conflicts_logged(&self, conn: &Connection) -> Result<u64> {
        if !self.has_conflicts_log(conn)? {
            return Ok(0);
        }
        let n: i64 = conn
            .prepare_cached(&format!("SELECT count(*) FROM {}", self.conflicts))?
            .query_row([], |r| r.get(0))?;
        Ok(u64::try_from(n).unwrap_or(0))
    }

    /// Trims the conflicts log to its newest `keep` entries.
    pub(super) fn purge_conflicts(&self, conn: &Connection, keep: usize) -> Result<usize> {
        if !self.has_conflicts_log(conn)? {
            return Ok(0);
        }
        Ok(conn
            .prepare_cached(&format!(
                "DELETE FROM {c} WHERE seq <= (SELECT max(seq) FROM {c}) - ?1",
                c = self.conflicts
            ))?
            .execute([i64::try_from(keep).unwrap_or(i64::MAX)])?)
    }

    fn has_conflicts_log(&self, conn: &Connection) -> Result<bool> {
        Ok(crate::txn::table_exists(
            conn,
            &self.conflicts_table_name(),
        )?)
    }
}
