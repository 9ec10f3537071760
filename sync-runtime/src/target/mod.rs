//! Where changes go: D1 over its REST API ([`D1Http`]) or a local SQLite file
//! ([`SqliteTarget`]), behind one small trait.

mod budget;
mod classify;
mod d1_http;
mod sqlite;

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

pub use budget::RequestBudget;
pub use classify::classify_response;
pub use d1_http::{result_column, D1Config, D1Http};
pub use sqlite::{SqliteMode, SqliteTarget};

pub use crate::change::Change;
pub use crate::ledger::{Applied, RequestId, Superseded};
pub use crate::pack::{PackLimits, Param, StaleCheck, Statement};
use crate::row::TableDef;

/// A boxed future, so targets can be used as trait objects.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// One request, in both forms: the SQL statements D1 receives (empty when the target said
/// it does not want them), and the checked changes they carry, in order.
#[derive(Debug, Clone, Copy)]
pub struct Batch<'a> {
    /// The request's id. A target that builds its own statements (it said no to
    /// [`Target::wants_statements`]) must write it to the ledger in the same transaction, and
    /// answer [`Applied::Before`] when the ledger refuses it (see [`crate::ledger`]).
    pub request: &'a RequestId,
    /// The statements: `PRAGMA defer_foreign_keys = on`, the ledger write of
    /// [`Batch::request`], then the changes.
    pub statements: &'a [Statement],
    /// The changes, in queue order.
    pub changes: &'a [Change],
    /// Which statements list the rows the version guard will refuse: a target that runs
    /// [`Batch::statements`] reads their result rows (`i`, `v`) and answers the changes they
    /// name as [`Superseded`].
    pub checks: &'a [StaleCheck],
}

impl Batch<'_> {
    /// The records a check's result rows name: `rows` holds `(i, v)` pairs of the check at
    /// `check`.
    pub fn superseded(
        &self,
        check: &StaleCheck,
        rows: impl IntoIterator<Item = (i64, Option<i64>)>,
    ) -> Vec<Superseded> {
        rows.into_iter()
            .filter_map(|(i, held)| {
                let at = check.first.checked_add(usize::try_from(i).ok()?)?;
                Some(Superseded {
                    id: self.changes.get(at)?.id,
                    held,
                })
            })
            .collect()
    }
}

/// A database that applies a request atomically, all or none, and exactly once.
pub trait Target: Send + Sync + 'static {
    /// Applies the batch as one transaction. `Ok` only when all of it was applied, by this
    /// delivery ([`Applied::Now`]) or by an earlier one of the same request
    /// ([`Applied::Before`], the ledger refused this one).
    fn execute<'a>(&'a self, batch: Batch<'a>) -> BoxFuture<'a, Result<Applied, TargetError>>;

    /// Gets ready for the first request: whatever [`Target::execute`] would otherwise set up
    /// first (a connection, the target's own tables). The worker calls it once as it starts,
    /// beside its first read of the queue, so neither waits for the other, and awaits it
    /// before its first request: an error is handled as that request's own (a rate limit
    /// waits out `Retry-After`, refused credentials pause the worker, anything else backs it
    /// off), and the request goes after it, as `execute` sets up again. The default does
    /// nothing.
    fn prepare<'a>(&'a self) -> BoxFuture<'a, Result<(), TargetError>> {
        Box::pin(async { Ok(()) })
    }

    /// How large a request may be.
    fn limits(&self) -> PackLimits {
        PackLimits::default()
    }

    /// Whether [`Batch::statements`] should be built (D1's wire form). A target that applies
    /// [`Batch::changes`] itself says no and saves the packing.
    fn wants_statements(&self) -> bool {
        true
    }

    /// A short description for logs and reports (never a secret).
    fn describe(&self) -> String;

    /// The names of the migrations the database records as applied in `table` (wrangler's
    /// `d1_migrations`), in the order applied: empty when it has no such table, `None` when the
    /// target cannot tell. The worker asks when a record is refused for a missing table or
    /// column, to wait for a migration instead of charging the record.
    fn applied_migrations<'a>(
        &'a self,
        table: &'a str,
    ) -> BoxFuture<'a, Result<Option<Vec<String>>, TargetError>> {
        let _ = table;
        Box::pin(async { Ok(None) })
    }

    /// The version of the delete the database recorded for a row of `table` it does not hold
    /// (its tombstone, see [`d1_sync_schema::guard`]); `row_key` is the row's key as a JSON
    /// array. `None` when it holds the row, recorded no delete of it, or cannot tell. The
    /// worker asks when a write is refused for a foreign key: a row whose parent another
    /// device deleted is superseded by that delete, not failed.
    fn deleted<'a>(
        &'a self,
        table: &'a TableDef,
        row_key: &'a str,
    ) -> BoxFuture<'a, Result<Option<i64>, TargetError>> {
        let _ = (table, row_key);
        Box::pin(async { Ok(None) })
    }

    /// Every row of `table` as [`crate::verify::dump_sql`] renders it, to compare with the
    /// local file ([`crate::verify::compare`]); `None` when the target cannot be read back.
    fn dump<'a>(
        &'a self,
        table: &'a TableDef,
    ) -> BoxFuture<'a, Result<Option<Vec<String>>, TargetError>> {
        let _ = table;
        Box::pin(async { Ok(None) })
    }
}

