//! The triggers that capture raw SQL writes into the outbox: `AFTER INSERT`, `AFTER UPDATE`
//! and `AFTER DELETE` on a table, each writing queue records in the queue's own format (the
//! row key as a JSON array, the other whitelisted columns as a JSON object in the one JSON
//! form, the id of the table's definition).
//!
//! - An insert queues an upsert of the new row.
//! - An update queues an upsert of the new row, or nothing when no whitelisted column changed;
//!   one that changes the key queues a delete of the old key first.
//! - A delete queues a delete of the old key. A delete that cascades locally fires the child
//!   table's trigger too; D1 cascades the same way, and the child's delete is then a no-op.
//! - While the queue's row in `d1_sync_capture_paused` exists (in the writer's own
//!   transaction), nothing is captured: rows that came from D1 are written that way.
//!
//! A real is written with 17 significant digits, which read back exactly for magnitudes from
//! 1e-70 to 1e100 (the band the tests check); beyond it SQLite's own formatting may be one unit
//! in the last place off. Insert-only columns stay insert-only: a raw `UPDATE` of one is
//! queued, but D1 keeps its first value, as it does for a typed write.
//!
//! The trigger names carry the definition's id, so installing the triggers of a changed
//! definition replaces the old ones (see [`trigger_prefix`]).
//!
//! ```
//! use d1_sync_schema::capture::{create_triggers_sql, Capture};
//! let c = Capture {
//!     queue: "d1_sync_queue",
//!     table: "notes",
//!     columns: &["id", "body"],
//!     primary_key: &["id"],
//!     definition_id: 7,
//!     coalesce: true,
//!     version: None,
//! };
//! let sql = create_triggers_sql(&c);
//! assert_eq!(sql.len(), 3);
//! assert!(sql[0].starts_with(r#"CREATE TRIGGER "d1_sync_capture_d1_sync_queue_notes_0000000000000007_v3c_insert" AFTER INSERT ON "notes""#));
//! ```

use crate::queue::{self, Enqueue};
use crate::sql::{quote_ident, quote_literal};

/// The table that pauses capture: a row for a queue means its triggers write nothing.
pub const PAUSED_TABLE: &str = "d1_sync_capture_paused";

/// What the triggers of one table are built from.
#[derive(Debug, Clone, Copy)]
pub struct Capture<'a> {
    /// The queue table the records go to.
    pub queue: &'a str,
    /// The captured table.
    pub table: &'a str,
    /// Its whitelisted columns, in the definition's order.
    pub columns: &'a [&'a str],
    /// Its primary-key columns, in key order.
    pub primary_key: &'a [&'a str],
    /// The id of the table's definition (stored in `<queue>_tables`), which every record
    /// carries.
    pub definition_id: i64,
    /// Whether a record coalesces into the row's pending one (see [`crate::queue`]).
    pub coalesce: bool,
    /// The version column of a versioned table (see [`crate::guard`]): a delete's record
    /// carries the deleted row's version.
    pub version: Option<&'a str>,
}

/// The start of the name of every capture trigger into `queue`: `d1_sync_capture_<queue>_`.
pub fn queue_prefix(queue: &str) -> String {
    format!("d1_sync_capture_{queue}_")
}

/// The start of the name of every capture trigger of `table` into `queue`, whatever its
/// definition: `d1_sync_capture_<queue>_<table>_`.
pub fn trigger_prefix(queue: &str, table: &str) -> String {
    format!("{}{table}_", queue_prefix(queue))
}

/// The form of the triggers this build installs, which their names carry (`_v3`). Form 3
/// appends a new row's record without looking for a pending one to merge into; form 2 (`_v2`)
/// sent every record through that lookup; form 1 (no tag, queues before version 5) inserted
/// into the queue directly. Installing the queue replaces triggers of an earlier form (see
/// [`TriggerName`]).
pub const FORM: u32 = 3;

/// The names of the three triggers: insert, update, delete. They carry the definition's id
/// and the triggers' form (`v3`, see [`FORM`]; `c` when coalescing), so installing after
/// either changed replaces the triggers.
pub fn trigger_names(c: &Capture<'_>) -> [String; 3] {
    let base = format!(
        "{}{:016x}_v{FORM}{}",
        trigger_prefix(c.queue, c.table),
        c.definition_id,
        if c.coalesce { "c" } else { "" }
    );
    ["insert", "update", "delete"].map(|w| format!("{base}_{w}"))
}

