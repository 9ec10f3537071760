//! The durable outbox: a queue table in the application's own SQLite file.
//!
//! One file per job: the application's write API (`write`), capture triggers (`capture`), the
//! queue protocol the worker speaks (`protocol`, crate-private), the operator's queries
//! (`operator`), installing and migrating the queue (`install`), and the queue's SQL text
//! (`sql`).
//!
//! A change is enqueued in the application's transaction, so the row write and its record
//! commit together or not at all. Records of one row go out in the order they were written;
//! a record that waits (backoff, a dead letter) holds back the later records of *its* row
//! only.
//!
//! One worker at a time sends a queue: it holds the queue's **lease** (a row of
//! `d1_sync_leases`), renewed before every request. A second process waits while the lease
//! is held, so nothing is ever sent twice at once or out of order; a crashed worker's lease
//! runs out and another takes the queue over. Requests that may be in flight are journaled
//! in `<queue>_requests` before they are sent, and whoever sends the queue next sends them
//! again unchanged, so D1's ledger recognises the ones it applied (see [`crate::ledger`]).
//! Records themselves are only ever written when their state changes: inserted, merged into,
//! acknowledged, charged, held, dead-lettered, purged.
//!
//! A new record **coalesces** into its row's newest pending record when no worker may be
//! sending that one (a claim raises the queue's claimed mark in its own transaction) and
//! merging cannot change what D1 ends up with; the rules are the schema crate's
//! ([`d1_sync_schema::queue`]), one statement run by the typed writes and the capture
//! triggers alike.
//!
//! Each record carries the id of its table's definition (columns, key, insert-only columns),
//! stored once in `<queue>_tables` when the first record of it is queued: whoever drains the
//! queue applies the record with the SQL of the definition it was written under, and a
//! drainer whose registry disagrees pauses with the difference instead of sending other SQL.
//!
//! An acknowledged record leaves the queue table: it is deleted there and a slim entry (ids,
//! table, key, operation, times; no payload) goes to the synced log `<queue>_synced`, which
//! keeps the newest entries (see [`Outbox::purge`]). The queue table so holds only work
//! (pending records and dead letters), and an acknowledgement never rewrites a payload.

mod capture;
mod conflicts;
mod install;
mod operator;
mod protocol;
mod sql;
#[cfg(test)]
mod tests;
mod write;

use rusqlite::Connection;

use crate::error::{Error, Result};

pub(crate) use crate::clock::now_ms;
pub(crate) use capture::restore_capture_of_every_queue;
pub use conflicts::Conflict;
pub(crate) use conflicts::Stale;
pub use operator::{Counts, DeadLetter, Lease, Selection};
pub(crate) use protocol::{Claim, Claimant, Refusal, Setback};

/// The outbox: names the queue table and holds every query on it.
///
/// ```
/// use d1_sync::{D1Sync, Outbox};
/// # fn main() -> Result<(), d1_sync::Error> {
/// #[derive(D1Sync)]
/// #[d1(table = "notes")]
/// struct Note { #[d1(primary_key)] id: i64, body: String }
///
/// let mut conn = d1_sync::rusqlite::Connection::open_in_memory()?;
/// conn.execute_batch("CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT)")?;
/// let outbox = Outbox::new();
/// outbox.install(&conn)?;
///
/// let tx = conn.transaction()?;
/// outbox.save(&tx, &Note { id: 1, body: "hello".into() })?; // the row and its record...
/// tx.commit()?;                                               // ...commit together
/// assert_eq!(outbox.counts(&conn)?.pending, 1);
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outbox {
    table: String,
    q: String,
    /// The quoted name of the synced log.
    log: String,
    /// The quoted name of the journal of requests in flight.
    journal: String,
    /// The quoted name of the table definitions records were written under.
    tables: String,
    /// The quoted name of the conflicts log.
    conflicts: String,
    /// Whether records coalesce into their row's pending record (see [`Outbox::coalescing`]).
    coalesce: bool,
    /// The record a new one merges into, if any (`None` with coalescing off).
    merge_target_sql: Option<String>,
    /// Queues a record with its id as `?7`: the merge target, or `NULL` for a new one.
    insert_sql: String,
    /// Moves the queue's run after each record (see [`d1_sync_schema::queue::run_sql`]).
    run_sql: String,
    define_sql: String,
    /// The newest record of a row.
    newest_of_row_sql: String,
}

