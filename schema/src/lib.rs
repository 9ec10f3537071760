#![warn(missing_docs)]
//! # d1-sync-schema
//!
//! The plain library under `#[derive(D1Sync)]`, the runtime and the CLI:
//!
//! - [`model`]: the table model ([`Table`], [`Column`], [`Affinity`], keys, unique sets);
//! - [`sql`]: pure builders of every SQL statement d1-sync sends (identifiers always quoted,
//!   upserts with `ON CONFLICT (pk) DO UPDATE`, deletes by primary key only, and the
//!   many-rows-per-statement `json_each` forms the worker ships to D1);
//! - [`capture`]: the triggers that capture raw SQL writes into the outbox;
//! - [`queue`]: the statement that queues a record, coalescing it into the row's pending one;
//! - [`definition`]: a table's definition as stored beside queued records, and its id;
//! - [`guard`]: the version guard of `#[d1(version)]` (no stale write overwrites a newer one)
//!   and the tombstones that keep deletes;
//! - [`limits`]: D1's documented limits, which the derive and the runtime respect;
//! - [`load`]: schema files (D1 migrations) applied to an in-memory SQLite and read back
//!   into the model — SQLite is the parser;
//! - [`names`]: case conversion and "did you mean";
//! - `codegen` (feature `codegen`): Rust row structs rendered from the model.
//!
//! Nothing here knows about proc-macros or networks, so all of it is unit-tested directly.
//!
//! ```
//! use d1_sync_schema::sql;
//! let upsert = sql::upsert_sql("items", &["id", "name", "created_at"], &["id"], &["created_at"]);
//! assert_eq!(
//!     upsert,
//!     r#"INSERT INTO "items" ("id", "name", "created_at") VALUES (?1, ?2, ?3) ON CONFLICT ("id") DO UPDATE SET "name" = excluded."name""#
//! );
//! assert_eq!(sql::delete_sql("items", &["id"]), r#"DELETE FROM "items" WHERE "id" = ?1"#);
//! ```

pub mod capture;
pub mod cascade;
pub mod definition;
pub mod guard;
pub mod ledger;
pub mod limits;
pub mod load;
pub mod migrations;
pub mod model;
pub mod names;
pub mod queue;
pub mod sql;

#[cfg(feature = "codegen")]
pub mod codegen;

pub use load::{load_schema, load_schema_cached, SchemaError};
pub use model::{Affinity, Column, ForeignKey, Schema, Table};