/// What a capture trigger's name says (see [`trigger_names`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TriggerName {
    /// The id of the table definition the trigger writes records of.
    pub definition_id: i64,
    /// The triggers' form (see [`FORM`]): 1 for a name without a tag.
    pub form: u32,
    /// Whether the triggers coalesce; `None` for form 1, whose name does not say.
    pub coalesce: Option<bool>,
}

impl TriggerName {
    /// Reads `<prefix><table>_<16 hex digits>[_v<form>[c]]_<insert|update|delete>`; `None`
    /// for a name of another shape.
    ///
    /// ```
    /// use d1_sync_schema::capture::{trigger_names, Capture, TriggerName, FORM};
    /// let c = Capture { queue: "q", table: "t_v2", columns: &["k"], primary_key: &["k"], definition_id: -7, coalesce: true, version: None };
    /// for name in trigger_names(&c) {
    ///     assert_eq!(TriggerName::parse(&name), Some(TriggerName { definition_id: -7, form: FORM, coalesce: Some(true) }));
    /// }
    /// assert_eq!(
    ///     TriggerName::parse("d1_sync_capture_q_t_00000000000000ff_v2_update"),
    ///     Some(TriggerName { definition_id: 255, form: 2, coalesce: Some(false) }),
    /// );
    /// assert_eq!(
    ///     TriggerName::parse("d1_sync_capture_q_t_v2_00000000000000ff_insert"),
    ///     Some(TriggerName { definition_id: 255, form: 1, coalesce: None }),
    /// );
    /// assert_eq!(TriggerName::parse("d1_sync_capture_q_t_insert"), None);
    /// ```
    pub fn parse(trigger: &str) -> Option<TriggerName> {
        let rest = ["_insert", "_update", "_delete"]
            .iter()
            .find_map(|w| trigger.strip_suffix(w))?;
        let tagged = rest.rsplit_once("_v").and_then(|(head, tag)| {
            let (digits, coalesce) = match tag.strip_suffix('c') {
                Some(digits) => (digits, true),
                None => (tag, false),
            };
            let form = digits
                .bytes()
                .all(|b| b.is_ascii_digit())
                .then(|| digits.parse::<u32>().ok())
                .flatten()
                .filter(|f| *f >= 2)?;
            Some((head, form, Some(coalesce)))
        });
        let (rest, form, coalesce) = tagged.unwrap_or((rest, 1, None));
        let hex = rest.get(rest.len().checked_sub(16)?..)?;
        if !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        let v = u64::from_str_radix(hex, 16).ok()?;
        Some(TriggerName {
            definition_id: i64::from_ne_bytes(v.to_ne_bytes()),
            form,
            coalesce,
        })
    }
}

/// The definition id a capture trigger's name carries (see [`TriggerName::parse`]).
///
/// ```
/// use d1_sync_schema::capture::{definition_id_of, trigger_names, Capture};
/// let c = Capture { queue: "q", table: "t", columns: &["k"], primary_key: &["k"], definition_id: -7, coalesce: true, version: None };
/// assert!(trigger_names(&c).iter().all(|n| definition_id_of(n) == Some(-7)));
/// assert_eq!(definition_id_of("d1_sync_capture_q_t_00000000000000ff_insert"), Some(255));
/// ```
pub fn definition_id_of(trigger: &str) -> Option<i64> {
    TriggerName::parse(trigger).map(|t| t.definition_id)
}

/// The table that remembers which tables are captured into which queue, under which
/// definition and coalescing: triggers a migration dropped with their table (SQLite's way to
/// change a column makes a new table and drops the old one) are made again from it.
pub const CAPTURED_TABLE: &str = "d1_sync_captured";

/// `CREATE TABLE IF NOT EXISTS` of [`CAPTURED_TABLE`].
pub fn create_captured_table_sql() -> String {
    format!(
        "CREATE TABLE IF NOT EXISTS {} (
           queue TEXT NOT NULL,
           table_name TEXT NOT NULL,
           definition_id INTEGER NOT NULL,
           coalescing INTEGER NOT NULL,
           PRIMARY KEY (queue, table_name)
         )",
        quote_ident(CAPTURED_TABLE)
    )
}

