//! Installing the queue in a database, and migrating a queue an older d1-sync wrote.

use rusqlite::{params, Connection, OptionalExtension};

use super::Outbox;
use crate::error::{Error, Result};
use crate::txn::{is_busy, table_exists, write_unit};

/// The queue schema version this build writes.
///
/// 1. The first queue: synced records stayed in the queue table, status `synced`.
/// 2. Synced records move to the slim log `<queue>_synced`.
/// 3. Requests in flight are journaled in `<queue>_requests`, under the queue's stream id
///    (`d1_sync_meta`), for exactly-once delivery.
/// 4. Records carry the id of their table's definition (`def`), stored in `<queue>_tables`,
///    and their payloads no longer repeat the key (it is the row key); infinities are
///    stored as `±9e999`. Records of an older queue still read: no definition (a drainer
///    applies them with its registry's), the key in the payload, `{"real": "inf"}`.
/// 5. Records coalesce (see [`d1_sync_schema::queue`]): the index `<queue>_rows` finds a row's
///    newest record, `<queue>_coalesce` holds the trailing run and the claimed mark, and ids
///    come from `AUTOINCREMENT` (seeded above every id the queue and its log have seen), so
///    they are never given twice. Capture triggers of the first form are replaced by ones that
///    keep the run.
/// 6. Records the version guard refused are logged in `<queue>_conflicts` (see
///    [`Outbox::conflicts`]).
///
/// The form of the capture triggers is not part of this version: every install replaces
/// triggers of an earlier form (see [`d1_sync_schema::capture::FORM`]), and a build that knows
/// only an earlier form still reads the queue (its `capture` puts its own form back, which is
/// as correct, only slower).
pub(super) const QUEUE_VERSION: i64 = 6;

