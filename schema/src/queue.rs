//! The one statement that puts a record into the outbox queue, shared by the runtime's typed
//! writes and the capture triggers: it appends the record, or **coalesces** it into the
//! row's newest pending record when that changes nothing D1 ends up with.
//!
//! # Merging
//!
//! A record `N` merges into `T`, the newest record of the same row, when all of these hold:
//!
//! - `T` is pending (not a dead letter) and no request carries it: its id is above the
//!   queue's *claimed* mark, which every claim raises to the highest id it read, in the
//!   claim's own transaction, so a record a worker holds in memory or in a journaled request
//!   is never rewritten;
//! - both were written under the same table definition (raw records, without one, never
//!   merge);
//! - no record of **another table** was queued after `T`: `T` lies in the queue's trailing
//!   *run* of records of its table. Moving `N`'s effect back to `T`'s place must not cross a
//!   write that a foreign key, a cascade or a trigger could tie to it;
//! - the table has no triggers of its own (capture's aside): the same migrations make them in
//!   D1, where they would fire once for the merged record instead of once per write (an audit
//!   log, a counter, an `updated_at` bump);
//! - the key has no real: a typed write and a capture trigger may write the same real in two
//!   texts, so the row's newest record by its text is not certainly the row's newest;
//! - records of other rows of the **same table** after `T` are crossed only when the table
//!   neither references itself nor has a `UNIQUE` constraint beyond its key (two rows of it
//!   can then not constrain each other);
//! - the operations combine: `T` an upsert or update and `N` anything, or both deletes. A
//!   delete is never followed by a merge of a write: deleting cascades in D1, and a merged
//!   upsert would keep the old row's insert-only columns.
//!
//! The merged record keeps `T`'s id, attempts and backoff:
//!
//! | `T` then `N`        | merged                                                        |
//! |---------------------|---------------------------------------------------------------|
//! | upsert, upsert      | `N`'s upsert, but `T`'s values of insert-only columns          |
//! | upsert, update      | one upsert: `T`'s values with `N`'s columns over them          |
//! | update, update      | one update of the union of the columns, `N`'s values winning  |
//! | update, upsert      | `N`'s upsert                                                   |
//! | anything, delete    | the delete                                                     |
//!
//! The claimed mark and the run live in one row of `<queue>_coalesce` ([`state_name`]).
//! Whoever enqueues moves the run after each record ([`run_sql`]), in the same transaction;
//! the queue's ids come from `AUTOINCREMENT`, so they only grow, even after the queue empties,
//! and the claimed mark never covers a new record.
//!
//! ```
//! use d1_sync_schema::queue::{enqueue_sql, Enqueue};
//! let sql = enqueue_sql(&Enqueue::params("d1_sync_queue", true));
//! assert!(sql.starts_with(r#"INSERT INTO "d1_sync_queue" (id, table_name, row_key, op, payload, created_at, updated_at, def)"#));
//! assert!(sql.contains("ON CONFLICT (id) DO UPDATE SET"));
//! ```

use crate::sql::quote_ident;

/// The SQL expressions of one record, and whether it may merge.
#[derive(Debug, Clone, Copy)]
pub struct Enqueue<'a> {
    /// The queue table.
    pub queue: &'a str,
    /// The table the record writes (an expression).
    pub table: &'a str,
    /// Its row key, a JSON array of the key values (an expression).
    pub row_key: &'a str,
    /// `'upsert'`, `'update'` or `'delete'` (an expression).
    pub op: &'a str,
    /// The stored payload, a JSON object (an expression).
    pub payload: &'a str,
    /// The id of the definition it was written under, or `NULL` (an expression).
    pub def: &'a str,
    /// The time in ms since the epoch (an expression).
    pub now: &'a str,
    /// A condition on the record being queued at all (`true` for always).
    pub when: &'a str,
    /// Whether it may merge into the row's newest record (see the module's rules).
    pub coalesce: bool,
}

