//! The version guard of `#[d1(version)]`: with many devices writing one D1, no write carrying
//! an older version ever overwrites a newer one.
//!
//! A versioned table has one integer column (a counter, a hybrid logical clock, a time in ms)
//! that every write carries. The rules, the same in every form below:
//!
//! - an **upsert** applies only over a strictly older version (`excluded.v > t.v`); a tie keeps
//!   what the table has. An upsert of a row the table does not hold is refused when a delete
//!   of the key at the same or a newer version left a *tombstone* (so an old upsert never
//!   resurrects a row deleted later);
//! - a **partial update** applies only over a strictly older version, and creates no row;
//! - a **delete** carries the version of the row it deleted. It removes the row only if the
//!   row's version is not newer, and always leaves a tombstone of its version (the newest one
//!   of the key is kept), whether or not the row was there: the upsert it must win against may
//!   arrive later, from another device.
//!
//! Every row a target deletes leaves a tombstone at its own version too, through
//! [`tombstone_trigger_sql`], so a row that a parent's delete cascades over is not brought back
//! by an older write of it either.
//!
//! A version that is `NULL` in the table (a row written before the column existed) counts as
//! older than any. Tombstones live in [`TOMBSTONES`] in D1 (one row per deleted key, its newest
//! delete's version and when it was written); nothing deletes them but
//! [`prune_tombstones_sql`], because a device offline for longer than the tombstone is kept
//! could otherwise bring the row back.
//!
//! Forms: the app's local file gets the row guard only ([`save_sql`], [`update_local_sql`]):
//! it has no tombstones, a device's own delete followed by its own save is a new row by
//! intent. A target (D1, or a SQLite file standing in for it) gets the full guard, in one-row
//! form ([`upsert_row_sql`], [`update_row_sql`], [`delete_row_sql`]) and in the `json_each`
//! form the worker ships ([`upsert_json_sql`], [`update_json_sql`], [`delete_json_sql`]).
//! Before each `json_each` statement the worker sends [`stale_json_sql`] (or, for the rows no
//! earlier write of the request can change the answer for, one [`stale_numbered_sql`] per
//! table and write at the request's start), which lists the rows the guard will refuse with
//! the version that refuses them; those records are *superseded*, not failed.
//!
//! ```
//! use d1_sync_schema::guard::save_sql;
//! assert_eq!(
//!     save_sql("notes", &["id", "body", "v"], &["id"], &[], "v"),
//!     r#"INSERT INTO "notes" ("id", "body", "v") VALUES (?1, ?2, ?3) ON CONFLICT ("id") DO UPDATE SET "body" = excluded."body", "v" = excluded."v" WHERE excluded."v" > coalesce("notes"."v", -9223372036854775808)"#
//! );
//! ```

use crate::sql::{
    conflict_clause, join_quoted, json_expr, json_rows, numbered_assignments, quote_ident,
    quote_literal, update_sql, upsert_sql, JsonEncoding,
};

/// The table of tombstones in a target: `(table_name, row_key)` → the newest delete's
/// `version`, and `deleted_at` (seconds since the epoch, the target's clock).
pub const TOMBSTONES: &str = "d1_sync_tombstones";

/// Older than any version: what a `NULL` version compares as.
const OLDEST: &str = "-9223372036854775808";

/// Which write a guard or a staleness check is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Write {
    /// Insert or update the row.
    Upsert,
    /// Update some columns of an existing row.
    Update,
    /// Delete the row.
    Delete,
}

/// `CREATE TABLE IF NOT EXISTS` of [`TOMBSTONES`].
pub fn create_tombstones_sql() -> String {
    format!(
        "CREATE TABLE IF NOT EXISTS {} (\"table_name\" TEXT NOT NULL, \"row_key\" TEXT NOT NULL, \
         \"version\" INTEGER NOT NULL, \"deleted_at\" INTEGER NOT NULL, \
         PRIMARY KEY (\"table_name\", \"row_key\")) WITHOUT ROWID",
        quote_ident(TOMBSTONES)
    )
}

/// The trigger that gives every row of a versioned table that a target deletes a tombstone at
/// the row's version: the deletes d1-sync sends, and those a foreign key cascades from a
/// parent, so an older write of a cascaded child cannot bring it back either. Its name carries
/// a digest of the key and version columns, so a changed definition gets its own trigger.
///
/// ```
/// let sql = d1_sync_schema::guard::tombstone_trigger_sql("notes", &["id"], "v");
/// assert!(sql.starts_with(r#"CREATE TRIGGER IF NOT EXISTS "d1_sync_tombstone_notes_"#), "{sql}");
/// assert!(sql.contains(r#"AFTER DELETE ON "notes""#), "{sql}");
/// ```
pub fn tombstone_trigger_sql(table: &str, primary_key: &[&str], version: &str) -> String {
    let digest = crate::definition::definition_id(&format!("{primary_key:?}/{version}"));
    let name = format!("d1_sync_tombstone_{table}_{:016x}", digest as u64);
    let old: Vec<String> = primary_key
        .iter()
        .map(|k| format!("OLD.{}", quote_ident(k)))
        .collect();
    format!(
        "CREATE TRIGGER IF NOT EXISTS {} AFTER DELETE ON {} BEGIN {}; END",
        quote_ident(&name),
        quote_ident(table),
        tombstone_insert(&format!(
            "VALUES ({}, {}, coalesce(OLD.{}, {OLDEST}), unixepoch())",
            quote_literal(table),
            tombstone_key(&old),
            quote_ident(version)
        ))
    )
}

