//! [`Hlc`]: a hybrid logical clock for `#[d1(version)]` columns.
//!
//! A version is `(ms since 2025-01-01 UTC) << 12 | counter`: it follows the device's wall
//! clock, and a counter orders the writes of one millisecond. Each call returns a version above
//! every version this clock returned before *and* above the wall clock: a clock set back, a
//! restart, or two processes writing one file never give a version twice or go backwards. The
//! last version is kept in the application's file (`d1_sync_clock`), written in the caller's
//! connection, so a version used in a committed write is never given again, and a rolled-back
//! one costs nothing.
//!
//! Clock skew between devices decides which of two concurrent edits wins (the one from the
//! clock ahead), never whether a newer edit of one device is overwritten by its own older one.
//! A device that learns of a newer version (its record was superseded: [`crate::Outbox::conflicts`]
//! shows the version D1 held) can [`Hlc::observe`] it, so its next writes win again. Versions
//! stay below 2^53 until the year 2094, so JavaScript reads them exactly too.
//!
//! ```
//! use d1_sync::{D1Sync, Hlc, Outbox};
//! # fn main() -> Result<(), d1_sync::Error> {
//! #[derive(D1Sync)]
//! #[d1(table = "notes")]
//! struct Note { #[d1(primary_key)] id: i64, body: String, #[d1(version)] version: i64 }
//!
//! let mut conn = d1_sync::open(":memory:")?;
//! conn.execute_batch("CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT, version INTEGER NOT NULL)")?;
//! let (outbox, clock) = (Outbox::new(), Hlc::new());
//! let tx = conn.transaction()?;
//! let mut note = Note { id: 1, body: "draft".into(), version: 0 };
//! clock.stamp(&tx, &mut note)?;
//! outbox.save(&tx, &note)?;
//! let first = note.version;
//! note.body = "final".into();
//! clock.stamp(&tx, &mut note)?;
//! assert!(note.version > first);
//! assert!(outbox.save(&tx, &note)?.is_some());
//! tx.commit()?;
//! # Ok(()) }
//! ```

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rusqlite::{params, Connection};

use crate::error::{Error, Result};
use crate::row::SyncRow;

/// 2025-01-01T00:00:00Z in ms since the Unix epoch: where versions start.
pub const EPOCH_MS: i64 = 1_735_689_600_000;

/// Bits of the counter under the milliseconds.
const COUNTER_BITS: u32 = 12;

/// The table the clocks of a file live in.
const TABLE: &str = "d1_sync_clock";

/// The wall clock, in ms since the Unix epoch.
pub type PhysicalClock = Arc<dyn Fn() -> i64 + Send + Sync>;

/// A hybrid logical clock kept in the application's file (see the [module docs](self)).
#[derive(Clone)]
pub struct Hlc {
    name: String,
    physical: PhysicalClock,
    max_ahead: Duration,
}

impl std::fmt::Debug for Hlc {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hlc")
            .field("name", &self.name)
            .field("max_ahead", &self.max_ahead)
            .finish()
    }
}

impl Default for Hlc {
    fn default() -> Self {
        Hlc::named("default")
    }
}

/// The version of a wall-clock time in ms since the Unix epoch (counter 0).
///
/// ```
/// use d1_sync::hlc::{version_at, wall_ms_of, EPOCH_MS};
/// assert_eq!(version_at(EPOCH_MS), 0);
/// assert_eq!(wall_ms_of(version_at(EPOCH_MS + 1_234) + 7), EPOCH_MS + 1_234);
/// ```
pub fn version_at(wall_ms: i64) -> i64 {
    wall_ms.saturating_sub(EPOCH_MS).max(0) << COUNTER_BITS
}

/// The wall-clock time (ms since the Unix epoch) a version stands for.
pub fn wall_ms_of(version: i64) -> i64 {
    (version >> COUNTER_BITS) + EPOCH_MS
}

fn system_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

impl Hlc {
    /// The file's default clock, on the system clock.
    pub fn new() -> Hlc {
        Hlc::default()
    }

    /// A clock of its own name in the file (several apps, or tests, sharing one file).
    pub fn named(name: impl Into<String>) -> Hlc {
        Hlc {
            name: name.into(),
            physical: Arc::new(system_ms),
            max_ahead: Duration::from_secs(24 * 3600),
        }
    }