impl Default for Outbox {
    fn default() -> Self {
        Outbox::with_table(Outbox::DEFAULT_TABLE)
    }
}

impl Outbox {
    /// The default queue table name.
    pub const DEFAULT_TABLE: &'static str = "d1_sync_queue";

    /// The outbox in [`Outbox::DEFAULT_TABLE`].
    pub fn new() -> Outbox {
        Outbox::default()
    }

    /// The outbox in another table.
    pub fn with_table(name: impl Into<String>) -> Outbox {
        let table = name.into();
        let q = d1_sync_schema::sql::quote_ident(&table);
        let (merge_target_sql, insert_sql) = enqueue_sql(&table, true);
        let run_sql = d1_sync_schema::queue::run_sql(&table, "?1", "?2", "true");
        let log = d1_sync_schema::sql::quote_ident(&format!("{table}_synced"));
        let journal = d1_sync_schema::sql::quote_ident(&format!("{table}_requests"));
        let tables = d1_sync_schema::sql::quote_ident(&format!("{table}_tables"));
        let conflicts = d1_sync_schema::sql::quote_ident(&format!("{table}_conflicts"));
        // Written before each typed record, in its transaction: once the definition is there,
        // a lookup of its id and nothing written.
        let define_sql = format!(
            "INSERT INTO {tables} (id, table_name, definition, created_at) VALUES (?1, ?2, ?3, ?4) ON CONFLICT (id) DO NOTHING"
        );
        let newest_of_row_sql =
            format!("SELECT max(id) FROM {q} WHERE table_name = ?1 AND row_key = ?2");
        Outbox {
            table,
            q,
            log,
            journal,
            tables,
            conflicts,
            coalesce: true,
            merge_target_sql,
            insert_sql,
            run_sql,
            define_sql,
            newest_of_row_sql,
        }
    }

    /// The same outbox with coalescing on (the default) or off.
    ///
    /// On, a record merges at enqueue time into its row's newest pending record when no
    /// request carries that one yet and merging cannot change what D1 ends up with: 1,000
    /// offline edits of one row occupy one record and ship as one row. The rules, and when a
    /// record is appended instead, are in [`d1_sync_schema::queue`]. Off, every write is its
    /// own record and D1 goes through every intermediate state. Capture triggers follow the
    /// setting of the outbox that installs them.
    ///
    /// ```
    /// use d1_sync::{D1Sync, Outbox};
    /// # fn main() -> Result<(), d1_sync::Error> {
    /// #[derive(D1Sync)]
    /// #[d1(table = "notes")]
    /// struct Note { #[d1(primary_key)] id: i64, body: String }
    ///
    /// let mut conn = d1_sync::open(":memory:")?;
    /// conn.execute_batch("CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT)")?;
    /// for outbox in [Outbox::new(), Outbox::new().coalescing(false)] {
    ///     let tx = conn.transaction()?;
    ///     for i in 0..1_000 {
    ///         outbox.save(&tx, &Note { id: 1, body: format!("edit {i}") })?;
    ///     }
    ///     tx.commit()?;
    /// }
    /// // 1 record from the coalescing outbox, then 1,000 from the other.
    /// assert_eq!(Outbox::new().counts(&conn)?.pending, 1_001);
    /// # Ok(()) }
    /// ```
    pub fn coalescing(mut self, on: bool) -> Outbox {
        self.coalesce = on;
        (self.merge_target_sql, self.insert_sql) = enqueue_sql(&self.table, on);
        self
    }

    /// The queue table's name.
    pub fn table_name(&self) -> &str {
        &self.table
    }

    /// The synced log's name: `<queue>_synced`.
    pub fn log_table_name(&self) -> String {
        format!("{}_synced", self.table)
    }

