//! The runtime's error type.

use std::path::PathBuf;

/// What went wrong, in words a user can act on.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The local database could not be opened or set up.
    #[error("local database `{}`: {source}", path.display())]
    Database {
        /// The file.
        path: PathBuf,
        /// SQLite's error.
        source: rusqlite::Error,
    },
    /// An outbox operation failed in SQLite.
    #[error("outbox: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// The outbox table does not exist on this connection.
    #[error("the outbox table `{0}` does not exist: call `Outbox::install(&conn)` (or open the database with `d1_sync::open`) first")]
    NotInstalled(String),
    /// The outbox table was made by a newer d1-sync.
    #[error("the outbox table `{table}` is at version {found}, newer than this d1-sync understands ({supported}); upgrade d1-sync")]
    QueueTooNew {
        /// Queue table.
        table: String,
        /// Version found.
        found: i64,
        /// Newest version this build knows.
        supported: i64,
    },
    /// A partial update named a column the row type does not have.
    #[error("`{column}` is not a column of table `{table}`")]
    UnknownColumn {
        /// Table.
        table: String,
        /// Column.
        column: String,
    },
    /// A partial update named a key or insert-only column.
    #[error("`{column}` of table `{table}` is part of the key or insert-only, so an update cannot set it")]
    NotUpdatable {
        /// Table.
        table: String,
        /// Column.
        column: String,
    },
    /// A key had the wrong number of values.
    #[error("table `{table}` has {want} primary-key column(s), but {got} key value(s) were given")]
    KeyArity {
        /// Table.
        table: String,
        /// Key columns.
        want: usize,
        /// Values given.
        got: usize,
    },
    /// Records in the queue were written under another definition of their table than the
    /// drainer's registry has, which would send other SQL than the writer meant. Nothing is
    /// sent or dead-lettered; the worker pauses until it is restarted with a registry that
    /// agrees.
    #[error("table `{table}`: {difference}. A drainer applies records as they were written, so it refuses a registry that disagrees: drain these records with the definition they were written under, or fix the registry")]
    DefinitionMismatch {
        /// The table.
        table: String,
        /// What differs, in words.
        difference: String,
    },
    /// Capture cannot be installed on a table.
    #[error("cannot capture writes to `{table}`: {reason}")]
    Capture {
        /// The table.
        table: String,
        /// Why not.
        reason: String,
    },
    /// Bad configuration.
    #[error("{0}")]
    Config(String),
    /// A task on the blocking pool (a query of the local queue) panicked or was cancelled.
    #[error("a background task of the worker failed: {0}")]
    Task(String),
    /// The worker is not running (never started, or shut down).
    #[error("the sync worker is not running")]
    NotRunning,
    /// The migration files could not be read, or SQLite refuses one of them.
    #[error("migrations: {0}")]
    Migrations(#[from] d1_sync_schema::SchemaError),
    /// A migration failed where it was applied; nothing of it was recorded.
    #[error("migration `{name}` failed on {target}: {message}; nothing of it was applied")]
    MigrationFailed {
        /// The file name.
        name: String,
        /// Where: the app's file or D1.
        target: String,
        /// The database's message.
        message: String,
    },
    /// A database records migrations that the folder does not have.
    #[error("{target} records migration(s) {} that the migrations folder lacks: restore the file(s), or the folder is not this database's", names.join(", "))]
    MigrationsMissing {
        /// Where: the app's file or D1.
        target: String,
        /// The names recorded there and missing here.
        names: Vec<String>,
    },
    /// D1 could not be reached or refused a request (set-up, migrations).
    #[error("D1: {0}")]
    Target(#[from] crate::target::TargetError),
}

/// `Result` with [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