impl<'a> Enqueue<'a> {
    /// The statement with parameters: `?1` table, `?2` row key, `?3` op, `?4` payload, `?5`
    /// now, `?6` definition id.
    pub fn params(queue: &'a str, coalesce: bool) -> Enqueue<'a> {
        Enqueue {
            queue,
            table: "?1",
            row_key: "?2",
            op: "?3",
            payload: "?4",
            now: "?5",
            def: "?6",
            when: "true",
            coalesce,
        }
    }
}

/// The table of the queue's coalescing state, one row (`id = 0`): the table of the trailing
/// run of records (`run_table`), the id it starts at (`run_start`), and the claimed mark
/// (`claimed`): records at or below it may be in a worker's hands.
pub fn state_name(queue: &str) -> String {
    format!("{queue}_coalesce")
}

/// Creates the state table and its row. `claimed` starts at the queue's newest id: records
/// queued before coalescing existed are never merged into.
pub fn create_state_sql(queue: &str) -> String {
    let state = quote_ident(&state_name(queue));
    format!(
        "CREATE TABLE IF NOT EXISTS {state} (id INTEGER PRIMARY KEY CHECK (id = 0), run_table TEXT,
           run_start INTEGER NOT NULL DEFAULT 0, claimed INTEGER NOT NULL DEFAULT 0);
         INSERT INTO {state} (id, claimed) SELECT 0, coalesce(max(id), 0) FROM {q} WHERE true
           ON CONFLICT (id) DO NOTHING;",
        q = quote_ident(queue)
    )
}

/// After a record of `table` was queued (`when` held), as record `id` (expressions): a record
/// of another table than the run's starts a new run. Nothing is written while the run goes on.
///
/// ```
/// assert_eq!(
///     d1_sync_schema::queue::run_sql("q", "?1", "?2", "true"),
///     r#"UPDATE "q_coalesce" SET run_table = ?1, run_start = ?2 WHERE id = 0 AND run_table IS NOT ?1 AND (true)"#
/// );
/// ```
pub fn run_sql(queue: &str, table: &str, id: &str, when: &str) -> String {
    format!(
        "UPDATE {} SET run_table = {table}, run_start = {id} WHERE id = 0 AND run_table IS NOT {table} AND ({when})",
        quote_ident(&state_name(queue))
    )
}

/// The queue's newest id: after an append, the record just queued (for [`run_sql`] where the
/// statement's own result is not at hand, as in a trigger; a merge never starts a run).
pub fn newest_sql(queue: &str) -> String {
    format!("(SELECT max(id) FROM {})", quote_ident(queue))
}

/// Raises the claimed mark to `?1`, or with `?2` true sets it to `?1` (a claim from the
/// start, by a worker that holds nothing else).
pub fn claim_mark_sql(queue: &str) -> String {
    format!(
        "UPDATE {} SET claimed = CASE WHEN ?2 THEN ?1 ELSE max(claimed, ?1) END WHERE id = 0",
        quote_ident(&state_name(queue))
    )
}

/// The enqueue statement: an `INSERT` whose id is the merge target's when there is one (the
/// conflict then merges, see the module's table), else a new one.
pub fn enqueue_sql(e: &Enqueue<'_>) -> String {
    // NULL: a new id (AUTOINCREMENT), which never conflicts.
    let id = if e.coalesce {
        format!("({})", target(e, &quote_ident(e.queue)))
    } else {
        "NULL".to_string()
    };
    enqueue_as_sql(e, &id)
}

/// The id of the record that a record `e` merges into, or `NULL`: a query of one row and one
/// column, with [`enqueue_sql`]'s parameters. In the same write transaction as
/// [`enqueue_as_sql`] with this id, the two do what [`enqueue_sql`] does in one statement.
///
/// The two-step form is the faster one for a caller that needs the record's id: SQLite runs a
/// statement with `RETURNING` (or an `INSERT ... SELECT`) under a statement journal, copying
/// every page it touches first, so that it can undo the statement alone half-way.
pub fn merge_target_sql(e: &Enqueue<'_>) -> String {
    format!("SELECT ({})", target(e, &quote_ident(e.queue)))
}

