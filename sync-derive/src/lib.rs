//! `#[derive(D1Sync)]` — the thin proc-macro of d1-sync.
//!
//! Parsing (`attr`, `ast`) → checks (`valid`, and `schema_check` against the project's
//! schema files) → expansion (`expand`). Every mistake is collected (`ctxt`) and reported in
//! one build, each on its own span; on error a stub impl (`fallback`) is emitted too, so the
//! user sees the real mistake and not a cascade of "trait not implemented" errors.
//! The SQL text and the schema model come from `d1-sync-schema`, an ordinary library.
//!
//! Use it through the runtime crate: `use d1_sync::D1Sync;`. The attributes are documented
//! on [`macro@D1Sync`].

mod ast;
mod attr;
mod ctxt;
mod expand;
mod fallback;
mod schema_check;
mod valid;

use proc_macro::TokenStream;

/// Implements `d1_sync::SyncRow` for a struct with named fields.
///
/// Container attributes, `#[d1(...)]` on the struct:
/// - `table = "name"`: the table (default: the struct's name in snake_case);
/// - `rename_all = "camelCase"`: column names from field names, by a serde-style rule;
/// - `schema = "migrations"`: check the struct against these schema files (a `.sql` file or
///   a folder of them applied in name order), relative to the crate's manifest directory (or
///   to `D1_SYNC_MANIFEST_DIR` when set).
///
/// Field attributes:
/// - `primary_key`: part of the key (several fields make a composite key);
/// - `rename = "column"`: the column's name;
/// - `insert_only`: written on insert, never changed by an update (`created_at`);
/// - `version`: the row's version, one integer field at most, not in the key, not an
///   `Option` (with `schema`, an `INTEGER NOT NULL` column). Every write then carries it, and
///   only a newer version overwrites a row, locally and in D1; a delete carries the version of
///   the row it deleted (see `d1_sync::schema::guard`, and `d1_sync::Hlc` to stamp it);
/// - `skip`: not a column.
#[proc_macro_derive(D1Sync, attributes(d1))]
pub fn derive_d1_sync(input: TokenStream) -> TokenStream {
    let input = syn::parse_macro_input!(input as syn::DeriveInput);
    expand::derive(&input).into()
}
