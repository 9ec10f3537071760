//! D1 migrations as wrangler keeps them: the `.sql` files of a folder, applied in the order of
//! the number their name starts with, each recorded by file name in a `d1_migrations` table.
//! One set of files is the source for the app's own SQLite file, for D1, and for the row
//! structs (`#[d1(schema = "migrations")]`, `d1sync generate`).
//!
//! ```
//! let dir = tempfile::tempdir().unwrap();
//! std::fs::write(dir.path().join("0002_more.sql"), "ALTER TABLE t ADD COLUMN note TEXT;").unwrap();
//! std::fs::write(dir.path().join("0001_init.sql"), "CREATE TABLE t (id TEXT PRIMARY KEY); -- the start").unwrap();
//! let all = d1_sync_schema::migrations::load(dir.path()).unwrap();
//! assert_eq!(all.iter().map(|m| m.name.as_str()).collect::<Vec<_>>(), ["0001_init.sql", "0002_more.sql"]);
//! assert_eq!(all[1].statements, ["ALTER TABLE t ADD COLUMN note TEXT;"]);
//! ```

use std::cmp::Ordering;
use std::path::{Path, PathBuf};

use rusqlite::Connection;

use crate::load::{apply_statements, schema_files, SchemaError};
use crate::sql::quote_ident;

/// wrangler's default migrations table.
pub const DEFAULT_TABLE: &str = "d1_migrations";

/// wrangler's default migrations folder.
pub const DEFAULT_DIR: &str = "migrations";

/// Where d1-sync keeps a checksum of each migration it applied, beside the migrations table
/// (wrangler's table has no room for one), to warn when an applied file was changed.
pub const CHECKSUMS_TABLE: &str = "d1_sync_migration_checksums";

/// One migration file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Migration {
    /// The file name, as recorded in the migrations table (`0001_init.sql`).
    pub name: String,
    /// The file.
    pub path: PathBuf,
    /// Its statements, in order, each as written (comments between them left out).
    pub statements: Vec<String>,
    /// A checksum of the file's bytes (FNV-1a, 64 bits, hex).
    pub checksum: String,
}

/// The order wrangler applies migrations in: by the number the name starts with (up to the
/// first `_`), then by name; names without a number come last.
pub fn order(a: &str, b: &str) -> Ordering {
    let number = |n: &str| {
        n.split('_')
            .next()
            .and_then(|p| p.parse::<u64>().ok())
            .unwrap_or(u64::MAX)
    };
    number(a).cmp(&number(b)).then_with(|| a.cmp(b))
}

/// Loads the migrations of `dir` in order, splitting each into statements by running them all,
/// in order, on an in-memory SQLite (so a file that SQLite refuses is an error naming the file,
/// line and column, before anything reaches a database).
pub fn load(dir: &Path) -> Result<Vec<Migration>, SchemaError> {
    let files = schema_files(dir)?;
    let conn = Connection::open_in_memory()?;
    let mut out = Vec::with_capacity(files.len());
    for path in files {
        let bytes = std::fs::read(&path).map_err(|source| SchemaError::Io {
            path: path.clone(),
            source,
        })?;
        let checksum = checksum(&bytes);
        let text =
            String::from_utf8(bytes).map_err(|_| SchemaError::NotUtf8 { path: path.clone() })?;
        let mut statements = Vec::new();
        apply_statements(&conn, &path, &text, &mut |s| statements.push(s.to_string()))?;
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default()
            .to_string();
        out.push(Migration {
            name,
            path,
            statements,
            checksum,
        });
    }
    Ok(out)
}

/// [`load`] for migrations held in memory (`(file name, SQL)`, e.g. `include_str!`ed), in
/// the order given.
pub fn from_texts(files: &[(&str, &str)]) -> Result<Vec<Migration>, SchemaError> {
    let conn = Connection::open_in_memory()?;
    let mut out = Vec::with_capacity(files.len());
    for (name, text) in files {
        let path = PathBuf::from(name);
        let mut statements = Vec::new();
        apply_statements(&conn, &path, text, &mut |s| statements.push(s.to_string()))?;
        out.push(Migration {
            name: (*name).to_string(),
            path,
            statements,
            checksum: checksum(text.as_bytes()),
        });
    }
    Ok(out)
}

/// FNV-1a over `bytes`, as 16 hex digits: stable across builds and platforms.
pub fn checksum(bytes: &[u8]) -> String {
    format!("{:016x}", crate::definition::fnv1a(bytes))
}

/// The migrations table exactly as wrangler creates it.
pub fn create_table_sql(table: &str) -> String {
    format!(
        "CREATE TABLE IF NOT EXISTS {} (id INTEGER PRIMARY KEY AUTOINCREMENT, name TEXT UNIQUE, applied_at TIMESTAMP DEFAULT CURRENT_TIMESTAMP NOT NULL)",
        quote_ident(table)
    )
}

/// The checksums table ([`CHECKSUMS_TABLE`]).
pub fn create_checksums_sql() -> String {
    format!(
        "CREATE TABLE IF NOT EXISTS {} (name TEXT PRIMARY KEY NOT NULL, checksum TEXT NOT NULL)",
        quote_ident(CHECKSUMS_TABLE)
    )
}

