//! Comparing a table on the target with the local one, value by value and storage class by
//! storage class.
//!
//! [`dump_sql`] renders each row as one JSON text of `[typeof(c), exact text of c, ...]`
//! (reals with 17 significant digits, blobs in hex), ordered by key, so the same query on
//! the local file and on D1 gives equal lists exactly when the tables hold equal values.

use rusqlite::Connection;

use crate::error::{Error, Result};
use crate::registry::Registry;
use crate::row::TableDef;
use crate::target::{D1Http, Statement, Target, TargetError};

/// What [`compare`] found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Comparison {
    /// Tables compared.
    pub tables: usize,
    /// Rows in the local file, over those tables.
    pub rows: usize,
    /// The tables that differ.
    pub differing: Vec<TableDifference>,
}

impl Comparison {
    /// Whether every table is equal on both sides.
    pub fn agrees(&self) -> bool {
        self.differing.is_empty()
    }
}

/// A table that differs between the local file and the target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableDifference {
    /// The table.
    pub table: String,
    /// Its rows in the local file.
    pub local_rows: usize,
    /// Its rows on the target.
    pub target_rows: usize,
    /// The first row (in key order) that differs, local then target, as dumped.
    pub first: (Option<String>, Option<String>),
}

impl std::fmt::Display for TableDifference {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} ({} local rows, {} on the target)",
            self.table, self.local_rows, self.target_rows
        )
    }
}

/// Compares every table of `registry` between the local file `app` and `target`, value by
/// value and storage class by storage class (see [`dump_sql`]). A target that cannot be read
/// back ([`Target::dump`] gives `None`) is [`Error::Config`].
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), d1_sync::Error> {
/// use d1_sync::{D1Sync, Registry, SqliteTarget};
/// #[derive(D1Sync)]
/// struct Note { #[d1(primary_key)] id: i64, body: String }
/// let ddl = "CREATE TABLE note (id INTEGER PRIMARY KEY, body TEXT)";
/// let app = d1_sync::rusqlite::Connection::open_in_memory()?;
/// app.execute_batch(ddl)?;
/// let target = SqliteTarget::open(":memory:")?;
/// target.with_connection(|c| c.execute_batch(ddl))?;
/// let registry = Registry::new().with::<Note>();
/// assert!(d1_sync::verify::compare(&app, &target, &registry).await?.agrees());
/// app.execute("INSERT INTO note VALUES (1, 'only here')", [])?;
/// let c = d1_sync::verify::compare(&app, &target, &registry).await?;
/// assert_eq!(c.differing[0].to_string(), "note (1 local rows, 0 on the target)");
/// # Ok(()) }
/// ```
pub async fn compare(
    app: &Connection,
    target: &dyn Target,
    registry: &Registry,
) -> Result<Comparison> {
    let mut out = Comparison::default();
    for name in registry.names() {
        let Some(def) = registry.get(name) else {
            continue;
        };
        let local = dump_local(app, def)?;
        let theirs = target
            .dump(def)
            .await?
            .ok_or_else(|| Error::Config(format!("{} cannot be read back", target.describe())))?;
        out.tables += 1;
        out.rows += local.len();
        if local != theirs {
            let at = local
                .iter()
                .zip(&theirs)
                .position(|(a, b)| a != b)
                .unwrap_or(local.len().min(theirs.len()));
            out.differing.push(TableDifference {
                table: name.to_string(),
                local_rows: local.len(),
                target_rows: theirs.len(),
                first: (local.get(at).cloned(), theirs.get(at).cloned()),
            });
        }
    }
    Ok(out)
}

/// The dump query of `table` (see the module docs).
pub fn dump_sql(table: &TableDef) -> String {
    use d1_sync_schema::sql::quote_ident;
    let cols: Vec<String> = table
        .columns
        .iter()
        .map(|c| {
            let q = quote_ident(c);
            format!(
                "typeof({q}), CASE typeof({q}) WHEN 'real' THEN printf('%!.17g', {q}) WHEN 'blob' THEN hex({q}) ELSE CAST({q} AS TEXT) END"
            )
        })
        .collect();
    let order: Vec<String> = table.primary_key.iter().map(|c| quote_ident(c)).collect();
    format!(
        "SELECT json_array({}) AS r FROM {} ORDER BY {}",
        cols.join(", "),
        quote_ident(&table.name),
        order.join(", ")
    )
}

/// Dumps `table` from a local SQLite connection.
pub fn dump_local(conn: &Connection, table: &TableDef) -> rusqlite::Result<Vec<String>> {
    let mut stmt = conn.prepare(&dump_sql(table))?;
    let rows = stmt
        .query_map([], |r| r.get::<_, String>(0))?
        .collect::<Result<Vec<_>, _>>()?;
    Ok(rows)
}

/// Dumps `table` from D1.
pub async fn dump_d1(d1: &D1Http, table: &TableDef) -> Result<Vec<String>, TargetError> {
    // A read: harmless to repeat, so transient failures and rate limits are retried.
    let result = d1
        .query_retrying(
            &[Statement::new(dump_sql(table))],
            std::time::Duration::from_secs(120),
        )
        .await?;
    let rows = result
        .first()
        .and_then(|r| r.get("results"))
        .and_then(|r| r.as_array())
        .cloned()
        .unwrap_or_default();
    rows.iter()
        .map(|row| {
            row.get("r")
                .and_then(|v| v.as_str())
                .map(str::to_string)
                .ok_or_else(|| TargetError::Transient(format!("unexpected row in a dump: {row}")))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dumps_keep_storage_classes_and_exact_values() {
        let conn = Connection::open_in_memory().unwrap();
        conn.execute_batch("CREATE TABLE t (id INTEGER PRIMARY KEY, v)")
            .unwrap();
        conn.execute(
            "INSERT INTO t VALUES (1, 0.1), (2, '0.1'), (3, x'00ff'), (4, NULL), (5, 9007199254740993)",
            [],
        )
        .unwrap();
        let def = TableDef {
            name: "t".into(),
            columns: vec!["id".into(), "v".into()],
            primary_key: vec!["id".into()],
            insert_only: vec![],
            version: None,
        };
        assert_eq!(
            dump_local(&conn, &def).unwrap(),
            [
                r#"["integer","1","real","0.10000000000000001"]"#,
                r#"["integer","2","text","0.1"]"#,
                r#"["integer","3","blob","00FF"]"#,
                r#"["integer","4","null",null]"#,
                r#"["integer","5","integer","9007199254740993"]"#,
            ]
        );
    }
}
