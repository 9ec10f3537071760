//! The SQL of the ledger that makes delivery exactly once: a small table in D1 that every
//! request writes in its own batch, so D1 itself recognises a request it already applied.
//!
//! Each request carries an id: the queue's *stream* (random, made once per queue), a sequence
//! number and a random nonce. Its batch opens with one upsert into the stream's slot
//! `seq % SLOTS`. A first delivery writes the slot (one row, updated in place: the ledger never
//! grows beyond [`SLOTS`] rows per queue and needs no trimming). A replay of the same request
//! finds its own id in the slot, and the trigger aborts the statement with
//! [`REPLAY_MESSAGE`]; the batch is one transaction, so nothing of the replay is applied, and
//! the sender reads that error as "applied before".
//!
//! A sender must never have a request of seq `s` unresolved when it sends seq `s + SLOTS`
//! (the slot would be overwritten); d1-sync's worker has at most two unresolved at a time.
//!
//! ```
//! use d1_sync_schema::ledger;
//! let ddl = ledger::create_sql(ledger::DEFAULT_TABLE);
//! assert!(ddl[0].starts_with(r#"CREATE TABLE IF NOT EXISTS "d1_sync_ledger""#));
//! assert!(ledger::record_sql(ledger::DEFAULT_TABLE).contains("ON CONFLICT (\"stream\", \"slot\")"));
//! ```

use crate::sql::quote_ident;

/// The ledger's default table name.
pub const DEFAULT_TABLE: &str = "d1_sync_ledger";

/// Slots per stream: how many of a queue's requests the ledger remembers.
pub const SLOTS: u64 = 8;

/// The text the trigger aborts a replayed request with. D1 and SQLite report it inside their
/// own error message (D1: `... : SQLITE_CONSTRAINT`), so match it as a substring.
pub const REPLAY_MESSAGE: &str = "d1_sync_ledger: request already applied";

/// The statements that create the ledger and its replay trigger, if missing. Idempotent.
pub fn create_sql(table: &str) -> [String; 2] {
    let q = quote_ident(table);
    let trigger = quote_ident(&format!("{table}_replay"));
    [
        format!(
            "CREATE TABLE IF NOT EXISTS {q} (\"stream\" TEXT NOT NULL, \"slot\" INTEGER NOT NULL, \
             \"seq\" INTEGER NOT NULL, \"nonce\" TEXT NOT NULL, \"applied_at\" INTEGER NOT NULL, \
             PRIMARY KEY (\"stream\", \"slot\")) WITHOUT ROWID"
        ),
        format!(
            "CREATE TRIGGER IF NOT EXISTS {trigger} BEFORE UPDATE ON {q} \
             WHEN NEW.\"seq\" = OLD.\"seq\" AND NEW.\"nonce\" = OLD.\"nonce\" \
             BEGIN SELECT RAISE(ABORT, '{REPLAY_MESSAGE}'); END"
        ),
    ]
}

/// The statement a request opens with (after `PRAGMA defer_foreign_keys`): parameters
/// `?1` stream, `?2` slot, `?3` seq, `?4` nonce, `?5` time (ms). Writes one row; fails with
/// [`REPLAY_MESSAGE`] when the same request was applied before.
pub fn record_sql(table: &str) -> String {
    let q = quote_ident(table);
    format!(
        "INSERT INTO {q} (\"stream\", \"slot\", \"seq\", \"nonce\", \"applied_at\") VALUES (?1, ?2, ?3, ?4, ?5) \
         ON CONFLICT (\"stream\", \"slot\") DO UPDATE SET \"seq\" = excluded.\"seq\", \
         \"nonce\" = excluded.\"nonce\", \"applied_at\" = excluded.\"applied_at\""
    )
}

/// Whether an error message is the ledger refusing a replay.
pub fn is_replay(message: &str) -> bool {
    message.contains(REPLAY_MESSAGE)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rusqlite::{params, Connection};

    fn record(conn: &Connection, seq: i64, nonce: &str) -> Result<usize, String> {
        conn.execute(
            &record_sql(DEFAULT_TABLE),
            params!["s", seq % SLOTS as i64, seq, nonce, 1],
        )
        .map_err(|e| e.to_string())
    }

    #[test]
    fn a_replay_is_refused_and_a_new_request_takes_the_slot() {
        let conn = Connection::open_in_memory().unwrap();
        for s in create_sql(DEFAULT_TABLE) {
            conn.execute_batch(&s).unwrap();
            conn.execute_batch(&s).unwrap();
        }
        assert_eq!(record(&conn, 3, "a"), Ok(1));
        let replay = record(&conn, 3, "a").unwrap_err();
        assert!(is_replay(&replay), "{replay}");
        // The same seq with another nonce (a queue restored from a backup) is a new request.
        assert_eq!(record(&conn, 3, "b"), Ok(1));
        // Seq 3 + SLOTS reuses the slot: the ledger stays at SLOTS rows per stream.
        assert_eq!(record(&conn, 3 + SLOTS as i64, "c"), Ok(1));
        for seq in 0..40 {
            record(&conn, seq, "n").unwrap();
        }
        let rows: i64 = conn
            .query_row("SELECT count(*) FROM d1_sync_ledger", [], |r| r.get(0))
            .unwrap();
        assert_eq!(rows, SLOTS as i64);
        assert!(!is_replay("UNIQUE constraint failed: t.id"));
    }
}