/// Records a migration as applied (`?1` its name), as wrangler does.
pub fn record_sql(table: &str) -> String {
    format!("INSERT INTO {} (name) VALUES (?1)", quote_ident(table))
}

/// Whether the migration named `?1` is recorded as applied (one row: `1` or `0`).
pub fn is_recorded_sql(table: &str) -> String {
    format!(
        "SELECT count(*) > 0 FROM {} WHERE name = ?1",
        quote_ident(table)
    )
}

/// Records a migration's checksum (`?1` name, `?2` checksum).
pub fn record_checksum_sql() -> String {
    format!(
        "INSERT INTO {} (name, checksum) VALUES (?1, ?2) ON CONFLICT (name) DO UPDATE SET checksum = excluded.checksum",
        quote_ident(CHECKSUMS_TABLE)
    )
}

/// The names recorded in the migrations table, in the order they were applied.
pub fn applied_sql(table: &str) -> String {
    format!("SELECT name FROM {} ORDER BY id", quote_ident(table))
}

/// The recorded checksums.
pub fn checksums_sql() -> String {
    format!(
        "SELECT name, checksum FROM {}",
        quote_ident(CHECKSUMS_TABLE)
    )
}

/// Whether an error says the migration was recorded already: a migration sent again after a
/// lost answer is refused by the name's UNIQUE constraint, which the batch writes first.
pub fn is_already_recorded(message: &str, table: &str) -> bool {
    message.contains(&format!("UNIQUE constraint failed: {table}.name"))
}

/// How the migrations of a folder stand against what a database recorded.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    /// Files not recorded yet, in the order to apply them.
    pub pending: Vec<String>,
    /// Files recorded and present.
    pub applied: Vec<String>,
    /// Names recorded but with no file in the folder.
    pub missing_files: Vec<String>,
    /// Files recorded whose checksum differs from the one recorded when d1-sync applied them.
    pub changed: Vec<String>,
}

/// Compares the folder's migrations with what a database recorded (`recorded` names in the
/// order applied, `checksums` as `(name, checksum)`).
pub fn plan(files: &[Migration], recorded: &[String], checksums: &[(String, String)]) -> Plan {
    let mut p = Plan::default();
    for m in files {
        if recorded.contains(&m.name) {
            p.applied.push(m.name.clone());
            if checksums
                .iter()
                .any(|(n, c)| *n == m.name && *c != m.checksum)
            {
                p.changed.push(m.name.clone());
            }
        } else {
            p.pending.push(m.name.clone());
        }
    }
    for r in recorded {
        if !files.iter().any(|m| m.name == *r) {
            p.missing_files.push(r.clone());
        }
    }
    p
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wrangler_order_is_by_the_leading_number() {
        let mut names = vec![
            "10_b.sql",
            "0002_a.sql",
            "0001_z.sql",
            "notes.sql",
            "2_c.sql",
        ];
        names.sort_by(|a, b| order(a, b));
        assert_eq!(
            names,
            [
                "0001_z.sql",
                "0002_a.sql",
                "2_c.sql",
                "10_b.sql",
                "notes.sql"
            ]
        );
    }

    #[test]
    fn files_split_into_their_statements_triggers_included() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("0001_init.sql"),
            "-- two tables\nCREATE TABLE a (id INTEGER PRIMARY KEY, n INTEGER);\n\
             CREATE TABLE log (n INTEGER);\n\
             CREATE TRIGGER t AFTER INSERT ON a BEGIN INSERT INTO log VALUES (NEW.n); END;\n",
        )
        .unwrap();
        let m = load(dir.path()).unwrap();
        assert_eq!(m[0].statements.len(), 3);
        assert!(m[0].statements[2].starts_with("CREATE TRIGGER t"));
        assert!(m[0].statements[2].ends_with("END;"));
        assert_eq!(m[0].checksum, checksum(&std::fs::read(&m[0].path).unwrap()));
        std::fs::write(dir.path().join("0002_bad.sql"), "CREATE TABLE a (x);").unwrap();
        let err = load(dir.path()).unwrap_err().to_string();
        assert!(
            err.contains("0002_bad.sql") && err.contains("already exists"),
            "{err}"
        );
    }

    #[test]
    fn a_plan_sorts_pending_applied_missing_and_changed() {
        let m = |name: &str, sum: &str| Migration {
            name: name.into(),
            path: PathBuf::from(name),
            statements: vec![],
            checksum: sum.into(),
        };
        let files = [
            m("0001_a.sql", "aa"),
            m("0002_b.sql", "bb"),
            m("0003_c.sql", "cc"),
        ];
        let recorded = [
            "0001_a.sql".to_string(),
            "0002_b.sql".into(),
            "0000_gone.sql".into(),
        ];
        let sums = [("0002_b.sql".to_string(), "old".to_string())];
        let p = plan(&files, &recorded, &sums);
        assert_eq!(p.pending, ["0003_c.sql"]);
        assert_eq!(p.applied, ["0001_a.sql", "0002_b.sql"]);
        assert_eq!(p.missing_files, ["0000_gone.sql"]);
        assert_eq!(p.changed, ["0002_b.sql"]);
        assert!(is_already_recorded(
            "UNIQUE constraint failed: d1_migrations.name: SQLITE_CONSTRAINT",
            DEFAULT_TABLE
        ));
    }
}