impl Outbox {
    /// Creates the queue table (and its indexes) if missing, or migrates it; refuses a queue
    /// made by a newer d1-sync. Brings capture triggers an earlier build installed to this
    /// build's form, and makes again those a migration dropped with their table (see
    /// [`Outbox::restore_capture`]). Idempotent; does not change the connection's pragmas.
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
                // Capture triggers an earlier build installed get this build's form, and
                // those a migration dropped with their table are made again. Upkeep: another
                // connection holding the write lock past the busy timeout defers it to the
                // next install instead of failing this one.
                let upkeep = self
                    .upgrade_capture(conn, false)
                    .and_then(|()| self.restore_capture(conn))
                    .and_then(|_| self.warn_capture_gaps(conn));
                return match upkeep {
                    Err(Error::Sqlite(e)) if is_busy(&e) => {
                        tracing::warn!(queue = %self.table, "capture upkeep deferred to the next install: {e}");
                        Ok(())
                    }
                    other => other,
                };
            }
        }
        // In the caller's transaction, or one that takes the write lock first: another
        // process may be installing the same queue at this moment, and every step is made
        // again safely once it has.
        write_unit(conn, "d1_sync_install", || self.migrate(conn))
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
               id INTEGER PRIMARY KEY AUTOINCREMENT,
               table_name TEXT NOT NULL,
               row_key TEXT NOT NULL,
               op TEXT NOT NULL,
               payload TEXT NOT NULL,
               status TEXT NOT NULL DEFAULT 'pending',
               attempts INTEGER NOT NULL DEFAULT 0,
               next_attempt_at INTEGER NOT NULL DEFAULT 0,
               last_error TEXT,
               created_at INTEGER NOT NULL,
               updated_at INTEGER NOT NULL,
               def INTEGER
             );
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
             CREATE TABLE IF NOT EXISTS {tables} (
               id INTEGER PRIMARY KEY,
               table_name TEXT NOT NULL,
               definition TEXT NOT NULL,
               created_at INTEGER NOT NULL
             );
             CREATE TABLE IF NOT EXISTS {journal} (
               seq INTEGER PRIMARY KEY AUTOINCREMENT,
               nonce TEXT NOT NULL,
               ids TEXT NOT NULL,
               created_at INTEGER NOT NULL
             );",
            journal = self.journal,
            tables = self.tables,
        ))?;
        let has_def: bool = conn.query_row(
            "SELECT count(*) > 0 FROM pragma_table_info(?1) WHERE name = 'def'",
            [&self.table],
            |r| r.get(0),
        )?;
        if !has_def {
            // Version 3 and before: records without a stored definition.
            conn.execute_batch(&format!("ALTER TABLE {q} ADD COLUMN def INTEGER"))?;
        }
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
        self.rebuild_with_autoincrement(conn)?;
        conn.execute_batch(&format!(
            "CREATE INDEX IF NOT EXISTS {blocking} ON {q} (table_name, row_key, id)
               WHERE status = 'failed' OR next_attempt_at > 0;
             CREATE INDEX IF NOT EXISTS {rows} ON {q} (table_name, row_key);
             {state}",
            blocking = self.index("blocking"),
            rows = self.index("rows"),
            state = d1_sync_schema::queue::create_state_sql(&self.table),
        ))?;
        conn.execute_batch(&self.create_conflicts_sql())?;
        self.upgrade_capture(conn, true)?;
        self.restore_capture(conn)?;
        self.warn_capture_gaps(conn)?;
        conn.execute(
            "INSERT INTO d1_sync_meta (key, value) VALUES (?1, ?2) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            params![format!("queue_version:{}", self.table), QUEUE_VERSION],
        )?;
        Ok(())
    }

    /// Logs each capture that no longer fits its table (see [`Outbox::capture_gaps`]).
    fn warn_capture_gaps(&self, conn: &Connection) -> Result<()> {
        for (table, reason) in self.capture_gaps(conn)? {
            tracing::warn!(table = %table, queue = %self.table, "capture no longer fits the table: {reason}; capture it again with a struct that fits");
        }
        Ok(())
    }

    /// Version 4 and before: ids from the rowid, which an emptied queue gives again. The table
    /// is rebuilt with `AUTOINCREMENT` (its indexes are made again after), and the sequence
    /// starts above every id the queue and its log hold.
    fn rebuild_with_autoincrement(&self, conn: &Connection) -> Result<()> {
        let (q, log) = (&self.q, &self.log);
        let sql: String = conn.query_row(
            "SELECT sql FROM sqlite_schema WHERE type = 'table' AND name = ?1",
            [&self.table],
            |r| r.get(0),
        )?;
        if !sql.to_ascii_uppercase().contains("AUTOINCREMENT") {
            let columns = "id, table_name, row_key, op, payload, status, attempts, next_attempt_at, last_error, created_at, updated_at, def";
            conn.execute_batch(&format!(
                "CREATE TEMP TABLE d1_sync_rebuild AS SELECT {columns} FROM {q};
                 DROP TABLE {q};
                 {create};
                 INSERT INTO {q} ({columns}) SELECT {columns} FROM temp.d1_sync_rebuild ORDER BY id;
                 DROP TABLE temp.d1_sync_rebuild;",
                create = sql.replacen(
                    "INTEGER PRIMARY KEY",
                    "INTEGER PRIMARY KEY AUTOINCREMENT",
                    1
                ),
            ))?;
        }
        conn.execute(
            "INSERT INTO sqlite_sequence (name, seq) SELECT ?1, 0 WHERE NOT EXISTS (SELECT 1 FROM sqlite_sequence WHERE name = ?1)",
            [&self.table],
        )?;
        conn.execute(
            &format!(
                "UPDATE sqlite_sequence SET seq = max(seq, (SELECT coalesce(max(id), 0) FROM {q}), (SELECT coalesce(max(id), 0) FROM {log})) WHERE name = ?1"
            ),
            [&self.table],
        )?;
        Ok(())
    }

    /// Checks, without writing, that the queue exists and that this build understands it.
    pub fn check(&self, conn: &Connection) -> Result<()> {
        if !table_exists(conn, &self.table)? {
            return Err(Error::NotInstalled(self.table.clone()));
        }
        if table_exists(conn, "d1_sync_meta")? {
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
}