/// The enqueue statement with the record's id given as the expression `id`: the merge target
/// ([`merge_target_sql`], found in the same transaction) or `NULL` for a new record.
pub fn enqueue_as_sql(e: &Enqueue<'_>, id: &str) -> String {
    let q = quote_ident(e.queue);
    let tables = quote_ident(&format!("{}_tables", e.queue));
    // The insert-only column names of the record's definition, as a `json_each` source.
    let insert_only_list = format!(
        "json_each((SELECT definition FROM {tables} WHERE id = excluded.def), '$.insert_only')"
    );
    // Upsert after upsert, the usual case, in one C-level merge: N's payload patched with T's
    // insert-only members, looked up by name. A JSON null there would delete the member, and a
    // name with a double quote is no plain path, so either takes the general form below.
    let path = "('$.\"' || i.value || '\"')";
    let kept = format!(
        "(SELECT json_group_object(i.value, json({q}.payload -> {path})) FROM {insert_only_list} AS i
          WHERE json_type({q}.payload, {path}) IS NOT NULL)"
    );
    let plain = format!(
        "NOT EXISTS (SELECT 1 FROM {insert_only_list} AS i
           WHERE instr(i.value, '\"') OR json_type({q}.payload, {path}) = 'null')"
    );
    // Otherwise: T's members, but N's where N has them, except insert-only columns T has.
    // Members are copied as JSON text (`->`), so numbers keep their digits.
    let overlay = format!(
        "CASE WHEN excluded.op = 'upsert' AND {q}.op = 'upsert' AND {plain}
           THEN json_patch(excluded.payload, {kept})
         ELSE (SELECT json_group_object(k, json(v)) FROM (
           SELECT n.key AS k, CASE WHEN n.key IN (SELECT value FROM {insert_only_list}) AND json_type({q}.payload, n.fullkey) IS NOT NULL
             THEN {q}.payload -> n.fullkey ELSE excluded.payload -> n.fullkey END AS v
           FROM json_each(excluded.payload) AS n
           UNION ALL
           SELECT o.key, {q}.payload -> o.fullkey FROM json_each({q}.payload) AS o
           WHERE json_type(excluded.payload, o.fullkey) IS NULL)) END"
    );
    // Without a condition, one row of `VALUES`: SQLite then knows the statement writes one
    // record and runs it without a statement journal (an `INSERT ... SELECT` may write many,
    // so each one first copies every page it touches, to undo a failure half-way).
    let (table, key, op, payload, now, def) = (e.table, e.row_key, e.op, e.payload, e.now, e.def);
    let source = if e.when == "true" {
        format!("VALUES ({id}, {table}, {key}, {op}, {payload}, {now}, {now}, {def})")
    } else {
        format!(
            "SELECT {id}, {table}, {key}, {op}, {payload}, n.now, n.now, {def} FROM (SELECT {now} AS now) AS n WHERE {when}",
            when = e.when
        )
    };
    format!(
        "INSERT INTO {q} (id, table_name, row_key, op, payload, created_at, updated_at, def)
         {source}
         ON CONFLICT (id) DO UPDATE SET
           op = CASE WHEN excluded.op = 'delete' THEN 'delete'
                     WHEN excluded.op = 'upsert' OR {q}.op = 'upsert' THEN 'upsert' ELSE 'update' END,
           payload = CASE WHEN excluded.op = 'delete' THEN excluded.payload ELSE {overlay} END,
           updated_at = excluded.updated_at"
    )
}

