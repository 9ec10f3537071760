//! The seed's seven tables: D1 migrations in `migrations/` and their row structs in [`rows`].
//!
//! The structs are checked against the migrations at compile time (`#[d1(schema = ...)]`).

pub mod rows;
pub mod workload;

// `MIGRATIONS`: every file of `migrations/`, listed by `build.rs`.
include!(concat!(env!("OUT_DIR"), "/migrations.rs"));

/// Applies [`MIGRATIONS`] to a connection.
pub fn apply_migrations(conn: &d1_sync::rusqlite::Connection) -> d1_sync::rusqlite::Result<()> {
    for (_, sql) in MIGRATIONS {
        conn.execute_batch(sql)?;
    }
    Ok(())
}

/// A registry of the seven tables, for a worker (generated with the structs).
pub use rows::registry;

/// The migrations folder, for tools that load it from disk.
pub fn migrations_dir() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("migrations")
}