/// Deletes the tombstones written more than `?1` seconds ago. A device that comes back with a
/// write older than a pruned tombstone can bring the deleted row back: keep tombstones longer
/// than any device stays offline.
pub fn prune_tombstones_sql() -> String {
    format!(
        "DELETE FROM {} WHERE \"deleted_at\" < unixepoch() - ?1",
        quote_ident(TOMBSTONES)
    )
}

/// A key's text in [`TOMBSTONES`]: `json_array(quote(k1), ...)` of the key's values, so an
/// integer, a text and a blob never share one.
pub fn tombstone_key(values: &[String]) -> String {
    let quoted: Vec<String> = values.iter().map(|v| format!("quote({v})")).collect();
    format!("json_array({})", quoted.join(", "))
}

/// `excluded."v" > coalesce("t"."v", <oldest>)`: the upsert's row guard.
fn newer(table: &str, version: &str) -> String {
    let v = quote_ident(version);
    format!(
        "excluded.{v} > coalesce({}.{v}, {OLDEST})",
        quote_ident(table)
    )
}

fn position(names: &[&str], name: &str) -> usize {
    names.iter().position(|c| *c == name).unwrap_or(0)
}

/// The local upsert of a versioned row (`SyncRow::SAVE_SQL` and `UPSERT_SQL`): it applies only
/// over an older version, so a save that carries no newer version writes nothing, and queues
/// nothing. Parameters `?1..?N` in `columns` order.
///
/// It is also a target's one-row upsert of a row no tombstone can refuse: the table has none
/// ([`any_tombstone_sql`]), or none of the row's key is as new as the write
/// ([`newer_tombstone_sql`]). The tombstone test of [`upsert_row_sql`] then holds, so the two
/// write the same, and this plain `INSERT ... VALUES` spares SQLite the statement journal it
/// keeps for an `INSERT ... SELECT` (about 2 µs a row on a 2-core VM).
pub fn save_sql(
    table: &str,
    columns: &[&str],
    primary_key: &[&str],
    insert_only: &[&str],
    version: &str,
) -> String {
    format!(
        "{} WHERE {}",
        upsert_sql(table, columns, primary_key, insert_only),
        newer(table, version)
    )
}

/// The local partial update of a versioned row: `set` must include the version column, and the
/// update applies only over an older version. Parameters: the key (`?1..?K`), then `set`.
///
/// ```
/// assert_eq!(
///     d1_sync_schema::guard::update_local_sql("t", &["k"], &["a", "v"], "v"),
///     r#"UPDATE "t" SET "a" = ?2, "v" = ?3 WHERE "k" = ?1 AND coalesce("v", -9223372036854775808) < ?3"#
/// );
/// ```
pub fn update_local_sql(table: &str, primary_key: &[&str], set: &[&str], version: &str) -> String {
    let n = primary_key.len() + position(set, version) + 1;
    format!(
        "{} AND coalesce({}, {OLDEST}) < ?{n}",
        update_sql(table, primary_key, set),
        quote_ident(version)
    )
}

/// The local delete of a versioned row by key (`?1..?K`), returning the version it deleted
/// (which its queued delete carries).
pub fn delete_local_sql(table: &str, primary_key: &[&str], version: &str) -> String {
    format!(
        "{} RETURNING {}",
        crate::sql::delete_sql(table, primary_key),
        quote_ident(version)
    )
}

/// The row of `key_values` is in `table`, or no tombstone of it is at `version_value` or newer.
/// A tombstone guards an absent row only: a row the target holds was written over its
/// tombstone, and decides by its own version (the conflict's `WHERE`).
fn no_newer_tombstone(
    table: &str,
    primary_key: &[&str],
    key_values: &[String],
    version_value: &str,
) -> String {
    let held = primary_key
        .iter()
        .zip(key_values)
        .map(|(k, v)| format!("{} = {v}", quote_ident(k)))
        .collect::<Vec<_>>()
        .join(" AND ");
    // The first test does not depend on the row: SQLite runs it once per statement, and a
    // table without tombstones skips the rest.
    format!(
        "(NOT EXISTS (SELECT 1 FROM {ts} WHERE \"table_name\" = {name}) OR EXISTS (SELECT 1 FROM {} WHERE {held}) \
         OR NOT EXISTS (SELECT 1 FROM {ts} WHERE \"table_name\" = {name} AND \"row_key\" = {} AND \"version\" >= {version_value}))",
        quote_ident(table),
        tombstone_key(key_values),
        ts = quote_ident(TOMBSTONES),
        name = quote_literal(table),
    )
}

