//! Applying D1 migrations (a folder of `.sql` files) to the application's own SQLite file and
//! to D1, recorded the way wrangler records them, so `wrangler d1 migrations list` and d1-sync
//! agree on what is applied.
//!
//! Each migration runs in one transaction (locally) or one batch (D1) together with its row in
//! `d1_migrations`, so a failing migration leaves nothing behind. The batch writes that row
//! first: a migration sent again after its answer was lost is refused by the name's UNIQUE
//! constraint before anything of it runs, and counts as applied.
//!
//! ```
//! # fn main() -> Result<(), d1_sync::Error> {
//! let dir = tempfile::tempdir().unwrap();
//! std::fs::write(dir.path().join("0001_notes.sql"), "CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT);").unwrap();
//! let conn = d1_sync::open(":memory:")?;
//! let first = d1_sync::migrate(&conn, dir.path())?;
//! assert_eq!(first.applied, ["0001_notes.sql"]);
//! assert!(d1_sync::migrate(&conn, dir.path())?.applied.is_empty(), "nothing the second time");
//! # Ok(()) }
//! ```

use std::path::Path;
use std::time::Duration;

use d1_sync_schema::migrations::{self as m, Migration, Plan};
use rusqlite::Connection;
use tracing::{info, warn};

use crate::error::{Error, Result};
use crate::pack::{Param, Statement};
use crate::target::{result_column, D1Http, TargetError};
use crate::txn::{table_exists, write_unit};

/// What a migration run found and did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MigrationReport {
    /// Applied by this run (or, with a dry run, that would be), in order.
    pub applied: Vec<String>,
    /// How the folder stood against the database before the run.
    pub plan: Plan,
}

/// What a database records of its migrations.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Recorded {
    /// The names, in the order applied.
    pub names: Vec<String>,
    /// `(name, checksum)` of those d1-sync applied.
    pub checksums: Vec<(String, String)>,
}

/// How long set-up requests to D1 retry transient failures.
const RETRY_FOR: Duration = Duration::from_secs(120);

/// Applies the pending migrations of `dir` to the application's file, recording them in
/// `d1_migrations` as wrangler does. Idempotent: applied files are skipped. A file changed
/// after it was applied is logged as a warning and listed in the report's `plan.changed`.
///
/// Several processes may migrate one file at once: each file goes in a transaction that takes
/// the write lock before it looks, so it is applied once, by whichever comes first, and is
/// not in the others' [`MigrationReport::applied`].
pub fn migrate(conn: &Connection, dir: impl AsRef<Path>) -> Result<MigrationReport> {
    let files = m::load(dir.as_ref())?;
    let report = migrate_local(conn, &files, m::DEFAULT_TABLE, false)?;
    for name in &report.plan.changed {
        warn!(migration = %name, "this migration changed after it was applied; the change is not applied (wrangler does not notice either): add a new migration instead");
    }
    Ok(report)
}

/// The migrations `table` of a local file records, in the order applied (none if it has no
/// such table), with their checksums.
pub fn recorded_local(conn: &Connection, table: &str) -> Result<Recorded> {
    let mut names = Vec::new();
    if table_exists(conn, table)? {
        let mut stmt = conn.prepare(&m::applied_sql(table))?;
        names = stmt
            .query_map([], |r| r.get::<_, Option<String>>(0))?
            .filter_map(|r| r.transpose())
            .collect::<rusqlite::Result<_>>()?;
    }
    let mut sums = Vec::new();
    if table_exists(conn, m::CHECKSUMS_TABLE)? {
        let mut stmt = conn.prepare(&m::checksums_sql())?;
        sums = stmt
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect::<rusqlite::Result<_>>()?;
    }
    Ok(Recorded {
        names,
        checksums: sums,
    })
}

