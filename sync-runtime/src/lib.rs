//! # d1-sync
//!
//! Keeps Cloudflare D1 in step with an application's local SQLite database.
//!
//! - `#[derive(D1Sync)]` turns a row struct into a [`SyncRow`]: the column whitelist, the
//!   upsert and the delete SQL, built and checked at compile time.
//!
//! ```
//! use d1_sync::{D1Sync, SyncRow};
//!
//! #[derive(D1Sync)]
//! struct Session {
//!     #[d1(primary_key)]
//!     id: String,
//!     message_count: i64,
//!     summary: Option<String>,
//! }
//! assert_eq!(Session::TABLE, "session");
//! assert_eq!(Session::PRIMARY_KEY, ["id"]);
//! ```

// The derive names everything as `::d1_sync::...`; this makes that path work inside this
// crate's own tests and doctests too.
extern crate self as d1_sync;

pub mod row;
pub mod value;

pub use d1_sync_derive::D1Sync;
pub use row::{SyncRow, TableDef};
pub use value::{ToValue, Value, ValueKind};

/// SQL builders and the schema model, for callers that build statements themselves.
pub use d1_sync_schema as schema;

/// The rusqlite this crate is built with: take transactions and connections from it.
pub use rusqlite;

/// What the derive's expansion names. Not public API: it may change in any release.
#[doc(hidden)]
pub mod __private {
    pub use crate::row::SyncRow;
    pub use crate::value::{ToValue, Value, ValueKind};
    pub use core::option::Option;
    pub use std::vec::Vec;
}