/// The id of the row's newest record when the new one may merge into it, else `NULL`.
fn target(e: &Enqueue<'_>, q: &str) -> String {
    let (table, op) = (e.table, e.op);
    format!(
        "SELECT t.id FROM {q} AS t, {state} AS s
         WHERE t.id = (SELECT max(id) FROM {q} WHERE table_name = {table} AND row_key = {key}) AND s.id = 0
           AND t.status = 'pending' AND t.def = {def}
           AND (t.op IN ('upsert', 'update') AND {op} IN ('upsert', 'update', 'delete') OR t.op = 'delete' AND {op} = 'delete')
           AND t.id > s.claimed AND s.run_table = {table} AND t.id >= s.run_start
           AND NOT EXISTS (SELECT 1 FROM sqlite_schema WHERE type = 'trigger' AND tbl_name = t.table_name
             AND substr(name, 1, 16) <> 'd1_sync_capture_')
           AND NOT EXISTS (SELECT 1 FROM json_each(t.row_key) WHERE type = 'real')
           AND ((SELECT max(id) FROM {q}) = t.id
             OR NOT (EXISTS (SELECT 1 FROM pragma_foreign_key_list({table}) WHERE \"table\" = {table} COLLATE NOCASE)
               OR EXISTS (SELECT 1 FROM pragma_index_list({table}) WHERE \"unique\" AND origin <> 'pk')))",
        state = quote_ident(&state_name(e.queue)),
        key = e.row_key,
        def = e.def,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use rusqlite::{params, Connection};

    /// A queue as the runtime installs it (the columns the statement writes), with its state.
    fn queue(conn: &Connection) {
        conn.execute_batch(&format!(
            "CREATE TABLE q (id INTEGER PRIMARY KEY AUTOINCREMENT, table_name TEXT NOT NULL, row_key TEXT NOT NULL,
               op TEXT NOT NULL, payload TEXT NOT NULL, status TEXT NOT NULL DEFAULT 'pending',
               created_at INTEGER NOT NULL, updated_at INTEGER NOT NULL, def INTEGER);
             CREATE INDEX q_rows ON q (table_name, row_key);
             CREATE TABLE q_tables (id INTEGER PRIMARY KEY, table_name TEXT, definition TEXT);
             INSERT INTO q_tables VALUES (1, 't', '{{\"insert_only\":[\"c\"]}}'), (2, 'u', '{{\"insert_only\":[]}}');
             CREATE TABLE t (k INTEGER PRIMARY KEY, a, b, c);
             CREATE TABLE u (k INTEGER PRIMARY KEY, e TEXT UNIQUE);
             CREATE TABLE s (k INTEGER PRIMARY KEY, parent INTEGER REFERENCES s (k));
             {}",
            create_state_sql("q")
        ))
        .unwrap();
    }

    fn enqueue(
        conn: &Connection,
        coalesce: bool,
        table: &str,
        key: i64,
        op: &str,
        payload: &str,
        def: i64,
    ) {
        let e = Enqueue::params("q", coalesce);
        let args = params![table, format!("[{key}]"), op, payload, 0, def];
        // The two steps, as the runtime takes them.
        let target: Option<i64> = if coalesce {
            conn.query_row(&merge_target_sql(&e), args, |r| r.get(0))
                .unwrap()
        } else {
            None
        };
        conn.execute(
            &enqueue_as_sql(&e, "?7"),
            params![table, format!("[{key}]"), op, payload, 0, def, target],
        )
        .unwrap();
        let id = target.unwrap_or_else(|| conn.last_insert_rowid());
        conn.execute(&run_sql("q", "?1", "?2", "true"), params![table, id])
            .unwrap();
    }

    /// The one statement, as capture triggers run it.
    fn enqueue_in_one(conn: &Connection, table: &str, key: i64, op: &str, payload: &str, def: i64) {
        let id: i64 = conn
            .query_row(
                &format!("{} RETURNING id", enqueue_sql(&Enqueue::params("q", true))),
                params![table, format!("[{key}]"), op, payload, 0, def],
                |r| r.get(0),
            )
            .unwrap();
        conn.execute(&run_sql("q", "?1", "?2", "true"), params![table, id])
            .unwrap();
    }

    fn put(conn: &Connection, table: &str, key: i64, op: &str, payload: &str, def: i64) {
        enqueue(conn, true, table, key, op, payload, def);
    }

    fn records(conn: &Connection) -> Vec<(i64, String, String, String, String)> {
        let mut s = conn
            .prepare("SELECT id, table_name, row_key, op, payload FROM q ORDER BY id")
            .unwrap();
        s.query_map([], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
        })
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
    }

    fn ops(conn: &Connection) -> Vec<(String, String)> {
        records(conn)
            .into_iter()
            .map(|r| (r.3, r.4))
            .collect::<Vec<_>>()
    }

    fn pairs(v: &[(&str, &str)]) -> Vec<(String, String)> {
        v.iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect()
    }

    #[test]
    fn the_merge_table() {
        /// T's op and payload, N's op and payload, the merged op and payload.
        type Case<'a> = (&'a str, &'a str, &'a str, &'a str, (&'a str, &'a str));
        let cases: &[Case<'_>] = &[
            // T op, T payload, N op, N payload, merged
            (
                "upsert",
                r#"{"a":1,"c":null}"#,
                "upsert",
                r#"{"a":2,"c":5}"#,
                ("upsert", r#"{"a":2,"c":null}"#),
            ),
            (
                "upsert",
                r#"{"a":1,"b":2,"c":3}"#,
                "upsert",
                r#"{"a":{"blob":"00ff"},"b":null,"c":7,"d":0.30000000000000004,"e":9e999}"#,
                (
                    "upsert",
                    r#"{"a":{"blob":"00ff"},"b":null,"c":3,"d":0.30000000000000004,"e":9e999}"#,
                ),
            ),
            (
                "upsert",
                r#"{"a":1,"b":2,"c":3}"#,
                "update",
                r#"{"b":0.30000000000000004}"#,
                ("upsert", r#"{"b":0.30000000000000004,"a":1,"c":3}"#),
            ),
            (
                "update",
                r#"{"a":1}"#,
                "update",
                r#"{"b":{"blob":"00ff"},"a":null}"#,
                ("update", r#"{"b":{"blob":"00ff"},"a":null}"#),
            ),
            (
                "update",
                r#"{"a":1}"#,
                "upsert",
                r#"{"a":2,"b":3,"c":4}"#,
                ("upsert", r#"{"a":2,"b":3,"c":4}"#),
            ),
            (
                "upsert",
                r#"{"a":1,"b":2,"c":3}"#,
                "delete",
                "{}",
                ("delete", "{}"),
            ),
            ("update", r#"{"a":1}"#, "delete", "{}", ("delete", "{}")),
            ("delete", "{}", "delete", "{}", ("delete", "{}")),
            // A versioned row: the delete keeps the version it carries.
            (
                "upsert",
                r#"{"a":1,"v":7}"#,
                "delete",
                r#"{"v":7}"#,
                ("delete", r#"{"v":7}"#),
            ),
            (
                "update",
                r#"{"v":8}"#,
                "upsert",
                r#"{"a":2,"v":9}"#,
                ("upsert", r#"{"a":2,"v":9}"#),
            ),
        ];
        for (top, tp, nop, np, want) in cases {
            let conn = Connection::open_in_memory().unwrap();
            queue(&conn);
            put(&conn, "t", 1, top, tp, 1);
            put(&conn, "t", 1, nop, np, 1);
            assert_eq!(ops(&conn), pairs(&[*want]), "{top} then {nop}");
        }
    }

    #[test]
    fn a_write_after_a_delete_is_not_merged() {
        let conn = Connection::open_in_memory().unwrap();
        queue(&conn);
        put(&conn, "t", 1, "delete", "{}", 1);
        put(&conn, "t", 1, "upsert", r#"{"a":1}"#, 1);
        put(&conn, "t", 1, "update", r#"{"a":2}"#, 1);
        assert_eq!(
            ops(&conn),
            pairs(&[("delete", "{}"), ("upsert", r#"{"a":2}"#)]),
            "the update after the new upsert merges; the delete stays before it"
        );
    }

    #[test]
    fn claimed_dead_lettered_or_other_definitions_are_not_merged_into() {
        let conn = Connection::open_in_memory().unwrap();
        queue(&conn);
        put(&conn, "t", 1, "upsert", r#"{"a":1}"#, 1);
        conn.execute(&claim_mark_sql("q"), params![1, false])
            .unwrap();
        put(&conn, "t", 1, "upsert", r#"{"a":2}"#, 1);
        conn.execute("UPDATE q SET status = 'failed' WHERE id = 2", [])
            .unwrap();
        put(&conn, "t", 1, "upsert", r#"{"a":3}"#, 1);
        put(&conn, "t", 1, "upsert", r#"{"a":4}"#, 99);
        let ids: Vec<i64> = records(&conn).iter().map(|r| r.0).collect();
        assert_eq!(ids, [1, 2, 3, 4]);
    }

    #[test]
    fn a_record_of_another_table_in_between_stops_the_merge() {
        let conn = Connection::open_in_memory().unwrap();
        queue(&conn);
        put(&conn, "t", 1, "upsert", r#"{"a":1}"#, 1);
        put(&conn, "u", 1, "upsert", r#"{"e":"x"}"#, 2);
        put(&conn, "t", 1, "upsert", r#"{"a":2}"#, 1);
        assert_eq!(records(&conn).len(), 3);
        // Other rows of a table without self-references or unique columns are crossed.
        put(&conn, "t", 2, "upsert", r#"{"a":1}"#, 1);
        put(&conn, "t", 1, "upsert", r#"{"a":3}"#, 1);
        assert_eq!(records(&conn).len(), 4);
    }

    #[test]
    fn rows_of_a_self_referencing_or_unique_table_are_not_crossed() {
        for table in ["u", "s"] {
            let conn = Connection::open_in_memory().unwrap();
            queue(&conn);
            put(&conn, table, 1, "upsert", "{}", 2);
            put(&conn, table, 2, "upsert", "{}", 2);
            put(&conn, table, 1, "delete", "{}", 2);
            assert_eq!(records(&conn).len(), 3, "{table}");
            put(&conn, table, 1, "delete", "{}", 2);
            assert_eq!(records(&conn).len(), 3, "{table}: the newest record merges");
        }
    }

    #[test]
    fn a_table_with_triggers_of_its_own_is_not_merged() {
        let conn = Connection::open_in_memory().unwrap();
        queue(&conn);
        conn.execute_batch(
            "CREATE TABLE audit (n INTEGER);
             CREATE TRIGGER t_audit AFTER UPDATE ON t BEGIN INSERT INTO audit VALUES (1); END;",
        )
        .unwrap();
        put(&conn, "t", 1, "upsert", r#"{"a":1}"#, 1);
        put(&conn, "t", 1, "upsert", r#"{"a":2}"#, 1);
        assert_eq!(records(&conn).len(), 2, "D1's trigger must fire for each");
        conn.execute_batch("DROP TRIGGER t_audit").unwrap();
        put(&conn, "t", 1, "upsert", r#"{"a":3}"#, 1);
        assert_eq!(records(&conn).len(), 2);
    }

    #[test]
    fn a_row_with_a_real_in_its_key_is_not_merged() {
        let conn = Connection::open_in_memory().unwrap();
        queue(&conn);
        for _ in 0..2 {
            conn.query_row(
                &format!("{} RETURNING id", enqueue_sql(&Enqueue::params("q", true))),
                params!["t", "[0.5]", "upsert", "{}", 0, 1],
                |r| r.get::<_, i64>(0),
            )
            .unwrap();
            conn.execute(
                &run_sql("q", "?1", "(SELECT max(id) FROM q)", "true"),
                ["t"],
            )
            .unwrap();
        }
        assert_eq!(records(&conn).len(), 2);
    }

    #[test]
    fn a_queue_emptied_and_filled_again_merges_again() {
        let conn = Connection::open_in_memory().unwrap();
        queue(&conn);
        put(&conn, "t", 1, "upsert", "{}", 1);
        put(&conn, "u", 1, "upsert", "{}", 2);
        conn.execute_batch("DELETE FROM q").unwrap();
        put(&conn, "t", 5, "upsert", "{}", 1);
        assert_eq!(records(&conn)[0].0, 3, "ids only grow");
        put(&conn, "t", 5, "upsert", r#"{"a":1}"#, 1);
        assert_eq!(records(&conn).len(), 1);
    }

    #[test]
    fn the_one_statement_and_the_two_steps_queue_the_same() {
        let (one, two) = (
            Connection::open_in_memory().unwrap(),
            Connection::open_in_memory().unwrap(),
        );
        queue(&one);
        queue(&two);
        let payloads = [
            r#"{"a":1,"c":5}"#,
            r#"{"b":2}"#,
            r#"{"c":null,"a":3}"#,
            "{}",
        ];
        // A fixed pseudo-random walk over tables, rows, operations, payloads and claims.
        let mut x: u64 = 0x2545_f491_4f6c_dd1d;
        for _ in 0..600 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            // Runs of a few records of one table.
            let table = if x >> 59 < 3 {
                ["u", "s"][((x >> 40) % 2) as usize]
            } else {
                "t"
            };
            let def = if table == "t" { 1 } else { 2 };
            let key = ((x >> 8) % 3) as i64;
            let op = ["upsert", "update", "upsert", "update", "upsert", "delete"]
                [((x >> 16) % 6) as usize];
            let payload = payloads[((x >> 24) % 4) as usize];
            enqueue_in_one(&one, table, key, op, payload, def);
            put(&two, table, key, op, payload, def);
            if (x >> 32).is_multiple_of(29) {
                // A claim of everything queued so far.
                for conn in [&one, &two] {
                    let newest: i64 = conn
                        .query_row("SELECT max(id) FROM q", [], |r| r.get(0))
                        .unwrap();
                    conn.execute(&claim_mark_sql("q"), params![newest, false])
                        .unwrap();
                }
            }
        }
        let queued = records(&one);
        assert!(queued.len() > 100 && queued.len() < 450, "{}", queued.len());
        assert_eq!(queued, records(&two));
    }

    #[test]
    fn without_coalescing_every_record_is_appended() {
        let conn = Connection::open_in_memory().unwrap();
        queue(&conn);
        for _ in 0..3 {
            enqueue(&conn, false, "t", 1, "upsert", "{}", 1);
        }
        assert_eq!(records(&conn).len(), 3);
    }
}