/// The tombstone a delete leaves: `rows` is a `SELECT` (or `VALUES`) of
/// `'<table>', <key text>, <version>, unixepoch()`.
fn tombstone_insert(rows: &str) -> String {
    let ts = quote_ident(TOMBSTONES);
    format!(
        "INSERT INTO {ts} (\"table_name\", \"row_key\", \"version\", \"deleted_at\") {rows} \
         ON CONFLICT (\"table_name\", \"row_key\") DO UPDATE SET \"version\" = excluded.\"version\", \
         \"deleted_at\" = excluded.\"deleted_at\" WHERE excluded.\"version\" > {ts}.\"version\""
    )
}

/// A target's one-row upsert of a versioned row, parameters `?1..?N` in `columns` order.
pub fn upsert_row_sql(
    table: &str,
    columns: &[&str],
    primary_key: &[&str],
    insert_only: &[&str],
    version: &str,
) -> String {
    let params: Vec<String> = (1..=columns.len()).map(|i| format!("?{i}")).collect();
    let key: Vec<String> = primary_key
        .iter()
        .map(|k| format!("?{}", position(columns, k) + 1))
        .collect();
    let v = format!("?{}", position(columns, version) + 1);
    format!(
        "INSERT INTO {} ({}) SELECT {} WHERE {} {} WHERE {}",
        quote_ident(table),
        join_quoted(columns),
        params.join(", "),
        no_newer_tombstone(table, primary_key, &key, &v),
        conflict_clause(columns, primary_key, insert_only),
        newer(table, version)
    )
}

/// Whether a target holds a tombstone of table `?1`: one row, `1` or `0`.
pub fn any_tombstone_sql() -> String {
    format!(
        "SELECT EXISTS (SELECT 1 FROM {} WHERE \"table_name\" = ?1)",
        quote_ident(TOMBSTONES)
    )
}

/// Whether a target holds a tombstone of one key (`?1..?K`) at version `?K+1` or newer: one
/// row, `1` or `0`. Without one, [`upsert_row_sql`]'s tombstone test holds for that row, and
/// [`save_sql`] writes the same.
pub fn newer_tombstone_sql(table: &str, primary_key: &[&str]) -> String {
    let k = primary_key.len();
    let key: Vec<String> = (1..=k).map(|i| format!("?{i}")).collect();
    format!(
        "SELECT EXISTS (SELECT 1 FROM {} WHERE \"table_name\" = {} AND \"row_key\" = {} AND \"version\" >= ?{})",
        quote_ident(TOMBSTONES),
        quote_literal(table),
        tombstone_key(&key),
        k + 1
    )
}

/// A target's one-row partial update of a versioned row: as [`update_local_sql`].
pub fn update_row_sql(table: &str, primary_key: &[&str], set: &[&str], version: &str) -> String {
    update_local_sql(table, primary_key, set, version)
}

/// A target's one-row delete of a versioned row: the tombstone, then the delete. Parameters:
/// the key (`?1..?K`), then the version the delete carries (`?K+1`).
pub fn delete_row_sql(table: &str, primary_key: &[&str], version: &str) -> [String; 2] {
    let k = primary_key.len();
    let key: Vec<String> = (1..=k).map(|i| format!("?{i}")).collect();
    [
        tombstone_insert(&format!(
            "VALUES ({}, {}, ?{}, unixepoch())",
            quote_literal(table),
            tombstone_key(&key),
            k + 1
        )),
        format!(
            "DELETE FROM {} WHERE {} AND coalesce({}, {OLDEST}) <= ?{}",
            quote_ident(table),
            numbered_assignments(primary_key, 1, " AND "),
            quote_ident(version),
            k + 1
        ),
    ]
}

/// The versions a target holds for one key (`?1..?K`): the row's, then the tombstone's
/// (`NULL` where there is none). [`refusing`] says what they mean for a write.
pub fn versions_row_sql(table: &str, primary_key: &[&str], version: &str) -> String {
    let key: Vec<String> = (1..=primary_key.len()).map(|i| format!("?{i}")).collect();
    format!(
        "SELECT (SELECT {} FROM {} WHERE {}), (SELECT \"version\" FROM {} WHERE \"table_name\" = {} AND \"row_key\" = {})",
        quote_ident(version),
        quote_ident(table),
        numbered_assignments(primary_key, 1, " AND "),
        quote_ident(TOMBSTONES),
        quote_literal(table),
        tombstone_key(&key)
    )
}

/// The version of the delete a target recorded for a key that it does not hold: `?1` is the
/// key as a JSON array of its values (in `primary_key` order). No row when the target holds
/// the row, or no delete of it. A write that needs this row as its parent (a foreign key) can
/// never apply: it is superseded by the delete.
///
/// ```
/// let sql = d1_sync_schema::guard::deleted_sql("t", &["k"]);
/// assert!(sql.starts_with(r#"SELECT CAST("version" AS TEXT) AS "deleted" FROM "d1_sync_tombstones""#), "{sql}");
/// ```
pub fn deleted_sql(table: &str, primary_key: &[&str]) -> String {
    let key: Vec<String> = (0..primary_key.len())
        .map(|i| format!("json_extract(?1, '$[{i}]')"))
        .collect();
    let cond = primary_key
        .iter()
        .zip(&key)
        .map(|(k, v)| format!("{} = {v}", quote_ident(k)))
        .collect::<Vec<_>>()
        .join(" AND ");
    format!(
        "SELECT CAST(\"version\" AS TEXT) AS \"deleted\" FROM {} WHERE \"table_name\" = {} AND \"row_key\" = {} \
         AND NOT EXISTS (SELECT 1 FROM {} WHERE {cond})",
        quote_ident(TOMBSTONES),
        quote_literal(table),
        tombstone_key(&key),
        quote_ident(table)
    )
}