macro_rules! forward_target {
    ($ty:ty) => {
        impl<T: Target + ?Sized> Target for $ty {
            fn execute<'a>(
                &'a self,
                batch: Batch<'a>,
            ) -> BoxFuture<'a, Result<Applied, TargetError>> {
                (**self).execute(batch)
            }
            fn prepare<'a>(&'a self) -> BoxFuture<'a, Result<(), TargetError>> {
                (**self).prepare()
            }
            fn limits(&self) -> PackLimits {
                (**self).limits()
            }
            fn wants_statements(&self) -> bool {
                (**self).wants_statements()
            }
            fn describe(&self) -> String {
                (**self).describe()
            }
            fn applied_migrations<'a>(
                &'a self,
                table: &'a str,
            ) -> BoxFuture<'a, Result<Option<Vec<String>>, TargetError>> {
                (**self).applied_migrations(table)
            }
            fn deleted<'a>(
                &'a self,
                table: &'a TableDef,
                row_key: &'a str,
            ) -> BoxFuture<'a, Result<Option<i64>, TargetError>> {
                (**self).deleted(table, row_key)
            }
            fn dump<'a>(
                &'a self,
                table: &'a TableDef,
            ) -> BoxFuture<'a, Result<Option<Vec<String>>, TargetError>> {
                (**self).dump(table)
            }
        }
    };
}
forward_target!(Box<T>);
forward_target!(std::sync::Arc<T>);

/// Why a request was not applied, sorted by what the worker does about it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TargetError {
    /// The target may or may not have applied it (connection error, timeout, 5xx, a body
    /// that is not the expected JSON). Retried later; no record is charged an attempt.
    #[error("transient: {0}")]
    Transient(String),
    /// Too many requests: wait at least `retry_after` (HTTP 429). No record is charged.
    #[error("rate limited{}: {message}", retry_after.map(|d| format!(" (retry after {} s)", d.as_secs_f64())).unwrap_or_default())]
    RateLimited {
        /// The server's `Retry-After`.
        retry_after: Option<Duration>,
        /// The server's message.
        message: String,
    },
    /// Credentials refused (401/403, or a malformed token): the worker pauses and dead-letters
    /// nothing.
    #[error("authentication failed (HTTP {status}): {message}")]
    Auth {
        /// HTTP status.
        status: u16,
        /// The server's message.
        message: String,
    },
    /// The target is misconfigured (no such database, an unexpected 4xx): the worker pauses.
    #[error("target misconfigured (HTTP {status}): {message}")]
    Config {
        /// HTTP status.
        status: u16,
        /// The server's message.
        message: String,
    },
    /// A statement was refused (an SQL error: constraint, type, size). The request was rolled
    /// back; some record in it is at fault, and the worker splits the request to find it.
    #[error("rejected: {0}")]
    Rejected(String),
    /// The request was refused for its size (HTTP 413) and not applied. The worker splits it
    /// like a rejected one and packs smaller requests from then on.
    #[error("request too large: {0}")]
    TooLarge(String),
    /// The request was refused for a missing table or column, and the database lacks
    /// migrations the application's file has applied: the worker pauses, charges nothing, and
    /// goes on by itself once they are applied.
    #[error("D1 lacks migration {}; run `d1sync migrate`", .0.join(", "))]
    MissingMigrations(Vec<String>),
}

/// Whether a refusal is a foreign key's: a parent row missing at the end of the request.
pub fn is_foreign_key_error(message: &str) -> bool {
    message.contains("FOREIGN KEY constraint failed")
}

/// Whether a refusal says a table or column is missing: the database may be behind the
/// application's migrations.
pub fn is_schema_error(message: &str) -> bool {
    ["no such table", "no such column", "has no column named"]
        .iter()
        .any(|m| message.contains(m))
}
