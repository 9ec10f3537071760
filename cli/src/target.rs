//! Opening the application database and the target from command-line arguments.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use d1_sync::rusqlite::{Connection, OpenFlags};
use d1_sync::{D1Config, D1Http, Outbox, SqliteTarget, Target};

use crate::error::CliError;

/// Opens an existing application database for the outbox commands: no file is created, and a
/// file that is not SQLite or has no (or a too new) outbox is a clear error.
pub fn open_app_db(path: &Path, queue_table: &str) -> Result<(Connection, Outbox), CliError> {
    let conn = open_db(path)?;
    let outbox = Outbox::with_table(queue_table);
    outbox.check(&conn).map_err(|e| match e {
        d1_sync::Error::NotInstalled(t) => CliError::Failed(format!(
            "`{}` has no outbox table `{t}`: nothing was ever enqueued there with d1-sync (or pass --queue-table)",
            path.display()
        )),
        other => CliError::Failed(format!("`{}`: {other}", path.display())),
    })?;
    Ok((conn, outbox))
}

/// Opens an existing SQLite file: no file is created, and one that is not SQLite is a clear
/// error. It waits 5 s for another connection's lock (the app may be writing the file), as
/// d1-sync's own connections do.
pub fn open_db(path: &Path) -> Result<Connection, CliError> {
    if !path.is_file() {
        return Err(CliError::Usage(format!(
            "no database at `{}`: d1sync opens the application's SQLite file and never creates one (the app creates it, e.g. with `d1_sync::open`)",
            path.display()
        )));
    }
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(|e| CliError::Failed(format!("cannot open `{}`: {e}", path.display())))?;
    let _ = conn.busy_timeout(std::time::Duration::from_secs(5));
    conn.query_row("SELECT count(*) FROM sqlite_schema", [], |r| {
        r.get::<_, i64>(0)
    })
    .map_err(|e| unreadable(path, &e))?;
    Ok(conn)
}

/// Why the first read of `path` failed, in words that point at the fix.
fn unreadable(path: &Path, e: &d1_sync::rusqlite::Error) -> CliError {
    use d1_sync::rusqlite::ErrorCode;
    let path = path.display();
    CliError::Failed(match e.sqlite_error_code() {
        Some(ErrorCode::NotADatabase) => format!("`{path}` is not an SQLite database ({e})"),
        Some(ErrorCode::ReadOnly | ErrorCode::CannotOpen | ErrorCode::PermissionDenied) => {
            format!(
                "cannot read `{path}` ({e}): d1sync needs write access to the file and to its folder, where SQLite keeps the file's `-wal` and `-shm` companions"
            )
        }
        _ => format!("cannot read `{path}`: {e}"),
    })
}

/// Where to send changes: `d1` (the REST API, configured from the environment) or
/// `sqlite:PATH` (a local file).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TargetSpec {
    /// D1 over its REST API.
    D1,
    /// A local SQLite file.
    Sqlite(PathBuf),
}

impl std::str::FromStr for TargetSpec {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s == "d1" {
            return Ok(TargetSpec::D1);
        }
        match s.strip_prefix("sqlite:") {
            Some(p) if !p.is_empty() => Ok(TargetSpec::Sqlite(PathBuf::from(p))),
            _ => Err(format!("`{s}` is not a target: use `d1` or `sqlite:PATH`")),
        }
    }
}

/// A D1 client from `CLOUDFLARE_ACCOUNT_ID`, `CLOUDFLARE_API_TOKEN`, `D1_DATABASE_ID`, with
/// `base_url` (or `D1_BASE_URL`) overriding the API address.
pub fn d1_from_env(base_url: Option<&str>) -> Result<Arc<D1Http>, CliError> {
    d1_client(base_url, None)
}

/// A D1 client: the account and the token from the environment (`CLOUDFLARE_ACCOUNT_ID`,
/// `CLOUDFLARE_API_TOKEN`), the database from `D1_DATABASE_ID` or else the project's wrangler
/// configuration, and `base_url` (or `D1_BASE_URL`) overriding the API address.
pub fn d1_client(
    base_url: Option<&str>,
    project: Option<&crate::config::Database>,
) -> Result<Arc<D1Http>, CliError> {
    let get = |k: &str| std::env::var(k).ok().filter(|v| !v.trim().is_empty());
    let database = get("D1_DATABASE_ID").or_else(|| project.and_then(|p| p.database_id.clone()));
    let mut missing = Vec::new();
    for (value, name) in [
        (get("CLOUDFLARE_ACCOUNT_ID"), "CLOUDFLARE_ACCOUNT_ID"),
        (get("CLOUDFLARE_API_TOKEN"), "CLOUDFLARE_API_TOKEN"),
    ] {
        if value.is_none() {
            missing.push(name.to_string());
        }
    }
    if database.is_none() {
        missing.push(match project {
            Some(p) => format!(
                "D1_DATABASE_ID (or database_id for binding `{}` in `{}`)",
                p.binding,
                p.file.display()
            ),
            None => "D1_DATABASE_ID".to_string(),
        });
    }
    if !missing.is_empty() {
        return Err(CliError::Usage(format!(
            "D1 target: set {} (and D1_BASE_URL for a local D1)",
            missing.join(", ")
        )));
    }
    let mut config = D1Config::new(
        get("CLOUDFLARE_ACCOUNT_ID").unwrap_or_default(),
        database.unwrap_or_default(),
        get("CLOUDFLARE_API_TOKEN").unwrap_or_default(),
    );
    if let Some(b) = base_url.map(str::to_string).or_else(|| get("D1_BASE_URL")) {
        config.base_url = b;
    }
    D1Http::new(config).map(Arc::new).map_err(CliError::from)
}