/// The version that refuses a `write` carrying `sent`, given the row's version and its
/// tombstone's in the target (`None` when absent; a `NULL` version is absent): `None` when the
/// write applies. A tombstone counts for an absent row only. The same rules as the SQL of this module, for targets that apply rows one
/// by one.
///
/// ```
/// use d1_sync_schema::guard::{refusing, Write};
/// assert_eq!(refusing(Write::Upsert, 5, Some(4), None), None);
/// assert_eq!(refusing(Write::Upsert, 5, Some(5), None), Some(5)); // a tie keeps the target's
/// assert_eq!(refusing(Write::Upsert, 5, None, Some(7)), Some(7)); // deleted later
/// assert_eq!(refusing(Write::Delete, 5, Some(5), None), None);    // its own version
/// assert_eq!(refusing(Write::Delete, 5, Some(6), None), Some(6)); // edited since
/// assert_eq!(refusing(Write::Update, 5, None, None), None);       // no row: nothing to refuse
/// ```
pub fn refusing(write: Write, sent: i64, row: Option<i64>, tombstone: Option<i64>) -> Option<i64> {
    match write {
        Write::Upsert => row.or(tombstone).filter(|v| *v >= sent),
        Write::Update => row.filter(|v| *v >= sent),
        Write::Delete => row.filter(|v| *v > sent),
    }
}

/// `"t"."k1" = "j"."c<p1>" AND ...`: the table's row of each JSON row.
fn join_on(columns: &[&str], primary_key: &[&str]) -> String {
    primary_key
        .iter()
        .map(|k| {
            format!(
                "\"t\".{} = \"j\".\"c{}\"",
                quote_ident(k),
                position(columns, k)
            )
        })
        .collect::<Vec<_>>()
        .join(" AND ")
}

/// A target's many-row upsert of versioned rows: `?1` a JSON array of rows in `columns` order
/// (see [`crate::sql::upsert_json_sql`]). Keys must be distinct within one statement, so that
/// [`stale_json_sql`] sent before it is exact.
///
/// ```
/// use d1_sync_schema::{guard::upsert_json_sql, sql::JsonEncoding::Plain};
/// let sql = upsert_json_sql("t", &["k", "v"], &[Plain, Plain], &["k"], &[], "v");
/// assert!(sql.contains(r#"OR NOT EXISTS (SELECT 1 FROM "d1_sync_tombstones""#), "{sql}");
/// assert!(sql.ends_with(r#"WHERE excluded."v" > coalesce("t"."v", -9223372036854775808)"#), "{sql}");
/// ```
pub fn upsert_json_sql(
    table: &str,
    columns: &[&str],
    encodings: &[JsonEncoding],
    primary_key: &[&str],
    insert_only: &[&str],
    version: &str,
) -> String {
    // `json_each` is named: the guard's subqueries read the table, which may have a column
    // called `value` that would shadow json_each's.
    let named = |i: usize| json_expr("\"j\".value", encodings, i);
    let exprs: Vec<String> = (0..columns.len()).map(named).collect();
    let key: Vec<String> = primary_key
        .iter()
        .map(|k| named(position(columns, k)))
        .collect();
    let v = named(position(columns, version));
    format!(
        "INSERT INTO {} ({}) SELECT {} FROM json_each(?1) AS \"j\" WHERE {} {} WHERE {}",
        quote_ident(table),
        join_quoted(columns),
        exprs.join(", "),
        no_newer_tombstone(table, primary_key, &key, &v),
        conflict_clause(columns, primary_key, insert_only),
        newer(table, version)
    )
}

/// A target's many-row partial update of versioned rows: `?1` a JSON array of rows, each the
/// key then `set` (which includes the version column). Keys distinct within one statement.
pub fn update_json_sql(
    table: &str,
    primary_key: &[&str],
    set: &[&str],
    encodings: &[JsonEncoding],
    version: &str,
) -> String {
    let v = primary_key.len() + position(set, version);
    format!(
        "{} AND coalesce({}.{}, {OLDEST}) < \"j\".\"c{v}\"",
        crate::sql::update_json_sql(table, primary_key, set, encodings),
        quote_ident(table),
        quote_ident(version)
    )
}

