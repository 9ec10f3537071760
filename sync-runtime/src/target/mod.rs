//! Where changes go: D1 over its REST API ([`D1Http`]) or a local SQLite file
//! ([`SqliteTarget`]), behind one small trait.

mod classify;
mod d1_http;
mod sqlite;

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

pub use classify::classify_response;
pub use d1_http::{D1Config, D1Http};
pub use sqlite::SqliteTarget;

pub use crate::pack::{PackLimits, Param, Statement};

/// A boxed future, so targets can be used as trait objects.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A database that applies a request's statements atomically, all or none.
pub trait Target: Send + Sync + 'static {
    /// Runs `statements` as one transaction. `Ok` only when every statement was applied.
    fn execute<'a>(&'a self, statements: &'a [Statement])
        -> BoxFuture<'a, Result<(), TargetError>>;

    /// How large a request may be.
    fn limits(&self) -> PackLimits {
        PackLimits::default()
    }

    /// A short description for logs and reports (never a secret).
    fn describe(&self) -> String;
}

impl<T: Target + ?Sized> Target for Box<T> {
    fn execute<'a>(
        &'a self,
        statements: &'a [Statement],
    ) -> BoxFuture<'a, Result<(), TargetError>> {
        (**self).execute(statements)
    }
    fn limits(&self) -> PackLimits {
        (**self).limits()
    }
    fn describe(&self) -> String {
        (**self).describe()
    }
}

impl<T: Target + ?Sized> Target for std::sync::Arc<T> {
    fn execute<'a>(
        &'a self,
        statements: &'a [Statement],
    ) -> BoxFuture<'a, Result<(), TargetError>> {
        (**self).execute(statements)
    }
    fn limits(&self) -> PackLimits {
        (**self).limits()
    }
    fn describe(&self) -> String {
        (**self).describe()
    }
}

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
}