    /// The same clock on another wall clock (ms since the Unix epoch): for tests, and for
    /// simulating devices whose clocks disagree.
    pub fn with_physical_clock(mut self, clock: impl Fn() -> i64 + Send + Sync + 'static) -> Hlc {
        self.physical = Arc::new(clock);
        self
    }

    /// How far ahead of the wall clock an [`Hlc::observe`]d version may be (default: a day).
    /// A version further ahead comes from a broken clock; following it would make every later
    /// write of this device carry it.
    pub fn max_ahead(mut self, d: Duration) -> Hlc {
        self.max_ahead = d;
        self
    }

    /// Runs `write` (a statement on the clocks' table), creating the table first if it is
    /// missing. The write goes first: in a deferred transaction, a first statement that only
    /// read would pin a snapshot a concurrent writer can make stale, and the write after it
    /// would fail with "database is locked" instead of waiting its turn.
    fn write<R>(
        &self,
        conn: &Connection,
        write: impl Fn(&Connection) -> rusqlite::Result<R>,
    ) -> Result<R> {
        match write(conn) {
            Err(e) if e.to_string().contains(&format!("no such table: {TABLE}")) => {
                conn.execute_batch(&format!(
                    "CREATE TABLE IF NOT EXISTS {TABLE} (name TEXT PRIMARY KEY NOT NULL, last INTEGER NOT NULL)"
                ))?;
                Ok(write(conn)?)
            }
            other => Ok(other?),
        }
    }

    /// The next version: above every version this clock gave before (in this file), and not
    /// below the wall clock. Written in `conn`, in its transaction if one is open.
    pub fn now(&self, conn: &Connection) -> Result<i64> {
        let wall = version_at((self.physical)());
        let upsert = format!(
            "INSERT INTO {TABLE} (name, last) VALUES (?1, ?2)
             ON CONFLICT (name) DO UPDATE SET last = max(last + 1, excluded.last)"
        );
        if conn.is_autocommit() {
            // One statement, so no other connection's stamp comes between the write and the
            // read of what it wrote.
            return self.write(conn, |c| {
                c.prepare_cached(&format!("{upsert} RETURNING last"))?
                    .query_row(params![self.name, wall], |r| r.get(0))
            });
        }
        // In the caller's transaction, which holds the write lock from the upsert on: two plain
        // statements, not one with `RETURNING`, which SQLite runs under a statement journal
        // (a stamp took 2.3 µs that way, 1.3 µs this way).
        self.write(conn, |c| {
            c.prepare_cached(&upsert)?
                .execute(params![self.name, wall])?;
            c.prepare_cached(&format!("SELECT last FROM {TABLE} WHERE name = ?1"))?
                .query_row([&self.name], |r| r.get(0))
        })
    }

    /// Stamps `row`'s version field (`#[d1(version)]`) with [`Hlc::now`]; returns the version.
    /// An error when `T` has no version field, or the version does not fit its type.
    pub fn stamp<T: SyncRow>(&self, conn: &Connection, row: &mut T) -> Result<i64> {
        if T::VERSION.is_none() {
            return Err(Error::Config(format!(
                "`{}` has no version field: mark one `#[d1(version)]`",
                T::TABLE
            )));
        }
        let v = self.now(conn)?;
        if !row.set_version(v) {
            return Err(Error::Config(format!(
                "`{}`: version {v} does not fit the version field's type; use i64",
                T::TABLE
            )));
        }
        Ok(v)
    }

    /// Takes in a version seen elsewhere (D1's, from [`crate::Outbox::conflicts`]): later
    /// versions of this clock are above it. Refused when it is further ahead of the wall clock
    /// than [`Hlc::max_ahead`].
    pub fn observe(&self, conn: &Connection, version: i64) -> Result<()> {
        let limit = version_at(
            (self.physical)()
                .saturating_add(i64::try_from(self.max_ahead.as_millis()).unwrap_or(i64::MAX)),
        );
        if version > limit {
            return Err(Error::Config(format!(
                "version {version} is {} s ahead of this device's clock; not following it",
                (wall_ms_of(version) - (self.physical)()) / 1000
            )));
        }
        self.write(conn, |c| {
            c.prepare_cached(&format!(
                "INSERT INTO {TABLE} (name, last) VALUES (?1, ?2)
                 ON CONFLICT (name) DO UPDATE SET last = max(last, excluded.last)"
            ))?
            .execute(params![self.name, version])
        })?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicI64, Ordering};