/// A target's many-row delete of versioned rows: the tombstones, then the deletes. `?1` is a
/// JSON array of rows, each the key then the version the delete carries.
pub fn delete_json_sql(
    table: &str,
    primary_key: &[&str],
    encodings: &[JsonEncoding],
    version: &str,
) -> [String; 2] {
    let k = primary_key.len();
    let mut columns: Vec<&str> = primary_key.to_vec();
    columns.push(version);
    let key: Vec<String> = (0..k).map(|i| json_expr("value", encodings, i)).collect();
    let v = json_expr("value", encodings, k);
    let lhs = if k == 1 {
        quote_ident(primary_key[0])
    } else {
        format!("({})", join_quoted(primary_key))
    };
    let picked: Vec<String> = primary_key
        .iter()
        .map(|c| format!("\"t\".{}", quote_ident(c)))
        .collect();
    [
        tombstone_insert(&format!(
            "SELECT {}, {}, {v}, unixepoch() FROM json_each(?1) WHERE true",
            quote_literal(table),
            tombstone_key(&key)
        )),
        format!(
            "DELETE FROM {t} WHERE {lhs} IN (SELECT {} FROM {} JOIN {t} AS \"t\" ON {} WHERE coalesce(\"t\".{}, {OLDEST}) <= \"j\".\"c{k}\")",
            picked.join(", "),
            json_rows(k + 1, encodings, true),
            join_on(&columns, primary_key),
            quote_ident(version),
            t = quote_ident(table),
        ),
    ]
}

/// The rows of a `write`'s JSON parameter (`?1`, rows of `columns` as the write's statement
/// reads them) that the guard will refuse: `i` (the row's position in the array) and `v` (the
/// version that refuses it, as text: D1's JSON answer would round an integer above 2^53).
/// Sent just before the write, in the same batch.
///
/// ```
/// use d1_sync_schema::guard::{stale_json_sql, Write};
/// use d1_sync_schema::sql::JsonEncoding::Plain;
/// let sql = stale_json_sql(Write::Delete, "t", &["k", "v"], &[Plain, Plain], &["k"], "v");
/// assert!(sql.starts_with(r#"SELECT "j"."i", CAST("t"."v" AS TEXT) AS "v" FROM (SELECT key AS "i""#), "{sql}");
/// ```
pub fn stale_json_sql(
    write: Write,
    table: &str,
    columns: &[&str],
    encodings: &[JsonEncoding],
    primary_key: &[&str],
    version: &str,
) -> String {
    stale_sql(
        write,
        table,
        columns,
        encodings,
        primary_key,
        version,
        "\"j\".\"i\"",
    )
}

/// [`stale_json_sql`] for rows that carry their own number: each row of `?1` is
/// `[n, k1, ..., kK, v]` (a number the caller chose, the key in `primary_key` order, the
/// version; `encodings` are the key's and the version's), and each result row's `i` is that
/// `n`. So one check can stand for the rows of several statements. It reads the table as it
/// is when it runs: the worker sends one per table and write at the start of a request, for
/// the rows no earlier write of the same request can change the answer for.
///
/// ```
/// use d1_sync_schema::guard::{stale_numbered_sql, Write};
/// use d1_sync_schema::sql::JsonEncoding::Plain;
/// let sql = stale_numbered_sql(Write::Upsert, "t", &[Plain, Plain], &["k"], "v");
/// assert!(sql.starts_with(r#"SELECT "j"."c0" AS "i", CAST(coalesce("t"."v""#), "{sql}");
/// ```
pub fn stale_numbered_sql(
    write: Write,
    table: &str,
    encodings: &[JsonEncoding],
    primary_key: &[&str],
    version: &str,
) -> String {
    // Element 0 is the number, under a name no column has.
    let mut columns = vec![""];
    columns.extend_from_slice(primary_key);
    columns.push(version);
    let mut all = vec![JsonEncoding::Plain];
    all.extend_from_slice(encodings);
    stale_sql(
        write,
        table,
        &columns,
        &all,
        primary_key,
        version,
        "\"j\".\"c0\" AS \"i\"",
    )
}