/// [`migrate`] with loaded files, another migrations table, and a dry run that applies nothing.
pub fn migrate_local(
    conn: &Connection,
    files: &[Migration],
    table: &str,
    dry_run: bool,
) -> Result<MigrationReport> {
    let recorded = recorded_local(conn, table)?;
    let mut report = report(checked_plan(files, &recorded, "the app's file")?, dry_run);
    if dry_run {
        return Ok(report);
    }
    conn.execute_batch(&m::create_table_sql(table))?;
    conn.execute_batch(&m::create_checksums_sql())?;
    for name in report.plan.pending.clone() {
        let Some(file) = files.iter().find(|f| f.name == name) else {
            continue;
        };
        // In the caller's transaction, or one that takes the write lock before it looks: a
        // process that started at the same moment may be applying the same files, and a file
        // it recorded meanwhile is applied, by it.
        let run = write_unit(conn, "d1_sync_migrate", || -> rusqlite::Result<bool> {
            let recorded: bool =
                conn.query_row(&m::is_recorded_sql(table), [&file.name], |r| r.get(0))?;
            if recorded {
                return Ok(false);
            }
            conn.execute(&m::record_sql(table), [&file.name])?;
            for s in &file.statements {
                conn.execute_batch(s)?;
            }
            conn.execute(&m::record_checksum_sql(), [&file.name, &file.checksum])?;
            Ok(true)
        });
        match run {
            Ok(true) => {}
            Ok(false) => {
                info!(migration = %file.name, "applied to the app's file meanwhile, by another connection");
                continue;
            }
            Err(e) => {
                // The files applied before this one may have rebuilt captured tables.
                if !report.applied.is_empty() {
                    if let Err(r) = crate::outbox::restore_capture_of_every_queue(conn) {
                        warn!("capture could not be made again after a failed migration: {r}");
                    }
                }
                return Err(Error::MigrationFailed {
                    name: file.name.clone(),
                    target: "the app's file".into(),
                    message: e.to_string(),
                });
            }
        }
        info!(migration = %file.name, "applied to the app's file");
        report.applied.push(file.name.clone());
    }
    if !report.applied.is_empty() {
        crate::outbox::restore_capture_of_every_queue(conn)?;
    }
    Ok(report)
}

/// A report to fill in; a dry run's is already complete: what would be applied.
fn report(plan: Plan, dry_run: bool) -> MigrationReport {
    MigrationReport {
        applied: if dry_run {
            plan.pending.clone()
        } else {
            Vec::new()
        },
        plan,
    }
}

/// The plan, refusing a database that records files the folder lacks. Changed files are in
/// [`Plan::changed`] for the caller to report (wrangler does not notice those either).
fn checked_plan(files: &[Migration], recorded: &Recorded, target: &str) -> Result<Plan> {
    let plan = m::plan(files, &recorded.names, &recorded.checksums);
    if !plan.missing_files.is_empty() {
        return Err(Error::MigrationsMissing {
            target: target.to_string(),
            names: plan.missing_files.clone(),
        });
    }
    Ok(plan)
}

/// The migrations `table` of D1 records, in the order applied (none if it has no such
/// table), with the checksums d1-sync recorded.
pub async fn recorded_d1(d1: &D1Http, table: &str) -> Result<Recorded> {
    let names = match d1
        .query_retrying(&[Statement::new(m::applied_sql(table))], RETRY_FOR)
        .await
    {
        Ok(r) => result_column(&r, "name"),
        Err(TargetError::Rejected(e)) if e.contains("no such table") => Vec::new(),
        Err(e) => return Err(e.into()),
    };
    let sums = match d1
        .query_retrying(&[Statement::new(m::checksums_sql())], RETRY_FOR)
        .await
    {
        Ok(r) => result_column(&r, "name")
            .into_iter()
            .zip(result_column(&r, "checksum"))
            .collect(),
        Err(TargetError::Rejected(e)) if e.contains("no such table") => Vec::new(),
        Err(e) => return Err(e.into()),
    };
    Ok(Recorded {
        names,
        checksums: sums,
    })
}