    fn clock_at(ms: &Arc<AtomicI64>) -> Hlc {
        let ms = ms.clone();
        Hlc::new().with_physical_clock(move || ms.load(Ordering::SeqCst))
    }

    #[test]
    fn versions_grow_through_a_clock_set_back_and_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("app.db");
        let wall = Arc::new(AtomicI64::new(EPOCH_MS + 10_000));
        let mut seen = Vec::new();
        {
            let conn = Connection::open(&path).unwrap();
            let c = clock_at(&wall);
            seen.push(c.now(&conn).unwrap());
            seen.push(c.now(&conn).unwrap());
            wall.store(EPOCH_MS + 5_000, Ordering::SeqCst); // set back
            seen.push(c.now(&conn).unwrap());
        }
        let conn = Connection::open(&path).unwrap();
        let c = clock_at(&wall);
        seen.push(c.now(&conn).unwrap());
        wall.store(EPOCH_MS + 20_000, Ordering::SeqCst);
        seen.push(c.now(&conn).unwrap());
        assert!(seen.windows(2).all(|w| w[0] < w[1]), "{seen:?}");
        assert_eq!(seen[0], version_at(EPOCH_MS + 10_000));
        assert_eq!(
            seen[4],
            version_at(EPOCH_MS + 20_000),
            "the wall clock again"
        );
    }

    #[test]
    fn a_rolled_back_version_is_given_again_a_committed_one_never() {
        let mut conn = Connection::open_in_memory().unwrap();
        let wall = Arc::new(AtomicI64::new(EPOCH_MS));
        let c = clock_at(&wall);
        let tx = conn.transaction().unwrap();
        let a = c.now(&tx).unwrap();
        drop(tx);
        let b = c.now(&conn).unwrap();
        assert_eq!(a, b);
        assert!(c.now(&conn).unwrap() > b);
    }

    #[test]
    fn observed_versions_are_overtaken_unless_absurdly_ahead() {
        let conn = Connection::open_in_memory().unwrap();
        let wall = Arc::new(AtomicI64::new(EPOCH_MS + 1_000));
        let c = clock_at(&wall).max_ahead(Duration::from_secs(3600));
        let remote = version_at(EPOCH_MS + 600_000); // 10 minutes ahead
        c.observe(&conn, remote).unwrap();
        assert!(c.now(&conn).unwrap() > remote);
        let broken = version_at(EPOCH_MS + 10 * 3_600_000);
        let err = c.observe(&conn, broken).unwrap_err().to_string();
        assert!(err.contains("ahead of this device's clock"), "{err}");
        assert!(c.now(&conn).unwrap() < broken);
        assert!(version_at(EPOCH_MS + 69 * 365 * 86_400_000) < 1 << 53);
    }

    #[test]
    fn two_connections_with_one_clock_never_give_the_same_version() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("app.db");
        // The clock's table first, so the two threads race on versions, not on making it.
        Hlc::new().now(&crate::open(&path).unwrap()).unwrap();
        let threads: Vec<_> = (0..2)
            .map(|_| {
                let path = path.clone();
                std::thread::spawn(move || {
                    let mut conn = crate::open(&path).unwrap();
                    let clock = Hlc::new();
                    let mut seen: Vec<i64> = (0..150).map(|_| clock.now(&conn).unwrap()).collect();
                    // And in transactions of the app's own, stamping several writes each.
                    for _ in 0..50 {
                        let tx = conn
                            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
                            .unwrap();
                        seen.extend((0..3).map(|_| clock.now(&tx).unwrap()));
                        tx.commit().unwrap();
                    }
                    seen
                })
            })
            .collect();
        let mut all: Vec<i64> = threads
            .into_iter()
            .flat_map(|t| t.join().unwrap())
            .collect();
        let n = all.len();
        all.sort_unstable();
        all.dedup();
        assert_eq!(all.len(), n, "every version given once");
    }
}