/// Remembers that `?2` is captured into the queue `?1` under definition `?3`, coalescing when
/// `?4`.
pub fn remember_captured_sql() -> String {
    format!(
        "INSERT INTO {} (queue, table_name, definition_id, coalescing) VALUES (?1, ?2, ?3, ?4)
         ON CONFLICT (queue, table_name) DO UPDATE
         SET definition_id = excluded.definition_id, coalescing = excluded.coalescing",
        quote_ident(CAPTURED_TABLE)
    )
}

/// `CREATE TABLE IF NOT EXISTS` of [`PAUSED_TABLE`].
pub fn create_paused_table_sql() -> String {
    format!(
        "CREATE TABLE IF NOT EXISTS {} (queue TEXT PRIMARY KEY NOT NULL)",
        quote_ident(PAUSED_TABLE)
    )
}

/// A column value of `row` (`NEW` or `OLD`) in the one JSON form: a blob as
/// `{"blob": "<hex>"}`, an infinity as `±9e999`, a real with the 17 significant digits that
/// read back exactly (SQLite's JSON writes 15), anything else as SQLite's JSON writes it.
fn json_value(row: &str, column: &str) -> String {
    let v = format!("{row}.{}", quote_ident(column));
    format!(
        "CASE typeof({v}) WHEN 'blob' THEN json_object('blob', lower(hex({v}))) \
         WHEN 'real' THEN CASE WHEN {v} > 1.7976931348623157e308 THEN json('9e999') \
         WHEN {v} < -1.7976931348623157e308 THEN json('-9e999') \
         ELSE json(printf('%!.17g', {v})) END ELSE {v} END"
    )
}

/// The record's enqueue (see [`crate::queue`]): queued only `when` holds, coalesced into the
/// row's pending record when `c.coalesce` and `merge` say so and the rules allow.
fn record(
    c: &Capture<'_>,
    (op, merge): (&str, bool),
    row: &str,
    with_payload: bool,
    when: &str,
) -> String {
    let key: Vec<String> = c.primary_key.iter().map(|k| json_value(row, k)).collect();
    let payload = if with_payload {
        let pairs: Vec<String> = c
            .columns
            .iter()
            .filter(|col| !c.primary_key.contains(col))
            .map(|col| format!("{}, {}", quote_literal(col), json_value(row, col)))
            .collect();
        format!("json_object({})", pairs.join(", "))
    } else if let Some(v) = c.version {
        format!("json_object({}, {})", quote_literal(v), json_value(row, v))
    } else {
        "'{}'".to_string()
    };
    let table = quote_literal(c.table);
    let key = format!("json_array({})", key.join(", "));
    let op = format!("'{op}'");
    let def = c.definition_id.to_string();
    let e = Enqueue {
        queue: c.queue,
        table: &table,
        row_key: &key,
        op: &op,
        payload: &payload,
        def: &def,
        now: "CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER)",
        when,
        coalesce: c.coalesce && merge,
    };
    format!(
        "{}; {}",
        queue::enqueue_sql(&e),
        queue::run_sql(c.queue, &table, &queue::newest_sql(c.queue), when)
    )
}