fn stale_sql(
    write: Write,
    table: &str,
    columns: &[&str],
    encodings: &[JsonEncoding],
    primary_key: &[&str],
    version: &str,
    number: &str,
) -> String {
    let t = quote_ident(table);
    let rows = json_rows(columns.len(), encodings, true);
    let on = join_on(columns, primary_key);
    let v = quote_ident(version);
    let sent = format!("\"j\".\"c{}\"", position(columns, version));
    match write {
        Write::Upsert => {
            let key: Vec<String> = primary_key
                .iter()
                .map(|k| format!("\"j\".\"c{}\"", position(columns, k)))
                .collect();
            // A row the target holds decides by its version (a tombstone of it is older: the
            // row was written over it); only an absent row's tombstone is looked up.
            // (The `EXISTS` does not depend on the row: SQLite runs it once.)
            let held = format!(
                "coalesce(\"t\".{v}, CASE WHEN EXISTS (SELECT 1 FROM {ts} WHERE \"table_name\" = {name}) \
                 THEN (SELECT \"version\" FROM {ts} WHERE \"table_name\" = {name} AND \"row_key\" = {}) END)",
                tombstone_key(&key),
                ts = quote_ident(TOMBSTONES),
                name = quote_literal(table),
            );
            format!(
                "SELECT {number}, CAST({held} AS TEXT) AS \"v\" FROM {rows} LEFT JOIN {t} AS \"t\" ON {on} \
                 WHERE ({held}) >= {sent}"
            )
        }
        Write::Update | Write::Delete => {
            let cmp = if write == Write::Update { ">=" } else { ">" };
            format!(
                "SELECT {number}, CAST(\"t\".{v} AS TEXT) AS \"v\" FROM {rows} JOIN {t} AS \"t\" ON {on} \
                 WHERE coalesce(\"t\".{v}, {OLDEST}) {cmp} {sent}"
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sql::JsonEncoding::{Hex, Plain};
    use rusqlite::{params, Connection};

    fn db() -> Connection {
        let conn = Connection::open_in_memory().unwrap();
        conn.execute_batch(&format!(
            "PRAGMA foreign_keys = ON;
             CREATE TABLE t (k INTEGER PRIMARY KEY, body TEXT, v INTEGER NOT NULL, created INTEGER);
             {};",
            create_tombstones_sql()
        ))
        .unwrap();
        conn
    }

    fn row(conn: &Connection, k: i64) -> Option<(String, i64, i64)> {
        conn.query_row("SELECT body, v, created FROM t WHERE k = ?1", [k], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?))
        })
        .ok()
    }

    const COLS: [&str; 4] = ["k", "body", "v", "created"];

    /// The rows a stale check names: (position, the version that refuses it).
    fn stale_rows(conn: &Connection, stale: &str, json: &str) -> Vec<(i64, i64)> {
        conn.prepare(stale)
            .unwrap()
            .query_map([json], |r| {
                Ok((r.get(0)?, r.get::<_, String>(1)?.parse().unwrap()))
            })
            .unwrap()
            .collect::<Result<Vec<_>, _>>()
            .unwrap()
    }

    /// Upserts rows `(k, body, v)` in the JSON form, after asking which are stale.
    fn upsert(conn: &Connection, rows: &[(i64, &str, i64)]) -> Vec<(i64, i64)> {
        let json = serde_json::to_string(
            &rows
                .iter()
                .map(|(k, b, v)| serde_json::json!([k, b, v, 1]))
                .collect::<Vec<_>>(),
        )
        .unwrap();
        let enc = [Plain; 4];
        let stale = stale_json_sql(Write::Upsert, "t", &COLS, &enc, &["k"], "v");
        let refused = stale_rows(conn, &stale, &json);
        conn.execute(
            &upsert_json_sql("t", &COLS, &enc, &["k"], &["created"], "v"),
            [&json],
        )
        .unwrap();
        refused
    }

    fn delete(conn: &Connection, rows: &[(i64, i64)]) -> Vec<(i64, i64)> {
        let json = serde_json::to_string(&rows).unwrap();
        let enc = [Plain; 2];
        let stale = stale_json_sql(Write::Delete, "t", &["k", "v"], &enc, &["k"], "v");
        let refused = stale_rows(conn, &stale, &json);
        for s in delete_json_sql("t", &["k"], &enc, "v") {
            conn.execute(&s, [&json]).unwrap();
        }
        refused
    }

    #[test]
    fn only_a_newer_version_overwrites_and_the_check_names_the_refused() {
        let conn = db();
        assert_eq!(upsert(&conn, &[(1, "a", 5), (2, "b", 5)]), []);
        // Older, tie, newer.
        assert_eq!(
            upsert(&conn, &[(1, "old", 4), (2, "tie", 5)]),
            [(0, 5), (1, 5)]
        );
        assert_eq!(row(&conn, 1), Some(("a".into(), 5, 1)));
        assert_eq!(row(&conn, 2), Some(("b".into(), 5, 1)));
        assert_eq!(upsert(&conn, &[(1, "new", 6)]), []);
        assert_eq!(row(&conn, 1), Some(("new".into(), 6, 1)));
    }

    #[test]
    fn a_numbered_check_names_rows_by_their_own_number_for_every_write() {
        let conn = db();
        upsert(&conn, &[(1, "a", 5), (2, "b", 5)]);
        delete(&conn, &[(3, 7)]);
        let enc = [Plain; 2];
        let check = |write, json: &str| {
            stale_rows(
                &conn,
                &stale_numbered_sql(write, "t", &enc, &["k"], "v"),
                json,
            )
        };
        // [n, k, v]: k 1 at an older version, k 2 newer, k 3 under its tombstone.
        let rows = "[[40,1,4],[41,2,6],[42,3,7]]";
        assert_eq!(check(Write::Upsert, rows), [(40, 5), (42, 7)]);
        assert_eq!(
            check(Write::Update, rows),
            [(40, 5)],
            "an absent row is no conflict"
        );
        assert_eq!(
            check(Write::Delete, "[[9,1,4],[8,2,5]]"),
            [(9, 5)],
            "a tie deletes"
        );
        // D1 answers rows as JSON objects: the runtime reads the columns by name.
        for write in [Write::Upsert, Write::Update, Write::Delete] {
            let numbered = stale_numbered_sql(write, "t", &enc, &["k"], "v");
            let own = stale_json_sql(write, "t", &["k", "v"], &enc, &["k"], "v");
            for sql in [numbered, own] {
                let stmt = conn.prepare(&sql).unwrap();
                assert_eq!(stmt.column_names(), ["i", "v"], "{sql}");
            }
        }
    }

    #[test]
    fn a_delete_wins_over_older_writes_in_any_order_and_loses_to_newer_ones() {
        let conn = db();
        upsert(&conn, &[(1, "a", 5)]);
        // A delete of version 5 (the row it saw) removes it; the old upsert arriving late
        // cannot bring it back, a newer one can.
        assert_eq!(delete(&conn, &[(1, 5)]), []);
        assert_eq!(row(&conn, 1), None);
        assert_eq!(upsert(&conn, &[(1, "late", 4)]), [(0, 5)]);
        assert_eq!(upsert(&conn, &[(1, "tie", 5)]), [(0, 5)]);
        assert_eq!(row(&conn, 1), None);
        assert_eq!(upsert(&conn, &[(1, "again", 9)]), []);
        assert_eq!(row(&conn, 1), Some(("again".into(), 9, 1)));
        // A delete of an older version than the row's is refused, and named.
        assert_eq!(delete(&conn, &[(1, 8)]), [(0, 9)]);
        assert_eq!(row(&conn, 1), Some(("again".into(), 9, 1)));
        // A delete that arrives before the row's upsert still wins against it.
        assert_eq!(delete(&conn, &[(2, 7)]), []);
        assert_eq!(upsert(&conn, &[(2, "earlier", 6)]), [(0, 7)]);
        assert_eq!(row(&conn, 2), None);
        // The tombstone keeps the newest delete.
        delete(&conn, &[(2, 3)]);
        let v: i64 = conn
            .query_row(
                r#"SELECT version FROM d1_sync_tombstones WHERE table_name = 't' AND row_key = '["2"]'"#,
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(v, 7);
    }

    #[test]
    fn partial_updates_are_guarded_and_create_nothing() {
        let conn = db();
        upsert(&conn, &[(1, "a", 5)]);
        let enc = [Plain; 3];
        let set = ["body", "v"];
        let cols = ["k", "body", "v"];
        let run = |json: &str| -> Vec<(i64, i64)> {
            let stale = stale_json_sql(Write::Update, "t", &cols, &enc, &["k"], "v");
            let refused = stale_rows(&conn, &stale, json);
            conn.execute(&update_json_sql("t", &["k"], &set, &enc, "v"), [json])
                .unwrap();
            refused
        };
        assert_eq!(run(r#"[[1,"old",4],[2,"none",9]]"#), [(0, 5)]);
        assert_eq!(row(&conn, 1), Some(("a".into(), 5, 1)));
        assert_eq!(row(&conn, 2), None);
        assert_eq!(run(r#"[[1,"new",6]]"#), []);
        assert_eq!(row(&conn, 1), Some(("new".into(), 6, 1)));
    }

    #[test]
    fn the_one_row_forms_follow_the_same_rules() {
        let conn = db();
        let up = upsert_row_sql("t", &COLS, &["k"], &["created"], "v");
        let versions = versions_row_sql("t", &["k"], "v");
        let held = |k: i64| -> (Option<i64>, Option<i64>) {
            conn.query_row(&versions, [k], |r| Ok((r.get(0)?, r.get(1)?)))
                .unwrap()
        };
        assert_eq!(conn.execute(&up, params![1, "a", 5, 1]).unwrap(), 1);
        assert_eq!(conn.execute(&up, params![1, "old", 4, 1]).unwrap(), 0);
        assert_eq!(held(1), (Some(5), None));
        assert_eq!(refusing(Write::Upsert, 4, Some(5), None), Some(5));
        let [tomb, del] = delete_row_sql("t", &["k"], "v");
        conn.execute(&tomb, params![1, 4]).unwrap();
        assert_eq!(
            conn.execute(&del, params![1, 4]).unwrap(),
            0,
            "older delete"
        );
        conn.execute(&tomb, params![1, 5]).unwrap();
        assert_eq!(conn.execute(&del, params![1, 5]).unwrap(), 1);
        assert_eq!(held(1), (None, Some(5)));
        assert_eq!(conn.execute(&up, params![1, "late", 5, 1]).unwrap(), 0);
        assert_eq!(conn.execute(&up, params![1, "new", 6, 1]).unwrap(), 1);
        let upd = update_row_sql("t", &["k"], &["body", "v"], "v");
        assert_eq!(conn.execute(&upd, params![1, "x", 6]).unwrap(), 0);
        assert_eq!(conn.execute(&upd, params![1, "x", 7]).unwrap(), 1);
        assert_eq!(row(&conn, 1), Some(("x".into(), 7, 1)));
    }

    #[test]
    fn local_forms_guard_the_row_and_return_the_deleted_version() {
        let conn = db();
        let save = save_sql("t", &COLS, &["k"], &["created"], "v");
        assert_eq!(conn.execute(&save, params![1, "a", 5, 1]).unwrap(), 1);
        assert_eq!(conn.execute(&save, params![1, "b", 5, 2]).unwrap(), 0);
        assert_eq!(conn.execute(&save, params![1, "c", 6, 2]).unwrap(), 1);
        assert_eq!(row(&conn, 1), Some(("c".into(), 6, 1)));
        let v: i64 = conn
            .query_row(&delete_local_sql("t", &["k"], "v"), [1], |r| r.get(0))
            .unwrap();
        assert_eq!(v, 6);
    }

    #[test]
    fn a_cascaded_child_keeps_a_tombstone_at_its_version() {
        let conn = Connection::open_in_memory().unwrap();
        conn.execute_batch(&format!(
            "PRAGMA foreign_keys = ON;
             CREATE TABLE p (k INTEGER PRIMARY KEY, v INTEGER NOT NULL);
             CREATE TABLE c (k INTEGER PRIMARY KEY, p INTEGER REFERENCES p (k) ON DELETE CASCADE, v INTEGER NOT NULL);
             {}; {}; {};
             INSERT INTO p VALUES (1, 3); INSERT INTO c VALUES (10, 1, 7);",
            create_tombstones_sql(),
            tombstone_trigger_sql("p", &["k"], "v"),
            tombstone_trigger_sql("c", &["k"], "v"),
        ))
        .unwrap();
        for s in delete_json_sql("p", &["k"], &[Plain, Plain], "v") {
            conn.execute(&s, ["[[1,4]]"]).unwrap();
        }
        let tombs: Vec<(String, String, i64)> = conn
            .prepare("SELECT table_name, row_key, version FROM d1_sync_tombstones ORDER BY 1")
            .unwrap()
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(
            tombs,
            [
                ("c".into(), r#"["10"]"#.into(), 7),
                ("p".into(), r#"["1"]"#.into(), 4)
            ]
        );
        // The parent comes back; an older write of the cascaded child does not.
        conn.execute("INSERT INTO p VALUES (1, 9)", []).unwrap();
        let up = upsert_json_sql("c", &["k", "p", "v"], &[Plain; 3], &["k"], &[], "v");
        conn.execute(&up, ["[[10,1,6]]"]).unwrap();
        let n: i64 = conn
            .query_row("SELECT count(*) FROM c", [], |r| r.get(0))
            .unwrap();
        assert_eq!(n, 0);
        conn.execute(&up, ["[[10,1,8]]"]).unwrap();
        let n: i64 = conn
            .query_row("SELECT count(*) FROM c", [], |r| r.get(0))
            .unwrap();
        assert_eq!(n, 1, "a newer write does");
    }

    #[test]
    fn a_deleted_parent_is_found_by_its_stored_key() {
        let conn = db();
        upsert(&conn, &[(1, "a", 5), (2, "b", 5)]);
        delete(&conn, &[(1, 5)]);
        let deleted = |key: &str| -> Option<String> {
            conn.query_row(&deleted_sql("t", &["k"]), [key], |r| r.get(0))
                .ok()
        };
        assert_eq!(deleted("[1]"), Some("5".into()));
        assert_eq!(deleted("[2]"), None, "held");
        assert_eq!(deleted("[3]"), None, "never deleted");
        upsert(&conn, &[(1, "back", 6)]);
        assert_eq!(deleted("[1]"), None, "written again after its delete");
    }

    #[test]
    fn a_table_with_a_column_named_value_is_guarded_too() {
        let conn = Connection::open_in_memory().unwrap();
        conn.execute_batch(&format!(
            "CREATE TABLE kv (key TEXT PRIMARY KEY, value TEXT, v INTEGER NOT NULL); {};",
            create_tombstones_sql()
        ))
        .unwrap();
        let up = upsert_json_sql(
            "kv",
            &["key", "value", "v"],
            &[Plain; 3],
            &["key"],
            &[],
            "v",
        );
        conn.execute(&up, [r#"[["a","x",5]]"#]).unwrap();
        conn.execute(&up, [r#"[["a","old",4],["b","y",1]]"#])
            .unwrap();
        let rows: Vec<(String, String, i64)> = conn
            .prepare("SELECT key, value, v FROM kv ORDER BY key")
            .unwrap()
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(
            rows,
            [("a".into(), "x".into(), 5), ("b".into(), "y".into(), 1)]
        );
    }

    #[test]
    fn blob_and_composite_keys_keep_distinct_tombstones() {
        let conn = Connection::open_in_memory().unwrap();
        conn.execute_batch(&format!(
            "CREATE TABLE b (a BLOB, n INTEGER, v INTEGER, PRIMARY KEY (a, n)); {};",
            create_tombstones_sql()
        ))
        .unwrap();
        let enc = [Hex, Plain, Plain];
        for s in delete_json_sql("b", &["a", "n"], &enc, "v") {
            conn.execute(&s, [r#"[["0102",1,5],["0102",2,5]]"#])
                .unwrap();
        }
        let keys: Vec<String> = conn
            .prepare("SELECT row_key FROM d1_sync_tombstones ORDER BY row_key")
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(keys, [r#"["X'0102'","1"]"#, r#"["X'0102'","2"]"#]);
        let up = upsert_json_sql("b", &["a", "n", "v"], &enc, &["a", "n"], &[], "v");
        conn.execute(&up, [r#"[["0102",1,4],["0102",3,4]]"#])
            .unwrap();
        let n: i64 = conn
            .query_row("SELECT count(*) FROM b", [], |r| r.get(0))
            .unwrap();
        assert_eq!(n, 1, "only the key without a newer tombstone is written");
    }
}
