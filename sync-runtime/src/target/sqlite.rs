//! [`SqliteTarget`]: the same statements applied to a local SQLite file — the embedded
//! default (`d1sync demo`) and a mirror without Cloudflare.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use rusqlite::{params_from_iter, Connection, ErrorCode};

use super::{BoxFuture, PackLimits, Statement, Target, TargetError};
use crate::error::Error;

/// A local SQLite file standing in for D1: one transaction per request, foreign keys on (as
/// on D1), and an SQL error rolls the whole request back (as a D1 batch does).
pub struct SqliteTarget {
    conn: Arc<Mutex<Connection>>,
    path: PathBuf,
    limits: PackLimits,
}

impl std::fmt::Debug for SqliteTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteTarget")
            .field("path", &self.path)
            .finish()
    }
}

impl SqliteTarget {
    /// Opens (creating if needed) the file at `path`.
    pub fn open(path: impl AsRef<Path>) -> Result<SqliteTarget, Error> {
        let path = path.as_ref().to_path_buf();
        let conn = Connection::open(&path).map_err(|e| Error::Database {
            path: path.clone(),
            source: e,
        })?;
        conn.execute_batch("PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL; PRAGMA foreign_keys = ON; PRAGMA busy_timeout = 5000;")
            .map_err(|e| Error::Database { path: path.clone(), source: e })?;
        // One statement text per shape (table, operation, columns): more than rusqlite's 16.
        conn.set_prepared_statement_cache_capacity(256);
        Ok(SqliteTarget {
            conn: Arc::new(Mutex::new(conn)),
            path,
            limits: PackLimits::default(),
        })
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Runs `f` on the target's connection (set-up and inspection).
    pub fn with_connection<R>(&self, f: impl FnOnce(&Connection) -> R) -> R {
        let guard = match self.conn.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        };
        f(&guard)
    }
}

fn apply(conn: &mut Connection, statements: &[Statement]) -> Result<(), TargetError> {
    let classify = |e: rusqlite::Error| match e.sqlite_error_code() {
        Some(
            ErrorCode::DatabaseBusy
            | ErrorCode::DatabaseLocked
            | ErrorCode::SystemIoFailure
            | ErrorCode::DiskFull,
        ) => TargetError::Transient(e.to_string()),
        _ => TargetError::Rejected(match &e {
            rusqlite::Error::SqliteFailure(_, Some(m)) => m.clone(),
            other => other.to_string(),
        }),
    };
    let tx = conn.transaction().map_err(classify)?;
    for s in statements {
        let mut stmt = tx.prepare_cached(&s.sql).map_err(classify)?;
        stmt.execute(params_from_iter(s.params.iter()))
            .map_err(classify)?;
    }
    tx.commit().map_err(classify)
}

impl Target for SqliteTarget {
    fn execute<'a>(
        &'a self,
        statements: &'a [Statement],
    ) -> BoxFuture<'a, Result<(), TargetError>> {
        let conn = self.conn.clone();
        let statements = statements.to_vec();
        Box::pin(async move {
            tokio::task::spawn_blocking(move || {
                let mut guard = match conn.lock() {
                    Ok(g) => g,
                    Err(poisoned) => poisoned.into_inner(),
                };
                apply(&mut guard, &statements)
            })
            .await
            .map_err(|e| TargetError::Transient(format!("the SQLite task failed: {e}")))?
        })
    }

    fn limits(&self) -> PackLimits {
        self.limits
    }

    fn describe(&self) -> String {
        format!("SQLite file {}", self.path.display())
    }
}