    /// The journal's name: `<queue>_requests`, the requests that may be in flight.
    pub fn journal_table_name(&self) -> String {
        format!("{}_requests", self.table)
    }

    /// The definitions' name: `<queue>_tables`, the table definitions records were written
    /// under (see [`Outbox::definitions`]).
    pub fn tables_table_name(&self) -> String {
        format!("{}_tables", self.table)
    }

    fn index(&self, suffix: &str) -> String {
        d1_sync_schema::sql::quote_ident(&format!("{}_{suffix}", self.table))
    }

    fn map_missing(&self, e: rusqlite::Error) -> Error {
        if e.to_string().contains("no such table") {
            Error::NotInstalled(self.table.clone())
        } else {
            Error::Sqlite(e)
        }
    }
}

/// The enqueue in two statements with parameters (see [`d1_sync_schema::queue`]): the query
/// of the record a new one merges into (none without coalescing), and the insert with that id
/// as `?7`. Two plain statements instead of one with `RETURNING`, which SQLite runs under a
/// statement journal: its copy of each page the statement touches made a typed write about 15%
/// slower.
fn enqueue_sql(queue: &str, coalesce: bool) -> (Option<String>, String) {
    use d1_sync_schema::queue::{enqueue_as_sql, merge_target_sql, Enqueue};
    let e = Enqueue::params(queue, coalesce);
    (
        coalesce.then(|| merge_target_sql(&e)),
        enqueue_as_sql(&e, "?7"),
    )
}

/// Column `i` as text, whatever its storage class (invalid UTF-8 replaced).
fn text_at(r: &rusqlite::Row<'_>, i: usize) -> rusqlite::Result<String> {
    use rusqlite::types::ValueRef;
    Ok(match r.get_ref(i)? {
        ValueRef::Text(t) | ValueRef::Blob(t) => String::from_utf8_lossy(t).into_owned(),
        other => String::from_utf8_lossy(&bytes_of(other)).into_owned(),
    })
}

/// The bytes of any SQLite value (numbers as their text; NULL as nothing).
fn bytes_of(v: rusqlite::types::ValueRef<'_>) -> Vec<u8> {
    use rusqlite::types::ValueRef;
    match v {
        ValueRef::Null => Vec::new(),
        ValueRef::Integer(i) => i.to_string().into_bytes(),
        ValueRef::Real(f) => f.to_string().into_bytes(),
        ValueRef::Text(t) | ValueRef::Blob(t) => t.to_vec(),
    }
}

/// An attempts count as stored; anything but a non-negative integer counts as 0.
fn attempts_of(v: rusqlite::types::ValueRef<'_>) -> u32 {
    match v {
        rusqlite::types::ValueRef::Integer(i) => u32::try_from(i).unwrap_or(0),
        _ => 0,
    }
}

/// Opens (creating if needed) the application's database with the settings the outbox wants
/// — WAL, `synchronous = FULL` (a returned commit survives power loss), foreign keys on, a 5 s
/// busy timeout — and installs the default outbox. Processes may open one file at once, a new
/// one included: each waits for the others' lock.
pub fn open(path: impl AsRef<std::path::Path>) -> Result<Connection> {
    let conn = open_with(path.as_ref(), "FULL")?;
    conn.execute_batch("PRAGMA foreign_keys = ON;")?;
    Outbox::new().install(&conn)?;
    Ok(conn)
}

/// How long a connection d1-sync opens waits for another one's lock.
pub(crate) const BUSY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// Opens a database in WAL mode with `synchronous = <synchronous>` and a 5 s busy timeout.
pub(crate) fn open_with(path: &std::path::Path, synchronous: &str) -> Result<Connection> {
    let db = |source| Error::Database {
        path: path.to_path_buf(),
        source,
    };
    let conn = Connection::open(path).map_err(db)?;
    conn.busy_timeout(BUSY_TIMEOUT).map_err(db)?;
    crate::txn::set_wal(&conn, BUSY_TIMEOUT).map_err(db)?;
    conn.execute_batch(&format!("PRAGMA synchronous = {synchronous};"))
        .map_err(db)?;
    Ok(conn)
}
