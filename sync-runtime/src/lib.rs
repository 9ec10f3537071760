#![warn(missing_docs)]
//! # d1-sync
//!
//! Keeps Cloudflare D1 in step with an application's local SQLite database, without losing a
//! write, in order, and without hand-written SQL.
//!
//! - `#[derive(D1Sync)]` turns a row struct into a [`SyncRow`]: the column whitelist, the
//!   upsert and the delete SQL, built — and, with `#[d1(schema = "migrations")]`, checked
//!   against the project's D1 migrations — at compile time.
//! - The [`Outbox`] is a queue table in the application's own SQLite file: a change is
//!   enqueued in the same transaction as the row write, raw SQL writes too once a table is
//!   captured ([`Outbox::capture`]), and a row's pending records coalesce into their net
//!   effect ([`Outbox::coalescing`]).
//! - With a `#[d1(version)]` field, many devices can write one D1: only a newer version
//!   overwrites a row, a delete leaves a tombstone, and a stale write is *superseded* (logged,
//!   see [`Outbox::conflicts`]), never failed. [`Hlc`] stamps the versions.
//! - The [`SyncWorker`] drains it to a [`Target`] — D1 over its REST API ([`D1Http`]) or a
//!   local SQLite file ([`SqliteTarget`]) — in batches, in per-row order, with backoff,
//!   pauses on rate limits and refused credentials, and a dead-letter state that never drops
//!   a record silently.
//!
//! ```
//! use d1_sync::{D1Sync, Outbox, SqliteTarget, SyncWorker};
//!
//! #[derive(D1Sync)]
//! #[d1(table = "notes")]
//! struct Note {
//!     #[d1(primary_key)]
//!     id: i64,
//!     body: String,
//!     #[d1(insert_only)]
//!     created_at: i64,
//! }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! # let dir = tempfile::tempdir()?;
//! # let (app_path, mirror_path) = (dir.path().join("app.db"), dir.path().join("mirror.db"));
//! let schema = "CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT NOT NULL, created_at INTEGER NOT NULL)";
//! let mut app = d1_sync::open(&app_path)?;          // WAL, synchronous = FULL, outbox installed
//! app.execute_batch(schema)?;
//! let mirror = SqliteTarget::open(&mirror_path)?;   // or D1Http::new(D1Config::from_env()?)?
//! mirror.with_connection(|c| c.execute_batch(schema))?;
//!
//! let worker = SyncWorker::builder(&app_path, mirror).register::<Note>().build()?;
//! worker.start()?;
//!
//! let tx = app.transaction()?;
//! Outbox::new().save(&tx, &Note { id: 1, body: "hello".into(), created_at: 1 })?;
//! tx.commit()?;
//! worker.notify();
//!
//! worker.flush().await?;
//! assert_eq!(worker.stats().await?.records_synced, 1);
//! worker.shutdown().await?;
//! # Ok(()) }
//! ```

// The derive names everything as `::d1_sync::...`; this makes that path work inside this
// crate's own tests and doctests too.
extern crate self as d1_sync;

// `change`, `codec` and `pack` are internal: hidden doors for the benchmarks and the
// cross-crate tests, not public API; they may change in any release. What a `Target` needs of
// them (`Change`, `Statement`, `Param`, `PackLimits`) is re-exported from `target`.
pub mod backoff;
#[doc(hidden)]
pub mod change;
pub mod clock;
#[doc(hidden)]
pub mod codec;
#[doc(hidden)]
pub mod commute;
pub mod error;
mod guard;
pub mod hlc;
pub mod ledger;
pub mod migrate;
pub mod outbox;
#[doc(hidden)]
pub mod pack;
pub mod registry;
pub mod row;
pub mod sizing;
pub mod stats;
pub mod target;
mod txn;
pub mod value;
pub mod verify;
pub mod worker;

pub use backoff::Backoff;
pub use d1_sync_derive::D1Sync;
pub use error::{Error, Result};
pub use hlc::Hlc;
pub use migrate::{migrate, MigrationReport};
pub use outbox::{open, Conflict, Counts, DeadLetter, Outbox, Selection};
pub use registry::Registry;
pub use row::{SyncRow, TableDef, VersionField};
pub use stats::{Stats, WorkerState};
pub use target::{D1Config, D1Http, SqliteMode, SqliteTarget, Target, TargetError};
pub use value::{ToValue, Value, ValueKind};
pub use worker::{Step, SyncWorker, WorkerBuilder, WorkerConfig};

/// SQL builders and the schema model, for callers that build statements themselves.
pub use d1_sync_schema as schema;

/// The rusqlite this crate is built with: take transactions and connections from it.
pub use rusqlite;

/// What the derive's expansion names. Not public API: it may change in any release.
#[doc(hidden)]
pub mod __private {
    pub use crate::row::{SyncRow, VersionField};
    pub use crate::value::{ToValue, Value, ValueKind};
    pub use std::vec::Vec;
}