/// Applies the pending migrations to D1, each in one batch with its `d1_migrations` row (and
/// d1-sync's checksum), recorded as wrangler records them. Transient failures are retried
/// with backoff; a migration D1 refuses stops the run with its message, nothing of it applied.
pub async fn migrate_d1(
    d1: &D1Http,
    files: &[Migration],
    table: &str,
    dry_run: bool,
) -> Result<MigrationReport> {
    let recorded = recorded_d1(d1, table).await?;
    let mut report = report(checked_plan(files, &recorded, "D1")?, dry_run);
    if dry_run {
        return Ok(report);
    }
    d1.query_retrying(
        &[
            Statement::new(m::create_table_sql(table)),
            Statement::new(m::create_checksums_sql()),
        ],
        RETRY_FOR,
    )
    .await?;
    for name in report.plan.pending.clone() {
        let Some(file) = files.iter().find(|f| f.name == name) else {
            continue;
        };
        let mut batch = vec![Statement {
            sql: m::record_sql(table),
            params: vec![Param::Text(file.name.clone())],
        }];
        batch.extend(file.statements.iter().map(|s| Statement::new(s.as_str())));
        batch.push(Statement {
            sql: m::record_checksum_sql(),
            params: vec![
                Param::Text(file.name.clone()),
                Param::Text(file.checksum.clone()),
            ],
        });
        match d1.query_retrying(&batch, RETRY_FOR).await {
            Ok(_) => {}
            // Sent again after a lost answer: it was applied the first time.
            Err(TargetError::Rejected(e)) if m::is_already_recorded(&e, table) => {}
            Err(TargetError::Rejected(message)) => {
                return Err(Error::MigrationFailed {
                    name: file.name.clone(),
                    target: "D1".into(),
                    message,
                })
            }
            Err(e) => return Err(e.into()),
        }
        info!(migration = %file.name, "applied to D1");
        report.applied.push(file.name.clone());
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir(files: &[(&str, &str)]) -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        for (n, sql) in files {
            std::fs::write(d.path().join(n), sql).unwrap();
        }
        d
    }

    #[test]
    fn a_failing_migration_leaves_nothing_and_the_rest_stays_applied() {
        let d = dir(&[
            ("0001_a.sql", "CREATE TABLE a (id INTEGER PRIMARY KEY);"),
            (
                "0002_b.sql",
                "CREATE TABLE b (id INTEGER PRIMARY KEY); INSERT INTO b VALUES (1);",
            ),
        ]);
        let conn = Connection::open_in_memory().unwrap();
        let files = m::load(d.path()).unwrap();
        // The app's file already has a table `b`: 0002 fails there, after its row in
        // d1_migrations was written, and nothing of it may stay.
        conn.execute_batch("CREATE TABLE b (id INTEGER PRIMARY KEY, x NOT NULL);")
            .unwrap();
        let err = migrate_local(&conn, &files, m::DEFAULT_TABLE, false).unwrap_err();
        assert!(
            matches!(&err, Error::MigrationFailed { name, .. } if name == "0002_b.sql"),
            "{err}"
        );
        let recorded = recorded_local(&conn, m::DEFAULT_TABLE).unwrap();
        assert_eq!(recorded.names, ["0001_a.sql"]);
        assert_eq!(recorded.checksums.len(), 1);
        let rows: i64 = conn
            .query_row("SELECT count(*) FROM b", [], |r| r.get(0))
            .unwrap();
        assert_eq!(rows, 0);
    }

    #[test]
    fn dry_runs_apply_nothing_and_unknown_recorded_files_are_refused() {
        let d = dir(&[("0001_a.sql", "CREATE TABLE a (id INTEGER PRIMARY KEY);")]);
        let conn = Connection::open_in_memory().unwrap();
        let files = m::load(d.path()).unwrap();
        let dry = migrate_local(&conn, &files, m::DEFAULT_TABLE, true).unwrap();
        assert_eq!(dry.applied, ["0001_a.sql"]);
        assert!(recorded_local(&conn, m::DEFAULT_TABLE)
            .unwrap()
            .names
            .is_empty());
        migrate_local(&conn, &files, m::DEFAULT_TABLE, false).unwrap();
        conn.execute(
            "INSERT INTO d1_migrations (name) VALUES ('0000_elsewhere.sql')",
            [],
        )
        .unwrap();
        let err = migrate_local(&conn, &files, m::DEFAULT_TABLE, false).unwrap_err();
        assert!(err.to_string().contains("0000_elsewhere.sql"), "{err}");
    }
}
