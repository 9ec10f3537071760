//! The queue's SQL text that the hot path and the operator's queries share, in one place: the
//! query-plan test plans these very statements.

/// Dead letters, in a form that implies the partial index holding them (its condition first):
/// the queries on dead letters name that index, so with a backlog of pending records and a few
/// dead letters they read the index, not the backlog.
pub(super) const DEAD: &str = "(status = 'failed' OR next_attempt_at > 0) AND status = 'failed'";

use super::Outbox;

/// `<queue> INDEXED BY <blocking index> WHERE <dead letter>`: the dead letters, read through
/// the partial index that holds them.
pub(super) fn dead_letters(o: &Outbox) -> String {
    format!("{} INDEXED BY {} WHERE {DEAD}", o.q, o.index("blocking"))
}

/// The claim: `?1` now, `?2` the limit, `?3` the cursor. Eligible: pending and due, after the
/// cursor, and no earlier record of the same row waiting (a dead letter, or not yet due).
pub(super) fn claim(o: &Outbox) -> String {
    let q = &o.q;
    format!(
        "SELECT id, table_name, row_key, op, payload, attempts, def FROM {q} AS r
         WHERE r.status = 'pending' AND r.next_attempt_at <= ?1 AND r.id > ?3
           AND NOT EXISTS (
             SELECT 1 FROM {q} AS e INDEXED BY {blocking}
             WHERE e.table_name = r.table_name AND e.row_key = r.row_key AND e.id < r.id
               AND (e.status = 'failed' OR e.next_attempt_at > 0)
               AND (e.status = 'failed' OR (e.status = 'pending' AND e.next_attempt_at > ?1)))
         ORDER BY r.id LIMIT ?2",
        blocking = o.index("blocking")
    )
}

/// The rows with a pending record at or below the cursor `?1` that had to wait (charged,
/// held or retried): a read-ahead stops at them.
pub(super) fn waited_up_to(o: &Outbox) -> String {
    format!(
        "SELECT DISTINCT table_name, row_key FROM {} WHERE (status = 'failed' OR next_attempt_at > 0)
         AND status = 'pending' AND id <= ?1",
        o.q
    )
}

/// An acknowledgement's log entries for one run of ids: `?1` the time, `?2` to `?3` the run.
pub(super) fn log_synced(o: &Outbox) -> String {
    format!(
        "INSERT INTO {log} (id, table_name, row_key, op, attempts, created_at, synced_at)
         SELECT id, table_name, row_key, op, attempts, created_at, ?1 FROM {q}
         WHERE id BETWEEN ?2 AND ?3 AND status = 'pending' ORDER BY id",
        log = o.log,
        q = o.q
    )
}

/// An acknowledgement's delete from the queue of one run of ids, `?1` to `?2`: one seek and a
/// walk along the table, where a list of ids seeks each one.
pub(super) fn delete_synced(o: &Outbox) -> String {
    format!(
        "DELETE FROM {} WHERE id BETWEEN ?1 AND ?2 AND status = 'pending'",
        o.q
    )
}

/// The rows with a record waiting at `?1`, with the first such record's id and due time.
pub(super) fn waiting_rows(o: &Outbox) -> String {
    format!(
        "SELECT table_name, row_key, min(id), min(CASE WHEN status = 'failed' THEN {max} ELSE next_attempt_at END)
         FROM {} INDEXED BY {} WHERE (status = 'failed' OR next_attempt_at > 0)
           AND (status = 'failed' OR next_attempt_at > ?1)
         GROUP BY table_name, row_key",
        o.q,
        o.index("blocking"),
        max = i64::MAX
    )
}

/// Whether the queue's ids span exactly `?1` to `?2` and it holds no dead letter (read
/// through their partial index): three seeks. With no record in the gaps between an
/// acknowledgement's runs, every record in the queue is then one the acknowledgement names
/// and may delete ([`delete_synced`] deletes only pending ones).
pub(super) fn spans_only(o: &Outbox) -> String {
    format!(
        "SELECT (SELECT min(id) FROM {q}) IS ?1 AND (SELECT max(id) FROM {q}) IS ?2
           AND NOT EXISTS (SELECT 1 FROM {dead})",
        q = o.q,
        dead = dead_letters(o)
    )
}

/// Whether a record lies strictly between `?1` and `?2`.
pub(super) fn any_between(o: &Outbox) -> String {
    format!("SELECT 1 FROM {} WHERE id > ?1 AND id < ?2 LIMIT 1", o.q)
}

/// Empties the queue. Without a `WHERE`, SQLite frees the table's and its indexes' pages
/// whole instead of deleting row by row (the ids go on growing: `AUTOINCREMENT` keeps them).
pub(super) fn clear(o: &Outbox) -> String {
    format!("DELETE FROM {}", o.q)
}

/// Trims the log to its newest `?1` entries: only its low end is ever deleted, so the cut is
/// one subtraction and the delete a range of the rowid.
pub(super) fn purge(o: &Outbox) -> String {
    format!(
        "DELETE FROM {log} WHERE seq <= (SELECT max(seq) FROM {log}) - ?1",
        log = o.log
    )
}

/// Dead letters, oldest first, at most `?1`.
pub(super) fn failed(o: &Outbox) -> String {
    format!(
        "SELECT id, table_name, row_key, op, attempts, coalesce(last_error, ''), created_at FROM {} ORDER BY id LIMIT ?1",
        dead_letters(o)
    )
}

/// Dead letters back in line: `?1` the time, `?2` one id or NULL for all.
pub(super) fn retry(o: &Outbox) -> String {
    format!(
        "UPDATE {} INDEXED BY {} SET status = 'pending', attempts = 0, next_attempt_at = 1, updated_at = ?1 WHERE {DEAD} AND (?2 IS NULL OR id = ?2)",
        o.q,
        o.index("blocking"),
    )
}

/// Dead letters deleted: `?1` one id or NULL for all.
pub(super) fn drop_failed(o: &Outbox) -> String {
    format!(
        "DELETE FROM {} AND (?1 IS NULL OR id = ?1)",
        dead_letters(o)
    )
}

/// Pending records not due at `?1` (in backoff, or held behind a parent that waits), read
/// through the partial index that holds them.
pub(super) fn waiting(o: &Outbox) -> String {
    format!(
        "SELECT count(*) FROM {} INDEXED BY {} WHERE (status = 'failed' OR next_attempt_at > 0)
           AND status = 'pending' AND next_attempt_at > ?1",
        o.q,
        o.index("blocking")
    )
}

/// The records of the requests journaled as in flight.
pub(super) fn in_flight(o: &Outbox) -> String {
    format!(
        "SELECT coalesce(sum(json_array_length(ids)), 0) FROM {}",
        o.journal
    )
}