/// The three `CREATE TRIGGER` statements.
pub fn create_triggers_sql(c: &Capture<'_>) -> Vec<String> {
    let [ins, upd, del] = trigger_names(c);
    let t = quote_ident(c.table);
    let not_paused = format!(
        "NOT EXISTS (SELECT 1 FROM {} WHERE queue = {})",
        quote_ident(PAUSED_TABLE),
        quote_literal(c.queue)
    );
    // Whether any of `columns` differs between OLD and NEW.
    let differs = |columns: &[&str]| -> String {
        columns
            .iter()
            .map(|col| {
                let q = quote_ident(col);
                format!("NEW.{q} IS NOT OLD.{q}")
            })
            .collect::<Vec<_>>()
            .join(" OR ")
    };
    vec![
        format!(
            "CREATE TRIGGER {} AFTER INSERT ON {t} WHEN {not_paused} BEGIN {}; END",
            quote_ident(&ins),
            // An inserted row is new: its record is appended without looking for one to merge
            // into (only an `enqueue_*` of it could have left one, and appending is correct).
            record(c, ("upsert", false), "NEW", true, "true")
        ),
        format!(
            "CREATE TRIGGER {} AFTER UPDATE ON {t} WHEN {not_paused} AND ({}) BEGIN {}; {}; END",
            quote_ident(&upd),
            differs(c.columns),
            record(c, ("delete", true), "OLD", false, &differs(c.primary_key)),
            record(c, ("upsert", true), "NEW", true, "true")
        ),
        format!(
            "CREATE TRIGGER {} AFTER DELETE ON {t} WHEN {not_paused} BEGIN {}; END",
            quote_ident(&del),
            record(c, ("delete", true), "OLD", false, "true")
        ),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use rusqlite::Connection;

    fn queue(conn: &Connection) {
        conn.execute_batch(&format!(
            "CREATE TABLE q (id INTEGER PRIMARY KEY AUTOINCREMENT, table_name TEXT, row_key TEXT, op TEXT,
               payload TEXT, status TEXT NOT NULL DEFAULT 'pending', created_at INTEGER,
               updated_at INTEGER, def INTEGER);
             CREATE TABLE q_tables (id INTEGER PRIMARY KEY, definition TEXT);
             {}; {}",
            create_paused_table_sql(),
            crate::queue::create_state_sql("q"),
        ))
        .unwrap();
    }

    fn records(conn: &Connection) -> Vec<(String, String, String)> {
        let mut s = conn
            .prepare("SELECT row_key, op, payload FROM q ORDER BY id")
            .unwrap();
        s.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap()
    }

    #[test]
    fn raw_writes_become_records_in_the_queues_format() {
        let conn = Connection::open_in_memory().unwrap();
        queue(&conn);
        conn.execute_batch("CREATE TABLE t (id INTEGER PRIMARY KEY, a TEXT, b BLOB, r REAL)")
            .unwrap();
        let c = Capture {
            queue: "q",
            table: "t",
            columns: &["id", "a", "b", "r"],
            primary_key: &["id"],
            definition_id: 42,
            coalesce: false,
            version: None,
        };
        for sql in create_triggers_sql(&c) {
            conn.execute_batch(&sql).unwrap();
        }
        conn.execute_batch(
            "INSERT INTO t VALUES (1, 'x\"y', x'00ff', 1e999);
             UPDATE t SET a = 'z' WHERE id = 1;
             UPDATE t SET a = 'z' WHERE id = 1;
             UPDATE t SET id = 2 WHERE id = 1;
             DELETE FROM t;",
        )
        .unwrap();
        let got = records(&conn);
        let want = [
            (
                "[1]",
                "upsert",
                r#"{"a":"x\"y","b":{"blob":"00ff"},"r":9e999}"#,
            ),
            (
                "[1]",
                "upsert",
                r#"{"a":"z","b":{"blob":"00ff"},"r":9e999}"#,
            ),
            ("[1]", "delete", "{}"),
            (
                "[2]",
                "upsert",
                r#"{"a":"z","b":{"blob":"00ff"},"r":9e999}"#,
            ),
            ("[2]", "delete", "{}"),
        ];
        let norm = |s: &str| s.replace("9.0e+999", "9e999");
        let got: Vec<(String, String, String)> =
            got.into_iter().map(|(k, o, p)| (k, o, norm(&p))).collect();
        let want: Vec<(String, String, String)> = want
            .iter()
            .map(|(k, o, p)| (k.to_string(), o.to_string(), p.to_string()))
            .collect();
        assert_eq!(got, want, "an update that changes nothing queues nothing");
        // Reals keep every bit where SQLite's printf is exact (the band of the JSON form,
        // 1e-70 to 1e100), whatever the digits.
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut checked = 0;
        for i in 0..20_000u64 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let exp = (i % 170) as i32 - 70;
            let r = (1.0 + (x >> 11) as f64 / (1u64 << 53) as f64) * 10f64.powi(exp);
            let r = if x & 1 == 0 { -r } else { r };
            if !(1e-70..1e100).contains(&r.abs()) {
                continue;
            }
            let text: String = conn
                .query_row(
                    "SELECT json_object('r', json(printf('%!.17g', ?1)))",
                    [r],
                    |row| row.get(0),
                )
                .unwrap();
            let back: f64 = text[5..text.len() - 1].parse().unwrap();
            assert_eq!(back.to_bits(), r.to_bits(), "{text}");
            checked += 1;
        }
        assert!(checked > 15_000);
        let defs: Vec<i64> = conn
            .prepare("SELECT DISTINCT def FROM q")
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(defs, [42]);
    }

    #[test]
    fn nothing_is_captured_while_paused() {
        let conn = Connection::open_in_memory().unwrap();
        queue(&conn);
        conn.execute_batch("CREATE TABLE t (k TEXT, n INTEGER, PRIMARY KEY (k, n))")
            .unwrap();
        let c = Capture {
            queue: "q",
            table: "t",
            columns: &["k", "n"],
            primary_key: &["k", "n"],
            definition_id: 1,
            coalesce: true,
            version: None,
        };
        for sql in create_triggers_sql(&c) {
            conn.execute_batch(&sql).unwrap();
        }
        conn.execute_batch(&format!(
            "INSERT INTO {PAUSED_TABLE} VALUES ('q'); INSERT INTO t VALUES ('a', 1);
             DELETE FROM {PAUSED_TABLE}; INSERT INTO t VALUES ('b', 2);"
        ))
        .unwrap();
        assert_eq!(
            records(&conn),
            [(
                "[\"b\",2]".to_string(),
                "upsert".to_string(),
                "{}".to_string()
            )]
        );
    }

    #[test]
    fn a_captured_delete_of_a_versioned_row_carries_its_version() {
        let conn = Connection::open_in_memory().unwrap();
        queue(&conn);
        conn.execute_batch("CREATE TABLE t (id INTEGER PRIMARY KEY, a TEXT, v INTEGER NOT NULL)")
            .unwrap();
        let c = Capture {
            queue: "q",
            table: "t",
            columns: &["id", "a", "v"],
            primary_key: &["id"],
            definition_id: 3,
            coalesce: false,
            version: Some("v"),
        };
        for sql in create_triggers_sql(&c) {
            conn.execute_batch(&sql).unwrap();
        }
        conn.execute_batch(
            "INSERT INTO t VALUES (1, 'x', 7); UPDATE t SET id = 2, v = 8; DELETE FROM t;",
        )
        .unwrap();
        let got = records(&conn);
        let ops: Vec<(&str, &str)> = got
            .iter()
            .map(|(_, op, p)| (op.as_str(), p.as_str()))
            .collect();
        assert_eq!(
            ops,
            [
                ("upsert", r#"{"a":"x","v":7}"#),
                ("delete", r#"{"v":7}"#),
                ("upsert", r#"{"a":"x","v":8}"#),
                ("delete", r#"{"v":8}"#),
            ]
        );
    }

    #[test]
    fn an_inserted_row_is_appended_and_its_updates_merge() {
        let conn = Connection::open_in_memory().unwrap();
        queue(&conn);
        conn.execute_batch(&format!(
            "CREATE TABLE t (id INTEGER PRIMARY KEY, a TEXT);
             INSERT INTO q_tables VALUES (4, '{{\"insert_only\":[]}}');
             {}",
            crate::queue::create_state_sql("q")
        ))
        .unwrap();
        let c = Capture {
            queue: "q",
            table: "t",
            columns: &["id", "a"],
            primary_key: &["id"],
            definition_id: 4,
            coalesce: true,
            version: None,
        };
        for sql in create_triggers_sql(&c) {
            conn.execute_batch(&sql).unwrap();
        }
        // A pending upsert of row 1 under the same definition, queued before the row exists.
        conn.execute(
            &crate::queue::enqueue_sql(&crate::queue::Enqueue::params("q", true)),
            rusqlite::params!["t", "[1]", "upsert", r#"{"a":"queued"}"#, 0, 4],
        )
        .unwrap();
        conn.execute(
            &crate::queue::run_sql("q", "?1", "(SELECT max(id) FROM q)", "true"),
            ["t"],
        )
        .unwrap();
        conn.execute_batch(
            "INSERT INTO t VALUES (1, 'inserted'); UPDATE t SET a = 'updated' WHERE id = 1;",
        )
        .unwrap();
        let payloads: Vec<String> = records(&conn).into_iter().map(|r| r.2).collect();
        assert_eq!(
            payloads,
            [r#"{"a":"queued"}"#, r#"{"a":"updated"}"#],
            "the insert is appended; the update merges into it"
        );
    }
}