/// `--version-column` / `--no-version`: which columns are tables' versions, by one rule for
/// `generate` and `capture` (see `d1_sync::schema::Column::can_be_version`).
#[derive(clap::Args)]
pub struct VersionArgs {
    /// Version columns (`#[d1(version)]`): a column of one of these names that is INTEGER NOT
    /// NULL and not in the key.
    #[arg(
        long = "version-column",
        value_delimiter = ',',
        default_value = "version"
    )]
    version: Vec<String>,
    /// No version columns.
    #[arg(long, conflicts_with = "version")]
    no_version: bool,
}

impl VersionArgs {
    /// The column names that may be versions: none with `--no-version`.
    pub fn names(&self) -> &[String] {
        if self.no_version {
            &[]
        } else {
            &self.version
        }
    }
}

/// The tables of the schema files at `dir` that have a primary key; their insert-only columns
/// from `insert_only` (`--insert-only`), else from `stored`, the definitions stored with the
/// queue; their version columns by `d1sync generate`'s rule from `version` (the column
/// names `--version-column` gives), then from `stored`.
pub fn schema_registry(
    dir: &Path,
    insert_only: Option<&[String]>,
    version: &[String],
    stored: &[d1_sync::TableDef],
) -> Result<d1_sync::Registry, CliError> {
    let schema = d1_sync::schema::load_schema(dir).map_err(|e| CliError::Usage(e.to_string()))?;
    let flag: Vec<&str> = insert_only
        .into_iter()
        .flatten()
        .map(String::as_str)
        .collect();
    let mut r = d1_sync::Registry::from_schema(&schema, &flag);
    if insert_only.is_none() {
        r.adopt_insert_only(stored);
    }
    let version: Vec<&str> = version.iter().map(String::as_str).collect();
    r.adopt_version_columns(&schema, &version);
    r.adopt_version(stored);
    if r.is_empty() {
        return Err(CliError::Usage(format!(
            "the schema at `{}` has no table with a primary key to sync",
            dir.display()
        )));
    }
    Ok(r)
}

/// The migrations folder: the one given, else the project's `migrations_dir`, else
/// `migrations`.
pub fn schema_dir(given: Option<&Path>, project: Option<&crate::config::Database>) -> PathBuf {
    given
        .map(Path::to_path_buf)
        .or_else(|| project.map(|p| p.migrations_dir.clone()))
        .unwrap_or_else(|| PathBuf::from(d1_sync::schema::migrations::DEFAULT_DIR))
}

/// Builds the target a spec names.
pub fn open_target(
    spec: &TargetSpec,
    base_url: Option<&str>,
    project: Option<&crate::config::Database>,
) -> Result<Arc<dyn Target>, CliError> {
    match spec {
        TargetSpec::D1 => Ok(d1_client(base_url, project)?),
        TargetSpec::Sqlite(p) => Ok(Arc::new(SqliteTarget::open(p)?)),
    }
}

#[cfg(test)]
mod unreadable_tests {
    use super::*;
    use d1_sync::rusqlite::ffi;

    fn message(code: i32) -> String {
        let e = d1_sync::rusqlite::Error::SqliteFailure(ffi::Error::new(code), None);
        match unreadable(Path::new("app.db"), &e) {
            CliError::Failed(m) => m,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_read_only_file_is_not_called_a_non_database() {
        let m = message(ffi::SQLITE_READONLY);
        assert!(m.starts_with("cannot read `app.db`"), "{m}");
        assert!(
            m.contains("write access to the file and to its folder"),
            "{m}"
        );
        assert!(
            message(ffi::SQLITE_NOTADB).starts_with("`app.db` is not an SQLite database"),
            "{}",
            message(ffi::SQLITE_NOTADB)
        );
        assert!(message(ffi::SQLITE_IOERR).starts_with("cannot read `app.db`: "));
    }
}
